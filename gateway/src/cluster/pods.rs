//! How far a wake-up has come, from the solution's Pods (the Service's
//! selector): the waiting page's cluster steps — scale requested → pod
//! scheduled → container started — and what the most advanced Pod waits for
//! (`0/3 nodes are available: …`, `ImagePullBackOff: …`). Watched only while
//! a wake-up is under way, read-only; a failing watch only costs the detail.

use std::pin::Pin;

use futures_util::Stream;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use proto::WakeStep;

use super::endpoints::Known;

/// Longest detail shown (scheduler messages list every node group).
const MAX_DETAIL: usize = 240;

/// The watch of one wake-up's Pods.
pub type PodStream = Pin<Box<dyn Stream<Item = Result<Event<Pod>, watcher::Error>> + Send>>;

/// Watches the Pods of `namespace` matching `selector`.
pub fn stream(client: kube::Client, namespace: &str, selector: &str) -> PodStream {
    let api: Api<Pod> = Api::namespaced(client, namespace);
    Box::pin(watcher(api, watcher::Config::default().labels(selector)).default_backoff())
}

/// The Pods known, by name.
pub type Pods = Known<Pod>;

/// The step of the most advanced Pod that is not being deleted, and what it
/// waits for; `ScaleRequested` while there is none.
pub fn progress<'a>(pods: impl Iterator<Item = &'a Pod>) -> (WakeStep, Option<String>) {
    let live = pods.filter(|p| p.metadata.deletion_timestamp.is_none());
    let mut best = (WakeStep::ScaleRequested, None);
    for pod in live {
        let (step, detail) = of(pod);
        if step > best.0 || (step == best.0 && best.1.is_none()) {
            best = (step, detail);
        }
    }
    best
}

fn of(pod: &Pod) -> (WakeStep, Option<String>) {
    let status = pod.status.as_ref();
    let containers = status.and_then(|s| s.container_statuses.as_deref()).unwrap_or_default();
    let running =
        |c: &&k8s_openapi::api::core::v1::ContainerStatus| c.started == Some(true) || c.state.as_ref().is_some_and(|s| s.running.is_some());
    if !containers.is_empty() && containers.iter().all(|c| running(&c)) {
        return (WakeStep::ContainerStarted, None);
    }
    let scheduled = status.and_then(|s| s.conditions.as_deref()).unwrap_or_default().iter().find(|c| c.type_ == "PodScheduled");
    let on_node = pod.spec.as_ref().is_some_and(|s| s.node_name.is_some());
    match scheduled {
        Some(c) if c.status != "True" && !on_node => (WakeStep::ScaleRequested, said(c.reason.as_deref(), c.message.as_deref())),
        None if !on_node => (WakeStep::ScaleRequested, None),
        _ => {
            let waiting = containers.iter().filter(|c| !running(c)).find_map(|c| c.state.as_ref()?.waiting.as_ref());
            (WakeStep::PodScheduled, waiting.and_then(|w| said(w.reason.as_deref(), w.message.as_deref())))
        }
    }
}

/// `reason: message`, either alone, or nothing; cut to [`MAX_DETAIL`].
fn said(reason: Option<&str>, message: Option<&str>) -> Option<String> {
    let text = match (reason.filter(|r| !r.is_empty()), message.filter(|m| !m.is_empty())) {
        (Some(r), Some(m)) => format!("{r}: {m}"),
        (Some(t), None) | (None, Some(t)) => t.to_string(),
        (None, None) => return None,
    };
    Some(match text.char_indices().nth(MAX_DETAIL) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn steps_follow_the_most_advanced_pod() {
        let none: [Pod; 0] = [];
        assert_eq!(progress(none.iter()), (WakeStep::ScaleRequested, None));

        let unschedulable = pod(json!({"metadata": {"name": "a"}, "status": {"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]}}));
        assert_eq!(
            progress([&unschedulable].into_iter()),
            (WakeStep::ScaleRequested, Some("Unschedulable: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu.".into()))
        );

        let pulling = pod(json!({"metadata": {"name": "b"}, "spec": {"nodeName": "n1", "containers": []}, "status": {"phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [{"name": "web", "image": "x", "imageID": "", "ready": false, "restartCount": 0, "started": false,
                "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"x\""}}}]}}));
        assert_eq!(
            progress([&unschedulable, &pulling].into_iter()),
            (WakeStep::PodScheduled, Some("ImagePullBackOff: Back-off pulling image \"x\"".into()))
        );

        let started = pod(json!({"metadata": {"name": "c"}, "status": {"phase": "Running",
            "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [{"name": "web", "image": "x", "imageID": "", "ready": false, "restartCount": 0, "started": true,
                "state": {"running": {"startedAt": "2026-11-29T10:00:00Z"}}}]}}));
        assert_eq!(progress([&pulling, &started].into_iter()), (WakeStep::ContainerStarted, None));

        // A Pod being deleted (the one a scale-down stops) does not count.
        let mut leaving = started.clone();
        leaving.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default()));
        assert_eq!(progress([&leaving].into_iter()).0, WakeStep::ScaleRequested);
    }

    #[test]
    fn long_details_are_cut() {
        let long = "x".repeat(1000);
        let d = said(Some("Unschedulable"), Some(&long)).unwrap();
        assert_eq!(d.chars().count(), MAX_DETAIL + 1);
        assert!(d.ends_with('…'));
        assert_eq!(said(None, None), None);
        assert_eq!(said(Some(""), Some("m")), Some("m".into()));
    }
}
