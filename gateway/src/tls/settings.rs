//! The TLS and ACME settings keys, typed once here: [`from_pairs`] reads the
//! flat `key: value` pairs of the ConfigMap or `[settings]` table, ignores
//! keys that are not its own, and returns every problem with its key.
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `tls-source` | `self-signed` | `self-signed`, `files`, `acme` or `off` |
//! | `tls-listen` | `127.0.0.1:8443` | the HTTPS listener |
//! | `tls-dir` | — | where the ACME account and certificate are kept (required for `acme`) |
//! | `tls-cert-file`, `tls-key-file` | — | PEM chain and key (required for `files`) |
//! | `acme-directory` | — | CA directory URL, or `letsencrypt` / `letsencrypt-staging` |
//! | `acme-email` | — | account contact |
//! | `acme-ca-file` | — | PEM root the CA's HTTPS certificate chains to (test CAs) |
//! | `acme-eab-kid`, `acme-eab-hmac` | — | External Account Binding (both or neither; HMAC in base64url) |
//! | `acme-eab-hmac-file` | — | a file holding the HMAC instead (a mounted Secret) |
//! | `acme-dns-provider` | `rfc2136` | `rfc2136` or `exec` |
//! | `rfc2136-server` | — | `host[:port]` of the primary nameserver (port 53) |
//! | `rfc2136-zone` | base domain | the zone to update |
//! | `rfc2136-tsig-key` | — | TSIG key name |
//! | `rfc2136-tsig-algorithm` | `hmac-sha256` | `hmac-sha256`, `hmac-sha384`, `hmac-sha512` |
//! | `rfc2136-tsig-secret` | — | TSIG secret, base64 |
//! | `rfc2136-tsig-secret-file` | — | a file holding the secret instead (a mounted Secret) |
//! | `acme-exec-command` | — | command run as `<cmd> present\|cleanup <fqdn> <value>` |
//! | `acme-propagation-nameservers` | the rfc2136 server | `ip:port,...` asked before the CA is told to look (required with `exec` unless `acme-propagation-delay` is set) |
//! | `acme-propagation-timeout` | `2m` | longest wait for those nameservers |
//! | `acme-propagation-delay` | `0` | fixed pause after publishing (for providers with slow APIs) |
//! | `hsts` | `off` | `on` (max-age one year), `off`, or a max-age such as `180d` |

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use data_encoding::{BASE64, BASE64URL, BASE64URL_NOPAD};
use proto::units::{format_duration, parse_duration};

use crate::tls::acme::{AcmeConfig, DEFAULT_LOCK_STALE_AFTER, DEFAULT_ORDER_TIMEOUT, DEFAULT_PROPAGATION_TIMEOUT, Eab};
use crate::tls::dns::{DnsError, DnsProvider};
use crate::tls::exec::Exec;
use crate::tls::rfc2136::{Rfc2136, TsigAlgorithm, TsigKey};

/// Loopback: a first run exposes nothing by accident; 8443 needs no privilege.
pub const DEFAULT_TLS_LISTEN: &str = "127.0.0.1:8443";
/// One year, the max-age HSTS preload lists ask for.
pub const DEFAULT_HSTS_MAX_AGE: Duration = Duration::from_secs(365 * 86_400);
/// The port DNS servers listen on.
const DNS_PORT: u16 = 53;

/// Every key this module reads.
pub const KEYS: &[&str] = &[
    "tls-source",
    "tls-listen",
    "tls-dir",
    "tls-cert-file",
    "tls-key-file",
    "acme-directory",
    "acme-email",
    "acme-ca-file",
    "acme-eab-kid",
    "acme-eab-hmac",
    "acme-eab-hmac-file",
    "acme-dns-provider",
    "rfc2136-server",
    "rfc2136-zone",
    "rfc2136-tsig-key",
    "rfc2136-tsig-algorithm",
    "rfc2136-tsig-secret",
    "rfc2136-tsig-secret-file",
    "acme-exec-command",
    "acme-propagation-nameservers",
    "acme-propagation-timeout",
    "acme-propagation-delay",
    "hsts",
];

/// Settings problems: `(key, reason)`, every one found.
pub type Problems = Vec<(String, String)>;

/// The parsed TLS settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsSettings {
    /// Where the certificate comes from.
    pub source: TlsSource,
    /// The HTTPS listener.
    pub listen: SocketAddr,
    /// The `tls-dir` store directory, if set.
    pub dir: Option<PathBuf>,
    /// `Strict-Transport-Security` max-age, if HSTS is on.
    pub hsts: Option<Duration>,
}

