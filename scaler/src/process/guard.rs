//! The guard: a small process between wakegate and a solution's command, so
//! that the command's own children die with wakegate too.
//!
//! The kernel's parent-death signal reaches only the process wakegate
//! started; a command that starts others (`sh -c "a | b"`, a server that
//! forks workers) would leave them behind when wakegate is killed outright
//! (SIGKILL, the OOM killer), holding the solution's port. The guard is the
//! leader of the solution's process group: it asks for SIGTERM when
//! wakegate dies, runs the command, and on that signal kills the whole
//! group. A SIGTERM while wakegate lives is a stop that wakegate sent to the
//! group (the command got it too): the guard then waits for the command and
//! exits as it did, so wakegate sees the command's own exit status.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitCode, ExitStatus};

use nix::sys::prctl;
use nix::sys::signal::{SigSet, Signal, killpg, raise};
use nix::unistd::getpgrp;

/// The subcommand of the wakegate binary that runs a guard.
pub const SUBCOMMAND: &str = "guard";

/// Runs `argv` (program and arguments) under the guard for wakegate, pid
/// `parent`; returns once it exited (with its exit code), dies of the
/// signal that ended it, or kills the group and dies with it when wakegate
/// is gone (also if that happened before this started).
pub fn run(parent: u32, argv: &[OsString]) -> ExitCode {
    let Some((program, args)) = argv.split_first() else {
        eprintln!("wakegate guard: no command");
        return ExitCode::from(2);
    };
    let orphaned = || std::os::unix::process::parent_id() != parent;
    if orphaned() {
        // wakegate died before this started: nothing to run for.
        return ExitCode::from(1);
    }
    // The command first: it inherits the signal mask (std does not reset
    // it), and must not start with SIGTERM blocked.
    let mut child = match Command::new(program).args(args).spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wakegate guard: cannot start {}: {e}", program.to_string_lossy());
            return ExitCode::from(127);
        }
    };
    // Then taken by `wait` below, never by a default action. (A stop that
    // came before this ended the guard; wakegate then kills the group.)
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGCHLD);
    if let Err(e) = signals.thread_block() {
        eprintln!("wakegate guard: cannot block signals: {e}");
        let _ = killpg(getpgrp(), Signal::SIGKILL);
        return ExitCode::from(2);
    }
    if let Err(e) = prctl::set_pdeathsig(Signal::SIGTERM) {
        eprintln!("wakegate guard: cannot ask for the parent-death signal: {e}");
    }
    loop {
        if orphaned() {
            // wakegate is gone (also before the signal was asked for): the
            // whole group goes, this process with it.
            let _ = killpg(getpgrp(), Signal::SIGKILL);
            return ExitCode::from(137);
        }
        match child.try_wait() {
            Ok(Some(status)) => return exit_like(status),
            Ok(None) => {}
            Err(e) => {
                eprintln!("wakegate guard: cannot wait for the command: {e}");
                return ExitCode::from(2);
            }
        }
        match signals.wait() {
            // wakegate's death (checked above), a stop from wakegate (the
            // command has it too), or the command's exit.
            Ok(_) => {}
            Err(e) => {
                eprintln!("wakegate guard: cannot wait for signals: {e}");
                return ExitCode::from(2);
            }
        }
    }
}

/// Signals that end a process without a core dump and that the Rust
/// runtime leaves at their default action (it ignores SIGPIPE and handles
/// SIGSEGV and SIGBUS itself).
const RAISED: [Signal; 7] =
    [Signal::SIGTERM, Signal::SIGKILL, Signal::SIGINT, Signal::SIGHUP, Signal::SIGALRM, Signal::SIGUSR1, Signal::SIGUSR2];

/// Ends this process as `status` ended the command: its exit code, or the
/// same signal (so wakegate's report names it); a signal that dumps core
/// (the guard must not write a core file next to the command's) or that the
/// runtime handles becomes the shell's exit code 128 + N.
fn exit_like(status: ExitStatus) -> ExitCode {
    if let Some(code) = status.code() {
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let Some(signo) = status.signal() else { return ExitCode::from(1) };
    if let Ok(signal) = Signal::try_from(signo)
        && RAISED.contains(&signal)
    {
        let mut only = SigSet::empty();
        only.add(signal);
        // At its default action: unblocked, it ends this process the same way.
        let _ = only.thread_unblock();
        let _ = raise(signal);
    }
    ExitCode::from(128u8.saturating_add(u8::try_from(signo).unwrap_or(0)))
}
