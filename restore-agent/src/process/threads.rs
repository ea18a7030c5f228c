//! Threads: their captured state checked and decoded, their creation inside the helper
//! (a remote `clone3` with the original tid), and the per-thread kernel state set
//! through remote calls in each thread.
//!
//! ```text
//!  leader (the helper itself)        clone3(CLONE_VM|FS|FILES|SIGHAND|THREAD|SYSVSEM,
//!    remote clone3 ──────────────►          set_tid = [captured tid])
//!                                    new thread: attached by the kernel
//!                                    (PTRACE_O_TRACECLONE), stopped before its first
//!                                    instruction; every signal blocked (inherited)
//!  each thread, in its own session:  set_tid_address(clear_child_tid)
//!                                    set_robust_list(head, len)
//!                                    sigaltstack(captured stack_t)
//!                                    prctl(PR_SET_NAME, comm)
//!                                    rseq(area, len, flags, sig)  ── the kernel writes
//!                                        the area: the fault server must be serving
//!  then from outside (no session):   registers (CRIU's restart rules), NT_X86_XSTATE,
//!                                    signal mask
//! ```
//!
//! Registers are set last and from outside: a remote session gives the thread back the
//! registers and mask it had when the session started.

use snapshot_format::process::{RobustList, Rseq, SignalStack, ThreadState};
use tracee::{
    GeneralRegisters, MAX_THREADS, MAX_XSTATE_LEN, RemoteError, RemoteScratch, SeizedProcess,
    SignalMask, SyscallState, USER64_CS, XSAVE_HEADER_OFFSET, XState,
};

use super::error::ProcessRestoreError;

/// `TASK_COMM_LEN - 1`: the longest thread name.
const COMM_MAX: usize = 15;

/// `sizeof(struct robust_list_head)` on x86_64, the only length `set_robust_list`
/// accepts.
const ROBUST_LIST_HEAD_LEN: u64 = 24;

/// `SS_DISABLE`.
const SS_DISABLE: i32 = 2;

/// Flags of the remote `clone3` that creates a thread.
const THREAD_FLAGS: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM) as u64;

/// `sizeof(struct clone_args)` (version 2: with `set_tid` and `cgroup`).
const CLONE_ARGS_LEN: usize = 88;

/// One thread to recreate.
#[derive(Debug, Clone)]
pub(crate) struct ThreadPlan {
    /// The captured tid.
    pub(crate) tid: i32,
    /// Its name (at most 15 bytes, no NUL).
    pub(crate) comm: Vec<u8>,
    /// The registers it resumes with (restart rules applied, `orig_rax = -1`).
    pub(crate) regs: GeneralRegisters,
    /// Its FP/vector state.
    pub(crate) xstate: XState,
    /// Its blocked signals.
    pub(crate) sigmask: u64,
    /// Its rseq registration.
    pub(crate) rseq: Option<Rseq>,
    /// Its robust futex list.
    pub(crate) robust: RobustList,
    /// `clear_child_tid`.
    pub(crate) clear_child_tid: u64,
    /// Its alternate signal stack.
    pub(crate) sigaltstack: SignalStack,
}

