//! Which solutions the cluster declares: every Service labelled
//! `wakegate.io/expose: "true"`, and every host of an Ingress of class
//! `wakegate`, in the solutions namespace. [`build`] turns them into
//! `SolutionSpec`s: a pure function the scaler uses too
//! (`scaler::cluster::declared`, where it lives), so both roles agree on
//! which solutions exist; [`watch`] keeps the objects current.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use kube::runtime::watcher::{self, Event, watcher};
use kube::runtime::{WatchStreamExt, reflector};
use kube::{Api, ResourceExt};
pub use scaler::cluster::declared::{Objects, build};
use tokio::sync::watch;

/// Keeps `tx` holding every Service and Ingress of `namespace` (`None` until
/// both are listed), through API restarts and relists, until `shutdown`.
pub async fn watch(client: kube::Client, namespace: String, tx: watch::Sender<Option<Arc<Objects>>>, mut shutdown: watch::Receiver<bool>) {
    let (services, svc_writer) = reflector::store::<Service>();
    let (ingresses, ing_writer) = reflector::store::<Ingress>();
    let svc_events = watcher(Api::<Service>::namespaced(client.clone(), &namespace), watcher::Config::default())
        .default_backoff()
        .reflect(svc_writer)
        .map(|e| e.map(|e| matches!(e, Event::InitDone)).map_err(|e| format!("Services: {e}")));
    let ing_events = watcher(Api::<Ingress>::namespaced(client, &namespace), watcher::Config::default())
        .default_backoff()
        .reflect(ing_writer)
        .map(|e| e.map(|e| matches!(e, Event::InitDone)).map_err(|e| format!("Ingresses: {e}")));
    let mut events = Box::pin(futures_util::stream::select(svc_events.map(|e| (0, e)), ing_events.map(|e| (1, e))));
    let mut listed = [false, false];
    let mut failing = BTreeSet::new();
    loop {
        let (which, event) = tokio::select! {
            Some(e) = events.next() => e,
            _ = crate::server::stopped(&mut shutdown) => return,
        };
        match event {
            Ok(init_done) => {
                listed[which] |= init_done;
                if failing.remove(&which) {
                    tracing::info!(namespace, "watching {} again", ["Services", "Ingresses"][which]);
                }
            }
            Err(e) if failing.insert(which) => tracing::warn!(namespace, "watching {e}; the solutions known keep serving"),
            Err(e) => tracing::debug!(namespace, "watching {e}"),
        }
        if listed == [true, true] {
            let mut objects = Objects { services: services.state(), ingresses: ingresses.state() };
            // The stores hand them out in no particular order.
            objects.services.sort_by_key(|s| s.name_any());
            objects.ingresses.sort_by_key(|i| i.name_any());
            tx.send_if_modified(|cur| {
                let changed = cur.as_deref() != Some(&objects);
                if changed {
                    *cur = Some(Arc::new(objects));
                }
                changed
            });
        }
    }
}

#[cfg(test)]
mod tests;
