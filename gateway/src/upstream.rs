//! Connections to solution endpoints: a pool of idle HTTP/1.1 connections
//! per endpoint, and a send that hands the request back when it never
//! reached the solution (so the caller can retry or hold it again).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use http::{Request, Response};
use hyper::body::Incoming;

use crate::limits::LimitedBody;
use hyper::client::conn::http1::{Builder, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::direct;
use crate::solution::OwnedActivity;

/// Idle connections kept per endpoint; more are closed when returned.
const MAX_IDLE_PER_ENDPOINT: usize = 256;
/// An idle connection unused this long is closed (nginx's upstream
/// `keepalive_timeout` is 60 s too), at the next sweep after it.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts on pooled or fresh connections before giving up on an endpoint.
pub(crate) const SEND_ATTEMPTS: usize = 3;

/// The request body type sent upstream.
pub type ReqBody = LimitedBody;
type Sender = SendRequest<ReqBody>;

/// One address serving a solution.
pub struct Endpoint {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Requests forwarded at once (`max-concurrent-requests`); `None` = unlimited.
    permits: Option<Arc<tokio::sync::Semaphore>>,
    /// The `max-concurrent-requests` it was made with.
    limit: u32,
    in_flight: AtomicUsize,
    idle: Idle<Sender>,
    /// Idle connections of the gateway's own client (requests without a body).
    pub(crate) direct_idle: Idle<Box<direct::Conn>>,
}

/// One endpoint's idle connections, the most recently used on top.
///
/// Last in, first out: the load that remains after a burst keeps reusing
/// the same few connections, whose TCP state (the congestion window, the
/// solution's pacing rate) the traffic they carry keeps grown, while the
/// burst's extra connections sink and are closed once idle for
/// [`IDLE_TIMEOUT`]. A queue (as before) spread every request over every
/// connection a burst had opened: after small responses on 50 connections,
/// 1 MiB responses went out on connections whose BBR pacing rate was still
/// that of 150-byte answers, and p99 was ~95 ms instead of ~15 ms
/// (docs/benchmarks.md, "Tenth pass"). The lock is held for a push or a
/// pop, and by the sweep every 10 s while it checks each idle connection
/// (what it closes is closed after the lock is released).
pub(crate) struct Idle<T> {
    stack: Mutex<Vec<(u32, T)>>,
    /// Sweeps so far; each connection keeps the count it was pooled at.
    sweeps: AtomicU32,
}

impl<T> Idle<T> {
    fn new() -> Self {
        Self { stack: Mutex::new(Vec::new()), sweeps: AtomicU32::new(0) }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<(u32, T)>> {
        self.stack.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently pooled connection.
    pub(crate) fn pop(&self) -> Option<T> {
        self.lock().pop().map(|(_, c)| c)
    }

    /// Pools `conn`; when [`MAX_IDLE_PER_ENDPOINT`] are idle already, the
    /// one idle longest is closed to make room.
    pub(crate) fn push(&self, conn: T) {
        let mut stack = self.lock();
        let at = self.sweeps.load(Ordering::Relaxed);
        let coldest = (stack.len() >= MAX_IDLE_PER_ENDPOINT).then(|| stack.remove(0));
        stack.push((at, conn));
        drop(stack);
        drop(coldest);
    }

    /// Connections idle now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Closes the connections idle for more than `max_sweeps` sweeps and
    /// those `open` says the solution has closed.
    fn sweep(&self, max_sweeps: u32, open: impl Fn(&T) -> bool) {
        let mut stack = self.lock();
        let now = self.sweeps.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        let closing: Vec<_> = stack.extract_if(.., |(at, c)| now.wrapping_sub(*at) > max_sweeps || !open(c)).collect();
        drop(stack);
        drop(closing);
    }
}

impl Endpoint {
    /// Requests being forwarded to it now (for load balancing).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// Every endpoint's pool, by address.
#[derive(Default)]
pub struct Pools {
    map: DashMap<SocketAddr, Arc<Endpoint>>,
}

impl Pools {
    /// The endpoint at `addr` with concurrency `max_concurrent` (0 =
    /// unlimited), created on first use, and made anew when that changed (a
    /// live edit): requests under way keep the one they got.
    pub fn endpoint(&self, addr: SocketAddr, max_concurrent: u32) -> Arc<Endpoint> {
        if let Some(ep) = self.map.get(&addr)
            && ep.limit == max_concurrent
        {
            return ep.clone();
        }
        let made = || {
            let permits = usize::try_from(max_concurrent).ok().filter(|n| *n > 0).map(|n| Arc::new(tokio::sync::Semaphore::new(n)));
            let ep = Endpoint {
                addr,
                permits,
                limit: max_concurrent,
                in_flight: AtomicUsize::new(0),
                idle: Idle::new(),
                direct_idle: Idle::new(),
            };
            Arc::new(ep)
        };
        let mut slot = self.map.entry(addr).or_insert_with(made);
        if slot.limit != max_concurrent {
            *slot = made();
        }
        slot.clone()
    }

    /// Closes idle connections that their solution has closed (a stopped
    /// solution leaves them half-closed) and those unused for
    /// [`IDLE_TIMEOUT`]; called every `every`.
    pub fn sweep(&self, every: Duration) {
        // Rounded up: a connection is never closed before IDLE_TIMEOUT.
        let max_sweeps = u32::try_from(IDLE_TIMEOUT.as_millis().div_ceil(every.as_millis().max(1))).unwrap_or(u32::MAX);
        for ep in self.map.iter() {
            ep.direct_idle.sweep(max_sweeps, |c| c.is_open());
            ep.idle.sweep(max_sweeps, |c| !c.is_closed());
        }
    }

    /// Drops endpoints nobody routes to any more (and their idle connections).
    pub fn prune(&self) {
        self.map.retain(|_, ep| Arc::strong_count(ep) > 1 || ep.in_flight() > 0);
    }
}

/// Why a send failed.
pub enum SendError {
    /// The request never reached the solution: it is handed back.
    NotSent(Box<Request<ReqBody>>, String),
    /// The request may have reached the solution; it cannot be retried.
    Failed(hyper::Error),
}

/// A forwarded request's response, with what it needs when its body ends.
pub struct Sent {
    /// The solution's response.
    pub response: Response<Incoming>,
    /// The connection it came on (pooled again once the body ends cleanly).
    pub conn: Sender,
    /// Its share of the endpoint's concurrency, held until the body ends.
    pub permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// Waits for a share of `ep`'s concurrency (`max-concurrent-requests`);
/// `None` when it is unlimited.
pub async fn permit(ep: &Endpoint) -> Option<tokio::sync::OwnedSemaphorePermit> {
    match &ep.permits {
        Some(p) => p.clone().acquire_owned().await.ok(),
        None => None,
    }
}

/// Sends `req` to `ep`, on an idle connection or a new one, holding `permit`
/// (from [`permit`]) until the response body ends.
pub async fn send(
    ep: &Endpoint,
    mut req: Request<ReqBody>,
    connect_timeout: Duration,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) -> Result<Sent, SendError> {
    let mut last_error = String::new();
    for _ in 0..SEND_ATTEMPTS {
        let mut conn = match pooled(ep).await {
            Some(c) => c,
            // Boxed: a new connection is the rare path, and its future
            // (connect, timeout, handshake) would otherwise make every
            // request's future several KiB larger.
            None => match Box::pin(connect(ep.addr, connect_timeout)).await {
                Ok(c) => c,
                Err(e) => return Err(SendError::NotSent(Box::new(req), e)),
            },
        };
        match conn.try_send_request(req).await {
            Ok(response) => return Ok(Sent { response, conn, permit }),
            Err(mut e) => match e.take_message() {
                Some(r) => {
                    last_error = e.into_error().to_string();
                    req = r;
                }
                None => return Err(SendError::Failed(e.into_error())),
            },
        }
    }
    Err(SendError::NotSent(Box::new(req), last_error))
}

async fn pooled(ep: &Endpoint) -> Option<Sender> {
    while let Some(mut c) = ep.idle.pop() {
        if c.is_closed() {
            continue;
        }
        if c.ready().await.is_ok() {
            return Some(c);
        }
    }
    None
}

/// A new TCP connection to a solution endpoint, `TCP_NODELAY` set (both clients).
pub(crate) async fn dial(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, String> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(format!("connect to {addr}: {e}")),
        Err(_) => return Err(format!("connect to {addr}: timed out after {timeout:?}")),
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Sender, String> {
    let stream = dial(addr, timeout).await?;
    let (sender, conn) = Builder::new().handshake(TokioIo::new(stream)).await.map_err(|e| format!("handshake with {addr}: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(%addr, "upstream connection ended: {e}");
        }
    });
    Ok(sender)
}

/// Runs when a forwarded response's body ends or is dropped: pools the
/// connection if the body ended cleanly, records the duration, releases the
/// in-flight count.
pub struct Done {
    ep: Arc<Endpoint>,
    conn: Option<Sender>,
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
    activity: Option<OwnedActivity>,
    started: Instant,
}

impl Done {
    /// Takes over `ep`'s in-flight count (see [`begin`]).
    pub fn new(
        ep: Arc<Endpoint>,
        sent_conn: (Option<Sender>, Option<tokio::sync::OwnedSemaphorePermit>),
        activity: OwnedActivity,
        started: Instant,
    ) -> Self {
        let (conn, permit) = sent_conn;
        Self { ep, conn, _permit: permit, activity: Some(activity), started }
    }

    /// The body ended; `clean` if it ended without error.
    pub fn finish(mut self, clean: bool) {
        if clean && let Some(c) = self.conn.take() {
            self.ep.idle.push(c);
        }
    }

    /// A body read by the gateway's own client ended cleanly: `conn` goes
    /// back to the pool.
    pub fn pool(self, conn: Box<direct::Conn>) {
        self.ep.direct_idle.push(conn);
    }

    /// A `Done` for unit tests of a body's end (no solution, no activity).
    #[cfg(test)]
    pub fn for_test(ep: Arc<Endpoint>) -> Self {
        Self { ep, conn: None, _permit: None, activity: None, started: Instant::now() }
    }

    /// Hands the activity over (to an upgraded stream), leaving the rest.
    pub fn take_activity(&mut self) -> Option<OwnedActivity> {
        self.activity.take()
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        self.ep.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(a) = &self.activity {
            a.solution().metrics.duration.observe(self.started.elapsed().as_secs_f64());
        }
    }
}

/// Counts a request against `ep` (undone by the [`Done`] built afterwards, or
/// by [`abort`] if nothing was forwarded).
pub fn begin(ep: &Endpoint) {
    ep.in_flight.fetch_add(1, Ordering::Relaxed);
}

/// Undoes [`begin`] for a request that was not forwarded.
pub fn abort(ep: &Endpoint) {
    ep.in_flight.fetch_sub(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_recently_pooled_connection_is_reused_first() {
        let idle = Idle::new();
        for c in ["a", "b", "c"] {
            idle.push(c);
        }
        assert_eq!(idle.pop(), Some("c"));
        idle.push("c");
        assert_eq!(idle.pop(), Some("c"), "a steady load keeps reusing the same connection");
        assert_eq!(idle.pop(), Some("b"));
        assert_eq!(idle.pop(), Some("a"));
        assert_eq!(idle.pop(), None);
    }

    #[test]
    fn connections_unused_for_the_idle_timeout_are_closed_and_closed_ones_dropped() {
        let idle = Idle::new();
        idle.push("old");
        // Sweeps every 10 s: "old" has been idle 50 s after five of them.
        for _ in 0..5 {
            idle.sweep(6, |_| true);
        }
        idle.push("used");
        idle.sweep(6, |_| true);
        assert_eq!(idle.len(), 2, "60 s idle is not yet more than the timeout");
        idle.sweep(6, |_| true);
        assert_eq!(idle.pop(), Some("used"), "only the one idle longer than 60 s is closed");
        assert_eq!(idle.pop(), None);
        idle.push("gone");
        idle.sweep(6, |c| *c != "gone");
        assert_eq!(idle.len(), 0, "one the solution closed is dropped at once");
    }

    #[test]
    fn no_more_than_the_limit_stay_idle() {
        let idle = Idle::new();
        for i in 0..MAX_IDLE_PER_ENDPOINT + 10 {
            idle.push(i);
        }
        assert_eq!(idle.len(), MAX_IDLE_PER_ENDPOINT);
        assert_eq!(idle.pop(), Some(MAX_IDLE_PER_ENDPOINT + 9), "the most recent one stays on top");
        let mut rest = Vec::new();
        while let Some(i) = idle.pop() {
            rest.push(i);
        }
        assert_eq!(rest.last(), Some(&10), "the ten idle longest were closed to make room");
    }
}
