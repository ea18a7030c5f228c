//! Reading a frozen process's state (everything but memory) into a [`ProcessState`].
//!
//! | what | from |
//! | --- | --- |
//! | registers (`NT_PRSTATUS`, with `fs_base`/`gs_base`), `NT_X86_XSTATE`, signal mask, rseq, robust list | ptrace / `get_robust_list`, per thread |
//! | system-call state | classified from the registers (`orig_rax`, `rax = -ERESTART*`) |
//! | `clear_child_tid`, `sigaltstack` | remote `prctl(PR_GET_TID_ADDRESS)` and `sigaltstack(NULL, &old)` in each thread, into a scratch mapping that is unmapped again |
//! | signal handlers | remote `rt_sigaction(sig, NULL, &old)` for signals 1..=64 (one thread: handlers are per process) |
//! | `brk` | remote `brk(0)` (returns the current break, changes nothing) |
//! | other `mm` fields | `/proc/PID/stat` (`start_code` ... `env_end`) |
//! | auxv, exe, cwd, umask, personality, comm, ids, pending signals, user and group ids | `/proc/PID/...` |
//! | rlimits | remote `prlimit64(0, r, NULL, &old)` in the leader (from outside, another user's process would need `CAP_SYS_RESOURCE`) |
//! | open fds | `/proc/PID/fd`, `fdinfo`, `kcmp` (module `fds`) |
//!
//! Every remote call runs before the memory layout is read, and the scratch mapping
//! it uses is unmapped before: nothing injected appears in the captured layout or
//! memory (the kernel's own `cpu_id` update of the rseq area when a thread briefly
//! returns to user mode is the only trace, and it is rewritten on every return anyway).
//!
//! # rseq
//!
//! A thread stopped inside an rseq critical section (`rip` in `[start_ip, start_ip +
//! post_commit_offset)` of the descriptor its `rseq_cs` points to) has its saved `rip`
//! moved to the section's `abort_ip`, as the kernel would on preemption (CRIU does
//! the same): a restored copy must not resume a per-CPU critical section halfway,
//! possibly on another CPU. `ThreadState::rseq_aborted` records it.

use std::io::Read;
use std::path::{Path, PathBuf};

use snapshot_format::process::{
    ARCH_X86_64, Credentials, InSyscall, MmFields, ProcessState, ResourceLimit, RobustList, Rseq,
    SignalAction, SignalStack, SyscallRestart, ThreadState,
};
use tracee::{
    GeneralRegisters, RLIMIT_COUNT, RemoteError, RemoteScratch, RemoteSession, RestartKind,
    SeizedProcess, SyscallState, ThreadStop,
};

use crate::classify::identity_of;
use crate::error::CaptureError;

/// Largest /proc text file read whole (auxv, cmdline, comm, personality).
pub const MAX_PROC_FILE: u64 = 1 << 20;

/// Reads a small /proc file whole, bounded by [`MAX_PROC_FILE`].
pub(crate) fn read_small(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_PROC_FILE)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// A [`CaptureError::Proc`] maker for `what` of `pid`.
pub(crate) fn proc_error(pid: i32, what: &str) -> impl FnOnce(std::io::Error) -> CaptureError {
    let what = what.to_owned();
    move |source| CaptureError::Proc { pid, what, source }
}

fn procfs_error(pid: i32, what: &str) -> impl FnOnce(procfs::ProcError) -> CaptureError {
    let what = what.to_owned();
    move |e| CaptureError::Proc {
        pid,
        what,
        source: match e {
            procfs::ProcError::NotFound(_) => std::io::Error::from_raw_os_error(libc::ENOENT),
            procfs::ProcError::PermissionDenied(_) => {
                std::io::Error::from_raw_os_error(libc::EACCES)
            }
            procfs::ProcError::Io(e, _) => e,
            other => std::io::Error::other(other.to_string()),
        },
    }
}

/// What the remote calls of one thread return.
#[derive(Debug, Default)]
struct RemoteExtras {
    clear_child_tid: u64,
    sigaltstack: SignalStack,
}

