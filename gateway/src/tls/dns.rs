//! Publishing DNS-01 challenge records: the [`DnsProvider`] interface and
//! the error every provider reports. Implementations: [`Rfc2136`] (dynamic
//! updates signed with TSIG, which BIND, Knot, PowerDNS and most managed
//! DNS front-ends accept) and [`Exec`] (an operator command, for any API).
//!
//! [`Rfc2136`]: crate::tls::rfc2136::Rfc2136
//! [`Exec`]: crate::tls::exec::Exec

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

/// A boxed `Send` future, the return type of a provider's methods.
pub type DnsFuture<'a> = Pin<Box<dyn Future<Output = Result<(), DnsError>> + Send + 'a>>;

/// Adds and removes TXT values. Both calls act on one value only: the
/// wildcard and the base name publish two values at the same owner
/// (`_acme-challenge.<base>`), which must coexist.
pub trait DnsProvider: Send + Sync {
    /// Adds TXT `value` at `fqdn` (no trailing dot needed), keeping other values.
    fn present<'a>(&'a self, fqdn: &'a str, value: &'a str) -> DnsFuture<'a>;
    /// Removes TXT `value` at `fqdn`; removing an absent value succeeds.
    fn cleanup<'a>(&'a self, fqdn: &'a str, value: &'a str) -> DnsFuture<'a>;
}

/// Why a DNS step failed.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// A name is not a valid domain name, or lies outside the zone.
    #[error("invalid DNS name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The TSIG key cannot be used (unsupported algorithm, bad key name).
    #[error("unusable TSIG key: {0}")]
    Tsig(String),
    /// The DNS server's address did not resolve.
    #[error("cannot resolve DNS server {server}: {source}")]
    Resolve {
        /// `host:port` as configured.
        server: String,
        /// The resolver's error.
        #[source]
        source: std::io::Error,
    },
    /// No valid answer came back: a timeout, a network error, or a reply
    /// that failed TSIG verification (how hickory reports a server that
    /// refused our signature, e.g. a wrong secret).
    #[error("DNS exchange with {server} failed: {source}")]
    Exchange {
        /// The server.
        server: SocketAddr,
        /// hickory's error.
        #[source]
        source: hickory_client::ClientError,
    },
    /// The server answered, and refused (`REFUSED`, `NOTAUTH`, `NOTZONE`, ...).
    #[error("DNS server {server} answered {code} to the update of {name}")]
    Refused {
        /// The server.
        server: SocketAddr,
        /// The owner name updated.
        name: String,
        /// The response code.
        code: String,
    },
    /// The exec provider's command could not be started.
    #[error("cannot run {command}: {source}")]
    ExecSpawn {
        /// The command.
        command: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The exec provider's command exited unsuccessfully.
    #[error("{command} {action} failed ({status}): {stderr}")]
    ExecFailed {
        /// The command.
        command: PathBuf,
        /// `present` or `cleanup`.
        action: &'static str,
        /// How it exited.
        status: String,
        /// The end of its standard error.
        stderr: String,
    },
    /// The exec provider's command ran too long and was killed.
    #[error("{command} {action} did not finish within {after:?}")]
    ExecTimeout {
        /// The command.
        command: PathBuf,
        /// `present` or `cleanup`.
        action: &'static str,
        /// The limit.
        after: Duration,
    },
    /// Not every authoritative nameserver served the value in time.
    #[error("TXT {value:?} at {name} not served by {pending:?} after {after:?}")]
    NotPropagated {
        /// The owner name.
        name: String,
        /// The value looked for.
        value: String,
        /// The nameservers that did not serve it.
        pending: Vec<SocketAddr>,
        /// How long we looked.
        after: Duration,
    },
}

/// Parses a domain name given without or with a trailing dot into an FQDN.
pub fn fqdn(name: &str) -> Result<hickory_proto::rr::Name, DnsError> {
    let invalid = |reason: String| DnsError::InvalidName { name: name.to_string(), reason };
    let mut n = hickory_proto::rr::Name::from_ascii(name).map_err(|e| invalid(e.to_string()))?;
    if n.num_labels() == 0 {
        return Err(invalid("empty name".into()));
    }
    n.set_fqdn(true);
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_fqdns() -> Result<(), DnsError> {
        assert_eq!(fqdn("_acme-challenge.aim.test")?.to_string(), "_acme-challenge.aim.test.");
        assert_eq!(fqdn("aim.test.")?.to_string(), "aim.test.");
        assert!(fqdn("").is_err());
        assert!(fqdn("a..b").is_err());
        Ok(())
    }
}
