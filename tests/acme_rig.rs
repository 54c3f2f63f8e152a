//! A real ACME test rig for the black-box TLS tests: knotd (authoritative for
//! `aim.test`, RFC 2136 updates signed with a TSIG key from `keymgr`) and
//! pebble (the ACME test CA, validating DNS-01 against that knotd), on free
//! loopback ports in a temporary directory; both are killed when the rig is
//! dropped.
//!
//! The same rig as `gateway/tests/acme/rig.rs`, without the gateway library:
//! TXT records are read with `kdig`, the root is fetched with rustls. Nothing
//! is installed here: `scripts/install-deps acme` provides pebble, knot and
//! knot-dnsutils.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The zone the rig serves; the certificate is for `*.aim.test` + `aim.test`.
pub const ZONE: &str = "aim.test";
/// The owner of both challenge values.
pub const OWNER: &str = "_acme-challenge.aim.test";
/// The TSIG key's name in knot's configuration.
pub const KEY_NAME: &str = "acme-key";
/// The External Account Binding key id pebble accepts when EAB is required.
pub const EAB_KID: &str = "kid-1";
/// Its HMAC key, base64url as pebble's config takes it.
pub const EAB_HMAC: &str = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";

const PEBBLE: &str = "/usr/bin/pebble";
const KNOTD: &str = "/usr/sbin/knotd";
const KEYMGR: &str = "/usr/sbin/keymgr";
const KNSUPDATE: &str = "/usr/bin/knsupdate";
const KDIG: &str = "/usr/bin/kdig";
const STARTUP: Duration = Duration::from_secs(20);

/// The running servers and what a client needs to use them.
pub struct Rig {
    /// Scratch directory (configs, logs, zone, pebble's TLS files).
    pub dir: tempfile::TempDir,
    /// knotd's UDP/TCP address.
    pub dns: SocketAddr,
    /// pebble's ACME directory URL.
    pub directory: String,
    /// PEM of the certificate pebble's HTTPS listeners present.
    pub ca_file: PathBuf,
    /// The TSIG secret, base64, as `keymgr` printed it.
    pub tsig_secret: String,
    management: SocketAddr,
    children: Vec<Child>,
}

/// Options for [`Rig::start`].
#[derive(Default, Clone, Copy)]
pub struct Options {
    /// Make pebble require External Account Binding ([`EAB_KID`]).
    pub require_eab: bool,
}

