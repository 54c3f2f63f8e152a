//! Debian's headless Chromium driven over the Chrome DevTools Protocol: what
//! a person with a browser sees (tests/browser.rs, tests/cluster.rs).

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{WebSocketStream, client_async};

use crate::get;

const CHROMIUM: &str = "/usr/bin/chromium";

/// A headless Chromium in its own process group, killed (group and all) on drop.
pub struct Browser {
    child: Child,
    /// Holds the profile and the log; removed after the kill (fields drop in order).
    root: tempfile::TempDir,
    /// The DevTools HTTP/WebSocket endpoint.
    pub devtools: SocketAddr,
}

impl Browser {
    fn profile(root: &Path) -> PathBuf {
        root.join("profile")
    }

    /// What Chromium printed, for failure messages.
    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(self.root.path().join("chromium.log")).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Starts Chromium on about:blank, with `extra` flags, and waits for its DevTools port.
    pub async fn launch(extra: &[&str]) -> Browser {
        assert!(Path::new(CHROMIUM).exists(), "{CHROMIUM} is missing: this test needs Debian's Chromium; run `scripts/install-deps test`");
        let root = tempfile::tempdir().expect("tempdir");
        let profile = Self::profile(root.path());
        std::fs::create_dir(&profile).expect("profile dir");
        let log = std::fs::File::create(root.path().join("chromium.log")).expect("log file");
        let child = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                // Never through a proxy from the environment: everything here is loopback.
                "--no-proxy-server",
            ])
            .args(extra)
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(["--remote-debugging-port=0", "about:blank"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {CHROMIUM} ({e}); run `scripts/install-deps test`"));
        let mut browser = Browser { child, root, devtools: "127.0.0.1:0".parse().expect("addr") };

        let port_file = profile.join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            let port = std::fs::read_to_string(&port_file).ok().and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<u16>().ok()));
            if let Some(p) = port.filter(|p| *p != 0) {
                break p;
            }
            if let Ok(Some(status)) = browser.child.try_wait() {
                panic!("Chromium exited at start ({status}); its log:\n{}", browser.log());
            }
            assert!(Instant::now() < deadline, "Chromium wrote no DevToolsActivePort within 30 s; its log:\n{}", browser.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        browser.devtools = SocketAddr::from(([127, 0, 0, 1], port));
        browser
    }

    /// The DevTools WebSocket URL of the page target.
    pub async fn page_target(&self) -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let list = timeout(Duration::from_secs(5), get(self.devtools, "127.0.0.1", "/json/list", &[])).await;
            if let Ok(Ok(r)) = list
                && r.status == 200
            {
                let targets: Value = serde_json::from_str(&r.body).context("/json/list JSON")?;
                let page = targets.as_array().into_iter().flatten().find(|t| t["type"] == "page");
                if let Some(url) = page.and_then(|t| t["webSocketDebuggerUrl"].as_str()) {
                    return Ok(url.to_string());
                }
            }
            if Instant::now() > deadline {
                bail!("no page target in /json/list within 15 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Chromium's helpers (zygote, renderers) share its process group.
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Chrome DevTools Protocol session on one target.
pub struct Cdp {
    ws: WebSocketStream<TcpStream>,
    next_id: u64,
}

impl Cdp {
    /// Connects to the target at `url` (a `webSocketDebuggerUrl`) through `addr`.
    pub async fn connect(addr: SocketAddr, url: &str) -> Result<Cdp> {
        let req = url.into_client_request()?;
        let tcp = TcpStream::connect(addr).await?;
        let (ws, _) = timeout(Duration::from_secs(10), client_async(req, tcp)).await.context("DevTools handshake timed out")??;
        Ok(Cdp { ws, next_id: 1 })
    }

    /// Calls `method`; its `result`, or an error (CDP error, closed, or no answer in 5 s).
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({ "id": id, "method": method, "params": params }).to_string();
        timeout(Duration::from_secs(5), self.ws.send(Message::text(msg))).await.context("CDP send timed out")??;
        let answer = async {
            loop {
                let m = self.ws.next().await.ok_or_else(|| anyhow!("DevTools connection closed"))??;
                let Message::Text(text) = m else { continue };
                let v: Value = serde_json::from_str(text.as_str())?;
                // Events and late answers to earlier (timed-out) calls are skipped.
                if v["id"].as_u64() != Some(id) {
                    continue;
                }
                if let Some(e) = v.get("error") {
                    bail!("{method}: {e}");
                }
                return Ok(v["result"].clone());
            }
        };
        timeout(Duration::from_secs(5), answer).await.with_context(|| format!("{method}: no answer within 5 s"))?
    }
}

impl Cdp {
    /// Evaluates `expr` (which must return a JSON string) in the page as it is now.
    pub async fn eval(&mut self, expr: &str) -> Result<Value> {
        let r = self.call("Runtime.evaluate", json!({ "expression": expr, "returnByValue": true })).await?;
        if let Some(e) = r.get("exceptionDetails") {
            bail!("evaluate threw: {e}");
        }
        let s = r["result"]["value"].as_str().ok_or_else(|| anyhow!("no value: {r}"))?;
        Ok(serde_json::from_str(s)?)
    }
}

/// A browser with one page open at `url` through DevTools; panics (with
/// Chromium's log) if that cannot be done.
pub async fn open(extra: &[&str], url: &str) -> (Browser, Cdp) {
    open_in(Browser::launch(extra).await, url).await
}

/// `browser`, its page navigated to `url`.
pub async fn open_in(browser: Browser, url: &str) -> (Browser, Cdp) {
    let target = match browser.page_target().await {
        Ok(t) => t,
        Err(e) => panic!("{e:#}; Chromium log:\n{}", browser.log()),
    };
    let mut cdp = match Cdp::connect(browser.devtools, &target).await {
        Ok(c) => c,
        Err(e) => panic!("DevTools connection to {target}: {e:#}; Chromium log:\n{}", browser.log()),
    };
    let nav = cdp.call("Page.navigate", json!({ "url": url })).await;
    match &nav {
        Ok(v) if v.get("errorText").is_none() => {}
        _ => panic!("Page.navigate to {url}: {nav:?}; Chromium log:\n{}", browser.log()),
    }
    (browser, cdp)
}
