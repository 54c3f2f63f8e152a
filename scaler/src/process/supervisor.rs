//! The task that owns one solution: a small state machine driven by commands
//! (wake, sleep, update, shutdown), the process's exit, and probe ticks.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::{Backend, Phase, SolutionSpec};
use tokio::sync::mpsc;

use super::child::Running;
use crate::orchestrator::{Cmd, Observer, StopReason, WakeOutcome};
use crate::probe::{self, ProbeResult};
use crate::state::{Failure, SolutionState, StateCell};

/// Past wake-ups kept for the estimate shown on the waiting page.
const HISTORY: usize = 5;
/// Longest wait for one probe answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// First retry after a failed start; doubles per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// A solution that keeps failing is retried at most this often.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Retry period for an upstream whose name does not resolve.
const RESOLVE_RETRY: Duration = Duration::from_secs(5);

/// Probe often at first (fast starters answer within milliseconds, and every
/// millisecond between readiness and the probe is added to the cold request),
/// less often for slow starters.
fn probe_interval(elapsed: Duration) -> Duration {
    if elapsed < Duration::from_secs(1) {
        Duration::from_millis(2)
    } else if elapsed < Duration::from_secs(5) {
        Duration::from_millis(10)
    } else {
        Duration::from_millis(50)
    }
}

enum Run {
    Idle,
    Starting { proc: Running, started: Instant, next_probe: Instant, last: String },
    Ready(Running),
}

impl Run {
    async fn exited(&mut self) -> String {
        let proc = match self {
            Run::Idle => return std::future::pending().await,
            Run::Starting { proc, .. } | Run::Ready(proc) => proc,
        };
        match proc.wait().await {
            Ok(status) => status.to_string(),
            Err(e) => format!("wait failed: {e}"),
        }
    }

    fn next_probe(&self) -> Option<Instant> {
        match self {
            Run::Starting { next_probe, .. } => Some(*next_probe),
            _ => None,
        }
    }
}

/// Owns one solution.
pub struct Supervisor {
    spec: SolutionSpec,
    cell: Arc<StateCell>,
    rx: mpsc::UnboundedReceiver<Cmd>,
    observer: Arc<dyn Observer>,
    history: VecDeque<Duration>,
    failures: u32,
    run: Run,
}

impl Supervisor {
    /// A supervisor for `spec`, publishing to `cell`, obeying `rx`.
    pub fn new(spec: SolutionSpec, cell: Arc<StateCell>, rx: mpsc::UnboundedReceiver<Cmd>, observer: Arc<dyn Observer>) -> Self {
        Self { spec, cell, rx, observer, history: VecDeque::new(), failures: 0, run: Run::Idle }
    }

    /// Runs until shut down.
    pub async fn run(mut self) {
        if matches!(self.spec.backend, Backend::Upstream(_)) {
            return self.run_upstream().await;
        }
        loop {
            let next_probe = self.run.next_probe();
            tokio::select! {
                biased;
                cmd = self.rx.recv() => match cmd {
                    Some(Cmd::Wake) => self.wake(),
                    Some(Cmd::Sleep(reason, still_idle)) => self.sleep(reason, still_idle).await,
                    Some(Cmd::Update(spec)) => {
                        if spec.backend != self.spec.backend && !matches!(self.run, Run::Idle) {
                            tracing::info!(solution = self.name(), "its command changed: the new one runs from its next start (it is running the old one)");
                        }
                        self.spec = *spec;
                    }
                    Some(Cmd::Shutdown(reason, ack)) => {
                        self.stop(reason).await;
                        let _ = ack.send(());
                        return;
                    }
                    None => {
                        self.stop(StopReason::Shutdown).await;
                        return;
                    }
                },
                status = self.run.exited() => self.on_exit(status),
                _ = sleep_until(next_probe), if next_probe.is_some() => self.probe().await,
            }
        }
    }

