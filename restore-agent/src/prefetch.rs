//! The prefetch pool: worker threads that populate address spaces ahead of
//! their faults.
//!
//! ```text
//!  add_pass(space) ──► feeder thread ──(bounded crossbeam channel)──► worker 1..N
//!                      walks the plan        Task { pass, item }      take the chunk from the cache,
//!                      for each pass                                  enter the space's gate, copy
//! ```
//!
//! - **The plan** is one order for every space: the loaded working set's
//!   chunks first (in first-fault order), then one sweep that maps every
//!   zero run with `UFFDIO_ZEROPAGE` (2 MiB per call, about 30 GB/s here),
//!   then every other chunk in address order (of its first use).
//! - **A pass** is the plan applied to one space. A space added by FORK gets
//!   its own pass (its state was copied, so it only fills what the parent
//!   had not when it forked).
//! - **A task** fills one chunk's uses in a space (or runs the zero sweep):
//!   the worker takes the decoded chunk from the [`ChunkCache`] *before*
//!   entering the gate, then, inside, maps the uses through the space's
//!   current table, copies the runs of `Snapshot` units (one `UFFDIO_COPY`
//!   per run, waking any waiter), and leaves. See `gate.rs` for why this
//!   cannot install stale bytes after a REMOVE, REMAP or UNMAP.
//! - **Faults first**: a worker backs off while the server wants the gate
//!   and yields its CPU between tasks while the server has faults queued;
//!   the server never waits for a worker's decompression.
//! - **Ending**: the feeder exits when no pass is left, which closes the
//!   task channel and ends the workers; a space that goes away (its target
//!   exited: `ESRCH`) has its remaining tasks skipped; `stop()` ends
//!   everything at the next task. A later pass (a fork) starts a new run.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use snapshot_format::{ChunkId, Image, PageSource};

use crate::cache::Use;
use crate::fill::{self, Env, Filler, Outcome};
use crate::gate::MAX_COPY_PER_ENTRY;
use crate::space::Space;
use crate::state::PageState;
use crate::stats::Counters;
use crate::table::Table;

/// The most bytes of zero pages one gate entry maps.
const MAX_ZERO_PER_ENTRY: u64 = 2 * 1024 * 1024;

/// How long a worker pauses after `EAGAIN` before it looks again (the
/// server reads the pending event meanwhile).
const AGAIN_PAUSE: Duration = Duration::from_micros(20);

/// Tasks queued ahead of the workers, per worker.
const QUEUE_PER_WORKER: usize = 2;

/// One step of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Item {
    /// Fill every use of a chunk.
    Chunk(ChunkId),
    /// Map every `Zero` unit of base-page segments with zero pages.
    ZeroSweep,
}

/// The plan (see the module docs): `first` (a working set) first, then the
/// zero sweep, then every other used chunk in address order.
pub(crate) fn build_plan(image: &Image, first: &[ChunkId]) -> Vec<Item> {
    let n = image.chunks().len();
    let mut seen = vec![false; n];
    let mut plan = Vec::with_capacity(n + 1);
    for &c in first {
        if let Some(flag) = seen.get_mut(c.0 as usize)
            && !*flag
            && !image.chunk_uses(c).is_empty()
        {
            *flag = true;
            plan.push(Item::Chunk(c));
        }
    }
    plan.push(Item::ZeroSweep);
    for e in image.extents() {
        if let PageSource::Chunk { chunk, .. } = e.source
            && let Some(flag) = seen.get_mut(chunk.0 as usize)
            && !*flag
        {
            *flag = true;
            plan.push(Item::Chunk(chunk));
        }
    }
    plan
}

/// The plan applied to one space.
#[derive(Debug)]
pub(crate) struct Pass {
    space: Arc<Space>,
    /// Plan items not finished yet.
    left: AtomicUsize,
}

