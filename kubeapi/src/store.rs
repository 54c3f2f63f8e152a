//! The object store: every object by (resource, namespace, name), one global
//! resourceVersion counter, server-owned metadata (`uid`, `creationTimestamp`,
//! `generation`, `resourceVersion`), field owners for server-side apply, and a
//! bounded history of changes per resource type from which watches resume.
//!
//! Every change is published on one broadcast channel while the lock is held,
//! so a watch that reads the history and subscribes under the same lock sees
//! each later change exactly once, in resourceVersion order.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Map, Value};
use tokio::sync::broadcast;

use crate::apply::Owners;
use crate::clock;
use crate::resource::{Key, ResourceId};
use crate::selector::Selector;
use crate::status::ApiError;

/// Changes kept per resource type for watches to resume from; older
/// resourceVersions get 410 Expired, as from a compacted etcd.
pub const HISTORY_PER_RESOURCE: usize = 1000;

/// Changes a slow watcher may fall behind by before its stream is ended (it
/// then resumes from the history, or relists).
const BROADCAST_CAPACITY: usize = 4096;

/// What a watcher hears.
#[derive(Debug, Clone)]
pub enum Change {
    /// An object was added, modified or deleted.
    Event(Arc<Event>),
    /// The history was dropped ([`Store::compact`]): open watches end, so
    /// that their clients resume from an rv that is now too old.
    Compacted,
}

/// One change to one object.
#[derive(Debug)]
pub struct Event {
    /// The resourceVersion the change created.
    pub rv: u64,
    /// Added, modified or deleted.
    pub kind: EventKind,
    /// Which object.
    pub key: Key,
    /// The object after the change (for a delete: its last state, at `rv`).
    pub object: Arc<Value>,
    /// The object before the change, if it existed.
    pub prev: Option<Arc<Value>>,
}

/// The type of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// `ADDED`.
    Added,
    /// `MODIFIED`.
    Modified,
    /// `DELETED`.
    Deleted,
}

/// One page of a list.
#[derive(Debug)]
pub struct Page {
    /// The resourceVersion the list is consistent with.
    pub rv: u64,
    /// The matching objects, by namespace and name.
    pub items: Vec<Arc<Value>>,
    /// Token for the next page, if there is one.
    pub next: Option<String>,
}

/// A watch's starting point: the changes it must replay, then the live feed.
pub struct Subscription {
    /// Changes to replay first, oldest first.
    pub backlog: Vec<Arc<Event>>,
    /// Every later change, of every resource type.
    pub live: broadcast::Receiver<Change>,
    /// The global resourceVersion when the subscription was taken.
    pub rv: u64,
}

/// The outcome of a successful write.
#[derive(Debug, Clone)]
pub struct Written {
    /// The stored object (for a delete: its last state).
    pub object: Arc<Value>,
    /// Whether the write created the object.
    pub created: bool,
}

/// The in-memory API store. Cheap to share behind an `Arc`.
pub struct Store {
    inner: Mutex<Inner>,
    changes: broadcast::Sender<Change>,
}

#[derive(Default)]
struct Inner {
    rv: u64,
    uids: u64,
    objects: BTreeMap<Key, Stored>,
    history: HashMap<ResourceId, History>,
}

struct Stored {
    object: Arc<Value>,
    owners: Owners,
}

#[derive(Default)]
struct History {
    events: VecDeque<Arc<Event>>,
    /// Changes at or below this rv may be missing: a watch must start at or after it.
    floor: u64,
}

// === impl Store ===

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

