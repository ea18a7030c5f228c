//! Test support for the userfaultfd tests: bounded waiting, raw memory
//! mappings, and forking. The `unsafe` code of the tests lives here only.
//!
//! Robustness rules the tests follow:
//! - every wait (a thread, a child, a message) has a deadline and fails the
//!   test with a message naming what did not happen;
//! - a thread that may block in a userfault owns the mapping it faults on, so
//!   no mapping is unmapped under a blocked thread; if the test fails, the
//!   userfaultfd is dropped during unwinding, which unregisters its ranges and
//!   wakes every blocked thread;
//! - a forked child only touches memory, compares bytes and `_exit`s;
//! - a mapping is never unmapped while a failing test unwinds (see
//!   `Mapping`'s `Drop`), and tests with `EVENT_UNMAP` unregister before they
//!   unmap, so no munmap waits for an UNMAP event nobody reads.

pub(crate) mod hugepages;
pub(crate) mod image;
pub(crate) mod target;

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use std::os::fd::AsFd;

use restore_agent::uffd::{Event, MsgBuffer, Range, Userfaultfd, read_messages};

/// How long any single wait in a test may take before the test fails.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(10);

/// The page size.
pub(crate) fn page() -> usize {
    rustix::param::page_size()
}

/// `page()` as a u64.
pub(crate) fn page64() -> u64 {
    page() as u64
}

// ---------------------------------------------------------------------------
// Bounded threads.

/// A thread whose result is awaited with a deadline.
pub(crate) struct Bounded<T> {
    name: String,
    rx: mpsc::Receiver<thread::Result<T>>,
}

/// Spawns `f` on a named thread whose result [`Bounded::join`] awaits.
pub(crate) fn spawn_bounded<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Bounded<T> {
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let _ = tx.send(result);
        })
        .expect("spawn test thread");
    Bounded {
        name: name.to_owned(),
        rx,
    }
}

impl<T> Bounded<T> {
    /// Waits up to `timeout` for the thread's result; fails the test if it does
    /// not finish (the thread is left behind, never joined) or if it panicked.
    pub(crate) fn join(self, timeout: Duration) -> T {
        match self.rx.recv_timeout(timeout) {
            Ok(Ok(value)) => value,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => panic!("thread {:?} did not finish within {timeout:?}", self.name),
        }
    }
}

// ---------------------------------------------------------------------------
// Messages.

/// Waits until `fd` is readable, up to `timeout`. Returns false on timeout.
pub(crate) fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ts = Timespec::try_from(left).expect("timeout fits a timespec");
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        match poll(&mut fds, Some(&ts)) {
            Ok(0) => return false,
            Ok(_) => {
                let revents = fds[0].revents();
                assert!(
                    !revents.contains(PollFlags::ERR),
                    "poll reports POLLERR on the userfaultfd (blocking fd or no handshake?)"
                );
                return true;
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => panic!("poll on the userfaultfd: {e}"),
        }
    }
}

/// Reads the messages of the next non-empty read within `timeout`; fails the
/// test naming `what` if none arrives.
pub(crate) fn next_events(uffd: &Userfaultfd, buf: &mut MsgBuffer, what: &str) -> Vec<Event> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero() && wait_readable(uffd.as_fd(), left),
            "no userfaultfd message ({what}) within {TIMEOUT:?}"
        );
        let n = read_messages(uffd, buf).expect("read userfaultfd messages");
        if n > 0 {
            return buf
                .drain()
                .map(|e| e.expect("decode userfaultfd message"))
                .collect();
        }
        // Readable but nothing to read: the fault was resolved in between.
    }
}

/// Reads exactly one message within `timeout`; fails if the read returns
/// another number of messages.
pub(crate) fn next_event(uffd: &Userfaultfd, buf: &mut MsgBuffer, what: &str) -> Event {
    let mut events = next_events(uffd, buf, what);
    assert_eq!(
        events.len(),
        1,
        "expected one message ({what}), got {events:?}"
    );
    events.pop().expect("one event")
}

