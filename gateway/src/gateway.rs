//! The gateway's shared state: the routing table and settings (swapped whole on
//! reload), metrics, upstream pools, and the orchestrator it asks for wake-ups.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};
use proto::{Config, Settings};
use scaler::Orchestrator;
use scaler::reaper::{ActivitySource, Candidate};

use crate::metrics::Metrics;
use crate::router::Routes;
use crate::solution::SolutionRt;
use crate::upstream::Pools;

/// Everything a request needs.
pub struct Gateway {
    routes: ArcSwap<Routes>,
    settings: ArcSwap<Settings>,
    /// Metric families.
    pub metrics: Arc<Metrics>,
    /// Idle upstream connections.
    pub pools: Pools,
    orchestrator: Arc<dyn Orchestrator>,
    draining: AtomicBool,
}

impl Gateway {
    /// A gateway serving `config`.
    pub fn new(config: &Config, orchestrator: Arc<dyn Orchestrator>, metrics: Arc<Metrics>) -> Arc<Self> {
        let gw = Arc::new(Self {
            routes: ArcSwap::from_pointee(Routes::new(config.settings.base_domain.clone(), Vec::new())),
            settings: ArcSwap::from_pointee(config.settings.clone()),
            metrics,
            pools: Pools::default(),
            orchestrator,
            draining: AtomicBool::new(false),
        });
        gw.apply(config);
        gw
    }

    /// Applies a new configuration to new requests. Requests already under way
    /// keep what they started with; solutions that stay keep their state.
    pub fn apply(&self, config: &Config) {
        self.orchestrator.apply(&config.solutions);
        let old = self.routes.load_full();
        let mut list = Vec::with_capacity(config.solutions.len());
        for spec in &config.solutions {
            match old.get(&spec.name) {
                Some(rt) if rt.spec.load().scales() == spec.scales() => {
                    rt.spec.store(Arc::new(spec.clone()));
                    list.push(rt.clone());
                }
                _ => {
                    let Some(handle) = self.orchestrator.handle(&spec.name) else {
                        tracing::error!(solution = %spec.name, "the orchestrator has no handle for this solution");
                        continue;
                    };
                    let metrics = self.metrics.solution(&spec.name);
                    list.push(Arc::new(SolutionRt::new(spec.clone(), handle, metrics)));
                }
            }
        }
        for rt in &old.list {
            if !list.iter().any(|n| Arc::ptr_eq(n, rt)) && !list.iter().any(|n| n.name == rt.name) {
                self.metrics.forget(&rt.metrics);
            }
        }
        self.routes.store(Arc::new(Routes::new(config.settings.base_domain.clone(), list)));
        self.settings.store(Arc::new(config.settings.clone()));
        self.pools.prune();
    }

    /// The current routing table.
    pub fn routes(&self) -> Guard<Arc<Routes>> {
        self.routes.load()
    }

    /// The current settings.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    /// The orchestrator.
    pub fn orchestrator(&self) -> &Arc<dyn Orchestrator> {
        &self.orchestrator
    }

    /// Marks the gateway as shutting down (`/readyz` turns 503).
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether it is shutting down.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

impl ActivitySource for Gateway {
    fn candidates(&self) -> Vec<Candidate> {
        self.routes.load().list.iter().filter_map(SolutionRt::candidate).collect()
    }

    fn interval(&self) -> Duration {
        self.settings.load().reaper_interval
    }
}
