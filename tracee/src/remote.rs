//! Remote system calls: making a stopped thread execute a real system call of our choice,
//! then putting it back exactly as it was.
//!
//! # Where the `syscall` instruction comes from
//!
//! We never write code into the tracee. Every x86_64 process has a `[vdso]` mapping whose
//! fallback paths contain `syscall` instructions (`0f 05`); the CPU decodes from `rip`, so
//! any executable `0f 05` byte pair works. The site is found once by scanning the vdso
//! (then, if there is none, the other executable mappings) and can be moved by the caller
//! ([`SeizedProcess::set_syscall_site`]), for example after the restore helper has
//! `mremap`ped its vdso. Every session re-checks that the two bytes are still there.
//!
//! # One remote call
//!
//! ```text
//! thread in PTRACE_EVENT_STOP (inside get_signal), registers R, mask M
//!   GETSIGMASK -> M, SETSIGMASK(all)     nothing can be dequeued while we run it
//!   SETREGS: R with orig_rax = -1, rax = nr, rdi rsi rdx r10 r8 r9 = args, rip = site
//!   PTRACE_SYSCALL -> syscall-entry stop  (orig_rax == nr, rip == site + 2)
//!   PTRACE_SYSCALL -> syscall-exit stop   rax = result
//!   ... more calls: set registers again, PTRACE_SYSCALL twice ...
//!   SETREGS(R), PTRACE_INTERRUPT, PTRACE_CONT -> PTRACE_EVENT_STOP again
//!   SETSIGMASK(M)
//! ```
//!
//! Why each step:
//! - `orig_rax = -1`: resuming from the event stop, the kernel finishes `get_signal` and
//!   then applies its system-call restart logic to the registers (`orig_rax >= 0` and
//!   `rax = -ERESTART*` → `rip -= 2`). With `orig_rax = -1` it leaves ours alone.
//! - Blocking every signal: otherwise a pending signal would be dequeued on the way to
//!   our instruction and turn up as a signal-delivery-stop, which we would have to hold
//!   and re-deliver. Blocked, it simply stays pending and is delivered after detach.
//!   Only SIGSTOP cannot be blocked; it is passed on (a job-control stop is reported as a
//!   group stop and we resume through it). The mask is read with `PTRACE_GETSIGMASK`,
//!   which reports the thread's real mask even inside `rt_sigsuspend`/`ppoll`.
//! - `PTRACE_SYSCALL` rather than single-stepping: a single-step trap is a forced SIGTRAP,
//!   which would reset the program's SIGTRAP handler to SIG_DFL if it had SIGTRAP blocked.
//!   System-call stops involve no signal at all.
//! - Ending in an event stop again: the kernel only runs its restart logic on the way out
//!   of `get_signal`, not after a syscall-exit stop. Going back through a
//!   `PTRACE_INTERRUPT` stop with the original registers (and `orig_rax`) means that a
//!   thread that was blocked in `read` or `nanosleep` restarts that call on detach, just as
//!   if we had never touched it.
//!
//! If anything goes wrong (a timeout, a fault at the site, an unexpected stop), the
//! thread is brought back to an event stop with its saved registers before the error is
//! returned. A blocking remote call that times out is interrupted (it then returns
//! `-ERESTART*`/`-EINTR` inside the tracee, which we discard).
//!
//! # Limits
//!
//! - The injected call runs with every signal blocked, so calls that read or wait for
//!   signals see that mask.
//! - Each call returns to user mode once (at the site, to execute it), where the kernel
//!   may update the thread's registered rseq area (`cpu_id`). If that memory is registered
//!   with userfaultfd, the fault server must already be running, or the call blocks until
//!   the timeout.
//! - A thread stopped inside an rseq critical section may have its `rseq_cs` cleared by
//!   the kernel without the section being aborted; capture should apply CRIU's fix-up
//!   (move `rip` to the abort handler) before relying on such a thread's registers.
//! - A call that blocks in uninterruptible sleep cannot be interrupted at the timeout;
//!   the thread then keeps the injected registers and the call returns
//!   [`RemoteError::NotRestored`].
//!
//! The call's own return to `site + 2` is never executed: the thread is stopped at the
//! system-call exit and given new registers, so a call may unmap or move the very mapping
//! that holds the site (restore `mremap`s the vdso) — afterwards, point the session at
//! the new site with [`RemoteSession::set_syscall_site`].

