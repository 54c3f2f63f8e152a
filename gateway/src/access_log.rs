//! The access log: one JSON line per request (`access-log`), as ingress-nginx
//! and Envoy write theirs, for Loki, Elasticsearch or `jq`:
//!
//! ```json
//! {"time":"2026-11-29T21:04:05.123Z","request_id":"5f0c…","client":"203.0.113.9","method":"GET","host":"nlp.example.com","uri":"/similarity","protocol":"HTTP/1.1","user_agent":"curl/8.5.0","solution":"nlp","status":200,"bytes":58,"duration_ms":3.412,"upstream":"10.42.0.17:8080","completed":true}
//! ```
//!
//! `time` is when the request arrived; `duration_ms` runs to the response's
//! last byte. `reason` says why the gateway answered instead of the solution
//! (the `reason` of `wakegate_rejected_requests_total`, `waiting_page`,
//! `https_redirect`), `completed` is false when the body was cut short, and a
//! client that goes away before any answer (a held request, most often) is
//! logged with status 499 and reason `client_closed`, as nginx does.
//!
//! A request formats its line into a buffer of its own (only while the log is
//! on) and appends it to one shared buffer; a thread of the log's own writes
//! that out every few milliseconds, so a slow or blocked output never holds a
//! request. Lines that do not fit while the output is blocked (4 MiB waiting)
//! are dropped and counted in `wakegate_access_log_dropped_lines_total`.

use std::fs::File;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderValue, Method, Response, Version, header};
use prometheus_client::metrics::counter::Counter;
use proto::settings::AccessLog as Dest;

use crate::h1::push_decimal;

/// Whether any access log is on: what the gateway answers itself carries its
/// [`Reason`] only then (an extension costs allocations).
static RECORDING: AtomicBool = AtomicBool::new(false);

/// Every access log of the process, for [`flush_all`].
static LOGS: Mutex<Vec<std::sync::Weak<Shared>>> = Mutex::new(Vec::new());

/// Lines waiting to be written, at most; more are dropped (and counted).
const MAX_BUFFERED: usize = 4 << 20;
/// The writer waits this long after the first line of a batch: under load it
/// writes a few hundred lines at once, not one per request.
const BATCH_DELAY: Duration = Duration::from_millis(10);
/// How often a log file's path is checked for a rotation.
const REOPEN_CHECK: Duration = Duration::from_secs(1);
/// Bytes of a header value (user agent, referer) or a host kept in a line.
const MAX_FIELD: usize = 512;
/// Bytes of a request target kept in a line (one client's long targets
/// must not crowd out everyone else's lines).
const MAX_URI: usize = 4096;
/// Longest wait for the last lines at exit.
pub const FLUSH_WAIT: Duration = Duration::from_secs(2);
/// A batch buffer keeps at most this much capacity between batches.
const KEEP_CAPACITY: usize = 1 << 20;

/// The gateway's access log.
pub struct AccessLog {
    shared: Arc<Shared>,
}

struct Shared {
    on: AtomicBool,
    /// Query strings are logged (`access-log-query = "keep"`).
    queries: AtomicBool,
    state: Mutex<State>,
    wake: Condvar,
    /// Held while a batch is written (by the writer, or by [`AccessLog::flush`]):
    /// batches reach the output in the order they were taken.
    out: Mutex<Output>,
    dropped: Counter,
}

struct State {
    buf: Vec<u8>,
    dest: Dest,
    /// Bumped at every change of `dest`.
    generation: u64,
    /// The writer thread waits for `wake`.
    waiting: bool,
    started: bool,
    /// Lines dropped since the writer last said so.
    dropped: u64,
}