    fn name(&self) -> &str {
        &self.spec.name
    }

    fn publish(&self, state: SolutionState) {
        tracing::debug!(solution = self.name(), phase = state.phase.as_str(), "phase");
        self.cell.publish(state);
    }

    fn wake(&mut self) {
        let current = self.cell.load();
        if !matches!(self.run, Run::Idle) || current.in_backoff(Instant::now()) {
            return;
        }
        let Backend::Process(p) = &self.spec.backend else { return };
        let now = Instant::now();
        let mut next = current.to(Phase::Starting);
        next.wake_started = Some(now);
        next.eta = self.eta();
        match Running::spawn(&self.spec.name, p) {
            Ok(proc) => {
                self.run = Run::Starting { proc, started: now, next_probe: now, last: String::new() };
                next.failure = None;
                self.publish(next);
            }
            Err(e) => {
                tracing::warn!(solution = self.name(), "cannot start {:?} in {}: {e}", p.argv, p.cwd.display());
                self.fail(next, format!("cannot start the command: {e}"), WakeOutcome::Failed, Duration::ZERO);
            }
        }
    }

    async fn probe(&mut self) {
        let Run::Starting { proc, started, last, .. } = &mut self.run else { return };
        let Backend::Process(p) = &self.spec.backend else { return };
        let elapsed = started.elapsed();
        let result = probe::check(&p.probe, proc.addr, PROBE_TIMEOUT).await;
        match result {
            ProbeResult::Ready => {
                let Run::Starting { proc, started, .. } = std::mem::replace(&mut self.run, Run::Idle) else { return };
                let took = started.elapsed();
                self.failures = 0;
                self.history.push_back(took);
                if self.history.len() > HISTORY {
                    self.history.pop_front();
                }
                let mut next = self.cell.load().to(Phase::Ready);
                next.endpoints = Arc::from(vec![proc.addr]);
                next.wake_started = None;
                next.wakeups += 1;
                next.eta = self.eta();
                self.run = Run::Ready(proc);
                tracing::info!(solution = self.name(), took_ms = took.as_millis() as u64, "ready");
                self.publish(next);
                self.observer.woke(self.name(), WakeOutcome::Ready, took);
                return;
            }
            ProbeResult::Open(reason) => {
                *last = reason;
                if self.cell.phase() == Phase::Starting {
                    let next = self.cell.load().to(Phase::Probing);
                    self.publish(next);
                }
            }
            ProbeResult::Closed => {}
        }
        let Run::Starting { started, next_probe, last, .. } = &mut self.run else { return };
        let timeout = self.spec.settings.startup_timeout;
        if elapsed >= timeout {
            let why = if last.is_empty() { "the port never opened".to_string() } else { last.clone() };
            let started = *started;
            if let Run::Starting { proc, .. } = std::mem::replace(&mut self.run, Run::Idle) {
                tracing::warn!(solution = self.name(), stderr = %proc.stderr_tail(), "not ready after {timeout:?} ({why}); stopping it");
                proc.stop(self.spec.settings.stop_grace).await;
            }
            let msg = format!("did not become ready within {} ({why})", proto::units::format_duration(timeout));
            self.fail(self.cell.load().to(Phase::Failed), msg, WakeOutcome::Timeout, started.elapsed());
        } else {
            *next_probe = Instant::now() + probe_interval(elapsed);
        }
    }

    fn on_exit(&mut self, status: String) {
        match std::mem::replace(&mut self.run, Run::Idle) {
            Run::Idle => {}
            Run::Starting { proc, started, .. } => {
                tracing::warn!(solution = self.name(), stderr = %proc.stderr_tail(), "exited during start: {status}");
                let msg = format!("the process exited during start ({status})");
                self.fail(self.cell.load().to(Phase::Failed), msg, WakeOutcome::Failed, started.elapsed());
            }
            Run::Ready(proc) => {
                tracing::warn!(solution = self.name(), stderr = %proc.stderr_tail(), "exited by itself: {status}; cold until the next request");
                let mut next = self.cell.load().to(Phase::Cold);
                next.endpoints = Arc::from(Vec::new());
                self.publish(next);
                self.observer.stopped(self.name(), StopReason::Exited);
            }
        }
    }

