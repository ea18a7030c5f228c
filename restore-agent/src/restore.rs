//! In-process restore: [`restore_into`] maps an image's regions into the
//! calling process and serves them lazily, from threads of the same process.
//!
//! ```text
//!  restore_into(image, opts)
//!   1. open a userfaultfd (REMOVE, UNMAP, REMAP, FORK, POISON events)
//!   2. mmap fresh anonymous memory per region: at its recorded address
//!      (MAP_FIXED_NOREPLACE: never over an existing mapping), at addresses
//!      the caller gives, or anywhere; hugetlbfs 2 MiB pages on request
//!   3. register each region MISSING
//!   4. start a FaultServer (and its prefetch pool) on it
//!   ──► RestoreHandle: regions(), stats(), wait_populated(), stop()
//! ```
//!
//! The faulting threads and the server are threads of one process, which is
//! fine: a thread that touches an unserved page blocks in the kernel until
//! the server thread fills it. The server and the prefetch workers never
//! touch the restored memory themselves (they copy *from* their own
//! buffers), so they cannot fault on it.
//!
//! # Ending a restore
//!
//! - [`RestoreHandle::stop`] completes the restore: it makes sure every page
//!   is populated (starting a prefetch pass if there was none), saves the
//!   working set, stops the threads and closes the userfaultfd, which
//!   unregisters the regions: from then on they are plain memory, owned by
//!   the returned [`RestoredMemory`]. Threads still faulting meanwhile are
//!   served normally.
//! - Dropping the handle without `stop` *abandons* the restore: the regions
//!   are made inaccessible (any access raises SIGSEGV, rather than reading
//!   zeros where snapshot pages were never served), the threads stop, and
//!   the regions are unmapped.
//!
//! # Memory safety
//!
//! The regions are handed out as addresses. Building slices over them is the
//! caller's `unsafe` business, valid until the handle (or the
//! [`RestoredMemory`]) is dropped.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use snapshot_format::{Image, PageSource};

use crate::mapping::Mapping;
use crate::mem::{At, HUGE_PAGE_2M, MappedRegion};
use crate::server::{AddSpaceError, FaultServer, ServerError, ServerOptions};
use crate::space::SpaceId;
use crate::stats::Stats;
use crate::uffd::{
    self, Features, HandshakeError, Ioctls, OpenOptions, Range, RegisterMode, Userfaultfd,
};
use crate::workset::{WorkingSet, WorkingSetError};

/// How long [`RestoreHandle::stop`] waits for population to make progress
/// before it gives up (the restore is then abandoned).
pub const STOP_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Where [`restore_into`] maps the regions.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Placement {
    /// At the addresses recorded in the image (fails if any is in use).
    #[default]
    Recorded,
    /// Wherever the kernel finds room, one mapping per region.
    Anywhere,
    /// At the given addresses, one per restored region, in order (fails if
    /// any is in use).
    At(Vec<u64>),
}

/// Working-set handling of a restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkingSetOptions {
    /// The file; `None` means beside the image ([`WorkingSet::default_path`]).
    pub path: Option<PathBuf>,
    /// Prefetch the loaded working set first (a missing or invalid file is
    /// ignored, with a warning; see [`RestoreHandle::working_set_error`]).
    pub load: bool,
    /// Record first faults and save them at [`RestoreHandle::stop`].
    pub save: bool,
}

impl WorkingSetOptions {
    /// Neither load nor save a working set.
    pub const NONE: Self = Self {
        path: None,
        load: false,
        save: false,
    };
}

impl Default for WorkingSetOptions {
    fn default() -> Self {
        Self {
            path: None,
            load: true,
            save: true,
        }
    }
}

