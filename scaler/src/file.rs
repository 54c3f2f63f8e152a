//! Reading a small file that an operator names in the configuration (a
//! certificate, a key, a token): a regular file only, bounded in size, read
//! in place. Used by the gateway's `tls-source = "files"` and by the cluster
//! scaler's Prometheus credentials.

use std::io::{Error, ErrorKind, Read};
use std::path::Path;

/// Certificates, keys and tokens larger than this are not one (a long chain is ~10 KiB).
pub const MAX_SMALL_FILE: u64 = 1024 * 1024;

/// The bytes of `path`, if it is a regular file of at most [`MAX_SMALL_FILE`]
/// bytes. Checked before it is opened: opening a pipe waits for a writer,
/// and a device or a growing file would stop the thread that reads it.
pub fn read_small(path: &Path) -> std::io::Result<Vec<u8>> {
    if !std::fs::metadata(path)?.is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, "not a regular file"));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.take(MAX_SMALL_FILE + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_SMALL_FILE {
        return Err(Error::new(ErrorKind::InvalidData, format!("larger than {} KiB", MAX_SMALL_FILE / 1024)));
    }
    Ok(bytes)
}
