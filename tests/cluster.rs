//! wakegate as the paper runs it, on the project's Kubernetes API test server:
//! two gateway processes and two scaler processes (the real binary, talking
//! to the API through the real kube client over HTTP), a solution Deployment
//! at zero whose pods the simulated kubelet runs as real processes.
//!
//! Checked: a wake through both gateways at once scales the Deployment once;
//! idle scale-down waits for every gateway (a request in flight on one, or one
//! that cannot be read, keeps the solution up); killing the scaler leader hands
//! the Lease over and scale-down still happens; and the RBAC in `deploy/`
//! grants each role exactly what it used (beyond a short, commented allow-list).

#![allow(clippy::unwrap_used)] // test code: a failed setup should panic loudly

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{Value, json};
use wakegate_tests::{Proc, chromium, eventually, get, metric, testapp};

const TOKEN: &str = "wake-token-for-tests";
const GATEWAY_SA: &str = "wakegate-gateway";
const SCALER_SA: &str = "wakegate-scaler";

fn seed(api: &kubeapi::TestApi, settings: &[(&str, &str)]) {
    let mut data = json!({"base-domain": "aim.test", "idle-timeout": "2s", "reaper-interval": "300ms", "tls-source": "off"});
    for (k, v) in settings {
        data[*k] = json!(v);
    }
    api.put(
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "wakegate-config", "namespace": "wakegate"}, "data": data}),
    )
    .unwrap();
    api.put(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "solutions", "labels": {"wakegate.io/expose": "true"}},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 8080}]}}))
        .unwrap();
    api.put(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "solutions"},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"terminationGracePeriodSeconds": 2,
                "containers": [{"name": "web", "image": "example/web", "command": ["python3", testapp().display().to_string(), "--name", "web"],
                    "ports": [{"containerPort": 8080, "name": "http"}], "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}}}]}}}}))
    .unwrap();
}

fn replicas(api: &kubeapi::TestApi) -> i64 {
    api.get("apps/v1", "deployments", "solutions", "web").and_then(|d| d["spec"]["replicas"].as_i64()).unwrap_or(-1)
}

struct Cluster {
    api: kubeapi::TestApi,
    dir: tempfile::TempDir,
    scalers: Vec<Proc>,
    gateways: Vec<Proc>,
}

impl Cluster {
    async fn start() -> Cluster {
        Cluster::start_with(&[], 2).await
    }

    /// Two gateways and `scalers` scalers, with `settings` added to the ConfigMap.
    async fn start_with(settings: &[(&str, &str)], scalers: usize) -> Cluster {
        let api = kubeapi::start().await;
        seed(&api, settings);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), TOKEN).unwrap();
        for sa in [GATEWAY_SA, SCALER_SA] {
            std::fs::write(dir.path().join(sa), api.kubeconfig(sa, "wakegate")).unwrap();
        }
        let mut c = Cluster { api, dir, scalers: Vec::new(), gateways: Vec::new() };
        for i in 0..scalers {
            c.scalers.push(c.scaler(i));
        }
        for i in 0..2 {
            let wake = c.scalers[i % scalers].addr("wake");
            c.gateways.push(c.gateway(i, wake));
        }
        // The gateway pods, as their admin Service's EndpointSlices show them.
        for (i, g) in c.gateways.iter().enumerate() {
            let admin = g.addr("admin");
            c.api
                .put(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": format!("wakegate-gateway-admin-{i}"), "namespace": "wakegate", "labels": {"kubernetes.io/service-name": "wakegate-gateway-admin"}},
                    "addressType": "IPv4", "endpoints": [{"addresses": [admin.ip().to_string()], "conditions": {"ready": true}}],
                    "ports": [{"name": "admin", "port": admin.port(), "protocol": "TCP"}]}))
                .unwrap();
        }
        c
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn scaler(&self, i: usize) -> Proc {
        let identity = format!("scaler-{i}");
        let token = self.path("token");
        let args = [
            "scaler",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--token-file",
            &token,
            "--identity",
            &identity,
            "--lease-seconds",
            "3",
        ];
        Proc::start(&args, &[("KUBECONFIG", &self.path(SCALER_SA))], "scaler listening")
    }

    fn gateway(&self, i: usize, scaler: SocketAddr) -> Proc {
        let (pod, token, url) = (format!("gateway-{i}"), self.path("token"), format!("http://{scaler}"));
        let args = [
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--tls-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--token-file",
            &token,
            "--scaler-url",
            &url,
            "--pod-name",
            &pod,
        ];
        Proc::start(&args, &[("KUBECONFIG", &self.path(GATEWAY_SA))], "listening public=")
    }

    fn public(&self, i: usize) -> SocketAddr {
        self.gateways[i].addr("public")
    }

    async fn leader(&self) -> Option<usize> {
        for (i, s) in self.scalers.iter().enumerate() {
            if let Ok(r) = get(s.addr("admin"), "scaler", "/metrics", &[]).await
                && metric(&r.body, "wakegate_scaler_leader") == Some(1.0)
            {
                return Some(i);
            }
        }
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_and_two_scalers_wake_and_sleep_a_deployment() {
    let mut c = Cluster::start().await;
    let api = &c.api;

    // A cold solution: 200 concurrent requests over both gateways during the wake.
    assert_eq!(replicas(api), 0);
    let addrs = [c.public(0), c.public(1)];
    let tasks: Vec<_> = (0..200).map(|i| tokio::spawn(get(addrs[i % 2], "web.aim.test", "/hello", &[]))).collect();
    for t in tasks {
        let r = t.await.unwrap().unwrap();
        assert_eq!(r.status, 200, "{r:?}\n{}", c.gateways[0].log());
        assert_eq!(r.body, "hello from web\n");
    }
    assert_eq!(replicas(api), 1);
    assert_eq!(api.processes().len(), 1, "one pod was started: the Deployment was scaled once to 1");

    // Idle scale-down waits while one gateway has a request in flight.
    let slow = tokio::spawn(get(addrs[1], "web.aim.test", "/slow?ms=4000", &[]));
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(replicas(api), 1, "a request is in flight on gateway 1");
    assert_eq!(slow.await.unwrap().unwrap().status, 200);
    assert!(eventually(Duration::from_secs(10), || async { replicas(api) == 0 }).await, "both idle: scaled to zero");
    // The Event is recorded right after the scale: it may lag the replica count.
    let scaled_event = || async {
        let events = api.list("events.k8s.io/v1", "events", Some("solutions"));
        events.iter().any(|e| e["reason"] == "ScaledToZero" && e["regarding"]["name"] == "web")
    };
    assert!(eventually(Duration::from_secs(5), scaled_event).await, "{:?}", api.list("events.k8s.io/v1", "events", Some("solutions")));

    // Woken again; then one gateway cannot be read: fail safe.
    assert_eq!(get(addrs[0], "web.aim.test", "/hello", &[]).await.unwrap().status, 200);
    c.gateways[1].signal(Signal::SIGSTOP);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(replicas(api), 1, "gateway 1's metrics are unreadable: nothing is scaled down");
    c.gateways[1].signal(Signal::SIGCONT);
    assert!(eventually(Duration::from_secs(10), || async { replicas(api) == 0 }).await, "readable again: scaled to zero");

    // Kill the scaler leader: the other takes the Lease and still scales down.
    let leader = c.leader().await.expect("a leader");
    let survivor = 1 - leader;
    c.scalers[leader].signal(Signal::SIGKILL);
    let took_over = Instant::now();
    let via = survivor; // gateway `survivor` wakes through the surviving scaler
    assert_eq!(get(addrs[via], "web.aim.test", "/hello", &[]).await.unwrap().status, 200);
    assert!(eventually(Duration::from_secs(20), || async { c.leader().await == Some(survivor) }).await, "the other scaler leads");
    assert!(eventually(Duration::from_secs(15), || async { replicas(api) == 0 }).await, "scale-down after failover");
    eprintln!("failover and scale-down took {:?}", took_over.elapsed());

    // RBAC: deploy/base grants each role what it used, and nothing it did not.
    let requests = api.requests();
    let rbac = Rbac::render();
    for (sa, allow_unused) in [(GATEWAY_SA, GATEWAY_UNUSED), (SCALER_SA, SCALER_UNUSED)] {
        let used: Vec<_> = requests.iter().filter(|r| r.user == sa).collect();
        assert!(!used.is_empty(), "{sa} made no requests");
        let mut exercised = BTreeSet::new();
        for r in &used {
            let ns = r.namespace.clone().unwrap_or_default();
            let grant = rbac.grant(sa, &ns, r.api_group, &r.rbac_resource(), r.verb, r.name.as_deref());
            assert!(
                grant.is_some(),
                "{sa} used {} {}/{} in {ns} ({:?}) but deploy/ does not grant it",
                r.verb,
                r.api_group,
                r.rbac_resource(),
                r.name
            );
            exercised.insert(grant.unwrap());
        }
        let granted = rbac.grants(sa);
        let unused: Vec<_> = granted.difference(&exercised).filter(|g| !allow_unused.iter().any(|a| g.matches(a))).collect();
        assert!(unused.is_empty(), "{sa} is granted more than it used: {unused:#?}");
    }
    drop(c.gateways.drain(..));
    drop(c.scalers.drain(..));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_waiting_page_follows_a_cluster_wake_up_through_its_pods() {
    let mut c = Cluster::start_with(&[], 1).await;
    // A solution whose image "pulls" for 3 s and whose process listens 2 s after it starts.
    c.api
        .put(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "slow", "namespace": "solutions", "labels": {"wakegate.io/expose": "true"},
                "annotations": {"wakegate.io/idle-timeout": "1m"}},
            "spec": {"selector": {"app": "slow"}, "ports": [{"name": "http", "port": 8080}]}}))
        .unwrap();
    c.api
        .put(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "slow", "namespace": "solutions"},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "slow"}},
                "template": {"metadata": {"labels": {"app": "slow"}, "annotations": {"kubeapi.wakegate.dev/pull-delay-ms": "3000"}},
                    "spec": {"terminationGracePeriodSeconds": 2, "containers": [{"name": "slow", "image": "example/slow",
                        "command": ["python3", testapp().display().to_string(), "--name", "slow", "--startup-delay", "2"],
                        "ports": [{"containerPort": 8080, "name": "http"}], "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}}}]}}}}))
        .unwrap();
    let public = c.public(0);
    let status = || async move {
        let r = get(public, "slow.aim.test", "/.well-known/wakegate/status", &[("accept", "application/json")]).await.ok()?;
        serde_json::from_str::<Value>(&r.body).ok()
    };
    assert!(
        eventually(Duration::from_secs(10), || async { status().await.is_some_and(|s| s["phase"] == "cold") }).await,
        "the gateway knows it"
    );
    let resolve = "--host-resolver-rules=MAP *.aim.test 127.0.0.1";
    let browser = chromium::Browser::launch(&[resolve]).await;

    // A browser's first visit: the waiting page, with the cluster's steps.
    let page = get(public, "slow.aim.test", "/", &[("accept", "text/html")]).await.unwrap();
    assert_eq!(page.status, 503, "{}", page.body);
    for step in ["scale requested", "pod scheduled", "container started", "ready"] {
        assert!(page.body.contains(&format!(">{step}</li>")), "{step} in\n{}", page.body);
    }

    // A person opens it in Chromium meanwhile: the page shows the step it is at,
    // and what the Pod waits for, then becomes the solution's own page.
    let url = format!("http://slow.aim.test:{}/", public.port());
    let (browser, mut cdp) = chromium::open_in(browser, &url).await;

    // What the page follows (the status), and what it shows, sampled until the solution's page is there.
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut shown: Vec<String> = Vec::new();
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status().await.unwrap_or_default();
        let now =
            (s["step"].as_str().unwrap_or(s["phase"].as_str().unwrap_or("?")).to_string(), s["detail"].as_str().unwrap_or("").to_string());
        if seen.last() != Some(&now) {
            seen.push(now);
        }
        // Errors are expected while the page reloads (its context goes away).
        let view = cdp.eval(SHOWN).await.map_or_else(|e| format!("({e:#})"), |v| format!("{} | {} | {}", v[0], v[1], v[2]));
        if shown.last() != Some(&view) {
            shown.push(view.clone());
        }
        if view.ends_with("\"slow is awake\"") || Instant::now() > until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("the page showed:\n  {}", shown.join("\n  "));
    assert!(shown.iter().any(|v| v.starts_with("\"pod scheduled\" | \"Now: ContainerCreating\"")), "{shown:#?}\n{}", browser.log());
    assert!(shown.iter().any(|v| v.starts_with("\"container started\" | null")), "{shown:#?}");
    assert!(shown.last().is_some_and(|v| v.ends_with("\"slow is awake\"")), "the solution's own page, by itself: {shown:#?}");
    eprintln!("steps seen: {seen:?}");
    let steps: Vec<&str> = seen.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(steps.last(), Some(&"ready"), "{seen:?}\n{}", c.gateways[0].log());
    let order = ["scale-requested", "pod-scheduled", "container-started", "ready"];
    let ranks: Vec<usize> = steps.iter().map(|s| order.iter().position(|o| o == s).unwrap_or(usize::MAX)).collect();
    assert!(ranks.windows(2).all(|w| w[0] <= w[1]), "steps in order: {seen:?}");
    assert!(seen.contains(&("pod-scheduled".into(), "ContainerCreating".into())), "the pull was shown: {seen:?}");
    assert!(steps.contains(&"container-started"), "the start was shown: {seen:?}");
    assert_eq!(get(public, "slow.aim.test", "/hello", &[]).await.unwrap().body, "hello from slow\n");
    drop(cdp);
    drop(browser);
    drop(c.gateways.drain(..));
    drop(c.scalers.drain(..));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_waiting_page_forgets_pods_that_are_no_longer_the_services() {
    let c = Cluster::start_with(&[], 1).await;
    let service = |selector: Value| {
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "pull", "namespace": "solutions", "labels": {"wakegate.io/expose": "true"},
                "annotations": {"wakegate.io/startup-timeout": "10m"}},
            "spec": {"selector": selector, "ports": [{"name": "http", "port": 8080}]}})
    };
    // A solution whose image "pulls" for longer than the test runs.
    c.api.put(service(json!({"app": "pull"}))).unwrap();
    c.api
        .put(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "pull", "namespace": "solutions"},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "pull"}},
                "template": {"metadata": {"labels": {"app": "pull"}, "annotations": {"kubeapi.wakegate.dev/pull-delay-ms": "60000"}},
                    "spec": {"terminationGracePeriodSeconds": 2, "containers": [{"name": "pull", "image": "example/pull",
                        "command": ["python3", testapp().display().to_string(), "--name", "pull"],
                        "ports": [{"containerPort": 8080, "name": "http"}]}]}}}}))
        .unwrap();
    let public = c.public(0);
    let status = || async move {
        let r = get(public, "pull.aim.test", "/.well-known/wakegate/status", &[("accept", "application/json")]).await.ok()?;
        serde_json::from_str::<Value>(&r.body).ok()
    };
    let step = || async move {
        let s = status().await?;
        Some((s["step"].as_str().unwrap_or("-").to_string(), s["detail"].as_str().unwrap_or("-").to_string()))
    };
    let at = |want: &'static str, detail: &'static str| {
        eventually(Duration::from_secs(10), move || async move { step().await.is_some_and(|s| s == (want.into(), detail.into())) })
    };
    assert!(
        eventually(Duration::from_secs(10), || async { status().await.is_some_and(|s| s["phase"] == "cold") }).await,
        "the gateway knows it"
    );
    let page = get(public, "pull.aim.test", "/", &[("accept", "text/html")]).await.unwrap();
    assert_eq!(page.status, 503, "{}", page.body);
    assert!(at("pod-scheduled", "ContainerCreating").await, "the pull is shown: {:?}\n{}", step().await, c.gateways[0].log());

    // The Service stops selecting Pods mid-wake: the page no longer speaks for them.
    c.api.put(service(json!({}))).unwrap();
    assert!(at("scale-requested", "-").await, "back to what the gateway knows: {:?}\n{}", step().await, c.gateways[0].log());
    // It selects them again: the page follows them again.
    c.api.put(service(json!({"app": "pull"}))).unwrap();
    assert!(at("pod-scheduled", "ContainerCreating").await, "followed again: {:?}\n{}", step().await, c.gateways[0].log());
}