/// Where the certificate comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum TlsSource {
    /// No HTTPS listener.
    Off,
    /// Generated at start for `*.<base>` + `<base>`.
    SelfSigned,
    /// PEM files, reloaded when they change.
    Files {
        /// The chain, leaf first.
        cert: PathBuf,
        /// The private key.
        key: PathBuf,
    },
    /// Obtained and renewed through ACME DNS-01.
    Acme(Box<AcmeSettings>),
}

/// The `acme-*` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AcmeSettings {
    /// CA directory URL.
    pub directory: String,
    /// Account contact address.
    pub email: Option<String>,
    /// Root for the CA's HTTPS certificate.
    pub ca_file: Option<PathBuf>,
    /// External Account Binding.
    pub eab: Option<Eab>,
    /// How TXT records are published.
    pub dns: DnsSettings,
    /// Nameservers asked before the CA is told to look (explicit list).
    pub nameservers: Vec<SocketAddr>,
    /// Longest wait for them.
    pub propagation_timeout: Duration,
    /// Fixed pause after publishing.
    pub propagation_delay: Duration,
}

/// The DNS provider's settings.
#[derive(Debug, Clone, PartialEq)]
pub enum DnsSettings {
    /// RFC 2136 dynamic update with TSIG.
    Rfc2136 {
        /// `host:port` of the primary.
        server: String,
        /// The zone; `None` means the base domain.
        zone: Option<String>,
        /// The TSIG key.
        key: TsigKey,
    },
    /// An operator command.
    Exec {
        /// The command's path.
        command: PathBuf,
    },
}

/// Parses the TLS keys out of `pairs` (other keys are ignored).
pub fn from_pairs(pairs: &BTreeMap<String, String>) -> Result<TlsSettings, Problems> {
    let mut p = Parser { pairs, problems: Vec::new() };
    let listen = p.parse("tls-listen", DEFAULT_TLS_LISTEN, |v| {
        v.trim().parse::<SocketAddr>().map_err(|_| format!("invalid address {v:?}: expected IP:port, e.g. 127.0.0.1:8443 or [::]:8443"))
    });
    let dir = p.get("tls-dir").map(PathBuf::from);
    let hsts = p.parse("hsts", "off", parse_hsts);
    let source = match p.get("tls-source").unwrap_or("self-signed") {
        "off" => Some(TlsSource::Off),
        "self-signed" => Some(TlsSource::SelfSigned),
        "files" => match (p.required("tls-cert-file", "files"), p.required("tls-key-file", "files")) {
            (Some(cert), Some(key)) => Some(TlsSource::Files { cert: cert.into(), key: key.into() }),
            _ => None,
        },
        "acme" => {
            if dir.is_none() {
                p.problem::<()>("tls-dir", "required when tls-source is acme: the account and certificate are kept there");
            }
            acme(&mut p).map(|a| TlsSource::Acme(Box::new(a)))
        }
        other => {
            p.problem::<()>("tls-source", format!("unknown source {other:?}; use self-signed, files, acme or off"));
            None
        }
    };
    match (source, listen, hsts) {
        (Some(source), Some(listen), Some(hsts)) if p.problems.is_empty() => Ok(TlsSettings { source, listen, dir, hsts }),
        _ => Err(p.problems),
    }
}

