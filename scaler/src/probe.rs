//! Readiness probes: a TCP connect, or an HTTP `GET` whose status is below 400.
//! Written on a raw socket: a probe is one tiny request, and needs no pool.

use std::net::SocketAddr;
use std::time::Duration;

use proto::Probe;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeResult {
    /// Nothing accepts connections yet.
    Closed,
    /// The port accepts, but the HTTP check has not passed (the reason says why).
    Open(String),
    /// Ready to serve.
    Ready,
}

/// Runs `probe` against `addr`, giving up after `timeout`.
pub async fn check(probe: &Probe, addr: SocketAddr, timeout: Duration) -> ProbeResult {
    match tokio::time::timeout(timeout, run(probe, addr)).await {
        Ok(r) => r,
        Err(_) => ProbeResult::Open(format!("probe timed out after {timeout:?}")),
    }
}

async fn run(probe: &Probe, addr: SocketAddr) -> ProbeResult {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return ProbeResult::Closed;
    };
    let path = match probe {
        Probe::Tcp => return ProbeResult::Ready,
        Probe::Http { path } => path,
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: wakegate-probe\r\nConnection: close\r\n\r\n");
    if let Err(e) = stream.write_all(req.as_bytes()).await {
        return ProbeResult::Open(format!("probe write failed: {e}"));
    }
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match stream.read(&mut buf[n..]).await {
            Ok(0) => return ProbeResult::Open("connection closed before a status line".into()),
            Ok(k) => n += k,
            Err(e) => return ProbeResult::Open(format!("probe read failed: {e}")),
        }
    }
    let line = &buf[..n];
    let status = line
        .strip_prefix(b"HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| std::str::from_utf8(code).ok())
        .and_then(|code| code.parse::<u16>().ok());
    match status {
        Some(code) if (200..400).contains(&code) => ProbeResult::Ready,
        Some(code) => ProbeResult::Open(format!("GET {path} answered {code}")),
        None => ProbeResult::Open("not an HTTP response".into()),
    }
}
