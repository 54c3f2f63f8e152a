//! The orchestrator contract: something that can wake a solution from zero,
//! put it back to sleep, and publish its state while doing so. The process
//! orchestrator (embedded mode) runs local commands; the Kubernetes one scales
//! Deployments. The gateway sees only [`SolutionHandle`]s.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use proto::SolutionSpec;
use tokio::sync::mpsc;

use crate::state::StateCell;

/// Re-checked after a solution is marked stopping: `true` if it is still idle.
/// Closes the race between an idle decision and a request that just arrived.
pub type IdleCheck = Arc<dyn Fn() -> bool + Send + Sync>;

/// A command to the task that owns one solution.
pub enum Cmd {
    /// Start it if it is cold; no-op otherwise (single flight).
    Wake,
    /// Scale it to zero, unless the check says it is busy again.
    Sleep(StopReason, IdleCheck),
    /// Its spec changed (settings apply at once; a new command at the next start).
    Update(Box<SolutionSpec>),
    /// Stop it for good and acknowledge.
    Shutdown(StopReason, tokio::sync::oneshot::Sender<()>),
}

/// Tells every solution task to stop for good; the future resolves when all
/// have acknowledged (or are gone). The commands are sent before it is polled.
pub fn shutdown_all<'a>(
    tasks: impl IntoIterator<Item = &'a mpsc::UnboundedSender<Cmd>>,
) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
    let acks: Vec<_> = tasks
        .into_iter()
        .map(|tx| {
            let (ack, rx) = tokio::sync::oneshot::channel();
            let _ = tx.send(Cmd::Shutdown(StopReason::Shutdown, ack));
            rx
        })
        .collect();
    Box::pin(async move {
        for ack in acks {
            let _ = ack.await;
        }
    })
}

/// Why a solution went to zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StopReason {
    /// No request for its idle timeout.
    Idle,
    /// It exited (or crashed) by itself.
    Exited,
    /// It was removed from the configuration.
    Removed,
    /// wakegate is shutting down.
    Shutdown,
}

impl StopReason {
    /// Label value for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Idle => "idle",
            StopReason::Exited => "exited",
            StopReason::Removed => "removed",
            StopReason::Shutdown => "shutdown",
        }
    }
}

/// How a wake-up ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WakeOutcome {
    /// It became ready.
    Ready,
    /// It exited or could not be started.
    Failed,
    /// It did not become ready within its startup timeout.
    Timeout,
}

impl WakeOutcome {
    /// Label value for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            WakeOutcome::Ready => "ready",
            WakeOutcome::Failed => "failed",
            WakeOutcome::Timeout => "timeout",
        }
    }
}

/// Told about what the orchestrator did, for metrics and events.
pub trait Observer: Send + Sync + 'static {
    /// A wake-up ended after `took`.
    fn woke(&self, solution: &str, outcome: WakeOutcome, took: Duration);
    /// A solution went to zero.
    fn stopped(&self, solution: &str, reason: StopReason);
}

/// An observer that ignores everything (tests, tools).
#[derive(Debug, Default)]
pub struct NoObserver;

impl Observer for NoObserver {
    fn woke(&self, _: &str, _: WakeOutcome, _: Duration) {}
    fn stopped(&self, _: &str, _: StopReason) {}
}

/// The gateway's grip on one solution: its published state and its command line.
#[derive(Clone)]
pub struct SolutionHandle {
    /// The published state.
    pub cell: Arc<StateCell>,
    cmd: mpsc::UnboundedSender<Cmd>,
}

impl SolutionHandle {
    /// A handle over a state cell and the command channel of its owner.
    pub fn new(cell: Arc<StateCell>, cmd: mpsc::UnboundedSender<Cmd>) -> Self {
        Self { cell, cmd }
    }

    /// Asks for a wake-up. Cheap and idempotent: call it on every cold request.
    pub fn wake(&self) {
        let _ = self.cmd.send(Cmd::Wake);
    }

    /// Asks for a scale-down, re-checked with `still_idle` once marked stopping.
    pub fn sleep(&self, reason: StopReason, still_idle: IdleCheck) {
        let _ = self.cmd.send(Cmd::Sleep(reason, still_idle));
    }
}

/// Wakes, stops and reports solutions.
pub trait Orchestrator: Send + Sync + 'static {
    /// Makes the set of solutions match `solutions`: adds, updates, removes.
    fn apply(&self, solutions: &[SolutionSpec]);
    /// The handle of a solution, if it exists.
    fn handle(&self, name: &str) -> Option<SolutionHandle>;
    /// Stops every solution; resolves when all are stopped.
    fn shutdown(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}
