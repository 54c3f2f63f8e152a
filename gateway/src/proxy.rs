//! A request's way through the gateway: route by host, then for a solution:
//! forward to a ready endpoint, or wake it and hold (browsers get the waiting
//! page at once), retrying on another endpoint or holding again when a connect
//! fails before the solution saw anything.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::{Either, ready};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use proto::Phase;

use crate::access_log;
use crate::body::Body;
use crate::client::{self, Client};
use crate::gateway::Gateway;
use crate::limits::body::BodyError;
use crate::limits::body::RequestBody;
use crate::limits::{BodyLimit, LimitedBody, Verdict};
use crate::metrics;
use crate::refusal::Refusal;
use crate::request_id;
use crate::router::Target;
use crate::server::{Answer, ConnInfo};
use crate::solution::{Activity, OwnedActivity, SolutionRt};
use crate::upstream::{self, Done, SendError, Sent};
use crate::{catalog, waiting};
use crate::{direct, forward};

/// Pause before trying again after an endpoint refused a connection (the
/// orchestrator notices a dead process within this time).
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// Handles one request from `peer`, over the TLS connection `info` describes
/// (`None`: plain).
///
/// Everything decided without waiting (checks, routing, limits, refusals) is
/// done here, before the returned future exists; only forwarding is a future.
/// Its size matters: hyper keeps one per connection and moves it for every
/// request, and every held request keeps one alive (nested `async fn`s would
/// each store the request again).
pub fn handle(
    gw: Arc<Gateway>,
    peer: SocketAddr,
    info: Option<&ConnInfo>,
    req: Request<RequestBody>,
) -> impl Future<Output = Answer> + Send + 'static + use<> {
    let started = Instant::now();
    let mut rid = request_id::of(req.headers());
    if req.version() == http::Version::HTTP_2 {
        // Answered as a literal HPACK never indexes: every id is new, and
        // indexed they would fill the connection's table (h2 evicts the
        // fields worth keeping, and walks the stale ids for every answer).
        rid.set_sensitive(true);
    }
    let mut line = if gw.access.is_on() {
        let client = client::identify(peer.ip(), req.headers(), &gw.settings_ref().trusted_proxies);
        gw.access.begin(client.ip, &req, &rid, started)
    } else {
        None
    };
    let (hsts, routed) = match connection_checks(&gw, info, &req, &rid) {
        Ok((tls, hsts, host)) => (hsts, route(gw, peer, req, host, tls, &rid, started, &mut line)),
        Err(resp) => (None, Err(*resp)),
    };
    // Logged as 499 if the client goes away before the answer (see `access_log`).
    let mut unanswered = access_log::Unanswered(line);
    let routed = match routed {
        Ok(forwarding) => Either::Right(forwarding),
        Err(resp) => Either::Left(ready((resp, access_log::Trail::default()))),
    };
    routed.map(move |(mut resp, trail)| {
        let mut log = None;
        if let Some(line) = unanswered.0.take() {
            let answered = line.answered(&resp, trail);
            // An upgrade's line waits for its tunnel to close.
            match resp.extensions().get::<access_log::Tunnel>() {
                Some(tunnel) => tunnel.attach(answered),
                None => log = Some(answered),
            }
        }
        // A solution's head passed on as it came carries them (no map needed).
        if let Some(raw) = resp.body_mut().raw_head_mut() {
            raw.set_own(rid, hsts);
            return Answer { resp, log };
        }
        if let Some(v) = hsts {
            resp.headers_mut().insert(header::STRICT_TRANSPORT_SECURITY, v);
        }
        resp.headers_mut().insert(request_id::NAME.clone(), rid);
        Answer { resp, log }
    })
}

/// Whether the connection is TLS, the `Strict-Transport-Security` value to
/// send (TLS only), and the request's host (see [`host_of`]).
type Checked = (bool, Option<HeaderValue>, Option<HeaderValue>);

