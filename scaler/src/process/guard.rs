//! The guard: a small process between wakegate and a solution's command, so
//! that the command's own children die with wakegate too.
//!
//! The kernel's parent-death signal reaches only the process wakegate
//! started; a command that starts others (`sh -c "a | b"`, a server that
//! forks workers) would leave them behind when wakegate is killed outright
//! (SIGKILL, the OOM killer), holding the solution's port. The guard is the
//! leader of the solution's process group: it asks for SIGTERM when
//! wakegate dies, runs the command, and on that signal kills everything
//! below it. A SIGTERM while wakegate lives is a stop that wakegate sent to
//! the group (the command got it too): the guard then waits for the command
//! and exits as it did, so wakegate sees the command's own exit status.
//! A SIGTERM from anyone else (an operator's `kill` of the guard's pid) is
//! passed on to the group once, as wakegate's stop would send it: the
//! command stops, and the guard exits as it did; that includes a `kill` from
//! an ancestor pid namespace (the host, into wakegate's container), which
//! arrives without a sender pid. Not passed on: one from a member of the
//! group itself (`trap 'kill 0' EXIT`), and the kernel's own (`SI_KERNEL`,
//! e.g. SysRq). A SIGTERM sent to
//! the whole group from outside (`kill -- -PGID`, a service manager stopping
//! the cgroup) reaches the command directly and is passed on as well: the
//! command then gets it twice, so signal the guard's pid or the group, not
//! both.
//!
//! "Everything below it" includes daemons that left the group (`setsid`,
//! a double fork): the guard is a child subreaper, so whatever the command's
//! tree orphans becomes the guard's child instead of init's. When the
//! command exits, or wakegate dies, the guard kills its remaining children
//! until none is left (as systemd's `KillMode=mixed` does to a unit's
//! cgroup), reaping orphans meanwhile.

use std::ffi::OsString;
use std::process::{Command, ExitCode};

use nix::errno::Errno;
use nix::sys::prctl;
use nix::sys::signal::{SigSet, Signal, kill, killpg, raise};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, getpgid, getpgrp};

/// The subcommand of the wakegate binary that runs a guard.
pub const SUBCOMMAND: &str = "guard";

/// Runs `argv` (program and arguments) under the guard for wakegate, pid
/// `parent`; once it exited, kills what it left below and exits with its
/// exit code or dies of the signal that ended it; when wakegate is gone
/// (also if that happened before this started), kills everything below and
/// exits 137.
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
    // Orphans of the command's tree (daemons) become this process's children.
    if let Err(e) = prctl::set_child_subreaper(true) {
        eprintln!("wakegate guard: cannot become a child subreaper ({e}): daemons of the command may outlive it");
    }
    // The command first: it inherits the signal mask (std does not reset
    // it), and must not start with SIGTERM blocked.
    let child = match Command::new(program).args(args).spawn() {
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
        kill_below();
        return ExitCode::from(2);
    }
    // Read with the sender's pid: a stop from wakegate is not passed on.
    let taken = match SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC) {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("wakegate guard: cannot read signals: {e}");
            kill_below();
            return ExitCode::from(2);
        }
    };
    if let Err(e) = prctl::set_pdeathsig(Signal::SIGTERM) {
        eprintln!("wakegate guard: cannot ask for the parent-death signal: {e}");
    }
    let command = Pid::from_raw(child.id() as i32);
    let mut passed_on = false;
    loop {
        if orphaned() {
            // wakegate is gone (also before the signal was asked for):
            // everything below goes, then this process.
            kill_below();
            return ExitCode::from(137);
        }
        // Reap what ended: the command (its status ends the guard), or an
        // orphan of its tree.
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(ended @ (WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, ..))) if pid == command => {
                    kill_below();
                    return exit_like(ended);
                }
                Ok(WaitStatus::StillAlive) => break,
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => {
                    eprintln!("wakegate guard: cannot wait for the command: {e}");
                    kill_below();
                    return ExitCode::from(2);
                }
            }
        }
        match taken.read_signal() {
            // A stop from outside the group and not from wakegate (which
            // signals the whole group itself): passed on, once. The
            // parent-death signal is checked for above.
            Ok(Some(info))
                if info.ssi_signo == Signal::SIGTERM as u32
                    && !passed_on
                    && !orphaned()
                    && from_outside(info.ssi_pid, info.ssi_code, parent) =>
            {
                passed_on = true;
                eprintln!("wakegate guard: SIGTERM from pid {}: stopping the command", info.ssi_pid);
                pass_on_stop(command);
            }
            // wakegate's death (checked above), a stop from wakegate or
            // from within the group (the command has it too), a repeated
            // stop, this process's own passed-on one, or the command's exit.
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                eprintln!("wakegate guard: cannot wait for signals: {e}");
                kill_below();
                return ExitCode::from(2);
            }
        }
    }
}

