//! The userfaultfd layer: create or adopt a userfaultfd, negotiate its
//! features, register ranges, read and decode its messages, and resolve faults
//! with typed, exactly mapped errors.
//!
//! This is the thin, policy-free layer the page store, fault server and prefetch
//! pool are built on. Everything is safe: the range ioctls take any
//! [`BorrowedFd`]; reading messages takes a [`Userfaultfd`], because it trusts
//! the FORK messages it reads (see [`MsgBuffer`]). The only `unsafe` code is in
//! `sys.rs`.
//!
//! ```text
//!  OpenOptions::create ─┐                      ┌─► register / unregister
//!  (dev, or syscall)    ├─► handshake ─► Userfaultfd ─► copy / zeropage / continue_range
//!  adopt (received fd) ─┘   (UFFDIO_API)       │     poison / move_pages / wake / writeprotect
//!                                              └─► read_messages ─► MsgBuffer::drain ─► Event
//! ```
//!
//! # What users of this layer must know about the kernel
//!
//! Sources: `Documentation/admin-guide/mm/userfaultfd.rst`, ioctl_userfaultfd(2),
//! userfaultfd(2), `fs/userfaultfd.c` and `mm/userfaultfd.c`; the behaviours the
//! tests of this module check on this machine are marked *(tested)*.
//!
//! ## Faults
//!
//! - A thread touching a missing page of a MISSING-registered range blocks in the
//!   kernel and a PAGEFAULT message is queued. It stays blocked until a fill
//!   ioctl (`COPY`, `ZEROPAGE`, `CONTINUE`, `POISON`, `MOVE`) covering its page
//!   wakes it, or a [`wake`] covering its address does, or the range is
//!   unregistered, or the userfaultfd is closed. *(tested)*
//! - Faults happen only where no page is present: pages populated before the
//!   range was registered never fault (MISSING mode), and a page fills only once:
//!   a fill of a page that is already present fails with `EEXIST`
//!   ([`FillError::Exists`]) and changes nothing. *(tested)* `EEXIST` is normal
//!   when a prefetcher and the fault path race. Whoever filled the page woke
//!   the threads waiting then, unless it used `DONTWAKE`: so on `EEXIST` a
//!   server issues a [`wake`] for the page (cheap, and harmless if nobody waits).
//! - Several threads faulting on one page give one message each; the first fill
//!   wakes them all. A fault message can also be read *after* its fault was
//!   resolved by a concurrent fill; filling it again gives `EEXIST`.
//! - The faulting address is rounded down to the page unless `EXACT_ADDRESS`;
//!   flags say write / WP / MINOR (a read has none); with `THREAD_ID` the
//!   message names the faulting thread (as seen in its own pid namespace).
//!   *(tested)*
//! - Kernel-mode accesses (a `read(2)` into the range, `process_vm_readv`) fault
//!   and wait too, unless the fd was created user-mode-only (they get `EFAULT`).
//! - With the `SIGBUS` feature no message is sent: the faulting thread gets
//!   SIGBUS instead.
//!
//! ## Waking and batching
//!
//! By default each fill wakes the threads waiting on the range it filled, and
//! only that range (the kernel matches each waiter's address against it). With
//! `DONTWAKE` nobody is woken: fill a batch of ranges with `DONTWAKE`, then issue
//! one [`wake`] over the whole batch. *(tested)* A thread woken while its page
//! is still missing simply faults again, and a new message is queued. *(tested)*
//!
//! ## Non-cooperative events (FORK, REMAP, REMOVE, UNMAP)
//!
//! Enabled by the `EVENT_*` features. The target thread that causes one (in
//! `fork()`, `mremap()`, `madvise()`, `munmap()`) is **blocked until the event
//! has been read**: a server that stops reading stalls the target.
//!
//! - `FORK`: the child gets a copy of the parent's context (same features, same
//!   registrations) and the message carries a *new descriptor installed in the
//!   reader's fd table*; this layer wraps it into an [`OwnedFd`] inside the read,
//!   so it is never leaked. The child's faults arrive on that descriptor only;
//!   parent and child are served independently. Pages present in the parent at
//!   fork time are copied into the child (copy-on-write) and do not fault.
//!   *(tested)* A `fork()` that fails or is interrupted can still produce a
//!   (stale) FORK event (ioctl_userfaultfd(2), BUGS).
//! - `REMOVE` (`MADV_DONTNEED`, `MADV_REMOVE`): the range stays registered; its
//!   pages fault again later and must be served as zeros, never with old
//!   contents. *(tested)* The event is sent *before* the kernel zaps the range
//!   (`mm/madvise.c`), and fills are refused with `EAGAIN` until it is read.
//! - `UNMAP` (`munmap()`, a shrinking `mremap()`, and the old range of a
//!   moving `mremap()`): sent after the range is gone; it no longer faults and
//!   must no longer be filled (a fill there fails with `ENOENT`). *(tested)*
//! - `REMAP` (`mremap()` moving a range): `from`, `to`, `len`; the pages and the
//!   registration moved with the range: state follows it. With `EVENT_UNMAP`
//!   too, a move is reported as REMAP *then* UNMAP of the old range, so the
//!   UNMAP must not drop the state REMAP just moved. *(tested)*
//! - Without the matching feature the kernel does not stop the operation: it
//!   silently drops the registration (FORK: the child is not registered; REMAP:
//!   the moved range is unregistered).
//!
//! ## Ordering and `EAGAIN`
//!
//! Page faults and events sit in two queues, and `read(2)` returns **pending page
//! faults before pending events**, each queue in arrival order. So a fault can
//! be read before an event that happened earlier (e.g. a fault on a range whose
//! REMOVE is still queued). The kernel protects the server against acting on
//! such a stale view: from the moment an event starts until its reader has
//! consumed it and the target has resumed, every fill and `WRITEPROTECT` on the
//! context fails with `EAGAIN` ([`FillError::Again`] with `done == 0`). The rule
//! for servers: on `EAGAIN`, read and apply pending events (marking REMOVEd pages
//! zero, forgetting UNMAPped ranges, moving REMAPped ones), then retry the fill
//! if it still makes sense. `EAGAIN` with `done > 0` is partial progress instead:
//! retry from `start + done`. *(tested)*
//!
//! ## Errors that end service
//!
//! When the target process has exited, fills fail with `ESRCH`
//! ([`FillError::TargetGone`]) and [`register`] with `ENOMEM`. *(tested)*
//! Nothing else tells: the fd reports no `POLLHUP` when its process exits
//! (only when the fd itself is released); [`target_alive`] asks the kernel
//! without changing anything. *(tested)*
//! Closing the userfaultfd (the last descriptor of it) unregisters everything
//! and wakes every waiter: unserved pages then read as zeros (anonymous
//! memory). *(tested)* So a restore agent must not let the target outlive it
//! unnoticed.
//!
//! ## Per-ioctl notes
//!
//! - `ZEROPAGE` maps the shared zero page (anonymous) or a zeroed page (shmem);
//!   it does not exist for hugetlbfs ranges (check the [`Ioctls`] returned by
//!   [`register`]); serve zero hugepages with a `COPY` of zeros.
//! - `CONTINUE` resolves MINOR faults (shmem / hugetlbfs): the page is already in
//!   the page cache (written through another mapping or the file), only its
//!   mapping was missing; without a page-cache page it fails with `EFAULT`.
//!   *(tested)*
//! - `POISON` installs a marker: any later access to the page raises SIGBUS in
//!   the accessing thread, as for a hardware memory error. Used when a snapshot
//!   chunk is corrupt: the process dies on the bad page instead of reading
//!   wrong bytes. The marker counts as present for `ZEROPAGE` and `POISON`
//!   (`EEXIST`) but a `COPY` replaces it. *(tested)*
//! - `MOVE` remaps the source pages to the destination without copying (huge
//!   pages stay huge: measured, see DESIGN.md). The source must be private
//!   anonymous memory **in the userfaultfd's own address space**, so it suits
//!   in-process restore only; the destination must be registered and missing
//!   (`EEXIST` otherwise); a hole in the source gives `ENOENT` unless
//!   `ALLOW_SRC_HOLES`; a page shared with another process (copy-on-write after
//!   a fork) or pinned gives `EBUSY`. *(tested)*
//! - `WRITEPROTECT` needs a WP-registered range (`ENOENT` otherwise); clearing
//!   protection wakes the threads blocked on WP faults there unless `DONTWAKE`.
//!   *(tested)*
//!
//! ## Descriptors from elsewhere
//!
//! A VMM sends its guest-memory userfaultfd over a Unix socket; whole-process
//! restore takes one from a helper process with `pidfd_getfd`. Such a fd has
//! usually had its handshake done by its creator, and a second `UFFDIO_API`
//! fails with `EINVAL`. [`Userfaultfd::adopt`] reads the state from fdinfo
//! ([`handshake_state`]) and either does the handshake or takes the creator's
//! features; [`Userfaultfd::from_initialized`] takes the caller's word for
//! both. Either checks first that the fd is a userfaultfd at all. *(tested)*