/// The waiting page's current step, its detail line (null while hidden), and
/// the solution's own `#app` text once it is there.
const SHOWN: &str = "JSON.stringify([(document.querySelector('#steps li.now') || {}).textContent || null, \
    (document.getElementById('detail') && !document.getElementById('detail').hidden) ? document.getElementById('detail').textContent : null, \
    document.getElementById('app') && document.getElementById('app').textContent])";

/// Debian's Prometheus on a loopback port, scraping `targets` every 500 ms.
struct Prometheus {
    proc: Proc,
    config: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start() -> Prometheus {
        Prometheus::start_with(None)
    }

    /// With `web` as its web config (TLS, basic auth users) when given.
    fn start_with(web: Option<&str>) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        Prometheus::write(&config, &[]);
        let mut cmd = std::process::Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg("--web.listen-address=127.0.0.1:0");
        if let Some(web) = web {
            let file = dir.path().join("web.yml");
            std::fs::write(&file, web).unwrap();
            cmd.arg(format!("--web.config.file={}", file.display()));
        }
        let proc = Proc::spawn(cmd, "msg=\"Listening on\"");
        Prometheus { proc, config, _dir: dir }
    }

    fn write(config: &std::path::Path, targets: &[SocketAddr]) {
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let yaml = format!(
            "global:\n  scrape_interval: 500ms\n  scrape_timeout: 400ms\nscrape_configs:\n  - job_name: wakegate-gateway\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        std::fs::write(config, yaml).unwrap();
    }

    /// Rewrites the scrape targets and reloads (SIGHUP), as an operator would.
    fn scrape(&self, targets: &[SocketAddr]) {
        Prometheus::write(&self.config, targets);
        self.proc.signal(Signal::SIGHUP);
    }

    fn addr(&self) -> SocketAddr {
        self.proc.addr("address")
    }

    /// The value of `promql` now (one sample), as Prometheus answers it.
    async fn value(&self, promql: &str) -> Option<f64> {
        let q: String = form_urlencoded::byte_serialize(promql.as_bytes()).collect();
        let r = get(self.addr(), "prometheus", &format!("/api/v1/query?query={q}"), &[]).await.ok()?;
        let v: Value = serde_json::from_str(&r.body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scaler_can_read_activity_through_prometheus() {
    let prom = Prometheus::start();
    let url = format!("http://{}", prom.addr());
    let settings = [("activity-source", "prometheus"), ("prometheus-url", url.as_str()), ("idle-timeout", "3s")];
    let mut c = Cluster::start_with(&settings, 1).await;
    let api = &c.api;
    let addrs = [c.public(0), c.public(1)];
    assert!(
        eventually(Duration::from_secs(20), || async {
            get(prom.addr(), "prometheus", "/-/ready", &[]).await.is_ok_and(|r| r.status == 200)
        })
        .await,
        "prometheus ready:\n{}",
        prom.proc.log()
    );

    // Prometheus does not scrape the gateways yet: no reading of the solution
    // at all, so it is not scaled down however long it idles.
    assert_eq!(get(addrs[0], "web.aim.test", "/hello", &[]).await.unwrap().status, 200);
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert_eq!(replicas(api), 1, "unknown to Prometheus: kept up");
    assert!(c.scalers[0].log().contains("no wakegate figures at all"), "{}", c.scalers[0].log());

    // Scraping both gateways: a request in flight on one of them, seen only
    // through Prometheus, keeps the solution up past its idle timeout.
    let slow_since = Instant::now();
    let slow = tokio::spawn(get(addrs[1], "web.aim.test", "/slow?ms=9000", &[]));
    prom.scrape(&[c.gateways[0].addr("admin"), c.gateways[1].addr("admin")]);
    let scraped = || async { prom.value("count(wakegate_last_request_timestamp_seconds)").await == Some(2.0) };
    assert!(eventually(Duration::from_secs(6), scraped).await, "prometheus scrapes both gateways:\n{}", prom.proc.log());
    // Past the idle timeout, and long enough for several rounds on scraped figures.
    let check_at = (slow_since + Duration::from_millis(4500)).max(Instant::now() + Duration::from_millis(1500));
    tokio::time::sleep_until(check_at.into()).await;
    assert!(!slow.is_finished(), "the slow request is still in flight");
    assert_eq!(replicas(api), 1, "a request is in flight on gateway 1");
    assert_eq!(slow.await.unwrap().unwrap().status, 200);
    assert!(eventually(Duration::from_secs(15), || async { replicas(api) == 0 }).await, "idle: scaled to zero\n{}", c.scalers[0].log());

    // A gateway Prometheus cannot read any more: its latest requests are
    // unknown, so nothing is scaled down until it reports again.
    assert_eq!(get(addrs[0], "web.aim.test", "/hello", &[]).await.unwrap().status, 200);
    assert_eq!(replicas(api), 1);
    c.gateways[1].signal(Signal::SIGSTOP);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(replicas(api), 1, "gateway 1 is ready but not scraped: nothing is scaled down");
    assert!(c.scalers[0].log().contains("figures from 1 gateway(s), 2 are ready"), "{}", c.scalers[0].log());
    // Kubernetes takes it out of the gateways' EndpointSlices too: still
    // nothing, since it reported until a moment ago.
    let slice = api.get("discovery.k8s.io/v1", "endpointslices", "wakegate", "wakegate-gateway-admin-1").unwrap();
    assert!(api.delete("discovery.k8s.io/v1", "endpointslices", "wakegate", "wakegate-gateway-admin-1"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(replicas(api), 1, "gateway 1 went away: nothing is scaled down");
    assert!(c.scalers[0].log().contains("stopped reporting within the last 5m"), "{}", c.scalers[0].log());
    c.gateways[1].signal(Signal::SIGCONT);
    api.put(slice).unwrap();
    assert!(eventually(Duration::from_secs(15), || async { replicas(api) == 0 }).await, "reported again: scaled to zero");
    let scaler = get(c.scalers[0].addr("admin"), "scaler", "/metrics", &[]).await.unwrap();
    assert!(metric(&scaler.body, "wakegate_reaper_scrape_failures_total").is_some_and(|n| n >= 1.0), "{}", scaler.body);
    drop(c.gateways.drain(..));
    drop(c.scalers.drain(..));
}

/// A self-signed certificate for 127.0.0.1 (CA:FALSE, as rustls wants a
/// server's), written as NAME.pem and NAME.key in `dir`.
fn loopback_cert(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (pem, key_file) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
    std::fs::write(&pem, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    (pem, key_file)
}

/// bcrypt of "s3cret" (cost 4), as Prometheus's `basic_auth_users` want it.
const S3CRET_BCRYPT: &str = "$2b$04$KXzhiIs2TUoMhik07QjeueB5pkxO3UsJ5bbupIrBTDnulwa.87iPu";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scaler_reads_a_prometheus_behind_mutual_tls_and_basic_auth() {
    let files = tempfile::tempdir().unwrap();
    let (cert, key) = loopback_cert(files.path(), "prometheus");
    let (stranger, _) = loopback_cert(files.path(), "stranger");
    // The scaler's client certificate: this Prometheus asks for one (mutual TLS).
    let (client_cert, client_key) = loopback_cert(files.path(), "scaler");
    let (ca, password) = (files.path().join("ca.pem"), files.path().join("password"));
    std::fs::copy(&stranger, &ca).unwrap();
    std::fs::write(&password, "wrong\n").unwrap();
    let web = format!(
        "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\nbasic_auth_users:\n  wakegate: {S3CRET_BCRYPT}\n",
        cert.display(),
        key.display(),
        client_cert.display()
    );
    let prom = Prometheus::start_with(Some(&web));
    let url = format!("https://{}", prom.addr());
    let (ca_file, password_file) = (ca.display().to_string(), password.display().to_string());
    let (cert_file, key_file) = (client_cert.display().to_string(), client_key.display().to_string());
    let settings = [
        ("activity-source", "prometheus"),
        ("prometheus-url", url.as_str()),
        ("prometheus-ca-file", ca_file.as_str()),
        ("prometheus-cert-file", cert_file.as_str()),
        ("prometheus-key-file", key_file.as_str()),
        ("prometheus-username", "wakegate"),
        ("prometheus-password-file", password_file.as_str()),
        ("idle-timeout", "3s"),
    ];
    let mut c = Cluster::start_with(&settings, 1).await;
    let api = &c.api;
    prom.scrape(&[c.gateways[0].addr("admin"), c.gateways[1].addr("admin")]);
    let asked = Instant::now();
    assert_eq!(get(c.public(0), "web.aim.test", "/hello", &[]).await.unwrap().status, 200);
    assert_eq!(replicas(api), 1);
    let logged = |what: &'static str| {
        let scaler = &c.scalers[0];
        async move { eventually(Duration::from_secs(10), || async { scaler.log().contains(what) }).await }
    };

    // A certificate the CA file does not vouch for: no reading, nothing scaled down.
    assert!(logged("TLS handshake: invalid peer certificate").await, "{}", c.scalers[0].log());
    // The right CA, the wrong password: Prometheus says 401, still nothing.
    std::fs::copy(&cert, &ca).unwrap();
    assert!(logged("status 401 Unauthorized").await, "{}", c.scalers[0].log());
    // An edit that leaves the user without a password file: the scaler does
    // not fall back to asking without credentials; it asks nothing.
    let config = api.get("v1", "configmaps", "wakegate", "wakegate-config").unwrap();
    let mut broken = config.clone();
    broken["data"].as_object_mut().unwrap().remove("prometheus-password-file");
    api.put(broken).unwrap();
    assert!(logged("the ConfigMap's keys are refused: prometheus-password-file: required with prometheus-username").await);
    tokio::time::sleep_until((asked + Duration::from_millis(4500)).max(Instant::now() + Duration::from_millis(1000)).into()).await;
    assert_eq!(replicas(api), 1, "idle past its timeout, but unreadable: kept up");
    // The key back and the password file corrected: read at the next round, no restart.
    std::fs::write(&password, "s3cret\n").unwrap();
    api.put(config).unwrap();
    assert!(eventually(Duration::from_secs(15), || async { replicas(api) == 0 }).await, "read: scaled to zero\n{}", c.scalers[0].log());
    // The password is sent, never logged (base64 of wakegate:s3cret either).
    for g in c.scalers.iter().chain(&c.gateways) {
        assert!(!g.log().contains("s3cret") && !g.log().contains("d2FrZWdhdGU6czNjcmV0"), "{}", g.log());
    }
    drop(c.gateways.drain(..));
    drop(c.scalers.drain(..));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alert_rules_name_only_metrics_the_gateway_and_scaler_export() {
    // tests/alerts.rs runs the rules on series named as in the rules; this
    // checks those names against what running processes export. A family
    // shows once it has a sample: a wake-up and a refusal make them.
    let mut c = Cluster::start_with(&[], 1).await;
    assert_eq!(get(c.public(0), "web.aim.test", "/hello", &[]).await.expect("an answer").status, 200);
    assert_eq!(get(c.public(0), "nothing.aim.test", "/", &[]).await.expect("an answer").status, 404);
    // Asked for as Prometheus asks: OpenMetrics.
    let page = |addr| async move {
        get(addr, "admin", "/metrics", &[("accept", "application/openmetrics-text;version=1.0.0")]).await.expect("the metrics").body
    };
    let exported = [page(c.gateways[0].addr("admin")).await, page(c.scalers[0].addr("admin")).await].concat();
    let text = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/base/prometheusrule.yaml"))
        .expect("deploy/base/prometheusrule.yaml");
    let rule: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("the PrometheusRule is YAML");
    let mut named = BTreeSet::new();
    for r in rule["spec"]["groups"][0]["rules"].as_sequence().expect("a list of rules") {
        let expr = r["expr"].as_str().expect("every rule has an expr");
        for (i, _) in expr.match_indices("wakegate_") {
            named.insert(expr[i..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect::<String>());
        }
    }
    // The certificate gauges (expiry, not-before, renewal plan) and the ACME
    // orders need a served certificate and ACME: gateway/tests/acme.rs and
    // the TLS metrics' unit test read them.
    named.retain(|n| !n.starts_with("wakegate_certificate_") && !n.starts_with("wakegate_acme_"));
    assert!(named.len() >= 5, "{named:?}");
    for name in &named {
        // Counters: `# TYPE wakegate_x counter`, samples `wakegate_x_total`.
        let family = name.strip_suffix("_total").unwrap_or(name);
        assert!(exported.contains(&format!("# TYPE {family} ")), "{name} is in the alert rules but not exported:\n{exported}");
    }
    drop(c.gateways.drain(..));
    drop(c.scalers.drain(..));
}

/// Granted but legitimately unused in this test, each with its reason.
const GATEWAY_UNUSED: &[(&str, &str, &str)] = &[
    // The TLS Secrets and the ACME Lease are used only with tls-source acme
    // (gateway/tests/cluster.rs covers the Secret path; tests/tls.rs ACME).
    ("wakegate", "secrets", "*"),
    ("wakegate", "leases", "*"),
    // Events are published only for a rejected ConfigMap edit (gateway/tests/cluster.rs).
    ("wakegate", "events", "*"),
];
const SCALER_UNUSED: &[(&str, &str, &str)] = &[
    // The event recorder patches an event that repeats within minutes.
    ("solutions", "events", "patch"),
];

/// One granted (namespace, resource, verb), from a Role rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Grant {
    namespace: String,
    group: String,
    resource: String,
    verb: String,
}

impl Grant {
    fn matches(&self, (ns, resource, verb): &(&str, &str, &str)) -> bool {
        self.namespace == *ns && self.resource == *resource && (*verb == "*" || self.verb == *verb)
    }
}

struct Rule {
    namespace: String,
    groups: Vec<String>,
    resources: Vec<String>,
    verbs: Vec<String>,
    names: Vec<String>,
}

/// The Roles bound to each ServiceAccount in `kubectl kustomize deploy/base`.
struct Rbac {
    rules: Vec<(String, Rule)>,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

impl Rbac {
    fn render() -> Rbac {
        let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/base");
        let out = std::process::Command::new("kubectl")
            .arg("kustomize")
            .arg(&base)
            .output()
            .expect("kubectl is needed to render deploy/ (it ships on these machines)");
        assert!(out.status.success(), "kubectl kustomize failed: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let docs: Vec<Value> = text.split("\n---\n").filter_map(|d| serde_yaml_ng::from_str::<Value>(d).ok()).collect();
        let mut roles = Vec::new();
        let mut bindings = Vec::new();
        for d in &docs {
            let ns = d["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
            match d["kind"].as_str() {
                Some("Role") => roles.push((ns, d.clone())),
                Some("RoleBinding") => bindings.push((ns, d.clone())),
                Some("ClusterRole") | Some("ClusterRoleBinding") => panic!("deploy/ must not grant cluster-wide access"),
                _ => {}
            }
        }
        let mut rules = Vec::new();
        for (ns, b) in &bindings {
            let role = b["roleRef"]["name"].as_str().unwrap_or_default();
            let Some((_, r)) = roles.iter().find(|(rns, r)| rns == ns && r["metadata"]["name"] == role) else { continue };
            for subject in b["subjects"].as_array().cloned().unwrap_or_default() {
                let sa = subject["name"].as_str().unwrap_or_default().to_string();
                for rule in r["rules"].as_array().cloned().unwrap_or_default() {
                    rules.push((
                        sa.clone(),
                        Rule {
                            namespace: ns.clone(),
                            groups: strings(&rule["apiGroups"]),
                            resources: strings(&rule["resources"]),
                            verbs: strings(&rule["verbs"]),
                            names: strings(&rule["resourceNames"]),
                        },
                    ));
                }
            }
        }
        Rbac { rules }
    }

    /// The grant a request falls under, if any.
    fn grant(&self, sa: &str, ns: &str, group: &str, resource: &str, verb: &str, name: Option<&str>) -> Option<Grant> {
        self.rules.iter().filter(|(s, r)| s == sa && r.namespace == ns).find_map(|(_, r)| {
            let ok = r.groups.iter().any(|g| g == group)
                && r.resources.iter().any(|x| x == resource)
                && r.verbs.iter().any(|v| v == verb)
                && (r.names.is_empty() || name.is_some_and(|n| r.names.iter().any(|x| x == n)));
            ok.then(|| Grant { namespace: ns.into(), group: group.into(), resource: resource.into(), verb: verb.into() })
        })
    }

    /// Everything granted to `sa`.
    fn grants(&self, sa: &str) -> BTreeSet<Grant> {
        let mut out = BTreeSet::new();
        for (_, r) in self.rules.iter().filter(|(s, _)| s == sa) {
            for g in &r.groups {
                for res in &r.resources {
                    for v in &r.verbs {
                        out.insert(Grant { namespace: r.namespace.clone(), group: g.clone(), resource: res.clone(), verb: v.clone() });
                    }
                }
            }
        }
        out
    }
}
