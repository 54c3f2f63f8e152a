//! How far a wake-up has come, from the solution's Pods (the Service's
//! selector): the waiting page's cluster steps — scale requested → pod
//! scheduled → container started — and what the most advanced Pod waits for.
//! Only the reason (`Unschedulable`, `ImagePullBackOff`) is shown to
//! visitors; the message with it (node names, taints, image and registry
//! names) goes to the gateway's log. Watched only while a wake-up is under
//! way, read-only.

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

/// The Pod watch of one wake-up, with what it last reported.
pub struct Watch {
    /// The events.
    pub stream: PodStream,
    /// The Pods they told of.
    pub known: Pods,
    /// The watch fails (reported once, until it works again).
    pub failing: bool,
    /// The last `reason: message` logged.
    pub said: Option<String>,
}

impl Watch {
    /// Watches the Pods of `namespace` matching `selector`.
    pub fn new(client: kube::Client, namespace: &str, selector: &str) -> Watch {
        Watch { stream: stream(client, namespace, selector), known: Pods::default(), failing: false, said: None }
    }
}

/// Where the most advanced Pod is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Its step.
    pub step: WakeStep,
    /// Why it waits, as Kubernetes names it (`ImagePullBackOff`): for the page.
    pub reason: Option<String>,
    /// The reason with Kubernetes' message: for the log.
    pub said: Option<String>,
}

/// The step of the most advanced Pod that may still become ready (not being
/// deleted, not failed or done: an evicted Pod stays listed), and what it
/// waits for; `ScaleRequested` while there is none.
pub fn progress<'a>(pods: impl Iterator<Item = &'a Pod>) -> Progress {
    let live = pods.filter(|p| {
        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
        p.metadata.deletion_timestamp.is_none() && !matches!(phase, Some("Failed" | "Succeeded"))
    });
    let mut best = Progress { step: WakeStep::ScaleRequested, reason: None, said: None };
    for pod in live {
        let p = of(pod);
        if p.step > best.step || (p.step == best.step && best.said.is_none()) {
            best = p;
        }
    }
    best
}

fn of(pod: &Pod) -> Progress {
    let status = pod.status.as_ref();
    let containers = status.and_then(|s| s.container_statuses.as_deref()).unwrap_or_default();
    let running =
        |c: &&k8s_openapi::api::core::v1::ContainerStatus| c.started == Some(true) || c.state.as_ref().is_some_and(|s| s.running.is_some());
    let at = |step, reason: Option<&str>, message: Option<&str>| Progress {
        step,
        reason: reason.filter(|r| !r.is_empty()).map(|r| cut(r.to_string())),
        said: said(reason, message),
    };
    if !containers.is_empty() && containers.iter().all(|c| running(&c)) {
        return at(WakeStep::ContainerStarted, None, None);
    }
    let scheduled = status.and_then(|s| s.conditions.as_deref()).unwrap_or_default().iter().find(|c| c.type_ == "PodScheduled");
    let on_node = pod.spec.as_ref().is_some_and(|s| s.node_name.is_some());
    match scheduled {
        Some(c) if c.status != "True" && !on_node => at(WakeStep::ScaleRequested, c.reason.as_deref(), c.message.as_deref()),
        None if !on_node => at(WakeStep::ScaleRequested, None, None),
        _ => {
            let waiting = containers.iter().filter(|c| !running(c)).find_map(|c| c.state.as_ref()?.waiting.as_ref());
            at(WakeStep::PodScheduled, waiting.and_then(|w| w.reason.as_deref()), waiting.and_then(|w| w.message.as_deref()))
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
    Some(cut(text))
}

fn cut(text: String) -> String {
    match text.char_indices().nth(MAX_DETAIL) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).expect("a Pod in the API's JSON")
    }

    #[test]
    fn steps_follow_the_most_advanced_pod() {
        let none: [Pod; 0] = [];
        let shown = |p: Progress| (p.step, p.reason);
        assert_eq!(shown(progress(none.iter())), (WakeStep::ScaleRequested, None));

        let unschedulable = pod(json!({"metadata": {"name": "a"}, "status": {"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]}}));
        let p = progress([&unschedulable].into_iter());
        assert_eq!(p.said.as_deref(), Some("Unschedulable: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu."));
        assert_eq!(shown(p), (WakeStep::ScaleRequested, Some("Unschedulable".into())), "only the reason is shown");

        let pulling = pod(json!({"metadata": {"name": "b"}, "spec": {"nodeName": "n1", "containers": []}, "status": {"phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [{"name": "web", "image": "x", "imageID": "", "ready": false, "restartCount": 0, "started": false,
                "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"x\""}}}]}}));
        let p = progress([&unschedulable, &pulling].into_iter());
        assert_eq!(p.said.as_deref(), Some("ImagePullBackOff: Back-off pulling image \"x\""));
        assert_eq!(shown(p), (WakeStep::PodScheduled, Some("ImagePullBackOff".into())));

        let started = pod(json!({"metadata": {"name": "c"}, "status": {"phase": "Running",
            "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [{"name": "web", "image": "x", "imageID": "", "ready": false, "restartCount": 0, "started": true,
                "state": {"running": {"startedAt": "2026-11-29T10:00:00Z"}}}]}}));
        assert_eq!(shown(progress([&pulling, &started].into_iter())), (WakeStep::ContainerStarted, None));

        // A Pod being deleted (the one a scale-down stops) does not count.
        let mut leaving = started.clone();
        leaving.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default()));
        assert_eq!(progress([&leaving].into_iter()).step, WakeStep::ScaleRequested);
        // An evicted Pod stays listed, failed: the pending one's reason is what counts.
        let mut evicted = pulling.clone();
        evicted.status.as_mut().expect("the pulling Pod has a status").phase = Some("Failed".into());
        assert_eq!(shown(progress([&evicted, &unschedulable].into_iter())), (WakeStep::ScaleRequested, Some("Unschedulable".into())));
    }

    #[test]
    fn long_details_are_cut() {
        let long = "x".repeat(1000);
        let d = said(Some("Unschedulable"), Some(&long)).expect("a reason and a message say something");
        assert_eq!(d.chars().count(), MAX_DETAIL + 1);
        assert!(d.ends_with('…'));
        assert_eq!(said(None, None), None);
        assert_eq!(said(Some(""), Some("m")), Some("m".into()));
    }
}
