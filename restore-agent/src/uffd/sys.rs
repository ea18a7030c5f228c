//! The kernel ABI of userfaultfd and the only `unsafe` code of the layer.
//!
//! Everything here is a direct transcription of `include/uapi/linux/userfaultfd.h`:
//! the `#[repr(C)]` structures come from `linux-raw-sys`, the ioctl numbers are
//! computed with the `_IOWR` rules and checked at compile time against the values
//! `linux-raw-sys` ships (or, for the newest ioctls it does not ship yet, against
//! the numbers the kernel header expands to).
//!
//! # Safety model
//!
//! Every function here is safe to call. The reasoning, once for all:
//!
//! - The ioctl argument is always a live, exclusively borrowed structure of the
//!   exact type the opcode encodes (its size is part of the opcode and is checked
//!   below), so the kernel reads and writes only that structure.
//! - The ioctls that touch memory act on the address space the userfaultfd was
//!   created for, through the kernel's page tables, never through Rust references:
//!   `COPY`, `ZEROPAGE`, `CONTINUE` and `POISON` only fill pages that are *not
//!   present* (a present page gives `EEXIST`), and `WRITEPROTECT` only changes
//!   protection. Reads of memory in a registered range block in the kernel until
//!   the page is filled, so no Rust code can observe a page before and after it
//!   is filled. Memory registered with a userfaultfd must be raw memory whose
//!   content the program does not assume (fresh mappings, handed out as raw
//!   addresses); that contract starts at `UFFDIO_REGISTER`, which only records
//!   a range.
//! - `COPY` reads `len` bytes at `src` in the calling process: the wrappers take
//!   `src` as a `&[u8]`, so those bytes are live and initialised for the call.
//! - `MOVE` takes the source pages away from `src` (which reads as zeros
//!   afterwards): the wrapper takes `src` as `&mut [u8]`, which is exactly the
//!   right to change those bytes.
//! - `read(2)` writes whole messages into a byte buffer; a `FORK` message carries
//!   a file descriptor the kernel has just installed in our table for us, which
//!   is wrapped into an [`OwnedFd`] before anything else can happen (see
//!   [`read_messages`]). This is sound only because the bytes come from a
//!   userfaultfd: [`read_messages`] takes a [`Userfaultfd`], whose constructors
//!   guarantee it is one (a pipe could forge a FORK message naming any fd).

use std::ffi::c_ulong;
use std::io;
use std::mem::{offset_of, size_of};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use linux_raw_sys::general as k;
use linux_raw_sys::ioctl as kio;
use rustix::ioctl::opcode;

use super::Userfaultfd;

pub(super) use k::{
    uffd_msg, uffdio_api, uffdio_continue, uffdio_copy, uffdio_move, uffdio_poison, uffdio_range,
    uffdio_register, uffdio_writeprotect, uffdio_zeropage,
};

// ---------------------------------------------------------------------------
// Constants the kernel header defines but `linux-raw-sys` 0.12 does not ship.
// Values from include/uapi/linux/userfaultfd.h (Linux 6.18).

/// `UFFDIO_WRITEPROTECT_MODE_WP`: set (1) or clear (0) write protection.
pub(super) const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
/// `UFFDIO_WRITEPROTECT_MODE_DONTWAKE`: do not wake waiters when clearing.
pub(super) const UFFDIO_WRITEPROTECT_MODE_DONTWAKE: u64 = 1 << 1;
/// `UFFDIO_CONTINUE_MODE_DONTWAKE`.
pub(super) const UFFDIO_CONTINUE_MODE_DONTWAKE: u64 = 1 << 0;
/// `UFFDIO_CONTINUE_MODE_WP`: map the page write-protected.
pub(super) const UFFDIO_CONTINUE_MODE_WP: u64 = 1 << 1;
/// `UFFDIO_POISON_MODE_DONTWAKE`.
pub(super) const UFFDIO_POISON_MODE_DONTWAKE: u64 = 1 << 0;
/// `UFFDIO_MOVE_MODE_DONTWAKE`.
pub(super) const UFFDIO_MOVE_MODE_DONTWAKE: u64 = 1 << 0;
/// `UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES`.
pub(super) const UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES: u64 = 1 << 1;
/// `_UFFDIO_POISON`: ioctl number of `UFFDIO_POISON` (Linux 6.6).
pub(super) const NR_UFFDIO_POISON: u32 = 0x08;
/// Bit 31 of the context's feature word, set once `UFFDIO_API` succeeded
/// (`UFFD_FEATURE_INITIALIZED` in `fs/userfaultfd.c`; visible in fdinfo only).
pub(super) const UFFD_FEATURE_INITIALIZED: u64 = 1 << 31;
/// The API version this code speaks (`UFFD_API`).
pub(super) const UFFD_API: u64 = k::UFFD_API as u64;
/// `/dev/userfaultfd`, the device that hands out userfaultfds by ioctl (6.1+).
pub(super) const DEV_USERFAULTFD: &str = "/dev/userfaultfd";

