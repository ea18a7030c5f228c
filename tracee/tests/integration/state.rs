//! Per-thread state: registers, xstate, signal mask, rseq, siginfo.

use tracee::{
    GeneralRegisters, LimitError, RLIMIT_COUNT, ResourceLimit, RestartKind, SeizeOptions,
    SeizedProcess, SignalMask, SyscallState, ThreadError, XState,
};

use crate::common::{Testee, wait_blocked_in};

/// Offsets in the standard XSAVE format: xmm0 in the legacy region, and the upper half
/// of ymm0 in the AVX component (CPUID leaf 0xD sub-leaf 2 gives 576 on every x86 CPU).
const XMM0: usize = 160;
const YMM0_HI: usize = 576;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn registers_round_trip_and_show_the_interrupted_read() {
    let mut child = Testee::spawn(&["read"]);
    child.expect("ready");
    let pid = child.pid();
    wait_blocked_in(pid, libc::SYS_read);
    let mut process = SeizedProcess::seize(pid, SeizeOptions::default()).expect("seize");

    let regs = process.registers(pid).expect("registers");
    assert!(regs.is_64bit());
    assert_ne!(regs.fs_base, 0, "glibc sets up TLS through fs_base");
    assert_eq!(
        SyscallState::classify(&regs),
        SyscallState::Interrupted {
            nr: libc::SYS_read as u64,
            restart: RestartKind::RestartSys
        }
    );
    assert_eq!(regs.rdi, 0, "read(0, ...)");

    // Plain data: survives serialization as capture stores it.
    let json = serde_json::to_string(&regs).expect("serialize");
    let back: GeneralRegisters = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(back, regs);

    let mut changed = regs;
    changed.r12 = 0x1234_5678_9abc_def0;
    changed.r13 = 7;
    process.set_registers(pid, &changed).expect("set registers");
    assert_eq!(process.registers(pid).expect("registers"), changed);
    process
        .set_registers(pid, &regs)
        .expect("restore registers");
    assert_eq!(process.registers(pid).expect("registers"), regs);

    let mask = process.signal_mask(pid).expect("sigmask");
    let blocked = SignalMask(mask.0 | 1 << (libc::SIGUSR2 - 1));
    process.set_signal_mask(pid, blocked).expect("set sigmask");
    assert!(
        process
            .signal_mask(pid)
            .expect("sigmask")
            .contains(libc::SIGUSR2)
    );
    process.set_signal_mask(pid, mask).expect("restore sigmask");
    assert_eq!(process.signal_mask(pid).expect("sigmask"), mask);

    let rseq = process.rseq_configuration(pid).expect("rseq configuration");
    if rseq.is_registered() {
        // glibc registers rseq with its RSEQ_SIG.
        assert_eq!(rseq.signature, 0x5305_3053);
        assert!(rseq.rseq_abi_size >= 20);
    }

    let info = process.stop_siginfo(pid).expect("siginfo");
    assert_eq!(info.signo(), libc::SIGTRAP);
    assert_eq!(info.code(), libc::SIGTRAP | 0x80 << 8, "PTRACE_EVENT_STOP");

    assert!(matches!(
        process.registers(pid + 100_000),
        Err(ThreadError::UnknownThread { .. })
    ));

    process.detach().expect("detach");
    child.send("hello");
    child.expect("read 6 hello");
}

