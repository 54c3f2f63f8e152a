//! The gateway's own HTTP/1.1 client, for requests without a body (most of
//! them: page loads, assets, GET APIs).
//!
//! hyper's client drives each upstream connection in a task of its own: the
//! request goes to it over a channel, the response head comes back over
//! another, and every body chunk over a third, each a wake-up of one task by
//! another. Here the request's own task writes the head, reads the answer and
//! streams the body straight from the socket (Pingora's design), and the
//! connection goes back to the endpoint's pool when the body is complete.
//! Requests with a body, and upgrades, still take hyper's client.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::upstream::{self, Done, Endpoint, SEND_ATTEMPTS};
use crate::{conn, forward, h1};

/// Largest response head accepted from a solution.
const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in a response head (and in a trailer section).
const MAX_HEADERS: usize = 128;
/// First read size; doubled while reads fill it (large bodies), up to [`MAX_READ`].
const FIRST_READ: usize = 8 * 1024;
const MAX_READ: usize = 256 * 1024;
/// A pooled connection keeps its read buffer only up to this size.
const KEEP_BUFFER: usize = 16 * 1024;

/// One HTTP/1.1 connection to a solution endpoint. Kept boxed for its life
/// (pool, body, pool again): a request's answer moves a pointer, not the
/// connection, through the futures that carry it.
pub struct Conn {
    io: TcpStream,
    buf: BytesMut,
    out: Vec<u8>,
    next_read: usize,
}

impl Conn {
    fn new(io: TcpStream) -> Box<Self> {
        Box::new(Self { io, buf: BytesMut::new(), out: Vec::new(), next_read: FIRST_READ })
    }

