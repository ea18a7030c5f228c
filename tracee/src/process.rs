//! Freezing a process: seize and stop every thread, and always let go again.
//!
//! # Seizing, race-free
//!
//! `PTRACE_SEIZE` attaches to one thread without stopping it; `PTRACE_INTERRUPT` then
//! asks it to stop, and `waitpid(tid, __WALL)` reports the stop as a `PTRACE_EVENT_STOP`.
//! A process keeps creating and ending threads while we do this, so:
//!
//! ```text
//! loop {
//!     list /proc/PID/task
//!     nothing new? -> every thread is stopped, and stopped threads create no threads: done
//!     for each new tid: PTRACE_SEIZE, PTRACE_INTERRUPT
//!         ESRCH          the thread ended between the listing and the seize: skip it
//!         EPERM          traced by someone else (TracerPid names them), a zombie (skip),
//!                        or really not permitted
//!     for each seized tid: wait (bounded) for its stop
//!         signal-delivery-stop   it dequeued a signal before our interrupt: hand the
//!                                signal back (PTRACE_CONT, sig) and keep waiting
//!         exited                 reaped; if it was the leader the process is gone
//! }
//! ```
//!
//! A thread created by a thread we have not stopped yet shows up in the next listing
//! (`clone` makes the child visible in /proc before it returns to the parent, and our
//! interrupt only takes effect on the way back to user mode). `PTRACE_O_TRACECLONE` is
//! not used for this: it would add clone events to every wait of the protocol for no
//! gain. It is an option ([`SeizeOptions::trace_clone`]) for processes whose threads
//! are created by remote calls: a restore helper, which runs no code of its own.
//!
//! After `seize` every thread sits in a `PTRACE_EVENT_STOP` inside the kernel's
//! `get_signal`, with its registers untouched, and no signal is held by us: a signal that
//! was dequeued while we were attaching was handed back to the thread at once (its
//! handler frame, if any, is part of the state we see), and signals that arrive later stay
//! pending in the kernel and are delivered after detach. A thread stopped inside a
//! blocking system call shows `-ERESTART*` in `rax`; detaching lets the kernel restart
//! the call (see [`SyscallState`](crate::SyscallState)).
//!
//! # Letting go
//!
//! `detach()` (and `Drop`, on every error path and on panic) detaches every thread: the
//! process continues exactly where it was, or goes back to its job-control stop if it was
//! stopped before we came. `kill()` sends SIGKILL instead and reaps the threads (and the
//! process itself when it is our child).
//!
//! # Known limits
//!
//! - A thread that cannot take a signal-like interruption does not stop until it can:
//!   the parent of a `vfork` waits (killable only) until its child execs or exits, and a
//!   thread in uninterruptible sleep (`D`) until the kernel wakes it. Seizing then fails
//!   with [`SeizeError::Timeout`] after the configured bound and lets everything go.
//! - An `execve` racing with seize is followed only as far as the kernel reports it: the
//!   exec'ing thread takes over the leader's tid and the other threads vanish; what is
//!   seized in the end is the new program.
//!
//! # The tracer is a thread
//!
//! Linux ties a tracee to the *thread* that attached, not to its process: ptrace
//! requests from any other thread fail with `ESRCH`. `SeizedProcess` is therefore neither
//! `Send` nor `Sync`; create and use it on one thread.

use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use nix::sys::ptrace::{self, Options};
use rustix::process::{PidfdFlags, pidfd_open};

use crate::error::{DetachError, KillError, SeizeError};
use crate::memory::ProcessMemory;
use crate::procfs_util::{list_threads, parent_of, tgid_of, thread_status};
use crate::sys::{self, Resume};
use crate::wait::{Stop, WaitFailure, Waited, wait_for};

/// Most threads a process may have for us to seize it (hostile-input bound on the
/// /proc/PID/task listing).
pub const MAX_THREADS: usize = 1 << 16;

/// Most rounds of "list threads, seize the new ones" before giving up on a process that
/// creates threads faster than we can stop them.
pub const MAX_SEIZE_ROUNDS: usize = 1000;