// ---------------------------------------------------------------------------
// ioctl numbers: computed from the `_IOWR`/`_IOR`/`_IO` rules, then checked.

const UFFDIO: u8 = k::UFFDIO as u8;
pub(super) const UFFDIO_API: u32 = opcode::read_write::<uffdio_api>(UFFDIO, k::_UFFDIO_API as u8);
pub(super) const UFFDIO_REGISTER: u32 =
    opcode::read_write::<uffdio_register>(UFFDIO, k::_UFFDIO_REGISTER as u8);
// The kernel declares UNREGISTER and WAKE with `_IOR` although it reads the
// range (see the comment at the top of the uapi header); the number is what counts.
pub(super) const UFFDIO_UNREGISTER: u32 =
    opcode::read::<uffdio_range>(UFFDIO, k::_UFFDIO_UNREGISTER as u8);
pub(super) const UFFDIO_WAKE: u32 = opcode::read::<uffdio_range>(UFFDIO, k::_UFFDIO_WAKE as u8);
pub(super) const UFFDIO_COPY: u32 =
    opcode::read_write::<uffdio_copy>(UFFDIO, k::_UFFDIO_COPY as u8);
pub(super) const UFFDIO_ZEROPAGE: u32 =
    opcode::read_write::<uffdio_zeropage>(UFFDIO, k::_UFFDIO_ZEROPAGE as u8);
pub(super) const UFFDIO_MOVE: u32 =
    opcode::read_write::<uffdio_move>(UFFDIO, k::_UFFDIO_MOVE as u8);
pub(super) const UFFDIO_WRITEPROTECT: u32 =
    opcode::read_write::<uffdio_writeprotect>(UFFDIO, k::_UFFDIO_WRITEPROTECT as u8);
pub(super) const UFFDIO_CONTINUE: u32 =
    opcode::read_write::<uffdio_continue>(UFFDIO, k::_UFFDIO_CONTINUE as u8);
pub(super) const UFFDIO_POISON: u32 =
    opcode::read_write::<uffdio_poison>(UFFDIO, NR_UFFDIO_POISON as u8);
/// `USERFAULTFD_IOC_NEW` on `/dev/userfaultfd`: `_IO(0xAA, 0x00)`, the argument
/// is the flags integer itself and the return value is the new fd.
pub(super) const USERFAULTFD_IOC_NEW: u32 = opcode::none(k::USERFAULTFD_IOC as u8, 0x00);

// The numbers `linux-raw-sys` ships must match ours.
const _: () = assert!(UFFDIO_API == kio::UFFDIO_API);
const _: () = assert!(UFFDIO_REGISTER == kio::UFFDIO_REGISTER);
const _: () = assert!(UFFDIO_UNREGISTER == kio::UFFDIO_UNREGISTER);
const _: () = assert!(UFFDIO_WAKE == kio::UFFDIO_WAKE);
const _: () = assert!(UFFDIO_COPY == kio::UFFDIO_COPY);
const _: () = assert!(UFFDIO_ZEROPAGE == kio::UFFDIO_ZEROPAGE);
const _: () = assert!(UFFDIO_WRITEPROTECT == kio::UFFDIO_WRITEPROTECT);
const _: () = assert!(UFFDIO_CONTINUE == kio::UFFDIO_CONTINUE);
// Not in linux-raw-sys 0.12: checked against the kernel header's expansion.
const _: () = assert!(UFFDIO_MOVE == 0xC028_AA05);
const _: () = assert!(UFFDIO_POISON == 0xC020_AA08);
const _: () = assert!(USERFAULTFD_IOC_NEW == 0xAA00);

