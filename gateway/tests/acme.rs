//! The certificate side against real servers: pebble (ACME CA) validating
//! DNS-01 against knotd, records written by RFC 2136 + TSIG or by an exec
//! hook. Needs `scripts/install-deps acme`.
//!
//! What a user sees: a certificate for `*.aim.test` + `aim.test` that a
//! client trusting pebble's root accepts for both names; the challenge
//! records gone afterwards; the same ACME account across restarts; a DNS
//! failure counted and classified while the old certificate keeps serving.

// The same rig as the binary's TLS tests (tests/tls.rs).
#[allow(dead_code)]
#[path = "../../tests/acme_rig.rs"]
mod rig;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus_client::registry::Registry;
use rig::{Options, Rig, ZONE};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use wakegate::tls::acme::{Acme, AcmeConfig, AcmeError, Eab};
use wakegate::tls::certkey::{CertBundle, provider};
use wakegate::tls::dns::{DnsError, DnsFuture, DnsProvider};
use wakegate::tls::exec::Exec;
use wakegate::tls::renew::{Outcome, Renewer};
use wakegate::tls::rfc2136::{Rfc2136, TsigKey};
use wakegate::tls::store::{CertStore, DirStore};
use wakegate::tls::{CertResolver, TlsMetrics, selfsigned, server_config, sni_of};

const OWNER: &str = "_acme-challenge.aim.test";

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The TSIG key knot accepts for updates of `_acme-challenge.aim.test`.
fn tsig_key(rig: &Rig) -> Result<TsigKey, Error> {
    let secret = data_encoding::BASE64.decode(rig.tsig_secret.as_bytes())?;
    Ok(TsigKey { name: rig::KEY_NAME.into(), algorithm: wakegate::tls::rfc2136::TsigAlgorithm::HmacSha256, secret })
}

fn config(rig: &Rig, eab: Option<Eab>) -> AcmeConfig {
    AcmeConfig {
        directory: rig.directory.clone(),
        contact: vec!["mailto:ops@aim.test".into()],
        ca_file: Some(rig.ca_file.clone()),
        eab,
        base: ZONE.into(),
        zone: ZONE.into(),
        nameservers: vec![rig.dns],
        propagation_timeout: Duration::from_secs(10),
        propagation_delay: Duration::ZERO,
        order_timeout: Duration::from_secs(30),
        lock_stale_after: Duration::from_secs(600),
    }
}

/// Wraps a provider and, just before each cleanup (that is, after the CA has
/// validated), records what knot serves at the owner.
struct Observed {
    inner: Arc<dyn DnsProvider>,
    dns: std::net::SocketAddr,
    seen_before_cleanup: Mutex<Vec<Vec<String>>>,
}

impl DnsProvider for Observed {
    fn present<'a>(&'a self, fqdn: &'a str, value: &'a str) -> DnsFuture<'a> {
        self.inner.present(fqdn, value)
    }

    fn cleanup<'a>(&'a self, fqdn: &'a str, value: &'a str) -> DnsFuture<'a> {
        Box::pin(async move {
            let name = wakegate::tls::dns::fqdn(fqdn)?;
            let values = wakegate::tls::propagation::query_txt(self.dns, &name, Duration::from_secs(2)).await?;
            if let Ok(mut seen) = self.seen_before_cleanup.lock() {
                seen.push(values);
            }
            self.inner.cleanup(fqdn, value).await
        })
    }
}

/// Serves `resolver` with the gateway's server config and connects a client
/// that trusts only `root`, with `sni`; returns the SNI the server saw and the
/// ALPN protocol agreed.
async fn handshake(resolver: Arc<CertResolver>, root: &CertificateDer<'static>, sni: &str) -> Result<(String, Vec<u8>), Error> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config(resolver)?);
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let tls = acceptor.accept(tcp).await?;
        Ok::<_, std::io::Error>(sni_of(&tls).unwrap_or_default().to_string())
    });
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone())?;
    let mut client = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tls = connector.connect(ServerName::try_from(sni.to_string())?, TcpStream::connect(addr).await?).await;
    let seen = server.await?;
    let tls = tls?;
    Ok((seen?, tls.get_ref().1.alpn_protocol().unwrap_or_default().to_vec()))
}