/// Why the gateway answered a request itself (a response extension).
#[derive(Debug, Clone, Copy)]
pub struct Reason(pub &'static str);

/// What the proxy learnt on a request's way that its line tells: the
/// solution endpoint that answered (or failed to), and how long the request
/// was held for a wake-up, in milliseconds. Returned with the response, not
/// carried in its extensions (the first extension costs a map and two
/// allocations per request).
#[derive(Debug, Clone, Copy, Default)]
pub struct Trail {
    /// The endpoint.
    pub upstream: Option<SocketAddr>,
    /// Milliseconds held.
    pub waited: Option<u64>,
}

/// Whether an access log is on (see [`RECORDING`]).
pub fn recording() -> bool {
    RECORDING.load(Ordering::Relaxed)
}

/// `resp` with `reason` noted for the access log, while one is on.
pub fn with_reason<B>(mut resp: Response<B>, reason: &'static str) -> Response<B> {
    if recording() {
        resp.extensions_mut().insert(Reason(reason));
    }
    resp
}

/// Writes every line logged so far, of every access log, waiting at most
/// `wait` for an output that does not take them (a full pipe).
pub fn flush_all(wait: Duration) {
    let logs: Vec<Arc<Shared>> = lock(&LOGS).iter().filter_map(std::sync::Weak::upgrade).collect();
    if logs.is_empty() {
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let flushing = std::thread::Builder::new().name("access-log-flush".into()).spawn(move || {
        for log in &logs {
            drain(log);
        }
        let _ = tx.send(());
    });
    if flushing.is_ok() && rx.recv_timeout(wait).is_err() {
        tracing::warn!("access log: the last lines were not taken within {wait:?}");
    }
}

impl AccessLog {
    /// An access log writing nowhere until [`AccessLog::set`].
    pub fn new(dropped: Counter) -> Self {
        let state = State { buf: Vec::new(), dest: Dest::Off, generation: 0, waiting: false, started: false, dropped: 0 };
        let out = Output { dest: Dest::Off, generation: 0, file: None, checked: Instant::now(), failing: false, spare: Vec::new() };
        let shared = Arc::new(Shared {
            on: AtomicBool::new(false),
            queries: AtomicBool::new(true),
            state: Mutex::new(state),
            wake: Condvar::new(),
            out: Mutex::new(out),
            dropped,
        });
        let mut logs = lock(&LOGS);
        logs.retain(|l| l.strong_count() > 0);
        logs.push(Arc::downgrade(&shared));
        Self { shared }
    }

    /// Writes to `dest` from now on, with query strings or without. Its
    /// thread runs while the log is on (it ends once the log is off and
    /// every line is out).
    pub fn set(&self, dest: &Dest, queries: bool) {
        self.shared.queries.store(queries, Ordering::Relaxed);
        let mut st = lock(&self.shared.state);
        if st.dest != *dest {
            st.dest = dest.clone();
            st.generation += 1;
        }
        let on = *dest != Dest::Off;
        if !on && st.waiting {
            st.waiting = false;
            self.shared.wake.notify_one();
        }
        if on && !st.started {
            let shared = self.shared.clone();
            match std::thread::Builder::new().name("access-log".into()).spawn(move || write_loop(&shared)) {
                Ok(_) => st.started = true,
                Err(e) => {
                    tracing::error!("access log off: its thread did not start: {e}");
                    return;
                }
            }
        }
        self.shared.on.store(on, Ordering::Relaxed);
        // (One gateway, one log, per process.)
        RECORDING.store(on, Ordering::Relaxed);
    }

    /// Whether requests are logged now.
    pub fn is_on(&self) -> bool {
        self.shared.on.load(Ordering::Relaxed)
    }

    /// The start of a request's line, if the log is on.
    pub fn begin<B>(&self, client: IpAddr, req: &http::Request<B>, rid: &HeaderValue, started: Instant) -> Option<Box<Line>> {
        self.is_on().then(|| Box::new(Line::begin(self.shared.clone(), client, req, rid, started)))
    }
}

impl AccessLog {
    /// A line for a connection refused before any request was read whole (a
    /// head too slow, too large or malformed, a connection over the limit):
    /// no method, target or request id to tell.
    pub fn refused(&self, client: IpAddr, status: u16, reason: &str, rid: Option<&HeaderValue>) {
        if !self.is_on() {
            return;
        }
        let line = Line { buf: Line::start(rid, client), started: Instant::now(), head: false, log: self.shared.clone() };
        line.finish(status, 0, false, Some(reason), None, None);
    }
}

/// The line of an upgraded connection (WebSocket), written when its tunnel
/// closes, with the bytes sent to the client and the whole duration: set on
/// the 101 response by the proxy (while a log is on), which gives the tunnel
/// a clone; the request handler attaches the line. Whichever comes second
/// writes it.
#[derive(Clone, Default)]
pub struct Tunnel(Arc<Slot>);

#[derive(Default)]
struct Slot(Mutex<TunnelState>);

#[derive(Default)]
enum TunnelState {
    #[default]
    Open,
    Attached(Box<Answered>),
    Closed {
        to_client: u64,
        clean: bool,
    },
    Written,
}

impl Drop for Slot {
    /// A tunnel dropped before it closed (the runtime ending): its line still.
    fn drop(&mut self) {
        let st = self.0.get_mut().unwrap_or_else(|p| p.into_inner());
        if let TunnelState::Attached(mut a) = std::mem::replace(st, TunnelState::Written) {
            a.cut();
            a.finish(true);
        }
    }
}

impl Tunnel {
    /// The request's line, its answer (the 101) known.
    pub fn attach(&self, answered: Box<Answered>) {
        let mut st = lock(&self.0.0);
        match std::mem::replace(&mut *st, TunnelState::Written) {
            TunnelState::Closed { to_client, clean } => {
                drop(st);
                let mut a = answered;
                a.tunnel_closed(to_client, clean);
            }
            _ => *st = TunnelState::Attached(answered),
        }
    }

    /// The tunnel closed: `to_client` bytes went to the client; `clean` if
    /// both sides closed without an error.
    pub fn closed(&self, to_client: u64, clean: bool) {
        let mut st = lock(&self.0.0);
        match std::mem::replace(&mut *st, TunnelState::Written) {
            TunnelState::Attached(mut a) => {
                drop(st);
                a.tunnel_closed(to_client, clean);
            }
            _ => *st = TunnelState::Closed { to_client, clean },
        }
    }
}

/// One request's line, until its answer is known.
#[derive(Clone)]
pub struct Line {
    buf: Vec<u8>,
    started: Instant,
    /// A HEAD request: its answer has no body.
    head: bool,
    log: Arc<Shared>,
}

impl Line {
    /// `{"time":…,"request_id":…,"client":…`: how every line starts.
    fn start(rid: Option<&HeaderValue>, client: IpAddr) -> Vec<u8> {
        let mut buf = Vec::with_capacity(384);
        buf.extend_from_slice(b"{\"time\":\"");
        rfc3339(SystemTime::now(), &mut buf);
        buf.push(b'"');
        field(&mut buf, "request_id", rid.map(HeaderValue::as_bytes));
        buf.extend_from_slice(b",\"client\":\"");
        ip(&mut buf, client);
        buf.push(b'"');
        buf
    }

    fn begin<B>(log: Arc<Shared>, client: IpAddr, req: &http::Request<B>, rid: &HeaderValue, started: Instant) -> Line {
        let (method, uri, version, headers) = (req.method(), req.uri(), req.version(), req.headers());
        let mut buf = Line::start(Some(rid), client);
        buf.extend_from_slice(b",\"method\":");
        string(&mut buf, method.as_str().as_bytes());
        let host = uri.authority().map(|a| a.as_str().as_bytes()).or_else(|| headers.get(header::HOST).map(HeaderValue::as_bytes));
        field(&mut buf, "host", host.map(|h| cut(h, MAX_FIELD)));
        let queries = log.queries.load(Ordering::Relaxed);
        buf.extend_from_slice(b",\"uri\":");
        let target = if *method == Method::CONNECT {
            // Authority-form: the target is the host and port asked for.
            uri.authority().map(|a| a.as_str())
        } else if queries {
            uri.path_and_query().map(|p| p.as_str())
        } else {
            Some(uri.path())
        };
        string(&mut buf, cut(target.filter(|t| !t.is_empty()).map_or(b"/", str::as_bytes), MAX_URI));
        buf.extend_from_slice(match version {
            Version::HTTP_09 => b",\"protocol\":\"HTTP/0.9\"",
            Version::HTTP_10 => b",\"protocol\":\"HTTP/1.0\"",
            Version::HTTP_2 => b",\"protocol\":\"HTTP/2.0\"",
            Version::HTTP_3 => b",\"protocol\":\"HTTP/3.0\"",
            _ => b",\"protocol\":\"HTTP/1.1\"",
        });
        for (key, name) in [("user_agent", header::USER_AGENT), ("referer", header::REFERER)] {
            if let Some(v) = headers.get(&name) {
                let mut v = v.as_bytes();
                if !queries && name == header::REFERER {
                    v = &v[..v.iter().position(|&b| b == b'?').unwrap_or(v.len())];
                }
                field(&mut buf, key, Some(cut(v, MAX_FIELD)));
            }
        }
        Line { buf, started, head: *method == Method::HEAD, log }
    }

    /// Notes the solution the request is for.
    pub fn solution(&mut self, name: &str) {
        field(&mut self.buf, "solution", Some(name.as_bytes()));
    }

    /// The answer's part of the line, kept with the response body until its end.
    pub fn answered<B>(self, resp: &Response<B>, trail: Trail) -> Box<Answered> {
        let ext = resp.extensions();
        let status = resp.status();
        // Nothing to send: complete once the head is out.
        let bodyless = self.head || status.is_informational() || status.as_u16() == 204 || status.as_u16() == 304;
        Box::new(Answered {
            line: Some(self),
            status: status.as_u16(),
            reason: ext.get::<Reason>().map(|r| r.0),
            upstream: trail.upstream,
            waited: trail.waited,
            bytes: 0,
            ended: bodyless,
            failed: false,
            broken: false,
        })
    }

    fn finish(mut self, status: u16, bytes: u64, completed: bool, reason: Option<&str>, upstream: Option<SocketAddr>, waited: Option<u64>) {
        // Formatted by hand: `write!` would be most of the line's cost.
        let micros = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let buf = &mut self.buf;
        buf.extend_from_slice(b",\"status\":");
        push_decimal(buf, u64::from(status));
        buf.extend_from_slice(b",\"bytes\":");
        push_decimal(buf, bytes);
        buf.extend_from_slice(b",\"duration_ms\":");
        push_decimal(buf, micros / 1000);
        buf.push(b'.');
        padded(buf, micros % 1000, 3);
        if let Some(u) = upstream {
            buf.extend_from_slice(b",\"upstream\":\"");
            match u {
                SocketAddr::V4(_) => ip(buf, u.ip()),
                SocketAddr::V6(_) => {
                    buf.push(b'[');
                    ip(buf, u.ip());
                    buf.push(b']');
                }
            }
            buf.push(b':');
            push_decimal(buf, u64::from(u.port()));
            buf.push(b'"');
        }
        if let Some(ms) = waited {
            buf.extend_from_slice(b",\"wait_ms\":");
            push_decimal(buf, ms);
        }
        field(buf, "reason", reason.map(str::as_bytes));
        buf.extend_from_slice(if completed { b",\"completed\":true}\n" } else { b",\"completed\":false}\n" });
        push(&self.log, buf);
    }
}

/// A line whose request was answered: written when the response body ends
/// or is dropped (see `server::Tracked`).
pub struct Answered {
    line: Option<Line>,
    status: u16,
    reason: Option<&'static str>,
    upstream: Option<SocketAddr>,
    waited: Option<u64>,
    bytes: u64,
    ended: bool,
    /// Writing the answer to the client failed.
    failed: bool,
    /// The body broke on its way (the solution cut it short): never complete,
    /// whatever the writing did with what came.
    broken: bool,
}

impl Answered {
    /// Counts a frame of the body on its way out; `None` is its end.
    pub fn frame<E>(&mut self, frame: &Option<Result<http_body::Frame<bytes::Bytes>, E>>) {
        match frame {
            Some(Ok(f)) => self.bytes += f.data_ref().map_or(0, |d| d.len() as u64),
            Some(Err(_)) => self.broken = true,
            None => self.ended = true,
        }
    }

    /// The answer did not reach the client whole (a write to it failed).
    pub fn cut(&mut self) {
        self.failed = true;
    }

    /// The answer reached the client whole after all (see `h1::write_response`).
    pub fn delivered(&mut self) {
        self.failed = false;
    }

    fn tunnel_closed(&mut self, to_client: u64, clean: bool) {
        self.bytes = to_client;
        self.failed = !clean;
        self.finish(true);
    }

    /// Writes the line; `end_stream` if the body had nothing more to send.
    pub fn finish(&mut self, end_stream: bool) {
        if let Some(line) = self.line.take() {
            let completed = !self.failed && !self.broken && (self.ended || end_stream);
            line.finish(self.status, self.bytes, completed, self.reason, self.upstream, self.waited);
        }
    }
}

/// A request's line until it is answered: a client that goes away first is
/// logged with 499 (nginx's "client closed request").
pub struct Unanswered(pub Option<Box<Line>>);

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(line) = self.0.take() {
            line.finish(499, 0, false, Some("client_closed"), None, None);
        }
    }
}