/// Whether a SIGTERM from `sender` (with the siginfo `code`) came from
/// outside the solution's group and not from wakegate (`parent`). Sender 0
/// with a user's code is a `kill` from an ancestor pid namespace (the host,
/// into wakegate's container), which neither wakegate nor the group is in;
/// with the kernel's code (`SI_KERNEL`) it is no one's stop.
fn from_outside(sender: u32, code: i32, parent: u32) -> bool {
    if sender == 0 {
        // kill, sigqueue, tgkill: the codes of a sender's own call.
        return [nix::libc::SI_USER, nix::libc::SI_QUEUE, nix::libc::SI_TKILL].contains(&code);
    }
    if [parent, std::process::id()].contains(&sender) {
        return false;
    }
    let Ok(pid) = i32::try_from(sender) else { return false };
    // A sender already gone is taken as from outside (best effort).
    getpgid(Some(Pid::from_raw(pid))) != Ok(getpgrp())
}

/// SIGTERM to the solution's group, as wakegate's stop sends it; to the
/// command only, should this process not lead its own group (it always
/// does when wakegate started it).
fn pass_on_stop(command: Pid) {
    let sent = if getpgrp() == Pid::this() { killpg(Pid::this(), Signal::SIGTERM) } else { kill(command, Signal::SIGTERM) };
    if let Err(e) = sent {
        eprintln!("wakegate guard: cannot pass the stop on: {e}");
    }
}

/// Kills this process's children until none is left: the command's group
/// and every daemon of it reparented here (a child killed hands its own
/// children over before it can be reaped), reaping each.
fn kill_below() {
    let me = std::process::id();
    // Bounded: a tree that keeps forking faster than it is killed is left
    // to wakegate's group kill after 1,000 rounds.
    for _ in 0..1000 {
        let children = children_of(me);
        if children.is_empty() {
            return;
        }
        for &pid in &children {
            let _ = kill(pid, Signal::SIGKILL);
        }
        for pid in children {
            let _ = waitpid(pid, None);
        }
    }
}

/// The children of `parent`, from `/proc/<pid>/stat` (its fourth field,
/// after the command name in parentheses, which may hold anything).
fn children_of(parent: u32) -> Vec<Pid> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)).and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            out.push(Pid::from_raw(pid));
        }
    }
    out
}

/// Signals that end a process without a core dump and that the Rust
/// runtime leaves at their default action (it ignores SIGPIPE and handles
/// SIGSEGV and SIGBUS itself).
const RAISED: [Signal; 7] =
    [Signal::SIGTERM, Signal::SIGKILL, Signal::SIGINT, Signal::SIGHUP, Signal::SIGALRM, Signal::SIGUSR1, Signal::SIGUSR2];

/// Ends this process as `ended` ended the command: its exit code, or the
/// same signal (so wakegate's report names it); a signal that dumps core
/// (the guard must not write a core file next to the command's) or that the
/// runtime handles becomes the shell's exit code 128 + N.
fn exit_like(ended: WaitStatus) -> ExitCode {
    let signal = match ended {
        WaitStatus::Exited(_, code) => return ExitCode::from(u8::try_from(code).unwrap_or(1)),
        WaitStatus::Signaled(_, signal, _) => signal,
        _ => return ExitCode::from(1),
    };
    if RAISED.contains(&signal) {
        let mut only = SigSet::empty();
        only.add(signal);
        // At its default action: unblocked, it ends this process the same way.
        let _ = only.thread_unblock();
        let _ = raise(signal);
    }
    ExitCode::from(128u8.saturating_add(u8::try_from(signal as i32).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    use super::*;

    #[test]
    fn only_stops_from_outside_the_group_and_not_from_wakegate_are_passed_on() {
        let parent = std::os::unix::process::parent_id();
        let user = nix::libc::SI_USER;
        assert!(!from_outside(std::process::id(), user, parent), "this process itself");
        assert!(!from_outside(parent, user, parent), "wakegate");
        assert!(from_outside(0, user, parent), "a kill from an ancestor pid namespace");
        assert!(!from_outside(0, nix::libc::SI_KERNEL, parent), "the kernel's own (SI_KERNEL)");
        let mut inside = Command::new("sleep").arg("5").spawn().expect("sleep runs");
        let mut outside = Command::new("sleep").arg("5").process_group(0).spawn().expect("sleep runs");
        let (a, b) = (inside.id(), outside.id());
        let verdicts = (from_outside(a, user, parent), from_outside(b, user, parent));
        for c in [&mut inside, &mut outside] {
            let _ = c.kill();
            let _ = c.wait();
        }
        assert_eq!(verdicts, (false, true), "a member of this group, then one of its own group");
    }
}
