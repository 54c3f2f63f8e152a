//! HTTPS through the real binary: a wildcard certificate for `*.aim.test` +
//! `aim.test` obtained from pebble (ACME) over DNS-01 with knotd, renewed on
//! demand (`POST /tls/renew` on the admin listener) and swapped while clients
//! keep connecting; failures counted, retried with backoff, the old
//! certificate kept; settings validated; the HTTP-side rules (308 redirect,
//! HSTS, 421). Needs `scripts/install-deps acme` (pebble, knot,
//! knot-dnsutils) and curl.

#[path = "acme_rig.rs"]
mod acme_rig;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use acme_rig::{EAB_HMAC, EAB_KID, KEY_NAME, OWNER, Options, Rig, provider};
use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use wakegate_tests::{Resp, Wakegate, alive, eventually, get, metric, read, send, testapp_solution};

/// Every `outcome` label of `wakegate_acme_orders_total` but success.
const FAILURES: [&str; 6] = ["dns", "rejected", "network", "store", "locked", "internal"];

// ---------------------------------------------------------------- config

/// The `[settings]` of a gateway for `aim.test` that obtains its certificate
/// from the rig, one `nlp` testapp behind it. Keys can be changed or removed
/// before [`Settings::render`].
struct Settings(BTreeMap<&'static str, String>);

impl Settings {
    fn acme(rig: &Rig, tls_dir: &Path) -> Settings {
        let mut m = BTreeMap::new();
        m.insert("base-domain", "aim.test".to_string());
        m.insert("tls-source", "acme".to_string());
        m.insert("tls-dir", tls_dir.display().to_string());
        m.insert("acme-directory", rig.directory.clone());
        m.insert("acme-ca-file", rig.ca_file.display().to_string());
        m.insert("acme-email", "ops@aim.test".to_string());
        m.insert("rfc2136-server", rig.dns.to_string());
        m.insert("rfc2136-tsig-key", KEY_NAME.to_string());
        m.insert("rfc2136-tsig-secret", rig.tsig_secret.clone());
        m.insert("acme-propagation-timeout", "10s".to_string());
        Settings(m)
    }

    fn set(mut self, key: &'static str, value: impl Into<String>) -> Settings {
        self.0.insert(key, value.into());
        self
    }

    fn remove(mut self, key: &'static str) -> Settings {
        self.0.remove(key);
        self
    }

    fn render(&self) -> String {
        let mut s = String::from("[settings]\n");
        for (k, v) in &self.0 {
            s.push_str(&format!("{k} = \"{v}\"\n"));
        }
        s.push_str(&testapp_solution("nlp", "", ""));
        s
    }
}

// ---------------------------------------------------------------- clients

/// A client config trusting only `root`, offering `alpn`. No session
/// resumption: each new connection is a full handshake, so it sees the
/// certificate served now (a resumed session reports the one it started with).
fn trusting(root: &CertificateDer<'static>, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    roots.add(root.clone())?;
    let mut c = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    c.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(c))
}

/// A client config accepting any certificate (for the self-signed default).
fn insecure(alpn: &[&[u8]]) -> Result<Arc<ClientConfig>> {
    let mut c = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider())))
        .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(c))
}

#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS connection to `addr` with SNI `sni`.
async fn tls_connect(addr: SocketAddr, sni: &str, config: &Arc<ClientConfig>) -> Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let tls = TlsConnector::from(config.clone()).connect(ServerName::try_from(sni.to_string())?, tcp).await;
    tls.with_context(|| format!("TLS handshake with {addr} for {sni}"))
}

/// The certificates the server presented, leaf first.
fn chain_of(tls: &TlsStream<TcpStream>) -> Vec<CertificateDer<'static>> {
    tls.get_ref().1.peer_certificates().map(|c| c.iter().map(|d| d.clone().into_owned()).collect()).unwrap_or_default()
}

