//! Serving on an already bound listener until told to stop, then draining:
//! HTTP/1.1 and HTTP/2 (prior knowledge) on one port, upgrades allowed.
//! HTTP/1 requests without a body are served by the gateway's own loop
//! ([`crate::h1`]), everything else by hyper. Below
//! HTTP it reads the PROXY protocol header (when enabled), enforces the
//! per-client connection limit, and runs a watchdog per connection for slow
//! request heads (408) and idle keep-alive connections.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use crate::body::Body;
use crate::conn::{ClientIo, Conn, Expiry, Serving};
use crate::limits::ConnectionLimiter;
use crate::limits::body::RequestBody;
use crate::proxy_protocol;
use crate::refusal::Refusal;
use crate::request_id;
use crate::{h1, h2streams};

/// Pause after a failed accept (e.g. out of file descriptors), so the loop
/// does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(20);

/// A listener that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({what}): {source}")]
pub struct BindError {
    /// The address.
    pub addr: SocketAddr,
    /// Which listener (the setting or flag that names it).
    pub what: &'static str,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

/// Binds the listener that the setting or flag `what` names.
pub async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr).await.map_err(|source| BindError { addr, what, source })
}

/// How connections are served; read from the live settings at each accept.
#[derive(Debug, Clone)]
pub struct Options {
    /// Expect a PROXY protocol header.
    pub proxy_protocol: bool,
    /// Open connections per client; 0 = unlimited.
    pub limit_connections: u32,
    /// Time to receive a request head.
    pub header_timeout: Duration,
    /// Idle keep-alive time.
    pub keepalive: Duration,
    /// Largest request head.
    pub max_header_size: usize,
    /// Most header fields.
    pub max_headers: usize,
    /// Concurrent HTTP/2 streams.
    pub h2_max_streams: u32,
}

impl Default for Options {
    fn default() -> Self {
        let s = proto::Settings::default();
        Self {
            proxy_protocol: false,
            limit_connections: 0,
            header_timeout: s.client_header_timeout,
            keepalive: s.keepalive_timeout,
            max_header_size: s.max_header_size,
            max_headers: s.max_headers,
            h2_max_streams: s.http2_max_concurrent_streams,
        }
    }
}

/// What a listener asks of its owner.
pub trait Policy: Send + Sync + 'static {
    /// The options for a new connection.
    fn options(&self) -> Options;
    /// A connection-level refusal, by reason (for metrics and the access
    /// log), of `client` (the socket peer, or the PROXY header's source),
    /// with the status it was answered (or, closed without one, would be).
    /// `rid`: the request id the answer carried, if one was written.
    fn rejected(&self, reason: &'static str, client: std::net::IpAddr, status: u16, rid: Option<&HeaderValue>);
    /// A TLS handshake failed.
    fn handshake_failed(&self, _e: &std::io::Error) {}
}

/// A handler's answer: the response, and its access log line (while the log
/// is on), which the server completes as the body goes out.
pub struct Answer {
    /// The response.
    pub resp: Response<Body>,
    /// Its line.
    pub log: Option<Box<crate::access_log::Answered>>,
}

impl From<Response<Body>> for Answer {
    fn from(resp: Response<Body>) -> Self {
        Answer { resp, log: None }
    }
}

/// What a request's handler is told of its TLS connection (plain ones: nothing).
/// An argument rather than a request extension: the first extension costs a
/// map and two allocations per request.
#[derive(Debug, Clone, Default)]
pub struct ConnInfo {
    /// Whether it came over TLS.
    pub tls: bool,
    /// The SNI name the client asked for, lower case.
    pub sni: Option<Arc<str>>,
    /// Whether ALPN chose HTTP/2 (connection reuse across names is then legitimate).
    pub h2: bool,
}

/// Fixed options, refusals only logged (the admin listener).
pub struct Fixed(pub Options);

impl Policy for Fixed {
    fn options(&self) -> Options {
        self.0.clone()
    }
    fn rejected(&self, reason: &'static str, _client: std::net::IpAddr, _status: u16, _rid: Option<&HeaderValue>) {
        tracing::debug!(reason, "admin connection refused");
    }
}

