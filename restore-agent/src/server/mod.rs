//! [`FaultServer`]: serves the page faults of one or more userfaultfds from an
//! image, with a prefetch pool, event tracking and live statistics.
//!
//! ```text
//!   add_space(uffd, [Mapping]) ─┐            ┌──────────── server thread ─────────────┐
//!   FORK event (child uffd) ────┼─ spaces ──►│ epoll: uffds + wake eventfd            │
//!   remove_space(id) ───────────┘            │ spin (epoll_wait 0) ▸ block (timeout)  │
//!                                            │ per readable uffd: close gate, read    │
//!                                            │   batch, apply events, open gate,      │
//!                                            │   serve queued faults (COPY / ZERO /   │
//!                                            │   POISON), record latency, working set │
//!                                            └────────────────────────────────────────┘
//!   prefetch pool (N workers) ── per space: working set, zeros, rest in address order
//!   events() ◄── Forked { parent, child } · Gone { space, reason } · Populated
//! ```
//!
//! # Threads and waiting
//!
//! One server thread reads every userfaultfd (a read is where events are
//! consumed, so reads of one fd must be serialized anyway; see `gate.rs`).
//! The measured facts (DESIGN.md) drive the waiting: waking a handler that
//! sleeps on the other, idle vCPU costs ~100 µs per fault, one that spins
//! briefly first ~27 µs. So after any activity the server spins for
//! [`ServerOptions::spin`] polling epoll without blocking (`epoll_wait`
//! with a zero timeout: a spinning *read* would have to close the gate every
//! time and starve the prefetch workers), then blocks in `epoll_wait` with
//! [`ServerOptions::liveness_interval`] as its timeout.
//!
//! # Serving a batch
//!
//! A read returns every pending fault, then every pending event. The server
//! applies *all* the events of the batch first (in order), then serves the
//! batch's faults against the resulting state. A fault message only says
//! "some thread is blocked at this address"; the thread retries its access
//! after the wake-up, so serving what the address holds *now* is always
//! right: a fault read together with the REMOVE of its range gets zeros; a
//! fault on a range that has since moved (REMAP) or gone (UNMAP) is just
//! woken (its thread then faults again, or finds the new mapping). A fill
//! refused with `EAGAIN` (an event started after the read) leaves the fault
//! queued; the server reads again and retries.
//!
//! # Fault policy
//!
//! [`FaultPolicy::Page`] copies just the faulting unit.
//! [`FaultPolicy::Chunk`] copies the faulting unit first (that wakes the
//! faulting thread as early as possible), then the rest of the chunk's run
//! around it with `DONTWAKE` (threads blocked on those pages are woken when
//! their own fault message is served: `EEXIST`, then a wake); for zero
//! faults, the zero run within the chunk-sized window around the fault.
//!
//! # Address spaces
//!
//! Each userfaultfd is one *space*, described by a list of [`Mapping`]s.
//! Units outside every mapping that still fault (stack growth below a
//! registered stack, the grown tail of an `mremap`, the old range of
//! `MREMAP_DONTUNMAP`) get zeros. A space ends when its target exits
//! (a fill answers `ESRCH`, or a periodic [`target_alive`](crate::uffd::target_alive)
//! probe says so: a userfaultfd gives no sign of its own) or when it is
//! removed; either way a [`ServerEvent::Gone`] is sent.
//!
//! # Fail closed
//!
//! If the server thread dies (a bug), it does not close the userfaultfds:
//! closing one unregisters its ranges, and the target would silently read
//! zeros where its snapshot pages were. Its threads block instead.

mod run;

pub(crate) use run::Garbage;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use snapshot_format::{ChunkId, Image, ImageId};

use crate::cache::{CacheOptions, ChunkCache};
use crate::fill::Env;
use crate::mapping::{Mapping, MappingError, initial_states};
use crate::prefetch::{PoolShared, Prefetcher, build_plan};
use crate::space::{Space, SpaceId, Wakeup};
use crate::state::StateArray;
use crate::stats::{AddressSpaceStats, Counters, Latency, SpaceMetrics, Stats};
use crate::table::{Segment, Table};
use crate::uffd::Userfaultfd;
use crate::workset::{Recorder, WorkingSet};