#[test]
fn xstate_holds_the_ymm_registers_and_setting_it_reaches_the_thread() {
    let mut child = Testee::spawn(&["ymm"]);
    if child.line() == "noavx" {
        eprintln!("skipped: this CPU has no AVX");
        return;
    }
    let pid = child.pid();
    wait_blocked_in(pid, libc::SYS_read);
    let mut process = SeizedProcess::seize(pid, SeizeOptions::default()).expect("seize");
    let p0: Vec<u8> = (0..32).map(|i| 0xa0 + i).collect();
    let p1: Vec<u8> = (0..32).map(|i| 0x50 + i).collect();

    let xstate = process.xstate(pid).expect("xstate");
    assert!(
        xstate.bytes.len() >= YMM0_HI + 256,
        "an area with the AVX component"
    );
    assert_eq!(
        xstate.xstate_bv().expect("header") & 0b100,
        0b100,
        "AVX state in use"
    );
    assert_eq!(&xstate.bytes[XMM0..XMM0 + 16], &p0[..16]);
    assert_eq!(&xstate.bytes[XMM0 + 16..XMM0 + 32], &p1[..16]);
    assert_eq!(&xstate.bytes[YMM0_HI..YMM0_HI + 16], &p0[16..]);
    assert_eq!(&xstate.bytes[YMM0_HI + 16..YMM0_HI + 32], &p1[16..]);

    let new0: Vec<u8> = (0..32).map(|i| 0x10 + i).collect();
    let mut changed = xstate.clone();
    changed.bytes[XMM0..XMM0 + 16].copy_from_slice(&new0[..16]);
    changed.bytes[YMM0_HI..YMM0_HI + 16].copy_from_slice(&new0[16..]);
    process.set_xstate(pid, &changed).expect("set xstate");
    assert_eq!(process.xstate(pid).expect("xstate"), changed);

    let short = XState {
        bytes: xstate.bytes[..512].to_vec(),
    };
    assert!(matches!(
        process.set_xstate(pid, &short),
        Err(ThreadError::RegsetLength { len: 512, .. })
    ));

    process.detach().expect("detach");
    // The child's read returns 1 and it prints the ymm registers as they are now.
    child.send("x");
    child.expect(&format!("ymm {} {} 1", hex(&new0), hex(&p1)));
}

#[test]
fn remote_calls_preserve_the_vector_state() {
    let mut child = Testee::spawn(&["ymm"]);
    if child.line() == "noavx" {
        eprintln!("skipped: this CPU has no AVX");
        return;
    }
    let pid = child.pid();
    wait_blocked_in(pid, libc::SYS_read);
    let mut process = SeizedProcess::seize(pid, SeizeOptions::default()).expect("seize");
    let before = process.xstate(pid).expect("xstate");
    let regs = process.registers(pid).expect("registers");
    {
        let mut session = process.remote(pid).expect("session");
        for _ in 0..3 {
            session
                .syscall_ok(libc::SYS_getppid as u64, [0; 6])
                .expect("getppid");
        }
        session.finish().expect("finish");
    }
    assert_eq!(process.xstate(pid).expect("xstate"), before);
    assert_eq!(process.registers(pid).expect("registers"), regs);
    process.detach().expect("detach");
    let p0: Vec<u8> = (0..32).map(|i| 0xa0 + i).collect();
    let p1: Vec<u8> = (0..32).map(|i| 0x50 + i).collect();
    child.send("x");
    child.expect(&format!("ymm {} {} 1", hex(&p0), hex(&p1)));
}

#[test]
fn robust_list_and_resource_limits_are_read_from_outside() {
    let mut child = Testee::spawn(&["read"]);
    child.expect("ready");
    let pid = child.pid();
    wait_blocked_in(pid, libc::SYS_read);
    let mut process = SeizedProcess::seize(pid, SeizeOptions::default()).expect("seize");

    // glibc registers a robust list for every thread, the main one included.
    let robust = process.robust_list(pid).expect("robust list");
    assert_ne!(robust.head, 0);
    assert_eq!(robust.len, 24, "sizeof(struct robust_list_head)");

    // Limits match /proc/PID/limits' view through prlimit: NOFILE as an example.
    let nofile = process
        .resource_limit(libc::RLIMIT_NOFILE)
        .expect("prlimit NOFILE");
    assert!(nofile.soft <= nofile.hard && nofile.soft > 0);
    for resource in 0..RLIMIT_COUNT {
        process.resource_limit(resource).expect("every resource");
    }
    assert!(matches!(
        process.resource_limit(RLIMIT_COUNT + 100),
        Err(LimitError { .. })
    ));
    let lowered = ResourceLimit {
        soft: nofile.soft / 2,
        hard: nofile.hard,
    };
    process
        .set_resource_limit(libc::RLIMIT_NOFILE, lowered)
        .expect("set NOFILE");
    assert_eq!(
        process
            .resource_limit(libc::RLIMIT_NOFILE)
            .expect("read back"),
        lowered
    );
    process
        .set_resource_limit(libc::RLIMIT_NOFILE, nofile)
        .expect("restore NOFILE");

    process.detach().expect("detach");
    child.send("x");
    child.expect("read 2 x");
}