/// Serves `handler` on `listener` until `shutdown` turns true, then stops
/// accepting and lets open connections finish for up to `grace`.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    handler: F,
    policy: Arc<dyn Policy>,
    tls: Option<TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) where
    F: Fn(SocketAddr, Option<&ConnInfo>, Request<RequestBody>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Answer> + Send + 'static,
{
    // Every connection holds a sender; `recv` returns `None` once all are gone.
    let (open, mut all_closed) = mpsc::channel::<()>(1);
    let limiter = Arc::new(ConnectionLimiter::default());
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                keepalive(&stream);
                let opts = policy.options();
                let conn = Connection { handler: handler.clone(), policy: policy.clone(), limiter: limiter.clone(), opts, tls: tls.clone() };
                let drain = Drain { stop: shutdown.clone(), _open: open.clone() };
                tokio::spawn(conn.run(stream, peer, drain));
            }
            _ = stopped(&mut shutdown) => break,
        }
    }
    drop(listener);
    drop(open);
    tokio::select! {
        _ = all_closed.recv() => tracing::debug!("all connections drained"),
        _ = tokio::time::sleep(grace) => tracing::warn!("grace period of {grace:?} over; closing the remaining connections"),
    }
}

/// TCP keepalive on a client connection (60 s idle, then 3 probes 10 s
/// apart): a peer gone without a word (a laptop shut, a NAT or load
/// balancer that forgot the flow) is noticed within about 90 s, so an open
/// WebSocket to it stops keeping its solution awake. Idle HTTP connections
/// are closed sooner by `keepalive-timeout`; probes keep a load balancer's
/// flow for a quiet WebSocket alive too (an NLB forgets one after 350 s).
fn keepalive(stream: &TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    let _ = setsockopt(stream, sockopt::KeepAlive, &true);
    let _ = setsockopt(stream, sockopt::TcpKeepIdle, &60);
    let _ = setsockopt(stream, sockopt::TcpKeepInterval, &10);
    let _ = setsockopt(stream, sockopt::TcpKeepCount, &3);
}

/// A connection's part in its listener's drain: it sees the stop signal (and
/// then finishes the request in progress and closes), and while it lives the
/// listener waits for it.
struct Drain {
    stop: watch::Receiver<bool>,
    _open: mpsc::Sender<()>,
}

struct Connection<F> {
    handler: F,
    policy: Arc<dyn Policy>,
    limiter: Arc<ConnectionLimiter>,
    opts: Options,
    tls: Option<TlsAcceptor>,
}

