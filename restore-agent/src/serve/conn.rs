//! The control thread: accepts VMMs, reads their handshakes without ever
//! blocking on one, turns them into fault-server spaces, watches the live
//! sockets, and ends connections when the fault server reports their space
//! gone. See the parent module for the design.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use rustix::event::{PollFd, PollFlags};

use super::protocol::{self, HandshakeScanner, MAX_HANDSHAKE_BYTES, Scan};
use super::socket::{self, Listener};
use super::{
    ConnectionInfo, EndReason, HandshakeError, MAX_CONNECTIONS, MAX_PENDING_HANDSHAKES, Shared,
    TICK,
};
use crate::server::{GoneReason, ServerEvent};
use crate::uffd::{Features, Userfaultfd};

/// Bytes read per `recvmsg` (a Firecracker handshake is ~110 bytes per
/// region).
const READ_CHUNK: usize = 16 * 1024;

/// Unexpected bytes read from a live connection per wake-up (and dropped).
const NOISE_CHUNK: usize = 4096;

/// Tells the control thread to stop (an eventfd in its poll set).
#[derive(Debug)]
pub(super) struct StopSignal {
    fd: OwnedFd,
}

impl StopSignal {
    pub(super) fn new() -> std::io::Result<Self> {
        use rustix::event::{EventfdFlags, eventfd};
        Ok(Self {
            fd: eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?,
        })
    }

