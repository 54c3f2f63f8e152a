//! Long-lived and large exchanges through the gateway: WebSocket echo (also
//! across a cold start), an open WebSocket keeping its solution awake,
//! server-sent events delivered as they are produced, and a 1 GiB upload
//! streamed with bounded gateway memory.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{WebSocketStream, client_async};
use wakegate_tests::{Wakegate, eventually, metric, read, rss, send, testapp_solution};

type Ws = WebSocketStream<TcpStream>;

/// Opens a WebSocket to `ws://<label>.localhost/ws` through the public listener.
async fn open_ws(wg: &Wakegate, label: &str) -> Ws {
    let req = format!("ws://{label}.localhost/ws").into_client_request().expect("ws request");
    let connect = async {
        let tcp = TcpStream::connect(wg.public).await?;
        let (ws, resp) = client_async(req, tcp).await?;
        anyhow::Ok((ws, resp))
    };
    match timeout(Duration::from_secs(30), connect).await {
        Ok(Ok((ws, resp))) => {
            assert_eq!(resp.status(), 101, "handshake status; log:\n{}", wg.log());
            ws
        }
        Ok(Err(e)) => panic!("WebSocket handshake failed: {e:#}; log:\n{}", wg.log()),
        Err(_) => panic!("WebSocket handshake did not complete within 30 s; log:\n{}", wg.log()),
    }
}

/// Sends `msg` and expects the same message back (within 10 s).
async fn echo(ws: &mut Ws, msg: Message) {
    timeout(Duration::from_secs(10), ws.send(msg.clone())).await.expect("send timed out").expect("send");
    let back = timeout(Duration::from_secs(10), ws.next()).await.expect("no echo within 10 s");
    let back = back.expect("stream ended instead of an echo").expect("read echo");
    assert_eq!(back, msg, "echo differs");
}

/// Closes `ws` and reads until the peer's close (or the end of the stream).
async fn close_ws(mut ws: Ws) {
    timeout(Duration::from_secs(10), ws.close(None)).await.expect("close timed out").expect("close");
    let drain = async {
        while let Some(m) = ws.next().await {
            if m.is_err() {
                break;
            }
        }
    };
    timeout(Duration::from_secs(10), drain).await.expect("the close handshake did not finish within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_passes_through() {
    let wg = Wakegate::start(&testapp_solution("app", "", ""));
    assert_eq!(wg.phase("app").await, "cold");

    // The first connection meets a cold solution: held until it is ready.
    let mut ws = open_ws(&wg, "app").await;
    echo(&mut ws, Message::text("hello through wakegate")).await;
    echo(&mut ws, Message::binary(vec![0u8, 1, 2, 3, 254, 255])).await;
    // Longer than 64 KiB: an extended-length frame.
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    echo(&mut ws, Message::binary(big)).await;
    echo(&mut ws, Message::text("ü and ✓ survive")).await;
    close_ws(ws).await;

    // A second connection, to the now warm solution.
    let mut ws = open_ws(&wg, "app").await;
    echo(&mut ws, Message::text("again")).await;
    // The gateway's side of it probes a quiet peer (TCP keepalive): a client
    // gone without a word does not keep the solution awake for good.
    // (`ss` shows the timer pending: the keepalive one once nothing is in flight.)
    let sockets = || {
        let ss = std::process::Command::new("ss")
            .args(["-tnoH", "state", "established", &format!("( sport = :{} )", wg.public.port())])
            .output()
            .expect("ss (iproute2)");
        String::from_utf8_lossy(&ss.stdout).into_owned()
    };
    let probed = wakegate_tests::eventually(Duration::from_secs(3), || async { sockets().contains("timer:(keepalive") }).await;
    assert!(probed, "the gateway's client socket has keepalive on: {}", sockets());
    echo(&mut ws, Message::binary(vec![42u8; 10])).await;
    close_ws(ws).await;

    assert_eq!(wg.starts().len(), 1, "one start serves both connections; log:\n{}", wg.log());

    // The access log (stdout by default) has each connection once it closed:
    // 101, the bytes the solution sent through it, the whole duration.
    let upgrades = || -> Vec<serde_json::Value> {
        wg.stdout().lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).filter(|l| l["status"] == 101).collect()
    };
    assert!(wakegate_tests::eventually(Duration::from_secs(5), || async { upgrades().len() == 2 }).await, "{}", wg.stdout());
    let lines = upgrades();
    let (first, second) = (&lines[0], &lines[1]);
    assert_eq!((first["uri"].as_str(), first["completed"].as_bool()), (Some("/ws"), Some(true)), "{first}");
    assert!(first["bytes"].as_u64().is_some_and(|b| b > 100_000), "the echoed frames went to the client: {first}");
    assert!(first["wait_ms"].as_u64().is_some(), "held while app started: {first}");
    assert!(second["bytes"].as_u64().is_some_and(|b| (15..1000).contains(&b)), "{second}");
    assert!(second.get("wait_ms").is_none(), "{second}");
}

