//! The simulated cluster behind the API: a deployment controller, an
//! EndpointSlice controller and a kubelet, folded into one reconcile loop
//! that reads and writes the store directly (not over HTTP, so it shows up in
//! no request log).
//!
//! When a Deployment wants more replicas than it has, a Pod is created and
//! its container's `command` + `args` started as a local process (see
//! `kubelet.rs`); once the process passes its readiness probe, the Pod turns
//! Ready and every Service whose selector matches it gets an EndpointSlice
//! `<service>-<pod>` with the process's port. When it wants fewer, the Pod is
//! marked terminating and its endpoints not ready *before* the process gets
//! SIGTERM; once the process is gone, the Pod and its slices are deleted.
//! Deleting a Pod through the API stops its process; the Deployment then
//! gets a new one. Rolling updates of a changed template are not simulated.

mod kubelet;
mod objects;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{Notify, broadcast, oneshot, watch};
use tokio::task::JoinHandle;

use self::kubelet::RunState;
use self::objects::{MANAGED_BY, PORT_ANNOTATION, PodView, Template};
use crate::clock;
use crate::names;
use crate::patch;
use crate::resource::{Key, ResourceId};
use crate::scale;
use crate::status::ApiError;
use crate::store::{Change, Store};

pub use self::objects::DEFAULT_GRACE;

/// Reconcile at least this often, whatever the events say.
const RESYNC: Duration = Duration::from_secs(1);

/// Field manager of the controllers' writes.
const MANAGER: &str = "kube-controller-manager";

/// A container process the simulated kubelet is running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// The process id, which is also its process group id.
    pub pid: u32,
    /// The loopback port it was told to serve on.
    pub port: u16,
}

/// The running controllers. Dropping this stops them and kills every process.
pub struct Controller {
    task: JoinHandle<()>,
    processes: Arc<Mutex<Vec<ProcessInfo>>>,
}

impl Controller {
    /// Starts the controllers over `store`.
    pub fn spawn(store: Arc<Store>) -> Controller {
        let processes = Arc::new(Mutex::new(Vec::new()));
        let changes = store.changes();
        let reconciler = Reconciler { store, pods: BTreeMap::new(), kick: Arc::new(Notify::new()), processes: processes.clone(), seq: 0 };
        Controller { task: tokio::spawn(reconciler.run(changes)), processes }
    }

