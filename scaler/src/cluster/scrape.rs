//! Reading the gateway replicas: their addresses from the EndpointSlices of the
//! gateway's admin Service, and from each `/metrics` the per-solution activity
//! the idle decision needs. One unreadable replica makes the whole reading
//! unusable (the caller then scales nothing down).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, HOST};
use http::{HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::ListParams;
use proto::metrics as names;
use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;

/// Longest wait for one replica's metrics.
pub(super) const SCRAPE_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest metrics page accepted (a few hundred solutions fit easily).
const MAX_PAGE: usize = 8 << 20;

/// Activity of every solution, merged over all gateway replicas.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Activity {
    /// Latest `last_request_timestamp_seconds` per solution.
    pub last_request: HashMap<String, f64>,
    /// In flight + held + open streams per solution, summed.
    pub busy: HashMap<String, f64>,
    /// Unix time of the oldest sample this reading is made of, where it is
    /// not live (Prometheus's scrapes); `None` for a live reading.
    pub as_of: Option<f64>,
    /// When the reading was taken, by the same clock as `as_of`.
    pub evaluated: Option<f64>,
}

impl Activity {
    /// Adds one replica's metrics page.
    pub fn add(&mut self, page: &str) {
        let last = format!("{}_{}{{", names::PREFIX, names::LAST_REQUEST_TIMESTAMP);
        let busy = [names::IN_FLIGHT, names::HELD, names::OPEN_STREAMS].map(|n| format!("{}_{n}{{", names::PREFIX));
        for line in page.lines() {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let Ok(value) = value.parse::<f64>() else { continue };
            let Some(solution) = label(series, "solution") else { continue };
            if series.starts_with(&last) {
                let e = self.last_request.entry(solution.to_string()).or_insert(0.0);
                *e = e.max(value);
            } else if busy.iter().any(|b| series.starts_with(b.as_str())) {
                *self.busy.entry(solution.to_string()).or_insert(0.0) += value;
            }
        }
    }
}

fn label<'a>(series: &'a str, name: &str) -> Option<&'a str> {
    let start = series.find(&format!("{name}=\""))? + name.len() + 2;
    let len = series[start..].find('"')?;
    Some(&series[start..start + len])
}

/// Why a reading failed.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// The gateway replicas could not be listed.
    #[error("listing gateway endpoints: {0}")]
    List(#[source] kube::Error),
    /// No gateway replica is ready: activity is unknown.
    #[error("no ready gateway replica")]
    NoGateways,
    /// One replica did not answer.
    #[error("gateway {addr}: {reason}")]
    Replica {
        /// Its address.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// Prometheus did not answer, or answered something unusable.
    #[error("prometheus at {url}: {reason}")]
    Prometheus {
        /// Its URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
}

/// A gateway replica: its admin address, and whether its pod is terminating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replica {
    /// The admin listener.
    pub addr: SocketAddr,
    /// The pod is terminating (draining, or its node is gone).
    pub terminating: bool,
}

/// The ready gateway replicas (a draining one included: the Service
/// publishes not-ready addresses, and it may still hold requests).
pub async fn gateways(client: &kube::Client, namespace: &str, service: &str) -> Result<Vec<Replica>, ScrapeError> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    let slices =
        api.list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}"))).await.map_err(ScrapeError::List)?;
    let mut out = Vec::new();
    for slice in slices {
        let ports = slice.ports.unwrap_or_default();
        let port = ports.iter().find(|p| p.name.as_deref() == Some("admin")).or(ports.first()).and_then(|p| p.port);
        let Some(port) = port.and_then(|p| u16::try_from(p).ok()) else { continue };
        for ep in slice.endpoints.into_iter().flatten() {
            if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            let terminating = ep.conditions.as_ref().and_then(|c| c.terminating) == Some(true);
            out.extend(
                ep.addresses.iter().filter_map(|a| a.parse().ok()).map(|ip| Replica { addr: SocketAddr::new(ip, port), terminating }),
            );
        }
    }
    if out.is_empty() { Err(ScrapeError::NoGateways) } else { Ok(out) }
}