/// Checks and decodes the captured threads (leader first).
pub(crate) fn plan_threads(
    threads: &[ThreadState],
    leader: i32,
) -> Result<Vec<ThreadPlan>, ProcessRestoreError> {
    if threads.is_empty() {
        return Err(ProcessRestoreError::invalid("no threads"));
    }
    if threads.len() > MAX_THREADS {
        return Err(ProcessRestoreError::invalid(format!(
            "{} threads, more than the limit of {MAX_THREADS}",
            threads.len()
        )));
    }
    let mut plans = Vec::with_capacity(threads.len());
    for (i, t) in threads.iter().enumerate() {
        let tid = i32::try_from(t.tid)
            .ok()
            .filter(|&tid| tid > 0)
            .ok_or_else(|| ProcessRestoreError::invalid(format!("thread id {}", t.tid)))?;
        if i == 0 && tid != leader {
            return Err(ProcessRestoreError::unsupported(format!(
                "the thread-group leader {leader} had exited (pthread_exit) when the process \
                 was captured; restoring a process without its leader is not supported"
            )));
        }
        if plans.iter().any(|p: &ThreadPlan| p.tid == tid) {
            return Err(ProcessRestoreError::invalid(format!(
                "thread {tid} listed twice"
            )));
        }
        let bytes: &[u8; GeneralRegisters::LEN] = t.regs.as_slice().try_into().map_err(|_| {
            ProcessRestoreError::invalid(format!(
                "thread {tid}: {} bytes of registers, expected {}",
                t.regs.len(),
                GeneralRegisters::LEN
            ))
        })?;
        let regs = GeneralRegisters::from_bytes(bytes);
        if regs.cs != USER64_CS {
            return Err(ProcessRestoreError::unsupported(format!(
                "thread {tid} runs 32-bit code (cs {:#x}); only x86_64 threads are supported",
                regs.cs
            )));
        }
        if t.xstate.len() < XSAVE_HEADER_OFFSET + 64 || t.xstate.len() > MAX_XSTATE_LEN {
            return Err(ProcessRestoreError::invalid(format!(
                "thread {tid}: an XSAVE area of {} bytes",
                t.xstate.len()
            )));
        }
        let mut comm: Vec<u8> = t.comm.bytes().filter(|&b| b != 0).collect();
        comm.truncate(COMM_MAX);
        plans.push(ThreadPlan {
            tid,
            comm,
            regs: SyscallState::resume_registers(&regs),
            xstate: XState {
                bytes: t.xstate.clone(),
            },
            sigmask: t.sigmask,
            rseq: t.rseq,
            robust: t.robust_list,
            clear_child_tid: t.clear_child_tid,
            sigaltstack: t.sigaltstack,
        });
    }
    Ok(plans)
}

/// A `struct clone_args` creating a thread, with `set_tid` at `set_tid` (0: any tid).
fn clone_args(set_tid: u64) -> [u8; CLONE_ARGS_LEN] {
    let mut args = [0u8; CLONE_ARGS_LEN];
    let mut put = |index: usize, value: u64| {
        args[index * 8..index * 8 + 8].copy_from_slice(&value.to_le_bytes());
    };
    put(0, THREAD_FLAGS);
    // exit_signal (4), stack (5), stack_size (6) and tls (7) stay 0: the thread's
    // registers, fs_base included, are all set before it runs.
    if set_tid != 0 {
        put(8, set_tid);
        put(9, 1);
    }
    args
}

/// Creates the threads after the leader (`plans[1..]`) inside the helper, with their
/// captured tids when `set_tids`. Returns the tids of all threads, leader first. Each
/// new thread is seized and stopped before it ran any code.
pub(crate) fn create_threads(
    process: &mut SeizedProcess,
    helper: i32,
    plans: &[ThreadPlan],
    set_tids: bool,
) -> Result<Vec<i32>, ProcessRestoreError> {
    let mut tids = vec![helper];
    if plans.len() < 2 {
        return Ok(tids);
    }
    let mut session = process.remote(helper).map_err(ProcessRestoreError::remote(
        "cannot drive the helper to create threads",
    ))?;
    let mut scratch = RemoteScratch::map(&mut session, CLONE_ARGS_LEN + 8).map_err(
        ProcessRestoreError::remote("cannot map scratch memory in the helper"),
    )?;
    let args_addr = scratch.addr();
    let tid_addr = args_addr + CLONE_ARGS_LEN as u64;
    for plan in &plans[1..] {
        let set_tid = if set_tids {
            scratch
                .write(CLONE_ARGS_LEN, &plan.tid.to_le_bytes())
                .map_err(ProcessRestoreError::remote("cannot write clone arguments"))?;
            tid_addr
        } else {
            0
        };
        scratch
            .write(0, &clone_args(set_tid))
            .map_err(ProcessRestoreError::remote("cannot write clone arguments"))?;
        let tid = scratch
            .session()
            .syscall_ok(
                libc::SYS_clone3 as u64,
                [args_addr, CLONE_ARGS_LEN as u64, 0, 0, 0, 0],
            )
            .map_err(|e| match e {
                RemoteError::Syscall { ref source, .. }
                    if source.raw_os_error() == Some(libc::EEXIST) =>
                {
                    ProcessRestoreError::PidInUse {
                        pid: plan.tid,
                        role: format!("thread {}", plan.tid),
                        user: super::plan::pid_user(plan.tid),
                    }
                }
                e => ProcessRestoreError::Remote {
                    step: format!("cannot create thread {}", plan.tid),
                    source: e,
                },
            })?;
        tids.push(tid as i32);
    }
    scratch.unmap().map_err(ProcessRestoreError::remote(
        "cannot unmap scratch memory in the helper",
    ))?;
    session
        .finish()
        .map_err(ProcessRestoreError::remote("cannot end the remote session"))?;
    Ok(tids)
}

