//! Reading and decoding userfaultfd messages.
//!
//! One `read(2)` returns as many 32-byte `struct uffd_msg` as are pending and fit
//! in the buffer. [`MsgBuffer`] owns that buffer (allocated once, reused for every
//! read: the fault path allocates nothing) and one descriptor slot per message.
//!
//! ```text
//!   read(2) ──► raw:  [ msg 0 | msg 1 | msg 2 | ... ]      32 bytes each
//!               fds:  [ None  | Some  | None  | ... ]      FORK fds, owned at once
//!                          │
//!   drain() ──► Event::PageFault, Event::Fork { uffd }, Event::Remove, ...
//! ```
//!
//! A FORK message means the kernel has *installed a new descriptor in our table*
//! during the read. The descriptor is wrapped into an owned [`ForkedUffd`] inside
//! the read itself, before the caller sees any message, so it cannot leak: if
//! the caller drops the buffer, or reads again without draining, the unclaimed
//! descriptor is closed (which detaches the child from userfaultfd: its
//! registered ranges then fault like ordinary memory).
//!
//! Taking ownership of a number found in the data is only sound if the data
//! really comes from a userfaultfd: a pipe could carry a forged FORK message
//! naming any fd of the process. That is why [`read_messages`] takes a
//! [`Userfaultfd`], whose constructors guarantee it is one, and not any fd.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use linux_raw_sys::general as k;

use super::Userfaultfd;
use super::flags::flag_set;
use super::sys;

/// The most messages one [`MsgBuffer`] reads at once (a 32 KiB buffer).
pub const MAX_MSGS_PER_READ: usize = 1024;

flag_set! {
    /// `UFFD_PAGEFAULT_FLAG_*`: why a page fault was raised.
    pub struct PageFaultFlags;
    /// The access was a write (reads and instruction fetches have no flag).
    const WRITE = k::UFFD_PAGEFAULT_FLAG_WRITE;
    /// A write to a write-protected page of a WP-registered range.
    const WP = k::UFFD_PAGEFAULT_FLAG_WP;
    /// A minor fault: the page is in the page cache but not mapped
    /// (MINOR-registered shmem or hugetlbfs), resolved by `UFFDIO_CONTINUE`.
    const MINOR = k::UFFD_PAGEFAULT_FLAG_MINOR;
}

/// A page fault waiting to be resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageFault {
    /// The faulting address, rounded down to the page unless the context has
    /// [`Features::EXACT_ADDRESS`](super::Features::EXACT_ADDRESS).
    pub address: u64,
    /// Why the fault was raised.
    pub flags: PageFaultFlags,
    /// The faulting thread's id as seen in the faulting process's pid namespace,
    /// when the context has [`Features::THREAD_ID`](super::Features::THREAD_ID)
    /// (the kernel sends 0, decoded as `None`, otherwise).
    pub thread_id: Option<u32>,
}

/// One decoded userfaultfd message.
#[derive(Debug)]
pub enum Event {
    /// A thread is blocked on a page of a registered range.
    PageFault(PageFault),
    /// The target forked; `uffd` is the child's new userfaultfd, already
    /// initialised with the parent context's features and registrations
    /// (wrap it with [`Userfaultfd::from_fork`]).
    Fork {
        /// The child's userfaultfd (owned: closed on drop).
        uffd: ForkedUffd,
    },
    /// A registered range was moved by `mremap()`.
    Remap {
        /// Old start address.
        from: u64,
        /// New start address.
        to: u64,
        /// Length of the moved range (the old length).
        len: u64,
    },
    /// `madvise(MADV_DONTNEED / MADV_REMOVE)` dropped `[start, end)`: the range
    /// stays registered and its pages fault again (serve zeros).
    Remove {
        /// First byte of the range.
        start: u64,
        /// End of the range (exclusive).
        end: u64,
    },
    /// `[start, end)` was unmapped: no more faults come from it and it must not
    /// be filled any more.
    Unmap {
        /// First byte of the range.
        start: u64,
        /// End of the range (exclusive).
        end: u64,
    },
}

/// The child's userfaultfd from a FORK message: a descriptor the kernel
/// installed for us during the read. Only this module creates it, which is
/// what lets [`Userfaultfd::from_fork`] trust it without a check.
#[derive(Debug)]
pub struct ForkedUffd(OwnedFd);

impl ForkedUffd {
    /// The descriptor.
    pub fn into_fd(self) -> OwnedFd {
        self.0
    }
}

