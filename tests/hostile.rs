//! Hostile input at the edge, sent as raw bytes: ambiguous framing (request
//! smuggling), malformed header lines, missing or foreign hosts, CONNECT,
//! oversized and slow heads, stalled bodies, and HTTP/2 abuse (rapid reset,
//! CONTINUATION flood). Each case is refused or resolved safely, a normal
//! request succeeds right after on a new connection, and the solution (testapp
//! with `--record`) never receives a smuggled or refused request.

mod h2raw;
mod raw;

use std::time::{Duration, Instant};

use bytes::Bytes;
use h2raw::{CANCEL, CONTINUATION, END_HEADERS, END_STREAM, HEADERS, PING, RST_STREAM, frame, get_block, literal};
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use raw::{Exchange, RawResponse, assert_refusal, exchange, get_request, read_exchange, records, request};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use wakegate_tests::{Wakegate, eventually, metric, rss, testapp_solution};

/// A request that must never reach the solution as a request of its own.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nhost: app.localhost\r\n\r\n";

fn config(settings: &str) -> String {
    format!("[settings]\n{settings}\n{}", testapp_solution("app", "--record {dir}/rec.jsonl", ""))
}

fn rejected(m: &str, reason: &str) -> f64 {
    metric(m, &format!("wakegate_rejected_requests_total{{solution=\"\",reason=\"{reason}\"}}")).unwrap_or(0.0)
}

/// A normal request on a new connection succeeds.
async fn still_serves(wg: &Wakegate, after: &str) {
    let r = wg.get("app", "/hello").await;
    assert_eq!(r.status, 200, "a normal request after {after}: {r:?}; log:\n{}", wg.log());
    assert_eq!(r.body, "hello from app\n");
}

/// Nothing smuggled, refused, or tunnelled reached the solution.
fn assert_nothing_reached_the_solution(wg: &Wakegate) {
    for r in records(wg.dir.path()) {
        let path = r["path"].as_str().unwrap_or("");
        assert!(!path.contains("smuggled"), "a smuggled request reached the solution: {r}");
        assert!(!path.starts_with("/refused"), "a refused request reached the solution: {r}");
        assert_ne!(r["method"], "CONNECT", "CONNECT reached the solution: {r}");
    }
}

/// Refused with 400 and closed (hyper's answer to a malformed message).
fn assert_400_and_close(case: &str, ex: &Exchange) {
    assert_eq!(ex.statuses(), [400], "{case}: {ex:?}");
    assert!(ex.end.closed(), "{case}: the connection is closed after a malformed message: {ex:?}");
    assert_says_why(case, ex.one());
}

