//! The gateway's cluster mode against the project's Kubernetes API test
//! server: settings from a ConfigMap, solutions from labelled Services and
//! `wakegate` Ingresses, wake-ups through a wake API (a small server here
//! that scales the Deployment, as the scaler does), the simulated kubelet
//! running testapp.py, and the TLS Secret. Everything over real HTTP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use kubeapi::TestApi;
use proto::cluster::{WakeRequest, WakeResponse};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use wakegate::cluster::{self, Args, Listeners};
use wakegate::tls::CertBundle;

/// Longest wait for any one expected thing (a cold start included).
const WAIT: Duration = Duration::from_secs(30);
const OURS: &str = "wakegate";
const APPS: &str = "solutions";
const BASE: &str = "test.local";
const TOKEN: &str = "wake-secret";
/// The gateway's identity (its POD_NAME).
const POD: &str = "gateway-0";

fn client(api: &TestApi, user: &str) -> Result<kube::Client> {
    let mut config = kube::Config::new(api.url().parse()?);
    config.auth_info.token = Some(user.to_string().into());
    Ok(kube::Client::try_from(config)?)
}

fn from_json<K: serde::de::DeserializeOwned>(v: Value) -> Result<K> {
    Ok(serde_json::from_value(v)?)
}

/// Polls `check` until it yields `Some`, or fails saying `what`.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One HTTP/1.1 GET on a fresh connection.
async fn get(addr: SocketAddr, host: &str, path: &str) -> Result<(StatusCode, String)> {
    let (status, _, body) = get_full(addr, host, path).await?;
    Ok((status, body))
}

/// One HTTP/1.1 GET on a fresh connection: status, headers and body.
async fn get_full(addr: SocketAddr, host: &str, path: &str) -> Result<(StatusCode, http::HeaderMap, String)> {
    let stream = TcpStream::connect(addr).await?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::get(path).header("host", host).body(Empty::<Bytes>::new())?;
    let resp = tokio::time::timeout(WAIT * 2, tx.send_request(req)).await.context("no answer")??;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok((parts.status, parts.headers, String::from_utf8_lossy(&body).into_owned()))
}

/// The scaler's wake API, reduced to what a test needs: checks the token,
/// scales a Deployment at zero, counts the calls.
struct WakeApi {
    url: String,
    calls: Arc<AtomicUsize>,
    scaled: Arc<AtomicUsize>,
}

impl WakeApi {
    async fn start(client: kube::Client) -> Result<WakeApi> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (calls, scaled) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (c, s) = (calls.clone(), scaled.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (client, calls, scaled) = (client.clone(), c.clone(), s.clone());
                let service = hyper::service::service_fn(move |req| wake(client.clone(), calls.clone(), scaled.clone(), req));
                tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service));
            }
        });
        Ok(WakeApi { url, calls, scaled })
    }
}

async fn wake(
    client: kube::Client,
    calls: Arc<AtomicUsize>,
    scaled: Arc<AtomicUsize>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    calls.fetch_add(1, Ordering::SeqCst);
    let answer = |status: StatusCode, body: Value| {
        let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
        *r.status_mut() = status;
        Ok(r)
    };
    let authorized = req.headers().get("authorization").is_some_and(|v| v.as_bytes() == format!("Bearer {TOKEN}").as_bytes());
    if !authorized || req.uri().path() != proto::cluster::WAKE_PATH {
        return answer(StatusCode::UNAUTHORIZED, json!({"error": "unauthorized", "message": "bad token"}));
    }
    let Ok(body) = req.into_body().collect().await else { return answer(StatusCode::BAD_REQUEST, json!({})) };
    let Ok(w) = serde_json::from_slice::<WakeRequest>(&body.to_bytes()) else { return answer(StatusCode::BAD_REQUEST, json!({})) };
    let deployments: Api<Deployment> = Api::namespaced(client, &w.namespace);
    let Ok(current) = deployments.get_scale(&w.deployment).await else {
        return answer(StatusCode::NOT_FOUND, json!({"error": "not_found", "message": w.deployment}));
    };
    let replicas = current.spec.and_then(|s| s.replicas).unwrap_or(0);
    if replicas > 0 {
        return answer(StatusCode::OK, json!(WakeResponse { scaled: false, replicas: replicas as u32 }));
    }
    let patch = Patch::Merge(json!({"spec": {"replicas": w.replicas}}));
    match deployments.patch_scale(&w.deployment, &PatchParams::default(), &patch).await {
        Ok(_) => {
            scaled.fetch_add(1, Ordering::SeqCst);
            answer(StatusCode::OK, json!(WakeResponse { scaled: true, replicas: w.replicas }))
        }
        Err(e) => answer(StatusCode::INTERNAL_SERVER_ERROR, json!({"error": "kubernetes", "message": e.to_string()})),
    }
}