    /// Reads more of the response into the buffer; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(self.next_read);
        }
        loop {
            ready!(self.io.poll_read_ready(cx))?;
            let spare = self.buf.capacity() - self.buf.len();
            // The read for the next response then waits for its event
            // instead of costing a `recv` that fails with EAGAIN.
            match conn::read_draining(&self.io, &mut self.buf, spare) {
                Ok(n) => {
                    if n == spare && n > 0 {
                        self.next_read = (self.next_read * 2).min(MAX_READ);
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Whether the solution has not closed the connection: no end of stream
    /// (or stray bytes) waiting to be read.
    pub fn is_open(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// Readies the connection for the pool: an unread rest means the solution
    /// sent more than it framed, and a grown buffer is not kept idle.
    fn into_idle(mut self: Box<Self>) -> Option<Box<Self>> {
        if !self.buf.is_empty() {
            return None;
        }
        if self.buf.capacity() > KEEP_BUFFER {
            self.buf = BytesMut::new();
            self.next_read = FIRST_READ;
        }
        Some(self)
    }
}

/// Why an exchange failed.
#[derive(Debug)]
pub enum Error {
    /// The request did not reach the solution (it can be sent elsewhere or later).
    NotSent(String),
    /// The solution may have seen the request; it is not repeated.
    Failed(String),
}

/// A solution's answer: its head, and the body still on the connection.
pub struct Answer {
    /// Status and headers (the body follows in [`DirectBody`]). Mostly the
    /// solution's fields travel with the body as they came ([`RawHead`]),
    /// and this map is left for the gateway's own.
    pub head: Response<()>,
    /// The body, read from the connection as the client takes it.
    pub body: DirectBody,
}

/// Whether the request can take this client: no body, no upgrade.
pub fn eligible<B: http_body::Body>(req: &Request<B>, upgrade: bool) -> bool {
    !upgrade && req.body().is_end_stream()
}

/// Sends the bodyless request `req` to `ep` and reads the response head.
/// A pooled connection the solution closed meanwhile is retried on another
/// (for methods that are safe to repeat, RFC 9110 §9.2.2, as nginx does; the
/// others are sent only on a connection seen open). Every pooled connection
/// may be tried (a restarted solution leaves them all closed), and up to
/// [`SEND_ATTEMPTS`] new ones (as many as hyper's path tries).
/// `added`: forwarded fields to write after the request's own (see [`encode`]).
pub async fn send<B>(
    ep: &Endpoint,
    req: &Request<B>,
    added: Option<(&forward::Forwarded, &HeaderValue)>,
    connect_timeout: Duration,
) -> Result<Answer, Error> {
    let idempotent = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE);
    let head_only = req.method() == Method::HEAD;
    let mut last = String::new();
    let mut fresh = 0;
    loop {
        let (mut conn, reused) = match ep.direct_idle.pop() {
            Some(c) => (c, true),
            None if fresh < SEND_ATTEMPTS => {
                fresh += 1;
                let io = Box::pin(upstream::dial(ep.addr, connect_timeout)).await.map_err(Error::NotSent)?;
                (Conn::new(io), false)
            }
            None => return Err(Error::NotSent(last)),
        };
        if reused && !idempotent && !conn.is_open() {
            continue;
        }
        encode(&mut conn.out, req, added);
        if let Err(e) = conn.io.write_all(&conn.out).await {
            // A request the solution could not take whole was not acted on.
            last = format!("writing to {}: {e}", ep.addr);
            continue;
        }
        match read_head(&mut conn, head_only).await {
            Ok(head) => {
                let (head, raw, framing) = head.split();
                return Ok(Answer { head, body: DirectBody { conn: Some(conn), framing, done: None, raw } });
            }
            Err(HeadError::Closed) if reused && idempotent => {
                // The solution closed an idle connection as the request went out.
                last = format!("{} closed a pooled connection", ep.addr);
            }
            Err(HeadError::Closed) => return Err(Error::Failed(format!("{} closed the connection without answering", ep.addr))),
            Err(HeadError::Bad(why)) => return Err(Error::Failed(format!("{}: {why}", ep.addr))),
        }
    }
}

/// Writes the request head (origin-form target, HTTP/1.1) into `out`.
/// `added`: the gateway's forwarded fields and request id, written after the
/// request's own fields, which give way to them.
pub fn encode<B>(out: &mut Vec<u8>, req: &Request<B>, added: Option<(&forward::Forwarded, &HeaderValue)>) {
    out.clear();
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.uri().path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        if added.is_some() && forward::Forwarded::replaces(name) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some((fwd, id)) = added {
        fwd.write(out, id);
    }
    // Methods that usually carry a body say it is empty: some servers answer
    // 411 to a POST without a length.
    if matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH) && !req.headers().contains_key(header::CONTENT_LENGTH) {
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

enum HeadError {
    /// The connection ended before any byte of a response.
    Closed,
    /// Anything else: a broken or oversized head, a failed read.
    Bad(String),
}

/// Reads the final response head (1xx informational heads are skipped) and
/// tells how its body is framed.
async fn read_head(conn: &mut Conn, head_only: bool) -> Result<Head, HeadError> {
    let mut seen_any = false;
    loop {
        if !conn.buf.is_empty() {
            seen_any = true;
            if let Some(head) = parse_head(&mut conn.buf, head_only).map_err(HeadError::Bad)? {
                if head.status.is_informational() {
                    if head.status == StatusCode::SWITCHING_PROTOCOLS {
                        return Err(HeadError::Bad("switched protocols without being asked to".into()));
                    }
                    continue;
                }
                return Ok(head);
            }
            if conn.buf.len() >= MAX_HEAD {
                return Err(HeadError::Bad(format!("response head larger than {MAX_HEAD} bytes")));
            }
        }
        match conn.fill().await {
            Ok(0) if !seen_any => return Err(HeadError::Closed),
            Ok(0) => return Err(HeadError::Bad("connection closed in the response head".into())),
            Ok(_) => {}
            Err(e) if !seen_any && matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe) => {
                return Err(HeadError::Closed);
            }
            Err(e) => return Err(HeadError::Bad(format!("reading the response: {e}"))),
        }
    }
}

/// A parsed response head.
pub struct Head {
    /// The status code.
    pub status: StatusCode,
    version: Version,
    /// The fields passed on (none for an informational head, which is skipped).
    fields: Option<Box<RawHead>>,
    framing: Framing,
}

impl Head {
    /// The head as a response, and the fields passed on as they came (the
    /// response's map is empty and unallocated: the gateway's own fields
    /// travel with the passed-on head, [`RawHead::set_own`]).
    fn split(self) -> (Response<()>, Option<Box<RawHead>>, Framing) {
        let mut resp = Response::new(());
        *resp.status_mut() = self.status;
        *resp.version_mut() = self.version;
        (resp, self.fields, self.framing)
    }
}

/// Fields kept in the passed-on head's own allocation; more go to a `Vec`.
const RAW_FIELDS: usize = 32;

/// A solution's response head as it came, passed on line by line by the
/// own HTTP/1.1 loop: building a header map of it, rewriting that and
/// writing it out again was a sixth of a proxied request's instructions.
///
/// Hop-by-hop fields (and those `Connection` names) are already left out.
/// The gateway's `X-Request-Id` and HSTS travel here too
/// ([`RawHead::set_own`]) and replace a field of the same name: the
/// response's own map stays empty, no allocation per answer. Any other way
/// to the client (HTTP/2, hyper's server) makes it a map first
/// ([`materialize`]).
pub struct RawHead {
    /// The head's bytes; the fields point into them.
    bytes: Bytes,
    /// The fields passed on (name offset and length, value offset and length):
    /// the first [`RAW_FIELDS`] here, the rest (rare) in `more`.
    spans: [h1::Span; RAW_FIELDS],
    count: usize,
    more: Vec<h1::Span>,
    /// The body length the solution declared (`Content-Length`).
    declared: Option<u64>,
    /// `declared` came as a list or repeated field, left out here: the
    /// writer states it once.
    restate: bool,
    /// The solution sent a `Date`.
    has_date: bool,
    /// The gateway's `X-Request-Id` and `Strict-Transport-Security`: they
    /// replace a field of the same name.
    own: [Option<HeaderValue>; 2],
}

/// The names of [`RawHead`]'s own fields, in its order.
static OWN_NAMES: [HeaderName; 2] = [HeaderName::from_static(crate::request_id::HEADER), header::STRICT_TRANSPORT_SECURITY];

impl RawHead {
    /// Each field passed on: its name, and its line as it came (name, colon,
    /// value) without the line end.
    pub fn lines(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.spans().map(|(n, nl, v, vl)| {
            let (n, nl, v, vl) = (n as usize, nl as usize, v as usize, vl as usize);
            // An empty value may point before the line's own whitespace.
            let end = if vl == 0 { n + nl + 1 } else { v + vl };
            (&self.bytes[n..n + nl], &self.bytes[n..end])
        })
    }

    /// The body length the fields declare, and whether the writer must state
    /// it (it is not among [`lines`](Self::lines)).
    pub fn declared(&self) -> (Option<u64>, bool) {
        (self.declared, self.restate)
    }

    /// Whether the solution sent a `Date`.
    pub fn has_date(&self) -> bool {
        self.has_date
    }

    /// Sets the gateway's own fields: the request id, and HSTS (TLS only).
    pub fn set_own(&mut self, request_id: HeaderValue, hsts: Option<HeaderValue>) {
        self.own = [Some(request_id), hsts];
    }

    /// The gateway's own fields set.
    pub fn own(&self) -> impl Iterator<Item = (&'static HeaderName, &HeaderValue)> {
        OWN_NAMES.iter().zip(&self.own).filter_map(|(n, v)| v.as_ref().map(|v| (n, v)))
    }

    /// Whether an own field replaces the solution's field `name`.
    pub fn replaced(&self, name: &[u8]) -> bool {
        self.own().any(|(n, _)| same_name(n, name))
    }

    fn spans(&self) -> impl Iterator<Item = h1::Span> {
        self.spans[..self.count].iter().chain(&self.more).copied()
    }

    /// The fields as a header map, with `set` and the own fields (the
    /// gateway's) replacing those of the same name. Built in one map: the
    /// own fields are inserted last rather than gathered into `set` first
    /// (every HTTP/2 answer comes this way).
    fn merged(mut self: Box<Self>, set: HeaderMap) -> HeaderMap {
        // Counted, not bounded: the map rounds a third more up to a power of
        // two, and a slot too many can double its table.
        let own = self.own.iter().filter(|v| v.is_some()).count();
        let mut map = HeaderMap::with_capacity(self.count + self.more.len() + set.len() + own + 1);
        for (n, nl, v, vl) in self.spans() {
            let (n, nl, v, vl) = (n as usize, nl as usize, v as usize, vl as usize);
            let name = &self.bytes[n..n + nl];
            if self.replaced(name) || set.keys().any(|k| same_name(k, name)) {
                continue;
            }
            // Both were checked by the parser (the same characters as `http`'s).
            let value =
                if vl == 0 { Ok(HeaderValue::from_static("")) } else { HeaderValue::from_maybe_shared(self.bytes.slice(v..v + vl)) };
            if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), value) {
                map.append(name, value);
            }
        }
        if self.restate
            && let Some(n) = self.declared
        {
            map.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        if !set.is_empty() {
            map.extend(set);
        }
        for (name, value) in OWN_NAMES.iter().zip(&mut self.own) {
            if let Some(value) = value.take() {
                map.insert(name.clone(), value);
            }
        }
        map
    }
}

/// Whether the header map key `key` is the field name `name` (any case).
pub fn same_name(key: &HeaderName, name: &[u8]) -> bool {
    key.as_str().len() == name.len() && key.as_str().as_bytes().eq_ignore_ascii_case(name)
}

/// Makes a response's passed-on head into header map fields, for a way to
/// the client other than the own HTTP/1.1 loop (which writes it as it came).
pub fn materialize(resp: &mut Response<crate::body::Body>) {
    if let Some(raw) = resp.body_mut().take_raw_head() {
        let set = std::mem::take(resp.headers_mut());
        *resp.headers_mut() = raw.merged(set);
    }
}

/// Parses a complete response head at the start of `buf` and takes it off;
/// `None` while it is incomplete. `head_only`: the answer to a HEAD request.
pub fn parse_head(buf: &mut BytesMut, head_only: bool) -> Result<Option<Head>, String> {
    let mut fields = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut parsed, buf, &mut fields) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("invalid response head: {e}")),
    };
    let code = parsed.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| format!("invalid status code {code}"))?;
    let version = if parsed.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    if status.is_informational() {
        let _ = buf.split_to(len);
        let framing = Framing { kind: Kind::Length(0), reusable: false };
        return Ok(Some(Head { status, version, fields: None, framing }));
    }
    let fields: &[httparse::Header<'_>] = parsed.headers;
    let scan = Scan::of(fields);
    let bodyless = head_only || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let framing = scan.framing(version, bodyless)?;
    // What the client is told of the length: one valid value, stated once;
    // none next to a transfer coding (RFC 9112 §6.3: the coding wins, and a
    // proxy removes the length).
    // A 204 has no length to state (RFC 9110 §8.6; HTTP/2 clients refuse one
    // that states some).
    let no_content = status == StatusCode::NO_CONTENT;
    let length = scan.length.as_ref().ok().copied().flatten().filter(|_| scan.coding.is_none() && !no_content);
    let restate = length.is_some() && scan.length_fields > 1;
    let mut raw = Box::new(RawHead {
        bytes: Bytes::new(),
        spans: [(0, 0, 0, 0); RAW_FIELDS],
        count: 0,
        more: Vec::new(),
        declared: length,
        restate,
        has_date: scan.date,
        own: [None, None],
    });
    for f in fields {
        let name = f.name.as_bytes();
        // Hop-by-hop fields, those `Connection` names, and a length not passed on as it came.
        let drop = forward::is_hop_by_hop_name(name)
            || (scan.nominates && connection_names(fields).any(|t| t.eq_ignore_ascii_case(name)))
            || ((scan.coding.is_some() || restate || no_content) && forward::name_is(name, b"content-length"));
        if drop {
            continue;
        }
        // Where the name and value lie in the head, to slice it once frozen.
        let span = h1::span(buf.as_ptr(), f);
        if raw.count < RAW_FIELDS {
            raw.spans[raw.count] = span;
            raw.count += 1;
        } else {
            raw.more.push(span);
        }
    }
    raw.bytes = buf.split_to(len).freeze();
    Ok(Some(Head { status, version, fields: Some(raw), framing }))
}

