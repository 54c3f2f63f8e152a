//! Waiting until a challenge value is served before asking the CA to look.
//!
//! The CA queries the zone's authoritative nameservers, possibly any of them,
//! so [`check`] asks each configured one directly (no recursive resolver, no
//! cache) until every one serves the value. Telling the CA too early costs a
//! failed order and counts against rate limits; waiting costs seconds.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_client::client::{Client, ClientHandle};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use hickory_proto::runtime::TokioRuntimeProvider;
use hickory_proto::udp::UdpClientStream;
use tokio::time::Instant;

use crate::tls::dns::{DnsError, fqdn};

/// Half a second between rounds: an update reaches a primary at once and
/// secondaries within a NOTIFY round trip.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// Longest wait for one query's answer.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// Shortest wait for an answer, even when the deadline is nearer.
const MIN_QUERY_TIMEOUT: Duration = Duration::from_millis(200);

/// Resolves once each of `nameservers` serves TXT `value` at `name` (which
/// must lie in `zone`), or fails with [`DnsError::NotPropagated`] naming the
/// laggards after `timeout`. With no nameservers there is nothing to check.
pub async fn check(zone: &str, name: &str, value: &str, nameservers: &[SocketAddr], timeout: Duration) -> Result<(), DnsError> {
    let (zone_name, owner) = (fqdn(zone)?, fqdn(name)?);
    if !zone_name.zone_of(&owner) {
        return Err(DnsError::InvalidName { name: name.to_string(), reason: format!("not in zone {zone_name}") });
    }
    let deadline = Instant::now() + timeout;
    let mut pending = nameservers.to_vec();
    loop {
        let mut still = Vec::with_capacity(pending.len());
        let wait = QUERY_TIMEOUT.min(deadline.saturating_duration_since(Instant::now())).max(MIN_QUERY_TIMEOUT);
        for ns in pending {
            match query_txt(ns, &owner, wait).await {
                Ok(values) if values.iter().any(|v| v == value) => {}
                Ok(_) => still.push(ns),
                Err(e) => {
                    tracing::debug!(%ns, %owner, "propagation query failed: {e}");
                    still.push(ns);
                }
            }
        }
        pending = still;
        if pending.is_empty() {
            return Ok(());
        }
        if Instant::now() + CHECK_INTERVAL > deadline {
            return Err(DnsError::NotPropagated { name: name.to_string(), value: value.to_string(), pending, after: timeout });
        }
        tokio::time::sleep(CHECK_INTERVAL).await;
    }
}

/// The TXT values `server` serves at `name` (each value's strings joined).
pub async fn query_txt(server: SocketAddr, name: &Name, timeout: Duration) -> Result<Vec<String>, DnsError> {
    let exchange = |e: hickory_proto::ProtoError| DnsError::Exchange { server, source: e.into() };
    let exchanged = |source: hickory_client::ClientError| DnsError::Exchange { server, source };
    let stream = UdpClientStream::builder(server, TokioRuntimeProvider::new()).with_timeout(Some(timeout)).build();
    let (mut client, background) = Client::connect(stream).await.map_err(exchange)?;
    let background = tokio::spawn(background);
    let reply = client.query(name.clone(), DNSClass::IN, RecordType::TXT).await;
    background.abort();
    let reply = reply.map_err(exchanged)?;
    Ok(reply
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::TXT(txt) => Some(txt.txt_data().iter().map(|s| String::from_utf8_lossy(s)).collect::<String>()),
            _ => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn nothing_to_check_without_nameservers() -> Result<(), DnsError> {
        check("aim.test", "_acme-challenge.aim.test", "v", &[], Duration::ZERO).await
    }

    #[tokio::test]
    async fn names_outside_the_zone_are_refused() {
        let r = check("aim.test", "_acme-challenge.other.test", "v", &[], Duration::ZERO).await;
        assert!(matches!(r, Err(DnsError::InvalidName { .. })));
    }

    #[tokio::test]
    async fn a_silent_nameserver_times_out_by_name() -> Result<(), Box<dyn std::error::Error>> {
        // A bound UDP socket that never answers.
        let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let ns = silent.local_addr()?;
        let started = std::time::Instant::now();
        let r = check("aim.test", "_acme-challenge.aim.test", "v", &[ns], Duration::from_millis(300)).await;
        match r {
            Err(DnsError::NotPropagated { pending, .. }) => assert_eq!(pending, vec![ns]),
            other => panic!("expected NotPropagated, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(4));
        Ok(())
    }
}