fn leaf(bundle: &CertBundle) -> Result<Vec<u8>, Error> {
    Ok(bundle.chain_der()?.remove(0).to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc2136_wildcard_certificate_is_served_renewed_and_the_account_reused() -> Result<(), Error> {
    let started = std::time::Instant::now();
    let rig = Rig::start(Options::default()).await?;
    let store_dir = rig.dir.path().join("tls");
    let store: Arc<dyn CertStore> = Arc::new(DirStore::new(&store_dir));
    let rfc2136: Arc<dyn DnsProvider> = Arc::new(Rfc2136::new(rig.dns.to_string(), ZONE, &tsig_key(&rig)?)?);
    let observed = Arc::new(Observed { inner: rfc2136.clone(), dns: rig.dns, seen_before_cleanup: Mutex::new(Vec::new()) });
    let acme = Arc::new(Acme::new(config(&rig, None), store.clone(), observed.clone()));

    // First start: nothing stored, so the renewer orders at once.
    let mut registry = Registry::with_prefix("wakegate");
    let metrics = TlsMetrics::register(&mut registry);
    let resolver = Arc::new(CertResolver::new());
    let mut renewer = Renewer::new(acme.clone(), resolver.clone(), metrics.clone());
    let tick = renewer.tick(SystemTime::now()).await;
    let Outcome::Obtained(first) = tick.outcome else {
        return Err(format!("expected a certificate, got {:?}\n{}", tick.outcome, rig.logs()).into());
    };
    assert!(tick.next >= Duration::from_secs(60), "no tight loop after success: {:?}", tick.next);
    assert_eq!(first.info.names.iter().filter(|n| *n == "*.aim.test" || *n == "aim.test").count(), 2, "{:?}", first.info.names);

    // Both values were served while the CA validated, and are gone now.
    let seen = observed.seen_before_cleanup.lock().map_err(|_| "poisoned")?.clone();
    let mut during = seen.first().cloned().unwrap_or_default();
    during.sort();
    during.dedup();
    assert_eq!(seen.len(), 2, "one cleanup per published value: {seen:?}");
    assert_eq!(during.len(), 2, "both TXT values coexisted while the CA validated: {seen:?}");
    assert_eq!(rig.txt(OWNER).await?, Vec::<String>::new(), "challenge records removed");

    // The chain verifies against pebble's root for the wildcard and the base.
    let root = rig.root().await?;
    for sni in ["nlp.aim.test", "aim.test"] {
        let (seen_sni, alpn) = handshake(resolver.clone(), &root, sni).await?;
        assert_eq!((seen_sni.as_str(), alpn.as_slice()), (sni, &b"h2"[..]));
    }
    assert!(handshake(resolver.clone(), &root, "nlp.other.test").await.is_err(), "a name outside the certificate fails");

    // Metrics tell the story.
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    assert!(text.contains("wakegate_acme_orders_total{outcome=\"success\"} 1"), "{text}");
    assert!(text.contains("wakegate_acme_last_success_timestamp_seconds"), "{text}");
    let gauge = |name: &str| -> Option<f64> {
        let line = text.lines().find(|l| l.starts_with(&format!("{name}{{name=\"aim.test\"}} ")))?;
        line.rsplit(' ').next()?.parse().ok()
    };
    let now = SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs_f64();
    let (expiry, renewal) =
        (gauge("wakegate_certificate_expiry_timestamp_seconds"), gauge("wakegate_certificate_renewal_timestamp_seconds"));
    assert!(
        matches!((expiry, renewal), (Some(e), Some(r)) if now < r && r < e),
        "renewal planned between now ({now}) and expiry: {renewal:?}, {expiry:?}\n{text}"
    );
    // The renewer stops (the ACME Lease went to another replica): its plan
    // goes with it, or the alerts would read a stale one.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(renewer.run(stopped));
    stop.send(true)?;
    tokio::time::timeout(Duration::from_secs(30), running).await??;
    let mut after = String::new();
    prometheus_client::encoding::text::encode(&mut after, &registry)?;
    assert!(!after.contains("wakegate_certificate_renewal_timestamp_seconds{"), "{after}");
    assert!(after.contains("wakegate_certificate_expiry_timestamp_seconds{name=\"aim.test\"}"), "{after}");

    // Stored for restarts, the key private.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(store_dir.join("tls.key"))?.permissions().mode() & 0o777, 0o600);
    assert_eq!(store.load_cert().await?.as_ref().map(leaf).transpose()?, Some(leaf(&first.bundle)?));

    // A restart: a new client over the same store serves the stored
    // certificate without ordering...
    let acme2 = Arc::new(Acme::new(config(&rig, None), store.clone(), rfc2136.clone()));
    let resolver2 = Arc::new(CertResolver::new());
    let mut renewer2 = Renewer::new(acme2.clone(), resolver2.clone(), TlsMetrics::default());
    let tick = renewer2.tick(SystemTime::now()).await;
    assert!(matches!(tick.outcome, Outcome::Loaded), "{:?}", tick.outcome);
    assert!(tick.next > Duration::from_secs(60), "a fresh certificate is not due: {:?}", tick.next);
    assert_eq!(resolver2.current().map(|k| k.cert[0].to_vec()), Some(leaf(&first.bundle)?));

    // ...and its next order (a renewal) uses the same account.
    let second = acme2.obtain(Some(&first.bundle), None).await?;
    assert_eq!(second.account_url, first.account_url, "account reused across restarts");
    assert_ne!(second.order_url, first.order_url);
    assert_ne!(leaf(&second.bundle)?, leaf(&first.bundle)?);
    assert_eq!(rig.txt(OWNER).await?, Vec::<String>::new());
    eprintln!("rfc2136 test took {:?}", started.elapsed());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_tsig_secret_is_a_counted_dns_error_and_the_old_certificate_stays() -> Result<(), Error> {
    let rig = Rig::start(Options::default()).await?;
    let good = tsig_key(&rig)?;
    let wrong = TsigKey { secret: good.secret.iter().map(|b| b ^ 0x5a).collect(), ..good };
    let dns: Arc<dyn DnsProvider> = Arc::new(Rfc2136::new(rig.dns.to_string(), ZONE, &wrong)?);
    let store: Arc<dyn CertStore> = Arc::new(DirStore::new(rig.dir.path().join("tls")));
    let acme = Arc::new(Acme::new(config(&rig, None), store, dns.clone()));

    // The direct call: classified as DNS.
    let err = dns.present(OWNER, "probe").await;
    assert!(matches!(err, Err(DnsError::Exchange { .. } | DnsError::Refused { .. })), "{err:?}");

    let old = selfsigned::generate(ZONE)?;
    let resolver = Arc::new(CertResolver::with(old.certified_key()?));
    let mut registry = Registry::with_prefix("wakegate");
    let metrics = TlsMetrics::register(&mut registry);
    let mut renewer = Renewer::new(acme, resolver.clone(), metrics.clone());
    let tick = renewer.tick(SystemTime::now()).await;
    match &tick.outcome {
        Outcome::Failed(e @ AcmeError::Dns(_)) => assert_eq!(e.outcome(), "dns"),
        other => return Err(format!("expected a DNS failure, got {other:?}").into()),
    }
    assert!(tick.next >= Duration::from_secs(45), "backoff, not a tight loop: {:?}", tick.next);
    assert_eq!(metrics.orders("dns"), 1);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    assert!(text.contains("wakegate_acme_orders_total{outcome=\"dns\"} 1"), "{text}");
    assert_eq!(resolver.current().map(|k| k.cert[0].to_vec()), Some(leaf(&old)?), "the old certificate is still served");
    assert_eq!(rig.txt(OWNER).await?, Vec::<String>::new(), "nothing was published");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exec_provider_obtains_a_certificate_with_external_account_binding() -> Result<(), Error> {
    let rig = Rig::start(Options { require_eab: true }).await?;
    let hook = rig.knsupdate_script()?;
    let dns: Arc<dyn DnsProvider> = Arc::new(Exec::new(&hook));

    // Without EAB, this CA refuses to create the account.
    let no_eab = Acme::new(config(&rig, None), Arc::new(DirStore::new(rig.dir.path().join("no-eab"))), dns.clone());
    let err = no_eab.obtain(None, None).await;
    assert!(matches!(err, Err(AcmeError::Rejected { .. })), "{err:?}");

    let hmac_key = data_encoding::BASE64URL_NOPAD.decode(rig::EAB_HMAC.as_bytes())?;
    let eab = Eab { kid: rig::EAB_KID.into(), hmac_key };
    let acme = Acme::new(config(&rig, Some(eab)), Arc::new(DirStore::new(rig.dir.path().join("tls"))), dns);
    let issued = match acme.obtain(None, None).await {
        Ok(i) => i,
        Err(e) => return Err(format!("{e}\n{}", rig.logs()).into()),
    };
    let resolver = Arc::new(CertResolver::with(issued.bundle.certified_key()?));
    let root = rig.root().await?;
    for sni in ["nlp.aim.test", "aim.test"] {
        handshake(resolver.clone(), &root, sni).await?;
    }
    let calls = std::fs::read_to_string(rig.dir.path().join("dns-hook.log"))?;
    assert_eq!(calls.lines().filter(|l| l.starts_with("present _acme-challenge.aim.test ")).count(), 2, "{calls}");
    assert_eq!(calls.lines().filter(|l| l.starts_with("cleanup _acme-challenge.aim.test ")).count(), 2, "{calls}");
    assert_eq!(rig.txt(OWNER).await?, Vec::<String>::new());
    Ok(())
}

/// A store whose certificate reads or writes fail on demand (an API server
/// throttling, a full disk).
struct Flaky {
    inner: DirStore,
    fail_load: std::sync::atomic::AtomicBool,
    fail_save: std::sync::atomic::AtomicBool,
}

impl Flaky {
    fn broken(&self, path: &str) -> wakegate::tls::store::StoreError {
        let source = std::io::Error::other("the store is unavailable");
        wakegate::tls::store::StoreError::Io { path: path.into(), source }
    }
}

impl CertStore for Flaky {
    fn load_account(&self) -> wakegate::tls::store::StoreFuture<'_, Option<String>> {
        self.inner.load_account()
    }
    fn save_account<'a>(&'a self, json: &'a str) -> wakegate::tls::store::StoreFuture<'a, ()> {
        self.inner.save_account(json)
    }
    fn load_cert(&self) -> wakegate::tls::store::StoreFuture<'_, Option<CertBundle>> {
        if self.fail_load.load(std::sync::atomic::Ordering::SeqCst) {
            let e = self.broken("tls.crt");
            return Box::pin(async move { Err(e) });
        }
        self.inner.load_cert()
    }
    fn save_cert<'a>(&'a self, bundle: &'a CertBundle) -> wakegate::tls::store::StoreFuture<'a, ()> {
        if self.fail_save.load(std::sync::atomic::Ordering::SeqCst) {
            let e = self.broken("tls.crt");
            return Box::pin(async move { Err(e) });
        }
        self.inner.save_cert(bundle)
    }
    fn try_lock<'a>(
        &'a self,
        holder: &'a str,
        stale_after: Duration,
    ) -> wakegate::tls::store::StoreFuture<'a, wakegate::tls::store::LockState> {
        self.inner.try_lock(holder, stale_after)
    }
    fn unlock<'a>(&'a self, holder: &'a str) -> wakegate::tls::store::StoreFuture<'a, ()> {
        self.inner.unlock(holder)
    }
}