mod features;
mod flags;
mod handshake;
mod msg;
mod open;
mod ops;
mod sys;

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::PathBuf;

pub use features::{Features, Ioctls, MissingFeatures, Support};
pub use handshake::{
    FdinfoError, HandshakeError, HandshakeState, MAX_FDINFO_LEN, handshake, handshake_state, probe,
};
pub use msg::{
    DecodeError, Drain, Event, ForkedUffd, MAX_MSGS_PER_READ, MsgBuffer, PageFault, PageFaultFlags,
    read_messages,
};
pub use open::{CreateError, OpenOptions, Source};
pub use ops::{
    ContinueMode, CopyMode, FillError, MoveMode, PoisonMode, Range, RegisterMode, WriteProtect,
    ZeroPageMode, continue_range, copy, move_pages, poison, register, target_alive, unregister,
    wake, writeprotect, zeropage,
};

/// What `/proc/self/fd/<fd>` links to for a userfaultfd.
const USERFAULTFD_LINK: &str = "anon_inode:[userfaultfd]";

/// An initialised userfaultfd (its `UFFDIO_API` handshake is done) and the
/// features enabled on it. Closing it (drop) unregisters every range it holds
/// and wakes every waiter (once no other descriptor refers to it).
///
/// Invariant: the descriptor is a userfaultfd. Every constructor makes sure of
/// it (created here, checked through `/proc/self/fd`, or handed over by the
/// kernel in a FORK message); [`read_messages`] relies on it for soundness.
#[derive(Debug)]
pub struct Userfaultfd {
    fd: OwnedFd,
    features: Features,
}

