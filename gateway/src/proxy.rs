//! A request's way through the gateway: route by host, then for a solution:
//! forward to a ready endpoint, or wake it and hold (browsers get the waiting
//! page at once), retrying on another endpoint or holding again when a connect
//! fails before the solution saw anything.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use proto::Phase;

use crate::body::Body;
use crate::forward;
use crate::gateway::Gateway;
use crate::refusal::Refusal;
use crate::request_id;
use crate::router::Target;
use crate::solution::{Activity, OwnedActivity, SolutionRt};
use crate::upstream::{self, Done, SendError, Sent};
use crate::{catalog, waiting};

/// Pause before trying again after an endpoint refused a connection (the
/// orchestrator notices a dead process within this time).
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// Handles one request from `peer`.
pub async fn handle(gw: Arc<Gateway>, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let rid = request_id::of(req.headers());
    let mut resp = route(&gw, peer, req, &rid, started).await;
    resp.headers_mut().insert(request_id::HEADER, rid);
    resp
}

/// The host the request is for, as sent: the target's authority, else `Host`.
fn host_of<B>(req: &Request<B>) -> Option<HeaderValue> {
    if let Some(a) = req.uri().authority() {
        return HeaderValue::from_str(a.as_str()).ok();
    }
    req.headers().get(header::HOST).filter(|h| !h.is_empty()).cloned()
}

async fn route(gw: &Arc<Gateway>, peer: SocketAddr, req: Request<Incoming>, rid: &HeaderValue, started: Instant) -> Response<Body> {
    let Some(host) = host_of(&req) else {
        gw.metrics.rejected_unrouted("missing_host");
        let r = Refusal::new(StatusCode::BAD_REQUEST, "missing_host", "the request names no host (Host header)");
        return r.into_response(req.headers(), rid);
    };
    let Ok(host_str) = host.to_str() else {
        gw.metrics.rejected_unrouted("bad_host");
        return Refusal::new(StatusCode::BAD_REQUEST, "bad_host", "the Host header is not valid").into_response(req.headers(), rid);
    };
    let sol = {
        let routes = gw.routes();
        match routes.route(host_str) {
            Target::Solution(s) => s.clone(),
            Target::Catalog if req.uri().path() == "/" => return catalog::respond(gw, &routes, &req, host_str),
            Target::Catalog => {
                gw.metrics.rejected_unrouted("not_found");
                let r = Refusal::new(StatusCode::NOT_FOUND, "not_found", "the base domain serves only the catalog at /");
                return r.into_response(req.headers(), rid);
            }
            Target::Unknown => {
                gw.metrics.rejected_unrouted("unknown_host");
                return Refusal::unknown_host(&crate::router::normalize_host(host_str)).into_response(req.headers(), rid);
            }
        }
    };
    if req.uri().path() == waiting::STATUS_PATH {
        return waiting::status(&sol, req.headers());
    }
    sol.metrics.touch();
    let method = req.method().clone();
    let resp = forward(gw, &sol, peer, req, rid, host, started).await;
    sol.metrics.request(&method, resp.status().as_u16());
    resp
}

fn refuse(sol: &SolutionRt, r: Refusal, headers: &HeaderMap, rid: &HeaderValue) -> Response<Body> {
    sol.metrics.rejected(r.reason);
    r.into_response(headers, rid)
}

