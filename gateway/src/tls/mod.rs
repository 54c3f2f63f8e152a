//! TLS termination and the certificate behind it.
//!
//! One wildcard certificate (`*.<base>` + `<base>`) serves every solution.
//! Where it comes from is the operator's choice ([`settings::TlsSource`]):
//!
//! * `self-signed` — generated at start ([`selfsigned`]), for the embedded
//!   default `https://nlp.localhost:8443` (clients pass `-k`);
//! * `files` — a PEM chain and key on disk, reloaded when they change
//!   ([`files`]), for cert-manager users;
//! * `acme` — obtained through ACME DNS-01 ([`acme`]) with the TXT records
//!   written by RFC 2136 ([`rfc2136`]) or an operator command ([`exec`]),
//!   persisted in a [`store`], renewed on schedule ([`renew`]).
//!
//! Whatever the source, the certificate lands in one [`CertResolver`], which
//! swaps it atomically: handshakes already started keep the old key, new ones
//! get the new key, none fails. [`server_config`] builds the rustls
//! configuration around it (TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`).
//! aws-lc-rs is the only crypto provider in the build.
//!
//! Wiring, in the listener's accept loop:
//!
//! ```ignore
//! let acceptor = tokio_rustls::TlsAcceptor::from(tls::server_config(resolver.clone())?);
//! match acceptor.accept(tcp).await {
//!     Ok(stream) => {
//!         let sni = tls::sni_of(&stream).map(str::to_owned); // for the 421 check
//!         // serve HTTP/1.1 or h2 per stream.get_ref().1.alpn_protocol()
//!     }
//!     Err(e) => tls_metrics.handshake_error(&e), // counted by reason
//! }
//! ```

pub mod acme;
pub mod certkey;
pub mod dns;
pub mod exec;
pub mod files;
pub mod metrics;
pub mod propagation;
pub mod renew;
pub mod resolver;
pub mod rfc2136;
pub mod selfsigned;
pub mod settings;
pub mod source;
pub mod store;

pub use certkey::{CertError, CertInfo};
pub use metrics::TlsMetrics;
pub use resolver::{CertResolver, server_config, sni_of};
pub use settings::TlsSettings;
pub use store::{CertBundle, CertStore, DirStore};