// Structure sizes: part of the ABI and of the ioctl numbers above.
const _: () = assert!(size_of::<uffd_msg>() == 32);
const _: () = assert!(size_of::<uffdio_api>() == 24);
const _: () = assert!(size_of::<uffdio_range>() == 16);
const _: () = assert!(size_of::<uffdio_register>() == 32);
const _: () = assert!(size_of::<uffdio_copy>() == 40);
const _: () = assert!(size_of::<uffdio_zeropage>() == 32);
const _: () = assert!(size_of::<uffdio_writeprotect>() == 24);
const _: () = assert!(size_of::<uffdio_continue>() == 32);
const _: () = assert!(size_of::<uffdio_poison>() == 32);
const _: () = assert!(size_of::<uffdio_move>() == 40);

// ---------------------------------------------------------------------------
// `struct uffd_msg` layout, decoded from bytes (see msg.rs):
//
//   0      1      2      4      8                16               24      32
//   +------+------+------+------+----------------+----------------+-------+
//   |event | res1 | res2 | res3 | arg (union, 24 bytes)                    |
//   +------+------+------+------+----------------+----------------+-------+
//   pagefault:                  | flags   u64    | address u64    | ptid u32
//   fork:                       | ufd u32
//   remap:                      | from    u64    | to      u64    | len u64
//   remove / unmap:             | start   u64    | end     u64    |
//
// The structure is packed; all fields are native-endian.

/// Size of one message as `read(2)` returns it.
pub(super) const MSG_SIZE: usize = size_of::<uffd_msg>();
/// Offset of the event byte.
pub(super) const MSG_EVENT: usize = offset_of!(uffd_msg, event);
/// Offset of the argument union, where every event's fields start.
pub(super) const MSG_ARG: usize = offset_of!(uffd_msg, arg);
/// Offsets of the page-fault fields.
pub(super) const MSG_PF_FLAGS: usize = MSG_ARG + offset_of!(PfArg, flags);
pub(super) const MSG_PF_ADDRESS: usize = MSG_ARG + offset_of!(PfArg, address);
pub(super) const MSG_PF_PTID: usize = MSG_ARG + offset_of!(PfArg, feat);
/// Offset of the fork event's new userfaultfd.
pub(super) const MSG_FORK_UFD: usize = MSG_ARG + offset_of!(ForkArg, ufd);
/// Offsets of the remap event's fields.
pub(super) const MSG_REMAP_FROM: usize = MSG_ARG + offset_of!(RemapArg, from);
pub(super) const MSG_REMAP_TO: usize = MSG_ARG + offset_of!(RemapArg, to);
pub(super) const MSG_REMAP_LEN: usize = MSG_ARG + offset_of!(RemapArg, len);
/// Offsets of the remove / unmap event's fields.
pub(super) const MSG_REMOVE_START: usize = MSG_ARG + offset_of!(RemoveArg, start);
pub(super) const MSG_REMOVE_END: usize = MSG_ARG + offset_of!(RemoveArg, end);

type PfArg = k::uffd_msg__bindgen_ty_1__bindgen_ty_1;
type ForkArg = k::uffd_msg__bindgen_ty_1__bindgen_ty_2;
type RemapArg = k::uffd_msg__bindgen_ty_1__bindgen_ty_3;
type RemoveArg = k::uffd_msg__bindgen_ty_1__bindgen_ty_4;

