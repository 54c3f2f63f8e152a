//! Cluster mode (`wakegate gateway`): the edge as one of N stateless
//! replicas in Kubernetes. Settings come from a ConfigMap ([`settings`]),
//! solutions from labelled Services and `wakegate` Ingresses
//! ([`solutions`]), endpoints from EndpointSlices, and wake-ups go to the
//! scaler's wake API ([`orchestrator`]); the certificate is shared through a
//! Secret and one replica at a time renews it under a Lease ([`tls`]).
//! Everything is watched, applied live, and survives API restarts: while
//! the API is away the gateway serves what it last knew.
//!
//! [`run`] binds the listeners and builds the kube client from the
//! environment; [`run_with`] takes both ready-made (tests).

pub mod endpoints;
pub mod lease;
pub mod live;
pub mod orchestrator;
pub mod pods;
pub mod settings;
pub mod solutions;
pub mod supervisor;
pub mod tls;
pub mod wake;

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use scaler::Orchestrator;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use self::live::{Bound, Live};
use self::orchestrator::ClusterOrchestrator;
use self::solutions::Objects;
use self::wake::Waker;
use crate::config::Loaded;
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::tls::CertResolver;
use crate::tls::settings::TlsSource;

/// How often the start-up wait says what it waits for.
const WAITING_LOG: Duration = Duration::from_secs(10);
/// Longest wait at shutdown for the ACME Lease to be released.
const RELEASE_WAIT: Duration = Duration::from_secs(5);

/// The `wakegate gateway` command line (docs/cluster-contract.md).
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Namespace of wakegate's own objects (ConfigMap, TLS Secret, Lease, Events).
    #[arg(long, env = "POD_NAMESPACE", default_value = "wakegate")]
    pub namespace: String,
    /// Where solution Services, Ingresses and Deployments live.
    #[arg(long, env = "WAKEGATE_SOLUTIONS_NAMESPACE", default_value = "solutions")]
    pub solutions_namespace: String,
    /// The settings ConfigMap.
    #[arg(long, env = "WAKEGATE_CONFIGMAP", default_value = "wakegate-config")]
    pub configmap: String,
    /// Bearer token for the scaler's wake API (mounted from Secret `wakegate-wake-token`).
    #[arg(long, env = "WAKEGATE_TOKEN_FILE", default_value = "/var/run/wakegate/token")]
    pub token_file: PathBuf,
    /// The scaler's wake API.
    #[arg(long, env = "WAKEGATE_SCALER_URL", default_value = "http://wakegate-scaler:9091")]
    pub scaler_url: String,
    /// Public HTTP listener.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Public HTTPS listener (unused when `tls-source` is `off`).
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub tls_listen: SocketAddr,
    /// Admin listener (`/metrics`, `/healthz`, `/readyz`, `/status`).
    #[arg(long, default_value = "0.0.0.0:9090")]
    pub admin_listen: SocketAddr,
    /// This replica's name, for the ACME Lease and Events (downward API).
    #[arg(long, env = "POD_NAME", default_value_t = default_identity())]
    pub pod_name: String,
}

impl Default for Args {
    fn default() -> Self {
        let addr = |s: &str| s.parse().unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        Self {
            namespace: "wakegate".into(),
            solutions_namespace: "solutions".into(),
            configmap: "wakegate-config".into(),
            token_file: "/var/run/wakegate/token".into(),
            scaler_url: "http://wakegate-scaler:9091".into(),
            listen: addr("0.0.0.0:8080"),
            tls_listen: addr("0.0.0.0:8443"),
            admin_listen: addr("0.0.0.0:9090"),
            pod_name: default_identity(),
        }
    }
}

/// `POD_NAME`, else the host name (a pod's host name is its name).
fn default_identity() -> String {
    std::env::var("POD_NAME").or_else(|_| std::env::var("HOSTNAME")).unwrap_or_else(|_| "wakegate-gateway".into())
}

