//! Per-thread state of a seized thread: general registers, the XSAVE area, the signal
//! mask, the rseq registration and the current stop's siginfo.
//!
//! Setters take `&mut SeizedProcess`, so they cannot run while a
//! [`RemoteSession`](crate::RemoteSession) borrows the process (a session restores the
//! registers and mask it saved when it ends, which would undo them).

use std::io;
use std::sync::OnceLock;

use crate::error::ThreadError;
use crate::process::{SeizedProcess, ThreadState};
use crate::regs::{GeneralRegisters, RobustList, RseqConfiguration, SigInfo, SignalMask, XState};
use crate::sys;
use crate::syscall_state::SyscallState;

/// Upper bound when probing the size of the XSAVE area. The largest x86 XSAVE layouts
/// (AVX-512 + AMX tiles) are about 11 KiB; the kernel clamps the transfer to the real
/// size and reports it.
pub const MAX_XSTATE_LEN: usize = 64 * 1024;

/// The XSAVE area size this kernel uses for `NT_X86_XSTATE` (fixed at boot).
static XSTATE_LEN: OnceLock<usize> = OnceLock::new();

impl SeizedProcess {
    /// Checks that `tid` is a seized thread resting in its stop.
    pub(crate) fn check_stopped(&self, tid: i32) -> Result<usize, ThreadError> {
        self.threads
            .iter()
            .position(|t| t.tid == tid && matches!(t.state, ThreadState::Stopped(_)))
            .ok_or(ThreadError::UnknownThread { pid: self.pid, tid })
    }

    fn ptrace_error(&self, tid: i32, op: &'static str) -> impl FnOnce(io::Error) -> ThreadError {
        let pid = self.pid;
        move |source| ThreadError::Ptrace {
            pid,
            tid,
            op,
            source,
        }
    }

    /// The thread's general registers (`PTRACE_GETREGSET`, `NT_PRSTATUS`).
    pub fn registers(&self, tid: i32) -> Result<GeneralRegisters, ThreadError> {
        self.check_stopped(tid)?;
        read_registers(self.pid, tid)
    }

    /// Sets the thread's general registers (`PTRACE_SETREGSET`, `NT_PRSTATUS`). The kernel
    /// validates segment selectors and refuses non-canonical `fs_base`/`gs_base`.
    pub fn set_registers(&mut self, tid: i32, regs: &GeneralRegisters) -> Result<(), ThreadError> {
        self.check_stopped(tid)?;
        write_registers(self.pid, tid, regs)
    }

    /// The thread's system-call state, classified from its registers.
    pub fn syscall_state(&self, tid: i32) -> Result<SyscallState, ThreadError> {
        Ok(SyscallState::classify(&self.registers(tid)?))
    }

    /// The thread's full FP/vector state (`NT_X86_XSTATE`), exactly as many bytes as this
    /// kernel's XSAVE layout has.
    pub fn xstate(&self, tid: i32) -> Result<XState, ThreadError> {
        self.check_stopped(tid)?;
        let expected = self.xstate_len(tid)?;
        let mut bytes = vec![0u8; expected];
        let len = sys::get_regset(tid, sys::NT_X86_XSTATE, &mut bytes)
            .map_err(self.ptrace_error(tid, "PTRACE_GETREGSET(NT_X86_XSTATE)"))?;
        if len != expected {
            return Err(ThreadError::RegsetLength {
                pid: self.pid,
                tid,
                what: "NT_X86_XSTATE",
                len,
                expected,
            });
        }
        Ok(XState { bytes })
    }

    /// Sets the thread's full FP/vector state. The length must be this kernel's XSAVE size
    /// (an image from a machine with another layout is refused); the kernel also refuses
    /// a header with unsupported feature bits.
    pub fn set_xstate(&mut self, tid: i32, xstate: &XState) -> Result<(), ThreadError> {
        self.check_stopped(tid)?;
        let expected = self.xstate_len(tid)?;
        if xstate.bytes.len() != expected {
            return Err(ThreadError::RegsetLength {
                pid: self.pid,
                tid,
                what: "NT_X86_XSTATE",
                len: xstate.bytes.len(),
                expected,
            });
        }
        sys::set_regset(tid, sys::NT_X86_XSTATE, &xstate.bytes)
            .map_err(self.ptrace_error(tid, "PTRACE_SETREGSET(NT_X86_XSTATE)"))
    }

