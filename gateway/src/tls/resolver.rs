//! Which certificate a handshake gets, and the rustls server configuration.
//!
//! [`CertResolver`] holds the current certificate in an `ArcSwapOption`: a
//! handshake loads it once (a lock-free pointer read), so swapping in a
//! renewed certificate never blocks or fails a handshake, and a connection
//! keeps the key it started with for its whole life.
//!
//! The one certificate covers `*.<base>` and `<base>`. A client whose SNI it
//! does not cover (or that sends none, e.g. a bare IP) gets it all the same,
//! as nginx's default server would: the client then reports a name mismatch,
//! and the router answers 404/421 on the HTTP side, which is clearer than an
//! aborted handshake.
//!
//! ## SNI for the 421 check
//!
//! After `tokio_rustls::TlsAcceptor::accept`, the SNI the client sent is
//! `stream.get_ref().1.server_name()` (rustls' `ServerConnection::server_name`),
//! also available as [`sni_of`]. The router compares it with the request's
//! Host (port stripped, case-insensitive) and answers 421 when a connection
//! opened for one solution is reused for another.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::tls::certkey::provider;

/// ALPN protocols offered, most preferred first.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The certificate every handshake gets; swapped atomically on renewal.
#[derive(Default)]
pub struct CertResolver {
    current: ArcSwapOption<CertifiedKey>,
}

// === impl CertResolver ===

impl CertResolver {
    /// A resolver with no certificate yet: handshakes fail until [`Self::swap`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A resolver serving `key` from the start.
    pub fn with(key: Arc<CertifiedKey>) -> Self {
        Self { current: ArcSwapOption::from(Some(key)) }
    }

    /// Serves `key` to every handshake from now on; returns the previous one.
    pub fn swap(&self, key: Arc<CertifiedKey>) -> Option<Arc<CertifiedKey>> {
        self.current.swap(Some(key))
    }

    /// Whether a certificate is served now (no reference taken).
    pub fn has_certificate(&self) -> bool {
        self.current.load().is_some()
    }

    /// The certificate served now.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertResolver").field("loaded", &self.current.load().is_some()).finish()
    }
}

/// The rustls server configuration: TLS 1.3 and 1.2 with aws-lc-rs' default
/// (modern, AEAD-only) cipher suites, ALPN `h2` then `http/1.1`, no client
/// certificates, certificates from `resolver`.
pub fn server_config(resolver: Arc<CertResolver>) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The SNI name the client sent on an accepted TLS connection, if any.
pub fn sni_of<IO>(stream: &tokio_rustls::server::TlsStream<IO>) -> Option<&str> {
    stream.get_ref().1.server_name()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use rustls::pki_types::ServerName;
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;
    use crate::tls::certkey::CertBundle;
    use crate::tls::selfsigned;

    type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

    fn client(trusted: &[&CertBundle]) -> Result<TlsConnector, Box<dyn std::error::Error + Send + Sync>> {
        let mut roots = rustls::RootCertStore::empty();
        for b in trusted {
            roots.add(b.chain_der()?.remove(0))?;
        }
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsConnector::from(Arc::new(config)))
    }

    /// One handshake over an in-memory pipe; returns the server's view
    /// (SNI, ALPN) and the leaf the client saw.
    async fn handshake(
        acceptor: &TlsAcceptor,
        connector: &TlsConnector,
        sni: &str,
    ) -> Result<(Option<String>, Option<Vec<u8>>, Vec<u8>), Box<dyn std::error::Error + Send + Sync>> {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let name = ServerName::try_from(sni.to_string())?;
        let (server, client) = tokio::join!(acceptor.accept(a), connector.connect(name, b));
        let (server, client) = (server?, client?);
        let leaf = client.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default();
        Ok((sni_of(&server).map(str::to_string), server.get_ref().1.alpn_protocol().map(<[u8]>::to_vec), leaf))
    }

    #[tokio::test]
    async fn serves_wildcard_and_base_with_alpn_and_sni() -> TestResult {
        let bundle = selfsigned::generate("aim.test")?;
        let resolver = Arc::new(CertResolver::with(bundle.certified_key()?));
        let acceptor = TlsAcceptor::from(server_config(resolver)?);
        let connector = client(&[&bundle])?;
        for sni in ["nlp.aim.test", "aim.test"] {
            let (seen, alpn, _) = handshake(&acceptor, &connector, sni).await?;
            assert_eq!(seen.as_deref(), Some(sni));
            assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
        }
        // A name the certificate does not cover: the client rejects the name.
        assert!(handshake(&acceptor, &connector, "nlp.other.test").await.is_err());
        Ok(())
    }

    #[tokio::test]
    async fn no_certificate_fails_the_handshake() -> TestResult {
        let bundle = selfsigned::generate("aim.test")?;
        let acceptor = TlsAcceptor::from(server_config(Arc::new(CertResolver::new()))?);
        assert!(handshake(&acceptor, &client(&[&bundle])?, "aim.test").await.is_err());
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn swapping_never_fails_a_handshake() -> TestResult {
        let a = selfsigned::generate("aim.test")?;
        let b = selfsigned::generate("aim.test")?;
        let (ka, kb) = (a.certified_key()?, b.certified_key()?);
        let resolver = Arc::new(CertResolver::with(ka.clone()));
        let acceptor = TlsAcceptor::from(server_config(resolver.clone())?);
        let connector = client(&[&a, &b])?;
        let swaps = Arc::new(AtomicUsize::new(0));
        let swapper = {
            let (resolver, swaps) = (resolver.clone(), swaps.clone());
            tokio::spawn(async move {
                for i in 0..400 {
                    resolver.swap(if i % 2 == 0 { kb.clone() } else { ka.clone() });
                    swaps.fetch_add(1, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                }
            })
        };
        let (leaf_a, leaf_b) = (a.chain_der()?.remove(0).to_vec(), b.chain_der()?.remove(0).to_vec());
        let mut seen = [0usize; 2];
        for _ in 0..150 {
            let (_, _, leaf) = handshake(&acceptor, &connector, "nlp.aim.test").await?;
            seen[usize::from(leaf == leaf_b)] += 1;
            assert!(leaf == leaf_a || leaf == leaf_b);
        }
        swapper.await?;
        assert_eq!(swaps.load(Ordering::Relaxed), 400);
        let (_, _, last) = handshake(&acceptor, &connector, "aim.test").await?;
        assert_eq!(last, leaf_a, "the last swap wins");
        Ok(())
    }
}