impl AsFd for ForkedUffd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// A message that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The event code is not one this code knows (a newer kernel or a
    /// feature this code did not request).
    #[error("unknown userfaultfd event {event:#x}")]
    UnknownEvent {
        /// The event byte.
        event: u8,
    },
    /// A FORK message whose descriptor is not a valid fd number.
    #[error("userfaultfd FORK message carries an invalid descriptor {raw}")]
    BadForkFd {
        /// The raw value of the message's `ufd` field.
        raw: u32,
    },
}

/// A reusable buffer for [`read_messages`]: room for up to `capacity` messages
/// and their FORK descriptors, allocated once.
#[derive(Debug)]
pub struct MsgBuffer {
    raw: Box<[u8]>,
    fds: Box<[Option<OwnedFd>]>,
    /// Messages filled by the last read.
    len: usize,
    /// Next message `drain` yields.
    pos: usize,
}

impl MsgBuffer {
    /// A buffer for `capacity` messages, clamped to `1..=MAX_MSGS_PER_READ`.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.clamp(1, MAX_MSGS_PER_READ);
        Self {
            raw: vec![0u8; capacity * sys::MSG_SIZE].into_boxed_slice(),
            fds: (0..capacity).map(|_| None).collect(),
            len: 0,
            pos: 0,
        }
    }

    /// How many messages one read can return.
    pub fn capacity(&self) -> usize {
        self.fds.len()
    }

    /// Messages of the last read not drained yet.
    pub fn pending(&self) -> usize {
        self.len - self.pos
    }

    /// Yields the messages of the last read, in the order the kernel returned
    /// them. Each message is yielded once; messages left undrained are dropped
    /// by the next read (closing their FORK descriptors).
    pub fn drain(&mut self) -> Drain<'_> {
        Drain { buf: self }
    }
}

/// Iterator over the messages of the last read; see [`MsgBuffer::drain`].
#[derive(Debug)]
pub struct Drain<'a> {
    buf: &'a mut MsgBuffer,
}

impl Iterator for Drain<'_> {
    type Item = Result<Event, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        let buf = &mut *self.buf;
        if buf.pos >= buf.len {
            return None;
        }
        let i = buf.pos;
        buf.pos += 1;
        let raw = &buf.raw[i * sys::MSG_SIZE..(i + 1) * sys::MSG_SIZE];
        Some(decode(raw, &mut buf.fds[i]))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.buf.pending();
        (n, Some(n))
    }
}

impl ExactSizeIterator for Drain<'_> {}

/// Reads every pending message that fits into `buf` (one `read(2)`), replacing
/// what the buffer held.
///
/// Returns the number of messages read. `Ok(0)` means nothing is pending: on a
/// non-blocking fd that is the normal "would block" outcome, not an error (a
/// readable `poll()` is no promise either: a fault can be resolved, and leave
/// the queue, between `poll()` and `read()`). On a blocking fd the call waits
/// for the first message.
pub fn read_messages(uffd: &Userfaultfd, buf: &mut MsgBuffer) -> io::Result<usize> {
    // Undrained FORK descriptors of the previous read are closed here (only
    // its slots can hold one).
    buf.fds[..buf.len].iter_mut().for_each(|slot| *slot = None);
    buf.len = 0;
    buf.pos = 0;
    let count = sys::read_messages(uffd, &mut buf.raw, &mut buf.fds)?;
    buf.len = count;
    Ok(count)
}

fn u64_at(raw: &[u8], offset: usize) -> u64 {
    u64::from_ne_bytes(
        raw[offset..offset + 8]
            .try_into()
            .expect("8-byte field inside a message"),
    )
}

fn u32_at(raw: &[u8], offset: usize) -> u32 {
    u32::from_ne_bytes(
        raw[offset..offset + 4]
            .try_into()
            .expect("4-byte field inside a message"),
    )
}

