//! The scaler role in a cluster: the wake API any gateway calls to bring a
//! solution up from zero (an idempotent patch of its Deployment's `scale`),
//! and, on the replica holding the `wakegate-scaler` Lease, the idle reaper
//! that reads every gateway replica's metrics and scales idle solutions to zero.
//! Names, ports and verbs follow `docs/cluster-contract.md`.

pub mod declared;
pub mod leader;
pub mod metrics;
pub mod prometheus;
pub mod reaper;
pub mod scale;
pub mod scrape;
pub mod serve;
pub mod wake_api;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

/// How the scaler role runs.
#[derive(Debug, Clone)]
pub struct Args {
    /// Namespace of wakegate's own objects (Lease, ConfigMap, gateway Service).
    pub namespace: String,
    /// Namespace of the solutions' Services and Deployments.
    pub solutions_namespace: String,
    /// The settings ConfigMap (for idle-timeout and reaper-interval defaults).
    pub configmap: String,
    /// File holding the wake API's bearer token.
    pub token_file: PathBuf,
    /// Service whose EndpointSlices list the gateway pods (admin port `admin`).
    pub gateway_service: String,
    /// This replica's identity (Lease holder, Event reporter).
    pub identity: String,
    /// Wake API listener.
    pub listen: SocketAddr,
    /// Admin listener.
    pub admin_listen: SocketAddr,
    /// Lease duration (failover takes at most about this long).
    pub lease_duration: Duration,
}

/// Why the scaler could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The token file could not be read.
    #[error("cannot read the wake token from {path}: {source}")]
    Token {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// A client from the pod's service account, or `KUBECONFIG` outside a cluster.
pub async fn default_client() -> Result<kube::Client, kube::Error> {
    kube::Client::try_default().await
}

/// Binds the two listeners named in `args`.
pub async fn bind(args: &Args) -> Result<(TcpListener, TcpListener), Error> {
    let wake = TcpListener::bind(args.listen).await.map_err(|source| Error::Bind { addr: args.listen, source })?;
    let admin = TcpListener::bind(args.admin_listen).await.map_err(|source| Error::Bind { addr: args.admin_listen, source })?;
    Ok((wake, admin))
}

/// Runs the scaler role with `client` on already bound listeners until `stop` resolves.
pub async fn run(
    args: Args,
    client: kube::Client,
    wake_l: TcpListener,
    admin_l: TcpListener,
    stop: impl Future<Output = ()>,
) -> Result<(), Error> {
    let tokens =
        wake_api::Tokens::load(args.token_file.clone()).map_err(|source| Error::Token { path: args.token_file.clone(), source })?;
    let wake_addr = wake_l.local_addr().unwrap_or(args.listen);
    let admin_addr = admin_l.local_addr().unwrap_or(args.admin_listen);

    let metrics = Arc::new(metrics::ScalerMetrics::new());
    let (shutdown_tx, shutdown) = watch::channel(false);
    let (leader_tx, leader_rx) = watch::channel(false);

    let api = Arc::new(wake_api::WakeApi { client: client.clone(), tokens, metrics: metrics.clone() });
    let wake_task = tokio::spawn(serve::serve(
        wake_l,
        move |req| {
            let api = api.clone();
            async move { api.handle(req).await }
        },
        shutdown.clone(),
    ));
    let m = metrics.clone();
    let admin_task = tokio::spawn(serve::serve(
        admin_l,
        move |req| {
            let m = m.clone();
            async move { m.admin(&req) }
        },
        shutdown.clone(),
    ));

    let elector = leader::Elector::new(client.clone(), &args.namespace, proto::cluster::SCALER_LEASE, &args.identity, args.lease_duration);
    let election = tokio::spawn(elector.run(leader_tx, metrics.clone(), shutdown.clone()));
    let reaper = reaper::Reaper::new(client, args.clone(), metrics.clone());
    tokio::spawn(reaper.run(leader_rx, shutdown.clone()));

    tracing::info!(wake = %wake_addr, admin = %admin_addr, identity = %args.identity, "scaler listening");
    stop.await;
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    let _ = election.await;
    let _ = wake_task.await;
    let _ = admin_task.await;
    Ok(())
}
