//! [`DnsProvider`] by RFC 2136 dynamic update, signed with TSIG (RFC 8945).
//!
//! `present` sends "add to RRset" with no prerequisite, so the wildcard's and
//! the base name's values coexist at one owner; `cleanup` deletes exactly
//! one value (class NONE). Every reply's response code is checked: a server
//! that accepts the packet but refuses the update is an error, not a success.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hickory_client::client::{Client, ClientHandle};
use hickory_proto::dnssec::rdata::tsig::TsigAlgorithm as HickoryAlgorithm;
use hickory_proto::dnssec::tsig::TSigner;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::{Name, RData, Record};
use hickory_proto::runtime::TokioRuntimeProvider;
use hickory_proto::udp::UdpClientStream;

use crate::tls::dns::{DnsError, DnsFuture, DnsProvider, fqdn};

/// 60 s: short, so a value left behind by a crash is soon forgotten by caches.
pub const CHALLENGE_TTL: u32 = 60;
/// 10 s per update: a loopback or in-cluster DNS server answers in milliseconds.
pub const UPDATE_TIMEOUT: Duration = Duration::from_secs(10);
/// 300 s of clock skew tolerated in TSIG signatures (RFC 8945's recommendation).
const TSIG_FUDGE: u16 = 300;

/// A TSIG HMAC algorithm (the ones RFC 8945 requires or recommends).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TsigAlgorithm {
    /// `hmac-sha256`, what `keymgr`, `tsig-keygen` and most guides produce.
    #[default]
    HmacSha256,
    /// `hmac-sha384`.
    HmacSha384,
    /// `hmac-sha512`.
    HmacSha512,
}

/// A TSIG key as the DNS server knows it.
#[derive(Clone, PartialEq, Eq)]
pub struct TsigKey {
    /// The key's name (`acme-key`), as configured on the server.
    pub name: String,
    /// Its algorithm.
    pub algorithm: TsigAlgorithm,
    /// The shared secret, decoded from base64.
    pub secret: Vec<u8>,
}

/// Publishes challenge values by TSIG-signed dynamic update.
pub struct Rfc2136 {
    server: String,
    zone: Name,
    signer: TSigner,
    ttl: u32,
    timeout: Duration,
}

#[derive(Clone, Copy)]
enum Op {
    Add,
    Delete,
}

// === impl TsigAlgorithm ===

impl TsigAlgorithm {
    /// The name as written in settings and server configs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HmacSha256 => "hmac-sha256",
            Self::HmacSha384 => "hmac-sha384",
            Self::HmacSha512 => "hmac-sha512",
        }
    }

    fn hickory(self) -> HickoryAlgorithm {
        match self {
            Self::HmacSha256 => HickoryAlgorithm::HmacSha256,
            Self::HmacSha384 => HickoryAlgorithm::HmacSha384,
            Self::HmacSha512 => HickoryAlgorithm::HmacSha512,
        }
    }
}

impl FromStr for TsigAlgorithm {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().trim_end_matches('.').to_ascii_lowercase().as_str() {
            "hmac-sha256" => Ok(Self::HmacSha256),
            "hmac-sha384" => Ok(Self::HmacSha384),
            "hmac-sha512" => Ok(Self::HmacSha512),
            _ => Err(format!("unsupported TSIG algorithm {s:?}; use hmac-sha256, hmac-sha384 or hmac-sha512")),
        }
    }
}

impl fmt::Display for TsigAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TsigKey").field("name", &self.name).field("algorithm", &self.algorithm).finish_non_exhaustive()
    }
}

// === impl Rfc2136 ===

impl Rfc2136 {
    /// Updates `zone` on `server` (`host:port`, resolved at each update) with `key`.
    pub fn new(server: impl Into<String>, zone: &str, key: &TsigKey) -> Result<Self, DnsError> {
        let key_name = fqdn(&key.name).map_err(|e| DnsError::Tsig(e.to_string()))?;
        let signer =
            TSigner::new(key.secret.clone(), key.algorithm.hickory(), key_name, TSIG_FUDGE).map_err(|e| DnsError::Tsig(e.to_string()))?;
        Ok(Self { server: server.into(), zone: fqdn(zone)?, signer, ttl: CHALLENGE_TTL, timeout: UPDATE_TIMEOUT })
    }

