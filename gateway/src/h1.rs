//! The gateway's own HTTP/1.1 server loop, for requests without a body (most
//! of them). Everything else (a body, an upgrade, `Expect`, CONNECT, HTTP/2
//! prior knowledge, more header fields than it parses) is handed to hyper
//! with the bytes read so far, for the rest of the connection. A malformed
//! or oversized head is refused here, with a body and a request id (hyper
//! answers with neither), and so is ambiguous framing it can tell.
//!
//! Why: hyper keeps an 8 KiB read and an 8 KiB write buffer per connection
//! for as long as a request is in service, and a held request can wait for
//! seconds, thousands at once. This loop keeps no read buffer while the
//! handler works (the head is copied out, the buffer goes back to a
//! per-thread spare list for the next read of any connection), and
//! allocates its write buffer only to answer. It is also less work per
//! request: one parse into the header map, the answer's head and first body
//! bytes in one write.

use std::future::Future;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, Uri, Version};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;

use crate::conn::Conn;
use crate::limits::body::RequestBody;
use crate::refusal::Refusal;
use crate::server::{ConnInfo, Tracked, stopped};

/// Most header fields parsed here; a request with more goes to hyper (which
/// applies `max-headers`). Browsers send 10 to 20.
const MAX_FIELDS: usize = 64;
/// Read size for a request head.
const HEAD_READ: usize = 8 * 1024;
/// Body bytes copied next to the response head (one write); larger frames
/// are written from where they are.
const COPY_MAX: usize = 16 * 1024;

thread_local! {
    static HEAD_CHUNK: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
}
/// Request heads are copied out of the read buffer into these (2 KiB; a
/// longer head gets its own): no allocation per head. A head lives until
/// its answer's head arrives (longer only while held for a wake), keeping
/// its 2 KiB buffer alive meanwhile.
static HEADS: crate::chunk::Chunks = crate::chunk::Chunks::new(&HEAD_CHUNK, 2048);

/// Where a header's name and value lie in a message head: offsets and lengths.
pub(crate) type Span = (u32, u32, u32, u32);

/// The span of `field`, parsed from the buffer that starts at `base`.
pub(crate) fn span(base: *const u8, field: &httparse::Header<'_>) -> Span {
    let at = |s: &[u8]| (s.as_ptr() as usize - base as usize) as u32;
    (at(field.name.as_bytes()), field.name.len() as u32, at(field.value), field.value.len() as u32)
}

/// The header map of a head whose fields lie at `spans`; values share its bytes.
/// `room`: fields the gateway will add, so that adding them does not grow
/// (and rehash) the map.
pub(crate) fn header_map(head: &Bytes, spans: impl ExactSizeIterator<Item = Span>, room: usize) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::with_capacity(spans.len() + room);
    for (n, nl, v, vl) in spans {
        let (n, nl, v, vl) = (n as usize, nl as usize, v as usize, vl as usize);
        let name = HeaderName::from_bytes(&head[n..n + nl]).map_err(|_| "invalid header name".to_string())?;
        let value = HeaderValue::from_maybe_shared(head.slice(v..v + vl)).map_err(|_| format!("invalid value of {name}"))?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// What the connection needs to know about a request to answer it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Meta {
    /// The client may send another request after this one.
    keep_alive: bool,
    /// A HEAD request: the answer has no body.
    head: bool,
    /// An HTTP/1.0 client: no chunked encoding.
    http10: bool,
}

// Returned once per request head and taken apart at once: boxing the
// request would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Parsed {
    Request(Request<RequestBody>, Meta),
    /// The head is not complete yet.
    Partial,
    /// Not for this loop: hyper takes the connection.
    Handoff,
    /// Answered here and the connection closed: malformed, or over a limit.
    Refuse(Refusal),
}

/// A request head refused by this loop (see [`Parsed::Refuse`]): the
/// connection's error, so that its refusal is counted and logged.
#[derive(Debug)]
pub struct Refused {
    /// What the client was told.
    pub refusal: Refusal,
    /// The request id it was told.
    pub rid: HeaderValue,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "refused with {}: {}", self.refusal.status, self.refusal.message)
    }
}

