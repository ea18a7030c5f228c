//! Safe wrappers over the range ioctls, with exact errno mapping.
//!
//! Every wrapper takes the userfaultfd as a [`BorrowedFd`], so it works the same
//! on a [`Userfaultfd`](super::Userfaultfd) or any fd the caller manages (the
//! `0xAA` ioctl group is reserved for userfaultfd, ioctl-number.rst: other fds
//! refuse these numbers with `ENOTTY`). Addresses are `u64`: they are addresses
//! in the userfaultfd's address space, which need not be ours.
//!
//! The ioctls that fill pages (`COPY`, `ZEROPAGE`, `CONTINUE`, `POISON`, `MOVE`)
//! share one outcome type, [`FillError`], because the fault server branches on
//! the same cases for all of them:
//!
//! | errno    | variant                    | what the caller does                      |
//! |----------|----------------------------|-------------------------------------------|
//! | —        | `Ok(len)`                  | done; waiters woken unless `DONTWAKE`     |
//! | `EEXIST` | [`FillError::Exists`]      | page already there: `wake()` and move on  |
//! | `EAGAIN` | [`FillError::Again`]       | read events, then retry from `done`       |
//! | `ENOENT` | [`FillError::NoEntry`]     | range unmapped or not ours / source hole  |
//! | `ESRCH`  | [`FillError::TargetGone`]  | the target process exited: stop serving   |
//! | `ENOMEM` | [`FillError::NoMemory`]    | kernel out of memory                      |
//! | `EBUSY`  | [`FillError::Busy`]        | MOVE: page pinned or shared: COPY instead |
//! | `EINVAL` | [`FillError::Invalid`]     | misaligned, bad mode, unsupported ioctl   |
//!
//! Partial progress: the kernel reports how many bytes it handled in the last
//! field of the ioctl structure, and turns *every* partial result into `EAGAIN`
//! (`fs/userfaultfd.c`: `ret = range.len == len ? 0 : -EAGAIN`). The bytes done
//! are in [`FillError::Again`]; retrying from `start + done` reports the real
//! reason for the stop (often `EEXIST`).

use std::io;
use std::os::fd::BorrowedFd;

use super::features::Ioctls;
use super::flags::flag_set;
use super::sys;

/// A page-aligned range of the userfaultfd's address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Range {
    /// First byte (page-aligned, or the ioctl fails with `EINVAL`).
    pub start: u64,
    /// Length in bytes (a non-zero multiple of the page size).
    pub len: u64,
}

impl Range {
    /// The range `[start, start + len)`.
    pub const fn new(start: u64, len: u64) -> Self {
        Self { start, len }
    }

    fn raw(self) -> sys::uffdio_range {
        sys::uffdio_range {
            start: self.start,
            len: self.len,
        }
    }
}

flag_set! {
    /// `UFFDIO_REGISTER_MODE_*`: which faults of a range are reported.
    pub struct RegisterMode;
    /// Faults on pages that are not present (anonymous, shmem, hugetlbfs).
    const MISSING = linux_raw_sys::general::UFFDIO_REGISTER_MODE_MISSING;
    /// Writes to write-protected pages (the kernel advertises support with
    /// the `PAGEFAULT_FLAG_WP` feature).
    const WP = linux_raw_sys::general::UFFDIO_REGISTER_MODE_WP;
    /// Faults on pages present in the page cache but not mapped (shmem,
    /// hugetlbfs; needs `MINOR_SHMEM` / `MINOR_HUGETLBFS`).
    const MINOR = linux_raw_sys::general::UFFDIO_REGISTER_MODE_MINOR;
}

flag_set! {
    /// `UFFDIO_COPY_MODE_*`.
    pub struct CopyMode;
    /// Do not wake threads waiting on the range (wake them later with
    /// [`wake`], e.g. once for a batch).
    const DONTWAKE = linux_raw_sys::general::UFFDIO_COPY_MODE_DONTWAKE;
    /// Map the copied pages write-protected (range registered MISSING | WP).
    const WP = linux_raw_sys::general::UFFDIO_COPY_MODE_WP;
}

flag_set! {
    /// `UFFDIO_ZEROPAGE_MODE_*`.
    pub struct ZeroPageMode;
    /// Do not wake threads waiting on the range.
    const DONTWAKE = linux_raw_sys::general::UFFDIO_ZEROPAGE_MODE_DONTWAKE;
}

