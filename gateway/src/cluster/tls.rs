//! Certificates in a cluster. With `tls-source: acme` the certificate lives
//! in the Secret `wakegate-tls` (type `kubernetes.io/tls`), the ACME account
//! in `wakegate-acme-account`, and the Lease `wakegate-acme` elects the one
//! replica that runs the [`Renewer`] (renewed every third of its duration,
//! ordering included). Every replica watches `wakegate-tls` and swaps what
//! it holds into its resolver at once, so a renewal — or a certificate an
//! operator writes into the Secret — reaches every replica within moments.
//!
//! Other sources are per replica, as in embedded mode: `self-signed`
//! generates its own certificate (no Secret), `files` reads mounted files.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::PostParams;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::watch_object;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::lease::LeaseLock;
use crate::config::Loaded;
use crate::tls::acme::Acme;
use crate::tls::renew::Renewer;
use crate::tls::settings::TlsSource;
use crate::tls::source::StartError;
use crate::tls::store::{ACCOUNT_FILE, CERT_FILE, KEY_FILE, LockState, StoreError, StoreFuture};
use crate::tls::{CertBundle, CertResolver, CertStore, TlsMetrics};

/// The Secret holding the served certificate.
pub const TLS_SECRET: &str = "wakegate-tls";
/// The Secret holding the ACME account credentials (key `account.json`).
pub const ACCOUNT_SECRET: &str = "wakegate-acme-account";
/// One renewal holds the ACME Lease this long: a dead leader is replaced
/// within about a minute, and renewals (every third of it) stay rare.
pub const LEASE_DURATION: Duration = Duration::from_secs(60);
/// Writes that lose a race with another writer are retried this often.
const WRITE_ATTEMPTS: usize = 3;

fn store_err(what: &str, e: kube::Error) -> StoreError {
    StoreError::Io { path: PathBuf::from(format!("secret/{what}")), source: std::io::Error::other(e) }
}

/// The PEM chain and key in a TLS Secret, if both are there.
pub fn bundle_of(secret: &Secret) -> Result<Option<CertBundle>, String> {
    let data = secret.data.as_ref();
    let text = |k: &str| data.and_then(|d| d.get(k)).map(|b| String::from_utf8(b.0.clone()).map_err(|_| format!("{k} is not PEM text")));
    match (text(CERT_FILE).transpose()?, text(KEY_FILE).transpose()?) {
        (Some(chain_pem), Some(key_pem)) => Ok(Some(CertBundle { chain_pem, key_pem })),
        (None, None) => Ok(None),
        (None, Some(_)) => Err(format!("{KEY_FILE} without {CERT_FILE}")),
        (Some(_), None) => Err(format!("{CERT_FILE} without {KEY_FILE}")),
    }
}

/// The ACME client's store in Secrets, its ordering lock the leadership Lease.
pub struct SecretStore {
    secrets: Api<Secret>,
    lock: Arc<LeaseLock>,
}

// === impl SecretStore ===

impl SecretStore {
    /// Secrets in `secrets`' namespace; `lock` is the Lease the leader holds.
    pub fn new(secrets: Api<Secret>, lock: Arc<LeaseLock>) -> Self {
        Self { secrets, lock }
    }

    /// Creates or replaces `name` with `data` (other keys kept), retrying lost races.
    async fn upsert(&self, name: &str, type_: &str, data: BTreeMap<String, ByteString>) -> Result<(), StoreError> {
        for attempt in 1..=WRITE_ATTEMPTS {
            let result = match self.secrets.get_opt(name).await.map_err(|e| store_err(name, e))? {
                Some(mut s) => {
                    s.data.get_or_insert_default().extend(data.clone());
                    self.secrets.replace(name, &PostParams::default(), &s).await
                }
                None => {
                    let s = Secret {
                        metadata: ObjectMeta { name: Some(name.into()), ..ObjectMeta::default() },
                        type_: Some(type_.into()),
                        data: Some(data.clone()),
                        ..Secret::default()
                    };
                    self.secrets.create(&PostParams::default(), &s).await
                }
            };
            match result {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 && attempt < WRITE_ATTEMPTS => {}
                Err(e) => return Err(store_err(name, e)),
            }
        }
        Ok(())
    }
}