/// Default bound on every wait for a thread (a stop, a remote system call, an exit).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How many times an `EPERM` from `PTRACE_SEIZE` on an untraced, live-looking thread is
/// re-checked: a thread that is exiting refuses to be traced before /proc shows it dead.
const EXITING_RECHECKS: u32 = 20;

/// `PTRACE_EVENT_STOP`.
pub(crate) const PTRACE_EVENT_STOP: u32 = 128;

/// `PTRACE_EVENT_CLONE`.
pub(crate) const PTRACE_EVENT_CLONE: u32 = 3;

/// How [`SeizedProcess::seize`] attaches.
#[derive(Debug, Clone, Copy)]
pub struct SeizeOptions {
    pub(crate) timeout: Duration,
    pub(crate) exit_kill: bool,
    pub(crate) trace_clone: bool,
}

impl Default for SeizeOptions {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
            exit_kill: false,
            trace_clone: false,
        }
    }
}

impl SeizeOptions {
    /// Bound on every single wait for a thread (default [`DEFAULT_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// `PTRACE_O_EXITKILL`: if the tracing *thread* exits while still attached, the kernel
    /// kills the tracee (a restore helper must not outlive its agent half-built). No
    /// effect after detach. Default off.
    pub fn exit_kill(mut self, exit_kill: bool) -> Self {
        self.exit_kill = exit_kill;
        self
    }

    /// `PTRACE_O_TRACECLONE`: a thread created by a remote `clone`/`clone3` with
    /// `CLONE_THREAD` is attached by the kernel at birth and stops (in a
    /// `PTRACE_EVENT_STOP`) before it runs a single instruction of user code; the remote
    /// call returns once it is in that stop, and it joins the seized threads (restore
    /// creates a process's threads so, with their original tids). Default off.
    ///
    /// Only threads of the seized process are supported: a remote clone without
    /// `CLONE_THREAD` fails the call (the new process is killed).
    pub fn trace_clone(mut self, trace_clone: bool) -> Self {
        self.trace_clone = trace_clone;
        self
    }
}

/// The ptrace stop a seized thread rests in between operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadStop {
    /// Stopped by our `PTRACE_INTERRUPT`.
    Interrupted,
    /// The process is in a job-control stop (`signal` is SIGSTOP, SIGTSTP, SIGTTIN or
    /// SIGTTOU); after detach the thread goes back to that stop until SIGCONT.
    GroupStop {
        /// The stop signal.
        signal: i32,
    },
}

impl ThreadStop {
    pub(crate) fn from_event_signal(signal: i32) -> Self {
        if signal == libc::SIGTRAP {
            Self::Interrupted
        } else {
            Self::GroupStop { signal }
        }
    }
}

/// Where a seized thread is, as far as we know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ThreadState {
    /// Attached and running: our interrupt is pending, or we resumed it.
    Running,
    /// In a `PTRACE_EVENT_STOP`, ready for requests.
    Stopped(ThreadStop),
    /// In another ptrace stop (system-call or signal-delivery stop) during a remote call.
    OtherStop,
    /// Exited (reaped, or no longer ours to wait for).
    Gone,
}

#[derive(Debug)]
pub(crate) struct Thread {
    pub(crate) tid: i32,
    pub(crate) state: ThreadState,
}

/// A seized thread, as [`SeizedProcess::threads`] lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadInfo {
    /// The thread id.
    pub tid: i32,
    /// The stop it rests in.
    pub stop: ThreadStop,
}