flag_set! {
    /// `UFFDIO_CONTINUE_MODE_*`.
    pub struct ContinueMode;
    /// Do not wake threads waiting on the range.
    const DONTWAKE = sys::UFFDIO_CONTINUE_MODE_DONTWAKE;
    /// Map the pages write-protected.
    const WP = sys::UFFDIO_CONTINUE_MODE_WP;
}

flag_set! {
    /// `UFFDIO_POISON_MODE_*`.
    pub struct PoisonMode;
    /// Do not wake threads waiting on the range.
    const DONTWAKE = sys::UFFDIO_POISON_MODE_DONTWAKE;
}

flag_set! {
    /// `UFFDIO_MOVE_MODE_*`.
    pub struct MoveMode;
    /// Do not wake threads waiting on the destination.
    const DONTWAKE = sys::UFFDIO_MOVE_MODE_DONTWAKE;
    /// Count holes in the source as moved instead of failing with `ENOENT`
    /// (the destination stays missing there).
    const ALLOW_SRC_HOLES = sys::UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES;
}

/// What [`writeprotect`] does to a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteProtect {
    /// Write-protect the range: writes raise WP faults.
    Protect,
    /// Remove write protection; `wake` wakes the threads blocked on WP faults
    /// in the range (the usual way to resolve a WP fault).
    Unprotect {
        /// Wake the waiters (false = `UFFDIO_WRITEPROTECT_MODE_DONTWAKE`).
        wake: bool,
    },
}

/// Why a page-filling ioctl (`COPY`, `ZEROPAGE`, `CONTINUE`, `POISON`, `MOVE`)
/// or `WRITEPROTECT` did not complete. See the module table for what to do.
#[derive(Debug, thiserror::Error)]
pub enum FillError {
    /// `EEXIST`: a page in the range is already present (filled by someone else,
    /// or populated before registration). Nothing was changed at that page;
    /// the waiter, if any, still needs a [`wake`].
    #[error("page already present (EEXIST)")]
    Exists,
    /// `EAGAIN`: the address space is changing because a non-cooperative event
    /// (FORK, REMAP, REMOVE, UNMAP) is pending or being delivered, or the
    /// operation stopped part way. `done` bytes from the start were handled;
    /// read the pending events, then retry the rest.
    #[error("retry (EAGAIN): event pending or partial progress, {done} bytes done")]
    Again {
        /// Bytes handled before the stop (0 when refused up front).
        done: u64,
    },
    /// `ENOENT`: the destination is not mapped, or not registered with this
    /// userfaultfd (e.g. it was unmapped: an UNMAP event is or was pending);
    /// MOVE: also a hole in the source (see [`MoveMode::ALLOW_SRC_HOLES`]);
    /// WRITEPROTECT: the range is not registered in WP mode.
    #[error("no such page or mapping (ENOENT)")]
    NoEntry,
    /// `ESRCH`: the target address space is gone (the process exited).
    #[error("the target address space is gone (ESRCH)")]
    TargetGone,
    /// `ENOMEM`: the kernel could not allocate.
    #[error("out of memory (ENOMEM)")]
    NoMemory,
    /// `EBUSY`: MOVE could not take a source page (pinned, shared with another
    /// process, or in the swap cache): copy it instead.
    #[error("source page busy (EBUSY)")]
    Busy,
    /// `EINVAL`: misaligned or empty range, unknown mode bits, or an ioctl the
    /// range does not support (e.g. ZEROPAGE on hugetlbfs).
    #[error("invalid argument (EINVAL)")]
    Invalid,
    /// Any other error (e.g. `EFAULT`: `src` not readable, or CONTINUE on a
    /// page that is not in the page cache; `ENOSPC`: shmem full).
    #[error(transparent)]
    Other(io::Error),
}

impl FillError {
    /// Maps an ioctl failure and the kernel's progress field.
    fn from_ioctl(err: io::Error, progress: i64, len: u64) -> Self {
        // Partial progress is reported with EAGAIN by the kernel; keep it as
        // `Again` whatever the errno, so that no done bytes are ever lost.
        if let Ok(done) = u64::try_from(progress)
            && done > 0
            && done < len
        {
            return Self::Again { done };
        }
        match err.raw_os_error() {
            Some(libc::EEXIST) => Self::Exists,
            Some(libc::EAGAIN) => Self::Again { done: 0 },
            Some(libc::ENOENT) => Self::NoEntry,
            Some(libc::ESRCH) => Self::TargetGone,
            Some(libc::ENOMEM) => Self::NoMemory,
            Some(libc::EBUSY) => Self::Busy,
            Some(libc::EINVAL) => Self::Invalid,
            _ => Self::Other(err),
        }
    }