/// HTTPS redirect for plain connections, and the SNI/Host agreement check
/// (421) for TLS ones (`handle` sets `X-Request-Id` on either answer).
fn connection_checks<B>(
    gw: &Gateway,
    info: Option<&ConnInfo>,
    req: &Request<B>,
    rid: &HeaderValue,
) -> Result<Checked, Box<Response<Body>>> {
    let is_tls = info.is_some_and(|i| i.tls);
    let view = gw.tls.load();
    let host = host_of(req);
    let host_str = host.as_ref().and_then(|h| h.to_str().ok());
    if !is_tls
        && view.ssl_redirect
        && gw.certificate_served()
        && let Some(h) = host_str
        && let Some(name) = crate::router::normalize_host(h)
    {
        let port = if view.https_port == 443 { String::new() } else { format!(":{}", view.https_port) };
        let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
        if let Ok(location) = HeaderValue::from_str(&format!("https://{name}{port}{target}")) {
            let mut r = Response::new(Body::full("this site is served over HTTPS\n"));
            *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
            r.headers_mut().insert(header::LOCATION, location);
            return Err(Box::new(access_log::with_reason(r, "https_redirect")));
        }
    }
    if let (Some(info), Some(h)) = (info, host_str)
        && let Some(sni) = &info.sni
        && let Some(name) = crate::router::normalize_host(h)
    {
        let base = gw.routes();
        let covered =
            |n: &str| n == base.base() || n.strip_suffix(base.base()).is_some_and(|p| p.ends_with('.') && !p[..p.len() - 1].contains('.'));
        // HTTP/2 clients may reuse a connection for any name its certificate
        // covers (RFC 9113 §9.1.1); anything else must match the SNI.
        let reusable = info.h2 && covered(&name) && covered(sni);
        if *name != **sni && !reusable {
            gw.metrics.rejected_unrouted("misdirected");
            let msg = format!("this connection was opened for {sni}, not {name}; open a new one");
            let mut r = Refusal::new(StatusCode::MISDIRECTED_REQUEST, "misdirected", msg).into_response(req.headers(), rid);
            if let Some(v) = view.hsts.clone() {
                r.headers_mut().insert(header::STRICT_TRANSPORT_SECURITY, v);
            }
            return Err(Box::new(r));
        }
    }
    Ok((is_tls, if is_tls { view.hsts.clone() } else { None }, host))
}

/// The host the request is for, as sent: the target's authority, else `Host`.
/// Two `Host` fields make it ambiguous (RFC 9112 §3.2): none then.
fn host_of<B>(req: &Request<B>) -> Option<HeaderValue> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return None;
    }
    if let Some(a) = req.uri().authority() {
        return HeaderValue::from_str(a.as_str()).ok();
    }
    host.filter(|h| !h.is_empty()).cloned()
}