impl<F, Fut> Connection<F>
where
    F: Fn(SocketAddr, Option<&ConnInfo>, Request<RequestBody>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Answer> + Send + 'static,
{
    async fn run(self, mut stream: TcpStream, mut peer: SocketAddr, mut drain: Drain) {
        let opts = &self.opts;
        let mut prefix = Bytes::new();
        if opts.proxy_protocol {
            match Box::pin(read_proxy_header(&mut stream, opts.header_timeout)).await {
                Ok((header, rest)) => {
                    if let Some(src) = header.source {
                        peer = src;
                    }
                    prefix = rest;
                }
                Err(e) => {
                    tracing::info!(%peer, "refused: {e}");
                    self.policy.rejected("proxy_protocol", peer.ip(), 400, None);
                    return;
                }
            }
        }
        let Some(_permit) = self.limiter.acquire(proto::net::client_key(peer.ip()), opts.limit_connections) else {
            tracing::info!(client = %peer.ip(), limit = opts.limit_connections, "too many connections from this client");
            let rid = request_id::generate();
            self.policy.rejected("too_many_connections", peer.ip(), 429, Some(&rid));
            let refusal = Refusal::new(StatusCode::TOO_MANY_REQUESTS, "too_many_connections", "too many connections from your address");
            let _ = stream.try_write(&refusal.retry_after(1).wire(&rid));
            return;
        };
        let proto = match self.tls {
            Some(_) => Proto::Sniff, // ALPN decides, after the handshake
            None => match sniff(&stream, &prefix, opts.keepalive, &mut drain.stop).await {
                Some(p) => p,
                None => return, // closed or silent: nothing to answer
            },
        };
        let conn = Conn::new(stream);
        let io = ClientIo::new(conn.clone(), prefix);
        match self.tls.clone() {
            None => self.serve_http(io, conn, peer, Arc::new(ConnInfo::default()), drain, proto).await,
            // Boxed: the handshake and the TLS stream are large, and the task
            // of every plain connection would otherwise be sized for them.
            Some(acceptor) => Box::pin(self.serve_tls(acceptor, io, conn, peer, drain)).await,
        }
    }

    async fn serve_tls(&self, acceptor: TlsAcceptor, io: ClientIo, conn: Arc<Conn>, peer: SocketAddr, drain: Drain) {
        match tokio::time::timeout(self.opts.header_timeout, acceptor.accept(io)).await {
            Ok(Ok(stream)) => {
                let (_, session) = stream.get_ref();
                let proto = match session.alpn_protocol() {
                    Some(b"h2") => Proto::H2,
                    Some(b"http/1.1") => Proto::H1,
                    _ => Proto::Sniff,
                };
                let h2 = proto == Proto::H2;
                let info = ConnInfo { tls: true, sni: session.server_name().map(|s| Arc::from(s.to_ascii_lowercase())), h2 };
                self.serve_http(stream, conn, peer, Arc::new(info), drain, proto).await;
            }
            Ok(Err(e)) => {
                tracing::debug!(%peer, "TLS handshake failed: {e}");
                self.policy.handshake_failed(&e);
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                self.policy.handshake_failed(&std::io::Error::from(std::io::ErrorKind::TimedOut));
            }
        }
    }

    async fn serve_http<I>(&self, io: I, conn: Arc<Conn>, peer: SocketAddr, info: Arc<ConnInfo>, drain: Drain, proto: Proto)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let opts = &self.opts;
        if proto == Proto::H2 {
            conn.set_h2();
        }
        let handler = self.handler.clone();
        let svc_conn = conn.clone();
        let info = info.tls.then_some(info);
        let svc_info = info.clone();
        // hyper's HTTP/1.1 leaves out the body of an answer to HEAD; its
        // HTTP/2 sends it, which a client takes for a protocol error.
        let h2 = proto == Proto::H2;
        let svc = service_fn(move |req: Request<Incoming>| {
            let serving = svc_conn.serving();
            let head = h2 && req.method() == http::Method::HEAD;
            let req = req.map(RequestBody::Hyper);
            // `map`, not an `async` block: that would store the handler's
            // future twice (captured, then awaited).
            // hyper writes the header map: a head passed on as it came joins it.
            handler(peer, svc_info.as_deref(), req).map(move |Answer { mut resp, log }| {
                crate::direct::materialize(&mut resp);
                if head {
                    head_only(&mut resp);
                }
                Ok::<_, Infallible>(resp.map(|b| Tracked { inner: b, _serving: serving, log }))
            })
        });
        // The same settings for each way of serving; hyper answers 431 itself
        // when a request head outgrows its read buffer, and a non-default
        // header count makes it allocate headers on the heap: only when asked.
        macro_rules! h1_settings {
            ($b:expr, $opts:expr) => {{
                $b.timer(TokioTimer::new()).header_read_timeout(None).max_buf_size($opts.max_header_size);
                if $opts.max_headers != proto::settings::DEFAULT_MAX_HEADERS as usize {
                    $b.max_headers($opts.max_headers);
                }
            }};
        }
        macro_rules! h2_settings {
            ($b:expr, $opts:expr) => {{
                $b.timer(TokioTimer::new())
                    .max_concurrent_streams($opts.h2_max_streams)
                    // Twice the limit: the request path refuses what is over
                    // it, with a request id and a line in the access log.
                    .max_header_list_size(u32::try_from($opts.max_header_size.saturating_mul(2)).unwrap_or(u32::MAX))
                    .max_pending_accept_reset_streams(Some(20))
                    .max_local_error_reset_streams(Some(256));
            }};
        }
        match proto {
            Proto::H2 => {
                let exec = h2streams::Exec::default();
                let mut streams = h2streams::Streams::new(&exec);
                let mut b = hyper::server::conn::http2::Builder::new(exec);
                h2_settings!(b, opts);
                let mut stop = drain.stop.clone();
                let served = async move {
                    let mut served = std::pin::pin!(b.serve_connection(TokioIo::new(io), svc));
                    tokio::select! {
                        r = streams.drive(served.as_mut()) => return r,
                        _ = stopped(&mut stop) => served.as_mut().graceful_shutdown(),
                    }
                    streams.drive(served).await
                };
                self.drive(tokio::spawn(served), &conn, peer, drain).await;
            }
            // HTTP/1 (or not known yet): the gateway's own loop serves
            // requests without a body; hyper takes over at the first other
            // one (or at the HTTP/2 preface), with the bytes read so far.
            Proto::H1 | Proto::Sniff => {
                let mut stop = drain.stop.clone();
                let handler = self.handler.clone();
                let (own_conn, opts) = (conn.clone(), opts.clone());
                let served = async move {
                    let own = h1::Service {
                        handler: &handler,
                        peer,
                        info,
                        conn: &own_conn,
                        max_headers: opts.max_headers,
                        max_header_size: opts.max_header_size,
                    };
                    let (io, read) = match h1::serve(io, own, stop.clone()).await? {
                        Some(handoff) => handoff,
                        None => return Ok(()),
                    };
                    // Built and boxed only when hyper takes over: held in
                    // this future, its connection would make every
                    // connection's state several KiB larger.
                    let exec = h2streams::Exec::default();
                    let mut streams = h2streams::Streams::new(&exec);
                    let mut b = auto::Builder::new(exec);
                    h1_settings!(b.http1(), opts);
                    h2_settings!(b.http2(), opts);
                    let mut hyper_conn = Box::pin(b.serve_connection_with_upgrades(TokioIo::new(h1::Rewind::new(io, read)), svc));
                    tokio::select! {
                        r = streams.drive(hyper_conn.as_mut()) => return r,
                        _ = stopped(&mut stop) => hyper_conn.as_mut().graceful_shutdown(),
                    }
                    streams.drive(hyper_conn).await
                };
                self.drive(tokio::spawn(served), &conn, peer, drain).await;
            }
        }
    }

    /// Runs a connection while its watchdog looks at it: a request head that
    /// takes too long gets 408 (HTTP/1) and the connection closed; an idle one
    /// is closed quietly. `served` watches the listener's stop itself.
    ///
    /// `served` runs as a task of its own (spawned by the caller: taken here
    /// by value, the future would be part of this one's state too), and this
    /// one wakes only at the watchdog's deadlines and at the end: in one
    /// task, the watchdog's timer would be polled again at every wake-up of
    /// the connection, several per request. `_drain` is held until the
    /// connection is gone.
    async fn drive<E>(&self, served: tokio::task::JoinHandle<Result<(), E>>, conn: &Conn, peer: SocketAddr, _drain: Drain)
    where
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let opts = &self.opts;
        let mut served = Served(served);
        let expiry = loop {
            let check = match conn.expiry(opts.header_timeout, opts.keepalive) {
                // A request head may start at any moment while we sleep towards the
                // keep-alive deadline: look again at least every half header timeout.
                Expiry::Wait(at) => at.min(std::time::Instant::now() + opts.header_timeout / 2),
                other => break other,
            };
            tokio::select! {
                biased;
                r = &mut served.0 => {
                    match r {
                        Ok(Err(e)) => {
                            let e: Box<dyn std::error::Error + Send + Sync> = e.into();
                            self.on_error(peer, &*e);
                        }
                        Err(e) if e.is_panic() => tracing::error!(%peer, "connection task panicked: {e}"),
                        Ok(Ok(())) | Err(_) => {}
                    }
                    return;
                }
                _ = tokio::time::sleep_until(check.into()) => {}
            }
        };
        // Gone before the 408 is written: nothing else writes to the socket.
        served.0.abort();
        let _ = (&mut served.0).await;
        if expiry == Expiry::HeaderTimeout {
            tracing::info!(client = %peer.ip(), "request head not received within {:?}: 408", opts.header_timeout);
            if self.tls.is_none() {
                // Over TLS the socket carries records, not text: just close.
                let rid = request_id::generate();
                self.policy.rejected("client_timeout", peer.ip(), 408, Some(&rid));
                let refusal = Refusal::new(StatusCode::REQUEST_TIMEOUT, "client_timeout", "the request head took too long");
                let _ = conn.stream().try_write(&refusal.wire(&rid));
            } else {
                self.policy.rejected("client_timeout", peer.ip(), 408, None);
            }
        }
    }

    fn on_error(&self, peer: SocketAddr, e: &(dyn std::error::Error + 'static)) {
        if let Some(r) = e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()).and_then(|e| e.downcast_ref::<h1::Refused>()) {
            tracing::info!(client = %peer.ip(), "{}: {}", r.refusal.status.as_u16(), r.refusal.message);
            self.policy.rejected(r.refusal.reason, peer.ip(), r.refusal.status.as_u16(), Some(&r.rid));
            return;
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_parse_too_large() {
                tracing::info!(client = %peer.ip(), "request head too large: 431");
                self.policy.rejected("headers_too_large", peer.ip(), 431, None);
                return;
            }
            if h.is_parse() {
                tracing::info!(client = %peer.ip(), "malformed request: {h}");
                self.policy.rejected("bad_request", peer.ip(), 400, None);
                return;
            }
        }
        tracing::debug!(%peer, "connection ended: {e}");
    }
}

