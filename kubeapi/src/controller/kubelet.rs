//! The simulated kubelet of one pod: runs the container's `command` + `args`
//! as a local process in its own process group on a free loopback port
//! (its output goes to the test's own stdout and stderr),
//! probes its readiness, restarts it when it exits (restartPolicy Always),
//! and stops it with SIGTERM, then SIGKILL after the grace period.
//!
//! It reports through a `watch` channel of [`RunState`] and pokes the
//! controller on every change; the controller turns that into Pod status and
//! EndpointSlices.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::{Notify, oneshot, watch};

use crate::clock;

/// Probe interval until the container is first ready: a test waits on it.
const STARTING_PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// Probe interval once ready (kube's default `periodSeconds` is 10 s; tests
/// want a hung process noticed sooner).
const READY_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// One probe's time limit (kube's default `timeoutSeconds`).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Wait before restarting a container that exited (kubelet's first back-off step is 10 s).
const RESTART_BACKOFF: Duration = Duration::from_secs(1);

/// How to run one pod's container.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// `command` followed by `args`; `{port}` and `$(PORT)` are replaced by the port.
    pub argv: Vec<String>,
    /// Environment from the container's `env` (plain values); `PORT` is added.
    pub env: Vec<(String, String)>,
    /// `workingDir`, if set.
    pub cwd: Option<String>,
    /// How readiness is checked.
    pub probe: Probe,
    /// Consecutive failed probes after which a ready container is not ready.
    pub failure_threshold: u32,
    /// SIGTERM to SIGKILL (`terminationGracePeriodSeconds`).
    pub grace: Duration,
    /// The simulated image pull before the first start.
    pub pull: Duration,
}

/// A readiness check against the container's port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// A TCP connect.
    Tcp,
    /// `GET path` answered below 400.
    Http(String),
}

/// What the kubelet reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunState {
    /// The loopback port the container serves on.
    pub port: u16,
    /// The process id (and process group) of the running container.
    pub pid: Option<u32>,
    /// When the current process started (RFC 3339).
    pub started_at: Option<String>,
    /// Passing its readiness probe.
    pub ready: bool,
    /// How often the container was restarted.
    pub restarts: u32,
    /// Why the container is not running (cannot start, or exited and waits to restart).
    pub waiting: Option<String>,
    /// Stopped for good: the pod may be deleted.
    pub finished: bool,
}

/// Runs the pod until `stop` fires (or the sender is dropped), reporting on `state`.
pub async fn run(pod: String, spec: ContainerSpec, state: watch::Sender<RunState>, mut stop: oneshot::Receiver<()>, kick: Arc<Notify>) {
    let report = |f: &dyn Fn(&mut RunState)| {
        state.send_modify(|s| f(s));
        kick.notify_one();
    };
    let port = match free_port() {
        Ok(port) => port,
        Err(e) => {
            report(&|s| s.waiting = Some(format!("no free port: {e}")));
            let _ = (&mut stop).await;
            report(&|s| s.finished = true);
            return;
        }
    };
    report(&|s| s.port = port);
    tokio::select! {
        _ = tokio::time::sleep(spec.pull) => {}
        _ = &mut stop => {
            report(&|s| s.finished = true);
            return;
        }
    }
    loop {
        let mut child = match spawn(&spec, port) {
            Ok(child) => Running::new(child),
            Err(e) => {
                tracing::warn!(pod, "cannot start {:?}: {e}", spec.argv);
                let msg = format!("cannot start {:?}: {e}", spec.argv);
                report(&|s| s.waiting = Some(msg.clone()));
                let _ = (&mut stop).await;
                report(&|s| s.finished = true);
                return;
            }
        };
        tracing::info!(pod, pid = ?child.pid(), port, "started {}", spec.argv.join(" "));
        let (pid, now) = (child.pid(), clock::now());
        report(&|s| {
            s.pid = pid;
            s.started_at = Some(now.clone());
            s.waiting = None;
        });
        let exited = supervise(&spec, &mut child, port, &mut stop, &report).await;
        if !exited {
            child.stop(spec.grace).await;
            report(&|s| {
                s.ready = false;
                s.pid = None;
                s.finished = true;
            });
            return;
        }
        tracing::info!(pod, "container exited; restarting in {RESTART_BACKOFF:?}");
        report(&|s| {
            s.ready = false;
            s.pid = None;
            s.restarts += 1;
            s.waiting = Some("CrashLoopBackOff: the container exited".into());
        });
        child.stop(Duration::ZERO).await;
        tokio::select! {
            _ = tokio::time::sleep(RESTART_BACKOFF) => {}
            _ = &mut stop => {
                report(&|s| s.finished = true);
                return;
            }
        }
    }
}

