//! Limits as a client meets them: rate limits per client and per solution (and
//! who "the client" is behind trusted proxies or the PROXY protocol), the
//! connection limit, body size and pace, the upstream response timeout, live
//! edits of a limit, and the refusal metrics. Several clients are simulated by
//! binding the client socket to different addresses of 127/8.

mod raw;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use raw::{End, assert_refusal, connect_from, exchange, exchange_on, get_from, get_request, read_exchange, records};
use tokio::io::AsyncWriteExt;
use wakegate_tests::{Wakegate, eventually, metric, testapp_solution};

const A: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const B: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
const JSON: (&str, &str) = ("accept", "application/json");

/// Global `settings`, and one testapp solution `app` with `args` and per-solution `extra` keys.
fn config(settings: &str, args: &str, extra: &str) -> String {
    format!("[settings]\n{settings}\n{}", testapp_solution("app", args, extra))
}

fn rejected(m: &str, solution: &str, reason: &str) -> Option<f64> {
    metric(m, &format!("wakegate_rejected_requests_total{{solution=\"{solution}\",reason=\"{reason}\"}}"))
}

/// Wakes `app` (from 127.0.0.1) so later timings do not include a cold start.
async fn warm(wg: &Wakegate) {
    let r = wg.get("app", "/hello").await;
    assert_eq!(r.status, 200, "{r:?}; log:\n{}", wg.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_rate_gets_429_with_retry_after_and_succeeds_after_waiting() {
    let wg = Wakegate::start(&config("rate-limit-rps = 1\nrate-limit-burst = 3", "", ""));
    warm(&wg).await;
    for i in 0..3 {
        let r = get_from(wg.public, A, "app.localhost", "/hello", &[]).await;
        assert_eq!(r.status, 200, "request {i} is within the burst: {r:?}");
    }
    let r = get_from(wg.public, A, "app.localhost", "/hello", &[JSON]).await;
    assert_refusal(&r, 429, "rate_limited");
    let retry: u64 = r.header("retry-after").parse().expect("Retry-After in whole seconds");
    assert_eq!(retry, 1, "one request's worth at 1 rps: {r:?}");
    assert_eq!(r.header("ratelimit-policy"), "\"client\";q=3;w=3", "a burst of 3 refills in 3 s");
    assert_eq!(r.header("ratelimit"), format!("\"client\";r=0;t={retry}"));

    let other = get_from(wg.public, B, "app.localhost", "/hello", &[]).await;
    assert_eq!(other.status, 200, "another client is unaffected: {other:?}");

    tokio::time::sleep(Duration::from_secs(retry)).await;
    let r = get_from(wg.public, A, "app.localhost", "/hello", &[]).await;
    assert_eq!(r.status, 200, "allowed again after Retry-After: {r:?}");

    let m = wg.metrics().await;
    assert_eq!(rejected(&m, "app", "rate_limited"), Some(1.0), "{m}");
    assert_eq!(metric(&m, "wakegate_requests_total{solution=\"app\",method=\"GET\",code=\"429\"}"), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_rate_limit_follows_x_forwarded_for() {
    let wg = Wakegate::start(&config("trusted-proxies = \"127.0.0.0/8\"\nrate-limit-rps = 1\nrate-limit-burst = 2", "", ""));
    warm(&wg).await;
    let one = [("x-forwarded-for", "198.51.100.1")];
    for _ in 0..2 {
        assert_eq!(get_from(wg.public, A, "app.localhost", "/hello", &one).await.status, 200);
    }
    assert_eq!(get_from(wg.public, A, "app.localhost", "/hello", &one).await.status, 429, "198.51.100.1 is over its rate");

    // Another forwarded client through the same proxy has its own bucket, and
    // the solution sees the chain extended with the proxy.
    let r = get_from(wg.public, A, "app.localhost", "/headers", &[("x-forwarded-for", "198.51.100.2")]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["x-forwarded-for"], "198.51.100.2, 127.0.0.2");

    // The same client through another trusted proxy, or behind a further trusted hop, is still limited.
    assert_eq!(get_from(wg.public, B, "app.localhost", "/hello", &one).await.status, 429);
    let chain = [("x-forwarded-for", "198.51.100.1, 127.0.0.9")];
    assert_eq!(get_from(wg.public, A, "app.localhost", "/hello", &chain).await.status, 429, "trusted hops are skipped");

    let m = wg.metrics().await;
    assert_eq!(rejected(&m, "app", "rate_limited"), Some(3.0), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_an_untrusted_peer_a_forged_x_forwarded_for_changes_nothing() {
    let wg = Wakegate::start(&config("rate-limit-rps = 1\nrate-limit-burst = 2", "", ""));
    warm(&wg).await;
    for _ in 0..2 {
        assert_eq!(get_from(wg.public, A, "app.localhost", "/hello", &[("x-forwarded-for", "198.51.100.1")]).await.status, 200);
    }
    for xff in ["198.51.100.2", "203.0.113.9, 198.51.100.3", ""] {
        let extra: &[(&str, &str)] = if xff.is_empty() { &[] } else { &[("x-forwarded-for", xff)] };
        let r = get_from(wg.public, A, "app.localhost", "/hello", extra).await;
        assert_eq!(r.status, 429, "X-Forwarded-For {xff:?} from an untrusted peer is still 127.0.0.2: {r:?}");
    }
    let r = get_from(wg.public, B, "app.localhost", "/headers", &[("x-forwarded-for", "198.51.100.1")]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["x-forwarded-for"], "127.0.0.3", "the forged chain is replaced by the peer");
    let m = wg.metrics().await;
    assert_eq!(rejected(&m, "app", "rate_limited"), Some(3.0), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_solution_rate_limit_applies_across_clients_and_only_to_its_solution() {
    let wg = Wakegate::start(&format!(
        "[settings]\n{}{}",
        testapp_solution("app", "", "solution-rate-limit-rps = 2"),
        testapp_solution("other", "", "")
    ));
    warm(&wg).await;
    assert_eq!(wg.get("other", "/hello").await.status, 200);
    // The warm-up took a token: let the bucket (2 tokens, 0.5 s each) fill again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get_from(wg.public, A, "app.localhost", "/hello", &[]).await.status, 200);
    assert_eq!(get_from(wg.public, B, "app.localhost", "/hello", &[]).await.status, 200);
    let r = get_from(wg.public, B, "app.localhost", "/hello", &[JSON]).await;
    assert_refusal(&r, 429, "rate_limited");
    assert!(r.header("retry-after").parse::<u64>().is_ok_and(|s| s >= 1), "{r:?}");
    assert_eq!(r.header("ratelimit-policy"), "\"solution\";q=2;w=1");
    let r = get_from(wg.public, IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4)), "app.localhost", "/hello", &[]).await;
    assert_eq!(r.status, 429, "a third client shares the solution's bucket: {r:?}");
    let r = get_from(wg.public, A, "other.localhost", "/hello", &[]).await;
    assert_eq!(r.status, 200, "the override is app's alone: {r:?}");
    let m = wg.metrics().await;
    assert_eq!(rejected(&m, "app", "rate_limited"), Some(2.0), "{m}");
    assert_eq!(rejected(&m, "other", "rate_limited"), None);
}

/// A PROXY protocol v2 header (PROXY command, TCP over IPv4).
fn proxy_v2(src: [u8; 4], sport: u16) -> Vec<u8> {
    let mut b = b"\r\n\r\n\x00\r\nQUIT\n".to_vec();
    b.extend_from_slice(&[0x21, 0x11, 0, 12]);
    b.extend_from_slice(&src);
    b.extend_from_slice(&[127, 0, 0, 1]);
    b.extend_from_slice(&sport.to_be_bytes());
    b.extend_from_slice(&80u16.to_be_bytes());
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_v1_and_v2_name_the_client_and_a_connection_without_one_is_refused() {
    let wg = Wakegate::start(&config("proxy-protocol = true", "", ""));
    let request = get_request("app.localhost", "/headers", &[]);

    let v1 = [b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 80\r\n".as_slice(), &request].concat();
    let ex = exchange(wg.public, &v1).await;
    assert_eq!(ex.one().status, 200, "{ex:?}; log:\n{}", wg.log());
    assert_eq!(ex.one().json()["x-forwarded-for"], "203.0.113.7");

    let v2 = [proxy_v2([198, 51, 100, 9], 40001).as_slice(), &request].concat();
    let ex = exchange(wg.public, &v2).await;
    assert_eq!(ex.one().status, 200, "{ex:?}");
    assert_eq!(ex.one().json()["x-forwarded-for"], "198.51.100.9");

    // LOCAL (a load balancer's health check): the socket peer stays the client.
    let mut local = b"\r\n\r\n\x00\r\nQUIT\n".to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    let ex = exchange(wg.public, &[local.as_slice(), &request].concat()).await;
    assert_eq!(ex.one().json()["x-forwarded-for"], "127.0.0.1", "{ex:?}");

    let ex = exchange(wg.public, &get_request("app.localhost", "/hello", &[])).await;
    assert!(ex.end.closed(), "a connection without a PROXY header is closed: {ex:?}");
    assert!(ex.responses.is_empty() && ex.rest.is_empty(), "and gets no HTTP answer: {ex:?}");

    let m = wg.metrics().await;
    assert_eq!(rejected(&m, "", "proxy_protocol"), Some(1.0), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_connection_from_one_address_gets_429_and_close_while_another_address_connects() {
    let wg = Wakegate::start(&config("limit-connections = 2", "", ""));
    warm(&wg).await;
    let hello = get_request("app.localhost", "/hello", &[]);
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut s = connect_from(wg.public, A).await.unwrap();
        let ex = exchange_on(&mut s, &hello).await;
        assert_eq!((ex.statuses(), ex.end), (vec![200], End::Open), "kept alive: {ex:?}");
        open.push(s);
    }
    let mut third = connect_from(wg.public, A).await.unwrap();
    let ex = exchange_on(&mut third, &hello).await;
    assert_eq!(ex.one().status, 429, "{ex:?}");
    assert!(ex.one().header("retry-after").parse::<u64>().is_ok(), "{ex:?}");
    let id = ex.one().header("x-request-id");
    assert!(!id.is_empty() && ex.one().body.contains(&format!("too many connections from your address (request id {id})")), "{ex:?}");
    assert!(ex.end.closed(), "and closed: {ex:?}");

    let r = get_from(wg.public, B, "app.localhost", "/hello", &[]).await;
    assert_eq!(r.status, 200, "another address still connects: {r:?}");

    // Closing one connection frees its place.
    drop(open.pop());
    let freed = eventually(Duration::from_secs(3), || async {
        let mut s = connect_from(wg.public, A).await.unwrap();
        exchange_on(&mut s, &hello).await.statuses() == [200]
    })
    .await;
    assert!(freed, "a closed connection no longer counts");
    let m = wg.metrics().await;
    assert!(rejected(&m, "", "too_many_connections").is_some_and(|n| n >= 1.0), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_body_over_max_body_size_gets_413_without_waking_the_solution() {
    let wg = Wakegate::start(&config("", "", "max-body-size = \"1Ki\""));
    let big = format!(
        "POST /upload HTTP/1.1\r\nhost: app.localhost\r\naccept: application/json\r\ncontent-length: 2048\r\n\r\n{}",
        "x".repeat(2048)
    );
    let ex = exchange(wg.public, big.as_bytes()).await;
    assert_refusal(ex.one(), 413, "body_too_large");
    assert!(wg.starts().is_empty(), "the solution was not started for a request it would never get");
    assert_eq!(wg.phase("app").await, "cold");

    let small = format!("POST /upload HTTP/1.1\r\nhost: app.localhost\r\ncontent-length: 1024\r\n\r\n{}", "x".repeat(1024));
    let ex = exchange(wg.public, small.as_bytes()).await;
    assert_eq!(ex.one().status, 200, "exactly the limit is allowed: {ex:?}");
    assert_eq!(ex.one().json()["bytes"], 1024);
    assert_eq!(wg.starts().len(), 1);
    let m = wg.metrics().await;
    assert_eq!(rejected(&m, "app", "body_too_large"), Some(1.0), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_chunked_body_is_cut_before_the_solution_has_it_whole() {
    const LIMIT: u64 = 64 << 10;
    let wg = Wakegate::start(&config("", "--record {dir}/rec.jsonl", "max-body-size = \"64Ki\""));
    warm(&wg).await;
    let stream = tokio::net::TcpStream::connect(wg.public).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        wr.write_all(b"POST /upload HTTP/1.1\r\nhost: app.localhost\r\naccept: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
            .await?;
        let chunk = [format!("{:x}\r\n", 16 << 10).into_bytes(), vec![b'x'; 16 << 10], b"\r\n".to_vec()].concat();
        for _ in 0..64 {
            wr.write_all(&chunk).await?;
        }
        wr.write_all(b"0\r\n\r\n").await?;
        Ok::<_, std::io::Error>(wr)
    });
    let ex = read_exchange(&mut rd, Duration::from_secs(10)).await;
    let _ = writer.await;
    assert!(ex.end.closed(), "the connection ends (413 and close, or reset): {ex:?}");
    if !ex.responses.is_empty() {
        assert_refusal(ex.one(), 413, "body_too_large");
    }

    // Whatever reached the solution was cut short of the limit's end.
    eventually(Duration::from_secs(2), || async { records(wg.dir.path()).iter().any(|r| r["path"] == "/upload") }).await;
    let uploads: Vec<_> = records(wg.dir.path()).into_iter().filter(|r| r["path"] == "/upload").collect();
    for r in &uploads {
        let whole = r["complete"] == true && r["body_len"].as_u64().unwrap_or(0) > LIMIT;
        assert!(!whole, "the solution received the oversized body whole: {r}");
        assert_ne!(r["complete"], true, "the cut body must not look complete to the solution: {r}");
    }
    let m = wg.metrics().await;
    assert_eq!(rejected(&m, "app", "body_too_large"), Some(1.0), "{m}; log:\n{}", wg.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_408() {
    let wg = Wakegate::start(&config("", "", "client-body-timeout = \"1s\""));
    warm(&wg).await;
    let mut s = tokio::net::TcpStream::connect(wg.public).await.unwrap();
    let head = b"POST /upload HTTP/1.1\r\nhost: app.localhost\r\naccept: application/json\r\ncontent-length: 100\r\n\r\n0123456789";
    s.write_all(head).await.unwrap();
    let t0 = Instant::now();
    let ex = read_exchange(&mut s, Duration::from_secs(6)).await;
    let took = t0.elapsed();
    assert_refusal(ex.one(), 408, "client_timeout");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(4), "after the body timeout: {took:?}");
    let m = wg.metrics().await;
    assert_eq!(rejected(&m, "app", "client_timeout"), Some(1.0), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_solution_gets_504_after_the_upstream_response_timeout() {
    let wg = Wakegate::start(&config("", "", "upstream-response-timeout = \"1s\""));
    warm(&wg).await;
    let t0 = Instant::now();
    let ex = exchange(wg.public, &get_request("app.localhost", "/slow?ms=3000", &[JSON])).await;
    let took = t0.elapsed();
    assert_refusal(ex.one(), 504, "upstream_timeout");
    assert!(ex.one().json()["message"].as_str().unwrap().contains("did not answer within 1s"), "{ex:?}");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_millis(2500), "after the timeout, not the 3 s: {took:?}");
    assert_eq!(wg.get("app", "/hello").await.status, 200, "the solution still serves");
    let m = wg.metrics().await;
    assert_eq!(rejected(&m, "app", "upstream_timeout"), Some(1.0), "{m}");
    assert_eq!(metric(&m, "wakegate_requests_total{solution=\"app\",method=\"GET\",code=\"504\"}"), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_edit_of_the_rate_limit_takes_effect_without_restart() {
    let wg = Wakegate::start(&config("", "", ""));
    warm(&wg).await;
    let two = || async {
        let first = get_from(wg.public, A, "app.localhost", "/hello", &[]).await.status;
        let second = get_from(wg.public, A, "app.localhost", "/hello", &[]).await.status;
        (first, second)
    };
    for _ in 0..3 {
        assert_eq!(two().await, (200, 200), "no limit yet");
    }
    let pid = wg.pid();
    wg.write_config(&config("rate-limit-rps = 1", "", ""));
    let t0 = Instant::now();
    let limited = eventually(Duration::from_secs(4), || async { two().await.1 == 429 }).await;
    let took = t0.elapsed();
    assert!(limited, "the new limit never applied; log:\n{}", wg.log());
    assert!(took < Duration::from_millis(2000), "applied within ~1.5 s: {took:?}");

    wg.write_config(&config("rate-limit-rps = 0", "", ""));
    let lifted = eventually(Duration::from_secs(4), || async { two().await == (200, 200) }).await;
    assert!(lifted, "removing the limit applies too");
    assert_eq!(wg.pid(), pid);
    assert_eq!(wg.starts().len(), 1, "no restart of the solution either");
    let m = wg.metrics().await;
    assert_eq!(metric(&m, "wakegate_config_reloads_total{outcome=\"success\"}"), Some(2.0), "{m}");
    assert!(rejected(&m, "app", "rate_limited").is_some_and(|n| n >= 1.0), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_rate_limit_max_clients_new_clients_share_one_bucket() {
    let settings = "trusted-proxies = \"127.0.0.0/8\"\nrate-limit-rps = 1\nrate-limit-burst = 1\nrate-limit-max-clients = 2";
    let wg = Wakegate::start(&config(settings, "", ""));
    let from = |ip: &'static str| [("x-forwarded-for", ip)];
    for ip in ["198.51.100.1", "198.51.100.2"] {
        assert_eq!(get_from(wg.public, A, "app.localhost", "/hello", &from(ip)).await.status, 200, "{ip} gets its own bucket");
    }
    // The table is full: the next new client takes the shared bucket's one token,
    // and every other new client finds it empty; known clients keep their own.
    assert_eq!(get_from(wg.public, A, "app.localhost", "/hello", &from("198.51.100.3")).await.status, 200);
    for ip in ["198.51.100.4", "203.0.113.5"] {
        assert_eq!(get_from(wg.public, A, "app.localhost", "/hello", &from(ip)).await.status, 429, "{ip} shares the overflow bucket");
    }
    assert_eq!(get_from(wg.public, A, "app.localhost", "/hello", &from("198.51.100.1")).await.status, 429, "its own bucket is empty");
    let m = wg.metrics().await;
    assert_eq!(rejected(&m, "app", "rate_limited"), Some(3.0), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_keepalive_timeout() {
    let wg = Wakegate::start(&config("keepalive-timeout = \"1s\"", "", ""));
    warm(&wg).await;
    let mut s = tokio::net::TcpStream::connect(wg.public).await.unwrap();
    let ex = exchange_on(&mut s, &get_request("app.localhost", "/hello", &[])).await;
    assert_eq!((ex.statuses(), ex.end), (vec![200], End::Open), "{ex:?}");
    let t0 = Instant::now();
    let rest = read_exchange(&mut s, Duration::from_secs(4)).await;
    let idle = t0.elapsed();
    assert!(rest.end.closed() && rest.responses.is_empty() && rest.rest.is_empty(), "closed quietly: {rest:?}");
    assert!(idle >= Duration::from_millis(500) && idle < Duration::from_millis(2500), "after about 1 s idle: {idle:?}");

    // A connection that never sends anything is closed the same way, with no 408.
    let mut silent = tokio::net::TcpStream::connect(wg.public).await.unwrap();
    let ex = read_exchange(&mut silent, Duration::from_secs(4)).await;
    assert!(ex.end.closed() && ex.responses.is_empty(), "{ex:?}");
}
