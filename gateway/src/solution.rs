//! A solution at run time, as the gateway holds it: its spec (replaced on
//! reload), its orchestrator handle, its metric handles (which double as its
//! activity counters) and its upstream endpoints.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use proto::{Phase, SolutionSpec};
use scaler::SolutionHandle;
use scaler::reaper::{Candidate, Observed};

use crate::limits::RateLimiter;
use crate::metrics::SolutionMetrics;
use crate::upstream::{Endpoint, Pools};

/// The endpoints last built from the orchestrator's state.
struct EndpointSet {
    /// The state's address list this set was built from (compared by pointer).
    addrs: Arc<[SocketAddr]>,
    endpoints: Vec<Arc<Endpoint>>,
}

/// A solution's rate limiters, rebuilt only when their settings change (so an
/// unrelated edit keeps every client's state).
pub struct Limiters {
    key: (u32, u32, u32, u32),
    /// Per client, if `rate-limit-rps` > 0.
    pub client: Option<RateLimiter>,
    /// All clients together, if `solution-rate-limit-rps` > 0.
    pub solution: Option<RateLimiter>,
}

impl Limiters {
    fn new(s: &proto::SolutionSettings, max_clients: u32) -> Self {
        let key = (s.rate_limit_rps, s.rate_limit_burst, s.solution_rate_limit_rps, max_clients);
        let max = usize::try_from(max_clients).unwrap_or(usize::MAX);
        Self {
            key,
            client: (s.rate_limit_rps > 0).then(|| RateLimiter::new(s.rate_limit_rps, s.rate_limit_burst, max)),
            solution: (s.solution_rate_limit_rps > 0).then(|| RateLimiter::new(s.solution_rate_limit_rps, 0, 1)),
        }
    }
}

/// One solution.
pub struct SolutionRt {
    /// Its name (the subdomain label).
    pub name: Arc<str>,
    /// The current spec; settings changes apply to the next request.
    pub spec: ArcSwap<SolutionSpec>,
    /// Its orchestrator handle.
    pub handle: SolutionHandle,
    /// Its metrics and activity counters.
    pub metrics: SolutionMetrics,
    endpoints: ArcSwap<EndpointSet>,
    /// Its rate limiters.
    pub limits: ArcSwap<Limiters>,
}

impl SolutionRt {
    /// A solution with no endpoints yet.
    pub fn new(spec: SolutionSpec, handle: SolutionHandle, metrics: SolutionMetrics, max_clients: u32) -> Self {
        let empty = EndpointSet { addrs: Arc::from(Vec::new()), endpoints: Vec::new() };
        let limits = ArcSwap::from_pointee(Limiters::new(&spec.settings, max_clients));
        Self {
            name: Arc::from(spec.name.as_str()),
            spec: ArcSwap::from_pointee(spec),
            handle,
            metrics,
            endpoints: ArcSwap::from_pointee(empty),
            limits,
        }
    }

    /// Takes a new spec; rebuilds the rate limiters only if their settings changed.
    pub fn update(&self, spec: SolutionSpec, max_clients: u32) {
        let fresh = Limiters::new(&spec.settings, max_clients);
        if fresh.key != self.limits.load().key {
            self.limits.store(Arc::new(fresh));
        }
        let resized = self.spec.load().settings.max_concurrent_requests != spec.settings.max_concurrent_requests;
        self.spec.store(Arc::new(spec));
        if resized {
            // The next pick builds the set again, with the new concurrency.
            self.endpoints.store(Arc::new(EndpointSet { addrs: Arc::from(Vec::new()), endpoints: Vec::new() }));
        }
    }