const _: () = assert!(MSG_EVENT == 0);
const _: () = assert!(MSG_ARG == 8);
const _: () = assert!(MSG_PF_FLAGS == 8 && MSG_PF_ADDRESS == 16 && MSG_PF_PTID == 24);
const _: () = assert!(MSG_FORK_UFD == 8);
const _: () = assert!(MSG_REMAP_FROM == 8 && MSG_REMAP_TO == 16 && MSG_REMAP_LEN == 24);
const _: () = assert!(MSG_REMOVE_START == 8 && MSG_REMOVE_END == 16);

/// `UFFD_EVENT_FORK`, needed here to adopt the new fd right after `read(2)`.
pub(super) const UFFD_EVENT_FORK: u8 = k::UFFD_EVENT_FORK as u8;

// ---------------------------------------------------------------------------
// Calls.

/// The one place that turns a raw `-1`/errno return into an `io::Error`.
fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Creates a userfaultfd with the `userfaultfd(2)` system call.
pub(super) fn userfaultfd_syscall(flags: u32) -> io::Result<OwnedFd> {
    let flags = rustix::mm::UserfaultfdFlags::from_bits_retain(flags);
    // SAFETY: the system call only creates a new fd; rustix marks it unsafe
    // because the fd is powerful, not because the call can break memory safety
    // (see the module's safety model for how the fd is used).
    unsafe { rustix::mm::userfaultfd(flags) }.map_err(io::Error::from)
}

/// Creates a userfaultfd with `USERFAULTFD_IOC_NEW` on an open `/dev/userfaultfd`.
pub(super) fn userfaultfd_ioc_new(dev: BorrowedFd<'_>, flags: u32) -> io::Result<OwnedFd> {
    // SAFETY: USERFAULTFD_IOC_NEW takes the flags by value (no pointer) and
    // returns a new fd; `dev` is a live fd for the duration of the call.
    let fd = cvt(unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            c_ulong::from(USERFAULTFD_IOC_NEW),
            flags as libc::c_int,
        )
    })?;
    // SAFETY: on success the ioctl returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Issues one `UFFDIO_*` ioctl whose argument is a pointer to `T`.
///
/// # Safety
///
/// `op` must be an ioctl that reads and/or writes exactly one `T` at the pointer
/// and has no other memory effect in the calling process, except those the
/// caller has established are sound (see the module docs).
unsafe fn uffd_ioctl<T>(fd: BorrowedFd<'_>, op: u32, arg: &mut T) -> io::Result<()> {
    // SAFETY: `arg` is a live exclusive borrow of a `T`; the caller guarantees
    // `op` expects exactly a `T`.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), c_ulong::from(op), std::ptr::from_mut(arg)) })
        .map(drop)
}

/// `UFFDIO_API`.
pub(super) fn api(fd: BorrowedFd<'_>, arg: &mut uffdio_api) -> io::Result<()> {
    // SAFETY: UFFDIO_API reads and writes one uffdio_api.
    unsafe { uffd_ioctl(fd, UFFDIO_API, arg) }
}

/// `UFFDIO_REGISTER`.
pub(super) fn register(fd: BorrowedFd<'_>, arg: &mut uffdio_register) -> io::Result<()> {
    // SAFETY: UFFDIO_REGISTER reads one uffdio_register and writes its `ioctls`;
    // registering only records the range (see the module's safety model).
    unsafe { uffd_ioctl(fd, UFFDIO_REGISTER, arg) }
}

/// `UFFDIO_UNREGISTER`.
pub(super) fn unregister(fd: BorrowedFd<'_>, arg: &mut uffdio_range) -> io::Result<()> {
    // SAFETY: UFFDIO_UNREGISTER reads one uffdio_range.
    unsafe { uffd_ioctl(fd, UFFDIO_UNREGISTER, arg) }
}

/// `UFFDIO_WAKE`.
pub(super) fn wake(fd: BorrowedFd<'_>, arg: &mut uffdio_range) -> io::Result<()> {
    // SAFETY: UFFDIO_WAKE reads one uffdio_range and only wakes threads.
    unsafe { uffd_ioctl(fd, UFFDIO_WAKE, arg) }
}