impl CertStore for SecretStore {
    fn load_account(&self) -> StoreFuture<'_, Option<String>> {
        Box::pin(async move {
            let secret = self.secrets.get_opt(ACCOUNT_SECRET).await.map_err(|e| store_err(ACCOUNT_SECRET, e))?;
            let bytes = secret.and_then(|s| s.data).and_then(|mut d| d.remove(ACCOUNT_FILE));
            bytes
                .map(|b| String::from_utf8(b.0))
                .transpose()
                .map_err(|_| StoreError::Corrupt { path: format!("secret/{ACCOUNT_SECRET}").into(), reason: "not UTF-8".into() })
        })
    }

    fn save_account<'a>(&'a self, json: &'a str) -> StoreFuture<'a, ()> {
        let data = BTreeMap::from([(ACCOUNT_FILE.to_string(), ByteString(json.as_bytes().to_vec()))]);
        Box::pin(self.upsert(ACCOUNT_SECRET, "Opaque", data))
    }

    fn load_cert(&self) -> StoreFuture<'_, Option<CertBundle>> {
        Box::pin(async move {
            let Some(secret) = self.secrets.get_opt(TLS_SECRET).await.map_err(|e| store_err(TLS_SECRET, e))? else { return Ok(None) };
            bundle_of(&secret).map_err(|reason| StoreError::Corrupt { path: format!("secret/{TLS_SECRET}").into(), reason })
        })
    }

    fn save_cert<'a>(&'a self, bundle: &'a CertBundle) -> StoreFuture<'a, ()> {
        let data = BTreeMap::from([
            (CERT_FILE.to_string(), ByteString(bundle.chain_pem.as_bytes().to_vec())),
            (KEY_FILE.to_string(), ByteString(bundle.key_pem.as_bytes().to_vec())),
        ]);
        Box::pin(self.upsert(TLS_SECRET, "kubernetes.io/tls", data))
    }

    /// Holding the leadership Lease is holding the lock: only its holder
    /// orders. `holder` and `stale_after` are the Lease's own (its
    /// identity and duration).
    fn try_lock<'a>(&'a self, _holder: &'a str, _stale_after: Duration) -> StoreFuture<'a, LockState> {
        Box::pin(async move { self.lock.try_acquire().await.map_err(|e| store_err("lease", e)) })
    }

    /// The leader keeps the Lease between orders; it is released at shutdown.
    fn unlock<'a>(&'a self, _holder: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }
}

/// Serves whatever `wakegate-tls` holds, whenever it changes, until `shutdown`.
pub async fn follow_secret(
    api: Api<Secret>,
    base: String,
    resolver: Arc<CertResolver>,
    metrics: TlsMetrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut stream = Box::pin(watch_object(api, TLS_SECRET).default_backoff());
    let mut served: Option<Vec<u8>> = None;
    let mut failing = false;
    loop {
        let item = tokio::select! {
            item = stream.next() => item,
            _ = crate::server::stopped(&mut shutdown) => return,
        };
        let secret = match item {
            Some(Ok(Some(s))) => s,
            Some(Ok(None)) => {
                tracing::info!(secret = TLS_SECRET, "no certificate stored yet");
                continue;
            }
            Some(Err(e)) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(secret = TLS_SECRET, "watching: {e}; the certificate served stays");
                }
                continue;
            }
            None => return,
        };
        failing = false;
        let loaded = bundle_of(&secret).and_then(|b| {
            let b = b.ok_or_else(|| format!("holds no {CERT_FILE} and {KEY_FILE}"))?;
            Ok((b.certified_key().map_err(|e| e.to_string())?, b.info().map_err(|e| e.to_string())?))
        });
        match loaded {
            Ok((key, info)) => {
                let leaf = key.cert.first().map(|c| c.to_vec());
                if leaf != served {
                    resolver.swap(key);
                    metrics.certificate(&base, &info);
                    served = leaf;
                    tracing::info!(secret = TLS_SECRET, names = ?info.names, not_after = ?info.not_after, "serving the stored certificate");
                }
            }
            Err(e) => tracing::warn!(secret = TLS_SECRET, "unusable: {e}; the certificate served stays"),
        }
    }
}

/// Runs the [`Renewer`] while this replica holds the ACME Lease.
pub struct Leader {
    /// The Lease.
    pub lock: Arc<LeaseLock>,
    /// The ACME client (its store is a [`SecretStore`] over the same Lease).
    pub acme: Arc<Acme>,
    /// Where a new certificate is served at once.
    pub resolver: Arc<CertResolver>,
    /// Certificate and order metrics.
    pub metrics: TlsMetrics,
}

// === impl Leader ===