async fn forward(
    gw: &Arc<Gateway>,
    sol: &Arc<SolutionRt>,
    peer: SocketAddr,
    mut req: Request<Incoming>,
    rid: &HeaderValue,
    host: HeaderValue,
    started: Instant,
) -> Response<Body> {
    let spec = sol.spec.load_full();
    let settings = &spec.settings;
    let upgrade = req.version() == Version::HTTP_11 && forward::wants_upgrade(req.headers());
    let navigation = !upgrade && waiting::is_navigation(&req);
    // What a refusal needs of the request, kept before the request is sent on.
    let mut reply_headers = HeaderMap::new();
    if let Some(a) = req.headers().get(header::ACCEPT) {
        reply_headers.insert(header::ACCEPT, a.clone());
    }
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    forward::to_upstream(&mut req, peer, &host, rid, upgrade);

    let deadline = started + settings.hold_timeout;
    let mut held: Option<Activity<'_>> = None;
    let mut changes = None;
    loop {
        let state = sol.handle.cell.load();
        if state.phase == Phase::Ready
            && let Some(ep) = sol.pick(&state.endpoints, &gw.pools)
        {
            {
                drop(held.take());
                let activity = OwnedActivity::in_flight(sol.clone());
                // Counted in flight first, then the phase checked again: a
                // scale-down marks the solution stopping, then checks that
                // nothing is in flight, so one of the two sees the other.
                if sol.handle.cell.phase() == Phase::Ready {
                    upstream::begin(&ep);
                    match upstream::send(&ep, req, settings.upstream_connect_timeout).await {
                        Ok(sent) => return respond(ep, sent, activity, client_upgrade, rid, started),
                        Err(SendError::NotSent(r, why)) => {
                            upstream::abort(&ep);
                            tracing::debug!(solution = %sol.name, endpoint = %ep.addr, "not sent: {why}; retrying");
                            req = *r;
                            drop(activity);
                            if Instant::now() + RETRY_PAUSE >= deadline {
                                let msg = format!("{} did not accept the connection", sol.name);
                                return refuse(
                                    sol,
                                    Refusal::new(StatusCode::BAD_GATEWAY, "upstream_unavailable", msg),
                                    &reply_headers,
                                    rid,
                                );
                            }
                            tokio::time::sleep(RETRY_PAUSE).await;
                            continue;
                        }
                        Err(SendError::Failed(e)) => {
                            upstream::abort(&ep);
                            tracing::warn!(solution = %sol.name, endpoint = %ep.addr, "upstream failed: {e}");
                            let msg = format!("{} closed the connection without a complete answer", sol.name);
                            return refuse(sol, Refusal::new(StatusCode::BAD_GATEWAY, "upstream_error", msg), &reply_headers, rid);
                        }
                    }
                }
                drop(activity);
            }
        }
        let now = Instant::now();
        if state.in_backoff(now) {
            let f = state.failure.as_ref();
            let retry = f.map_or(1, |f| f.retry_at.saturating_duration_since(now).as_secs() + 1);
            let why = f.map_or("it failed to start", |f| f.message.as_str());
            let msg = format!("{} could not be started: {why}; it will be retried", sol.name);
            return refuse(sol, Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "wake_failed", msg).retry_after(retry), &reply_headers, rid);
        }
        if matches!(state.phase, Phase::Cold | Phase::Failed | Phase::Stopping) {
            sol.handle.wake();
        }
        if held.is_none() {
            if navigation {
                return waiting::page(sol, &state);
            }
            match Activity::try_held(sol, settings.max_held_requests.get()) {
                Some(a) => held = Some(a),
                None => {
                    let msg = format!("too many requests are waiting for {} to start; try again shortly", sol.name);
                    let r = Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "hold_full", msg).retry_after(retry_hint(&state));
                    return refuse(sol, r, &reply_headers, rid);
                }
            }
            // Subscribe, then look again: no change can slip in between.
            changes = Some(sol.handle.cell.subscribe());
            continue;
        }
        let Some(rx) = changes.as_mut() else { continue };
        match tokio::time::timeout_at(deadline.into(), rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                let msg = format!("{} was removed from the configuration", sol.name);
                return refuse(sol, Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "removed", msg).retry_after(5), &reply_headers, rid);
            }
            Err(_) => {
                let msg = format!("{} did not become ready within {}", sol.name, proto::units::format_duration(settings.hold_timeout));
                let r = Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "hold_timeout", msg).retry_after(retry_hint(&state));
                return refuse(sol, r, &reply_headers, rid);
            }
        }
    }
}

/// Seconds a client should wait before retrying a refused held request.
fn retry_hint(state: &scaler::SolutionState) -> u64 {
    let remaining = match (state.eta, state.wake_started) {
        (Some(eta), Some(t)) => eta.saturating_sub(t.elapsed()),
        _ => Duration::from_secs(5),
    };
    remaining.as_secs().clamp(1, 60)
}

fn respond(
    ep: Arc<upstream::Endpoint>,
    sent: Sent,
    activity: OwnedActivity,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    rid: &HeaderValue,
    started: Instant,
) -> Response<Body> {
    let Sent { mut response, conn } = sent;
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    forward::to_client(response.headers_mut(), rid, switching);
    if switching {
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        let stream = activity.into_stream();
        stream.solution().metrics.duration.observe(started.elapsed().as_secs_f64());
        upstream::abort(&ep);
        match client_upgrade {
            Some(client_upgrade) => {
                tokio::spawn(tunnel(client_upgrade, upstream_upgrade, stream));
            }
            None => tracing::warn!("solution switched protocols without being asked to"),
        }
        let (parts, _) = response.into_parts();
        return Response::from_parts(parts, Body::empty());
    }
    let (parts, inner) = response.into_parts();
    let done = Done::new(ep, Some(conn), activity, started);
    Response::from_parts(parts, Body::Upstream { inner, done: Some(done) })
}

/// Copies bytes both ways between an upgraded client and solution connection,
/// counted as an open stream (which keeps the solution awake) until both close.
async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade, stream: OwnedActivity) {
    let (c, u) = tokio::join!(client, upstream);
    match (c, u) {
        (Ok(c), Ok(u)) => {
            let mut c = TokioIo::new(c);
            let mut u = TokioIo::new(u);
            if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                tracing::debug!("upgraded stream ended: {e}");
            }
        }
        (c, u) => tracing::debug!(client_ok = c.is_ok(), upstream_ok = u.is_ok(), "upgrade did not complete"),
    }
    drop(stream);
}