/// Probes until the process exits (true) or a stop is asked for (false).
async fn supervise(
    spec: &ContainerSpec,
    child: &mut Running,
    port: u16,
    stop: &mut oneshot::Receiver<()>,
    report: &impl Fn(&dyn Fn(&mut RunState)),
) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let (mut ready, mut failures) = (false, 0u32);
    loop {
        let interval = if ready { READY_PROBE_INTERVAL } else { STARTING_PROBE_INTERVAL };
        tokio::select! {
            _ = &mut *stop => return false,
            _ = child.child.wait() => return true,
            _ = tokio::time::sleep(interval) => {}
        }
        let passed = tokio::time::timeout(PROBE_TIMEOUT, probe(&spec.probe, addr)).await.unwrap_or(false);
        failures = if passed { 0 } else { failures + 1 };
        let now_ready = passed || (ready && failures < spec.failure_threshold);
        if now_ready != ready {
            ready = now_ready;
            report(&|s| s.ready = now_ready);
        }
    }
}

fn spawn(spec: &ContainerSpec, port: u16) -> std::io::Result<Child> {
    let port_s = port.to_string();
    let subst = |s: &str| s.replace("{port}", &port_s).replace("$(PORT)", &port_s);
    let argv: Vec<String> = spec.argv.iter().map(|a| subst(a)).collect();
    let (program, args) = argv.split_first().ok_or_else(|| std::io::Error::other("the container has no command"))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(spec.env.iter().map(|(k, v)| (k, subst(v))))
        .env("PORT", &port_s)
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    cmd.spawn()
}

/// A running container process; its whole process group is killed when dropped.
struct Running {
    child: Child,
    /// The process group (the leader's pid, kept: tokio forgets the pid once reaped).
    group: Option<Pid>,
    /// Stopped and reaped: the group may not be signalled again (its id may be reused).
    done: bool,
}

impl Running {
    fn new(child: Child) -> Running {
        let group = child.id().and_then(|id| i32::try_from(id).ok()).map(Pid::from_raw);
        Running { child, group, done: false }
    }

    fn pid(&self) -> Option<u32> {
        self.group.and_then(|g| u32::try_from(g.as_raw()).ok())
    }

    /// SIGTERM to the group, SIGKILL after `grace`; waits for the exit.
    async fn stop(&mut self, grace: Duration) {
        if let Some(group) = self.group.filter(|_| !self.done) {
            let _ = killpg(group, Signal::SIGTERM);
            if tokio::time::timeout(grace, self.child.wait()).await.is_err() {
                tracing::warn!(pid = %group, "no exit within {grace:?} of SIGTERM; sending SIGKILL");
            }
            // The leader is gone (or is going now): nothing it spawned may linger.
            let _ = killpg(group, Signal::SIGKILL);
        }
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        self.done = true;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(group) = self.group.filter(|_| !self.done) {
            let _ = killpg(group, Signal::SIGKILL);
        }
    }
}

/// A free loopback port (the OS picks; a race with another binder shows up as
/// a container that exits and is restarted).
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

/// One readiness check: a TCP connect, or a `GET` answered with a status below 400.
async fn probe(probe: &Probe, addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr).await else { return false };
    let Probe::Http(path) = probe else { return true };
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/wakegate-kubeapi\r\nConnection: close\r\n\r\n");
    if stream.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 12];
    if stream.read_exact(&mut buf).await.is_err() {
        return false;
    }
    let code = buf
        .strip_prefix(b"HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|c| std::str::from_utf8(c).ok())
        .and_then(|c| c.parse::<u16>().ok());
    code.is_some_and(|c| (200..400).contains(&c))
}
