//! Obtaining the wildcard certificate from an ACME CA over DNS-01.
//!
//! One order covers `*.<base>` and `<base>`. Both authorizations publish
//! their TXT value at the same owner, `_acme-challenge.<base>`, so the two
//! values must coexist (the provider appends). The flow, per RFC 8555:
//!
//! 1. take the store's ordering lock (one replica orders at a time);
//! 2. load the account from the store, or create it (with External Account
//!    Binding if configured) and save its credentials, so restarts reuse it;
//! 3. new order → publish one TXT value per pending authorization → wait
//!    until every authoritative nameserver serves them → `set_ready`;
//! 4. poll until ready → finalize with a fresh key → poll the certificate;
//! 5. save chain + key to the store;
//! 6. always (on failure too) remove exactly the values published, and
//!    release the lock.
//!
//! Failures are classified ([`AcmeError::outcome`]) so metrics and logs say
//! whether DNS, the CA, or the network is to blame.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, CertificateIdentifier, ChallengeType, ExternalAccountKey, Identifier, NewAccount,
    NewOrder, Order, OrderStatus, RetryPolicy,
};
use rustls_pki_types::CertificateDer;
use tokio::sync::{Mutex, watch};

use crate::tls::certkey::{CertBundle, CertError, CertInfo};
use crate::tls::dns::{DnsError, DnsProvider};
use crate::tls::propagation;
use crate::tls::renew::AriWindow;
use crate::tls::store::{CertStore, LockState, StoreError};

/// 2 minutes for the CA to validate and issue: Let's Encrypt takes seconds.
pub const DEFAULT_ORDER_TIMEOUT: Duration = Duration::from_secs(120);
/// 2 minutes for every nameserver to serve the values: updates reach a
/// primary at once, secondaries within a NOTIFY round.
pub const DEFAULT_PROPAGATION_TIMEOUT: Duration = Duration::from_secs(120);
/// 15 minutes: far longer than an order takes, so a lock this old belongs
/// to a replica that died mid-order.
pub const DEFAULT_LOCK_STALE_AFTER: Duration = Duration::from_secs(15 * 60);

/// External Account Binding credentials (RFC 8555 §7.3.4), as the CA issues them.
#[derive(Clone, PartialEq, Eq)]
pub struct Eab {
    /// The key identifier.
    pub kid: String,
    /// The HMAC key, decoded from base64url.
    pub hmac_key: Vec<u8>,
}

/// Everything the ACME flow needs besides its store and DNS provider.
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// The CA's directory URL.
    pub directory: String,
    /// Account contacts (`mailto:ops@example.com`); may be empty.
    pub contact: Vec<String>,
    /// PEM file with the root that signs the CA's HTTPS certificate (for a
    /// test CA like pebble); `None` trusts the platform's usual roots.
    pub ca_file: Option<PathBuf>,
    /// External Account Binding, for CAs that require it.
    pub eab: Option<Eab>,
    /// The base domain: the certificate is for `*.<base>` and `<base>`.
    pub base: String,
    /// The DNS zone holding `_acme-challenge.<base>` (often `<base>` itself).
    pub zone: String,
    /// The zone's authoritative nameservers, asked directly before the CA is
    /// told to look; empty skips the check (then rely on `propagation_delay`).
    pub nameservers: Vec<SocketAddr>,
    /// Longest wait for the nameservers to serve the values.
    pub propagation_timeout: Duration,
    /// Fixed pause after publishing, before checking (for slow providers).
    pub propagation_delay: Duration,
    /// Longest wait for the CA to validate, and again to issue.
    pub order_timeout: Duration,
    /// Age after which another holder's ordering lock is taken over.
    pub lock_stale_after: Duration,
}

/// A certificate just issued (and saved, unless `unsaved` says why not).
#[derive(Debug, Clone)]
pub struct Issued {
    /// Chain and key, as saved in the store.
    pub bundle: CertBundle,
    /// Names and validity of the leaf.
    pub info: CertInfo,
    /// The account's URL at the CA (stable across orders and restarts).
    pub account_url: String,
    /// The order's URL.
    pub order_url: String,
    /// Why the certificate could not be saved, if it could not: it is
    /// served all the same and saved again later, since ordering another
    /// would spend the CA's duplicate-certificate limit (Let's Encrypt: 5 a week).
    pub unsaved: Option<String>,
}

