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

/// Lower case, no port, no trailing dot; `None` if `raw` is not a host at all
/// (more than one port, empty labels, characters no DNS name has). Borrows
/// when nothing changes. A second pass over the result changes nothing.
pub fn normalize_host(raw: &str) -> Option<Cow<'_, str>> {
    let (host, port) = if raw.starts_with('[') {
        let end = raw.find(']')?;
        raw.split_at(end + 1)
    } else {
        raw.rfind(':').map_or((raw, ""), |i| raw.split_at(i))
    };
    if !port.is_empty() {
        let digits = port.strip_prefix(':')?;
        if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
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
        if name.is_empty() || name.len() > 253 {
            return None;
        }
        // One pass (every request routes): labels of 1 to 63 letters, digits, '-'.
        let mut label = 0;
        for b in name.bytes() {
            if b == b'.' {
                if label == 0 {
                    return None;
                }
                label = 0;
            } else if b.is_ascii_alphanumeric() || b == b'-' {
                label += 1;
                if label > 63 {
                    return None;
                }
            } else {
                return None;
            }
        }
        if label == 0 {
            return None;
        }
        name
    };
    Some(if name.bytes().any(|b| b.is_ascii_uppercase()) { Cow::Owned(name.to_ascii_lowercase()) } else { Cow::Borrowed(name) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_hosts() {
        let n = |s| normalize_host(s).map(|c| c.into_owned());
        assert_eq!(n("NLP.Localhost:8080").as_deref(), Some("nlp.localhost"));
        assert_eq!(n("nlp.localhost.").as_deref(), Some("nlp.localhost"));
        assert_eq!(n("nlp.localhost.:80").as_deref(), Some("nlp.localhost"));
        assert_eq!(n("[::1]:8080").as_deref(), Some("[::1]"));
        assert_eq!(n("nlp").as_deref(), Some("nlp"));
        assert!(matches!(normalize_host("plain.host"), Some(Cow::Borrowed(_))));
        for bad in ["", ".", "..", "a..b", "app.localhost:80:80", "h:", "h:123456", "[", "[.", "[zz]", "a b", "a_b"] {
            assert_eq!(n(bad), None, "{bad:?}");
        }
        let (longest, too_long) = ("a".repeat(63) + ".example", "a".repeat(64) + ".example");
        assert_eq!(normalize_host(&longest).as_deref(), Some(longest.as_str()));
        assert_eq!(normalize_host(&too_long), None);
    }
}