/// A process whose threads are all attached with ptrace and stopped.
///
/// Dropping it detaches every thread and leaves the process running (see the module
/// docs); [`detach`](Self::detach) does the same and reports failures, and
/// [`kill`](Self::kill) ends the process instead. Not `Send`: ptrace requests must come
/// from the thread that seized.
#[derive(Debug)]
pub struct SeizedProcess {
    pub(crate) pid: i32,
    pidfd: OwnedFd,
    pub(crate) threads: Vec<Thread>,
    /// Tids found already dead (zombies) when seizing: never retried.
    dead: Vec<i32>,
    pub(crate) options: SeizeOptions,
    pub(crate) memory: ProcessMemory,
    /// Address of a `syscall` instruction in the process, once located (see `remote`).
    pub(crate) syscall_site: Option<u64>,
    /// Whether the process's parent is the calling process (then `kill` reaps it).
    our_child: bool,
    _not_send: PhantomData<*const ()>,
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

impl SeizedProcess {
    /// Seizes and stops every thread of process `pid`.
    ///
    /// The process must not be traced already; this includes a child that called
    /// `PTRACE_TRACEME` (see the crate docs for how to hand a fresh child over). If it is
    /// in a job-control stop (SIGSTOP) it is seized in that stop and stays stopped after
    /// detach.
    pub fn seize(pid: i32, options: SeizeOptions) -> Result<Self, SeizeError> {
        // (rustix's Pid::from_raw asserts on negative values: check first.)
        let Some(rpid) = (pid > 0)
            .then(|| rustix::process::Pid::from_raw(pid))
            .flatten()
        else {
            return Err(SeizeError::InvalidPid { pid });
        };
        if u32::try_from(pid).ok() == Some(std::process::id()) {
            return Err(SeizeError::SelfSeize { pid });
        }
        let pidfd = match pidfd_open(rpid, PidfdFlags::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::SRCH) => return Err(SeizeError::NoSuchProcess { pid }),
            // pidfd_open refuses a tid that is not a thread-group leader (EINVAL, or
            // ENOENT on recent kernels).
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => {
                return Err(match tgid_of(pid) {
                    None => SeizeError::NoSuchProcess { pid },
                    tgid => SeizeError::NotAProcess { pid, tgid },
                });
            }
            Err(e) => {
                return Err(SeizeError::Proc {
                    pid,
                    what: "pidfd",
                    source: e.into(),
                });
            }
        };
        let our_child = parent_of(pid)
            .and_then(|ppid| u32::try_from(ppid).ok())
            .is_some_and(|ppid| ppid == std::process::id());
        // From here on, dropping `process` (on any error) detaches what was seized.
        let mut process = Self {
            pid,
            pidfd,
            threads: Vec::new(),
            dead: Vec::new(),
            options,
            memory: ProcessMemory::new(pid),
            syscall_site: None,
            our_child,
            _not_send: PhantomData,
        };
        process.seize_all()?;
        // A zombie leader has no address space: reach memory through a live thread.
        let via = process.mm_tid();
        if via != pid {
            process.memory = ProcessMemory::via_thread(pid, via);
        }
        // The pidfd was opened before we seized anything: if it has not exited, the
        // threads we hold are that process's, not those of a newcomer reusing the pid.
        if process.has_exited() {
            return Err(SeizeError::Exited { pid });
        }
        log::debug!("seized process {pid}: {} thread(s)", process.threads.len());
        Ok(process)
    }

    fn seize_all(&mut self) -> Result<(), SeizeError> {
        let pid = self.pid;
        for _ in 0..MAX_SEIZE_ROUNDS {
            let listed = match list_threads(pid) {
                Ok(Some(tids)) => tids,
                Ok(None) => return Err(SeizeError::Exited { pid }),
                Err(source) => {
                    return Err(SeizeError::Proc {
                        pid,
                        what: "thread list",
                        source,
                    });
                }
            };
            if listed.len() > MAX_THREADS {
                return Err(SeizeError::TooManyThreads {
                    pid,
                    limit: MAX_THREADS,
                });
            }
            let new: Vec<i32> = listed
                .into_iter()
                .filter(|tid| {
                    !self.dead.contains(tid) && !self.threads.iter().any(|t| t.tid == *tid)
                })
                .collect();
            if new.is_empty() {
                if self.threads.is_empty() {
                    // Only zombies left: the process is exiting.
                    return Err(SeizeError::Exited { pid });
                }
                return Ok(());
            }
            if self.threads.len() + new.len() > MAX_THREADS {
                return Err(SeizeError::TooManyThreads {
                    pid,
                    limit: MAX_THREADS,
                });
            }
            for tid in new {
                self.seize_thread(tid)?;
            }
            for index in 0..self.threads.len() {
                if self.threads[index].state == ThreadState::Running {
                    self.wait_first_stop(index)?;
                }
            }
            self.threads.retain(|t| t.state != ThreadState::Gone);
        }
        Err(SeizeError::Unstable {
            pid,
            rounds: MAX_SEIZE_ROUNDS,
        })
    }