impl Pass {
    /// `n` items finished (or skipped); the last one marks the space's
    /// prefetch done.
    fn finish(&self, n: usize) {
        if n > 0 && self.left.fetch_sub(n, Ordering::AcqRel) == n {
            self.space.set_prefetch_done(true);
        }
    }
}

#[derive(Debug)]
struct Task {
    pass: Arc<Pass>,
    item: usize,
}

/// What the feeder and the workers share.
#[derive(Debug)]
pub(crate) struct PoolShared {
    pub(crate) env: Arc<Env>,
    pub(crate) plan: Arc<[Item]>,
    pub(crate) workers: usize,
    pub(crate) stop: AtomicBool,
    /// The server has faults queued: yield between tasks.
    pub(crate) busy: Arc<AtomicBool>,
    /// Every worker's counters are registered here.
    pub(crate) counters: Arc<Mutex<Vec<Arc<Counters>>>>,
}

#[derive(Debug, Default)]
struct RunState {
    /// The run in progress: where to send new passes.
    passes: Option<Sender<Arc<Pass>>>,
    /// Threads of every run started, joined on stop (or when finished).
    threads: Vec<JoinHandle<()>>,
}

/// The pool controller (see the module docs).
#[derive(Debug)]
pub(crate) struct Prefetcher {
    shared: Arc<PoolShared>,
    state: Arc<Mutex<RunState>>,
}

impl Prefetcher {
    pub(crate) fn new(shared: PoolShared) -> Self {
        Self {
            shared: Arc::new(shared),
            state: Arc::default(),
        }
    }

    /// Whether prefetching is enabled at all.
    pub(crate) fn enabled(&self) -> bool {
        self.shared.workers > 0
    }

    /// The plan's chunks, in order.
    pub(crate) fn plan_chunks(&self) -> Vec<ChunkId> {
        self.shared
            .plan
            .iter()
            .filter_map(|i| match i {
                Item::Chunk(c) => Some(*c),
                Item::ZeroSweep => None,
            })
            .collect()
    }

    /// Whether a run is in progress.
    pub(crate) fn running(&self) -> bool {
        self.lock().passes.is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RunState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts prefetching `space` (the caller set its `prefetch_done` to
    /// false). `force`: even if the pool is disabled (with one worker).
    pub(crate) fn add_pass(&self, space: Arc<Space>, force: bool) {
        if !(self.enabled() || force) || self.shared.stop.load(Ordering::Acquire) {
            space.set_prefetch_done(true);
            return;
        }
        let pass = Arc::new(Pass {
            space,
            left: AtomicUsize::new(self.shared.plan.len()),
        });
        let mut state = self.lock();
        if let Some(tx) = &state.passes {
            // The feeder decides to exit only while holding this lock, after
            // seeing its pass channel empty: a pass sent now is always taken.
            if tx.send(Arc::clone(&pass)).is_ok() {
                return;
            }
        }
        // Join the threads of finished runs before starting a new one.
        state.threads.retain(|t| !t.is_finished());
        let (pass_tx, pass_rx) = crossbeam_channel::unbounded();
        pass_tx.send(pass).expect("receiver alive");
        let workers = self.shared.workers.max(1);
        let (task_tx, task_rx) = crossbeam_channel::bounded(workers * QUEUE_PER_WORKER);
        let mut threads = Vec::with_capacity(workers + 1);
        for i in 0..workers {
            let shared = Arc::clone(&self.shared);
            let rx = task_rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("lazarus-prefetch-{i}"))
                .spawn(move || worker(&shared, &rx));
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => log::error!("cannot start prefetch worker {i}: {e}"),
            }
        }
        let shared = Arc::clone(&self.shared);
        let run_state = Arc::clone(&self.state);
        let spawned = std::thread::Builder::new()
            .name("lazarus-prefetch-feed".into())
            .spawn(move || feeder(&shared, &run_state, &pass_rx, &task_tx));
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                log::error!("cannot start the prefetch feeder: {e}");
                return;
            }
        }
        state.passes = Some(pass_tx);
        state.threads.extend(threads);
    }

    /// Stops every run at its next task and joins all threads.
    pub(crate) fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
        let threads = {
            let mut state = self.lock();
            state.passes = None;
            std::mem::take(&mut state.threads)
        };
        for t in threads {
            if t.join().is_err() {
                log::error!("a prefetch thread panicked");
            }
        }
    }
}