    /// The errno this error stands for, when it has one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Self::Exists => Some(libc::EEXIST),
            Self::Again { .. } => Some(libc::EAGAIN),
            Self::NoEntry => Some(libc::ENOENT),
            Self::TargetGone => Some(libc::ESRCH),
            Self::NoMemory => Some(libc::ENOMEM),
            Self::Busy => Some(libc::EBUSY),
            Self::Invalid => Some(libc::EINVAL),
            Self::Other(e) => e.raw_os_error(),
        }
    }
}

impl From<FillError> for io::Error {
    fn from(e: FillError) -> Self {
        match e {
            FillError::Other(e) => e,
            other => {
                let errno = other
                    .raw_os_error()
                    .expect("every mapped variant has an errno");
                io::Error::from_raw_os_error(errno)
            }
        }
    }
}

/// Turns `(ioctl result, progress field)` into bytes done or a [`FillError`].
fn fill_result((res, progress): (io::Result<()>, i64), len: u64) -> Result<u64, FillError> {
    match res {
        Ok(()) => Ok(len),
        Err(e) => Err(FillError::from_ioctl(e, progress, len)),
    }
}

/// `UFFDIO_REGISTER`: reports faults of `range` (which may span several VMAs)
/// to this userfaultfd, and returns the ioctls that work on it.
///
/// Errors: `EINVAL` (misaligned or empty range, no mapping in it, a VMA type
/// the mode does not support, e.g. MINOR on anonymous memory),
/// `EBUSY` (part of it is registered with another userfaultfd), `EPERM` (a
/// mapping that may never be writable, e.g. a read-only shared file mapping),
/// `ENOMEM` (also when the target address space is gone).
pub fn register(fd: BorrowedFd<'_>, range: Range, mode: RegisterMode) -> io::Result<Ioctls> {
    let mut arg = sys::uffdio_register {
        range: range.raw(),
        mode: mode.bits(),
        ioctls: 0,
    };
    sys::register(fd, &mut arg)?;
    Ok(Ioctls::from_bits_retain(arg.ioctls))
}

/// `UFFDIO_UNREGISTER`: stops reporting faults of `range`. Threads blocked on
/// MISSING faults in it are woken (they then fault like ordinary memory).
pub fn unregister(fd: BorrowedFd<'_>, range: Range) -> io::Result<()> {
    sys::unregister(fd, &mut range.raw())
}

/// `UFFDIO_WAKE`: wakes the threads blocked on faults in `range` (after
/// `DONTWAKE` fills, or after `EEXIST`).
pub fn wake(fd: BorrowedFd<'_>, range: Range) -> io::Result<()> {
    sys::wake(fd, &mut range.raw())
}

/// `UFFDIO_COPY`: atomically fills the missing pages at `dst` with `src`
/// (`src.len()` a multiple of the page size) and, unless `DONTWAKE`, wakes the
/// threads waiting on the filled range. Returns the bytes copied (`src.len()`).
pub fn copy(fd: BorrowedFd<'_>, dst: u64, src: &[u8], mode: CopyMode) -> Result<u64, FillError> {
    let len = src.len() as u64;
    fill_result(sys::copy(fd, dst, src, mode.bits()), len)
}

/// Whether the address space behind the userfaultfd still exists: false once
/// the target process has exited (the kernel answers `ESRCH`).
///
/// A userfaultfd gives no sign when its process exits (no `POLLHUP`: that
/// only comes when the fd itself is released), and fills only fail once
/// attempted. This probe attempts a `UFFDIO_COPY` of one page to `probe`
/// (any page-aligned user address, e.g. the start of a registered range)
/// from an inaccessible page of the calling process: the kernel checks the
/// target address space, then fails reading the source (`EFAULT`) or finding
/// the destination (`ENOENT`) before it could install anything, so the probe
/// never changes the target. *(tested)*
pub fn target_alive(fd: BorrowedFd<'_>, probe: u64) -> io::Result<bool> {
    match sys::probe_copy(fd, probe) {
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(false),
        Err(e)
            if e.raw_os_error() == Some(libc::EBADF) || e.raw_os_error() == Some(libc::ENOTTY) =>
        {
            Err(e)
        }
        // EFAULT, ENOENT, EAGAIN (an event is pending), EINVAL (a hugetlbfs
        // range): the address space is there.
        _ => Ok(true),
    }
}

/// `UFFDIO_ZEROPAGE`: maps the zero page at the missing pages of `range`
/// (anonymous: the shared zero page; shmem: a zeroed page). Not available on
/// hugetlbfs ranges (`EINVAL`; check the ioctls [`register`] returned).
pub fn zeropage(fd: BorrowedFd<'_>, range: Range, mode: ZeroPageMode) -> Result<u64, FillError> {
    fill_result(sys::zeropage(fd, range.raw(), mode.bits()), range.len)
}

