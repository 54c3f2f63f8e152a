//! Scale to zero and back: cold starts under load, holding and its limits,
//! idle scale-down (and what prevents it), crashes, failed starts, shutdown.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use wakegate_tests::{Wakegate, alive, eventually, get, metric, proc_stat, testapp_solution};

fn one(args: &str, extra: &str) -> String {
    format!("[settings]\n{}", testapp_solution("app", args, extra))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_start_under_200_concurrent_requests_starts_once_and_answers_all() {
    let wg = Wakegate::start(&one("--startup-delay 1.5", ""));
    let addr = wg.public;
    let tasks: Vec<_> =
        (0..200).map(|i| tokio::spawn(async move { get(addr, "app.localhost", &format!("/hello?i={i}"), &[]).await })).collect();
    let mut ok = 0;
    for t in tasks {
        let r = t.await.unwrap().unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body, "hello from app\n");
        ok += 1;
    }
    assert_eq!(ok, 200);
    assert_eq!(wg.starts().len(), 1, "started exactly once; log:\n{}", wg.log());
    let m = wg.metrics().await;
    assert_eq!(metric(&m, "wakegate_wakeups_total{solution=\"app\",outcome=\"ready\"}"), Some(1.0));
    assert_eq!(metric(&m, "wakegate_requests_total{solution=\"app\",method=\"GET\",code=\"200\"}"), Some(200.0));
    assert_eq!(metric(&m, "wakegate_held_requests{solution=\"app\"}"), Some(0.0));
    let wake = metric(&m, "wakegate_wakeup_duration_seconds_sum{solution=\"app\"}").unwrap();
    assert!(wake >= 1.5, "the wake-up took at least the startup delay: {wake}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_request_reaches_the_solution_with_its_target_and_headers_intact() {
    // Held requests keep a copy of their head (not the connection's read
    // buffer): what arrives must be exactly what was sent, rewritten as usual.
    let wg = Wakegate::start(&one("--startup-delay 1", ""));
    let long = "v".repeat(3000);
    let hdrs = [
        ("x-request-id", "held-7"),
        ("authorization", "Bearer s3cret"),
        ("x-many", "one"),
        ("x-long", long.as_str()),
        ("accept", "application/json"),
    ];
    let r = get(wg.public, "app.localhost", "/headers?q=caf%C3%A9&n=2", &hdrs).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-request-id"), "held-7");
    let seen: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(seen["_path"], "/headers?q=caf%C3%A9&n=2");
    assert_eq!(seen["x-request-id"], "held-7");
    assert_eq!(seen["authorization"], "Bearer s3cret");
    assert_eq!(seen["x-many"], "one");
    assert_eq!(seen["x-long"], long.as_str());
    assert_eq!(seen["accept"], "application/json");
    assert_eq!(seen["host"], "app.localhost");
    assert_eq!(seen["x-forwarded-host"], "app.localhost");
    let m = wg.metrics().await;
    assert_eq!(metric(&m, "wakegate_wakeups_total{solution=\"app\",outcome=\"ready\"}"), Some(1.0), "it was held: {m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_timeout_answers_503_with_retry_after() {
    let wg = Wakegate::start(&one("--startup-delay 6", "hold-timeout = \"1s\""));
    let t0 = Instant::now();
    let r = get(wg.public, "app.localhost", "/hello", &[("accept", "application/json")]).await.unwrap();
    let took = t0.elapsed();
    assert_eq!(r.status, 503);
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(4), "held for the hold timeout: {took:?}");
    let retry: u64 = r.header("retry-after").parse().expect("Retry-After in whole seconds");
    assert!((1..=60).contains(&retry));
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["error"], "hold_timeout");
    assert!(v["message"].as_str().unwrap().contains("did not become ready within 1s"), "{v}");
    let m = wg.metrics().await;
    assert_eq!(metric(&m, "wakegate_rejected_requests_total{solution=\"app\",reason=\"hold_timeout\"}"), Some(1.0), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_hold_queue_answers_503_at_once_and_the_held_ones_still_succeed() {
    let wg = Wakegate::start(&one("--startup-delay 3", "max-held-requests = 2"));
    let addr = wg.public;
    let held: Vec<_> = (0..2).map(|_| tokio::spawn(async move { get(addr, "app.localhost", "/hello", &[]).await })).collect();
    let both_held = eventually(Duration::from_secs(3), || async {
        metric(&wg.metrics().await, "wakegate_held_requests{solution=\"app\"}") == Some(2.0)
    })
    .await;
    assert!(both_held);
    let t0 = Instant::now();
    let r = get(addr, "app.localhost", "/hello", &[]).await.unwrap();
    assert_eq!(r.status, 503);
    assert!(t0.elapsed() < Duration::from_secs(1), "refused at once");
    assert!(r.header("retry-after").parse::<u64>().is_ok());
    assert!(r.body.contains("too many requests are waiting for app"), "{}", r.body);
    for h in held {
        assert_eq!(h.await.unwrap().unwrap().status, 200);
    }
    let m = wg.metrics().await;
    assert_eq!(metric(&m, "wakegate_rejected_requests_total{solution=\"app\",reason=\"hold_full\"}"), Some(1.0));
}

/// A client that gives up while its request is held takes the request out
/// of the queue (its place is free for others); one that stays is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_closes_while_held_leaves_the_queue() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let wg = Wakegate::start(&one("--startup-delay 3", ""));
    let held = |n: f64| {
        let wg = &wg;
        async move { metric(&wg.metrics().await, "wakegate_held_requests{solution=\"app\"}") == Some(n) }
    };
    let mut leaving = tokio::net::TcpStream::connect(wg.public).await.expect("connect");
    let mut staying = tokio::net::TcpStream::connect(wg.public).await.expect("connect");
    for s in [&mut leaving, &mut staying] {
        s.write_all(b"GET /hello HTTP/1.1\r\nhost: app.localhost\r\n\r\n").await.expect("send");
    }
    assert!(eventually(Duration::from_secs(3), || held(2.0)).await, "both held; log:\n{}", wg.log());
    drop(leaving);
    assert!(eventually(Duration::from_secs(2), || held(1.0)).await, "the closed one left the queue; log:\n{}", wg.log());
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 4096];
        while !answer.ends_with(b"hello from app\n") {
            match staying.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
        }
    });
    assert!(read.await.is_ok(), "the staying client is answered");
    assert!(answer.starts_with(b"HTTP/1.1 200 OK\r\n"), "{}", String::from_utf8_lossy(&answer));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_solution_is_stopped_and_the_next_request_starts_it_again() {
    let wg = Wakegate::start(&one("", "idle-timeout = \"2s\""));
    assert_eq!(wg.get("app", "/hello").await.status, 200);
    let first = wg.starts()[0];
    let slept = eventually(Duration::from_secs(6), || async { wg.phase("app").await == "cold" }).await;
    assert!(slept, "log:\n{}", wg.log());
    assert!(eventually(Duration::from_secs(2), || async { !alive(first) }).await, "the process is gone");
    let m = wg.metrics().await;
    assert_eq!(metric(&m, "wakegate_scale_downs_total{solution=\"app\",reason=\"idle\"}"), Some(1.0));
    assert_eq!(metric(&m, "wakegate_ready_replicas{solution=\"app\"}"), Some(0.0));
    let r = wg.get("app", "/hello").await;
    assert_eq!(r.status, 200);
    assert_eq!(wg.starts().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_request_in_flight_keeps_the_solution_awake() {
    let wg = Wakegate::start(&one("", "idle-timeout = \"2s\""));
    assert_eq!(wg.get("app", "/hello").await.status, 200);
    let addr = wg.public;
    let slow = tokio::spawn(async move { get(addr, "app.localhost", "/slow?ms=5000", &[]).await });
    tokio::time::sleep(Duration::from_millis(4000)).await;
    assert_eq!(wg.phase("app").await, "ready", "past the idle timeout with a request in flight");
    let r = slow.await.unwrap().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "slow done\n");
    assert_eq!(wg.starts().len(), 1);
    let m = wg.metrics().await;
    assert_eq!(metric(&m, "wakegate_scale_downs_total{solution=\"app\",reason=\"idle\"}"), None, "{m}");
    let slept = eventually(Duration::from_secs(6), || async { wg.phase("app").await == "cold" }).await;
    assert!(slept, "sleeps once the request is done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_solution_that_dies_is_started_again_by_the_next_request() {
    let wg = Wakegate::start(&one("", ""));
    assert_eq!(wg.get("app", "/hello").await.status, 200);
    let pid = wg.starts()[0];
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let cold = eventually(Duration::from_secs(5), || async { wg.phase("app").await == "cold" }).await;
    assert!(cold);
    let r = wg.get("app", "/hello").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(wg.starts().len(), 2);
    let m = wg.metrics().await;
    assert_eq!(metric(&m, "wakegate_scale_downs_total{solution=\"app\",reason=\"exited\"}"), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_solution_that_cannot_start_gets_a_clear_503_and_backs_off() {
    let wg = Wakegate::start(&one("--fail-start", ""));
    let r = get(wg.public, "app.localhost", "/hello", &[]).await.unwrap();
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.body.contains("app could not be started"), "{}", r.body);
    assert!(r.body.contains("exited during start"), "{}", r.body);
    assert!(!r.body.contains("boom"), "the solution's stderr never reaches the client");
    assert!(r.header("retry-after").parse::<u64>().unwrap() >= 1);
    // At once again: refused from the back-off, without a second start.
    let r = get(wg.public, "app.localhost", "/hello", &[]).await.unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(wg.log().matches("started /bin/sh").count(), 1, "backs off instead of restarting at once");
    assert!(wg.log().contains("boom: cannot start"), "stderr goes to the log");
    let m = wg.metrics().await;
    assert_eq!(metric(&m, "wakegate_wakeups_total{solution=\"app\",outcome=\"failed\"}"), Some(1.0));
    assert_eq!(metric(&m, "wakegate_rejected_requests_total{solution=\"app\",reason=\"wake_failed\"}"), Some(2.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_slow_request_finish_and_leaves_no_child() {
    let mut wg = Wakegate::start(&one("", ""));
    assert_eq!(wg.get("app", "/hello").await.status, 200);
    let pid = wg.starts()[0];
    let addr = wg.public;
    let slow = tokio::spawn(async move { get(addr, "app.localhost", "/slow?ms=2000", &[]).await });
    // The same over HTTP/2: the stream runs within its connection's task,
    // which shuts down gracefully around it.
    let slow_h2 = tokio::spawn(async move {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("the public listener");
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.expect("an HTTP/2 connection");
        tokio::spawn(conn);
        let req = Request::get("http://app.localhost/slow?ms=2000").body(Full::new(Bytes::new())).expect("a request");
        let resp = send.send_request(req).await.expect("an HTTP/2 answer");
        (resp.status(), resp.into_body().collect().await.expect("the whole body").to_bytes())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // While the requests drain, the admin listener still answers: not ready,
    // and its metrics readable.
    let admin = wg.admin;
    let during = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let ready = get(admin, "admin", "/readyz", &[]).await.expect("/readyz while draining");
        let metrics = get(admin, "admin", "/metrics", &[]).await.expect("/metrics while draining");
        (ready, metrics)
    });
    let status = tokio::task::block_in_place(|| wg.terminate(Duration::from_secs(20)));
    let (ready, metrics) = during.await.unwrap();
    assert_eq!((ready.status.as_u16(), ready.body.as_str()), (503, "draining\n"), "{ready:?}");
    assert!(metrics.status == 200 && metrics.body.contains("wakegate_requests_total"), "{metrics:?}");
    let r = slow.await.unwrap().unwrap();
    assert_eq!(r.status, 200, "the request in flight completed");
    assert_eq!(r.body, "slow done\n");
    let (h2_status, h2_body) = slow_h2.await.expect("the HTTP/2 client");
    assert_eq!((h2_status.as_u16(), &h2_body[..]), (200, &b"slow done\n"[..]), "the HTTP/2 stream in flight completed");
    assert!(status.success(), "exit status {status:?}; log:\n{}", wg.log());
    assert!(!alive(pid), "no child survives");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "no longer listening");
}

/// A solution whose command is a shell that starts the app as a child of
/// its own: the app is wakegate's grandchild, out of reach of a parent-death
/// signal (`starts` records the app's pid).
const SHELL_PARENT: &str = "[settings]\n[[solution]]\nname = \"app\"\n\
    command = [\"/bin/sh\", \"-c\", \"python3 {testapp} --name app --port {port} & wait\"]\n\
    probe = \"/healthz\"\nenv = { TESTAPP_STARTS = \"{dir}/starts\" }\n";

/// Kills a gateway running `config` outright once its solution answered;
/// the app must die with it.
async fn the_app_dies_with_a_gateway_killed_by_sigkill(config: &str) {
    let mut wg = Wakegate::start(config);
    assert_eq!(wg.get("app", "/hello").await.status, 200);
    let app = wg.starts()[0];
    let addr = wg.public;
    let status = tokio::task::block_in_place(|| wg.kill());
    assert!(!status.success(), "{status:?}");
    assert!(eventually(Duration::from_secs(5), || async { !alive(app) }).await, "the app (pid {app}) lingers; log:\n{}", wg.log());
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "no longer listening");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_solution_does_not_outlive_a_gateway_killed_by_sigkill() {
    the_app_dies_with_a_gateway_killed_by_sigkill(&one("", "")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_solution_started_does_not_outlive_a_gateway_killed_by_sigkill() {
    the_app_dies_with_a_gateway_killed_by_sigkill(SHELL_PARENT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_a_solution_started_does_not_outlive_a_gateway_killed_by_sigkill() {
    // `setsid`: the app leaves the solution's process group and session.
    the_app_dies_with_a_gateway_killed_by_sigkill(&SHELL_PARENT.replace("\"python3 {testapp}", "\"setsid python3 {testapp}")).await;
}

/// A solution whose start script runs `server` (a shell list item: ends in
/// `&` or `;`) in the background and exits 3 after three seconds: the solution has exited, and what the script
/// started must not linger on.
async fn an_exited_command_leaves_nothing_running(server: &str) {
    let cfg = format!(
        "[settings]\n[[solution]]\nname = \"app\"\n\
        command = [\"/bin/sh\", \"-c\", \"{server} sleep 3; exit 3\"]\n\
        probe = \"/healthz\"\nenv = {{ TESTAPP_STARTS = \"{{dir}}/starts\" }}\n"
    );
    let wg = Wakegate::start(&cfg);
    assert_eq!(wg.get("app", "/hello").await.status, 200);
    let app = wg.starts()[0];
    assert!(eventually(Duration::from_secs(5), || async { !alive(app) }).await, "the server (pid {app}) lingers; log:\n{}", wg.log());
    assert!(eventually(Duration::from_secs(5), || async { wg.phase("app").await == "cold" }).await, "{}", wg.log());
    assert!(wg.log().contains("exit status: 3"), "{}", wg.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_an_exited_command_left_running_is_stopped_with_it() {
    an_exited_command_leaves_nothing_running("python3 {testapp} --name app --port {port} &").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_an_exited_command_left_running_is_stopped_with_it() {
    // Daemonized (double fork + setsid): in no group of ours, its parent gone.
    an_exited_command_leaves_nothing_running("(setsid python3 {testapp} --name app --port {port} &);").await;
}

/// The guard wakegate started for its solution: its child whose command
/// line runs `wakegate guard`.
fn guard_of(gateway: u32) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let ppid: u32 = proc_stat(pid)?.get(1)?.parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let is_guard = cmdline.split(|b| *b == 0).any(|arg| arg == b"guard");
        (ppid == gateway && is_guard).then_some(pid)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_sent_to_the_guard_alone_stops_the_solution() {
    // An operator's `kill PID` of the guard (not of the group): the command
    // stops as on wakegate's own stop, and the next request wakes it again.
    let wg = Wakegate::start(SHELL_PARENT);
    assert_eq!(wg.get("app", "/hello").await.status, 200);
    let app = wg.starts()[0];
    let guard = guard_of(wg.pid()).unwrap_or_else(|| panic!("no guard below pid {}; log:\n{}", wg.pid(), wg.log()));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(guard), nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(eventually(Duration::from_secs(5), || async { !alive(app) }).await, "the app (pid {app}) lingers; log:\n{}", wg.log());
    assert!(eventually(Duration::from_secs(5), || async { !alive(guard) }).await, "the guard (pid {guard}) lingers; log:\n{}", wg.log());
    assert!(eventually(Duration::from_secs(5), || async { wg.phase("app").await == "cold" }).await, "{}", wg.log());
    assert!(eventually(Duration::from_secs(5), || async { wg.log().contains("SIGTERM from pid") }).await, "{}", wg.log());
    assert_eq!(wg.get("app", "/hello").await.status, 200, "woken again; log:\n{}", wg.log());
    assert_eq!(wg.starts().len(), 2, "{}", wg.log());
}

/// The one child of `parent`, by /proc.
fn child_of(parent: i32) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        (proc_stat(pid)?.get(1)?.parse::<i32>().ok()? == parent).then_some(pid)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_from_an_ancestor_pid_namespace_stops_the_solution() {
    // wakegate in a pid namespace of its own, as in a container; the
    // operator's `kill` comes from the host's namespace, so the guard sees
    // no sender pid (0). It is still a stop from outside: passed on.
    let wg = Wakegate::start_under(&["unshare", "--pid", "--fork", "--kill-child", "--mount-proc"], SHELL_PARENT);
    assert_eq!(wg.get("app", "/hello").await.status, 200);
    let gateway = child_of(wg.pid() as i32).unwrap_or_else(|| panic!("no wakegate below unshare; log:\n{}", wg.log()));
    let guard = guard_of(gateway as u32).unwrap_or_else(|| panic!("no guard below pid {gateway}; log:\n{}", wg.log()));
    let shell = child_of(guard).unwrap_or_else(|| panic!("no command below the guard; log:\n{}", wg.log()));
    let app = child_of(shell).unwrap_or_else(|| panic!("no app below the shell; log:\n{}", wg.log()));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(guard), nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(eventually(Duration::from_secs(5), || async { !alive(app) }).await, "the app (pid {app}) lingers; log:\n{}", wg.log());
    assert!(eventually(Duration::from_secs(5), || async { !alive(guard) }).await, "the guard lingers; log:\n{}", wg.log());
    assert!(eventually(Duration::from_secs(5), || async { wg.log().contains("SIGTERM from pid 0") }).await, "{}", wg.log());
    assert!(eventually(Duration::from_secs(5), || async { wg.phase("app").await == "cold" }).await, "{}", wg.log());
    assert_eq!(wg.get("app", "/hello").await.status, 200, "woken again; log:\n{}", wg.log());
    // unshare blocks SIGTERM while it waits: stop wakegate itself, and unshare follows.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(gateway), nix::sys::signal::Signal::SIGTERM).unwrap();
    let unshare = wg.pid() as i32;
    assert!(eventually(Duration::from_secs(10), || async { !alive(unshare) }).await, "{}", wg.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_solution_stopped_with_the_gateway_leaves_nothing_behind() {
    // A stop signals the command's whole group: the guard between gateway
    // and command waits for the command instead of taking it down.
    let mut wg = Wakegate::start(SHELL_PARENT);
    assert_eq!(wg.get("app", "/hello").await.status, 200);
    let app = wg.starts()[0];
    let status = tokio::task::block_in_place(|| wg.terminate(Duration::from_secs(20)));
    assert!(status.success(), "{status:?}; log:\n{}", wg.log());
    assert!(eventually(Duration::from_secs(5), || async { !alive(app) }).await, "the app (pid {app}) lingers; log:\n{}", wg.log());
    // Gracefully: the app exited on SIGTERM, nothing needed SIGKILL.
    assert!(!wg.log().contains("sending SIGKILL"), "{}", wg.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_released_after_a_wake_are_paced_by_the_concurrency_limit() {
    let wg = Wakegate::start(&one("--startup-delay 1", "max-concurrent-requests = 2"));
    let addr = wg.public;
    let t0 = Instant::now();
    let held: Vec<_> = (0..6).map(|_| tokio::spawn(async move { get(addr, "app.localhost", "/slow?ms=500", &[]).await })).collect();
    for h in held {
        assert_eq!(h.await.unwrap().unwrap().status, 200);
    }
    // Six half-second requests, two at a time, after a one-second start: at
    // least three rounds. (A lower bound: no machine makes it shorter.)
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(2400), "released all at once: {took:?}");
    assert_eq!(wg.starts().len(), 1);

    // A live edit applies to the next requests, the solution up all along.
    wg.write_config(&one("--startup-delay 1", "max-concurrent-requests = 1"));
    let applied = eventually(Duration::from_secs(5), || async { wg.log().contains("configuration reloaded") }).await;
    assert!(applied, "log:\n{}", wg.log());
    let t0 = Instant::now();
    let four: Vec<_> = (0..4).map(|_| tokio::spawn(async move { get(addr, "app.localhost", "/slow?ms=400", &[]).await })).collect();
    for h in four {
        assert_eq!(h.await.unwrap().unwrap().status, 200);
    }
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(1550), "one at a time after the edit: {took:?}");
    assert_eq!(wg.starts().len(), 1, "not restarted for the edit");
}
