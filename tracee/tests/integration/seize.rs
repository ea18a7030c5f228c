//! Seizing, detaching, killing, and the errors of seizing.

use std::panic::AssertUnwindSafe;

use tracee::{SeizeError, SeizeOptions, SeizedProcess, ThreadStop};

use crate::common::{
    Testee, assert_untraced, gettid, status_field, task_list, wait_blocked_in, wait_until,
};

#[test]
fn churning_multithreaded_process_is_fully_stopped_then_left_running() {
    let mut child = Testee::spawn(&["churn", "4"]);
    child.expect("ready");
    let pid = child.pid();
    let tracer = gettid().to_string();
    for round in 0..20 {
        let mut process = SeizedProcess::seize(pid, SeizeOptions::default()).expect("seize");
        let tids = process.tids();
        // Everything stopped: the listing cannot change, and it is exactly what we hold.
        assert_eq!(
            tids,
            task_list(pid),
            "round {round}: seized threads vs /proc"
        );
        assert!(
            tids.len() >= 5,
            "round {round}: main + 4 workers, got {tids:?}"
        );
        for &tid in &tids {
            let state = status_field(pid, tid, "State").expect("thread status");
            assert!(
                state.starts_with('t'),
                "round {round}: thread {tid} is {state}"
            );
            assert_eq!(
                status_field(pid, tid, "TracerPid").as_deref(),
                Some(tracer.as_str())
            );
        }
        assert!(
            process
                .threads()
                .iter()
                .all(|t| t.stop == ThreadStop::Interrupted)
        );
        // Threads stopped anywhere (inside clone, futex, mmap, user code): a remote call
        // works in each, and each is itself.
        for &tid in &tids {
            let got = process
                .remote_syscall(tid, libc::SYS_gettid as u64, [0; 6])
                .expect("remote gettid");
            assert_eq!(got, i64::from(tid), "round {round}");
        }
        process.detach().expect("detach");
        assert_untraced(pid);
        child.send("ping");
        child.expect("pong");
    }
}

#[test]
fn seizing_a_pid_that_does_not_exist_is_no_such_process() {
    let mut gone = Testee::spawn(&["no-such-mode"]);
    let pid = gone.pid();
    assert_eq!(gone.wait_exit().code(), Some(2));
    match SeizedProcess::seize(pid, SeizeOptions::default()) {
        Err(SeizeError::NoSuchProcess { pid: p }) => assert_eq!(p, pid),
        other => panic!("expected NoSuchProcess, got {other:?}"),
    }
    assert!(matches!(
        SeizedProcess::seize(0, SeizeOptions::default()),
        Err(SeizeError::InvalidPid { pid: 0 })
    ));
    assert!(matches!(
        SeizedProcess::seize(-7, SeizeOptions::default()),
        Err(SeizeError::InvalidPid { pid: -7 })
    ));
    let me = std::process::id() as i32;
    assert!(matches!(
        SeizedProcess::seize(me, SeizeOptions::default()),
        Err(SeizeError::SelfSeize { .. })
    ));
}

#[test]
fn seizing_a_thread_id_is_refused() {
    let child = Testee::spawn(&["churn", "1"]);
    child.expect("ready");
    let pid = child.pid();
    let tid = *task_list(pid)
        .iter()
        .find(|&&t| t != pid)
        .expect("a worker thread");
    match SeizedProcess::seize(tid, SeizeOptions::default()) {
        Err(SeizeError::NotAProcess { pid: p, tgid }) => {
            assert_eq!(p, tid);
            // The worker may already have been replaced; if /proc still knew it, it says whose.
            if let Some(tgid) = tgid {
                assert_eq!(tgid, pid);
            }
        }
        // The short-lived thread may be gone by the time we ask.
        Err(SeizeError::NoSuchProcess { .. }) => {}
        other => panic!("expected NotAProcess, got {other:?}"),
    }
}

#[test]
fn seizing_a_kernel_thread_is_not_permitted() {
    let is_kthreadd = std::fs::read_to_string("/proc/2/comm").is_ok_and(|c| c.trim() == "kthreadd");
    if !is_kthreadd {
        eprintln!("skipped: pid 2 is not kthreadd here (pid namespace?)");
        return;
    }
    match SeizedProcess::seize(2, SeizeOptions::default()) {
        Err(SeizeError::NotPermitted {
            pid: 2,
            tid: 2,
            source,
        }) => {
            assert_eq!(source.raw_os_error(), Some(libc::EPERM));
        }
        other => panic!("expected NotPermitted, got {other:?}"),
    }
}

#[test]
fn a_traceme_child_is_reported_as_traced_by_us() {
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tracee-testee"));
    command.arg("read").stdin(std::process::Stdio::piped());
    // SAFETY: ptrace(PTRACE_TRACEME) is a plain system call, async-signal-safe, fine
    // between fork and exec.
    unsafe {
        command.pre_exec(|| nix::sys::ptrace::traceme().map_err(std::io::Error::from));
    }
    let mut child = command.spawn().expect("spawn");
    let pid = child.id() as i32;
    // The legacy attach stops the child with SIGTRAP after exec.
    let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).expect("waitpid");
    assert!(matches!(
        status,
        nix::sys::wait::WaitStatus::Stopped(_, nix::sys::signal::SIGTRAP)
    ));
    match SeizedProcess::seize(pid, SeizeOptions::default()) {
        Err(SeizeError::AlreadyTraced { tracer, .. }) => assert_eq!(tracer, gettid()),
        other => panic!("expected AlreadyTraced, got {other:?}"),
    }
    child.kill().expect("kill");
    child.wait().expect("reap");
}

