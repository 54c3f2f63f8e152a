//! Which solutions the cluster declares: every Service labelled
//! `wakegate.io/expose: "true"`, and every host of an Ingress of class
//! `wakegate`, in the solutions namespace. [`build`] turns them into
//! [`SolutionSpec`]s: a pure function both roles use, the gateway to route
//! and the scaler to put idle solutions to sleep, so they agree on which
//! solutions exist (tested without a cluster in the gateway's
//! `cluster::solutions`).
//!
//! A Service's annotations mean what [`proto::cluster::solution_from_service`]
//! says: `wakegate.io/subdomain`, `/deployment`, `/description`, `/port`, and
//! `wakegate.io/<key>` for any per-solution setting. A bad value is reported
//! with its object and key and that key keeps its default; a bad subdomain
//! leaves the solution out. An Ingress host names the subdomain, and its
//! backend port the Service port.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, ServiceBackendPort};
use kube::ResourceExt;
use proto::cluster::{ANNOTATION_SUBDOMAIN, INGRESS_CLASS, LABEL_EXPOSE, solution_from_service};
use proto::settings::check_label;
use proto::{Backend, ConfigError, Settings, SolutionSpec};

/// The annotation older Ingresses name their class with.
const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

/// The objects solutions are declared with, as last seen.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Objects {
    /// Every Service in the solutions namespace (labelled or an Ingress backend).
    pub services: Vec<Arc<Service>>,
    /// Every Ingress in the solutions namespace.
    pub ingresses: Vec<Arc<Ingress>>,
}

/// One solution before it is checked: a Service, and what an Ingress says of it.
struct Candidate<'a> {
    service: &'a Service,
    /// The subdomain from an Ingress host (wins over the annotation).
    subdomain: Option<String>,
    /// The Service port from an Ingress backend (wins over the annotation).
    port: Option<String>,
    /// Where it was declared, for conflicts.
    origin: String,
}

/// The solutions declared by `objects` in `namespace`, with `settings`' per-solution
/// defaults, and every problem found (keyed `service/<ns>/<name>: <annotation>`
/// or `ingress/<ns>/<name>: <field>`). Sorted by name; a name declared twice
/// goes to the first Service (by name), then the first Ingress.
pub fn build(namespace: &str, settings: &Settings, objects: &Objects) -> (Vec<SolutionSpec>, Vec<ConfigError>) {
    let mut problems = Vec::new();
    let mut services: Vec<&Service> = objects.services.iter().map(|s| &**s).collect();
    services.sort_by_key(|s| s.name_any());
    let mut candidates: Vec<Candidate<'_>> = services
        .iter()
        .filter(|s| s.labels().get(LABEL_EXPOSE).is_some_and(|v| v == "true"))
        .map(|s| Candidate { service: s, subdomain: None, port: None, origin: format!("service/{namespace}/{}", s.name_any()) })
        .collect();
    let mut ingresses: Vec<&Ingress> = objects.ingresses.iter().map(|i| &**i).filter(|i| is_ours(i)).collect();
    ingresses.sort_by_key(|i| i.name_any());
    for ing in ingresses {
        candidates.extend(from_ingress(ing, namespace, &settings.base_domain, &services, &mut problems));
    }
    let mut specs: Vec<SolutionSpec> = Vec::new();
    let mut origins: Vec<String> = Vec::new();
    for c in candidates {
        let Some(spec) = solution(namespace, settings, &c, &mut problems) else { continue };
        match specs.iter().position(|s| s.name == spec.name) {
            Some(i) => problems.push(ConfigError::new(
                format!("{}: subdomain", c.origin),
                format!("{} is already served for {}; this one is ignored", spec.name, origins[i]),
            )),
            None => {
                specs.push(spec);
                origins.push(c.origin);
            }
        }
    }
    specs.sort_by(|a, b| a.name.cmp(&b.name));
    (specs, problems)
}

