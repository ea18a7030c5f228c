//! The baseline page-fault handler: what the common example handlers do
//! (Firecracker's `on_demand_handler` and its kin). Small on purpose.
//!
//! - `mmap` the raw, uncompressed guest memory file;
//! - accept one VMM at a time; one `recvmsg` of the handshake into a 4 KiB
//!   buffer (JSON regions + the userfaultfd);
//! - loop: `poll` the userfaultfd (blocking), read the messages, and for each
//!   page fault copy *the faulting page* from the file with one
//!   `UFFDIO_COPY` (`EEXIST`: someone else filled it, wake the waiter);
//! - the VMM is gone when its socket hangs up or a copy answers `ESRCH`.
//!
//! No prefetch, no batching, no spinning, no decompression: the file sits in
//! the page cache (it was just written), so a fault costs a read of the
//! message, a 4 KiB copy and the wake-ups. It uses the same userfaultfd
//! layer as Lazarus (`restore_agent::uffd`), so the comparison is of the
//! strategies, not of the system-call wrappers.

use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Instant;

use hdrhistogram::Histogram;

use fixtures::sys::Mapping;
use restore_agent::uffd::{
    CopyMode, Event, Features, FillError, MsgBuffer, Range, Userfaultfd, copy, read_messages, wake,
};
use rustix::event::{PollFd, PollFlags, poll};
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

/// The handshake buffer of the example handlers.
const HANDSHAKE_BUF: usize = 4096;
/// Messages read per `read(2)`.
const BATCH: usize = 16;
/// Longest fault service time the in-process handler's histogram holds, ns.
const LATENCY_MAX_NS: u64 = 60_000_000_000;

/// One region of the handshake.
#[derive(Debug, serde::Deserialize)]
struct Region {
    base_host_virt_addr: u64,
    size: u64,
    offset: u64,
}