use std::io;

use crate::error::{RemoteError, ThreadError};
use crate::memory::PAGE_SIZE;
use crate::process::{
    PTRACE_EVENT_CLONE, PTRACE_EVENT_STOP, SeizedProcess, Thread, ThreadState, ThreadStop,
};
use crate::regs::{GeneralRegisters, KernelSigaction};
use crate::state::{read_registers, write_registers};
use crate::sys::{self, Resume};
use crate::syscall_state::SYSCALL_INSN_LEN;
use crate::wait::{Stop, WaitFailure, Waited, wait_for};

/// The `syscall` instruction.
const SYSCALL_INSN: [u8; 2] = [0x0f, 0x05];

/// Most bytes of executable mappings read while looking for a syscall site.
pub const MAX_SITE_SCAN_LEN: u64 = 16 << 20;

/// Largest scratch mapping [`RemoteScratch::map`] creates.
pub const MAX_SCRATCH_LEN: usize = 64 << 20;

/// Bound on the stops handled while bringing a thread back to its event stop.
const MAX_SETTLE_STEPS: u32 = 64;

/// Chunk size for scanning executable mappings.
const SCAN_CHUNK: u64 = 64 * 1024;

/// Where the thread of a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    /// `PTRACE_EVENT_STOP` (interrupt or group stop).
    EventStop(ThreadStop),
    /// System-call entry stop.
    SyscallEntry,
    /// System-call exit stop.
    SyscallExit,
    /// Signal-delivery-stop for this signal.
    SignalStop(i32),
    /// `PTRACE_EVENT_CLONE` stop inside a clone that created thread `tid`
    /// ([`SeizeOptions::trace_clone`](crate::SeizeOptions::trace_clone)).
    Cloned(i32),
    /// Resumed by us.
    Running,
    /// Exited.
    Gone,
}

fn is_stop_signal(signal: i32) -> bool {
    matches!(
        signal,
        libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
    )
}

fn maps_error(pid: i32) -> impl FnOnce(procfs::ProcError) -> RemoteError {
    move |e| RemoteError::Maps {
        pid,
        source: io::Error::other(e),
    }
}

impl SeizedProcess {
    /// The address of the `syscall` instruction remote calls execute; located on first
    /// use (see the module docs).
    pub fn syscall_site(&mut self) -> Result<u64, RemoteError> {
        if let Some(site) = self.syscall_site {
            return Ok(site);
        }
        let site = self.locate_syscall_site()?;
        log::debug!("process {}: syscall site at {site:#x}", self.pid);
        self.syscall_site = Some(site);
        Ok(site)
    }

    /// Uses `addr` as the syscall site from now on, after checking that it holds `0f 05`
    /// inside an executable mapping. Restore calls this after moving the helper's vdso:
    /// the new site is `new_vdso_start + (old_site - old_vdso_start)`.
    pub fn set_syscall_site(&mut self, addr: u64) -> Result<(), RemoteError> {
        let maps = procfs::process::Process::new(self.mm_tid())
            .and_then(|p| p.maps())
            .map_err(maps_error(self.pid))?;
        let end = addr
            .checked_add(SYSCALL_INSN_LEN)
            .ok_or(RemoteError::BadSyscallSite {
                pid: self.pid,
                addr,
                reason: "address overflows",
            })?;
        let executable = maps.iter().any(|m| {
            m.address.0 <= addr
                && end <= m.address.1
                && m.perms.contains(procfs::process::MMPermissions::EXECUTE)
        });
        if !executable {
            return Err(RemoteError::BadSyscallSite {
                pid: self.pid,
                addr,
                reason: "not inside one executable mapping",
            });
        }
        self.check_site(addr)?;
        self.syscall_site = Some(addr);
        Ok(())
    }

