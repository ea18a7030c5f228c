//! Checks of the process state an image records, shared by the process tests.

use std::os::unix::fs::MetadataExt;

use snapshot_format::process::ThreadState;
use snapshot_format::{ProcessMetadata, ProcessState, RegionInfo, RegionKind};

use crate::common::{caught_and_ignored, region_at, registers};

/// `AT_NULL`, `AT_PAGESZ`, `AT_ENTRY`.
const AT_NULL: u64 = 0;
const AT_PAGESZ: u64 = 6;
const AT_ENTRY: u64 = 9;

/// `SA_SIGINFO`, `SA_ONSTACK` (kernel values).
const SA_SIGINFO: u64 = 4;
const SA_ONSTACK: u64 = 0x0800_0000;

/// Checks what every capture of a live fixture must record; returns the state.
/// Threads other than those in `settled` (besides the leader) may have been caught
/// while starting or ending, before or after their libc set them up: only their
/// registers are checked.
pub(crate) fn check_process<'m>(
    meta: &'m ProcessMetadata,
    pid: u32,
    regions: &[RegionInfo],
    settled: &[u32],
) -> &'m ProcessState {
    assert_eq!(meta.pid, Some(pid));
    let exe = meta.exe.as_ref().expect("exe path");
    assert!(
        meta.cmdline
            .first()
            .is_some_and(|a| a.ends_with(&*exe.file_name().unwrap().to_string_lossy())),
        "cmdline {:?} starts with the program",
        meta.cmdline
    );
    assert_eq!(
        meta.kernel_release.as_deref(),
        Some(&*rustix::system::uname().release().to_string_lossy())
    );
    assert_eq!(meta.page_size, Some(4096));
    let state = meta.process.as_ref().expect("process state");
    assert_eq!(state.arch, "x86_64");

    // Threads: the leader first; registers plausible.
    assert_eq!(state.threads[0].tid, pid, "the leader comes first");
    for t in &state.threads {
        check_registers(t, regions);
        if t.tid == pid || settled.contains(&t.tid) {
            check_thread(t, regions);
        }
    }

    // Signal handlers agree with the kernel's SigCgt/SigIgn masks, signal by signal.
    assert_eq!(state.signal_actions.len(), 64);
    let (caught, ignored) = caught_and_ignored(pid);
    for (i, a) in state.signal_actions.iter().enumerate() {
        let bit = 1u64 << i;
        assert_eq!(a.handler > 1, caught & bit != 0, "signal {} caught", i + 1);
        assert_eq!(
            a.handler == 1,
            ignored & bit != 0,
            "signal {} ignored",
            i + 1
        );
        if a.handler > 1 {
            assert!(
                region_at(regions, a.handler).prot.exec,
                "signal {} handler {:#x} is code",
                i + 1,
                a.handler
            );
        }
    }
    // The Rust runtime of every fixture installs its stack-overflow handler.
    let segv = state.signal_actions[libc::SIGSEGV as usize - 1];
    assert!(segv.handler > 1, "SIGSEGV handler installed");
    assert_eq!(
        segv.flags & (SA_SIGINFO | SA_ONSTACK),
        SA_SIGINFO | SA_ONSTACK
    );
    assert_eq!(
        state.signal_actions[libc::SIGPIPE as usize - 1].handler,
        1,
        "the Rust runtime ignores SIGPIPE"
    );

    // mm fields lie in the right mappings.
    let mm = &state.mm;
    let code = region_at(regions, mm.start_code);
    assert!(code.prot.exec && code.kind == RegionKind::FilePrivate);
    assert!(mm.start_code < mm.end_code && mm.start_data <= mm.end_data);
    assert!(mm.start_brk <= mm.brk);
    if mm.brk > mm.start_brk {
        assert_eq!(region_at(regions, mm.brk - 1).kind, RegionKind::Heap);
    }
    let stack = region_at(regions, mm.start_stack);
    assert_eq!(stack.kind, RegionKind::Stack);
    for addr in [mm.arg_start, mm.arg_end - 1, mm.env_start, mm.env_end - 1] {
        assert_eq!(
            region_at(regions, addr).start,
            stack.start,
            "args and env on the stack"
        );
    }

    // auxv: (type, value) pairs ending with AT_NULL.
    assert_eq!(state.auxv.len() % 2, 0);
    assert_eq!(&state.auxv[state.auxv.len() - 2..], &[AT_NULL, 0]);
    let aux = |t: u64| state.auxv.chunks_exact(2).find(|p| p[0] == t).map(|p| p[1]);
    assert_eq!(aux(AT_PAGESZ), Some(4096));
    assert!(
        region_at(regions, aux(AT_ENTRY).expect("AT_ENTRY"))
            .prot
            .exec
    );

    // Files and the rest of the process, against what we see from outside.
    let exe_meta = std::fs::metadata(exe).expect("stat exe");
    let id = state.exe_identity.expect("exe identity");
    assert_eq!(
        (id.dev, id.inode, id.size),
        (exe_meta.dev(), exe_meta.ino(), exe_meta.size())
    );
    assert_eq!(
        state.cwd.as_deref(),
        Some(std::env::current_dir().unwrap().as_path()),
        "fixtures inherit our cwd"
    );
    assert_eq!(state.umask, own_umask(), "fixtures inherit our umask");
    assert_eq!(state.rlimits.len(), 16);
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let captured = state.rlimits[libc::RLIMIT_NOFILE as usize];
    assert_eq!(captured.resource, libc::RLIMIT_NOFILE);
    assert_eq!(
        Some(captured.soft),
        nofile.current,
        "inherited RLIMIT_NOFILE"
    );
    let fd1 = state.fds.iter().find(|f| f.fd == 1).expect("fd 1");
    assert_eq!(
        fd1.kind,
        snapshot_format::process::FdKind::Pipe,
        "Fixture pipes stdout"
    );
    assert!(fd1.path.to_string_lossy().starts_with("pipe:["));
    assert_eq!(state.vma_flags.len(), regions.len());
    for (f, r) in state.vma_flags.iter().zip(regions) {
        assert_eq!(f.start, r.start);
        assert!(f.has("mr") || r.kind == RegionKind::Vvar || r.kind == RegionKind::VvarVclock);
    }
    assert!(
        state
            .vma_flags
            .iter()
            .any(|f| f.start == stack.start && f.has("gd"))
    );
    state
}

