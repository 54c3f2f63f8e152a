//! Starting the configured certificate source: generate (self-signed), watch
//! files, or obtain and renew through ACME; each puts its certificate into
//! the shared [`CertResolver`]. The ACME renewer's handle is registered
//! ([`renew::registered`]) for the admin listener's `POST /tls/renew`.

use std::sync::Arc;

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

/// Starts the source for `tls`, serving through `resolver`, until `shutdown`.
pub async fn start(
    tls: &TlsSettings,
    base: &str,
    resolver: Arc<CertResolver>,
    metrics: TlsMetrics,
    shutdown: watch::Receiver<bool>,
) -> Result<(), StartError> {
    match &tls.source {
        TlsSource::Off => {}
        TlsSource::SelfSigned => {
            let bundle = selfsigned::generate(base).map_err(StartError::SelfSigned)?;
            let key = bundle.certified_key().map_err(StartError::SelfSigned)?;
            if let Ok(info) = bundle.info() {
                metrics.certificate(base, &info);
            }
            resolver.swap(key);
            tracing::info!("serving a self-signed certificate for *.{base} and {base} (clients need -k)");
        }
        TlsSource::Files { cert, key } => {
            let watcher = files::CertFiles::new(cert.clone(), key.clone());
            tokio::spawn(watcher.run(resolver, metrics, base.to_string(), shutdown));
        }
        TlsSource::Acme(_) => {
            let config = match tls.acme_config(base).await {
                Some(Ok(c)) => c,
                Some(Err(e)) => return Err(StartError::Acme(e)),
                None => return Ok(()),
            };
            let dns = match tls.dns_provider(base) {
                Some(Ok(d)) => d,
                Some(Err(e)) => return Err(StartError::Acme(e)),
                None => return Ok(()),
            };
            let dir = tls.dir.clone().unwrap_or_else(|| "tls".into());
            let acme = Arc::new(Acme::new(config, Arc::new(DirStore::new(dir)), dns));
            let renewer = Renewer::new(acme, resolver, metrics);
            // The admin listener's `POST /tls/renew` reaches it through this.
            renew::register(renewer.handle());
            tokio::spawn(renewer.run(shutdown));
        }
    }
    Ok(())
}