    /// Checks that `addr` still holds a `syscall` instruction.
    fn check_site(&self, addr: u64) -> Result<(), RemoteError> {
        let mut insn = [0u8; 2];
        self.memory.read(addr, &mut insn)?;
        if insn != SYSCALL_INSN {
            return Err(RemoteError::BadSyscallSite {
                pid: self.pid,
                addr,
                reason: "the bytes there are not 0f 05",
            });
        }
        Ok(())
    }

    fn locate_syscall_site(&self) -> Result<u64, RemoteError> {
        let maps = procfs::process::Process::new(self.mm_tid())
            .and_then(|p| p.maps())
            .map_err(maps_error(self.pid))?;
        let mut candidates: Vec<(u64, u64)> = Vec::new();
        // The vdso first: small, always there, the same in every process.
        for map in maps.iter() {
            if map.pathname == procfs::process::MMapPath::Vdso {
                candidates.insert(0, map.address);
            } else if map.perms.contains(procfs::process::MMPermissions::EXECUTE)
                && map.perms.contains(procfs::process::MMPermissions::READ)
                && map.pathname != procfs::process::MMapPath::Vsyscall
            {
                candidates.push(map.address);
            }
        }
        let mut budget = MAX_SITE_SCAN_LEN;
        for (start, end) in candidates {
            let mut at = start;
            // Last byte of the previous chunk, for an instruction split across chunks.
            let mut carry: Option<u8> = None;
            while at < end && budget > 0 {
                let len = (end - at).min(SCAN_CHUNK).min(budget);
                budget -= len;
                let mut chunk = vec![0u8; usize::try_from(len).unwrap_or(0)];
                if self.memory.read(at, &mut chunk).is_err() {
                    // Unreadable (execute-only, or gone): try the next mapping.
                    break;
                }
                if carry == Some(SYSCALL_INSN[0]) && chunk.first() == Some(&SYSCALL_INSN[1]) {
                    return Ok(at - 1);
                }
                if let Some(pos) = chunk.windows(2).position(|w| w == SYSCALL_INSN) {
                    return Ok(at + pos as u64);
                }
                carry = chunk.last().copied();
                at += len;
            }
        }
        Err(RemoteError::NoSyscallSite { pid: self.pid })
    }

    /// Starts a remote-call session on thread `tid` (see the module docs): saves its
    /// registers and signal mask and blocks every signal until the session ends.
    pub fn remote(&mut self, tid: i32) -> Result<RemoteSession<'_>, RemoteError> {
        let index = self.check_stopped(tid)?;
        let ThreadState::Stopped(stop) = self.threads[index].state else {
            return Err(ThreadError::UnknownThread { pid: self.pid, tid }.into());
        };
        let site = self.syscall_site()?;
        self.check_site(site)?;
        let saved_regs = read_registers(self.pid, tid)?;
        if !saved_regs.is_64bit() {
            return Err(RemoteError::Not64Bit {
                pid: self.pid,
                tid,
                cs: saved_regs.cs,
            });
        }
        let saved_mask = self.signal_mask(tid)?.0;
        sys::set_sigmask(tid, u64::MAX).map_err(|source| ThreadError::Ptrace {
            pid: self.pid,
            tid,
            op: "PTRACE_SETSIGMASK",
            source,
        })?;
        Ok(RemoteSession {
            pid: self.pid,
            tid,
            index,
            site,
            saved_regs,
            saved_mask,
            position: Position::EventStop(stop),
            finished: false,
            born: Vec::new(),
            process: self,
        })
    }

    /// Runs one system call in thread `tid` and returns its raw result (a negative errno
    /// on failure). A session for one call; use [`remote`](Self::remote) for several.
    pub fn remote_syscall(
        &mut self,
        tid: i32,
        nr: u64,
        args: [u64; 6],
    ) -> Result<i64, RemoteError> {
        let mut session = self.remote(tid)?;
        let result = session.syscall(nr, args);
        let finished = session.finish();
        let value = result?;
        finished?;
        Ok(value)
    }
}

