//! The `unsafe` part of process restore: creating the helper with a raw `clone3`, the
//! few instructions the helper runs itself, reading this process's signal
//! dispositions, and the `fork` of `--detach`.
//!
//! # The helper's own code
//!
//! The helper is a fork (`clone3` without `CLONE_VM`) of the agent, which may already
//! run other threads. In such a child only async-signal-safe work is allowed until it
//! execs or exits: no allocation, no locks, no unwinding. The helper does exactly
//! four raw system calls and then waits forever:
//!
//! ```text
//! prctl(PR_SET_PDEATHSIG, SIGKILL)   dies with the agent thread that created it
//! getppid() == agent ? : exit_group  the agent died before the prctl took effect
//! write(ready, "r")                  tells the agent it is parked
//! loop pause()                       seized and driven from outside from here on
//! ```
//!
//! It never runs another instruction of its own: the agent seizes it inside
//! `pause`, replaces its whole address space and registers, and lets the restored
//! program run instead.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use linux_raw_sys::general::{CLONE_CLEAR_SIGHAND, CLONE_PIDFD, clone_args};
use tracee::KernelSigaction;

const _: () = assert!(size_of::<clone_args>() == 88);

/// The one place turning a raw `-1` into `errno`.
fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// What the helper runs in the child (see the module docs). Never returns.
fn helper_main(ready: RawFd, agent: libc::pid_t) -> ! {
    // Each block below is one raw system call with integer arguments (and, for
    // `write`, a pointer to one byte on this stack): nothing allocates, locks or
    // unwinds, which is all a forked child of a multi-threaded process may do.
    // SAFETY: see above.
    unsafe {
        libc::syscall(
            libc::SYS_prctl,
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    // SAFETY: see above.
    let parent = unsafe { libc::syscall(libc::SYS_getppid) };
    if parent != libc::c_long::from(agent) {
        // The agent died before the prctl took effect: nobody will drive us.
        // SAFETY: see above.
        unsafe { libc::syscall(libc::SYS_exit_group, 1) };
    }
    let byte = b'r';
    // SAFETY: see above; `byte` lives on this stack for the call.
    unsafe { libc::syscall(libc::SYS_write, ready, &raw const byte, 1usize) };
    loop {
        // SAFETY: see above.
        unsafe { libc::syscall(libc::SYS_pause) };
    }
}

/// Creates the helper: `clone3(CLONE_PIDFD | CLONE_CLEAR_SIGHAND, exit_signal =
/// SIGCHLD, set_tid = [tid])`. Returns its pid and a pidfd for it. The helper writes
/// one byte to `ready` once it is parked (see the module docs).
///
/// `CLONE_CLEAR_SIGHAND` resets every handled signal to `SIG_DFL` in the child (ignored
/// ones stay ignored): no handler of the agent can ever run in it.
pub(crate) fn clone_helper(
    set_tid: Option<libc::pid_t>,
    ready: RawFd,
) -> io::Result<(i32, OwnedFd)> {
    let agent = rustix::process::getpid().as_raw_nonzero().get();
    let tids = [set_tid.unwrap_or(0)];
    let mut pidfd: libc::c_int = -1;
    let args = clone_args {
        flags: u64::from(CLONE_PIDFD) | CLONE_CLEAR_SIGHAND,
        pidfd: (&raw mut pidfd) as u64,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: 0,
        stack_size: 0,
        tls: 0,
        set_tid: if set_tid.is_some() {
            tids.as_ptr() as u64
        } else {
            0
        },
        set_tid_size: u64::from(set_tid.is_some()),
        cgroup: 0,
    };
    // SAFETY: `args` is a valid `struct clone_args` of the size passed, whose pointers
    // (`pidfd`, `set_tid`) point to live locals the kernel writes / reads during the
    // call. Without CLONE_VM the child gets a copy of our address space and resumes
    // here with 0, on a copy of this stack; it then only runs `helper_main`, which
    // never returns and only makes raw system calls (async-signal-safe).
    let ret = unsafe { libc::syscall(libc::SYS_clone3, &raw const args, size_of::<clone_args>()) };
    let pid = check(ret)?;
    if pid == 0 {
        helper_main(ready, agent);
    }
    // SAFETY: the kernel stored a new pidfd (CLONE_PIDFD) that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok((pid as i32, pidfd))
}

/// This process's disposition of every signal 1..=64 (element `i` is signal `i + 1`),
/// in the kernel's layout (`rt_sigaction(sig, NULL, &old)`).
pub(crate) fn signal_dispositions() -> io::Result<Vec<KernelSigaction>> {
    let mut out = Vec::with_capacity(64);
    for signal in 1..=64 {
        let mut raw = [0u8; KernelSigaction::LEN];
        // SAFETY: `raw` has room for the kernel's 32-byte `struct sigaction`; the new
        // action is NULL (nothing changes) and the sigset size is the kernel's (8).
        let ret = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                signal,
                std::ptr::null::<u8>(),
                raw.as_mut_ptr(),
                8usize,
            )
        };
        check(ret)?;
        out.push(KernelSigaction::from_bytes(&raw));
    }
    Ok(out)
}

/// Forks this process (for `--detach`); returns the child's pid in the parent and
/// `None` in the child.
///
/// The caller must be single-threaded: [`super::detach::run_in_background`] checks
/// it before calling.
pub(crate) fn fork_single_threaded() -> io::Result<Option<i32>> {
    // SAFETY: the caller checked that this process has one thread, so the child is a
    // complete copy of it (no lock held by a vanished thread) and may run any code.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        pid => Ok(Some(pid)),
    }
}

/// Makes `fd` this process's descriptors `targets` (`dup2`; 0..3 are the standard
/// streams).
pub(crate) fn redirect_stdio(fd: RawFd, targets: std::ops::Range<RawFd>) -> io::Result<()> {
    for target in targets {
        // SAFETY: dup2 only changes this process's fd table; `fd` is an open
        // descriptor the caller owns, and the targets are the standard streams, which
        // the caller means to replace.
        let ret = unsafe { libc::dup2(fd, target) };
        check(libc::c_long::from(ret))?;
    }
    Ok(())
}