/// Feeds the tasks of each pass, in plan order, until no pass is left.
fn feeder(
    shared: &PoolShared,
    state: &Mutex<RunState>,
    passes: &Receiver<Arc<Pass>>,
    tasks: &Sender<Task>,
) {
    loop {
        let pass = match passes.try_recv() {
            Ok(p) => p,
            Err(_) => {
                let mut st = state.lock().unwrap_or_else(PoisonError::into_inner);
                match passes.try_recv() {
                    Ok(p) => p,
                    Err(_) => {
                        st.passes = None;
                        return;
                    }
                }
            }
        };
        for item in 0..shared.plan.len() {
            if shared.stop.load(Ordering::Acquire) {
                return;
            }
            if pass.space.is_gone() {
                pass.finish(shared.plan.len() - item);
                break;
            }
            let mut task = Task {
                pass: Arc::clone(&pass),
                item,
            };
            loop {
                match tasks.try_send(task) {
                    Ok(()) => break,
                    Err(TrySendError::Full(t)) => {
                        if shared.stop.load(Ordering::Acquire) {
                            return;
                        }
                        task = t;
                        std::thread::sleep(Duration::from_micros(50));
                    }
                    Err(TrySendError::Disconnected(_)) => return,
                }
            }
        }
    }
}

/// A worker: runs tasks until the channel closes or the pool stops.
fn worker(shared: &PoolShared, tasks: &Receiver<Task>) {
    let counters = Arc::new(Counters::default());
    shared
        .counters
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Arc::clone(&counters));
    let mut filler = match Filler::new(&shared.env.image, counters) {
        Ok(f) => f,
        Err(e) => {
            log::error!("prefetch worker cannot allocate its decoder: {e}");
            return;
        }
    };
    let mut w = Worker {
        shared,
        filler: &mut filler,
        huge_units: Vec::new(),
    };
    while let Ok(task) = tasks.recv() {
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        let space = Arc::clone(&task.pass.space);
        if !space.is_gone() {
            match shared.plan[task.item] {
                Item::Chunk(c) => w.chunk(&space, c),
                Item::ZeroSweep => w.zero_sweep(&space),
            }
            w.filler.counters.prefetch_items.inc();
        }
        task.pass.finish(1);
        if shared.busy.load(Ordering::Relaxed) || space.gate.reader_waiting() {
            std::thread::yield_now();
        }
    }
}

struct Worker<'a> {
    shared: &'a PoolShared,
    filler: &'a mut Filler,
    /// Image addresses of huge units to fill (reused).
    huge_units: Vec<u64>,
}

