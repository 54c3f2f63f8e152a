//! A certificate chain and its key as PEM text ([`CertBundle`]: what stores
//! and files hold), turned into what rustls serves ([`CertifiedKey`]) and
//! into what the renewal schedule reads ([`CertInfo`]: names and validity).

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::extensions::GeneralName;

/// Why a certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The chain text holds no `CERTIFICATE` PEM block.
    #[error("no CERTIFICATE block in the certificate PEM")]
    NoCertificate,
    /// A PEM block could not be decoded.
    #[error("malformed PEM: {0}")]
    Pem(#[source] rustls_pki_types::pem::Error),
    /// The key text holds no private key PEM block (PKCS#8, PKCS#1 or SEC1).
    #[error("no private key block in the key PEM")]
    NoKey,
    /// The key is of a type the crypto provider cannot sign with.
    #[error("unusable private key: {0}")]
    Key(#[source] rustls::Error),
    /// The private key does not belong to the leaf certificate.
    #[error("the private key does not match the certificate")]
    KeyMismatch,
    /// The leaf certificate is not valid X.509 DER.
    #[error("unparsable certificate: {0}")]
    Parse(String),
    /// Generating a key or certificate failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[source] rcgen::Error),
}

/// A certificate chain (leaf first) and its private key, both as PEM text.
#[derive(Clone, PartialEq, Eq)]
pub struct CertBundle {
    /// Leaf, then intermediates; the root is not included.
    pub chain_pem: String,
    /// The leaf's private key.
    pub key_pem: String,
}

/// The facts about a leaf certificate that serving and renewal need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// DNS names of the subjectAltName extension, lower case (`*.aim.test`).
    pub names: Vec<String>,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

/// The crypto provider every TLS object of the gateway uses: aws-lc-rs,
/// passed explicitly so no process-wide default is needed.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider())).clone()
}

// === impl CertBundle ===

impl CertBundle {
    /// The DER certificates of the chain, leaf first.
    pub fn chain_der(&self) -> Result<Vec<CertificateDer<'static>>, CertError> {
        let chain = CertificateDer::pem_slice_iter(self.chain_pem.as_bytes()).collect::<Result<Vec<_>, _>>().map_err(CertError::Pem)?;
        if chain.is_empty() {
            return Err(CertError::NoCertificate);
        }
        Ok(chain)
    }

    /// What rustls serves; checks that the key belongs to the leaf.
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>, CertError> {
        let chain = self.chain_der()?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| match e {
            rustls_pki_types::pem::Error::NoItemsFound => CertError::NoKey,
            e => CertError::Pem(e),
        })?;
        let signing = provider().key_provider.load_private_key(key).map_err(CertError::Key)?;
        let ck = CertifiedKey::new(chain, signing);
        match ck.keys_match() {
            Ok(()) => Ok(Arc::new(ck)),
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(Arc::new(ck)),
            Err(rustls::Error::InconsistentKeys(_)) => Err(CertError::KeyMismatch),
            Err(e) => Err(CertError::Parse(e.to_string())),
        }
    }

    /// Names and validity of the leaf.
    pub fn info(&self) -> Result<CertInfo, CertError> {
        let chain = self.chain_der()?;
        CertInfo::from_der(&chain[0])
    }
}

impl fmt::Debug for CertBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertBundle")
            .field("chain_pem", &format_args!("{} bytes", self.chain_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

// === impl CertInfo ===

impl CertInfo {
    /// Reads a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, CertError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| CertError::Parse(e.to_string()))?;
        let validity = cert.validity();
        let names = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                    _ => None,
                })
                .collect(),
            Ok(None) => Vec::new(),
            Err(e) => return Err(CertError::Parse(e.to_string())),
        };
        Ok(Self {
            names,
            not_before: unix_to_system(validity.not_before.timestamp()),
            not_after: unix_to_system(validity.not_after.timestamp()),
        })
    }

    /// Whether the certificate is valid for `host` (exact name, or a
    /// `*.` name covering exactly one more label). `host` is compared
    /// case-insensitively.
    pub fn covers(&self, host: &str) -> bool {
        self.names.iter().any(|n| name_matches(n, host))
    }

    /// The whole validity period.
    pub fn lifetime(&self) -> Duration {
        self.not_after.duration_since(self.not_before).unwrap_or_default()
    }

    /// `not_after` as Unix seconds (for the expiry gauge).
    pub fn not_after_unix(&self) -> f64 {
        unix_secs(self.not_after)
    }
}

/// `t` as Unix seconds, negative before 1970 (for gauges).
pub fn unix_secs(t: SystemTime) -> f64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// Whether certificate name `pattern` (`aim.test` or `*.aim.test`) covers `host`.
pub fn name_matches(pattern: &str, host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    if let Some(parent) = pattern.strip_prefix("*.") {
        match host.split_once('.') {
            Some((label, rest)) => !label.is_empty() && rest.eq_ignore_ascii_case(parent),
            None => false,
        }
    } else {
        pattern.eq_ignore_ascii_case(host)
    }
}

fn unix_to_system(secs: i64) -> SystemTime {
    if secs >= 0 { UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs()) } else { UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::selfsigned;

    #[test]
    fn wildcard_matches_one_label() {
        assert!(name_matches("*.aim.test", "nlp.aim.test"));
        assert!(name_matches("*.aim.test", "NLP.Aim.Test."));
        assert!(!name_matches("*.aim.test", "aim.test"));
        assert!(!name_matches("*.aim.test", "a.b.aim.test"));
        assert!(!name_matches("*.aim.test", ".aim.test"));
        assert!(name_matches("aim.test", "aim.test"));
        assert!(!name_matches("aim.test", "xaim.test"));
    }

    #[test]
    fn bundle_round_trip() -> Result<(), CertError> {
        let b = selfsigned::generate("aim.test")?;
        let info = b.info()?;
        assert!(info.covers("nlp.aim.test") && info.covers("aim.test"));
        assert!(!info.covers("other.test"));
        assert!(info.not_before < SystemTime::now() && SystemTime::now() < info.not_after);
        b.certified_key()?;
        Ok(())
    }

    #[test]
    fn rejects_mismatched_key_and_garbage() -> Result<(), CertError> {
        let a = selfsigned::generate("aim.test")?;
        let b = selfsigned::generate("aim.test")?;
        let mixed = CertBundle { chain_pem: a.chain_pem.clone(), key_pem: b.key_pem };
        assert!(matches!(mixed.certified_key(), Err(CertError::KeyMismatch)));
        let empty = CertBundle { chain_pem: "nothing".into(), key_pem: a.key_pem.clone() };
        assert!(matches!(empty.certified_key(), Err(CertError::NoCertificate)));
        let nokey = CertBundle { chain_pem: a.chain_pem, key_pem: String::new() };
        assert!(matches!(nokey.certified_key(), Err(CertError::NoKey)));
        Ok(())
    }
}
