//! What the two roles agree on in a cluster: the labels and annotations that
//! make a Service a solution, and the scaler's wake API (JSON over HTTP,
//! authenticated with a bearer token from a Secret).

use serde::{Deserialize, Serialize};

/// A Service with this label set to `"true"` is a solution.
pub const LABEL_EXPOSE: &str = "wakegate.io/expose";
/// Annotation: the subdomain (default: the Service's name).
pub const ANNOTATION_SUBDOMAIN: &str = "wakegate.io/subdomain";
/// Annotation: the Deployment to scale (default: the Service's name).
pub const ANNOTATION_DEPLOYMENT: &str = "wakegate.io/deployment";
/// Annotation: a one-line description for the catalog.
pub const ANNOTATION_DESCRIPTION: &str = "wakegate.io/description";
/// Prefix of per-solution setting overrides: `wakegate.io/idle-timeout: "2h"`.
pub const ANNOTATION_PREFIX: &str = "wakegate.io/";
/// The `ingressClassName` wakegate serves.
pub const INGRESS_CLASS: &str = "wakegate";
/// Lease held by the scaler replica that scales solutions down.
pub const SCALER_LEASE: &str = "wakegate-scaler";
/// Lease held by the gateway replica that runs ACME.
pub const ACME_LEASE: &str = "wakegate-acme";

/// Path of the wake API on the scaler.
pub const WAKE_PATH: &str = "/v1/wake";

/// Asks the scaler to wake a solution: scale its Deployment from 0 to `replicas`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WakeRequest {
    /// The solution's namespace.
    pub namespace: String,
    /// The Deployment to scale.
    pub deployment: String,
    /// Replicas to scale to when it is at zero.
    pub replicas: u32,
}

/// The scaler's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WakeResponse {
    /// Whether this call changed the replica count (false: it was already up).
    pub scaled: bool,
    /// `spec.replicas` after the call.
    pub replicas: u32,
}

/// An error from the wake API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WakeError {
    /// Short machine-readable reason (`unauthorized`, `not_found`, `bad_request`, `kubernetes`).
    pub error: String,
    /// For logs.
    pub message: String,
}

/// Annotation: the Service port to use (name or number; default: the first).
pub const ANNOTATION_PORT: &str = "wakegate.io/port";

/// Builds a cluster solution from a Service's namespace, name and annotations,
/// with `defaults` for every setting no annotation overrides. Problems are
/// returned with their key (`service/<ns>/<name>: wakegate.io/<key>`); a bad
/// override keeps the default for that key. `None` only if the subdomain is
/// not a valid DNS label (the solution cannot be routed at all).
pub fn solution_from_service(
    namespace: &str,
    name: &str,
    annotations: &std::collections::BTreeMap<String, String>,
    defaults: &crate::SolutionSettings,
) -> (Option<crate::SolutionSpec>, Vec<crate::ConfigError>) {
    let at = |key: &str| format!("service/{namespace}/{name}: {key}");
    let mut errors = Vec::new();
    let subdomain = annotations.get(ANNOTATION_SUBDOMAIN).cloned().unwrap_or_else(|| name.to_string());
    if let Err(reason) = crate::settings::check_label(&subdomain) {
        errors.push(crate::ConfigError::new(at(ANNOTATION_SUBDOMAIN), format!("{reason} (the subdomain)")));
        return (None, errors);
    }
    let mut settings = defaults.clone();
    let mut overrides = Vec::new();
    for (key, value) in annotations {
        let Some(setting) = key.strip_prefix(ANNOTATION_PREFIX) else { continue };
        if [ANNOTATION_SUBDOMAIN, ANNOTATION_DEPLOYMENT, ANNOTATION_DESCRIPTION, ANNOTATION_PORT, LABEL_EXPOSE].contains(&key.as_str()) {
            continue;
        }
        match settings.set(setting, value) {
            Ok(true) => overrides.push((setting.to_string(), value.clone())),
            Ok(false) => errors.push(crate::ConfigError::new(at(key), crate::settings::unknown_key(setting))),
            Err(reason) => errors.push(crate::ConfigError::new(at(key), reason)),
        }
    }
    let spec = crate::SolutionSpec {
        name: subdomain,
        description: annotations.get(ANNOTATION_DESCRIPTION).cloned(),
        backend: crate::Backend::Cluster(crate::solution::ClusterRef {
            namespace: namespace.to_string(),
            service: name.to_string(),
            deployment: annotations.get(ANNOTATION_DEPLOYMENT).cloned().unwrap_or_else(|| name.to_string()),
            port: annotations.get(ANNOTATION_PORT).cloned(),
            pods: None,
        }),
        settings,
        overrides,
    };
    (Some(spec), errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::Duration;

    #[test]
    fn annotations_become_a_solution() {
        let mut a = BTreeMap::new();
        a.insert("wakegate.io/subdomain".to_string(), "parts".to_string());
        a.insert("wakegate.io/deployment".to_string(), "parts-web".to_string());
        a.insert("wakegate.io/idle-timeout".to_string(), "2h".to_string());
        a.insert("wakegate.io/hold-timeout".to_string(), "never".to_string());
        a.insert("wakegate.io/idle-timout".to_string(), "1m".to_string());
        a.insert("other.io/x".to_string(), "y".to_string());
        let (spec, errors) = solution_from_service("solutions", "parts-ui", &a, &crate::SolutionSettings::default());
        let spec = spec.unwrap();
        assert_eq!(spec.name, "parts");
        assert_eq!(spec.settings.idle_timeout, Duration::from_secs(7200));
        assert_eq!(spec.settings.hold_timeout, crate::SolutionSettings::default().hold_timeout, "a bad value keeps the default");
        let crate::Backend::Cluster(c) = &spec.backend else { panic!() };
        assert_eq!((c.service.as_str(), c.deployment.as_str()), ("parts-ui", "parts-web"));
        let keys: Vec<_> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["service/solutions/parts-ui: wakegate.io/hold-timeout", "service/solutions/parts-ui: wakegate.io/idle-timout"]);
        assert!(errors[1].reason.contains("did you mean \"idle-timeout\""));
        let mut bad = BTreeMap::new();
        bad.insert("wakegate.io/subdomain".to_string(), "Not_A_Label".to_string());
        assert!(solution_from_service("s", "x", &bad, &crate::SolutionSettings::default()).0.is_none());
    }
}
