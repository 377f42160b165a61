//! Keeps every process a `shell` step starts inside the step, `setsid` and double forks
//! included. A process group is not enough: `setsid -f sleep 1000` leaves the group, and
//! an orphan is adopted by init, out of the node's reach.
//!
//! So the child the node spawns does not exec the program itself. In `pre_exec` it becomes
//! a small *keeper*: it marks itself a child subreaper (`PR_SET_CHILD_SUBREAPER`, so every
//! orphan of the step is re-parented to it, however it detached), forks, and the fork execs
//! the program. The keeper then waits. When the program exits, or the node asks it to stop
//! (`SIGTERM`, sent on timeout, cancellation or drop), or the node dies (`PR_SET_PDEATHSIG`
//! = `SIGTERM`), it kills every child it has (listed in `/proc/thread-self/children`) and
//! reaps until it has none: an orphan of a killed process becomes its child and is killed in
//! the next round, so it ends only when no descendant is left. Then it exits with the
//! program's code (`128 + signal` when killed by a signal, as the tool reports anyway).
//! If the keeper itself is SIGKILLed, the program dies with it (its own death signal).
//!
//! Chosen over a cgroup (needs a writable cgroup v2 tree, rarely delegated in containers)
//! and a PID namespace (needs privileges, and makes the program PID 1, which changes how
//! it handles signals). What it does not stop: a step running as the node's user that
//! kills the keeper by pid and then detaches within the same instant.
//!
//! Everything here after `fork` runs in a child of a multi-threaded process: only
//! async-signal-safe calls (no allocation, no locks), as `pre_exec` requires.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::sys::prctl;
use nix::sys::signal::{
    SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal, kill, sigaction,
};
use nix::sys::stat::Mode;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, getpid, getppid};

/// Where a process lists its children (Linux 3.5+, `CONFIG_PROC_CHILDREN`).
const CHILDREN: &std::ffi::CStr = c"/proc/thread-self/children";

/// Set by the keeper's `SIGTERM` handler: stop the program and sweep.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_: nix::libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Only there so that `SIGCHLD` interrupts `sigsuspend` (an ignored signal would not).
extern "C" fn on_child(_: nix::libc::c_int) {}

/// Whether the keeper can list its children on this system; checked once at start so a
/// node where it cannot says so (see [`super::Tools::new`]).
pub(super) fn available() -> bool {
    std::fs::read_to_string("/proc/thread-self/children").is_ok()
}

/// The `pre_exec` hook: returns `Ok` in the process that is to exec the program; the
/// keeper never returns.
///
/// # Safety
/// Must only be called in a freshly forked child, before exec (as `pre_exec` does).
pub(super) unsafe fn split() -> std::io::Result<()> {
    prctl::set_child_subreaper(true)?;
    // Handlers before the fork: a stop request that comes early is not lost. Both signals
    // are blocked until the keeper waits for them (sigsuspend), so none slips in between
    // a check and the wait.
    let mut blocked = SigSet::empty();
    blocked.add(Signal::SIGTERM);
    blocked.add(Signal::SIGCHLD);
    let old_mask = blocked.thread_swap_mask(SigmaskHow::SIG_BLOCK)?;
    let term = SigAction::new(
        SigHandler::Handler(on_term),
        SaFlags::empty(),
        SigSet::empty(),
    );
    let child = SigAction::new(
        SigHandler::Handler(on_child),
        SaFlags::SA_NOCLDSTOP,
        SigSet::empty(),
    );
    // SAFETY: the handlers only store to an atomic (or do nothing).
    unsafe {
        sigaction(Signal::SIGTERM, &term)?;
        sigaction(Signal::SIGCHLD, &child)?;
    }
    // The node dying (SIGKILL included) makes the keeper sweep.
    prctl::set_pdeathsig(Signal::SIGTERM)?;
    let keeper = getpid();
    // SAFETY: this process has one thread (a fork's child); see the module doc.
    match unsafe { fork() }? {
        ForkResult::Child => {
            // The program: gone if the keeper is, and with the mask it started with (exec
            // resets the handlers, not the mask).
            prctl::set_pdeathsig(Signal::SIGKILL)?;
            if getppid() != keeper {
                return Err(std::io::Error::other(
                    "the keeper died before the program started",
                ));
            }
            old_mask.thread_set_mask()?;
            Ok(())
        }
        ForkResult::Parent { child } => {
            close_inherited();
            let code = keep(child, old_mask);
            // SAFETY: _exit is what a forked child that does not exec must end with.
            unsafe { nix::libc::_exit(code) }
        }
    }
}

/// The keeper holds no pipe of the step (the node reads to end of file, which must come
/// when the program's tree is gone) and no descriptor of the node's.
fn close_inherited() {
    // SAFETY: a plain syscall on this process's descriptor table.
    let closed = unsafe { nix::libc::syscall(nix::libc::SYS_close_range, 0u32, u32::MAX, 0u32) };
    if closed != 0 {
        // Older kernels (before 5.9): close what a node plausibly has open.
        for fd in 0..4096 {
            // SAFETY: closing a descriptor number; EBADF is fine.
            unsafe { nix::libc::close(fd) };
        }
    }
}

/// Waits for the program or a stop request, then sweeps; returns the exit code.
fn keep(program: Pid, mut wait_mask: SigSet) -> i32 {
    wait_mask.remove(Signal::SIGTERM);
    wait_mask.remove(Signal::SIGCHLD);
    let code = 'wait: loop {
        if STOP.load(Ordering::SeqCst) {
            let _ = kill(program, Signal::SIGKILL);
        }
        // Reaps the program and any orphan that ended (they are re-parented here), so a long
        // step that leaves many short-lived orphans does not pile up zombies.
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == program => break 'wait code,
                Ok(WaitStatus::Signaled(pid, signal, _)) if pid == program => {
                    break 'wait 128 + signal as i32;
                }
                Ok(WaitStatus::StillAlive) => break,
                Ok(_) | Err(Errno::EINTR) => {}
                Err(_) => break 'wait 127,
            }
        }
        // Sleeps until SIGTERM or SIGCHLD; both are blocked outside this call.
        let _ = wait_mask.suspend();
    };
    sweep();
    code
}

/// Kills every child until there is none; see the module doc for why this ends with no
/// descendant left.
fn sweep() {
    loop {
        if !kill_children() {
            // Cannot list children: reap what ends by itself rather than hang the step.
            while !matches!(
                waitpid(None, Some(WaitPidFlag::WNOHANG)),
                Err(_) | Ok(WaitStatus::StillAlive)
            ) {}
            return;
        }
        match waitpid(None, None) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return, // ECHILD: nothing left.
        }
    }
}

/// SIGKILLs every pid listed in the children file; false when it cannot be read.
fn kill_children() -> bool {
    let Ok(fd) = open(CHILDREN, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()) else {
        return false;
    };
    let mut buf = [0u8; 512];
    let mut pid: i32 = 0;
    loop {
        let n = match nix::unistd::read(fd.as_fd(), &mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(_) => break,
        };
        // A number may span two reads: the digits carry over in `pid`.
        for &byte in &buf[..n] {
            if byte.is_ascii_digit() {
                pid = pid
                    .saturating_mul(10)
                    .saturating_add(i32::from(byte - b'0'));
            } else if pid > 0 {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                pid = 0;
            }
        }
    }
    if pid > 0 {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    true
}
