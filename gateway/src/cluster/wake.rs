//! The gateway's side of the scaler's wake API: `POST /v1/wake` with the
//! bearer token from the mounted Secret (read at every call, so a rotated
//! token is picked up; while a rotation is under way it holds two lines,
//! tried in turn), retried with backoff while the scaler is unreachable
//! or answers with a server error. The gateway itself holds no credential
//! that can scale anything; this request is how it asks.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use proto::Upstream;
use proto::cluster::{WAKE_PATH, WakeError, WakeRequest, WakeResponse};

/// One call may take this long (connect, send, answer): the scaler patches
/// one object and answers; anything slower is a scaler in trouble.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// First pause after a failed call, doubling up to [`RETRY_MAX`]: a scaler
/// restarting is back within a second or two.
pub const RETRY_MIN: Duration = Duration::from_millis(100);
/// Longest pause between calls, so a wake-up resumes soon after the scaler does.
pub const RETRY_MAX: Duration = Duration::from_secs(5);
/// Largest answer read: the API answers with a few dozen bytes.
const MAX_ANSWER: usize = 64 * 1024;

/// Why a call did not wake the solution.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The scaler refused (bad token, unknown Deployment, bad request):
    /// calling again will not help until something changes.
    #[error("the scaler refused to wake it ({status}): {message}")]
    Refused {
        /// The HTTP status.
        status: StatusCode,
        /// The scaler's explanation.
        message: String,
    },
    /// The call failed in a way worth retrying (unreachable, timeout, 5xx).
    #[error("cannot reach the scaler: {0}")]
    Unavailable(String),
}

/// Calls the scaler's wake API.
#[derive(Debug, Clone)]
pub struct Waker {
    scaler: Upstream,
    token_file: PathBuf,
}

// === impl Waker ===

impl Waker {
    /// A client of the scaler at `scaler_url` (`http://host:port`), with the
    /// bearer token in `token_file`.
    pub fn new(scaler_url: &str, token_file: PathBuf) -> Result<Self, String> {
        Ok(Self { scaler: Upstream::parse(scaler_url)?, token_file })
    }

    /// Calls until the scaler accepts or refuses, pausing between failures.
    /// Runs until done: the caller drops it to give up.
    pub async fn wake(&self, req: &WakeRequest) -> Result<WakeResponse, CallError> {
        let mut pause = RETRY_MIN;
        loop {
            match self.call(req).await {
                Err(CallError::Unavailable(why)) => {
                    tracing::warn!(deployment = %req.deployment, retry_in = ?pause, "wake call failed: {why}");
                    tokio::time::sleep(pause.mul_f64(0.75 + 0.5 * fastrand::f64())).await;
                    pause = (pause * 2).min(RETRY_MAX);
                }
                done => return done,
            }
        }
    }

    /// One call.
    pub async fn call(&self, req: &WakeRequest) -> Result<WakeResponse, CallError> {
        let token = tokio::fs::read_to_string(&self.token_file)
            .await
            .map_err(|e| CallError::Unavailable(format!("cannot read the token file {}: {e}", self.token_file.display())))?;
        // Several lines while a rotation is under way (see the scaler's
        // wake API): each is presented in turn until one is not refused as
        // unauthorized, whichever copy of the Secret the scaler has yet.
        let tokens: Vec<&str> = token.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        let Some((last, earlier)) = tokens.split_last() else {
            return Err(CallError::Unavailable(format!("the token file {} is empty", self.token_file.display())));
        };
        for token in earlier {
            match self.timed(token, req).await {
                Err(CallError::Refused { status: StatusCode::UNAUTHORIZED, .. }) => {}
                answer => return answer,
            }
        }
        self.timed(last, req).await
    }

    async fn timed(&self, token: &str, req: &WakeRequest) -> Result<WakeResponse, CallError> {
        match tokio::time::timeout(CALL_TIMEOUT, self.send(token, req)).await {
            Ok(r) => r,
            Err(_) => Err(CallError::Unavailable(format!("no answer within {CALL_TIMEOUT:?}"))),
        }
    }

