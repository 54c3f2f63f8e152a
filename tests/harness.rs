//! Black-box test harness: runs the real `wakegate` binary on loopback with a
//! config written to a temporary folder, real solution processes behind it
//! (`solutions/testapp.py`), and a small HTTP client that sets any Host header.

pub mod chromium;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::net::TcpStream;

/// The test solution.
pub fn testapp() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("solutions/testapp.py")
}

/// The `wakegate` binary: `$WAKEGATE_BIN`, or built once per test process.
pub fn bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("WAKEGATE_BIN") {
            return PathBuf::from(p);
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-q", "-p", "wakegate", "--bin", "wakegate"])
            .current_dir(&root)
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build -p wakegate failed");
        let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("target"));
        target.join("debug/wakegate")
    })
    .clone()
}

/// A running wakegate.
pub struct Wakegate {
    child: Option<Child>,
    /// The public listener.
    pub public: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
    /// The HTTPS listener, unless `tls-source = "off"`.
    pub tls: Option<SocketAddr>,
    /// Scratch folder (config, start records).
    pub dir: tempfile::TempDir,
    log: Arc<Mutex<String>>,
}

/// Expands `{testapp}` and `{dir}`, and binds both listeners to port 0 unless set.
fn render(config: &str, dir: &Path) -> String {
    let mut text = config.replace("{testapp}", &testapp().display().to_string()).replace("{dir}", &dir.display().to_string());
    if !text.contains("[settings]") {
        text = format!("[settings]\n{text}");
    }
    let mut extra = String::new();
    if !text.contains("\nlisten") && !text.starts_with("listen") {
        extra.push_str("listen = \"127.0.0.1:0\"\n");
    }
    if !text.contains("admin-listen") {
        extra.push_str("admin-listen = \"127.0.0.1:0\"\n");
    }
    if !text.contains("tls-listen") {
        extra.push_str("tls-listen = \"127.0.0.1:0\"\n");
    }
    text.replacen("[settings]\n", &format!("[settings]\n{extra}"), 1)
}

impl Wakegate {
    /// Starts wakegate with `config` (TOML; see [`render`]) and waits until it listens.
    pub fn start(config: &str) -> Wakegate {
        Self::start_under(&[], config)
    }

    /// The same, run by `wrapper` (a command and its arguments, before
    /// wakegate's own: e.g. `unshare --pid --fork`); [`Wakegate::pid`] is then the wrapper's.
    pub fn start_under(wrapper: &[&str], config: &str) -> Wakegate {
        Self::try_start(wrapper, config).unwrap_or_else(|e| panic!("wakegate did not start: {e:#}"))
    }

    fn try_start(wrapper: &[&str], config: &str) -> Result<Wakegate> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("wakegate.toml");
        std::fs::write(&path, render(config, dir.path()))?;
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        // Standard output is the access log's (by default).
        let stdout = std::fs::File::create(dir.path().join("stdout"))?;
        let mut child = cmd
            .args(["run", "--config"])
            .arg(&path)
            .env("WAKEGATE_LOG", "info,wakegate=debug,wakegate_scaler=debug")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn wakegate")?;
        let stderr = child.stderr.take().context("stderr")?;
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(std::result::Result::ok) {
                if line.contains(" listening ") || line.ends_with(" listening") || line.contains("listening public=") {
                    let _ = tx.send(line.clone());
                }
                let mut l = sink.lock().unwrap_or_else(|p| p.into_inner());
                l.push_str(&line);
                l.push('\n');
            }
        });
        let mut wg = Wakegate { child: Some(child), public: "0.0.0.0:0".parse()?, admin: "0.0.0.0:0".parse()?, tls: None, dir, log };
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => l,
            Err(_) => bail!("no 'listening' line within 30 s; log:\n{}", wg.log()),
        };
        let field = |name: &str| -> Result<SocketAddr> {
            let start = line.find(&format!("{name}=")).context("field")? + name.len() + 1;
            let rest = &line[start..];
            let end = rest.find(' ').unwrap_or(rest.len());
            Ok(rest[..end].parse()?)
        };
        wg.public = field("public")?;
        wg.admin = field("admin")?;
        wg.tls = field("tls").ok();
        Ok(wg)
    }

    /// The config file path.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("wakegate.toml")
    }

    /// Replaces the config file (the running process picks it up).
    pub fn write_config(&self, config: &str) {
        let tmp = self.dir.path().join("wakegate.toml.tmp");
        std::fs::write(&tmp, render(config, self.dir.path())).expect("write config");
        std::fs::rename(&tmp, self.config_path()).expect("rename config");
    }

    /// Everything it wrote to standard output so far (the access log, by default).
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout")).unwrap_or_default()
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Pids recorded by testapp starts (`env = { TESTAPP_STARTS = "{dir}/starts" }`).
    pub fn starts(&self) -> Vec<i32> {
        let text = std::fs::read_to_string(self.dir.path().join("starts")).unwrap_or_default();
        text.lines().filter_map(|l| l.trim().parse().ok()).collect()
    }

    /// `GET path` on `<label>.localhost` through the public listener.
    pub async fn get(&self, label: &str, path: &str) -> Resp {
        get(self.public, &format!("{label}.localhost"), path, &[]).await.expect("request")
    }

    /// The admin `/metrics` text.
    pub async fn metrics(&self) -> String {
        get(self.admin, "localhost", "/metrics", &[]).await.expect("metrics").body
    }

    /// The admin `/status` JSON.
    pub async fn status(&self) -> serde_json::Value {
        let r = get(self.admin, "localhost", "/status", &[]).await.expect("status");
        serde_json::from_str(&r.body).expect("status JSON")
    }

    /// The phase of `solution` from `/status`.
    pub async fn phase(&self, solution: &str) -> String {
        let s = self.status().await;
        let list = s["solutions"].as_array().cloned().unwrap_or_default();
        let item = list.iter().find(|x| x["name"] == solution).cloned().unwrap_or_default();
        item["phase"].as_str().unwrap_or("absent").to_string()
    }

    /// Sends SIGKILL (no chance to stop its solutions) and waits for the exit.
    pub fn kill(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        child.wait().expect("wait for wakegate")
    }

    /// Sends SIGTERM and waits (up to `timeout`) for the exit.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("wakegate did not exit within {timeout:?} of SIGTERM; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// SIGTERM first, so wakegate stops its solutions; SIGKILL if it has not