/// How a response body ends (RFC 9112 §6.3), and whether the connection can
/// carry another request after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    kind: Kind,
    reusable: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Bytes left of a `Content-Length` body.
    Length(u64),
    /// Chunked: where in the chunk grammar the reader is.
    Chunked(Chunk),
    /// Until the solution closes the connection.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// What one pass over a response head's fields finds for framing it.
struct Scan {
    /// `Connection: close`, `Connection: keep-alive`.
    close: bool,
    keep_alive: bool,
    /// `Connection` names other fields.
    nominates: bool,
    /// Whether the last transfer coding is `chunked`, if any `Transfer-Encoding` came.
    coding: Option<bool>,
    /// The `Content-Length`: absent, one value (a list of equal ones is one
    /// value), or why it is unusable.
    length: Result<Option<u64>, String>,
    /// `Content-Length` fields and list items seen.
    length_fields: usize,
    date: bool,
}

impl Scan {
    fn of(fields: &[httparse::Header<'_>]) -> Scan {
        let mut s =
            Scan { close: false, keep_alive: false, nominates: false, coding: None, length: Ok(None), length_fields: 0, date: false };
        for f in fields {
            let (name, value) = (f.name.as_bytes(), f.value);
            match name.len() {
                4 if forward::name_is(name, b"date") => s.date = true,
                10 if forward::name_is(name, b"connection") => {
                    for t in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                        if t.eq_ignore_ascii_case(b"close") {
                            s.close = true;
                        } else if t.eq_ignore_ascii_case(b"keep-alive") {
                            s.keep_alive = true;
                        } else if !t.is_empty() {
                            s.nominates = true;
                        }
                    }
                }
                14 if forward::name_is(name, b"content-length") => {
                    for part in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                        s.length_fields += 1;
                        if let Ok(seen) = &s.length {
                            s.length = match (length_value(part), *seen) {
                                (None, _) => Err(format!("invalid content-length {:?}", String::from_utf8_lossy(part))),
                                (Some(n), Some(l)) if l != n => Err("conflicting content-length values".into()),
                                (Some(n), _) => Ok(Some(n)),
                            };
                        }
                    }
                }
                17 if forward::name_is(name, b"transfer-encoding") => {
                    // Empty list items do not count (RFC 9110 §5.6.1).
                    match value.split(|b| *b == b',').map(<[u8]>::trim_ascii).rfind(|t| !t.is_empty()) {
                        Some(last) => s.coding = Some(last.eq_ignore_ascii_case(b"chunked")),
                        None => s.coding = Some(s.coding.unwrap_or(false)),
                    }
                }
                _ => {}
            }
        }
        s
    }

    /// How the body ends (RFC 9112 §6.3), and whether the connection carries
    /// another request after it.
    fn framing(&self, version: Version, bodyless: bool) -> Result<Framing, String> {
        let mut reusable = if version == Version::HTTP_10 { self.keep_alive } else { !self.close };
        if bodyless {
            return Ok(Framing { kind: Kind::Length(0), reusable });
        }
        if let Some(coding) = self.coding {
            // A length next to a transfer coding may be a smuggling attempt: the
            // coding wins, and the connection is not used again (RFC 9112 §6.1).
            if self.length_fields > 0 {
                reusable = false;
            }
            return Ok(if coding {
                Framing { kind: Kind::Chunked(Chunk::Size), reusable }
            } else {
                Framing { kind: Kind::Close, reusable: false }
            });
        }
        Ok(match self.length.clone()? {
            Some(n) => Framing { kind: Kind::Length(n), reusable },
            None => Framing { kind: Kind::Close, reusable: false },
        })
    }
}

