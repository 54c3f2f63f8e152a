//! The waiting page: what a browser sees at once while its solution wakes. It
//! follows the wake-up live (server-sent events from [`STATUS_PATH`] on the
//! solution's own host, with a polling fallback) and reloads itself when the
//! solution is ready, so the user lands on the solution's own page.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use proto::{Backend, Phase, WakeStep};
use scaler::SolutionState;

use crate::body::Body;
use crate::refusal::html_escape;
use crate::solution::SolutionRt;

/// Live status of a solution's wake-up, on the solution's host. Under
/// `/.well-known/` (RFC 8615) so it cannot clash with a solution's own paths.
pub const STATUS_PATH: &str = "/.well-known/wakegate/status";

/// Longest a status stream stays open (a page left open in a tab).
const STREAM_MAX: Duration = Duration::from_secs(600);
/// Keep-alive comments on the status stream, so idle proxies keep it open.
const STREAM_HEARTBEAT: Duration = Duration::from_secs(15);

/// A top-level browser navigation: GET or HEAD that accepts HTML, and,
/// where the browser says how it fetches (`Sec-Fetch-Mode`), a navigation:
/// a page's own `fetch()` or htmx request asking for HTML is held like any
/// script's, not given the waiting page.
/// (`fetch_mode` is asked only of a request that could be one: most are not.)
pub fn is_navigation<'a>(method: &Method, accept: Option<&HeaderValue>, fetch_mode: impl FnOnce() -> Option<&'a HeaderValue>) -> bool {
    (method == Method::GET || method == Method::HEAD)
        && accept.and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/html"))
        && fetch_mode().is_none_or(|m| m.as_bytes().eq_ignore_ascii_case(b"navigate"))
}

/// The status as JSON.
pub fn status_json(sol: &SolutionRt, s: &SolutionState) -> String {
    let now = Instant::now();
    let elapsed = s.wake_started.map(|t| now.saturating_duration_since(t).as_millis() as u64);
    let retry_in = s.failure.as_ref().map(|f| f.retry_at.saturating_duration_since(now).as_millis() as u64);
    serde_json::json!({
        "solution": &*sol.name,
        "phase": s.phase.as_str(),
        "elapsed_ms": elapsed,
        "eta_ms": s.eta.map(|d| d.as_millis() as u64),
        "message": s.failure.as_ref().map(|f| f.message.as_str()),
        "retry_in_ms": retry_in,
        "step": s.step.map(WakeStep::as_str),
        "detail": s.detail.as_deref(),
    })
    .to_string()
}

