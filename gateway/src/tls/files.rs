//! `tls-source: files`: a PEM chain and key on disk (a mounted cert-manager
//! Secret, or files an operator renews), reloaded when they change.
//!
//! Both files are read every second and compared with what was last seen,
//! which catches every way they get replaced (in-place writes, renames, the
//! symlink swap of a Kubernetes volume) without platform file watchers. A
//! change that does not parse (a half-written file, a key for another
//! certificate) is logged once and the served certificate stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::sign::CertifiedKey;
use tokio::sync::watch;

use crate::server::stopped;
use crate::tls::certkey::{CertBundle, CertError, CertInfo};
use crate::tls::metrics::TlsMetrics;
use crate::tls::resolver::CertResolver;

/// Once a second: what cert-manager users expect, and two small reads cost nothing.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Why the files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The files do not hold a usable certificate and key.
    #[error("{cert} / {key}: {source}")]
    Cert {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What is wrong.
        #[source]
        source: CertError,
    },
}

/// A certificate read from the files, ready to serve.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// What rustls serves.
    pub key: Arc<CertifiedKey>,
    /// Names and validity of the leaf.
    pub info: CertInfo,
}

/// The certificate and key files, and what was last read from them.
#[derive(Debug)]
pub struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
    interval: Duration,
    seen: Option<(String, String)>,
}

// === impl CertFiles ===

impl CertFiles {
    /// Watches `cert` (PEM chain, leaf first) and `key` (PEM private key).
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self { cert: cert.into(), key: key.into(), interval: POLL_INTERVAL, seen: None }
    }

    /// Polls every `interval` instead of [`POLL_INTERVAL`].
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Reads both files: `Ok(None)` if they are as last seen, else the new
    /// certificate or why it is unusable (reported once per change).
    pub fn poll(&mut self) -> Result<Option<Loaded>, FilesError> {
        let cert = read(&self.cert)?;
        let key = read(&self.key)?;
        if self.seen.as_ref().is_some_and(|(c, k)| *c == cert && *k == key) {
            return Ok(None);
        }
        self.seen = Some((cert.clone(), key.clone()));
        let bundle = CertBundle { chain_pem: cert, key_pem: key };
        let loaded = bundle.certified_key().and_then(|key| Ok(Loaded { key, info: bundle.info()? }));
        loaded.map(Some).map_err(|source| FilesError::Cert { cert: self.cert.clone(), key: self.key.clone(), source })
    }

    /// Serves each new certificate through `resolver` until `shutdown`;
    /// `name` labels the expiry gauge. Errors are logged, never fatal.
    pub async fn run(mut self, resolver: Arc<CertResolver>, metrics: TlsMetrics, name: String, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopped(&mut shutdown) => return,
            }
            // What is served meanwhile, asked only when a poll fails.
            let kept = || {
                if resolver.has_certificate() {
                    "still serving the previous certificate"
                } else {
                    "no certificate to serve yet (plain HTTP is not redirected meanwhile)"
                }
            };
            match self.poll() {
                Ok(None) => {}
                Ok(Some(loaded)) => {
                    tracing::info!(cert = %self.cert.display(), names = ?loaded.info.names, "loaded a new certificate from files");
                    metrics.certificate(&name, &loaded.info);
                    resolver.swap(loaded.key);
                    failing = false;
                }
                Err(e @ FilesError::Cert { .. }) => tracing::warn!("{e}; {}", kept()),
                // A missing file mid-rotation is normal; say so once.
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!("{e}; {}", kept());
                }
                Err(_) => {}
            }
        }
    }
}

/// Read in place, as the config file is (reload.rs): two small local files
/// once a second. Through `tokio::fs` each read went to the blocking pool,
/// whose thread outlives the 1 s poll (10 s keep-alive), so a `workers = 1`
/// gateway ran three threads, and with the file table shared every socket
/// call took and dropped a file reference (`fdget`/`fput`, ≈ 0.5 % of a
/// request's CPU under `perf`; docs/benchmarks.md, "Tenth pass").
///
/// Only regular files of at most 1 MiB ([`scaler::file::read_small`]): a
/// path pointed at a pipe or a device would otherwise stop the thread that
/// serves requests.
fn read(path: &Path) -> Result<String, FilesError> {
    let err = |source| FilesError::Read { path: path.to_path_buf(), source };
    let bytes = scaler::file::read_small(path).map_err(err)?;
    String::from_utf8(bytes).map_err(|e| err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::selfsigned;

    type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

    #[test]
    fn only_regular_files_of_a_sane_size_are_read() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let fifo = tmp.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status()?.success(), "mkfifo");
        for (path, why) in [(tmp.path().to_path_buf(), "not a regular file"), (fifo, "not a regular file")] {
            let e = read(&path).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(why), "{}: {e}", path.display());
        }
        let big = tmp.path().join("big.pem");
        std::fs::write(&big, vec![b'A'; 2 * 1024 * 1024])?;
        assert!(read(&big).err().is_some_and(|e| e.to_string().contains("larger than 1024 KiB")));
        Ok(())
    }

    fn write(dir: &Path, b: &CertBundle) -> std::io::Result<()> {
        std::fs::write(dir.join("tls.crt"), &b.chain_pem)?;
        std::fs::write(dir.join("tls.key"), &b.key_pem)
    }

    #[tokio::test]
    async fn poll_reports_changes_once() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let mut files = CertFiles::new(tmp.path().join("tls.crt"), tmp.path().join("tls.key"));
        assert!(matches!(files.poll(), Err(FilesError::Read { .. })));
        write(tmp.path(), &selfsigned::generate("aim.test")?)?;
        assert!(files.poll()?.is_some());
        assert!(files.poll()?.is_none());
        std::fs::write(tmp.path().join("tls.key"), "garbage")?;
        assert!(matches!(files.poll(), Err(FilesError::Cert { .. })));
        assert!(files.poll()?.is_none(), "a bad change is reported once");
        Ok(())
    }

    #[tokio::test]
    async fn run_swaps_good_changes_and_keeps_serving_through_bad_ones() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let (first, second) = (selfsigned::generate("aim.test")?, selfsigned::generate("aim.test")?);
        write(tmp.path(), &first)?;
        let mut files = CertFiles::new(tmp.path().join("tls.crt"), tmp.path().join("tls.key")).with_interval(Duration::from_millis(20));
        let initial = files.poll()?.ok_or("no initial certificate")?;
        let resolver = Arc::new(CertResolver::with(initial.key));
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(files.run(resolver.clone(), TlsMetrics::default(), "aim.test".into(), rx));
        let leaf = |r: &CertResolver| r.current().map(|k| k.cert[0].to_vec());
        let first_leaf = first.chain_der()?.remove(0).to_vec();
        let second_leaf = second.chain_der()?.remove(0).to_vec();

        std::fs::write(tmp.path().join("tls.crt"), "-----BEGIN CERTIFICATE-----\ntruncated")?;
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(leaf(&resolver), Some(first_leaf));

        write(tmp.path(), &second)?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while leaf(&resolver).as_ref() != Some(&second_leaf) {
            assert!(tokio::time::Instant::now() < deadline, "new files were not picked up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tx.send(true)?;
        task.await?;
        Ok(())
    }
}