/// The rustls provider of the build (aws-lc-rs only).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl Rig {
    /// Starts knotd and pebble; fails with a pointer to `scripts/install-deps
    /// acme` when they are not installed.
    pub async fn start(opts: Options) -> Result<Rig> {
        for bin in [PEBBLE, KNOTD, KEYMGR, KNSUPDATE, KDIG] {
            if !Path::new(bin).exists() {
                bail!("{bin} not found: run `scripts/install-deps acme` (pebble, knot, knot-dnsutils) first");
            }
        }
        let dir = tempfile::Builder::new().prefix("wakegate-tls-rig").tempdir()?;
        let mut rig = Rig {
            dns: free_udp_tcp_port()?,
            directory: String::new(),
            ca_file: dir.path().join("pebble-tls.pem"),
            tsig_secret: tsig_secret()?,
            management: free_tcp_port()?,
            children: Vec::new(),
            dir,
        };
        rig.start_knot()?;
        rig.start_pebble(opts)?;
        rig.wait_ready().await?;
        Ok(rig)
    }

    /// The pids of knotd and pebble.
    pub fn pids(&self) -> Vec<i32> {
        self.children.iter().map(|c| c.id() as i32).collect()
    }

    /// The TXT values knotd serves at `name` now (asked with `kdig`).
    pub async fn txt(&self, name: &str) -> Result<Vec<String>> {
        txt(self.dns, name).await
    }

    /// pebble's current root, PEM (regenerated at each start), from its
    /// management interface.
    pub async fn root_pem(&self) -> Result<String> {
        let body = self.management_get("/roots/0").await?;
        Ok(String::from_utf8(body)?)
    }

    /// pebble's current root, DER.
    pub async fn root(&self) -> Result<CertificateDer<'static>> {
        Ok(CertificateDer::from_pem_slice(self.root_pem().await?.as_bytes())?)
    }

    fn start_knot(&mut self) -> Result<()> {
        let k = self.dir.path().join("knot");
        for sub in ["run", "db", "zones"] {
            std::fs::create_dir_all(k.join(sub))?;
        }
        std::fs::write(
            k.join("zones").join(format!("{ZONE}.zone")),
            format!(
                "$ORIGIN {ZONE}.\n$TTL 60\n@ SOA ns1.{ZONE}. hostmaster.{ZONE}. 1 3600 600 86400 60\n@ NS ns1.{ZONE}.\nns1 A 127.0.0.1\n"
            ),
        )?;
        let conf = format!(
            r#"server:
    rundir: "{run}"
    listen: 127.0.0.1@{port}
log:
  - target: stdout
    any: info
database:
    storage: "{db}"
key:
  - id: {KEY_NAME}
    algorithm: hmac-sha256
    secret: {secret}
acl:
  - id: acme-update
    key: {KEY_NAME}
    action: update
    update-type: TXT
    update-owner: name
    update-owner-match: equal
    update-owner-name: _acme-challenge
template:
  - id: default
    storage: "{zones}"
    file: "%s.zone"
    zonefile-sync: -1
    zonefile-load: difference-no-serial
    journal-content: all
zone:
  - domain: {ZONE}
    acl: acme-update
"#,
            run = k.join("run").display(),
            port = self.dns.port(),
            db = k.join("db").display(),
            secret = self.tsig_secret,
            zones = k.join("zones").display(),
        );
        let conf_path = k.join("knot.conf");
        std::fs::write(&conf_path, conf)?;
        let log = std::fs::File::create(k.join("knot.log"))?;
        let child = Command::new(KNOTD).arg("-c").arg(&conf_path).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).spawn()?;
        self.children.push(child);
        Ok(())
    }

    fn start_pebble(&mut self, opts: Options) -> Result<()> {
        let listen = free_tcp_port()?;
        self.directory = format!("https://{listen}/dir");
        // pebble ships no TLS certificate: make one, CA:FALSE (rustls refuses a
        // CA certificate as a server certificate).
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        let key = rcgen::KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let key_path = self.dir.path().join("pebble-tls.key");
        std::fs::write(&self.ca_file, cert.pem())?;
        std::fs::write(&key_path, key.serialize_pem())?;
        let eab = if opts.require_eab {
            format!(r#", "externalAccountBindingRequired": true, "externalAccountMACKeys": {{"{EAB_KID}": "{EAB_HMAC}"}}"#)
        } else {
            r#", "externalAccountBindingRequired": false"#.to_string()
        };
        let config = format!(
            r#"{{"pebble": {{"listenAddress": "{listen}", "managementListenAddress": "{mgmt}",
                "certificate": "{cert}", "privateKey": "{key}", "httpPort": {http}, "tlsPort": {tls},
                "ocspResponderURL": ""{eab}}}}}"#,
            mgmt = self.management,
            cert = self.ca_file.display(),
            key = key_path.display(),
            http = free_tcp_port()?.port(),
            tls = free_tcp_port()?.port(),
        );
        let config_path = self.dir.path().join("pebble-config.json");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(self.dir.path().join("pebble.log"))?;
        let child = Command::new(PEBBLE)
            .arg("-config")
            .arg(&config_path)
            .arg("-dnsserver")
            .arg(self.dns.to_string())
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.children.push(child);
        Ok(())
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + STARTUP;
        let listen: SocketAddr = self.directory.trim_start_matches("https://").trim_end_matches("/dir").parse()?;
        loop {
            for c in &mut self.children {
                if let Some(status) = c.try_wait()? {
                    bail!("a rig server exited ({status}) at start:\n{}", self.logs());
                }
            }
            let dns_up = self.txt(ZONE).await.is_ok();
            let pebble_up =
                tokio::net::TcpStream::connect(listen).await.is_ok() && tokio::net::TcpStream::connect(self.management).await.is_ok();
            if dns_up && pebble_up {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the rig did not come up within {STARTUP:?}:\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The tails of both servers' logs, for failure messages.
    pub fn logs(&self) -> String {
        let tail = |p: PathBuf| {
            let s = std::fs::read_to_string(&p).unwrap_or_default();
            let lines: Vec<&str> = s.lines().collect();
            format!("--- {}\n{}", p.display(), lines[lines.len().saturating_sub(30)..].join("\n"))
        };
        format!("{}\n{}", tail(self.dir.path().join("knot/knot.log")), tail(self.dir.path().join("pebble.log")))
    }

    async fn management_get(&self, path: &str) -> Result<Vec<u8>> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_file(&self.ca_file)?)?;
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(self.management).await?;
        let name = ServerName::try_from("localhost")?;
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await?;
        // HTTP/1.0: no chunked encoding, the body ends with the connection.
        tls.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes()).await?;
        let mut raw = Vec::new();
        let _ = tls.read_to_end(&mut raw).await;
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").context("no HTTP header end")?;
        let head = String::from_utf8_lossy(&raw[..split]);
        if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
            bail!("GET {path}: {head}");
        }
        Ok(raw[split + 4..].to_vec())
    }

    /// A shell script for the exec provider that publishes through
    /// `knsupdate` and logs each call to `dns-hook.log` in the rig's folder.
    pub fn knsupdate_script(&self) -> Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.path().join("dns-hook.sh");
        let script = format!(
            r#"#!/bin/sh
set -eu
case "$1" in
  present) op="add $2. 60 TXT \"$3\"" ;;
  cleanup) op="del $2. TXT \"$3\"" ;;
  *) echo "unknown action $1" >&2; exit 2 ;;
