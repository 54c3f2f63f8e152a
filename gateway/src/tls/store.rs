//! Where the ACME account and the certificate live between restarts, and the
//! lock that lets one replica at a time place an order.
//!
//! [`CertStore`] is shaped after what a Kubernetes deployment will use: one
//! Secret holding `tls.crt`, `tls.key` and the account JSON, and one Lease
//! as the ordering lock (holder + renew time, taken over once stale). The
//! methods return boxed `Send` futures so a store is usable as
//! `Arc<dyn CertStore>`, chosen by settings at run time.
//!
//! [`DirStore`] (`tls-dir`) is the one-machine implementation: files written
//! atomically (write to a temporary file, fsync, rename, fsync the directory),
//! private keys with mode 0600, and a lock file created with `O_EXCL`.

use std::fs::{self, OpenOptions};
use std::future::Future;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use crate::tls::certkey::CertBundle;

/// A boxed `Send` future, the return type of the store's methods.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Account credentials file (instant-acme's JSON; holds the account key).
pub const ACCOUNT_FILE: &str = "account.json";
/// Certificate chain file, PEM, leaf first (the name a TLS Secret uses).
pub const CERT_FILE: &str = "tls.crt";
/// Private key file, PEM, mode 0600 (the name a TLS Secret uses).
pub const KEY_FILE: &str = "tls.key";
/// Ordering lock file: `<holder>\n<unix seconds>\n`.
pub const LOCK_FILE: &str = "acme.lock";

/// Why the store could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// Stored data is incomplete or unreadable (e.g. a key without its certificate).
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file or object.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// The outcome of [`CertStore::try_lock`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockState {
    /// The caller holds the lock now.
    Acquired,
    /// Someone else holds it and it is not stale.
    HeldBy(String),
}

/// Persistent state of the ACME client. Implementations must be safe to
/// share between tasks; every write replaces the old value atomically.
pub trait CertStore: Send + Sync {
    /// The saved account credentials (JSON), if any.
    fn load_account(&self) -> StoreFuture<'_, Option<String>>;
    /// Saves the account credentials (they hold the account's private key).
    fn save_account<'a>(&'a self, json: &'a str) -> StoreFuture<'a, ()>;
    /// The saved certificate and key, if any.
    fn load_cert(&self) -> StoreFuture<'_, Option<CertBundle>>;
    /// Saves a certificate and its key.
    fn save_cert<'a>(&'a self, bundle: &'a CertBundle) -> StoreFuture<'a, ()>;
    /// Takes the ordering lock for `holder`; a lock untouched for
    /// `stale_after` (its holder died mid-order) is taken over. Taking a
    /// lock one already holds succeeds and refreshes it.
    fn try_lock<'a>(&'a self, holder: &'a str, stale_after: Duration) -> StoreFuture<'a, LockState>;
    /// Releases the lock if `holder` still holds it; otherwise does nothing.
    fn unlock<'a>(&'a self, holder: &'a str) -> StoreFuture<'a, ()>;
}

/// A [`CertStore`] in a local directory (created if missing, mode 0700).
#[derive(Debug, Clone)]
pub struct DirStore {
    dir: Arc<PathBuf>,
}

// === impl DirStore ===

impl DirStore {
    /// A store in `dir`; nothing is touched until the first call.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: Arc::new(dir.into()) }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn blocking<'a, T, F>(&'a self, f: F) -> StoreFuture<'a, T>
    where
        T: Send + 'static,
        F: FnOnce(&Path) -> Result<T, StoreError> + Send + 'static,
    {
        let dir = self.dir.clone();
        Box::pin(async move {
            match tokio::task::spawn_blocking(move || f(&dir)).await {
                Ok(r) => r,
                Err(e) => Err(StoreError::Io { path: PathBuf::new(), source: io::Error::other(e) }),
            }
        })
    }
}

