//! Request bodies on their way to a solution: counted while they stream and
//! cut at `max-body-size`, and given at most `client-body-timeout` between two
//! reads. Cutting makes hyper abort the upstream request, so a solution never
//! receives an oversized body whole.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Sleep;

/// The limits of one request body.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit {
    /// Largest body in bytes; 0 = unlimited.
    pub max: u64,
    /// Longest pause between two reads.
    pub timeout: Duration,
}

/// Why a body was cut.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// More than `max-body-size` arrived.
    #[error("request body larger than {0} bytes")]
    TooLarge(u64),
    /// The client paused longer than `client-body-timeout`.
    #[error("request body stalled for {0:?}")]
    Timeout(Duration),
    /// The client's connection failed mid-body.
    #[error("reading the request body: {0}")]
    Client(#[source] hyper::Error),
}

impl BodyError {
    /// The body error behind a hyper client error, if that is what failed.
    pub fn find<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyError> {
        let mut cur = Some(e);
        while let Some(err) = cur {
            if let Some(b) = err.downcast_ref::<BodyError>() {
                return Some(b);
            }
            cur = err.source();
        }
        None
    }
}

/// A client's request body as the server hands it over: read by hyper, or
/// none (requests the gateway's own HTTP/1.1 server read, [`crate::h1`]).
#[derive(Debug)]
pub enum RequestBody {
    /// Read by hyper.
    Hyper(Incoming),
    /// No body.
    Empty,
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Hyper(b) => Pin::new(b).poll_frame(cx),
            RequestBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Hyper(b) => b.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Hyper(b) => b.size_hint(),
            RequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// A client's request body with its limits applied.
pub struct LimitedBody {
    inner: RequestBody,
    seen: u64,
    limit: BodyLimit,
    stall: Option<Pin<Box<Sleep>>>,
}

impl LimitedBody {
    /// Wraps `inner`.
    pub fn new(inner: RequestBody, limit: BodyLimit) -> Self {
        Self { inner, seen: 0, limit, stall: None }
    }
}

impl http_body::Body for LimitedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.stall = None;
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if this.limit.max > 0 && this.seen > this.limit.max {
                        return Poll::Ready(Some(Err(BodyError::TooLarge(this.limit.max))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Client(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let timeout = this.limit.timeout;
                let stall = this.stall.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if stall.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(BodyError::Timeout(timeout))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