/// The API server, the wake API and one gateway replica in cluster mode.
struct Rig {
    api: TestApi,
    /// A client for the test's own writes (user `test`).
    admin: kube::Client,
    wake: WakeApi,
    public: SocketAddr,
    admin_addr: SocketAddr,
    tls: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    gateway: tokio::task::JoinHandle<Result<(), cluster::Error>>,
    _dir: tempfile::TempDir,
}

impl Rig {
    /// Starts everything with `settings` as the ConfigMap's data; returns once the gateway serves.
    async fn start(settings: Value) -> Result<Rig> {
        let api = kubeapi::start().await;
        let admin = client(&api, "test")?;
        let cm: ConfigMap = from_json(json!({"metadata": {"name": "wakegate-config"}, "data": settings}))?;
        Api::<ConfigMap>::namespaced(admin.clone(), OURS).create(&PostParams::default(), &cm).await?;
        let wake = WakeApi::start(client(&api, "scaler")?).await?;
        let dir = tempfile::tempdir()?;
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("{TOKEN}\n"))?;
        let bind = || TcpListener::bind("127.0.0.1:0");
        let listeners = Listeners { public: bind().await?, admin: bind().await?, tls: bind().await? };
        let (public, admin_addr, tls) = (listeners.public.local_addr()?, listeners.admin.local_addr()?, listeners.tls.local_addr()?);
        let args = Args {
            namespace: OURS.into(),
            solutions_namespace: APPS.into(),
            token_file,
            scaler_url: wake.url.clone(),
            pod_name: POD.into(),
            ..Args::default()
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let gw_client = client(&api, "gateway")?;
        let gateway = tokio::spawn(cluster::run_with(
            args,
            gw_client,
            listeners,
            async move {
                let _ = stopped.await;
            },
            std::future::pending(),
        ));
        let rig = Rig { api, admin, wake, public, admin_addr, tls, stop: Some(stop), gateway, _dir: dir };
        eventually("the gateway serves", || async {
            let r = tokio::time::timeout(Duration::from_secs(1), get(rig.admin_addr, "admin", "/healthz")).await;
            matches!(r, Ok(Ok((StatusCode::OK, _)))).then_some(())
        })
        .await?;
        Ok(rig)
    }

