//! One running solution process: spawned in its own process group (so its
//! children are signalled too), its output forwarded to the log, the tail of
//! its stderr kept for failure reports, stopped with SIGTERM then SIGKILL.
//! Should wakegate itself die without stopping it (SIGKILL, a crash, the OOM
//! killer), the whole group dies too: the wakegate binary starts it through
//! its guard (see [`super::guard`]). Elsewhere (the scaler as a library)
//! util-linux's `setpriv --pdeathsig KILL` takes the command itself down
//! where that exists, though not what it started (the parent-death signal
//! must be set between fork and exec, which std offers only through
//! `unsafe`).

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use proto::solution::ProcessSpec;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

/// Lines of stderr kept to explain a failed start.
const STDERR_TAIL_LINES: usize = 20;

/// A started process.
pub struct Running {
    child: Child,
    /// Where it serves.
    pub addr: SocketAddr,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
}

impl Running {
    /// Starts `spec` for solution `name`.
    pub fn spawn(name: &str, spec: &ProcessSpec) -> std::io::Result<Running> {
        let port = match spec.port {
            Some(p) => p,
            None => free_port()?,
        };
        let port_s = port.to_string();
        let argv: Vec<String> = spec.argv.iter().map(|a| a.replace("{port}", &port_s)).collect();
        let (program, args) = argv.split_first().ok_or_else(|| std::io::Error::other("empty command"))?;
        let wrapper = match GUARD.get() {
            Some(exe) => Some((
                exe.as_path(),
                vec![super::guard::SUBCOMMAND.to_string(), "--parent".into(), std::process::id().to_string(), "--".into()],
            )),
            None => setpriv().map(|p| (p, vec!["--pdeathsig".into(), "KILL".into(), "--".into()])),
        };
        let mut cmd = match wrapper {
            Some((wrapper, wrapper_args)) => {
                // A missing program stays an error of this call, as without the
                // wrapper (not a start that fails with the wrapper's exit code).
                let path = spec.env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.into()).or_else(|| std::env::var_os("PATH"));
                if find_program(program, &spec.cwd, path.as_deref()).is_none() {
                    return Err(std::io::Error::from(nix::errno::Errno::ENOENT));
                }
                let mut cmd = Command::new(wrapper);
                cmd.args(wrapper_args).arg(program);
                cmd
            }
            None => Command::new(program),
        };
        cmd.args(args)
            .current_dir(&spec.cwd)
            .env("PORT", &port_s)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd.spawn()?;
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(out) = child.stdout.take() {
            tokio::spawn(forward(name.to_string(), "stdout", out, None));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(forward(name.to_string(), "stderr", err, Some(stderr_tail.clone())));
        }
        // Through the guard, `pgid` is the guard's pid: `kill PGID` (the guard
        // passes it on) or `kill -- -PGID` (the group), not both.
        tracing::info!(solution = name, pgid = child.id(), port, "started {}", argv.join(" "));
        Ok(Running { child, addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)), stderr_tail })
    }

    /// Waits for the process to exit by itself; what it left behind in its
    /// group (a server a start script put in the background, holding the
    /// port) is killed then, as by systemd's default `KillMode`. Cancel-safe.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        let pgid = self.pgid();
        let status = self.child.wait().await;
        signal_group(pgid, Signal::SIGKILL);
        status
    }

    /// The last lines it wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        let tail = self.stderr_tail.lock().unwrap_or_else(|p| p.into_inner());
        tail.iter().map(String::as_str).collect::<Vec<_>>().join("\n")
    }

    /// SIGTERM to the process group, SIGKILL after `grace`; waits for the
    /// exit. Whatever is left in the group then is killed (as by `wait`).
    pub async fn stop(mut self, grace: Duration) -> Option<ExitStatus> {
        let pgid = self.pgid();
        let status = match self.child.try_wait() {
            Ok(Some(status)) => Some(status),
            _ => {
                signal_group(pgid, Signal::SIGTERM);
                match tokio::time::timeout(grace, self.child.wait()).await {
                    Ok(status) => status.ok(),
                    Err(_) => {
                        tracing::warn!(pid = ?pgid, "did not exit within {grace:?} of SIGTERM; sending SIGKILL");
                        // The leader now; the group below, once it is reaped.
                        let _ = self.child.start_kill();
                        self.child.wait().await.ok()
                    }
                }
            }
        };
        signal_group(pgid, Signal::SIGKILL);
        status
    }

    /// The process group (the leader's pid), while the leader is not reaped.
    fn pgid(&self) -> Option<Pid> {
        self.child.id().and_then(|id| i32::try_from(id).ok()).map(Pid::from_raw)
    }
}

