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