fn push(log: &Shared, line: &[u8]) {
    let mut st = lock(&log.state);
    if st.dest == Dest::Off {
        // Begun before the log was turned off.
        return;
    }
    if st.buf.len() + line.len() > MAX_BUFFERED {
        st.dropped += 1;
        drop(st);
        log.dropped.inc();
        return;
    }
    st.buf.extend_from_slice(line);
    if st.waiting {
        st.waiting = false;
        drop(st);
        log.wake.notify_one();
    }
}

fn write_loop(log: &Shared) {
    loop {
        {
            let mut st = lock(&log.state);
            while st.buf.is_empty() {
                if st.dest == Dest::Off {
                    st.started = false;
                    return;
                }
                st.waiting = true;
                st = log.wake.wait(st).unwrap_or_else(|p| p.into_inner());
            }
        }
        std::thread::sleep(BATCH_DELAY);
        drain(log);
    }
}

/// Writes what is buffered.
fn drain(log: &Shared) {
    let mut out = lock(&log.out);
    let (batch, dropped) = {
        let mut st = lock(&log.state);
        if st.generation != out.generation {
            out.dest = st.dest.clone();
            out.generation = st.generation;
            out.file = None;
            out.failing = false;
        }
        // The buffer written last time takes the place of this one: no
        // buffer regrows from nothing while requests wait for the lock.
        let spare = std::mem::take(&mut out.spare);
        (std::mem::replace(&mut st.buf, spare), std::mem::take(&mut st.dropped))
    };
    if dropped > 0 {
        tracing::warn!("access log: {dropped} lines dropped: {} did not take them as fast as they came", out.dest_name());
    }
    let mut batch = batch;
    if !batch.is_empty() {
        out.write(&batch, &log.dropped);
    }
    batch.clear();
    batch.shrink_to(KEEP_CAPACITY);
    out.spare = batch;
}

