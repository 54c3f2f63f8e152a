//! One client connection below HTTP: the socket (shared, so the gateway can
//! still answer `408` after hyper gave up on it), bytes already read while
//! looking for a PROXY header, and the activity that the connection watchdog
//! needs: when the last byte moved, whether a request head is half received,
//! and how many requests are being served.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// The HTTP/2 connection preface, to tell HTTP/2 connections from HTTP/1.
pub(crate) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// Shared state of one connection.
pub struct Conn {
    stream: TcpStream,
    epoch: Instant,
    /// `epoch` by [`crate::clock::monotonic`].
    coarse_epoch: Duration,
    /// Milliseconds since `epoch` of the last byte read or written.
    last_activity: AtomicU64,
    /// Bytes read since the last write: a request head in progress.
    pending: AtomicU64,
    /// When the current `pending` bytes began.
    head_started: AtomicU64,
    /// Requests (or HTTP/2 streams) being served.
    in_service: AtomicU32,
    h2: AtomicBool,
}

/// What the watchdog should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Nothing yet; look again at this time.
    Wait(Instant),
    /// A request head took too long: answer 408 and close.
    HeaderTimeout,
    /// Idle too long: close quietly.
    Idle,
}

impl Conn {
    /// Wraps an accepted socket.
    pub fn new(stream: TcpStream) -> Arc<Self> {
        Arc::new(Self {
            stream,
            epoch: Instant::now(),
            coarse_epoch: crate::clock::monotonic(),
            last_activity: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            in_service: AtomicU32::new(0),
            h2: AtomicBool::new(false),
        })
    }

    /// The socket.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Milliseconds since `epoch`, by the coarse clock: read at every read
    /// and write, within a tick of [`Self::precise_ms`].
    fn now_ms(&self) -> u64 {
        u64::try_from(crate::clock::monotonic().saturating_sub(self.coarse_epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// Milliseconds since `epoch`: for the watchdog, which sleeps until an
    /// `Instant` (by the coarse clock it could wake a tick early, find
    /// nothing due yet, and wake again at once until the clock ticks).
    fn precise_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    fn on_read(&self, bytes: &[u8]) {
        let now = self.now_ms();
        self.last_activity.store(now, Ordering::Relaxed);
        if self.pending.fetch_add(bytes.len() as u64, Ordering::Relaxed) == 0 {
            self.head_started.store(now, Ordering::Relaxed);
            // The server marks what it knew before hyper started (`set_h2`);
            // this catches the connections whose first bytes could not tell.
            if bytes.starts_with(H2_PREFACE) {
                self.h2.store(true, Ordering::Relaxed);
            }
        }
    }

    fn on_write(&self) {
        self.last_activity.store(self.now_ms(), Ordering::Relaxed);
        self.pending.store(0, Ordering::Relaxed);
    }

    /// Marks the connection as HTTP/2 (its preface or ALPN said so): the
    /// request-head timeout then does not apply, since HTTP/2 clients send
    /// frames (PING, WINDOW_UPDATE) between requests.
    pub fn set_h2(&self) {
        self.h2.store(true, Ordering::Relaxed);
    }

    /// A request starts being served; the guard ends it.
    pub fn serving(self: &Arc<Self>) -> Serving {
        self.in_service.fetch_add(1, Ordering::Relaxed);
        self.pending.store(0, Ordering::Relaxed);
        Serving(self.clone())
    }

    /// Decides on a connection's fate: a half-received request head older
    /// than `header_timeout` (HTTP/1 only), or no activity at all for
    /// `keepalive` while nothing is being served.
    pub fn expiry(&self, header_timeout: Duration, keepalive: Duration) -> Expiry {
        let now = self.precise_ms();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        if self.in_service.load(Ordering::Relaxed) > 0 {
            return Expiry::Wait(self.at(now.saturating_add(ms(keepalive))));
        }
        if self.pending.load(Ordering::Relaxed) > 0 && !self.h2.load(Ordering::Relaxed) {
            let deadline = self.head_started.load(Ordering::Relaxed).saturating_add(ms(header_timeout));
            return if now >= deadline { Expiry::HeaderTimeout } else { Expiry::Wait(self.at(deadline)) };
        }
        let deadline = self.last_activity.load(Ordering::Relaxed).saturating_add(ms(keepalive));
        if now >= deadline { Expiry::Idle } else { Expiry::Wait(self.at(deadline)) }
    }
}

/// Reads what `stream` holds into `buf` (`room` bytes free): `Ok(0)` at the
/// end of the stream, `WouldBlock` if nothing is there.
///
/// A read that did not fill the buffer drained the socket (edge-triggered
/// epoll), so its readiness is cleared, the way tokio's own
/// `TcpStream::poll_read` does: the next read waits for the next event
/// instead of costing a `recv` that fails with EAGAIN. `try_io` clears only
/// the readiness seen before the read, so data arriving meanwhile is not
/// missed. Used by both sides: client connections and the own upstream client.
pub(crate) fn read_draining<B: bytes::BufMut>(stream: &TcpStream, buf: &mut B, room: usize) -> io::Result<usize> {
    let mut got = 0;
    let read = stream.try_io(Interest::READABLE, || {
        got = stream.try_read_buf(buf)?;
        if got > 0 && got < room { Err(io::ErrorKind::WouldBlock.into()) } else { Ok(got) }
    });
    match read {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
        other => other,
    }
}

/// A request being served on a connection.
pub struct Serving(Arc<Conn>);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.on_write();
        self.0.in_service.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The connection as hyper reads and writes it.
pub struct ClientIo {
    conn: Arc<Conn>,
    prefix: Bytes,
}

impl ClientIo {
    /// `prefix` holds bytes read before HTTP began (after a PROXY header).
    pub fn new(conn: Arc<Conn>, prefix: Bytes) -> Self {
        Self { conn, prefix }
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            this.conn.on_read(&this.prefix[..n]);
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        let stream = &this.conn.stream;
        loop {
            ready!(stream.poll_read_ready(cx))?;
            let before = buf.filled().len();
            let room = buf.remaining();
            // Into the caller's uninitialised buffer: no zeroing of hyper's
            // whole read buffer per read.
            match read_draining(stream, buf, room) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
            let read = &buf.filled()[before..];
            if !read.is_empty() {
                this.conn.on_read(read);
            }
            return Poll::Ready(Ok(()));
        }
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let conn = &self.conn;
        loop {
            ready!(conn.stream.poll_write_ready(cx))?;
            match conn.stream.try_write(data) {
                Ok(n) => {
                    conn.on_write();
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let conn = &self.conn;
        loop {
            ready!(conn.stream.poll_write_ready(cx))?;
            match conn.stream.try_write_vectored(bufs) {
                Ok(n) => {
                    conn.on_write();
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = nix::sys::socket::shutdown(std::os::fd::AsRawFd::as_raw_fd(&self.conn.stream), nix::sys::socket::Shutdown::Write);
        Poll::Ready(match r {
            Ok(()) | Err(nix::errno::Errno::ENOTCONN) => Ok(()),
            Err(e) => Err(io::Error::from(e)),
        })
    }
}