/// A thread of a [`SeizedProcess`] lent out for remote system calls. Ending the session
/// ([`finish`](Self::finish), or drop) gives the thread back its registers and signal
/// mask and returns it to its ptrace stop. (Leaking the session with `mem::forget` would
/// leave the thread with the injected registers.)
#[derive(Debug)]
pub struct RemoteSession<'p> {
    process: &'p mut SeizedProcess,
    pid: i32,
    tid: i32,
    index: usize,
    site: u64,
    saved_regs: GeneralRegisters,
    saved_mask: u64,
    position: Position,
    finished: bool,
    /// Threads created (and auto-attached) by the current call, not yet seen stopped.
    born: Vec<i32>,
}

impl RemoteSession<'_> {
    /// The thread this session drives.
    pub fn tid(&self) -> i32 {
        self.tid
    }

    /// The registers the thread will get back when the session ends.
    pub fn saved_registers(&self) -> &GeneralRegisters {
        &self.saved_regs
    }

    /// Memory access to the process.
    pub fn memory(&self) -> &crate::ProcessMemory {
        &self.process.memory
    }

    /// The address of the `syscall` instruction this session's calls execute.
    pub fn syscall_site(&self) -> u64 {
        self.site
    }

    /// Moves the syscall site (see [`SeizedProcess::set_syscall_site`]).
    pub fn set_syscall_site(&mut self, addr: u64) -> Result<(), RemoteError> {
        self.process.set_syscall_site(addr)?;
        self.site = addr;
        Ok(())
    }

    /// Executes system call `nr` with `args` in the thread and returns its raw result
    /// (negative errno on failure).
    pub fn syscall(&mut self, nr: u64, args: [u64; 6]) -> Result<i64, RemoteError> {
        match self.position {
            Position::EventStop(_) | Position::SyscallExit => {}
            Position::Gone => {
                return Err(RemoteError::ThreadExited {
                    pid: self.pid,
                    tid: self.tid,
                });
            }
            other => return Err(self.unexpected(nr, format!("thread is in {other:?}"))),
        }
        let mut regs = self.saved_regs;
        regs.orig_rax = u64::MAX;
        regs.rax = nr;
        regs.rdi = args[0];
        regs.rsi = args[1];
        regs.rdx = args[2];
        regs.r10 = args[3];
        regs.r8 = args[4];
        regs.r9 = args[5];
        regs.rip = self.site;
        write_registers(self.pid, self.tid, &regs)?;

        self.resume(Resume::Syscall, 0)?;
        if let Err(e) = self.run_to_syscall_stop(nr) {
            return Err(self.recover(e));
        }
        if self.position != Position::SyscallEntry {
            let detail = format!("expected the system-call entry, got {:?}", self.position);
            return Err(self.recover_unexpected(nr, detail));
        }
        let entry = read_registers(self.pid, self.tid)?;
        if entry.orig_rax != nr || entry.rip != self.site + SYSCALL_INSN_LEN {
            let detail = format!(
                "entry stop at rip {:#x} for call {} (expected {:#x}, {nr})",
                entry.rip,
                entry.orig_rax as i64,
                self.site + SYSCALL_INSN_LEN
            );
            return Err(self.recover_unexpected(nr, detail));
        }

        self.resume(Resume::Syscall, 0)?;
        if let Err(e) = self.run_to_syscall_stop(nr) {
            return Err(self.recover(e));
        }
        if self.position != Position::SyscallExit {
            let detail = format!("expected the system-call exit, got {:?}", self.position);
            return Err(self.recover_unexpected(nr, detail));
        }
        let exit = read_registers(self.pid, self.tid)?;
        self.adopt_born()?;
        Ok(exit.rax as i64)
    }

    /// Waits until every thread the call created is in its first stop (before any user
    /// code of its own ran). A clone child that is not a thread of the process (no
    /// `CLONE_THREAD`) is killed and the call fails.
    fn adopt_born(&mut self) -> Result<(), RemoteError> {
        while let Some(tid) = self.born.pop() {
            let index = self
                .process
                .threads
                .iter()
                .position(|t| t.tid == tid)
                .ok_or(ThreadError::UnknownThread { pid: self.pid, tid })?;
            self.process
                .wait_first_stop(index)
                .map_err(|source| RemoteError::NewThread {
                    pid: self.pid,
                    tid,
                    source: Box::new(source),
                })?;
            if crate::procfs_util::tgid_of(tid) != Some(self.pid) {
                // A new process, not a thread: not ours to keep.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(tid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                self.process.threads[index].state = ThreadState::Gone;
                let _ = wait_for(tid, self.process.options.timeout);
                return Err(RemoteError::NotAThread { pid: self.pid, tid });
            }
        }
        Ok(())
    }

    /// Like [`syscall`](Self::syscall), but a negative errno result becomes
    /// [`RemoteError::Syscall`].
    pub fn syscall_ok(&mut self, nr: u64, args: [u64; 6]) -> Result<u64, RemoteError> {
        let ret = self.syscall(nr, args)?;
        if (-4095..0).contains(&ret) {
            return Err(RemoteError::Syscall {
                pid: self.pid,
                tid: self.tid,
                nr,
                source: io::Error::from_raw_os_error((-ret) as i32),
            });
        }
        Ok(ret as u64)
    }

    /// Reads the disposition of every signal 1..=64 with `rt_sigaction` inside the
    /// thread; element `i` is signal `i + 1`.
    pub fn sigactions(&mut self) -> Result<Vec<KernelSigaction>, RemoteError> {
        const SIGNALS: usize = 64;
        let mut scratch = RemoteScratch::map(self, SIGNALS * KernelSigaction::LEN)?;
        let base = scratch.addr();
        for signal in 1..=SIGNALS as u64 {
            let old = base + (signal - 1) * KernelSigaction::LEN as u64;
            scratch
                .session()
                .syscall_ok(libc::SYS_rt_sigaction as u64, [signal, 0, old, 8, 0, 0])?;
        }
        let mut bytes = vec![0u8; SIGNALS * KernelSigaction::LEN];
        scratch.read(0, &mut bytes)?;
        scratch.unmap()?;
        Ok(bytes
            .chunks_exact(KernelSigaction::LEN)
            .map(|chunk| {
                let mut raw = [0u8; KernelSigaction::LEN];
                raw.copy_from_slice(chunk);
                KernelSigaction::from_bytes(&raw)
            })
            .collect())
    }

    /// Sets signal dispositions with `rt_sigaction` inside the thread.
    pub fn set_sigactions(
        &mut self,
        actions: &[(i32, KernelSigaction)],
    ) -> Result<(), RemoteError> {
        if actions.is_empty() {
            return Ok(());
        }
        let mut scratch = RemoteScratch::map(self, KernelSigaction::LEN)?;
        let act = scratch.addr();
        for (signal, action) in actions {
            scratch.write(0, &action.to_bytes())?;
            scratch.session().syscall_ok(
                libc::SYS_rt_sigaction as u64,
                [*signal as u64, act, 0, 8, 0, 0],
            )?;
        }
        scratch.unmap()
    }

    /// Reads every resource limit (`0..RLIMIT_COUNT`) with `prlimit64(0, ...)` inside
    /// the thread. Unlike [`SeizedProcess::resource_limit`], which asks from outside,
    /// this needs no privilege over the process (a process may always read its own
    /// limits; from outside, a process of another user needs `CAP_SYS_RESOURCE`).
    pub fn resource_limits(&mut self) -> Result<Vec<crate::ResourceLimit>, RemoteError> {
        const RLIMIT_LEN: usize = 16;
        let count = crate::RLIMIT_COUNT as usize;
        let mut scratch = RemoteScratch::map(self, count * RLIMIT_LEN)?;
        let base = scratch.addr();
        for resource in 0..count as u64 {
            let old = base + resource * RLIMIT_LEN as u64;
            scratch
                .session()
                .syscall_ok(libc::SYS_prlimit64 as u64, [0, resource, 0, old, 0, 0])?;
        }
        let mut bytes = vec![0u8; count * RLIMIT_LEN];
        scratch.read(0, &mut bytes)?;
        scratch.unmap()?;
        let word = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
        Ok(bytes
            .chunks_exact(RLIMIT_LEN)
            .map(|l| crate::ResourceLimit {
                soft: word(&l[0..8]),
                hard: word(&l[8..16]),
            })
            .collect())
    }

    /// Ends the session: the thread gets its registers and signal mask back and returns
    /// to its ptrace stop.
    pub fn finish(mut self) -> Result<(), RemoteError> {
        self.finished = true;
        self.settle(true)
    }

    fn unexpected(&self, nr: u64, detail: String) -> RemoteError {
        RemoteError::UnexpectedStop {
            pid: self.pid,
            tid: self.tid,
            nr,
            detail,
        }
    }

    /// Puts the thread back (keeping signals blocked) after a protocol error.
    fn recover_unexpected(&mut self, nr: u64, detail: String) -> RemoteError {
        let error = self.unexpected(nr, detail);
        self.recover(error)
    }

    /// Puts the thread back (keeping signals blocked, so the session stays usable) and
    /// returns `error`, or [`RemoteError::NotRestored`] if the recovery failed too.
    fn recover(&mut self, error: RemoteError) -> RemoteError {
        if self.position == Position::Gone {
            return error;
        }
        match self.settle(false) {
            Ok(()) => error,
            Err(settle_error) => RemoteError::NotRestored {
                pid: self.pid,
                tid: self.tid,
                cause: error.to_string(),
                source: Box::new(settle_error),
            },
        }
    }

    fn set_position(&mut self, position: Position) {
        self.position = position;
        self.process.threads[self.index].state = match position {
            Position::EventStop(stop) => ThreadState::Stopped(stop),
            Position::SyscallEntry
            | Position::SyscallExit
            | Position::SignalStop(_)
            | Position::Cloned(_) => ThreadState::OtherStop,
            Position::Running => ThreadState::Running,
            Position::Gone => ThreadState::Gone,
        };
    }

    fn resume(&mut self, request: Resume, signal: i32) -> Result<(), RemoteError> {
        match sys::resume(request, self.tid, signal) {
            Ok(()) => {
                self.set_position(Position::Running);
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
                // Not stopped any more: it was killed.
                let _ = self.wait_position();
                self.set_position(Position::Gone);
                Err(RemoteError::ThreadExited {
                    pid: self.pid,
                    tid: self.tid,
                })
            }
            Err(source) => Err(ThreadError::Ptrace {
                pid: self.pid,
                tid: self.tid,
                op: match request {
                    Resume::Cont => "PTRACE_CONT",
                    Resume::Syscall => "PTRACE_SYSCALL",
                    Resume::Detach => "PTRACE_DETACH",
                },
                source,
            }
            .into()),
        }
    }

    /// Waits for the next stop and records it.
    fn wait_position(&mut self) -> Result<Position, RemoteError> {
        let position = match wait_for(self.tid, self.process.options.timeout) {
            Ok(Waited::Stopped(Stop::Syscall)) => {
                let info = nix::sys::ptrace::syscall_info(nix::unistd::Pid::from_raw(self.tid))
                    .map_err(|e| ThreadError::Ptrace {
                        pid: self.pid,
                        tid: self.tid,
                        op: "PTRACE_GET_SYSCALL_INFO",
                        source: e.into(),
                    })?;
                if info.op == libc::PTRACE_SYSCALL_INFO_ENTRY {
                    Position::SyscallEntry
                } else {
                    Position::SyscallExit
                }
            }
            Ok(Waited::Stopped(Stop::Event {
                event: PTRACE_EVENT_STOP,
                signal,
            })) => Position::EventStop(ThreadStop::from_event_signal(signal)),
            Ok(Waited::Stopped(Stop::Event {
                event: PTRACE_EVENT_CLONE,
                ..
            })) => {
                let msg = nix::sys::ptrace::getevent(nix::unistd::Pid::from_raw(self.tid))
                    .map_err(|e| ThreadError::Ptrace {
                        pid: self.pid,
                        tid: self.tid,
                        op: "PTRACE_GETEVENTMSG",
                        source: e.into(),
                    })?;
                let child = i32::try_from(msg).unwrap_or(0);
                if child > 0 {
                    // Attached by the kernel: ours from now on (drop and kill handle it
                    // like any seized thread), running until its first stop.
                    self.process.threads.push(Thread {
                        tid: child,
                        state: ThreadState::Running,
                    });
                    self.born.push(child);
                }
                Position::Cloned(child)
            }
            // Events we did not ask for; treat like a stop with nothing to deliver.
            Ok(Waited::Stopped(Stop::Event { .. })) => Position::SignalStop(0),
            Ok(Waited::Stopped(Stop::Signal(signal))) => Position::SignalStop(signal),
            Ok(Waited::Gone) => Position::Gone,
            Err(WaitFailure::Timeout) => {
                return Err(RemoteError::Timeout {
                    pid: self.pid,
                    tid: self.tid,
                    nr: 0,
                    timeout: self.process.options.timeout,
                });
            }
            Err(WaitFailure::Os(source)) => {
                return Err(RemoteError::Wait {
                    pid: self.pid,
                    tid: self.tid,
                    source,
                });
            }
        };
        self.set_position(position);
        if position == Position::Gone {
            return Err(RemoteError::ThreadExited {
                pid: self.pid,
                tid: self.tid,
            });
        }
        Ok(position)
    }

    /// After `PTRACE_SYSCALL`: waits for the next system-call stop, resuming through job
    /// control stops. A signal-delivery-stop of another signal can only be a fault of the
    /// injected instruction (every other signal is blocked).
    fn run_to_syscall_stop(&mut self, nr: u64) -> Result<(), RemoteError> {
        for _ in 0..MAX_SETTLE_STEPS {
            let position = self.wait_position().map_err(|e| match e {
                RemoteError::Timeout {
                    pid, tid, timeout, ..
                } => RemoteError::Timeout {
                    pid,
                    tid,
                    nr,
                    timeout,
                },
                other => other,
            })?;
            match position {
                Position::SyscallEntry | Position::SyscallExit => return Ok(()),
                Position::EventStop(_) | Position::Cloned(_) => {
                    self.resume(Resume::Syscall, 0)?;
                }
                Position::SignalStop(signal) if is_stop_signal(signal) => {
                    self.resume(Resume::Syscall, signal)?;
                }
                Position::SignalStop(signal) => {
                    return Err(RemoteError::Faulted {
                        pid: self.pid,
                        tid: self.tid,
                        nr,
                        signal,
                    });
                }
                Position::Running | Position::Gone => {
                    return Err(self.unexpected(nr, format!("{position:?} after a wait")));
                }
            }
        }
        Err(self.unexpected(nr, "too many job-control stops".to_owned()))
    }

    /// Brings the thread back to an event stop with its saved registers (and, if
    /// `restore_mask`, its saved signal mask).
    fn settle(&mut self, restore_mask: bool) -> Result<(), RemoteError> {
        for _ in 0..MAX_SETTLE_STEPS {
            match self.position {
                Position::Gone => {
                    return Err(RemoteError::ThreadExited {
                        pid: self.pid,
                        tid: self.tid,
                    });
                }
                Position::Running => {
                    self.interrupt()?;
                    self.wait_position()?;
                }
                Position::SyscallEntry => {
                    // Do not let the kernel run the call: orig_rax = -1 skips it.
                    let mut regs = read_registers(self.pid, self.tid)?;
                    regs.orig_rax = u64::MAX;
                    write_registers(self.pid, self.tid, &regs)?;
                    self.resume(Resume::Syscall, 0)?;
                    self.wait_position()?;
                }
                Position::SyscallExit | Position::SignalStop(_) | Position::Cloned(_) => {
                    // Restore, then pass through get_signal into an interrupt stop so the
                    // restart logic sees the original registers on detach. A stop signal
                    // is passed on; a fault of ours is discarded.
                    let signal = match self.position {
                        Position::SignalStop(s) if is_stop_signal(s) => s,
                        _ => 0,
                    };
                    write_registers(self.pid, self.tid, &self.saved_regs)?;
                    self.interrupt()?;
                    self.resume(Resume::Cont, signal)?;
                    self.wait_position()?;
                }
                Position::EventStop(_) => {
                    write_registers(self.pid, self.tid, &self.saved_regs)?;
                    if restore_mask {
                        sys::set_sigmask(self.tid, self.saved_mask).map_err(|source| {
                            ThreadError::Ptrace {
                                pid: self.pid,
                                tid: self.tid,
                                op: "PTRACE_SETSIGMASK",
                                source,
                            }
                        })?;
                    }
                    return Ok(());
                }
            }
        }
        Err(self.unexpected(0, "thread did not settle back into its stop".to_owned()))
    }

    fn interrupt(&mut self) -> Result<(), RemoteError> {
        match nix::sys::ptrace::interrupt(nix::unistd::Pid::from_raw(self.tid)) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(ThreadError::Ptrace {
                pid: self.pid,
                tid: self.tid,
                op: "PTRACE_INTERRUPT",
                source: e.into(),
            }
            .into()),
        }
    }
}