/// Why cluster mode could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener could not be bound.
    #[error(transparent)]
    Bind(#[from] crate::server::BindError),
    /// No Kubernetes configuration was found (in-cluster or `KUBECONFIG`).
    #[error("Kubernetes configuration: {0}")]
    KubeConfig(#[source] kube::config::InferConfigError),
    /// The Kubernetes client could not be built.
    #[error("Kubernetes client: {0}")]
    Kube(#[source] kube::Error),
    /// `--scaler-url` is not `http://host:port`.
    #[error("--scaler-url: {0}")]
    ScalerUrl(String),
    /// The certificate source could not start.
    #[error("TLS: {0}")]
    TlsSource(#[from] crate::tls::source::StartError),
    /// The TLS configuration was refused by rustls.
    #[error("TLS configuration: {0}")]
    Tls(#[source] rustls::Error),
}

/// The three listeners, bound.
#[derive(Debug)]
pub struct Listeners {
    /// Public HTTP.
    pub public: TcpListener,
    /// Admin.
    pub admin: TcpListener,
    /// Public HTTPS; dropped if the settings turn TLS off.
    pub tls: TcpListener,
}

impl Listeners {
    /// Binds the addresses of `args`.
    pub async fn bind(args: &Args) -> Result<Self, Error> {
        use crate::server::bind;
        Ok(Self {
            public: bind(args.listen, "listen").await?,
            admin: bind(args.admin_listen, "admin-listen").await?,
            tls: bind(args.tls_listen, "tls-listen").await?,
        })
    }
}

/// Runs the gateway in cluster mode until `stop` resolves; `stop_now` cuts
/// the drain short (a second signal). The kube client comes from the
/// environment (in-cluster service account, or `KUBECONFIG`).
pub async fn run(args: Args, stop: impl Future<Output = ()>, stop_now: impl Future<Output = ()>) -> Result<(), Error> {
    let listeners = Listeners::bind(&args).await?;
    let config = kube::Config::infer().await.map_err(Error::KubeConfig)?;
    let client = kube::Client::try_from(config).map_err(Error::Kube)?;
    run_with(args, client, listeners, stop, stop_now).await
}

/// [`run`] with a ready client and bound listeners (`args`' addresses are not used).
pub async fn run_with(
    args: Args,
    client: kube::Client,
    listeners: Listeners,
    stop: impl Future<Output = ()>,
    stop_now: impl Future<Output = ()>,
) -> Result<(), Error> {
    let waker = Waker::new(&args.scaler_url, args.token_file.clone()).map_err(Error::ScalerUrl)?;
    let metrics = Arc::new(Metrics::new());
    let (shutdown_tx, shutdown) = watch::channel(false);
    tokio::pin!(stop);
    let Listeners { public, admin, tls } = listeners;
    // Dropped (or told) once the gateway serves: the admin listener's
    // answers while it starts end then.
    let (starting_tx, admin) = serve_while_starting(admin, &metrics);

    let (mut settings_rx, mut objects_rx) = spawn_watches(&args, &client, &metrics, &shutdown);
    // Nothing is served before the settings and the solutions are known.
    let (settings_now, objects_now) = tokio::select! {
        r = initial(&args, &mut settings_rx, &mut objects_rx) => r,
        _ = &mut stop => {
            let _ = shutdown_tx.send(true);
            return Ok(());
        }
    };

    let tls_l = match settings_now.tls.source {
        TlsSource::Off => None,
        _ => Some(tls),
    };
    let bound = Bound {
        public: public.local_addr().unwrap_or(args.listen),
        admin: admin.local_addr().unwrap_or(args.admin_listen),
        tls: tls_l.as_ref().map(|l| l.local_addr().unwrap_or(args.tls_listen)),
    };
    let (loaded, problems) = live::combine(&settings_now, &objects_now, &args.solutions_namespace, bound);
    let mut logged = BTreeSet::new();
    live::report(problems, &mut logged);
    let orchestrator: Arc<dyn Orchestrator> = Arc::new(ClusterOrchestrator::new(client.clone(), waker, metrics.clone()));
    let gw = Gateway::new(&loaded.config, orchestrator.clone(), metrics.clone());
    gw.apply_loaded(&loaded);
    let grace = loaded.config.settings.shutdown_grace;
    let base = loaded.config.settings.base_domain.clone();

    let (acceptor, leader) = match &tls_l {
        None => (None, None),
        Some(_) => {
            let resolver = Arc::new(CertResolver::new());
            gw.serve_certificates_from(resolver.clone());
            start_tls(&args, &client, &loaded, &metrics, &shutdown, resolver).await?
        }
    };

    let _ = starting_tx.send(true);
    let tasks = crate::app::spawn_servers(&gw, public, admin, tls_l, acceptor, &shutdown, grace);
    let live = Live {
        gw: gw.clone(),
        settings: settings_rx,
        objects: objects_rx,
        namespace: args.solutions_namespace.clone(),
        bound,
        applied: loaded.config.clone(),
        logged,
    };
    tokio::spawn(live.run(shutdown.clone()));
    tokio::spawn(gw.clone().tidy_loop(shutdown.clone()));

    match bound.tls {
        Some(t) => tracing::info!(public = %bound.public, admin = %bound.admin, tls = %t, "listening"),
        None => tracing::info!(public = %bound.public, admin = %bound.admin, "listening"),
    }
    tracing::info!(
        namespace = %args.namespace,
        solutions_namespace = %args.solutions_namespace,
        solutions = loaded.config.solutions.len(),
        "cluster mode: solutions at <name>.{base}"
    );

    stop.await;
    tracing::info!("shutting down: no new connections; draining for up to {grace:?}");
    gw.set_draining();
    let _ = shutdown_tx.send(true);
    tokio::select! {
        _ = async { for t in tasks { let _ = t.await; } } => {}
        _ = stop_now => tracing::warn!("second signal: not waiting for open requests"),
    }
    orchestrator.shutdown().await;
    if let Some(leader) = leader
        && tokio::time::timeout(RELEASE_WAIT, leader).await.is_err()
    {
        tracing::warn!("the ACME lease was not released in time");
    }
    tracing::info!("bye");
    Ok(())
}

/// The receivers of the settings and of the solution objects.
type Watches = (watch::Receiver<Option<Arc<Loaded>>>, watch::Receiver<Option<Arc<Objects>>>);

/// Starts following the settings ConfigMap and the solution objects.
fn spawn_watches(args: &Args, client: &kube::Client, metrics: &Arc<Metrics>, shutdown: &watch::Receiver<bool>) -> Watches {
    let (settings_tx, settings_rx) = watch::channel(None);
    let settings_watch = settings::Watch {
        api: Api::<ConfigMap>::namespaced(client.clone(), &args.namespace),
        name: args.configmap.clone(),
        client: client.clone(),
        identity: args.pod_name.clone(),
        metrics: metrics.clone(),
        tx: settings_tx,
    };
    tokio::spawn(settings_watch.run(shutdown.clone()));
    let (objects_tx, objects_rx) = watch::channel(None);
    tokio::spawn(solutions::watch(client.clone(), args.solutions_namespace.clone(), objects_tx, shutdown.clone()));
    (settings_rx, objects_rx)
}

/// The TLS acceptor over a fresh resolver fed by the certificate source, and
/// the ACME leader's task if there is one.
async fn start_tls(
    args: &Args,
    client: &kube::Client,
    loaded: &Loaded,
    metrics: &Metrics,
    shutdown: &watch::Receiver<bool>,
    resolver: Arc<CertResolver>,
) -> Result<(Option<TlsAcceptor>, Option<tokio::task::JoinHandle<()>>), Error> {
    let base = &loaded.config.settings.base_domain;
    let leader =
        tls::start(loaded, base, client.clone(), &args.namespace, &args.pod_name, resolver.clone(), metrics.tls.clone(), shutdown.clone())
            .await?;
    Ok((Some(TlsAcceptor::from(crate::tls::server_config(resolver).map_err(Error::Tls)?)), leader))
}

/// Answers on the admin listener while the gateway starts (waiting for its
/// settings, its solutions, its certificate): alive (`/healthz`), not ready
/// (`/readyz`, 503), its metrics so far. Unanswered, a liveness probe would
/// restart a pod that is only waiting (a first ConfigMap with a mistake, a
/// slow API server) into CrashLoopBackOff. Serves a second handle of the
/// listener until the returned sender says `true` (or is dropped); the
/// listener is returned for the gateway's own admin server.
fn serve_while_starting(admin: TcpListener, metrics: &Arc<Metrics>) -> (watch::Sender<bool>, TcpListener) {
    use std::os::fd::AsFd;
    let (tx, rx) = watch::channel(false);
    let early = admin.as_fd().try_clone_to_owned().and_then(|fd| {
        let l = std::net::TcpListener::from(fd);
        l.set_nonblocking(true)?;
        TcpListener::from_std(l)
    });
    match early {
        Ok(early) => {
            let metrics = metrics.clone();
            let handler = move |_peer, _info: Option<&crate::server::ConnInfo>, req: http::Request<crate::limits::body::RequestBody>| {
                let r = crate::server::Answer::from(crate::admin::starting(&metrics, &req));
                async move { r }
            };
            let fixed = Arc::new(crate::server::Fixed(crate::server::Options::default()));
            tokio::spawn(crate::server::serve(early, handler, fixed, None, rx, Duration::from_secs(1)));
        }
        Err(e) => tracing::warn!("the admin listener answers only once the gateway serves: {e}"),
    }
    (tx, admin)
}

/// Waits until a configuration and the solution objects are known, saying what it waits for.
async fn initial(
    args: &Args,
    settings: &mut watch::Receiver<Option<Arc<Loaded>>>,
    objects: &mut watch::Receiver<Option<Arc<Objects>>>,
) -> (Arc<Loaded>, Arc<Objects>) {
    loop {
        let s = settings.borrow_and_update().clone();
        let o = objects.borrow_and_update().clone();
        if let (Some(s), Some(o)) = (&s, &o) {
            return (s.clone(), o.clone());
        }
        tokio::select! {
            // A watch that ended (it never does before shutdown) leaves the wait to `stop`.
            r = settings.changed() => if r.is_err() { std::future::pending::<()>().await },
            r = objects.changed() => if r.is_err() { std::future::pending::<()>().await },
            _ = tokio::time::sleep(WAITING_LOG) => {
                if s.is_none() {
                    tracing::warn!(namespace = %args.namespace, "waiting for a valid ConfigMap {}", args.configmap);
                }
                if o.is_none() {
                    tracing::warn!(namespace = %args.solutions_namespace, "waiting for the list of Services and Ingresses");
                }
            }
        }
    }
}