    /// A solution: a Service (labelled unless `labelled` is false) and a
    /// Deployment at zero replicas running testapp.py as `name`.
    async fn solution(&self, name: &str, labelled: bool, annotations: Value) -> Result<()> {
        let labels = if labelled { json!({"wakegate.io/expose": "true"}) } else { json!({}) };
        let svc: Service = from_json(json!({
            "metadata": {"name": name, "labels": labels, "annotations": annotations},
            "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
        }))?;
        Api::<Service>::namespaced(self.admin.clone(), APPS).create(&PostParams::default(), &svc).await?;
        let testapp = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/solutions/testapp.py");
        let deployment: Deployment = from_json(json!({
            "metadata": {"name": name},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {
                        "terminationGracePeriodSeconds": 2,
                        "containers": [{
                            "name": "app",
                            "image": "example/testapp:1",
                            "command": ["python3", testapp, "--port", "{port}", "--name", name],
                            "ports": [{"name": "http", "containerPort": 8080}],
                            "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
                        }],
                    },
                },
            },
        }))?;
        Api::<Deployment>::namespaced(self.admin.clone(), APPS).create(&PostParams::default(), &deployment).await?;
        Ok(())
    }

    /// The `/status` entry of solution `name`, once it is listed.
    async fn status(&self, name: &str) -> Result<Value> {
        let (_, body) = get(self.admin_addr, "admin", "/status").await?;
        let v: Value = serde_json::from_str(&body)?;
        let found = v["solutions"].as_array().into_iter().flatten().find(|s| s["name"] == name).cloned();
        found.with_context(|| format!("{name} is not in /status: {body}"))
    }

    async fn listed(&self, name: &str) -> Result<Value> {
        eventually(&format!("{name} is served"), || async { self.status(name).await.ok() }).await
    }

    /// The value of one metric series (its full name with labels), 0 if absent.
    async fn metric(&self, series: &str) -> Result<f64> {
        let (_, text) = get(self.admin_addr, "admin", "/metrics").await?;
        let line = text.lines().find(|l| l.strip_prefix(series).is_some_and(|rest| rest.starts_with(' ')));
        Ok(line.and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap_or(0.0))
    }

    async fn set_settings(&self, data: Value) -> Result<()> {
        let cms: Api<ConfigMap> = Api::namespaced(self.admin.clone(), OURS);
        cms.patch("wakegate-config", &PatchParams::default(), &Patch::Merge(json!({"data": data}))).await?;
        Ok(())
    }

    /// Every request the gateway made is one its Roles (deploy/base/rbac-gateway.yaml) grant.
    fn assert_gateway_rbac(&self) {
        let allowed = |verb: &str, group: &str, resource: &str, ns: &str, name: Option<&str>| -> bool {
            let reads = ["get", "list", "watch"].contains(&verb);
            let named = |names: &[&str]| name.is_none_or(|n| names.contains(&n));
            match (group, resource, ns) {
                ("", "configmaps", OURS) => reads && named(&["wakegate-config"]),
                ("", "secrets", OURS) if verb == "create" => true,
                ("", "secrets", OURS) => match verb {
                    "list" | "watch" => named(&["wakegate-tls"]),
                    "get" | "update" | "patch" => named(&["wakegate-tls", "wakegate-acme-account"]),
                    _ => false,
                },
                ("coordination.k8s.io", "leases", OURS) => {
                    verb == "create" || (["get", "update", "patch"].contains(&verb) && named(&[proto::cluster::ACME_LEASE]))
                }
                ("events.k8s.io", "events", OURS) => ["create", "patch"].contains(&verb),
                ("", "services", APPS) | ("networking.k8s.io", "ingresses", APPS) => reads,
                ("discovery.k8s.io", "endpointslices", APPS) | ("", "pods", APPS) => ["list", "watch"].contains(&verb),
                _ => false,
            }
        };
        for r in self.api.requests().iter().filter(|r| r.user == "gateway") {
            let ns = r.namespace.as_deref().unwrap_or_default();
            assert!(allowed(r.verb, r.api_group, &r.rbac_resource(), ns, r.name.as_deref()), "the gateway is not allowed {r:?}");
        }
    }

    /// Stops the gateway and waits for its drain to finish.
    async fn stop(&mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(WAIT, &mut self.gateway).await.context("the gateway did not stop")???;
        self.assert_gateway_rbac();
        Ok(())
    }
}

fn settings() -> Value {
    json!({"base-domain": BASE, "tls-source": "off", "hold-timeout": "60s"})
}

