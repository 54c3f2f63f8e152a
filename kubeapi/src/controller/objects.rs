//! The objects the simulated controllers write, as pure functions of what
//! they observe: a Deployment's pod template turned into a runnable
//! container, Pods and their status, EndpointSlices, Deployment status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::kubelet::{ContainerSpec, Probe, RunState};

/// `endpointslice.kubernetes.io/managed-by` of the slices this simulator owns
/// (the real controller's value, so consumers that filter on it work).
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";

/// Where the simulated pods "run".
pub const NODE_NAME: &str = "kubeapi-node";

/// Annotation on a simulated Pod: the loopback port its process serves on.
pub const PORT_ANNOTATION: &str = "kubeapi.wakegate.dev/port";

/// Annotation on a Deployment's pod template: how long the simulated kubelet
/// "pulls the image" (the Pod is scheduled, its container waits in
/// `ContainerCreating`) before it starts the process. Milliseconds; 0 by default.
pub const PULL_DELAY_ANNOTATION: &str = "kubeapi.wakegate.dev/pull-delay-ms";

/// SIGTERM to SIGKILL when the template sets no `terminationGracePeriodSeconds`
/// (kube's default is 30 s; 5 s keeps tests of stuck processes short).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// Kube's default readiness `failureThreshold`.
const DEFAULT_FAILURE_THRESHOLD: u32 = 3;

/// A Deployment's pod template, ready to run.
#[derive(Debug, Clone)]
pub struct Template {
    /// `pod-template-hash`: changes when the template does.
    pub hash: String,
    /// Labels of the pods.
    pub labels: Map<String, Value>,
    /// The pod `spec`, as given.
    pub spec: Value,
    /// The first container's name and image.
    pub container: (String, String),
    /// How to run it, or why it cannot be run.
    pub run: Result<ContainerSpec, String>,
}

/// Reads the pod template of `deployment`.
pub fn template(deployment: &Value) -> Template {
    let template = deployment.pointer("/spec/template").cloned().unwrap_or(Value::Null);
    let hash = format!("{:010x}", fnv1a(template.to_string().as_bytes()) & 0xff_ffff_ffff);
    let labels = template.pointer("/metadata/labels").and_then(Value::as_object).cloned().unwrap_or_default();
    let spec = template.get("spec").cloned().unwrap_or_else(|| json!({}));
    let c = spec.pointer("/containers/0").cloned().unwrap_or(Value::Null);
    let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_string();
    let container = (text(c.get("name")), text(c.get("image")));
    let grace = spec.get("terminationGracePeriodSeconds").and_then(Value::as_u64).map_or(DEFAULT_GRACE, Duration::from_secs);
    let pull = template
        .pointer(&format!("/metadata/annotations/{}", PULL_DELAY_ANNOTATION.replace('/', "~1")))
        .and_then(Value::as_str)
        .and_then(|ms| ms.parse().ok())
        .map_or(Duration::ZERO, Duration::from_millis);
    let run = container_spec(&c, grace).map(|run| ContainerSpec { pull, ..run });
    Template { hash, labels, container, run, spec }
}

fn container_spec(c: &Value, grace: Duration) -> Result<ContainerSpec, String> {
    let strings = |f: &str| -> Vec<String> {
        c.get(f).and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).map(str::to_string).collect()
    };
    let argv: Vec<String> = strings("command").into_iter().chain(strings("args")).collect();
    if argv.is_empty() {
        return Err("the simulated kubelet runs the container's `command` + `args`, and there is none".into());
    }
    let env = c
        .get("env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            Some((e.get("name")?.as_str()?.to_string(), e.get("value").and_then(Value::as_str).unwrap_or_default().to_string()))
        })
        .collect();
    let readiness = c.get("readinessProbe");
    let probe = match readiness.and_then(|p| p.pointer("/httpGet/path")).and_then(Value::as_str) {
        Some(path) => Probe::Http(path.to_string()),
        None => Probe::Tcp,
    };
    let failure_threshold = readiness
        .and_then(|p| p.get("failureThreshold"))
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(DEFAULT_FAILURE_THRESHOLD);
    let cwd = c.get("workingDir").and_then(Value::as_str).map(str::to_string);
    Ok(ContainerSpec { argv, env, cwd, probe, failure_threshold, grace, pull: Duration::ZERO })
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// A new Pod of `deployment`, named `name`, not yet running.
pub fn new_pod(deployment: &Value, template: &Template, name: &str, start_time: &str) -> Value {
    let meta = |f: &str| deployment.pointer(&format!("/metadata/{f}")).cloned().unwrap_or(Value::Null);
    let mut labels = template.labels.clone();
    labels.insert("pod-template-hash".into(), Value::String(template.hash.clone()));
    let mut spec = template.spec.clone();
    if let Some(s) = spec.as_object_mut() {
        s.insert("nodeName".into(), Value::String(NODE_NAME.into()));
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": meta("namespace"),
            "labels": labels,
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "Deployment", "name": meta("name"), "uid": meta("uid"),
                "controller": true, "blockOwnerDeletion": true,
            }],
        },
        "spec": spec,
        "status": pod_status(&RunState::default(), template, start_time),
    })
}

