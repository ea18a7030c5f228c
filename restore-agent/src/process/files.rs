//! Files the restored process needs, opened by the agent *before* the helper is
//! created, so that the helper inherits them and no path ever has to be written into
//! its memory:
//!
//! ```text
//!  agent fd table                                helper (a fork of the agent)
//!  0 1 2 ... (the agent's own)                   close_range: gone
//!  base+0   /usr/lib/libc.so.6 (O_RDONLY)  ───►  mmap(..., base+0, offset)
//!  base+1   memfd "shm" (filled)           ───►  mmap(MAP_SHARED, base+1, ...)
//!  base+2   app.log (O_WRONLY|O_APPEND)    ───►  dup3(base+2, 3)
//!  base+3   /usr/bin/app (the exe)         ───►  prctl(PR_SET_MM_MAP, exe_fd)
//!  base+4   the cwd (O_PATH)               ───►  fchdir(base+4)
//!                                                close_range(base, ~0)
//! ```
//!
//! `base` is above every fd the captured process had, so installing the captured fds
//! (with `dup3`) never overwrites a source that is still needed. Each file is checked
//! on the very descriptor that will be used (`fstat`), so a file replaced between the
//! check and the mapping cannot slip through.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use rustix::fs::{Mode, OFlags};
use snapshot_format::FileIdentity;

use super::error::ProcessRestoreError;

/// The descriptors the helper inherits, each at a known number at or above `base`.
#[derive(Debug)]
pub(crate) struct Sources {
    base: i32,
    fds: Vec<OwnedFd>,
}

impl Sources {
    /// An empty set whose descriptors will be placed at `base` and above.
    pub(crate) fn new(base: i32) -> Self {
        Self {
            base,
            fds: Vec::new(),
        }
    }

    /// The lowest number a source may have.
    pub(crate) fn base(&self) -> i32 {
        self.base
    }

    /// Adds `fd` as a source; returns its number (in the agent, and so in the helper).
    pub(crate) fn add(&mut self, fd: impl AsFd) -> Result<i32, ProcessRestoreError> {
        let next = self.fds.last().map_or(self.base, |f| f.as_raw_fd() + 1);
        let placed =
            rustix::io::fcntl_dupfd_cloexec(fd, next).map_err(|e| ProcessRestoreError::Io {
                step: format!(
                    "cannot place a descriptor at fd {next} or above (raise the open-files \
                     limit, `ulimit -n`)"
                ),
                source: e.into(),
            })?;
        let number = placed.as_raw_fd();
        self.fds.push(placed);
        Ok(number)
    }

    /// The numbers in use, ascending.
    pub(crate) fn numbers(&self) -> Vec<i32> {
        self.fds.iter().map(AsRawFd::as_raw_fd).collect()
    }

    /// The source with number `number`.
    pub(crate) fn get(&self, number: i32) -> Option<&OwnedFd> {
        self.fds.iter().find(|f| f.as_raw_fd() == number)
    }
}

/// How strictly a reopened file must match what was captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// Same inode, size and modification time (mapped files, the executable: their
    /// bytes are part of the memory).
    Content(FileIdentity),
    /// Same inode (`st_dev`, `st_ino`): the file itself, whose content may have grown
    /// since (an open log file).
    Inode { dev: u64, inode: u64 },
    /// Same device number (`st_rdev`): a device node.
    Device { rdev: u64 },
    /// Nothing to compare.
    None,
}

/// Opens `path` with `flags` and checks it against `check`. `what` names the file in
/// errors ("mapped file", "the executable", "fd 3").
pub(crate) fn open_checked(
    what: &str,
    path: &Path,
    flags: OFlags,
    check: Check,
) -> Result<OwnedFd, ProcessRestoreError> {
    let open_error = |source: std::io::Error| ProcessRestoreError::Open {
        what: what.to_owned(),
        path: path.to_path_buf(),
        source,
    };
    let fd = rustix::fs::open(
        path,
        flags | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )
    .map_err(|e| open_error(e.into()))?;
    let st = rustix::fs::fstat(&fd).map_err(|e| open_error(e.into()))?;
    let changed = |change: String| ProcessRestoreError::FileChanged {
        what: what.to_owned(),
        path: path.to_path_buf(),
        change,
    };
    match check {
        Check::Content(id) => {
            let now = FileIdentity {
                dev: st.st_dev,
                inode: st.st_ino,
                size: st.st_size as u64,
                mtime_sec: st.st_mtime,
                mtime_nsec: st.st_mtime_nsec as u32,
            };
            if (now.dev, now.inode) != (id.dev, id.inode) {
                return Err(changed(format!(
                    "it is another file now (device {:#x} inode {}, captured device {:#x} \
                     inode {})",
                    now.dev, now.inode, id.dev, id.inode
                )));
            }
            if now.size != id.size {
                return Err(changed(format!(
                    "its size is {} bytes, it was {} bytes",
                    now.size, id.size
                )));
            }
            if (now.mtime_sec, now.mtime_nsec) != (id.mtime_sec, id.mtime_nsec) {
                return Err(changed(format!(
                    "it was modified (mtime {}.{:09}, captured {}.{:09})",
                    now.mtime_sec, now.mtime_nsec, id.mtime_sec, id.mtime_nsec
                )));
            }
        }
        Check::Inode { dev, inode } => {
            if (st.st_dev, st.st_ino) != (dev, inode) {
                return Err(changed(format!(
                    "it is another file now (device {:#x} inode {}, captured device {dev:#x} \
                     inode {inode})",
                    st.st_dev, st.st_ino
                )));
            }
        }
        Check::Device { rdev } => {
            if st.st_rdev != rdev {
                return Err(changed(format!(
                    "it is device {:#x}, it was device {rdev:#x}",
                    st.st_rdev
                )));
            }
        }
        Check::None => {}
    }
    Ok(fd)
}

/// A memfd of `size` bytes named `name` (for a shared memory object of the process).
pub(crate) fn memfd(name: &[u8], size: u64) -> Result<OwnedFd, ProcessRestoreError> {
    // memfd names are at most 249 bytes and cannot hold NUL.
    let clean: Vec<u8> = name.iter().copied().filter(|&b| b != 0).take(249).collect();
    let cname = CString::new(clean).unwrap_or_default();
    let fd = rustix::fs::memfd_create(cname.as_c_str(), rustix::fs::MemfdFlags::CLOEXEC).map_err(
        |e| ProcessRestoreError::Io {
            step: "cannot create a memfd for shared memory".to_owned(),
            source: e.into(),
        },
    )?;
    rustix::fs::ftruncate(&fd, size).map_err(|e| ProcessRestoreError::Io {
        step: format!("cannot size a memfd for shared memory to {size} bytes"),
        source: e.into(),
    })?;
    Ok(fd)
}
