//! `lazarus serve`: a page-fault handler for VMMs, compatible with
//! Firecracker's userfaultfd protocol, serving guest memory from a Lazarus
//! image (compressed, deduplicated, with prefetch).
//!
//! ```text
//!   VMM 1 ──┐ connect + [{"base_host_virt_addr":..,"size":..,"offset":..}] + uffd
//!   VMM 2 ──┼──► socket (0600) ──► control thread ──────────────┐ add_space_monitored
//!   VMM n ──┘                      poll: listener, handshakes   ▼ (uffd, mappings)
//!                                  in progress, live sockets,  FaultServer ── faults, events,
//!                                  stop eventfd; every tick:    (one for      prefetch pool,
//!                                  server events (Gone)         all VMMs)     per-space stats
//!                                          │
//!                                          ▼
//!            ConnectionEvent (Serving / Rejected / Ended) · one log line per
//!            connection start and end · HandlerStats (JSON) · working set
//! ```
//!
//! # Connections
//!
//! One thread (`lazarus-serve`) owns the listening socket and every client
//! socket, and never blocks on any of them: it polls them all, with a tick
//! of [`TICK`] so that timeouts and the fault server's notifications are
//! looked at regularly.
//!
//! - **Handshake** ([`protocol`]): read as it arrives (with its
//!   descriptor, see `socket.rs`), completed as soon as the JSON array
//!   closes (the VMM never closes nor sends more), bounded by
//!   [`protocol::MAX_HANDSHAKE_BYTES`] and by a deadline
//!   ([`HandlerOptions::handshake_timeout`], counted from `accept`, so a
//!   client that trickles bytes cannot hold a slot longer). At most
//!   [`MAX_PENDING_HANDSHAKES`] are in progress at once; further clients
//!   wait in the kernel's backlog.
//! - **Checks**: exactly one descriptor, a userfaultfd with `EVENT_REMOVE`
//!   enabled ([`Userfaultfd::adopt`]; without that feature a balloon
//!   inflation would later be filled with snapshot bytes instead of zeros),
//!   valid regions ([`protocol::validate`]) that fit the image (the fault
//!   server checks that). Any failure: one log line (warning), a
//!   [`ConnectionEvent::Rejected`], the connection closed (the descriptor
//!   too); the other clients are not affected.
//! - **Serving**: the regions become [`Mapping`](crate::Mapping)s (host
//!   range at the region's base, image range at its offset, unit = its page
//!   size) of a new space of the shared [`FaultServer`]; one log line (info)
//!   names the connection, the client's pid (`SO_PEERCRED`) and the memory.
//! - **End**: the fault server notices that a VMM exited (its fills fail
//!   with `ESRCH`, or its periodic probe says so) and reports the space
//!   gone; the handler then logs the connection's statistics in one line,
//!   saves its working set, and emits [`ConnectionEvent::Ended`]. The
//!   client's socket closing is only a hint (Firecracker never closes it
//!   while it runs: it keeps it open on purpose until it exits): a client
//!   that closes its socket but still runs keeps being served.
//!
//! # Why the handler never closes a live VMM's userfaultfd early
//!
//! A VMM keeps its own descriptor of the userfaultfd. If the handler closes
//! its copy while the VMM runs, nothing is unregistered (the VMM's copy
//! keeps the context alive) and nobody serves the faults: the guest's vCPUs
//! block forever on unserved pages. That is also what happens when the
//! handler stops ([`Handler::shutdown`], SIGTERM): live VMMs freeze, which
//! is why shutdown logs them by name.
//!
//! # Working sets
//!
//! With recording on, each connection records the order in which its
//! faults first needed chunks (its own recorder: VMMs served at the same
//! time do not mix). When a connection ends (and at shutdown, for those
//! still live), the working set file beside the image (`IMG.ws`) is
//! rewritten as the loaded set followed by that connection's new chunks;
//! the next start prefetches those chunks first, for every VMM.

mod conn;
pub mod protocol;
mod socket;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use serde::Serialize;
use snapshot_format::Image;

pub use protocol::{GuestRegion, ProtocolError};
pub use socket::{BindError, MAX_FDS_PER_READ, SOCKET_MODE};

use crate::restore::WorkingSetOptions;
use crate::server::{AddSpaceError, FaultServer, ServerError, ServerOptions, SpaceMonitor};
use crate::space::SpaceId;
use crate::stats::{AddressSpaceStats, Stats};
use crate::uffd::AdoptError;
use crate::workset::WorkingSet;

