//! Error types, one per kind of operation. Every variant names the process (and the
//! thread, where there is one) and carries the underlying error as its source.

use std::io;
use std::time::Duration;

/// Why [`SeizedProcess::seize`](crate::SeizedProcess::seize) failed. Whatever the
/// variant, every thread that had been seized was detached again: the process is left
/// running (or stopped, if it was job-control stopped before) and untraced.
#[derive(Debug, thiserror::Error)]
pub enum SeizeError {
    /// The pid is not a valid process id (zero or negative).
    #[error("invalid pid {pid}")]
    InvalidPid {
        /// The pid given.
        pid: i32,
    },
    /// The pid is the calling process: a process cannot ptrace its own threads.
    #[error("pid {pid} is the calling process itself, which cannot trace its own threads")]
    SelfSeize {
        /// The pid given.
        pid: i32,
    },
    /// No process has this pid.
    #[error("no such process: pid {pid}")]
    NoSuchProcess {
        /// The pid given.
        pid: i32,
    },
    /// The pid names a thread that is not a thread-group leader.
    #[error("pid {pid} is a thread, not a process (its thread-group leader is {tgid:?})")]
    NotAProcess {
        /// The pid given.
        pid: i32,
        /// The process it belongs to, if /proc said.
        tgid: Option<i32>,
    },
    /// A thread is already traced by another tracer (a debugger, strace, another capture).
    #[error("thread {tid} of process {pid} is already traced by pid {tracer}")]
    AlreadyTraced {
        /// The process.
        pid: i32,
        /// The traced thread.
        tid: i32,
        /// The tracer's pid (from `TracerPid` in /proc/PID/task/TID/status).
        tracer: i32,
    },
    /// The kernel refused to let us trace the process (credentials, Yama ptrace_scope,
    /// a setuid/non-dumpable process, ...).
    #[error("not permitted to trace thread {tid} of process {pid}")]
    NotPermitted {
        /// The process.
        pid: i32,
        /// The thread that could not be seized.
        tid: i32,
        /// The error from `PTRACE_SEIZE` (`EPERM`).
        #[source]
        source: io::Error,
    },
    /// The process exited while it was being seized.
    #[error("process {pid} exited while it was being seized")]
    Exited {
        /// The process.
        pid: i32,
    },
    /// A thread did not reach a ptrace stop within the timeout.
    #[error("thread {tid} of process {pid} did not stop within {timeout:?}")]
    Timeout {
        /// The process.
        pid: i32,
        /// The thread.
        tid: i32,
        /// The timeout.
        timeout: Duration,
    },
    /// The process has more threads than [`MAX_THREADS`](crate::MAX_THREADS).
    #[error("process {pid} has more than {limit} threads")]
    TooManyThreads {
        /// The process.
        pid: i32,
        /// The limit.
        limit: usize,
    },
    /// New threads kept appearing for [`MAX_SEIZE_ROUNDS`](crate::MAX_SEIZE_ROUNDS)
    /// rounds of listing and seizing.
    #[error("threads of process {pid} kept appearing after {rounds} rounds of seizing")]
    Unstable {
        /// The process.
        pid: i32,
        /// Rounds attempted.
        rounds: usize,
    },
    /// Reading the process's /proc entries failed.
    #[error("cannot read {what} of process {pid}")]
    Proc {
        /// The process.
        pid: i32,
        /// What was being read.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A ptrace request or wait failed unexpectedly.
    #[error("{op} failed on thread {tid} of process {pid}")]
    Ptrace {
        /// The process.
        pid: i32,
        /// The thread.
        tid: i32,
        /// The request.
        op: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Why an operation on one seized thread (registers, xstate, signal mask, ...) failed.
#[derive(Debug, thiserror::Error)]
pub enum ThreadError {
    /// The tid is not a seized, stopped thread of this process.
    #[error("thread {tid} is not a seized, stopped thread of process {pid}")]
    UnknownThread {
        /// The process.
        pid: i32,
        /// The thread asked for.
        tid: i32,
    },
    /// A ptrace request failed (`ESRCH`: the thread died, for example by SIGKILL).
    #[error("{op} failed on thread {tid} of process {pid}")]
    Ptrace {
        /// The process.
        pid: i32,
        /// The thread.
        tid: i32,
        /// The request.
        op: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A register set had another size than this machine's kernel uses.
    #[error(
        "{what} of {len} bytes does not match the {expected} bytes this kernel uses \
         (thread {tid} of process {pid})"
    )]
    RegsetLength {
        /// The process.
        pid: i32,
        /// The thread.
        tid: i32,
        /// Which register set.
        what: &'static str,
        /// The length given or returned.
        len: usize,
        /// The length expected.
        expected: usize,
    },
}

/// Why a remote system call (or setting one up) failed. After any of these errors the
/// thread is back in its ptrace stop with its own registers and signal mask, except where
/// the variant says the thread is gone.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// A register or signal-mask operation failed.
    #[error(transparent)]
    Thread(#[from] ThreadError),
    /// A memory access (finding or checking the syscall site, scratch memory) failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// No `syscall` instruction was found in the process's executable mappings.
    #[error("no syscall instruction found in the executable mappings of process {pid}")]
    NoSyscallSite {
        /// The process.
        pid: i32,
    },
    /// The address given as syscall site does not hold `0f 05` in an executable mapping.
    #[error("address {addr:#x} of process {pid} is not a syscall instruction: {reason}")]
    BadSyscallSite {
        /// The process.
        pid: i32,
        /// The address.
        addr: u64,
        /// Why it was refused.
        reason: &'static str,
    },
    /// Reading /proc/PID/maps failed.
    #[error("cannot read the memory map of process {pid}")]
    Maps {
        /// The process.
        pid: i32,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The thread runs 32-bit code (its `cs` is not the 64-bit user code segment).
    #[error(
        "thread {tid} of process {pid} runs 32-bit code (cs = {cs:#x}); only x86_64 is supported"
    )]
    Not64Bit {
        /// The process.
        pid: i32,
        /// The thread.
        tid: i32,
        /// Its code segment selector.
        cs: u64,
    },
    /// The thread exited (or was killed) during the remote call; it is gone.
    #[error("thread {tid} of process {pid} exited during a remote system call")]
    ThreadExited {
        /// The process.
        pid: i32,
        /// The thread.
        tid: i32,
    },
    /// The system call did not finish within the timeout; it was interrupted and the
    /// thread's registers restored.
    #[error(
        "remote system call {nr} in thread {tid} of process {pid} did not finish within {timeout:?}"
    )]
    Timeout {
        /// The process.
        pid: i32,
        /// The thread.
        tid: i32,
        /// The system call number.
        nr: u64,
        /// The timeout.
        timeout: Duration,
    },
    /// Executing the injected instruction raised a signal (the syscall site was not
    /// executable, for example). The signal was discarded and the registers restored.
    #[error("remote system call {nr} in thread {tid} of process {pid} raised signal {signal}")]
    Faulted {
        /// The process.
        pid: i32,
        /// The thread.
        tid: i32,
        /// The system call number.
        nr: u64,
        /// The signal.
        signal: i32,
    },
    /// The thread stopped somewhere the protocol does not expect.
    #[error("remote system call {nr} in thread {tid} of process {pid}: unexpected stop: {detail}")]
    UnexpectedStop {
        /// The process.
        pid: i32,
        /// The thread.
        tid: i32,
        /// The system call number.
        nr: u64,
        /// What was seen.
        detail: String,
    },
    /// The remote system call ran and returned an error (from the `*_ok` helpers).
    #[error("remote system call {nr} in thread {tid} of process {pid} failed")]
    Syscall {
        /// The process.
        pid: i32,
        /// The thread.
        tid: i32,
        /// The system call number.
        nr: u64,
        /// The errno it returned.
        #[source]
        source: io::Error,
    },
    /// A scratch-memory access outside the mapping.
    #[error(
        "access of {len} bytes at offset {offset} is outside the {size}-byte scratch mapping at {addr:#x}"
    )]
    ScratchBounds {
        /// The scratch mapping's address.
        addr: u64,
        /// Its size.
        size: usize,
        /// The offset asked for.
        offset: usize,
        /// The length asked for.
        len: usize,
    },
    /// A scratch mapping larger than [`MAX_SCRATCH_LEN`](crate::MAX_SCRATCH_LEN) (or empty).
    #[error("scratch mapping of {len} bytes refused (limit {limit})")]
    ScratchSize {
        /// The length asked for.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// After a failed call, the thread could not be put back (its registers and signal
    /// mask may still be the injected ones): `cause` is the first failure, `source` the
    /// failure of the recovery.
    #[error("thread {tid} of process {pid} could not be restored after: {cause}")]
    NotRestored {
        /// The process.
        pid: i32,
        /// The thread.
        tid: i32,
        /// The failure that required the recovery.
        cause: String,
        /// Why the recovery failed.
        #[source]
        source: Box<RemoteError>,
    },
    /// Waiting for the thread failed unexpectedly.
    #[error("waiting for thread {tid} of process {pid} failed")]
    Wait {
        /// The process.
        pid: i32,
        /// The thread.
        tid: i32,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A thread created by the call (with [`SeizeOptions::trace_clone`](crate::SeizeOptions::trace_clone))
    /// did not reach its first stop.
    #[error("thread {tid}, created in process {pid} by a remote call, did not stop")]
    NewThread {
        /// The process.
        pid: i32,
        /// The new thread.
        tid: i32,
        /// Why.
        #[source]
        source: Box<SeizeError>,
    },
    /// A remote clone created a new process instead of a thread (no `CLONE_THREAD`);
    /// it was killed.
    #[error("a remote clone in process {pid} created process {tid}, not a thread; it was killed")]
    NotAThread {
        /// The process.
        pid: i32,
        /// The new process.
        tid: i32,
    },
}

/// Why a memory access failed.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The local buffer's length differs from the total length of the remote ranges.
    #[error("buffer of {buf_len} bytes for {ranges_len} bytes of ranges (process {pid})")]
    LengthMismatch {
        /// The process.
        pid: i32,
        /// Sum of the range lengths (saturated).
        ranges_len: u64,
        /// The buffer length.
        buf_len: usize,
    },
    /// The process no longer exists.
    #[error("process {pid} no longer exists")]
    ProcessGone {
        /// The process.
        pid: i32,
    },
    /// We may not access the process's memory.
    #[error("not permitted to access the memory of process {pid}")]
    NotPermitted {
        /// The process.
        pid: i32,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Some bytes of a single-range read could not be read.
    #[error("cannot read {len} bytes at {addr:#x} in process {pid}")]
    Read {
        /// The process.
        pid: i32,
        /// The first address that failed.
        addr: u64,
        /// Length of the failed range.
        len: u64,
        /// The error (`EFAULT` for an unmapped or inaccessible page).
        #[source]
        source: io::Error,
    },
    /// A write failed at `addr`; the bytes before it were written.
    #[error("cannot write {len} bytes at {addr:#x} in process {pid}")]
    Write {
        /// The process.
        pid: i32,
        /// The first address that failed.
        addr: u64,
        /// Bytes that remained to be written from there.
        len: usize,
        /// The error (`EIO` for an unmapped page).
        #[source]
        source: io::Error,
    },
    /// Opening /proc/PID/mem failed.
    #[error("cannot open /proc/{pid}/mem")]
    OpenMem {
        /// The process.
        pid: i32,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// `process_vm_readv` failed for a reason other than an inaccessible page.
    #[error("process_vm_readv failed on process {pid}")]
    ReadV {
        /// The process.
        pid: i32,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Why an operation on file descriptors failed.
#[derive(Debug, thiserror::Error)]
pub enum FdError {
    /// The process has no such open fd.
    #[error("process {pid} has no open fd {fd}")]
    NoSuchFd {
        /// The process.
        pid: i32,
        /// The fd.
        fd: i32,
    },
    /// The process no longer exists.
    #[error("process {pid} no longer exists")]
    ProcessGone {
        /// The process.
        pid: i32,
    },
    /// `pidfd_getfd` failed for another reason (`EPERM`: no ptrace permission, `EMFILE`).
    #[error("cannot take fd {fd} of process {pid}")]
    GetFd {
        /// The process.
        pid: i32,
        /// The fd.
        fd: i32,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// `kcmp(KCMP_FILE)` failed (`EBADF`: an fd is not open; `EPERM`; `ENOSYS` without
    /// CONFIG_KCMP).
    #[error("kcmp of fd {fd1} of process {pid1} with fd {fd2} of process {pid2} failed")]
    Kcmp {
        /// First process.
        pid1: i32,
        /// Its fd.
        fd1: i32,
        /// Second process.
        pid2: i32,
        /// Its fd.
        fd2: i32,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Why [`SeizedProcess::detach`](crate::SeizedProcess::detach) could not release every
/// thread. The threads that could be detached were; a thread that could not stays traced
/// until this process exits (the kernel then detaches it).
#[derive(Debug, thiserror::Error)]
#[error("could not detach {failed} thread(s) of process {pid}; first failure on thread {tid}")]
pub struct DetachError {
    /// The process.
    pub pid: i32,
    /// The first thread that failed.
    pub tid: i32,
    /// How many threads failed.
    pub failed: usize,
    /// The first failure.
    #[source]
    pub source: io::Error,
}

/// Why [`SeizedProcess::kill`](crate::SeizedProcess::kill) failed.
#[derive(Debug, thiserror::Error)]
pub enum KillError {
    /// Sending SIGKILL failed.
    #[error("cannot send SIGKILL to process {pid}")]
    Signal {
        /// The process.
        pid: i32,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Waiting for a thread's exit failed.
    #[error("waiting for thread {tid} of process {pid} to exit failed")]
    Wait {
        /// The process.
        pid: i32,
        /// The thread.
        tid: i32,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A thread did not exit within the timeout.
    #[error("thread {tid} of process {pid} did not exit within {timeout:?} of SIGKILL")]
    Timeout {
        /// The process.
        pid: i32,
        /// The thread.
        tid: i32,
        /// The timeout.
        timeout: Duration,
    },
}

/// Why reading or setting a resource limit failed.
#[derive(Debug, thiserror::Error)]
#[error("prlimit of resource {resource} on process {pid} failed")]
pub struct LimitError {
    /// The process.
    pub pid: i32,
    /// The resource number.
    pub resource: u32,
    /// The error (`EINVAL`: unknown resource; `EPERM`: not allowed; `ESRCH`: gone).
    #[source]
    pub source: io::Error,
}
