//! [`DnsProvider`] by operator command: `acme-exec-command` is run as
//! `<command> present <fqdn> <value>` and `<command> cleanup <fqdn> <value>`
//! (the convention of lego's and cert-manager webhooks' exec providers), so
//! any DNS API can be driven by a short script. Exit status 0 is success;
//! otherwise the error carries the tail of its standard error.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use crate::tls::dns::{DnsError, DnsFuture, DnsProvider};

/// 2 minutes: DNS APIs can be slow to acknowledge, but a hung script must
/// not hold the order forever.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(120);
/// The last 1 KiB of standard error: the end of a script's output says what failed.
const STDERR_TAIL: usize = 1024;
/// `ETXTBSY`: the script was just written and another thread's fork still holds it open.
const ETXTBSY: i32 = 26;

/// Runs an operator command to add and remove TXT values.
#[derive(Debug, Clone)]
pub struct Exec {
    command: PathBuf,
    timeout: Duration,
}

// === impl Exec ===

impl Exec {
    /// Runs `command` (a path; no shell, no splitting) for each step.
    pub fn new(command: impl Into<PathBuf>) -> Self {
        Self { command: command.into(), timeout: EXEC_TIMEOUT }
    }

    /// Kills the command after `timeout` instead of [`EXEC_TIMEOUT`].
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn run(&self, action: &'static str, fqdn: &str, value: &str) -> Result<(), DnsError> {
        let fqdn = fqdn.trim_end_matches('.');
        let mut attempts = 0;
        let child = loop {
            let spawned = tokio::process::Command::new(&self.command)
                .args([action, fqdn, value])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn();
            match spawned {
                Err(e) if e.raw_os_error() == Some(ETXTBSY) && attempts < 5 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(source) => return Err(DnsError::ExecSpawn { command: self.command.clone(), source }),
                Ok(child) => break child,
            }
        };
        let output = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(Ok(output)) => output,
            Ok(Err(source)) => return Err(DnsError::ExecSpawn { command: self.command.clone(), source }),
            Err(_) => return Err(DnsError::ExecTimeout { command: self.command.clone(), action, after: self.timeout }),
        };
        if !output.stdout.is_empty() {
            tracing::debug!(command = %self.command.display(), action, "{}", String::from_utf8_lossy(&output.stdout).trim_end());
        }
        if output.status.success() {
            return Ok(());
        }
        let tail = &output.stderr[output.stderr.len().saturating_sub(STDERR_TAIL)..];
        Err(DnsError::ExecFailed {
            command: self.command.clone(),
            action,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(tail).trim().to_string(),
        })
    }
}

impl DnsProvider for Exec {
    fn present<'a>(&'a self, fqdn: &'a str, value: &'a str) -> DnsFuture<'a> {
        Box::pin(self.run("present", fqdn, value))
    }

    fn cleanup<'a>(&'a self, fqdn: &'a str, value: &'a str) -> DnsFuture<'a> {
        Box::pin(self.run("cleanup", fqdn, value))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn script(dir: &Path, body: &str) -> std::io::Result<PathBuf> {
        let path = dir.join(format!("hook-{}", fastrand::u32(..)));
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n"))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        Ok(path)
    }

    #[tokio::test]
    async fn passes_action_name_and_value() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let log = tmp.path().join("log");
        let exec = Exec::new(script(tmp.path(), &format!("echo \"$1 $2 $3\" >> {}", log.display()))?);
        exec.present("_acme-challenge.aim.test.", "v1").await?;
        exec.cleanup("_acme-challenge.aim.test", "v1").await?;
        let seen = std::fs::read_to_string(log)?;
        assert_eq!(seen, "present _acme-challenge.aim.test v1\ncleanup _acme-challenge.aim.test v1\n");
        Ok(())
    }

    #[tokio::test]
    async fn failure_carries_the_stderr_tail() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let exec = Exec::new(script(tmp.path(), "head -c 3000 /dev/zero | tr '\\0' x >&2; echo ' zone refused' >&2; exit 3")?);
        match exec.present("a.aim.test", "v").await {
            Err(DnsError::ExecFailed { action, status, stderr, .. }) => {
                assert_eq!(action, "present");
                assert!(status.contains('3'), "{status}");
                assert!(stderr.ends_with("zone refused") && stderr.len() <= STDERR_TAIL, "{stderr}");
            }
            other => panic!("expected ExecFailed, got {other:?}"),
        }
        Ok(())
    }

    #[tokio::test]
    async fn hung_commands_are_killed_and_missing_ones_reported() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let slow = Exec::new(script(tmp.path(), "sleep 30")?).with_timeout(Duration::from_millis(200));
        let started = std::time::Instant::now();
        assert!(matches!(slow.cleanup("a.aim.test", "v").await, Err(DnsError::ExecTimeout { .. })));
        assert!(started.elapsed() < Duration::from_secs(5));
        let missing = Exec::new(tmp.path().join("nope"));
        assert!(matches!(missing.present("a.aim.test", "v").await, Err(DnsError::ExecSpawn { .. })));
        Ok(())
    }
}