/// A refusal of a head that was never read whole: a short text naming its
/// request id, which the answer carries too.
fn assert_says_why(case: &str, r: &RawResponse) {
    let id = r.header("x-request-id");
    assert!(!id.is_empty(), "{case}: a request id: {r:?}");
    assert!(r.body.contains(&format!("(request id {id})")) && r.body.len() > id.len() + 20, "{case}: says why: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_is_refused_or_resolved_and_never_smuggles() {
    let wg = Wakegate::start(&config(""));
    still_serves(&wg, "start").await;
    let tail = format!("0\r\n\r\n{SMUGGLED}");
    // Both lengths: chunked wins, the connection closes after one response,
    // and what a Content-Length reader would take as a second request is dropped.
    let resolved = [
        (
            "CL then TE",
            format!(
                "POST /echo HTTP/1.1\r\nhost: app.localhost\r\ncontent-length: {}\r\ntransfer-encoding: chunked\r\n\r\n{tail}",
                tail.len()
            ),
        ),
        (
            "TE then CL",
            format!(
                "POST /echo HTTP/1.1\r\nhost: app.localhost\r\ntransfer-encoding: chunked\r\ncontent-length: {}\r\n\r\n{tail}",
                tail.len()
            ),
        ),
        (
            "TE.CL",
            format!(
                "POST /echo HTTP/1.1\r\nhost: app.localhost\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n",
                SMUGGLED.len()
            ),
        ),
    ];
    for (case, req) in &resolved {
        let ex = exchange(wg.public, req.as_bytes()).await;
        assert!(ex.statuses() == [200] || ex.statuses() == [400], "{case}: one answer: {ex:?}");
        assert!(ex.end.closed(), "{case}: closed after a message with both lengths: {ex:?}");
        assert!(ex.rest.is_empty(), "{case}: nothing after the answer: {ex:?}");
        still_serves(&wg, case).await;
    }
    let refused = [
        ("TE not chunked last", "transfer-encoding: chunked, identity\r\n".to_string()),
        ("TE xchunked with CL", "transfer-encoding: xchunked\r\ncontent-length: 5\r\n".to_string()),
        ("TE chunked then identity", "transfer-encoding: chunked\r\ntransfer-encoding: identity\r\n".to_string()),
        ("two different CLs", "content-length: 5\r\ncontent-length: 50\r\n".to_string()),
        ("CL list", "content-length: 5, 50\r\n".to_string()),
        ("negative CL", "content-length: -1\r\n".to_string()),
        ("non-numeric CL", "content-length: abc\r\n".to_string()),
        ("signed CL", "content-length: +5\r\n".to_string()),
        ("hex CL", "content-length: 0x10\r\n".to_string()),
        ("overflowing CL", format!("content-length: {}0\r\n", u64::MAX)),
    ];
    for (i, (case, headers)) in refused.iter().enumerate() {
        let req = format!("POST /refused/framing/{i} HTTP/1.1\r\nhost: app.localhost\r\n{headers}\r\n{tail}");
        assert_400_and_close(case, &exchange(wg.public, req.as_bytes()).await);
        still_serves(&wg, case).await;
    }
    let ex = exchange(
        wg.public,
        format!("POST /refused/http10 HTTP/1.0\r\nhost: app.localhost\r\ntransfer-encoding: chunked\r\n\r\n{tail}").as_bytes(),
    )
    .await;
    assert_400_and_close("HTTP/1.0 with Transfer-Encoding", &ex);

    // A broken chunk size after a valid head: the body fails, nothing is answered 2xx.
    let req = format!("POST /echo HTTP/1.1\r\nhost: app.localhost\r\ntransfer-encoding: chunked\r\n\r\nfffffffffffffffffff\r\n{SMUGGLED}");
    let ex = exchange(wg.public, req.as_bytes()).await;
    assert!(ex.responses.iter().all(|r| r.status >= 400), "overflowing chunk size: {ex:?}");
    assert!(ex.end.closed(), "overflowing chunk size: {ex:?}");
    still_serves(&wg, "overflowing chunk size").await;

    assert_nothing_reached_the_solution(&wg);
    let m = wg.metrics().await;
    assert!(rejected(&m, "bad_request") >= (refused.len() + 1) as f64, "malformed messages are counted: {m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_header_lines_get_400_and_close() {
    let wg = Wakegate::start(&config(""));
    still_serves(&wg, "start").await;
    let cases: [(&str, &[u8]); 12] = [
        ("obs-fold", b"x-folded: a\r\n b\r\n"),
        ("NUL in a name", b"x-n\0ul: 1\r\n"),
        ("NUL in a value", b"x-nul: a\0b\r\n"),
        ("SOH in a value", b"x-ctl: a\x01b\r\n"),
        ("DEL in a value", b"x-ctl: a\x7fb\r\n"),
        ("ESC in a name", b"x-\x1bctl: 1\r\n"),
        ("bare CR in a value", b"x-cr: a\rb\r\n"),
        ("space before the colon", b"x-space : 1\r\n"),
        ("no colon", b"just-a-name\r\n"),
        ("non-ASCII name", "x-\u{e9}t\u{e9}: 1\r\n".as_bytes()),
        ("empty name", b": empty\r\n"),
        ("smuggled header line", b"x-a: 1\r\n\r\nGET /smuggled HTTP/1.1\r\n\0: x\r\n"),
    ];
    for (i, (case, line)) in cases.iter().enumerate() {
        let req = [format!("GET /refused/header/{i} HTTP/1.1\r\nhost: app.localhost\r\n").as_bytes(), line, b"\r\n"].concat();
        let ex = exchange(wg.public, &req).await;
        if *case == "smuggled header line" {
            // A complete request, then garbage: the first is served, the garbage refused.
            assert_eq!(ex.statuses(), [404, 400], "{case}: {ex:?}");
            assert!(ex.end.closed(), "{case}: {ex:?}");
            assert_says_why(case, &ex.responses[1]);
            continue;
        }
        assert_400_and_close(case, &ex);
        still_serves(&wg, case).await;
    }
    let lines: [(&str, &[u8]); 5] = [
        ("junk after the version", b"GET /refused/rl/0 HTTP/1.1 junk\r\nhost: app.localhost\r\n\r\n"),
        ("bad method token", b"G(T /refused/rl/1 HTTP/1.1\r\nhost: app.localhost\r\n\r\n"),
        ("space in the target", b"GET /refused/rl 2 HTTP/1.1\r\nhost: app.localhost\r\n\r\n"),
        ("unknown version", b"GET /refused/rl/3 HTTP/1.2\r\nhost: app.localhost\r\n\r\n"),
        ("control character in the target", b"GET /refused/rl/\x01 HTTP/1.1\r\nhost: app.localhost\r\n\r\n"),
    ];
    for (case, req) in lines {
        assert_400_and_close(case, &exchange(wg.public, req).await);
    }
    still_serves(&wg, "bad request lines").await;
    // The one legitimate request above (/refused/header/11) is allowed to reach
    // the solution; nothing else may.
    for r in records(wg.dir.path()) {
        let path = r["path"].as_str().unwrap_or("");
        assert!(path == "/hello" || path == "/healthz" || path == "/refused/header/11", "reached the solution: {r}");
    }
    let m = wg.metrics().await;
    assert!(rejected(&m, "bad_request") >= (cases.len() + lines.len()) as f64, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_host_of_ours_are_refused_and_never_forwarded() {
    let wg = Wakegate::start(&config(""));
    still_serves(&wg, "start").await;
    let json = "accept: application/json\r\n";
    assert_refusal(&request(wg.public, format!("GET /refused/nohost HTTP/1.1\r\n{json}\r\n").as_bytes()).await, 400, "missing_host");
    assert_refusal(
        &request(wg.public, format!("GET /refused/empty HTTP/1.1\r\nhost: \r\n{json}\r\n").as_bytes()).await,
        400,
        "missing_host",
    );

    let invalid = [
        "app.localhost/refused",
        "app.localhost@evil.example",
        "evil.example@app.localhost",
        "app localhost",
        "app.localhost:80:80",
        "app.localhost:-1",
        "[::1",
        ".app.localhost",
        "app..localhost",
        "x.app.localhost",
    ];
    for host in invalid {
        let r = request(wg.public, format!("GET /refused/host HTTP/1.1\r\nhost: {host}\r\n{json}\r\n").as_bytes()).await;
        assert!(r.status == 400 || r.status == 404, "Host {host:?}: {r:?}");
        assert!(r.is_gateway_refusal(), "Host {host:?}: the gateway's own refusal, not the solution's: {r:?}");
    }

    // Absolute-form naming a foreign host: the target's authority wins over Host, and it is not ours.
    for target in ["http://example.com/refused/abs", "https://example.com:443/refused/abs", "http://127.0.0.1/refused/abs"] {
        let r = request(wg.public, format!("GET {target} HTTP/1.1\r\nhost: app.localhost\r\n{json}\r\n").as_bytes()).await;
        assert!(r.status == 400 || r.status == 404, "{target}: {r:?}");
        assert!(r.is_gateway_refusal(), "{target}: refused by the gateway, not the solution: {r:?}");
    }
    // Authority-form is CONNECT's alone: taken as the host, it would route
    // around a front proxy that decided by `Host`.
    for target in ["app.localhost", "app.localhost:80", "a"] {
        let r = request(wg.public, format!("GET {target} HTTP/1.1\r\nhost: app.localhost\r\n{json}\r\n").as_bytes()).await;
        assert_refusal(&r, 400, "bad_request");
    }
    still_serves(&wg, "host cases").await;
    assert_nothing_reached_the_solution(&wg);
    let m = wg.metrics().await;
    assert_eq!(rejected(&m, "bad_request"), 3.0, "{m}");
    assert_eq!(rejected(&m, "missing_host"), 2.0, "{m}");
    assert!(rejected(&m, "unknown_host") + rejected(&m, "bad_host") >= (invalid.len() + 3) as f64, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_host_lines_get_400_and_are_never_forwarded() {
    let wg = Wakegate::start(&config(""));
    still_serves(&wg, "start").await;
    // RFC 9112 §3.2: a server MUST answer 400 to more than one Host line.
    for (first, second) in [("app.localhost", "evil.localhost"), ("app.localhost", "app.localhost")] {
        let req = format!("GET /refused/twohosts HTTP/1.1\r\nhost: {first}\r\nhost: {second}\r\naccept: application/json\r\n\r\n");
        let r = request(wg.public, req.as_bytes()).await;
        assert_eq!(r.status, 400, "Host {first:?} and Host {second:?}: {r:?}");
    }
    still_serves(&wg, "two Host lines").await;
    assert_nothing_reached_the_solution(&wg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_refused_and_never_tunnelled() {
    let wg = Wakegate::start(&config(""));
    still_serves(&wg, "start").await;
    // Neither to a foreign host nor to a solution.
    for authority in ["example.com:443", "app.localhost:80"] {
        let req = format!("CONNECT {authority} HTTP/1.1\r\nhost: {authority}\r\naccept: application/json\r\n\r\n");
        let mut s = TcpStream::connect(wg.public).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let r = raw::read_response(&mut s, raw::ANSWER).await.expect("an answer to CONNECT");
        assert!((400..600).contains(&r.status), "CONNECT {authority}: {r:?}");
        assert!(r.is_gateway_refusal(), "CONNECT {authority}: refused by the gateway, not forwarded to the solution: {r:?}");
        // Nothing is tunnelled: bytes sent now are not relayed anywhere.
        let _ = s.write_all(SMUGGLED.as_bytes()).await;
        let after = read_exchange(&mut s, Duration::from_secs(1)).await;
        assert!(after.responses.iter().all(|r| r.status != 200), "CONNECT {authority} then a request: {after:?}");
    }
    still_serves(&wg, "CONNECT").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_nothing_reached_the_solution(&wg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_differing_in_case_port_or_trailing_dot_are_routed_normally() {
    let wg = Wakegate::start(&config(""));
    for host in ["APP.LOCALHOST", "app.localhost:8080", "app.localhost.", "App.Localhost.:80"] {
        let ex = exchange(wg.public, &get_request(host, "/hello", &[])).await;
        assert_eq!(ex.one().status, 200, "Host {host:?}: {ex:?}");
        assert_eq!(ex.one().body, "hello from app\n");
    }
    let ex = exchange(wg.public, b"GET http://APP.localhost.:8080/hello HTTP/1.1\r\nhost: app.localhost\r\n\r\n").await;
    assert_eq!(ex.one().status, 200, "absolute-form: {ex:?}");

    let stream = TcpStream::connect(wg.public).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    for uri in ["http://APP.Localhost./hello", "http://app.localhost:8080/hello"] {
        let resp = send.send_request(Request::get(uri).body(Empty::<Bytes>::new()).unwrap()).await.unwrap();
        assert_eq!(resp.status(), 200, "HTTP/2 {uri}");
        assert_eq!(&resp.into_body().collect().await.unwrap().to_bytes()[..], b"hello from app\n");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_get_431_or_414() {
    let wg = Wakegate::start(&config("max-header-size = \"8Ki\"\nmax-headers = 20\nmax-uri-length = \"1Ki\""));
    still_serves(&wg, "start").await;
    let big = format!("GET /refused/big HTTP/1.1\r\nhost: app.localhost\r\nx-big: {}\r\n\r\n", "a".repeat(16 << 10));
    let ex = exchange(wg.public, big.as_bytes()).await;
    assert_eq!(ex.statuses(), [431], "a 16 KiB header: {ex:?}");
    assert!(ex.end.closed());
    assert_says_why("a 16 KiB header", ex.one());
    still_serves(&wg, "a 16 KiB header").await;

    // Over the limit however it arrives: just under 8 KiB, then 3 KiB more
    // that complete it in one read (a check of the read buffer alone,
    // hyper's, passes it).
    let head = format!("GET /refused/pieces HTTP/1.1\r\nhost: app.localhost\r\nx-big: {}\r\n\r\n", "b".repeat(11 << 10));
    let mut s = TcpStream::connect(wg.public).await.unwrap();
    let first = (8 << 10) - 100;
    s.write_all(&head.as_bytes()[..first]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.write_all(&head.as_bytes()[first..]).await.unwrap();
    let ex = read_exchange(&mut s, Duration::from_secs(5)).await;
    assert_eq!(ex.statuses(), [431], "an 11 KiB head in two pieces: {ex:?}");
    assert_says_why("an 11 KiB head in two pieces", ex.one());
    still_serves(&wg, "a head in pieces").await;

    let mut many = "GET /refused/many HTTP/1.1\r\nhost: app.localhost\r\n".to_string();
    for i in 0..10_000 {
        many.push_str(&format!("x-h{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let ex = exchange(wg.public, many.as_bytes()).await;
    // Answered while the client is still sending: read to the end, not reset.
    assert_eq!(ex.statuses(), [431], "10,000 headers: {ex:?}");
    assert!(ex.end.closed(), "10,000 headers: {ex:?}");
    assert_says_why("10,000 headers", ex.one());
    still_serves(&wg, "10,000 headers").await;

    let mut some = "GET /refused/some HTTP/1.1\r\nhost: app.localhost\r\n".to_string();
    for i in 0..30 {
        some.push_str(&format!("x-h{i}: v\r\n"));
    }
    some.push_str("\r\n");
    let ex = exchange(wg.public, some.as_bytes()).await;
    assert_eq!(ex.statuses(), [431], "30 headers over max-headers = 20: {ex:?}");
    assert_says_why("30 headers", ex.one());
    still_serves(&wg, "30 headers").await;

    let long = format!("/refused/{}", "u".repeat(2048));
    let ex = exchange(wg.public, &get_request("app.localhost", &long, &[("accept", "application/json")])).await;
    assert_refusal(ex.one(), 414, "uri_too_long");
    still_serves(&wg, "a long URI").await;

    assert_nothing_reached_the_solution(&wg);
    let m = wg.metrics().await;
    assert!(rejected(&m, "headers_too_large") >= 2.0, "{m}");
    assert_eq!(rejected(&m, "uri_too_long"), 1.0, "{m}");
}

/// Writes `head` and then `drip` one piece every 500 ms, until the peer stops reading.
fn slowly(mut wr: tokio::net::tcp::OwnedWriteHalf, head: &'static [u8], drip: &'static [u8]) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if wr.write_all(head).await.is_err() {
            return;
        }
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if wr.write_all(drip).await.is_err() {
                return;
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_heads_get_408_and_close() {
    let wg = Wakegate::start(&config("client-header-timeout = \"2s\""));
    still_serves(&wg, "start").await;
    let bytewise = TcpStream::connect(wg.public).await.unwrap();
    let linewise = TcpStream::connect(wg.public).await.unwrap();
    let t0 = Instant::now();
    let mut readers = Vec::new();
    for (stream, head, drip) in [
        (bytewise, b"GET /refused/slow HTTP/1.1\r\nhost: app.localhost\r\nx-slow: ".as_slice(), b"a".as_slice()),
        (linewise, b"GET /refused/slow HTTP/1.1\r\nhost: app.localhost\r\n".as_slice(), b"x-slow: a\r\n".as_slice()),
    ] {
        let (mut rd, wr) = stream.into_split();
        let writer = slowly(wr, head, drip);
        readers.push(tokio::spawn(async move {
            let ex = read_exchange(&mut rd, Duration::from_secs(6)).await;
            writer.abort();
            (ex, t0.elapsed())
        }));
    }
    for reader in readers {
        let (ex, took) = reader.await.unwrap();
        assert_eq!(ex.statuses(), [408], "{ex:?}; log:\n{}", wg.log());
        assert!(ex.end.closed(), "closed after the 408: {ex:?}");
        assert_says_why("slow head", ex.one());
        assert!(took >= Duration::from_millis(1900) && took < Duration::from_millis(3500), "408 at the header timeout: {took:?}");
    }
    still_serves(&wg, "slowloris").await;
    assert_nothing_reached_the_solution(&wg);
    let m = wg.metrics().await;
    assert_eq!(rejected(&m, "client_timeout"), 2.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_chunked_body_gets_408() {
    let wg = Wakegate::start(&config("client-body-timeout = \"1s\""));
    still_serves(&wg, "start").await;
    let mut s = TcpStream::connect(wg.public).await.unwrap();
    s.write_all(
        b"POST /upload HTTP/1.1\r\nhost: app.localhost\r\naccept: application/json\r\ntransfer-encoding: chunked\r\n\r\n10\r\n01234",
    )
    .await
    .unwrap();
    let t0 = Instant::now();
    let ex = read_exchange(&mut s, Duration::from_secs(6)).await;
    let took = t0.elapsed();
    let r = ex.one();
    assert_eq!(r.status, 408, "{ex:?}");
    assert_eq!(r.json()["error"], "client_timeout");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(4), "{took:?}");
    still_serves(&wg, "a stalled body").await;
    let stalled = eventually(Duration::from_secs(2), || async {
        records(wg.dir.path()).iter().any(|r| r["path"] == "/upload" && r["complete"] == false)
    })
    .await;
    assert!(stalled, "the solution saw the upload end incomplete, not complete: {:?}", records(wg.dir.path()));
    assert!(!records(wg.dir.path()).iter().any(|r| r["path"] == "/upload" && r["complete"] == true));
}

/// Waits until nothing is in flight or held for `app` (no stream leaked a counter).
async fn settles(wg: &Wakegate) -> bool {
    eventually(Duration::from_secs(5), || async {
        let m = wg.metrics().await;
        metric(&m, "wakegate_in_flight_requests{solution=\"app\"}") == Some(0.0)
            && metric(&m, "wakegate_held_requests{solution=\"app\"}") == Some(0.0)
    })
    .await
}

/// Every answer carries a new request id: HPACK-indexed, the ids would fill
/// the connection's table, each answer evicting the fields worth keeping
/// (and costing the encoder a walk over the stale ids). They go as literals
/// never indexed, and the other fields of a repeated answer come from the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_answers_keep_request_ids_out_of_the_hpack_table() {
    use h2raw::Rep;
    let wg = Wakegate::start(&config(""));
    let mut s = TcpStream::connect(wg.public).await.unwrap();
    h2raw::handshake(&mut s).await.unwrap();
    let mut blocks = Vec::new();
    for i in 0..5u32 {
        let id = 1 + 2 * i;
        s.write_all(&frame(HEADERS, END_STREAM | END_HEADERS, id, &get_block("app.localhost", "/hello"))).await.unwrap();
        let out = h2raw::read_until(&mut s, Duration::from_secs(5), |f| f.kind == HEADERS && f.stream == id).await;
        let head = out.frames.iter().find(|f| f.kind == HEADERS && f.stream == id).expect("a response HEADERS frame");
        assert_ne!(head.flags & END_HEADERS, 0, "the head fits one frame");
        blocks.push(h2raw::representations(&head.payload).expect("a valid HPACK block"));
    }
    for (i, reps) in blocks.iter().enumerate() {
        assert_eq!(reps.iter().filter(|r| **r == Rep::NeverIndexed).count(), 1, "answer {i}: the id alone is never indexed: {reps:?}");
    }
    // Only a Date that turned over a second is added again.
    let added: usize = blocks[1..].iter().map(|reps| reps.iter().filter(|r| **r == Rep::Added).count()).sum();
    assert!(added <= 1, "answers 2-5 added {added} fields to the table: {blocks:?}");
    still_serves(&wg, "five answers on one HTTP/2 connection").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rapid_reset_is_cut_off_and_the_gateway_survives() {
    let wg = Wakegate::start(&config(""));
    still_serves(&wg, "start").await;
    let mut s = TcpStream::connect(wg.public).await.unwrap();
    h2raw::handshake(&mut s).await.unwrap();
    let block = get_block("app.localhost", "/hello");
    let mut burst = Vec::new();
    for i in 0..1000u32 {
        let id = 1 + 2 * i;
        burst.extend(frame(HEADERS, END_STREAM | END_HEADERS, id, &block));
        burst.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
    }
    burst.extend(frame(PING, 0, 0, b"rapidrst"));
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move { wr.write_all(&burst).await.is_ok() });
    let t0 = Instant::now();
    let out =
        h2raw::read_until(&mut rd, Duration::from_secs(10), |f| f.goaway_code().is_some() || (f.kind == PING && f.flags & h2raw::ACK != 0))
            .await;
    let took = t0.elapsed();
    let _ = writer.await;
    let survived = out.frames.iter().any(|f| f.kind == PING && f.flags & h2raw::ACK != 0);
    assert!(out.goaway().is_some() || out.closed || survived, "neither GOAWAY, close, nor an answered PING within 10 s: {took:?}");
    assert!(out.answered() < 1000, "reset streams are not all answered: {}", out.answered());
    eprintln!("rapid reset: goaway={:?} closed={} ping_acked={survived} answered={} in {took:?}", out.goaway(), out.closed, out.answered());

    assert!(wakegate_tests::alive(wg.pid() as i32), "the gateway is alive");
    assert!(rss(wg.pid()) < 100 << 20, "memory stays bounded: {} bytes", rss(wg.pid()));
    still_serves(&wg, "a rapid-reset burst").await;
    assert!(settles(&wg).await, "every reset stream released its in-flight count: {}", wg.metrics().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_continuation_flood_is_closed_with_bounded_memory() {
    let wg = Wakegate::start(&config(""));
    still_serves(&wg, "start").await;
    let mut s = TcpStream::connect(wg.public).await.unwrap();
    h2raw::handshake(&mut s).await.unwrap();
    // Each CONTINUATION carries ~1.3 KiB of valid HPACK literals; 10,000 of them
    // are ~13 MiB of header block that never ends.
    let piece: Vec<u8> = (0..16).flat_map(|i| literal(&format!("x-flood-{i:02}"), &"v".repeat(64))).collect();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        wr.write_all(&frame(HEADERS, END_STREAM, 1, &get_block("app.localhost", "/hello"))).await?;
        let batch: Vec<u8> = (0..100).flat_map(|_| frame(CONTINUATION, 0, 1, &piece)).collect();
        for _ in 0..100 {
            wr.write_all(&batch).await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let pid = wg.pid();
    let (done, mut stop) = tokio::sync::oneshot::channel::<()>();
    let sampler = tokio::spawn(async move {
        let mut peak = rss(pid);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(20)) => peak = peak.max(rss(pid)),
                _ = &mut stop => return peak.max(rss(pid)),
            }
        }
    });
    let t0 = Instant::now();
    let out = h2raw::read_until(&mut rd, Duration::from_secs(10), |f| f.goaway_code().is_some()).await;
    let took = t0.elapsed();
    let _ = done.send(());
    let sent_all = writer.await.unwrap().is_ok();
    assert!(out.goaway().is_some() || out.closed, "the flood is cut off (sent all: {sent_all}): {:?}", out.frames);
    assert!(took < Duration::from_secs(5), "promptly: {took:?}");
    assert_eq!(out.answered(), 0, "the flooded request is never served");
    eprintln!("continuation flood: goaway={:?} closed={} sent_all={sent_all} in {took:?}", out.goaway(), out.closed);
    let peak = sampler.await.unwrap();
    assert!(peak < 100 << 20, "memory stays bounded: peak {peak} bytes");
    still_serves(&wg, "a CONTINUATION flood").await;
    assert!(settles(&wg).await);
}

/// The gateway serves requests without a body itself and hands a connection
/// to hyper at its first other request: one connection carrying pipelined
/// GETs, a POST with a body and a GET after it gets every answer, in order,
/// each exactly once at the solution.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_mixing_bodyless_and_body_requests_gets_every_answer_in_order() {
    let wg = Wakegate::start(&config(""));
    still_serves(&wg, "start").await;
    let mut bytes = get_request("app.localhost", "/hello?n=1", &[]);
    bytes.extend(get_request("app.localhost", "/headers", &[("x-mark", "two")]));
    bytes.extend(b"POST /echo HTTP/1.1\r\nhost: app.localhost\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nhello");
    bytes.extend(get_request("app.localhost", "/hello?n=5", &[("connection", "close")]));
    let ex = exchange(wg.public, &bytes).await;
    assert_eq!(ex.statuses(), [200, 200, 200, 200], "{ex:?}; log:\n{}", wg.log());
    let r = &ex.responses;
    assert_eq!(r[0].body, "hello from app\n");
    assert_eq!(r[1].json()["x-mark"], "two", "the second pipelined request arrived whole");
    assert_eq!(r[2].body, "hello", "the POST after bodyless requests was handed over with its body");
    assert_eq!(r[3].body, "hello from app\n");
    assert_eq!(r[3].header("connection"), "close");
    assert!(ex.end.closed(), "closed after `connection: close`: {ex:?}");
    let ids: std::collections::HashSet<_> = r.iter().map(|r| r.header("x-request-id").to_string()).collect();
    assert_eq!(ids.len(), 4, "every answer has its own request id: {r:?}");
    let paths: Vec<String> = records(wg.dir.path()).iter().map(|r| r["path"].as_str().unwrap_or("").to_string()).collect();
    for p in ["/hello?n=1", "/headers", "/echo", "/hello?n=5"] {
        assert_eq!(paths.iter().filter(|x| *x == p).count(), 1, "{p} reached the solution once: {paths:?}");
    }

    // HTTP/1.0: closed after the answer unless kept alive; kept alive when asked.
    let ex = exchange(wg.public, b"GET /hello HTTP/1.0\r\nhost: app.localhost\r\n\r\n").await;
    assert_eq!(ex.statuses(), [200]);
    assert!(ex.end.closed(), "HTTP/1.0 without keep-alive is closed: {ex:?}");
    let ex = exchange(wg.public, b"GET /hello HTTP/1.0\r\nhost: app.localhost\r\nconnection: keep-alive\r\n\r\n").await;
    assert_eq!(ex.statuses(), [200]);
    assert_eq!(ex.end, raw::End::Open, "HTTP/1.0 keep-alive stays open: {ex:?}");
    assert!(ex.responses[0].headers.iter().any(|(n, v)| n == "connection" && v.eq_ignore_ascii_case("keep-alive")));

    // HEAD: the length the body would have, and no body (a client that knows
    // HEAD reads the next answer on the same connection cleanly).
    let head = Request::head("/hello").header("host", "app.localhost").body(Empty::<Bytes>::new()).expect("a valid request");
    let resp = wakegate_tests::send(wg.public, head).await.expect("HEAD");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], "15");
    assert!(resp.into_body().collect().await.expect("HEAD body").to_bytes().is_empty());
}