impl Userfaultfd {
    /// Creates a userfaultfd and enables exactly `features`.
    ///
    /// If the kernel lacks some, the error names them
    /// ([`HandshakeError::Unsupported`]).
    pub fn open(opts: &OpenOptions, features: Features) -> Result<Self, HandshakeError> {
        let fd = opts.create()?;
        handshake(fd.as_fd(), features)?;
        Ok(Self { fd, features })
    }

    /// Creates a userfaultfd with all of `required` and whatever of `optional`
    /// the kernel supports (probed on a throwaway fd first). Fails naming the
    /// missing features if `required` is not supported; the optional features
    /// left out are `optional - uffd.features()`.
    pub fn negotiate(
        opts: &OpenOptions,
        required: Features,
        optional: Features,
    ) -> Result<Self, HandshakeError> {
        let support = probe(opts)?;
        support.require(required)?;
        Self::open(opts, required | (optional & support.features))
    }

    /// Adopts a userfaultfd received from elsewhere, making sure it is usable by
    /// a server and has at least the `required` features.
    ///
    /// - Checks that `fd` is a userfaultfd at all (it may come from an
    ///   untrusted peer).
    /// - Sets `O_NONBLOCK` if it is missing: a server polls the fd, and `poll()`
    ///   on a blocking userfaultfd always reports `POLLERR`. This changes the
    ///   open file description, which the sender shares.
    /// - If its handshake is not done yet, does it with `required`; otherwise
    ///   checks the creator enabled every feature of `required`.
    pub fn adopt(fd: OwnedFd, required: Features) -> Result<Self, AdoptError> {
        check_is_userfaultfd(&fd)?;
        let raw = fd.as_raw_fd();
        let flags = rustix::fs::fcntl_getfl(&fd).map_err(|e| AdoptError::Inspect {
            fd: raw,
            source: e.into(),
        })?;
        if !flags.contains(rustix::fs::OFlags::NONBLOCK) {
            rustix::fs::fcntl_setfl(&fd, flags | rustix::fs::OFlags::NONBLOCK).map_err(|e| {
                AdoptError::Inspect {
                    fd: raw,
                    source: e.into(),
                }
            })?;
        }
        match handshake_state(fd.as_fd())? {
            HandshakeState::NotDone => {
                handshake(fd.as_fd(), required)?;
                Ok(Self {
                    fd,
                    features: required,
                })
            }
            HandshakeState::Done { features } => {
                let missing = required - features;
                if missing.is_empty() {
                    Ok(Self { fd, features })
                } else {
                    Err(AdoptError::NotEnabled {
                        missing,
                        enabled: features,
                    })
                }
            }
        }
    }

