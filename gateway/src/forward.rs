//! Header rewriting on the way to a solution and back: hop-by-hop headers go,
//! `X-Forwarded-*` and `X-Request-Id` are set, the target becomes origin-form
//! HTTP/1.1 whatever protocol the client spoke.

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Uri, Version};

use crate::client::Client;
use crate::request_id;

/// Hop-by-hop headers (RFC 9110 §7.6.1; `HTTP2-Settings`, RFC 9113 §3.2.1
/// of RFC 7540, belongs to the h2c upgrade of one connection), never forwarded.
const HOP_COUNT: usize = 9;
static HOP_BY_HOP: [HeaderName; HOP_COUNT] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("http2-settings"),
];

/// Fields [`Forwarded::set`] adds to a request's map (`X-Forwarded-*`,
/// `X-Request-Id`): room for them when a head is parsed, so that adding them
/// does not grow (and rehash) the map.
pub const ADDED_UPSTREAM: usize = 4;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Whether the request asks for a protocol upgrade the gateway passes on
/// (HTTP/1.1 `Connection: upgrade`, e.g. WebSocket). Never to `h2c`: a
/// solution that took it would speak HTTP/2 with the client past every
/// per-request check (limits, request ids, `X-Forwarded-*`, the access log),
/// so the fields go like any hop-by-hop ones and the request is served as
/// HTTP/1.1 (as Envoy does).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && has_token(headers, header::CONNECTION, "upgrade")
        && !tokens(headers, header::UPGRADE).any(|t| t.eq_ignore_ascii_case(b"h2c"))
}

/// The comma-separated tokens of every `name` field, trimmed, in order.
/// Bytes, not `str`: asked of every response, mostly of no field at all.
pub fn tokens(headers: &HeaderMap, name: HeaderName) -> impl Iterator<Item = &[u8]> {
    headers.get_all(name).into_iter().flat_map(|v| v.as_bytes().split(|b| *b == b',')).map(<[u8]>::trim_ascii)
}

/// Whether a `name` field lists `token` (case-insensitive), e.g. `Connection: close`.
pub fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    tokens(headers, name).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

/// Which hop-by-hop name `name` (any case) is, if any: length and first
/// letter pick the one it can be (most names are none), then one compare.
fn hop_index(name: &[u8]) -> Option<usize> {
    let i = match (name.len(), name.first()? | 0x20) {
        (10, b'c') => 0,
        (10, b'k') => 1,
        (16, b'p') => 2,
        (2, b't') => 3,
        (7, b't') => 4,
        (17, b't') => 5,
        (7, b'u') => 6,
        (19, b'p') => 7,
        (14, b'h') => 8,
        _ => return None,
    };
    name_is(name, HOP_BY_HOP[i].as_str().as_bytes()).then_some(i)
}

/// Whether the field name `name` (as it came: token characters, any case)
/// is `lower` (lower-case letters, digits, '-'), eight bytes at a time.
/// Setting bit 5 (0x20) lower-cases a letter and turns no other token
/// character into one of `lower`'s (only `^` and `_` change: into `~` and
/// DEL), so the compare is exact.
pub fn name_is(name: &[u8], lower: &[u8]) -> bool {
    debug_assert!(lower.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-'), "{lower:?}");
    if name.len() != lower.len() {
        return false;
    }
    let (mut a, mut b) = (name.chunks_exact(8), lower.chunks_exact(8));
    for (x, y) in (&mut a).zip(&mut b) {
        let x = u64::from_le_bytes([x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7]]);
        let y = u64::from_le_bytes([y[0], y[1], y[2], y[3], y[4], y[5], y[6], y[7]]);
        if x | 0x2020_2020_2020_2020 != y {
            return false;
        }
    }
    a.remainder().iter().zip(b.remainder()).all(|(x, y)| x | 0x20 == *y)
}

/// Whether the field name `name` (as it came, any case) is hop-by-hop.
pub fn is_hop_by_hop_name(name: &[u8]) -> bool {
    hop_index(name).is_some()
}