impl std::error::Error for Refused {}

fn malformed(message: &'static str) -> Parsed {
    Parsed::Refuse(Refusal::new(http::StatusCode::BAD_REQUEST, "bad_request", message))
}

fn too_large(message: String) -> Parsed {
    Parsed::Refuse(Refusal::new(http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "headers_too_large", message))
}

/// A head with more than [`MAX_FIELDS`] fields: refused if it has more than
/// `max_headers` too, else hyper's (parsed again here with room for them,
/// which only such rare heads pay).
fn too_many(buf: &[u8], max_headers: usize) -> Parsed {
    let mut fields = vec![httparse::EMPTY_HEADER; max_headers];
    match httparse::Request::new(&mut fields).parse(buf) {
        Err(httparse::Error::TooManyHeaders) => too_large(format!("the request has more than {max_headers} header fields")),
        _ => Parsed::Handoff,
    }
}

/// The length a `Content-Length` value gives: one number of digits (or a
/// list of the same one, RFC 9110 §8.6) that fits 64 bits, else `None`.
fn content_length(value: &[u8]) -> Option<u64> {
    let mut parts = value.split(|b| *b == b',').map(<[u8]>::trim_ascii);
    let first = parts.next().filter(|p| !p.is_empty() && p.iter().all(u8::is_ascii_digit))?;
    let n = std::str::from_utf8(first).ok()?.parse().ok()?;
    parts.all(|p| p == first).then_some(n)
}

/// Parses the request head at the start of `buf`, taking it off when it is
/// served here. The head is copied out (a few hundred bytes): the request
/// then shares nothing with the read buffer, which goes back to [`spare`].
///
/// A head longer than `max_size` is refused however it arrived (hyper's
/// limit is its read buffer's: a head completed by one large read may pass
/// it), and so are malformed ones, with a body and a request id (hyper would
/// answer them with neither).
fn parse(buf: &mut BytesMut, max_headers: usize, max_size: usize) -> Parsed {
    // Uninitialised: zeroing 64 fields would cost more than parsing most heads.
    let mut fields = [const { std::mem::MaybeUninit::uninit() }; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= max_size => {
            return too_large(format!("the request head is larger than {max_size} bytes"));
        }
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        // More fields than this loop parses: hyper serves the request if it
        // has no more than `max-headers`.
        Err(httparse::Error::TooManyHeaders) => return too_many(buf, max_headers),
        // HTTP/2 with prior knowledge, when the first bytes did not tell.
        Err(_) if buf.starts_with(crate::conn::H2_PREFACE) => return Parsed::Handoff,
        Err(httparse::Error::Version) => return malformed("the request line names no HTTP version served here (HTTP/1.0, HTTP/1.1)"),
        Err(_) => return malformed("the request head is malformed"),
    };
    if len > max_size {
        return too_large(format!("the request head is larger than {max_size} bytes"));
    }
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else { return Parsed::Handoff };
    if req.headers.len() > max_headers {
        return too_large(format!("the request has more than {max_headers} header fields"));
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else { return Parsed::Handoff };
    if method == Method::CONNECT {
        return Parsed::Handoff;
    }
    let http10 = version == 0;
    let mut keep_alive = !http10;
    // Framing, checked in every field before anything is handed on.
    let (mut cl, mut te, mut chunked_last, mut handoff) = (None::<u64>, false, false, false);
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let is = |n: &str| crate::forward::name_is(name, n.as_bytes());
        // By length first: most fields (host, user-agent, accept…) are none
        // of these, and are told so by one compare.
        match name.len() {
            14 if is("content-length") => {
                let Some(n) = content_length(h.value) else { return malformed("the Content-Length is not one length") };
                if cl.is_some_and(|first| first != n) {
                    return malformed("the Content-Length fields disagree");
                }
                cl = Some(n);
            }
            17 if is("transfer-encoding") => {
                // The last coding must be chunked, and chunked only once (RFC 9112 §6.1).
                for coding in h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                    if chunked_last {
                        return malformed("the Transfer-Encoding applies chunked before another coding");
                    }
                    chunked_last = coding.eq_ignore_ascii_case(b"chunked");
                }
                te = true;
            }
            7 | 6 | 14 if is("upgrade") || is("expect") || is("http2-settings") => handoff = true,
            10 if is("connection") => {
                for token in h.value.split(|b| *b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        keep_alive = false;
                    } else if http10 && token.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive = true;
                    }
                }
            }
            _ => {}
        }
    }
    if te && http10 {
        return malformed("HTTP/1.0 has no Transfer-Encoding");
    }
    if te && !chunked_last {
        return malformed("the Transfer-Encoding does not end in chunked");
    }
    if te || handoff || cl.is_some_and(|n| n > 0) {
        return Parsed::Handoff;
    }
    let base = buf.as_ptr() as usize;
    let target = (path.as_ptr() as usize - base, path.len());
    let head = HEADS.copy(&buf[..len]);
    let fields = req.headers.iter().map(|f| span(buf.as_ptr(), f));
    let built = Uri::from_maybe_shared(head.slice(target.0..target.0 + target.1))
        .ok()
        .and_then(|uri| header_map(&head, fields, crate::forward::ADDED_UPSTREAM).ok().map(|h| (uri, h)));
    // Else the head stays in `buf` for hyper, which answers it properly.
    let Some((uri, headers)) = built else { return Parsed::Handoff };
    buf.advance(len);
    let mut request = Request::new(RequestBody::Empty);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = if http10 { Version::HTTP_10 } else { Version::HTTP_11 };
    *request.headers_mut() = headers;
    let head_only = request.method() == Method::HEAD;
    Parsed::Request(request, Meta { keep_alive, head: head_only, http10 })
}

