//! Metrics of the certificate side: when the served certificate expires, how
//! ACME orders end, when one last succeeded, and why handshakes fail.
//! [`TlsMetrics::register`] adds the families to the caller's registry (the
//! gateway's, prefixed `wakegate_`); handles are cheap clones of atomics.

use std::io;
use std::sync::atomic::AtomicU64;
use std::time::SystemTime;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::tls::certkey::{CertInfo, unix_secs};

/// `certificate_expiry_timestamp_seconds{name}` (gauge).
pub const CERT_EXPIRY: &str = "certificate_expiry_timestamp_seconds";
/// `certificate_not_before_timestamp_seconds{name}` (gauge).
pub const CERT_NOT_BEFORE: &str = "certificate_not_before_timestamp_seconds";
/// `certificate_renewal_timestamp_seconds{name}` (gauge): when the renewer
/// means to renew it (ACME only).
pub const CERT_RENEWAL: &str = "certificate_renewal_timestamp_seconds";
/// `acme_orders_total{outcome}` (counter; the registry adds `_total`).
pub const ACME_ORDERS: &str = "acme_orders";
/// `acme_last_success_timestamp_seconds` (gauge).
pub const ACME_LAST_SUCCESS: &str = "acme_last_success_timestamp_seconds";
/// `tls_handshake_errors_total{reason}` (counter; the registry adds `_total`).
pub const HANDSHAKE_ERRORS: &str = "tls_handshake_errors";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NameLabel {
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Handles to the TLS metric families.
#[derive(Clone, Debug, Default)]
pub struct TlsMetrics {
    expiry: Family<NameLabel, FloatGauge>,
    not_before: Family<NameLabel, FloatGauge>,
    renewal: Family<NameLabel, FloatGauge>,
    orders: Family<OutcomeLabel, Counter>,
    last_success: FloatGauge,
    handshake_errors: Family<ReasonLabel, Counter>,
}

// === impl TlsMetrics ===

impl TlsMetrics {
    /// Registers the families in `registry` (names without the prefix the
    /// registry adds).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(CERT_EXPIRY, "Unix time at which the served certificate expires, by certificate name", m.expiry.clone());
        registry.register(
            CERT_NOT_BEFORE,
            "Unix time from which the served certificate is valid, by certificate name",
            m.not_before.clone(),
        );
        registry.register(
            CERT_RENEWAL,
            "Unix time at which the ACME renewer means to renew the served certificate (past it: renewal overdue), by certificate name",
            m.renewal.clone(),
        );
        registry.register(
            ACME_ORDERS,
            "ACME certificate orders, by outcome (success, dns, rejected, network, store, locked, internal)",
            m.orders.clone(),
        );
        registry.register(ACME_LAST_SUCCESS, "Unix time of the last ACME order that yielded a certificate", m.last_success.clone());
        registry.register(HANDSHAKE_ERRORS, "Failed TLS handshakes, by reason", m.handshake_errors.clone());
        m
    }

    /// Records the certificate now served under `name` (its validity).
    pub fn certificate(&self, name: &str, info: &CertInfo) {
        let label = NameLabel { name: name.to_string() };
        self.expiry.get_or_create(&label).set(info.not_after_unix());
        self.not_before.get_or_create(&label).set(unix_secs(info.not_before));
    }

    /// Records when the certificate served under `name` is to be renewed.
    pub fn renewal(&self, name: &str, at: SystemTime) {
        self.renewal.get_or_create(&NameLabel { name: name.to_string() }).set(unix_secs(at));
    }

    /// Makes every order outcome's series at 0 (an ACME renewer starts): an
    /// alert's `increase()` then sees the first of each.
    pub fn orders_from_zero(&self) {
        for outcome in crate::tls::acme::ORDER_OUTCOMES {
            let _ = self.orders.get_or_create(&OutcomeLabel { outcome });
        }
    }

    /// Drops the renewal plan for `name` (the renewer stopped).
    pub fn forget_renewal(&self, name: &str) {
        self.renewal.remove(&NameLabel { name: name.to_string() });
    }

    /// Counts an order that ended with `outcome` (`success` or an error class).
    pub fn order(&self, outcome: &'static str) {
        self.orders.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// Counts a successful order completed at `at`.
    pub fn order_succeeded(&self, at: SystemTime) {
        self.order("success");
        self.last_success.set(unix_secs(at));
    }

    /// Counts a failed handshake, by [`handshake_error_reason`].
    pub fn handshake_error(&self, err: &io::Error) {
        self.handshake_errors.get_or_create(&ReasonLabel { reason: handshake_error_reason(err) }).inc();
    }

    /// The count of orders with `outcome` so far (for tests and status pages).
    pub fn orders(&self, outcome: &'static str) -> u64 {
        self.orders.get_or_create(&OutcomeLabel { outcome }).get()
    }
}

/// A bounded label for a failed `TlsAcceptor::accept`: `eof` (the client
/// left), `timeout`, `alert` (the client refused us, e.g. an untrusted
/// self-signed certificate), `no_certificate` (none loaded yet), `alpn`,
/// `incompatible` (no shared version or cipher suite), `protocol`
/// (malformed or misbehaving client), `io`, `other`.
pub fn handshake_error_reason(err: &io::Error) -> &'static str {
    match err.kind() {
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => return "eof",
        io::ErrorKind::TimedOut => return "timeout",
        _ => {}
    }
    let Some(tls) = err.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) else {
        return "io";
    };
    match tls {
        rustls::Error::AlertReceived(_) => "alert",
        rustls::Error::General(m) if m.contains("no server certificate") => "no_certificate",
        rustls::Error::NoApplicationProtocol => "alpn",
        rustls::Error::PeerIncompatible(_) => "incompatible",
        rustls::Error::InvalidMessage(_) | rustls::Error::PeerMisbehaved(_) | rustls::Error::InappropriateMessage { .. } => "protocol",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::tls::selfsigned;

    #[test]
    fn exposes_prefixed_names() -> Result<(), Box<dyn std::error::Error>> {
        let mut registry = Registry::with_prefix("wakegate");
        let m = TlsMetrics::register(&mut registry);
        let info = selfsigned::generate("aim.test")?.info()?;
        m.certificate("aim.test", &info);
        m.orders_from_zero();
        m.renewal("aim.test", UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000));
        m.order("dns");
        m.order_succeeded(UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000));
        m.handshake_error(&io::Error::new(io::ErrorKind::InvalidData, rustls::Error::NoApplicationProtocol));
        m.handshake_error(&io::Error::from(io::ErrorKind::UnexpectedEof));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)?;
        let expiry = format!("wakegate_certificate_expiry_timestamp_seconds{{name=\"aim.test\"}} {}", info.not_after_unix());
        assert!(text.contains(&expiry), "{text}");
        assert!(text.contains("wakegate_acme_orders_total{outcome=\"dns\"} 1"), "{text}");
        assert!(text.contains("wakegate_acme_orders_total{outcome=\"success\"} 1"), "{text}");
        assert!(text.contains("wakegate_acme_last_success_timestamp_seconds 1700000000"), "{text}");
        assert!(text.contains("wakegate_tls_handshake_errors_total{reason=\"alpn\"} 1"), "{text}");
        assert!(text.contains("wakegate_tls_handshake_errors_total{reason=\"eof\"} 1"), "{text}");
        assert_eq!(m.orders("dns"), 1);
        // What the alerts read: the validity's start, the plan, the outcomes at 0.
        let since = info.not_before.duration_since(UNIX_EPOCH)?.as_secs_f64();
        assert!(text.contains(&format!("wakegate_certificate_not_before_timestamp_seconds{{name=\"aim.test\"}} {since}")), "{text}");
        assert!(text.contains("wakegate_certificate_renewal_timestamp_seconds{name=\"aim.test\"} 1800000000"), "{text}");
        assert!(text.contains("wakegate_acme_orders_total{outcome=\"network\"} 0"), "{text}");
        m.forget_renewal("aim.test");
        text.clear();
        prometheus_client::encoding::text::encode(&mut text, &registry)?;
        assert!(!text.contains("wakegate_certificate_renewal_timestamp_seconds{"), "{text}");
        Ok(())
    }
}