/// Default time a client has, from `accept`, to send its whole handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Handshakes in progress at once (more clients wait in the backlog).
pub const MAX_PENDING_HANDSHAKES: usize = 64;

/// VMMs served at once; a client beyond that is refused (logged).
pub const MAX_CONNECTIONS: usize = 256;

/// Ended connections whose statistics are kept for [`Handler::stats`].
pub const MAX_ENDED_KEPT: usize = 64;

/// The control thread's longest wait between looks at deadlines and the
/// fault server's notifications.
pub const TICK: Duration = Duration::from_millis(50);

/// Connection events queued for readers of [`Handler::events`]; later ones
/// are dropped (counted) until readers catch up.
pub const EVENTS_CAPACITY: usize = 1024;

/// Options of a [`Handler`].
#[derive(Debug, Clone)]
pub struct HandlerOptions {
    /// The fault server shared by every VMM (policy, prefetch workers,
    /// cache, working-set recording).
    pub server: ServerOptions,
    /// Working-set file: loaded at start (prefetched first for every VMM),
    /// saved as each connection ends.
    pub working_set: WorkingSetOptions,
    /// Time a client has, from `accept`, to send its whole handshake.
    pub handshake_timeout: Duration,
}

impl Default for HandlerOptions {
    fn default() -> Self {
        Self {
            server: ServerOptions::default(),
            working_set: WorkingSetOptions::default(),
            handshake_timeout: HANDSHAKE_TIMEOUT,
        }
    }
}

/// The handler could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The socket could not be created.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The fault server could not start.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// A thread or the stop eventfd could not be created.
    #[error("cannot start the connection thread")]
    Thread(#[source] std::io::Error),
}

/// Why a connection was refused (one log line says it, and
/// [`ConnectionEvent::Rejected`] carries it).
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The message is not a valid handshake.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// No descriptor came with the message.
    #[error("no file descriptor came with the handshake (expected the userfaultfd)")]
    NoFd,
    /// More than one descriptor came (all closed).
    #[error("{count} file descriptors came with the handshake (expected one, the userfaultfd)")]
    TooManyFds {
        /// How many were received (at least).
        count: usize,
    },
    /// The descriptor is not a userfaultfd, or lacks `EVENT_REMOVE`.
    #[error("the descriptor sent is not a usable userfaultfd")]
    Userfaultfd(#[source] AdoptError),
    /// The regions do not fit the image (or the server stopped).
    #[error("the regions cannot be served from this image")]
    Regions(#[source] AddSpaceError),
    /// The client closed the connection before the handshake was complete.
    #[error("connection closed after {received} bytes, before the handshake was complete")]
    Closed {
        /// Bytes received.
        received: usize,
    },
    /// The handshake was not complete in time.
    #[error("no complete handshake within {timeout:?} ({received} bytes received)")]
    TimedOut {
        /// The limit.
        timeout: Duration,
        /// Bytes received.
        received: usize,
    },
    /// [`MAX_CONNECTIONS`] VMMs are served already.
    #[error("{limit} VMMs are served already")]
    TooManyConnections {
        /// [`MAX_CONNECTIONS`].
        limit: usize,
    },
    /// Reading the socket failed.
    #[error("reading the handshake")]
    Io(#[source] std::io::Error),
}

/// A served connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectionInfo {
    /// The handler's number for it (from 1, in accept order).
    pub id: u64,
    /// The client's pid (`SO_PEERCRED` at connect), if the kernel could
    /// tell.
    pub pid: Option<u32>,
    /// Its address space in the fault server.
    pub space: SpaceId,
    /// Its guest memory regions.
    pub regions: Vec<GuestRegion>,
    /// Their total size.
    pub guest_bytes: u64,
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The VMM exited.
    Exited,
    /// Its userfaultfd failed (logged).
    Failed,
    /// The handler stopped while the VMM was live.
    Shutdown,
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Exited => "the VMM exited",
            Self::Failed => "its userfaultfd failed",
            Self::Shutdown => "handler shutdown",
        })
    }
}

/// A connection and its statistics.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConnectionStats {
    /// The connection.
    #[serde(flatten)]
    pub info: ConnectionInfo,
    /// How it ended (`None`: live).
    pub ended: Option<EndReason>,
    /// Its address space's statistics (at the end, for an ended one).
    pub stats: AddressSpaceStats,
}

