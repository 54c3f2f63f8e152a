//! The test server as the real kube 5 client sees it: watchers, leases,
//! scale, events, the request log and restarts, over HTTP on 127.0.0.1.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event as KubeEvent;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Event as RecordedEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher::{self, Event, watch_object, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};
use wakegate_kubeapi::TestApi;

/// Longest wait for any one expected thing.
const WAIT: Duration = Duration::from_secs(15);

fn client(api: &TestApi, token: Option<&str>) -> Client {
    let mut config = kube::Config::new(api.url().parse().expect("url"));
    config.default_namespace = "default".into();
    config.auth_info.token = token.map(|t| t.to_string().into());
    Client::try_from(config).expect("client")
}

fn from_json<K: k8s_openapi::serde::de::DeserializeOwned>(v: Value) -> K {
    serde_json::from_value(v).expect("valid object")
}

fn slice(name: &str, service: &str, port: i32) -> EndpointSlice {
    from_json(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}],
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
    }))
}

fn config_map(name: &str, value: &str) -> ConfigMap {
    from_json(json!({"metadata": {"name": name}, "data": {"a": value}}))
}

/// A compact description of a watcher event, to compare sequences.
fn describe<K: Resource>(e: &Result<Event<K>, watcher::Error>) -> String {
    match e {
        Ok(Event::Init) => "Init".into(),
        Ok(Event::InitApply(o)) => format!("InitApply {}", o.meta().name.clone().unwrap_or_default()),
        Ok(Event::InitDone) => "InitDone".into(),
        Ok(Event::Apply(o)) => format!("Apply {}", o.meta().name.clone().unwrap_or_default()),
        Ok(Event::Delete(o)) => format!("Delete {}", o.meta().name.clone().unwrap_or_default()),
        Err(e) => format!("Err {e}"),
    }
}

/// A stream polled in the background (as a real consumer's is), its items queued.
struct Events<T>(tokio::sync::mpsc::UnboundedReceiver<T>);

fn spawn_stream<T: Send + 'static>(stream: impl Stream<Item = T> + Send + 'static) -> Events<T> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = Box::pin(stream);
        while let Some(item) = stream.next().await {
            if tx.send(item).is_err() {
                return;
            }
        }
    });
    Events(rx)
}

/// Waits until `done()` holds, or fails the test saying `what`.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn next<T>(events: &mut Events<T>) -> T {
    tokio::time::timeout(WAIT, events.0.recv()).await.expect("no event in time").expect("stream ended")
}

async fn next_n<K: Resource>(events: &mut Events<Result<Event<K>, watcher::Error>>, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(describe(&next(events).await));
    }
    out
}

#[tokio::test]
async fn endpointslice_watcher_lists_pages_then_sees_added_and_replaced() -> Result<()> {
    let api = wakegate_kubeapi::start().await;
    let slices: Api<EndpointSlice> = Api::namespaced(client(&api, None), "es");
    let pp = PostParams::default();
    for (name, svc, port) in [("foo-1", "foo", 8080), ("foo-2", "foo", 8081), ("bar-1", "bar", 8082)] {
        slices.create(&pp, &slice(name, svc, port)).await?;
    }
    // Pages of one: the watcher must follow `continue` to see both.
    let config = watcher::Config::default().labels("kubernetes.io/service-name=foo").page_size(1);
    let mut w = spawn_stream(watcher(slices.clone(), config));
    assert_eq!(next_n(&mut w, 4).await, ["Init", "InitApply foo-1", "InitApply foo-2", "InitDone"]);

    slices.create(&pp, &slice("bar-2", "bar", 8084)).await?;
    slices.create(&pp, &slice("foo-3", "foo", 8083)).await?;
    assert_eq!(next_n(&mut w, 1).await, ["Apply foo-3"]);

    let mut foo1 = slices.get("foo-1").await?;
    foo1.ports.as_mut().context("ports")?[0].port = Some(9090);
    slices.replace("foo-1", &pp, &foo1).await?;
    match next(&mut w).await {
        Ok(Event::Apply(s)) => assert_eq!((s.name_any(), s.ports.context("ports")?[0].port), ("foo-1".into(), Some(9090))),
        other => bail!("expected the replaced foo-1, got {}", describe(&other)),
    }

    // Relabelled out of the selector: a watcher sees it deleted.
    let mut foo2 = slices.get("foo-2").await?;
    foo2.labels_mut().insert("kubernetes.io/service-name".into(), "bar".into());
    slices.replace("foo-2", &pp, &foo2).await?;
    assert_eq!(next_n(&mut w, 1).await, ["Delete foo-2"]);
    Ok(())
}

