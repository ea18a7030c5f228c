//! Filling units: the `UFFDIO_COPY` / `ZEROPAGE` / `POISON` loops shared by
//! the fault thread and the prefetch workers, with their state accounting
//! and error handling.
//!
//! Every routine fills a unit range `[u0, u1)` of one segment *as far as the
//! states allow*: it only copies `Snapshot` units, only zeroes `Zero` units,
//! and moves each unit it filled forward with a compare-and-swap. The kernel
//! outcome decides what happens next (see `uffd::FillError`):
//!
//! | result              | action                                                  |
//! | ------------------- | ------------------------------------------------------- |
//! | done                | units → `Served` (or `Poisoned`)                        |
//! | `EAGAIN`, progress  | count the units done, go on after them                  |
//! | `EAGAIN`, none      | an event is pending: return [`Outcome::Again`]          |
//! | `EEXIST`            | that unit is present: `Served`, wake its waiters, go on |
//! | `ENOENT`            | the range is gone (an UNMAP is pending): stop           |
//! | `ESRCH`             | the target exited: mark the space gone                  |
//!
//! Nothing here allocates; the per-thread buffers live in [`Filler`].

use std::io;
use std::sync::Arc;

use snapshot_format::{ChunkId, Image, PageSource};

use crate::cache::{BadChunk, ChunkCache, Scratch, Use};
use crate::mapping::MAX_UNIT_SIZE;
use crate::space::Space;
use crate::state::PageState;
use crate::stats::Counters;
use crate::table::Segment;
use crate::uffd::{self, CopyMode, Features, FillError, PoisonMode, Range, ZeroPageMode};

/// How a fill ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Everything the states asked for is filled.
    Done,
    /// An event is pending (`EAGAIN`): read events, then look again.
    Again,
    /// The range is no longer mapped (`ENOENT`): an UNMAP is pending.
    NoEntry,
    /// The target exited (`ESRCH`); the space is marked gone.
    Gone,
    /// The fill failed otherwise (logged); the units stay as they were.
    Failed,
}

/// What every filling thread shares: the image, the cache, a zero buffer.
#[derive(Debug)]
pub(crate) struct Env {
    pub(crate) image: Arc<Image>,
    pub(crate) cache: ChunkCache,
    /// `MAX_UNIT_SIZE` zero bytes: the source of zero huge pages.
    pub(crate) zeros: Box<[u8]>,
}

impl Env {
    pub(crate) fn new(image: Arc<Image>, cache: ChunkCache) -> Self {
        Self {
            image,
            cache,
            zeros: vec![0u8; MAX_UNIT_SIZE as usize].into_boxed_slice(),
        }
    }

    /// Whether the units of `seg` are image pages (each unit lies in one
    /// extent, so runs of units are copied straight from a cached chunk);
    /// otherwise (huge pages) units are assembled in a staging buffer.
    pub(crate) fn direct(&self, seg: &Segment) -> bool {
        seg.unit == u64::from(self.image.page_size())
    }
}

/// One filling thread's private state, allocated when the thread starts.
#[derive(Debug)]
pub(crate) struct Filler {
    pub(crate) scratch: Scratch,
    /// Where huge units are assembled (`MAX_UNIT_SIZE` bytes, untouched, so
    /// not backed by memory, until a huge unit is served).
    pub(crate) staging: Box<[u8]>,
    pub(crate) counters: Arc<Counters>,
}

impl Filler {
    pub(crate) fn new(image: &Image, counters: Arc<Counters>) -> io::Result<Self> {
        Ok(Self {
            scratch: Scratch::new(image)?,
            staging: vec![0u8; MAX_UNIT_SIZE as usize].into_boxed_slice(),
            counters,
        })
    }
}

/// Moves units `[u0, u1)` from `from` to `to`; returns how many moved and,
/// for moves out of `Snapshot`, tells the space.
fn advance(space: &Space, seg: &Segment, u0: usize, u1: usize, from: PageState, to: PageState) {
    let moved = (u0..u1).filter(|&u| seg.transition(u, from, to)).count() as u64;
    if from == PageState::Snapshot {
        space.units_done(moved);
    }
}

/// Wakes the waiters of unit `u` (`UFFDIO_WAKE`; a failure is logged).
pub(crate) fn wake_unit(space: &Space, seg: &Segment, u: usize, counters: &Counters) {
    counters.wake_ioctls.inc();
    if let Err(e) = uffd::wake(space.fd(), Range::new(seg.host_of(u), seg.unit)) {
        log::warn!("{}: UFFDIO_WAKE at {:#x}: {e}", space.id, seg.host_of(u));
    }
}

