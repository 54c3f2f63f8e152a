//! wakegate-kubeapi: the project's Kubernetes API test server.
//!
//! An in-memory API server on 127.0.0.1 that answers the real `kube` client
//! the way kube-apiserver does, for the resources wakegate uses (ConfigMaps,
//! Secrets, Services, Pods, Events, Deployments with `scale`, EndpointSlices,
//! Leases, Ingresses): get, list (selectors, pagination), watch (bookmarks,
//! 410 Expired), create, replace with optimistic concurrency, the four patch
//! types including a simplified server-side apply, and delete.
//!
//! Behind it a simulated deployment controller and kubelet run each replica
//! of a Deployment as a real local process and publish it in EndpointSlices
//! once ready. Every request is recorded with the bearer token that made it,
//! for RBAC assertions. See `shared/notes/kube-api-subset.md` for the request
//! shapes this follows.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let api = wakegate_kubeapi::start().await;
//! let mut config = kube::Config::new(api.url().parse()?);
//! config.auth_info.token = Some("gateway".to_string().into()); // the recorded user
//! let client = kube::Client::try_from(config)?;
//! // ... run the code under test with `client`, or a child process with
//! // KUBECONFIG pointing at a file holding `api.kubeconfig("scaler", "apps")` ...
//! api.restart().await; // every connection and watch breaks; the store survives
//! let writes = api.requests().into_iter().filter(|r| r.user == "gateway" && !["get", "list", "watch"].contains(&r.verb));
//! assert_eq!(writes.count(), 0, "the gateway only reads");
//! # Ok(()) }
//! ```

mod apply;
mod clock;
mod controller;
mod names;
mod patch;
mod record;
mod request;
mod resource;
mod response;
mod scale;
mod selector;
mod server;
mod status;
mod store;
mod test_api;
mod verbs;
mod watch;

pub use controller::{DEFAULT_GRACE, ProcessInfo};
pub use record::{ANONYMOUS, RecordedRequest};
pub use status::ApiError;
pub use store::HISTORY_PER_RESOURCE;
pub use test_api::{TestApi, start};