/// A store that cannot be read is not an empty one (nothing is ordered), and
/// a certificate issued but not saved is served and saved later, never
/// ordered again: each order spends the CA's limits (Let's Encrypt: 5
/// duplicate certificates a week).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_failure_never_costs_another_order() -> Result<(), Error> {
    use std::sync::atomic::Ordering::SeqCst;
    let rig = Rig::start(Options::default()).await?;
    let store = Arc::new(Flaky { inner: DirStore::new(rig.dir.path().join("tls")), fail_load: true.into(), fail_save: false.into() });
    let dns: Arc<dyn DnsProvider> = Arc::new(Rfc2136::new(rig.dns.to_string(), ZONE, &tsig_key(&rig)?)?);
    let acme = Arc::new(Acme::new(config(&rig, None), store.clone(), dns));
    let mut registry = Registry::with_prefix("wakegate");
    let metrics = TlsMetrics::register(&mut registry);
    let resolver = Arc::new(CertResolver::new());
    let mut renewer = Renewer::new(acme, resolver.clone(), metrics);
    let orders = |registry: &Registry| -> Result<String, Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry)?;
        Ok(text.lines().filter(|l| l.starts_with("wakegate_acme_orders_total{") && !l.ends_with(" 0")).collect::<Vec<_>>().join("\n"))
    };

    let tick = renewer.tick(SystemTime::now()).await;
    assert!(matches!(tick.outcome, Outcome::Current), "an unreadable store orders nothing: {:?}", tick.outcome);
    assert!(tick.next >= Duration::from_secs(30), "and looks again after a pause: {:?}", tick.next);
    assert_eq!(orders(&registry)?, "", "no order counted");
    assert!(resolver.current().is_none());

    store.fail_load.store(false, SeqCst);
    store.fail_save.store(true, SeqCst);
    let tick = renewer.tick(SystemTime::now()).await;
    let Outcome::Obtained(issued) = tick.outcome else { return Err(format!("expected a certificate, got {:?}", tick.outcome).into()) };
    assert!(issued.unsaved.is_some(), "the save failed");
    assert_eq!(resolver.current().map(|k| k.cert[0].to_vec()), Some(leaf(&issued.bundle)?), "served all the same");
    assert!(store.inner.load_cert().await?.is_none(), "nothing saved yet");

    store.fail_save.store(false, SeqCst);
    let tick = renewer.tick(SystemTime::now()).await;
    assert!(!matches!(tick.outcome, Outcome::Obtained(_) | Outcome::Failed(_)), "saved, not ordered again: {:?}", tick.outcome);
    assert_eq!(store.inner.load_cert().await?.as_ref().map(leaf).transpose()?, Some(leaf(&issued.bundle)?), "the same certificate saved");
    assert_eq!(orders(&registry)?, "wakegate_acme_orders_total{outcome=\"success\"} 1", "one order in all");
    Ok(())
}

