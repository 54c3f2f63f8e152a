//! [`ClusterOrchestrator`]: the gateway's view of solutions that run as
//! Deployments. It scales nothing itself: one task per solution
//! ([`super::supervisor`]) follows the Service's EndpointSlices and asks the
//! scaler's wake API to scale from zero; scale-downs are the scaler's call.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use proto::{Backend, SolutionSpec};
use scaler::{Cmd, Observer, Orchestrator, SolutionHandle, SolutionState, StateCell, StopReason};
use tokio::sync::{mpsc, oneshot};

use super::supervisor::Supervisor;
use super::wake::Waker;

/// Solutions as Deployments behind Services, woken through the scaler.
pub struct ClusterOrchestrator {
    client: kube::Client,
    waker: Arc<Waker>,
    observer: Arc<dyn Observer>,
    solutions: Mutex<HashMap<String, (SolutionHandle, mpsc::UnboundedSender<Cmd>)>>,
}

impl ClusterOrchestrator {
    /// An orchestrator with no solutions yet; call [`Orchestrator::apply`].
    pub fn new(client: kube::Client, waker: Waker, observer: Arc<dyn Observer>) -> Self {
        Self { client, waker: Arc::new(waker), observer, solutions: Mutex::default() }
    }
}

impl Orchestrator for ClusterOrchestrator {
    fn apply(&self, specs: &[SolutionSpec]) {
        let mut solutions = self.solutions.lock().unwrap_or_else(|p| p.into_inner());
        for spec in specs {
            let Backend::Cluster(target) = &spec.backend else {
                tracing::error!(solution = %spec.name, "not a cluster solution; the gateway in cluster mode serves only Services");
                continue;
            };
            match solutions.get(&spec.name) {
                Some((_, tx)) => {
                    let _ = tx.send(Cmd::Update(Box::new(spec.clone())));
                }
                None => {
                    let cell = Arc::new(StateCell::new(SolutionState::cold()));
                    let (tx, rx) = mpsc::unbounded_channel();
                    let sup = Supervisor::new(
                        spec.clone(),
                        target.clone(),
                        cell.clone(),
                        rx,
                        self.observer.clone(),
                        self.client.clone(),
                        self.waker.clone(),
                    );
                    tokio::spawn(sup.run());
                    solutions.insert(spec.name.clone(), (SolutionHandle::new(cell, tx.clone()), tx));
                }
            }
        }
        let gone: Vec<String> = solutions.keys().filter(|n| !specs.iter().any(|s| &s.name == *n)).cloned().collect();
        for name in gone {
            if let Some((_, tx)) = solutions.remove(&name) {
                let (ack, _) = oneshot::channel();
                let _ = tx.send(Cmd::Shutdown(StopReason::Removed, ack));
            }
        }
    }

    fn handle(&self, name: &str) -> Option<SolutionHandle> {
        self.solutions.lock().unwrap_or_else(|p| p.into_inner()).get(name).map(|(h, _)| h.clone())
    }

    /// Stops following the solutions; they keep running (the scaler decides).
    fn shutdown(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        scaler::shutdown_all(self.solutions.lock().unwrap_or_else(|p| p.into_inner()).values().map(|(_, tx)| tx))
    }
}