impl Drop for RemoteSession<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if let Err(e) = self.settle(true) {
            log::error!(
                "process {} thread {}: cannot end remote session cleanly: {e}",
                self.pid,
                self.tid
            );
        }
    }
}

/// An anonymous private read-write mapping created inside the tracee by a remote `mmap`,
/// for passing structures to remote calls; unmapped again (remote `munmap`) on drop.
#[derive(Debug)]
pub struct RemoteScratch<'s, 'p> {
    session: &'s mut RemoteSession<'p>,
    addr: u64,
    size: usize,
    mapped: bool,
}

impl<'s, 'p> RemoteScratch<'s, 'p> {
    /// Maps at least `len` bytes (rounded up to whole pages) in the tracee.
    pub fn map(session: &'s mut RemoteSession<'p>, len: usize) -> Result<Self, RemoteError> {
        if len == 0 || len > MAX_SCRATCH_LEN {
            return Err(RemoteError::ScratchSize {
                len,
                limit: MAX_SCRATCH_LEN,
            });
        }
        let page = PAGE_SIZE as usize;
        let size = len.div_ceil(page) * page;
        let addr = session.syscall_ok(
            libc::SYS_mmap as u64,
            [
                0,
                size as u64,
                (libc::PROT_READ | libc::PROT_WRITE) as u64,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                u64::MAX, // fd -1
                0,
            ],
        )?;
        Ok(Self {
            session,
            addr,
            size,
            mapped: true,
        })
    }