/// exited within `grace`. (SIGCONT too, in case a test froze it.)
fn stop_child(mut child: Child, grace: Duration) {
    let pid = Pid::from_raw(child.id() as i32);
    let _ = kill(pid, Signal::SIGCONT);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Wakegate {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            stop_child(child, Duration::from_secs(15));
        }
    }
}

/// A response with its whole body read.
#[derive(Debug)]
pub struct Resp {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body as text.
    pub body: String,
}

impl Resp {
    /// A header as text ("" if absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

/// Sends `req` on a new HTTP/1.1 connection to `addr`.
pub async fn send<B>(addr: SocketAddr, req: Request<B>) -> Result<Response<Incoming>>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok(sender.send_request(req).await?)
}

/// `GET path` with `Host: host` and extra headers; reads the whole body.
pub async fn get(addr: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> Result<Resp> {
    let mut b = Request::get(path).header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = send(addr, b.body(Full::new(Bytes::new()))?).await?;
    read(resp).await
}

/// Reads a response whole.
pub async fn read(resp: Response<Incoming>) -> Result<Resp> {
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await?.to_bytes();
    Ok(Resp { status: parts.status, headers: parts.headers, body: String::from_utf8_lossy(&bytes).into_owned() })
}

/// The value of the series `name{labels}` (labels exactly as exported, in
/// order), or `None`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
}

/// Polls `check` every 50 ms until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The fields of `/proc/PID/stat` after the command name (which may hold
/// spaces and parentheses): state, ppid, pgrp, … — `None` once it is gone.
pub fn proc_stat(pid: i32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(s.rsplit_once(')')?.1.split_whitespace().map(str::to_string).collect())
}

/// Whether a process with this pid exists (a zombie counts as gone).
pub fn alive(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|f| f.first().is_some_and(|state| state != "Z"))
}

/// Resident set size of a process, in bytes.
pub fn rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A `[[solution]]` table running testapp as `name`, with extra testapp
/// arguments and extra keys.
pub fn testapp_solution(name: &str, args: &str, extra: &str) -> String {
    format!(
        "[[solution]]\nname = \"{name}\"\ncommand = \"python3 {{testapp}} --name {name} --port {{port}} {args}\"\nprobe = \"/healthz\"\nenv = {{ TESTAPP_STARTS = \"{{dir}}/starts\" }}\n{extra}\n"
    )
}

/// Any `wakegate` subcommand run as a child process (the cluster roles).
pub struct Proc {
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    line: String,
}

impl Proc {
    /// Runs `wakegate <args>` with `env`, waiting until a log line contains `ready`.
    pub fn start(args: &[&str], env: &[(&str, &str)], ready: &str) -> Proc {
        let mut cmd = Command::new(bin());
        cmd.args(args).env("WAKEGATE_LOG", "info,wakegate=debug,wakegate_scaler=debug");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Proc::spawn(cmd, ready)
    }

    /// Runs `cmd` (any program logging to stderr), waiting until a log line contains `ready`.
    pub fn spawn(mut cmd: Command, ready: &str) -> Proc {
        let what = format!("{:?}", cmd.get_program());
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        let marker = ready.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(std::result::Result::ok) {
                if line.contains(&marker) {
                    let _ = tx.send(line.clone());
                }
                let mut l = sink.lock().unwrap_or_else(|p| p.into_inner());
                l.push_str(&line);
                l.push('\n');
            }
        });
        let mut p = Proc { child: Some(child), log, line: String::new() };
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => p.line = line,
            Err(_) => panic!("{what} did not log {ready:?} within 30 s; log:\n{}", p.log()),
        }
        p
    }

    /// An address logged as `name=<addr>` on the ready line.
    pub fn addr(&self, name: &str) -> SocketAddr {
        let start = self.line.find(&format!("{name}=")).unwrap_or_else(|| panic!("{name}= not in {:?}", self.line)) + name.len() + 1;
        let rest = &self.line[start..];
        rest[..rest.find(' ').unwrap_or(rest.len())].parse().expect("address")
    }

    /// Its process id.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Sends `signal` (e.g. SIGKILL to simulate a crash, SIGSTOP to freeze it).
    pub fn signal(&self, signal: Signal) {
        let _ = kill(Pid::from_raw(self.pid()), signal);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            stop_child(child, Duration::from_secs(10));
        }
    }
}
