//! The Lazarus restore agent: serves the memory of a restored process (or a
//! VM's guest memory) lazily from an image, through userfaultfd.
//!
//! ```text
//!  image (snapshot-format) ──► ChunkCache (decoded chunks, bounded, sharded)
//!                                  │
//!   target address spaces          ▼
//!   (userfaultfds + Mappings) ──► FaultServer ── epoll thread: faults, events
//!                                  │           └─ prefetch pool: working set,
//!                                  │              zeros, rest in address order
//!                                  ▼
//!                           Stats (JSON) · working set (IMG.ws) · ServerEvents
//! ```
//!
//! # Entry points
//!
//! - [`restore_into`]: restore an image into the calling process (a runtime
//!   embedding Lazarus, the tests, the benchmarks).
//! - [`restore_process`]: restore a whole process captured with `lazarus
//!   capture --pid`, lazily (module [`process`]).
//! - [`FaultServer`]: serve any userfaultfd whose ranges are described by
//!   [`Mapping`]s. Process restore (a uffd taken from the restored process
//!   with `pidfd_getfd`) and `lazarus serve` (a VMM's uffd received over a
//!   socket) plug in here: [`FaultServer::add_space`].
//! - [`serve::Handler`]: `lazarus serve`, a Firecracker-compatible page-fault
//!   handler: VMMs hand it their guest memory's userfaultfd over a Unix
//!   socket; each becomes a space of one shared `FaultServer`.
//! - [`uffd`]: the userfaultfd layer (thin, safe, exactly mapped errors).
//!
//! `docs/AGENT.md` in the repository is the guide for library users.
//!
//! # Design notes (module docs)
//!
//! - `state`: page states and their transitions.
//! - `gate`: the REMOVE / REMAP vs. prefetch race, and why the gate closes it.
//! - `cache`: the chunk cache's locking and eviction.
//! - `server`: threading, spinning, batch semantics, fault policies.
//! - `prefetch`: the plan and the pool.
//! - `workset`: working-set recording and its file format.
//! - `restore`: in-process restore and how it ends.
//!
//! # The fault path
//!
//! Reading a message, looking up its page state and copying allocates
//! nothing and takes no global lock: buffers (message buffer, fault queue,
//! decoder, staging, cache slots) are allocated when the server, a space or a
//! worker starts; the segment table is read under its space's uncontended
//! read lock; the only other locks are the chunk's cache shard and its slot's
//! read lock. See `server/run.rs` and `tests/no_alloc.rs`.

pub mod cache;
mod fill;
mod gate;
pub mod mapping;
mod mem;
mod prefetch;
pub mod process;
pub mod restore;
pub mod serve;
pub mod server;
mod space;
mod state;
pub mod stats;
mod table;
pub mod uffd;
pub mod workset;

pub use cache::{CacheOptions, ChunkCache};
pub use mapping::{Mapping, MappingError};
pub use mem::{HUGE_PAGE_2M, MappedRegion};
pub use process::{
    PidChoice, ProcessRestoreError, ProcessRestoreOptions, RestoreSummary, RestoredProcess,
    restore_process,
};
pub use restore::{
    Placement, RestoreError, RestoreHandle, RestoreOptions, RestoredMemory, RestoredRegion,
    WorkingSetOptions, restore_into,
};
pub use server::{
    AddSpaceError, FaultPolicy, FaultServer, GoneReason, MAX_DEFAULT_PREFETCH_WORKERS, ServerError,
    ServerEvent, ServerOptions, SpaceMonitor, default_prefetch_workers,
};
pub use space::SpaceId;
pub use state::PageState;
pub use stats::{AddressSpaceStats, Stats};
pub use workset::{WorkingSet, WorkingSetError};