impl Worker<'_> {
    fn cancelled(&self, space: &Space) -> bool {
        self.shared.stop.load(Ordering::Acquire) || space.is_gone()
    }

    /// Waits a little for the server to read pending events after `EAGAIN`.
    fn after_again(&self) {
        std::thread::sleep(AGAIN_PAUSE);
    }

    /// Fills every use of chunk `c` in `space`.
    fn chunk(&mut self, space: &Space, c: ChunkId) {
        let env = Arc::clone(&self.shared.env);
        let uses = env.image.chunk_uses(c);
        // Anything to do? (cheap; avoids decoding chunks already served)
        {
            let Some(_inside) = space.gate.enter(|| self.cancelled(space)) else {
                return;
            };
            let table = space.table();
            let needed = uses.iter().any(|u| {
                table.image_pieces(u.addr, u.addr + u.len).any(|(s, a, b)| {
                    (s.unit_of_image(a)..=s.unit_of_image(b - 1))
                        .any(|k| s.state(k) == PageState::Snapshot)
                })
            });
            if !needed {
                return;
            }
        }
        if env.cache.is_bad(c) {
            self.poison_uses(space, c);
            return;
        }
        // Direct (base-page) segments: copy straight from the cached chunk.
        let bad = {
            let Filler {
                scratch, counters, ..
            } = &mut *self.filler;
            let cancelled = || self.shared.stop.load(Ordering::Acquire) || space.is_gone();
            match env.cache.get(c, scratch, Use::Prefetch, counters) {
                Err(_) => true,
                Ok(bytes) => {
                    for u in uses {
                        let mut start = u.addr;
                        let end = u.addr + u.len;
                        while start < end {
                            let piece_end = end.min(start + MAX_COPY_PER_ENTRY);
                            let off = (u64::from(u.offset) + (start - u.addr)) as usize;
                            let src = &bytes[off..off + (piece_end - start) as usize];
                            match copy_direct(&env, space, start, piece_end, src, counters, cancelled) {
                                Outcome::Again => std::thread::sleep(AGAIN_PAUSE),
                                Outcome::Gone => return,
                                _ => start = piece_end,
                            }
                            if cancelled() {
                                return;
                            }
                        }
                    }
                    false
                }
            }
        };
        if bad {
            self.poison_uses(space, c);
            return;
        }
        // Huge-unit segments: assemble each unit, then copy it.
        self.huge(space, c);
    }

    /// Fills the huge units touched by chunk `c`'s uses.
    fn huge(&mut self, space: &Space, c: ChunkId) {
        let env = Arc::clone(&self.shared.env);
        self.huge_units.clear();
        {
            let Some(_inside) = space.gate.enter(|| self.cancelled(space)) else {
                return;
            };
            let table = space.table();
            for u in env.image.chunk_uses(c) {
                for (s, a, b) in table.image_pieces(u.addr, u.addr + u.len) {
                    if env.direct(s) {
                        continue;
                    }
                    for k in s.unit_of_image(a)..=s.unit_of_image(b - 1) {
                        if s.state(k) == PageState::Snapshot {
                            self.huge_units.push(s.image_of(k));
                        }
                    }
                }
            }
        }
        self.huge_units.dedup();
        for i in 0..self.huge_units.len() {
            let img = self.huge_units[i];
            loop {
                match self.huge_unit(&env, space, img) {
                    Outcome::Again => self.after_again(),
                    Outcome::Gone => return,
                    _ => break,
                }
                if self.cancelled(space) {
                    return;
                }
            }
        }
    }

    /// Assembles the huge unit at image address `img` and copies it where
    /// the current table maps it (if it still needs it).
    fn huge_unit(&mut self, env: &Env, space: &Space, img: u64) -> Outcome {
        // The unit size: from the segment that maps it now.
        let unit = {
            let Some(_inside) = space.gate.enter(|| self.cancelled(space)) else {
                return Outcome::Gone;
            };
            let table = space.table();
            match table.image_pieces(img, img + 1).next() {
                Some((s, _, _)) if s.state(s.unit_of_image(img)) == PageState::Snapshot => s.unit,
                _ => return Outcome::Done,
            }
        };
        let Filler {
            scratch,
            staging,
            counters,
        } = &mut *self.filler;
        let out = &mut staging[..unit as usize];
        let bad = fill::assemble(env, scratch, img, out, Use::Prefetch, counters, |_| {}).is_err();
        let Some(_inside) = space.gate.enter(|| self.shared.stop.load(Ordering::Acquire) || space.is_gone()) else {
            return Outcome::Gone;
        };
        let table = space.table();
        let Some((s, _, _)) = table.image_pieces(img, img + 1).next() else {
            return Outcome::Done;
        };
        if s.unit != unit {
            return Outcome::Done;
        }
        let k = s.unit_of_image(img);
        if bad {
            fill::poison_units(space, s, k, k + 1, true, counters)
        } else {
            fill::copy_units(space, s, k, k + 1, out, true, true, counters)
        }
    }

    /// Chunk `c` is corrupt: poison the `Snapshot` units it backs.
    fn poison_uses(&mut self, space: &Space, c: ChunkId) {
        let env = Arc::clone(&self.shared.env);
        for u in env.image.chunk_uses(c) {
            loop {
                let Some(_inside) = space.gate.enter(|| self.cancelled(space)) else {
                    return;
                };
                let table = space.table();
                let mut again = false;
                for (s, a, b) in table.image_pieces(u.addr, u.addr + u.len) {
                    let (k0, k1) = (s.unit_of_image(a), s.unit_of_image(b - 1) + 1);
                    match fill::poison_units(space, s, k0, k1, true, &self.filler.counters) {
                        Outcome::Again => again = true,
                        Outcome::Gone => return,
                        _ => {}
                    }
                }
                if !again {
                    break;
                }
                drop(_inside);
                self.after_again();
            }
        }
    }

    /// Maps every `Zero` unit of the base-page segments with zero pages, at
    /// most [`MAX_ZERO_PER_ENTRY`] per gate entry.
    fn zero_sweep(&mut self, space: &Space) {
        let env = Arc::clone(&self.shared.env);
        let page = rustix::param::page_size() as u64;
        // Cursor: (table generation, segment index, unit).
        let mut cursor = (u64::MAX, 0usize, 0usize);
        loop {
            let Some(_inside) = space.gate.enter(|| self.cancelled(space)) else {
                return;
            };
            let table = space.table();
            let generation = space.table_gen();
            if generation != cursor.0 {
                cursor = (generation, 0, 0);
            }
            let Some((si, u0)) = next_zero(&table, page, cursor.1, cursor.2) else {
                return;
            };
            let s = &table.segments()[si];
            let max_units = (MAX_ZERO_PER_ENTRY / s.unit).max(1) as usize;
            let mut u1 = u0 + 1;
            while u1 < s.units() && u1 - u0 < max_units && s.state(u1) == PageState::Zero {
                u1 += 1;
            }
            match fill::zero_units(&env, space, s, u0, u1, true, &self.filler.counters) {
                Outcome::Again => {
                    drop(_inside);
                    self.after_again();
                }
                Outcome::Gone => return,
                _ => cursor = (generation, si, u1),
            }
        }
    }
}

