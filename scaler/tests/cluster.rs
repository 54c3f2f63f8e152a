//! The scaler role against the project's Kubernetes API test server: the wake
//! API (authenticated, idempotent), idle scale-down from gateway metrics (only
//! when every replica is idle and readable), Events, and leader failover.
//! Gateway replicas are stood in for by real HTTP servers serving a metrics
//! page the test controls, published in an EndpointSlice like real pods.

#![allow(clippy::unwrap_used)] // test code: a failed setup should panic loudly

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kubeapi::TestApi;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use wakegate_scaler::cluster::{self, Args};

const WAIT: Duration = Duration::from_secs(15);
const TOKEN: &str = "s3cret-token";

fn client(api: &TestApi, user: &str) -> kube::Client {
    let mut config = kube::Config::new(api.url().parse().expect("url"));
    config.default_namespace = "wakegate".into();
    config.auth_info.token = Some(user.to_string().into());
    kube::Client::try_from(config).expect("client")
}

fn testapp() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/solutions/testapp.py").display().to_string()
}

fn seed(api: &TestApi, cm: &[(&str, &str)]) {
    let data: serde_json::Map<String, Value> = cm.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
    api.put(
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "wakegate-config", "namespace": "wakegate"}, "data": data}),
    )
    .expect("cm");
    api.put(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "solutions", "labels": {"wakegate.io/expose": "true"}},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 8080}]},
    }))
    .expect("svc");
    api.put(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "solutions"},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                "terminationGracePeriodSeconds": 2,
                "containers": [{"name": "web", "image": "example/web", "command": ["python3", testapp(), "--name", "web"],
                    "ports": [{"containerPort": 8080, "name": "http"}], "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}}}]}},
        },
    }))
    .expect("deployment");
}

/// A gateway's series for `solution`, last used `ago` and with `busy`
/// requests under way.
fn series(solution: &str, ago: Duration, busy: u32) -> String {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64() - ago.as_secs_f64();
    format!(
        "wakegate_last_request_timestamp_seconds{{solution=\"{solution}\"}} {t}\nwakegate_in_flight_requests{{solution=\"{solution}\"}} {busy}\n\
         wakegate_held_requests{{solution=\"{solution}\"}} 0\nwakegate_open_streams{{solution=\"{solution}\"}} 0"
    )
}

/// A stand-in gateway replica: an HTTP server answering `/metrics` with a page the test sets.
struct FakeGateway {
    addr: SocketAddr,
    page: Arc<Mutex<String>>,
    stop: Option<oneshot::Sender<()>>,
}

impl FakeGateway {
    async fn start() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let page = Arc::new(Mutex::new(String::new()));
        let (tx, mut rx) = oneshot::channel();
        let p = page.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    Ok((mut s, _)) = l.accept() => {
                        let body = p.lock().unwrap().clone();
                        tokio::spawn(async move {
                            let mut buf = [0u8; 2048];
                            let _ = s.read(&mut buf).await;
                            let resp = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
                            let _ = s.write_all(resp.as_bytes()).await;
                        });
                    }
                    _ = &mut rx => return,
                }
            }
        });
        Self { addr, page, stop: Some(tx) }
    }

    /// Reports `web` as last used `ago` and with `busy` requests under way.
    fn report(&self, ago: Duration, busy: u32) {
        self.set(&series("web", ago, busy));
    }

    /// Sets the page as it is: one line per series.
    fn set(&self, page: &str) {
        *self.page.lock().unwrap() = format!("{page}\n# EOF\n");
    }

    fn kill(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    fn publish(&self, api: &TestApi, name: &str) {
        api.put(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "wakegate", "labels": {"kubernetes.io/service-name": "wakegate-gateway-admin"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [self.addr.ip().to_string()], "conditions": {"ready": true}}],
            "ports": [{"name": "admin", "port": self.addr.port(), "protocol": "TCP"}],
        }))
        .expect("slice");
    }
}