/// Routes a request: a refusal or local answer at once (`Err`), or the future
/// that forwards it to its solution.
// The `Err` is the response itself, moved once to the client: boxing it would
// cost an allocation on every refused request.
#[allow(clippy::result_large_err, clippy::too_many_arguments)]
fn route(
    gw: Arc<Gateway>,
    peer: SocketAddr,
    mut req: Request<RequestBody>,
    host: Option<HeaderValue>,
    tls: bool,
    rid: &HeaderValue,
    started: Instant,
    line: &mut Option<Box<access_log::Line>>,
) -> Result<impl Future<Output = (Response<Body>, access_log::Trail)> + Send + 'static + use<>, Response<Body>> {
    let (max_uri, client) = {
        let s = gw.settings_ref();
        (s.max_uri_length, client::identify(peer.ip(), req.headers(), &s.trusted_proxies))
    };
    if req.uri().path_and_query().map_or(0, |p| p.as_str().len()) > max_uri {
        gw.metrics.rejected_unrouted("uri_too_long");
        let r = Refusal::new(StatusCode::URI_TOO_LONG, "uri_too_long", format!("the request target is longer than {max_uri} bytes"));
        return Err(r.into_response(req.headers(), rid));
    }
    // HTTP/1.1 heads are counted as they are read; HTTP/2 ones only here
    // (the HTTP/2 layer refuses only lists twice the size, without an id).
    if req.version() == Version::HTTP_2
        && let Some(refused) = h2_head_limits(&gw, req.headers(), rid)
    {
        return Err(refused);
    }
    if req.method() == http::Method::CONNECT {
        // The gateway is no forward proxy, and no solution is reached by tunnel.
        gw.metrics.rejected_unrouted("method_not_allowed");
        let mut r = Refusal::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "CONNECT is not served here")
            .into_response(req.headers(), rid);
        r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"));
        // The client may already be sending tunnel bytes: never read them as requests.
        r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Err(r);
    }
    if req.uri().scheme().is_none() && req.uri().authority().is_some() {
        return Err(authority_form(&gw, &req, rid));
    }
    let Some(host) = host else {
        gw.metrics.rejected_unrouted("missing_host");
        let r = Refusal::new(StatusCode::BAD_REQUEST, "missing_host", "the request names no single host (one Host header)");
        return Err(r.into_response(req.headers(), rid));
    };
    let Ok(host_str) = host.to_str() else {
        gw.metrics.rejected_unrouted("bad_host");
        return Err(Refusal::new(StatusCode::BAD_REQUEST, "bad_host", "the Host header is not valid").into_response(req.headers(), rid));
    };
    let sol = {
        let routes = gw.routes();
        match routes.route(host_str) {
            Target::Solution(s) => s.clone(),
            Target::Catalog if req.uri().path() == "/" => {
                if !matches!(*req.method(), http::Method::GET | http::Method::HEAD) {
                    return Err(read_only(&gw, &req, rid, "the catalog"));
                }
                return Err(catalog::respond(&gw, &routes, &req, host_str));
            }
            Target::Catalog => {
                gw.metrics.rejected_unrouted("not_found");
                let r = Refusal::new(StatusCode::NOT_FOUND, "not_found", "the base domain serves only the catalog at /");
                return Err(r.into_response(req.headers(), rid));
            }
            Target::Unknown => {
                gw.metrics.rejected_unrouted("unknown_host");
                let name = crate::router::normalize_host(host_str).unwrap_or_default();
                return Err(Refusal::unknown_host(&name).into_response(req.headers(), rid));
            }
            Target::Invalid => {
                gw.metrics.rejected_unrouted("bad_host");
                return Err(Refusal::new(StatusCode::BAD_REQUEST, "bad_host", "the Host header is not a valid host name")
                    .into_response(req.headers(), rid));
            }
        }
    };
    if let Some(line) = line {
        line.solution(&sol.name);
    }
    if req.uri().path() == waiting::STATUS_PATH {
        if !matches!(*req.method(), http::Method::GET | http::Method::HEAD) {
            return Err(read_only(&gw, &req, rid, "the wake-up status"));
        }
        return Err(waiting::status(&sol, req.headers()));
    }
    if let Some(refused) = rate_limit(&sol, client, req.headers(), rid) {
        sol.metrics.request(req.method(), refused.status().as_u16());
        return Err(refused);
    }
    sol.metrics.touch();
    let method = req.method().clone();
    let spec = sol.spec.load_full();
    let settings = &spec.settings;
    let upgrade = req.version() == Version::HTTP_11 && forward::wants_upgrade(req.headers());
    // What a refusal needs of the request, kept before the request is sent on.
    let mut accept = req.headers().get(header::ACCEPT).cloned();
    let navigation = !upgrade && waiting::is_navigation(req.method(), accept.as_ref(), || req.headers().get("sec-fetch-mode"));
    let declared = http_body::Body::size_hint(req.body()).exact();
    if settings.max_body_size > 0 && declared.is_some_and(|n| n > settings.max_body_size) {
        let msg = format!("the request body is larger than {} bytes", settings.max_body_size);
        let resp = refuse(&sol, Refusal::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", msg), accept.as_ref(), rid);
        sol.metrics.request(&method, resp.status().as_u16());
        return Err(resp);
    }
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let fwd = forward::to_upstream(&mut req, peer, client, &host, upgrade, tls);
    let direct = direct::eligible(&req, client_upgrade.is_some());
    let ready = sol.handle.cell.phase() == Phase::Ready;
    // The gateway's own client writes the forwarded fields into the head it
    // sends; otherwise they go into the map (also before a held request's
    // head is copied out).
    let forwarded = if direct && ready {
        Some(fwd)
    } else {
        fwd.set(req.headers_mut(), rid);
        None
    };
    if !ready {
        // Likely held: keep only its own bytes (see `detach_head`).
        // (`rid` is a copy of its own already: pointed into the detached
        // head, it would keep every field alive as long as the answer.)
        forward::detach_head(&mut req);
        // Its detached copy: the first would keep the read buffer alive.
        accept = req.headers().get(header::ACCEPT).cloned();
    }
    let limit = BodyLimit { max: settings.max_body_size, timeout: settings.client_body_timeout };
    let req = req.map(|b| LimitedBody::new(b, limit));
    let f = Forwarding { req, forwarded, accept, client_upgrade, navigation, direct, rid: rid.clone(), started };
    let metrics_sol = sol.clone();
    Ok(forward(gw, sol, spec, f).map(move |answer| {
        metrics_sol.metrics.request(&method, answer.0.status().as_u16());
        answer
    }))
}

