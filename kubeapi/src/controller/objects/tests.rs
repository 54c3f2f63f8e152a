use super::*;

fn deployment(replicas: i64, container: Value) -> Value {
    json!({
        "metadata": {"name": "web", "namespace": "apps", "uid": "u-web", "generation": 4},
        "spec": {
            "replicas": replicas,
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [container]}},
        },
    })
}

fn running(port: u16, ready: bool) -> RunState {
    RunState { port, pid: Some(42), started_at: Some("2026-01-01T00:00:00Z".into()), ready, ..RunState::default() }
}

fn pod(name: &str, labels: Value, state: RunState, terminating: bool) -> PodView {
    PodView {
        namespace: "apps".into(),
        name: name.into(),
        uid: format!("u-{name}"),
        labels: labels.as_object().cloned().unwrap_or_default(),
        state,
        terminating,
    }
}

fn service(name: &str, selector: Value) -> Arc<Value> {
    Arc::new(json!({
        "metadata": {"name": name, "namespace": "apps", "uid": format!("u-{name}")},
        "spec": {"selector": selector, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    }))
}

#[test]
fn template_to_container() {
    let t = template(&deployment(
        1,
        json!({
            "name": "web", "image": "img:1",
            "command": ["python3", "-m", "http.server"], "args": ["{port}"],
            "env": [{"name": "A", "value": "b"}, {"name": "FROM_SECRET", "valueFrom": {}}],
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "failureThreshold": 1},
        }),
    ));
    let run = t.run.unwrap();
    assert_eq!(run.argv, ["python3", "-m", "http.server", "{port}"]);
    assert_eq!(run.env, [("A".to_string(), "b".to_string()), ("FROM_SECRET".to_string(), String::new())]);
    assert_eq!((run.probe, run.failure_threshold, run.grace), (Probe::Http("/healthz".into()), 1, DEFAULT_GRACE));
    assert_eq!(t.container, ("web".to_string(), "img:1".to_string()));

    let t2 = template(&deployment(1, json!({"name": "web", "image": "img:2"})));
    assert!(t2.run.is_err(), "no command to run");
    assert_ne!(t.hash, t2.hash);
}

#[test]
fn pod_status_follows_the_kubelet() {
    let t = template(&deployment(1, json!({"name": "web", "command": ["x"]})));
    let pending = pod_status(&RunState::default(), &t, "t0");
    assert_eq!(pending["phase"], "Pending");
    assert!(pending.get("podIP").is_none());
    let ready = pod_status(&running(9000, true), &t, "t0");
    assert_eq!((ready["phase"].as_str(), ready["podIP"].as_str()), (Some("Running"), Some("127.0.0.1")));
    assert_eq!(ready["conditions"][3], json!({"type": "Ready", "status": "True"}));
    assert_eq!(ready["containerStatuses"][0]["state"]["running"]["startedAt"], "2026-01-01T00:00:00Z");
    let crashed = RunState { pid: None, restarts: 1, waiting: Some("CrashLoopBackOff: exited".into()), ..running(9000, false) };
    let s = pod_status(&crashed, &t, "t0");
    assert_eq!(
        (s["containerStatuses"][0]["restartCount"].as_u64(), s["containerStatuses"][0]["state"]["waiting"]["reason"].as_str()),
        (Some(1), Some("CrashLoopBackOff"))
    );
}

#[test]
fn one_slice_per_matching_started_pod() {
    let services = [service("web", json!({"app": "web"})), service("all", json!({})), service("db", json!({"app": "db"}))];
    let pods = [
        pod("p1", json!({"app": "web"}), running(9001, true), false),
        pod("p2", json!({"app": "web"}), running(9002, false), false),
        pod("p3", json!({"app": "web"}), RunState { port: 9003, ..RunState::default() }, false),
        pod("p4", json!({"app": "web"}), running(9004, true), true),
        pod("p5", json!({"app": "other"}), running(9005, true), false),
    ];
    let slices = desired_slices(&services, &pods);
    let names: Vec<&str> = slices.keys().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, ["web-p1", "web-p2", "web-p4"], "not started, unmatched and selector-less are skipped");
    let s = &slices[&("apps".to_string(), "web-p1".to_string())];
    assert_eq!(s["metadata"]["labels"]["kubernetes.io/service-name"], "web");
    assert_eq!(s["ports"], json!([{"name": "http", "port": 9001, "protocol": "TCP"}]));
    assert_eq!(s["endpoints"][0]["addresses"], json!(["127.0.0.1"]));
    let cond = |n: &str| slices[&("apps".to_string(), n.to_string())]["endpoints"][0]["conditions"].clone();
    assert_eq!(cond("web-p1"), json!({"ready": true, "serving": true, "terminating": false}));
    assert_eq!(cond("web-p2"), json!({"ready": false, "serving": false, "terminating": false}));
    assert_eq!(cond("web-p4"), json!({"ready": false, "serving": true, "terminating": true}));
}

#[test]
fn deployment_status_omits_zeros() {
    let d = deployment(4, json!({}));
    let s = deployment_status(&d, 4, 3);
    assert_eq!(s["observedGeneration"], 4);
    assert_eq!((s["replicas"].as_u64(), s["readyReplicas"].as_u64(), s["unavailableReplicas"].as_u64()), (Some(4), Some(3), Some(1)));
    assert_eq!(s["conditions"][0]["status"], "True", "25% may be unavailable");
    let zero = deployment_status(&deployment(0, json!({})), 0, 0);
    assert!(zero.get("replicas").is_none() && zero.get("readyReplicas").is_none());
    assert_eq!(zero["conditions"][0]["status"], "True");
    assert_eq!(deployment_status(&deployment(1, json!({})), 1, 0)["conditions"][0]["status"], "False");
}