/// Reads one replica's `/metrics`.
pub async fn page(addr: SocketAddr) -> Result<String, ScrapeError> {
    let fail = |reason: String| ScrapeError::Replica { addr, reason };
    let get = Get { host: &addr.to_string(), path: "/metrics", tls: None, authorization: None };
    let (status, body) = fetch(addr, get).await.map_err(fail)?;
    if !status.is_success() {
        return Err(fail(format!("status {status}")));
    }
    Ok(body)
}

/// One GET: what it asks and how it gets there.
pub(super) struct Get<'a> {
    /// The `Host` field.
    pub host: &'a str,
    /// Path and query.
    pub path: &'a str,
    /// TLS, with the name the server's certificate must carry.
    pub tls: Option<(&'a TlsConnector, &'a ServerName<'static>)>,
    /// The `Authorization` field.
    pub authorization: Option<&'a HeaderValue>,
}

/// One HTTP/1.1 GET from `connect`: the answer's status and body (at most
/// [`MAX_PAGE`]), within [`SCRAPE_TIMEOUT`] (TLS handshake included).
pub(super) async fn fetch(connect: SocketAddr, get: Get<'_>) -> Result<(StatusCode, String), String> {
    let fetch = async {
        let mut req = Request::get(get.path).header(HOST, get.host);
        if let Some(value) = get.authorization {
            req = req.header(AUTHORIZATION, value.clone());
        }
        let req = req.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
        let stream = tokio::net::TcpStream::connect(connect).await.map_err(|e| e.to_string())?;
        match get.tls {
            Some((connector, name)) => {
                let tls = connector.connect(name.clone(), stream).await.map_err(|e| format!("TLS handshake: {e}"))?;
                exchange(tls, req).await
            }
            None => exchange(stream, req).await,
        }
    };
    tokio::time::timeout(SCRAPE_TIMEOUT, fetch).await.unwrap_or_else(|_| Err("timed out".into()))
}

async fn exchange<IO>(io: IO, req: Request<Empty<Bytes>>) -> Result<(StatusCode, String), String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), MAX_PAGE).collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Reads every replica; fails if any one cannot be read, except a
/// terminating one: unreachable, it holds no request any more (its process
/// exited, or its node is gone, when a pod can stay Terminating for good),
/// and waiting for it would stop every scale-down.
pub async fn activity(client: &kube::Client, namespace: &str, service: &str) -> Result<Activity, ScrapeError> {
    let replicas = gateways(client, namespace, service).await?;
    let pages = futures_util::future::join_all(replicas.iter().map(|r| page(r.addr))).await;
    let mut activity = Activity::default();
    for (replica, p) in replicas.iter().zip(pages) {
        match p {
            Ok(p) => activity.add(&p),
            Err(e) if replica.terminating => tracing::debug!("not waiting for terminating gateway {}: {e}", replica.addr),
            Err(e) => return Err(e),
        }
    }
    Ok(activity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_replicas() {
        let mut a = Activity::default();
        a.add("# HELP x\nwakegate_last_request_timestamp_seconds{solution=\"nlp\"} 100.5\nwakegate_in_flight_requests{solution=\"nlp\"} 2\nwakegate_held_requests{solution=\"nlp\"} 1\n");
        a.add("wakegate_last_request_timestamp_seconds{solution=\"nlp\"} 90\nwakegate_open_streams{solution=\"nlp\"} 1\nwakegate_requests_total{solution=\"nlp\",method=\"GET\",code=\"200\"} 7\n# EOF\n");
        assert_eq!(a.last_request["nlp"], 100.5);
        assert_eq!(a.busy["nlp"], 4.0);
        assert_eq!(a.last_request.len(), 1);
    }
}