/// 400 for an authority-form target (`GET example.com`): CONNECT's alone
/// (RFC 9112 §3.2.3); taken as the host, it would override `Host`.
#[cold]
fn authority_form<B>(gw: &Gateway, req: &Request<B>, rid: &HeaderValue) -> Response<Body> {
    gw.metrics.rejected_unrouted("bad_request");
    let r = Refusal::new(StatusCode::BAD_REQUEST, "bad_request", "the request target must be a path or an absolute URL");
    r.into_response(req.headers(), rid)
}

/// 405 for a method other than GET or HEAD on one of the gateway's own pages.
#[cold]
fn read_only<B>(gw: &Gateway, req: &Request<B>, rid: &HeaderValue, what: &str) -> Response<Body> {
    gw.metrics.rejected_unrouted("method_not_allowed");
    let msg = format!("{what} is read with GET or HEAD, not {}", req.method());
    let mut r = Refusal::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", msg).into_response(req.headers(), rid);
    r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    r
}

/// Waited `upstream-response-timeout` behind `max-concurrent-requests`
/// without being sent: the solution is busy, not slow to answer this one.
#[cold]
fn queue_timeout(sol: &SolutionRt, s: &proto::SolutionSettings, accept: Option<&HeaderValue>, rid: &HeaderValue) -> Response<Body> {
    let (n, waited) = (s.max_concurrent_requests, proto::units::format_duration(s.upstream_response_timeout));
    let msg = format!("{} is busy: it takes {n} requests at once (max-concurrent-requests), and this one waited {waited}", sol.name);
    refuse(sol, Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "queue_timeout", msg).retry_after(1), accept, rid)
}

/// `max-headers` and `max-header-size` for an HTTP/2 request (its list's
/// size as HTTP/2 counts it, RFC 9113 §6.5.2): the 431, if over either.
fn h2_head_limits(gw: &Gateway, headers: &HeaderMap, rid: &HeaderValue) -> Option<Response<Body>> {
    let (max_headers, max_size) = {
        let s = gw.settings_ref();
        (s.max_headers, s.max_header_size)
    };
    let msg = if headers.len() > max_headers {
        format!("the request has more than {max_headers} header fields")
    } else if headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 32).sum::<usize>() > max_size {
        format!("the request's header fields are larger than {max_size} bytes")
    } else {
        return None;
    };
    gw.metrics.rejected_unrouted("headers_too_large");
    Some(Refusal::new(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "headers_too_large", msg).into_response(headers, rid))
}

/// Per-client, then per-solution rate: `None` if allowed, else the 429.
// Inlined into its one caller: out of line it costs the call and its
// arguments' moves on every request (+55 instructions, counted).
#[inline(always)]
fn rate_limit(sol: &SolutionRt, client: Client, headers: &HeaderMap, rid: &HeaderValue) -> Option<Response<Body>> {
    let limits = sol.limits.load();
    let checks = [
        limits.client.as_ref().map(|l| (l, l.check_key(proto::net::client_key(client.ip)), "client")),
        limits.solution.as_ref().map(|l| (l, l.check(), "solution")),
    ];
    for (limiter, verdict, scope) in checks.into_iter().flatten() {
        let Verdict::Deny { retry_after } = verdict else { continue };
        let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        // Debug: a flood of refusals must not become a flood of log lines
        // (each one is in the access log and `wakegate_rejected_requests_total`).
        tracing::debug!(solution = %sol.name, client = %client.ip, scope, "rate limited for {retry_after:?}");
        let msg = if scope == "client" {
            format!("too many requests from your address to {}; retry in {secs} s", sol.name)
        } else {
            format!("{} is receiving too many requests; retry in {secs} s", sol.name)
        };
        let mut resp = refuse(
            sol,
            Refusal::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", msg).retry_after(secs),
            headers.get(header::ACCEPT),
            rid,
        );
        let h = resp.headers_mut();
        let policy = format!("\"{scope}\";q={};w={}", limiter.burst(), limiter.window_secs());
        if let Ok(v) = HeaderValue::from_str(&policy) {
            h.insert("ratelimit-policy", v);
        }
        if let Ok(v) = HeaderValue::from_str(&format!("\"{scope}\";r=0;t={secs}")) {
            h.insert("ratelimit", v);
        }
        return Some(resp);
    }
    None
}