fn failed(space: &Space, what: &str, addr: u64, e: &FillError) -> Outcome {
    log::error!("{}: {what} at {addr:#x}: {e}", space.id);
    Outcome::Failed
}

/// The bytes a fill reports done: all of them, or the progress an `EAGAIN`
/// carries.
fn bytes_done(result: &Result<u64, FillError>) -> u64 {
    match result {
        Ok(n) => *n,
        Err(FillError::Again { done }) => *done,
        Err(_) => 0,
    }
}

/// The loop every fill shares: for each run of units in state `from` within
/// `[u0, u1)`, `fill(u, v)` installs units `[u, v)` with one ioctl (doing its
/// own byte accounting); the units it reports done move to `to`, and its
/// error decides what comes next (the table in the module docs). `what`
/// names the ioctl in logs.
#[allow(clippy::too_many_arguments)]
fn fill_runs(
    space: &Space,
    seg: &Segment,
    (u0, u1): (usize, usize),
    (from, to): (PageState, PageState),
    what: &str,
    wake: bool,
    counters: &Counters,
    mut fill: impl FnMut(usize, usize) -> Result<u64, FillError>,
) -> Outcome {
    let mut u = u0;
    while u < u1 {
        if seg.state(u) != from {
            u += 1;
            continue;
        }
        let mut v = u + 1;
        while v < u1 && seg.state(v) == from {
            v += 1;
        }
        let result = fill(u, v);
        let done_units = (bytes_done(&result) / seg.unit) as usize;
        advance(space, seg, u, u + done_units, from, to);
        match result {
            Ok(_) => u = v,
            Err(FillError::Again { done }) if done > 0 => u += done_units,
            Err(FillError::Again { .. }) => {
                counters.eagain.inc();
                space.metrics.counters.eagain.inc();
                return Outcome::Again;
            }
            Err(FillError::Exists) => {
                // Present already (a poisoned unit cannot be: bad chunks are
                // never copied): served, wake its waiters.
                counters.eexist.inc();
                advance(space, seg, u, u + 1, from, PageState::Served);
                if wake {
                    wake_unit(space, seg, u, counters);
                }
                u += 1;
            }
            Err(FillError::NoEntry) => return Outcome::NoEntry,
            Err(FillError::TargetGone) => {
                space.set_gone();
                return Outcome::Gone;
            }
            Err(e) => return failed(space, what, seg.host_of(u), &e),
        }
    }
    Outcome::Done
}

/// Copies the `Snapshot` units of `[u0, u1)` from `bytes` (which hold exactly
/// those units' contents). `wake`: wake the waiters of the filled range
/// (otherwise `DONTWAKE`). `prefetch`: count the bytes as prefetched.
#[allow(clippy::too_many_arguments)]
pub(crate) fn copy_units(
    space: &Space,
    seg: &Segment,
    u0: usize,
    u1: usize,
    bytes: &[u8],
    wake: bool,
    prefetch: bool,
    counters: &Counters,
) -> Outcome {
    debug_assert_eq!(bytes.len() as u64, (u1 - u0) as u64 * seg.unit);
    let unit = seg.unit as usize;
    let mode = if wake {
        CopyMode::empty()
    } else {
        CopyMode::DONTWAKE
    };
    let states = (PageState::Snapshot, PageState::Served);
    fill_runs(
        space,
        seg,
        (u0, u1),
        states,
        "UFFDIO_COPY",
        wake,
        counters,
        |u, v| {
            let src = &bytes[(u - u0) * unit..(v - u0) * unit];
            counters.copy_ioctls.inc();
            let result = uffd::copy(space.fd(), seg.host_of(u), src, mode);
            let done = bytes_done(&result);
            counters.bytes_copied.add(done);
            if prefetch {
                counters.prefetch_bytes.add(done);
                space.metrics.counters.prefetch_bytes.add(done);
            } else {
                space.metrics.counters.fault_bytes.add(done);
            }
            result
        },
    )
}

/// Fills the `Zero` units of `[u0, u1)` with zeros: `UFFDIO_ZEROPAGE` over
/// whole runs for base pages, a copy of zeros per unit for huge pages.
pub(crate) fn zero_units(
    env: &Env,
    space: &Space,
    seg: &Segment,
    u0: usize,
    u1: usize,
    wake: bool,
    counters: &Counters,
) -> Outcome {
    let states = (PageState::Zero, PageState::Served);
    fill_runs(
        space,
        seg,
        (u0, u1),
        states,
        "zero fill",
        wake,
        counters,
        |u, v| {
            let len = (v - u) as u64 * seg.unit;
            fill_zero(env, space, seg.host_of(u), len, seg.unit, wake, counters)
        },
    )
}

