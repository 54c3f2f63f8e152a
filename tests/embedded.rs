//! Routing, headers, the catalog, admin separation, metrics and live config,
//! driven through the real binary.

mod raw;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wakegate_tests::{Wakegate, eventually, get, metric, testapp, testapp_solution};

fn config(extra: &str) -> String {
    format!("[settings]\n{}", testapp_solution("app", "", extra))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_and_refuses_the_rest() {
    let wg = Wakegate::start(&config(""));
    let a = wg.public;

    let r = get(a, "APP.Localhost.:80", "/hello", &[]).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "hello from app\n");
    assert_eq!(r.header("x-request-id").len(), 16, "a request id is generated");

    let r = get(a, "nope.localhost", "/hello", &[]).await.unwrap();
    assert_eq!(r.status, 404);
    assert!(r.body.contains("no solution is served at nope.localhost"), "{}", r.body);
    assert!(r.body.contains(r.header("x-request-id")), "the body quotes the request id");

    let r = get(a, "nope.localhost", "/", &[("accept", "application/json")]).await.unwrap();
    assert_eq!(r.status, 404);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["error"], "unknown_host");
    assert_eq!(v["request_id"], r.header("x-request-id"));

    for path in ["/metrics", "/status", "/healthz", "/readyz"] {
        let r = get(a, "localhost", path, &[]).await.unwrap();
        assert_eq!(r.status, 404, "{path} must not be served on the public listener");
        assert!(!r.body.contains("wakegate_requests_total"));
        // On a solution's host the path belongs to the solution.
        let r = get(a, "app.localhost", path, &[]).await.unwrap();
        assert!(!r.body.contains("wakegate_"), "{path} on a solution host reached the admin: {}", r.body);
    }

    let mut stream = tokio::net::TcpStream::connect(a).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut buf = vec![0; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.unwrap().unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 400"), "no Host: {head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_identity_headers_and_keeps_request_ids() {
    let wg = Wakegate::start(&config(""));
    let hdrs = [
        ("x-request-id", "trace-42"),
        ("connection", "keep-alive, x-hop"),
        ("x-hop", "secret"),
        ("x-forwarded-for", "203.0.113.7"),
        ("x-forwarded-proto", "https"),
    ];
    let r = get(wg.public, "app.localhost:8080", "/headers", &hdrs).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-request-id"), "trace-42");
    let seen: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(seen["x-request-id"], "trace-42");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1", "a chain from an untrusted peer is replaced, not extended");
    assert_eq!(seen["x-forwarded-host"], "app.localhost:8080");
    assert_eq!(seen["x-forwarded-proto"], "http", "the scheme the client used, not what it claims");
    assert_eq!(seen["host"], "app.localhost:8080");
    assert!(seen.get("x-hop").is_none(), "headers named in Connection are hop-by-hop: {seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_solution_answer_loses_its_hop_by_hop_fields_over_http1_and_http2() {
    let wg = Wakegate::start(&config(""));
    // HTTP/1.1: the gateway's own loop passes the solution's head on as it came.
    let ask = "GET /hop HTTP/1.1\r\nhost: app.localhost\r\nx-request-id: trace-7\r\n\r\n";
    let r = raw::request(wg.public, ask.as_bytes()).await;
    assert_eq!((r.status, r.body.as_str()), (200, "hop\n"));
    let names: Vec<&str> = r.headers.iter().map(|(n, _)| n.as_str()).collect();
    for gone in ["connection", "x-hop", "keep-alive"] {
        assert!(!names.contains(&gone), "{gone} was forwarded: {names:?}");
    }
    let count = |name: &str| names.iter().filter(|n| **n == name).count();
    assert_eq!((count("x-request-id"), r.header("x-request-id")), (1, "trace-7"), "the gateway's request id replaces the solution's");
    assert_eq!((count("date"), count("content-length"), count("set-cookie")), (1, 1, 2), "{names:?}");
    assert_eq!(r.header("x-kept"), "yes");
    let head = Request::head("/hop").header("host", "app.localhost").body(Full::new(Bytes::new())).unwrap();
    let r = wakegate_tests::read(wakegate_tests::send(wg.public, head).await.unwrap()).await.unwrap();
    assert_eq!((r.status.as_u16(), r.header("content-length"), r.body.as_str()), (200, "4", ""), "a HEAD answer keeps the length");

    // HTTP/2: the same fields, from a header map.
    let stream = tokio::net::TcpStream::connect(wg.public).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::get("http://app.localhost/hop").header("x-request-id", "trace-8").body(Full::new(Bytes::new())).unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    assert!(h.get("x-hop").is_none() && h.get("keep-alive").is_none(), "{h:?}");
    assert_eq!(h.get_all("x-request-id").iter().collect::<Vec<_>>(), ["trace-8"]);
    assert_eq!(h.get_all("set-cookie").iter().count(), 2);
    assert_eq!(h.get_all("date").iter().count(), 1);
    assert_eq!(h["x-kept"], "yes");
    assert_eq!(&resp.into_body().collect().await.unwrap().to_bytes()[..], b"hop\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_http2_prior_knowledge() {
    let wg = Wakegate::start(&config(""));
    let stream = tokio::net::TcpStream::connect(wg.public).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    for _ in 0..3 {
        let req = Request::post("http://app.localhost/echo").body(Full::new(Bytes::from_static(b"over h2"))).unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-request-id"].len(), 16);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"over h2");
    }
    // More fields than `max-headers` (100): refused as over HTTP/1.1.
    let mut req = Request::get("http://app.localhost/hello").body(Full::new(Bytes::new())).unwrap();
    for i in 0..150 {
        req.headers_mut().insert(http::HeaderName::try_from(format!("x-h{i}")).unwrap(), http::HeaderValue::from_static("v"));
    }
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 431);
    assert!(resp.headers().contains_key("x-request-id"));
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("more than 100 header fields"), "{body:?}");
    // A header list over `max-header-size` (32 KiB): the same 431, with an id.
    let big = http::HeaderValue::from_str(&"v".repeat(40_000)).unwrap();
    let req = Request::get("http://app.localhost/hello").header("x-big", big).body(Full::new(Bytes::new())).unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 431);
    assert!(resp.headers().contains_key("x-request-id"), "{:?}", resp.headers());
    // HEAD to what the gateway answers itself (the catalog, a refusal): the
    // length of the body a GET gets, and no body (a body is a stream error).
    for (host, status) in [("localhost", 200), ("nosuch.localhost", 404)] {
        let req = Request::head(format!("http://{host}/")).body(Full::new(Bytes::new())).unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), status, "{host}");
        let len: usize = resp.headers()["content-length"].to_str().unwrap().parse().unwrap();
        assert!(len > 0, "{host}: the GET body's length");
        assert!(resp.headers().contains_key("x-request-id"), "{host}");
        let body = resp.into_body().collect().await.map(|b| b.to_bytes());
        assert!(body.as_ref().is_ok_and(|b| b.is_empty()), "{host}: no body: {body:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_lists_solutions_with_their_state() {
    let wg = Wakegate::start(&format!(
        "[settings]\n{}{}",
        testapp_solution("app", "", "description = \"the test app\""),
        testapp_solution("other", "", "")
    ));
    let r = get(wg.public, "localhost", "/", &[("accept", "application/json")]).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["solutions"][0]["name"], "app");
    assert_eq!(v["solutions"][0]["state"], "cold");
    assert_eq!(v["solutions"][0]["description"], "the test app");
    assert!(v["solutions"][0]["last_request"].is_null());
    assert_eq!(wg.get("app", "/hello").await.status, 200);
    let r = get(wg.public, "localhost:7777", "/", &[("accept", "application/json")]).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["solutions"][0]["state"], "ready");
    assert_eq!(v["solutions"][0]["url"], "http://app.localhost:7777/");
    assert!(v["solutions"][0]["last_request"].as_f64().unwrap() > 1e9);
    assert_eq!(v["solutions"][1]["state"], "cold");
    let html = get(wg.public, "localhost", "/", &[("accept", "text/html")]).await.unwrap();
    assert!(html.body.contains("href=\"//app.localhost/\"") && html.body.contains(">ready<"), "{}", html.body);
    // The gateway's own pages are read-only.
    for (method, host, path) in
        [("POST", "localhost", "/"), ("DELETE", "localhost", "/"), ("POST", "app.localhost", "/.well-known/wakegate/status")]
    {
        let head = format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\naccept: application/json\r\ncontent-length: 0\r\n\r\n");
        let r = raw::request(wg.public, head.as_bytes()).await;
        raw::assert_refusal(&r, 405, "method_not_allowed");
        assert_eq!(r.header("allow"), "GET, HEAD", "{method} {host}{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_given_as_one_string_means_what_it_means_to_sh() {
    let wg = Wakegate::start(
        "[settings]\n\
         [[solution]]\nname = \"shelly\"\nprobe = \"/healthz\"\n\
         command = \"cd {dir} && WHO=shell; TESTAPP_STARTS=./starts python3 {testapp} --name $WHO --port {port}\"\n\
         [[solution]]\nname = \"quits\"\ncommand = \"echo starting; exit 3\"\n",
    );
    let r = wg.get("shelly", "/hello").await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "hello from shell\n"), "a variable set and expanded: {r:?}");
    assert!(wg.dir.path().join("starts").exists(), "cd, and an assignment for the command alone");
    let r = get(wg.public, "quits.localhost", "/", &[("accept", "application/json")]).await.unwrap();
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.body.contains("exit status: 3"), "the command's own exit status: {}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happened() {
    let wg = Wakegate::start(&config(""));
    for _ in 0..3 {
        assert_eq!(wg.get("app", "/hello").await.status, 200);
    }
    assert_eq!(wg.get("app", "/status/418").await.status, 418);
    assert_eq!(wg.get("ghost", "/").await.status, 404);
    let m = wg.metrics().await;
    let v = |s: &str| metric(&m, s);
    assert_eq!(v("wakegate_requests_total{solution=\"app\",method=\"GET\",code=\"200\"}"), Some(3.0), "{m}");
    assert_eq!(v("wakegate_requests_total{solution=\"app\",method=\"GET\",code=\"418\"}"), Some(1.0));
    assert_eq!(v("wakegate_wakeups_total{solution=\"app\",outcome=\"ready\"}"), Some(1.0));
    assert_eq!(v("wakegate_wakeup_duration_seconds_count{solution=\"app\"}"), Some(1.0));
    assert_eq!(v("wakegate_request_duration_seconds_count{solution=\"app\"}"), Some(4.0));
    assert_eq!(v("wakegate_ready_replicas{solution=\"app\"}"), Some(1.0));
    assert_eq!(v("wakegate_in_flight_requests{solution=\"app\"}"), Some(0.0));
    assert_eq!(v("wakegate_held_requests{solution=\"app\"}"), Some(0.0));
    assert_eq!(v("wakegate_rejected_requests_total{solution=\"\",reason=\"unknown_host\"}"), Some(1.0));
    // What the alerts count with increase() is there at 0 before it first happens.
    assert_eq!(v("wakegate_wakeups_total{solution=\"app\",outcome=\"timeout\"}"), Some(0.0));
    assert_eq!(v("wakegate_wakeups_total{solution=\"app\",outcome=\"failed\"}"), Some(0.0));
    assert_eq!(v("wakegate_rejected_requests_total{solution=\"app\",reason=\"hold_full\"}"), Some(0.0));
    assert_eq!(v("wakegate_rejected_requests_total{solution=\"app\",reason=\"hold_timeout\"}"), Some(0.0));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let last = v("wakegate_last_request_timestamp_seconds{solution=\"app\"}").unwrap();
    assert!((now - last).abs() < 10.0, "last request {last} vs now {now}");
    assert_eq!(v("wakegate_config_reloads_total{outcome=\"failure\"}"), Some(0.0), "there before the first reload");

    // The Prometheus text format unless OpenMetrics is asked for (as
    // Prometheus asks), each valid by its own rules.
    assert!(!m.contains("# EOF") && m.contains("# TYPE wakegate_requests_total counter\n"), "{m}");
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (scripts/install-deps test)");
    std::io::Write::write_all(&mut promtool.stdin.take().unwrap(), m.as_bytes()).unwrap();
    let check = promtool.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&check.stdout), String::from_utf8_lossy(&check.stderr));
    assert!(check.status.success(), "promtool check metrics: {said}\n{m}");
    let prometheus = "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
    let om = get(wg.admin, "localhost", "/metrics", &[("accept", prometheus)]).await.unwrap();
    assert!(om.header("content-type").starts_with("application/openmetrics-text"), "{om:?}");
    assert!(om.body.ends_with("# EOF\n") && om.body.contains("# TYPE wakegate_requests counter\n"), "OpenMetrics: {}", om.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_edits_apply_live_and_bad_edits_are_rejected() {
    let wg = Wakegate::start(&config("idle-timeout = \"30m\""));
    assert_eq!(wg.get("app", "/hello").await.status, 200);
    assert_eq!(wg.phase("app").await, "ready");
    assert_eq!(metric(&wg.metrics().await, "wakegate_config_last_reload_successful"), Some(1.0), "the config it started with");

    // A broken edit: rejected with its key, counted, and the old config keeps serving.
    wg.write_config(&config("idle-timeout = \"soon\""));
    let rejected = eventually(Duration::from_secs(5), || async {
        metric(&wg.metrics().await, "wakegate_config_reloads_total{outcome=\"failure\"}") == Some(1.0)
    })
    .await;
    assert!(rejected, "bad edit not counted; log:\n{}", wg.log());
    assert_eq!(metric(&wg.metrics().await, "wakegate_config_last_reload_successful"), Some(0.0));
    assert!(wg.log().contains("solution.app.idle-timeout"), "the log names the key:\n{}", wg.log());
    assert_eq!(wg.get("app", "/hello").await.status, 200);
    assert_eq!(wg.phase("app").await, "ready", "the old idle timeout still holds");

    // A good edit: a 1 s idle timeout puts the solution to sleep, no restart.
    let pid = wg.pid();
    wg.write_config(&config("idle-timeout = \"1s\""));
    let slept = eventually(Duration::from_secs(8), || async { wg.phase("app").await == "cold" }).await;
    assert!(slept, "idle timeout edit not applied; log:\n{}", wg.log());
    assert_eq!(wg.pid(), pid);
    let m = wg.metrics().await;
    assert_eq!(metric(&m, "wakegate_config_reloads_total{outcome=\"success\"}"), Some(1.0));
    assert_eq!(metric(&m, "wakegate_config_last_reload_successful"), Some(1.0));
    assert_eq!(metric(&m, "wakegate_scale_downs_total{solution=\"app\",reason=\"idle\"}"), Some(1.0));
}

/// A solution removed from the file while a request to it is under way:
/// the request ends normally, then the solution's process is stopped. An
/// empty file (an editor between truncating and writing) is not applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_solution_finishes_its_requests_and_an_empty_file_is_not_applied() {
    let both = format!("[settings]\n{}{}", testapp_solution("app", "", ""), testapp_solution("other", "", ""));
    let wg = Wakegate::start(&both);
    assert_eq!(wg.get("app", "/hello").await.status, 200);
    let pid = *wg.starts().first().expect("app started");

    // Emptied for a moment: refused, every solution still served.
    std::fs::write(wg.config_path(), "").unwrap();
    let refused = eventually(Duration::from_secs(5), || async { wg.log().contains("the file is empty") }).await;
    assert!(refused, "log:\n{}", wg.log());
    assert_eq!(wg.get("app", "/hello").await.status, 200, "still served after the empty edit");

    let public = wg.public;
    let slow = tokio::spawn(async move { get(public, "app.localhost", "/slow?ms=2500", &[]).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    wg.write_config(&format!("[settings]\n{}", testapp_solution("other", "", "")));
    let removed = eventually(Duration::from_secs(5), || async { wg.get("app", "/hello").await.status == 404 }).await;
    assert!(removed, "app no longer routed; log:\n{}", wg.log());
    assert!(wakegate_tests::alive(pid), "app's process still runs while its request is under way");
    let r = slow.await.unwrap().expect("an answer");
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "slow done\n"), "{r:?}; log:\n{}", wg.log());
    // Then it is stopped (within the gateway's 10 s housekeeping round).
    let stopped = eventually(Duration::from_secs(15), || async move { !wakegate_tests::alive(pid) }).await;
    assert!(stopped, "app's process outlived its last request; log:\n{}", wg.log());
    assert_eq!(wg.get("other", "/hello").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_every_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[settings]\nhold-timeout = \"0\"\nlisten = \"nowhere\"\n[[solution]]\nname = \"a\"\n").unwrap();
    let out = std::process::Command::new(wakegate_tests::bin()).args(["check", "--config"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in ["settings.hold-timeout", "settings.listen", "solution.a.command"] {
        assert!(err.contains(key), "{key} missing from:\n{err}");
    }
    let run = std::process::Command::new(wakegate_tests::bin()).args(["run", "--config"]).arg(&bad).output().unwrap();
    assert_eq!(run.status.code(), Some(64), "run refuses a bad config too");

    // Values that parse but could not work: a timeout shorter than 1 ms (shown
    // and acting as none), `PORT` (wakegate sets it), a bad variable name, a
    // fixed port that is the gateway's own or another solution's.
    let cmd = "command = \"sleep 60\"";
    let parsed =
        format!("[settings]\nhold-timeout = \"0.0001s\"\n[[solution]]\nname = \"a\"\n{cmd}\nenv = {{ PORT = \"9\", \"A B\" = \"1\" }}\n");
    let ports = format!(
        "[settings]\nlisten = \"127.0.0.1:23180\"\n[[solution]]\nname = \"a\"\n{cmd}\nport = 23180\n\
         [[solution]]\nname = \"b\"\n{cmd}\nport = 23181\n[[solution]]\nname = \"c\"\n{cmd}\nport = 23181\n"
    );
    for (config, expected) in [
        (
            parsed,
            &[
                ("settings.hold-timeout", "at least 1ms"),
                ("solution.a.env.PORT", "set by wakegate"),
                ("solution.a.env.A B", "not a variable name"),
            ][..],
        ),
        (ports, &[("solution.a.port", "settings.listen"), ("solution.c.port", "solution b's port")][..]),
    ] {
        let bad = dir.path().join("subtle.toml");
        std::fs::write(&bad, config).unwrap();
        let out = std::process::Command::new(wakegate_tests::bin()).args(["check", "--config"]).arg(&bad).output().unwrap();
        assert_eq!(out.status.code(), Some(64));
        let err = String::from_utf8_lossy(&out.stderr);
        for (key, why) in expected {
            assert!(err.lines().any(|l| l.contains(key) && l.contains(why)), "{key}: {why} missing from:\n{err}");
        }
    }

    let good = dir.path().join("good.toml");
    std::fs::write(&good, format!("[[solution]]\nname = \"a\"\ncommand = \"python3 {} --port {{port}}\"\n", testapp().display())).unwrap();
    let out = std::process::Command::new(wakegate_tests::bin()).args(["check", "--config"]).arg(&good).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/wakegate.toml");
    let out = std::process::Command::new(wakegate_tests::bin()).args(["check", "--config"]).arg(&example).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "the example config is valid: {}", String::from_utf8_lossy(&out.stderr));
}

/// A solution that states a longer body than it sends, then closes: the
/// client sees the cut, and the access log says the answer did not complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_the_solution_cuts_short_is_logged_as_not_completed() {
    let liar = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = liar.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = liar.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = vec![0u8; 8192];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello").await;
            });
        }
    });
    let wg = Wakegate::start(&format!("[settings]\n[[solution]]\nname = \"liar\"\nupstream = \"http://127.0.0.1:{port}\"\n"));
    for (method, body) in [("GET", ""), ("POST", "x")] {
        let req = Request::builder().method(method).uri("/short").header("host", "liar.localhost");
        let resp = wakegate_tests::send(wg.public, req.body(Full::new(Bytes::from_static(body.as_bytes()))).unwrap()).await.unwrap();
        assert_eq!(resp.status(), 200, "{method}");
        assert!(resp.into_body().collect().await.is_err(), "{method}: the client sees the body cut short");
    }
    let lines = || -> Vec<serde_json::Value> {
        wg.stdout().lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).filter(|l| l["uri"] == "/short").collect()
    };
    assert!(eventually(Duration::from_secs(5), || async { lines().len() == 2 }).await, "{}", wg.stdout());
    for l in lines() {
        assert_eq!((l["bytes"].as_u64(), l["completed"].as_bool()), (Some(5), Some(false)), "{l}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_upstream_is_never_started_or_stopped() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut app = std::process::Command::new("python3")
        .arg(testapp())
        .args(["--name", "fixed", "--port", &port.to_string()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let up = eventually(Duration::from_secs(10), || async move { tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() }).await;
    assert!(up);
    let wg = Wakegate::start(&format!(
        "[settings]\nidle-timeout = \"1s\"\nupstream-connect-timeout = \"1s\"\n[[solution]]\nname = \"fixed\"\nupstream = \"http://127.0.0.1:{port}\"\n"
    ));
    for _ in 0..3 {
        let r = wg.get("fixed", "/hello").await;
        assert_eq!(r.body, "hello from fixed\n");
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(wg.phase("fixed").await, "ready", "a fixed upstream never sleeps");
    assert!(app.try_wait().unwrap().is_none(), "wakegate left the upstream alone");
    let _ = app.kill();
    let _ = app.wait();

    // Gone: refused connections get 502 once `upstream-connect-timeout`
    // has passed, not after the hold-timeout (2 min) of a waking solution.
    for (method, body) in [("GET", ""), ("POST", "x")] {
        let started = std::time::Instant::now();
        let req = Request::builder().method(method).uri("/hello").header("host", "fixed.localhost");
        let req = req.body(Full::new(Bytes::from_static(body.as_bytes()))).unwrap();
        let r = wakegate_tests::read(wakegate_tests::send(wg.public, req).await.unwrap()).await.unwrap();
        let took = started.elapsed();
        assert_eq!(r.status.as_u16(), 502, "{method}: {r:?}");
        assert!(r.header("x-request-id").len() == 16, "{method}: {r:?}");
        assert!(took < Duration::from_secs(4), "{method}: 502 after {took:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_worker_gateway_with_tls_from_files_runs_one_thread() {
    // `workers = 1` means one thread, also while the certificate files are
    // polled: a second one makes every socket call on the request path dearer
    // (docs/benchmarks.md, "Tenth pass"). The access log has a thread of its
    // own: off here, as the benchmarks run it.
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let pair = rcgen::KeyPair::generate().unwrap();
    let made = rcgen::CertificateParams::new(vec!["*.localhost".to_string(), "localhost".to_string()]).unwrap().self_signed(&pair).unwrap();
    std::fs::write(&cert, made.pem()).unwrap();
    std::fs::write(&key, pair.serialize_pem()).unwrap();
    let wg = Wakegate::start(&format!(
        "[settings]\nworkers = 1\naccess-log = \"off\"\nssl-redirect = false\ntls-source = \"files\"\ntls-cert-file = \"{}\"\ntls-key-file = \"{}\"\n{}",
        cert.display(),
        key.display(),
        testapp_solution("app", "", "")
    ));
    assert!(eventually(Duration::from_secs(5), || async { wg.log().contains("loaded the certificate from files") }).await, "{}", wg.log());
    assert_eq!(wg.get("app", "/hello").await.status, 200);
    // A few polls of the files later:
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", wg.pid()))
        .unwrap()
        .flatten()
        .map(|t| std::fs::read_to_string(t.path().join("comm")).unwrap_or_default().trim().to_string())
        .collect();
    assert_eq!(threads.len(), 1, "threads of a workers = 1 gateway: {threads:?}");
}

/// The access log's lines at `path`, each parsed as JSON.
fn access_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}"))).collect()
}

fn access_file(path: &std::path::Path) -> Vec<serde_json::Value> {
    access_lines(&std::fs::read_to_string(path).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_a_json_line_per_request_and_follows_edits() {
    // `slow` takes 30 s to become ready: a browser sees the waiting page, a
    // script is held.
    let solutions =
        format!("{}{}", testapp_solution("app", "", ""), testapp_solution("slow", "--startup-delay 30", "hold-timeout = \"1s\""));
    let cfg = |dest: &str| format!("[settings]\naccess-log = \"{dest}\"\nclient-header-timeout = \"1s\"\n{solutions}");
    let wg = Wakegate::start(&cfg("{dir}/access.log"));
    let path = wg.dir.path().join("access.log");
    let a = wg.public;

    let hello =
        get(a, "app.localhost", "/hello?x=1", &[("user-agent", "probe/1"), ("referer", "http://localhost/")]).await.expect("an answer");
    assert_eq!(hello.status, 200);
    let unknown = get(a, "nope.localhost", "/", &[]).await.expect("an answer");
    assert_eq!(unknown.status, 404);
    let page = get(a, "slow.localhost", "/", &[("accept", "text/html")]).await.expect("an answer");
    assert_eq!(page.status, 503, "the waiting page");
    // A script that gives up while its request is held.
    let gave_up = tokio::time::timeout(Duration::from_millis(500), get(a, "slow.localhost", "/api", &[])).await;
    assert!(gave_up.is_err(), "slow is not ready yet: {gave_up:?}");
    let held_out = get(a, "slow.localhost", "/api", &[]).await.expect("an answer");
    assert_eq!(held_out.status, 503, "held for hold-timeout, then refused");
    let stream = tokio::net::TcpStream::connect(a).await.expect("the public listener");
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.expect("an HTTP/2 connection");
    tokio::spawn(conn);
    let h2 = send
        .send_request(Request::get("http://app.localhost/hello").body(Full::new(Bytes::new())).expect("a request"))
        .await
        .expect("an HTTP/2 answer");
    let h2_id = h2.headers()["x-request-id"].to_str().expect("a text request id").to_string();
    assert_eq!(h2.into_body().collect().await.expect("the body").to_bytes(), "hello from app\n");
    // A head that never ends: 408 from the connection's watchdog, before any request exists.
    let mut slow = tokio::net::TcpStream::connect(a).await.expect("the public listener");
    slow.write_all(b"GET / HTTP/1.1\r\nHost: app.localhost\r\n").await.expect("a partial head sent");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut answer)).await;
    assert!(answer.starts_with(b"HTTP/1.1 408"), "{}", String::from_utf8_lossy(&answer));

    assert!(eventually(Duration::from_secs(5), || async { access_file(&path).len() >= 7 }).await, "{:?}", access_file(&path));
    let lines = access_file(&path);
    assert_eq!(lines.len(), 7, "one line per request: {lines:#?}");
    let by_id = |id: &str| lines.iter().find(|l| l["request_id"] == id).unwrap_or_else(|| panic!("no line for {id}: {lines:#?}"));
    let l = by_id(hello.header("x-request-id"));
    for (key, want) in [
        ("client", "127.0.0.1"),
        ("method", "GET"),
        ("host", "app.localhost"),
        ("uri", "/hello?x=1"),
        ("protocol", "HTTP/1.1"),
        ("user_agent", "probe/1"),
        ("referer", "http://localhost/"),
        ("solution", "app"),
    ] {
        assert_eq!(l[key], want, "{key}: {l}");
    }
    assert_eq!((l["status"].as_u64(), l["bytes"].as_u64(), l["completed"].as_bool()), (Some(200), Some(15), Some(true)), "{l}");
    assert!(l["upstream"].as_str().is_some_and(|u| u.starts_with("127.0.0.1:")), "{l}");
    assert!(l.get("reason").is_none(), "{l}");
    // It was held while `app` started: the duration and the wait say so.
    let wait = l["wait_ms"].as_u64().unwrap_or_else(|| panic!("a held request's line has wait_ms: {l}"));
    assert!(l["duration_ms"].as_f64().is_some_and(|d| d >= wait as f64 && d > 1.0), "{l}");

    let l = by_id(unknown.header("x-request-id"));
    assert_eq!((l["status"].as_u64(), l["reason"].as_str()), (Some(404), Some("unknown_host")), "{l}");
    assert!(l.get("solution").is_none() && l.get("upstream").is_none(), "{l}");
    let l = by_id(page.header("x-request-id"));
    assert_eq!((l["status"].as_u64(), l["reason"].as_str(), l["solution"].as_str()), (Some(503), Some("waiting_page"), Some("slow")));
    let l = by_id(held_out.header("x-request-id"));
    assert_eq!((l["reason"].as_str(), l["solution"].as_str()), (Some("hold_timeout"), Some("slow")), "{l}");
    assert!(l["wait_ms"].as_u64().is_some_and(|w| w >= 900), "held for the whole hold-timeout: {l}");
    let l = lines.iter().find(|l| l["status"] == 499).unwrap_or_else(|| panic!("{lines:#?}"));
    assert_eq!((l["status"].as_u64(), l["reason"].as_str(), l["completed"].as_bool()), (Some(499), Some("client_closed"), Some(false)));
    assert_eq!(l["solution"], "slow");
    let l = by_id(&h2_id);
    assert_eq!((l["status"].as_u64(), l["protocol"].as_str(), l["bytes"].as_u64()), (Some(200), Some("HTTP/2.0"), Some(15)), "{l}");
    assert!(l.get("wait_ms").is_none(), "app was ready: {l}");
    let l = lines.iter().find(|l| l["status"] == 408).unwrap_or_else(|| panic!("{lines:#?}"));
    assert_eq!((l["reason"].as_str(), l["client"].as_str()), (Some("client_timeout"), Some("127.0.0.1")), "{l}");
    assert!(l.get("uri").is_none(), "no request was read: {l}");
    assert_eq!(l["request_id"].as_str().map(str::len), Some(16), "the id the 408 carried: {l}");

    // Off, live: no more lines.
    let reloads = |n: f64| {
        let wg = &wg;
        async move { metric(&wg.metrics().await, "wakegate_config_reloads_total{outcome=\"success\"}") == Some(n) }
    };
    wg.write_config(&cfg("off"));
    assert!(eventually(Duration::from_secs(5), || reloads(1.0)).await, "{}", wg.log());
    assert_eq!(wg.get("app", "/hello").await.status, 200);
    // Another destination, live.
    wg.write_config(&cfg("{dir}/second.log"));
    assert!(eventually(Duration::from_secs(5), || reloads(2.0)).await, "{}", wg.log());
    let second = wg.dir.path().join("second.log");
    let r = wg.get("app", "/hello").await;
    assert!(eventually(Duration::from_secs(5), || async { access_file(&second).len() == 1 }).await);
    assert_eq!(access_file(&second)[0]["request_id"], r.header("x-request-id"));
    // A destination that is not a file path is refused, by key; the last
    // good one keeps logging.
    wg.write_config(&cfg("access.log"));
    assert!(
        eventually(Duration::from_secs(5), || async { wg.log().contains("settings.access-log") }).await,
        "the refusal names the key: {}",
        wg.log()
    );
    wg.get("app", "/hello").await;
    assert!(eventually(Duration::from_secs(5), || async { access_file(&second).len() == 2 }).await);
    assert_eq!(access_file(&path).len(), 7, "nothing was logged while the log was off or elsewhere");
    // Query strings left out, live.
    wg.write_config(&cfg("{dir}/second.log").replace("[settings]\n", "[settings]\naccess-log-query = \"drop\"\n"));
    assert!(eventually(Duration::from_secs(5), || reloads(3.0)).await, "{}", wg.log());
    assert_eq!(wg.get("app", "/hello?token=s3cret").await.status, 200);
    assert!(eventually(Duration::from_secs(5), || async { access_file(&second).len() == 3 }).await);
    assert_eq!(access_file(&second)[2]["uri"], "/hello");
    assert!(!std::fs::read_to_string(&second).unwrap_or_default().contains("s3cret"));
    assert_eq!(metric(&wg.metrics().await, "wakegate_access_log_dropped_lines_total"), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_goes_to_stdout_by_default() {
    let wg = Wakegate::start(&config(""));
    let r = wg.get("app", "/hello").await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            access_lines(&wg.stdout()).iter().any(|l| l["request_id"] == r.header("x-request-id"))
        })
        .await,
        "stdout: {}",
        wg.stdout()
    );
    assert!(!wg.log().contains(r.header("x-request-id")), "the diagnostic log (stderr) has no access lines");
}