    /// The XSAVE size, probed once with a large buffer.
    fn xstate_len(&self, tid: i32) -> Result<usize, ThreadError> {
        if let Some(len) = XSTATE_LEN.get() {
            return Ok(*len);
        }
        let mut probe = vec![0u8; MAX_XSTATE_LEN];
        let len = sys::get_regset(tid, sys::NT_X86_XSTATE, &mut probe)
            .map_err(self.ptrace_error(tid, "PTRACE_GETREGSET(NT_X86_XSTATE)"))?;
        Ok(*XSTATE_LEN.get_or_init(|| len))
    }

    /// The thread's blocked-signal mask (`PTRACE_GETSIGMASK`). For a thread inside
    /// `rt_sigsuspend`, `ppoll`, `pselect6` or `epoll_pwait`, this is its normal mask, not
    /// the temporary one the call installed.
    pub fn signal_mask(&self, tid: i32) -> Result<SignalMask, ThreadError> {
        self.check_stopped(tid)?;
        sys::get_sigmask(tid)
            .map(SignalMask)
            .map_err(self.ptrace_error(tid, "PTRACE_GETSIGMASK"))
    }

    /// Sets the thread's blocked-signal mask (`PTRACE_SETSIGMASK`; SIGKILL and SIGSTOP
    /// stay unblocked).
    pub fn set_signal_mask(&mut self, tid: i32, mask: SignalMask) -> Result<(), ThreadError> {
        self.check_stopped(tid)?;
        sys::set_sigmask(tid, mask.0).map_err(self.ptrace_error(tid, "PTRACE_SETSIGMASK"))
    }

    /// The thread's rseq registration (`PTRACE_GET_RSEQ_CONFIGURATION`).
    pub fn rseq_configuration(&self, tid: i32) -> Result<RseqConfiguration, ThreadError> {
        self.check_stopped(tid)?;
        sys::get_rseq_configuration(tid)
            .map(RseqConfiguration::from)
            .map_err(self.ptrace_error(tid, "PTRACE_GET_RSEQ_CONFIGURATION"))
    }

    /// The thread's robust futex list (`get_robust_list(2)`, called from here: it needs
    /// ptrace access to the thread, not a remote call). Setting it is a remote
    /// `set_robust_list` in the thread.
    pub fn robust_list(&self, tid: i32) -> Result<RobustList, ThreadError> {
        self.check_stopped(tid)?;
        sys::get_robust_list(tid)
            .map(|(head, len)| RobustList { head, len })
            .map_err(self.ptrace_error(tid, "get_robust_list"))
    }

    /// The siginfo of the thread's current stop (`PTRACE_GETSIGINFO`). For an interrupt
    /// stop, `si_code` is `SIGTRAP | PTRACE_EVENT_STOP << 8`. The kernel refuses this
    /// (`EINVAL`) for a thread in a group (job-control) stop.
    pub fn stop_siginfo(&self, tid: i32) -> Result<SigInfo, ThreadError> {
        self.check_stopped(tid)?;
        sys::get_siginfo(tid)
            .map(|bytes| SigInfo {
                bytes: bytes.to_vec(),
            })
            .map_err(self.ptrace_error(tid, "PTRACE_GETSIGINFO"))
    }
}

/// Reads the general registers of a tracee in any ptrace stop.
pub(crate) fn read_registers(pid: i32, tid: i32) -> Result<GeneralRegisters, ThreadError> {
    let mut bytes = [0u8; GeneralRegisters::LEN];
    let len = sys::get_regset(tid, sys::NT_PRSTATUS, &mut bytes).map_err(|source| {
        ThreadError::Ptrace {
            pid,
            tid,
            op: "PTRACE_GETREGSET(NT_PRSTATUS)",
            source,
        }
    })?;
    if len != GeneralRegisters::LEN {
        return Err(ThreadError::RegsetLength {
            pid,
            tid,
            what: "NT_PRSTATUS",
            len,
            expected: GeneralRegisters::LEN,
        });
    }
    Ok(GeneralRegisters::from_bytes(&bytes))
}

/// Writes the general registers of a tracee in any ptrace stop.
pub(crate) fn write_registers(
    pid: i32,
    tid: i32,
    regs: &GeneralRegisters,
) -> Result<(), ThreadError> {
    sys::set_regset(tid, sys::NT_PRSTATUS, &regs.to_bytes()).map_err(|source| ThreadError::Ptrace {
        pid,
        tid,
        op: "PTRACE_SETREGSET(NT_PRSTATUS)",
        source,
    })
}
