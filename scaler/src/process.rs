//! The process orchestrator (embedded mode): each solution is a local command,
//! started on the first request, probed until ready, stopped when idle. One
//! supervisor task owns each solution, so a wake-up is single-flight by
//! construction: commands queue, and `Wake` is a no-op unless the solution is cold.

mod child;
pub mod guard;
mod supervisor;

pub use child::use_guard;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use proto::SolutionSpec;
use tokio::sync::{mpsc, oneshot};

use crate::orchestrator::{Cmd, Observer, Orchestrator, SolutionHandle, StopReason};
use crate::state::{SolutionState, StateCell};
use supervisor::Supervisor;

/// Runs solutions as local processes.
pub struct ProcessOrchestrator {
    solutions: Mutex<HashMap<String, SolutionHandle>>,
    commands: Mutex<HashMap<String, mpsc::UnboundedSender<Cmd>>>,
    observer: Arc<dyn Observer>,
}

impl ProcessOrchestrator {
    /// An orchestrator with no solutions yet; call [`Orchestrator::apply`].
    pub fn new(observer: Arc<dyn Observer>) -> Self {
        Self { solutions: Mutex::default(), commands: Mutex::default(), observer }
    }

    fn spawn(&self, spec: &SolutionSpec) -> (SolutionHandle, mpsc::UnboundedSender<Cmd>) {
        let cell = Arc::new(StateCell::new(SolutionState::cold()));
        let (tx, rx) = mpsc::unbounded_channel();
        let sup = Supervisor::new(spec.clone(), cell.clone(), rx, self.observer.clone());
        tokio::spawn(sup.run());
        (SolutionHandle::new(cell, tx.clone()), tx)
    }
}

impl Orchestrator for ProcessOrchestrator {
    fn apply(&self, specs: &[SolutionSpec]) {
        let mut handles = self.solutions.lock().unwrap_or_else(|p| p.into_inner());
        let mut commands = self.commands.lock().unwrap_or_else(|p| p.into_inner());
        for spec in specs {
            match commands.get(&spec.name) {
                Some(tx) => {
                    let _ = tx.send(Cmd::Update(Box::new(spec.clone())));
                }
                None => {
                    let (handle, tx) = self.spawn(spec);
                    handles.insert(spec.name.clone(), handle);
                    commands.insert(spec.name.clone(), tx);
                }
            }
        }
        let gone: Vec<String> = commands.keys().filter(|n| !specs.iter().any(|s| &s.name == *n)).cloned().collect();
        for name in gone {
            if let Some(tx) = commands.remove(&name) {
                let (ack, _) = oneshot::channel();
                let _ = tx.send(Cmd::Shutdown(StopReason::Removed, ack));
            }
            handles.remove(&name);
        }
    }

    fn handle(&self, name: &str) -> Option<SolutionHandle> {
        self.solutions.lock().unwrap_or_else(|p| p.into_inner()).get(name).cloned()
    }

    fn shutdown(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        crate::orchestrator::shutdown_all(self.commands.lock().unwrap_or_else(|p| p.into_inner()).values())
    }
}
