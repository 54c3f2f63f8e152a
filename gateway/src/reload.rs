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
        reload(&path, &gw);
    }
}

/// Loads `path` and applies it if valid. Returns whether it was applied.
pub fn reload(path: &Path, gw: &Gateway) -> bool {
    match crate::config::load(path) {
        Ok(loaded) => {
            let config = &loaded.config;
            let old = gw.settings();
            for (key, changed) in [
                ("listen", old.listen != config.settings.listen),
                ("admin-listen", old.admin_listen != config.settings.admin_listen),
                ("workers", old.workers != config.settings.workers),
            ] {
                if changed {
                    tracing::warn!(key, "changed, but takes effect only after a restart");
                }
            }
            if old.tls.get("tls-source") != config.settings.tls.get("tls-source")
                || old.tls.get("tls-listen") != config.settings.tls.get("tls-listen")
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