    fn fail(&mut self, mut next: SolutionState, message: String, outcome: WakeOutcome, took: Duration) {
        self.failures += 1;
        let backoff = FIRST_BACKOFF.saturating_mul(1 << (self.failures - 1).min(16)).min(MAX_BACKOFF);
        next.phase = Phase::Failed;
        next.endpoints = Arc::from(Vec::new());
        next.wake_started = None;
        next.failure = Some(Failure { message, retry_at: Instant::now() + backoff });
        self.publish(next);
        self.observer.woke(self.name(), outcome, took);
    }

    async fn sleep(&mut self, reason: StopReason, still_idle: crate::IdleCheck) {
        if !matches!(self.run, Run::Ready(_)) {
            return;
        }
        let before = self.cell.load();
        self.publish(before.to(Phase::Stopping));
        if !still_idle() {
            tracing::debug!(solution = self.name(), "a request arrived while stopping; staying up");
            self.cell.publish((*before).clone());
            return;
        }
        tracing::info!(solution = self.name(), reason = reason.as_str(), "scaling to zero");
        self.stop(reason).await;
    }

    /// Stops the process, if any, and publishes `Cold`.
    async fn stop(&mut self, reason: StopReason) {
        let was_running = match std::mem::replace(&mut self.run, Run::Idle) {
            Run::Idle => false,
            Run::Starting { proc, .. } | Run::Ready(proc) => {
                if self.cell.phase() != Phase::Stopping {
                    self.publish(self.cell.load().to(Phase::Stopping));
                }
                proc.stop(self.spec.settings.stop_grace).await;
                true
            }
        };
        let mut next = self.cell.load().to(Phase::Cold);
        next.endpoints = Arc::from(Vec::new());
        next.wake_started = None;
        next.failure = None;
        self.publish(next);
        if was_running {
            self.observer.stopped(self.name(), reason);
        }
    }

    fn eta(&self) -> Option<Duration> {
        let mut v: Vec<Duration> = self.history.iter().copied().collect();
        v.sort();
        v.get(v.len() / 2).copied()
    }

    /// A fixed upstream: always ready once its name resolves.
    async fn run_upstream(mut self) {
        self.resolve().await;
        while let Some(cmd) = self.rx.recv().await {
            match cmd {
                Cmd::Wake => {
                    if self.cell.phase() == Phase::Failed && !self.cell.load().in_backoff(Instant::now()) {
                        self.resolve().await;
                    }
                }
                Cmd::Update(spec) => {
                    let changed = spec.backend != self.spec.backend;
                    self.spec = *spec;
                    if changed {
                        self.resolve().await;
                    }
                }
                Cmd::Sleep(..) => {}
                Cmd::Shutdown(_, ack) => {
                    let _ = ack.send(());
                    return;
                }
            }
        }
    }

    async fn resolve(&mut self) {
        let Backend::Upstream(u) = &self.spec.backend else { return };
        let state = self.cell.load();
        match tokio::net::lookup_host((u.host.as_str(), u.port)).await {
            Ok(addrs) => {
                let addrs: Vec<_> = addrs.collect();
                let mut next = state.to(Phase::Ready);
                next.endpoints = Arc::from(addrs);
                next.failure = None;
                self.publish(next);
            }
            Err(e) => {
                tracing::warn!(solution = self.name(), "cannot resolve upstream {}: {e}", u.host);
                let mut next = state.to(Phase::Failed);
                next.failure =
                    Some(Failure { message: format!("cannot resolve {}: {e}", u.host), retry_at: Instant::now() + RESOLVE_RETRY });
                self.publish(next);
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
