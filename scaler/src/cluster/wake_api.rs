//! `POST /v1/wake`: a gateway asks for a solution to be brought up from zero.
//! Authenticated with the bearer token from the shared Secret; idempotent.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use proto::cluster::{WAKE_PATH, WakeError, WakeRequest, WakeResponse};

use super::metrics::ScalerMetrics;
use super::scale;
use super::serve::reply;

/// Largest wake request body (it is a few dozen bytes).
const MAX_BODY: usize = 4096;
/// Most replicas a wake may ask for (a typo must not start a fleet).
const MAX_WAKE_REPLICAS: u32 = 100;

/// The wake API.
pub struct WakeApi {
    /// Kubernetes client.
    pub client: kube::Client,
    /// The expected bearer token.
    pub token: String,
    /// Metrics.
    pub metrics: Arc<ScalerMetrics>,
}

fn error(status: StatusCode, error: &str, message: impl Into<String>) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(&WakeError { error: error.into(), message: message.into() }).unwrap_or_default();
    reply(status, "application/json", body)
}

/// Compares tokens in time independent of where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl WakeApi {
    /// Handles one request.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.uri().path() != WAKE_PATH {
            return error(StatusCode::NOT_FOUND, "not_found", format!("only POST {WAKE_PATH} is served here"));
        }
        if req.method() != Method::POST {
            return error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "use POST");
        }
        let presented = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        if !presented.is_some_and(|t| !self.token.is_empty() && same(t.trim().as_bytes(), self.token.as_bytes())) {
            self.metrics.wake("unauthorized");
            return error(StatusCode::UNAUTHORIZED, "unauthorized", "a valid bearer token is required");
        }
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", format!("cannot read the body: {e}")),
        };
        let wake: WakeRequest = match serde_json::from_slice(&body) {
            Ok(w) => w,
            Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", format!("invalid wake request: {e}")),
        };
        if wake.replicas == 0 || wake.replicas > MAX_WAKE_REPLICAS {
            return error(StatusCode::BAD_REQUEST, "bad_request", format!("replicas must be 1 to {MAX_WAKE_REPLICAS}"));
        }
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), &wake.namespace);
        match scale::wake(&api, &wake.deployment, wake.replicas).await {
            Ok((scaled, replicas)) => {
                self.metrics.wake(if scaled { "scaled" } else { "already_up" });
                if scaled {
                    tracing::info!(namespace = %wake.namespace, deployment = %wake.deployment, replicas, "woken");
                }
                let body = serde_json::to_vec(&WakeResponse { scaled, replicas }).unwrap_or_default();
                reply(StatusCode::OK, "application/json", body)
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {
                self.metrics.wake("not_found");
                error(StatusCode::NOT_FOUND, "not_found", format!("deployment {}/{} not found", wake.namespace, wake.deployment))
            }
            Err(e) => {
                self.metrics.wake("error");
                tracing::warn!(namespace = %wake.namespace, deployment = %wake.deployment, "wake failed: {e}");
                error(StatusCode::BAD_GATEWAY, "kubernetes", e.to_string())
            }
        }
    }
}