#[tokio::test]
async fn streaming_list_ends_initial_events_with_a_bookmark() -> Result<()> {
    let api = wakegate_kubeapi::start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client(&api, None), "sl");
    cms.create(&PostParams::default(), &config_map("one", "1")).await?;
    let mut w = spawn_stream(watcher(cms.clone(), watcher::Config::default().streaming_lists()));
    assert_eq!(next_n(&mut w, 3).await, ["Init", "InitApply one", "InitDone"]);
    cms.create(&PostParams::default(), &config_map("two", "2")).await?;
    assert_eq!(next_n(&mut w, 1).await, ["Apply two"]);
    Ok(())
}

#[tokio::test]
async fn watch_object_follows_one_config_map() -> Result<()> {
    let api = wakegate_kubeapi::start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client(&api, None), "cm");
    cms.create(&PostParams::default(), &config_map("other", "0")).await?;
    let mut w = spawn_stream(watch_object(cms.clone(), "x"));
    assert!(next(&mut w).await?.is_none(), "absent at first");

    cms.create(&PostParams::default(), &config_map("x", "1")).await?;
    let data = |cm: Option<ConfigMap>| cm.and_then(|c| c.data).and_then(|d| d.get("a").cloned());
    assert_eq!(data(next(&mut w).await?).as_deref(), Some("1"));

    cms.patch("other", &PatchParams::default(), &Patch::Merge(json!({"data": {"a": "9"}}))).await?;
    cms.patch("x", &PatchParams::default(), &Patch::Merge(json!({"data": {"a": "2"}}))).await?;
    assert_eq!(data(next(&mut w).await?).as_deref(), Some("2"), "the other map is filtered out");

    cms.delete("x", &DeleteParams::default()).await?;
    assert!(next(&mut w).await?.is_none(), "deleted");
    Ok(())
}

#[tokio::test]
async fn compaction_makes_the_watcher_relist() -> Result<()> {
    let api = wakegate_kubeapi::start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client(&api, None), "compact");
    cms.create(&PostParams::default(), &config_map("a", "1")).await?;
    let mut w = spawn_stream(watcher(cms.clone(), watcher::Config::default()));
    assert_eq!(next_n(&mut w, 3).await, ["Init", "InitApply a", "InitDone"]);
    cms.create(&PostParams::default(), &config_map("b", "1")).await?;
    assert_eq!(next_n(&mut w, 1).await, ["Apply b"]);

    api.compact();
    match next(&mut w).await {
        Err(watcher::Error::WatchError(status)) => assert_eq!((status.code, status.reason.as_str()), (410, "Expired")),
        other => bail!("expected a 410 watch error, got {}", describe(&other)),
    }
    assert_eq!(next_n(&mut w, 4).await, ["Init", "InitApply a", "InitApply b", "InitDone"]);
    cms.create(&PostParams::default(), &config_map("c", "1")).await?;
    assert_eq!(next_n(&mut w, 1).await, ["Apply c"]);
    Ok(())
}