    /// Picks an endpoint among `addrs` (the current ready set): the less busy of
    /// two random choices.
    pub fn pick(&self, addrs: &Arc<[SocketAddr]>, pools: &Pools) -> Option<Arc<Endpoint>> {
        let set = self.endpoints.load();
        let set = if Arc::ptr_eq(&set.addrs, addrs) {
            set
        } else {
            let max = self.spec.load().settings.max_concurrent_requests;
            let endpoints = addrs.iter().map(|a| pools.endpoint(*a, max)).collect();
            self.endpoints.store(Arc::new(EndpointSet { addrs: addrs.clone(), endpoints }));
            self.endpoints.load()
        };
        let eps = &set.endpoints;
        match eps.len() {
            0 => None,
            1 => Some(eps[0].clone()),
            n => {
                let a = fastrand::usize(..n);
                let b = (a + 1 + fastrand::usize(..n - 1)) % n;
                let pick = if eps[a].in_flight() <= eps[b].in_flight() { a } else { b };
                Some(eps[pick].clone())
            }
        }
    }

    /// Unix seconds of the last request, if any.
    pub fn last_request(&self) -> Option<f64> {
        let v = self.metrics.last_request.get();
        (v > 0.0).then_some(v)
    }

    /// What the idle reaper needs.
    pub fn candidate(self: &Arc<Self>) -> Option<Candidate> {
        let spec = self.spec.load();
        if !spec.scales() {
            return None;
        }
        let state = self.handle.cell.load();
        let last_request = self.last_request().map(|s| UNIX_EPOCH + Duration::from_secs_f64(s));
        let observed = Observed {
            phase: state.phase,
            ready_since: state.since_wall,
            last_request,
            busy: self.metrics.busy(),
            idle_timeout: spec.settings.idle_timeout,
        };
        let me = self.clone();
        let seen = self.metrics.last_request.get();
        let still_idle = Arc::new(move || {
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            me.metrics.busy() == 0 && me.metrics.last_request.get() == seen
        });
        Some(Candidate { name: self.name.clone(), handle: self.handle.clone(), observed, still_idle })
    }

    /// The phase as the catalog shows it.
    pub fn catalog_state(&self) -> &'static str {
        match self.handle.cell.phase() {
            Phase::Ready => "ready",
            Phase::Starting | Phase::Probing => "waking",
            Phase::Failed => "failed",
            Phase::Stopping => "stopping",
            Phase::Cold => "cold",
        }
    }
}

/// Counts a request in `gauge` while it lives, and marks activity at both ends.
pub struct Activity<'a> {
    sol: &'a SolutionRt,
    gauge: &'a prometheus_client::metrics::gauge::Gauge,
}

impl<'a> Activity<'a> {
    /// A held request, unless `max` are held already.
    pub fn try_held(sol: &'a SolutionRt, max: u32) -> Option<Self> {
        let gauge = &sol.metrics.held;
        let before = gauge.inc();
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        if before >= i64::from(max) {
            gauge.dec();
            return None;
        }
        Some(Self { sol, gauge })
    }
}

impl Drop for Activity<'_> {
    fn drop(&mut self) {
        self.sol.metrics.touch();
        self.gauge.dec();
    }
}

/// An owned activity count (for bodies and tunnels that outlive the handler).
pub struct OwnedActivity {
    sol: Arc<SolutionRt>,
    kind: Kind,
}

#[derive(Clone, Copy)]
enum Kind {
    InFlight,
    Stream,
}

impl OwnedActivity {
    /// A request being forwarded.
    pub fn in_flight(sol: Arc<SolutionRt>) -> Self {
        sol.metrics.in_flight.inc();
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        Self { sol, kind: Kind::InFlight }
    }

    /// Turns a forwarded request into an open upgraded stream.
    pub fn into_stream(self) -> Self {
        self.sol.metrics.streams.inc();
        let sol = self.sol.clone();
        drop(self);
        Self { sol, kind: Kind::Stream }
    }

    /// The solution.
    pub fn solution(&self) -> &Arc<SolutionRt> {
        &self.sol
    }
}

impl Drop for OwnedActivity {
    fn drop(&mut self) {
        self.sol.metrics.touch();
        match self.kind {
            Kind::InFlight => self.sol.metrics.in_flight.dec(),
            Kind::Stream => self.sol.metrics.streams.dec(),
        };
    }
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}