    /// Wakes the control thread, which then stops.
    pub(super) fn raise(&self) {
        // EAGAIN means the counter is saturated: raised already.
        let _ = rustix::io::write(&self.fd, &1u64.to_ne_bytes());
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A connection whose handshake is still arriving.
struct Pending {
    id: u64,
    pid: Option<u32>,
    stream: UnixStream,
    buf: Vec<u8>,
    fds: Vec<OwnedFd>,
    scanner: HandshakeScanner,
    deadline: Instant,
}

/// How far a pending handshake got.
enum Progress {
    /// Waiting for more bytes.
    NotYet,
    /// The array is complete: its length.
    Complete(usize),
}

/// A served connection's socket.
struct LiveSocket {
    id: u64,
    space: crate::SpaceId,
    stream: UnixStream,
    /// The client closed its end (it may still run: see the module docs).
    hung_up: bool,
    /// Unexpected bytes after the handshake were reported once.
    noise_reported: bool,
}

/// The control thread's state.
pub(super) struct Control {
    shared: Arc<Shared>,
    listener: Listener,
    stop: Arc<StopSignal>,
    server_events: Receiver<ServerEvent>,
    pending: Vec<Pending>,
    live: Vec<LiveSocket>,
}

/// What a poll said about one descriptor of the set.
#[derive(Clone, Copy)]
enum Slot {
    Stop,
    Listener,
    Pending(usize),
    Live(usize),
}

impl Control {
    pub(super) fn new(shared: Arc<Shared>, listener: Listener, stop: Arc<StopSignal>) -> Self {
        let server_events = shared.server.events();
        Self {
            shared,
            listener,
            stop,
            server_events,
            pending: Vec::new(),
            live: Vec::new(),
        }
    }

    /// The thread body: runs until the stop signal; then closes the
    /// listener (unlinking the socket) and every client socket.
    pub(super) fn run(mut self) {
        loop {
            let ready = self.poll();
            let mut stop = false;
            let mut accept = false;
            let mut pending = Vec::new();
            let mut live = Vec::new();
            for (slot, flags) in ready {
                match slot {
                    Slot::Stop => stop = true,
                    Slot::Listener => accept = true,
                    Slot::Pending(i) => pending.push(i),
                    Slot::Live(i) => live.push((i, flags)),
                }
            }
            if stop {
                break;
            }
            for (i, flags) in live {
                self.live_ready(i, flags);
            }
            // Handshakes: progress the ready ones, then expire the late ones
            // (back to front: removal swaps the last one in).
            let now = Instant::now();
            pending.sort_unstable();
            for i in pending.into_iter().rev() {
                self.progress(i);
            }
            for i in (0..self.pending.len()).rev() {
                if self.pending[i].deadline <= now {
                    let p = self.pending.swap_remove(i);
                    let error = HandshakeError::TimedOut {
                        timeout: self.shared.opts.handshake_timeout,
                        received: p.buf.len(),
                    };
                    self.shared.rejected(p.id, p.pid, error);
                }
            }
            if accept {
                self.accept();
            }
            self.server_events();
        }
        for p in self.pending.drain(..) {
            log::debug!("conn {}: handshake abandoned (shutting down)", p.id);
        }
    }

    /// Waits for something to do (at most [`TICK`], or until the next
    /// handshake deadline) and says which descriptors are ready.
    fn poll(&self) -> Vec<(Slot, PollFlags)> {
        let mut slots = Vec::with_capacity(2 + self.pending.len() + self.live.len());
        let mut fds = Vec::with_capacity(slots.capacity());
        slots.push(Slot::Stop);
        fds.push(PollFd::from_borrowed_fd(self.stop.fd(), PollFlags::IN));
        if self.pending.len() < MAX_PENDING_HANDSHAKES {
            slots.push(Slot::Listener);
            fds.push(PollFd::new(&self.listener, PollFlags::IN));
        }
        for (i, p) in self.pending.iter().enumerate() {
            slots.push(Slot::Pending(i));
            fds.push(PollFd::new(&p.stream, PollFlags::IN));
        }
        for (i, l) in self.live.iter().enumerate() {
            if !l.hung_up {
                slots.push(Slot::Live(i));
                fds.push(PollFd::new(&l.stream, PollFlags::IN | PollFlags::RDHUP));
            }
        }
        let now = Instant::now();
        let wait = self
            .pending
            .iter()
            .map(|p| p.deadline.saturating_duration_since(now))
            .fold(TICK, Duration::min);
        let timeout = rustix::time::Timespec {
            tv_sec: wait.as_secs() as i64,
            tv_nsec: i64::from(wait.subsec_nanos()),
        };
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Vec::new(),
            Err(e) => {
                log::error!("poll: {e}");
                std::thread::sleep(TICK);
                return Vec::new();
            }
        }
        slots
            .into_iter()
            .zip(&fds)
            .filter(|(_, fd)| !fd.revents().is_empty())
            .map(|(slot, fd)| (slot, fd.revents()))
            .collect()
    }

    /// Accepts the connections waiting (up to the pending limit).
    fn accept(&mut self) {
        while self.pending.len() < MAX_PENDING_HANDSHAKES {
            let stream = match self.listener.accept() {
                Ok(Some(s)) => s,
                Ok(None) => return,
                Err(e) => {
                    // ECONNABORTED, EMFILE...: logged; the loop looks again
                    // at the next tick.
                    log::warn!("accept on {}: {e}", self.listener.path().display());
                    return;
                }
            };
            let id = self.shared.next_id();
            let pid = socket::peer_pid(&stream);
            self.shared.accepted();
            log::debug!("conn {id} (pid {pid:?}): accepted");
            if self.live.len() >= MAX_CONNECTIONS {
                self.shared.rejected(
                    id,
                    pid,
                    HandshakeError::TooManyConnections {
                        limit: MAX_CONNECTIONS,
                    },
                );
                continue;
            }
            self.pending.push(Pending {
                id,
                pid,
                stream,
                buf: Vec::new(),
                fds: Vec::new(),
                scanner: HandshakeScanner::new(),
                deadline: Instant::now() + self.shared.opts.handshake_timeout,
            });
        }
    }

    /// Reads what pending connection `i` sent; completes or refuses it.
    fn progress(&mut self, i: usize) {
        let result = read_handshake(&mut self.pending[i]);
        let len = match result {
            Ok(Progress::NotYet) => return,
            Ok(Progress::Complete(len)) => len,
            Err(error) => {
                let p = self.pending.swap_remove(i);
                self.shared.rejected(p.id, p.pid, error);
                return;
            }
        };
        let p = self.pending.swap_remove(i);
        let (id, pid) = (p.id, p.pid);
        match self.establish(p, len) {
            Ok(live) => self.live.push(live),
            Err(error) => self.shared.rejected(id, pid, error),
        }
    }

    /// Turns a complete handshake into a served space.
    fn establish(&self, mut p: Pending, len: usize) -> Result<LiveSocket, HandshakeError> {
        let regions = protocol::parse(&p.buf, len)?;
        let fd = match p.fds.len() {
            0 => return Err(HandshakeError::NoFd),
            1 => p.fds.pop().expect("one descriptor"),
            count => return Err(HandshakeError::TooManyFds { count }),
        };
        let uffd =
            Userfaultfd::adopt(fd, Features::EVENT_REMOVE).map_err(HandshakeError::Userfaultfd)?;
        let mappings: Vec<_> = regions.iter().map(protocol::GuestRegion::mapping).collect();
        let monitor = self
            .shared
            .server
            .add_space_monitored(uffd, &mappings)
            .map_err(HandshakeError::Regions)?;
        let space = monitor.id();
        let info = ConnectionInfo {
            id: p.id,
            pid: p.pid,
            space,
            guest_bytes: regions.iter().map(|r| r.size).sum(),
            regions,
        };
        self.shared.serving(info, monitor);
        Ok(LiveSocket {
            id: p.id,
            space,
            stream: p.stream,
            hung_up: false,
            noise_reported: false,
        })
    }

    /// A live connection's socket is readable or hung up.
    fn live_ready(&mut self, i: usize, flags: PollFlags) {
        let l = &mut self.live[i];
        if flags.intersects(PollFlags::HUP | PollFlags::RDHUP | PollFlags::ERR | PollFlags::NVAL) {
            // Firecracker closes its end only by exiting; the fault server
            // notices the exit itself (see the module docs).
            log::debug!("conn {}: the client closed its socket", l.id);
            l.hung_up = true;
            return;
        }
        let mut buf = [0u8; NOISE_CHUNK];
        match socket::recv(&l.stream, &mut buf) {
            Ok(r) if r.bytes == 0 => {
                log::debug!("conn {}: the client closed its socket", l.id);
                l.hung_up = true;
            }
            Ok(r) => {
                // Descriptors that came along are closed here (dropped).
                if !l.noise_reported {
                    log::warn!(
                        "conn {}: ignoring unexpected data after the handshake ({} bytes, {} fds)",
                        l.id,
                        r.bytes,
                        r.fds.len()
                    );
                    l.noise_reported = true;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => {
                log::debug!("conn {}: socket error {e}; no longer watched", l.id);
                l.hung_up = true;
            }
        }
    }

    /// Ends the connections whose space the fault server reports gone.
    fn server_events(&mut self) {
        while let Ok(event) = self.server_events.try_recv() {
            let ServerEvent::Gone { space, reason } = event else {
                continue;
            };
            let reason = match reason {
                GoneReason::Exited => EndReason::Exited,
                GoneReason::Error => EndReason::Failed,
                GoneReason::Removed => EndReason::Shutdown,
            };
            if self.shared.end(space, reason).is_some() {
                self.live.retain(|l| l.space != space);
            }
        }
    }
}

/// Reads everything available on a pending connection; says whether its
/// handshake is complete.
fn read_handshake(p: &mut Pending) -> Result<Progress, HandshakeError> {
    let mut chunk = [0u8; READ_CHUNK];
    loop {
        let room = (MAX_HANDSHAKE_BYTES - p.buf.len()).min(READ_CHUNK);
        let r = match socket::recv(&p.stream, &mut chunk[..room]) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(Progress::NotYet),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(HandshakeError::Io(e)),
        };
        p.fds.extend(r.fds);
        if r.fds_truncated || p.fds.len() > 1 {
            return Err(HandshakeError::TooManyFds {
                count: p.fds.len().max(2),
            });
        }
        if r.bytes == 0 {
            return Err(HandshakeError::Closed {
                received: p.buf.len(),
            });
        }
        p.buf.extend_from_slice(&chunk[..r.bytes]);
        if let Scan::Complete { len } = p.scanner.feed(&p.buf)? {
            return Ok(Progress::Complete(len));
        }
    }
}