    /// `PTRACE_SEIZE` + `PTRACE_INTERRUPT` one thread; records it unless it vanished.
    fn seize_thread(&mut self, tid: i32) -> Result<(), SeizeError> {
        let pid = self.pid;
        let mut options = Options::PTRACE_O_TRACESYSGOOD;
        if self.options.exit_kill {
            options |= Options::PTRACE_O_EXITKILL;
        }
        if self.options.trace_clone {
            options |= Options::PTRACE_O_TRACECLONE;
        }
        let ntid = nix::unistd::Pid::from_raw(tid);
        match ptrace::seize(ntid, options) {
            Ok(()) => {}
            Err(nix::errno::Errno::ESRCH) => return Ok(()),
            Err(nix::errno::Errno::EPERM) => return self.explain_eperm(tid),
            Err(e) => {
                return Err(SeizeError::Ptrace {
                    pid,
                    tid,
                    op: "PTRACE_SEIZE",
                    source: e.into(),
                });
            }
        }
        self.threads.push(Thread {
            tid,
            state: ThreadState::Running,
        });
        match ptrace::interrupt(ntid) {
            // ESRCH: it is already exiting; the wait will see its end.
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(SeizeError::Ptrace {
                pid,
                tid,
                op: "PTRACE_INTERRUPT",
                source: e.into(),
            }),
        }
    }

    /// `PTRACE_SEIZE` said EPERM: traced by someone, a zombie, an exiting thread, or
    /// really not permitted.
    fn explain_eperm(&mut self, tid: i32) -> Result<(), SeizeError> {
        let pid = self.pid;
        for attempt in 0..=EXITING_RECHECKS {
            let Some(status) = thread_status(pid, tid) else {
                return Ok(()); // gone
            };
            if status.tracer != 0 {
                return Err(SeizeError::AlreadyTraced {
                    pid,
                    tid,
                    tracer: status.tracer,
                });
            }
            if status.is_dead() {
                // A zombie (for example a leader that called pthread_exit while other
                // threads run): it has no user state and cannot be traced.
                log::debug!("process {pid}: thread {tid} is a zombie, not seized");
                self.dead.push(tid);
                return Ok(());
            }
            if attempt < EXITING_RECHECKS {
                std::thread::sleep(Duration::from_micros(250));
            }
        }
        Err(SeizeError::NotPermitted {
            pid,
            tid,
            source: io::Error::from_raw_os_error(libc::EPERM),
        })
    }