impl Leader {
    /// Campaigns and renews until `shutdown`, then releases the Lease.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let every = self.lock.duration() / 3;
        let mut renewer: Option<Running> = None;
        // The last renewer told to stop: the next one waits for it to end
        // (it may be in the middle of an order), so two never overlap.
        let mut stopping: Option<JoinHandle<()>> = None;
        let mut held_until: Option<Instant> = None;
        loop {
            match self.lock.try_acquire().await {
                Ok(LockState::Acquired) => {
                    held_until = Some(Instant::now() + self.lock.duration());
                    if renewer.is_none() {
                        tracing::info!(
                            lease = proto::cluster::ACME_LEASE,
                            holder = self.lock.identity(),
                            "leading: this replica runs ACME"
                        );
                        renewer = Some(self.start_renewer(stopping.take()));
                    }
                }
                Ok(LockState::HeldBy(holder)) => {
                    held_until = None;
                    if let Some(running) = renewer.take() {
                        tracing::warn!(lease = proto::cluster::ACME_LEASE, %holder, "lost the lease: no longer running ACME");
                        stopping = Some(running.stop());
                    }
                }
                Err(e) => {
                    tracing::warn!(lease = proto::cluster::ACME_LEASE, "cannot renew: {e}");
                    if held_until.is_some_and(|t| Instant::now() + every >= t)
                        && let Some(running) = renewer.take()
                    {
                        tracing::warn!(lease = proto::cluster::ACME_LEASE, "the lease runs out: no longer running ACME");
                        stopping = Some(running.stop());
                        held_until = None;
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = crate::server::stopped(&mut shutdown) => break,
            }
        }
        // An order under way is abandoned and its challenge records removed
        // before the Lease goes to another replica.
        let tasks = renewer.take().map(Running::stop).into_iter().chain(stopping.take());
        for task in tasks {
            if tokio::time::timeout(crate::tls::renew::STOP_WAIT, task).await.is_err() {
                tracing::warn!("the certificate renewer did not stop in time: a challenge record may be left in DNS");
            }
        }
        if held_until.is_some()
            && let Err(e) = self.lock.release().await
        {
            tracing::warn!(lease = proto::cluster::ACME_LEASE, "cannot release: {e}");
        }
    }

    /// Starts a renewer once `previous` (told to stop) has ended.
    fn start_renewer(&self, previous: Option<JoinHandle<()>>) -> Running {
        let (stop, stopped) = watch::channel(false);
        let renewer = Renewer::new(self.acme.clone(), self.resolver.clone(), self.metrics.clone());
        // `POST /tls/renew` on this replica's admin listener reaches it.
        crate::tls::renew::register(renewer.handle());
        let task = tokio::spawn(async move {
            if let Some(previous) = previous {
                let _ = previous.await;
            }
            // Told to stop while it waited: it never ran, so it orders nothing.
            if !*stopped.borrow() {
                renewer.run(stopped).await;
            }
        });
        Running { stop, task }
    }
}

/// A renewer's task and the switch that stops it.
struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Running {
    /// Tells it to stop (it ends after the pass it is in); its task, to wait for.
    fn stop(self) -> JoinHandle<()> {
        let _ = self.stop.send(true);
        self.task
    }
}

/// Starts the certificate source of `loaded` for base domain `base`,
/// serving through `resolver`; returns the ACME leader's task (to be awaited
/// at shutdown, when it releases its Lease), if there is one.
#[allow(clippy::too_many_arguments)]
pub async fn start(
    loaded: &Loaded,
    base: &str,
    client: kube::Client,
    namespace: &str,
    identity: &str,
    resolver: Arc<CertResolver>,
    metrics: TlsMetrics,
    shutdown: watch::Receiver<bool>,
) -> Result<Option<JoinHandle<()>>, StartError> {
    if !matches!(loaded.tls.source, TlsSource::Acme(_)) {
        crate::tls::source::start(&loaded.tls, base, resolver, metrics, shutdown).await?;
        return Ok(None);
    }
    let Some(config) = loaded.tls.acme_config(base).await.transpose().map_err(StartError::Acme)? else { return Ok(None) };
    let Some(dns) = loaded.tls.dns_provider(base).transpose().map_err(StartError::Acme)? else { return Ok(None) };
    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let lock = Arc::new(LeaseLock::new(leases, proto::cluster::ACME_LEASE, identity, LEASE_DURATION));
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
    let store = SecretStore::new(secrets.clone(), lock.clone());
    let acme = Arc::new(Acme::new(config, Arc::new(store), dns));
    tokio::spawn(follow_secret(secrets, base.to_string(), resolver.clone(), metrics.clone(), shutdown.clone()));
    let leader = Leader { lock, acme, resolver, metrics };
    Ok(Some(tokio::spawn(leader.run(shutdown))))
}