/// The tokens of every `Connection` field of a head.
fn connection_names<'h>(fields: &'h [httparse::Header<'h>]) -> impl Iterator<Item = &'h [u8]> {
    fields
        .iter()
        .filter(|f| forward::name_is(f.name.as_bytes(), b"connection"))
        .flat_map(|f| f.value.split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
}

/// A `Content-Length` list item as a number: digits only.
fn length_value(part: &[u8]) -> Option<u64> {
    if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(part).ok()?.parse().ok()
}

/// A solution's response body, read from its connection as the client takes it.
pub struct DirectBody {
    conn: Option<Box<Conn>>,
    framing: Framing,
    done: Option<Done>,
    /// The head's fields, until the writer (or [`materialize`]) takes them.
    raw: Option<Box<RawHead>>,
}

impl DirectBody {
    /// Takes the solution's head fields passed on as they came (see [`RawHead`]).
    pub fn take_raw_head(&mut self) -> Option<Box<RawHead>> {
        self.raw.take()
    }

    /// The solution's head fields, while they travel with the body.
    pub fn raw_head_mut(&mut self) -> Option<&mut RawHead> {
        self.raw.as_deref_mut()
    }

    /// Attaches what runs when the body ends: the connection is pooled by it.
    pub fn with_done(mut self, done: Done) -> Self {
        self.done = Some(done);
        if self.framing.kind == Kind::Length(0) {
            self.finish();
        }
        self
    }

    /// The body is complete: the connection goes back to the pool if it may.
    fn finish(&mut self) {
        let conn = self.conn.take();
        if let Some(done) = self.done.take() {
            match conn.and_then(Conn::into_idle) {
                Some(c) if self.framing.reusable => done.pool(c),
                _ => done.finish(false),
            }
        }
    }

    fn fail(&mut self, why: String) -> Poll<Option<Result<Frame<Bytes>, crate::body::BoxError>>> {
        self.conn = None;
        if let Some(done) = self.done.take() {
            done.finish(false);
        }
        Poll::Ready(Some(Err(why.into())))
    }
}

impl http_body::Body for DirectBody {
    type Data = Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else { return Poll::Ready(None) };
            let buf = &mut conn.buf;
            match this.framing.kind {
                Kind::Length(0) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Kind::Length(left) if !buf.is_empty() => {
                    let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let data = buf.split_to(n).freeze();
                    this.framing.kind = Kind::Length(left - n as u64);
                    if left == n as u64 {
                        // A body of known length may never be polled past its
                        // last frame: pool the connection now.
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Kind::Close if !buf.is_empty() => {
                    let data = buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Kind::Chunked(state) if !buf.is_empty() => match chunk_step(buf, state) {
                    Ok(Step::Data(data, next)) => {
                        this.framing.kind = Kind::Chunked(next);
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Ok(Step::Next(next)) => {
                        this.framing.kind = Kind::Chunked(next);
                        continue;
                    }
                    Ok(Step::End(trailers)) => {
                        this.framing.kind = Kind::Length(0);
                        this.finish();
                        return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                    }
                    Ok(Step::More) if buf.len() >= MAX_HEAD => return this.fail("chunk header or trailers too large".into()),
                    Ok(Step::More) => {}
                    Err(why) => return this.fail(why),
                },
                _ => {}
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if this.framing.kind == Kind::Close => {
                    this.framing.reusable = false;
                    this.framing.kind = Kind::Length(0);
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail("the solution closed the connection mid-body".into()),
                Ok(_) => {}
                Err(e) => return this.fail(format!("reading the response body: {e}")),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || self.framing.kind == Kind::Length(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing.kind {
            Kind::Length(n) => SizeHint::with_exact(n),
            _ if self.conn.is_none() => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

enum Step {
    /// Body bytes, and the state after them.
    Data(Bytes, Chunk),
    /// Grammar consumed without data (a size line, a chunk's CRLF).
    Next(Chunk),
    /// The last chunk and the trailer section: the body is complete.
    End(Option<HeaderMap>),
    /// More bytes are needed.
    More,
}

/// One step of the chunked decoder over the non-empty `buf`.
fn chunk_step(buf: &mut BytesMut, state: Chunk) -> Result<Step, String> {
    match state {
        Chunk::Size => match httparse::parse_chunk_size(buf) {
            Ok(httparse::Status::Complete((n, 0))) => {
                let _ = buf.split_to(n);
                Ok(Step::Next(Chunk::Trailers))
            }
            Ok(httparse::Status::Complete((n, size))) => {
                let _ = buf.split_to(n);
                Ok(Step::Next(Chunk::Data(size)))
            }
            Ok(httparse::Status::Partial) => Ok(Step::More),
            Err(_) => Err("invalid chunk size".into()),
        },
        Chunk::Data(left) => {
            let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let data = buf.split_to(n).freeze();
            let next = if left == n as u64 { Chunk::DataEnd } else { Chunk::Data(left - n as u64) };
            Ok(Step::Data(data, next))
        }
        Chunk::DataEnd => {
            if buf.len() < 2 {
                return Ok(Step::More);
            }
            if &buf[..2] != b"\r\n" {
                return Err("chunk not followed by CRLF".into());
            }
            let _ = buf.split_to(2);
            Ok(Step::Next(Chunk::Size))
        }
        Chunk::Trailers => {
            if buf.starts_with(b"\r\n") {
                let _ = buf.split_to(2);
                return Ok(Step::End(None));
            }
            let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
            match httparse::parse_headers(buf, &mut fields) {
                Ok(httparse::Status::Complete((n, fields))) => {
                    let mut trailers = HeaderMap::with_capacity(fields.len());
                    for f in fields.iter() {
                        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(f.name.as_bytes()), HeaderValue::from_bytes(f.value)) {
                            trailers.append(name, value);
                        }
                    }
                    let _ = buf.split_to(n);
                    Ok(Step::End(Some(trailers)))
                }
                Ok(httparse::Status::Partial) => Ok(Step::More),
                Err(_) => Err("invalid trailer section".into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::upstream::Pools;

    /// A solution that answers each request on a connection with the next of
    /// `answers` (raw bytes), and reports the request heads it read.
    async fn solution(answers: Vec<Vec<&'static [u8]>>) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let addr = listener.local_addr().expect("its address");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            for conn_answers in answers {
                let (mut s, _) = listener.accept().await.expect("accept");
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    for answer in conn_answers {
                        let mut buf = [0u8; 4096];
                        loop {
                            let n = s.read(&mut buf).await.unwrap_or(0);
                            if n == 0 {
                                return;
                            }
                            seen.extend_from_slice(&buf[..n]);
                            if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                                let head: Vec<u8> = seen.drain(..end + 4).collect();
                                let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
                                break;
                            }
                        }
                        s.write_all(answer).await.expect("answer");
                    }
                    // Leave the connection open a moment, as a keep-alive server would.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                });
            }
        });
        (addr, rx)
    }

    fn get(path: &str) -> Request<http_body_util::Empty<Bytes>> {
        let mut r = Request::builder().uri(path).body(http_body_util::Empty::new()).expect("a valid request");
        r.headers_mut().insert(header::HOST, HeaderValue::from_static("nlp.localhost"));
        r
    }

    async fn exchange(ep: &Arc<Endpoint>, req: &Request<http_body_util::Empty<Bytes>>) -> (Response<()>, Bytes, Option<HeaderMap>) {
        let mut answer = send(ep, req, None, Duration::from_secs(1)).await.expect("an answer");
        crate::upstream::begin(ep);
        if let Some(raw) = answer.body.take_raw_head() {
            let set = std::mem::take(answer.head.headers_mut());
            *answer.head.headers_mut() = raw.merged(set);
        }
        let body = answer.body.with_done(Done::for_test(ep.clone()));
        let collected = body.collect().await.expect("a whole body");
        let trailers = collected.trailers().cloned();
        (answer.head, collected.to_bytes(), trailers)
    }

    #[tokio::test]
    async fn reads_each_framing_and_reuses_the_connection() {
        let (addr, mut heads) = solution(vec![vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n\r\nhello",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nx-sum: 5\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end",
        ]])
        .await;
        let pools = Pools::default();
        let ep = pools.endpoint(addr, 0);

        let (head, body, _) = exchange(&ep, &get("/a?b=1")).await;
        assert_eq!(head.status(), 200);
        assert_eq!(head.headers()["x-a"], "1");
        assert_eq!(body, "hello");
        let sent = heads.recv().await.expect("a request head");
        assert!(sent.starts_with("GET /a?b=1 HTTP/1.1\r\nhost: nlp.localhost\r\n"), "{sent}");
        assert_eq!(ep.direct_idle.len(), 1, "the connection is pooled after the body");

        let (head, body, trailers) = exchange(&ep, &get("/chunked")).await;
        assert_eq!(head.status(), 200, "the 100 is skipped");
        assert_eq!(body, "abcde");
        assert_eq!(trailers.expect("trailers")["x-sum"], "5");

        let (head, body, _) = exchange(&ep, &get("/empty")).await;
        assert_eq!(head.status(), 204);
        assert!(body.is_empty());

        let (_, body, _) = exchange(&ep, &get("/close")).await;
        assert_eq!(body, "until the end");
        assert_eq!(ep.direct_idle.len(), 0, "a connection the solution closes is not pooled");
        for _ in 0..3 {
            heads.recv().await.expect("a request head");
        }
    }

    #[tokio::test]
    async fn a_pooled_connection_closed_by_the_solution_is_retried_on_a_new_one() {
        // The first connection answers once, then closes; the retry opens the second.
        let (addr, _heads) =
            solution(vec![vec![b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na"], vec![b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nb"]])
                .await;
        let pools = Pools::default();
        let ep = pools.endpoint(addr, 0);
        assert_eq!(exchange(&ep, &get("/")).await.1, "a");
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(exchange(&ep, &get("/")).await.1, "b");
    }

    #[tokio::test]
    async fn connections_a_stopped_solution_closed_are_swept_from_the_pool() {
        let (addr, _heads) = solution(vec![vec![b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na"]]).await;
        let pools = Pools::default();
        let ep = pools.endpoint(addr, 0);
        assert_eq!(exchange(&ep, &get("/")).await.1, "a");
        pools.sweep(Duration::from_secs(10));
        assert_eq!(ep.direct_idle.len(), 1, "an open connection stays");
        // The solution closes its side 200 ms after answering.
        tokio::time::sleep(Duration::from_millis(400)).await;
        pools.sweep(Duration::from_secs(10));
        assert_eq!(ep.direct_idle.len(), 0, "a closed connection is dropped");
    }

    #[tokio::test]
    async fn a_broken_answer_is_an_error_not_a_response() {
        let (addr, _heads) = solution(vec![
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab"],
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"],
            vec![b"NOT HTTP\r\n\r\n"],
        ])
        .await;
        let pools = Pools::default();
        let ep = pools.endpoint(addr, 0);
        assert!(matches!(send(&ep, &get("/"), None, Duration::from_secs(1)).await, Err(Error::Failed(_))));
        let answer = send(&ep, &get("/"), None, Duration::from_secs(1)).await.expect("an answer");
        crate::upstream::begin(&ep);
        assert!(answer.body.with_done(Done::for_test(ep.clone())).collect().await.is_err(), "a cut body is an error");
        assert!(matches!(send(&ep, &get("/"), None, Duration::from_secs(1)).await, Err(Error::Failed(_))));
        assert_eq!(ep.direct_idle.len(), 0);
    }

    #[test]
    fn a_head_request_or_304_has_no_body_and_te_beats_length() {
        let framing =
            |raw: &'static [u8], head_only| parse_head(&mut BytesMut::from(raw), head_only).expect("valid").expect("complete").framing;
        let r = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n";
        assert_eq!(framing(r, true).kind, Kind::Length(0));
        assert_eq!(framing(r, false).kind, Kind::Length(10));
        assert_eq!(framing(b"HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n", false).kind, Kind::Length(0));
        let f = framing(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\ntransfer-encoding: chunked\r\n\r\n", false);
        assert_eq!(f, Framing { kind: Kind::Chunked(Chunk::Size), reusable: false });
        let f = framing(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked,\r\n\r\n", false);
        assert_eq!(f, Framing { kind: Kind::Chunked(Chunk::Size), reusable: true }, "an empty list item does not count");
        let f = framing(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n", false);
        assert_eq!(f, Framing { kind: Kind::Close, reusable: false });
        assert!(!framing(b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n", false).reusable, "HTTP/1.0 without keep-alive closes");
        assert!(framing(b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\ncontent-length: 1\r\n\r\n", false).reusable);
        assert!(!framing(b"HTTP/1.1 200 OK\r\nConnection: x, close\r\ncontent-length: 1\r\n\r\n", false).reusable);
        assert_eq!(framing(b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\n", false).kind, Kind::Length(3));
        for bad in [&b"HTTP/1.1 200 OK\r\ncontent-length: 3, 4\r\n\r\n"[..], b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n"] {
            assert!(parse_head(&mut BytesMut::from(bad), false).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    /// The fields a head passes on, as the own loop writes them.
    fn passed_on(raw: &'static [u8], head_only: bool) -> (Vec<String>, (Option<u64>, bool)) {
        let head = parse_head(&mut BytesMut::from(raw), head_only).expect("valid").expect("complete");
        let (_, raw, _) = head.split();
        let raw = raw.expect("passed on as it came");
        (raw.lines().map(|(_, line)| String::from_utf8_lossy(line).into_owned()).collect(), raw.declared())
    }

    #[test]
    fn a_head_passes_on_as_it_came_without_hop_by_hop_fields() {
        let (lines, declared) = passed_on(
            b"HTTP/1.1 200 OK\r\nServer: uvicorn\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\nX-Empty:\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n",
            false,
        );
        assert_eq!(lines, ["Server: uvicorn", "Content-Length: 2", "X-Empty:", "Set-Cookie: a=1", "Set-Cookie: b=2"]);
        assert_eq!(declared, (Some(2), false));
        // The coding wins over a length, which is not passed on (RFC 9112 §6.3).
        let (lines, declared) = passed_on(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n", false);
        assert_eq!((lines, declared), (vec!["X-A: 1".to_string()], (None, false)));
        // A length given twice is stated once, by the writer.
        let (lines, declared) = passed_on(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\n", false);
        assert_eq!((lines.len(), declared), (0, (Some(3), true)));
        // A HEAD answer keeps the length its body would have.
        let (lines, declared) = passed_on(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", true);
        assert_eq!((lines, declared), (vec!["Content-Length: 10".to_string()], (Some(10), false)));
    }

    #[test]
    fn a_204_states_no_length() {
        let raw = &b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\nX-A: 1\r\n\r\n"[..];
        let head = parse_head(&mut BytesMut::from(raw), false).expect("valid").expect("complete");
        let (_, raw, _) = head.split();
        let map = raw.expect("passed on").merged(HeaderMap::new());
        assert_eq!(map.len(), 1, "{map:?}");
        assert_eq!(map["x-a"], "1");
    }

    #[test]
    fn the_gateway_fields_replace_the_solution_ones_in_a_map() {
        let head =
            parse_head(&mut BytesMut::from(&b"HTTP/1.1 200 OK\r\nX-Request-Id: theirs\r\nX-A: 1\r\nconnection: close\r\n\r\n"[..]), false)
                .expect("valid")
                .expect("complete");
        let (_, raw, framing) = head.split();
        assert!(!framing.reusable);
        let mut set = HeaderMap::new();
        set.insert(crate::request_id::NAME.clone(), HeaderValue::from_static("ours"));
        let map = raw.expect("passed on").merged(set);
        assert_eq!(map.len(), 2);
        assert_eq!(map["x-request-id"], "ours");
        assert_eq!(map["x-a"], "1");
    }

    #[test]
    fn the_own_fields_replace_the_solution_ones_as_lines_and_in_a_map() {
        let bytes = b"HTTP/1.1 200 OK\r\nX-Request-Id: theirs\r\nStrict-Transport-Security: max-age=1\r\nX-A: 1\r\n\r\n";
        let head = parse_head(&mut BytesMut::from(&bytes[..]), false).expect("valid").expect("complete");
        let (_, raw, _) = head.split();
        let mut raw = raw.expect("passed on");
        // Without HSTS (a plain connection) the solution's own stays.
        raw.set_own(HeaderValue::from_static("ours"), None);
        let kept: Vec<&[u8]> = raw.lines().filter(|(n, _)| !raw.replaced(n)).map(|(_, l)| l).collect();
        assert_eq!(kept, [&b"Strict-Transport-Security: max-age=1"[..], b"X-A: 1"]);
        raw.set_own(HeaderValue::from_static("ours"), Some(HeaderValue::from_static("max-age=2")));
        assert!(raw.lines().all(|(n, _)| !n.eq_ignore_ascii_case(b"x-a") || !raw.replaced(n)));
        assert_eq!(raw.lines().filter(|(n, _)| raw.replaced(n)).count(), 2);
        let own: Vec<(&str, &HeaderValue)> = raw.own().map(|(n, v)| (n.as_str(), v)).collect();
        assert_eq!(
            own,
            [("x-request-id", &HeaderValue::from_static("ours")), ("strict-transport-security", &HeaderValue::from_static("max-age=2"))]
        );
        let map = raw.merged(HeaderMap::new());
        assert_eq!(
            (map.len(), &map["x-request-id"], &map["strict-transport-security"], &map["x-a"]),
            (3, &HeaderValue::from_static("ours"), &HeaderValue::from_static("max-age=2"), &HeaderValue::from_static("1"))
        );
    }

    #[test]
    fn a_head_of_many_fields_passes_on_every_one() {
        let mut raw = b"HTTP/1.1 200 OK\r\nConnection: close\r\n".to_vec();
        for i in 0..=RAW_FIELDS {
            raw.extend_from_slice(format!("X-Field-{i}: {i}\r\n").as_bytes());
        }
        raw.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        let head = parse_head(&mut BytesMut::from(&raw[..]), false).expect("valid").expect("complete");
        let (_, passed, _) = head.split();
        let passed = passed.expect("passed on as it came");
        assert_eq!(passed.lines().count(), RAW_FIELDS + 2, "every field but Connection");
        let map = passed.merged(HeaderMap::new());
        assert_eq!(map.len(), RAW_FIELDS + 2, "every field but Connection");
        assert_eq!(map["x-field-32"], "32");
    }

    #[test]
    fn the_forwarded_fields_replace_the_clients_in_the_head() {
        let mut req = Request::builder().uri("/a").body(()).expect("a valid request");
        req.headers_mut().insert(header::HOST, HeaderValue::from_static("nlp.localhost"));
        req.headers_mut().insert("x-forwarded-for", HeaderValue::from_static("198.51.100.66"));
        req.headers_mut().insert("x-request-id", HeaderValue::from_static("theirs"));
        let client = crate::client::Client { ip: "127.0.0.9".parse().expect("an address"), forwarded_trusted: false };
        let host = HeaderValue::from_static("nlp.localhost");
        let fwd = forward::to_upstream(&mut req, "127.0.0.9:5".parse().expect("an address"), client, &host, false, false);
        let mut out = Vec::new();
        encode(&mut out, &req, Some((&fwd, &HeaderValue::from_static("ours"))));
        assert_eq!(
            String::from_utf8_lossy(&out),
            "GET /a HTTP/1.1\r\nhost: nlp.localhost\r\nx-forwarded-for: 127.0.0.9\r\nx-forwarded-proto: http\r\nx-forwarded-host: nlp.localhost\r\nx-request-id: ours\r\n\r\n"
        );
    }

    #[test]
    fn the_request_head_is_origin_form_http11_with_a_length_for_empty_posts() {
        let mut out = Vec::new();
        let mut req = Request::builder().method(Method::POST).uri("/embed").body(()).expect("a valid request");
        req.headers_mut().insert(header::HOST, HeaderValue::from_static("nlp.localhost"));
        encode(&mut out, &req, None);
        assert_eq!(out, b"POST /embed HTTP/1.1\r\nhost: nlp.localhost\r\ncontent-length: 0\r\n\r\n");
    }
}