/// `UFFDIO_CONTINUE`: resolves MINOR faults by mapping the pages that are
/// already in the page cache for `range` (`EFAULT`, as
/// [`FillError::Other`], where the page cache has no page).
pub fn continue_range(
    fd: BorrowedFd<'_>,
    range: Range,
    mode: ContinueMode,
) -> Result<u64, FillError> {
    fill_result(sys::continue_(fd, range.raw(), mode.bits()), range.len)
}

/// `UFFDIO_POISON`: marks the missing pages of `range` as poisoned: any access
/// raises SIGBUS in the accessing thread (as for a hardware memory error),
/// until the marker is dropped (`MADV_DONTNEED`, unmap) or replaced by a
/// [`copy`] (which is allowed over a marker; `ZEROPAGE` and `POISON` are not:
/// `EEXIST`).
pub fn poison(fd: BorrowedFd<'_>, range: Range, mode: PoisonMode) -> Result<u64, FillError> {
    fill_result(sys::poison(fd, range.raw(), mode.bits()), range.len)
}

/// `UFFDIO_MOVE`: moves the pages under `src` to the missing pages at `dst`
/// without copying; `src` reads as zeros afterwards.
///
/// The kernel looks `src` up in the *userfaultfd's* address space, and `src`
/// here is memory of the calling process: use MOVE only with a userfaultfd of
/// the calling process (in-process restore). Both ranges must be private
/// anonymous memory, page-aligned; `dst` must be registered with this
/// userfaultfd and missing. Returns the bytes moved.
pub fn move_pages(
    fd: BorrowedFd<'_>,
    dst: u64,
    src: &mut [u8],
    mode: MoveMode,
) -> Result<u64, FillError> {
    let len = src.len() as u64;
    fill_result(sys::move_(fd, dst, src, mode.bits()), len)
}

/// `UFFDIO_WRITEPROTECT`: sets or clears write protection on `range` (which
/// must be registered in WP mode: `ENOENT` otherwise).
pub fn writeprotect(fd: BorrowedFd<'_>, range: Range, op: WriteProtect) -> Result<(), FillError> {
    let mode = match op {
        WriteProtect::Protect => sys::UFFDIO_WRITEPROTECT_MODE_WP,
        WriteProtect::Unprotect { wake: true } => 0,
        WriteProtect::Unprotect { wake: false } => sys::UFFDIO_WRITEPROTECT_MODE_DONTWAKE,
    };
    let mut arg = sys::uffdio_writeprotect {
        range: range.raw(),
        mode,
    };
    sys::writeprotect(fd, &mut arg).map_err(|e| FillError::from_ioctl(e, 0, range.len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_mapping_is_exact() {
        let map = |errno| FillError::from_ioctl(io::Error::from_raw_os_error(errno), -1, 4096);
        assert!(matches!(map(libc::EEXIST), FillError::Exists));
        assert!(matches!(map(libc::EAGAIN), FillError::Again { done: 0 }));
        assert!(matches!(map(libc::ENOENT), FillError::NoEntry));
        assert!(matches!(map(libc::ESRCH), FillError::TargetGone));
        assert!(matches!(map(libc::ENOMEM), FillError::NoMemory));
        assert!(matches!(map(libc::EBUSY), FillError::Busy));
        assert!(matches!(map(libc::EINVAL), FillError::Invalid));
        assert!(
            matches!(map(libc::EFAULT), FillError::Other(ref e) if e.raw_os_error() == Some(libc::EFAULT))
        );
        for errno in [
            libc::EEXIST,
            libc::EAGAIN,
            libc::ENOENT,
            libc::ESRCH,
            libc::EFAULT,
        ] {
            assert_eq!(io::Error::from(map(errno)).raw_os_error(), Some(errno));
        }
    }

    #[test]
    fn partial_progress_is_kept() {
        let eagain = io::Error::from_raw_os_error(libc::EAGAIN);
        assert!(matches!(
            FillError::from_ioctl(eagain, 8192, 4 * 4096),
            FillError::Again { done: 8192 }
        ));
        // A negative progress field is the errno again: nothing done.
        let eexist = io::Error::from_raw_os_error(libc::EEXIST);
        assert!(matches!(
            FillError::from_ioctl(eexist, -i64::from(libc::EEXIST), 4096),
            FillError::Exists
        ));
    }
}