/// How much the fault thread copies per fault (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum FaultPolicy {
    /// Only the faulting unit.
    #[default]
    Page,
    /// The faulting unit, then the rest of its chunk's run (`DONTWAKE`).
    Chunk,
}

/// The most prefetch workers [`default_prefetch_workers`] picks.
///
/// Measured on a 2-vCPU machine only (docs/RESTORE.md, "Figures"): there 2 workers
/// fill memory 1.9× as fast as one. More than 2 is unmeasured; the cap keeps a
/// restore from taking every CPU of a large machine by default (the fault server and
/// the restored process need some). Pass more explicitly to try.
pub const MAX_DEFAULT_PREFETCH_WORKERS: usize = 4;

/// The default number of prefetch workers: one per available CPU (the
/// process's affinity and cgroup quota), at most [`MAX_DEFAULT_PREFETCH_WORKERS`],
/// at least 1.
pub fn default_prefetch_workers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, MAX_DEFAULT_PREFETCH_WORKERS)
}

/// Options of a [`FaultServer`].
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// How much to copy per fault.
    pub fault_policy: FaultPolicy,
    /// How long the server polls without blocking after activity.
    pub spin: Duration,
    /// How often idle spaces are probed for their target's exit (also the
    /// longest the server blocks at once).
    pub liveness_interval: Duration,
    /// Chunk cache size.
    pub cache: CacheOptions,
    /// Prefetch worker threads; 0 serves on demand only. Default:
    /// [`default_prefetch_workers`].
    pub prefetch_workers: usize,
    /// Chunks to prefetch first, in order (a loaded working set).
    pub prefetch_first: Vec<ChunkId>,
    /// Record the first-fault order of chunks (see [`FaultServer::working_set`]).
    pub record_working_set: bool,
    /// Messages read per `read(2)` (1..=[`MAX_MSGS_PER_READ`](crate::uffd::MAX_MSGS_PER_READ)).
    pub batch: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            fault_policy: FaultPolicy::Page,
            spin: Duration::from_micros(50),
            liveness_interval: Duration::from_millis(100),
            cache: CacheOptions::default(),
            prefetch_workers: default_prefetch_workers(),
            prefetch_first: Vec::new(),
            record_working_set: true,
            batch: 64,
        }
    }
}

/// Why a space stopped being served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum GoneReason {
    /// Its target exited.
    Exited,
    /// [`FaultServer::remove_space`] was called.
    Removed,
    /// Its userfaultfd failed (logged).
    Error,
}

/// What a server reports as it runs (see [`FaultServer::events`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// A served process forked: its child is served as `child`.
    Forked {
        /// The forking space.
        parent: SpaceId,
        /// The child's space.
        child: SpaceId,
    },
    /// A space is no longer served.
    Gone {
        /// The space.
        space: SpaceId,
        /// Why.
        reason: GoneReason,
    },
    /// Every live space became populated (see [`FaultServer::wait_populated`]).
    Populated,
}

/// The statistics (and working set) of one space, from
/// [`FaultServer::add_space_monitored`]. Holds no resource of the space:
/// it stays readable after the space is gone, with its final figures.
#[derive(Debug, Clone)]
pub struct SpaceMonitor {
    metrics: Arc<SpaceMetrics>,
    image: ImageId,
}

impl SpaceMonitor {
    /// The space.
    pub fn id(&self) -> SpaceId {
        self.metrics.id
    }

    /// A snapshot of the space's statistics. Never stalls the fault path.
    pub fn stats(&self) -> AddressSpaceStats {
        self.metrics.stats()
    }