/// The writer's side: the destination, and the file while one is open.
struct Output {
    dest: Dest,
    generation: u64,
    /// The open file and its (device, inode).
    file: Option<(File, (u64, u64))>,
    checked: Instant,
    /// The last write failed (said once, until one works again).
    failing: bool,
    /// The last batch's buffer, emptied, for the next.
    spare: Vec<u8>,
}

impl Output {
    fn dest_name(&self) -> String {
        match &self.dest {
            Dest::Off => "nothing".into(),
            Dest::Stdout => "stdout".into(),
            Dest::Stderr => "stderr".into(),
            Dest::File(p) => p.display().to_string(),
        }
    }

    fn write(&mut self, batch: &[u8], dropped: &Counter) {
        let result = match &self.dest {
            // Lines logged just before the log was turned off.
            Dest::Off => Ok(()),
            Dest::Stdout => std::io::stdout().lock().write_all(batch).and_then(|()| std::io::stdout().lock().flush()),
            Dest::Stderr => std::io::stderr().lock().write_all(batch),
            Dest::File(path) => {
                let path = path.clone();
                self.file_write(&path, batch)
            }
        };
        match result {
            Ok(()) if self.failing => {
                self.failing = false;
                tracing::info!("access log: writing to {} again", self.dest_name());
            }
            Ok(()) => {}
            Err(e) => {
                let lines = batch.iter().filter(|&&b| b == b'\n').count() as u64;
                dropped.inc_by(lines);
                if !self.failing {
                    self.failing = true;
                    tracing::warn!("access log: writing to {} failed: {e}; lines are dropped until it works again", self.dest_name());
                }
            }
        }
    }

