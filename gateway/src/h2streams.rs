//! An HTTP/2 connection's streams, run inside the connection's own task.
//!
//! hyper hands each stream's future to an executor; with tokio's, every
//! stream became a task of its own: an allocation aligned to a cache line
//! (glibc's `posix_memalign`, ≈ 800 instructions), a place in the runtime's
//! task list and run queue, and a round through the scheduler each time its
//! answer moved on. Here
//! the connection's future polls them itself, as nginx and h2o serve the
//! streams of a connection from its event loop (benchmarks.md, "Thirteenth
//! pass"). A stream still waits on its own (a held request does not hold the
//! others), and the streams end with their connection: when it is closed
//! nothing more of theirs can reach the client.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::task::AtomicWaker;

type Stream = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The executor given to hyper: it queues the streams for [`Streams::drive`].
#[derive(Clone, Default)]
pub struct Exec(Arc<Queue>);

#[derive(Default)]
struct Queue {
    new: Mutex<Vec<Stream>>,
    /// The connection's task, to wake for a stream queued while it is not
    /// being polled (hyper queues them from within the connection's poll).
    waker: AtomicWaker,
}

impl<F> hyper::rt::Executor<F> for Exec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        self.0.new.lock().unwrap_or_else(PoisonError::into_inner).push(Box::pin(fut));
        self.0.waker.wake();
    }
}

/// The streams of one connection, polled with it.
pub struct Streams {
    queue: Arc<Queue>,
    running: FuturesUnordered<Stream>,
}

impl Streams {
    /// The streams that `exec` (given to hyper) queues.
    pub fn new(exec: &Exec) -> Self {
        Self { queue: exec.0.clone(), running: FuturesUnordered::new() }
    }

    /// Polls `conn` and the streams until `conn` ends; the streams still
    /// running then are dropped with it.
    pub async fn drive<C: Future + Unpin>(&mut self, mut conn: C) -> C::Output {
        std::future::poll_fn(|cx| {
            self.queue.waker.register(cx.waker());
            let done = Pin::new(&mut conn).poll(cx);
            self.poll_streams(cx);
            done
        })
        .await
    }

    fn poll_streams(&mut self, cx: &mut Context<'_>) {
        {
            let mut new = self.queue.new.lock().unwrap_or_else(PoisonError::into_inner);
            for s in new.drain(..) {
                self.running.push(s);
            }
        }
        // Each finished stream is taken off; `Pending` once none is ready
        // (`FuturesUnordered` yields, waking this task, after polling each
        // stream once, so a busy connection does not starve the others).
        while let Poll::Ready(Some(())) = self.running.poll_next_unpin(cx) {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn streams_run_with_their_connection_and_end_with_it() {
        let exec = Exec::default();
        let mut streams = Streams::new(&exec);
        let done = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        // The "connection" queues a quick stream and one that waits, then
        // ends once the waiting one is let go.
        let (d1, d2, e) = (done.clone(), done.clone(), exec.clone());
        let conn = Box::pin(async move {
            e.execute(async move {
                d1.fetch_add(1, Ordering::SeqCst);
            });
            e.execute(async move {
                let _ = rx.await;
                d2.fetch_add(1, Ordering::SeqCst);
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = tx.send(());
            tokio::time::sleep(Duration::from_millis(20)).await;
            "closed"
        });
        assert_eq!(streams.drive(conn).await, "closed");
        assert_eq!(done.load(Ordering::SeqCst), 2, "both streams ran to their end while the connection lived");

        // A stream still waiting when its connection ends is dropped with it.
        let dropped = Arc::new(AtomicUsize::new(0));
        struct Flag(Arc<AtomicUsize>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let (flag, e) = (Flag(dropped.clone()), exec.clone());
        let conn = Box::pin(async move {
            e.execute(async move {
                let _flag = flag;
                std::future::pending::<()>().await;
            });
            tokio::task::yield_now().await;
        });
        streams.drive(conn).await;
        assert_eq!(dropped.load(Ordering::SeqCst), 0, "still running at the connection's end");
        drop(streams);
        assert_eq!(dropped.load(Ordering::SeqCst), 1, "dropped with the connection's streams");
    }
}
