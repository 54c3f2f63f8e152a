//! A real ACME test rig: knotd (authoritative for `aim.test`, RFC 2136
//! updates signed with a TSIG key from `keymgr`) and pebble (the ACME test
//! CA, validating DNS-01 against that knotd), on free loopback ports in a
//! temporary directory; both are killed when the rig is dropped.
//!
//! Nothing is installed here: `scripts/install-deps acme` provides pebble,
//! knot and knot-dnsutils.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wakegate::tls::certkey::provider;
use wakegate::tls::dns::fqdn;
use wakegate::tls::propagation::query_txt;
use wakegate::tls::rfc2136::{TsigAlgorithm, TsigKey};

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// The zone the rig serves; the certificate is for `*.aim.test` + `aim.test`.
pub const ZONE: &str = "aim.test";
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

impl Rig {
    /// Starts knotd and pebble; fails with a pointer to `scripts/install-deps
    /// acme` when they are not installed.
    pub async fn start(opts: Options) -> Result<Rig, Error> {
        for bin in [PEBBLE, KNOTD, KEYMGR, KNSUPDATE] {
            if !Path::new(bin).exists() {
                return Err(format!("{bin} not found: run `scripts/install-deps acme` (pebble, knot, knot-dnsutils) first").into());
            }
        }
        let dir = tempfile::Builder::new().prefix("wakegate-acme-rig").tempdir()?;
        let mut rig = Rig {
            dns: free_udp_tcp_port()?,
            directory: String::new(),
            ca_file: dir.path().join("pebble-tls.pem"),
            tsig_secret: String::new(),
            management: free_tcp_port()?,
            children: Vec::new(),
            dir,
        };
        rig.tsig_secret = tsig_secret()?;
        rig.start_knot()?;
        rig.start_pebble(opts)?;
        rig.wait_ready().await?;
        Ok(rig)
    }

    /// The TSIG key knot accepts for updates of `_acme-challenge.aim.test`.
    pub fn tsig_key(&self) -> Result<TsigKey, Error> {
        let secret = data_encoding::BASE64.decode(self.tsig_secret.as_bytes())?;
        Ok(TsigKey { name: KEY_NAME.into(), algorithm: TsigAlgorithm::HmacSha256, secret })
    }

    /// The TXT values knot serves at `name` now.
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, Error> {
        Ok(query_txt(self.dns, &fqdn(name)?, Duration::from_secs(2)).await?)
    }

    /// pebble's current root (regenerated at each start), from its management interface.
    pub async fn root(&self) -> Result<CertificateDer<'static>, Error> {
        let body = self.management_get("/roots/0").await?;
        Ok(CertificateDer::from_pem_slice(&body)?)
    }

    fn start_knot(&mut self) -> Result<(), Error> {
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

    fn start_pebble(&mut self, opts: Options) -> Result<(), Error> {
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

    async fn wait_ready(&mut self) -> Result<(), Error> {
        let deadline = Instant::now() + STARTUP;
        let listen: SocketAddr = self.directory.trim_start_matches("https://").trim_end_matches("/dir").parse()?;
        loop {
            for c in &mut self.children {
                if let Some(status) = c.try_wait()? {
                    return Err(format!("a rig server exited ({status}) at start:\n{}", self.logs()).into());
                }
            }
            let dns_up = self.txt(ZONE).await.is_ok();
            let pebble_up =
                tokio::net::TcpStream::connect(listen).await.is_ok() && tokio::net::TcpStream::connect(self.management).await.is_ok();
            if dns_up && pebble_up {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("the rig did not come up within {STARTUP:?}:\n{}", self.logs()).into());
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

    async fn management_get(&self, path: &str) -> Result<Vec<u8>, Error> {
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
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no HTTP header end")?;
        let head = String::from_utf8_lossy(&raw[..split]);
        if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
            return Err(format!("GET {path}: {head}").into());
        }
        Ok(raw[split + 4..].to_vec())
    }

    /// A shell script for the exec provider that publishes through `knsupdate`.
    pub fn knsupdate_script(&self) -> Result<PathBuf, Error> {
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

/// A fresh hmac-sha256 secret from `keymgr -t`, base64.
fn tsig_secret() -> Result<String, Error> {
    let out = Command::new(KEYMGR).args(["-t", KEY_NAME, "hmac-sha256"]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.trim().strip_prefix("secret:").map(|s| s.trim().to_string()))
        .ok_or_else(|| format!("keymgr printed no secret: {text} {}", String::from_utf8_lossy(&out.stderr)).into())
}

fn free_tcp_port() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// A port free for both UDP and TCP (DNS listens on both).
fn free_udp_tcp_port() -> std::io::Result<SocketAddr> {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0")?;
        let addr = udp.local_addr()?;
        if TcpListener::bind(addr).is_ok() {
            return Ok(addr);
        }
    }
}
