//! The HTTP/1.1 server: accepts connections on a bound listener, records each
//! API request, and hands it to the verbs. Every connection (and with it every
//! watch stream) lives inside the serving task, so aborting that task drops
//! them all at once, as an API server restart does.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::record::{RecordedRequest, Recorder};
use crate::request::{self, Target};
use crate::response::{self, Body};
use crate::status::ApiError;
use crate::store::Store;
use crate::verbs;

/// Largest request body accepted (etcd's default request limit is 1.5 MiB).
const MAX_BODY: usize = 3 << 20;

/// What every connection shares.
pub struct State {
    /// The objects.
    pub store: Arc<Store>,
    /// The request log.
    pub recorder: Recorder,
}

/// Serves `listener` until the future is dropped; dropping it closes every connection.
pub async fn serve(listener: TcpListener, state: Arc<State>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let state = state.clone();
                    connections.spawn(async move {
                        let svc = service_fn(move |req| {
                            let state = state.clone();
                            async move { Ok::<_, Infallible>(handle(&state, req).await) }
                        });
                        if let Err(e) = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await {
                            tracing::debug!("connection ended: {e}");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next() => {}
        }
    }
}

async fn handle(state: &State, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let api = match request::parse(&parts.method, parts.uri.path(), parts.uri.query()) {
        Ok(Target::Api(api)) => api,
        Ok(Target::Version) => return version(),
        Err(e) => return response::error(&e),
    };
    state.recorder.push(RecordedRequest::new(&api, &parts.headers));
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return response::error(&ApiError::BadRequest(format!("cannot read the request body: {e}"))),
    };
    verbs::handle(&state.store, &api, &parts.headers, &body)
}

/// `GET /version`, for `Client::apiserver_version`.
fn version() -> Response<Body> {
    response::json(
        StatusCode::OK,
        &json!({
            "major": "1", "minor": "34", "gitVersion": "v1.34.0-wakegate-kubeapi", "gitCommit": "", "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z", "goVersion": "", "compiler": "rustc", "platform": "linux/amd64",
        }),
    )
}
