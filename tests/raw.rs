//! Raw HTTP/1.x over TCP, for requests no well-behaved client sends: the bytes
//! go out exactly as written, and what comes back is read as bytes, split into
//! responses, with how the connection ended. Every read has a deadline, so a
//! gateway that hangs fails the test instead of stalling it.
//!
//! Shared by several test binaries, each using a part of it.
#![allow(dead_code)]

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{Instant, timeout_at};

/// Longest wait for an answer that should come.
pub const ANSWER: Duration = Duration::from_secs(5);
/// After a complete keep-alive response, how long to wait for anything more
/// (a second, smuggled response would follow within this).
const QUIET: Duration = Duration::from_millis(300);

/// Connects to `addr` from the local address `from` (on Linux every address of
/// 127/8 is on `lo`), so one test can be several clients.
pub async fn connect_from(addr: SocketAddr, from: IpAddr) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(addr).await
}

/// How a connection's reading ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The peer closed it (EOF).
    Closed,
    /// The peer reset it.
    Reset,
    /// Still open: a complete response and then silence.
    Open,
    /// The deadline passed mid-response or with nothing received.
    TimedOut,
}

impl End {
    /// Closed or reset: the peer is done with this connection.
    pub fn closed(self) -> bool {
        matches!(self, End::Closed | End::Reset)
    }
}

/// One HTTP/1.x response.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// Body (de-chunked).
    pub body: String,
}

impl RawResponse {
    /// A header's first value ("" if absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers.iter().find(|(n, _)| n == name).map_or("", |(_, v)| v.as_str())
    }

    /// Whether this is the gateway's own JSON refusal (asked for with
    /// `accept: application/json`), not something a solution answered.
    pub fn is_gateway_refusal(&self) -> bool {
        self.header("content-type") == "application/json"
            && serde_json::from_str::<serde_json::Value>(&self.body)
                .is_ok_and(|v| v["status"] == self.status && v["request_id"] == self.header("x-request-id"))
    }

    /// The body as JSON (panics if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// Everything one connection answered.
#[derive(Debug)]
pub struct Exchange {
    /// The complete responses, in order.
    pub responses: Vec<RawResponse>,
    /// Bytes left over after the last complete response.
    pub rest: Vec<u8>,
    /// How it ended.
    pub end: End,
}

impl Exchange {
    /// The statuses of the responses, in order.
    pub fn statuses(&self) -> Vec<u16> {
        self.responses.iter().map(|r| r.status).collect()
    }

    /// The only response (panics unless there is exactly one).
    pub fn one(&self) -> &RawResponse {
        assert_eq!(self.responses.len(), 1, "expected exactly one response: {self:?}");
        &self.responses[0]
    }
}

/// Parses one response at the start of `buf`: `None` if incomplete, else it and
/// its length. A response without a length ends at `closed`.
fn parse_response(buf: &[u8], closed: bool) -> Option<(RawResponse, usize)> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string())).collect();
    let find = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    let rest = &buf[head_end..];
    let (body, used) = if (100..200).contains(&status) || status == 204 || status == 304 {
        (Vec::new(), 0)
    } else if find("transfer-encoding").is_some_and(|t| t.to_ascii_lowercase().contains("chunked")) {
        dechunk(rest)?
    } else if let Some(len) = find("content-length") {
        let len: usize = len.parse().ok()?;
        (rest.get(..len)?.to_vec(), len)
    } else if closed {
        (rest.to_vec(), rest.len())
    } else {
        return None;
    };
    let body = String::from_utf8_lossy(&body).into_owned();
    Some((RawResponse { status, headers, body }, head_end + used))
}

