//! [`TestApi`]: one running API server with its simulated cluster, and the
//! hooks a test pulls (restart, compaction, the request log, direct reads).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::Value;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;

use crate::controller::{Controller, ProcessInfo};
use crate::names;
use crate::record::{RecordedRequest, Recorder};
use crate::resource::{Key, ResourceId};
use crate::server::{self, State};
use crate::status::ApiError;
use crate::store::Store;

/// Field manager of [`TestApi::put`].
const DIRECT_MANAGER: &str = "kubeapi-test";

/// How long [`TestApi::restart`] keeps trying to rebind the port.
const REBIND_TIMEOUT: Duration = Duration::from_secs(5);

/// A running Kubernetes API test server on 127.0.0.1. Dropping it stops the
/// server and kills every process its simulated kubelet started.
pub struct TestApi {
    addr: SocketAddr,
    state: Arc<State>,
    server: Mutex<Option<JoinHandle<()>>>,
    controller: Controller,
}

/// Starts a server on a free loopback port, with an empty store.
pub async fn start() -> TestApi {
    let listener = bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("no local address: {e}"));
    let store = Arc::new(Store::new());
    let state = Arc::new(State { store: store.clone(), recorder: Recorder::default() });
    let server = tokio::spawn(server::serve(listener, state.clone()));
    tracing::info!(%addr, "kubeapi listening");
    TestApi { addr, state, server: Mutex::new(Some(server)), controller: Controller::spawn(store) }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    // The port must be rebindable at once after a restart, with the old
    // connections still in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

impl TestApi {
    /// `http://127.0.0.1:<port>`, for `kube::Config::new`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kubeconfig (YAML) for a client of this server that authenticates as
    /// `user` (sent as its bearer token, so requests are recorded under that
    /// name) with `namespace` as its default. Write it to a file and point a
    /// child process's `KUBECONFIG` at it.
    pub fn kubeconfig(&self, user: &str, namespace: &str) -> String {
        let server = self.url();
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: kubeapi
  cluster:
    server: {server}
users:
- name: {user:?}
  user:
    token: {user:?}
contexts:
- name: kubeapi
  context:
    cluster: kubeapi
    user: {user:?}
    namespace: {namespace:?}
current-context: kubeapi
"
        )
    }

    /// Simulates an API server restart: every connection and watch is
    /// dropped, the store is kept, and the same port is served again.
    pub async fn restart(&self) {
        self.restart_after(Duration::ZERO).await;
    }

    /// Like [`TestApi::restart`], with the port closed (connections refused) for `down`.
    pub async fn restart_after(&self, down: Duration) {
        self.stop_serving().await;
        tokio::time::sleep(down).await;
        let deadline = tokio::time::Instant::now() + REBIND_TIMEOUT;
        let listener = loop {
            match bind(self.addr) {
                Ok(l) => break l,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!("rebinding {}: {e}", self.addr);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("cannot rebind {}: {e}", self.addr),
            }
        };
        let task = tokio::spawn(server::serve(listener, self.state.clone()));
        *self.server.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
    }

    async fn stop_serving(&self) {
        let task = self.server.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    /// Stops serving and kills every simulated process.
    pub async fn shutdown(self) {
        self.stop_serving().await;
        drop(self);
    }

    /// Drops the change history: every resourceVersion handed out so far is
    /// now too old to watch from, and open watches end, so every watcher gets
    /// a 410 Expired on its next watch and relists.
    pub fn compact(&self) {
        self.state.store.compact();
    }

    /// Every API request served so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.recorder.all()
    }

    /// Forgets the requests recorded so far.
    pub fn clear_requests(&self) {
        self.state.recorder.clear();
    }

    /// The stored object, read directly (no request is recorded).
    /// `api_version` is as in objects (`v1`, `apps/v1`); `plural` as in paths.
    pub fn get(&self, api_version: &str, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = Key::new(resource(api_version, plural), namespace, name);
        self.state.store.get(&key).map(|o| (*o).clone())
    }

    /// Every stored object of a type in `namespace` (all namespaces if `None`), by namespace and name.
    pub fn list(&self, api_version: &str, plural: &str, namespace: Option<&str>) -> Vec<Value> {
        self.state.store.all(resource(api_version, plural), namespace).into_iter().map(|o| (*o).clone()).collect()
    }

    /// Creates or replaces an object directly, as a controller would (no
    /// request is recorded; `status` is written too): its type comes from
    /// `apiVersion` and `kind`, its place from `metadata.namespace` (default
    /// `default`) and `metadata.name`. Returns the stored object.
    pub fn put(&self, obj: Value) -> Result<Value, ApiError> {
        let text = |p: &str| obj.pointer(p).and_then(Value::as_str).unwrap_or_default().to_string();
        let (api_version, kind) = (text("/apiVersion"), text("/kind"));
        let resource = ResourceId::by_kind(&api_version, &kind)
            .ok_or_else(|| ApiError::BadRequest(format!("kubeapi serves no kind {kind:?} in {api_version:?}")))?;
        let namespace = Some(text("/metadata/namespace")).filter(|ns| !ns.is_empty()).unwrap_or_else(|| "default".into());
        let name = text("/metadata/name");
        names::validate(&name)?;
        let key = Key::new(resource, namespace, name);
        let written = self.state.store.write(&key, |cur, owners| {
            let mut obj = obj;
            if let Some(Value::Object(meta)) = obj.get_mut("metadata") {
                meta.remove("resourceVersion");
            }
            owners.record_update(cur, &obj, DIRECT_MANAGER);
            Ok(Some(obj))
        })?;
        Ok((*written.object).clone())
    }

    /// Deletes an object directly (no request is recorded); false if there was none.
    pub fn delete(&self, api_version: &str, plural: &str, namespace: &str, name: &str) -> bool {
        let key = Key::new(resource(api_version, plural), namespace, name);
        self.state.store.write(&key, |_, _| Ok(None)).is_ok()
    }

    /// The server-side-apply managers of one field (dotted path, e.g. `spec.holderIdentity`).
    pub fn field_managers(&self, api_version: &str, plural: &str, namespace: &str, name: &str, field: &str) -> Vec<String> {
        let key = Key::new(resource(api_version, plural), namespace, name);
        self.state.store.owners(&key).unwrap_or_default().managers_of(field)
    }

    /// The container processes the simulated kubelet runs now.
    pub fn processes(&self) -> Vec<ProcessInfo> {
        self.controller.processes()
    }

    /// The latest resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.state.store.current_rv()
    }
}

impl Drop for TestApi {
    fn drop(&mut self) {
        if let Some(task) = self.server.lock().unwrap_or_else(PoisonError::into_inner).take() {
            task.abort();
        }
    }
}

fn resource(api_version: &str, plural: &str) -> ResourceId {
    ResourceId::by_api_version(api_version, plural).unwrap_or_else(|| panic!("kubeapi serves no {plural} in {api_version}"))
}