/// `UFFDIO_COPY` of `src` to `dst`; returns the ioctl result and the `copy` field.
pub(super) fn copy(fd: BorrowedFd<'_>, dst: u64, src: &[u8], mode: u64) -> (io::Result<()>, i64) {
    let mut arg = uffdio_copy {
        dst,
        src: src.as_ptr() as u64,
        len: src.len() as u64,
        mode,
        // Stays 0 when the kernel fails before writing it (EAGAIN because an
        // event is pending is returned before any work): 0 bytes done.
        copy: 0,
    };
    // SAFETY: UFFDIO_COPY reads one uffdio_copy, writes its `copy` field, reads
    // `src.len()` bytes at `src` (live and initialised: it is a `&[u8]`), and
    // fills only non-present pages in the target (module safety model).
    let res = unsafe { uffd_ioctl(fd, UFFDIO_COPY, &mut arg) };
    (res, arg.copy)
}

/// An inaccessible page of our address space, mapped once: the source of
/// [`probe_copy`]. Its address, or the error of the `mmap` that failed.
fn probe_source() -> io::Result<u64> {
    static SOURCE: std::sync::OnceLock<Result<u64, i32>> = std::sync::OnceLock::new();
    let mapped = SOURCE.get_or_init(|| {
        // SAFETY: a new PROT_NONE private mapping at an address the kernel
        // picks: it overlaps nothing, and it is never unmapped, read or
        // written (only handed to the kernel as a copy source that fails).
        let addr = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                rustix::param::page_size(),
                rustix::mm::ProtFlags::empty(),
                rustix::mm::MapFlags::PRIVATE | rustix::mm::MapFlags::NORESERVE,
            )
        };
        addr.map(|a| a as u64).map_err(|e| e.raw_os_error())
    });
    mapped.map_err(io::Error::from_raw_os_error)
}

/// `UFFDIO_COPY` of one page to `dst` from an inaccessible page of ours: it
/// can never fill anything (the kernel fails reading the source before it
/// installs a page), but it reaches the point where the kernel checks that
/// the target address space is alive (`ESRCH` when it is gone).
pub(super) fn probe_copy(fd: BorrowedFd<'_>, dst: u64) -> io::Result<()> {
    let mut arg = uffdio_copy {
        dst,
        src: probe_source()?,
        len: rustix::param::page_size() as u64,
        mode: k::UFFDIO_COPY_MODE_DONTWAKE.into(),
        copy: 0,
    };
    // SAFETY: UFFDIO_COPY reads one uffdio_copy and writes its `copy` field;
    // reading the source (a PROT_NONE page) fails inside the kernel with
    // EFAULT before any page is installed, so nothing in the target changes.
    unsafe { uffd_ioctl(fd, UFFDIO_COPY, &mut arg) }
}

/// `UFFDIO_ZEROPAGE`; returns the ioctl result and the `zeropage` field.
pub(super) fn zeropage(
    fd: BorrowedFd<'_>,
    range: uffdio_range,
    mode: u64,
) -> (io::Result<()>, i64) {
    let mut arg = uffdio_zeropage {
        range,
        mode,
        zeropage: 0,
    };
    // SAFETY: UFFDIO_ZEROPAGE reads one uffdio_zeropage, writes its last field,
    // and fills only non-present pages (module safety model).
    let res = unsafe { uffd_ioctl(fd, UFFDIO_ZEROPAGE, &mut arg) };
    (res, arg.zeropage)
}

/// `UFFDIO_CONTINUE`; returns the ioctl result and the `mapped` field.
pub(super) fn continue_(
    fd: BorrowedFd<'_>,
    range: uffdio_range,
    mode: u64,
) -> (io::Result<()>, i64) {
    let mut arg = uffdio_continue {
        range,
        mode,
        mapped: 0,
    };
    // SAFETY: UFFDIO_CONTINUE reads one uffdio_continue, writes its last field,
    // and maps pages already in the page cache where no pte exists.
    let res = unsafe { uffd_ioctl(fd, UFFDIO_CONTINUE, &mut arg) };
    (res, arg.mapped)
}