/// Answers the status path: a server-sent event stream when asked for one,
/// else one JSON snapshot.
pub fn status(sol: &std::sync::Arc<SolutionRt>, headers: &HeaderMap) -> Response<Body> {
    let wants_stream = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/event-stream"));
    if !wants_stream {
        let mut r = Response::new(Body::full(status_json(sol, &sol.handle.cell.load())));
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return r;
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let sol = sol.clone();
    tokio::spawn(async move {
        let mut changes = sol.handle.cell.subscribe();
        let end = tokio::time::Instant::now() + STREAM_MAX;
        loop {
            let s = sol.handle.cell.load();
            let event = format!("data: {}\n\n", status_json(&sol, &s));
            if tx.send(Bytes::from(event)).await.is_err() || s.phase == Phase::Ready {
                return;
            }
            loop {
                tokio::select! {
                    r = changes.changed() => { if r.is_err() { return } break }
                    _ = tokio::time::sleep(STREAM_HEARTBEAT) => {
                        if tx.send(Bytes::from_static(b": keep-alive\n\n")).await.is_err() { return }
                    }
                    _ = tokio::time::sleep_until(end) => return,
                }
            }
        }
    });
    let mut r = Response::new(Body::Channel(rx));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The waiting page for `sol` in state `s`. Status 503 with `Retry-After`, so
/// crawlers and caches do not keep it; browsers show it all the same.
pub fn page(sol: &SolutionRt, s: &SolutionState) -> Response<Body> {
    let name = html_escape(&sol.name);
    // Inside <script> entities are not decoded: keep the JSON, but never let it close the tag.
    let initial = status_json(sol, s).replace('<', "\\u003c");
    let cluster = matches!(sol.spec.load().backend, Backend::Cluster(_));
    let steps = if cluster { CLUSTER_STEPS } else { LOCAL_STEPS };
    let steps: String = steps.iter().map(|(key, label)| format!("<li data-p=\"{key}\">{label}</li>")).collect();
    let body =
        PAGE.replace("{{name}}", &name).replace("{{steps}}", &steps).replace("{{status}}", &initial).replace("{{path}}", STATUS_PATH);
    let mut r = Response::new(Body::full(body));
    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let mut r = crate::access_log::with_reason(r, "waiting_page");
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// The steps shown for a local process: its phases.
const LOCAL_STEPS: &[(&str, &str)] =
    &[(Phase::Starting.as_str(), "starting"), (Phase::Probing.as_str(), "checking"), (Phase::Ready.as_str(), "ready")];
/// The steps shown for a cluster solution: its Pods' [`WakeStep`]s, then ready.
const CLUSTER_STEPS: &[(&str, &str)] = &[
    (WakeStep::ScaleRequested.as_str(), "scale requested"),
    (WakeStep::PodScheduled.as_str(), "pod scheduled"),
    (WakeStep::ContainerStarted.as_str(), "container started"),
    (Phase::Ready.as_str(), "ready"),
];

const PAGE: &str = r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Starting {{name}}…</title>
<noscript><meta http-equiv="refresh" content="2"></noscript>
<style>
 body { font: 16px/1.5 system-ui, sans-serif; color: #1d2330; background: #f6f7fb; margin: 0; }
 main { max-width: 34em; margin: 12vh auto; background: #fff; padding: 2em 2.2em; border-radius: 12px; box-shadow: 0 2px 14px #0001; }
 h1 { font-size: 1.35em; margin: 0 0 .3em; }
 p { margin: .4em 0; color: #4a5263; }
 ol { list-style: none; padding: 0; margin: 1.4em 0 1em; display: flex; gap: .5em; }
 li { flex: 1; text-align: center; padding: .45em 0; border-radius: 6px; background: #eef0f5; color: #8a91a0; font-size: .9em; }
 li.done { background: #dff3e4; color: #236b35; }
 li.now { background: #2f6fed; color: #fff; }
 .bar { height: 6px; background: #eef0f5; border-radius: 3px; overflow: hidden; }
 .bar div { height: 100%; width: 0; background: #2f6fed; transition: width .4s; }
 .err { color: #a12a2a; }
 small { color: #8a91a0; }
</style>
</head>
<body>
<main>
 <h1>Starting <strong>{{name}}</strong></h1>
 <p>This demo sleeps while nobody uses it. It is waking up for you; this page continues by itself.</p>
 <ol id="steps">{{steps}}</ol>
 <div class="bar"><div id="bar"></div></div>
 <p id="line">Waiting…</p>
 <p id="detail" hidden></p>
 <p id="err" class="err" hidden></p>
 <small>wakegate</small>
</main>
<script type="application/json" id="initial">{{status}}</script>
<script>
(function () {
  "use strict";
  var url = "{{path}}";
  var items = document.querySelectorAll("#steps li");
  var order = Array.prototype.map.call(items, function (li) { return li.getAttribute("data-p"); });
  var s = JSON.parse(document.getElementById("initial").textContent);
  var seenAt = Date.now();
  var done = false;
  function fmt(ms) { return (ms / 1000).toFixed(1) + " s"; }
  function draw() {
    var elapsed = s.elapsed_ms == null ? null : s.elapsed_ms + (Date.now() - seenAt);
    // A cluster wake-up names its step (from the Pods); a local one its phase.
    var idx = order.indexOf(s.step && s.phase !== "ready" ? s.step : s.phase);
    items.forEach(function (li, i) {
      li.className = i < idx ? "done" : (i === idx ? "now" : "");
    });
    var line = "Waiting for " + (idx >= 0 ? items[idx].textContent : s.phase) + "…";
    if (elapsed != null) line = "Waking up: " + fmt(elapsed);
    if (elapsed != null && s.eta_ms) line += " (usually takes about " + fmt(s.eta_ms) + ")";
    document.getElementById("line").textContent = line;
    // Without an estimate, the share of the steps done (3 local, 4 in a cluster).
    var pct = (elapsed != null && s.eta_ms) ? Math.min(95, 100 * elapsed / s.eta_ms) : (idx < 0 ? 5 : 90 * (idx + 1) / order.length);
    document.getElementById("bar").style.width = pct + "%";
    var detail = document.getElementById("detail");
    detail.hidden = !s.detail || s.phase === "failed";
    detail.textContent = s.detail ? "Now: " + s.detail : "";
    var err = document.getElementById("err");
    if (s.phase === "failed" && s.message) { err.hidden = false; err.textContent = "It could not be started: " + s.message + ". Retrying automatically."; }
    else { err.hidden = true; }
  }
  function update(next) {
    s = next; seenAt = Date.now(); draw();
    if (done) return;
    if (s.phase === "ready") { done = true; location.reload(); }
    else if (s.phase === "failed") { done = true; setTimeout(function () { location.reload(); }, Math.max(1000, s.retry_in_ms || 0)); }
    else if (s.phase === "cold") { done = true; setTimeout(function () { location.reload(); }, 500); }
  }
  function poll() {
    fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" })
      .then(function (r) { return r.json(); })
      .then(function (n) { update(n); if (!done) setTimeout(poll, 1000); })
      .catch(function () { if (!done) setTimeout(poll, 2000); });
  }
  draw();
  setInterval(draw, 200);
  if (window.EventSource) {
    var es = new EventSource(url);
    es.onmessage = function (e) { update(JSON.parse(e.data)); if (done) es.close(); };
    es.onerror = function () { es.close(); if (!done) poll(); };
  } else {
    poll();
  }
})();
</script>
</body>
</html>
"##;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_navigation_gets_the_page() {
        let html = HeaderValue::from_static("text/html,application/xhtml+xml,*/*;q=0.8");
        let (nav, cors) = (HeaderValue::from_static("navigate"), HeaderValue::from_static("cors"));
        assert!(is_navigation(&Method::GET, Some(&html), || None), "a browser that does not say");
        assert!(is_navigation(&Method::GET, Some(&html), || Some(&nav)));
        assert!(is_navigation(&Method::HEAD, Some(&html), || Some(&nav)));
        assert!(!is_navigation(&Method::GET, Some(&html), || Some(&cors)), "fetch() or htmx asking for HTML");
        assert!(!is_navigation(&Method::POST, Some(&html), || Some(&nav)));
        assert!(!is_navigation(&Method::GET, Some(&HeaderValue::from_static("*/*")), || None));
        assert!(!is_navigation(&Method::GET, None, || None));
    }
}
