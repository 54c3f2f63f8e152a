//! Idle scale-down: a pure decision ([`decide`]) over observed activity, and
//! the loop that applies it. The same decision serves the embedded mode (which
//! observes its own counters) and the cluster (which scrapes every gateway).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use proto::Phase;
use tokio::sync::watch;

use crate::orchestrator::{IdleCheck, SolutionHandle, StopReason};

/// Longest pause of the in-process loop.
const MAX_LOCAL_TICK: Duration = Duration::from_secs(1);

/// One solution as the reaper sees it.
pub struct Candidate {
    /// Its name (for logs).
    pub name: Arc<str>,
    /// Where to send the decision.
    pub handle: SolutionHandle,
    /// What was observed.
    pub observed: Observed,
    /// Re-checked once the solution is marked stopping.
    pub still_idle: IdleCheck,
}

/// Where the reaper gets its observations from.
pub trait ActivitySource: Send + Sync + 'static {
    /// Every solution that could be scaled down, observed now.
    fn candidates(&self) -> Vec<Candidate>;
    /// The configured check period.
    fn interval(&self) -> Duration;
}

/// Applies [`decide`] to every candidate, periodically, until `shutdown` turns true.
pub async fn run(source: Arc<dyn ActivitySource>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let candidates = source.candidates();
        let shortest = candidates.iter().map(|c| c.observed.idle_timeout).filter(|d| !d.is_zero()).min();
        let now = SystemTime::now();
        for c in candidates {
            if let Decision::Sleep(idle) = decide(now, &c.observed) {
                tracing::info!(solution = %c.name, idle_s = idle.as_secs(), "idle; scaling to zero");
                c.handle.sleep(StopReason::Idle, c.still_idle);
            }
        }
        tokio::select! {
            // In-process observations are cheap: look at least every second, so
            // a config edit that shortens an idle timeout applies promptly.
            _ = tokio::time::sleep(tick(source.interval(), shortest).min(MAX_LOCAL_TICK)) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// What was observed of one solution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// Its phase.
    pub phase: Phase,
    /// When it became ready.
    pub ready_since: SystemTime,
    /// The last request seen (start or end), if any.
    pub last_request: Option<SystemTime>,
    /// Requests in flight + held + open upgraded streams, over all replicas.
    pub busy: u64,
    /// Its idle timeout; zero means never.
    pub idle_timeout: Duration,
}

/// What to do with a solution now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Leave it as it is.
    Keep,
    /// Scale it to zero: idle for this long.
    Sleep(Duration),
}

/// Sleep a ready solution once nothing is busy and its last activity (or its
/// readiness, if it never saw a request) is older than its idle timeout.
pub fn decide(now: SystemTime, o: &Observed) -> Decision {
    if o.phase != Phase::Ready || o.busy > 0 || o.idle_timeout.is_zero() {
        return Decision::Keep;
    }
    let last = o.last_request.map_or(o.ready_since, |l| l.max(o.ready_since));
    match now.duration_since(last) {
        Ok(idle) if idle >= o.idle_timeout => Decision::Sleep(idle),
        _ => Decision::Keep,
    }
}

/// How often the embedded loop looks: the configured interval, but at least
/// four times per shortest idle timeout (and not more than every 100 ms).
pub fn tick(interval: Duration, shortest_idle: Option<Duration>) -> Duration {
    let quarter = shortest_idle.filter(|d| !d.is_zero()).map_or(interval, |d| d / 4);
    interval.min(quarter).max(Duration::from_millis(100))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Duration = Duration::from_secs(1_000_000);

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + T0 + Duration::from_secs(secs)
    }

    fn obs() -> Observed {
        Observed { phase: Phase::Ready, ready_since: at(0), last_request: Some(at(10)), busy: 0, idle_timeout: Duration::from_secs(60) }
    }

    #[test]
    fn sleeps_only_after_the_idle_timeout() {
        assert_eq!(decide(at(69), &obs()), Decision::Keep);
        assert_eq!(decide(at(70), &obs()), Decision::Sleep(Duration::from_secs(60)));
    }

    #[test]
    fn never_while_busy_or_not_ready_or_disabled() {
        for o in [
            Observed { busy: 1, ..obs() },
            Observed { phase: Phase::Starting, ..obs() },
            Observed { phase: Phase::Cold, ..obs() },
            Observed { phase: Phase::Stopping, ..obs() },
            Observed { idle_timeout: Duration::ZERO, ..obs() },
        ] {
            assert_eq!(decide(at(10_000), &o), Decision::Keep, "{o:?}");
        }
    }

    #[test]
    fn a_solution_never_requested_counts_from_readiness() {
        let o = Observed { last_request: None, ready_since: at(100), ..obs() };
        assert_eq!(decide(at(159), &o), Decision::Keep);
        assert_eq!(decide(at(160), &o), Decision::Sleep(Duration::from_secs(60)));
    }

    #[test]
    fn an_old_request_before_a_restart_does_not_count() {
        let o = Observed { last_request: Some(at(5)), ready_since: at(100), ..obs() };
        assert_eq!(decide(at(120), &o), Decision::Keep);
    }

    #[test]
    fn clock_going_backwards_keeps() {
        assert_eq!(decide(at(0), &obs()), Decision::Keep);
    }

    #[test]
    fn exhaustive_small_grid() {
        for busy in 0..3 {
            for last in 0..5u64 {
                for now in 0..10u64 {
                    let o = Observed { busy, last_request: Some(at(last)), idle_timeout: Duration::from_secs(3), ..obs() };
                    let d = decide(at(now), &o);
                    let expect = busy == 0 && now >= last + 3;
                    assert_eq!(matches!(d, Decision::Sleep(_)), expect, "busy={busy} last={last} now={now}");
                }
            }
        }
    }

    #[test]
    fn ticks() {
        assert_eq!(tick(Duration::from_secs(30), Some(Duration::from_secs(2))), Duration::from_millis(500));
        assert_eq!(tick(Duration::from_secs(30), None), Duration::from_secs(30));
        assert_eq!(tick(Duration::from_secs(30), Some(Duration::from_millis(100))), Duration::from_millis(100));
    }
}