/// Sets the kernel state of thread `tid` that only the thread itself can set (see the
/// module docs), registering its rseq area when `rseq` (the fault server must be
/// serving: the kernel writes the area at once).
pub(crate) fn set_thread_state(
    process: &mut SeizedProcess,
    tid: i32,
    plan: &ThreadPlan,
    rseq: bool,
) -> Result<(), ProcessRestoreError> {
    let step = |what: &str| format!("thread {}: cannot {what}", plan.tid);
    let mut session = process
        .remote(tid)
        .map_err(ProcessRestoreError::remote(step("start remote calls")))?;
    session
        .syscall_ok(
            libc::SYS_set_tid_address as u64,
            [plan.clear_child_tid, 0, 0, 0, 0, 0],
        )
        .map_err(ProcessRestoreError::remote(step("set clear_child_tid")))?;
    if plan.robust.head != 0 {
        session
            .syscall_ok(
                libc::SYS_set_robust_list as u64,
                [plan.robust.head, ROBUST_LIST_HEAD_LEN, 0, 0, 0, 0],
            )
            .map_err(ProcessRestoreError::remote(step(
                "set the robust futex list",
            )))?;
    }
    // [0, 24): stack_t { ss_sp, ss_flags (+ pad), ss_size }; [32, 48): the name.
    let mut scratch = RemoteScratch::map(&mut session, 48)
        .map_err(ProcessRestoreError::remote(step("map scratch memory")))?;
    let base = scratch.addr();
    let mut block = [0u8; 48];
    let ss = plan.sigaltstack;
    let disabled = ss.flags & SS_DISABLE != 0;
    let (sp, flags, size) = if disabled {
        (0, SS_DISABLE, 0)
    } else {
        (ss.sp, ss.flags, ss.size)
    };
    block[0..8].copy_from_slice(&sp.to_le_bytes());
    block[8..12].copy_from_slice(&flags.to_le_bytes());
    block[16..24].copy_from_slice(&size.to_le_bytes());
    block[32..32 + plan.comm.len()].copy_from_slice(&plan.comm);
    scratch
        .write(0, &block)
        .map_err(ProcessRestoreError::remote(step(
            "write into scratch memory",
        )))?;
    scratch
        .session()
        .syscall_ok(libc::SYS_sigaltstack as u64, [base, 0, 0, 0, 0, 0])
        .map_err(ProcessRestoreError::remote(step("set the signal stack")))?;
    scratch
        .session()
        .syscall_ok(
            libc::SYS_prctl as u64,
            [libc::PR_SET_NAME as u64, base + 32, 0, 0, 0, 0],
        )
        .map_err(ProcessRestoreError::remote(step("set the thread name")))?;
    scratch
        .unmap()
        .map_err(ProcessRestoreError::remote(step("unmap scratch memory")))?;
    if rseq && let Some(r) = plan.rseq {
        session
            .syscall_ok(
                libc::SYS_rseq as u64,
                [
                    r.abi_pointer,
                    u64::from(r.abi_size),
                    u64::from(r.flags),
                    u64::from(r.signature),
                    0,
                    0,
                ],
            )
            .map_err(ProcessRestoreError::remote(step("register its rseq area")))?;
    }
    session
        .finish()
        .map_err(ProcessRestoreError::remote(step("end remote calls")))
}