/// What happens to connections (see [`Handler::events`]).
#[derive(Debug, Clone)]
pub enum ConnectionEvent {
    /// A VMM's handshake was accepted; its memory is being served.
    Serving(ConnectionInfo),
    /// A connection was refused and closed.
    Rejected {
        /// The handler's number for it.
        id: u64,
        /// The client's pid, if known.
        pid: Option<u32>,
        /// Why.
        error: Arc<HandshakeError>,
    },
    /// A served connection ended.
    Ended(Box<ConnectionStats>),
}

/// Connection counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ConnectionCounts {
    /// Accepted on the socket.
    pub accepted: u64,
    /// Whose handshake was accepted.
    pub served: u64,
    /// Refused.
    pub rejected: u64,
    /// Served now.
    pub live: usize,
    /// Ended after being served.
    pub ended: u64,
    /// Connection events nobody read (see [`Handler::events`]).
    pub events_dropped: u64,
}

/// Everything the handler can tell about itself.
#[derive(Debug, Clone, Serialize)]
pub struct HandlerStats {
    /// The socket.
    pub socket: PathBuf,
    /// Time since start.
    pub uptime_ms: f64,
    /// Connection counts.
    pub connections: ConnectionCounts,
    /// The fault server, all VMMs together.
    pub server: Stats,
    /// Live connections.
    pub live: Vec<ConnectionStats>,
    /// The last [`MAX_ENDED_KEPT`] ended connections, oldest first.
    pub ended: Vec<ConnectionStats>,
}

impl HandlerStats {
    /// The statistics as one line of JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("HandlerStats serializes to JSON")
    }
}

/// A live connection's record.
#[derive(Debug)]
struct Live {
    info: ConnectionInfo,
    monitor: SpaceMonitor,
}

/// Connections, for the control thread and for readers of statistics.
#[derive(Debug, Default)]
struct Book {
    live: Vec<Live>,
    ended: std::collections::VecDeque<ConnectionStats>,
    counts: ConnectionCounts,
}

/// What the handle and the control thread share.
#[derive(Debug)]
struct Shared {
    server: FaultServer,
    socket: PathBuf,
    opts: HandlerOptions,
    ws_path: Option<PathBuf>,
    ws_loaded: Option<WorkingSet>,
    book: Mutex<Book>,
    events: Sender<ConnectionEvent>,
    events_dropped: AtomicU64,
    next_id: AtomicU64,
    started: Instant,
}