fn acme(p: &mut Parser<'_>) -> Option<AcmeSettings> {
    let directory = p.required("acme-directory", "acme").and_then(|d| match d {
        "letsencrypt" => Some(instant_acme::LetsEncrypt::Production.url().to_string()),
        "letsencrypt-staging" => Some(instant_acme::LetsEncrypt::Staging.url().to_string()),
        d if d.starts_with("https://") => Some(d.to_string()),
        _ => {
            p.problem::<()>("acme-directory", "must be an https:// URL, letsencrypt or letsencrypt-staging");
            None
        }
    });
    let email = p.get("acme-email").map(str::to_string);
    if email.as_deref().is_some_and(|e| !e.contains('@') || e.contains(char::is_whitespace)) {
        p.problem::<()>("acme-email", "not an e-mail address");
    }
    let ca_file = p.get("acme-ca-file").map(PathBuf::from);
    let hmac = p.credential("acme-eab-hmac");
    let eab = match (p.get("acme-eab-kid"), hmac) {
        (_, Err(Noted)) | (None, Ok(None)) => None,
        (Some(kid), Ok(Some(hmac))) => match decode_base64(&hmac) {
            Some(hmac_key) => Some(Eab { kid: kid.to_string(), hmac_key }),
            None => {
                p.problem::<()>("acme-eab-hmac", "not base64url");
                None
            }
        },
        (Some(_), Ok(None)) => p.problem("acme-eab-hmac", "required when acme-eab-kid is set (or acme-eab-hmac-file)"),
        (None, Ok(Some(_))) => p.problem("acme-eab-kid", "required when acme-eab-hmac is set"),
    };
    let dns = match p.get("acme-dns-provider").unwrap_or("rfc2136") {
        "rfc2136" => rfc2136(p),
        "exec" => p.required("acme-exec-command", "acme-dns-provider is exec").map(|c| DnsSettings::Exec { command: c.into() }),
        other => p.problem("acme-dns-provider", format!("unknown provider {other:?}; use rfc2136 or exec")),
    };
    let nameservers = p.parse("acme-propagation-nameservers", "", |v| {
        v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| parse_server(s).and_then(|a| parse_ip_port(&a))).collect()
    });
    let default_timeout = format_duration(DEFAULT_PROPAGATION_TIMEOUT);
    let propagation_timeout = p.parse("acme-propagation-timeout", &default_timeout, parse_duration);
    let propagation_delay = p.parse("acme-propagation-delay", "0", parse_duration);
    // An exec provider publishes somewhere wakegate cannot see: with nothing
    // to check and no pause, the CA would look before the record is there
    // (each failed validation counts against its limits).
    if matches!(dns, Some(DnsSettings::Exec { .. }))
        && nameservers.as_ref().is_some_and(Vec::is_empty)
        && propagation_delay.is_some_and(|d| d.is_zero())
    {
        p.problem::<()>(
            "acme-propagation-nameservers",
            "required with acme-dns-provider exec: the zone's authoritative servers to check (or set acme-propagation-delay)",
        );
    }
    Some(AcmeSettings {
        directory: directory?,
        email,
        ca_file,
        eab,
        dns: dns?,
        nameservers: nameservers?,
        propagation_timeout: propagation_timeout?,
        propagation_delay: propagation_delay?,
    })
}

fn rfc2136(p: &mut Parser<'_>) -> Option<DnsSettings> {
    const WHEN: &str = "acme-dns-provider is rfc2136";
    let server = p.required("rfc2136-server", WHEN).and_then(|s| match parse_server(s) {
        Ok(s) => Some(s),
        Err(e) => p.problem("rfc2136-server", e),
    });
    let zone = p.get("rfc2136-zone").map(|z| z.trim_end_matches('.').to_ascii_lowercase());
    let name = p.required("rfc2136-tsig-key", WHEN).map(str::to_string);
    let algorithm = p.parse("rfc2136-tsig-algorithm", "hmac-sha256", |v| v.parse::<TsigAlgorithm>());
    let secret = match (p.credential("rfc2136-tsig-secret"), &name) {
        (Err(Noted), _) => None,
        (Ok(Some(s)), _) => match BASE64.decode(s.trim().as_bytes()) {
            Ok(b) if !b.is_empty() => Some(b),
            _ => p.problem("rfc2136-tsig-secret", "not base64 (as printed by keymgr or tsig-keygen)"),
        },
        (Ok(None), Some(name)) => {
            p.problem("rfc2136-tsig-secret", format!("required (or rfc2136-tsig-secret-file): the base64 secret of TSIG key {name:?}"))
        }
        (Ok(None), None) => p.problem("rfc2136-tsig-secret", format!("required when {WHEN}")),
    };
    Some(DnsSettings::Rfc2136 { server: server?, zone, key: TsigKey { name: name?, algorithm: algorithm?, secret: secret? } })
}

// === impl TlsSettings ===

impl TlsSettings {
    /// The ACME client configuration for base domain `base`, if the source is
    /// ACME. The rfc2136 server doubles as the nameserver to check when
    /// `acme-propagation-nameservers` is not set (resolved here).
    pub async fn acme_config(&self, base: &str) -> Option<Result<AcmeConfig, DnsError>> {
        let TlsSource::Acme(a) = &self.source else { return None };
        let mut nameservers = a.nameservers.clone();
        let mut zone = base.to_string();
        if let DnsSettings::Rfc2136 { server, zone: z, .. } = &a.dns {
            zone = z.clone().unwrap_or(zone);
            if nameservers.is_empty() {
                match tokio::net::lookup_host(server.as_str()).await {
                    Ok(addrs) => nameservers.extend(addrs.take(1)),
                    Err(source) => return Some(Err(DnsError::Resolve { server: server.clone(), source })),
                }
            }
        }
        Some(Ok(AcmeConfig {
            directory: a.directory.clone(),
            contact: a.email.iter().map(|e| format!("mailto:{e}")).collect(),
            ca_file: a.ca_file.clone(),
            eab: a.eab.clone(),
            base: base.to_string(),
            zone,
            nameservers,
            propagation_timeout: a.propagation_timeout,
            propagation_delay: a.propagation_delay,
            order_timeout: DEFAULT_ORDER_TIMEOUT,
            lock_stale_after: DEFAULT_LOCK_STALE_AFTER,
        }))
    }