/// Options of [`restore_into`].
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Where to map the regions.
    pub placement: Placement,
    /// Which regions of the image to restore (indices); `None`: all.
    pub regions: Option<Vec<usize>>,
    /// Back the regions with 2 MiB hugetlbfs pages (needs reserved huge
    /// pages; regions must be 2 MiB aligned). Pages are then served whole.
    pub huge_pages: bool,
    /// Refuse to restore if the kernel cannot report forks (the
    /// `EVENT_FORK` feature, which needs `CAP_SYS_PTRACE`): without it, a
    /// child forked before population would silently read zeros.
    pub require_fork_events: bool,
    /// The fault server.
    pub server: ServerOptions,
    /// Working set.
    pub working_set: WorkingSetOptions,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        Self {
            placement: Placement::Recorded,
            regions: None,
            huge_pages: false,
            require_fork_events: true,
            server: ServerOptions::default(),
            working_set: WorkingSetOptions::default(),
        }
    }
}

/// A restore could not be done.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The image's page size is not this system's.
    #[error("image page size {image} differs from the system page size {system}")]
    PageSize {
        /// The image's.
        image: u32,
        /// The system's.
        system: u64,
    },
    /// A region index that the image does not have.
    #[error("the image has no region {index} (it has {count})")]
    NoRegion {
        /// The index asked for.
        index: usize,
        /// Regions in the image.
        count: usize,
    },
    /// A region backed by a mapped file (its pages are not in the image).
    #[error(
        "region {index} at {addr:#x} has file-backed pages, which in-process restore cannot serve"
    )]
    FileBacked {
        /// Region index.
        index: usize,
        /// First file-backed address.
        addr: u64,
    },
    /// `Placement::At` with the wrong number of addresses.
    #[error("{given} addresses given for {regions} regions")]
    Placement {
        /// Addresses given.
        given: usize,
        /// Regions restored.
        regions: usize,
    },
    /// No usable userfaultfd.
    #[error(transparent)]
    Userfaultfd(#[from] HandshakeError),
    /// A region could not be mapped.
    #[error("cannot map region {index} ({len:#x} bytes at {addr:?}): {source}")]
    Map {
        /// Region index.
        index: usize,
        /// Where it was to go (None: anywhere).
        addr: Option<u64>,
        /// Length.
        len: u64,
        /// The error (`EEXIST`: the address range is in use).
        #[source]
        source: std::io::Error,
    },
    /// A region could not be registered.
    #[error("cannot register region {index} at {addr:#x}: {source}")]
    Register {
        /// Region index.
        index: usize,
        /// Its address.
        addr: u64,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The fault server could not start.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The regions could not be served.
    #[error(transparent)]
    Space(#[from] AddSpaceError),
    /// Population stopped progressing before [`RestoreHandle::stop`] could
    /// complete it; the restore was abandoned.
    #[error("population stalled with {remaining} pages left; the restore was abandoned")]
    Stalled {
        /// Pages still holding only image data.
        remaining: u64,
    },
}

/// A restored region: image region `index`, mapped at `addr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoredRegion {
    /// Index of the region in the image.
    pub index: usize,
    /// Where it is mapped.
    pub addr: u64,
    /// Its length.
    pub len: u64,
}

/// The memory of a completed restore: plain anonymous mappings, unmapped
/// when this is dropped (see [`leak`](Self::leak) to keep them).
#[derive(Debug)]
pub struct RestoredMemory {
    regions: Vec<RestoredRegion>,
    maps: Vec<MappedRegion>,
}

impl RestoredMemory {
    /// The regions.
    pub fn regions(&self) -> &[RestoredRegion] {
        &self.regions
    }

    /// Keeps the mappings for the rest of the process.
    pub fn leak(self) -> Vec<RestoredRegion> {
        let Self { regions, maps } = self;
        for m in maps {
            m.leak();
        }
        regions
    }

    fn protect_none(&self) {
        for m in &self.maps {
            if let Err(e) = m.protect_none() {
                log::error!("mprotect({:#x}): {e}", m.addr());
            }
        }
    }
}

/// A restore in progress (see the [module documentation](self)).
#[derive(Debug)]
pub struct RestoreHandle {
    server: Option<FaultServer>,
    space: SpaceId,
    memory: Option<RestoredMemory>,
    ws_path: Option<PathBuf>,
    ws_loaded: Option<WorkingSet>,
    ws_error: Option<WorkingSetError>,
    save_ws: bool,
}

/// Restores `image` into the calling process (see the
/// [module documentation](self)).
pub fn restore_into(
    image: Arc<Image>,
    opts: RestoreOptions,
) -> Result<RestoreHandle, RestoreError> {
    let RestoreOptions {
        placement,
        regions: selected,
        huge_pages,
        require_fork_events,
        server: mut server_opts,
        working_set,
    } = opts;
    let system = rustix::param::page_size() as u64;
    if u64::from(image.page_size()) != system {
        return Err(RestoreError::PageSize {
            image: image.page_size(),
            system,
        });
    }
    let count = image.regions().len();
    let indices = selected.unwrap_or_else(|| (0..count).collect());
    for &index in &indices {
        if index >= count {
            return Err(RestoreError::NoRegion { index, count });
        }
        if let Some(e) = image
            .region_extents(index)
            .iter()
            .find(|e| matches!(e.source, PageSource::File { .. }))
        {
            return Err(RestoreError::FileBacked {
                index,
                addr: e.start,
            });
        }
    }
    let addrs: Vec<At> = match placement {
        Placement::Recorded => indices
            .iter()
            .map(|&i| At::Fixed(image.regions()[i].start))
            .collect(),
        Placement::Anywhere => vec![At::Anywhere; indices.len()],
        Placement::At(v) => {
            if v.len() != indices.len() {
                return Err(RestoreError::Placement {
                    given: v.len(),
                    regions: indices.len(),
                });
            }
            v.into_iter().map(At::Fixed).collect()
        }
    };

    // Working set.
    let (ws_path, ws_loaded, ws_error) = load_working_set(&working_set, &image);
    if let Some(ws) = &ws_loaded {
        server_opts.prefetch_first = ws.chunks().to_vec();
    }
    server_opts.record_working_set |= working_set.save;

    // The userfaultfd.
    let mut required =
        Features::EVENT_REMOVE | Features::EVENT_UNMAP | Features::EVENT_REMAP | Features::POISON;
    let mut optional = Features::THREAD_ID;
    if require_fork_events {
        required |= Features::EVENT_FORK;
    } else {
        optional |= Features::EVENT_FORK;
    }
    if huge_pages {
        required |= Features::MISSING_HUGETLBFS;
    }
    let uffd = Userfaultfd::negotiate(&OpenOptions::new(), required, optional)?;

    // The regions.
    let mut regions = Vec::with_capacity(indices.len());
    let mut maps = Vec::with_capacity(indices.len());
    let mut mappings = Vec::with_capacity(indices.len());
    for (&index, &at) in indices.iter().zip(&addrs) {
        let info = &image.regions()[index];
        let map = MappedRegion::map(at, info.len, info.prot, huge_pages).map_err(|source| {
            RestoreError::Map {
                index,
                addr: match at {
                    At::Fixed(a) => Some(a),
                    At::Anywhere => None,
                },
                len: info.len,
                source,
            }
        })?;
        let ioctls = uffd::register(
            uffd.as_fd(),
            Range::new(map.addr(), map.len()),
            RegisterMode::MISSING,
        )
        .map_err(|source| RestoreError::Register {
            index,
            addr: map.addr(),
            source,
        })?;
        debug_assert!(ioctls.contains(Ioctls::COPY));
        let mut mapping = Mapping::new(map.addr(), info.start, info.len);
        if huge_pages {
            mapping = mapping.with_page_size(HUGE_PAGE_2M);
        }
        mappings.push(mapping);
        regions.push(RestoredRegion {
            index,
            addr: map.addr(),
            len: map.len(),
        });
        maps.push(map);
    }
    let memory = RestoredMemory { regions, maps };

    let server = FaultServer::start(image, server_opts)?;
    let space = server.add_space(uffd, &mappings)?;
    Ok(RestoreHandle {
        server: Some(server),
        space,
        memory: Some(memory),
        ws_path,
        ws_loaded,
        ws_error,
        save_ws: working_set.save,
    })
}

impl RestoreHandle {
    /// The restored regions.
    pub fn regions(&self) -> &[RestoredRegion] {
        self.memory.as_ref().map_or(&[], |m| m.regions())
    }

    /// The fault server (events, prefetch plan, working set).
    pub fn server(&self) -> &FaultServer {
        self.server
            .as_ref()
            .expect("the server lives until stop or drop")
    }

    /// The space of this process in the server.
    pub fn space(&self) -> SpaceId {
        self.space
    }

    /// Live statistics.
    pub fn stats(&self) -> Stats {
        self.server().stats()
    }

    /// Waits until every page is populated (see
    /// [`FaultServer::wait_populated`]); false on timeout.
    pub fn wait_populated(&self, timeout: Duration) -> bool {
        self.server().wait_populated(timeout)
    }

    /// The working set loaded at start, if any.
    pub fn loaded_working_set(&self) -> Option<&WorkingSet> {
        self.ws_loaded.as_ref()
    }

    /// Why the working-set file could not be used, if it existed but was
    /// invalid.
    pub fn working_set_error(&self) -> Option<&WorkingSetError> {
        self.ws_error.as_ref()
    }

    /// Completes the restore (see the [module documentation](self)): waits
    /// until every page is populated, prefetching whatever is left, saves
    /// the working set, stops the threads, and returns the memory, now plain
    /// anonymous memory. If population stops progressing for
    /// [`STOP_STALL_TIMEOUT`], the restore is abandoned instead.
    pub fn stop(mut self) -> Result<RestoredMemory, RestoreError> {
        let server = self
            .server
            .take()
            .expect("the server lives until stop or drop");
        server.populate();
        let mut last = u64::MAX;
        let mut progress = Instant::now();
        while !server.wait_populated(Duration::from_millis(100)) {
            let remaining = server.stats().population.remaining_pages;
            if remaining < last {
                last = remaining;
                progress = Instant::now();
            } else if progress.elapsed() > STOP_STALL_TIMEOUT {
                self.server = Some(server);
                return Err(RestoreError::Stalled { remaining });
            }
        }
        if self.save_ws
            && let Some(path) = &self.ws_path
        {
            save_working_set(&server, self.ws_loaded.as_ref(), path);
        }
        server.stop()?;
        Ok(self.memory.take().expect("memory lives until stop or drop"))
    }
}

/// The working-set file of a restore (`opts.path`, else beside the image) and, with
/// `opts.load`, the working set loaded from it: an invalid file is ignored with a
/// warning (its error is returned).
pub(crate) fn load_working_set(
    opts: &WorkingSetOptions,
    image: &Image,
) -> (Option<PathBuf>, Option<WorkingSet>, Option<WorkingSetError>) {
    let path = opts
        .path
        .clone()
        .or_else(|| image.top().path().map(WorkingSet::default_path));
    if opts.load
        && let Some(p) = &path
        && p.exists()
    {
        return match WorkingSet::load(p, image) {
            Ok(ws) => (path, Some(ws), None),
            Err(e) => {
                log::warn!("{e}; prefetching in address order");
                (path, None, Some(e))
            }
        };
    }
    (path, None, None)
}

/// Saves the working set recorded by `server`: the loaded one (if any) followed by the
/// chunks first faulted this time that it did not hold (a working set only grows;
/// delete the file to learn it again). Nothing is written if nothing was recorded;
/// a failure is logged. Returns whether a file was written.
pub(crate) fn save_working_set(
    server: &FaultServer,
    loaded: Option<&WorkingSet>,
    path: &std::path::Path,
) -> bool {
    let recorded = server.working_set();
    if recorded.chunks().is_empty() {
        return false;
    }
    let loaded = loaded.map_or(&[][..], WorkingSet::chunks);
    let ws = WorkingSet::new(
        recorded.image(),
        loaded.iter().chain(recorded.chunks()).copied(),
    );
    match ws.save(path) {
        Ok(()) => true,
        Err(e) => {
            log::warn!("{e}");
            false
        }
    }
}

impl Drop for RestoreHandle {
    /// Abandons the restore (see the module docs).
    fn drop(&mut self) {
        if let Some(memory) = &self.memory {
            memory.protect_none();
        }
        if let Some(server) = self.server.take()
            && let Err(e) = server.stop()
        {
            log::error!("{e}");
        }
        self.memory.take();
    }
}