/// Sets thread `tid`'s registers, FP/vector state and signal mask: the last thing
/// before it may run.
pub(crate) fn set_registers(
    process: &mut SeizedProcess,
    tid: i32,
    plan: &ThreadPlan,
) -> Result<(), ProcessRestoreError> {
    let step = |what: &str| format!("thread {}: cannot set its {what}", plan.tid);
    process
        .set_xstate(tid, &plan.xstate)
        .map_err(ProcessRestoreError::thread(step(
            "FP/vector state (NT_X86_XSTATE)",
        )))?;
    process
        .set_registers(tid, &plan.regs)
        .map_err(ProcessRestoreError::thread(step("registers")))?;
    process
        .set_signal_mask(tid, SignalMask(plan.sigmask))
        .map_err(ProcessRestoreError::thread(step("signal mask")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread(tid: u32) -> ThreadState {
        let regs = GeneralRegisters {
            cs: USER64_CS,
            orig_rax: libc::SYS_read as u64,
            rax: (-tracee::ERESTARTSYS) as u64,
            rip: 0x1002,
            ..GeneralRegisters::default()
        };
        ThreadState {
            tid,
            comm: "a-very-long-thread-name".into(),
            regs: regs.to_bytes().to_vec(),
            xstate: vec![0; 1024],
            ..ThreadState::default()
        }
    }

    #[test]
    fn threads_are_checked_and_decoded() {
        let plans = plan_threads(&[thread(10), thread(11)], 10).expect("valid");
        assert_eq!(plans[1].tid, 11);
        assert_eq!(plans[0].comm, b"a-very-long-thr");
        // The interrupted read is executed again.
        assert_eq!(plans[0].regs.rip, 0x1000);
        assert_eq!(plans[0].regs.rax, libc::SYS_read as u64);
        assert_eq!(plans[0].regs.orig_rax, u64::MAX);
        assert!(matches!(
            plan_threads(&[thread(11), thread(10)], 10),
            Err(ProcessRestoreError::Unsupported { .. })
        ));
        assert!(matches!(
            plan_threads(&[thread(10), thread(10)], 10),
            Err(ProcessRestoreError::Invalid { .. })
        ));
        let mut short = thread(10);
        short.regs.pop();
        assert!(matches!(
            plan_threads(&[short], 10),
            Err(ProcessRestoreError::Invalid { .. })
        ));
        let mut compat = thread(10);
        let mut regs = GeneralRegisters::from_bytes(compat.regs.as_slice().try_into().unwrap());
        regs.cs = 0x23;
        compat.regs = regs.to_bytes().to_vec();
        assert!(matches!(
            plan_threads(&[compat], 10),
            Err(ProcessRestoreError::Unsupported { .. })
        ));
        let mut huge = thread(10);
        huge.xstate = vec![0; MAX_XSTATE_LEN + 1];
        assert!(plan_threads(&[huge], 10).is_err());
        assert!(plan_threads(&[], 10).is_err());
    }

    #[test]
    fn clone_args_layout() {
        let args = clone_args(0x1234);
        assert_eq!(
            u64::from_le_bytes(args[0..8].try_into().unwrap()),
            THREAD_FLAGS
        );
        assert_eq!(u64::from_le_bytes(args[64..72].try_into().unwrap()), 0x1234);
        assert_eq!(u64::from_le_bytes(args[72..80].try_into().unwrap()), 1);
        assert_eq!(clone_args(0)[64..80], [0u8; 16]);
        assert_eq!(
            CLONE_ARGS_LEN,
            size_of::<linux_raw_sys::general::clone_args>()
        );
    }
}
