//! `POST /v1/wake`: a gateway asks for a solution to be brought up from zero.
//! Authenticated with the bearer token from the shared Secret; idempotent.
//!
//! The token file may hold several tokens, one per line, all accepted (the
//! gateway presents the first): a rotation adds the new token as a second
//! line, then, once every pod's copy of the Secret has it, drops the old one,
//! and no wake is refused on the way. The file is read again for a wake
//! request (at most once a second: wakes are rare, and a flood of wrong
//! tokens must not become a flood of reads), so a rotated or filled-in
//! Secret takes effect without a restart, and a dropped token stops working.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// The bearer tokens accepted.
    pub tokens: Tokens,
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

/// A token file is read again at most this often.
const REREAD_MIN: Duration = Duration::from_secs(1);

/// The tokens of the token file (see the module's documentation).
pub struct Tokens {
    file: PathBuf,
    state: Mutex<TokenState>,
}

struct TokenState {
    tokens: Vec<String>,
    read: Instant,
}

/// Every non-empty line of `text`, trimmed.
fn parse(text: &str) -> Vec<String> {
    text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect()
}

impl Tokens {
    /// Reads `file`; an empty one is no error (every wake is refused until it
    /// holds a token), one that cannot be read is.
    pub fn load(file: PathBuf) -> std::io::Result<Self> {
        let tokens = parse(&std::fs::read_to_string(&file)?);
        if tokens.is_empty() {
            tracing::warn!(file = %file.display(), "the wake token file is empty: every wake is refused until it holds a token");
        }
        Ok(Self { file, state: Mutex::new(TokenState { tokens, read: Instant::now() }) })
    }

    fn matches(&self, presented: &str) -> bool {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // Every token compared, whichever matches.
        st.tokens.iter().fold(false, |any, t| any | same(presented.as_bytes(), t.as_bytes()))
    }

    /// Whether `presented` is one of the tokens, reading the file again
    /// first if the last read is old enough (a token dropped from it is
    /// refused from then on).
    pub async fn accepts(&self, presented: &str) -> bool {
        if presented.is_empty() {
            return false;
        }
        let due = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let due = st.read.elapsed() >= REREAD_MIN;
            if due {
                st.read = Instant::now();
            }
            due
        };
        if due {
            self.reread().await;
        }
        self.matches(presented)
    }

    async fn reread(&self) {
        match tokio::fs::read_to_string(&self.file).await {
            Ok(text) => {
                let tokens = parse(&text);
                let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                if tokens != st.tokens {
                    tracing::info!(file = %self.file.display(), tokens = tokens.len(), "the wake token file changed");
                    st.tokens = tokens;
                }
            }
            Err(e) => {
                tracing::warn!(file = %self.file.display(), "cannot read the wake token file again: {e}; the tokens read before stay")
            }
        }
    }
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
        let accepted = match presented {
            Some(t) => self.tokens.accepts(t.trim()).await,
            None => false,
        };
        if !accepted {
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
