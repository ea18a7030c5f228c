//! Remote system calls inside stopped children, including children stopped inside
//! blocking, restartable system calls.

use std::time::Duration;

use tracee::{
    KernelSigaction, RemoteError, RemoteScratch, RestartKind, SeizeOptions, SeizedProcess,
    SyscallState,
};

use crate::common::{Testee, wait_blocked_in};

fn mapped(pid: i32, addr: u64) -> bool {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    maps.lines().any(|line| {
        let range = line.split_whitespace().next().unwrap_or("");
        let (start, end) = range.split_once('-').unwrap_or(("0", "0"));
        let start = u64::from_str_radix(start, 16).unwrap_or(0);
        let end = u64::from_str_radix(end, 16).unwrap_or(0);
        start <= addr && addr < end
    })
}

#[test]
fn remote_calls_inside_a_child_blocked_in_nanosleep() {
    let child = Testee::spawn(&["sleep", "1500"]);
    child.expect("ready");
    let pid = child.pid();
    wait_blocked_in(pid, libc::SYS_nanosleep);
    let mut process = SeizedProcess::seize(pid, SeizeOptions::default()).expect("seize");
    let regs = process.registers(pid).expect("registers");
    assert_eq!(
        SyscallState::classify(&regs),
        SyscallState::Interrupted {
            nr: libc::SYS_nanosleep as u64,
            restart: RestartKind::RestartBlock
        }
    );
    let mask = process.signal_mask(pid).expect("mask");
    {
        let mut session = process.remote(pid).expect("session");
        let me = session
            .syscall(libc::SYS_getpid as u64, [0; 6])
            .expect("getpid");
        assert_eq!(me, i64::from(pid));

        let mut scratch = RemoteScratch::map(&mut session, 5000).expect("scratch");
        assert_eq!(scratch.size(), 8192);
        let addr = scratch.addr();
        assert!(mapped(pid, addr));
        // We write into the tracee, the tracee's kernel writes back into it.
        scratch.write(100, b"written by the tracer").expect("write");
        let mut back = [0u8; 21];
        scratch.read(100, &mut back).expect("read");
        assert_eq!(&back, b"written by the tracer");
        let len = scratch
            .session()
            .syscall_ok(libc::SYS_getcwd as u64, [addr, 4096, 0, 0, 0, 0])
            .expect("remote getcwd");
        let mut cwd = vec![0u8; len as usize - 1];
        scratch.read(0, &mut cwd).expect("read cwd");
        let real = std::fs::read_link(format!("/proc/{pid}/cwd")).expect("cwd link");
        assert_eq!(
            String::from_utf8(cwd).expect("utf-8"),
            real.to_str().expect("path")
        );
        drop(scratch);
        assert!(!mapped(pid, addr), "scratch unmapped on drop");

        let actions = session.sigactions().expect("sigactions");
        assert_eq!(actions.len(), 64);
        // Rust's runtime ignores SIGPIPE; SIGUSR1 is left at its default.
        assert_eq!(actions[libc::SIGPIPE as usize - 1].handler, 1, "SIG_IGN");
        assert_eq!(actions[libc::SIGUSR1 as usize - 1].handler, 0, "SIG_DFL");
        session.finish().expect("finish");
    }
    assert_eq!(process.registers(pid).expect("registers"), regs);
    assert_eq!(process.signal_mask(pid).expect("mask"), mask);
    process.detach().expect("detach");
    // The sleep is restarted with its remaining time and completes normally.
    child.expect("slept 0 0");
}