    /// Wraps a userfaultfd whose handshake is known to be done, with the
    /// features its creator enabled: no handshake, no probe of its state, no
    /// change of its flags. Only checks that `fd` is a userfaultfd.
    ///
    /// Use it when the sender's protocol says so; [`adopt`](Self::adopt)
    /// finds out by itself.
    pub fn from_initialized(fd: OwnedFd, features: Features) -> Result<Self, AdoptError> {
        check_is_userfaultfd(&fd)?;
        Ok(Self { fd, features })
    }

    /// Wraps the child's userfaultfd of a FORK event: the kernel copied the
    /// parent's context, so it has the parent's features and is initialised.
    pub fn from_fork(child: ForkedUffd, parent: &Userfaultfd) -> Self {
        Self {
            fd: child.into_fd(),
            features: parent.features,
        }
    }

    /// The features enabled on this userfaultfd.
    pub fn features(&self) -> Features {
        self.features
    }

    /// Gives the descriptor back.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

/// Checks through `/proc/self/fd` that `fd` is a userfaultfd (it may come from
/// an untrusted peer).
fn check_is_userfaultfd(fd: &OwnedFd) -> Result<(), AdoptError> {
    let raw = fd.as_raw_fd();
    let link = std::fs::read_link(format!("/proc/self/fd/{raw}"))
        .map_err(|source| AdoptError::Inspect { fd: raw, source })?;
    if link.as_os_str() == USERFAULTFD_LINK {
        Ok(())
    } else {
        Err(AdoptError::NotUserfaultfd {
            fd: raw,
            target: link,
        })
    }
}

impl AsFd for Userfaultfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A received descriptor could not be adopted as a userfaultfd.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    /// Inspecting the descriptor (`/proc/self/fd`, `fcntl`) failed.
    #[error("cannot inspect fd {fd}")]
    Inspect {
        /// The descriptor.
        fd: RawFd,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The descriptor is something else.
    #[error("fd {fd} is not a userfaultfd (it is {target:?})")]
    NotUserfaultfd {
        /// The descriptor.
        fd: RawFd,
        /// What it links to in `/proc/self/fd`.
        target: PathBuf,
    },
    /// Its fdinfo could not tell whether the handshake was done.
    #[error(transparent)]
    State(#[from] FdinfoError),
    /// The handshake it still needed failed.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// Its creator did the handshake without some required features (they
    /// cannot be added afterwards).
    #[error(
        "received userfaultfd lacks required features {missing} (its creator enabled: {enabled})"
    )]
    NotEnabled {
        /// Required features not enabled.
        missing: Features,
        /// The features its creator enabled.
        enabled: Features,
    },
}
