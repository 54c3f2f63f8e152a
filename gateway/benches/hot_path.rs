//! Micro-benchmarks of the request path's pure parts: host routing, the rate
//! limiter check, the header rewrite towards a solution, and the own HTTP/1.1
//! code (request head parse, request head encode, response head parse). They guard against
//! regressions (allocation, hashing, locking) that load tests see only as noise.
//! Run: `cargo bench -p wakegate --bench hot_path`.

use std::hint::black_box;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderValue, Request};
use proto::{Backend, SolutionSettings, SolutionSpec, Upstream};
use scaler::{SolutionHandle, SolutionState, StateCell};
use wakegate::client::Client;
use wakegate::limits::RateLimiter;
use wakegate::metrics::Metrics;
use wakegate::router::{Routes, Target};
use wakegate::solution::SolutionRt;

fn routes(n: usize) -> Routes {
    let metrics = Metrics::new();
    let list = (0..n)
        .map(|i| {
            let spec = SolutionSpec {
                name: format!("solution{i}"),
                description: None,
                backend: Backend::Upstream(Upstream { host: "127.0.0.1".into(), port: 9000 }),
                settings: SolutionSettings::default(),
                overrides: Vec::new(),
            };
            let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
            let handle = SolutionHandle::new(Arc::new(StateCell::new(SolutionState::cold())), tx);
            Arc::new(SolutionRt::new(spec.clone(), handle, metrics.solution(&spec.name), 1000))
        })
        .collect();
    Routes::new("aim.example.com".into(), list)
}

fn route(c: &mut Criterion) {
    let r = routes(100);
    c.bench_function("route/lower-case host", |b| {
        b.iter(|| matches!(r.route(black_box("solution42.aim.example.com:443")), Target::Solution(_)))
    });
    c.bench_function("route/mixed-case host", |b| {
        b.iter(|| matches!(r.route(black_box("Solution42.AIM.example.com.")), Target::Solution(_)))
    });
    c.bench_function("route/unknown host", |b| b.iter(|| matches!(r.route(black_box("nope.example.org")), Target::Unknown)));
}

fn limiter(c: &mut Criterion) {
    let l = RateLimiter::new(1_000_000, 1_000_000, 100_000);
    let ip: IpAddr = "198.51.100.7".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
    c.bench_function("limiter/known client", |b| b.iter(|| l.check_key(black_box(ip))));
    let mut n = 0u32;
    let fresh = RateLimiter::new(10, 10, 100_000);
    c.bench_function("limiter/many clients", |b| {
        b.iter(|| {
            n = n.wrapping_add(1) % 50_000;
            fresh.check_key(IpAddr::from(n.to_be_bytes()))
        })
    });
}

fn rewrite(c: &mut Criterion) {
    rewrite_case(c, "rewrite/typical browser request", || {
        Request::get("/api/embed?x=1")
            .header("host", "nlp.aim.example.com")
            .header("user-agent", "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0")
            .header("accept", "text/html,application/xhtml+xml")
            .header("accept-language", "en-GB,en;q=0.9")
            .header("connection", "keep-alive")
            .header("cookie", "session=abc")
            .body(())
            .unwrap_or_default()
    });
    rewrite_case(c, "rewrite/script request", || {
        Request::post("/api/embed")
            .header("host", "nlp.aim.example.com")
            .header("user-agent", "curl/7.88.1")
            .header("accept", "*/*")
            .header("content-type", "application/json")
            .header("content-length", "27")
            .body(())
            .unwrap_or_default()
    });
}

/// Times `to_upstream` on fresh requests from `make`.
fn rewrite_case(c: &mut Criterion, name: &str, make: impl Fn() -> Request<()>) {
    let peer: SocketAddr = "127.0.0.1:50000".parse().unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
    let client = Client { ip: peer.ip(), forwarded_trusted: false };
    let host = HeaderValue::from_static("nlp.aim.example.com");
    let rid = HeaderValue::from_static("0123456789abcdef");
    c.bench_function(name, |b| {
        b.iter_batched(
            &make,
            |mut req| {
                wakegate::forward::to_upstream(&mut req, peer, client, &host, false, false).set(req.headers_mut(), &rid);
                req
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

/// A browser's request head, as the server loop reads it.
const BROWSER_HEAD: &[u8] = b"GET /api/embed?x=1 HTTP/1.1\r\nHost: nlp.aim.example.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0\r\nAccept: text/html,application/xhtml+xml\r\nAccept-Language: en-GB,en;q=0.9\r\nAccept-Encoding: gzip, deflate, br\r\nConnection: keep-alive\r\nCookie: session=abc\r\nUpgrade-Insecure-Requests: 1\r\n\r\n";
/// A solution's response head, as the own client reads it.
const RESPONSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nServer: uvicorn\r\nDate: Sat, 28 Nov 2026 21:00:00 GMT\r\nContent-Type: application/json\r\nContent-Length: 1234\r\nCache-Control: no-store\r\n\r\n";

fn http1(c: &mut Criterion) {
    c.bench_function("http1/parse browser request head", |b| {
        b.iter_batched(
            || bytes::BytesMut::from(BROWSER_HEAD),
            |mut buf| wakegate::h1::parse_request(&mut buf, 100),
            criterion::BatchSize::SmallInput,
        )
    });
    c.bench_function("http1/parse solution response head", |b| {
        b.iter_batched(
            || bytes::BytesMut::from(RESPONSE_HEAD),
            |mut buf| wakegate::direct::parse_head(&mut buf, false),
            criterion::BatchSize::SmallInput,
        )
    });
    let mut req = wakegate::h1::parse_request(&mut bytes::BytesMut::from(BROWSER_HEAD), 100);
    let mut out = Vec::new();
    c.bench_function("http1/encode request head", |b| {
        b.iter(|| {
            if let Some(r) = req.as_mut() {
                wakegate::direct::encode(&mut out, black_box(r), None);
            }
            out.len()
        })
    });
}

criterion_group!(benches, route, limiter, rewrite, http1);
criterion_main!(benches);
