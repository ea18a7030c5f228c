//! Creating a userfaultfd: `/dev/userfaultfd` first, the `userfaultfd(2)`
//! system call as the fallback.
//!
//! The two ways give equivalent descriptors and differ only in who may use
//! them: the device is governed by its file permissions (and always allows
//! trapping kernel-mode faults), the system call by `vm.unprivileged_userfaultfd`
//! and `CAP_SYS_PTRACE` (without them only [`OpenOptions::user_mode_only`] fds
//! can be created).

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use linux_raw_sys::general as k;
use rustix::fs::{Mode, OFlags};

use super::sys;

/// Where [`OpenOptions::create`] gets its userfaultfd from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Source {
    /// `/dev/userfaultfd`, falling back to the system call if the device cannot
    /// be used (absent, no permission, ...).
    #[default]
    Auto,
    /// `/dev/userfaultfd` only.
    Device,
    /// The `userfaultfd(2)` system call only.
    Syscall,
}

/// How to create a userfaultfd.
///
/// Defaults: close-on-exec, non-blocking (a server polls it; and `poll()` on a
/// *blocking* userfaultfd always reports `POLLERR`), kernel faults trapped too,
/// [`Source::Auto`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenOptions {
    close_on_exec: bool,
    non_blocking: bool,
    user_mode_only: bool,
    source: Source,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl OpenOptions {
    /// The defaults (see the type's docs).
    pub const fn new() -> Self {
        Self {
            close_on_exec: true,
            non_blocking: true,
            user_mode_only: false,
            source: Source::Auto,
        }
    }

    /// `O_CLOEXEC` (default true).
    pub const fn close_on_exec(mut self, yes: bool) -> Self {
        self.close_on_exec = yes;
        self
    }

    /// `O_NONBLOCK` (default true): reads return "nothing pending" instead of
    /// waiting.
    pub const fn non_blocking(mut self, yes: bool) -> Self {
        self.non_blocking = yes;
        self
    }

    /// `UFFD_USER_MODE_ONLY` (default false): only faults taken in user mode are
    /// reported; a kernel access to a missing page (a `read(2)` into it, a
    /// `process_vm_readv`) fails with `EFAULT` instead of waiting. This is what
    /// an unprivileged process may create with the system call.
    pub const fn user_mode_only(mut self, yes: bool) -> Self {
        self.user_mode_only = yes;
        self
    }

    /// Where the fd comes from (default [`Source::Auto`]).
    pub const fn source(mut self, source: Source) -> Self {
        self.source = source;
        self
    }

    /// The flags word given to the kernel.
    fn flags(&self) -> u32 {
        let mut flags = 0;
        if self.close_on_exec {
            flags |= k::O_CLOEXEC;
        }
        if self.non_blocking {
            flags |= k::O_NONBLOCK;
        }
        if self.user_mode_only {
            flags |= k::UFFD_USER_MODE_ONLY;
        }
        flags
    }

    /// Creates a new userfaultfd. Its `UFFDIO_API` handshake is still to be
    /// done (see [`handshake`](super::handshake)); most callers want
    /// [`Userfaultfd::open`](super::Userfaultfd::open), which does both.
    pub fn create(&self) -> Result<OwnedFd, CreateError> {
        let flags = self.flags();
        match self.source {
            Source::Device => from_device(flags).map_err(|e| CreateError {
                device: Some(e),
                syscall: None,
            }),
            Source::Syscall => sys::userfaultfd_syscall(flags).map_err(|e| CreateError {
                device: None,
                syscall: Some(e),
            }),
            Source::Auto => match from_device(flags) {
                Ok(fd) => Ok(fd),
                Err(device) => {
                    log::debug!("{}: {device}; trying userfaultfd(2)", sys::DEV_USERFAULTFD);
                    sys::userfaultfd_syscall(flags).map_err(|e| CreateError {
                        device: Some(device),
                        syscall: Some(e),
                    })
                }
            },
        }
    }
}

fn from_device(flags: u32) -> io::Result<OwnedFd> {
    let dev = rustix::fs::open(
        sys::DEV_USERFAULTFD,
        OFlags::RDWR | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    sys::userfaultfd_ioc_new(dev.as_fd(), flags)
}

/// No userfaultfd could be created; holds the error of each way tried.
#[derive(Debug)]
pub struct CreateError {
    /// Why `/dev/userfaultfd` failed, if tried.
    pub device: Option<io::Error>,
    /// Why `userfaultfd(2)` failed, if tried.
    pub syscall: Option<io::Error>,
}

impl std::fmt::Display for CreateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cannot create a userfaultfd")?;
        if let Some(e) = &self.device {
            write!(f, "; {}: {e}", sys::DEV_USERFAULTFD)?;
        }
        if let Some(e) = &self.syscall {
            write!(f, "; userfaultfd(2): {e}")?;
            if e.raw_os_error() == Some(libc::EPERM) {
                f.write_str(
                    " (needs CAP_SYS_PTRACE or vm.unprivileged_userfaultfd=1, \
                     or a user-mode-only fd)",
                )?;
            } else if e.raw_os_error() == Some(libc::ENOSYS) {
                f.write_str(" (kernel built without CONFIG_USERFAULTFD)")?;
            }
        }
        Ok(())
    }
}

/// Both causes are in the message (there can be two), so there is no single
/// `source()`.
impl std::error::Error for CreateError {}