/// `UFFDIO_POISON`; returns the ioctl result and the `updated` field.
pub(super) fn poison(fd: BorrowedFd<'_>, range: uffdio_range, mode: u64) -> (io::Result<()>, i64) {
    let mut arg = uffdio_poison {
        range,
        mode,
        updated: 0,
    };
    // SAFETY: UFFDIO_POISON reads one uffdio_poison, writes its last field, and
    // installs poison markers only where no page is present.
    let res = unsafe { uffd_ioctl(fd, UFFDIO_POISON, &mut arg) };
    (res, arg.updated)
}

/// `UFFDIO_MOVE` of the pages under `src` to `dst`; returns the ioctl result and
/// the `move` field.
pub(super) fn move_(
    fd: BorrowedFd<'_>,
    dst: u64,
    src: &mut [u8],
    mode: u64,
) -> (io::Result<()>, i64) {
    let mut arg = uffdio_move {
        dst,
        src: src.as_mut_ptr() as u64,
        len: src.len() as u64,
        mode,
        move_: 0,
    };
    // SAFETY: UFFDIO_MOVE reads one uffdio_move, writes its last field, and
    // remaps the pages under `src` (which we borrow exclusively, so nothing else
    // observes them becoming zero) into non-present pages at `dst`.
    let res = unsafe { uffd_ioctl(fd, UFFDIO_MOVE, &mut arg) };
    (res, arg.move_)
}

/// `UFFDIO_WRITEPROTECT`.
pub(super) fn writeprotect(fd: BorrowedFd<'_>, arg: &mut uffdio_writeprotect) -> io::Result<()> {
    // SAFETY: UFFDIO_WRITEPROTECT reads one uffdio_writeprotect and changes
    // only page protection (and wakes threads).
    unsafe { uffd_ioctl(fd, UFFDIO_WRITEPROTECT, arg) }
}

/// Reads as many whole messages as fit into `raw` (a multiple of [`MSG_SIZE`]
/// bytes), without blocking if the fd is non-blocking, and wraps the descriptor
/// of every `FORK` message into `fds[i]` (`i` = message index) at once, so that
/// it is closed even if the caller never looks at the message.
///
/// Returns the number of messages read; `Ok(0)` means nothing was pending
/// (`EAGAIN`): `read(2)` on a userfaultfd never returns 0 otherwise.
pub(super) fn read_messages(
    uffd: &Userfaultfd,
    raw: &mut [u8],
    fds: &mut [Option<OwnedFd>],
) -> io::Result<usize> {
    debug_assert_eq!(
        raw.len() % MSG_SIZE,
        0,
        "message buffer holds whole messages"
    );
    debug_assert!(fds.len() * MSG_SIZE >= raw.len(), "one fd slot per message");
    let bytes = loop {
        match rustix::io::read(uffd.as_fd(), &mut *raw) {
            Ok(n) => break n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => return Ok(0),
            Err(e) => return Err(e.into()),
        }
    };
    if bytes % MSG_SIZE != 0 {
        // The kernel copies whole messages only. No FORK fd can be half-read,
        // so nothing leaks.
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("read {bytes} bytes from a userfaultfd, not a multiple of {MSG_SIZE}"),
        ));
    }
    let count = bytes / MSG_SIZE;
    for (msg, slot) in raw[..bytes].chunks_exact(MSG_SIZE).zip(fds.iter_mut()) {
        *slot = None;
        if msg[MSG_EVENT] == UFFD_EVENT_FORK {
            let ufd = u32::from_ne_bytes(
                msg[MSG_FORK_UFD..MSG_FORK_UFD + 4]
                    .try_into()
                    .expect("4-byte slice of a 32-byte message"),
            );
            // An fd is a non-negative int; anything else is not a kernel fd.
            if let Ok(raw_fd) = RawFd::try_from(ufd) {
                // SAFETY: `uffd` is a userfaultfd (the `Userfaultfd` invariant),
                // so this FORK message is the kernel's: it installed `ufd` in our
                // fd table during this read(2) and gave it to no one else; this
                // is the only place that takes ownership of it.
                *slot = Some(unsafe { OwnedFd::from_raw_fd(raw_fd) });
            }
        }
    }
    Ok(count)
}