/// Removes hop-by-hop headers, including those named in `Connection`.
/// With `keep_upgrade`, `Upgrade` stays and `Connection: upgrade` is set.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names instead of eight hashed removals: most messages
    // carry none or only `Connection` (which any header naming others needs).
    let mut present = [false; HOP_COUNT];
    for name in headers.keys() {
        if let Some(i) = hop_index(name.as_str().as_bytes()) {
            present[i] = true;
        }
    }
    if !present.contains(&true) {
        return;
    }
    let mut lines = headers.get_all(header::CONNECTION).iter();
    if let Some(conn) = lines.next() {
        // Names in every `Connection` line, however many.
        if lines.next().is_some() || conn.as_bytes().contains(&b',') || !is_plain_token(conn.as_bytes()) {
            let named: Vec<HeaderName> = headers
                .get_all(header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|s| s.split(','))
                .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
                .collect();
            for n in named {
                if !(keep_upgrade && n == header::UPGRADE) {
                    headers.remove(n);
                }
            }
        } else if !is_connection_option(conn.as_bytes())
            && let Ok(n) = HeaderName::from_bytes(conn.as_bytes())
            && !(keep_upgrade && n == header::UPGRADE)
        {
            headers.remove(n);
        }
    }
    let upgrade = if keep_upgrade { headers.remove(header::UPGRADE) } else { None };
    for (h, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        headers.remove(h);
    }
    if let Some(u) = upgrade {
        headers.insert(header::UPGRADE, u);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// `close` names no field, and `keep-alive` one that is hop-by-hop anyway:
/// the common `Connection` values need no name made and looked up.
fn is_connection_option(b: &[u8]) -> bool {
    b.eq_ignore_ascii_case(b"keep-alive") || b.eq_ignore_ascii_case(b"close")
}

fn is_plain_token(b: &[u8]) -> bool {
    b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

/// Copies the request target and header values out of the connection's read
/// buffer into one allocation of their own size.
///
/// hyper's parsed head shares that buffer (8 KiB); while the request is alive
/// the connection cannot reuse it and allocates another to watch for the
/// client closing. A held request can wait for seconds, thousands at once:
/// detached, each keeps a few hundred bytes instead of two buffers.
pub fn detach_head<B>(req: &mut Request<B>) {
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let size = target.len() + req.headers().values().map(HeaderValue::len).sum::<usize>();
    let mut buf = bytes::BytesMut::with_capacity(size);
    buf.extend_from_slice(target.as_bytes());
    for v in req.headers().values() {
        buf.extend_from_slice(v.as_bytes());
    }
    let all = buf.freeze();
    let mut at = target.len();
    if let Ok(uri) = Uri::from_maybe_shared(all.slice(..at)) {
        *req.uri_mut() = uri;
    }
    for v in req.headers_mut().values_mut() {
        let end = at + v.len();
        // The same bytes passed the same check once; an error keeps the original.
        if let Ok(mut own) = HeaderValue::from_maybe_shared(all.slice(at..end)) {
            own.set_sensitive(v.is_sensitive());
            *v = own;
        }
        at = end;
    }
}

/// What the gateway tells a solution about a request: `X-Forwarded-For`,
/// `-Proto`, `-Host` (and `X-Request-Id`, which the request carries anyway).
/// Set in the header map ([`Forwarded::set`]), or written into the request
/// head after the client's fields by the gateway's own client
/// ([`Forwarded::write`]): four fewer map inserts on the common path.
pub struct Forwarded {
    for_: HeaderValue,
    proto: HeaderValue,
    host: HeaderValue,
}

impl Forwarded {
    /// Sets the fields (and `X-Request-Id: id`) in `h`, replacing the client's.
    pub fn set(self, h: &mut HeaderMap, id: &HeaderValue) {
        h.insert(X_FORWARDED_FOR.clone(), self.for_);
        h.insert(X_FORWARDED_PROTO.clone(), self.proto);
        h.insert(X_FORWARDED_HOST.clone(), self.host);
        h.insert(request_id::NAME.clone(), id.clone());
    }

    /// Writes the fields (and `X-Request-Id: id`) as header lines into `out`.
    /// The client's fields of these names are not written ([`Forwarded::replaces`]).
    pub fn write(&self, out: &mut Vec<u8>, id: &HeaderValue) {
        for (name, value) in
            [(&X_FORWARDED_FOR, &self.for_), (&X_FORWARDED_PROTO, &self.proto), (&X_FORWARDED_HOST, &self.host), (&request_id::NAME, id)]
        {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Whether a client's field of this name gives way to the gateway's.
    pub fn replaces(name: &HeaderName) -> bool {
        *name == X_FORWARDED_FOR || *name == X_FORWARDED_PROTO || *name == X_FORWARDED_HOST || *name == request_id::NAME
    }
}

/// Rewrites a client request for the solution: origin-form target, HTTP/1.1,
/// `Host` kept, hop-by-hop fields removed; returns the `X-Forwarded-*` fields
/// to set. `tls`: the client came over TLS (`X-Forwarded-Proto: https`, so
/// that a solution builds `https://` links and secure cookies); a trusted
/// proxy's own `X-Forwarded-Proto` is kept (it terminated the client's
/// connection), and its `X-Forwarded-For` chain extended.
pub fn to_upstream<B>(req: &mut Request<B>, peer: SocketAddr, client: Client, host: &HeaderValue, upgrade: bool, tls: bool) -> Forwarded {
    let origin_form = req.uri().path_and_query().map_or("/", |p| p.as_str());
    if (req.uri().scheme().is_some() || req.uri().authority().is_some())
        && let Ok(u) = Uri::try_from(origin_form)
    {
        *req.uri_mut() = u;
    }
    *req.version_mut() = Version::HTTP_11;
    let h = req.headers_mut();
    strip_hop_by_hop(h, upgrade);
    h.insert(header::HOST, host.clone());
    let own_proto = HeaderValue::from_static(if tls { "https" } else { "http" });
    let (for_, proto) = if client.forwarded_trusted {
        (forwarded_for(h, peer), h.get(&X_FORWARDED_PROTO).cloned().unwrap_or(own_proto))
    } else {
        // From an untrusted peer, a forwarded chain is a claim, not a fact.
        (ip_value(client.ip), own_proto)
    };
    Forwarded { for_, proto, host: host.clone() }
}

thread_local! {
    /// The last client address rendered as a header value: consecutive requests
    /// on a thread mostly come from the same few clients.
    static LAST_IP: std::cell::RefCell<Option<(std::net::IpAddr, HeaderValue)>> = const { std::cell::RefCell::new(None) };
}

/// `ip` as a header value, without a fresh allocation when it was just seen.
fn ip_value(ip: std::net::IpAddr) -> HeaderValue {
    LAST_IP.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((seen, v)) = last.as_ref()
            && *seen == ip
        {
            return v.clone();
        }
        let v = HeaderValue::from_str(&ip.to_string()).unwrap_or(HeaderValue::from_static("unknown"));
        *last = Some((ip, v.clone()));
        v
    })
}

/// A trusted proxy's `X-Forwarded-For` chain with `peer` (that proxy) added.
fn forwarded_for(h: &HeaderMap, peer: SocketAddr) -> HeaderValue {
    match h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => {
            HeaderValue::from_str(&format!("{prev}, {}", peer.ip())).unwrap_or_else(|_| ip_value(peer.ip()))
        }
        _ => ip_value(peer.ip()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn name_is_agrees_with_a_case_insensitive_compare_on_token_names() {
        const TCHAR: &[u8] = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let targets: [&[u8]; 5] = [b"te", b"date", b"connection", b"content-length", b"proxy-authorization"];
        // Every token character at every position of every target.
        for t in targets {
            for i in 0..t.len() {
                for &c in TCHAR {
                    let mut name = t.to_vec();
                    name[i] = c;
                    assert_eq!(name_is(&name, t), name.eq_ignore_ascii_case(t), "{:?} vs {:?}", String::from_utf8_lossy(&name), t);
                }
            }
        }
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..50_000 {
            let t = targets[rng.usize(..targets.len())];
            let name: Vec<u8> = t.iter().map(|b| if rng.bool() { b.to_ascii_uppercase() } else { *b }).collect();
            assert!(name_is(&name, t));
            assert!(!name_is(&name[1..], t));
        }
    }

    #[test]
    fn every_hop_by_hop_name_passes_the_length_filter() {
        for (i, h) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_index(h.as_str().as_bytes()), Some(i), "{h}");
            assert!(is_hop_by_hop_name(h.as_str().to_ascii_uppercase().as_bytes()), "{h}");
        }
        assert!(!is_hop_by_hop_name(b"Content-Type"));
        assert!(!is_hop_by_hop_name(b"x-connection"));
        assert_eq!(hop_index(header::CONTENT_TYPE.as_str().as_bytes()), None);
        assert_eq!(hop_index(b"x-upgrade"), None);
    }

    #[test]
    fn finds_tokens_in_any_field_and_case() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.append(header::CONNECTION, HeaderValue::from_static(" Upgrade ,  CLOSE"));
        assert!(has_token(&h, header::CONNECTION, "close"));
        assert!(has_token(&h, header::CONNECTION, "upgrade"));
        assert!(!has_token(&h, header::CONNECTION, "clos"));
        assert!(!has_token(&h, header::TE, "trailers"));
    }

    #[test]
    fn leaves_end_to_end_headers_alone() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("nlp.localhost"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 2);
        // Only `Keep-Alive` (no `Connection`) is still found and removed.
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 2);
        assert!(!h.contains_key("keep-alive"));
    }

    #[test]
    fn keeps_upgrade_when_asked() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(wants_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");
    }

    #[test]
    fn never_passes_on_an_h2c_upgrade() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade, HTTP2-Settings"));
        h.insert(header::UPGRADE, HeaderValue::from_static("H2C"));
        h.insert("http2-settings", HeaderValue::from_static("AAMAAABkAARAAAAAAAIAAAAA"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        assert!(!wants_upgrade(&h));
        // Not named in `Connection`, `HTTP2-Settings` goes all the same.
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        assert!(!wants_upgrade(&h));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.keys().map(HeaderName::as_str).collect::<Vec<_>>(), ["x-kept"]);
    }

    #[test]
    fn removes_the_names_of_every_connection_line() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.append(header::CONNECTION, HeaderValue::from_static("X-Secret"));
        h.insert("x-secret", HeaderValue::from_static("s"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.keys().map(HeaderName::as_str).collect::<Vec<_>>(), ["x-kept"]);
    }

    #[test]
    fn forwards_client_address_and_origin_form() {
        let mut req = Request::builder().uri("http://nlp.localhost/a?b=1").body(()).unwrap_or_default();
        req.headers_mut().insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        let host = HeaderValue::from_static("nlp.localhost");
        let peer: SocketAddr = "127.0.0.9:5".parse().unwrap();
        let trusted = Client { ip: "10.0.0.1".parse().unwrap(), forwarded_trusted: true };
        req.headers_mut().insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let id = HeaderValue::from_static("id1");
        to_upstream(&mut req, peer, trusted, &host, false, false).set(req.headers_mut(), &id);
        assert_eq!(req.uri(), "/a?b=1");
        assert_eq!(req.headers()["x-forwarded-for"], "10.0.0.1, 127.0.0.9");
        assert_eq!(req.headers()["x-forwarded-proto"], "https", "a trusted proxy knows the client's scheme");
        let untrusted = Client { ip: "127.0.0.9".parse().unwrap(), forwarded_trusted: false };
        to_upstream(&mut req, peer, untrusted, &host, false, false).set(req.headers_mut(), &id);
        assert_eq!(req.headers()["x-forwarded-for"], "127.0.0.9");
        assert_eq!(req.headers()["x-forwarded-proto"], "http", "an untrusted claim is replaced");
        let fwd = to_upstream(&mut req, peer, untrusted, &host, false, true);
        let mut out = Vec::new();
        fwd.write(&mut out, &id);
        assert_eq!(
            out,
            b"x-forwarded-for: 127.0.0.9\r\nx-forwarded-proto: https\r\nx-forwarded-host: nlp.localhost\r\nx-request-id: id1\r\n"
        );
        fwd.set(req.headers_mut(), &id);
        assert_eq!(req.headers()["x-forwarded-proto"], "https");
        assert!(req.headers().keys().filter(|k| k.as_str().starts_with("x-")).all(Forwarded::replaces));
        assert_eq!(req.headers()["host"], "nlp.localhost");
        assert_eq!(req.headers()["x-request-id"], "id1");
    }

    #[test]
    fn a_detached_head_keeps_its_bytes_but_not_the_read_buffer() {
        // What hyper does: the target and values are slices of one read buffer.
        let buffer = bytes::Bytes::from_static(b"/a?b=1 nlp.localhost Bearer x 1 2");
        let shared = |a: usize, b: usize| HeaderValue::from_maybe_shared(buffer.slice(a..b)).unwrap();
        let mut req = Request::builder().uri(Uri::from_maybe_shared(buffer.slice(0..6)).unwrap()).body(()).unwrap();
        let h = req.headers_mut();
        h.insert(header::HOST, shared(7, 20));
        let mut secret = shared(21, 29);
        secret.set_sensitive(true);
        h.insert(header::AUTHORIZATION, secret);
        h.append("x-twice", shared(30, 31));
        h.append("x-twice", shared(32, 33));
        let range = buffer.as_ptr_range();
        let inside = |p: *const u8| range.contains(&p);
        assert!(inside(req.uri().path().as_ptr()));

        detach_head(&mut req);
        assert_eq!(req.uri(), "/a?b=1");
        assert_eq!(req.headers()["host"], "nlp.localhost");
        assert_eq!(req.headers()["authorization"], "Bearer x");
        assert!(req.headers()["authorization"].is_sensitive());
        let twice: Vec<_> = req.headers().get_all("x-twice").iter().collect();
        assert_eq!(twice, ["1", "2"]);
        assert!(!inside(req.uri().path().as_ptr()), "the target still points into the read buffer");
        for v in req.headers().values() {
            assert!(!inside(v.as_bytes().as_ptr()), "{v:?} still points into the read buffer");
        }
    }
}