    /// The chunks this space first faulted on, in order (empty unless the
    /// server records working sets).
    pub fn working_set(&self) -> WorkingSet {
        WorkingSet::new(
            self.image,
            self.metrics
                .recorder
                .as_ref()
                .map(Recorder::chunks)
                .unwrap_or_default(),
        )
    }
}

/// The server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A system resource (thread, epoll, eventfd, decoder) is unavailable.
    #[error("cannot start the fault server: {0}")]
    Start(#[source] std::io::Error),
    /// The server thread failed (it panicked; the targets' userfaultfds were
    /// left open so that their unserved pages block instead of reading zeros).
    #[error("the fault server thread failed")]
    Crashed,
}

/// A space could not be added.
#[derive(Debug, thiserror::Error)]
pub enum AddSpaceError {
    /// Its mappings do not fit the image.
    #[error(transparent)]
    Mapping(#[from] MappingError),
    /// The server has stopped.
    #[error("the fault server has stopped")]
    Stopped,
}

pub(crate) enum Control {
    Add(run::Local),
    Remove { id: SpaceId, unregister: bool },
    Stop,
}

/// Control messages that can be queued (preallocated channel).
const CONTROL_CAPACITY: usize = 1024;
/// Server events that can be queued for readers; further events are dropped
/// (counted) until readers catch up. A preallocated channel: the server
/// thread must not allocate (see `run.rs`).
pub const EVENTS_CAPACITY: usize = 4096;

#[derive(Debug, Default)]
pub(crate) struct PopState {
    populated: bool,
    first_populated: Option<Duration>,
    stopped: bool,
}

/// The spaces, for readers outside the server thread: a copy-on-write list,
/// so that no lock is ever held while allocating (see `run.rs`).
#[derive(Debug, Default)]
pub(crate) struct Registry {
    spaces: Mutex<Arc<Vec<Arc<Space>>>>,
}

impl Registry {
    /// The current list.
    pub(crate) fn snapshot(&self) -> Arc<Vec<Arc<Space>>> {
        Arc::clone(&self.spaces.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces the list by `f(list)`, allocating and freeing outside the
    /// lock.
    pub(crate) fn update(&self, f: impl Fn(&mut Vec<Arc<Space>>)) {
        loop {
            let current = self.snapshot();
            let mut next = (*current).clone();
            f(&mut next);
            let next = Arc::new(next);
            let mut guard = self.spaces.lock().unwrap_or_else(PoisonError::into_inner);
            if Arc::ptr_eq(&guard, &current) {
                let old = std::mem::replace(&mut *guard, next);
                drop(guard);
                drop(old);
                return;
            }
        }
    }
}

/// What the server thread and the handle share.
pub(crate) struct Shared {
    pub(crate) env: Arc<Env>,
    pub(crate) opts: ServerOptions,
    pub(crate) started: Instant,
    pub(crate) wakeup: Arc<Wakeup>,
    pub(crate) control_rx: Receiver<Control>,
    pub(crate) registry: Registry,
    /// Spaces sent to the server thread and not yet picked up by it.
    pub(crate) pending_adds: AtomicU64,
    pub(crate) population: Mutex<PopState>,
    pub(crate) population_cv: Condvar,
    pub(crate) counters: Arc<Mutex<Vec<Arc<Counters>>>>,
    pub(crate) latency: Arc<Latency>,
    pub(crate) recorder: Option<Recorder>,
    pub(crate) events_tx: Sender<ServerEvent>,
    pub(crate) events_dropped: AtomicU64,
    pub(crate) next_id: AtomicU64,
    pub(crate) gone: AtomicU64,
    pub(crate) busy: Arc<AtomicBool>,
    pub(crate) prefetcher: Prefetcher,
    pub(crate) crashed: AtomicBool,
    /// The janitor thread's queue (see `run.rs`).
    pub(crate) janitor: Sender<Garbage>,
}

impl Shared {
    pub(crate) fn new_id(&self) -> SpaceId {
        SpaceId(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Sends an event to readers; never blocks, never allocates.
    pub(crate) fn emit(&self, event: ServerEvent) {
        if self.events_tx.try_send(event).is_err() {
            self.events_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records whether every live space is populated (the server thread
    /// computes it); records the first time and tells the waiters.
    pub(crate) fn set_population(&self, populated: bool) {
        let populated = populated && self.pending_adds.load(Ordering::Acquire) == 0;
        let mut pop = self
            .population
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if populated && !pop.populated {
            if pop.first_populated.is_none() {
                pop.first_populated = Some(self.started.elapsed());
            }
            self.emit(ServerEvent::Populated);
        }
        pop.populated = populated;
        self.population_cv.notify_all();
    }

    fn set_unpopulated(&self) {
        let mut pop = self
            .population
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        pop.populated = false;
    }

    pub(crate) fn set_stopped(&self) {
        let mut pop = self
            .population
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        pop.stopped = true;
        self.population_cv.notify_all();
    }
}

/// Serves the page faults of userfaultfds from an image (see the
/// [module documentation](self)).
pub struct FaultServer {
    shared: Arc<Shared>,
    control_tx: Sender<Control>,
    events_rx: Receiver<ServerEvent>,
    thread: Option<JoinHandle<()>>,
    janitor: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FaultServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultServer")
            .field("image", &self.shared.env.image.id())
            .field("spaces", &self.spaces())
            .finish_non_exhaustive()
    }
}

impl FaultServer {
    /// Starts a server for `image`: allocates the chunk cache, builds the
    /// prefetch plan and starts the server thread. Spaces are added with
    /// [`add_space`](Self::add_space).
    pub fn start(image: Arc<Image>, opts: ServerOptions) -> Result<Self, ServerError> {
        let plan = build_plan(&image, &opts.prefetch_first);
        let recorder = opts
            .record_working_set
            .then(|| Recorder::new(image.chunks().len()));
        let cache = ChunkCache::new(Arc::clone(&image), opts.cache);
        let env = Arc::new(Env::new(image, cache));
        let wakeup = Arc::new(Wakeup::new().map_err(ServerError::Start)?);
        let (control_tx, control_rx) = crossbeam_channel::bounded(CONTROL_CAPACITY);
        let (events_tx, events_rx) = crossbeam_channel::bounded(EVENTS_CAPACITY);
        let counters: Arc<Mutex<Vec<Arc<Counters>>>> = Arc::default();
        let busy = Arc::new(AtomicBool::new(false));
        let prefetcher = Prefetcher::start(PoolShared {
            env: Arc::clone(&env),
            plan: plan.into(),
            workers: opts.prefetch_workers,
            stop: AtomicBool::new(false),
            busy: Arc::clone(&busy),
            counters: Arc::clone(&counters),
            running: AtomicBool::new(false),
        })
        .map_err(ServerError::Start)?;
        let (janitor_tx, janitor_rx) = crossbeam_channel::bounded(run::JANITOR_CAPACITY);
        let shared = Arc::new(Shared {
            env,
            opts,
            started: Instant::now(),
            wakeup,
            control_rx,
            registry: Registry::default(),
            pending_adds: AtomicU64::new(0),
            population: Mutex::new(PopState {
                populated: true,
                first_populated: None,
                stopped: false,
            }),
            population_cv: Condvar::new(),
            counters,
            latency: Latency::new(),
            recorder,
            events_tx,
            events_dropped: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            gone: AtomicU64::new(0),
            busy,
            prefetcher,
            crashed: AtomicBool::new(false),
            janitor: janitor_tx,
        });
        let registry_owner = Arc::clone(&shared);
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let janitor = match std::thread::Builder::new()
            .name("lazarus-janitor".into())
            .spawn(move || run::janitor(&registry_owner, &janitor_rx, &ready_tx))
        {
            Ok(j) => j,
            Err(e) => {
                shared.prefetcher.stop();
                return Err(ServerError::Start(e));
            }
        };
        let _ = ready_rx.recv();
        // On failure from here on, end the threads already started.
        let abandon = |janitor: JoinHandle<()>| {
            shared.prefetcher.stop();
            let _ = shared.janitor.send(Garbage::Stop);
            let _ = janitor.join();
        };
        let server = match run::Server::new(Arc::clone(&shared)) {
            Ok(s) => s,
            Err(e) => {
                abandon(janitor);
                return Err(ServerError::Start(e));
            }
        };
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let thread = match std::thread::Builder::new()
            .name("lazarus-faults".into())
            .spawn(move || server.run(&ready_tx))
        {
            Ok(t) => t,
            Err(e) => {
                abandon(janitor);
                return Err(ServerError::Start(e));
            }
        };
        // Return only once the server thread runs its loop: a new thread's
        // first steps allocate (thread-local malloc state), which must not
        // happen while the caller forks (see `run.rs`).
        if ready_rx.recv().is_err() {
            let _ = thread.join();
            abandon(janitor);
            return Err(ServerError::Crashed);
        }
        Ok(Self {
            shared,
            control_tx,
            events_rx,
            thread: Some(thread),
            janitor: Some(janitor),
        })
    }

    /// Serves `uffd` (already registered, in MISSING mode, over `mappings`'
    /// host ranges, by whoever created it) from the image. Checks the
    /// mappings against the image, allocates their unit states, and starts a
    /// prefetch pass if the pool is enabled. The fd should be non-blocking
    /// (see [`Userfaultfd::adopt`]).
    ///
    /// The server works with the features the fd has: without
    /// `EVENT_REMOVE`, pages the target drops with `MADV_DONTNEED` before
    /// they were served would later get their snapshot bytes; without
    /// `EVENT_UNMAP`/`EVENT_REMAP` the kernel drops the registration of
    /// unmapped or moved ranges (they are then just not served); without
    /// `EVENT_FORK` a child gets no registration at all; without `POISON`,
    /// faults on corrupt chunks stay unserved.
    pub fn add_space(
        &self,
        uffd: Userfaultfd,
        mappings: &[Mapping],
    ) -> Result<SpaceId, AddSpaceError> {
        self.add(uffd, mappings, false, true).map(|m| m.id())
    }

    /// [`add_space`](Self::add_space) without starting its prefetch pass:
    /// faults are served at once, prefetching waits for
    /// [`start_prefetch`](Self::start_prefetch). A process restore uses it so
    /// that the workers do not compete for the CPUs with the last steps of
    /// the restore (about fifty remote system calls, each a round trip
    /// through the scheduler) before the process runs.
    pub(crate) fn add_space_without_prefetch(
        &self,
        uffd: Userfaultfd,
        mappings: &[Mapping],
    ) -> Result<SpaceId, AddSpaceError> {
        self.add(uffd, mappings, false, false).map(|m| m.id())
    }

    /// Starts the prefetch pass of space `id`, added by
    /// [`add_space_without_prefetch`](Self::add_space_without_prefetch) (if
    /// the pool is enabled and the space still served).
    pub(crate) fn start_prefetch(&self, id: SpaceId) {
        if !self.shared.prefetcher.enabled() {
            return;
        }
        if let Some(space) = self
            .shared
            .registry
            .snapshot()
            .iter()
            .find(|s| s.id == id && !s.is_gone())
        {
            space.prefetch_done.store(false, Ordering::Release);
            self.shared.set_unpopulated();
            self.shared.prefetcher.add_pass(Arc::clone(space), false);
        }
    }

    /// [`add_space`](Self::add_space), returning a [`SpaceMonitor`]: the
    /// space's own statistics and, with
    /// [`ServerOptions::record_working_set`], its own first-fault order of
    /// chunks, readable until the monitor is dropped (also after the space is
    /// gone). `lazarus serve` adds each VMM connection so.
    pub fn add_space_monitored(
        &self,
        uffd: Userfaultfd,
        mappings: &[Mapping],
    ) -> Result<SpaceMonitor, AddSpaceError> {
        self.add(uffd, mappings, self.shared.opts.record_working_set, true)
    }

    fn add(
        &self,
        uffd: Userfaultfd,
        mappings: &[Mapping],
        record: bool,
        prefetch: bool,
    ) -> Result<SpaceMonitor, AddSpaceError> {
        if self.is_stopped() {
            return Err(AddSpaceError::Stopped);
        }
        let (states, snapshot) = initial_states(&self.shared.env.image, mappings)?;
        let segments = mappings
            .iter()
            .zip(states)
            .map(|(m, s)| {
                Segment::new(
                    m.host,
                    m.image,
                    m.page_size,
                    Arc::new(StateArray::from_states(s)),
                )
            })
            .collect();
        let id = self.shared.new_id();
        let recorder = record.then(|| Recorder::new(self.shared.env.image.chunks().len()));
        let space = Arc::new(Space::new(
            id,
            uffd,
            Table::new(segments),
            snapshot,
            recorder,
            Arc::clone(&self.shared.wakeup),
            self.shared.janitor.clone(),
        ));
        let monitor = SpaceMonitor {
            metrics: Arc::clone(&space.metrics),
            image: self.shared.env.image.id(),
        };
        // Everything the server thread needs is allocated here, in the
        // caller's thread (see `run.rs`).
        let local = run::Local::new(Arc::clone(&space), self.shared.opts.batch);
        if prefetch && self.shared.prefetcher.enabled() {
            space.prefetch_done.store(false, Ordering::Release);
        }
        self.shared.pending_adds.fetch_add(1, Ordering::AcqRel);
        self.shared.set_unpopulated();
        self.shared.registry.update(|v| v.push(Arc::clone(&space)));
        if self.control_tx.send(Control::Add(local)).is_err() {
            self.shared.pending_adds.fetch_sub(1, Ordering::AcqRel);
            return Err(AddSpaceError::Stopped);
        }
        self.shared.wakeup.wake();
        if prefetch {
            self.shared.prefetcher.add_pass(space, false);
        }
        Ok(monitor)
    }

    /// Stops serving `id`. With `unregister`, first unregisters every range
    /// the space still tracks (so the target continues alone: do it once
    /// [`wait_populated`](Self::wait_populated) said so). The server then
    /// closes its userfaultfd; a [`ServerEvent::Gone`] follows.
    pub fn remove_space(&self, id: SpaceId, unregister: bool) {
        if self
            .control_tx
            .send(Control::Remove { id, unregister })
            .is_ok()
        {
            self.shared.wakeup.wake();
        }
    }

    /// Makes sure every live space gets fully populated: starts a prefetch
    /// pass (with one worker if the pool is disabled) for each space that
    /// still has unpopulated pages and no pass running. Returns at once; see
    /// [`wait_populated`](Self::wait_populated).
    pub fn populate(&self) {
        for space in self.shared.registry.snapshot().iter() {
            if !space.is_gone()
                && space.prefetch_done.load(Ordering::Acquire)
                && space.remaining() > 0
            {
                space.prefetch_done.store(false, Ordering::Release);
                self.shared.set_unpopulated();
                self.shared.prefetcher.add_pass(Arc::clone(space), true);
            }
        }
    }

    /// The spaces being served.
    pub fn spaces(&self) -> Vec<SpaceId> {
        self.shared
            .registry
            .snapshot()
            .iter()
            .filter(|s| !s.is_gone())
            .map(|s| s.id)
            .collect()
    }

    /// Whether `id` is still served.
    pub fn is_live(&self, id: SpaceId) -> bool {
        self.spaces().contains(&id)
    }

    /// The server's event stream (forks, spaces gone, population). Every
    /// clone receives each event once between them. At most
    /// [`EVENTS_CAPACITY`] events wait for readers; later ones are dropped
    /// (counted in [`Stats`]) until readers catch up: query
    /// [`spaces`](Self::spaces) for the current state.
    pub fn events(&self) -> Receiver<ServerEvent> {
        self.events_rx.clone()
    }

    /// Waits until every live space is populated: no unit needs image data
    /// any more and every prefetch pass has finished (zero runs included).
    /// Returns false on timeout, or if the server stopped first.
    ///
    /// After it, a space's ranges can be unregistered
    /// ([`remove_space`](Self::remove_space) with `unregister`) and its
    /// target continues alone: the pages dropped since (REMOVE) are missing
    /// and read as zeros, as they should.
    pub fn wait_populated(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut pop = self
            .shared
            .population
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        loop {
            if pop.populated {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if pop.stopped || left.is_zero() {
                return false;
            }
            pop = self
                .shared
                .population_cv
                .wait_timeout(pop, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Whether every live space is populated now.
    pub fn is_populated(&self) -> bool {
        self.wait_populated(Duration::ZERO)
    }

    /// A snapshot of the statistics. Never stalls the fault path.
    pub fn stats(&self) -> Stats {
        let counters = self
            .shared
            .counters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut s = Stats::collect(&counters, &self.shared.latency);
        s.uptime_ms = self.shared.started.elapsed().as_secs_f64() * 1e3;
        s.prefetch.workers = self.shared.opts.prefetch_workers;
        s.prefetch.running = self.shared.prefetcher.running();
        s.cache.slots = self.shared.env.cache.slots();
        {
            let reg = self.shared.registry.snapshot();
            s.spaces.live = reg.iter().filter(|x| !x.is_gone()).count();
            s.population.remaining_pages = reg
                .iter()
                .filter(|x| !x.is_gone())
                .map(|x| x.remaining())
                .sum();
        }
        s.spaces.gone = self.shared.gone.load(Ordering::Relaxed);
        s.notifications_dropped = self.shared.events_dropped.load(Ordering::Relaxed);
        {
            let pop = self
                .shared
                .population
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            s.population.populated = pop.populated;
            s.population.time_to_populated_ms = pop.first_populated.map(|d| d.as_secs_f64() * 1e3);
        }
        s.working_set.loaded = self.shared.opts.prefetch_first.len();
        s.working_set.recorded = self.shared.recorder.as_ref().map_or(0, Recorder::len);
        s
    }

    /// The chunks recorded so far, in first-fault order (empty unless
    /// [`ServerOptions::record_working_set`]).
    pub fn working_set(&self) -> WorkingSet {
        WorkingSet::new(
            self.shared.env.image.id(),
            self.shared
                .recorder
                .as_ref()
                .map(Recorder::chunks)
                .unwrap_or_default(),
        )
    }

    /// The chunks of the prefetch plan, in the order each pass visits them.
    pub fn prefetch_plan(&self) -> Vec<ChunkId> {
        self.shared.prefetcher.plan_chunks()
    }

    /// The image served.
    pub fn image(&self) -> &Arc<Image> {
        &self.shared.env.image
    }

    fn is_stopped(&self) -> bool {
        self.shared
            .population
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stopped
    }

    /// Stops the prefetch pool and the server thread, and closes every
    /// userfaultfd the server holds (for a target that is still running,
    /// that unregisters its ranges: unserved pages then read as zeros, so
    /// wait for [`wait_populated`](Self::wait_populated) first). Joins every
    /// thread.
    pub fn stop(mut self) -> Result<(), ServerError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), ServerError> {
        self.shared.prefetcher.stop();
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        let _ = self.control_tx.send(Control::Stop);
        self.shared.wakeup.wake();
        let joined = thread.join();
        let _ = self.shared.janitor.send(Garbage::Stop);
        if let Some(janitor) = self.janitor.take()
            && janitor.join().is_err()
        {
            log::error!("the janitor thread panicked");
        }
        self.shared.set_stopped();
        if joined.is_err() || self.shared.crashed.load(Ordering::Acquire) {
            return Err(ServerError::Crashed);
        }
        Ok(())
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            log::error!("{e}");
        }
    }
}