fn is_ours(ing: &Ingress) -> bool {
    match ing.spec.as_ref().and_then(|s| s.ingress_class_name.as_deref()) {
        Some(class) => class == INGRESS_CLASS,
        None => ing.annotations().get(LEGACY_CLASS_ANNOTATION).is_some_and(|c| c == INGRESS_CLASS),
    }
}

/// One candidate per rule of `ing` whose host is `<label>.<base>`.
fn from_ingress<'a>(
    ing: &Ingress,
    namespace: &str,
    base: &str,
    services: &[&'a Service],
    problems: &mut Vec<ConfigError>,
) -> Vec<Candidate<'a>> {
    let object = format!("ingress/{namespace}/{}", ing.name_any());
    let mut problem = |key: &str, reason: String| problems.push(ConfigError::new(format!("{object}: {key}"), reason));
    let Some(spec) = ing.spec.as_ref() else { return Vec::new() };
    let mut out = Vec::new();
    for rule in spec.rules.iter().flatten() {
        let Some(host) = rule.host.as_deref().map(str::to_ascii_lowercase) else {
            problem("spec.rules.host", "a rule without a host: wakegate routes by host only".into());
            continue;
        };
        let label = host.strip_suffix(base).and_then(|h| h.strip_suffix('.')).filter(|l| check_label(l).is_ok());
        let Some(label) = label else {
            problem("spec.rules.host", format!("{host} is not <name>.{base}"));
            continue;
        };
        let paths = rule.http.as_ref().map(|h| h.paths.as_slice()).unwrap_or_default();
        let mut backends = paths.iter().map(|p| &p.backend).chain(spec.default_backend.as_ref()).filter_map(service_backend);
        let Some((svc_name, port)) = backends.next() else {
            problem("spec.rules.http", format!("{host} has no Service backend"));
            continue;
        };
        if backends.any(|(other, _)| other != svc_name) {
            problem("spec.rules.http.paths", format!("{host}: routing is by host only; every path goes to Service {svc_name}"));
        }
        let Some(service) = services.iter().find(|s| s.name_any() == svc_name) else {
            problem("spec.rules.http.paths.backend", format!("Service {svc_name} does not exist"));
            continue;
        };
        let port = port.and_then(|p| match (p.name, p.number) {
            (Some(name), _) if !name.is_empty() => Some(name),
            (_, Some(n)) => {
                // The slices name their ports after the Service's; a number finds its name.
                let ports = service.spec.as_ref().and_then(|s| s.ports.as_ref());
                let named = ports.into_iter().flatten().find(|sp| sp.port == n).and_then(|sp| sp.name.clone());
                named.filter(|n| !n.is_empty())
            }
            _ => None,
        });
        out.push(Candidate { service, subdomain: Some(label.to_string()), port, origin: object.clone() });
    }
    out
}

fn service_backend(b: &IngressBackend) -> Option<(&str, Option<ServiceBackendPort>)> {
    b.service.as_ref().map(|s| (s.name.as_str(), s.port.clone()))
}

/// A Service's `spec.selector` as a label selector, if it has one.
fn pod_selector(service: &Service) -> Option<String> {
    let selector = service.spec.as_ref()?.selector.as_ref().filter(|s| !s.is_empty())?;
    Some(selector.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","))
}

/// The spec of one candidate, or `None` (with a problem) if it cannot be served.
fn solution(namespace: &str, settings: &Settings, c: &Candidate<'_>, problems: &mut Vec<ConfigError>) -> Option<SolutionSpec> {
    let mut annotations = c.service.annotations().clone();
    if let Some(label) = &c.subdomain {
        annotations.insert(ANNOTATION_SUBDOMAIN.into(), label.clone());
    }
    let (spec, errors) = solution_from_service(namespace, &c.service.name_any(), &annotations, &settings.solution);
    problems.extend(errors);
    let mut spec = spec?;
    if let Backend::Cluster(target) = &mut spec.backend {
        if let Some(port) = &c.port {
            target.port = Some(port.clone());
        }
        target.pods = pod_selector(c.service);
    }
    Some(spec)
}