/// Why an order did not yield a certificate.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// Publishing, checking or removing a challenge record failed.
    #[error("DNS: {0}")]
    Dns(#[from] DnsError),
    /// The CA refused: an error document, an invalid authorization or order,
    /// or an answer the client cannot use.
    #[error("the CA refused: {detail}")]
    Rejected {
        /// The CA's explanation.
        detail: String,
        /// The client's error, when there is one.
        #[source]
        source: Option<instant_acme::Error>,
    },
    /// The CA could not be reached, or did not finish in time.
    #[error("cannot reach the CA: {0}")]
    Network(#[source] instant_acme::Error),
    /// The store could not be read or written.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Another replica holds the ordering lock.
    #[error("another replica ({holder}) is ordering")]
    Locked {
        /// Who holds it.
        holder: String,
    },
    /// The issued certificate or stored account is unusable.
    #[error("unusable certificate or account: {0}")]
    Internal(String),
    /// The renewer was told to stop (shutdown, or the ACME Lease lost)
    /// during the order: it was abandoned, its records removed.
    #[error("abandoned: the renewer was told to stop")]
    Stopped,
}

/// Runs ACME orders for one base domain.
pub struct Acme {
    config: AcmeConfig,
    store: Arc<dyn CertStore>,
    dns: Arc<dyn DnsProvider>,
    holder: String,
    account: Mutex<Option<Account>>,
    /// Challenge records whose removal failed, removed again at the next
    /// [`Acme::remove_leftovers`].
    leftovers: std::sync::Mutex<Vec<(String, String)>>,
}

/// Every outcome an order is counted under: `success` and each
/// [`AcmeError::outcome`].
pub const ORDER_OUTCOMES: [&str; 7] = ["success", "dns", "rejected", "network", "store", "locked", "internal"];

// === impl AcmeError ===

impl AcmeError {
    /// The `outcome` label of `acme_orders_total`: `dns`, `rejected`,
    /// `network`, `store`, `locked` or `internal` (`stopped` is not counted).
    pub fn outcome(&self) -> &'static str {
        // Every value here but `stopped` is in ORDER_OUTCOMES.
        match self {
            Self::Dns(_) => "dns",
            Self::Rejected { .. } => "rejected",
            Self::Network(_) => "network",
            Self::Store(_) => "store",
            Self::Locked { .. } => "locked",
            Self::Internal(_) => "internal",
            Self::Stopped => "stopped",
        }
    }

    fn rejected(detail: impl Into<String>) -> Self {
        Self::Rejected { detail: detail.into(), source: None }
    }
}

impl From<instant_acme::Error> for AcmeError {
    fn from(e: instant_acme::Error) -> Self {
        use instant_acme::Error as E;
        match e {
            E::Api(ref p) => Self::Rejected { detail: p.to_string(), source: Some(e) },
            E::Hyper(_) | E::Http(_) | E::Other(_) | E::Timeout(_) => Self::Network(e),
            e => Self::Rejected { detail: e.to_string(), source: Some(e) },
        }
    }
}

impl From<CertError> for AcmeError {
    fn from(e: CertError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl fmt::Debug for Eab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Eab").field("kid", &self.kid).finish_non_exhaustive()
    }
}

// === impl Acme ===