fn refuse(sol: &SolutionRt, r: Refusal, accept: Option<&HeaderValue>, rid: &HeaderValue) -> Response<Body> {
    sol.metrics.rejected(r.reason);
    r.respond(accept, rid)
}

/// A request ready to be sent to its solution, with what a refusal of it needs.
struct Forwarding {
    req: Request<LimitedBody>,
    /// `X-Forwarded-*` not yet in `req`'s map: the own client writes them.
    forwarded: Option<forward::Forwarded>,
    /// The client's `Accept`, for the format of a refusal.
    accept: Option<HeaderValue>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    /// A browser navigation: gets the waiting page instead of being held.
    navigation: bool,
    /// No body, no upgrade: sent by the gateway's own client ([`direct`]).
    direct: bool,
    rid: HeaderValue,
    started: Instant,
}

// A plain fn returning an `async move` block whose captures are used in
// place: an `async fn` would also copy its arguments into locals, and
// `Forwarding` taken apart would be stored a second time (its future is
// moved whole, and kept as long as the connection or the held request).
#[allow(clippy::manual_async_fn)]
fn forward(
    gw: Arc<Gateway>,
    sol: Arc<SolutionRt>,
    spec: Arc<proto::SolutionSpec>,
    mut f: Forwarding,
) -> impl Future<Output = (Response<Body>, access_log::Trail)> + Send + 'static {
    async move {
        let sol = &sol;
        let settings = &spec.settings;
        let (reply_headers, rid) = (f.accept.as_ref(), &f.rid);
        let deadline = f.started + settings.hold_timeout;
        let mut held: Option<Activity<'_>> = None;
        // Milliseconds the request was held for a wake-up (access log).
        let mut waited: Option<u32> = None;
        let mut changes = None;
        // When an endpoint first did not take the request (milliseconds after
        // `started`; 4 bytes, not an `Instant`'s 16, in every request's
        // future): retried (another endpoint, a new connection) for
        // `upstream-connect-timeout` at most.
        let mut refused_at: Option<u32> = None;
        loop {
            let state = sol.handle.cell.load();
            if state.phase == Phase::Ready
                && let Some(ep) = sol.pick(&state.endpoints, &gw.pools)
            {
                if let Some(h) = held.take() {
                    drop(h);
                    waited = Some(u32::try_from(f.started.elapsed().as_millis()).unwrap_or(u32::MAX));
                }
                let activity = OwnedActivity::in_flight(sol.clone());
                // Counted in flight first, then the phase checked again: a
                // scale-down marks the solution stopping, then checks that
                // nothing is in flight, so one of the two sees the other.
                if sol.handle.cell.phase() == Phase::Ready {
                    upstream::begin(&ep);
                    let until = tokio::time::Instant::now() + settings.upstream_response_timeout;
                    // Sending through hyper (pool, connect, its response future)
                    // would be most of this future's size: boxed, and only once
                    // the endpoint has room, so that held requests, and requests
                    // queued behind `max-concurrent-requests` after a wake, stay
                    // small. The own client's send is small and shares most of
                    // its slot with the wait for room: not boxed (88 more bytes
                    // for every request, held ones too; no allocation per request).
                    let Ok(permit) = tokio::time::timeout_at(until, upstream::permit(&ep)).await else {
                        upstream::abort(&ep);
                        let resp = queue_timeout(sol, settings, reply_headers, rid);
                        return with_upstream(ep.addr, waited, resp);
                    };
                    // Why the request did not reach the solution: then it is
                    // sent again (another endpoint, a new connection) or held.
                    let not_sent = if f.direct {
                        let added = f.forwarded.as_ref().map(|fwd| (fwd, rid));
                        let sending = direct::send(&ep, &f.req, added, settings.upstream_connect_timeout);
                        match tokio::time::timeout_at(until, sending).await {
                            Ok(Ok(answer)) => {
                                return with_upstream(ep.addr, waited, respond_direct(ep, answer, permit, activity, f.started));
                            }
                            Ok(Err(direct::Error::NotSent(why))) => why,
                            Ok(Err(direct::Error::Failed(why))) => {
                                upstream::abort(&ep);
                                let resp = refuse(sol, upstream_failed(sol, &why), reply_headers, rid);
                                return with_upstream(ep.addr, waited, resp);
                            }
                            Err(_) => {
                                upstream::abort(&ep);
                                let resp = upstream_timeout(sol, &ep, settings.upstream_response_timeout, reply_headers, rid);
                                return with_upstream(ep.addr, waited, resp);
                            }
                        }
                    } else {
                        let sending = upstream::send(&ep, f.req, settings.upstream_connect_timeout, permit);
                        match Box::pin(tokio::time::timeout_at(until, sending)).await {
                            Ok(Ok(sent)) => {
                                return with_upstream(ep.addr, waited, respond(ep, sent, activity, f.client_upgrade, f.started));
                            }
                            Ok(Err(SendError::NotSent(r, why))) => {
                                f.req = *r;
                                why
                            }
                            Ok(Err(SendError::Failed(e))) => {
                                upstream::abort(&ep);
                                let resp = refuse(sol, classify(sol, &e), reply_headers, rid);
                                return with_upstream(ep.addr, waited, resp);
                            }
                            Err(_) => {
                                upstream::abort(&ep);
                                let resp = upstream_timeout(sol, &ep, settings.upstream_response_timeout, reply_headers, rid);
                                return with_upstream(ep.addr, waited, resp);
                            }
                        }
                    };
                    upstream::abort(&ep);
                    tracing::debug!(solution = %sol.name, endpoint = %ep.addr, "not sent: {not_sent}; retrying");
                    drop(activity);
                    let now = Instant::now();
                    let ms = u32::try_from(now.duration_since(f.started).as_millis()).unwrap_or(u32::MAX);
                    let refused_for = Duration::from_millis(u64::from(ms.saturating_sub(*refused_at.get_or_insert(ms))));
                    if now + RETRY_PAUSE >= deadline || refused_for + RETRY_PAUSE >= settings.upstream_connect_timeout {
                        tracing::warn!(solution = %sol.name, endpoint = %ep.addr, "no endpoint took the request within {refused_for:?}: {not_sent}");
                        let msg = format!("{} did not accept the connection", sol.name);
                        let resp = refuse(sol, Refusal::new(StatusCode::BAD_GATEWAY, "upstream_unavailable", msg), reply_headers, rid);
                        return with_upstream(ep.addr, waited, resp);
                    }
                    Box::pin(tokio::time::sleep(RETRY_PAUSE)).await;
                    continue;
                }
                drop(activity);
            }
            let now = Instant::now();
            if state.in_backoff(now) {
                let failure = state.failure.as_ref();
                let retry = failure.map_or(1, |e| e.retry_at.saturating_duration_since(now).as_secs() + 1);
                let why = failure.map_or("it failed to start", |e| e.message.as_str());
                let msg = format!("{} could not be started: {why}; it will be retried", sol.name);
                let r = Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "wake_failed", msg).retry_after(retry);
                return (refuse(sol, r, reply_headers, rid), access_log::Trail::default());
            }
            if matches!(state.phase, Phase::Cold | Phase::Failed | Phase::Stopping) {
                sol.handle.wake();
            }
            if held.is_none() {
                if f.navigation {
                    return (waiting::page(sol, &state), access_log::Trail::default());
                }
                match Activity::try_held(sol, settings.max_held_requests.get()) {
                    Some(a) => held = Some(a),
                    None => {
                        let msg = format!("too many requests are waiting for {} to start; try again shortly", sol.name);
                        let r = Refusal::new(StatusCode::SERVICE_UNAVAILABLE, metrics::HOLD_FULL, msg).retry_after(retry_hint(&state));
                        return (refuse(sol, r, reply_headers, rid), access_log::Trail::default());
                    }
                }
                // Subscribe, then look again: no change can slip in between.
                changes = Some(sol.handle.cell.subscribe());
                continue;
            }
            let Some(rx) = changes.as_mut() else { continue };
            // Boxed: only held requests wait here; the common path's future stays small.
            match Box::pin(tokio::time::timeout_at(deadline.into(), rx.changed())).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    let msg = format!("{} was removed from the configuration", sol.name);
                    let resp =
                        refuse(sol, Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "removed", msg).retry_after(5), reply_headers, rid);
                    return with_wait(f.started, resp);
                }
                Err(_) => {
                    let msg = format!("{} did not become ready within {}", sol.name, proto::units::format_duration(settings.hold_timeout));
                    let r = Refusal::new(StatusCode::SERVICE_UNAVAILABLE, metrics::HOLD_TIMEOUT, msg).retry_after(retry_hint(&state));
                    return with_wait(f.started, refuse(sol, r, reply_headers, rid));
                }
            }
        }
    }
}