/// Installs zeros at `[addr, addr + len)` in units of `unit`: one
/// `UFFDIO_ZEROPAGE` for base pages, copies of the zero buffer for huge
/// pages (hugetlbfs has no zero page). Returns the bytes filled.
pub(crate) fn fill_zero(
    env: &Env,
    space: &Space,
    addr: u64,
    len: u64,
    unit: u64,
    wake: bool,
    counters: &Counters,
) -> Result<u64, FillError> {
    if unit <= rustix::param::page_size() as u64 {
        counters.zeropage_ioctls.inc();
        let mode = if wake {
            ZeroPageMode::empty()
        } else {
            ZeroPageMode::DONTWAKE
        };
        let n = uffd::zeropage(space.fd(), Range::new(addr, len), mode);
        let done = bytes_done(&n);
        counters.bytes_zeroed.add(done);
        space.metrics.counters.zeroed_bytes.add(done);
        return n;
    }
    let mode = if wake {
        CopyMode::empty()
    } else {
        CopyMode::DONTWAKE
    };
    let mut done = 0;
    while done < len {
        counters.copy_ioctls.inc();
        match uffd::copy(space.fd(), addr + done, &env.zeros[..unit as usize], mode) {
            Ok(n) => {
                done += n;
                counters.bytes_zeroed.add(n);
                space.metrics.counters.zeroed_bytes.add(n);
            }
            Err(e) if done > 0 => {
                // Report the progress first; the caller retries and sees `e`.
                log::debug!("{}: zero copy stopped after {done} bytes: {e}", space.id);
                return Err(FillError::Again { done });
            }
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Poisons the `Snapshot` units of `[u0, u1)` (their chunk is corrupt): any
/// access raises SIGBUS. Without the POISON feature the units are marked
/// `Poisoned` but nothing is installed: their faults stay unserved (the
/// thread blocks) rather than read wrong bytes.
pub(crate) fn poison_units(
    space: &Space,
    seg: &Segment,
    u0: usize,
    u1: usize,
    wake: bool,
    counters: &Counters,
) -> Outcome {
    if !space.features().contains(Features::POISON) {
        advance(space, seg, u0, u1, PageState::Snapshot, PageState::Poisoned);
        return Outcome::Failed;
    }
    let mode = if wake {
        PoisonMode::empty()
    } else {
        PoisonMode::DONTWAKE
    };
    let states = (PageState::Snapshot, PageState::Poisoned);
    fill_runs(
        space,
        seg,
        (u0, u1),
        states,
        "UFFDIO_POISON",
        wake,
        counters,
        |u, v| {
            counters.poison_ioctls.inc();
            uffd::poison(
                space.fd(),
                Range::new(seg.host_of(u), (v - u) as u64 * seg.unit),
                mode,
            )
        },
    )
}

/// Assembles the image bytes of `[addr, addr + out.len())` (one huge unit)
/// into `out`, calling `on_chunk` for each chunk it reads. `Err` if a chunk
/// is corrupt (the whole unit must then be poisoned).
pub(crate) fn assemble(
    env: &Env,
    scratch: &mut Scratch,
    addr: u64,
    out: &mut [u8],
    usage: Use,
    counters: &Counters,
    mut on_chunk: impl FnMut(ChunkId),
) -> Result<(), BadChunk> {
    let mut off = 0usize;
    while off < out.len() {
        let a = addr + off as u64;
        let Some(loc) = env.image.locate(a) else {
            // Mappings are checked against the image when added.
            out[off..].fill(0);
            return Ok(());
        };
        let n = (out.len() - off).min(usize::try_from(loc.len).unwrap_or(usize::MAX));
        match loc.source {
            PageSource::Zero => out[off..off + n].fill(0),
            PageSource::Chunk { chunk, offset } => {
                on_chunk(chunk);
                let bytes = env.cache.get(chunk, scratch, usage, counters)?;
                let o = offset as usize;
                out[off..off + n].copy_from_slice(&bytes[o..o + n]);
            }
            // Mappings over file-backed extents are refused when added.
            PageSource::File { .. } => out[off..off + n].fill(0),
        }
        off += n;
    }
    Ok(())
}
