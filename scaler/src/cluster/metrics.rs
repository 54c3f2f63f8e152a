//! The scaler's own metrics and admin endpoints.

use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::serve::reply;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScaleDownLabels {
    solution: String,
    reason: &'static str,
}

/// The scaler's metric families.
pub struct ScalerMetrics {
    registry: Registry,
    wake_requests: Family<OutcomeLabels, Counter>,
    scale_downs: Family<ScaleDownLabels, Counter>,
    scrape_failures: Counter,
    conflicts: Counter,
    rounds: Family<OutcomeLabels, Counter>,
    leader: Gauge,
    ready: AtomicBool,
}

impl Default for ScalerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ScalerMetrics {
    /// Registers every family under `wakegate_`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(proto::metrics::PREFIX);
        let m = Self {
            registry: Registry::default(),
            wake_requests: Family::default(),
            scale_downs: Family::default(),
            scrape_failures: Counter::default(),
            conflicts: Counter::default(),
            rounds: Family::default(),
            leader: Gauge::default(),
            ready: AtomicBool::new(true),
        };
        registry.register(
            "scaler_wake_requests",
            "Wake API calls, by outcome (scaled, already_up, unauthorized, error)",
            m.wake_requests.clone(),
        );
        registry.register(proto::metrics::SCALE_DOWNS, "Scale-downs to zero, by reason", m.scale_downs.clone());
        registry.register(
            "reaper_scrape_failures",
            "Readings of the gateways' activity that failed: a replica, or Prometheus with activity-source prometheus, could not be read (that round scaled nothing down)",
            m.scrape_failures.clone(),
        );
        registry.register(
            "reaper_scale_down_conflicts",
            "Scale-downs not made because the Deployment changed after the round read it (woken, scaled or rolled out meanwhile; looked at again next round)",
            m.conflicts.clone(),
        );
        registry.register("reaper_rounds", "Idle checks, by outcome (done, skipped)", m.rounds.clone());
        // At 0 from the start: an alert's `increase()` then sees the first round of each.
        for outcome in ["done", "skipped"] {
            let _ = m.rounds.get_or_create(&OutcomeLabels { outcome });
        }
        registry.register("scaler_leader", "1 while this replica holds the scaler Lease", m.leader.clone());
        Self { registry, ..m }
    }

    /// Counts a wake API call.
    pub fn wake(&self, outcome: &'static str) {
        self.wake_requests.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Counts a scale-down.
    pub fn scaled_down(&self, solution: &str, reason: &'static str) {
        self.scale_downs.get_or_create(&ScaleDownLabels { solution: solution.to_string(), reason }).inc();
    }

    /// Counts an unreadable gateway.
    pub fn scrape_failed(&self) {
        self.scrape_failures.inc();
    }

    /// Counts a scale-down refused by the API server's resourceVersion check.
    pub fn round_conflict(&self) {
        self.conflicts.inc();
    }

    /// Counts a reaper round.
    pub fn round(&self, outcome: &'static str) {
        self.rounds.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Sets whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Answers an admin request: `/metrics`, `/healthz`, `/readyz`.
    pub fn admin<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        match req.uri().path() {
            "/metrics" => {
                let mut out = String::new();
                let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
                let accept = req.headers().get(http::header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
                let (ctype, page) = proto::metrics::negotiate(accept, out);
                reply(StatusCode::OK, ctype, page)
            }
            "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n"),
            "/readyz" if self.ready.load(Ordering::Relaxed) => reply(StatusCode::OK, "text/plain", "ready\n"),
            "/readyz" => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n"),
            _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
        }
    }
}