    /// The DNS provider, if the source is ACME; `base` is the default zone.
    pub fn dns_provider(&self, base: &str) -> Option<Result<Arc<dyn DnsProvider>, DnsError>> {
        let TlsSource::Acme(a) = &self.source else { return None };
        Some(match &a.dns {
            DnsSettings::Rfc2136 { server, zone, key } => {
                Rfc2136::new(server.clone(), zone.as_deref().unwrap_or(base), key).map(|p| Arc::new(p) as Arc<dyn DnsProvider>)
            }
            DnsSettings::Exec { command } => Ok(Arc::new(Exec::new(command.clone()))),
        })
    }
}

/// A problem was noted (with its key) by the [`Parser`].
struct Noted;

struct Parser<'a> {
    pairs: &'a BTreeMap<String, String>,
    problems: Problems,
}

impl<'a> Parser<'a> {
    fn get(&self, key: &str) -> Option<&'a str> {
        self.pairs.get(key).map(|v| v.trim()).filter(|v| !v.is_empty())
    }

    fn problem<T>(&mut self, key: &str, reason: impl Into<String>) -> Option<T> {
        self.problems.push((key.to_string(), reason.into()));
        None
    }

    fn required(&mut self, key: &str, when: &str) -> Option<&'a str> {
        let v = self.get(key);
        if v.is_none() {
            self.problem::<()>(key, format!("required when {when}"));
        }
        v
    }

    /// A credential: `key`'s value, or the contents of the file `<key>-file`
    /// names (a mounted Secret, so that the credential stays out of the
    /// ConfigMap; read whenever the settings are), trimmed.
    fn credential(&mut self, key: &str) -> Result<Option<String>, Noted> {
        let file_key = format!("{key}-file");
        match (self.get(key), self.get(&file_key)) {
            (Some(_), Some(_)) => {
                self.problem::<()>(&file_key, format!("set {key} or {file_key}, not both"));
                Err(Noted)
            }
            (Some(v), None) => Ok(Some(v.to_string())),
            (None, Some(path)) => match std::fs::read_to_string(path) {
                Ok(s) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
                Ok(_) => {
                    self.problem::<()>(&file_key, format!("{path} is empty"));
                    Err(Noted)
                }
                Err(e) => {
                    self.problem::<()>(&file_key, format!("cannot read {path}: {e}"));
                    Err(Noted)
                }
            },
            (None, None) => Ok(None),
        }
    }

    fn parse<T>(&mut self, key: &str, default: &str, f: impl FnOnce(&str) -> Result<T, String>) -> Option<T> {
        match f(self.get(key).unwrap_or(default)) {
            Ok(v) => Some(v),
            Err(e) => self.problem(key, e),
        }
    }
}

fn parse_hsts(v: &str) -> Result<Option<Duration>, String> {
    match v {
        "off" | "false" => Ok(None),
        "on" | "true" => Ok(Some(DEFAULT_HSTS_MAX_AGE)),
        d => parse_duration(d).map(Some).map_err(|e| format!("{e}; or on, off")),
    }
}

/// `host`, `host:port`, `ip`, `ip:port`, `[v6]:port` → `host:port`.
fn parse_server(s: &str) -> Result<String, String> {
    if s.parse::<SocketAddr>().is_ok() {
        return Ok(s.to_string());
    }
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, DNS_PORT).to_string());
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().map_err(|_| format!("invalid port in {s:?}"))?),
        None => (s, DNS_PORT),
    };
    let valid = !host.is_empty() && host.split('.').all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if valid { Ok(format!("{host}:{port}")) } else { Err(format!("invalid server {s:?}; write host, host:port or ip:port")) }
}

fn parse_ip_port(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| format!("{s:?} is not an IP address (nameservers are listed by address)"))
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let s = s.trim().as_bytes();
    [BASE64URL_NOPAD, BASE64URL, BASE64].iter().find_map(|e| e.decode(s).ok()).filter(|b| !b.is_empty())
}

#[cfg(test)]
mod tests;