/// A connection's task, stopped when its watchdog is dropped (the listener's
/// tasks end at shutdown) as much as when it expires.
struct Served<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for Served<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Which HTTP a connection speaks, when known before hyper reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proto {
    H1,
    H2,
    /// Not known yet: hyper-util's detection reads the first bytes.
    Sniff,
}

/// Tells an HTTP/1 request from the HTTP/2 preface (`PRI * HTTP/2.0`, prior
/// knowledge) by peeking at the first bytes, so that hyper reads the
/// connection from its first byte itself. (hyper-util's detection reads up to
/// 24 bytes and hands them back separately: hyper's read buffer then has to
/// grow for the rest of the request head, to 16 KiB on every connection.)
/// `None`: the client closed, sent nothing within `wait`, or the listener stopped.
async fn sniff(stream: &TcpStream, prefix: &[u8], wait: Duration, stop: &mut watch::Receiver<bool>) -> Option<Proto> {
    let mut first = [0u8; 3];
    let n = if prefix.is_empty() {
        tokio::select! {
            peeked = tokio::time::timeout(wait, stream.peek(&mut first)) => match peeked {
                Ok(Ok(n)) => n,
                Ok(Err(_)) | Err(_) => return None,
            },
            _ = stopped(stop) => return None,
        }
    } else {
        let n = prefix.len().min(first.len());
        first[..n].copy_from_slice(&prefix[..n]);
        n
    };
    (n > 0).then(|| proto_of(&first[..n]))
}