#[tokio::test]
async fn lease_create_replace_and_conflicts() -> Result<()> {
    let api = wakegate_kubeapi::start().await;
    let leases: Api<Lease> = Api::namespaced(client(&api, None), "lease");
    assert!(leases.get_opt("lock").await?.is_none(), "404 NotFound reads as None");

    let lease: Lease = from_json(json!({"metadata": {"name": "lock"}, "spec": {"holderIdentity": "me", "leaseDurationSeconds": 15}}));
    let created = leases.create(&PostParams::default(), &lease).await?;
    let rv1 = created.resource_version().context("rv")?;
    assert!(created.uid().is_some() && created.creation_timestamp().is_some());
    match leases.create(&PostParams::default(), &lease).await {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str(), s.is_conflict()), (409, "AlreadyExists", false)),
        other => bail!("expected AlreadyExists, got {other:?}"),
    }

    let mut renewed = created.clone();
    renewed.spec.as_mut().context("spec")?.lease_transitions = Some(1);
    let replaced = leases.replace("lock", &PostParams::default(), &renewed).await?;
    assert_ne!(replaced.resource_version(), Some(rv1.clone()));
    // `renewed` still carries rv1: stale now.
    match leases.replace("lock", &PostParams::default(), &renewed).await {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str(), s.is_conflict()), (409, "Conflict", true)),
        other => bail!("expected Conflict, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn server_side_apply_conflicts_between_managers() -> Result<()> {
    let api = wakegate_kubeapi::start().await;
    let leases: Api<Lease> = Api::namespaced(client(&api, None), "ssa");
    let holder = |who: &str| json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "spec": {"holderIdentity": who, "leaseDurationSeconds": 5}});
    let a = leases.patch("leader", &PatchParams::apply("pod-a"), &Patch::Apply(holder("pod-a"))).await?;
    assert_eq!(a.spec.context("spec")?.holder_identity.as_deref(), Some("pod-a"));

    match leases.patch("leader", &PatchParams::apply("pod-b"), &Patch::Apply(holder("pod-b"))).await {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (409, "Conflict")),
        other => bail!("expected an apply conflict, got {other:?}"),
    }
    // Release (strategic merge, as kube-lease-manager does), then B takes it without force.
    let release = json!({"spec": {"holderIdentity": null, "acquireTime": null, "renewTime": null}});
    leases.patch("leader", &PatchParams { field_manager: Some("pod-a".into()), ..Default::default() }, &Patch::Strategic(release)).await?;
    let b = leases.patch("leader", &PatchParams::apply("pod-b"), &Patch::Apply(holder("pod-b"))).await?;
    assert_eq!(b.spec.context("spec")?.holder_identity.as_deref(), Some("pod-b"));
    // A forced apply wins.
    let forced = leases.patch("leader", &PatchParams::apply("pod-a").force(), &Patch::Apply(holder("pod-a"))).await?;
    assert_eq!(forced.spec.context("spec")?.holder_identity.as_deref(), Some("pod-a"));
    assert_eq!(api.field_managers("coordination.k8s.io/v1", "leases", "ssa", "leader", "spec.holderIdentity"), ["pod-a"]);
    Ok(())
}

/// A Deployment whose one container is a tiny HTTP server on $PORT.
fn web_deployment(name: &str, replicas: i32) -> Deployment {
    web_deployment_with(name, replicas, 2, false)
}

/// Like [`web_deployment`], with the grace period, and a process that may ignore SIGTERM.
fn web_deployment_with(name: &str, replicas: i32, grace_secs: u32, ignore_sigterm: bool) -> Deployment {
    let server = "import http.server,os,signal\n\
        if os.environ.get('IGNORE_TERM'): signal.signal(signal.SIGTERM, signal.SIG_IGN)\n\
        class H(http.server.BaseHTTPRequestHandler):\n\
        \x20 def do_GET(self):\n\
        \x20   self.send_response(200); self.end_headers(); self.wfile.write(b'hello from ' + os.environ['POD_GREETING'].encode())\n\
        \x20 def log_message(self, *a): pass\n\
        http.server.HTTPServer(('127.0.0.1', int(os.environ['PORT'])), H).serve_forever()\n";
    let ignore = if ignore_sigterm { "1" } else { "" };
    from_json(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": grace_secs,
                    "containers": [{
                        "name": "web",
                        "image": "example/web:1",
                        "command": ["python3", "-c", server],
                        "env": [{"name": "POD_GREETING", "value": name}, {"name": "IGNORE_TERM", "value": ignore}],
                        "ports": [{"containerPort": 8080, "name": "http"}],
                        "readinessProbe": {"httpGet": {"path": "/", "port": 8080}},
                    }],
                },
            },
        },
    }))
}

async fn http_get(port: u16) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