    /// Waits for the first stop of a just-seized (or auto-attached) thread.
    pub(crate) fn wait_first_stop(&mut self, index: usize) -> Result<(), SeizeError> {
        let (pid, tid) = (self.pid, self.threads[index].tid);
        loop {
            match wait_for(tid, self.options.timeout) {
                Ok(Waited::Stopped(Stop::Event {
                    event: PTRACE_EVENT_STOP,
                    signal,
                })) => {
                    self.threads[index].state =
                        ThreadState::Stopped(ThreadStop::from_event_signal(signal));
                    return Ok(());
                }
                Ok(Waited::Stopped(stop)) => {
                    // A signal dequeued before our interrupt took effect: hand it back so
                    // it is not lost (our interrupt stays pending and stops the thread
                    // right after). Other stops are not requested; just continue.
                    let signal = match stop {
                        Stop::Signal(signal) => signal,
                        Stop::Event { .. } | Stop::Syscall => 0,
                    };
                    match sys::resume(Resume::Cont, tid, signal) {
                        Ok(()) => {}
                        Err(e) if errno(&e) == libc::ESRCH => {}
                        Err(source) => {
                            return Err(SeizeError::Ptrace {
                                pid,
                                tid,
                                op: "PTRACE_CONT",
                                source,
                            });
                        }
                    }
                }
                Ok(Waited::Gone) => {
                    self.threads[index].state = ThreadState::Gone;
                    // A leader's end is only reported once the whole group is gone.
                    return if tid == pid {
                        Err(SeizeError::Exited { pid })
                    } else {
                        Ok(())
                    };
                }
                Err(WaitFailure::Timeout) => {
                    return Err(SeizeError::Timeout {
                        pid,
                        tid,
                        timeout: self.options.timeout,
                    });
                }
                Err(WaitFailure::Os(source)) => {
                    return Err(SeizeError::Ptrace {
                        pid,
                        tid,
                        op: "waitpid",
                        source,
                    });
                }
            }
        }
    }

    /// Whether the process has exited (its pidfd is readable).
    fn has_exited(&self) -> bool {
        let mut fds = [rustix::event::PollFd::new(
            &self.pidfd,
            rustix::event::PollFlags::IN,
        )];
        let zero = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        matches!(rustix::event::poll(&mut fds, Some(&zero)), Ok(n) if n > 0)
    }

    /// A seized thread whose /proc entries show the process's address space: the leader,
    /// or (if the leader is a zombie) the first live thread.
    pub(crate) fn mm_tid(&self) -> i32 {
        let live = |t: &&Thread| t.state != ThreadState::Gone;
        self.threads
            .iter()
            .filter(live)
            .find(|t| t.tid == self.pid)
            .or_else(|| self.threads.iter().find(live))
            .map_or(self.pid, |t| t.tid)
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// A pidfd for the process (opened before seizing; pollable for its exit).
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// The seized threads and the stop each rests in. A zombie thread-group leader (one
    /// that called `pthread_exit` while other threads live) is not among them.
    pub fn threads(&self) -> Vec<ThreadInfo> {
        self.threads
            .iter()
            .filter_map(|t| match t.state {
                ThreadState::Stopped(stop) => Some(ThreadInfo { tid: t.tid, stop }),
                ThreadState::Running | ThreadState::OtherStop | ThreadState::Gone => None,
            })
            .collect()
    }

    /// The seized threads' ids, ascending.
    pub fn tids(&self) -> Vec<i32> {
        let mut tids: Vec<i32> = self.threads().iter().map(|t| t.tid).collect();
        tids.sort_unstable();
        tids
    }

    /// Memory access to the process.
    pub fn memory(&self) -> &ProcessMemory {
        &self.memory
    }

    /// Detaches every thread and lets the process continue.
    pub fn detach(mut self) -> Result<(), DetachError> {
        self.release_all()
    }

    /// Kills the process with SIGKILL and waits until every seized thread is gone; if
    /// the process is a child of the caller it is reaped too (so a `std::process::Child`
    /// for it can no longer be waited for).
    pub fn kill(mut self) -> Result<(), KillError> {
        let result = self.kill_and_reap();
        // Whatever happened, there is nothing left to detach.
        self.threads.clear();
        result
    }

    fn kill_and_reap(&mut self) -> Result<(), KillError> {
        let pid = self.pid;
        match rustix::process::pidfd_send_signal(&self.pidfd, rustix::process::Signal::KILL) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => {}
            Err(e) => {
                return Err(KillError::Signal {
                    pid,
                    source: e.into(),
                });
            }
        }
        // A leader's end is reported only after every other traced thread is reaped.
        let mut order: Vec<i32> = self
            .threads
            .iter()
            .filter(|t| t.state != ThreadState::Gone && t.tid != pid)
            .map(|t| t.tid)
            .collect();
        let leader_seized = self.threads.iter().any(|t| t.tid == pid);
        if leader_seized || self.our_child {
            order.push(pid);
        }
        for tid in order {
            loop {
                match wait_for(tid, self.options.timeout) {
                    Ok(Waited::Gone) => break,
                    // A stop reported before the kill took effect; the thread still dies.
                    Ok(Waited::Stopped(_)) => {}
                    Err(WaitFailure::Timeout) => {
                        return Err(KillError::Timeout {
                            pid,
                            tid,
                            timeout: self.options.timeout,
                        });
                    }
                    Err(WaitFailure::Os(source)) => {
                        return Err(KillError::Wait { pid, tid, source });
                    }
                }
            }
        }
        Ok(())
    }

