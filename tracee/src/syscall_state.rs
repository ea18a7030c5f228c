//! What a stopped thread was doing with respect to system calls, and how a restored copy
//! of it must continue.
//!
//! When a thread blocked in a system call (`read` on a pipe, `nanosleep`, `futex`) is
//! stopped by ptrace, the kernel aborts the call and prepares to restart it: the thread
//! stops with `orig_rax` = the call number and `rax` = one of the kernel-internal
//! `-ERESTART*` codes, with `rip` just after the 2-byte `syscall` instruction. When the
//! thread resumes without a signal handler to run, the kernel's
//! `arch_do_signal_or_restart` fixes the registers up:
//!
//! ```text
//! rax = -ERESTARTSYS / -ERESTARTNOINTR / -ERESTARTNOHAND  ->  rax = orig_rax, rip -= 2
//!                                                             (the call runs again)
//! rax = -ERESTART_RESTARTBLOCK                            ->  rax = __NR_restart_syscall,
//!                                                             rip -= 2 (continues from the
//!                                                             thread's kernel restart_block)
//! ```
//!
//! That fix-up happens on the thread's way back to user mode, so detaching from the same
//! (still-alive) thread restarts its call correctly — which is why remote system calls
//! restore every register, `orig_rax` included. A *restored* thread is a fresh kernel
//! thread: it must be given registers that already include the fix-up, with `orig_rax = -1`
//! so that the kernel does not apply it a second time. The in-kernel `restart_block` (for
//! example the remaining time of an interrupted `nanosleep`) cannot be recreated, so, as
//! CRIU does, such a call returns `-EINTR` to the restored program instead.

use serde::{Deserialize, Serialize};

use crate::regs::GeneralRegisters;

/// Kernel-internal error codes (`include/linux/errno.h`), never seen by user space.
pub const ERESTARTSYS: i64 = 512;
/// See [`ERESTARTSYS`].
pub const ERESTARTNOINTR: i64 = 513;
/// See [`ERESTARTSYS`].
pub const ERESTARTNOHAND: i64 = 514;
/// See [`ERESTARTSYS`].
pub const ERESTART_RESTARTBLOCK: i64 = 516;

/// Length of the x86_64 `syscall` instruction (`0f 05`); `int 0x80` and `sysenter` are
/// also two bytes, which is why the kernel's restart subtracts 2 from `rip`.
pub const SYSCALL_INSN_LEN: u64 = 2;

/// Which restart the kernel had prepared for an interrupted system call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartKind {
    /// `-ERESTARTSYS`: restarted unless a handler without `SA_RESTART` runs.
    RestartSys,
    /// `-ERESTARTNOINTR`: always restarted.
    RestartNoIntr,
    /// `-ERESTARTNOHAND`: restarted unless any handler runs.
    RestartNoHand,
    /// `-ERESTART_RESTARTBLOCK`: continued through `restart_syscall(2)` with state kept in
    /// the kernel thread; a restored thread gets `-EINTR` instead.
    RestartBlock,
}

/// A stopped thread's system-call state, classified from its registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyscallState {
    /// Not in a system call (`orig_rax` is -1): stopped in user code.
    NotInSyscall,
    /// Stopped on the way out of a system call that has its final result in `rax`; the
    /// thread simply continues after it.
    Completed {
        /// The system call number.
        nr: u64,
        /// Its return value (negative errno on failure).
        result: i64,
    },
    /// Stopped in a system call that was interrupted and must be restarted.
    Interrupted {
        /// The system call number.
        nr: u64,
        /// The restart the kernel prepared.
        restart: RestartKind,
    },
}

impl SyscallState {
    /// Classifies a stopped thread from its general registers.
    pub fn classify(regs: &GeneralRegisters) -> Self {
        let orig = regs.orig_rax as i64;
        if orig < 0 {
            return Self::NotInSyscall;
        }
        let nr = regs.orig_rax;
        let restart = match regs.rax as i64 {
            r if r == -ERESTARTSYS => RestartKind::RestartSys,
            r if r == -ERESTARTNOINTR => RestartKind::RestartNoIntr,
            r if r == -ERESTARTNOHAND => RestartKind::RestartNoHand,
            r if r == -ERESTART_RESTARTBLOCK => RestartKind::RestartBlock,
            result => return Self::Completed { nr, result },
        };
        Self::Interrupted { nr, restart }
    }