/// Reads the state of the frozen `process`; `mm_tid` is a live thread whose /proc
/// entries show the process (the leader unless it is a zombie).
pub(crate) fn collect(
    process: &mut SeizedProcess,
    mm_tid: i32,
) -> Result<ProcessState, CaptureError> {
    let pid = process.pid();
    let task_dir = |tid: i32| PathBuf::from(format!("/proc/{pid}/task/{tid}"));
    let dir = task_dir(mm_tid);
    let thread_error = |source| CaptureError::Thread { pid, source };
    let remote_error = |source| CaptureError::Remote { pid, source };

    // The leader first (when alive), then the other threads in tid order.
    let mut tids = process.tids();
    if let Some(i) = tids.iter().position(|&t| t == pid) {
        tids[..=i].rotate_right(1);
    }
    let job_stop_signal = process.threads().iter().find_map(|t| match t.stop {
        ThreadStop::GroupStop { signal } => Some(signal),
        ThreadStop::Interrupted => None,
    });

    // Remote calls first: their scratch mappings are gone before anything else is read.
    let mut signal_actions = Vec::new();
    let mut brk = 0;
    let mut limits = Vec::new();
    let mut extras = Vec::with_capacity(tids.len());
    for (i, &tid) in tids.iter().enumerate() {
        let mut session = process.remote(tid).map_err(remote_error)?;
        if i == 0 {
            signal_actions = session
                .sigactions()
                .map_err(remote_error)?
                .into_iter()
                .map(|a| SignalAction {
                    handler: a.handler,
                    flags: a.flags,
                    restorer: a.restorer,
                    mask: a.mask,
                })
                .collect();
            brk = session
                .syscall_ok(libc::SYS_brk as u64, [0; 6])
                .map_err(remote_error)?;
            // From inside: reading another user's limits from outside needs
            // CAP_SYS_RESOURCE.
            limits = session.resource_limits().map_err(remote_error)?;
        }
        extras.push(thread_extras(&mut session).map_err(remote_error)?);
        session.finish().map_err(remote_error)?;
    }

    let mut threads = Vec::with_capacity(tids.len());
    for (&tid, extra) in tids.iter().zip(extras) {
        let regs = process.registers(tid).map_err(thread_error)?;
        let xstate = process.xstate(tid).map_err(thread_error)?;
        let sigmask = process.signal_mask(tid).map_err(thread_error)?.0;
        let rseq = process.rseq_configuration(tid).map_err(thread_error)?;
        let robust = process.robust_list(tid).map_err(thread_error)?;
        let comm =
            read_small(&task_dir(tid).join("comm")).map_err(proc_error(pid, "a thread's comm"))?;
        let status = procfs::process::Process::new(pid)
            .and_then(|p| p.task_from_tid(tid))
            .and_then(|t| t.status())
            .map_err(procfs_error(pid, "a thread's status"))?;
        let rseq = rseq.is_registered().then_some(Rseq {
            abi_pointer: rseq.rseq_abi_pointer,
            abi_size: rseq.rseq_abi_size,
            signature: rseq.signature,
            flags: rseq.flags,
        });
        let (regs, rseq_aborted) = match rseq {
            Some(r) => rseq_fixup(process, tid, regs, r.abi_pointer),
            None => (regs, false),
        };
        threads.push(ThreadState {
            tid: tid as u32,
            comm: text_line(&comm),
            regs: regs.to_bytes().to_vec(),
            xstate: xstate.bytes,
            sigmask,
            pending_signals: status.sigpnd,
            rseq,
            rseq_aborted,
            robust_list: RobustList {
                head: robust.head,
                len: robust.len,
            },
            clear_child_tid: extra.clear_child_tid,
            sigaltstack: extra.sigaltstack,
            syscall: in_syscall(&regs),
        });
    }

    let task = procfs::process::Process::new(pid)
        .and_then(|p| p.task_from_tid(mm_tid))
        .map_err(procfs_error(pid, "its task"))?;
    let stat = task.stat().map_err(procfs_error(pid, "stat"))?;
    let status = task.status().map_err(procfs_error(pid, "status"))?;
    let mm = MmFields {
        start_code: stat.startcode,
        end_code: stat.endcode,
        start_data: stat.start_data.unwrap_or(0),
        end_data: stat.end_data.unwrap_or(0),
        start_brk: stat.start_brk.unwrap_or(0),
        brk,
        start_stack: stat.startstack,
        arg_start: stat.arg_start.unwrap_or(0),
        arg_end: stat.arg_end.unwrap_or(0),
        env_start: stat.env_start.unwrap_or(0),
        env_end: stat.env_end.unwrap_or(0),
    };
    let auxv = read_small(&dir.join("auxv")).map_err(proc_error(pid, "auxv"))?;
    if auxv.len() % 16 != 0 {
        return Err(CaptureError::Proc {
            pid,
            what: "auxv".to_owned(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{} bytes is not a whole number of (type, value) pairs",
                    auxv.len()
                ),
            ),
        });
    }
    let auxv = auxv
        .chunks_exact(8)
        .map(|w| u64::from_le_bytes(w.try_into().expect("8-byte chunks")))
        .collect();
    let exe_identity = std::fs::metadata(dir.join("exe"))
        .ok()
        .map(|m| identity_of(&m));
    let cwd = std::fs::read_link(dir.join("cwd")).map_err(proc_error(pid, "cwd"))?;
    let personality = read_small(&dir.join("personality"))
        .map_err(proc_error(pid, "personality"))
        .and_then(|b| {
            u32::from_str_radix(text_line(&b).trim(), 16).map_err(|e| CaptureError::Proc {
                pid,
                what: "personality".to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })
        })?;
    let comm = read_small(&dir.join("comm")).map_err(proc_error(pid, "comm"))?;
    let rlimits = (0..RLIMIT_COUNT)
        .zip(limits)
        .map(|(resource, l)| ResourceLimit {
            resource,
            soft: l.soft,
            hard: l.hard,
        })
        .collect();
    let fds = crate::fds::collect(pid, mm_tid)?;

    Ok(ProcessState {
        arch: ARCH_X86_64.to_owned(),
        comm: text_line(&comm),
        ppid: stat.ppid as u32,
        pgid: stat.pgrp as u32,
        sid: stat.session as u32,
        threads,
        signal_actions,
        shared_pending_signals: status.shdpnd,
        job_stop_signal,
        mm,
        auxv,
        exe_identity,
        cwd: Some(cwd),
        umask: status.umask.unwrap_or(0o022),
        personality,
        rlimits,
        fds,
        vma_flags: Vec::new(),
        creds: Some(Credentials {
            uid: [status.ruid, status.euid, status.suid, status.fuid],
            gid: [status.rgid, status.egid, status.sgid, status.fgid],
            groups: status.groups,
        }),
    })
}

