//! The state a solution publishes: its phase, its ready endpoints and what a
//! waiting user should be told. Readers on the request path load it lock-free
//! ([`StateCell::load`]); waiters subscribe to change notifications.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use proto::{Phase, WakeStep};
use tokio::sync::watch;

/// A solution's observable state; replaced whole on every change.
#[derive(Debug, Clone)]
pub struct SolutionState {
    /// Where it is between zero and serving.
    pub phase: Phase,
    /// Addresses that pass readiness; empty unless `phase` is `Ready`.
    pub endpoints: Arc<[SocketAddr]>,
    /// When the current phase began (monotonic).
    pub since: Instant,
    /// When the current phase began (wall clock, for idle decisions and pages).
    pub since_wall: SystemTime,
    /// When the current wake-up began, while one is under way.
    pub wake_started: Option<Instant>,
    /// The last failed start, while its back-off lasts.
    pub failure: Option<Failure>,
    /// Expected wake-up time, from past wake-ups (median of the last few).
    pub eta: Option<Duration>,
    /// Successful wake-ups so far.
    pub wakeups: u64,
    /// How far a cluster wake-up has come, from its Pods; only while waking.
    pub step: Option<WakeStep>,
    /// What the most advanced Pod waits for (`ImagePullBackOff: …`,
    /// `0/3 nodes are available: …`); only while waking.
    pub detail: Option<Arc<str>>,
}

/// Why the last start failed and when the next may be tried.
#[derive(Debug, Clone)]
pub struct Failure {
    /// For users and logs; never the process's own output.
    pub message: String,
    /// No new start before this.
    pub retry_at: Instant,
}

impl SolutionState {
    /// A cold solution.
    pub fn cold() -> Self {
        Self::new(Phase::Cold)
    }

    /// A fresh state in `phase`, with no endpoints.
    pub fn new(phase: Phase) -> Self {
        Self {
            phase,
            endpoints: Arc::from(Vec::new()),
            since: Instant::now(),
            since_wall: SystemTime::now(),
            wake_started: None,
            failure: None,
            eta: None,
            wakeups: 0,
            step: None,
            detail: None,
        }
    }

    /// This state moved to `phase`, stamped now; a wake-up's step and detail
    /// are kept only while it is still waking.
    pub fn to(&self, phase: Phase) -> Self {
        let (step, detail) = if phase.is_waking() { (self.step, self.detail.clone()) } else { (None, None) };
        Self { phase, since: Instant::now(), since_wall: SystemTime::now(), step, detail, ..self.clone() }
    }

    /// Whether requests should wait (rather than be refused or forwarded).
    pub fn in_backoff(&self, now: Instant) -> bool {
        self.phase == Phase::Failed && self.failure.as_ref().is_some_and(|f| f.retry_at > now)
    }
}

/// The published state of one solution: a lock-free snapshot plus a change
/// notification for the few who wait.
#[derive(Debug)]
pub struct StateCell {
    state: ArcSwap<SolutionState>,
    changed: watch::Sender<u64>,
}

impl StateCell {
    /// A cell holding `state`.
    pub fn new(state: SolutionState) -> Self {
        Self { state: ArcSwap::from_pointee(state), changed: watch::channel(0).0 }
    }

    /// The current state.
    pub fn load(&self) -> Arc<SolutionState> {
        self.state.load_full()
    }

    /// The current phase, without cloning the state.
    pub fn phase(&self) -> Phase {
        self.state.load().phase
    }

    /// Notified on every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Replaces the state and wakes the waiters.
    pub fn publish(&self, state: SolutionState) {
        self.state.store(Arc::new(state));
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        self.changed.send_modify(|n| *n += 1);
    }
}