    /// The registers a restored thread must be given so that it continues as the captured
    /// one would have (CRIU's rules):
    ///
    /// - interrupted with `-ERESTARTSYS`, `-ERESTARTNOINTR` or `-ERESTARTNOHAND`: the call
    ///   is executed again (`rax = orig_rax`, `rip -= 2`);
    /// - interrupted with `-ERESTART_RESTARTBLOCK`: the call returns `-EINTR`;
    /// - otherwise the registers are unchanged.
    ///
    /// In every case `orig_rax` is set to -1, so that the kernel does not apply its own
    /// restart logic on top when the thread resumes from the ptrace stop it was set in.
    pub fn resume_registers(regs: &GeneralRegisters) -> GeneralRegisters {
        let mut out = *regs;
        match Self::classify(regs) {
            Self::Interrupted {
                nr,
                restart:
                    RestartKind::RestartSys | RestartKind::RestartNoIntr | RestartKind::RestartNoHand,
            } => {
                out.rax = nr;
                out.rip = regs.rip.wrapping_sub(SYSCALL_INSN_LEN);
            }
            Self::Interrupted {
                restart: RestartKind::RestartBlock,
                ..
            } => {
                out.rax = (-i64::from(libc::EINTR)) as u64;
            }
            Self::NotInSyscall | Self::Completed { .. } => {}
        }
        out.orig_rax = u64::MAX;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs(orig_rax: i64, rax: i64) -> GeneralRegisters {
        GeneralRegisters {
            orig_rax: orig_rax as u64,
            rax: rax as u64,
            rip: 0x40_1002,
            ..GeneralRegisters::default()
        }
    }

    #[test]
    fn user_code_is_not_in_a_syscall() {
        let r = regs(-1, 42);
        assert_eq!(SyscallState::classify(&r), SyscallState::NotInSyscall);
        let resumed = SyscallState::resume_registers(&r);
        assert_eq!(resumed, r);
    }

    #[test]
    fn completed_syscall_keeps_its_result() {
        let r = regs(0, 5);
        assert_eq!(
            SyscallState::classify(&r),
            SyscallState::Completed { nr: 0, result: 5 }
        );
        let r = regs(0, -i64::from(libc::EAGAIN));
        assert_eq!(
            SyscallState::classify(&r),
            SyscallState::Completed {
                nr: 0,
                result: -i64::from(libc::EAGAIN)
            }
        );
        let resumed = SyscallState::resume_registers(&r);
        assert_eq!(resumed.rip, r.rip);
        assert_eq!(resumed.rax, r.rax);
        assert_eq!(resumed.orig_rax, u64::MAX);
    }

    #[test]
    fn restartable_codes_reexecute_the_call() {
        for (code, kind) in [
            (ERESTARTSYS, RestartKind::RestartSys),
            (ERESTARTNOINTR, RestartKind::RestartNoIntr),
            (ERESTARTNOHAND, RestartKind::RestartNoHand),
        ] {
            let r = regs(libc::SYS_read, -code);
            assert_eq!(
                SyscallState::classify(&r),
                SyscallState::Interrupted {
                    nr: libc::SYS_read as u64,
                    restart: kind
                }
            );
            let resumed = SyscallState::resume_registers(&r);
            assert_eq!(resumed.rax, libc::SYS_read as u64);
            assert_eq!(resumed.rip, 0x40_1000);
            assert_eq!(resumed.orig_rax, u64::MAX);
        }
    }

    #[test]
    fn restart_block_returns_eintr() {
        let r = regs(libc::SYS_nanosleep, -ERESTART_RESTARTBLOCK);
        assert_eq!(
            SyscallState::classify(&r),
            SyscallState::Interrupted {
                nr: libc::SYS_nanosleep as u64,
                restart: RestartKind::RestartBlock
            }
        );
        let resumed = SyscallState::resume_registers(&r);
        assert_eq!(resumed.rax as i64, -i64::from(libc::EINTR));
        assert_eq!(resumed.rip, r.rip);
        assert_eq!(resumed.orig_rax, u64::MAX);
    }
}