/// An HTTP/1.1 client on a TLS connection (the caller keeps it alive).
async fn h1(tls: TlsStream<TcpStream>) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// `GET path` with `Host: host` on a fresh TLS connection (SNI `sni`);
/// HTTP/2 if the server picks it. Returns the response and the chain.
async fn https_get(
    addr: SocketAddr,
    sni: &str,
    host: &str,
    path: &str,
    config: &Arc<ClientConfig>,
) -> Result<(Resp, Vec<CertificateDer<'static>>)> {
    let tls = tls_connect(addr, sni, config).await?;
    let chain = chain_of(&tls);
    let resp = if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        sender.ready().await.context("h2 connection")?;
        let req = Request::get(format!("https://{host}{path}")).body(Full::new(Bytes::new()))?;
        read(sender.send_request(req).await.context("h2 request")?).await?
    } else {
        let mut sender = h1(tls).await?;
        sender.ready().await.context("HTTP/1.1 connection")?;
        let req = Request::get(path).header("host", host).body(Full::new(Bytes::new()))?;
        read(sender.send_request(req).await.context("HTTP/1.1 request")?).await?
    };
    Ok((resp, chain))
}

/// The leaf's serial (hex) and DNS names.
fn leaf_info(der: &CertificateDer<'_>) -> Result<(String, Vec<String>)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| anyhow::anyhow!("leaf: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.to_string());
            }
        }
    }
    names.sort();
    Ok((cert.raw_serial_as_string(), names))
}

// ---------------------------------------------------------------- gateway

/// `POST /tls/renew` on the admin listener.
async fn request_renewal(wg: &Wakegate) -> Result<Resp> {
    let req = Request::post("/tls/renew").header("host", "localhost").body(Full::new(Bytes::new()))?;
    read(send(wg.admin, req).await?).await
}

/// `wakegate_acme_orders_total{outcome}` now.
async fn orders(wg: &Wakegate, outcome: &str) -> f64 {
    metric(&wg.metrics().await, &format!("wakegate_acme_orders_total{{outcome=\"{outcome}\"}}")).unwrap_or(0.0)
}