/// The next `Zero` unit at or after `(seg, unit)` in base-page segments.
fn next_zero(table: &Table, page: u64, seg: usize, unit: usize) -> Option<(usize, usize)> {
    let segments = table.segments();
    let mut u = unit;
    for (si, s) in segments.iter().enumerate().skip(seg) {
        if s.unit == page {
            while u < s.units() {
                if s.state(u) == PageState::Zero {
                    return Some((si, u));
                }
                u += 1;
            }
        }
        u = 0;
    }
    None
}

/// Copies image range `[start, end)` (bytes in `src`) into the base-page
/// segments that serve it, inside the gate.
fn copy_direct(
    env: &Env,
    space: &Space,
    start: u64,
    end: u64,
    src: &[u8],
    counters: &Counters,
    cancelled: impl Fn() -> bool + Copy,
) -> Outcome {
    let Some(_inside) = space.gate.enter(cancelled) else {
        return Outcome::Gone;
    };
    let table = space.table();
    let mut result = Outcome::Done;
    for (s, a, b) in table.image_pieces(start, end) {
        if !env.direct(s) {
            continue;
        }
        let (k0, k1) = (s.unit_of_image(a), s.unit_of_image(b - 1) + 1);
        let bytes = &src[(a - start) as usize..(b - start) as usize];
        match fill::copy_units(space, s, k0, k1, bytes, true, true, counters) {
            Outcome::Again => return Outcome::Again,
            Outcome::Gone => return Outcome::Gone,
            Outcome::NoEntry | Outcome::Failed => result = Outcome::Failed,
            Outcome::Done => {}
        }
    }
    result
}
