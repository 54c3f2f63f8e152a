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
}

/// The routing table; replaced whole when the config changes.
pub struct Routes {
    base: String,
    by_name: HashMap<Box<str>, Arc<SolutionRt>>,
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
        let host = normalize_host(raw_host);
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

/// Lower case, no port, no trailing dot. Borrows when nothing changes.
pub fn normalize_host(raw: &str) -> Cow<'_, str> {
    let without_port = if raw.starts_with('[') {
        // IPv6 literal: keep the brackets, drop a port after them.
        raw.find(']').map_or(raw, |i| &raw[..=i])
    } else {
        match raw.rfind(':') {
            Some(i) if raw[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &raw[..i],
            _ => raw,
        }
    };
    let trimmed = without_port.strip_suffix('.').unwrap_or(without_port);
    if trimmed.bytes().any(|b| b.is_ascii_uppercase()) { Cow::Owned(trimmed.to_ascii_lowercase()) } else { Cow::Borrowed(trimmed) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_hosts() {
        assert_eq!(normalize_host("NLP.Localhost:8080"), "nlp.localhost");
        assert_eq!(normalize_host("nlp.localhost."), "nlp.localhost");
        assert_eq!(normalize_host("nlp.localhost.:80"), "nlp.localhost");
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        assert_eq!(normalize_host("nlp"), "nlp");
        assert!(matches!(normalize_host("plain.host"), Cow::Borrowed(_)));
    }
}