/// A gateway waiting for its settings answers the kubelet's probes: alive,
/// not ready (an unanswered liveness probe would restart it into
/// CrashLoopBackOff), then ready once its ConfigMap appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_it_waits_for_its_configmap_the_gateway_is_alive_but_not_ready() -> Result<()> {
    let api = kubeapi::start().await;
    let admin = client(&api, "test")?;
    let dir = tempfile::tempdir()?;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN)?;
    let bind = || TcpListener::bind("127.0.0.1:0");
    let listeners = Listeners { public: bind().await?, admin: bind().await?, tls: bind().await? };
    let admin_addr = listeners.admin.local_addr()?;
    let args = Args {
        namespace: OURS.into(),
        solutions_namespace: APPS.into(),
        token_file,
        scaler_url: "http://127.0.0.1:9".into(),
        pod_name: POD.into(),
        ..Args::default()
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let until_stopped = async move {
        let _ = stopped.await;
    };
    let gateway = tokio::spawn(cluster::run_with(args, client(&api, "gateway")?, listeners, until_stopped, std::future::pending()));
    let (status, body) = eventually("the admin listener answers", || async { get(admin_addr, "admin", "/readyz").await.ok() }).await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.starts_with("starting"), "{body}");
    assert_eq!(get(admin_addr, "admin", "/healthz").await?.0, StatusCode::OK);
    let (status, metrics) = get(admin_addr, "admin", "/metrics").await?;
    assert!(status == StatusCode::OK && metrics.contains("# TYPE wakegate_config_reloads_total counter"), "{metrics}");

    let cm: ConfigMap = from_json(json!({"metadata": {"name": "wakegate-config"}, "data": settings()}))?;
    Api::<ConfigMap>::namespaced(admin, OURS).create(&PostParams::default(), &cm).await?;
    eventually("ready once its ConfigMap is there", || async {
        matches!(get(admin_addr, "admin", "/readyz").await, Ok((StatusCode::OK, _))).then_some(())
    })
    .await?;
    assert!(get(admin_addr, "admin", "/status").await?.1.contains("\"solutions\""), "the gateway's own admin server now");
    let _ = stop.send(());
    gateway.await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cold_solution_wakes_once_for_fifty_concurrent_requests() -> Result<()> {
    let mut rig = Rig::start(settings()).await?;
    rig.solution("hello", true, json!({"wakegate.io/description": "says hello"})).await?;
    let status = rig.listed("hello").await?;
    assert_eq!(status["phase"], "cold");
    assert!(rig.api.processes().is_empty());

    let started = Instant::now();
    let requests: Vec<_> = (0..50).map(|_| tokio::spawn(get(rig.public, "hello.test.local", "/hello"))).collect();
    let held = eventually("requests are held", || async {
        let s = rig.status("hello").await.ok()?;
        (s["held"].as_i64() > Some(0)).then_some(s["held"].as_i64())
    })
    .await?;
    for r in requests {
        let (status, body) = r.await??;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "hello from hello\n"));
    }
    let took = started.elapsed();
    assert_eq!(rig.wake.calls.load(Ordering::SeqCst), 1, "one wake call for fifty held requests");
    assert_eq!(rig.wake.scaled.load(Ordering::SeqCst), 1);
    let scale_patches = rig.api.requests().iter().filter(|r| r.rbac_resource() == "deployments/scale" && r.verb == "patch").count();
    assert_eq!(scale_patches, 1, "the Deployment was scaled exactly once");
    assert_eq!(rig.api.processes().len(), 1);
    let status = rig.status("hello").await?;
    assert_eq!((status["phase"].as_str(), status["wakeups"].as_u64()), (Some("ready"), Some(1)));
    assert_eq!(rig.metric("wakegate_wakeups_total{solution=\"hello\",outcome=\"ready\"}").await?, 1.0);
    // Warm now: no more wake calls.
    assert_eq!(get(rig.public, "hello.test.local", "/hello").await?.0, StatusCode::OK);
    assert_eq!(rig.wake.calls.load(Ordering::SeqCst), 1);
    eprintln!("50 held requests answered in {took:?} (at most {held:?} held at once)");
    rig.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn configmap_edits_apply_live_and_a_bad_one_is_refused_with_an_event() -> Result<()> {
    let mut rig = Rig::start(settings()).await?;
    rig.solution("hello", true, json!({})).await?;
    let held = |s: Value| s["settings"]["max-held-requests"].as_str().map(str::to_string);
    assert_eq!(held(rig.listed("hello").await?).as_deref(), Some("1000"));

    rig.set_settings(json!({"max-held-requests": "7"})).await?;
    eventually("max-held-requests is 7", || async { (held(rig.status("hello").await.ok()?)? == "7").then_some(()) }).await?;
    assert_eq!(rig.metric("wakegate_config_reloads_total{outcome=\"success\"}").await?, 1.0);
    assert_eq!(rig.metric("wakegate_config_last_reload_successful").await?, 1.0);

    rig.set_settings(json!({"max-held-requests": "0", "idel-timeout": "1m"})).await?;
    eventually("the bad edit is counted", || async {
        (rig.metric("wakegate_config_reloads_total{outcome=\"failure\"}").await.ok()? == 1.0).then_some(())
    })
    .await?;
    assert_eq!(held(rig.status("hello").await?).as_deref(), Some("7"), "the last good value keeps serving");
    assert_eq!(rig.metric("wakegate_config_last_reload_successful").await?, 0.0, "refused: the alert's gauge says so");
    let events = eventually("an InvalidConfig event", || async {
        let list = rig.api.list("events.k8s.io/v1", "events", Some(OURS));
        let found: Vec<Value> = list.into_iter().filter(|e| e["reason"] == "InvalidConfig").collect();
        (!found.is_empty()).then_some(found)
    })
    .await?;
    let e = &events[0];
    assert_eq!(
        (e["type"].as_str(), e["regarding"]["kind"].as_str(), e["regarding"]["name"].as_str()),
        (Some("Warning"), Some("ConfigMap"), Some("wakegate-config"))
    );
    assert_eq!((e["reportingController"].as_str(), e["reportingInstance"].as_str()), (Some("wakegate-gateway"), Some(POD)));
    let note = e["note"].as_str().unwrap_or_default();
    assert!(note.contains("configmap.wakegate-config.max-held-requests"), "{note}");
    assert!(note.contains("configmap.wakegate-config.idel-timeout"), "{note}");

    // Fixed: applies again.
    rig.set_settings(json!({"max-held-requests": "9", "idel-timeout": null})).await?;
    eventually("max-held-requests is 9", || async { (held(rig.status("hello").await.ok()?)? == "9").then_some(()) }).await?;
    assert_eq!(rig.metric("wakegate_config_last_reload_successful").await?, 1.0);
    rig.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ingress_of_class_wakegate_routes_like_a_labelled_service() -> Result<()> {
    let mut rig = Rig::start(settings()).await?;
    rig.solution("backend", false, json!({"wakegate.io/description": "behind an ingress"})).await?;
    let rule = |host: &str| json!({"host": host, "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "backend", "port": {"number": 80}}}}]}});
    let ingresses: Api<Ingress> = Api::namespaced(rig.admin.clone(), APPS);
    for (name, class, host) in [("parts", "wakegate", "parts.test.local"), ("other", "nginx", "other.test.local")] {
        let ing: Ingress = from_json(json!({"metadata": {"name": name}, "spec": {"ingressClassName": class, "rules": [rule(host)]}}))?;
        ingresses.create(&PostParams::default(), &ing).await?;
    }
    let status = rig.listed("parts").await?;
    assert_eq!(status["phase"], "cold");
    assert!(rig.status("backend").await.is_err(), "an unlabelled Service is served only through its Ingress");
    assert_eq!(get(rig.public, "parts.test.local", "/hello").await?, (StatusCode::OK, "hello from backend\n".to_string()));
    assert_eq!(get(rig.public, "other.test.local", "/hello").await?.0, StatusCode::NOT_FOUND, "another class's Ingress");
    assert_eq!(rig.wake.scaled.load(Ordering::SeqCst), 1);

    ingresses.delete("parts", &Default::default()).await?;
    eventually("the Ingress's host is gone", || async {
        (get(rig.public, "parts.test.local", "/hello").await.ok()?.0 == StatusCode::NOT_FOUND).then_some(())
    })
    .await?;
    rig.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_api_restart_loses_no_routing() -> Result<()> {
    let mut rig = Rig::start(settings()).await?;
    rig.solution("hello", true, json!({})).await?;
    rig.listed("hello").await?;
    assert_eq!(get(rig.public, "hello.test.local", "/hello").await?.0, StatusCode::OK);

    let (done_tx, mut done) = tokio::sync::watch::channel(false);
    let public = rig.public;
    let traffic = tokio::spawn(async move {
        let mut answers = Vec::new();
        while !*done.borrow_and_update() {
            answers.push(get(public, "hello.test.local", "/hello").await.map(|(s, _)| s).map_err(|e| e.to_string()));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        answers
    });
    rig.api.restart_after(Duration::from_millis(500)).await;
    rig.api.compact();
    tokio::time::sleep(Duration::from_millis(300)).await;
    rig.api.restart().await;
    // The watches came back: a Service created now is served.
    rig.solution("second", true, json!({})).await?;
    rig.listed("second").await?;
    assert_eq!(get(rig.public, "second.test.local", "/hello").await?, (StatusCode::OK, "hello from second\n".to_string()));
    let _ = done_tx.send(true);
    let answers = traffic.await?;
    assert!(answers.len() > 20, "only {} requests were made", answers.len());
    let failed: Vec<_> = answers.iter().filter(|a| !matches!(a, Ok(StatusCode::OK))).collect();
    assert!(failed.is_empty(), "{} of {} requests failed: {failed:?}", failed.len(), answers.len());
    assert_eq!(rig.wake.calls.load(Ordering::SeqCst), 2, "hello was not woken again: its endpoints were kept");
    rig.stop().await
}

/// The leaf certificate the HTTPS listener presents for `host`.
async fn served_leaf(addr: SocketAddr, host: &str) -> Result<Vec<u8>> {
    #[derive(Debug)]
    struct AnyCert(Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &rustls_pki_types::CertificateDer<'_>,
            _: &[rustls_pki_types::CertificateDer<'_>],
            _: &rustls_pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls_pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls_pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls_pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from(host.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await?;
    let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).context("no certificate")?;
    Ok(leaf.to_vec())
}

fn leaf_of(bundle: &CertBundle) -> Result<Vec<u8>> {
    Ok(bundle.chain_der()?.first().context("empty chain")?.to_vec())
}

fn tls_secret(bundle: &CertBundle) -> Result<Secret> {
    use k8s_openapi::ByteString;
    let mut s: Secret = from_json(json!({"metadata": {"name": "wakegate-tls"}, "type": "kubernetes.io/tls"}))?;
    s.data = Some(
        [("tls.crt", &bundle.chain_pem), ("tls.key", &bundle.key_pem)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
            .collect(),
    );
    Ok(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_tls_secret_is_served_and_swapped_live() -> Result<()> {
    // An ACME source whose CA is unreachable: only the Secret supplies certificates.
    let mut rig = Rig::start(json!({
        "base-domain": BASE,
        "tls-source": "acme",
        "acme-directory": "https://127.0.0.1:9/directory",
        "acme-dns-provider": "exec",
        "acme-exec-command": "/bin/true",
        "acme-propagation-delay": "1s",
    }))
    .await?;
    // No certificate yet: plain HTTP is not sent to a handshake that would fail.
    let (status, _, _) = get_full(rig.public, "hello.test.local", "/hello").await?;
    assert_ne!(status, StatusCode::PERMANENT_REDIRECT, "no redirect before a certificate is served");
    let secrets: Api<Secret> = Api::namespaced(rig.admin.clone(), OURS);
    let first = wakegate::tls::selfsigned::generate(BASE)?;
    secrets.create(&PostParams::default(), &tls_secret(&first)?).await?;
    let want = leaf_of(&first)?;
    eventually("the first certificate is served", || async {
        (served_leaf(rig.tls, "hello.test.local").await.ok()? == want).then_some(())
    })
    .await?;

    let second = wakegate::tls::selfsigned::generate(BASE)?;
    let mut stored = secrets.get("wakegate-tls").await?;
    stored.data = tls_secret(&second)?.data;
    secrets.replace("wakegate-tls", &PostParams::default(), &stored).await?;
    let want = leaf_of(&second)?;
    eventually("the renewed certificate is served", || async {
        (served_leaf(rig.tls, "hello.test.local").await.ok()? == want).then_some(())
    })
    .await?;

    // A trusted source redirects plain HTTP, to the Service's port 443, not the pod's.
    let (status, headers, _) = get_full(rig.public, "hello.test.local", "/hello?x=1").await?;
    assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(headers.get("location").and_then(|l| l.to_str().ok()), Some("https://hello.test.local/hello?x=1"));

    let lease = |rig: &Rig| rig.api.get("coordination.k8s.io/v1", "leases", OURS, proto::cluster::ACME_LEASE).context("the ACME lease");
    assert_eq!(lease(&rig)?["spec"]["holderIdentity"], POD, "this replica leads ACME");
    rig.stop().await?;
    let released = lease(&rig)?;
    assert!(released["spec"].get("holderIdentity").is_none_or(Value::is_null), "released at shutdown: {released}");
    Ok(())
}
