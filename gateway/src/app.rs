//! Embedded mode wired together: one process runs the gateway and the process
//! orchestrator. Binds, serves, reaps idle solutions, reloads config, and on
//! shutdown drains requests and stops every child.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use scaler::{Orchestrator, ProcessOrchestrator};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::config::Loaded;
use crate::tls::settings::TlsSource;
use crate::tls::{self, CertResolver};

use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::{admin, proxy, reload, server};

/// Why embedded mode could not run.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A listener could not be bound.
    #[error(transparent)]
    Bind(#[from] server::BindError),
    /// The certificate source could not start.
    #[error("TLS: {0}")]
    TlsSource(#[from] tls::source::StartError),
    /// The TLS configuration was refused by rustls.
    #[error("TLS configuration: {0}")]
    Tls(#[source] rustls::Error),
}

/// Addresses actually bound (useful with port 0).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// Public listener.
    pub public: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
}

/// Spawns the public, HTTPS and admin servers (embedded and cluster mode alike).
pub(crate) fn spawn_servers(
    gw: &Arc<Gateway>,
    public: TcpListener,
    admin: TcpListener,
    tls: Option<TcpListener>,
    acceptor: Option<TlsAcceptor>,
    shutdown: &watch::Receiver<bool>,
    grace: std::time::Duration,
) -> Vec<tokio::task::JoinHandle<()>> {
    let policy: Arc<dyn server::Policy> = gw.clone();
    let mut public_tasks = Vec::new();
    let g = gw.clone();
    let handler = move |peer, info: Option<&server::ConnInfo>, req| proxy::handle(g.clone(), peer, info, req);
    public_tasks.push(tokio::spawn(server::serve(public, handler.clone(), policy.clone(), None, shutdown.clone(), grace)));
    if let Some(l) = tls {
        public_tasks.push(tokio::spawn(server::serve(l, handler, policy, acceptor, shutdown.clone(), grace)));
    }
    let g = gw.clone();
    let admin_handler = move |peer: SocketAddr, _info: Option<&server::ConnInfo>, req: http::Request<crate::limits::body::RequestBody>| {
        let r = server::Answer::from(admin::handle(&g, peer, &req));
        async move { r }
    };
    // The admin listener outlives the drain: `/readyz` answers "draining"
    // meanwhile, and `/metrics` stays readable (the scaler reads every
    // replica's activity, a draining one's too); it stops once the public
    // listeners are done.
    let (admin_stop_tx, admin_stop) = watch::channel(false);
    let mut stop = shutdown.clone();
    let admin_waits = tokio::spawn(async move {
        server::stopped(&mut stop).await;
        for t in public_tasks {
            let _ = t.await;
        }
        let _ = admin_stop_tx.send(true);
    });
    let fixed = Arc::new(server::Fixed(server::Options::default()));
    vec![admin_waits, tokio::spawn(server::serve(admin, admin_handler, fixed, None, admin_stop, grace))]
}

/// Runs embedded mode with `loaded` (from `path`) until `stop` resolves;
/// `stop_now` cuts the drain short (a second signal).
pub async fn run(
    path: PathBuf,
    loaded: Loaded,
    stop: impl Future<Output = ()>,
    stop_now: impl Future<Output = ()>,
) -> Result<(), AppError> {
    let config = &loaded.config;
    let public = server::bind(config.settings.listen, "listen").await?;
    let admin_l = server::bind(config.settings.admin_listen, "admin-listen").await?;
    let tls_l = match loaded.tls.source {
        TlsSource::Off => None,
        _ => Some(server::bind(loaded.tls.listen, "tls-listen").await?),
    };
    let bound = Bound {
        public: public.local_addr().unwrap_or(config.settings.listen),
        admin: admin_l.local_addr().unwrap_or(config.settings.admin_listen),
    };
    let tls_addr = tls_l.as_ref().and_then(|l| l.local_addr().ok());

    let metrics = Arc::new(Metrics::new());
    let orchestrator: Arc<dyn Orchestrator> = Arc::new(ProcessOrchestrator::new(metrics.clone()));
    let gw = Gateway::new(config, orchestrator.clone(), metrics.clone());
    gw.apply_loaded(&loaded);
    metrics.config_applied();
    if let Some(addr) = tls_addr {
        // The redirect goes to the port actually bound (it may have been 0).
        let mut view = (**gw.tls.load()).clone();
        view.https_port = addr.port();
        gw.tls.store(Arc::new(view));
    }
    let (shutdown_tx, shutdown) = watch::channel(false);
    let grace = config.settings.shutdown_grace;
    let base = config.settings.base_domain.clone();

    let mut renewer = None;
    let acceptor = match &tls_l {
        None => None,
        Some(_) => {
            let resolver = Arc::new(CertResolver::new());
            gw.serve_certificates_from(resolver.clone());
            renewer = tls::source::start(&loaded.tls, &base, resolver.clone(), metrics.tls.clone(), shutdown.clone()).await?;
            Some(TlsAcceptor::from(tls::server_config(resolver).map_err(AppError::Tls)?))
        }
    };

    let tasks = spawn_servers(&gw, public, admin_l, tls_l, acceptor, &shutdown, grace);
    tokio::spawn(scaler::reaper::run(gw.clone(), shutdown.clone()));
    tokio::spawn(gw.clone().tidy_loop(shutdown.clone()));
    tokio::spawn(reload::watch(path, gw.clone(), shutdown.clone()));

    let port = bound.public.port();
    match tls_addr {
        Some(t) => tracing::info!(public = %bound.public, admin = %bound.admin, tls = %t, "listening"),
        None => tracing::info!(public = %bound.public, admin = %bound.admin, "listening"),
    }
    tracing::info!("catalog at http://{base}:{port}/ ; solutions at http://<name>.{base}:{port}/");
    if let Some(t) = tls_addr {
        tracing::info!("and over HTTPS at https://<name>.{base}:{}/", t.port());
    }
    for s in &config.solutions {
        tracing::info!(solution = %s.name, "http://{}.{base}:{port}/", s.name);
    }

    stop.await;
    tracing::info!("shutting down: no new connections; draining for up to {grace:?}");
    gw.set_draining();
    let _ = shutdown_tx.send(true);
    tokio::select! {
        _ = async { for t in tasks { let _ = t.await; } } => {}
        _ = stop_now => tracing::warn!("second signal: not waiting for open requests"),
    }
    tracing::info!("stopping solutions");
    // An ACME order under way is abandoned; its challenge records are removed
    // (and the ordering lock released) meanwhile.
    let renewer_done = async {
        if let Some(task) = renewer
            && tokio::time::timeout(tls::renew::STOP_WAIT, task).await.is_err()
        {
            tracing::warn!(
                "the certificate renewer did not stop within {:?}: a challenge record may be left in DNS",
                tls::renew::STOP_WAIT
            );
        }
    };
    tokio::join!(orchestrator.shutdown(), renewer_done);
    tracing::info!("bye");
    Ok(())
}