fn dechunk(mut buf: &[u8]) -> Option<(Vec<u8>, usize)> {
    let total = buf.len();
    let mut body = Vec::new();
    loop {
        let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
        let size_text = String::from_utf8_lossy(&buf[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        buf = &buf[line_end + 2..];
        if size == 0 {
            let trailer_end = buf.windows(2).position(|w| w == b"\r\n")?;
            buf = &buf[trailer_end + 2..];
            return Some((body, total - buf.len()));
        }
        body.extend_from_slice(buf.get(..size)?);
        buf = buf.get(size + 2..)?;
    }
}

/// Splits `buf` into complete responses; returns them and the leftover bytes.
fn split(buf: &[u8], closed: bool) -> (Vec<RawResponse>, Vec<u8>) {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some((r, n)) = parse_response(&buf[at..], closed) {
        out.push(r);
        at += n;
        if at == buf.len() {
            break;
        }
    }
    (out, buf[at..].to_vec())
}

/// Reads what `stream` answers until it closes, or until a complete response
/// is followed by silence, or until `wait` has passed.
pub async fn read_exchange<R: AsyncRead + Unpin>(stream: &mut R, wait: Duration) -> Exchange {
    let deadline = Instant::now() + wait;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    let end = loop {
        let (responses, rest) = split(&buf, false);
        let settled = !responses.is_empty() && rest.is_empty();
        let until = if settled { deadline.min(Instant::now() + QUIET) } else { deadline };
        match timeout_at(until, stream.read(&mut chunk)).await {
            Ok(Ok(0)) => break End::Closed,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => break End::Reset,
            Ok(Err(_)) => break End::Reset,
            Err(_) if settled => break End::Open,
            Err(_) => break End::TimedOut,
        }
    };
    let (responses, rest) = split(&buf, end.closed());
    Exchange { responses, rest, end }
}

/// Sends `bytes` on a new connection from 127.0.0.1 and reads the answer.
pub async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Exchange {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    exchange_on(&mut stream, bytes).await
}

/// Sends `bytes` on `stream` while reading the answer (a server may answer
/// and close before it has read everything). A write the peer refuses is not
/// an error: what it answered is still read.
pub async fn exchange_on(stream: &mut TcpStream, bytes: &[u8]) -> Exchange {
    let (mut rd, mut wr) = stream.split();
    let write = async {
        let _ = tokio::time::timeout(ANSWER, wr.write_all(bytes)).await;
    };
    let ((), ex) = tokio::join!(write, read_exchange(&mut rd, ANSWER));
    ex
}

/// A plain `GET path` for `host`, keep-alive, with extra header lines.
pub fn get_request(host: &str, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut req = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\n");
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// Reads one response from `stream`, returning as soon as it is complete
/// (`None` if the connection ends first or `wait` passes).
pub async fn read_response<R: AsyncRead + Unpin>(stream: &mut R, wait: Duration) -> Option<RawResponse> {
    let deadline = Instant::now() + wait;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        if let Some((r, _)) = parse_response(&buf, false) {
            return Some(r);
        }
        match timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            Ok(_) => return parse_response(&buf, true).map(|(r, _)| r),
            Err(_) => return None,
        }
    }
}

/// Sends `bytes` on a new connection and reads the first response, as soon as it is complete.
pub async fn request(addr: SocketAddr, bytes: &[u8]) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("send");
    read_response(&mut stream, ANSWER).await.unwrap_or_else(|| panic!("no response to {:?}", String::from_utf8_lossy(bytes)))
}

/// `GET path` on `host` on a new connection from the local address `from`; the response.
pub async fn get_from(addr: SocketAddr, from: IpAddr, host: &str, path: &str, extra: &[(&str, &str)]) -> RawResponse {
    let mut stream = connect_from(addr, from).await.expect("connect");
    stream.write_all(&get_request(host, path, extra)).await.expect("send");
    read_response(&mut stream, ANSWER).await.expect("a response")
}

/// Asserts that `r` is the gateway's JSON refusal (asked for with
/// `accept: application/json`) with `status` and `reason`, quoting its request id.
pub fn assert_refusal(r: &RawResponse, status: u16, reason: &str) {
    assert_eq!(r.status, status, "{r:?}");
    let id = r.header("x-request-id");
    assert!(!id.is_empty(), "a refusal carries x-request-id: {r:?}");
    let v = r.json();
    assert_eq!(v["error"], reason, "{v}");
    assert_eq!(v["status"], status, "{v}");
    assert_eq!(v["request_id"], id, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
}

/// The requests testapp recorded (`--record {dir}/rec.jsonl`), in order.
pub fn records(dir: &std::path::Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("rec.jsonl")).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad record line ({e}): {l}"))).collect()
}