impl Shared {
    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn emit(&self, event: ConnectionEvent) {
        if self.events.try_send(event).is_err() {
            self.events_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A new connection number.
    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts an accepted connection.
    fn accepted(&self) {
        self.book().counts.accepted += 1;
    }

    /// Logs and reports a refused connection.
    fn rejected(&self, id: u64, pid: Option<u32>, error: HandshakeError) {
        log::warn!(
            "conn {id} ({}): handshake rejected: {}",
            pid_text(pid),
            error_chain(&error)
        );
        self.book().counts.rejected += 1;
        self.emit(ConnectionEvent::Rejected {
            id,
            pid,
            error: Arc::new(error),
        });
    }

    /// Records a served connection.
    fn serving(&self, info: ConnectionInfo, monitor: SpaceMonitor) {
        let huge = info
            .regions
            .iter()
            .any(|r| r.page_size > protocol::BASE_PAGE_SIZE);
        log::info!(
            "conn {} ({}): serving {} region{}, {} of guest memory{} (space {})",
            info.id,
            pid_text(info.pid),
            info.regions.len(),
            if info.regions.len() == 1 { "" } else { "s" },
            mib(info.guest_bytes),
            if huge { " in 2 MiB pages" } else { "" },
            info.space.0,
        );
        let mut book = self.book();
        book.counts.served += 1;
        book.live.push(Live {
            info: info.clone(),
            monitor,
        });
        book.counts.live = book.live.len();
        drop(book);
        self.emit(ConnectionEvent::Serving(info));
    }

    /// Ends the connection serving `space`: logs its statistics, saves its
    /// working set, keeps its final statistics. Returns its id, `None` if no
    /// live connection serves `space`.
    fn end(&self, space: SpaceId, reason: EndReason) -> Option<u64> {
        let live = {
            let mut book = self.book();
            let i = book.live.iter().position(|l| l.info.space == space)?;
            let live = book.live.swap_remove(i);
            book.counts.live = book.live.len();
            live
        };
        let stats = live.monitor.stats();
        log::info!(
            "conn {} ({}) ended ({reason}) after {:.1} s: {}",
            live.info.id,
            pid_text(live.info.pid),
            stats.uptime_ms / 1e3,
            summary(&stats),
        );
        self.save_working_set(&live);
        let ended = ConnectionStats {
            info: live.info,
            ended: Some(reason),
            stats,
        };
        let id = ended.info.id;
        let mut book = self.book();
        book.counts.ended += 1;
        if book.ended.len() == MAX_ENDED_KEPT {
            book.ended.pop_front();
        }
        book.ended.push_back(ended.clone());
        drop(book);
        self.emit(ConnectionEvent::Ended(Box::new(ended)));
        Some(id)
    }

    /// Saves the loaded working set followed by the chunks this connection
    /// faulted first that it lacked.
    fn save_working_set(&self, live: &Live) {
        if !self.opts.working_set.save {
            return;
        }
        let Some(path) = &self.ws_path else {
            return;
        };
        let recorded = live.monitor.working_set();
        if recorded.chunks().is_empty() {
            return;
        }
        let loaded = self.ws_loaded.as_ref().map_or(&[][..], WorkingSet::chunks);
        let ws = WorkingSet::new(
            recorded.image(),
            loaded.iter().chain(recorded.chunks()).copied(),
        );
        match ws.save(path) {
            Ok(()) => log::debug!(
                "conn {}: working set of {} chunks saved to {}",
                live.info.id,
                ws.chunks().len(),
                path.display()
            ),
            Err(e) => log::warn!("conn {}: {e}", live.info.id),
        }
    }

    fn stats(&self) -> HandlerStats {
        let server = self.server.stats();
        let book = self.book();
        let mut counts = book.counts.clone();
        counts.events_dropped = self.events_dropped.load(Ordering::Relaxed);
        HandlerStats {
            socket: self.socket.clone(),
            uptime_ms: self.started.elapsed().as_secs_f64() * 1e3,
            connections: counts,
            server,
            live: book
                .live
                .iter()
                .map(|l| ConnectionStats {
                    info: l.info.clone(),
                    ended: None,
                    stats: l.monitor.stats(),
                })
                .collect(),
            ended: book.ended.iter().cloned().collect(),
        }
    }
}

/// `pid 1234`, or `pid unknown`.
fn pid_text(pid: Option<u32>) -> String {
    pid.map_or_else(|| "pid unknown".to_owned(), |p| format!("pid {p}"))
}

/// `12.5 MiB`.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// An error and its causes on one line, joined by `: `.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// A connection's statistics in a few words (its end line).
fn summary(s: &AddressSpaceStats) -> String {
    let f = &s.faults;
    let population = match s.time_to_populated_ms {
        Some(ms) => format!("populated after {ms:.0} ms"),
        None => format!("{} pages never served", s.remaining_pages),
    };
    format!(
        "{} faults ({} copied, {} zero, {} present), latency p50 {:.1} µs p99 {:.1} µs; {} by faults, {} prefetched, {} zeroed; {} removes; {population}",
        f.total,
        f.copy,
        f.zero,
        f.present,
        f.latency.p50_us,
        f.latency.p99_us,
        mib(s.bytes.fault_copied),
        mib(s.bytes.prefetch_copied),
        mib(s.bytes.zeroed),
        s.events.remove,
    )
}

/// A running handler: a socket, a control thread, and the fault server
/// shared by every VMM (see the [module documentation](self)).
#[derive(Debug)]
pub struct Handler {
    /// `None` once stopped.
    shared: Option<Arc<Shared>>,
    stop: Arc<conn::StopSignal>,
    thread: Option<JoinHandle<()>>,
    events: Receiver<ConnectionEvent>,
}

impl Handler {
    /// Starts serving `image` on a new socket at `socket`: loads the working
    /// set (a missing or invalid file only disables it, with a warning),
    /// starts the fault server, creates the socket (0600; refuses a live
    /// socket, replaces a stale one) and the control thread.
    pub fn start(
        image: Arc<Image>,
        socket: &Path,
        mut opts: HandlerOptions,
    ) -> Result<Self, StartError> {
        let ws_path = opts
            .working_set
            .path
            .clone()
            .or_else(|| image.top().path().map(WorkingSet::default_path));
        let ws_loaded = match &ws_path {
            Some(p) if opts.working_set.load && p.exists() => match WorkingSet::load(p, &image) {
                Ok(ws) => {
                    log::info!(
                        "working set {}: {} chunks prefetched first",
                        p.display(),
                        ws.chunks().len()
                    );
                    Some(ws)
                }
                Err(e) => {
                    log::warn!("{}; prefetching in address order", error_chain(&e));
                    None
                }
            },
            _ => None,
        };
        if let Some(ws) = &ws_loaded {
            opts.server.prefetch_first = ws.chunks().to_vec();
        }
        opts.server.record_working_set |= opts.working_set.save;
        let server = FaultServer::start(image, opts.server.clone())?;
        let listener = socket::Listener::bind(socket)?;
        let stop = Arc::new(conn::StopSignal::new().map_err(StartError::Thread)?);
        let (events_tx, events) = crossbeam_channel::bounded(EVENTS_CAPACITY);
        let shared = Arc::new(Shared {
            server,
            socket: listener.path().to_path_buf(),
            opts,
            ws_path,
            ws_loaded,
            book: Mutex::default(),
            events: events_tx,
            events_dropped: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            started: Instant::now(),
        });
        let control = conn::Control::new(Arc::clone(&shared), listener, Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name("lazarus-serve".into())
            .spawn(move || control.run())
            .map_err(StartError::Thread)?;
        log::info!(
            "listening on {} (image {}, {} of memory)",
            shared.socket.display(),
            shared.server.image().id(),
            mib(shared.server.image().regions().iter().map(|r| r.len).sum())
        );
        Ok(Self {
            shared: Some(shared),
            stop,
            thread: Some(thread),
            events,
        })
    }

    fn shared(&self) -> &Shared {
        self.shared
            .as_ref()
            .expect("the shared state lives until the handler stops")
    }

    /// The socket's path.
    pub fn socket(&self) -> &Path {
        &self.shared().socket
    }

    /// The connection events (every clone receives each event once between
    /// them; at most [`EVENTS_CAPACITY`] wait, later ones are dropped and
    /// counted until readers catch up).
    pub fn events(&self) -> Receiver<ConnectionEvent> {
        self.events.clone()
    }

    /// The live connections.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        self.shared()
            .book()
            .live
            .iter()
            .map(|l| l.info.clone())
            .collect()
    }

    /// A snapshot of every statistic. Never stalls the fault path.
    pub fn stats(&self) -> HandlerStats {
        self.shared().stats()
    }

    /// Waits until every live VMM's memory is populated (see
    /// [`FaultServer::wait_populated`]).
    pub fn wait_populated(&self, timeout: Duration) -> bool {
        self.shared().server.wait_populated(timeout)
    }

    /// Stops: closes and unlinks the socket, ends the connections still
    /// live (their statistics logged, their working sets saved; their
    /// guests will block on pages not served yet: see the module docs),
    /// stops the fault server. Returns the final statistics.
    pub fn shutdown(mut self) -> Result<HandlerStats, ServerError> {
        self.stop_all()
    }

    fn stop_all(&mut self) -> Result<HandlerStats, ServerError> {
        if let Some(thread) = self.thread.take() {
            self.stop.raise();
            if thread.join().is_err() {
                log::error!("the connection thread panicked");
            }
        }
        let Some(shared) = self.shared.take() else {
            return Err(ServerError::Crashed);
        };
        let live: Vec<(SpaceId, u64, Option<u32>)> = shared
            .book()
            .live
            .iter()
            .map(|l| (l.info.space, l.info.id, l.info.pid))
            .collect();
        if !live.is_empty() {
            log::warn!(
                "stopping with {} live VMM{} ({}): their guests block on pages not served yet",
                live.len(),
                if live.len() == 1 { "" } else { "s" },
                live.iter()
                    .map(|(_, id, pid)| format!("conn {id} {}", pid_text(*pid)))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        for (space, _, _) in live {
            shared.end(space, EndReason::Shutdown);
            shared.server.remove_space(space, false);
        }
        let stats = shared.stats();
        log::info!(
            "stopped: {} connection{} served, {} rejected",
            stats.connections.served,
            if stats.connections.served == 1 {
                ""
            } else {
                "s"
            },
            stats.connections.rejected
        );
        // The connection thread is gone: this is the last reference.
        match Arc::try_unwrap(shared) {
            Ok(Shared { server, .. }) => server.stop()?,
            Err(_) => log::error!("the fault server is still referenced; it stops when released"),
        }
        Ok(stats)
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        if self.shared.is_some()
            && let Err(e) = self.stop_all()
        {
            log::error!("{e}");
        }
    }
}
