//! Request ids: kept from the client's `X-Request-Id` when it is sane, made
//! here otherwise, and returned on every response so a user can quote it.

use http::{HeaderMap, HeaderName, HeaderValue};

/// The header that carries the id both ways.
pub const HEADER: &str = "x-request-id";
/// The same as a header name (looked up on every request: a `&str` would be
/// parsed into a name each time).
pub static NAME: HeaderName = HeaderName::from_static(HEADER);

/// Longest client-supplied id that is kept.
const MAX_LEN: usize = 128;

/// The request's id: the client's if it is 1..=128 visible ASCII characters,
/// else 16 random hex digits.
pub fn of(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&NAME) {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= MAX_LEN && b.iter().all(|c| c.is_ascii_graphic()) {
            // A copy: a clone would keep the whole request head (and the
            // buffer it was cut from) alive as long as the answer.
            return HeaderValue::from_bytes(b).unwrap_or_else(|_| v.clone());
        }
    }
    generate()
}

/// Ids cut from one buffer per thread, [`PER_CHUNK`] at a time: an id costs
/// no allocation of its own, and its clones (the answer's field, the copy
/// sent upstream) only count references. Their own buffers: an id lives as
/// long as its answer (a stream can last hours), and keeps only ids alive.
const PER_CHUNK: usize = 64;

thread_local! {
    static CHUNK: std::cell::RefCell<bytes::BytesMut> = std::cell::RefCell::new(bytes::BytesMut::new());
}
static IDS: crate::chunk::Chunks = crate::chunk::Chunks::new(&CHUNK, 16 * PER_CHUNK);

/// A fresh id.
pub fn generate() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = fastrand::u64(..);
    let mut out = [0u8; 16];
    for b in out.iter_mut() {
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    HeaderValue::from_maybe_shared(IDS.copy(&out)).unwrap_or(HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_sane_ids_and_replaces_others() {
        let mut h = HeaderMap::new();
        h.insert(HEADER, HeaderValue::from_static("abc-123"));
        assert_eq!(of(&h), "abc-123");
        h.insert(HEADER, HeaderValue::from_static("has space"));
        assert_eq!(of(&h).len(), 16);
        h.insert(HEADER, HeaderValue::from_str(&"x".repeat(200)).unwrap_or(HeaderValue::from_static("")));
        assert_eq!(of(&h).len(), 16);
        assert_ne!(generate(), generate());
    }

    #[test]
    fn generated_ids_are_distinct_hex_across_chunks() {
        let ids: Vec<HeaderValue> = (0..PER_CHUNK * 3 + 5).map(|_| generate()).collect();
        let distinct: std::collections::HashSet<&[u8]> = ids.iter().map(|v| v.as_bytes()).collect();
        assert_eq!(distinct.len(), ids.len());
        assert!(ids.iter().all(|v| v.len() == 16 && v.as_bytes().iter().all(u8::is_ascii_hexdigit)), "{:?}", &ids[..3]);
    }
}