impl Acme {
    /// An ACME client; nothing is contacted until the first call.
    pub fn new(config: AcmeConfig, store: Arc<dyn CertStore>, dns: Arc<dyn DnsProvider>) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "wakegate".into());
        let holder = format!("{host}/{}/{:08x}", std::process::id(), fastrand::u32(..));
        Self { config, store, dns, holder, account: Mutex::new(None), leftovers: std::sync::Mutex::default() }
    }

    /// The configuration.
    pub fn config(&self) -> &AcmeConfig {
        &self.config
    }

    /// The store (certificate, account, lock).
    pub fn store(&self) -> &Arc<dyn CertStore> {
        &self.store
    }

    /// Obtains a certificate under the ordering lock and saves it. `previous`
    /// is the certificate being renewed, named to the CA (ARI `replaces`)
    /// when it offers renewal information. Once `stop` turns true the order
    /// is abandoned ([`AcmeError::Stopped`]), and the challenge records
    /// published so far are removed and the lock released first.
    pub async fn obtain(&self, previous: Option<&CertBundle>, stop: Option<watch::Receiver<bool>>) -> Result<Issued, AcmeError> {
        match self.store.try_lock(&self.holder, self.config.lock_stale_after).await? {
            LockState::Acquired => {}
            LockState::HeldBy(holder) => return Err(AcmeError::Locked { holder }),
        }
        let result = self.order_and_save(previous, stop).await;
        if let Err(e) = self.store.unlock(&self.holder).await {
            tracing::warn!("cannot release the ACME lock: {e}");
        }
        result
    }

    /// Removes the challenge records an earlier order could not (the DNS
    /// server was unreachable, say); those that still fail stay for the next
    /// call.
    pub async fn remove_leftovers(&self) {
        let pending = std::mem::take(&mut *self.leftovers.lock().unwrap_or_else(|p| p.into_inner()));
        let mut failed = Vec::new();
        for (owner, value) in pending {
            match self.dns.cleanup(&owner, &value).await {
                Ok(()) => tracing::info!(%owner, "removed a challenge record left by an earlier order"),
                Err(e) => {
                    tracing::warn!(%owner, "still cannot remove a challenge record: {e}");
                    failed.push((owner, value));
                }
            }
        }
        self.leftovers.lock().unwrap_or_else(|p| p.into_inner()).extend(failed);
    }

    /// The CA's suggested renewal window for `bundle` (RFC 9773) and when to
    /// ask again; `None` when the CA offers no renewal information or the
    /// certificate is not one of its own.
    pub async fn renewal_window(&self, bundle: &CertBundle) -> Result<Option<(AriWindow, Duration)>, AcmeError> {
        let Some(id) = cert_id(bundle) else { return Ok(None) };
        let account = self.account().await?;
        match account.renewal_info(&id).await {
            Ok((info, retry_after)) => {
                let window = AriWindow { start: info.suggested_window.start.into(), end: info.suggested_window.end.into() };
                Ok(Some((window, retry_after)))
            }
            Err(instant_acme::Error::Unsupported(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The account, from memory, the store, or created at the CA (and saved).
    pub async fn account(&self) -> Result<Account, AcmeError> {
        let mut slot = self.account.lock().await;
        if let Some(account) = slot.as_ref() {
            return Ok(account.clone());
        }
        let account = match self.stored_credentials().await? {
            Some(credentials) => self.builder()?.from_credentials(credentials).await?,
            None => self.create_account().await?,
        };
        tracing::info!(account = account.id(), directory = %self.config.directory, "ACME account ready");
        *slot = Some(account.clone());
        Ok(account)
    }

    async fn stored_credentials(&self) -> Result<Option<AccountCredentials>, AcmeError> {
        let Some(json) = self.store.load_account().await? else { return Ok(None) };
        let value: serde_json::Value = serde_json::from_str(&json).map_err(|e| AcmeError::Internal(format!("stored ACME account: {e}")))?;
        if value.get("directory").and_then(|d| d.as_str()) != Some(self.config.directory.as_str()) {
            tracing::warn!(directory = %self.config.directory, "the stored ACME account belongs to another CA; creating a new one");
            return Ok(None);
        }
        serde_json::from_value(value).map(Some).map_err(|e| AcmeError::Internal(format!("stored ACME account: {e}")))
    }

    async fn create_account(&self) -> Result<Account, AcmeError> {
        let contact: Vec<&str> = self.config.contact.iter().map(String::as_str).collect();
        let new = NewAccount { contact: &contact, terms_of_service_agreed: true, only_return_existing: false };
        let eab = self.config.eab.as_ref().map(|e| ExternalAccountKey::new(e.kid.clone(), &e.hmac_key));
        let (account, credentials) = self.builder()?.create(&new, self.config.directory.clone(), eab.as_ref()).await?;
        let json = serde_json::to_string(&credentials).map_err(|e| AcmeError::Internal(e.to_string()))?;
        self.store.save_account(&json).await?;
        tracing::info!(account = account.id(), "created an ACME account");
        Ok(account)
    }

    fn builder(&self) -> Result<instant_acme::AccountBuilder, AcmeError> {
        let built = match &self.config.ca_file {
            Some(path) => Account::builder_with_root(path),
            None => Account::builder(),
        };
        built.map_err(|e| AcmeError::Internal(format!("ACME HTTP client: {e}")))
    }

    async fn order_and_save(&self, previous: Option<&CertBundle>, stop: Option<watch::Receiver<bool>>) -> Result<Issued, AcmeError> {
        let account = self.account().await?;
        let base = &self.config.base;
        let identifiers = [Identifier::Dns(format!("*.{base}")), Identifier::Dns(base.clone())];
        let replaces = previous.and_then(cert_id);
        let mut order = match replaces {
            Some(id) => match account.new_order(&NewOrder::new(&identifiers).replaces(id)).await {
                Ok(order) => order,
                // The CA has no ARI, or does not know the old certificate: order afresh.
                Err(e) => {
                    tracing::debug!("order with `replaces` refused ({e}); ordering without");
                    account.new_order(&NewOrder::new(&identifiers)).await?
                }
            },
            None => account.new_order(&NewOrder::new(&identifiers)).await?,
        };
        let order_url = order.url().to_string();
        tracing::info!(order = %order_url, "ACME order placed for *.{base} and {base}");

        let mut published = Vec::new();
        let outcome = match stop {
            // Dropped mid-way, the validation leaves `published` to the cleanup below.
            Some(mut stop) => tokio::select! {
                biased;
                () = crate::server::stopped(&mut stop) => Err(AcmeError::Stopped),
                outcome = self.validate_and_issue(&mut order, &mut published) => outcome,
            },
            None => self.validate_and_issue(&mut order, &mut published).await,
        };
        for (owner, value) in published {
            if let Err(e) = self.dns.cleanup(&owner, &value).await {
                tracing::warn!(%owner, "cannot remove a challenge record: {e}; trying again at the next pass");
                self.leftovers.lock().unwrap_or_else(|p| p.into_inner()).push((owner, value));
            }
        }
        let (chain_pem, key_pem) = outcome?;

        let bundle = CertBundle { chain_pem, key_pem };
        bundle.certified_key()?;
        let info = bundle.info()?;
        if !(info.names.contains(base) && info.names.contains(&format!("*.{base}"))) {
            return Err(AcmeError::rejected(format!("issued certificate names {:?}, not *.{base} and {base}", info.names)));
        }
        let unsaved = self.store.save_cert(&bundle).await.err().map(|e| e.to_string());
        Ok(Issued { bundle, info, account_url: account.id().to_string(), order_url, unsaved })
    }

    /// Publishes, checks, validates, finalizes. Every value published is in
    /// `published` (pushed before the update is sent) for the caller to remove.
    async fn validate_and_issue(&self, order: &mut Order, published: &mut Vec<(String, String)>) -> Result<(String, String), AcmeError> {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                status => return Err(AcmeError::rejected(format!("authorization is {status:?}"))),
            }
            let challenge =
                authz.challenge(ChallengeType::Dns01).ok_or_else(|| AcmeError::rejected("the CA offers no dns-01 challenge"))?;
            let Identifier::Dns(domain) = challenge.identifier().identifier else {
                return Err(AcmeError::rejected("authorization for a non-DNS identifier"));
            };
            let owner = format!("_acme-challenge.{domain}");
            let value = challenge.key_authorization().dns_value();
            published.push((owner.clone(), value.clone()));
            self.dns.present(&owner, &value).await?;
        }

        if !published.is_empty() {
            tokio::time::sleep(self.config.propagation_delay).await;
            let c = &self.config;
            for (owner, value) in published.iter() {
                propagation::check(&c.zone, owner, value, &c.nameservers, c.propagation_timeout).await?;
            }
        }

        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz?;
            if authz.status != AuthorizationStatus::Pending {
                continue;
            }
            if let Some(mut challenge) = authz.challenge(ChallengeType::Dns01) {
                challenge.set_ready().await?;
            }
        }

        let policy = RetryPolicy::new().timeout(self.config.order_timeout);
        let status = order.poll_ready(&policy).await?;
        if status != OrderStatus::Ready {
            let why = order.state().error.as_ref().map(|p| p.to_string()).unwrap_or_default();
            return Err(AcmeError::rejected(format!("order is {status:?} {why}")));
        }
        let key_pem = order.finalize().await?;
        let chain_pem = order.poll_certificate(&policy).await?;
        Ok((chain_pem, key_pem))
    }
}

