//! [`ProcessRestoreError`]: why a process restore was refused or failed.
//!
//! The variants up to [`PidInUse`](ProcessRestoreError::PidInUse) come from the
//! checks made before anything is started (the image, the machine, the files, the
//! pids): when one of them is returned, no process was created. The later ones come
//! from building the process; when one of them is returned, the half-built process
//! was killed and reaped: nothing is left behind.

use std::io;
use std::path::PathBuf;

use snapshot_format::ReadError;
use tracee::{MemoryError, RemoteError, SeizeError, ThreadError};

use crate::server::{AddSpaceError, ServerError};
use crate::uffd::AdoptError;

/// Why a process restore was refused or failed (see the [module docs](self)).
#[derive(Debug, thiserror::Error)]
pub enum ProcessRestoreError {
    /// The image has no process state: it was not made by `capture --pid`.
    #[error("the image holds no process state (it was not made by `capture --pid`)")]
    NotAProcess,
    /// Something in the image this restore cannot recreate faithfully.
    #[error("cannot restore this process: {what}")]
    Unsupported {
        /// What, and why.
        what: String,
    },
    /// The image's process state is inconsistent (a damaged or hostile image).
    #[error("invalid process state in the image: {what}")]
    Invalid {
        /// What is wrong.
        what: String,
    },
    /// The image was captured on another kernel release: its vdso, vvar layout and
    /// register formats may differ.
    #[error(
        "the image was captured on kernel {captured}, this is {running}: a process can only be \
         restored on the kernel it was captured on"
    )]
    KernelMismatch {
        /// The capturing kernel's release.
        captured: String,
        /// Ours.
        running: String,
    },
    /// The kernel's special mappings (`[vdso]`, `[vvar]`, `[vvar_vclock]`) differ from
    /// the captured ones.
    #[error("the vdso of this kernel does not match the captured one: {reason}")]
    VdsoMismatch {
        /// How.
        reason: String,
    },
    /// A file the process needs (a mapped file, the executable, an open file, the
    /// working directory) could not be opened.
    #[error("cannot open {what} {path}")]
    Open {
        /// What the file is for.
        what: String,
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A file changed since the capture: restoring would give the process other bytes
    /// than it had.
    #[error("{what} {path} changed since the capture: {change}")]
    FileChanged {
        /// What the file is for.
        what: String,
        /// The path.
        path: PathBuf,
        /// What differs.
        change: String,
    },
    /// A file descriptor cannot be recreated.
    #[error("cannot restore fd {fd} ({target}): {reason}")]
    Fd {
        /// The descriptor.
        fd: i32,
        /// What it referred to.
        target: String,
        /// Why, and what to do.
        reason: String,
    },
    /// The original pid (or a thread's tid) is taken.
    #[error(
        "pid {pid} (of the captured {role}) is in use by {user}; stop that process, or restore \
         with a new pid (`--pid any`; glibc keeps the old tid in its thread data, so some calls \
         such as raise() and pthread_kill() misbehave under a new pid)"
    )]
    PidInUse {
        /// The pid or tid.
        pid: i32,
        /// "process" or "thread N".
        role: String,
        /// Who has it (comm of the process).
        user: String,
    },
    /// Reading memory from the image failed (for memory restored before the process
    /// runs: copied-on-write file pages, shared memory).
    #[error("cannot read the image's memory at {addr:#x}")]
    Image {
        /// The address.
        addr: u64,
        /// The error (a damaged chunk, for example).
        #[source]
        source: ReadError,
    },
    /// A system call of the agent itself failed.
    #[error("{step}")]
    Io {
        /// What was being done.
        step: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The helper process could not be created.
    #[error("cannot create the helper process{detail}")]
    Helper {
        /// Extra detail (", pid N is in use", ...), possibly empty.
        detail: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The helper could not be seized.
    #[error("cannot seize the helper process")]
    Seize(#[source] SeizeError),
    /// A remote system call in the helper failed.
    #[error("{step}")]
    Remote {
        /// What was being done.
        step: String,
        /// The error.
        #[source]
        source: RemoteError,
    },
    /// A register or signal-mask operation on a thread failed.
    #[error("{step}")]
    Thread {
        /// What was being done.
        step: String,
        /// The error.
        #[source]
        source: ThreadError,
    },
    /// Writing memory into the process failed.
    #[error("{step}")]
    Memory {
        /// What was being done.
        step: String,
        /// The error.
        #[source]
        source: MemoryError,
    },
    /// The helper's userfaultfd could not be used.
    #[error("cannot use the userfaultfd created in the restored process")]
    Userfaultfd(#[source] AdoptError),
    /// The fault server could not start.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The fault server refused the restored ranges.
    #[error(transparent)]
    Space(#[from] AddSpaceError),
    /// Population stopped progressing (eager restore, or finishing one).
    #[error("population stalled with {remaining} pages left")]
    Stalled {
        /// Pages still holding only image data.
        remaining: u64,
    },
    /// The restored process exited before it could be finished.
    #[error("process {pid} exited before the restore could be completed")]
    Exited {
        /// The pid.
        pid: i32,
    },
    /// The agent's restore thread ended unexpectedly.
    #[error("the restore thread failed")]
    Crashed,
}

impl ProcessRestoreError {
    pub(crate) fn unsupported(what: impl Into<String>) -> Self {
        Self::Unsupported { what: what.into() }
    }

    pub(crate) fn invalid(what: impl Into<String>) -> Self {
        Self::Invalid { what: what.into() }
    }

    pub(crate) fn io(step: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let step = step.into();
        move |source| Self::Io { step, source }
    }

    pub(crate) fn remote(step: impl Into<String>) -> impl FnOnce(RemoteError) -> Self {
        let step = step.into();
        move |source| Self::Remote { step, source }
    }

    pub(crate) fn thread(step: impl Into<String>) -> impl FnOnce(ThreadError) -> Self {
        let step = step.into();
        move |source| Self::Thread { step, source }
    }

    pub(crate) fn memory(step: impl Into<String>) -> impl FnOnce(MemoryError) -> Self {
        let step = step.into();
        move |source| Self::Memory { step, source }
    }
}