#[test]
fn remote_calls_inside_a_child_blocked_in_a_pipe_read() {
    let mut child = Testee::spawn(&["read"]);
    child.expect("ready");
    let pid = child.pid();
    wait_blocked_in(pid, libc::SYS_read);
    let mut process = SeizedProcess::seize(pid, SeizeOptions::default()).expect("seize");
    let regs = process.registers(pid).expect("registers");
    {
        let mut session = process.remote(pid).expect("session");
        let addr = session
            .syscall_ok(
                libc::SYS_mmap as u64,
                [
                    0,
                    4096,
                    (libc::PROT_READ | libc::PROT_WRITE) as u64,
                    (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                    u64::MAX,
                    0,
                ],
            )
            .expect("remote mmap");
        assert!(mapped(pid, addr));
        session
            .syscall_ok(libc::SYS_munmap as u64, [addr, 4096, 0, 0, 0, 0])
            .expect("remote munmap");
        assert!(!mapped(pid, addr));

        let before = session.sigactions().expect("sigactions");
        let usr2 = libc::SIGUSR2 as usize - 1;
        let ignore = KernelSigaction {
            handler: 1,
            ..before[usr2]
        };
        session
            .set_sigactions(&[(libc::SIGUSR2, ignore)])
            .expect("set SIGUSR2");
        assert_eq!(session.sigactions().expect("sigactions")[usr2].handler, 1);
        session
            .set_sigactions(&[(libc::SIGUSR2, before[usr2])])
            .expect("restore SIGUSR2");
        assert_eq!(session.sigactions().expect("sigactions"), before);

        // A failing call reports its errno.
        match session.syscall_ok(libc::SYS_close as u64, [9999, 0, 0, 0, 0, 0]) {
            Err(RemoteError::Syscall { source, .. }) => {
                assert_eq!(source.raw_os_error(), Some(libc::EBADF));
            }
            other => panic!("expected EBADF, got {other:?}"),
        }
    }
    assert_eq!(process.registers(pid).expect("registers"), regs);
    process.detach().expect("detach");
    child.send("later");
    child.expect("read 6 later");
}

#[test]
fn a_remote_call_that_blocks_times_out_and_the_thread_is_restored() {
    let mut child = Testee::spawn(&["read"]);
    child.expect("ready");
    let pid = child.pid();
    wait_blocked_in(pid, libc::SYS_read);
    let options = SeizeOptions::default().timeout(Duration::from_millis(300));
    let mut process = SeizedProcess::seize(pid, options).expect("seize");
    let regs = process.registers(pid).expect("registers");
    {
        let mut session = process.remote(pid).expect("session");
        let mut scratch = RemoteScratch::map(&mut session, 64).expect("scratch");
        let addr = scratch.addr();
        // Nobody writes to the child's stdin: this read blocks until we interrupt it.
        match scratch
            .session()
            .syscall(libc::SYS_read as u64, [0, addr, 1, 0, 0, 0])
        {
            Err(RemoteError::Timeout { nr, .. }) => assert_eq!(nr, libc::SYS_read as u64),
            other => panic!("expected a timeout, got {other:?}"),
        }
        // The session is still usable.
        let me = scratch
            .session()
            .syscall(libc::SYS_getpid as u64, [0; 6])
            .expect("getpid after timeout");
        assert_eq!(me, i64::from(pid));
    }
    assert_eq!(process.registers(pid).expect("registers"), regs);
    process.detach().expect("detach");
    child.send("after");
    child.expect("read 6 after");
}

#[test]
fn the_syscall_site_is_checked_when_moved() {
    let child = Testee::spawn(&["read"]);
    child.expect("ready");
    let pid = child.pid();
    let mut process = SeizedProcess::seize(pid, SeizeOptions::default()).expect("seize");
    let site = process.syscall_site().expect("site");
    assert!(matches!(
        process.set_syscall_site(0x1000),
        Err(RemoteError::BadSyscallSite { addr: 0x1000, .. })
    ));
    // One byte off is inside the same mapping but not `0f 05`.
    assert!(matches!(
        process.set_syscall_site(site + 1),
        Err(RemoteError::BadSyscallSite { .. })
    ));
    process.set_syscall_site(site).expect("the located site");
    assert_eq!(
        process
            .remote_syscall(pid, libc::SYS_getpid as u64, [0; 6])
            .expect("getpid"),
        i64::from(pid)
    );
    process.detach().expect("detach");
}

/// `struct clone_args` (the first 11 fields, `CLONE_ARGS_SIZE_VER2`).
fn clone_args(flags: u64) -> [u8; 88] {
    let mut args = [0u8; 88];
    args[..8].copy_from_slice(&flags.to_le_bytes());
    args
}

#[test]
fn threads_created_by_a_remote_clone3_are_seized_before_running() {
    let child = Testee::spawn(&["read"]);
    child.expect("ready");
    let pid = child.pid();
    wait_blocked_in(pid, libc::SYS_read);
    let options = SeizeOptions::default().trace_clone(true).exit_kill(true);
    let mut process = SeizedProcess::seize(pid, options).expect("seize");
    assert_eq!(process.tids(), vec![pid]);
    let flags = (libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD
        | libc::CLONE_SYSVSEM) as u64;
    let new_tid = {
        let mut session = process.remote(pid).expect("session");
        let mut scratch = RemoteScratch::map(&mut session, 88).expect("scratch");
        scratch.write(0, &clone_args(flags)).expect("write args");
        let addr = scratch.addr();
        let tid = scratch
            .session()
            .syscall_ok(libc::SYS_clone3 as u64, [addr, 88, 0, 0, 0, 0])
            .expect("remote clone3") as i32;
        drop(scratch);
        session.finish().expect("finish");
        tid
    };
    assert_ne!(new_tid, pid);
    // The new thread is one of ours, in an event stop, before its first instruction:
    // right after the syscall instruction, with clone's child return value.
    let threads = process.threads();
    assert!(
        threads.iter().any(|t| t.tid == new_tid),
        "new thread {new_tid} not among {threads:?}"
    );
    let tgid = std::fs::read_to_string(format!("/proc/{new_tid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:").map(|v| v.trim().to_owned()))
        .expect("Tgid");
    assert_eq!(tgid, pid.to_string());
    let regs = process.registers(new_tid).expect("new thread's registers");
    assert_eq!(regs.rax, 0, "clone returns 0 in the child");
    let located = process.syscall_site().expect("site");
    assert_eq!(regs.rip, located + 2);
    // The new thread can run remote calls itself.
    let me = process
        .remote_syscall(new_tid, libc::SYS_gettid as u64, [0; 6])
        .expect("gettid in the new thread");
    assert_eq!(me, i64::from(new_tid));
    // Its registers are garbage for the program (a copy of the leader's at the call):
    // kill rather than detach.
    process.kill().expect("kill");
}

#[test]
fn resource_limits_read_from_inside_match_those_read_from_outside() {
    let child = Testee::spawn(&["read"]);
    child.expect("ready");
    let pid = child.pid();
    wait_blocked_in(pid, libc::SYS_read);
    let mut process = SeizedProcess::seize(pid, SeizeOptions::default()).expect("seize");
    let inside = {
        let mut session = process.remote(pid).expect("session");
        let limits = session.resource_limits().expect("remote prlimit64");
        session.finish().expect("finish");
        limits
    };
    assert_eq!(inside.len(), tracee::RLIMIT_COUNT as usize);
    for (resource, limit) in (0..tracee::RLIMIT_COUNT).zip(&inside) {
        assert_eq!(
            *limit,
            process.resource_limit(resource).expect("from outside"),
            "resource {resource}"
        );
    }
    process.detach().expect("detach");
}
