//! [`CaptureError`]: why a capture failed, and [`PermissionReason`]: why the kernel
//! would not let us trace a process.

use std::fmt;
use std::io;
use std::path::PathBuf;

use snapshot_format::WriteError;
use tracee::{DetachError, KillError, MemoryError, RemoteError, SeizeError, ThreadError};

/// Why the kernel would not let us trace a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PermissionReason {
    /// Another tracer (a debugger, strace, another capture) is attached to thread
    /// `tid`.
    TracedBy {
        /// The traced thread.
        tid: i32,
        /// The tracer's pid.
        tracer: i32,
    },
    /// Yama's `kernel.yama.ptrace_scope` forbids it: 1 allows tracing descendants
    /// only, 2 needs `CAP_SYS_PTRACE`, 3 forbids attaching at all.
    PtraceScope {
        /// The sysctl's value.
        scope: u32,
    },
    /// The process belongs to another user and we lack `CAP_SYS_PTRACE` (run as root).
    OtherUser {
        /// Our effective uid.
        uid: u32,
        /// The process's uid.
        target_uid: u32,
    },
    /// The kernel refused for another reason: a security module, or a process that is
    /// not dumpable (setuid, `PR_SET_DUMPABLE` 0).
    Refused,
    /// A kernel thread: it has no user memory to capture.
    KernelThread,
}

impl fmt::Display for PermissionReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TracedBy { tid, tracer } => {
                write!(f, "thread {tid} is already traced by process {tracer}")
            }
            Self::PtraceScope { scope: 3 } => {
                f.write_str("kernel.yama.ptrace_scope is 3: attaching to processes is disabled")
            }
            Self::PtraceScope { scope: 2 } => f.write_str(
                "kernel.yama.ptrace_scope is 2: only CAP_SYS_PTRACE may attach (run as root)",
            ),
            Self::PtraceScope { scope } => write!(
                f,
                "kernel.yama.ptrace_scope is {scope}: only descendants may be attached without \
                 CAP_SYS_PTRACE (run as root, or set it to 0)"
            ),
            Self::OtherUser { uid, target_uid } => write!(
                f,
                "it belongs to uid {target_uid} and we run as uid {uid} without CAP_SYS_PTRACE \
                 (run as root)"
            ),
            Self::KernelThread => f.write_str("it is a kernel thread, with no user memory"),
            Self::Refused => f.write_str(
                "the kernel refused (a security module, or a process that is not dumpable, \
                 such as a setuid program)",
            ),
        }
    }
}