impl CertStore for DirStore {
    fn load_account(&self) -> StoreFuture<'_, Option<String>> {
        self.blocking(|dir| read_opt(&dir.join(ACCOUNT_FILE)))
    }

    fn save_account<'a>(&'a self, json: &'a str) -> StoreFuture<'a, ()> {
        let json = json.to_string();
        self.blocking(move |dir| write_atomic(dir, ACCOUNT_FILE, json.as_bytes(), 0o600))
    }

    fn load_cert(&self) -> StoreFuture<'_, Option<CertBundle>> {
        self.blocking(|dir| {
            let (cert, key) = (read_opt(&dir.join(CERT_FILE))?, read_opt(&dir.join(KEY_FILE))?);
            match (cert, key) {
                (Some(chain_pem), Some(key_pem)) => Ok(Some(CertBundle { chain_pem, key_pem })),
                (None, None) => Ok(None),
                (Some(_), None) => Err(StoreError::Corrupt { path: dir.join(KEY_FILE), reason: "missing".into() }),
                (None, Some(_)) => Err(StoreError::Corrupt { path: dir.join(CERT_FILE), reason: "missing".into() }),
            }
        })
    }

    fn save_cert<'a>(&'a self, bundle: &'a CertBundle) -> StoreFuture<'a, ()> {
        let bundle = bundle.clone();
        // Key first: a crash between the two renames leaves a new key with the
        // old certificate, which loading detects (key mismatch) and re-orders.
        self.blocking(move |dir| {
            write_atomic(dir, KEY_FILE, bundle.key_pem.as_bytes(), 0o600)?;
            write_atomic(dir, CERT_FILE, bundle.chain_pem.as_bytes(), 0o644)
        })
    }

    fn try_lock<'a>(&'a self, holder: &'a str, stale_after: Duration) -> StoreFuture<'a, LockState> {
        let holder = holder.to_string();
        self.blocking(move |dir| lock_file(dir, &holder, stale_after, SystemTime::now()))
    }

    fn unlock<'a>(&'a self, holder: &'a str) -> StoreFuture<'a, ()> {
        let holder = holder.to_string();
        self.blocking(move |dir| {
            let path = dir.join(LOCK_FILE);
            match read_opt(&path)? {
                Some(text) if parse_lock(&text).0 == holder => remove_if_exists(&path),
                _ => Ok(()),
            }
        })
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

fn read_opt(path: &Path) -> Result<Option<String>, StoreError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn remove_if_exists(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(path)(e)),
        _ => Ok(()),
    }
}

fn ensure_dir(dir: &Path) -> Result<(), StoreError> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io_err(dir))
}

/// Writes `name` in `dir` so that a reader sees the old or the new content,
/// never a mix, and the new content survives a crash once this returns.
fn write_atomic(dir: &Path, name: &str, data: &[u8], mode: u32) -> Result<(), StoreError> {
    ensure_dir(dir)?;
    let tmp = dir.join(format!(".{name}.tmp-{}-{}", std::process::id(), fastrand::u64(..)));
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(&tmp)(e));
    }
    let target = dir.join(name);
    if let Err(e) = fs::rename(&tmp, &target) {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(&target)(e));
    }
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