/// Is `pid` a live process (not gone, not a zombie)?
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// The one process the kubelet runs for Deployment `name`, once it has one ready replica.
async fn ready_process(api: &TestApi, deployments: &Api<Deployment>, name: &str) -> Result<wakegate_kubeapi::ProcessInfo> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ready = deployments.get(name).await?.status.and_then(|s| s.ready_replicas) == Some(1);
        let procs = api.processes();
        if ready && procs.len() == 1 {
            return Ok(procs[0].clone());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{name} never had one ready process: {procs:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn scaling_a_deployment_runs_a_process_and_publishes_its_endpoint() -> Result<()> {
    let api = wakegate_kubeapi::start().await;
    let c = client(&api, Some("scaler"));
    let (deployments, services): (Api<Deployment>, Api<Service>) = (Api::namespaced(c.clone(), "apps"), Api::namespaced(c.clone(), "apps"));
    let slices: Api<EndpointSlice> = Api::namespaced(c.clone(), "apps");
    let svc: Service = from_json(
        json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}),
    );
    services.create(&PostParams::default(), &svc).await?;
    deployments.create(&PostParams::default(), &web_deployment("web", 0)).await?;

    let mut w = spawn_stream(watcher(slices.clone(), watcher::Config::default().labels("kubernetes.io/service-name=web")));
    assert_eq!(next_n(&mut w, 2).await, ["Init", "InitDone"]);
    assert!(api.processes().is_empty());

    let scale = deployments.patch_scale("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 1}}))).await?;
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(1));

    // The slice appears (not ready, while the process starts), then turns ready.
    let port = loop {
        match next(&mut w).await {
            Ok(Event::Apply(s)) => {
                let ready = s.endpoints.as_ref().and_then(|e| e.first()).and_then(|e| e.conditions.as_ref()).and_then(|c| c.ready);
                if ready == Some(true) {
                    let port = s.ports.as_ref().and_then(|p| p.first()).and_then(|p| p.port).context("port")?;
                    assert_eq!(s.ports.context("ports")?[0].name.as_deref(), Some("http"));
                    break u16::try_from(port)?;
                }
            }
            other => bail!("unexpected {}", describe(&other)),
        }
    };
    assert!(http_get(port).await?.ends_with("hello from web"));
    let procs = api.processes();
    assert_eq!(procs.len(), 1);
    assert_eq!(procs[0].port, port);
    let pid = procs[0].pid;

    let pods: Api<Pod> = Api::namespaced(c.clone(), "apps");
    let pod = pods.list(&ListParams::default().labels("app=web")).await?.items.pop().context("a pod")?;
    let status = pod.status.context("pod status")?;
    assert_eq!((status.phase.as_deref(), status.pod_ip.as_deref()), (Some("Running"), Some("127.0.0.1")));
    assert!(status.conditions.unwrap_or_default().iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let deadline = tokio::time::Instant::now() + WAIT;
    while deployments.get("web").await?.status.and_then(|s| s.ready_replicas) != Some(1) {
        assert!(tokio::time::Instant::now() < deadline, "readyReplicas never reached 1");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Scale to zero: the endpoint stops being ready first, then the slice goes, and the process dies.
    deployments.patch_scale("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 0}}))).await?;
    match next(&mut w).await {
        Ok(Event::Apply(s)) => {
            let cond = s.endpoints.as_ref().and_then(|e| e.first()).and_then(|e| e.conditions.clone()).context("conditions")?;
            assert_eq!((cond.ready, cond.terminating), (Some(false), Some(true)));
        }
        other => bail!("expected the endpoint to turn terminating, got {}", describe(&other)),
    }
    assert_eq!(describe(&next(&mut w).await), "Delete web-".to_string() + &pod.metadata.name.context("pod name")?);
    let deadline = tokio::time::Instant::now() + WAIT;
    while alive(pid) || !api.processes().is_empty() || !pods.list(&ListParams::default()).await?.items.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the process or the pod outlived the scale-down");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(http_get(port).await.is_err(), "nothing listens any more");
    assert_eq!(deployments.get_scale("web").await?.spec.and_then(|s| s.replicas), Some(0));
    Ok(())
}

#[tokio::test]
async fn recorder_publishes_and_then_patches_an_event() -> Result<()> {
    let api = wakegate_kubeapi::start().await;
    let c = client(&api, None);
    let deployments: Api<Deployment> = Api::namespaced(c.clone(), "apps");
    let d = deployments.create(&PostParams::default(), &from_json(json!({"metadata": {"name": "web"}, "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}}}}}))).await?;
    let recorder = Recorder::new(c.clone(), Reporter { controller: "wakegate-scaler".into(), instance: Some("scaler-0".into()) });
    let ev = RecordedEvent {
        type_: EventType::Normal,
        reason: "Woken".into(),
        note: Some("scaled to 1".into()),
        action: "Scale".into(),
        secondary: None,
    };
    recorder.publish(&ev, &d.object_ref(&())).await?;
    recorder.publish(&ev, &d.object_ref(&())).await?;

    let events: Api<KubeEvent> = Api::namespaced(c, "apps");
    let list = events.list(&ListParams::default()).await?;
    assert_eq!(list.items.len(), 1);
    let e = &list.items[0];
    assert_eq!((e.reason.as_deref(), e.regarding.as_ref().and_then(|r| r.name.as_deref())), (Some("Woken"), Some("web")));
    assert_eq!(e.series.as_ref().map(|s| s.count), Some(2));
    let verbs: Vec<&str> = api.requests().iter().filter(|r| r.api_group == "events.k8s.io").map(|r| r.verb).collect();
    assert_eq!(verbs, ["create", "patch", "list"]);
    Ok(())
}

#[tokio::test]
async fn requests_are_recorded_with_the_bearer_token_user() -> Result<()> {
    let api = wakegate_kubeapi::start().await;
    let gateway: Api<ConfigMap> = Api::namespaced(client(&api, Some("gateway-token")), "wakegate");
    let scaler: Api<Deployment> = Api::namespaced(client(&api, Some("scaler-token")), "apps");
    let anonymous: Api<ConfigMap> = Api::namespaced(client(&api, None), "wakegate");
    // A child process would read this from $KUBECONFIG.
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&api.kubeconfig("operator", "wakegate"))?;
    let operator = Client::try_from(kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?)?;
    Api::<ConfigMap>::default_namespaced(operator).list(&ListParams::default()).await?;

    anonymous.create(&PostParams::default(), &config_map("settings", "1")).await?;
    scaler.create(&PostParams::default(), &from_json(json!({"metadata": {"name": "web"}, "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}}}}}))).await?;
    let mut w = spawn_stream(watch_object(gateway.clone(), "settings"));
    assert!(next(&mut w).await?.is_some());
    let gateway_watches = || api.requests().iter().any(|r| r.user == "gateway-token" && r.verb == "watch");
    eventually("the gateway's watcher watches", gateway_watches).await;
    gateway.get("settings").await?;
    scaler.patch_scale("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 0}}))).await?;
    drop(w);

    let seen: Vec<(String, &str, &str, String, Option<String>)> =
        api.requests().into_iter().map(|r| (r.user.clone(), r.verb, r.api_group, r.rbac_resource(), r.name.clone())).collect();
    let expect = |user: &str, verb: &str, group: &str, resource: &str, name: Option<&str>| {
        let want = (user.to_string(), verb, group, resource.to_string(), name.map(str::to_string));
        assert!(
            seen.iter().any(|s| (&s.0, s.1, s.2, &s.3, &s.4) == (&want.0, want.1, want.2, &want.3, &want.4)),
            "missing {want:?} in {seen:?}"
        );
    };
    expect("anonymous", "create", "", "configmaps", None);
    expect("operator", "list", "", "configmaps", None);
    assert!(api.requests().iter().any(|r| r.user == "operator" && r.namespace.as_deref() == Some("wakegate")));
    expect("scaler-token", "create", "apps", "deployments", None);
    // A list or watch narrowed by `metadata.name` is recorded under that name,
    // as kube-apiserver authorises it (RBAC resourceNames apply).
    expect("gateway-token", "list", "", "configmaps", Some("settings"));
    expect("gateway-token", "watch", "", "configmaps", Some("settings"));
    expect("gateway-token", "get", "", "configmaps", Some("settings"));
    expect("scaler-token", "patch", "apps", "deployments/scale", Some("web"));
    assert!(seen.iter().filter(|s| s.0 == "gateway-token").all(|s| ["get", "list", "watch"].contains(&s.1)), "the gateway only reads");
    Ok(())
}

#[tokio::test]
async fn restart_breaks_open_watches_and_the_watcher_recovers() -> Result<()> {
    let api = wakegate_kubeapi::start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client(&api, None), "restart");
    cms.create(&PostParams::default(), &config_map("before", "1")).await?;
    let mut w = spawn_stream(watcher(cms.clone(), watcher::Config::default()).default_backoff());
    assert_eq!(next_n(&mut w, 3).await, ["Init", "InitApply before", "InitDone"]);
    let watches = || api.requests().iter().filter(|r| r.verb == "watch").count();
    eventually("the watcher watches", || watches() > 0).await;
    let before = watches();
    let port = api.addr().port();

    api.restart().await;
    assert_eq!(api.addr().port(), port);
    // The pooled connection died with the server: the first write may fail.
    let deadline = tokio::time::Instant::now() + WAIT;
    while cms.create(&PostParams::default(), &config_map("after", "1")).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "the restarted server never took the write");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    loop {
        match next(&mut w).await {
            Ok(Event::Apply(cm) | Event::InitApply(cm)) if cm.name_any() == "after" => break,
            Ok(_) | Err(_) => {}
        }
    }
    assert!(watches() > before, "the watch was re-established after the restart");
    assert!(cms.get_opt("before").await?.is_some(), "the store survived");
    Ok(())
}

#[tokio::test]
async fn kubelet_restarts_crashes_replaces_deleted_pods_and_enforces_the_grace_period() -> Result<()> {
    let api = wakegate_kubeapi::start().await;
    let c = client(&api, None);
    let deployments: Api<Deployment> = Api::namespaced(c.clone(), "life");
    let pods: Api<Pod> = Api::namespaced(c.clone(), "life");
    deployments.create(&PostParams::default(), &web_deployment_with("stubborn", 1, 1, true)).await?;
    let first = ready_process(&api, &deployments, "stubborn").await?;

    // A crash: the kubelet restarts the container in the same pod.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(first.pid)?), nix::sys::signal::Signal::SIGKILL)?;
    let deadline = tokio::time::Instant::now() + WAIT;
    let restarted = loop {
        let p = api.processes();
        if let Some(p) = p.first().filter(|p| p.pid != first.pid) {
            break p.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "the container was not restarted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(restarted.pod, first.pod);
    let pod = pods.get(&first.pod).await?;
    let restarts = pod.status.and_then(|s| s.container_statuses).and_then(|c| c.first().map(|c| c.restart_count));
    assert_eq!(restarts, Some(1));

    // A deleted pod: its process stops, and the Deployment gets a new pod.
    pods.delete(&first.pod, &DeleteParams::default()).await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    let replacement = loop {
        let p = ready_process(&api, &deployments, "stubborn").await?;
        if p.pod != first.pod {
            break p;
        }
        assert!(tokio::time::Instant::now() < deadline, "no replacement pod");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eventually("the deleted pod's process is gone", || !alive(restarted.pid)).await;
    assert!(http_get(replacement.port).await?.ends_with("hello from stubborn"));

    // Scale to zero: the process ignores SIGTERM, so it lives out its 1 s grace period.
    let asked = tokio::time::Instant::now();
    deployments.patch_scale("stubborn", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 0}}))).await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    while alive(replacement.pid) {
        assert!(tokio::time::Instant::now() < deadline, "SIGKILL never came");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lived = asked.elapsed();
    assert!(lived >= Duration::from_millis(900), "killed after {lived:?}, before the grace period ended");
    eventually("the pod is deleted", || api.list("v1", "pods", Some("life")).is_empty()).await;
    Ok(())
}

#[tokio::test]
async fn dropping_the_server_kills_its_processes() -> Result<()> {
    let api = wakegate_kubeapi::start().await;
    let deployments: Api<Deployment> = Api::namespaced(client(&api, None), "drop");
    deployments.create(&PostParams::default(), &web_deployment_with("web", 1, 30, true)).await?;
    let p = ready_process(&api, &deployments, "web").await?;
    api.shutdown().await;
    eventually("the process is killed", || !alive(p.pid)).await;
    Ok(())
}

#[tokio::test]
async fn direct_writes_are_seen_by_clients_and_not_recorded() -> Result<()> {
    let api = wakegate_kubeapi::start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client(&api, None), "direct");
    let mut w = spawn_stream(watch_object(cms.clone(), "settings"));
    assert!(next(&mut w).await?.is_none());
    let stored = api.put(
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": "direct"}, "data": {"a": "1"}}),
    )?;
    assert!(stored["metadata"]["uid"].is_string());
    let seen = next(&mut w).await?.context("the watcher sees the direct write")?;
    assert_eq!(seen.data.context("data")?.get("a").map(String::as_str), Some("1"));
    assert_eq!(api.get("v1", "configmaps", "direct", "settings").context("stored")?["data"]["a"], "1");
    assert!(api.delete("v1", "configmaps", "direct", "settings"));
    assert!(next(&mut w).await?.is_none());
    assert!(!api.delete("v1", "configmaps", "direct", "settings"));
    assert!(api.put(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"}})).is_err());
    assert!(api.requests().iter().all(|r| matches!(r.verb, "list" | "watch")), "direct writes are not requests");
    Ok(())
}