/// The number of page faults queued and not read yet on `fd` (the `pending:`
/// line of its fdinfo; events are not counted).
pub(crate) fn pending_faults(fd: BorrowedFd<'_>) -> u64 {
    let path = format!("/proc/self/fdinfo/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
    let text = std::fs::read_to_string(&path).expect("read fdinfo");
    text.lines()
        .find_map(|l| l.strip_prefix("pending:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pending: line in {path}: {text:?}"))
}

/// Waits up to [`TIMEOUT`] until `fd` has `count` unread page faults queued.
pub(crate) fn wait_pending_faults(fd: BorrowedFd<'_>, count: u64) {
    let deadline = Instant::now() + TIMEOUT;
    while pending_faults(fd) < count {
        assert!(
            Instant::now() < deadline,
            "{count} faults not queued within {TIMEOUT:?}"
        );
        thread::sleep(Duration::from_millis(1));
    }
}

/// Asserts that no message is pending on `fd`.
pub(crate) fn assert_no_message(uffd: &Userfaultfd, buf: &mut MsgBuffer) {
    let n = read_messages(uffd, buf).expect("read userfaultfd messages");
    let events: Vec<_> = buf.drain().collect();
    assert_eq!(n, 0, "expected no pending message, got {events:?}");
}

// ---------------------------------------------------------------------------
// Raw mappings.

/// An owned `mmap` of `len` bytes at `addr`, unmapped on drop. Bytes are read
/// and written through raw pointers (the memory may be registered with a
/// userfaultfd, so its contents change outside of Rust's view).
#[derive(Debug)]
pub(crate) struct Mapping {
    addr: usize,
    len: usize,
}

fn check_map(ret: *mut libc::c_void, what: &str) -> usize {
    assert!(
        ret != libc::MAP_FAILED,
        "{what}: {}",
        io::Error::last_os_error()
    );
    ret as usize
}

impl Mapping {
    /// A fresh private anonymous mapping of `pages` pages (nothing populated).
    pub(crate) fn anon(pages: usize) -> Self {
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        Self::new(pages, flags, -1, "mmap anonymous")
    }

    /// A shared mapping of the first `pages` pages of `fd` (e.g. a memfd).
    pub(crate) fn shared(fd: BorrowedFd<'_>, pages: usize) -> Self {
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        Self::new(pages, libc::MAP_SHARED, raw, "mmap shared")
    }

    fn new(pages: usize, flags: libc::c_int, fd: libc::c_int, what: &str) -> Self {
        let len = pages * page();
        // SAFETY: a new read-write mapping at an address the kernel picks, so
        // it overlaps nothing; a file behind it is only accessed through this
        // mapping and `pwrite`.
        let ret = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                0,
            )
        };
        Self {
            addr: check_map(ret, what),
            len,
        }
    }

    /// Start address.
    pub(crate) fn addr(&self) -> u64 {
        self.addr as u64
    }

    /// The whole mapping as a range.
    pub(crate) fn range(&self) -> Range {
        Range::new(self.addr(), self.len as u64)
    }

    /// Address of page `i`.
    pub(crate) fn page_addr(&self, i: usize) -> u64 {
        assert!(i * page() < self.len, "page {i} outside the mapping");
        self.addr() + (i * page()) as u64
    }

    /// Range of `count` pages from page `i`.
    pub(crate) fn pages(&self, i: usize, count: usize) -> Range {
        assert!(
            (i + count) * page() <= self.len,
            "pages {i}+{count} outside the mapping"
        );
        Range::new(self.page_addr(i), (count * page()) as u64)
    }

    /// Copies `len` bytes from offset `off` (faulting pages in as needed).
    pub(crate) fn read(&self, off: usize, len: usize) -> Vec<u8> {
        assert!(off + len <= self.len, "read outside the mapping");
        (off..off + len)
            // SAFETY: in bounds of this live mapping; volatile because the
            // kernel fills these pages outside of Rust's view.
            .map(|i| unsafe { std::ptr::read_volatile((self.addr + i) as *const u8) })
            .collect()
    }

    /// Reads one byte at `off` (faulting its page in as needed).
    pub(crate) fn read_byte(&self, off: usize) -> u8 {
        assert!(off < self.len, "read outside the mapping");
        // SAFETY: in bounds of this live mapping; volatile (see `read`).
        unsafe { std::ptr::read_volatile((self.addr + off) as *const u8) }
    }

    /// Writes `data` at `off` (faulting pages in as needed).
    pub(crate) fn write(&mut self, off: usize, data: &[u8]) {
        assert!(off + data.len() <= self.len, "write outside the mapping");
        for (i, b) in data.iter().enumerate() {
            // SAFETY: in bounds of this live mapping, which `&mut self` gives
            // us exclusively.
            unsafe { std::ptr::write_volatile((self.addr + off + i) as *mut u8, *b) };
        }
    }

    /// The whole mapping as a slice (for MOVE's source, which must be ours).
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is live, readable and writable for `len` bytes,
        // and `&mut self` makes the borrow exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.addr as *mut u8, self.len) }
    }

    /// `madvise(MADV_DONTNEED)` on `count` pages from page `i`.
    pub(crate) fn dontneed(&mut self, i: usize, count: usize) {
        let r = self.pages(i, count);
        // SAFETY: the range is inside this mapping, which `&mut self` borrows
        // exclusively; dropping its pages only makes them read as zero again.
        let ret = unsafe {
            libc::madvise(
                r.start as *mut libc::c_void,
                r.len as usize,
                libc::MADV_DONTNEED,
            )
        };
        assert_eq!(
            ret,
            0,
            "madvise(MADV_DONTNEED): {}",
            io::Error::last_os_error()
        );
    }

    /// `mremap(MREMAP_MAYMOVE | MREMAP_FIXED)` onto `target`, which is consumed
    /// (the kernel unmaps it first).
    pub(crate) fn mremap_onto(self, target: Mapping) -> Mapping {
        let this = std::mem::ManuallyDrop::new(self);
        let target = std::mem::ManuallyDrop::new(target);
        // SAFETY: both ranges are mappings we own and consume here (neither is
        // unmapped again: ManuallyDrop).
        let ret = unsafe {
            libc::mremap(
                this.addr as *mut libc::c_void,
                this.len,
                target.len,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                target.addr as *mut libc::c_void,
            )
        };
        Mapping {
            addr: check_map(ret, "mremap fixed"),
            len: target.len,
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // While a failing test unwinds, leak the mapping: with EVENT_UNMAP
        // enabled, munmap would block until someone reads its UNMAP event, and
        // nobody will. The test process ends right after anyway.
        if thread::panicking() {
            return;
        }
        // SAFETY: we own this mapping and nothing refers to it any more.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

/// A page-sized buffer filled with a recognisable pattern for `seed`.
pub(crate) fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

// ---------------------------------------------------------------------------
// Processes.

/// A forked child process, killed and reaped on drop unless [`Child::wait`]
/// reaped it: a failing test never leaves a process behind (e.g. one blocked
/// on a fault of its own userfaultfd, which the test cannot close).
#[derive(Debug)]
pub(crate) struct Child {
    pid: rustix::process::Pid,
    reaped: bool,
}

/// Forks. In the child, runs `child` and `_exit`s with its return value (101
/// if it panics); in the parent, returns the child.
///
/// The child of a multi-threaded process may only do async-signal-safe work:
/// touch memory, compare bytes, make system calls. No allocation.
pub(crate) fn fork_child(child: impl FnOnce() -> i32) -> Child {
    // SAFETY: fork itself is sound; the child runs only `child` (which the
    // caller keeps async-signal-safe) and leaves with `_exit`, never returning
    // into the test harness or running destructors and atexit handlers.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(child)).unwrap_or(101);
        // SAFETY: ends the child without unwinding into the harness.
        unsafe { libc::_exit(code) };
    }
    let pid = rustix::process::Pid::from_raw(pid).expect("fork returned a positive pid");
    Child { pid, reaped: false }
}

impl Child {
    /// The child's pid.
    pub(crate) fn pid(&self) -> rustix::process::Pid {
        self.pid
    }

    /// Waits up to `timeout` for the child to end; on timeout kills it and
    /// fails the test.
    pub(crate) fn wait(mut self, timeout: Duration) -> rustix::process::WaitStatus {
        use rustix::process::{WaitOptions, waitpid};
        let deadline = Instant::now() + timeout;
        loop {
            match waitpid(Some(self.pid), WaitOptions::NOHANG) {
                Ok(Some((_, status))) => {
                    self.reaped = true;
                    return status;
                }
                Ok(None) => {}
                Err(e) => panic!("waitpid({:?}): {e}", self.pid),
            }
            // On panic, drop kills and reaps the child.
            assert!(
                Instant::now() < deadline,
                "child {:?} did not exit within {timeout:?}",
                self.pid
            );
            thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        use rustix::process::{Signal, WaitOptions, kill_process, waitpid};
        if !self.reaped {
            // SIGKILL also ends a thread blocked in a userfault (the wait is
            // killable).
            let _ = kill_process(self.pid, Signal::KILL);
            let _ = waitpid(Some(self.pid), WaitOptions::empty());
        }
    }
}

/// Sends `fd` over a Unix socket (SCM_RIGHTS), like a VMM handing over its
/// guest-memory userfaultfd.
pub(crate) fn send_fd(sock: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = [fd];
    assert!(
        control.push(SendAncillaryMessage::ScmRights(&fds)),
        "room for one fd"
    );
    sendmsg(
        sock,
        &[IoSlice::new(b"u")],
        &mut control,
        SendFlags::empty(),
    )?;
    Ok(())
}

/// Receives one fd sent with [`send_fd`].
pub(crate) fn recv_fd(sock: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, recvmsg};
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    recvmsg(
        sock,
        &mut [IoSliceMut::new(&mut byte)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let received = control.drain().find_map(|msg| match msg {
        RecvAncillaryMessage::ScmRights(mut fds) => fds.next(),
        _ => None,
    });
    received.ok_or_else(|| io::Error::other("no fd in the message"))
}

/// A connected pair of Unix stream sockets.
pub(crate) fn socket_pair() -> (OwnedFd, OwnedFd) {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};
    socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .expect("socketpair")
}
