//! Host → solution. The host comes from the request's authority (HTTP/2, or an
//! absolute-form HTTP/1.1 target) or its `Host` header; it is compared case-
//! insensitively, without its port or a trailing dot.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use crate::solution::SolutionRt;

/// Where a host leads.
pub enum Target<'a> {
    /// The bare base domain: the catalog page.
    Catalog,
    /// A solution's subdomain.
    Solution(&'a Arc<SolutionRt>),
    /// Nothing is served here.
    Unknown,
    /// Not a host name at all.
    Invalid,
}

/// The routing table; replaced whole when the config changes.
pub struct Routes {
    base: String,
    /// Keys from the config, looked up on every request: a fast hash rather
    /// than SipHash (a client's host only reads the table, never adds to it).
    by_name: HashMap<Box<str>, Arc<SolutionRt>, foldhash::fast::RandomState>,
    /// Solutions in config order (catalog, status).
    pub list: Vec<Arc<SolutionRt>>,
}

impl Routes {
    /// A table for `base` (already normalised) and `solutions`.
    pub fn new(base: String, solutions: Vec<Arc<SolutionRt>>) -> Self {
        let by_name = solutions.iter().map(|s| (Box::from(&*s.name), s.clone())).collect();
        Self { base, by_name, list: solutions }
    }

    /// The base domain.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// A solution by name.
    pub fn get(&self, name: &str) -> Option<&Arc<SolutionRt>> {
        self.by_name.get(name)
    }

    /// Routes a raw host (as received).
    pub fn route(&self, raw_host: &str) -> Target<'_> {
        let Some(host) = normalize_host(raw_host) else { return Target::Invalid };
        if host == self.base {
            return Target::Catalog;
        }
        let Some(label) = host.strip_suffix(self.base.as_str()).and_then(|h| h.strip_suffix('.')) else {
            return Target::Unknown;
        };
        match self.by_name.get(label) {
            Some(s) => Target::Solution(s),
            None => Target::Unknown,
        }
    }
}

/// What a byte is in a host name, for [`normalize_host`]'s one pass.
const OTHER: u8 = 0;
const LOWER: u8 = 1; // and digits, '-'
const UPPER: u8 = 2;
const DOT: u8 = 3;
const COLON: u8 = 4;
static CLASS: [u8; 256] = {
    let mut t = [OTHER; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = if b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' {
            LOWER
        } else if b.is_ascii_uppercase() {
            UPPER
        } else if b == b'.' {
            DOT
        } else if b == b':' {
            COLON
        } else {
            OTHER
        };
        i += 1;
    }
    t
};

/// Lower case, no port, no trailing dot; `None` if `raw` is not a host at all
/// (more than one port, empty labels, characters no DNS name has). Borrows
/// when nothing changes. A second pass over the result changes nothing.
pub fn normalize_host(raw: &str) -> Option<Cow<'_, str>> {
    if raw.starts_with('[') {
        return bracketed(raw);
    }
    // One pass over the bytes (every request routes): labels of 1 to 63
    // letters, digits and '-', up to the port.
    let bytes = raw.as_bytes();
    let (mut label, mut upper, mut end) = (0usize, false, bytes.len());
    for (i, &b) in bytes.iter().enumerate() {
        match CLASS[usize::from(b)] {
            LOWER => label += 1,
            UPPER => {
                label += 1;
                upper = true;
            }
            DOT if label > 0 => {
                label = 0;
                continue;
            }
            COLON => {
                end = i;
                break;
            }
            _ => return None,
        }
        if label > 63 {
            return None;
        }
    }
    if end < bytes.len() {
        port(&raw[end + 1..])?;
    }
    let mut name = &raw[..end];
    if label == 0 {
        // Empty, or a trailing dot (two in a row were refused above).
        name = name.strip_suffix('.')?;
    }
    if name.is_empty() || name.len() > 253 {
        return None;
    }
    Some(if upper { Cow::Owned(name.to_ascii_lowercase()) } else { Cow::Borrowed(name) })
}