/// `resp` with the endpoint that answered (or failed to), and how long the
/// request was held for a wake-up, for the access log.
fn with_upstream(addr: SocketAddr, waited: Option<u32>, resp: Response<Body>) -> (Response<Body>, access_log::Trail) {
    (resp, access_log::Trail { upstream: Some(addr), waited: waited.map(u64::from) })
}

/// A held request given up on, with how long it was held, for the access log.
fn with_wait(started: Instant, resp: Response<Body>) -> (Response<Body>, access_log::Trail) {
    let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    (resp, access_log::Trail { upstream: None, waited: Some(ms) })
}

fn upstream_timeout(
    sol: &SolutionRt,
    ep: &upstream::Endpoint,
    wait: Duration,
    accept: Option<&HeaderValue>,
    rid: &HeaderValue,
) -> Response<Body> {
    let wait = proto::units::format_duration(wait);
    tracing::warn!(solution = %sol.name, endpoint = %ep.addr, "no response within {wait}");
    let msg = format!("{} did not answer within {wait}", sol.name);
    refuse(sol, Refusal::new(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", msg), accept, rid)
}

/// The refusal for a failed send: the client's body broke a limit, or the solution failed.
fn classify(sol: &SolutionRt, e: &hyper::Error) -> Refusal {
    match BodyError::find(e) {
        Some(BodyError::TooLarge(max)) => {
            tracing::info!(solution = %sol.name, "request body cut at {max} bytes");
            Refusal::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", format!("the request body is larger than {max} bytes"))
        }
        Some(BodyError::Timeout(t)) => {
            tracing::info!(solution = %sol.name, "request body stalled for {t:?}");
            Refusal::new(StatusCode::REQUEST_TIMEOUT, "client_timeout", format!("the request body stalled for more than {t:?}"))
        }
        Some(BodyError::Client(err)) => {
            tracing::debug!(solution = %sol.name, "client went away mid-body: {err}");
            Refusal::new(StatusCode::BAD_REQUEST, "client_aborted", "the request body was not received completely")
        }
        None => upstream_failed(sol, e),
    }
}

/// The refusal for a solution that failed mid-exchange.
fn upstream_failed(sol: &SolutionRt, why: &dyn std::fmt::Display) -> Refusal {
    tracing::warn!(solution = %sol.name, "upstream failed: {why}");
    let msg = format!("{} closed the connection without a complete answer", sol.name);
    Refusal::new(StatusCode::BAD_GATEWAY, "upstream_error", msg)
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
    started: Instant,
) -> Response<Body> {
    let Sent { mut response, conn, permit } = sent;
    // The gateway speaks its own protocol version to the client, whatever the
    // solution answered with (an HTTP/1.0 server must not downgrade the client).
    *response.version_mut() = Version::HTTP_11;
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    // (`X-Request-Id` is set on every answer by `handle`.)
    forward::strip_hop_by_hop(response.headers_mut(), switching);
    if response.status() == StatusCode::NO_CONTENT {
        // No length to state (RFC 9110 §8.6): HTTP/2 clients refuse one.
        response.headers_mut().remove(header::CONTENT_LENGTH);
    }
    if switching {
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        let stream = activity.into_stream();
        stream.solution().metrics.duration.observe(started.elapsed().as_secs_f64());
        upstream::abort(&ep);
        let log = (access_log::recording() && client_upgrade.is_some()).then(access_log::Tunnel::default);
        match client_upgrade {
            Some(client_upgrade) => {
                tokio::spawn(tunnel(client_upgrade, upstream_upgrade, stream, log.clone()));
            }
            None => tracing::warn!("solution switched protocols without being asked to"),
        }
        let (parts, _) = response.into_parts();
        let mut resp = Response::from_parts(parts, Body::empty());
        if let Some(log) = log {
            resp.extensions_mut().insert(log);
        }
        return resp;
    }
    let (parts, inner) = response.into_parts();
    let done = Done::new(ep, (Some(conn), permit), activity, started);
    Response::from_parts(parts, Body::Upstream { inner, done: Some(done) })
}

/// The response read by the gateway's own client, on its way to the client.
fn respond_direct(
    ep: Arc<upstream::Endpoint>,
    answer: direct::Answer,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    activity: OwnedActivity,
    started: Instant,
) -> Response<Body> {
    let direct::Answer { mut head, body } = answer;
    // Hop-by-hop fields were left out as the head was read.
    *head.version_mut() = Version::HTTP_11;
    let done = Done::new(ep, (None, permit), activity, started);
    let (parts, ()) = head.into_parts();
    Response::from_parts(parts, Body::Direct(body.with_done(done)))
}

/// Copies bytes both ways between an upgraded client and solution connection,
/// counted as an open stream (which keeps the solution awake) until both close,
/// or until no byte went either way for the solution's `tunnel-idle-timeout`
/// (then both are closed). The access log's line, if one is kept, is written
/// when both close.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    stream: OwnedActivity,
    log: Option<access_log::Tunnel>,
) {
    let idle = stream.solution().spec.load().settings.tunnel_idle_timeout;
    let (c, u) = tokio::join!(client, upstream);
    let (to_client, clean) = match (c, u) {
        (Ok(c), Ok(u)) => {
            let quiet = Quiet::new();
            // Counted as written: an ended stream (a reset) still tells.
            let mut c = Counted { io: TokioIo::new(c), written: 0, quiet: &quiet };
            let mut u = Counted { io: TokioIo::new(u), written: 0, quiet: &quiet };
            match quiet.limit(tokio::io::copy_bidirectional(&mut c, &mut u), idle).await {
                Some(Ok(_)) => (c.written, true),
                Some(Err(e)) => {
                    tracing::debug!("upgraded stream ended: {e}");
                    (c.written, false)
                }
                None => {
                    let idle = proto::units::format_duration(idle);
                    tracing::info!(solution = %stream.solution().name, "upgraded connection closed after {idle} without traffic (tunnel-idle-timeout)");
                    (c.written, false)
                }
            }
        }
        (c, u) => {
            tracing::debug!(client_ok = c.is_ok(), upstream_ok = u.is_ok(), "upgrade did not complete");
            (0, false)
        }
    };
    drop(stream);
    if let Some(log) = log {
        log.closed(to_client, clean);
    }
}

/// When a tunnel last moved a byte, either way.
struct Quiet {
    since: Instant,
    /// Milliseconds after `since` of the last byte read or written.
    last: std::sync::atomic::AtomicU64,
}

impl Quiet {
    fn new() -> Self {
        Self { since: Instant::now(), last: std::sync::atomic::AtomicU64::new(0) }
    }

    fn moved(&self) {
        let ms = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// `f`'s output, or `None` once nothing moved for `idle` (zero: never).
    async fn limit<F: std::future::Future>(&self, f: F, idle: Duration) -> Option<F::Output> {
        if idle.is_zero() {
            return Some(f.await);
        }
        let mut f = std::pin::pin!(f);
        let mut deadline = self.since + idle;
        loop {
            tokio::select! {
                out = &mut f => return Some(out),
                () = tokio::time::sleep_until(deadline.into()) => {
                    let last = self.since + Duration::from_millis(self.last.load(std::sync::atomic::Ordering::Relaxed));
                    if last.elapsed() >= idle {
                        return None;
                    }
                    deadline = last + idle;
                }
            }
        }
    }
}

/// One end of a tunnel: counts the bytes written to it, and notes every byte
/// read or written in the tunnel's [`Quiet`].
struct Counted<'q, T> {
    io: T,
    written: u64,
    quiet: &'q Quiet,
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counted<'_, T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.quiet.moved();
        }
        polled
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Counted<'_, T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut this.io).poll_write(cx, data);
        if let std::task::Poll::Ready(Ok(n)) = polled {
            this.written += n as u64;
            this.quiet.moved();
        }
        polled
    }

    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
