//! The admin listener: `/metrics` (OpenMetrics, or the Prometheus text format
//! unless OpenMetrics is asked for), `/healthz` (the process is
//! alive), `/readyz` (it accepts traffic; 503 while draining), `/status`
//! (JSON: every solution's phase, replicas, activity and effective settings)
//! and `POST /tls/renew` (order a new ACME certificate now, as `cmctl renew`
//! does for cert-manager; 202, or 404 when the source is not ACME).
//! Never reachable through the public listener.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use crate::body::Body;
use crate::gateway::Gateway;

/// Answers one admin request.
pub fn handle<B>(gw: &Arc<Gateway>, peer: std::net::SocketAddr, req: &Request<B>) -> Response<Body> {
    let (status, ctype, body) = match req.uri().path() {
        "/metrics" => {
            // Ready replicas are read from each solution's published state at
            // scrape time: right in both modes, whoever scaled it.
            for s in &gw.routes().list {
                let state = s.handle.cell.load();
                let ready = if state.phase == proto::Phase::Ready { state.endpoints.len() } else { 0 };
                s.metrics.ready.set(i64::try_from(ready).unwrap_or(i64::MAX));
            }
            metrics_page(req, gw.metrics.encode())
        }
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/readyz" if gw.draining() => (StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n".to_string()),
        "/readyz" => (StatusCode::OK, "text/plain", "ready\n".to_string()),
        "/status" => (StatusCode::OK, "application/json", status(gw)),
        "/tls/renew" => return renew(req.method(), peer),
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found: try /metrics, /healthz, /readyz, /status or POST /tls/renew\n".to_string()),
    };
    text(status, ctype, body)
}

/// Answers one admin request while the gateway starts (see
/// `cluster::serve_while_starting`): alive, not ready yet, metrics so far.
pub fn starting<B>(metrics: &crate::metrics::Metrics, req: &Request<B>) -> Response<Body> {
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/metrics" => {
            let (status, ctype, body) = metrics_page(req, metrics.encode());
            text(status, ctype, body)
        }
        _ => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "starting: waiting for the settings, the solutions and the certificate\n".to_string(),
        ),
    }
}

/// `/metrics` in the format the scraper asks for (see [`proto::metrics::negotiate`]).
fn metrics_page<B>(req: &Request<B>, openmetrics: String) -> (StatusCode, &'static str, String) {
    let accept = req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    let (ctype, page) = proto::metrics::negotiate(accept, openmetrics);
    (StatusCode::OK, ctype, page)
}

fn text(status: StatusCode, ctype: &'static str, body: String) -> Response<Body> {
    let mut r = Response::new(Body::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Whether `peer` may force a renewal: loopback only. The admin port is open
/// to Prometheus (in Kubernetes, to its whole namespace), and every forced
/// order counts against the CA's rate limits (Let's Encrypt: 5 duplicate
/// certificates a week); reaching loopback takes `kubectl port-forward`
/// (RBAC on `pods/portforward`) or a shell on the host.
fn renew_allowed(peer: std::net::SocketAddr) -> bool {
    let ip = peer.ip();
    ip.is_loopback() || matches!(ip, std::net::IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()))
}

/// `POST /tls/renew`: wakes the ACME renewer, whose next pass orders a new
/// certificate even if the current one is not due. Answers before the order
/// runs (202); its outcome shows in the log and `wakegate_acme_orders_total`.
fn renew(method: &Method, peer: std::net::SocketAddr) -> Response<Body> {
    if !renew_allowed(peer) {
        let msg = "POST /tls/renew is served to loopback clients only: use kubectl port-forward (or a shell on the host)\n";
        return text(StatusCode::FORBIDDEN, "text/plain", msg.to_string());
    }
    if method != Method::POST {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use POST /tls/renew\n".to_string());
        r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    match crate::tls::renew::registered() {
        Some(handle) => {
            handle.request();
            tracing::info!("certificate renewal requested through the admin listener");
            text(StatusCode::ACCEPTED, "text/plain", "renewal requested\n".to_string())
        }
        None => {
            let msg = "no ACME renewer runs here: tls-source is not acme, or (in a cluster) another replica holds the Lease \
                       wakegate-acme and renews; `kubectl -n wakegate get lease wakegate-acme` names it\n";
            text(StatusCode::NOT_FOUND, "text/plain", msg.to_string())
        }
    }
}

fn status(gw: &Gateway) -> String {
    let routes = gw.routes();
    let solutions: Vec<_> = routes
        .list
        .iter()
        .map(|s| {
            let spec = s.spec.load();
            let state = s.handle.cell.load();
            let settings: serde_json::Map<String, serde_json::Value> =
                spec.settings.to_pairs().into_iter().map(|(k, v)| (k.to_string(), v.into())).collect();
            serde_json::json!({
                "name": &*s.name,
                "kind": match spec.backend {
                    proto::Backend::Process(_) => "process",
                    proto::Backend::Upstream(_) => "upstream",
                    proto::Backend::Cluster(_) => "cluster",
                },
                "phase": state.phase.as_str(),
                "replicas": state.endpoints.len(),
                "endpoints": state.endpoints.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                "last_request": s.last_request(),
                "in_flight": s.metrics.in_flight.get(),
                "held": s.metrics.held.get(),
                "open_streams": s.metrics.streams.get(),
                "wakeups": state.wakeups,
                "eta_ms": state.eta.map(|d| d.as_millis() as u64),
                "failure": state.failure.as_ref().map(|f| f.message.clone()),
                "settings": settings,
                "overrides": spec.overrides.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
            })
        })
        .collect();
    let v = serde_json::json!({
        "base_domain": routes.base(),
        "draining": gw.draining(),
        "solutions": solutions,
    });
    format!("{v:#}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_clients_force_a_renewal() {
        for (peer, allowed) in [
            ("127.0.0.1:5000", true),
            ("127.3.2.1:5000", true),
            ("[::1]:5000", true),
            ("[::ffff:127.0.0.1]:5000", true),
            ("10.42.0.7:5000", false),
            ("[fd00::7]:5000", false),
            ("[::ffff:10.0.0.1]:5000", false),
        ] {
            let peer: std::net::SocketAddr = peer.parse().expect("an address");
            assert_eq!(renew_allowed(peer), allowed, "{peer}");
            let refused = renew(&Method::POST, peer).status() == StatusCode::FORBIDDEN;
            assert_eq!(refused, !allowed, "{peer}");
        }
    }
}