    async fn send(&self, token: &str, req: &WakeRequest) -> Result<WakeResponse, CallError> {
        let unavailable = |e: &dyn std::fmt::Display| CallError::Unavailable(e.to_string());
        let (host, port) = (self.scaler.host.as_str(), self.scaler.port);
        let stream = tokio::net::TcpStream::connect((host, port)).await.map_err(|e| unavailable(&format!("{host}:{port}: {e}")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| unavailable(&e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("wake API connection: {e}");
            }
        });
        let body = serde_json::to_vec(req).map_err(|e| unavailable(&e))?;
        let authority = if port == 80 { host.to_string() } else { format!("{host}:{port}") };
        let request = Request::post(WAKE_PATH)
            .header(HOST, authority)
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| unavailable(&e))?;
        let resp = sender.send_request(request).await.map_err(|e| unavailable(&e))?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_ANSWER).collect().await.map_err(|e| unavailable(&e))?.to_bytes();
        if status == StatusCode::OK {
            return serde_json::from_slice(&bytes).map_err(|e| unavailable(&format!("unreadable answer: {e}")));
        }
        let message = match serde_json::from_slice::<WakeError>(&bytes) {
            Ok(e) => format!("{}: {}", e.error, e.message),
            Err(_) => String::from_utf8_lossy(&bytes).trim().chars().take(200).collect(),
        };
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            Err(CallError::Unavailable(format!("{status}: {message}")))
        } else {
            Err(CallError::Refused { status, message })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A scaler stand-in accepting only `Bearer new`; records the tokens presented.
    async fn scaler() -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = s.clone();
                let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let auth = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
                    seen.lock().expect("lock").push(auth.clone());
                    let (status, body) = if auth == "Bearer new" {
                        (StatusCode::OK, r#"{"scaled":true,"replicas":1}"#)
                    } else {
                        (StatusCode::UNAUTHORIZED, r#"{"error":"unauthorized","message":"a valid bearer token is required"}"#)
                    };
                    let mut resp = http::Response::new(Full::new(Bytes::from_static(body.as_bytes())));
                    *resp.status_mut() = status;
                    std::future::ready(Ok::<_, std::convert::Infallible>(resp))
                });
                tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service));
            }
        });
        (url, seen)
    }

    #[tokio::test]
    async fn each_line_of_the_token_file_is_presented_until_one_is_accepted() {
        let (url, seen) = scaler().await;
        let dir = tempfile::tempdir().expect("a directory");
        let file = dir.path().join("token");
        let waker = Waker::new(&url, file.clone()).expect("a waker");
        let req = WakeRequest { namespace: "solutions".into(), deployment: "web".into(), replicas: 1 };

        // Mid-rotation, this gateway's copy still lists the old token first.
        std::fs::write(&file, "old\nnew\n").expect("write");
        assert_eq!(waker.call(&req).await.expect("woken"), WakeResponse { scaled: true, replicas: 1 });
        assert_eq!(*seen.lock().expect("lock"), ["Bearer old", "Bearer new"]);

        seen.lock().expect("lock").clear();
        std::fs::write(&file, "old\n").expect("write");
        match waker.call(&req).await {
            Err(CallError::Refused { status, .. }) => assert_eq!(status, StatusCode::UNAUTHORIZED),
            other => panic!("a refusal, not {other:?}"),
        }
        assert_eq!(*seen.lock().expect("lock"), ["Bearer old"], "one call per token");

        seen.lock().expect("lock").clear();
        std::fs::write(&file, "\n  \n").expect("write");
        match waker.call(&req).await {
            Err(CallError::Unavailable(why)) => assert!(why.contains("is empty"), "{why}"),
            other => panic!("unavailable, not {other:?}"),
        }
        assert!(seen.lock().expect("lock").is_empty(), "nothing sent without a token");
    }
}
