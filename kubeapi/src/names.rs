//! Generated names (`generateName`, pod names) and name validation.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::status::ApiError;

/// Characters of generated suffixes: kube-apiserver's alphabet (no vowels, no
/// look-alikes), so a generated name never spells a word.
const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// A fresh suffix of `len` characters, unique within this process.
pub fn suffix(len: usize) -> String {
    let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    // splitmix64 of a counter: distinct inputs give distinct, scattered outputs.
    let mut x = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    let base = ALPHABET.len() as u64;
    (0..len)
        .map(|_| {
            let c = ALPHABET[(x % base) as usize];
            x /= base;
            char::from(c)
        })
        .collect()
}

/// Checks that `name` is a DNS subdomain (RFC 1123), as most kinds require.
pub fn validate(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(ApiError::Invalid(format!(
            "metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_are_distinct() {
        let a: std::collections::HashSet<String> = (0..1000).map(|_| suffix(5)).collect();
        assert_eq!(a.len(), 1000);
        assert!(a.iter().all(|s| s.len() == 5 && s.bytes().all(|b| ALPHABET.contains(&b))));
    }

    #[test]
    fn names() {
        for ok in ["a", "web-7d9f8", "web.18ec35f4105633c2", "x1"] {
            assert!(validate(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Web", "-a", "a-", "a_b", "a/b"] {
            assert_eq!(validate(bad).unwrap_err().code(), 422, "{bad}");
        }
    }
}
