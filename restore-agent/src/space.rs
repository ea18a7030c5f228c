//! One served address space: its userfaultfd, its [`Gate`], its segment
//! table and unit states, its population counter, and the application of
//! the non-cooperative events that change it.
//!
//! Events are applied only by the server thread, with the gate closed (see
//! `gate.rs`), in the order the kernel delivered them, and before the faults
//! of the same read are served:
//!
//! | event  | effect                                                        |
//! | ------ | ------------------------------------------------------------- |
//! | REMOVE | units in the range become `Zero` (never stale bytes later)    |
//! | UNMAP  | the range is forgotten (its units no longer count)            |
//! | REMAP  | the range's segments move to the new address, states and all |
//! | FORK   | a new space with a copy of the table and states               |
//!
//! A move is reported as REMAP then UNMAP of the old range (and, for
//! `MREMAP_FIXED` over a mapped range, UNMAP of the destination first): since
//! REMAP already moved the segments, the UNMAP of the old range finds nothing
//! left to forget. With `MREMAP_DONTUNMAP` the old range stays mapped and
//! registered, empty: its faults are outside every segment and get zeros,
//! which is what the kernel gives an empty private anonymous range.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

use crossbeam_channel::Sender;

use serde::Serialize;

use crate::gate::Gate;
use crate::server::Garbage;
use crate::state::PageState;
use crate::stats::SpaceMetrics;
use crate::table::{Segment, Table};
use crate::uffd::{Features, Userfaultfd};
use crate::workset::Recorder;

/// Identifies an address space served by a [`FaultServer`](crate::FaultServer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct SpaceId(pub u64);

impl std::fmt::Display for SpaceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "space {}", self.0)
    }
}

/// Wakes the server thread (an eventfd in its epoll set).
#[derive(Debug)]
pub(crate) struct Wakeup {
    fd: OwnedFd,
}

impl Wakeup {
    pub(crate) fn new() -> std::io::Result<Self> {
        use rustix::event::{EventfdFlags, eventfd};
        Ok(Self {
            fd: eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?,
        })
    }

    /// Makes the server thread look at its control queue and population.
    pub(crate) fn wake(&self) {
        // EAGAIN means the counter is saturated: the server is woken anyway.
        let _ = rustix::io::write(&self.fd, &1u64.to_ne_bytes());
    }

    /// Clears pending wake-ups (server thread).
    pub(crate) fn clear(&self) {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&self.fd, &mut buf);
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// One address space (see the module docs).
#[derive(Debug)]
pub(crate) struct Space {
    pub(crate) id: SpaceId,
    /// Always `Some` until drop (see [`Space::fail_closed`]).
    uffd: Option<Userfaultfd>,
    pub(crate) gate: Gate,
    /// Read by workers inside the gate and by the server thread; written
    /// only by the server thread with the gate closed, so never contended.
    table: RwLock<Table>,
    /// Bumped each time the table is replaced.
    table_gen: AtomicU64,
    /// Its statistics, its count of units in `Snapshot` state and its
    /// working-set recorder (shared with monitors: they outlive the space).
    pub(crate) metrics: Arc<SpaceMetrics>,
    /// The target exited (or the space was removed).
    pub(crate) gone: AtomicBool,
    /// The prefetch pass finished (true from the start without prefetch).
    pub(crate) prefetch_done: AtomicBool,
    /// Keep the userfaultfd open forever instead of closing it on drop.
    leak_fd: AtomicBool,
    /// A registered address, for liveness probes.
    probe_addr: u64,
    wakeup: Arc<Wakeup>,
    /// Where segments cut out by events go to be freed.
    janitor: Sender<Garbage>,
}

impl Space {
    /// A space of `snapshot_units` units to fill; records its own working
    /// set into `recorder` if given.
    pub(crate) fn new(
        id: SpaceId,
        uffd: Userfaultfd,
        table: Table,
        snapshot_units: u64,
        recorder: Option<Recorder>,
        wakeup: Arc<Wakeup>,
        janitor: Sender<Garbage>,
    ) -> Self {
        let probe_addr = table.segments().first().map_or(0, |s| s.host);
        Self {
            id,
            uffd: Some(uffd),
            gate: Gate::default(),
            table: RwLock::new(table),
            table_gen: AtomicU64::new(0),
            metrics: Arc::new(SpaceMetrics::new(id, snapshot_units, recorder)),
            gone: AtomicBool::new(false),
            prefetch_done: AtomicBool::new(true),
            leak_fd: AtomicBool::new(false),
            probe_addr,
            wakeup,
            janitor,
        }
    }

    /// The userfaultfd.
    pub(crate) fn uffd(&self) -> &Userfaultfd {
        self.uffd
            .as_ref()
            .expect("the userfaultfd is only taken in drop")
    }

    /// The userfaultfd as a borrowed fd.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.uffd().as_fd()
    }

    /// Its features.
    pub(crate) fn features(&self) -> Features {
        self.uffd().features()
    }

