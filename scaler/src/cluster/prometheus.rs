//! `activity-source = prometheus`: the reaper's reading through Prometheus's
//! query API instead of every gateway replica's `/metrics` — the same gauges,
//! merged by PromQL the way the direct reading merges them (latest request
//! over all replicas, busy work summed), as a KEDA Prometheus scaler would
//! query them.
//!
//! Fail-safe as the direct reading is. The round scales nothing down when
//! Prometheus cannot be asked or answers an error; when it has figures from
//! fewer gateways than are ready (a new replica not scraped yet); when a
//! gateway that reported within the last five minutes no longer does (down,
//! unreachable for Prometheus, replaced by a rollout: its recent requests
//! would be missing); and when it has no figures at all. One reading asks one
//! Prometheus server (the name is resolved once): replicas behind a Service
//! may hold different samples.
//!
//! An `https` URL is checked against `prometheus-ca-file` (else the system's
//! CAs); a bearer token or basic auth password is sent with every query. The
//! files are read at every reading, as Prometheus reads its own
//! `bearer_token_file` and `password_file`: a rotated service account token,
//! a renewed CA or a changed password is used without a restart.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use http::HeaderValue;
use proto::metrics as names;
use proto::settings::{HttpUrl, Settings};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tokio_rustls::TlsConnector;

use super::scrape::{self, Activity, Get, ScrapeError};

/// How far back a replica that stopped reporting is still waited for.
const GONE_WINDOW: &str = "5m";

/// One sample of an instant vector.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    labels: serde_json::Map<String, Value>,
    /// The query's evaluation time (Prometheus's clock), Unix seconds.
    at: f64,
    value: f64,
}

/// The queries of one reading, `selector` (label matchers, may be empty)
/// scoping every series to this installation's gateways.
struct Queries {
    /// Time of the oldest scrape the reading rests on.
    as_of: String,
    /// Latest request per solution, over all gateways.
    last: String,
    /// In flight + held + open streams per solution, summed.
    busy: String,
    /// How many gateways Prometheus has figures from.
    reporting: String,
    /// Gateways that reported within [`GONE_WINDOW`] and no longer do.
    gone: String,
}

impl Queries {
    fn new(selector: &str) -> Queries {
        let p = names::PREFIX;
        let scoped = |matchers: String| {
            let all: Vec<&str> = [matchers.as_str(), selector].into_iter().filter(|m| !m.is_empty()).collect();
            format!("{{{}}}", all.join(", "))
        };
        let last = scoped(format!("__name__=\"{p}_{}\"", names::LAST_REQUEST_TIMESTAMP));
        let busy = scoped(format!("__name__=~\"{p}_({})\"", [names::IN_FLIGHT, names::HELD, names::OPEN_STREAMS].join("|")));
        Queries {
            as_of: format!("min(timestamp({last}))"),
            last: format!("max by (solution) ({last})"),
            busy: format!("sum by (solution) ({busy})"),
            reporting: format!("count(count by (job, instance) ({last}))"),
            gone: format!("count by (job, instance) (max_over_time({last}[{GONE_WINDOW}]) unless on (job, instance) {last})"),
        }
    }
}

/// How every query of one reading reaches Prometheus.
struct Access {
    /// For an `https` URL: the connector and the name to check.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// `Bearer …` or `Basic …`, marked sensitive.
    authorization: Option<HeaderValue>,
}

