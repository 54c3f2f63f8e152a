//! Serving on an already bound listener until told to stop, then draining:
//! HTTP/1.1 and HTTP/2 (prior knowledge) on one port, upgrades allowed. Below
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
use http::{Request, Response};
use http_body::Frame;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::body::Body;
use crate::conn::{ClientIo, Conn, Expiry, Serving};
use crate::limits::ConnectionLimiter;
use crate::proxy_protocol;

/// Pause after a failed accept (e.g. out of file descriptors), so the loop
/// does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(20);

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
    /// A connection-level refusal, by reason (for metrics).
    fn rejected(&self, reason: &'static str);
    /// A TLS handshake failed.
    fn handshake_failed(&self, _e: &std::io::Error) {}
}

/// What a request knows of its connection (a request extension).
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
    fn rejected(&self, reason: &'static str) {
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
    F: Fn(SocketAddr, Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
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
                let opts = policy.options();
                let conn = Connection { handler: handler.clone(), policy: policy.clone(), limiter: limiter.clone(), opts, tls: tls.clone() };
                let watcher = graceful.watcher();
                tokio::spawn(conn.run(stream, peer, watcher));
            }
            _ = stopped(&mut shutdown) => break,
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::debug!("all connections drained"),
        _ = tokio::time::sleep(grace) => tracing::warn!("grace period of {grace:?} over; closing the remaining connections"),
    }
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
    F: Fn(SocketAddr, Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    async fn run(self, mut stream: TcpStream, mut peer: SocketAddr, watcher: hyper_util::server::graceful::Watcher) {
        let opts = &self.opts;
        let mut prefix = Bytes::new();
        if opts.proxy_protocol {
            match read_proxy_header(&mut stream, opts.header_timeout).await {
                Ok((header, rest)) => {
                    if let Some(src) = header.source {
                        peer = src;
                    }
                    prefix = rest;
                }
                Err(e) => {
                    tracing::info!(%peer, "refused: {e}");
                    self.policy.rejected("proxy_protocol");
                    return;
                }
            }
        }
        let Some(_permit) = self.limiter.acquire(proto::net::client_key(peer.ip()), opts.limit_connections) else {
            tracing::info!(client = %peer.ip(), limit = opts.limit_connections, "too many connections from this client");
            self.policy.rejected("too_many_connections");
            let _ = stream.try_write(TOO_MANY_CONNECTIONS);
            return;
        };
        let conn = Conn::new(stream);
        let io = ClientIo::new(conn.clone(), prefix);
        match self.tls.clone() {
            None => self.serve_http(TokioIo::new(io), conn, peer, Arc::new(ConnInfo::default()), watcher).await,
            Some(acceptor) => match tokio::time::timeout(opts.header_timeout, acceptor.accept(io)).await {
                Ok(Ok(stream)) => {
                    let (_, session) = stream.get_ref();
                    if session.alpn_protocol() == Some(b"h2") {
                        conn.set_h2();
                    }
                    let info = ConnInfo {
                        tls: true,
                        sni: session.server_name().map(|s| Arc::from(s.to_ascii_lowercase())),
                        h2: session.alpn_protocol() == Some(b"h2"),
                    };
                    self.serve_http(TokioIo::new(stream), conn, peer, Arc::new(info), watcher).await;
                }
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "TLS handshake failed: {e}");
                    self.policy.handshake_failed(&e);
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    self.policy.handshake_failed(&std::io::Error::from(std::io::ErrorKind::TimedOut));
                }
            },
        }
    }

    async fn serve_http<I>(
        &self,
        io: TokioIo<I>,
        conn: Arc<Conn>,
        peer: SocketAddr,
        info: Arc<ConnInfo>,
        watcher: hyper_util::server::graceful::Watcher,
    ) where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let opts = &self.opts;
        let handler = self.handler.clone();
        let svc_conn = conn.clone();
        // Plain connections carry no extension: inserting the first one
        // allocates a map per request, which the common path need not pay.
        let info = info.tls.then_some(info);
        let svc = service_fn(move |mut req: Request<Incoming>| {
            let serving = svc_conn.serving();
            if let Some(info) = &info {
                req.extensions_mut().insert(info.clone());
            }
            let fut = handler(peer, req);
            async move { Ok::<_, Infallible>(fut.await.map(|b| Tracked { inner: b, _serving: serving })) }
        });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // hyper answers 431 itself when a request head outgrows its read buffer.
        builder.http1().timer(TokioTimer::new()).header_read_timeout(None).max_buf_size(opts.max_header_size);
        if opts.max_headers != proto::settings::DEFAULT_MAX_HEADERS as usize {
            // A non-default value makes hyper allocate headers on the heap: only when asked.
            builder.http1().max_headers(opts.max_headers);
        }
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(opts.h2_max_streams)
            .max_header_list_size(u32::try_from(opts.max_header_size).unwrap_or(u32::MAX))
            .max_pending_accept_reset_streams(Some(20))
            .max_local_error_reset_streams(Some(256));
        let served = builder.serve_connection_with_upgrades(io, svc);
        let mut served = Box::pin(watcher.watch(served.into_owned()));
        let expiry = loop {
            let check = match conn.expiry(opts.header_timeout, opts.keepalive) {
                // A request head may start at any moment while we sleep towards the
                // keep-alive deadline: look again at least every half header timeout.
                Expiry::Wait(at) => at.min(std::time::Instant::now() + opts.header_timeout / 2),
                other => break other,
            };
            tokio::select! {
                r = served.as_mut() => {
                    if let Err(e) = r {
                        self.on_error(peer, &*e);
                    }
                    return;
                }
                _ = tokio::time::sleep_until(check.into()) => {}
            }
        };
        drop(served);
        if expiry == Expiry::HeaderTimeout {
            tracing::info!(client = %peer.ip(), "request head not received within {:?}: 408", opts.header_timeout);
            self.policy.rejected("client_timeout");
            if self.tls.is_none() {
                // Over TLS the socket carries records, not text: just close.
                let _ = conn.stream().try_write(REQUEST_TIMEOUT);
            }
        }
    }

    fn on_error(&self, peer: SocketAddr, e: &(dyn std::error::Error + 'static)) {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_parse_too_large() {
                tracing::info!(client = %peer.ip(), "request head too large: 431");
                self.policy.rejected("headers_too_large");
                return;
            }
            if h.is_parse() {
                tracing::info!(client = %peer.ip(), "malformed request: {h}");
                self.policy.rejected("bad_request");
                return;
            }
        }
        tracing::debug!(%peer, "connection ended: {e}");
    }
}

const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: text/plain\r\ncontent-length: 40\r\nretry-after: 1\r\nconnection: close\r\n\r\ntoo many connections from your address\r\n";
const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\ncontent-length: 33\r\nconnection: close\r\n\r\nrequest headers took too long\r\n\r\n";

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
/// the last byte is out (so the watchdog never closes a streaming response).
pub struct Tracked {
    inner: Body,
    _serving: Serving,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Resolves once `rx` holds `true` (or its sender is gone).
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}