    /// Appends to the file at `path`, opening it again when it was renamed or
    /// removed since it was opened (checked at most every [`REOPEN_CHECK`]).
    fn file_write(&mut self, path: &std::path::Path, batch: &[u8]) -> std::io::Result<()> {
        if self.file.is_some() && self.checked.elapsed() >= REOPEN_CHECK {
            self.checked = Instant::now();
            let current = std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
            if current != self.file.as_ref().map(|f| f.1) {
                self.file = None;
            }
        }
        if self.file.is_none() {
            let f = open(path)?;
            let id = f.metadata().map(|m| (m.dev(), m.ino()))?;
            self.file = Some((f, id));
            self.checked = Instant::now();
        }
        match &mut self.file {
            Some((f, _)) => f.write_all(batch),
            None => Ok(()),
        }
    }
}

/// Opens (creating) a log file for appending, readable by its owner and group.
pub fn open(path: &std::path::Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().append(true).create(true).mode(0o640).open(path)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `bytes`, at most `max` of them.
fn cut(bytes: &[u8], max: usize) -> &[u8] {
    &bytes[..bytes.len().min(max)]
}

/// `,"key":"value"` if there is a value.
fn field(buf: &mut Vec<u8>, key: &str, value: Option<&[u8]>) {
    if let Some(v) = value {
        buf.extend_from_slice(b",\"");
        buf.extend_from_slice(key.as_bytes());
        buf.extend_from_slice(b"\":");
        string(buf, v);
    }
}

/// `bytes` as a JSON string: UTF-8 kept, control characters escaped, bytes
/// that are not UTF-8 (obs-text in a header) replaced by U+FFFD.
fn string(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.push(b'"');
    if bytes.iter().all(|&b| PLAIN[usize::from(b)]) {
        buf.extend_from_slice(bytes);
    } else {
        for chunk in bytes.utf8_chunks() {
            for c in chunk.valid().chars() {
                match c {
                    '"' => buf.extend_from_slice(b"\\\""),
                    '\\' => buf.extend_from_slice(b"\\\\"),
                    '\n' => buf.extend_from_slice(b"\\n"),
                    '\r' => buf.extend_from_slice(b"\\r"),
                    '\t' => buf.extend_from_slice(b"\\t"),
                    c if c < ' ' || c == '\u{7f}' => {
                        let _ = write!(buf, "\\u{:04x}", c as u32);
                    }
                    c => buf.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                }
            }
            if !chunk.invalid().is_empty() {
                buf.extend_from_slice(b"\\ufffd");
            }
        }
    }
    buf.push(b'"');
}

/// Bytes a JSON string holds as they are: printable ASCII but `"` and `\`.
static PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0x20;
    while b < 0x7f {
        t[b] = b != b'"' as usize && b != b'\\' as usize;
        b += 1;
    }
    t
};

thread_local! {
    /// The last second formatted on this thread, and its text.
    static SECOND: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
}

