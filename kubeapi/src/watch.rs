//! Watch streams: newline-separated JSON events (`ADDED`, `MODIFIED`,
//! `DELETED`, `BOOKMARK`) on a chunked 200 response, filtered by namespace and
//! selector, ended at `timeoutSeconds`, on compaction, or when the client goes.
//!
//! A resourceVersion that is too old is answered as kube-apiserver's watch
//! cache does: a 200 stream with one `ERROR` event carrying a 410 `Expired`
//! Status. (An HTTP 410 would make kube's watcher retry the same rv forever
//! instead of relisting.) An object that starts or stops matching the
//! selector arrives as `ADDED` or `DELETED`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use serde_json::json;
use tokio::sync::{broadcast, mpsc};

use crate::request::ApiRequest;
use crate::resource::ResourceId;
use crate::response::{self, Body};
use crate::selector::Selector;
use crate::status::ApiError;
use crate::store::{Change, Event, EventKind, Store};

/// How long a watch runs when the client gives no `timeoutSeconds`
/// (kube-apiserver picks 30-60 minutes).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// How often a watch that allows bookmarks is told the latest resourceVersion,
/// so a client resumes close to now after a reconnect.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(2);

/// Lines buffered per watch before the stream waits for the client.
const STREAM_BUFFER: usize = 64;

/// The annotation that marks the end of `sendInitialEvents`.
const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

/// What one watch asks for.
#[derive(Debug, Clone)]
pub struct WatchParams {
    resource: ResourceId,
    namespace: Option<String>,
    selector: Selector,
    /// Resume after this rv; `None` starts with the current objects as `ADDED`.
    from: Option<u64>,
    bookmarks: bool,
    initial_events_end: bool,
    timeout: Duration,
}

impl WatchParams {
    /// Reads the watch parameters of `req` (a name in the path watches that object).
    pub fn from_request(req: &ApiRequest) -> Result<WatchParams, ApiError> {
        let q = &req.query;
        let fields = match (&req.name, q.get("fieldSelector").filter(|f| !f.is_empty())) {
            (Some(name), Some(f)) => Some(format!("{f},metadata.name={name}")),
            (Some(name), None) => Some(format!("metadata.name={name}")),
            (None, f) => f.map(str::to_string),
        };
        let selector = Selector::parse(q.get("labelSelector"), fields.as_deref())?;
        let initial_events = q.flag("sendInitialEvents");
        let from = match q.number("resourceVersion")? {
            _ if initial_events => None,
            None | Some(0) => None,
            Some(rv) => Some(rv),
        };
        let timeout = match q.number("timeoutSeconds")? {
            None | Some(0) => DEFAULT_TIMEOUT,
            Some(secs) => Duration::from_secs(secs),
        };
        Ok(WatchParams {
            resource: req.resource,
            namespace: req.namespace.clone(),
            selector,
            from,
            bookmarks: q.flag("allowWatchBookmarks"),
            initial_events_end: initial_events,
            timeout,
        })
    }
}

/// Starts a watch: the streamed response, fed by a task that lives as long
/// as the client reads.
pub fn start(store: &Store, params: WatchParams) -> Response<Body> {
    let sub = match store.subscribe(params.resource, params.from) {
        Ok(sub) => sub,
        Err(expired) => {
            let mut line = serde_json::to_vec(&json!({"type": "ERROR", "object": expired.to_status()})).unwrap_or_default();
            line.push(b'\n');
            return response::bytes(line);
        }
    };
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(async move {
        let seen = sub.rv.max(params.from.unwrap_or(0));
        let mut watch = Watch { params, tx, seen, told: seen };
        watch.run(sub.backlog, sub.live).await;
    });
    response::stream(rx)
}

struct Watch {
    params: WatchParams,
    tx: mpsc::Sender<Bytes>,
    /// The highest rv heard from the store.
    seen: u64,
    /// The highest rv the client was told of.
    told: u64,
}

impl Watch {
    async fn run(&mut self, backlog: Vec<Arc<Event>>, mut live: broadcast::Receiver<Change>) {
        for event in backlog {
            if !self.send_event(&event).await {
                return;
            }
        }
        if self.params.initial_events_end && !self.send_bookmark(true).await {
            return;
        }
        let deadline = tokio::time::sleep(self.params.timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(BOOKMARK_INTERVAL);
        tick.reset();
        loop {
            let open = tokio::select! {
                _ = &mut deadline => false,
                _ = self.tx.closed() => false,
                _ = tick.tick(), if self.params.bookmarks => self.seen <= self.told || self.send_bookmark(false).await,
                change = live.recv() => match change {
                    Ok(Change::Event(e)) => {
                        self.seen = self.seen.max(e.rv);
                        e.rv <= self.params.from.unwrap_or(0) || self.send_event(&e).await
                    }
                    // Compacted, lagged behind, or the store is gone: end the
                    // stream; the client resumes from its last rv (or relists).
                    Ok(Change::Compacted) | Err(_) => false,
                },
            };
            if !open {
                return;
            }
        }
    }

    /// Sends `event` if it concerns this watch; false once the client is gone.
    async fn send_event(&mut self, event: &Event) -> bool {
        let Some(kind) = self.kind_for(event) else { return true };
        let mut line = Vec::with_capacity(256);
        line.extend_from_slice(br#"{"type":""#);
        line.extend_from_slice(kind.as_bytes());
        line.extend_from_slice(br#"","object":"#);
        if serde_json::to_writer(&mut line, &*event.object).is_err() {
            return true;
        }
        line.extend_from_slice(b"}\n");
        self.told = self.told.max(event.rv);
        self.tx.send(Bytes::from(line)).await.is_ok()
    }

    fn kind_for(&self, event: &Event) -> Option<&'static str> {
        let p = &self.params;
        if event.key.resource != p.resource || p.namespace.as_ref().is_some_and(|ns| *ns != event.key.namespace) {
            return None;
        }
        let now = p.selector.matches(&event.object);
        let before = event.prev.as_deref().is_some_and(|prev| p.selector.matches(prev));
        match (event.kind, before, now) {
            (EventKind::Added, _, true) => Some("ADDED"),
            (EventKind::Modified, true, true) => Some("MODIFIED"),
            (EventKind::Modified, false, true) => Some("ADDED"),
            (EventKind::Modified, true, false) => Some("DELETED"),
            (EventKind::Deleted, _, true) => Some("DELETED"),
            _ => None,
        }
    }

    async fn send_bookmark(&mut self, initial_events_end: bool) -> bool {
        let resource = self.params.resource.get();
        let mut meta = json!({"resourceVersion": self.seen.to_string()});
        if initial_events_end {
            meta["annotations"] = json!({INITIAL_EVENTS_END: "true"});
        }
        let object = json!({"kind": resource.kind, "apiVersion": resource.api_version(), "metadata": meta});
        let mut line = serde_json::to_vec(&json!({"type": "BOOKMARK", "object": object})).unwrap_or_default();
        line.push(b'\n');
        self.told = self.seen;
        self.tx.send(Bytes::from(line)).await.is_ok()
    }
}