struct Scaler {
    wake: SocketAddr,
    admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

async fn scaler(api: &TestApi, identity: &str, dir: &std::path::Path) -> Scaler {
    // One file per scaler: rewriting a shared one would truncate it under a
    // scaler started just before, which could then read an empty token.
    let token_file = dir.join(format!("token-{identity}"));
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    scaler_with(api, identity, token_file).await
}

async fn scaler_with(api: &TestApi, identity: &str, token_file: PathBuf) -> Scaler {
    let args = Args {
        namespace: "wakegate".into(),
        solutions_namespace: "solutions".into(),
        configmap: "wakegate-config".into(),
        token_file,
        gateway_service: "wakegate-gateway-admin".into(),
        identity: identity.into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        lease_duration: Duration::from_secs(3),
    };
    let (wake_l, admin_l) = cluster::bind(&args).await.expect("bind");
    let (wake, admin) = (wake_l.local_addr().unwrap(), admin_l.local_addr().unwrap());
    let (tx, rx) = oneshot::channel::<()>();
    let c = client(api, "scaler");
    let done = tokio::spawn(async move {
        cluster::run(args, c, wake_l, admin_l, async {
            let _ = rx.await;
        })
        .await
        .expect("scaler ran");
    });
    Scaler { wake, admin, stop: Some(tx), done }
}

impl Scaler {
    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(WAIT, self.done).await;
    }
}

async fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let auth = token.map(|t| format!("authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: scaler\r\n{auth}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

async fn metric(addr: SocketAddr, series: &str) -> Option<f64> {
    let (_, page) = http(addr, "GET", "/metrics", None, "").await;
    page.lines().find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
}

async fn replicas(api: &TestApi) -> i32 {
    let d: Api<Deployment> = Api::namespaced(client(api, "observer"), "solutions");
    d.get_scale("web").await.ok().and_then(|s| s.spec).and_then(|s| s.replicas).unwrap_or(-1)
}

async fn eventually<F: std::future::Future<Output = bool>>(mut f: impl FnMut() -> F) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

const WAKE: &str = r#"{"namespace":"solutions","deployment":"web","replicas":1}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wake_api_is_authenticated_and_idempotent() {
    let api = kubeapi::start().await;
    seed(&api, &[]);
    let dir = tempfile::tempdir().unwrap();
    let s = scaler(&api, "scaler-a", dir.path()).await;

    assert_eq!(http(s.wake, "POST", "/v1/wake", None, WAKE).await.0, 401);
    assert_eq!(http(s.wake, "POST", "/v1/wake", Some("wrong"), WAKE).await.0, 401);
    assert_eq!(replicas(&api).await, 0, "nothing scaled without the token");
    let (status, body) = http(s.wake, "POST", "/v1/wake", Some(TOKEN), WAKE).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), json!({"scaled": true, "replicas": 1}));
    let (_, body) = http(s.wake, "POST", "/v1/wake", Some(TOKEN), WAKE).await;
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), json!({"scaled": false, "replicas": 1}), "a second wake changes nothing");
    assert_eq!(replicas(&api).await, 1);
    let (status, _) = http(s.wake, "POST", "/v1/wake", Some(TOKEN), r#"{"namespace":"solutions","deployment":"nope","replicas":1}"#).await;
    assert_eq!(status, 404);
    assert_eq!(http(s.wake, "POST", "/v1/wake", Some(TOKEN), "{not json").await.0, 400);
    assert!(eventually(|| async { api.processes().len() == 1 }).await, "the simulated kubelet runs one testapp");
    assert_eq!(metric(s.admin, "wakegate_scaler_wake_requests_total{outcome=\"scaled\"}").await, Some(1.0));
    assert_eq!(metric(s.admin, "wakegate_scaler_wake_requests_total{outcome=\"unauthorized\"}").await, Some(2.0));
    s.stop().await;
}