/// Decodes one 32-byte message; `fork_fd` is its descriptor slot.
fn decode(raw: &[u8], fork_fd: &mut Option<OwnedFd>) -> Result<Event, DecodeError> {
    let event = raw[sys::MSG_EVENT];
    match u32::from(event) {
        k::UFFD_EVENT_PAGEFAULT => {
            let ptid = u32_at(raw, sys::MSG_PF_PTID);
            Ok(Event::PageFault(PageFault {
                address: u64_at(raw, sys::MSG_PF_ADDRESS),
                flags: PageFaultFlags::from_bits_retain(u64_at(raw, sys::MSG_PF_FLAGS)),
                thread_id: (ptid != 0).then_some(ptid),
            }))
        }
        k::UFFD_EVENT_FORK => match fork_fd.take() {
            Some(fd) => Ok(Event::Fork {
                uffd: ForkedUffd(fd),
            }),
            None => Err(DecodeError::BadForkFd {
                raw: u32_at(raw, sys::MSG_FORK_UFD),
            }),
        },
        k::UFFD_EVENT_REMAP => Ok(Event::Remap {
            from: u64_at(raw, sys::MSG_REMAP_FROM),
            to: u64_at(raw, sys::MSG_REMAP_TO),
            len: u64_at(raw, sys::MSG_REMAP_LEN),
        }),
        k::UFFD_EVENT_REMOVE => Ok(Event::Remove {
            start: u64_at(raw, sys::MSG_REMOVE_START),
            end: u64_at(raw, sys::MSG_REMOVE_END),
        }),
        k::UFFD_EVENT_UNMAP => Ok(Event::Unmap {
            start: u64_at(raw, sys::MSG_REMOVE_START),
            end: u64_at(raw, sys::MSG_REMOVE_END),
        }),
        _ => Err(DecodeError::UnknownEvent { event }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(event: u32, words: [u64; 3]) -> [u8; 32] {
        let mut raw = [0u8; 32];
        raw[0] = u8::try_from(event).expect("event codes fit a byte");
        for (i, w) in words.iter().enumerate() {
            raw[8 + 8 * i..16 + 8 * i].copy_from_slice(&w.to_ne_bytes());
        }
        raw
    }

    #[test]
    fn decodes_a_page_fault_with_flags_and_thread_id() {
        let flags = u64::from(k::UFFD_PAGEFAULT_FLAG_WRITE | k::UFFD_PAGEFAULT_FLAG_WP);
        let raw = msg(k::UFFD_EVENT_PAGEFAULT, [flags, 0x7f00_1000, 4242]);
        match decode(&raw, &mut None) {
            Ok(Event::PageFault(pf)) => {
                assert_eq!(pf.address, 0x7f00_1000);
                assert_eq!(pf.flags, PageFaultFlags::WRITE | PageFaultFlags::WP);
                assert_eq!(pf.thread_id, Some(4242));
            }
            other => panic!("expected a page fault, got {other:?}"),
        }
        let raw = msg(k::UFFD_EVENT_PAGEFAULT, [0, 0x1000, 0]);
        match decode(&raw, &mut None) {
            Ok(Event::PageFault(pf)) => assert_eq!(pf.thread_id, None),
            other => panic!("expected a page fault, got {other:?}"),
        }
    }

    #[test]
    fn decodes_remap_remove_unmap() {
        let raw = msg(k::UFFD_EVENT_REMAP, [0x1000, 0x9000, 0x3000]);
        assert!(matches!(
            decode(&raw, &mut None),
            Ok(Event::Remap {
                from: 0x1000,
                to: 0x9000,
                len: 0x3000
            })
        ));
        let raw = msg(k::UFFD_EVENT_REMOVE, [0x2000, 0x4000, 0]);
        assert!(matches!(
            decode(&raw, &mut None),
            Ok(Event::Remove {
                start: 0x2000,
                end: 0x4000
            })
        ));
        let raw = msg(k::UFFD_EVENT_UNMAP, [0x2000, 0x4000, 0]);
        assert!(matches!(
            decode(&raw, &mut None),
            Ok(Event::Unmap {
                start: 0x2000,
                end: 0x4000
            })
        ));
    }

    #[test]
    fn unknown_event_and_fork_without_fd_are_typed_errors() {
        let raw = msg(0x7e, [0; 3]);
        assert_eq!(
            decode(&raw, &mut None).unwrap_err(),
            DecodeError::UnknownEvent { event: 0x7e }
        );
        let raw = msg(k::UFFD_EVENT_FORK, [u64::from(u32::MAX), 0, 0]);
        assert_eq!(
            decode(&raw, &mut None).unwrap_err(),
            DecodeError::BadForkFd { raw: u32::MAX }
        );
    }

    #[test]
    fn buffer_capacity_is_clamped() {
        assert_eq!(MsgBuffer::new(0).capacity(), 1);
        assert_eq!(MsgBuffer::new(usize::MAX).capacity(), MAX_MSGS_PER_READ);
        assert_eq!(MsgBuffer::new(16).pending(), 0);
    }
}