/// Waits until `outcome` has been counted `n` times; fails at once if an
/// outcome outside `allowed` (besides `outcome`) shows up.
async fn wait_orders(wg: &Wakegate, rig: &Rig, outcome: &str, n: f64, allowed: &[&str], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = wg.metrics().await;
        let count = |o: &str| metric(&text, &format!("wakegate_acme_orders_total{{outcome=\"{o}\"}}")).unwrap_or(0.0);
        if count(outcome) >= n {
            return Ok(());
        }
        let unexpected: Vec<_> =
            FAILURES.iter().chain(["success"].iter()).filter(|o| **o != outcome && !allowed.contains(o) && count(o) > 0.0).collect();
        if !unexpected.is_empty() || Instant::now() > deadline {
            bail!(
                "waiting for {n} orders with outcome {outcome}; metrics:\n{}\nwakegate log:\n{}\nrig:\n{}",
                orders_lines(&text),
                wg.log(),
                rig.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn orders_lines(metrics: &str) -> String {
    metrics.lines().filter(|l| l.starts_with("wakegate_acme")).collect::<Vec<_>>().join("\n")
}

/// Stops `wg` and checks that the testapps it started are gone.
async fn stop(mut wg: Wakegate) {
    let pids = wg.starts();
    wg.terminate(Duration::from_secs(15));
    for pid in pids {
        assert!(eventually(Duration::from_secs(5), || async move { !alive(pid) }).await, "testapp {pid} outlived wakegate");
    }
}

/// Drops the rig and checks that pebble and knotd are gone.
fn stop_rig(rig: Rig) {
    let pids = rig.pids();
    drop(rig);
    for pid in pids {
        assert!(!alive(pid), "rig process {pid} survived");
    }
}

/// The `retry_in` of the last "certificate order failed" log line, in seconds.
fn last_retry_in(log: &str) -> Option<f64> {
    let line = log.lines().rev().find(|l| l.contains("certificate order failed"))?;
    let rest = &line[line.find("retry_in=")? + "retry_in=".len()..];
    let value = &rest[..rest.find(' ').unwrap_or(rest.len())];
    match value.strip_suffix("ms") {
        Some(ms) => ms.parse::<f64>().ok().map(|v| v / 1000.0),
        None => value.strip_suffix('s')?.parse().ok(),
    }
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obtains_a_wildcard_certificate_and_serves_both_names() -> Result<()> {
    let rig = Rig::start(Options::default()).await?;
    let tls_dir = rig.dir.path().join("tls");

    // Watch knot from before the gateway starts: the challenge values must
    // appear while the CA validates.
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (dns, watching) = (rig.dns, watching.clone());
        tokio::spawn(async move {
            let mut seen = BTreeSet::new();
            while watching.load(Ordering::SeqCst) {
                if let Ok(values) = acme_rig::txt(dns, OWNER).await {
                    seen.extend(values);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen
        })
    };
    let wg = Wakegate::start(&Settings::acme(&rig, &tls_dir).render());
    let tls = wg.tls.context("no HTTPS listener")?;
    wait_orders(&wg, &rig, "success", 1.0, &[], Duration::from_secs(30)).await?;
    watching.store(false, Ordering::SeqCst);
    let seen = watcher.await?;
    assert_eq!(seen.len(), 2, "both challenge values (wildcard and base) were served during validation: {seen:?}");
    assert_eq!(rig.txt(OWNER).await?, Vec::<String>::new(), "the challenge records are gone afterwards");
    let pebble_log = std::fs::read_to_string(rig.dir.path().join("pebble.log"))?;
    assert!(pebble_log.contains("Starting 3 validations"), "pebble really validated over DNS:\n{pebble_log}");

    // Both names, the chain verified against pebble's root by rustls.
    let root = rig.root().await?;
    let client = trusting(&root, &[b"h2", b"http/1.1"])?;
    let (r, chain) = https_get(tls, "nlp.aim.test", "nlp.aim.test", "/hello", &client).await?;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "hello from nlp\n"), "{r:?}");
    assert_eq!(chain.len(), 2, "leaf + intermediate");
    let (_, names) = leaf_info(&chain[0])?;
    assert_eq!(names, ["*.aim.test", "aim.test"]);
    let (r, _) = https_get(tls, "aim.test", "aim.test", "/", &client).await?;
    assert_eq!(r.status, 200, "the catalog on the base name: {r:?}");
    let other = tls_connect(tls, "nlp.other.test", &client).await;
    assert!(other.is_err(), "a name outside the certificate is refused by the client");
    assert!(wg.log().contains("certificate obtained"), "{}", wg.log());

    // The same with curl (OpenSSL's verifier), trusting only pebble's root.
    let root_pem = rig.dir.path().join("root.pem");
    std::fs::write(&root_pem, rig.root_pem().await?)?;
    let port = tls.port();
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--noproxy", "*", "--max-time", "20", "--cacert"])
        .arg(&root_pem)
        .args(["--resolve", &format!("nlp.aim.test:{port}:127.0.0.1"), "-w", "\n%{http_code}"])
        .arg(format!("https://nlp.aim.test:{port}/hello"))
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "curl: {stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout, "hello from nlp\n\n200");

    stop(wg).await;
    stop_rig(rig);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_orders_are_counted_retried_with_backoff_and_the_stored_certificate_served() -> Result<()> {
    // pebble requires External Account Binding: the good configuration has
    // it; a new account without it is refused.
    let rig = Rig::start(Options { require_eab: true }).await?;
    let good_dir = rig.dir.path().join("tls");
    let good = || Settings::acme(&rig, &good_dir).set("acme-eab-kid", EAB_KID).set("acme-eab-hmac", EAB_HMAC);
    let wg = Wakegate::start(&good().render());
    wait_orders(&wg, &rig, "success", 1.0, &[], Duration::from_secs(30)).await?;
    stop(wg).await;
    let root = rig.root().await?;
    let client = trusting(&root, &[b"http/1.1"])?;

    // Three broken setups, each starting from a copy of the store.
    let copy = |name: &str, files: &[&str]| -> Result<std::path::PathBuf> {
        let dir = rig.dir.path().join(name);
        std::fs::create_dir_all(&dir)?;
        for f in files {
            std::fs::copy(good_dir.join(f), dir.join(f))?;
        }
        Ok(dir)
    };
    let all = ["tls.crt", "tls.key", "account.json"];
    let stored_leaf = CertificateDer::from_pem_file(good_dir.join("tls.crt"))?;
    let wrong_secret = acme_rig::tsig_secret()?;
    ensure!(wrong_secret != rig.tsig_secret);
    let down = acme_rig::free_udp_tcp_port()?;
    let cases = [
        (
            "wrong-tsig-secret",
            "dns",
            good().set("tls-dir", copy("bad-secret", &all)?.display().to_string()).set("rfc2136-tsig-secret", wrong_secret),
        ),
        (
            "dns-server-down",
            "dns",
            good().set("tls-dir", copy("dns-down", &all)?.display().to_string()).set("rfc2136-server", down.to_string()),
        ),
        (
            "ca-refuses-account-without-eab",
            "rejected",
            good()
                .set("tls-dir", copy("no-eab", &["tls.crt", "tls.key"])?.display().to_string())
                .remove("acme-eab-kid")
                .remove("acme-eab-hmac"),
        ),
    ];
    // All three at once (the DNS timeout is the slowest part).
    let runs = cases.into_iter().map(|(name, outcome, settings)| {
        let (rig, client, stored_leaf) = (&rig, client.clone(), stored_leaf.clone());
        async move { failing_case(rig, name, outcome, settings, &client, &stored_leaf).await.with_context(|| name.to_string()) }
    });
    for r in futures_util::future::join_all(runs).await {
        r?;
    }
    assert_eq!(rig.txt(OWNER).await?, Vec::<String>::new(), "no challenge record left behind");
    stop_rig(rig);
    Ok(())
}

/// Connects until the gateway serves a certificate (its renewer's first
/// pass loads the stored one just after start).
async fn first_connection(wg: &Wakegate, client: &Arc<ClientConfig>) -> Result<TlsStream<TcpStream>> {
    let tls = wg.tls.context("no HTTPS listener")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tls_connect(tls, "nlp.aim.test", client).await {
            Ok(t) => return Ok(t),
            Err(e) if Instant::now() > deadline => return Err(e.context(wg.log())),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn failing_case(
    rig: &Rig,
    name: &str,
    outcome: &str,
    settings: Settings,
    client: &Arc<ClientConfig>,
    stored_leaf: &CertificateDer<'static>,
) -> Result<()> {
    let wg = Wakegate::start(&settings.render());
    let tls = wg.tls.context("no HTTPS listener")?;
    // The stored certificate is served at once, not due: nothing ordered.
    let served = chain_of(&first_connection(&wg, client).await?).remove(0);
    ensure!(served == *stored_leaf, "{name}: the stored certificate is served at start");

    let r = request_renewal(&wg).await?;
    ensure!(r.status == 202, "{name}: POST /tls/renew: {r:?}");
    wait_orders(&wg, rig, outcome, 1.0, &[], Duration::from_secs(40)).await?;
    let log = wg.log();
    let line =
        log.lines().find(|l| l.contains("certificate order failed")).with_context(|| format!("{name}: the failure is logged:\n{log}"))?;
    eprintln!("{name}: {line}");
    let retry = last_retry_in(&log).with_context(|| format!("{name}: no retry_in in the log:\n{log}"))?;
    ensure!(retry >= 45.0, "{name}: backoff of at least 45 s, got {retry} s");

    // No tight loop: still one failure a few seconds later.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let text = wg.metrics().await;
    let failed: f64 =
        FAILURES.iter().map(|o| metric(&text, &format!("wakegate_acme_orders_total{{outcome=\"{o}\"}}")).unwrap_or(0.0)).sum();
    ensure!(failed == 1.0, "{name}: one failed order, retried later, not in a loop:\n{}", orders_lines(&text));
    ensure!(orders(&wg, "success").await == 0.0, "{name}: nothing succeeded");

    // The old certificate is still served, and the solution behind it answers.
    let (r, chain) = https_get(tls, "nlp.aim.test", "nlp.aim.test", "/hello", client).await?;
    ensure!(r.status == 200, "{name}: {r:?}");
    ensure!(chain[0] == *stored_leaf, "{name}: the stored certificate is still served after the failure");
    stop(wg).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_renewal_under_load_swaps_the_certificate_without_failing_a_request() -> Result<()> {
    let rig = Rig::start(Options::default()).await?;
    let wg = Wakegate::start(&Settings::acme(&rig, &rig.dir.path().join("tls")).render());
    let tls = wg.tls.context("no HTTPS listener")?;
    wait_orders(&wg, &rig, "success", 1.0, &[], Duration::from_secs(30)).await?;
    let root = rig.root().await?;
    let h1_client = trusting(&root, &[b"http/1.1"])?;
    let h2_client = trusting(&root, &[b"h2"])?;

    // A kept-alive HTTP/1.1 connection, opened before the renewal.
    let kept = tls_connect(tls, "nlp.aim.test", &h1_client).await?;
    let old_leaf = chain_of(&kept).remove(0);
    let mut kept = h1(kept).await?;
    let hello = || Request::get("/hello").header("host", "nlp.aim.test").body(Full::new(Bytes::new()));
    let r = read(kept.send_request(hello()?).await?).await?;
    assert_eq!(r.status, 200, "{r:?}");

    // Load: two clients opening a new connection per request (HTTP/1.1 and
    // h2), one reusing the kept-alive connection.
    let running = Arc::new(AtomicBool::new(true));
    let mut workers = Vec::new();
    for client in [h1_client.clone(), h2_client.clone()] {
        let running = running.clone();
        workers.push(tokio::spawn(async move {
            let mut leaves = Vec::new();
            while running.load(Ordering::SeqCst) {
                let n = leaves.len();
                let (r, chain) = https_get(tls, "nlp.aim.test", "nlp.aim.test", "/hello", &client)
                    .await
                    .with_context(|| format!("request {n} on a new connection ({:?})", client.alpn_protocols))?;
                ensure!(r.status == 200, "a request on a new connection failed: {r:?}");
                leaves.push(chain[0].clone());
            }
            Ok::<_, anyhow::Error>(leaves)
        }));
    }
    let kept_worker = {
        let running = running.clone();
        tokio::spawn(async move {
            let mut n = 0u32;
            while running.load(Ordering::SeqCst) {
                kept.ready().await.with_context(|| format!("kept-alive connection, before request {n}"))?;
                let r = read(kept.send_request(hello()?).await.with_context(|| format!("kept-alive request {n}"))?).await?;
                ensure!(r.status == 200, "a request on the kept-alive connection failed: {r:?}");
                n += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok::<_, anyhow::Error>((n, kept))
        })
    };

    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = request_renewal(&wg).await?;
    assert_eq!(r.status, 202, "{r:?}");
    wait_orders(&wg, &rig, "success", 2.0, &[], Duration::from_secs(30)).await?;
    // Keep the load on a little after the swap.
    tokio::time::sleep(Duration::from_millis(700)).await;
    running.store(false, Ordering::SeqCst);

    let mut per_worker = Vec::new();
    for w in workers {
        per_worker.push(w.await??);
    }
    let (kept_requests, mut kept) = kept_worker.await??;
    assert!(kept_requests >= 10, "the kept-alive connection was used throughout: {kept_requests}");
    kept.ready().await.context("the kept-alive connection after the swap")?;
    let r = read(kept.send_request(hello()?).await.context("the kept-alive connection after the swap")?).await?;
    assert_eq!(r.status, 200, "the kept-alive connection still works after the swap");

    let (r, chain) = https_get(tls, "nlp.aim.test", "nlp.aim.test", "/hello", &h1_client).await?;
    assert_eq!(r.status, 200, "{r:?}");
    let new_leaf = chain[0].clone();
    let (old_serial, _) = leaf_info(&old_leaf)?;
    let (new_serial, names) = leaf_info(&new_leaf)?;
    assert_ne!(old_serial, new_serial, "new connections present the renewed certificate");
    assert_eq!(names, ["*.aim.test", "aim.test"]);
    for (i, leaves) in per_worker.iter().enumerate() {
        let old_seen = leaves.iter().filter(|l| **l == old_leaf).count();
        let new_seen = leaves.iter().filter(|l| **l == new_leaf).count();
        assert_eq!(old_seen + new_seen, leaves.len(), "worker {i}: only the two certificates were served");
        assert!(old_seen > 0 && new_seen > 0, "worker {i}: the load spanned the swap: {old_seen} old, {new_seen} new");
        // One swap: once a new connection got the new certificate, none gets the old one.
        assert!(leaves[old_seen..].iter().all(|l| *l == new_leaf), "worker {i}: the old certificate came back after the swap");
        eprintln!("worker {i}: {} new connections ({old_seen} with the old certificate, then {new_seen} with the new)", leaves.len());
    }
    eprintln!("{kept_requests} requests on the kept-alive connection");
    assert!(wg.log().contains("why=Requested"), "the order says why: {}", wg.log());

    stop(wg).await;
    stop_rig(rig);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exec_provider_obtains_a_certificate_through_knsupdate() -> Result<()> {
    let rig = Rig::start(Options::default()).await?;
    let hook = rig.knsupdate_script()?;
    let settings = Settings::acme(&rig, &rig.dir.path().join("tls"))
        .remove("rfc2136-server")
        .remove("rfc2136-tsig-key")
        .remove("rfc2136-tsig-secret")
        .set("acme-dns-provider", "exec")
        .set("acme-exec-command", hook.display().to_string())
        .set("acme-propagation-nameservers", rig.dns.to_string());
    let wg = Wakegate::start(&settings.render());
    let tls = wg.tls.context("no HTTPS listener")?;
    wait_orders(&wg, &rig, "success", 1.0, &[], Duration::from_secs(30)).await?;

    let client = trusting(&rig.root().await?, &[b"h2", b"http/1.1"])?;
    for (sni, path, body) in [("nlp.aim.test", "/hello", Some("hello from nlp\n")), ("aim.test", "/", None)] {
        let (r, _) = https_get(tls, sni, sni, path, &client).await?;
        assert_eq!(r.status, 200, "{sni}: {r:?}");
        if let Some(b) = body {
            assert_eq!(r.body, b);
        }
    }
    let calls = std::fs::read_to_string(rig.dir.path().join("dns-hook.log"))?;
    assert_eq!(calls.lines().filter(|l| l.starts_with(&format!("present {OWNER} "))).count(), 2, "{calls}");
    assert_eq!(calls.lines().filter(|l| l.starts_with(&format!("cleanup {OWNER} "))).count(), 2, "{calls}");
    assert_eq!(rig.txt(OWNER).await?, Vec::<String>::new(), "the hook removed its records");
    stop(wg).await;
    stop_rig(rig);
    Ok(())
}

/// Stopped in the middle of an order (here while it waits for the records to
/// propagate), wakegate removes the challenge records it published and
/// releases the ordering lock before it exits: none is left in the zone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_mid_order_removes_its_challenge_records() -> Result<()> {
    let rig = Rig::start(Options::default()).await?;
    let tls_dir = rig.dir.path().join("tls");
    let mut wg = Wakegate::start(&Settings::acme(&rig, &tls_dir).set("acme-propagation-delay", "5m").render());
    let published = eventually(Duration::from_secs(30), || async { rig.txt(OWNER).await.is_ok_and(|v| v.len() == 2) }).await;
    assert!(published, "both challenge records published; log:\n{}", wg.log());
    assert!(tls_dir.join("acme.lock").exists(), "the ordering lock is held during the order");

    let status = wg.terminate(Duration::from_secs(20));
    assert!(status.success(), "exit {status:?}; log:\n{}", wg.log());
    assert_eq!(rig.txt(OWNER).await?, Vec::<String>::new(), "the records are removed at shutdown; log:\n{}", wg.log());
    assert!(!tls_dir.join("acme.lock").exists(), "the ordering lock is released");
    assert!(wg.log().contains("certificate order abandoned"), "{}", wg.log());
    stop_rig(rig);
    Ok(())
}

#[test]
fn check_names_a_missing_tsig_secret_and_exits_64() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("wakegate.toml");
    let write = |secret: &str| {
        std::fs::write(
            &path,
            format!(
                concat!(
                    "[settings]\nbase-domain = \"aim.test\"\ntls-source = \"acme\"\ntls-dir = \"{}\"\n",
                    "acme-directory = \"https://127.0.0.1:14000/dir\"\nrfc2136-server = \"127.0.0.1:53\"\n",
                    "rfc2136-tsig-key = \"acme-key\"\n{}"
                ),
                dir.path().join("tls").display(),
                secret
            ),
        )
    };
    let check = || std::process::Command::new(wakegate_tests::bin()).args(["check", "--config"]).arg(&path).output();

    write("")?;
    let out = check()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("settings.rfc2136-tsig-secret"), "{stderr}");
    assert_eq!(stderr.lines().filter(|l| l.contains("settings.")).count(), 1, "the only problem: {stderr}");

    write("rfc2136-tsig-secret = \"c2VjcmV0\"\n")?;
    let out = check()?;
    assert!(out.status.success(), "with the secret the config is valid: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_to_https_sends_hsts_and_refuses_misdirected_requests() -> Result<()> {
    // The self-signed default: no rig needed.
    let config =
        format!("[settings]\nbase-domain = \"aim.test\"\nssl-redirect = \"true\"\nhsts = \"on\"\n{}", testapp_solution("nlp", "", ""));
    let wg = Wakegate::start(&config);
    let tls = wg.tls.context("no HTTPS listener")?;
    let port = tls.port();

    let r = get(wg.public, "nlp.aim.test", "/path?q=1", &[]).await?;
    assert_eq!(r.status, 308, "{r:?}");
    assert_eq!(r.header("location"), format!("https://nlp.aim.test:{port}/path?q=1"));
    assert_eq!(r.header("strict-transport-security"), "", "never HSTS over plain HTTP");

    let h1_client = insecure(&[b"http/1.1"])?;
    let (r, _) = https_get(tls, "nlp.aim.test", "nlp.aim.test", "/hello", &h1_client).await?;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("strict-transport-security"), "max-age=31536000; includeSubDomains");
    let (r, _) = https_get(tls, "nlp.aim.test", &format!("NLP.aim.test:{port}"), "/hello", &h1_client).await?;
    assert_eq!(r.status, 200, "the port and case do not matter: {r:?}");
    // The solution learns that its client came over TLS, over either protocol.
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let (r, _) = https_get(tls, "nlp.aim.test", "nlp.aim.test", "/headers", &insecure(&[alpn])?).await?;
        let seen: serde_json::Value = serde_json::from_str(&r.body)?;
        assert_eq!(seen["x-forwarded-proto"], "https", "{seen}");
        assert_eq!(r.header("strict-transport-security"), "max-age=31536000; includeSubDomains", "{alpn:?}");
        assert_eq!(r.header("x-request-id").len(), 16, "{alpn:?}: {r:?}");
    }

    // HTTP/1.1: the Host must be the name the connection was opened for.
    let (r, _) = https_get(tls, "nlp.aim.test", "other.aim.test", "/hello", &h1_client).await?;
    assert_eq!(r.status, 421, "{r:?}");
    let (r, _) = https_get(tls, "nlp.aim.test", "aim.test", "/", &h1_client).await?;
    assert_eq!(r.status, 421, "{r:?}");
    // HTTP/2 may reuse a connection for any name the certificate covers.
    let (r, _) = https_get(tls, "nlp.aim.test", "aim.test", "/", &insecure(&[b"h2"])?).await?;
    assert_eq!(r.status, 200, "{r:?}");

    let r = request_renewal(&wg).await?;
    assert_eq!(r.status, 404, "no ACME renewer with a self-signed certificate: {r:?}");
    assert!(r.body.contains("no ACME renewer"), "{}", r.body);
    let r = get(wg.admin, "localhost", "/tls/renew", &[]).await?;
    assert_eq!((r.status.as_u16(), r.header("allow")), (405, "POST"), "{r:?}");
    stop(wg).await;
    Ok(())
}