/// `t` as RFC 3339 UTC with milliseconds (`2026-11-29T21:04:05.123Z`); the
/// part up to the second is formatted once a second per thread.
fn rfc3339(t: SystemTime, buf: &mut Vec<u8>) {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let (secs, ms) = (d.as_secs(), d.subsec_millis());
    let (cached, text) = SECOND.get();
    if cached == secs {
        buf.extend_from_slice(&text);
    } else {
        let start = buf.len();
        up_to_second(secs, buf);
        if let Ok(text) = <[u8; 19]>::try_from(&buf[start..]) {
            SECOND.set((secs, text));
        }
    }
    buf.push(b'.');
    padded(buf, u64::from(ms), 3);
    buf.push(b'Z');
}

/// `2026-11-29T21:04:05` (19 bytes for years 0000–9999).
fn up_to_second(secs: u64, buf: &mut Vec<u8>) {
    let sod = secs % 86_400;
    let (year, month, day) = proto::units::civil_from_days(secs / 86_400);
    padded(buf, year, 4);
    for (sep, n) in [(b'-', month), (b'-', day), (b'T', sod / 3600), (b':', sod / 60 % 60), (b':', sod % 60)] {
        buf.push(sep);
        padded(buf, n, 2);
    }
}

/// `n` in decimal, zero-padded to `width` digits.
fn padded(buf: &mut Vec<u8>, n: u64, width: usize) {
    let mut b = itoa::Buffer::new();
    let digits = b.format(n).as_bytes();
    buf.resize(buf.len() + width.saturating_sub(digits.len()), b'0');
    buf.extend_from_slice(digits);
}

