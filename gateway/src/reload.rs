//! Live configuration: the file is re-read when its content changes (checked
//! every second, which also catches ConfigMap symlink swaps) and on SIGHUP. A
//! bad edit is logged key by key and counted; the last good config keeps serving.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::gateway::Gateway;

/// How often the file is checked for changes.
const POLL: Duration = Duration::from_secs(1);

fn fingerprint(path: &Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    Some(h.finish())
}

/// Re-reads `path` whenever it changes, until `shutdown`.
pub async fn watch(path: PathBuf, gw: Arc<Gateway>, mut shutdown: watch::Receiver<bool>) {
    // What the process started with (its listeners are bound to these).
    let started = gw.settings();
    let mut hup = signal(SignalKind::hangup()).ok();
    let mut last = fingerprint(&path);
    loop {
        let forced = tokio::select! {
            _ = tokio::time::sleep(POLL) => false,
            Some(()) = async { match hup.as_mut() { Some(s) => s.recv().await, None => std::future::pending().await } } => true,
            _ = crate::server::stopped(&mut shutdown) => return,
        };
        let now = fingerprint(&path);
        if !forced && now == last {
            continue;
        }
        last = now;
        if forced {
            tracing::info!("SIGHUP: reloading {}", path.display());
        }
        reload(&path, &gw, &started);
    }
}

/// Loads `path` and applies it if valid. Returns whether it was applied.
/// `started`: the settings the process started with, for the keys that
/// change only with a restart.
pub fn reload(path: &Path, gw: &Gateway, started: &proto::Settings) -> bool {
    match crate::config::load(path) {
        Ok(loaded) => {
            let config = &loaded.config;
            for (key, changed) in [
                ("listen", started.listen != config.settings.listen),
                ("admin-listen", started.admin_listen != config.settings.admin_listen),
                ("workers", started.workers != config.settings.workers),
                ("shutdown-grace", started.shutdown_grace != config.settings.shutdown_grace),
            ] {
                if changed {
                    tracing::warn!(key, "differs from the value started with, which stays until a restart");
                }
            }
            if started.tls.get("tls-source") != config.settings.tls.get("tls-source")
                || started.tls.get("tls-listen") != config.settings.tls.get("tls-listen")
            {
                tracing::warn!(key = "tls-source", "the certificate source and TLS listener change only after a restart");
            }
            gw.apply_loaded(&loaded);
            gw.metrics.reload(true);
            tracing::info!(solutions = config.solutions.len(), "configuration reloaded from {}", path.display());
            true
        }
        Err(errors) => {
            for e in &errors.0 {
                if e.key.is_empty() {
                    tracing::error!("rejected: {}", e.reason);
                } else {
                    tracing::error!(key = %e.key, "rejected: {}", e.reason);
                }
            }
            gw.metrics.reload(false);
            tracing::warn!(
                "configuration in {} rejected ({} problems); the last good configuration keeps serving",
                path.display(),
                errors.0.len()
            );
            false
        }
    }
}