    /// Waits `timeout` for each reply instead of [`UPDATE_TIMEOUT`].
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The zone updated.
    pub fn zone(&self) -> &Name {
        &self.zone
    }

    /// The server's current address.
    pub async fn server_addr(&self) -> Result<SocketAddr, DnsError> {
        let resolve = |source| DnsError::Resolve { server: self.server.clone(), source };
        let mut addrs = tokio::net::lookup_host(self.server.as_str()).await.map_err(resolve)?;
        addrs.next().ok_or_else(|| resolve(std::io::Error::other("no address")))
    }

    async fn update(&self, name: &str, value: &str, op: Op) -> Result<(), DnsError> {
        let owner = fqdn(name)?;
        if !self.zone.zone_of(&owner) {
            return Err(DnsError::InvalidName { name: name.to_string(), reason: format!("not in zone {}", self.zone) });
        }
        let server = self.server_addr().await?;
        let exchange = |e: hickory_proto::ProtoError| DnsError::Exchange { server, source: e.into() };
        let exchanged = |source: hickory_client::ClientError| DnsError::Exchange { server, source };
        let stream = UdpClientStream::builder(server, TokioRuntimeProvider::new())
            .with_timeout(Some(self.timeout))
            .with_signer(Some(Arc::new(self.signer.clone())))
            .build();
        let (mut client, background) = Client::connect(stream).await.map_err(exchange)?;
        let background = tokio::spawn(background);
        let record = Record::from_rdata(owner, self.ttl, RData::TXT(TXT::new(vec![value.to_string()])));
        let reply = match op {
            Op::Add => client.append(record, self.zone.clone(), false).await,
            Op::Delete => client.delete_by_rdata(record, self.zone.clone()).await,
        };
        background.abort();
        let reply = reply.map_err(exchanged)?;
        match reply.response_code() {
            ResponseCode::NoError => Ok(()),
            code => Err(DnsError::Refused { server, name: name.to_string(), code: code.to_string() }),
        }
    }
}

impl DnsProvider for Rfc2136 {
    fn present<'a>(&'a self, fqdn: &'a str, value: &'a str) -> DnsFuture<'a> {
        Box::pin(self.update(fqdn, value, Op::Add))
    }

    fn cleanup<'a>(&'a self, fqdn: &'a str, value: &'a str) -> DnsFuture<'a> {
        Box::pin(self.update(fqdn, value, Op::Delete))
    }
}

impl fmt::Debug for Rfc2136 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rfc2136").field("server", &self.server).field("zone", &self.zone).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> TsigKey {
        TsigKey { name: "acme-key".into(), algorithm: TsigAlgorithm::HmacSha256, secret: vec![7; 32] }
    }

    #[test]
    fn algorithms_parse_by_their_server_names() {
        assert_eq!("HMAC-SHA384".parse(), Ok(TsigAlgorithm::HmacSha384));
        assert_eq!("hmac-sha512.".parse(), Ok(TsigAlgorithm::HmacSha512));
        assert!("hmac-md5".parse::<TsigAlgorithm>().is_err());
    }

    #[test]
    fn key_debug_hides_the_secret() {
        assert!(!format!("{:?}", key()).contains("7, 7"));
    }

    #[tokio::test]
    async fn refuses_names_outside_the_zone_without_sending() -> Result<(), DnsError> {
        // Port 9 (discard) on loopback: if a packet were sent, the error would differ.
        let p = Rfc2136::new("127.0.0.1:9", "aim.test", &key())?;
        let err = p.present("_acme-challenge.other.test", "v").await;
        assert!(matches!(err, Err(DnsError::InvalidName { .. })), "{err:?}");
        Ok(())
    }

    #[tokio::test]
    async fn a_server_without_port_is_a_resolve_error() -> Result<(), DnsError> {
        // No port: rejected before any lookup, so no packet leaves the machine.
        let p = Rfc2136::new("127.0.0.1", "aim.test", &key())?;
        let err = p.present("_acme-challenge.aim.test", "v").await;
        assert!(matches!(err, Err(DnsError::Resolve { .. })), "{err:?}");
        Ok(())
    }
}
