//! wakegate's control loop: the [`Orchestrator`] that wakes and stops solutions
//! (here: local processes; on a cluster: Deployments), the state each solution
//! publishes while it wakes, and the idle [`reaper`] that decides when a
//! solution goes back to zero.

pub mod cluster;
pub mod file;
pub mod orchestrator;
pub mod probe;
pub mod process;
pub mod reaper;
pub mod state;

pub use orchestrator::{Cmd, IdleCheck, Observer, Orchestrator, SolutionHandle, StopReason, WakeOutcome, shutdown_all};
pub use process::ProcessOrchestrator;
pub use state::{Failure, SolutionState, StateCell};