/// The first line of a /proc text file, lossy.
fn text_line(bytes: &[u8]) -> String {
    let line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
    String::from_utf8_lossy(line).into_owned()
}

/// `clear_child_tid` and the signal stack of the session's thread, read by remote calls
/// into a scratch mapping (unmapped before returning).
fn thread_extras(session: &mut RemoteSession<'_>) -> Result<RemoteExtras, RemoteError> {
    // [0, 8): the tid address; [8, 32): a stack_t { ss_sp, ss_flags (+pad), ss_size }.
    let mut scratch = RemoteScratch::map(session, 32)?;
    let base = scratch.addr();
    scratch.session().syscall_ok(
        libc::SYS_prctl as u64,
        [libc::PR_GET_TID_ADDRESS as u64, base, 0, 0, 0, 0],
    )?;
    scratch
        .session()
        .syscall_ok(libc::SYS_sigaltstack as u64, [0, base + 8, 0, 0, 0, 0])?;
    let mut raw = [0u8; 32];
    scratch.read(0, &mut raw)?;
    scratch.unmap()?;
    let word = |at: usize| u64::from_le_bytes(raw[at..at + 8].try_into().expect("8 bytes"));
    Ok(RemoteExtras {
        clear_child_tid: word(0),
        sigaltstack: SignalStack {
            sp: word(8),
            flags: i32::from_le_bytes(raw[16..20].try_into().expect("4 bytes")),
            size: word(24),
        },
    })
}

/// The system call a thread is stopped in, from its registers.
fn in_syscall(regs: &GeneralRegisters) -> Option<InSyscall> {
    let restart = |kind| match kind {
        RestartKind::RestartSys => SyscallRestart::RestartSys,
        RestartKind::RestartNoIntr => SyscallRestart::RestartNoIntr,
        RestartKind::RestartNoHand => SyscallRestart::RestartNoHand,
        RestartKind::RestartBlock => SyscallRestart::RestartBlock,
    };
    match SyscallState::classify(regs) {
        SyscallState::NotInSyscall => None,
        SyscallState::Completed { nr, result } => Some(InSyscall {
            nr,
            rax: result,
            restart: None,
        }),
        SyscallState::Interrupted { nr, restart: kind } => Some(InSyscall {
            nr,
            rax: regs.rax as i64,
            restart: Some(restart(kind)),
        }),
    }
}

/// Offset of `rseq_cs` in `struct rseq`.
const RSEQ_CS_OFFSET: u64 = 8;

/// Applies the rseq abort fix-up (module docs) to a thread's registers; returns them
/// and whether `rip` was moved. Unreadable rseq memory leaves the registers as they are
/// (the program's rseq area is its own business; the kernel would kill it on return).
fn rseq_fixup(
    process: &SeizedProcess,
    tid: i32,
    mut regs: GeneralRegisters,
    rseq_area: u64,
) -> (GeneralRegisters, bool) {
    let memory = process.memory();
    let mut word = [0u8; 8];
    if memory.read(rseq_area + RSEQ_CS_OFFSET, &mut word).is_err() {
        return (regs, false);
    }
    let descriptor = u64::from_le_bytes(word);
    if descriptor == 0 {
        return (regs, false);
    }
    // struct rseq_cs { u32 version; u32 flags; u64 start_ip; u64 post_commit_offset;
    // u64 abort_ip; }
    let mut cs = [0u8; 32];
    if memory.read(descriptor, &mut cs).is_err() {
        return (regs, false);
    }
    let field = |at: usize| u64::from_le_bytes(cs[at..at + 8].try_into().expect("8 bytes"));
    let (start_ip, post_commit, abort_ip) = (field(8), field(16), field(24));
    let inside = regs.rip >= start_ip && regs.rip - start_ip < post_commit;
    if inside {
        log::debug!(
            "thread {tid}: stopped in an rseq critical section at {:#x}, resuming at its abort \
             handler {abort_ip:#x}",
            regs.rip
        );
        regs.rip = abort_ip;
    }
    (regs, inside)
}