/// Why a capture failed.
///
/// Whatever the variant, no image was left behind (not under its name, not as a
/// temporary file) and, unless the variant says it exited, the process was left running
/// (or in the job-control stop it was in) and untraced. The one exception is
/// [`CaptureError::Kill`]: the image is complete, and only killing the process failed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// An option is out of range.
    #[error("invalid capture options: {0}")]
    InvalidOptions(String),
    /// No process has this pid.
    #[error("no such process: pid {pid}")]
    NoSuchProcess {
        /// The pid.
        pid: i32,
    },
    /// The kernel would not let us trace the process.
    #[error("not permitted to capture process {pid}: {reason}")]
    NotPermitted {
        /// The pid.
        pid: i32,
        /// Why.
        reason: PermissionReason,
    },
    /// The process exited (or was killed) while it was being captured.
    #[error("process {pid} exited during the capture ({during}); no image was written")]
    Exited {
        /// The pid.
        pid: i32,
        /// What the capture was doing.
        during: &'static str,
    },
    /// The image's file system is full (`ENOSPC`, or `EDQUOT`).
    #[error(
        "no space left for the image {path}: nothing was written and the process was left \
         running"
    )]
    DiskFull {
        /// The image path.
        path: PathBuf,
        /// The writer's error.
        #[source]
        source: WriteError,
    },
    /// The image could not be created or written.
    #[error("cannot write the image {path}")]
    Output {
        /// The image path.
        path: PathBuf,
        /// The writer's error.
        #[source]
        source: WriteError,
    },
    /// Freezing the process failed for another reason (a thread that would not stop,
    /// too many threads, a thread id rather than a process id, ...).
    #[error("cannot freeze process {pid}")]
    Seize {
        /// The pid.
        pid: i32,
        /// The error.
        #[source]
        source: SeizeError,
    },
    /// Reading a thread's registers or other state failed.
    #[error("cannot read the state of a thread of process {pid}")]
    Thread {
        /// The pid.
        pid: i32,
        /// The error.
        #[source]
        source: ThreadError,
    },
    /// A system call run inside the process (to read its signal handlers, break,
    /// `clear_child_tid`, signal stack) failed; it was undone.
    #[error("a system call run inside process {pid} failed")]
    Remote {
        /// The pid.
        pid: i32,
        /// The error.
        #[source]
        source: RemoteError,
    },
    /// Reading a /proc file of the process failed.
    #[error("cannot read {what} of process {pid}")]
    Proc {
        /// The pid.
        pid: i32,
        /// What was being read.
        what: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Reading the process's memory failed.
    #[error("cannot read the memory of process {pid}")]
    Memory {
        /// The pid.
        pid: i32,
        /// The error.
        #[source]
        source: MemoryError,
    },
    /// Mapped pages that must be captured could not be read, even through
    /// /proc/PID/mem (never stored as zeros).
    #[error("cannot read {len} bytes at {addr:#x} of process {pid}, although they are mapped")]
    Unreadable {
        /// The pid.
        pid: i32,
        /// First address.
        addr: u64,
        /// Length.
        len: u64,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A mapping that cannot be captured faithfully.
    #[error("cannot capture the mapping {start:#x}-{end:#x} of process {pid}: {reason}")]
    Unsupported {
        /// The pid.
        pid: i32,
        /// Mapping start.
        start: u64,
        /// Mapping end.
        end: u64,
        /// Why.
        reason: String,
    },
    /// A range given to [`capture_self_ranges`](crate::capture_self_ranges) is
    /// unaligned, empty, overlapping or not mapped.
    #[error("invalid range {start:#x}..{end:#x}: {reason}")]
    InvalidRange {
        /// Range start.
        start: u64,
        /// Range end.
        end: u64,
        /// Why.
        reason: String,
    },
    /// The process could not be detached cleanly after its memory was read; no image
    /// was written. Threads that could be detached run on; one that could not stays
    /// traced until this process exits.
    #[error("process {pid} could not be released after the capture; no image was written")]
    Detach {
        /// The pid.
        pid: i32,
        /// The error.
        #[source]
        source: DetachError,
    },
    /// The image was written, but killing the process (`--kill`) failed.
    #[error("the image was written but process {pid} could not be killed")]
    Kill {
        /// The pid.
        pid: i32,
        /// The error.
        #[source]
        source: KillError,
    },
}

impl CaptureError {
    /// Wraps a writer error for the image at `path`, recognising a full disk.
    pub(crate) fn output(path: &std::path::Path, source: WriteError) -> Self {
        let full = matches!(
            &source,
            WriteError::Io { source, .. }
                if matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
        );
        if full {
            Self::DiskFull {
                path: path.to_path_buf(),
                source,
            }
        } else {
            Self::Output {
                path: path.to_path_buf(),
                source,
            }
        }
    }

    /// Whether this error says the process is gone (so callers may report
    /// [`CaptureError::Exited`] instead).
    pub(crate) fn means_gone(&self) -> bool {
        let esrch = |e: &io::Error| {
            matches!(
                e.raw_os_error(),
                Some(libc::ESRCH | libc::ENOENT | libc::ECHILD)
            )
        };
        match self {
            Self::Memory { source, .. } => matches!(source, MemoryError::ProcessGone { .. }),
            Self::Thread { source, .. } => thread_gone(source),
            Self::Remote { source, .. } => {
                matches!(
                    source,
                    RemoteError::ThreadExited { .. }
                        | RemoteError::Memory(MemoryError::ProcessGone { .. })
                ) || matches!(source, RemoteError::Thread(t) if thread_gone(t))
            }
            Self::Proc { source, .. } | Self::Unreadable { source, .. } => esrch(source),
            _ => false,
        }
    }
}

fn thread_gone(e: &ThreadError) -> bool {
    matches!(e, ThreadError::UnknownThread { .. })
        || matches!(e, ThreadError::Ptrace { source, .. } if source.raw_os_error() == Some(libc::ESRCH))
}