/// Replaces `file` the way the kubelet updates a mounted Secret: a new file
/// renamed over the old one.
fn replace(file: &std::path::Path, text: &str) {
    let next = file.with_extension("next");
    std::fs::write(&next, text).unwrap();
    std::fs::rename(&next, file).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_file_is_read_again_and_a_rotation_accepts_both_tokens() {
    let api = kubeapi::start().await;
    seed(&api, &[]);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    // The base's placeholder Secret is empty until an operator fills it in.
    std::fs::write(&token_file, "").unwrap();
    let s = scaler_with(&api, "scaler-r", token_file.clone()).await;
    let status = |token: &'static str| async move { http(s.wake, "POST", "/v1/wake", Some(token), WAKE).await.0 };
    assert_eq!(status("old").await, 401, "an empty token file accepts nothing");
    replace(&token_file, "old\n");
    assert!(eventually(|| async { status("old").await == 200 }).await, "the token filled in is accepted without a restart");
    assert_eq!(status("new").await, 401);
    replace(&token_file, "old\nnew\n");
    assert!(eventually(|| async { status("new").await == 200 }).await, "the new token, added as a second line");
    assert_eq!(status("old").await, 200, "the old one still, while the rotation is under way");
    replace(&token_file, "new\n");
    assert!(eventually(|| async { status("old").await == 401 }).await, "the old token, dropped, is refused");
    assert_eq!(status("new").await, 200);
    assert_eq!(status("").await, 401);
    s.stop().await;
}

/// A gateway pod left Terminating on a lost node (listed, unreachable) does
/// not stop scale-downs; a live replica that cannot be read still does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminating_gateway_that_is_gone_does_not_block_scale_downs() {
    let api = kubeapi::start().await;
    seed(&api, &[("idle-timeout", "1s"), ("reaper-interval", "200ms")]);
    let g = FakeGateway::start().await;
    g.publish(&api, "gw-a");
    g.report(Duration::from_secs(100), 0);
    // A port nothing listens on any more.
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let slice = |terminating: bool| {
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "gw-gone", "namespace": "wakegate", "labels": {"kubernetes.io/service-name": "wakegate-gateway-admin"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [gone.ip().to_string()], "conditions": {"ready": true, "terminating": terminating}}],
            "ports": [{"name": "admin", "port": gone.port(), "protocol": "TCP"}],
        })
    };
    api.put(slice(false)).expect("slice");
    let dir = tempfile::tempdir().unwrap();
    let s = scaler(&api, "scaler-a", dir.path()).await;
    assert_eq!(http(s.wake, "POST", "/v1/wake", Some(TOKEN), WAKE).await.0, 200);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(replicas(&api).await, 1, "a live replica that cannot be read: fail safe");
    api.put(slice(true)).expect("slice");
    assert!(eventually(|| async { replicas(&api).await == 0 }).await, "the terminating one is not waited for");
    s.stop().await;
}

/// A solution declared by an Ingress of class `wakegate` (its Service
/// unlabelled), as the gateways serve it, is put to sleep like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_solution_declared_by_an_ingress_sleeps_when_idle() {
    let api = kubeapi::start().await;
    seed(&api, &[("idle-timeout", "1s"), ("reaper-interval", "200ms")]);
    api.put(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "ingressed", "namespace": "solutions"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 8080}]},
    }))
    .expect("svc");
    api.put(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "ingressed", "namespace": "solutions"},
        "spec": {"ingressClassName": "wakegate", "rules": [{"host": "ingressed.localhost", "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "ingressed", "port": {"name": "http"}}}}]}}]},
    }))
    .expect("ingress");
    let g = FakeGateway::start().await;
    g.publish(&api, "gw-a");
    g.set(&series("ingressed", Duration::from_secs(100), 0));
    let dir = tempfile::tempdir().unwrap();
    let s = scaler(&api, "scaler-a", dir.path()).await;
    let wake = r#"{"namespace":"solutions","deployment":"ingressed","replicas":1}"#;
    // Its Deployment: `ingressed` (the Service's name), running the same app.
    let mut d = api.get("apps/v1", "deployments", "solutions", "web").expect("web");
    d["metadata"] = json!({"name": "ingressed", "namespace": "solutions"});
    api.put(d).expect("deployment");
    assert_eq!(http(s.wake, "POST", "/v1/wake", Some(TOKEN), wake).await.0, 200);
    let scale = || async {
        let d: Api<Deployment> = Api::namespaced(client(&api, "observer"), "solutions");
        d.get_scale("ingressed").await.ok().and_then(|s| s.spec).and_then(|s| s.replicas).unwrap_or(-1)
    };
    assert_eq!(scale().await, 1);
    assert!(eventually(|| async { scale().await == 0 }).await, "the Ingress's solution, idle, scaled to zero");
    s.stop().await;
}