/// A Pod's status from what its kubelet reports.
pub fn pod_status(state: &RunState, template: &Template, start_time: &str) -> Value {
    let started = state.started_at.is_some();
    let phase = if started { "Running" } else { "Pending" };
    let cond = |t: &str, ok: bool| json!({"type": t, "status": if ok { "True" } else { "False" }});
    let container_state = match (&state.started_at, &state.waiting) {
        (_, Some(message)) => json!({"waiting": {"reason": message.split(':').next().unwrap_or_default(), "message": message}}),
        (Some(at), None) if state.pid.is_some() => json!({"running": {"startedAt": at}}),
        _ => json!({"waiting": {"reason": "ContainerCreating"}}),
    };
    let mut status = json!({
        "phase": phase,
        "conditions": [
            cond("PodScheduled", true),
            cond("Initialized", true),
            cond("ContainersReady", state.ready),
            cond("Ready", state.ready),
        ],
        "hostIP": "127.0.0.1",
        "startTime": start_time,
        "containerStatuses": [{
            "name": template.container.0,
            "image": template.container.1,
            "imageID": "",
            "ready": state.ready,
            "started": state.pid.is_some(),
            "restartCount": state.restarts,
            "state": container_state,
        }],
    });
    if started && let Some(s) = status.as_object_mut() {
        s.insert("podIP".into(), json!("127.0.0.1"));
        s.insert("podIPs".into(), json!([{"ip": "127.0.0.1"}]));
    }
    status
}

/// A simulated pod, as the EndpointSlice controller sees it.
#[derive(Debug, Clone)]
pub struct PodView {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `metadata.uid`.
    pub uid: String,
    /// Labels.
    pub labels: Map<String, Value>,
    /// The kubelet's report.
    pub state: RunState,
    /// Being stopped.
    pub terminating: bool,
}

/// The EndpointSlices that should exist: one per (Service with a selector,
/// matching pod whose container has started), keyed by (namespace, name).
/// One slice per pod because each simulated pod serves on its own port and a
/// slice's ports apply to all its endpoints.
pub fn desired_slices(services: &[Arc<Value>], pods: &[PodView]) -> BTreeMap<(String, String), Value> {
    let mut out = BTreeMap::new();
    for svc in services {
        let text = |p: &str| svc.pointer(p).and_then(Value::as_str).unwrap_or_default();
        let (ns, svc_name, svc_uid) = (text("/metadata/namespace"), text("/metadata/name"), text("/metadata/uid"));
        let Some(selector) = svc.pointer("/spec/selector").and_then(Value::as_object).filter(|s| !s.is_empty()) else { continue };
        let svc_ports: Vec<Value> = svc.pointer("/spec/ports").and_then(Value::as_array).cloned().unwrap_or_default();
        for pod in pods.iter().filter(|p| p.namespace == ns && p.state.started_at.is_some() && p.state.port > 0) {
            if !selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v)) {
                continue;
            }
            let ports: Vec<Value> = svc_ports
                .iter()
                .map(|p| json!({"name": p.get("name").and_then(Value::as_str).unwrap_or_default(), "port": pod.state.port, "protocol": p.get("protocol").and_then(Value::as_str).unwrap_or("TCP")}))
                .collect();
            let name = format!("{svc_name}-{}", pod.name);
            let slice = json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": name,
                    "namespace": ns,
                    "labels": {"kubernetes.io/service-name": svc_name, "endpointslice.kubernetes.io/managed-by": MANAGED_BY},
                    "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": svc_name, "uid": svc_uid, "controller": true, "blockOwnerDeletion": true}],
                },
                "addressType": "IPv4",
                "endpoints": [{
                    "addresses": ["127.0.0.1"],
                    "conditions": {"ready": pod.state.ready && !pod.terminating, "serving": pod.state.ready, "terminating": pod.terminating},
                    "targetRef": {"kind": "Pod", "name": pod.name, "namespace": ns, "uid": pod.uid},
                    "nodeName": NODE_NAME,
                }],
                "ports": ports,
            });
            out.insert((ns.to_string(), name), slice);
        }
    }
    out
}

/// A Deployment's status, given its live (not terminating) and ready pod counts.
/// Zero counts are omitted, as kube-apiserver omits them.
pub fn deployment_status(deployment: &Value, live: usize, ready: usize) -> Value {
    let desired = usize::try_from(crate::scale::replicas(deployment)).unwrap_or(0);
    let max_unavailable = desired / 4;
    let available = ready + max_unavailable >= desired;
    let mut status = Map::new();
    if let Some(g) = deployment.pointer("/metadata/generation") {
        status.insert("observedGeneration".into(), g.clone());
    }
    for (field, n) in [
        ("replicas", live),
        ("updatedReplicas", live),
        ("readyReplicas", ready),
        ("availableReplicas", ready),
        ("unavailableReplicas", desired.saturating_sub(ready)),
    ] {
        if n > 0 {
            status.insert(field.into(), Value::from(n));
        }
    }
    let (cond, reason) = if available { ("True", "MinimumReplicasAvailable") } else { ("False", "MinimumReplicasUnavailable") };
    status.insert("conditions".into(), json!([{"type": "Available", "status": cond, "reason": reason}]));
    Value::Object(status)
}

#[cfg(test)]
mod tests;