/// `signal` to the group `pgid`, if any (errors: the group is gone).
fn signal_group(pgid: Option<Pid>, signal: Signal) {
    if let Some(pgid) = pgid {
        let _ = killpg(pgid, signal);
    }
}

impl Drop for Running {
    /// Dropped while running (its supervisor gone without a stop): the
    /// whole group goes, not only the process started.
    fn drop(&mut self) {
        signal_group(self.pgid(), Signal::SIGKILL);
    }
}

/// The wakegate binary, to start solutions through its guard subcommand.
static GUARD: OnceLock<PathBuf> = OnceLock::new();

/// Starts every solution through `exe guard -- COMMAND…` (the wakegate
/// binary; see [`super::guard`]). Set once, by the binary, before the first
/// start; `/proc/self/exe` is a good `exe` (it stays valid when the file is
/// replaced by an upgrade, and in the forked child it is still this binary).
pub fn use_guard(exe: PathBuf) {
    let _ = GUARD.set(exe);
}

/// util-linux's `setpriv`, if installed (looked up once).
fn setpriv() -> Option<&'static Path> {
    static SETPRIV: OnceLock<Option<PathBuf>> = OnceLock::new();
    SETPRIV
        .get_or_init(|| {
            let found = find_program("setpriv", Path::new("/"), std::env::var_os("PATH").as_deref());
            if found.is_none() {
                tracing::warn!("setpriv (util-linux) not found: solutions would outlive a wakegate killed by SIGKILL");
            }
            found
        })
        .as_deref()
}

/// Where `program` would be run from in `cwd`: as given if it names a path,
/// else the first match on `path` (the child's `PATH`), as `execvp` looks.
fn find_program(program: &str, cwd: &Path, path: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.contains('/') {
        let p = cwd.join(program);
        return runnable(&p).then_some(p);
    }
    std::env::split_paths(path?).map(|dir| cwd.join(dir).join(program)).find(|p| runnable(p))
}

/// A free loopback port (the OS picks one; a small race with other binders is
/// possible and shows up as a failed start, which is retried).
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

async fn forward(solution: String, stream: &'static str, out: impl AsyncRead + Unpin, tail: Option<Arc<Mutex<VecDeque<String>>>>) {
    let mut lines = BufReader::new(out).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(target: "wakegate::solution", solution = %solution, stream, "{line}");
        if let Some(tail) = &tail {
            let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
            if t.len() == STDERR_TAIL_LINES {
                t.pop_front();
            }
            t.push_back(line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_as_execvp_finds_them() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).expect("mkdir");
        let tool = bin.join("tool");
        std::fs::write(&tool, "#!/bin/sh\n").expect("write");
        let path = std::ffi::OsString::from("/nonexistent:bin");
        // Not runnable yet: not found.
        assert_eq!(find_program("tool", dir.path(), Some(path.as_os_str())), None);
        std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        // A relative PATH entry counts from the child's directory.
        assert_eq!(find_program("tool", dir.path(), Some(path.as_os_str())), Some(dir.path().join("bin").join("tool")));
        assert_eq!(find_program("./bin/tool", dir.path(), None), Some(dir.path().join("./bin/tool")));
        assert_eq!(find_program("missing", dir.path(), Some(path.as_os_str())), None);
        assert_eq!(find_program("tool", dir.path(), None), None, "no PATH, no search");
        assert_eq!(find_program("bin", dir.path(), Some(std::ffi::OsStr::new("."))), None, "a directory is no program");
    }
}