#[test]
fn a_zombie_leader_is_skipped_and_the_other_threads_are_seized() {
    let mut child = Testee::spawn(&["zombie-leader"]);
    child.expect("ready");
    let pid = child.pid();
    wait_until("the leader is a zombie", || {
        status_field(pid, pid, "State").is_some_and(|s| s.starts_with('Z'))
    });
    let mut process = SeizedProcess::seize(pid, SeizeOptions::default()).expect("seize");
    let tids = process.tids();
    assert_eq!(tids.len(), 1, "only the live thread: {tids:?}");
    assert_ne!(tids[0], pid);
    let got = process
        .remote_syscall(tids[0], libc::SYS_gettid as u64, [0; 6])
        .expect("remote gettid");
    assert_eq!(got, i64::from(tids[0]));
    process.detach().expect("detach");
    child.send("hi");
    child.expect("got hi");
    assert!(child.wait_exit().success());
}

#[test]
fn seizing_a_traced_process_names_the_tracer() {
    let mut target = Testee::spawn(&["read"]);
    target.expect("ready");
    let pid = target.pid();
    let mut tracer = Testee::spawn(&["tracer", &pid.to_string()]);
    tracer.expect("traced");
    match SeizedProcess::seize(pid, SeizeOptions::default()) {
        Err(e @ SeizeError::AlreadyTraced { .. }) => {
            let SeizeError::AlreadyTraced {
                pid: p,
                tid,
                tracer: t,
            } = e
            else {
                unreachable!()
            };
            assert_eq!((p, tid, t), (pid, pid, tracer.pid()));
        }
        other => panic!("expected AlreadyTraced, got {other:?}"),
    }
    // Once the other tracer is gone, the process can be seized.
    tracer.close_stdin();
    tracer.wait_exit();
    wait_until("the tracer's detach is visible", || {
        status_field(pid, pid, "TracerPid").as_deref() == Some("0")
    });
    let process = SeizedProcess::seize(pid, SeizeOptions::default()).expect("seize");
    process.detach().expect("detach");
    target.send("fine");
    target.expect("read 5 fine");
}

#[test]
fn panic_while_seized_leaves_the_process_running_and_untraced() {
    let mut child = Testee::spawn(&["read"]);
    child.expect("ready");
    let pid = child.pid();
    wait_blocked_in(pid, libc::SYS_read);
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let mut process = SeizedProcess::seize(pid, SeizeOptions::default()).expect("seize");
        let mut session = process.remote(pid).expect("remote session");
        let me = session
            .syscall(libc::SYS_getpid as u64, [0; 6])
            .expect("remote getpid");
        assert_eq!(me, i64::from(pid));
        panic!("injected failure in the middle of a remote session");
    }));
    assert!(result.is_err());
    assert_untraced(pid);
    // The interrupted read restarts and gets data written afterwards.
    child.send("after-panic");
    child.expect("read 12 after-panic");
}

#[test]
fn kill_ends_and_reaps_our_child() {
    let child = Testee::spawn(&["read"]);
    child.expect("ready");
    let pid = child.pid();
    let process = SeizedProcess::seize(pid, SeizeOptions::default()).expect("seize");
    process.kill().expect("kill");
    // Reaped: the pid is gone from /proc (not even a zombie).
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}

/// The supported way to hand over a freshly forked helper: it stops itself with SIGSTOP
/// (no PTRACE_TRACEME), we seize it in its group stop, drive it, detach, and SIGCONT it.
#[test]
fn self_stopped_child_is_seized_in_its_group_stop_and_continues_on_sigcont() {
    let mut child = Testee::spawn(&["sigstop"]);
    child.expect("stopping");
    let pid = child.pid();
    wait_until("the child is stopped", || {
        status_field(pid, pid, "State").is_some_and(|s| s.starts_with('T'))
    });
    let mut process = SeizedProcess::seize(pid, SeizeOptions::default()).expect("seize");
    assert_eq!(
        process.threads()[0].stop,
        ThreadStop::GroupStop {
            signal: libc::SIGSTOP
        }
    );
    let me = process
        .remote_syscall(pid, libc::SYS_getpid as u64, [0; 6])
        .expect("remote getpid");
    assert_eq!(me, i64::from(pid));
    process.detach().expect("detach");
    assert_untraced(pid);
    // Still in its job-control stop until SIGCONT.
    assert!(status_field(pid, pid, "State").is_some_and(|s| s.starts_with('T')));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGCONT)
        .expect("SIGCONT");
    child.expect("continued");
    assert!(child.wait_exit().success());
}

#[test]
fn signal_arriving_while_seized_is_delivered_after_detach() {
    let mut child = Testee::spawn(&["signals"]);
    child.expect("ready");
    let pid = child.pid();
    wait_blocked_in(pid, libc::SYS_read);
    let mut process = SeizedProcess::seize(pid, SeizeOptions::default()).expect("seize");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGUSR1)
        .expect("SIGUSR1");
    wait_until("SIGUSR1 is pending", || {
        status_field(pid, pid, "ShdPnd").is_some_and(|m| m != "0000000000000000")
            || status_field(pid, pid, "SigPnd").is_some_and(|m| m != "0000000000000000")
    });
    // Remote calls run with signals blocked: the signal stays pending, not intercepted.
    let me = process
        .remote_syscall(pid, libc::SYS_getpid as u64, [0; 6])
        .expect("remote getpid");
    assert_eq!(me, i64::from(pid));
    process.detach().expect("detach");
    child.send("count");
    child.expect("usr1 1");
}
