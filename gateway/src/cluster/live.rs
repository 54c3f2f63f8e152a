//! The live configuration in a cluster: the settings from the ConfigMap and
//! the solutions from Services and Ingresses, combined into one config and
//! applied to the gateway whenever either changes (and only then).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use proto::{Config, ConfigError};
use tokio::sync::watch;

use super::solutions::{self, Objects};
use crate::config::Loaded;
use crate::gateway::Gateway;

/// Plain HTTP is redirected to this port (`ssl-redirect`): clients reach the
/// replicas through a Service or load balancer on the standard port, never
/// on the pod's own HTTPS port.
pub const PUBLIC_HTTPS_PORT: u16 = 443;

/// Where this replica really listens, whatever the ConfigMap says.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// The public listener.
    pub public: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
    /// The HTTPS listener, if TLS is on.
    pub tls: Option<SocketAddr>,
}

/// The configuration `settings` and `objects` make together, and the
/// problems found in the objects. Its listen addresses are the bound ones,
/// except that the HTTPS one carries [`PUBLIC_HTTPS_PORT`], the port
/// redirects name.
pub fn combine(settings: &Loaded, objects: &Objects, namespace: &str, bound: Bound) -> (Loaded, Vec<ConfigError>) {
    let (list, problems) = solutions::build(namespace, &settings.config.settings, objects);
    let mut loaded = settings.clone();
    loaded.config = Config { settings: settings.config.settings.clone(), solutions: list };
    loaded.config.settings.listen = bound.public;
    loaded.config.settings.admin_listen = bound.admin;
    if let Some(tls) = bound.tls {
        loaded.tls.listen = SocketAddr::new(tls.ip(), PUBLIC_HTTPS_PORT);
    }
    (loaded, problems)
}

/// Logs the problems not logged last time (so each shows once per appearance).
pub fn report(problems: Vec<ConfigError>, logged: &mut BTreeSet<String>) {
    let now: BTreeSet<String> = problems.iter().map(ToString::to_string).collect();
    for p in now.difference(logged) {
        tracing::warn!("{p}");
    }
    *logged = now;
}

/// Applies every change of the settings or the objects to the gateway.
pub struct Live {
    /// The gateway.
    pub gw: Arc<Gateway>,
    /// The last good settings.
    pub settings: watch::Receiver<Option<Arc<Loaded>>>,
    /// The Services and Ingresses.
    pub objects: watch::Receiver<Option<Arc<Objects>>>,
    /// The solutions namespace.
    pub namespace: String,
    /// Where this replica listens.
    pub bound: Bound,
    /// The configuration applied last (at start: the initial one).
    pub applied: Config,
    /// The problems logged last.
    pub logged: BTreeSet<String>,
}

impl Live {
    /// Runs until `shutdown`.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                r = self.settings.changed() => if r.is_err() { return },
                r = self.objects.changed() => if r.is_err() { return },
                _ = crate::server::stopped(&mut shutdown) => return,
            }
            let settings = self.settings.borrow_and_update().clone();
            let objects = self.objects.borrow_and_update().clone();
            let (Some(s), Some(o)) = (settings, objects) else { continue };
            let (loaded, problems) = combine(&s, &o, &self.namespace, self.bound);
            report(problems, &mut self.logged);
            if loaded.config != self.applied {
                self.apply(loaded);
            }
        }
    }

    fn apply(&mut self, loaded: Loaded) {
        let names = |c: &Config| c.solutions.iter().map(|s| s.name.clone()).collect::<BTreeSet<_>>();
        let (before, after) = (names(&self.applied), names(&loaded.config));
        for added in after.difference(&before) {
            tracing::info!(solution = %added, "serving {added}.{}", loaded.config.settings.base_domain);
        }
        for removed in before.difference(&after) {
            tracing::info!(solution = %removed, "no longer served");
        }
        self.gw.apply_loaded(&loaded);
        self.applied = loaded.config;
    }
}