    /// The container processes running now.
    pub fn processes(&self) -> Vec<ProcessInfo> {
        self.processes.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.task.abort();
        // The aborted tasks kill their process groups when the runtime drops
        // them; do it now too, so nothing outlives the server even briefly.
        for p in self.processes() {
            if let Ok(pid) = i32::try_from(p.pid) {
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

struct Reconciler {
    store: Arc<Store>,
    pods: BTreeMap<Key, PodHandle>,
    kick: Arc<Notify>,
    processes: Arc<Mutex<Vec<ProcessInfo>>>,
    seq: u64,
}

/// One simulated pod and its kubelet task.
struct PodHandle {
    deployment: Key,
    deployment_uid: String,
    template: Template,
    uid: String,
    start_time: String,
    state: watch::Receiver<RunState>,
    stop: Option<oneshot::Sender<()>>,
    terminating: bool,
    seq: u64,
    task: JoinHandle<()>,
}

impl Drop for PodHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn id(group: &str, plural: &str) -> ResourceId {
    ResourceId::find(group, "v1", plural).unwrap_or_else(|| unreachable!("{plural} is in the resource table"))
}

fn meta<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.get("metadata").and_then(|m| m.get(field)).and_then(Value::as_str).unwrap_or_default()
}

// === impl Reconciler ===

impl Reconciler {
    async fn run(mut self, mut changes: broadcast::Receiver<Change>) {
        let watched = [id("apps", "deployments"), id("", "services"), id("", "pods"), id("discovery.k8s.io", "endpointslices")];
        loop {
            self.reconcile();
            let resync = tokio::time::sleep(RESYNC);
            tokio::pin!(resync);
            loop {
                tokio::select! {
                    _ = self.kick.notified() => break,
                    _ = &mut resync => break,
                    change = changes.recv() => match change {
                        Ok(Change::Event(e)) if !watched.contains(&e.key.resource) => continue,
                        Err(RecvError::Closed) => (&mut resync).await,
                        _ => break,
                    },
                }
            }
            // A burst of changes needs one pass, not one each.
            while matches!(changes.try_recv(), Ok(_) | Err(TryRecvError::Lagged(_))) {}
        }
    }

    fn reconcile(&mut self) {
        let deployments = self.store.all(id("apps", "deployments"), None);
        self.collect_orphans(&deployments);
        self.scale(&deployments);
        self.reap();
        self.sync_pods();
        self.sync_slices();
        // Only now, with the endpoints marked terminating, are processes signalled.
        for handle in self.pods.values_mut().filter(|h| h.terminating) {
            if let Some(stop) = handle.stop.take() {
                let _ = stop.send(());
            }
        }
        self.sync_deployments(&deployments);
        self.publish_processes();
    }

    /// Pods whose Deployment is gone (or replaced), or whose Pod object was deleted, are stopped.
    fn collect_orphans(&mut self, deployments: &[Arc<Value>]) {
        let live: Vec<(String, String, String)> = deployments
            .iter()
            .map(|d| (meta(d, "namespace").to_string(), meta(d, "name").to_string(), meta(d, "uid").to_string()))
            .collect();
        let orphans: Vec<Key> = self
            .pods
            .iter()
            .filter(|(_, h)| !h.terminating)
            .filter(|(key, h)| {
                let owner = (h.deployment.namespace.clone(), h.deployment.name.clone(), h.deployment_uid.clone());
                !live.contains(&owner) || self.store.get(key).is_none()
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in orphans {
            self.terminate(&key);
        }
    }

    /// Starts or terminates pods until each Deployment has `spec.replicas`.
    fn scale(&mut self, deployments: &[Arc<Value>]) {
        for d in deployments {
            let dkey = Key::new(id("apps", "deployments"), meta(d, "namespace"), meta(d, "name"));
            let desired = usize::try_from(scale::replicas(d)).unwrap_or(0);
            let mut mine: Vec<(&Key, &PodHandle)> = self.pods.iter().filter(|(_, h)| h.deployment == dkey && !h.terminating).collect();
            if mine.len() < desired {
                let template = objects::template(d);
                for _ in mine.len()..desired {
                    self.start_pod(d, &dkey, &template);
                }
            } else if mine.len() > desired {
                // As the ReplicaSet controller does: not-ready pods first, then the newest.
                mine.sort_by_key(|(_, h)| (h.state.borrow().ready, std::cmp::Reverse(h.seq)));
                let victims: Vec<Key> = mine.iter().take(mine.len() - desired).map(|(k, _)| (*k).clone()).collect();
                for key in victims {
                    self.terminate(&key);
                }
            }
        }
    }

    fn start_pod(&mut self, deployment: &Value, dkey: &Key, template: &Template) {
        let name = format!("{}-{}-{}", dkey.name, template.hash, names::suffix(5));
        let key = Key::new(id("", "pods"), dkey.namespace.clone(), name.clone());
        let start_time = clock::now();
        let pod = objects::new_pod(deployment, template, &name, &start_time);
        let written = self.store.write(&key, |cur, owners| {
            if cur.is_some() {
                return Err(ApiError::AlreadyExists { qualified: "pods".into(), name: name.clone() });
            }
            owners.record_update(None, &pod, MANAGER);
            Ok(Some(pod))
        });
        let uid = match written {
            Ok(w) => meta(&w.object, "uid").to_string(),
            Err(e) => {
                tracing::warn!(pod = name, "cannot create pod: {e}");
                return;
            }
        };
        let (state_tx, state) = watch::channel(RunState::default());
        let (stop, stop_rx) = oneshot::channel();
        let kick = self.kick.clone();
        let task = match &template.run {
            Ok(spec) => tokio::spawn(kubelet::run(name, spec.clone(), state_tx, stop_rx, kick)),
            Err(why) => {
                state_tx.send_modify(|s| s.waiting = Some(format!("CreateContainerConfigError: {why}")));
                tokio::spawn(async move {
                    let _ = stop_rx.await;
                    state_tx.send_modify(|s| s.finished = true);
                    kick.notify_one();
                })
            }
        };
        self.seq += 1;
        let handle = PodHandle {
            deployment: dkey.clone(),
            deployment_uid: meta(deployment, "uid").to_string(),
            template: template.clone(),
            uid,
            start_time,
            state,
            stop: Some(stop),
            terminating: false,
            seq: self.seq,
            task,
        };
        self.pods.insert(key, handle);
    }

    /// Marks a pod terminating (its process is signalled after the endpoints are updated).
    fn terminate(&mut self, key: &Key) {
        let Some(handle) = self.pods.get_mut(key) else { return };
        handle.terminating = true;
        let grace = match &handle.template.run {
            Ok(spec) => spec.grace,
            Err(_) => DEFAULT_GRACE,
        };
        let marks = json!({"metadata": {"deletionTimestamp": clock::now(), "deletionGracePeriodSeconds": grace.as_secs()}});
        let _ = self.store.write(key, |cur, _| {
            let mut pod = cur.ok_or(ApiError::NoRoute)?.clone();
            patch::merge(&mut pod, &marks);
            Ok(Some(pod))
        });
    }

    /// Pods whose process is gone for good: delete the Pod object, forget the pod.
    fn reap(&mut self) {
        let done: Vec<Key> = self.pods.iter().filter(|(_, h)| h.state.borrow().finished).map(|(k, _)| k.clone()).collect();
        for key in done {
            self.pods.remove(&key);
            // Already deleted through the API is fine.
            let _ = self.store.write(&key, |cur, _| cur.map(|_| None).ok_or(ApiError::NoRoute));
        }
    }

    fn sync_pods(&self) {
        for (key, h) in &self.pods {
            let state = h.state.borrow().clone();
            let status = objects::pod_status(&state, &h.template, &h.start_time);
            let port = (state.port > 0).then(|| json!({"metadata": {"annotations": {PORT_ANNOTATION: state.port.to_string()}}}));
            let _ = self.store.write(key, |cur, owners| {
                let cur = cur.ok_or(ApiError::NoRoute)?;
                let mut pod = cur.clone();
                if let Some(port) = &port {
                    patch::merge(&mut pod, port);
                }
                if let Some(obj) = pod.as_object_mut() {
                    obj.insert("status".into(), status);
                }
                owners.record_update(Some(cur), &pod, "kubelet");
                Ok(Some(pod))
            });
        }
    }

    fn sync_slices(&self) {
        let slices_id = id("discovery.k8s.io", "endpointslices");
        let services = self.store.all(id("", "services"), None);
        let views: Vec<PodView> = self
            .pods
            .iter()
            .map(|(key, h)| PodView {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                uid: h.uid.clone(),
                labels: pod_labels(&h.template),
                state: h.state.borrow().clone(),
                terminating: h.terminating,
            })
            .collect();
        let desired = objects::desired_slices(&services, &views);
        for ((ns, name), slice) in &desired {
            let _ = self.store.write(&Key::new(slices_id, ns.clone(), name.clone()), |cur, owners| {
                owners.record_update(cur, slice, MANAGER);
                Ok(Some(slice.clone()))
            });
        }
        for existing in self.store.all(slices_id, None) {
            let managed =
                existing.pointer("/metadata/labels/endpointslice.kubernetes.io~1managed-by").and_then(Value::as_str) == Some(MANAGED_BY);
            let id = (meta(&existing, "namespace").to_string(), meta(&existing, "name").to_string());
            if managed && !desired.contains_key(&id) {
                let _ = self.store.write(&Key::new(slices_id, id.0, id.1), |cur, _| cur.map(|_| None).ok_or(ApiError::NoRoute));
            }
        }
    }

    fn sync_deployments(&self, deployments: &[Arc<Value>]) {
        for d in deployments {
            let dkey = Key::new(id("apps", "deployments"), meta(d, "namespace"), meta(d, "name"));
            let mine = self.pods.values().filter(|h| h.deployment == dkey && !h.terminating);
            let (live, ready) = mine.fold((0, 0), |(l, r), h| (l + 1, r + usize::from(h.state.borrow().ready)));
            let _ = self.store.write(&dkey, |cur, owners| {
                let cur = cur.ok_or(ApiError::NoRoute)?;
                let mut new = cur.clone();
                if let Some(obj) = new.as_object_mut() {
                    obj.insert("status".into(), objects::deployment_status(cur, live, ready));
                }
                owners.record_update(Some(cur), &new, MANAGER);
                Ok(Some(new))
            });
        }
    }

    fn publish_processes(&self) {
        let list = self
            .pods
            .iter()
            .filter_map(|(key, h)| {
                let s = h.state.borrow();
                Some(ProcessInfo { namespace: key.namespace.clone(), pod: key.name.clone(), pid: s.pid?, port: s.port })
            })
            .collect();
        *self.processes.lock().unwrap_or_else(PoisonError::into_inner) = list;
    }
}

fn pod_labels(template: &Template) -> Map<String, Value> {
    let mut labels = template.labels.clone();
    labels.insert("pod-template-hash".into(), Value::String(template.hash.clone()));
    labels
}