fn ip(buf: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(a) => {
            for (i, octet) in a.octets().into_iter().enumerate() {
                if i > 0 {
                    buf.push(b'.');
                }
                push_decimal(buf, u64::from(octet));
            }
        }
        // (`write!` into a Vec cannot fail.)
        IpAddr::V6(a) => {
            let _ = write!(buf, "{a}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(secs: u64, ms: u64) -> String {
        let mut b = Vec::new();
        rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(secs * 1000 + ms), &mut b);
        String::from_utf8(b).expect("UTF-8")
    }

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(time(0, 0), "1970-01-01T00:00:00.000Z");
        // The same second again: from the thread's copy.
        assert_eq!(SECOND.get().0, 0, "the second is kept");
        assert_eq!(time(0, 999), "1970-01-01T00:00:00.999Z");
        // `date -u -d @951782400`: a leap day of a century leap year.
        assert_eq!(time(951_782_400, 7), "2000-02-29T00:00:00.007Z");
        assert_eq!(time(1_795_993_445, 123), "2026-11-29T23:04:05.123Z");
        assert_eq!(time(4_107_542_399, 999), "2100-02-28T23:59:59.999Z");
        assert_eq!(time(4_107_542_400, 0), "2100-03-01T00:00:00.000Z");
    }

    fn json(bytes: &[u8]) -> String {
        let mut b = Vec::new();
        string(&mut b, bytes);
        String::from_utf8(b).expect("UTF-8")
    }

    #[test]
    fn strings_are_valid_json_whatever_the_client_sent() {
        assert_eq!(json(b"/a?b=c"), r#""/a?b=c""#);
        assert_eq!(json(b"say \"hi\" \\ now\x01\x7f"), r#""say \"hi\" \\ now\u0001\u007f""#);
        assert_eq!(json("Grüße".as_bytes()), "\"Grüße\"");
        assert_eq!(json(b"caf\xe9 ok"), r#""caf\ufffd ok""#);
        for raw in [&b"\xff\xfe\"\n"[..], b"\\u0022", "\u{2028}".as_bytes()] {
            let parsed: String = serde_json::from_str(&json(raw)).expect("a JSON string");
            assert_eq!(parsed, String::from_utf8_lossy(raw));
        }
    }

    /// A log writing to `access.log` in a scratch directory (kept while the
    /// directory lives).
    fn scratch_log() -> (tempfile::TempDir, std::path::PathBuf, AccessLog) {
        let dir = tempfile::tempdir().expect("a scratch directory");
        let path = dir.path().join("access.log");
        let log = AccessLog::new(Counter::default());
        log.set(&Dest::File(path.clone()), true);
        (dir, path, log)
    }

    fn request(uri: &str, ua: &[u8]) -> http::Request<()> {
        http::Request::builder().uri(uri).header("host", "nlp.localhost").header("user-agent", ua).body(()).expect("a request")
    }

    fn lines(path: &std::path::Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path).unwrap_or_default().lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
    }

    #[test]
    fn a_connect_line_names_the_authority_asked_for() {
        let (_dir, path, log) = scratch_log();
        let req = http::Request::builder().method(Method::CONNECT).uri("example.com:443").body(()).expect("a request");
        let rid = HeaderValue::from_static("r-c");
        let mut resp = Response::new(());
        *resp.status_mut() = http::StatusCode::METHOD_NOT_ALLOWED;
        log.begin("203.0.113.9".parse().expect("an address"), &req, &rid, Instant::now())
            .expect("the log is on")
            .answered(&resp, Trail::default())
            .finish(true);
        log.flush();
        let got = lines(&path);
        assert_eq!((got[0]["method"].as_str(), got[0]["uri"].as_str()), (Some("CONNECT"), Some("example.com:443")), "{got:?}");
    }

    #[test]
    fn a_line_holds_the_request_and_its_answer() {
        let (_dir, path, log) = scratch_log();
        let started = Instant::now();
        let rid = HeaderValue::from_static("r-1");
        let mut line = log
            .begin("203.0.113.9".parse().expect("an address"), &request("/q?x=1&y=%22", b"curl \"x\" \xe9"), &rid, started)
            .expect("the log is on");
        line.solution("nlp");
        let mut resp = Response::new(());
        *resp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        resp.extensions_mut().insert(Reason("hold_timeout"));
        let trail = Trail { upstream: Some("127.0.0.1:4000".parse().expect("an address")), waited: Some(1000) };
        let mut answered = line.answered(&resp, trail);
        answered.frame::<()>(&Some(Ok(http_body::Frame::data(bytes::Bytes::from_static(b"12345")))));
        answered.frame::<()>(&None);
        answered.finish(false);
        drop(Unanswered(log.begin("::1".parse().expect("an address"), &request("/held", b"x"), &rid, started)));
        let v6 = Response::new(());
        let v6_trail = Trail { upstream: Some("[fd00::7]:8080".parse().expect("an address")), waited: None };
        log.begin("::1".parse().expect("an address"), &request("/v6", b"x"), &rid, started)
            .expect("the log is on")
            .answered(&v6, v6_trail)
            .finish(true);
        log.flush();
        let got = lines(&path);
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!((got[2]["upstream"].as_str(), got[2]["completed"].as_bool()), (Some("[fd00::7]:8080"), Some(true)));
        let a = &got[0];
        assert_eq!(a["wait_ms"], 1000, "{a}");
        for (key, want) in [
            ("request_id", "r-1"),
            ("client", "203.0.113.9"),
            ("method", "GET"),
            ("host", "nlp.localhost"),
            ("uri", "/q?x=1&y=%22"),
            ("protocol", "HTTP/1.1"),
            ("user_agent", "curl \"x\" \u{fffd}"),
            ("solution", "nlp"),
            ("upstream", "127.0.0.1:4000"),
            ("reason", "hold_timeout"),
        ] {
            assert_eq!(a[key], want, "{key} in {a}");
        }
        assert_eq!((a["status"].as_u64(), a["bytes"].as_u64(), a["completed"].as_bool()), (Some(503), Some(5), Some(true)), "{a}");
        assert!(a["duration_ms"].as_f64().is_some_and(|d| d >= 0.0), "{a}");
        assert!(a["time"].as_str().is_some_and(|t| t.len() == 24 && t.ends_with('Z')), "{a}");
        let b = &got[1];
        assert_eq!((b["status"].as_u64(), b["reason"].as_str(), b["completed"].as_bool()), (Some(499), Some("client_closed"), Some(false)));
        assert_eq!(b["client"], "::1");
    }

    #[test]
    fn query_strings_can_be_left_out() {
        let (_dir, path, log) = scratch_log();
        let rid = HeaderValue::from_static("r-q");
        let with_referer = |uri: &str| {
            let mut req = request(uri, b"x");
            req.headers_mut().insert(header::REFERER, HeaderValue::from_static("https://app.example/p?session=s3cret#top"));
            req
        };
        let answer = Response::new(());
        let client = "203.0.113.9".parse().expect("an address");
        log.begin(client, &with_referer("/api?token=s3cret&x=1"), &rid, Instant::now())
            .expect("on")
            .answered(&answer, Trail::default())
            .finish(true);
        log.set(&Dest::File(path.clone()), false);
        for uri in ["/api?token=s3cret&x=1", "http://nlp.localhost?token=s3cret", "/?"] {
            log.begin(client, &with_referer(uri), &rid, Instant::now()).expect("on").answered(&answer, Trail::default()).finish(true);
        }
        log.flush();
        let got = lines(&path);
        let fields: Vec<_> = got.iter().map(|l| (l["uri"].as_str().unwrap_or("?"), l["referer"].as_str().unwrap_or("?"))).collect();
        assert_eq!(
            fields,
            [
                ("/api?token=s3cret&x=1", "https://app.example/p?session=s3cret#top"),
                ("/api", "https://app.example/p"),
                ("/", "https://app.example/p"),
                ("/", "https://app.example/p"),
            ]
        );
    }

    impl AccessLog {
        fn flush(&self) {
            drain(&self.shared);
        }
    }

    #[test]
    fn completed_means_the_whole_answer_reached_the_client() {
        let (_dir, path, log) = scratch_log();
        let rid = HeaderValue::from_static("r");
        let now = Instant::now();
        let line = |method: &str, uri: &str| {
            let req = http::Request::builder().method(method).uri(uri).header("host", "h").body(()).expect("a request");
            log.begin("127.0.0.1".parse().expect("an address"), &req, &rid, now).expect("the log is on")
        };
        // A HEAD answer and a 204 have no body to wait for.
        line("HEAD", "/head").answered(&Response::new(()), Trail::default()).finish(false);
        let mut no_content = Response::new(());
        *no_content.status_mut() = http::StatusCode::NO_CONTENT;
        line("DELETE", "/204").answered(&no_content, Trail::default()).finish(false);
        // A body read to its end whose write to the client failed.
        let mut cut = line("GET", "/cut").answered(&Response::new(()), Trail::default());
        cut.frame::<()>(&Some(Ok(http_body::Frame::data(bytes::Bytes::from_static(b"abc")))));
        cut.frame::<()>(&None);
        cut.cut();
        cut.finish(true);
        // A body that stopped before its end.
        let mut short = line("GET", "/short").answered(&Response::new(()), Trail::default());
        short.frame::<()>(&Some(Ok(http_body::Frame::data(bytes::Bytes::from_static(b"abc")))));
        short.finish(false);
        // One client's long target is cut, not the whole buffer's worth.
        line("GET", &format!("/{}", "a".repeat(3 * MAX_URI))).answered(&Response::new(()), Trail::default()).finish(true);
        log.flush();
        let got = lines(&path);
        let completed: Vec<_> = got.iter().map(|l| (l["uri"].as_str().unwrap_or("").len().min(99), l["completed"].as_bool())).collect();
        assert_eq!(completed[..4], [(5, Some(true)), (4, Some(true)), (4, Some(false)), (6, Some(false))], "{got:?}");
        assert_eq!(got[4]["uri"].as_str().map(str::len), Some(MAX_URI));
        assert_eq!((got[4]["status"].as_u64(), got[4]["completed"].as_bool()), (Some(200), Some(true)));
    }

    #[test]
    fn the_thread_ends_when_the_log_is_turned_off() {
        let (dir, _, log) = scratch_log();
        assert!(lock(&log.shared.state).started);
        let rid = HeaderValue::from_static("r");
        let begun = log.begin("127.0.0.1".parse().expect("an address"), &request("/late", b"x"), &rid, Instant::now());
        log.set(&Dest::Off, true);
        let deadline = Instant::now() + Duration::from_secs(5);
        while lock(&log.shared.state).started && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!lock(&log.shared.state).started, "the writer thread is still there");
        // A line begun before is not kept for a later destination.
        drop(Unanswered(begun));
        assert!(lock(&log.shared.state).buf.is_empty());
        log.set(&Dest::File(dir.path().join("again.log")), true);
        assert!(lock(&log.shared.state).started, "on again: a new thread");
    }

    #[test]
    fn a_rotated_file_is_opened_again_and_off_writes_nothing() {
        let (dir, path, log) = scratch_log();
        let rid = HeaderValue::from_static("r");
        let one =
            |uri: &str| drop(Unanswered(log.begin("127.0.0.1".parse().expect("an address"), &request(uri, b"x"), &rid, Instant::now())));
        one("/first");
        log.flush();
        std::fs::rename(&path, dir.path().join("access.log.1")).expect("rename");
        // The path is looked at again a second after the file was opened.
        std::thread::sleep(REOPEN_CHECK);
        one("/second");
        log.flush();
        assert_eq!(lines(&dir.path().join("access.log.1"))[0]["uri"], "/first");
        assert_eq!(lines(&path)[0]["uri"], "/second");
        log.set(&Dest::Off, true);
        assert!(log.begin("127.0.0.1".parse().expect("an address"), &request("/x", b"x"), &rid, Instant::now()).is_none());
    }

    #[test]
    fn lines_beyond_the_buffer_are_dropped_and_counted() {
        let dropped = Counter::default();
        let log = AccessLog::new(dropped.clone());
        // On, but no thread started: nothing takes the lines out.
        lock(&log.shared.state).dest = Dest::Stdout;
        log.shared.on.store(true, Ordering::Relaxed);
        let rid = HeaderValue::from_static("r");
        let long = "/".repeat(4096);
        let n = MAX_BUFFERED / 4096 + 10;
        for _ in 0..n {
            drop(Unanswered(log.begin("127.0.0.1".parse().expect("an address"), &request(&long, b"x"), &rid, Instant::now())));
        }
        assert!(lock(&log.shared.state).buf.len() <= MAX_BUFFERED);
        assert!(dropped.get() >= 10, "{}", dropped.get());
        assert_eq!(lock(&log.shared.state).dropped, dropped.get());
    }
}
