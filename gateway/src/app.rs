//! Embedded mode wired together: one process runs the gateway and the process
//! orchestrator. Binds, serves, reaps idle solutions, reloads config, and on
//! shutdown drains requests and stops every child.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use proto::Config;
use scaler::{Orchestrator, ProcessOrchestrator};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::{admin, proxy, reload, server};

/// Why embedded mode could not run.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Which listener.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Addresses actually bound (useful with port 0).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// Public listener.
    pub public: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
}

async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr).await.map_err(|source| AppError::Bind { addr, what, source })
}

/// How often refilled rate-limiter entries are dropped.
const PRUNE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

async fn prune_limiters(gw: Arc<Gateway>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PRUNE_INTERVAL) => gw.prune_limiters(),
            _ = server::stopped(&mut shutdown) => return,
        }
    }
}

/// Runs embedded mode with `config` (loaded from `path`) until `stop` resolves;
/// `stop_now` cuts the drain short (a second signal).
pub async fn run(
    path: PathBuf,
    config: Config,
    stop: impl Future<Output = ()>,
    stop_now: impl Future<Output = ()>,
) -> Result<(), AppError> {
    let public = bind(config.settings.listen, "listen").await?;
    let admin_l = bind(config.settings.admin_listen, "admin-listen").await?;
    let bound = Bound {
        public: public.local_addr().unwrap_or(config.settings.listen),
        admin: admin_l.local_addr().unwrap_or(config.settings.admin_listen),
    };

    let metrics = Arc::new(Metrics::new());
    let orchestrator: Arc<dyn Orchestrator> = Arc::new(ProcessOrchestrator::new(metrics.clone()));
    let gw = Gateway::new(&config, orchestrator.clone(), metrics);
    let (shutdown_tx, shutdown) = watch::channel(false);
    let grace = config.settings.shutdown_grace;

    let g = gw.clone();
    let policy: Arc<dyn server::Policy> = gw.clone();
    let public_task =
        tokio::spawn(server::serve(public, move |peer, req| proxy::handle(g.clone(), peer, req), policy, shutdown.clone(), grace));
    let g = gw.clone();
    let admin_task = tokio::spawn(server::serve(
        admin_l,
        move |_peer, req| {
            let r = admin::handle(&g, &req);
            async move { r }
        },
        Arc::new(server::Fixed(server::Options::default())),
        shutdown.clone(),
        grace,
    ));
    tokio::spawn(scaler::reaper::run(gw.clone(), shutdown.clone()));
    tokio::spawn(prune_limiters(gw.clone(), shutdown.clone()));
    tokio::spawn(reload::watch(path, gw.clone(), shutdown.clone()));

    let base = &config.settings.base_domain;
    tracing::info!(public = %bound.public, admin = %bound.admin, "listening");
    tracing::info!("catalog at http://{base}:{}/ ; solutions at http://<name>.{base}:{}/", bound.public.port(), bound.public.port());
    for s in &config.solutions {
        tracing::info!(solution = %s.name, "http://{}.{base}:{}/", s.name, bound.public.port());
    }

    stop.await;
    tracing::info!("shutting down: no new connections; draining for up to {grace:?}");
    gw.set_draining();
    let _ = shutdown_tx.send(true);
    tokio::select! {
        _ = async { let _ = public_task.await; let _ = admin_task.await; } => {}
        _ = stop_now => tracing::warn!("second signal: not waiting for open requests"),
    }
    tracing::info!("stopping solutions");
    orchestrator.shutdown().await;
    tracing::info!("bye");
    Ok(())
}