impl Access {
    /// Reads the files `settings` names for `url`; an error names the key and the file.
    fn new(url: &HttpUrl, settings: &Settings) -> Result<Access, String> {
        let credentials = match (&settings.prometheus_bearer_token_file, &settings.prometheus_username, &settings.prometheus_password_file)
        {
            (Some(file), _, _) => {
                Some(("prometheus-bearer-token-file", format!("Bearer {}", secret("prometheus-bearer-token-file", file)?)))
            }
            (None, Some(user), Some(file)) => {
                let password = secret("prometheus-password-file", file)?;
                let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                Some(("prometheus-password-file", format!("Basic {pair}")))
            }
            _ => None,
        };
        let authorization = credentials
            .map(|(key, value)| {
                let mut value = HeaderValue::try_from(value).map_err(|_| format!("{key}: holds characters an HTTP field cannot carry"))?;
                value.set_sensitive(true);
                Ok::<_, String>(value)
            })
            .transpose()?;
        let tls = if url.tls {
            let name =
                ServerName::try_from(url.host.clone()).map_err(|e| format!("{}: not a name to check a certificate for: {e}", url.host))?;
            Some((connector(settings)?, name))
        } else {
            None
        };
        Ok(Access { tls, authorization })
    }
}

/// A TLS client trusting the CAs in `prometheus-ca-file`, or the system's,
/// showing the client certificate of `prometheus-cert-file` if there is one.
fn connector(settings: &Settings) -> Result<TlsConnector, String> {
    let mut roots = RootCertStore::empty();
    match settings.prometheus_ca_file.as_deref() {
        Some(file) => {
            for cert in certificates("prometheus-ca-file", file)? {
                roots.add(cert).map_err(|e| format!("prometheus-ca-file {}: not a CA certificate rustls accepts: {e}", file.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(format!("no CA certificates found on this system ({:?}); set prometheus-ca-file", found.errors));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots);
    let mut config = match (&settings.prometheus_cert_file, &settings.prometheus_key_file) {
        (Some(cert_file), Some(key_file)) => {
            let (chain, key) = client_identity(cert_file, key_file)?;
            builder.with_client_auth_cert(chain, key).map_err(|e| format!("prometheus-key-file {}: {e}", key_file.display()))?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The client certificate chain and its key, for mutual TLS.
fn client_identity(cert_file: &Path, key_file: &Path) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let chain = certificates("prometheus-cert-file", cert_file)?;
    let fail = |reason: String| format!("prometheus-key-file {}: {reason}", key_file.display());
    let pem = read_small(key_file).map_err(fail)?;
    // The key's bytes never reach an error message.
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|_| fail("no PEM private key in it".into()))?;
    Ok((chain, key))
}

/// The PEM certificates in `file` (at least one), errors naming `key` and the file.
fn certificates(key: &str, file: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let fail = |reason: String| format!("{key} {}: {reason}", file.display());
    let pem = read_small(file).map_err(fail)?;
    let certs = CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>().map_err(|e| fail(format!("unreadable PEM: {e}")))?;
    if certs.is_empty() {
        return Err(fail("no certificate in it".into()));
    }
    Ok(certs)
}

/// A token or password from its file, without the whitespace around it.
fn secret(key: &str, file: &Path) -> Result<String, String> {
    let fail = |reason: String| format!("{key} {}: {reason}", file.display());
    let bytes = read_small(file).map_err(fail)?;
    let text = String::from_utf8(bytes).map_err(|_| fail("not UTF-8".into()))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(fail("empty".into()));
    }
    Ok(text.to_string())
}

/// A Secret or ConfigMap key mounted as a file ([`crate::file::read_small`]).
fn read_small(file: &Path) -> Result<Vec<u8>, String> {
    crate::file::read_small(file).map_err(|e| e.to_string())
}

/// Reads every solution's activity through Prometheus at `url`, reached as
/// `settings` say, expecting figures from `gateways` ready gateway replicas.
pub async fn activity(url: &HttpUrl, settings: &Settings, gateways: usize) -> Result<Activity, ScrapeError> {
    let fail = |reason: String| ScrapeError::Prometheus { url: url.to_string(), reason };
    // File reads and the system's CA bundle: off the runtime's threads.
    let (u, s) = (url.clone(), settings.clone());
    let access = tokio::task::spawn_blocking(move || Access::new(&u, &s)).await.map_err(|e| fail(e.to_string()))?.map_err(fail)?;
    let server = resolve(url).await.map_err(fail)?;
    let q = Queries::new(&settings.prometheus_selector);
    // Asked first: the samples read next are at least as new.
    let Some(oldest) = query(server, url, &access, &q.as_of).await.map_err(fail)?.into_iter().next() else {
        return Err(fail("no wakegate figures at all: is it scraping the gateways' admin port?".into()));
    };
    let mut activity = Activity { as_of: Some(oldest.value), evaluated: Some(oldest.at), ..Activity::default() };
    for s in query(server, url, &access, &q.last).await.map_err(fail)? {
        if let Some(solution) = s.labels.get("solution").and_then(Value::as_str) {
            activity.last_request.insert(solution.to_string(), s.value);
        }
    }
    for s in query(server, url, &access, &q.busy).await.map_err(fail)? {
        if let Some(solution) = s.labels.get("solution").and_then(Value::as_str) {
            activity.busy.insert(solution.to_string(), s.value);
        }
    }
    // Asked last: a gateway that went away while the figures were read is seen.
    let reporting = query(server, url, &access, &q.reporting).await.map_err(fail)?.first().map_or(0, |s| s.value as usize);
    if reporting < gateways {
        return Err(fail(format!("it has figures from {reporting} gateway(s), {gateways} are ready: not all are scraped yet")));
    }
    if let Some(s) = query(server, url, &access, &q.gone).await.map_err(fail)?.first() {
        let who = |k: &str| s.labels.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
        return Err(fail(format!(
            "gateway {} (job {}) stopped reporting within the last {GONE_WINDOW}: its latest requests are unknown",
            who("instance"),
            who("job")
        )));
    }
    Ok(activity)
}

/// One address of `url`'s host, so that every query of a reading goes to the same server.
async fn resolve(url: &HttpUrl) -> Result<SocketAddr, String> {
    let lookup = tokio::net::lookup_host((url.host.as_str(), url.port));
    let mut addrs = tokio::time::timeout(scrape::SCRAPE_TIMEOUT, lookup)
        .await
        .map_err(|_| "name lookup timed out".to_string())?
        .map_err(|e| format!("name lookup: {e}"))?;
    addrs.next().ok_or_else(|| format!("{} has no address", url.host))
}

/// One instant query.
async fn query(server: SocketAddr, url: &HttpUrl, access: &Access, promql: &str) -> Result<Vec<Sample>, String> {
    let encoded: String = form_urlencoded::byte_serialize(promql.as_bytes()).collect();
    let path = format!("{}/api/v1/query?query={encoded}", url.path);
    let tls = access.tls.as_ref().map(|(connector, name)| (connector, name));
    let get = Get { host: &url.authority, path: &path, tls, authorization: access.authorization.as_ref() };
    let (status, body) = scrape::fetch(server, get).await?;
    samples(status, &body).map_err(|e| format!("{e} (query {promql})"))
}

/// What a refusal's plain-text body adds to its status (kube-rbac-proxy:
/// "Forbidden (user=…, verb=get, …)"): its first line, short, if it says
/// more than the status does; nothing for HTML.
fn said(status: http::StatusCode, body: &str) -> String {
    let line: String = body.lines().next().unwrap_or("").trim().chars().filter(|c| !c.is_control()).take(200).collect();
    let reason = status.canonical_reason().unwrap_or("");
    if line.is_empty() || line.starts_with('<') || line.eq_ignore_ascii_case(reason) { String::new() } else { format!(": {line}") }
}

/// The samples of an instant-vector answer, or why there are none.
fn samples(status: http::StatusCode, body: &str) -> Result<Vec<Sample>, String> {
    let json: Value = match serde_json::from_str(body) {
        Ok(v) => v,
        Err(_) if !status.is_success() => return Err(format!("status {status}{}", said(status, body))),
        Err(e) => return Err(format!("not a Prometheus answer: {e}")),
    };
    if json["status"] != "success" {
        let error = json["error"].as_str().unwrap_or("no reason given");
        return Err(format!("status {status}: {error}"));
    }
    if json["data"]["resultType"] != "vector" {
        return Err(format!("expected a vector, got {}", json["data"]["resultType"]));
    }
    let mut out = Vec::new();
    for sample in json["data"]["result"].as_array().into_iter().flatten() {
        let labels = sample["metric"].as_object().cloned().unwrap_or_default();
        // `value` is [evaluation time, "number"]; NaN and ±Inf are spelled out.
        let at = sample["value"][0].as_f64();
        let value = sample["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()).filter(|v| v.is_finite());
        match (at, value) {
            (Some(at), Some(value)) => out.push(Sample { labels, at, value }),
            _ => return Err(format!("unreadable sample {sample}")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    #[test]
    fn reads_a_vector_and_refuses_the_rest() {
        let ok = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"solution":"nlp"},"value":[1764410000.123,"1764409990.5"]},
            {"metric":{"solution":"vision"},"value":[1764410000.123,"0"]}]}}"#;
        let s = samples(StatusCode::OK, ok).expect("a vector answer");
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].labels["solution"].as_str(), s[0].at, s[0].value), (Some("nlp"), 1764410000.123, 1764409990.5));
        assert!(
            samples(StatusCode::OK, r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#)
                .expect("an empty vector answer")
                .is_empty()
        );

        let bad = r#"{"status":"error","errorType":"bad_data","error":"parse error at char 4"}"#;
        assert_eq!(samples(StatusCode::BAD_REQUEST, bad).unwrap_err(), "status 400 Bad Request: parse error at char 4");
        assert_eq!(samples(StatusCode::BAD_GATEWAY, "<html>").unwrap_err(), "status 502 Bad Gateway");
        assert_eq!(samples(StatusCode::UNAUTHORIZED, "Unauthorized\n").unwrap_err(), "status 401 Unauthorized");
        let rbac = "Forbidden (user=system:serviceaccount:wakegate:wakegate-scaler, verb=get, resource=namespaces, subresource=)\n";
        assert_eq!(samples(StatusCode::FORBIDDEN, rbac).unwrap_err(), format!("status 403 Forbidden: {}", rbac.trim_end()),);
        assert!(samples(StatusCode::OK, "<html>").unwrap_err().starts_with("not a Prometheus answer"));
        let matrix = r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        assert!(samples(StatusCode::OK, matrix).unwrap_err().contains("expected a vector"));
        let nan = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"NaN"]}]}}"#;
        assert!(samples(StatusCode::OK, nan).unwrap_err().starts_with("unreadable sample"));
    }

    /// Answers one query on a loopback port with an empty vector; the
    /// request head it got comes back through the handle (hyper writes field
    /// names in lower case).
    async fn one_answer() -> (SocketAddr, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
        let addr = listener.local_addr().expect("its address");
        let served = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.expect("the query's connection");
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8];
                conn.read_exact(&mut byte).await.expect("the request head");
                head.push(byte[0]);
            }
            let body = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
            let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
            conn.write_all(answer.as_bytes()).await.expect("the answer");
            String::from_utf8_lossy(&head).into_owned()
        });
        (addr, served)
    }

    #[tokio::test]
    async fn queries_carry_the_credentials_read_from_their_files() {
        let dir = tempfile::tempdir().expect("a scratch directory");
        let token = dir.path().join("token");
        let password = dir.path().join("password");
        let url = HttpUrl::parse("http://prometheus.monitoring:9090/prom").expect("a URL");
        let settings = |pairs: &[(&str, &str)]| Settings::from_pairs(pairs.iter().copied(), "").expect("valid settings");
        let url = &url;
        let asked = |access: Access| async move {
            let (addr, served) = one_answer().await;
            query(addr, url, &access, "up").await.expect("an empty vector");
            served.await.expect("the server task")
        };

        let bearer = settings(&[("prometheus-bearer-token-file", token.to_str().expect("a UTF-8 path"))]);
        std::fs::write(&token, "first.jwt\n").expect("the token file");
        let head = asked(Access::new(url, &bearer).expect("access")).await;
        assert!(head.starts_with("GET /prom/api/v1/query?query=up HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("\r\nhost: prometheus.monitoring:9090\r\n"), "{head}");
        assert!(head.contains("\r\nauthorization: Bearer first.jwt\r\n"), "{head}");
        // Rotated (a projected service account token is, hourly): the next reading sends the new one.
        std::fs::write(&token, "second.jwt").expect("the token file");
        assert!(asked(Access::new(url, &bearer).expect("access")).await.contains("authorization: Bearer second.jwt\r\n"));

        let basic =
            settings(&[("prometheus-username", "wakegate"), ("prometheus-password-file", password.to_str().expect("a UTF-8 path"))]);
        std::fs::write(&password, "s3cret\n").expect("the password file");
        // base64("wakegate:s3cret")
        assert!(asked(Access::new(url, &basic).expect("access")).await.contains("authorization: Basic d2FrZWdhdGU6czNjcmV0\r\n"));

        let none = asked(Access::new(url, &settings(&[])).expect("access")).await;
        assert!(!none.contains("authorization"), "{none}");
    }

    #[test]
    fn unreadable_access_files_name_their_key_and_path() {
        let dir = tempfile::tempdir().expect("a scratch directory");
        let path = |name: &str| dir.path().join(name).to_str().expect("a UTF-8 path").to_string();
        let https = HttpUrl::parse("https://127.0.0.1:9091").expect("a URL");
        let refused = |pairs: &[(&str, &str)]| {
            let s = Settings::from_pairs(pairs.iter().copied(), "").expect("valid settings");
            Access::new(&https, &s).err().expect("refused")
        };
        let missing = path("missing");
        let e = refused(&[("prometheus-bearer-token-file", &missing)]);
        assert!(e.starts_with(&format!("prometheus-bearer-token-file {missing}: ")) && e.contains("No such file"), "{e}");
        std::fs::write(path("blank"), " \n").expect("a file");
        let e = refused(&[("prometheus-username", "u"), ("prometheus-password-file", &path("blank"))]);
        assert_eq!(e, format!("prometheus-password-file {}: empty", path("blank")));
        std::fs::write(path("ctl"), "a\u{7}b").expect("a file");
        let e = refused(&[("prometheus-bearer-token-file", &path("ctl"))]);
        assert!(e.contains("cannot carry"), "{e}");
        let e = refused(&[("prometheus-ca-file", &path("blank"))]);
        assert_eq!(e, format!("prometheus-ca-file {}: no certificate in it", path("blank")));
        let e = refused(&[("prometheus-ca-file", dir.path().to_str().expect("a UTF-8 path"))]);
        assert!(e.ends_with("not a regular file"), "{e}");
        // Mutual TLS: the certificate file and the key file, each named.
        let e = refused(&[("prometheus-cert-file", &path("blank")), ("prometheus-key-file", &path("blank"))]);
        assert_eq!(e, format!("prometheus-cert-file {}: no certificate in it", path("blank")));
        let made = rcgen::generate_simple_self_signed(vec!["wakegate-scaler".to_string()]).expect("a certificate");
        std::fs::write(path("client.pem"), made.cert.pem()).expect("a file");
        std::fs::write(path("not-a-key"), "secret-looking bytes").expect("a file");
        let e = refused(&[("prometheus-cert-file", &path("client.pem")), ("prometheus-key-file", &path("not-a-key"))]);
        assert_eq!(e, format!("prometheus-key-file {}: no PEM private key in it", path("not-a-key")));
        std::fs::write(path("client.key"), made.signing_key.serialize_pem()).expect("a file");
        let s = Settings::from_pairs(
            [
                ("prometheus-ca-file", path("client.pem").as_str()),
                ("prometheus-cert-file", path("client.pem").as_str()),
                ("prometheus-key-file", path("client.key").as_str()),
            ],
            "",
        )
        .expect("valid settings");
        assert!(Access::new(&https, &s).is_ok(), "a readable client certificate and key");
        std::fs::write(path("huge"), vec![b'a'; crate::file::MAX_SMALL_FILE as usize + 1]).expect("a file");
        let e = refused(&[("prometheus-bearer-token-file", &path("huge"))]);
        assert!(e.ends_with("larger than 1024 KiB"), "{e}");
    }

    /// An https Prometheus by its DNS name: SNI carries the name, the
    /// certificate is checked against it and against the CA file.
    #[tokio::test]
    async fn https_checks_the_certificate_against_the_urls_name() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().expect("a scratch directory");
        let mut params = rcgen::CertificateParams::new(vec!["prometheus.monitoring.svc".to_string()]).expect("names");
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        let key = rcgen::KeyPair::generate().expect("a key");
        let cert = params.self_signed(&key).expect("a certificate");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, cert.pem()).expect("the CA file");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let key_der = rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("a DER key");
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key_der)
            .expect("a server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
        let addr = listener.local_addr().expect("its address");
        let served = tokio::spawn(async move {
            let mut sni = Vec::new();
            // The first handshake fails (a name the certificate lacks); the second is served.
            for _ in 0..2 {
                let (tcp, _) = listener.accept().await.expect("a connection");
                let Ok(mut tls) = acceptor.accept(tcp).await else { continue };
                sni.push(tls.get_ref().1.server_name().map(str::to_string));
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    head.push(tls.read_u8().await.expect("the request head"));
                }
                let body = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
                let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
                tls.write_all(answer.as_bytes()).await.expect("the answer");
                tls.shutdown().await.expect("close_notify");
            }
            sni
        });
        let ca_file = ca.to_str().expect("a UTF-8 path");
        let ask = |url: &str| {
            let url = HttpUrl::parse(url).expect("a URL");
            let settings = Settings::from_pairs([("prometheus-url", url.to_string().as_str()), ("prometheus-ca-file", ca_file)], "")
                .expect("valid settings");
            async move {
                let access = Access::new(&url, &settings).expect("access");
                query(addr, &url, &access, "up").await
            }
        };
        let wrong = ask("https://prometheus.monitoring:9091").await.unwrap_err();
        assert!(
            wrong.starts_with("TLS handshake: invalid peer certificate")
                && wrong.contains("certificate not valid for name \"prometheus.monitoring\""),
            "{wrong}"
        );
        assert_eq!(ask("https://prometheus.monitoring.svc:9091").await, Ok(Vec::new()));
        assert_eq!(served.await.expect("the server task"), [Some("prometheus.monitoring.svc".to_string())]);
    }

    #[test]
    fn queries_name_the_gateway_metrics_in_scope() {
        let q = Queries::new("");
        let last = r#"{__name__="wakegate_last_request_timestamp_seconds"}"#;
        assert_eq!(q.as_of, format!("min(timestamp({last}))"));
        assert_eq!(q.last, format!("max by (solution) ({last})"));
        assert_eq!(q.busy, r#"sum by (solution) ({__name__=~"wakegate_(in_flight_requests|held_requests|open_streams)"})"#);
        assert_eq!(q.reporting, format!("count(count by (job, instance) ({last}))"));
        assert_eq!(q.gone, format!("count by (job, instance) (max_over_time({last}[5m]) unless on (job, instance) {last})"));
        let scoped = Queries::new(r#"namespace="wakegate""#);
        assert_eq!(scoped.last, r#"max by (solution) ({__name__="wakegate_last_request_timestamp_seconds", namespace="wakegate"})"#);
        assert!(scoped.busy.ends_with(r#"open_streams)", namespace="wakegate"})"#), "{}", scoped.busy);
    }
}