esac
printf 'server 127.0.0.1 {port}\nzone {ZONE}.\n%s\nsend\n' "$op" | {KNSUPDATE} -y hmac-sha256:{KEY_NAME}:{secret}
echo "$1 $2 $3" >> "{log}"
"#,
            port = self.dns.port(),
            secret = self.tsig_secret,
            log = self.dir.path().join("dns-hook.log").display(),
        );
        std::fs::write(&path, script)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        Ok(path)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The TXT values `server` serves at `name` (one `kdig` query, 1 s timeout).
pub async fn txt(server: SocketAddr, name: &str) -> Result<Vec<String>> {
    let out = tokio::process::Command::new(KDIG)
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), name, "TXT", "+short", "+timeout=1", "+retry=0"])
        .stdin(Stdio::null())
        .output()
        .await?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains(";;") {
        return Err(anyhow!("kdig {name} TXT @{server}: {text} {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(text.lines().map(|l| l.trim().trim_matches('"').to_string()).filter(|l| !l.is_empty()).collect())
}

/// A fresh hmac-sha256 secret from `keymgr -t`, base64.
pub fn tsig_secret() -> Result<String> {
    let out = Command::new(KEYMGR).args(["-t", KEY_NAME, "hmac-sha256"]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.trim().strip_prefix("secret:").map(|s| s.trim().to_string()))
        .ok_or_else(|| anyhow!("keymgr printed no secret: {text} {}", String::from_utf8_lossy(&out.stderr)))
}

/// A loopback TCP port nobody listens on (now).
pub fn free_tcp_port() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// A port free for both UDP and TCP (DNS listens on both).
pub fn free_udp_tcp_port() -> std::io::Result<SocketAddr> {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0")?;
        let addr = udp.local_addr()?;
        if TcpListener::bind(addr).is_ok() {
            return Ok(addr);
        }
    }
}
