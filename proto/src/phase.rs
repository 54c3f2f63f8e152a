//! The phases of a solution's life as users and the wake API see them.

use serde::{Deserialize, Serialize};

/// Where a solution is between zero and serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Scaled to zero; the next request wakes it.
    Cold,
    /// Wake requested: the process (or pod) is being started.
    Starting,
    /// Started; waiting for the readiness probe to pass.
    Probing,
    /// Serving: requests are forwarded.
    Ready,
    /// Being stopped; requests are held until it is cold, then wake it again.
    Stopping,
    /// The last start failed; new attempts wait for a back-off.
    Failed,
}

impl Phase {
    /// Lower-case name, as used in JSON, metrics and the pages.
    pub const fn as_str(self) -> &'static str {
        match self {
            Phase::Cold => "cold",
            Phase::Starting => "starting",
            Phase::Probing => "probing",
            Phase::Ready => "ready",
            Phase::Stopping => "stopping",
            Phase::Failed => "failed",
        }
    }

    /// Whether a wake-up is under way (for the catalog's "waking" state).
    pub fn is_waking(self) -> bool {
        matches!(self, Phase::Starting | Phase::Probing)
    }
}

/// How far a cluster wake-up has come, as the solution's Pods show it: the
/// steps the waiting page names while the phase is [`Phase::Starting`] or
/// [`Phase::Probing`] (a local process has no such steps).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WakeStep {
    /// The Deployment was asked to scale up; no Pod is on a node yet.
    ScaleRequested,
    /// A Pod is on a node: its image is pulled, its container created.
    PodScheduled,
    /// Its container runs; waiting for its readiness probe.
    ContainerStarted,
}

impl WakeStep {
    /// The name used in the status JSON and the page.
    pub const fn as_str(self) -> &'static str {
        match self {
            WakeStep::ScaleRequested => "scale-requested",
            WakeStep::PodScheduled => "pod-scheduled",
            WakeStep::ContainerStarted => "container-started",
        }
    }
}