fn parse_lock(text: &str) -> (&str, Option<u64>) {
    let mut lines = text.lines();
    let holder = lines.next().unwrap_or("");
    (holder, lines.next().and_then(|t| t.trim().parse().ok()))
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The lock protocol on files. Takeover renames the stale file away first and
/// checks that what it moved is what it judged stale, so two replicas racing
/// for a stale lock cannot both win.
fn lock_file(dir: &Path, holder: &str, stale_after: Duration, now: SystemTime) -> Result<LockState, StoreError> {
    ensure_dir(dir)?;
    let path = dir.join(LOCK_FILE);
    let content = format!("{holder}\n{}\n", unix(now));
    for _ in 0..3 {
        match OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
            Ok(mut f) => {
                f.write_all(content.as_bytes()).and_then(|()| f.sync_all()).map_err(io_err(&path))?;
                return Ok(LockState::Acquired);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
        let Some(existing) = read_opt(&path)? else { continue };
        let (owner, stamp) = parse_lock(&existing);
        if owner == holder {
            write_atomic(dir, LOCK_FILE, content.as_bytes(), 0o600)?;
            return Ok(LockState::Acquired);
        }
        let stamp = stamp.unwrap_or(0);
        if unix(now).saturating_sub(stamp) < stale_after.as_secs() {
            return Ok(LockState::HeldBy(owner.to_string()));
        }
        tracing::warn!(path = %path.display(), stale_holder = owner, "taking over a stale ACME lock");
        let aside = dir.join(format!(".{LOCK_FILE}.stale-{}", fastrand::u64(..)));
        match fs::rename(&path, &aside) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&path)(e)),
        }
        let moved = read_opt(&aside)?.unwrap_or_default();
        if moved != existing {
            // Someone took it over between our read and our rename: put theirs back.
            let _ = fs::hard_link(&aside, &path);
            remove_if_exists(&aside)?;
            return Ok(LockState::HeldBy(parse_lock(&moved).0.to_string()));
        }
        remove_if_exists(&aside)?;
    }
    Ok(LockState::HeldBy("unknown (lock contended)".into()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn mode(p: &Path) -> Result<u32, io::Error> {
        Ok(fs::metadata(p)?.permissions().mode() & 0o777)
    }

    #[tokio::test]
    async fn round_trips_with_private_modes_and_no_leftovers() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let store = DirStore::new(tmp.path().join("tls"));
        assert_eq!(store.load_account().await?, None);
        assert_eq!(store.load_cert().await?, None);
        store.save_account("{\"id\":\"x\"}").await?;
        let bundle = CertBundle { chain_pem: "CHAIN".into(), key_pem: "KEY".into() };
        store.save_cert(&bundle).await?;
        store.save_cert(&bundle).await?;
        assert_eq!(store.load_account().await?.as_deref(), Some("{\"id\":\"x\"}"));
        assert_eq!(store.load_cert().await?, Some(bundle));
        let dir = store.dir();
        assert_eq!(mode(&dir.join(KEY_FILE))?, 0o600);
        assert_eq!(mode(&dir.join(ACCOUNT_FILE))?, 0o600);
        assert_eq!(mode(&dir.join(CERT_FILE))?, 0o644);
        assert_eq!(mode(dir)?, 0o700);
        let names: Vec<_> = fs::read_dir(dir)?.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
        assert!(names.iter().all(|n| !n.starts_with('.')), "temporary files left: {names:?}");
        Ok(())
    }

    #[tokio::test]
    async fn half_a_pair_is_corrupt() -> TestResult {
        let tmp = tempfile::tempdir()?;
        fs::write(tmp.path().join(CERT_FILE), "x")?;
        assert!(matches!(DirStore::new(tmp.path()).load_cert().await, Err(StoreError::Corrupt { .. })));
        Ok(())
    }

    #[tokio::test]
    async fn lock_is_exclusive_reentrant_and_released_by_its_holder_only() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let store = DirStore::new(tmp.path());
        let hour = Duration::from_secs(3600);
        assert_eq!(store.try_lock("a", hour).await?, LockState::Acquired);
        assert_eq!(store.try_lock("a", hour).await?, LockState::Acquired);
        assert_eq!(store.try_lock("b", hour).await?, LockState::HeldBy("a".into()));
        store.unlock("b").await?;
        assert_eq!(store.try_lock("b", hour).await?, LockState::HeldBy("a".into()));
        store.unlock("a").await?;
        assert_eq!(store.try_lock("b", hour).await?, LockState::Acquired);
        Ok(())
    }

    #[test]
    fn stale_lock_is_taken_over() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let t0 = SystemTime::now();
        let ttl = Duration::from_secs(600);
        assert_eq!(lock_file(tmp.path(), "dead", ttl, t0)?, LockState::Acquired);
        let later = t0 + Duration::from_secs(599);
        assert_eq!(lock_file(tmp.path(), "b", ttl, later)?, LockState::HeldBy("dead".into()));
        let stale = t0 + Duration::from_secs(601);
        assert_eq!(lock_file(tmp.path(), "b", ttl, stale)?, LockState::Acquired);
        assert!(fs::read_to_string(tmp.path().join(LOCK_FILE))?.starts_with("b\n"));
        assert_eq!(fs::read_dir(tmp.path())?.count(), 1);
        Ok(())
    }
}