    /// The current table. Workers hold it only inside the gate (and drop it
    /// before they leave); the server thread at any time (it is the only
    /// writer).
    pub(crate) fn table(&self) -> RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The table generation (changes whenever the table is replaced).
    pub(crate) fn table_gen(&self) -> u64 {
        self.table_gen.load(Ordering::Acquire)
    }

    /// Changes the table in place (server thread, gate closed) without
    /// allocating: cut-out segments go to the janitor (see `table.rs`).
    fn edit_table(&self, edit: impl FnOnce(&mut Table, &mut dyn FnMut(Segment))) {
        let mut forgotten = 0;
        {
            let mut table = self.table.write().unwrap_or_else(PoisonError::into_inner);
            let mut dropped = |s: Segment| {
                forgotten += s.count(0, s.units(), PageState::Snapshot);
                if let Err(e) = self.janitor.try_send(Garbage::Segment(s)) {
                    // The janitor is behind: free it here.
                    drop(e.into_inner());
                }
            };
            edit(&mut table, &mut dropped);
            table.top_up();
        }
        self.table_gen.fetch_add(1, Ordering::AcqRel);
        self.units_done(forgotten);
    }

    /// Units still in `Snapshot` state.
    pub(crate) fn remaining(&self) -> u64 {
        self.metrics.remaining.load(Ordering::Acquire)
    }

    /// `n` units left the `Snapshot` state (by a fill, poison or event);
    /// wakes the server when none is left, so it can update the population.
    pub(crate) fn units_done(&self, n: u64) {
        if n == 0 {
            return;
        }
        let prev = self.metrics.remaining.fetch_sub(n, Ordering::AcqRel);
        debug_assert!(prev >= n, "remaining units underflow");
        if prev == n {
            self.wakeup.wake();
        }
    }

    /// The prefetch pass ended.
    pub(crate) fn set_prefetch_done(&self, done: bool) {
        self.prefetch_done.store(done, Ordering::Release);
        if done {
            self.wakeup.wake();
        }
    }

    /// No unit needs image data and the prefetch pass (if any) is over.
    pub(crate) fn is_populated(&self) -> bool {
        self.remaining() == 0 && self.prefetch_done.load(Ordering::Acquire)
    }

    /// Whether the target is known to be gone.
    pub(crate) fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Acquire)
    }

    /// Marks the target gone (a fill got `ESRCH`); the server drops the space.
    pub(crate) fn set_gone(&self) {
        if !self.gone.swap(true, Ordering::AcqRel) {
            self.wakeup.wake();
        }
    }

    /// Asks the kernel whether the target still exists.
    pub(crate) fn probe_alive(&self) -> bool {
        if self.probe_addr == 0 {
            return true;
        }
        crate::uffd::target_alive(self.fd(), self.probe_addr).unwrap_or(true)
    }

    /// From now on, never close the userfaultfd: used when the server dies
    /// unexpectedly, so that the target's unserved pages block its threads
    /// instead of silently reading as zeros (the kernel unregisters a range
    /// when its userfaultfd is closed).
    pub(crate) fn fail_closed(&self) {
        self.leak_fd.store(true, Ordering::Release);
    }

    // -- events (server thread, gate closed) ------------------------------

    /// REMOVE: units of `[start, end)` become `Zero`.
    pub(crate) fn apply_remove(&self, start: u64, end: u64) {
        let table = self.table();
        let mut done = 0;
        for seg in table.segments() {
            if seg.end() <= start || seg.host >= end {
                continue;
            }
            let u0 = seg.unit_at(start.max(seg.host));
            let u1 = seg.unit_at(end.min(seg.end()) - 1) + 1;
            for u in u0..u1 {
                if seg.replace(u, PageState::Zero) == PageState::Snapshot {
                    done += 1;
                }
            }
        }
        self.units_done(done);
    }

    /// UNMAP: forget `[start, end)`.
    pub(crate) fn apply_unmap(&self, start: u64, end: u64) {
        self.edit_table(|t, dropped| t.remove(start, end, dropped));
    }

    /// REMAP: `[from, from + len)` moved to `to`.
    pub(crate) fn apply_remap(&self, from: u64, to: u64, len: u64) {
        self.edit_table(|t, dropped| t.remap(from, to, len, dropped));
    }

    /// FORK: the child's space, with a copy of this one's table and states
    /// (and statistics of its own; it records no working set of its own).
    /// (Allocates: called right after the FORK event was read, when that is
    /// safe; see `server/run.rs`.)
    pub(crate) fn fork(&self, id: SpaceId, uffd: Userfaultfd) -> Self {
        let (table, snapshot) = self.table().deep_copy();
        Self::new(
            id,
            uffd,
            table,
            snapshot,
            None,
            Arc::clone(&self.wakeup),
            self.janitor.clone(),
        )
    }
}

impl Drop for Space {
    fn drop(&mut self) {
        if self.leak_fd.load(Ordering::Acquire)
            && let Some(uffd) = self.uffd.take()
        {
            std::mem::forget(uffd);
        }
    }
}