/// A running baseline handler (one thread).
#[derive(Debug)]
pub(crate) struct Baseline {
    socket: PathBuf,
    stop: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

impl Baseline {
    /// Listens on `socket` and serves VMMs, one at a time, from `memfile`.
    pub(crate) fn start(memfile: &Path, socket: &Path) -> std::io::Result<Self> {
        let file = std::fs::File::open(memfile)?;
        let len = usize::try_from(file.metadata()?.len())
            .map_err(|_| std::io::Error::other("memory file too large"))?;
        let memory = Mapping::file_read_only(&file, len)?;
        let listener = UnixListener::bind(socket)?;
        let stop = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC)?;
        let stop_rx = stop.try_clone()?;
        let thread = std::thread::Builder::new()
            .name("baseline-handler".into())
            .spawn(move || {
                while let Some(stream) = accept(&listener, &stop_rx) {
                    if let Err(e) = serve_one(&stream, memory.bytes(), &stop_rx) {
                        eprintln!("baseline handler: {e}");
                    }
                }
            })?;
        Ok(Self {
            socket: socket.to_path_buf(),
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        let _ = rustix::io::write(&self.stop, &1u64.to_ne_bytes());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Waits for a connection; `None` when told to stop.
fn accept(listener: &UnixListener, stop: &OwnedFd) -> Option<UnixStream> {
    let mut fds = [
        PollFd::new(stop, PollFlags::IN),
        PollFd::new(listener, PollFlags::IN),
    ];
    loop {
        match poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return None,
        }
        if !fds[0].revents().is_empty() {
            return None;
        }
        if let Ok((s, _)) = listener.accept() {
            return Some(s);
        }
    }
}

/// Serves one VMM until it is gone (or the handler stops).
fn serve_one(stream: &UnixStream, file: &[u8], stop: &OwnedFd) -> std::io::Result<()> {
    let mut buf = [0u8; HANDSHAKE_BUF];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let n = rustix::net::recvmsg(
        stream,
        &mut [IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?
    .bytes;
    let fd = control
        .drain()
        .find_map(|m| match m {
            RecvAncillaryMessage::ScmRights(mut fds) => fds.next(),
            _ => None,
        })
        .ok_or_else(|| std::io::Error::other("no userfaultfd in the handshake"))?;
    let regions: Vec<Region> = serde_json::from_slice(&buf[..n])
        .map_err(|e| std::io::Error::other(format!("handshake: {e}")))?;
    let uffd = Userfaultfd::from_initialized(fd, Features::EVENT_REMOVE)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    serve_faults(&uffd, &regions, file, stop, Some(stream), None)
}

/// The handler's loop: serves the page faults of `uffd` from `file` (each
/// region's bytes at its `offset`) until `stop` is signalled, `peer` hangs up
/// or the target is gone. With `latency`, records each fault's service time
/// (from the read that returned it to the end of its copy), in ns.
fn serve_faults(
    uffd: &Userfaultfd,
    regions: &[Region],
    file: &[u8],
    stop: &OwnedFd,
    peer: Option<&UnixStream>,
    mut latency: Option<&mut Histogram<u64>>,
) -> std::io::Result<()> {
    let page = rustix::param::page_size() as u64;
    let mut msgs = MsgBuffer::new(BATCH);
    loop {
        let n = if peer.is_some() { 3 } else { 2 };
        let mut fds = [
            PollFd::new(stop, PollFlags::IN),
            PollFd::new(uffd, PollFlags::IN),
            match peer {
                Some(peer) => PollFd::new(peer, PollFlags::RDHUP),
                None => PollFd::new(stop, PollFlags::IN),
            },
        ];
        match poll(&mut fds[..n], None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
        // Stopped, or the peer hung up.
        if !fds[0].revents().is_empty() || (n == 3 && !fds[2].revents().is_empty()) {
            return Ok(());
        }
        read_messages(uffd, &mut msgs)?;
        let read_at = Instant::now();
        for msg in msgs.drain() {
            let Ok(Event::PageFault(pf)) = msg else {
                continue;
            };
            let addr = pf.address & !(page - 1);
            let Some(r) = regions
                .iter()
                .find(|r| (r.base_host_virt_addr..r.base_host_virt_addr + r.size).contains(&addr))
            else {
                continue;
            };
            let at = (r.offset + addr - r.base_host_virt_addr) as usize;
            let Some(src) = file.get(at..at + page as usize) else {
                return Err(std::io::Error::other(format!(
                    "fault at {addr:#x}: beyond the memory file"
                )));
            };
            match copy(uffd.as_fd(), addr, src, CopyMode::empty()) {
                Ok(_) => {}
                Err(FillError::Exists) => {
                    let _ = wake(uffd.as_fd(), Range::new(addr, page));
                }
                Err(FillError::TargetGone) => return Ok(()),
                Err(e) => return Err(std::io::Error::other(e.to_string())),
            }
            if let Some(h) = latency.as_deref_mut() {
                h.saturating_record(read_at.elapsed().as_nanos() as u64);
            }
        }
    }
}

/// The same handler serving memory of this process: a range of an anonymous
/// mapping registered with a new userfaultfd, filled from a raw file (the
/// in-process baseline of `lazarus bench`, module `bench::replay`).
#[derive(Debug)]
pub(crate) struct InProcess {
    stop: OwnedFd,
    thread: Option<JoinHandle<std::io::Result<Histogram<u64>>>>,
}

impl InProcess {
    /// Registers `[addr, addr + len)` (page-aligned, mapped anonymous and
    /// untouched: every first access faults) and serves it from `memfile`
    /// (byte `i` of the range is byte `i` of the file).
    pub(crate) fn start(memfile: &Path, addr: u64, len: u64) -> std::io::Result<Self> {
        let file = std::fs::File::open(memfile)?;
        let file_len = usize::try_from(file.metadata()?.len())
            .map_err(|_| std::io::Error::other("memory file too large"))?;
        let memory = Mapping::file_read_only(&file, file_len)?;
        let fd = fixtures::sys::userfaultfd(fixtures::sys::UFFD_FEATURE_EVENT_REMOVE)?;
        fixtures::sys::userfaultfd_register(fd.as_fd(), addr as usize, len as usize)?;
        let uffd = Userfaultfd::from_initialized(fd, Features::EVENT_REMOVE)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let stop = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC)?;
        let stop_rx = stop.try_clone()?;
        let regions = [Region {
            base_host_virt_addr: addr,
            size: len,
            offset: 0,
        }];
        let thread = std::thread::Builder::new()
            .name("baseline-inproc".into())
            .spawn(move || {
                let mut h = Histogram::new_with_bounds(1, LATENCY_MAX_NS, 3)
                    .expect("static histogram bounds are valid");
                serve_faults(
                    &uffd,
                    &regions,
                    memory.bytes(),
                    &stop_rx,
                    None,
                    Some(&mut h),
                )?;
                Ok(h)
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the handler; returns its fault service times (ns). The range
    /// must not be touched any more (its unserved pages would block).
    pub(crate) fn stop(mut self) -> std::io::Result<Histogram<u64>> {
        let _ = rustix::io::write(&self.stop, &1u64.to_ne_bytes());
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            _ => Err(std::io::Error::other("the baseline handler panicked")),
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        let _ = rustix::io::write(&self.stop, &1u64.to_ne_bytes());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