/// A provider whose first `failures` cleanups fail (the DNS server briefly
/// unreachable once the CA has validated).
struct CleanupFails {
    inner: Arc<dyn DnsProvider>,
    failures: std::sync::atomic::AtomicUsize,
}

impl DnsProvider for CleanupFails {
    fn present<'a>(&'a self, fqdn: &'a str, value: &'a str) -> DnsFuture<'a> {
        self.inner.present(fqdn, value)
    }

    fn cleanup<'a>(&'a self, fqdn: &'a str, value: &'a str) -> DnsFuture<'a> {
        use std::sync::atomic::Ordering;
        if self.failures.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            let outage = DnsError::Refused { server: ([127, 0, 0, 1], 53).into(), name: fqdn.into(), code: "SERVFAIL".into() };
            return Box::pin(async { Err(outage) });
        }
        self.inner.cleanup(fqdn, value)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challenge_records_that_could_not_be_removed_are_removed_at_the_next_pass() -> Result<(), Error> {
    let rig = Rig::start(Options::default()).await?;
    let store: Arc<dyn CertStore> = Arc::new(DirStore::new(rig.dir.path().join("tls")));
    let rfc2136: Arc<dyn DnsProvider> = Arc::new(Rfc2136::new(rig.dns.to_string(), ZONE, &tsig_key(&rig)?)?);
    let dns = Arc::new(CleanupFails { inner: rfc2136, failures: 2.into() });
    let acme = Arc::new(Acme::new(config(&rig, None), store, dns));
    let mut renewer = Renewer::new(acme, Arc::new(CertResolver::new()), TlsMetrics::default());

    let tick = renewer.tick(SystemTime::now()).await;
    assert!(matches!(tick.outcome, Outcome::Obtained(_)), "{:?}\n{}", tick.outcome, rig.logs());
    assert_eq!(rig.txt(OWNER).await?.len(), 2, "both records are still there after the failed cleanups");

    let tick = renewer.tick(SystemTime::now()).await;
    assert!(matches!(tick.outcome, Outcome::Loaded | Outcome::Current), "{:?}", tick.outcome);
    assert_eq!(rig.txt(OWNER).await?, Vec::<String>::new(), "removed at the next pass");
    Ok(())
}
