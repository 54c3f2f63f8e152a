//! Prometheus metrics for every decision the gateway takes. Families are
//! registered once; each solution caches its own handles ([`SolutionMetrics`]),
//! so the request path touches atomics, not the registry. No client address
//! or request id is ever a label.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use dashmap::DashMap;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use proto::metrics as names;
use scaler::{Observer, StopReason, WakeOutcome};

/// Request durations: 5 ms (a warm hop) to 2 minutes (a held cold start).
const REQUEST_BUCKETS: [f64; 14] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];
/// Wake-ups: 100 ms (a tiny process) to 5 minutes (a node scale-up).
const WAKE_BUCKETS: [f64; 12] = [0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SolutionLabel {
    solution: String,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(clippy::upper_case_acronyms)]
enum Method {
    GET,
    HEAD,
    POST,
    PUT,
    DELETE,
    PATCH,
    OPTIONS,
    OTHER,
}

impl Method {
    fn of(m: &http::Method) -> Method {
        match *m {
            http::Method::GET => Method::GET,
            http::Method::HEAD => Method::HEAD,
            http::Method::POST => Method::POST,
            http::Method::PUT => Method::PUT,
            http::Method::DELETE => Method::DELETE,
            http::Method::PATCH => Method::PATCH,
            http::Method::OPTIONS => Method::OPTIONS,
            _ => Method::OTHER,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    solution: String,
    method: Method,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    solution: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    solution: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    outcome: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// The registry and every family.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: HistogramFamily<SolutionLabel>,
    last_request: Family<SolutionLabel, FloatGauge>,
    in_flight: Family<SolutionLabel, Gauge>,
    held: Family<SolutionLabel, Gauge>,
    streams: Family<SolutionLabel, Gauge>,
    ready: Family<SolutionLabel, Gauge>,
    wakeups: Family<OutcomeLabels, Counter>,
    wake_duration: HistogramFamily<SolutionLabel>,
    scale_downs: Family<ReasonLabels, Counter>,
    rejected: Family<ReasonLabels, Counter>,
    reloads: Family<ReloadLabels, Counter>,
    reload_ok: Gauge,
    limiter_clients: Gauge,
    /// Access log lines that were not written.
    pub access_log_dropped: Counter,
    /// Certificate and ACME metrics.
    pub tls: crate::tls::TlsMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every family under `wakegate_`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(names::PREFIX);
        let m = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new(REQUEST_BUCKETS)),
            last_request: Family::default(),
            in_flight: Family::default(),
            held: Family::default(),
            streams: Family::default(),
            ready: Family::default(),
            wakeups: Family::default(),
            wake_duration: Family::new_with_constructor(|| Histogram::new(WAKE_BUCKETS)),
            scale_downs: Family::default(),
            rejected: Family::default(),
            reloads: Family::default(),
            reload_ok: Gauge::default(),
            limiter_clients: Gauge::default(),
            access_log_dropped: Counter::default(),
            tls: crate::tls::TlsMetrics::default(),
            registry: Registry::default(),
        };
        registry.register(names::REQUESTS, "Requests answered for a solution, by method and status code", m.requests.clone());
        registry.register(
            names::REQUEST_DURATION,
            "Time from request to the end of the response body, of requests forwarded to a solution (refusals are in rejected_requests)",
            m.duration.clone(),
        );
        registry.register(
            names::LAST_REQUEST_TIMESTAMP,
            "Unix time of the last request seen for a solution (start or end); drives idle scale-down",
            m.last_request.clone(),
        );
        registry.register(names::IN_FLIGHT, "Requests being forwarded to a solution now", m.in_flight.clone());
        registry.register(names::HELD, "Requests held while their solution wakes", m.held.clone());
        registry.register(names::OPEN_STREAMS, "Upgraded connections (WebSocket) open to a solution", m.streams.clone());
        registry.register(names::READY_REPLICAS, "Ready replicas (processes or pods) of a solution", m.ready.clone());
        registry.register(names::WAKEUPS, "Wake-ups from zero, by outcome (ready, failed, timeout)", m.wakeups.clone());
        registry.register(names::WAKEUP_DURATION, "Time from wake request to readiness", m.wake_duration.clone());
        registry.register(names::SCALE_DOWNS, "Scale-downs to zero, by reason (idle, exited, removed, shutdown)", m.scale_downs.clone());
        registry.register(names::REJECTED, "Requests refused by the gateway, by reason", m.rejected.clone());
        registry.register(names::CONFIG_RELOADS, "Configuration reloads, by outcome (success, failure)", m.reloads.clone());
        // At 0 before the first reload, so that `increase()` counts the first failure.
        for outcome in ["success", "failure"] {
            let _ = m.reloads.get_or_create(&ReloadLabels { outcome });
        }
        registry.register(
            names::CONFIG_LAST_RELOAD_SUCCESSFUL,
            "1 while the configuration last read was applied; 0 while it is refused (the last good one serves)",
            m.reload_ok.clone(),
        );
        registry.register(
            "rate_limiter_clients",
            "Client addresses tracked by the per-client rate limiters (bounded by rate-limit-max-clients per solution)",
            m.limiter_clients.clone(),
        );
        registry.register(
            "access_log_dropped_lines",
            "Access log lines not written: the output did not take them fast enough, or failed",
            m.access_log_dropped.clone(),
        );
        let tls = crate::tls::TlsMetrics::register(&mut registry);
        Self { registry, tls, ..m }
    }

    /// Handles for one solution.
    pub fn solution(&self, name: &str) -> SolutionMetrics {
        let label = SolutionLabel { solution: name.to_string() };
        // Created at 0 with the solution: the alerts count these with
        // `increase()`, which does not see a counter's first appearance at 1.
        for outcome in WAKE_OUTCOMES {
            let _ = self.wakeups.get_or_create(&OutcomeLabels { solution: name.to_string(), outcome: outcome.as_str() });
        }
        let reject_cache = DashMap::default();
        for reason in ALERTED_REJECTIONS {
            reject_cache.insert(reason, self.rejected.get_or_create(&ReasonLabels { solution: name.to_string(), reason }).clone());
        }
        SolutionMetrics {
            duration: self.duration.get_or_create(&label).clone(),
            last_request: self.last_request.get_or_create(&label).clone(),
            in_flight: self.in_flight.get_or_create(&label).clone(),
            held: self.held.get_or_create(&label).clone(),
            streams: self.streams.get_or_create(&label).clone(),
            ready: self.ready.get_or_create(&label).clone(),
            requests: self.requests.clone(),
            rejected: self.rejected.clone(),
            request_cache: DashMap::default(),
            reject_cache,
            label,
        }
    }

    /// Drops the series of a removed solution.
    pub fn forget(&self, m: &SolutionMetrics) {
        for f in [&self.in_flight, &self.held, &self.streams, &self.ready] {
            f.remove(&m.label);
        }
        self.last_request.remove(&m.label);
        self.duration.remove(&m.label);
        for key in m.request_cache.iter() {
            let (method, code) = *key.key();
            self.requests.remove(&RequestLabels { solution: m.label.solution.clone(), method, code });
        }
        for key in m.reject_cache.iter() {
            self.rejected.remove(&ReasonLabels { solution: m.label.solution.clone(), reason: key.key() });
        }
        for outcome in WAKE_OUTCOMES {
            self.wakeups.remove(&OutcomeLabels { solution: m.label.solution.clone(), outcome: outcome.as_str() });
        }
    }

    /// Counts a refusal that belongs to no solution (unknown host, bad request).
    pub fn rejected_unrouted(&self, reason: &'static str) {
        self.rejected.get_or_create(&ReasonLabels { solution: String::new(), reason }).inc();
    }

    /// Sets the number of tracked rate-limited clients.
    pub fn rate_limiter_clients(&self, n: usize) {
        self.limiter_clients.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Counts a configuration reload.
    pub fn reload(&self, ok: bool) {
        let outcome = if ok { "success" } else { "failure" };
        self.reloads.get_or_create(&ReloadLabels { outcome }).inc();
        self.reload_ok.set(i64::from(ok));
    }

    /// Records the first configuration, applied (no reload counted).
    pub fn config_applied(&self) {
        self.reload_ok.set(1);
    }

    /// The OpenMetrics text of every series.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Every wake-up outcome, each series made with its solution.
const WAKE_OUTCOMES: [WakeOutcome; 3] = [WakeOutcome::Ready, WakeOutcome::Failed, WakeOutcome::Timeout];
/// The refusal of a held request whose solution took longer than `hold-timeout`.
pub const HOLD_TIMEOUT: &str = "hold_timeout";
/// The refusal of a request when `max-held-requests` are held already.
pub const HOLD_FULL: &str = "hold_full";
/// Refusals deploy/base/prometheusrule.yaml alerts on, made with their solution.
const ALERTED_REJECTIONS: [&str; 2] = [HOLD_TIMEOUT, HOLD_FULL];

impl Observer for Metrics {
    fn woke(&self, solution: &str, outcome: WakeOutcome, took: Duration) {
        let label = SolutionLabel { solution: solution.to_string() };
        self.wakeups.get_or_create(&OutcomeLabels { solution: solution.to_string(), outcome: outcome.as_str() }).inc();
        if outcome == WakeOutcome::Ready {
            self.wake_duration.get_or_create(&label).observe(took.as_secs_f64());
            self.ready.get_or_create(&label).set(1);
        }
    }

    fn stopped(&self, solution: &str, reason: StopReason) {
        self.scale_downs.get_or_create(&ReasonLabels { solution: solution.to_string(), reason: reason.as_str() }).inc();
        self.ready.get_or_create(&SolutionLabel { solution: solution.to_string() }).set(0);
    }
}

/// One solution's cached handles.
pub struct SolutionMetrics {
    label: SolutionLabel,
    /// `request_duration_seconds`.
    pub duration: Histogram,
    /// `last_request_timestamp_seconds`.
    pub last_request: FloatGauge,
    /// `in_flight_requests`.
    pub in_flight: Gauge,
    /// `held_requests`.
    pub held: Gauge,
    /// `open_streams`.
    pub streams: Gauge,
    /// `ready_replicas`.
    pub ready: Gauge,
    requests: Family<RequestLabels, Counter>,
    rejected: Family<ReasonLabels, Counter>,
    // Looked up on every request: keys from a small fixed set (method, status
    // code; reasons), so a fast hash rather than SipHash.
    request_cache: DashMap<(Method, u16), Counter, foldhash::fast::RandomState>,
    reject_cache: DashMap<&'static str, Counter, foldhash::fast::RandomState>,
}

impl SolutionMetrics {
    /// Counts an answered request.
    pub fn request(&self, method: &http::Method, code: u16) {
        let key = (Method::of(method), code);
        if let Some(c) = self.request_cache.get(&key) {
            c.inc();
            return;
        }
        let labels = RequestLabels { solution: self.label.solution.clone(), method: key.0, code };
        let c = self.requests.get_or_create(&labels).clone();
        c.inc();
        self.request_cache.insert(key, c);
    }

    /// Counts a refusal.
    pub fn rejected(&self, reason: &'static str) {
        if let Some(c) = self.reject_cache.get(reason) {
            c.inc();
            return;
        }
        let c = self.rejected.get_or_create(&ReasonLabels { solution: self.label.solution.clone(), reason }).clone();
        c.inc();
        self.reject_cache.insert(reason, c);
    }

    /// Marks activity now (start or end of a request).
    pub fn touch(&self) {
        // Twice per request; a tick's precision is plenty for idle minutes.
        self.last_request.set(crate::clock::unix().as_secs_f64());
    }

    /// Requests in flight + held + open streams.
    pub fn busy(&self) -> u64 {
        let n = self.in_flight.get() + self.held.get() + self.streams.get();
        u64::try_from(n).unwrap_or(0)
    }
}