impl Store {
    /// An empty store.
    pub fn new() -> Store {
        Store { inner: Mutex::new(Inner::default()), changes: broadcast::channel(BROADCAST_CAPACITY).0 }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The latest resourceVersion handed out.
    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    /// The object at `key`.
    pub fn get(&self, key: &Key) -> Option<Arc<Value>> {
        self.lock().objects.get(key).map(|s| s.object.clone())
    }

    /// The field owners of the object at `key`.
    pub fn owners(&self, key: &Key) -> Option<Owners> {
        self.lock().objects.get(key).map(|s| s.owners.clone())
    }

    /// Every object of `resource` (in `namespace`, or all), by namespace and name.
    pub fn all(&self, resource: ResourceId, namespace: Option<&str>) -> Vec<Arc<Value>> {
        let inner = self.lock();
        inner.objects.iter().filter(|(k, _)| in_scope(k, resource, namespace)).map(|(_, s)| s.object.clone()).collect()
    }

    /// One page of the objects of `resource` that match `selector`. `limit` 0
    /// means no limit; `cont` is the `continue` token of the previous page.
    /// Later pages show the objects as they are now but report the first
    /// page's rv, so a watch from it replays whatever changed in between.
    pub fn list(
        &self,
        resource: ResourceId,
        namespace: Option<&str>,
        selector: &Selector,
        limit: usize,
        cont: Option<&str>,
    ) -> Result<Page, ApiError> {
        let inner = self.lock();
        let (rv, after) = match cont {
            Some(token) => {
                let (rv, ns, name) = parse_continue(token)?;
                if rv < inner.floor(resource) {
                    return Err(ApiError::Expired(
                        "The provided continue parameter is too old to display a consistent list result.".into(),
                    ));
                }
                (rv, Some((ns, name)))
            }
            None => (inner.rv, None),
        };
        let candidates = inner.objects.iter().filter(|(k, _)| in_scope(k, resource, namespace));
        let candidates = candidates.filter(|(k, _)| after.as_ref().is_none_or(|(ns, name)| (&k.namespace, &k.name) > (ns, name)));
        let mut items = Vec::new();
        let mut more = false;
        for (_, stored) in candidates.filter(|(_, s)| selector.matches(&s.object)) {
            if limit > 0 && items.len() == limit {
                more = true;
                break;
            }
            items.push(stored.object.clone());
        }
        let next = items.last().filter(|_| more).map(|last| format!("{rv}|{}|{}", str_at(last, "namespace"), str_at(last, "name")));
        Ok(Page { rv, items, next })
    }

    /// Reads the object at `key` and writes what `f` returns: `Some` stores
    /// (creating or replacing), `None` deletes. `f` sees the current object
    /// and a copy of its field owners, which is kept if the write succeeds.
    /// Server-owned metadata is filled in; a `metadata.resourceVersion` in the
    /// new object must match the stored one (else 409 Conflict); a write that
    /// changes nothing keeps the resourceVersion and sends no event. `f` runs
    /// under the store's lock, so it must not call the store.
    pub fn write<F>(&self, key: &Key, f: F) -> Result<Written, ApiError>
    where
        F: FnOnce(Option<&Value>, &mut Owners) -> Result<Option<Value>, ApiError>,
    {
        let mut inner = self.lock();
        let current = inner.objects.get(key);
        let mut owners = current.map(|s| s.owners.clone()).unwrap_or_default();
        let prev = current.map(|s| s.object.clone());
        let Some(new) = f(prev.as_deref(), &mut owners)? else {
            let prev = prev.ok_or_else(|| ApiError::not_found(key.resource.get(), &key.name))?;
            let rv = inner.rv + 1;
            let mut last = (*prev).clone();
            set_meta(&mut last, "resourceVersion", Value::String(rv.to_string()));
            inner.objects.remove(key);
            let object = Arc::new(last);
            self.publish(&mut inner, rv, EventKind::Deleted, key, object.clone(), Some(prev));
            return Ok(Written { object, created: false });
        };
        let rv = inner.rv + 1;
        let normalized = normalize(key, prev.as_deref(), new, rv, &mut inner.uids)?;
        if let Some(prev) = prev.as_ref().filter(|p| same_but_version(p, &normalized)) {
            if let Some(stored) = inner.objects.get_mut(key) {
                stored.owners = owners;
            }
            return Ok(Written { object: prev.clone(), created: false });
        }
        let object = Arc::new(normalized);
        inner.objects.insert(key.clone(), Stored { object: object.clone(), owners });
        let kind = if prev.is_some() { EventKind::Modified } else { EventKind::Added };
        let created = prev.is_none();
        self.publish(&mut inner, rv, kind, key, object.clone(), prev);
        Ok(Written { object, created })
    }

    fn publish(&self, inner: &mut Inner, rv: u64, kind: EventKind, key: &Key, object: Arc<Value>, prev: Option<Arc<Value>>) {
        inner.rv = rv;
        let event = Arc::new(Event { rv, kind, key: key.clone(), object, prev });
        let history = inner.history.entry(key.resource).or_default();
        history.events.push_back(event.clone());
        if history.events.len() > HISTORY_PER_RESOURCE
            && let Some(old) = history.events.pop_front()
        {
            history.floor = old.rv;
        }
        // No receivers is fine: nobody watches.
        let _ = self.changes.send(Change::Event(event));
    }

    /// Starts a watch of `resource`. From `Some(rv)`: replays the changes
    /// after `rv`, or fails with 410 Expired if they are no longer kept. From
    /// `None`: "ADDED" for every current object (its own rv), then live changes.
    pub fn subscribe(&self, resource: ResourceId, from: Option<u64>) -> Result<Subscription, ApiError> {
        let inner = self.lock();
        let backlog = match from {
            Some(rv) => {
                let floor = inner.floor(resource);
                if rv < floor {
                    return Err(ApiError::Expired(format!("too old resource version: {rv} ({floor})")));
                }
                let history = inner.history.get(&resource).map(|h| h.events.iter()).into_iter().flatten();
                history.filter(|e| e.rv > rv).cloned().collect()
            }
            None => inner
                .objects
                .iter()
                .filter(|(k, _)| k.resource == resource)
                .map(|(k, s)| {
                    let rv = s.object.pointer("/metadata/resourceVersion").and_then(Value::as_str).and_then(|v| v.parse().ok());
                    Arc::new(Event { rv: rv.unwrap_or(0), kind: EventKind::Added, key: k.clone(), object: s.object.clone(), prev: None })
                })
                .collect(),
        };
        Ok(Subscription { backlog, live: self.changes.subscribe(), rv: inner.rv })
    }

    /// Every later change, of every resource type (for the controllers).
    pub fn changes(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Drops all history: the resourceVersion moves on by one, every earlier
    /// resourceVersion becomes too old to watch from, and open watches end.
    pub fn compact(&self) {
        let mut inner = self.lock();
        inner.rv += 1;
        let rv = inner.rv;
        for resource in ResourceId::all() {
            let history = inner.history.entry(resource).or_default();
            history.events.clear();
            history.floor = rv;
        }
        let _ = self.changes.send(Change::Compacted);
    }
}

// === impl Inner ===

impl Inner {
    fn floor(&self, resource: ResourceId) -> u64 {
        self.history.get(&resource).map_or(0, |h| h.floor)
    }
}

fn in_scope(key: &Key, resource: ResourceId, namespace: Option<&str>) -> bool {
    key.resource == resource && namespace.is_none_or(|ns| key.namespace == ns)
}

fn str_at<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.get("metadata").and_then(|m| m.get(field)).and_then(Value::as_str).unwrap_or_default()
}

fn parse_continue(token: &str) -> Result<(u64, String, String), ApiError> {
    let bad = || ApiError::BadRequest(format!("invalid continue token {token:?}"));
    let mut parts = token.splitn(3, '|');
    let (Some(rv), Some(ns), Some(name)) = (parts.next(), parts.next(), parts.next()) else { return Err(bad()) };
    Ok((rv.parse().map_err(|_| bad())?, ns.to_string(), name.to_string()))
}

/// Fills in the server-owned metadata of `new`, written at `rv` over `prev`.
fn normalize(key: &Key, prev: Option<&Value>, mut new: Value, rv: u64, uids: &mut u64) -> Result<Value, ApiError> {
    let resource = key.resource.get();
    let obj = new.as_object_mut().ok_or_else(|| ApiError::BadRequest("the object must be a JSON object".into()))?;
    obj.insert("apiVersion".into(), Value::String(resource.api_version()));
    obj.insert("kind".into(), Value::String(resource.kind.into()));
    let meta = obj.entry("metadata").or_insert_with(|| Value::Object(Map::new()));
    let meta = meta.as_object_mut().ok_or_else(|| ApiError::BadRequest("metadata must be an object".into()))?;
    if let Some(prev) = prev {
        let stored_rv = prev.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or_default();
        match meta.get("resourceVersion") {
            Some(Value::String(rv)) if !rv.is_empty() && rv != stored_rv => return Err(ApiError::stale(resource, &key.name)),
            _ => {}
        }
        for field in ["uid", "creationTimestamp"] {
            match prev.pointer(&format!("/metadata/{field}")) {
                Some(v) => meta.insert(field.into(), v.clone()),
                None => meta.remove(field),
            };
        }
        let generation = prev.pointer("/metadata/generation").and_then(Value::as_u64).unwrap_or(1);
        let spec_changed = without_meta_and_status(prev) != without_meta_and_status(&new);
        set_meta(&mut new, "generation", Value::from(if spec_changed { generation + 1 } else { generation }));
    } else {
        *uids += 1;
        meta.insert("uid".into(), Value::String(format!("00000000-0000-4000-8000-{:012x}", *uids)));
        meta.insert("creationTimestamp".into(), Value::String(clock::now()));
        meta.insert("generation".into(), Value::from(1));
    }
    set_meta(&mut new, "name", Value::String(key.name.clone()));
    set_meta(&mut new, "namespace", Value::String(key.namespace.clone()));
    set_meta(&mut new, "resourceVersion", Value::String(rv.to_string()));
    Ok(new)
}

fn set_meta(obj: &mut Value, field: &str, value: Value) {
    if let Some(Value::Object(meta)) = obj.get_mut("metadata") {
        meta.insert(field.into(), value);
    }
}

fn without_meta_and_status(obj: &Value) -> Value {
    let mut copy = obj.clone();
    if let Some(m) = copy.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    copy
}

/// Equal apart from `metadata.resourceVersion`.
fn same_but_version(prev: &Value, new: &Value) -> bool {
    let mut a = prev.clone();
    let mut b = new.clone();
    set_meta(&mut a, "resourceVersion", Value::Null);
    set_meta(&mut b, "resourceVersion", Value::Null);
    a == b
}

#[cfg(test)]
mod tests;