fn own_umask() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let v = status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .unwrap();
    u32::from_str_radix(v.trim(), 8).unwrap()
}

/// Registers and FP state of any thread.
fn check_registers(t: &ThreadState, regions: &[RegionInfo]) {
    assert_eq!(t.regs.len(), ThreadState::REGS_LEN);
    let regs = registers(t);
    assert!(regs.is_64bit());
    let code = region_at(regions, regs.rip);
    assert!(
        code.prot.exec,
        "thread {} rip {:#x} is in code",
        t.tid, regs.rip
    );
    assert!(
        region_at(regions, regs.rsp).prot.write,
        "rsp on a writable stack"
    );
    // XSAVE: the legacy area and header.
    assert!(t.xstate.len() > 576);
    if let Some(sc) = t.syscall {
        assert_eq!(sc.nr, regs.orig_rax);
    }
}

/// TLS, signal stack, robust list and rseq of a thread its libc has set up.
fn check_thread(t: &ThreadState, regions: &[RegionInfo]) {
    let regs = registers(t);
    assert!(
        region_at(regions, regs.fs_base).prot.write,
        "TLS via fs_base"
    );
    let bv = u64::from_le_bytes(t.xstate[512..520].try_into().unwrap());
    assert_ne!(bv & 0b11, 0, "x87/SSE components in xstate_bv");
    // glibc registers a robust list, clear_child_tid and rseq for every thread.
    assert_ne!(t.robust_list.head, 0);
    assert_eq!(t.robust_list.len, 24);
    assert!(region_at(regions, t.robust_list.head).prot.write);
    assert!(region_at(regions, t.clear_child_tid).prot.write);
    if let Some(rseq) = t.rseq {
        assert_eq!(rseq.signature, 0x5305_3053, "glibc's RSEQ_SIG");
        assert!(region_at(regions, rseq.abi_pointer).prot.write);
    }
    // The Rust runtime gives every thread an alternate signal stack.
    assert!(t.sigaltstack.size > 0 && t.sigaltstack.flags == 0);
    assert!(region_at(regions, t.sigaltstack.sp).prot.write);
    assert!(!t.comm.is_empty());
}