/// Parses one request head at the start of `buf` as the server loop does:
/// the request if this loop would serve it, `None` if it is incomplete or
/// would go to hyper (for benchmarks of the hot path).
pub fn parse_request(buf: &mut BytesMut, max_headers: usize) -> Option<Request<RequestBody>> {
    match parse(buf, max_headers, usize::MAX) {
        Parsed::Request(req, _) => Some(req),
        Parsed::Partial | Parsed::Handoff | Parsed::Refuse(_) => None,
    }
}

/// How long a refused connection is read from (and what it sends dropped)
/// before it is closed, and how much of it: closed at once, a client still
/// sending its head would get a reset instead of the answer (nginx's
/// `lingering_close`).
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);
/// See [`LINGER`].
const LINGER_MAX: usize = 1 << 20;

/// Stops writing to `io`, then drops what the client still sends (see [`LINGER`]).
async fn linger<I: AsyncRead + AsyncWrite + Unpin>(io: &mut I) {
    let _ = io.shutdown().await;
    let mut scratch = [0u8; 4096];
    let mut left = LINGER_MAX;
    let _ = tokio::time::timeout(LINGER, async {
        while left > 0 {
            match io.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

/// What serves one connection: the handler, and what it needs around it.
pub struct Service<'a, F> {
    /// The request handler.
    pub handler: &'a F,
    /// The client.
    pub peer: SocketAddr,
    /// What the handler is told of a TLS connection.
    pub info: Option<Arc<ConnInfo>>,
    /// The connection's watchdog state.
    pub conn: &'a Arc<Conn>,
    /// `max-headers`.
    pub max_headers: usize,
    /// `max-header-size`: a pipelined request beyond it is not read ahead.
    pub max_header_size: usize,
}

/// Serves requests on `io` until the client closes, the listener stops
/// (`stop`), or a request is not for this loop: then `io` and the bytes read
/// of it so far are returned, for hyper.
pub async fn serve<I, F, Fut>(mut io: I, svc: Service<'_, F>, stop: watch::Receiver<bool>) -> io::Result<Option<(I, Bytes)>>
where
    I: AsyncRead + AsyncWrite + Unpin,
    F: Fn(SocketAddr, Option<&ConnInfo>, Request<RequestBody>) -> Fut,
    Fut: Future<Output = crate::server::Answer>,
{
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    // One watch for the connection's life: a waiter registered once, not
    // registered and removed again for every request.
    let mut watch = stop.clone();
    let stopping = stopped(&mut watch);
    tokio::pin!(stopping);
    loop {
        let (req, meta) = loop {
            if !buf.is_empty() {
                match parse(&mut buf, svc.max_headers, svc.max_header_size) {
                    Parsed::Request(req, meta) => break (req, meta),
                    Parsed::Handoff => return Ok(Some((io, buf.freeze()))),
                    Parsed::Refuse(refusal) => {
                        let rid = crate::request_id::generate();
                        io.write_all(&refusal.wire(&rid)).await?;
                        // Boxed: its buffer is no part of every connection's state.
                        Box::pin(linger(&mut io)).await;
                        return Err(io::Error::other(Refused { refusal, rid }));
                    }
                    Parsed::Partial => {}
                }
            }
            if buf.capacity() == 0 {
                buf = spare::take();
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(HEAD_READ);
            }
            let n = if buf.is_empty() {
                // Between requests a stopping listener closes the connection.
                // The read first: woken by the next request, the stop watch
                // is not polled again.
                tokio::select! {
                    biased;
                    n = io.read_buf(&mut buf) => n?,
                    _ = &mut stopping => return Ok(None),
                }
            } else {
                io.read_buf(&mut buf).await?
            };
            if n == 0 {
                return Ok(None);
            }
        };
        let serving = svc.conn.serving();
        // The head's bytes went with the request; an empty buffer is not
        // kept while the handler works (a held request can wait long).
        if buf.is_empty() {
            spare::give(std::mem::take(&mut buf));
        }
        // In a block of its own: the handler's future is gone before the
        // answer is written, and the two share this future's storage.
        let resp = {
            // Pinned where it is made: `tokio::pin!` would move it into a
            // second slot (the handler's future is most of this one's size).
            let mut answer = std::pin::pin!((svc.handler)(svc.peer, svc.info.as_deref(), req));
            let mut probe = [0u8; 64];
            let mut watching = true;
            loop {
                tokio::select! {
                    biased;
                    resp = answer.as_mut() => break resp,
                    // A client that closes while its request waits takes the
                    // request with it (a held request leaves the queue).
                    read = io.read(&mut probe), if watching => match read {
                        Ok(0) | Err(_) => return Ok(None),
                        Ok(n) => {
                            buf.extend_from_slice(&probe[..n]);
                            watching = buf.len() < svc.max_header_size;
                        }
                    },
                }
            }
        };
        let closing = *stop.borrow();
        let crate::server::Answer { resp, log } = resp;
        let resp = resp.map(|b| Tracked { inner: b, _serving: serving, log });
        let keep = write_response(&mut io, &mut out, resp, meta, closing).await?;
        if out.capacity() > COPY_MAX * 2 {
            out = Vec::new();
        }
        if !keep {
            let _ = io.shutdown().await;
            return Ok(None);
        }
    }
}

/// Read buffers between requests, for the next read of any connection on
/// this thread. A connection gives its buffer back once a request's head is
/// parsed (copied out) and takes one to read the next: no buffer is freed and
/// allocated per request, and none is kept by a connection whose request
/// waits (held requests, thousands at once).
mod spare {
    use std::cell::RefCell;

    use bytes::BytesMut;

    use super::HEAD_READ;

    /// Buffers kept per thread, at most (512 KiB).
    const KEEP: usize = 64;

    thread_local! {
        static BUFS: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    }

    /// An empty buffer of about [`HEAD_READ`] bytes.
    pub fn take() -> BytesMut {
        BUFS.with(|b| b.borrow_mut().pop()).unwrap_or_else(|| BytesMut::with_capacity(HEAD_READ))
    }

    /// Keeps `buf` for [`take`], unless it grew (a large head) or enough are kept.
    pub fn give(mut buf: BytesMut) {
        buf.clear();
        if buf.capacity() == 0 || buf.capacity() > HEAD_READ {
            return;
        }
        BUFS.with(|b| {
            let mut b = b.borrow_mut();
            if b.len() < KEEP {
                b.push(buf);
            }
        });
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    Close,
}

/// Writes `resp`; returns whether the connection can carry another request.
async fn write_response<I>(io: &mut I, out: &mut Vec<u8>, resp: Response<Tracked>, meta: Meta, closing: bool) -> io::Result<bool>
where
    I: AsyncWrite + Unpin,
{
    let (parts, mut body) = resp.into_parts();
    // The access log says what reached the client, not what was read: cut
    // unless the writing ends well (this future may also be dropped mid-way).
    if let Some(log) = &mut body.log {
        log.cut();
    }
    let written = write_answer(io, out, &parts, &mut body, meta, closing).await;
    if written.is_ok()
        && let Some(log) = &mut body.log
    {
        log.delivered();
    }
    written
}

async fn write_answer<I>(
    io: &mut I,
    out: &mut Vec<u8>,
    parts: &http::response::Parts,
    body: &mut Tracked,
    meta: Meta,
    closing: bool,
) -> io::Result<bool>
where
    I: AsyncWrite + Unpin,
{
    let status = parts.status;
    let headers = &parts.headers;
    // A solution's head passed on as it came: the map holds only what the
    // gateway set, which replaces a field of the same name.
    let raw = body.inner.take_raw_head();
    let close_asked = crate::forward::has_token(headers, header::CONNECTION, "close");
    let mut keep = meta.keep_alive && !closing && !close_asked;
    let bodyless = meta.head || status.is_informational() || status.as_u16() == 204 || status.as_u16() == 304;
    out.clear();
    out.extend_from_slice(if meta.http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let declared = match &raw {
        Some(raw) => raw.declared().0.map(Some),
        None => headers.get(header::CONTENT_LENGTH).map(|v| v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok())),
    };
    let mut framing = if bodyless {
        // A HEAD answer tells the length the body would have, as hyper does.
        if meta.head
            && declared.is_none()
            && let Some(n) = body.size_hint().exact()
            && n > 0
        {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        Framing::None
    } else {
        match declared {
            Some(Some(n)) => Framing::Length(n),
            Some(None) => Framing::Close,
            None => match body.size_hint().exact() {
                Some(n) => {
                    out.extend_from_slice(b"content-length: ");
                    push_decimal(out, n);
                    out.extend_from_slice(b"\r\n");
                    Framing::Length(n)
                }
                None if meta.http10 => Framing::Close,
                None => {
                    out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                    Framing::Chunked
                }
            },
        }
    };
    if framing == Framing::Close {
        keep = false;
    }
    if let Some(raw) = &raw {
        for (name, line) in raw.lines() {
            if raw.replaced(name) || headers.keys().any(|k| crate::direct::same_name(k, name)) {
                continue;
            }
            out.extend_from_slice(line);
            out.extend_from_slice(b"\r\n");
        }
        for (name, value) in raw.own() {
            write_field(out, name, value);
        }
        if let (Some(n), true) = raw.declared() {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
    }
    for (name, value) in headers {
        // The framing is this writer's: the handler's own say on it is dropped.
        if name == header::CONNECTION || name == header::TRANSFER_ENCODING {
            continue;
        }
        write_field(out, name, value);
    }
    if !raw.as_ref().is_some_and(|r| r.has_date()) && !headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        date::with(|d| out.extend_from_slice(d));
        out.extend_from_slice(b"\r\n");
    }
    if !keep && !meta.http10 {
        out.extend_from_slice(b"connection: close\r\n");
    } else if keep && meta.http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if framing == Framing::None {
        io.write_all(out).await?;
        io.flush().await?;
        return Ok(keep);
    }
    let mut trailers = None;
    loop {
        // Frames ready now join what is waiting to be written; the rest is
        // written before waiting for more (a live stream is never held back).
        let next = match std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).now_or_never() {
            Some(next) => next,
            None => {
                if !out.is_empty() {
                    io.write_all(out).await?;
                    io.flush().await?;
                    out.clear();
                }
                std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
            }
        };
        let frame = match next {
            None => break,
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                // What was announced cannot be completed: the client sees the
                // connection close early, as with hyper.
                tracing::debug!("response body failed: {e}");
                if !out.is_empty() {
                    let _ = io.write_all(out).await;
                }
                return Ok(false);
            }
        };
        let data = match frame.into_data() {
            Ok(d) => d,
            Err(frame) => {
                trailers = frame.into_trailers().ok();
                continue;
            }
        };
        if data.is_empty() {
            continue;
        }
        let data = match &mut framing {
            Framing::Length(left) => {
                if data.len() as u64 > *left {
                    keep = false;
                    data.slice(..usize::try_from(*left).unwrap_or(0))
                } else {
                    data
                }
            }
            _ => data,
        };
        if let Framing::Length(left) = &mut framing {
            *left -= data.len() as u64;
        }
        if framing == Framing::Chunked {
            // Into the buffer itself: no string per chunk.
            let _ = write!(out, "{:x}\r\n", data.len());
        }
        if data.len() <= COPY_MAX {
            out.extend_from_slice(&data);
        } else {
            io.write_all(out).await?;
            out.clear();
            io.write_all(&data).await?;
        }
        if framing == Framing::Chunked {
            out.extend_from_slice(b"\r\n");
        }
    }
    match framing {
        Framing::Chunked => {
            out.extend_from_slice(b"0\r\n");
            for (name, value) in trailers.iter().flatten() {
                write_field(out, name, value);
            }
            out.extend_from_slice(b"\r\n");
        }
        // A body shorter than announced: the client must not wait for the rest.
        Framing::Length(left) if left > 0 => keep = false,
        _ => {}
    }
    if !out.is_empty() {
        io.write_all(out).await?;
        out.clear();
    }
    io.flush().await?;
    Ok(keep)
}

/// One `name: value` line of a head (or of trailers).
fn write_field(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in decimal (the `itoa` crate: two digits per step from a
/// table; a request's log line writes a dozen numbers).
pub(crate) fn push_decimal(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// The `Date` header value, formatted once a second per thread.
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }

    pub fn with(f: impl FnOnce(&[u8])) {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        CACHED.with(|c| {
            let mut c = c.borrow_mut();
            if c.0 != secs || c.1.is_empty() {
                *c = (secs, httpdate::fmt_http_date(now));
            }
            f(c.1.as_bytes());
        });
    }
}

/// `io` with bytes already read from it put back in front.
pub struct Rewind<I> {
    prefix: Bytes,
    inner: I,
}

impl<I> Rewind<I> {
    /// Reads return `prefix` first, then `inner`'s bytes.
    pub fn new(inner: I, prefix: Bytes) -> Self {
        Self { prefix, inner }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(raw: &'static [u8]) -> Parsed {
        parse(&mut BytesMut::from(raw), 100, 8192)
    }

    #[test]
    fn a_bodyless_request_is_parsed_with_its_connection_semantics() {
        let mut buf = BytesMut::from(&b"GET /a?b=1 HTTP/1.1\r\nHost: nlp.localhost\r\nX-Two: 1\r\nx-two: 2\r\n\r\nGET / HTTP/1.0\r\n"[..]);
        let Parsed::Request(req, meta) = parse(&mut buf, 100, 8192) else { panic!("not parsed") };
        assert_eq!(req.uri(), "/a?b=1");
        assert_eq!(req.headers()["host"], "nlp.localhost");
        assert_eq!(req.headers().get_all("x-two").iter().count(), 2);
        assert_eq!(meta, Meta { keep_alive: true, head: false, http10: false });
        assert_eq!(&buf[..], b"GET / HTTP/1.0\r\n", "the pipelined rest stays");
        assert!(matches!(parse(&mut buf, 100, 8192), Parsed::Partial));

        let Parsed::Request(_, meta) = parsed(b"HEAD / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n") else { panic!() };
        assert_eq!(meta, Meta { keep_alive: true, head: true, http10: true });
        let Parsed::Request(_, meta) = parsed(b"GET / HTTP/1.0\r\n\r\n") else { panic!() };
        assert!(!meta.keep_alive);
        let Parsed::Request(_, meta) = parsed(b"GET / HTTP/1.1\r\nconnection: foo, close\r\n\r\n") else { panic!() };
        assert!(!meta.keep_alive);
        assert!(matches!(parsed(b"DELETE /x HTTP/1.1\r\nContent-Length: 0\r\n\r\n"), Parsed::Request(..)));
    }

    #[test]
    fn bodies_upgrades_and_http2_go_to_hyper_with_every_byte() {
        for raw in [
            &b"POST / HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc"[..],
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
            b"PUT / HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 0\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            let mut buf = BytesMut::from(raw);
            assert!(matches!(parse(&mut buf, 100, 8192), Parsed::Handoff), "{:?}", String::from_utf8_lossy(raw));
            assert_eq!(&buf[..], raw, "bytes lost on handoff");
        }
        // A GET with `n` header fields.
        let with_fields = |n: usize| {
            let mut head = b"GET / HTTP/1.1\r\n".to_vec();
            for i in 0..n {
                head.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
            }
            head.extend_from_slice(b"\r\n");
            head
        };
        let many = with_fields(5);
        let refused = |raw: &[u8], max_headers, max_size| match parse(&mut BytesMut::from(raw), max_headers, max_size) {
            Parsed::Refuse(r) => r.status.as_u16(),
            other => panic!("{other:?} for {:?}", String::from_utf8_lossy(raw)),
        };
        assert_eq!(refused(&many, 4, 8192), 431, "more than max-headers");
        let seventy = with_fields(70);
        assert_eq!(refused(&seventy, 69, 8192), 431, "more than this loop parses, and than max-headers");
        assert!(matches!(parse(&mut BytesMut::from(&seventy[..]), 100, 8192), Parsed::Handoff), "more than this loop parses only");
        assert_eq!(refused(b"GET / HTTP/1.1\r\nx: 0123456789\r\n\r\n", 100, 20), 431, "a complete head over the size");
        assert_eq!(refused(b"GET / HTTP/1.1\r\nx: 0123456789", 100, 20), 431, "an incomplete head at the size");
    }

    #[test]
    fn malformed_heads_and_framing_are_refused_here() {
        for raw in [
            &b"GET / HTTP/1.1\r\nbad header\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nx: \x01\r\n\r\n",
            b"G@T / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.2\r\n\r\n",
            b"POST / HTTP/1.1\r\ncontent-length: +3\r\n\r\nabc",
            b"POST / HTTP/1.1\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabc",
            b"POST / HTTP/1.1\r\ncontent-length: 3, 4\r\n\r\nabc",
            b"POST / HTTP/1.1\r\ncontent-length: 184467440737095516150\r\n\r\n",
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked, identity\r\n\r\n",
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\n",
            b"POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n",
        ] {
            match parse(&mut BytesMut::from(raw), 100, 8192) {
                Parsed::Refuse(r) => assert_eq!(r.status.as_u16(), 400, "{:?}", String::from_utf8_lossy(raw)),
                other => panic!("{other:?} for {:?}", String::from_utf8_lossy(raw)),
            }
        }
        // The same length twice, or listed twice, is one length (RFC 9110 §8.6).
        for raw in [
            &b"POST / HTTP/1.1\r\ncontent-length: 3\r\ncontent-length: 3\r\n\r\nabc"[..],
            b"POST / HTTP/1.1\r\ncontent-length: 3, 3\r\n\r\nabc",
        ] {
            assert!(matches!(parse(&mut BytesMut::from(raw), 100, 8192), Parsed::Handoff), "{:?}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn numbers_print_in_decimal() {
        let decimal = |n| {
            let mut out = b"x".to_vec();
            push_decimal(&mut out, n);
            out
        };
        assert_eq!(decimal(0), b"x0");
        assert_eq!(decimal(1_048_576), b"x1048576");
        assert_eq!(decimal(u64::MAX), b"x18446744073709551615");
    }
}