/// An IPv6 literal host (`[::1]`, maybe with a port).
fn bracketed(raw: &str) -> Option<Cow<'_, str>> {
    let end = raw.find(']')?;
    let (host, rest) = raw.split_at(end + 1);
    if !rest.is_empty() {
        port(rest.strip_prefix(':')?)?;
    }
    let inner = &host[1..host.len() - 1];
    if inner.is_empty() || !inner.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
        return None;
    }
    Some(if host.bytes().any(|b| b.is_ascii_uppercase()) { Cow::Owned(host.to_ascii_lowercase()) } else { Cow::Borrowed(host) })
}

/// A port as `Host` may carry it: `*DIGIT` (RFC 9110 §7.2, RFC 3986 §3.2.3),
/// so an empty one too (`example.com:`).
fn port(digits: &str) -> Option<()> {
    (digits.len() <= 5 && digits.bytes().all(|b| b.is_ascii_digit())).then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_hosts() {
        let n = |s| normalize_host(s).map(|c| c.into_owned());
        assert_eq!(n("NLP.Localhost:8080").as_deref(), Some("nlp.localhost"));
        assert_eq!(n("nlp.localhost:").as_deref(), Some("nlp.localhost"), "an empty port");
        assert_eq!(n("nlp.localhost.").as_deref(), Some("nlp.localhost"));
        assert_eq!(n("nlp.localhost.:80").as_deref(), Some("nlp.localhost"));
        assert_eq!(n("[::1]:8080").as_deref(), Some("[::1]"));
        assert_eq!(n("nlp").as_deref(), Some("nlp"));
        assert!(matches!(normalize_host("plain.host"), Some(Cow::Borrowed(_))));
        assert_eq!(n("[::AB]").as_deref(), Some("[::ab]"));
        assert_eq!(n("Mixed-Case.Example.:443").as_deref(), Some("mixed-case.example"));
        assert!(matches!(normalize_host("a.b:8080"), Some(Cow::Borrowed("a.b"))));
        for bad in [
            "",
            ".",
            "..",
            "a..b",
            ".a",
            ":80",
            "app.localhost:80:80",
            "h:123456",
            "h:8a",
            "[",
            "[.",
            "[zz]",
            "[]",
            "[::1]x",
            "a b",
            "a_b",
            "a/b",
            "é.example",
        ] {
            assert_eq!(n(bad), None, "{bad:?}");
        }
        let (longest, too_long) = ("a".repeat(63) + ".example", "a".repeat(64) + ".example");
        assert_eq!(normalize_host(&longest).as_deref(), Some(longest.as_str()));
        assert_eq!(normalize_host(&too_long), None);
    }

    /// The straightforward version (several passes, `str` methods), kept
    /// as the oracle for the one-pass one.
    fn reference(raw: &str) -> Option<String> {
        let (host, port) = if raw.starts_with('[') {
            let end = raw.find(']')?;
            raw.split_at(end + 1)
        } else {
            raw.rfind(':').map_or((raw, ""), |i| raw.split_at(i))
        };
        if !port.is_empty() {
            let digits = port.strip_prefix(':')?;
            if digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
        }
        let name = if let Some(inner) = host.strip_prefix('[') {
            let inner = inner.strip_suffix(']')?;
            if inner.is_empty() || !inner.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
                return None;
            }
            host
        } else {
            let name = host.strip_suffix('.').unwrap_or(host);
            let labels_ok =
                name.split('.').all(|l| (1..=63).contains(&l.len()) && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
            if name.is_empty() || name.len() > 253 || !labels_ok {
                return None;
            }
            name
        };
        Some(name.to_ascii_lowercase())
    }

    #[test]
    fn one_pass_agrees_with_the_reference() {
        const ALPHABET: &[u8] = b"aZ9-.:[]_ ";
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..200_000 {
            let len = rng.usize(0..12);
            let s: String = (0..len).map(|_| char::from(ALPHABET[rng.usize(..ALPHABET.len())])).collect();
            let got = normalize_host(&s).map(Cow::into_owned);
            assert_eq!(got, reference(&s), "{s:?}");
            if let Some(n) = got {
                assert_eq!(normalize_host(&n).as_deref(), Some(n.as_str()), "idempotent for {s:?}");
            }
        }
    }
}