/// Two solutions on one Deployment (a second Service naming it with
/// `wakegate.io/deployment`): it sleeps only when both are idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_two_solutions_share_sleeps_only_when_both_are_idle() {
    let api = kubeapi::start().await;
    seed(&api, &[("idle-timeout", "1s"), ("reaper-interval", "200ms")]);
    api.put(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web-alias", "namespace": "solutions", "labels": {"wakegate.io/expose": "true"},
            "annotations": {"wakegate.io/deployment": "web"}},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 8080}]},
    }))
    .expect("svc");
    let g = FakeGateway::start().await;
    g.publish(&api, "gw-a");
    let dir = tempfile::tempdir().unwrap();
    let s = scaler(&api, "scaler-a", dir.path()).await;
    assert_eq!(http(s.wake, "POST", "/v1/wake", Some(TOKEN), WAKE).await.0, 200);
    // `web` idle for long, `web-alias` used just now, again and again.
    let keep_alias_busy = async {
        for _ in 0..20 {
            g.set(&format!("{}\n{}", series("web", Duration::from_secs(100), 0), series("web-alias", Duration::ZERO, 0)));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    keep_alias_busy.await;
    assert_eq!(replicas(&api).await, 1, "web-alias still uses the Deployment");
    g.set(&format!("{}\n{}", series("web", Duration::from_secs(100), 0), series("web-alias", Duration::from_secs(100), 0)));
    assert!(eventually(|| async { replicas(&api).await == 0 }).await, "both idle: scaled to zero");
    // The Event follows the scale-down.
    let scaled_down = || api.list("events.k8s.io/v1", "events", Some("solutions")).iter().filter(|e| e["reason"] == "ScaledToZero").count();
    assert!(eventually(|| async { scaled_down() == 1 }).await, "an Event");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(scaled_down(), 1, "scaled down once");
    s.stop().await;
}

/// A scale-down decided on a reading does not undo a change made after it
/// (here an operator's `kubectl scale --replicas=3` while the reaper confirmed
/// its idle decision): the API server refuses the stale patch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_down_never_overwrites_a_change_made_after_its_reading() {
    use wakegate_scaler::cluster::scale;
    let api = kubeapi::start().await;
    seed(&api, &[]);
    let d: Api<Deployment> = Api::namespaced(client(&api, "scaler"), "solutions");
    assert_eq!(scale::wake(&d, "web", 1).await.unwrap(), (true, 1));
    let seen = scale::read(&d, "web").await.unwrap();
    assert_eq!(seen.replicas, 1);

    let operator: Api<Deployment> = Api::namespaced(client(&api, "operator"), "solutions");
    let three = kube::api::Patch::Merge(json!({"spec": {"replicas": 3}}));
    operator.patch_scale("web", &kube::api::PatchParams::default(), &three).await.unwrap();

    assert!(!scale::sleep(&d, "web", &seen).await.unwrap(), "a stale reading scales nothing down");
    assert_eq!(replicas(&api).await, 3, "the operator's count stays");
    // A wake finds it up and leaves it as it is.
    assert_eq!(scale::wake(&d, "web", 1).await.unwrap(), (false, 3));

    // Decided on a fresh reading, it goes to zero.
    let seen = scale::read(&d, "web").await.unwrap();
    assert!(scale::sleep(&d, "web", &seen).await.unwrap());
    assert_eq!(replicas(&api).await, 0);
    // Two wakes at once: one scales it up, the other finds it up.
    let (a, b) = tokio::join!(scale::wake(&d, "web", 1), scale::wake(&d, "web", 1));
    let mut outcomes = [a.unwrap(), b.unwrap()];
    outcomes.sort();
    assert_eq!(outcomes, [(false, 1), (true, 1)]);
    assert_eq!(replicas(&api).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_solutions_sleep_only_when_every_gateway_is_idle_and_readable() {
    let api = kubeapi::start().await;
    seed(&api, &[("idle-timeout", "1s"), ("reaper-interval", "200ms")]);
    let a = FakeGateway::start().await;
    let mut b = FakeGateway::start().await;
    a.publish(&api, "gw-a");
    b.publish(&api, "gw-b");
    a.report(Duration::from_secs(100), 0);
    b.report(Duration::from_secs(100), 1);
    let dir = tempfile::tempdir().unwrap();
    let s = scaler(&api, "scaler-a", dir.path()).await;
    assert_eq!(http(s.wake, "POST", "/v1/wake", Some(TOKEN), WAKE).await.0, 200);

    // One gateway still has a request in flight: it stays up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(replicas(&api).await, 1, "busy on gateway b");

    // A gateway that cannot be read: fail safe.
    b.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(replicas(&api).await, 1, "gateway b unreadable");
    assert!(metric(s.admin, "wakegate_reaper_scrape_failures_total").await.unwrap_or(0.0) >= 1.0);

    // Both readable and idle: scaled to zero, with an Event on the Deployment.
    let b2 = FakeGateway::start().await;
    b2.report(Duration::from_secs(100), 0);
    b2.publish(&api, "gw-b");
    assert!(eventually(|| async { replicas(&api).await == 0 }).await, "scaled to zero");
    let counted = || async { metric(s.admin, "wakegate_scale_downs_total{solution=\"web\",reason=\"idle\"}").await == Some(1.0) };
    assert!(eventually(counted).await, "counted");
    // The Event follows the scale-down.
    let scaled_down = || api.list("events.k8s.io/v1", "events", Some("solutions")).into_iter().find(|e| e["reason"] == "ScaledToZero");
    assert!(eventually(|| async { scaled_down().is_some() }).await, "an Event");
    let ev = scaled_down().expect("an Event");
    assert_eq!(ev["regarding"]["name"], "web");
    assert!(ev["note"].as_str().unwrap().starts_with("scaled to zero after"), "{ev}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_at_a_time_and_failover() {
    let api = kubeapi::start().await;
    seed(&api, &[("idle-timeout", "1s"), ("reaper-interval", "200ms")]);
    let g = FakeGateway::start().await;
    g.publish(&api, "gw-a");
    g.report(Duration::from_secs(100), 1);
    let dir = tempfile::tempdir().unwrap();
    let s1 = scaler(&api, "scaler-1", dir.path()).await;
    let s2 = scaler(&api, "scaler-2", dir.path()).await;
    let one = eventually(|| async {
        let l1 = metric(s1.admin, "wakegate_scaler_leader").await.unwrap_or(0.0);
        let l2 = metric(s2.admin, "wakegate_scaler_leader").await.unwrap_or(0.0);
        l1 + l2 == 1.0
    })
    .await;
    assert!(one, "exactly one leader");
    let (leader, follower) = if metric(s1.admin, "wakegate_scaler_leader").await == Some(1.0) { (s1, s2) } else { (s2, s1) };
    assert_eq!(http(follower.wake, "POST", "/v1/wake", Some(TOKEN), WAKE).await.0, 200, "any replica wakes");
    leader.stop().await;
    assert!(eventually(|| async { metric(follower.admin, "wakegate_scaler_leader").await == Some(1.0) }).await, "the other takes over");
    g.report(Duration::from_secs(100), 0);
    assert!(eventually(|| async { replicas(&api).await == 0 }).await, "and scale-down still happens");
    let lease = api.get("coordination.k8s.io/v1", "leases", "wakegate", "wakegate-scaler").expect("lease");
    assert!(lease["spec"]["leaseTransitions"].as_i64().unwrap() >= 1);
    follower.stop().await;
}
