//! Drive a stopped process from outside: the one home for the ptrace code that both
//! process capture and process restore need.
//!
//! ```text
//!  SeizedProcess::seize(pid)          every thread PTRACE_SEIZEd and interrupted,
//!      │                              race-free against threads coming and going
//!      ├── registers / xstate / signal_mask / rseq_configuration / robust_list /
//!      │   stop_siginfo (and setters)  per-thread state, as plain serde data
//!      ├── resource_limit / set_resource_limit   prlimit from outside
//!      ├── remote(tid) ─► RemoteSession::syscall(nr, args)
//!      │                  RemoteScratch (remote mmap, munmapped on drop)
//!      ├── memory()    ─► read_ranges (process_vm_readv, batched, per-page failures)
//!      │                  read_forced / write (/proc/PID/mem: PROT_NONE and
//!      │                  read-only pages too)
//!      ├── take_fd(fd)    pidfd_getfd;  same_open_file(fd1, fd2)  kcmp(KCMP_FILE)
//!      └── detach() | kill() | drop   always leaves the process running and untraced
//! ```
//!
//! [`SyscallState`] classifies a stopped thread's registers (was it inside an
//! interrupted, restartable system call?) and gives the registers a restored copy must
//! resume with.
//!
//! # Handing a freshly forked helper over (restore)
//!
//! [`SeizedProcess::seize`] uses `PTRACE_SEIZE`, which refuses a process that is already
//! traced — including a child that called `PTRACE_TRACEME` (it is traced by the parent
//! with the older attach semantics, without `PTRACE_INTERRUPT`, which remote calls need
//! to return the thread to a proper stop). The supported way is: fork a child that does
//! **not** call `PTRACE_TRACEME` and stops itself, either by blocking in a system call
//! (`read` on a pipe, `pause`) or with `raise(SIGSTOP)` after which the parent waits for
//! it with `waitpid(WUNTRACED)`; then call `seize`. A SIGSTOPped child is seized in its
//! group stop, remote calls work, and after `detach` it is stopped again until it gets
//! SIGCONT (send SIGCONT after detach to let it run). A child blocked in a system call
//! simply continues after detach, with whatever registers were set.
//!
//! # Threading
//!
//! ptrace binds a tracee to the tracing *thread*: [`SeizedProcess`] is neither `Send`
//! nor `Sync`. [`ProcessMemory`] needs no tracer and may be used from any thread.
//!
//! x86_64 Linux only: the register layouts, the XSAVE format and the system-call ABI are
//! x86_64's.

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
compile_error!(
    "the tracee crate supports x86_64 Linux only: its register sets, XSAVE layout and \
     system-call ABI are x86_64-specific"
);

mod error;
mod fds;
mod limits;
mod memory;
mod process;
mod procfs_util;
mod regs;
mod remote;
mod state;
mod sys;
mod syscall_state;
mod wait;

pub use error::{
    DetachError, FdError, KillError, LimitError, MemoryError, RemoteError, SeizeError, ThreadError,
};
pub use fds::{compare_open_files, same_open_file};
pub use limits::{RLIMIT_COUNT, ResourceLimit};
pub use memory::{FailedRange, IOV_MAX, PAGE_SIZE, ProcessMemory, ReadReport, RemoteRange};
pub use process::{
    DEFAULT_TIMEOUT, MAX_SEIZE_ROUNDS, MAX_THREADS, SeizeOptions, SeizedProcess, ThreadInfo,
    ThreadStop,
};
pub use regs::{
    GeneralRegisters, KernelSigaction, RobustList, RseqConfiguration, SigInfo, SignalMask,
    USER64_CS, XSAVE_HEADER_OFFSET, XState,
};
pub use remote::{MAX_SCRATCH_LEN, MAX_SITE_SCAN_LEN, RemoteScratch, RemoteSession};
pub use state::MAX_XSTATE_LEN;
pub use syscall_state::{
    ERESTART_RESTARTBLOCK, ERESTARTNOHAND, ERESTARTNOINTR, ERESTARTSYS, RestartKind,
    SYSCALL_INSN_LEN, SyscallState,
};