    /// Detaches every thread; keeps going after a failure and reports the first.
    fn release_all(&mut self) -> Result<(), DetachError> {
        let mut first: Option<(i32, io::Error)> = None;
        let mut failed = 0usize;
        for index in 0..self.threads.len() {
            if let Err(e) = self.release_thread(index) {
                let tid = self.threads[index].tid;
                log::warn!("process {}: cannot detach thread {tid}: {e}", self.pid);
                failed += 1;
                first.get_or_insert((tid, e));
            }
        }
        self.threads.clear();
        match first {
            None => Ok(()),
            Some((tid, source)) => Err(DetachError {
                pid: self.pid,
                tid,
                failed,
                source,
            }),
        }
    }

    /// Detaches one thread, whatever state it is in.
    fn release_thread(&mut self, index: usize) -> io::Result<()> {
        let tid = self.threads[index].tid;
        // Bounded: each pass either finishes or moves the thread to a stop.
        for _ in 0..8 {
            match self.threads[index].state {
                ThreadState::Gone => return Ok(()),
                ThreadState::Stopped(_) => match sys::resume(Resume::Detach, tid, 0) {
                    Ok(()) => {
                        self.threads[index].state = ThreadState::Gone;
                        return Ok(());
                    }
                    // Not in a stop any more: it was killed. Reap it.
                    Err(e) if errno(&e) == libc::ESRCH => {
                        self.threads[index].state = ThreadState::Running;
                    }
                    Err(e) => return Err(e),
                },
                ThreadState::OtherStop => {
                    // Leave through an event stop so that the kernel's system-call restart
                    // logic runs on the way out (it does not from a syscall-exit stop).
                    self.request_stop(tid)?;
                    sys::resume(Resume::Cont, tid, 0)?;
                    self.threads[index].state = ThreadState::Running;
                }
                ThreadState::Running => {
                    self.request_stop(tid)?;
                    match wait_for(tid, self.options.timeout) {
                        Ok(Waited::Gone) => self.threads[index].state = ThreadState::Gone,
                        Ok(Waited::Stopped(Stop::Event { .. } | Stop::Syscall)) => {
                            self.threads[index].state =
                                ThreadState::Stopped(ThreadStop::Interrupted);
                        }
                        Ok(Waited::Stopped(Stop::Signal(signal))) => {
                            // Detaching from a signal-delivery-stop with the signal
                            // delivers it: nothing is swallowed.
                            sys::resume(Resume::Detach, tid, signal)?;
                            self.threads[index].state = ThreadState::Gone;
                            return Ok(());
                        }
                        Err(WaitFailure::Timeout) => {
                            return Err(io::Error::new(
                                io::ErrorKind::TimedOut,
                                "thread did not stop to be detached",
                            ));
                        }
                        Err(WaitFailure::Os(e)) => return Err(e),
                    }
                }
            }
        }
        Err(io::Error::other(
            "thread kept changing state while detaching",
        ))
    }

    /// `PTRACE_INTERRUPT`; a thread that is already gone is fine (its wait reports it).
    fn request_stop(&self, tid: i32) -> io::Result<()> {
        match ptrace::interrupt(nix::unistd::Pid::from_raw(tid)) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

impl Drop for SeizedProcess {
    fn drop(&mut self) {
        if self.threads.is_empty() {
            return;
        }
        if let Err(e) = self.release_all() {
            log::error!("{e}");
        }
    }
}
