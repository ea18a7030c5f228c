//! File descriptors of another process: taking a copy of one (`pidfd_getfd`), and telling
//! whether two fds share one open file description (`kcmp(KCMP_FILE)`).
//!
//! Two fds "share an open file" when one was made from the other by `dup`, `fork` or
//! `SCM_RIGHTS` (for example stdout and stderr after `2>&1`): they share the file offset
//! and status flags, so restore must recreate them with `dup3`, not by opening the file
//! twice.

use std::cmp::Ordering;
use std::os::fd::OwnedFd;

use rustix::process::PidfdGetfdFlags;

use crate::error::FdError;
use crate::process::SeizedProcess;
use crate::sys;

impl SeizedProcess {
    /// Takes a copy of the process's fd `fd` into the calling process (`pidfd_getfd`,
    /// close-on-exec). Both fds then refer to the same open file description — the way
    /// restore obtains the userfaultfd created inside its helper.
    pub fn take_fd(&self, fd: i32) -> Result<OwnedFd, FdError> {
        let pid = self.pid;
        rustix::process::pidfd_getfd(self.pidfd(), fd, PidfdGetfdFlags::empty()).map_err(
            |e| match e {
                rustix::io::Errno::BADF => FdError::NoSuchFd { pid, fd },
                rustix::io::Errno::SRCH => FdError::ProcessGone { pid },
                e => FdError::GetFd {
                    pid,
                    fd,
                    source: e.into(),
                },
            },
        )
    }

    /// Whether fds `fd1` and `fd2` of the process share one open file description.
    pub fn same_open_file(&self, fd1: i32, fd2: i32) -> Result<bool, FdError> {
        same_open_file(self.pid, fd1, fd2)
    }
}

/// Whether fds `fd1` and `fd2` of process `pid` share one open file description.
pub fn same_open_file(pid: i32, fd1: i32, fd2: i32) -> Result<bool, FdError> {
    compare_open_files(pid, fd1, pid, fd2).map(|order| order == Ordering::Equal)
}

/// Compares the open file descriptions behind `fd1` of `pid1` and `fd2` of `pid2`:
/// `Equal` when they are the same one; otherwise a consistent (kernel-obfuscated) order,
/// so that a list of fds can be sorted to group shared ones together.
pub fn compare_open_files(pid1: i32, fd1: i32, pid2: i32, fd2: i32) -> Result<Ordering, FdError> {
    let result = sys::kcmp_file(pid1, fd1, pid2, fd2).map_err(|source| FdError::Kcmp {
        pid1,
        fd1,
        pid2,
        fd2,
        source,
    })?;
    Ok(match result {
        0 => Ordering::Equal,
        1 => Ordering::Less,
        _ => Ordering::Greater,
    })
}