/// The protocol the first bytes of a connection show: the HTTP/2 preface
/// begins with `PRI`, which no HTTP/1 request method is; fewer bytes that
/// could still be the preface leave the decision to hyper-util.
fn proto_of(first: &[u8]) -> Proto {
    let pri = &crate::conn::H2_PREFACE[..3];
    if first.len() >= pri.len() {
        if first.starts_with(pri) { Proto::H2 } else { Proto::H1 }
    } else if pri.starts_with(first) {
        Proto::Sniff
    } else {
        Proto::H1
    }
}

async fn read_proxy_header(stream: &mut TcpStream, timeout: Duration) -> Result<(proxy_protocol::Header, Bytes), proxy_protocol::Error> {
    let mut buf = BytesMut::with_capacity(256);
    let read = async {
        loop {
            match proxy_protocol::parse(&buf)? {
                Some((header, n)) => {
                    let _ = buf.split_to(n);
                    return Ok((header, buf.freeze()));
                }
                None => {
                    if buf.len() >= proxy_protocol::V2_MAX {
                        return Err(proxy_protocol::Error::Invalid("header too large"));
                    }
                    match stream.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => return Err(proxy_protocol::Error::Missing),
                        Ok(_) => {}
                    }
                }
            }
        }
    };
    tokio::time::timeout(timeout, read).await.unwrap_or(Err(proxy_protocol::Error::Invalid("timed out")))
}

/// A response body that keeps its request counted as "being served" until
/// the last byte is out (so the watchdog never closes a streaming response),
/// and writes its access log line when it is gone.
pub struct Tracked {
    pub(crate) inner: Body,
    pub(crate) _serving: Serving,
    pub(crate) log: Option<Box<crate::access_log::Answered>>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(log) = &mut self.log {
            log.finish(http_body::Body::is_end_stream(&self.inner));
        }
    }
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let (Some(log), Poll::Ready(frame)) = (&mut this.log, &polled) {
            log.frame(frame);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Drops the body of an answer to HEAD made here (a page, a refusal, the
/// status events), keeping the length the body had. A solution's answer to
/// HEAD has none.
#[cold]
fn head_only(resp: &mut Response<Body>) {
    if matches!(resp.body(), Body::Upstream { .. } | Body::Direct(_)) {
        return;
    }
    if let Body::Full(Some(bytes)) = resp.body()
        && !resp.headers().contains_key(http::header::CONTENT_LENGTH)
    {
        let len = http::HeaderValue::from(bytes.len());
        resp.headers_mut().insert(http::header::CONTENT_LENGTH, len);
    }
    *resp.body_mut() = Body::empty();
}

/// Resolves once `rx` holds `true` (or its sender is gone).
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Proto, proto_of};

    #[test]
    fn the_first_bytes_tell_http1_from_the_http2_preface() {
        assert_eq!(proto_of(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Proto::H2);
        assert_eq!(proto_of(b"PRI"), Proto::H2);
        for h1 in [&b"GET / HTTP/1.1\r\n"[..], b"POST", b"PUT", b"PATCH", b"G", b"Q", b"PO"] {
            assert_eq!(proto_of(h1), Proto::H1, "{:?}", String::from_utf8_lossy(h1));
        }
        // Too few bytes to know: hyper-util's own detection reads on.
        assert_eq!(proto_of(b"P"), Proto::Sniff);
        assert_eq!(proto_of(b"PR"), Proto::Sniff);
    }
}
