//! Types both wakegate roles agree on: the settings schema and its validation,
//! per-solution overrides, the embedded config file, metric names and the
//! solution phases shown to users. No sockets, no runtime, no Kubernetes client:
//! everything here is plain data and pure functions.

pub mod cluster;
pub mod config;
pub mod error;
pub mod metrics;
pub mod net;
pub mod phase;
pub mod settings;
pub mod solution;
pub mod units;

pub use config::Config;
pub use error::{ConfigError, ConfigErrors};
pub use phase::{Phase, WakeStep};
pub use settings::{Settings, SolutionSettings};
pub use solution::{Backend, Probe, SolutionSpec, Upstream};
