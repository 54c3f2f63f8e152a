//! Starting the configured certificate source: generate (self-signed), watch
//! files, or obtain and renew through ACME; each puts its certificate into
//! the shared [`CertResolver`]. The ACME renewer's handle is registered
//! ([`renew::registered`]) for the admin listener's `POST /tls/renew`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::tls::acme::Acme;
use crate::tls::renew::{self, Renewer};
use crate::tls::settings::{TlsSettings, TlsSource};
use crate::tls::{CertResolver, DirStore, TlsMetrics, files, selfsigned};

/// Why the certificate source could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The self-signed certificate could not be made.
    #[error("self-signed certificate: {0}")]
    SelfSigned(#[source] crate::tls::CertError),
    /// The ACME configuration is unusable (e.g. a name that does not resolve).
    #[error("ACME: {0}")]
    Acme(#[source] crate::tls::dns::DnsError),
}

/// Makes a self-signed certificate and serves it.
fn serve_self_signed(base: &str, resolver: &CertResolver, metrics: &TlsMetrics) -> Result<(), crate::tls::CertError> {
    let bundle = selfsigned::generate(base)?;
    let key = bundle.certified_key()?;
    if let Ok(info) = bundle.info() {
        metrics.certificate(base, &info);
    }
    resolver.swap(key);
    Ok(())
}

/// When a self-signed certificate made at `issued` is replaced: two thirds
/// into its lifetime, as an ACME one without a renewal window (the
/// certificate alerts fire with a sixth left).
pub fn self_signed_due(issued: SystemTime) -> SystemTime {
    issued + selfsigned::SELF_SIGNED_LIFETIME * 2 / 3
}

/// Replaces the self-signed certificate before it expires, for a gateway
/// that runs longer than its lifetime. Looks at least hourly (the machine
/// may have slept); a failure is tried again an hour later.
async fn self_signed_renewal(
    base: String,
    resolver: Arc<CertResolver>,
    metrics: TlsMetrics,
    mut issued: SystemTime,
    mut shutdown: watch::Receiver<bool>,
) {
    const LOOK: Duration = Duration::from_secs(3600);
    loop {
        let due = self_signed_due(issued);
        let wait = due.duration_since(SystemTime::now()).unwrap_or_default().clamp(Duration::from_secs(1), LOOK);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = crate::server::stopped(&mut shutdown) => return,
        }
        if SystemTime::now() < due {
            continue;
        }
        match serve_self_signed(&base, &resolver, &metrics) {
            Ok(()) => {
                issued = SystemTime::now();
                tracing::info!("replaced the self-signed certificate for *.{base} and {base} before it expires");
            }
            Err(e) => {
                tracing::warn!("cannot make a new self-signed certificate: {e}; trying again in an hour");
                issued += LOOK;
            }
        }
    }
}

/// Starts the source for `tls`, serving through `resolver`, until `shutdown`.
/// With ACME, the renewer's task: at shutdown it abandons an order under way
/// and removes its challenge records, which the caller waits for.
pub async fn start(
    tls: &TlsSettings,
    base: &str,
    resolver: Arc<CertResolver>,
    metrics: TlsMetrics,
    shutdown: watch::Receiver<bool>,
) -> Result<Option<tokio::task::JoinHandle<()>>, StartError> {
    match &tls.source {
        TlsSource::Off => {}
        TlsSource::SelfSigned => {
            serve_self_signed(base, &resolver, &metrics).map_err(StartError::SelfSigned)?;
            tracing::info!("serving a self-signed certificate for *.{base} and {base} (clients need -k)");
            tokio::spawn(self_signed_renewal(base.to_string(), resolver, metrics, SystemTime::now(), shutdown));
        }
        TlsSource::Files { cert, key } => {
            let mut watcher = files::CertFiles::new(cert.clone(), key.clone());
            // Served from the first connection on (plain HTTP is redirected
            // only once a certificate is); the watcher reports problems.
            match watcher.poll() {
                Ok(Some(loaded)) => {
                    metrics.certificate(base, &loaded.info);
                    resolver.swap(loaded.key);
                    tracing::info!(cert = %cert.display(), names = ?loaded.info.names, "loaded the certificate from files");
                }
                Ok(None) => {}
                Err(e) => tracing::warn!("no certificate to serve yet: {e}; the files are read again every few seconds"),
            }
            tokio::spawn(watcher.run(resolver, metrics, base.to_string(), shutdown));
        }
        TlsSource::Acme(_) => {
            let config = match tls.acme_config(base).await {
                Some(Ok(c)) => c,
                Some(Err(e)) => return Err(StartError::Acme(e)),
                None => return Ok(None),
            };
            let dns = match tls.dns_provider(base) {
                Some(Ok(d)) => d,
                Some(Err(e)) => return Err(StartError::Acme(e)),
                None => return Ok(None),
            };
            let dir = tls.dir.clone().unwrap_or_else(|| "tls".into());
            let acme = Arc::new(Acme::new(config, Arc::new(DirStore::new(dir)), dns));
            let renewer = Renewer::new(acme, resolver, metrics);
            // The admin listener's `POST /tls/renew` reaches it through this.
            renew::register(renewer.handle());
            return Ok(Some(tokio::spawn(renewer.run(shutdown))));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_certificate_is_replaced_well_before_the_expiry_alert() {
        let issued = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let lifetime = selfsigned::SELF_SIGNED_LIFETIME;
        let left = (issued + lifetime).duration_since(self_signed_due(issued)).unwrap_or_default();
        assert_eq!(left, lifetime / 3, "replaced with a third of its lifetime left");
        // `WakegateCertificateExpiresSoon` fires with less than a sixth left.
        assert!(left > lifetime / 6);
    }
}