/// The ARI identifier of a certificate (needs its Authority Key Identifier).
fn cert_id(bundle: &CertBundle) -> Option<CertificateIdentifier<'static>> {
    let leaf: CertificateDer<'static> = bundle.chain_der().ok()?.into_iter().next()?;
    CertificateIdentifier::try_from(&leaf).ok().map(CertificateIdentifier::into_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified() {
        let problem: instant_acme::Problem =
            match serde_json::from_str(r#"{"type":"urn:ietf:params:acme:error:unauthorized","detail":"no","status":403}"#) {
                Ok(p) => p,
                Err(e) => panic!("{e}"),
            };
        assert_eq!(AcmeError::from(instant_acme::Error::Api(problem)).outcome(), "rejected");
        assert_eq!(AcmeError::from(instant_acme::Error::Timeout(None)).outcome(), "network");
        assert_eq!(AcmeError::from(instant_acme::Error::Other("connect refused".into())).outcome(), "network");
        let dns = DnsError::Tsig("x".into());
        assert_eq!(AcmeError::from(dns).outcome(), "dns");
        assert_eq!(AcmeError::Locked { holder: "b".into() }.outcome(), "locked");
    }

    #[test]
    fn self_signed_certificates_have_no_ari_identifier() -> Result<(), CertError> {
        // rcgen's self-signed certificate carries no Authority Key Identifier.
        assert!(cert_id(&crate::tls::selfsigned::generate("aim.test")?).is_none());
        Ok(())
    }

    #[test]
    fn eab_debug_hides_the_key() {
        let eab = Eab { kid: "kid-1".into(), hmac_key: b"secret-bytes".to_vec() };
        assert!(!format!("{eab:?}").contains("secret"));
    }
}