/// A WebSocket that carries nothing either way for `tunnel-idle-timeout` is
/// closed (and its solution may then sleep); one in use is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_websocket_is_closed_after_the_tunnel_idle_timeout() {
    let wg = Wakegate::start(&testapp_solution("app", "", "idle-timeout = \"2s\"\ntunnel-idle-timeout = \"1500ms\""));
    let mut ws = open_ws(&wg, "app").await;
    // In use for 3 s, twice the timeout: kept open.
    for i in 0..6 {
        echo(&mut ws, Message::text(format!("message {i}"))).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    echo(&mut ws, Message::text("still open")).await;

    // Quiet: the gateway closes it after the timeout, not before.
    let quiet_since = Instant::now();
    let ended = timeout(Duration::from_secs(10), ws.next()).await.expect("closed within 10 s of quiet");
    let after = quiet_since.elapsed();
    assert!(!matches!(ended, Some(Ok(_))), "nothing but the end of the stream: {ended:?}");
    assert!(after >= Duration::from_millis(1400), "closed after {after:?} of quiet, before the 1.5 s timeout");
    assert!(wg.log().contains("without traffic (tunnel-idle-timeout)"), "{}", wg.log());
    // No open stream is left to keep the solution awake.
    let cold = eventually(Duration::from_secs(8), || async { wg.phase("app").await == "cold" }).await;
    assert!(cold, "not scaled down after the quiet WebSocket was closed; log:\n{}", wg.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_websocket_keeps_solution_awake() {
    let wg = Wakegate::start(&testapp_solution("app", "", "idle-timeout = \"2s\""));
    let idle = "wakegate_scale_downs_total{solution=\"app\",reason=\"idle\"}";

    let mut ws = open_ws(&wg, "app").await;
    echo(&mut ws, Message::text("first")).await;
    assert_eq!(wg.phase("app").await, "ready");

    // Silent for well over the idle timeout: the open stream is activity.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(wg.phase("app").await, "ready", "scaled down under an open WebSocket; log:\n{}", wg.log());
    echo(&mut ws, Message::text("still here")).await;
    let m = wg.metrics().await;
    assert_eq!(metric(&m, idle).unwrap_or(0.0), 0.0, "idle scale-down under an open WebSocket; log:\n{}", wg.log());
    assert_eq!(wg.starts().len(), 1, "restarted under an open WebSocket; log:\n{}", wg.log());

    // Closed: now it is idle and goes to sleep.
    close_ws(ws).await;
    let cold = eventually(Duration::from_secs(6), || async { wg.phase("app").await == "cold" }).await;
    assert!(cold, "not scaled down within 6 s of the WebSocket closing; phase {}; log:\n{}", wg.phase("app").await, wg.log());
    let m = wg.metrics().await;
    assert_eq!(metric(&m, idle), Some(1.0), "one idle scale-down expected; metrics:\n{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_events_arrive_as_produced() {
    let wg = Wakegate::start(&testapp_solution("app", "", ""));
    let req = Request::get("/sse?n=4&interval_ms=400")
        .header("host", "app.localhost")
        .header("accept", "text/event-stream")
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("request");
    let resp = timeout(Duration::from_secs(30), send(wg.public, req)).await.expect("no response within 30 s").expect("send");
    assert_eq!(resp.status(), 200, "log:\n{}", wg.log());
    assert_eq!(resp.headers().get("content-type").map(|v| v.to_str().unwrap_or("")), Some("text/event-stream"));

    let mut body = resp.into_body();
    let mut text = String::new();
    let mut first: Option<Instant> = None;
    let end = loop {
        let frame = timeout(Duration::from_secs(10), body.frame()).await.expect("stalled for 10 s");
        match frame {
            None => break Instant::now(),
            Some(f) => {
                let f = f.expect("body frame");
                if let Some(d) = f.data_ref() {
                    text.push_str(&String::from_utf8_lossy(d));
                }
                if first.is_none() && text.contains("data: event 0\n\n") {
                    first = Some(Instant::now());
                }
            }
        }
    };
    let expected: String = (0..4).map(|i| format!("data: event {i}\n\n")).collect();
    assert_eq!(text, expected, "every event, in order, nothing else");
    let first = first.expect("event 0 seen");
    let gap = end.duration_since(first);
    assert!(gap > Duration::from_millis(800), "event 0 arrived only {gap:?} before the end: the stream was buffered");
}

const UPLOAD_SIZE: u64 = 1 << 30;
const CHUNK: usize = 256 * 1024;

/// A few distinct pseudo-random chunks, cycled through by the upload.
fn chunk_set() -> Vec<Bytes> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..17)
        .map(|_| {
            let mut v = Vec::with_capacity(CHUNK);
            while v.len() < CHUNK {
                // xorshift64
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                v.extend_from_slice(&x.to_le_bytes());
            }
            Bytes::from(v)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_1gib_streams_with_bounded_memory() {
    let wg = Wakegate::start(&testapp_solution("app", "", "max-body-size = \"2Gi\""));
    // Warm up, so the cold start is not part of the upload.
    let r = timeout(Duration::from_secs(30), wg.get("app", "/hello")).await.expect("warm-up timed out");
    assert_eq!(r.status, 200, "warm-up; log:\n{}", wg.log());
    // Let the allocator settle after the start-up.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let pid = wg.pid();
    let before = rss(pid);
    assert!(before > 0, "cannot read the gateway's RSS");

    let peak = Arc::new(AtomicU64::new(before));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                peak.fetch_max(rss(pid), Ordering::Relaxed);
            }
        })
    };

    // The body: produced chunk by chunk, each also fed to sha256sum.
    let mut hasher = tokio::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run sha256sum");
    let mut hash_in = hasher.stdin.take().expect("sha256sum stdin");
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    let producer = tokio::spawn(async move {
        let chunks = chunk_set();
        let n = UPLOAD_SIZE as usize / CHUNK;
        for i in 0..n {
            let c = chunks[(i * 7 + i / 17) % chunks.len()].clone();
            hash_in.write_all(&c).await.expect("feed sha256sum");
            if tx.send(Ok(Frame::data(c))).await.is_err() {
                return false;
            }
        }
        drop(hash_in);
        true
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    let req = Request::put("/upload")
        .header("host", "app.localhost")
        .header("content-type", "application/octet-stream")
        .header("content-length", UPLOAD_SIZE.to_string())
        .body(StreamBody::new(stream))
        .expect("request");

    let started = Instant::now();
    let upload = async {
        let resp = send(wg.public, req).await?;
        read(resp).await
    };
    let result = timeout(Duration::from_secs(120), upload).await;
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    let resp = match result {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => panic!("upload failed after {:?}: {e:#}; log:\n{}", started.elapsed(), wg.log()),
        Err(_) => panic!("upload did not finish within 120 s; log:\n{}", wg.log()),
    };
    let elapsed = started.elapsed();
    assert!(producer.await.expect("producer"), "the body was not consumed whole");
    let out = timeout(Duration::from_secs(30), hasher.wait_with_output()).await.expect("sha256sum timed out").expect("sha256sum");
    let expected_sha = String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or("").to_string();
    assert_eq!(expected_sha.len(), 64, "sha256sum output: {:?}", out.stdout);

    assert_eq!(resp.status, 200, "body: {}; log:\n{}", resp.body, wg.log());
    let json: serde_json::Value = serde_json::from_str(&resp.body).expect("upload JSON");
    assert_eq!(json["bytes"].as_u64(), Some(UPLOAD_SIZE), "bytes received by the solution: {json}");
    assert_eq!(json["sha256"].as_str(), Some(expected_sha.as_str()), "the body arrived altered");

    let peak = peak.load(Ordering::Relaxed);
    let growth = peak.saturating_sub(before);
    eprintln!("upload of 1 GiB took {elapsed:?}; gateway RSS before {} MiB, peak {} MiB", before >> 20, peak >> 20);
    assert!(
        growth < 64 << 20,
        "gateway RSS grew by {} MiB during the upload (before {} MiB, peak {} MiB)",
        growth >> 20,
        before >> 20,
        peak >> 20
    );
}
