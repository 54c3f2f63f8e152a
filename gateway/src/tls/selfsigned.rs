//! A self-signed wildcard certificate for `*.<base>` and `<base>`: the
//! embedded default, so `curl -k https://nlp.localhost:8443/` works with no
//! setup. Generated at start, and again two thirds into its lifetime for a
//! gateway that runs that long (ECDSA P-256, aws-lc-rs); browsers show a
//! warning, which is the honest answer for a certificate nobody vouches for.

use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};

use crate::tls::certkey::{CertBundle, CertError};

/// 90 days, like a public CA's certificate: long enough for any demo
/// session, short enough that nobody comes to rely on it.
pub const SELF_SIGNED_LIFETIME: Duration = Duration::from_secs(90 * 86_400);
/// Valid from an hour ago, so a client whose clock lags does not reject it.
const BACKDATE: Duration = Duration::from_secs(3600);

/// Generates a key and a self-signed certificate for `*.<base>` + `<base>`.
pub fn generate(base: &str) -> Result<CertBundle, CertError> {
    let base = base.trim_end_matches('.').to_ascii_lowercase();
    let mut params = CertificateParams::new(vec![format!("*.{base}"), base.clone()]).map_err(CertError::Generate)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, base.as_str());
    dn.push(DnType::OrganizationName, "wakegate self-signed");
    params.distinguished_name = dn;
    // CA:FALSE: rustls refuses a CA certificate as a server certificate.
    params.is_ca = IsCa::ExplicitNoCa;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let now = SystemTime::now();
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + SELF_SIGNED_LIFETIME).into();
    let key = KeyPair::generate().map_err(CertError::Generate)?;
    let cert = params.self_signed(&key).map_err(CertError::Generate)?;
    Ok(CertBundle { chain_pem: cert.pem(), key_pem: key.serialize_pem() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covers_wildcard_and_base_for_about_ninety_days() -> Result<(), CertError> {
        let b = generate("Localhost.")?;
        let info = b.info()?;
        assert_eq!(info.names, vec!["*.localhost".to_string(), "localhost".to_string()]);
        assert!(info.covers("nlp.localhost"));
        let days = info.lifetime().as_secs() / 86_400;
        assert!((90..=91).contains(&days), "{days} days");
        Ok(())
    }
}