    /// The mapping's address in the tracee.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// The mapping's size (whole pages).
    pub fn size(&self) -> usize {
        self.size
    }

    /// The session, for remote calls that use the scratch memory.
    pub fn session(&mut self) -> &mut RemoteSession<'p> {
        self.session
    }

    fn check(&self, offset: usize, len: usize) -> Result<u64, RemoteError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(self.addr + offset as u64),
            _ => Err(RemoteError::ScratchBounds {
                addr: self.addr,
                size: self.size,
                offset,
                len,
            }),
        }
    }

    /// Writes `bytes` at `offset` in the mapping.
    pub fn write(&self, offset: usize, bytes: &[u8]) -> Result<(), RemoteError> {
        let at = self.check(offset, bytes.len())?;
        self.session.process.memory.write(at, bytes)?;
        Ok(())
    }

    /// Reads `buf.len()` bytes at `offset` in the mapping.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), RemoteError> {
        let at = self.check(offset, buf.len())?;
        self.session
            .process
            .memory
            .read(at, buf)
            .map_err(RemoteError::from)
    }

    /// Unmaps the scratch memory, reporting failure (drop does the same silently).
    pub fn unmap(mut self) -> Result<(), RemoteError> {
        self.mapped = false;
        self.session
            .syscall_ok(
                libc::SYS_munmap as u64,
                [self.addr, self.size as u64, 0, 0, 0, 0],
            )
            .map(drop)
    }
}

impl Drop for RemoteScratch<'_, '_> {
    fn drop(&mut self) {
        if !self.mapped {
            return;
        }
        let (addr, size) = (self.addr, self.size as u64);
        if let Err(e) = self
            .session
            .syscall_ok(libc::SYS_munmap as u64, [addr, size, 0, 0, 0, 0])
        {
            log::warn!("cannot unmap remote scratch at {addr:#x}: {e}");
        }
    }
}
