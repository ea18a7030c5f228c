//! The prefetch pool: worker threads that populate address spaces ahead of
//! their faults.
//!
//! ```text
//!  add_pass(space) ──► feeder thread ──(bounded crossbeam channel)──► worker 1..N
//!                      hands each pass       Task { pass }            claim the pass's next item (atomic
//!                      to every worker                                cursor), take its chunk from the
//!                                                                     cache, enter the space's gate, copy
//! ```
//!
//! - **The plan** is one order for every space: the loaded working set's
//!   chunks first (in first-fault order), then one sweep that maps every
//!   zero run with `UFFDIO_ZEROPAGE` (2 MiB per call, about 30 GB/s here),
//!   then every other chunk in address order (of its first use).
//! - **A pass** is the plan applied to one space. A space added by FORK gets
//!   its own pass (its state was copied, so it only fills what the parent
//!   had not when it forked).
//! - **An item** of a pass fills one chunk's uses in a space (or runs the
//!   zero sweep): the worker takes the decoded chunk from the [`ChunkCache`]
//!   *before* entering the gate, then, inside, maps the uses through the
//!   space's current table, copies the runs of `Snapshot` units (one
//!   `UFFDIO_COPY` per run, waking any waiter), and leaves. See `gate.rs` for
//!   why this cannot install stale bytes after a REMOVE, REMAP or UNMAP.
//! - **Claiming**: the feeder hands each pass once to every worker; the
//!   workers then claim its items themselves, in plan order, from the pass's
//!   atomic cursor. The feeder is off the per-item path: handing out items
//!   one by one through a bounded channel cost a futex wake-up of the feeder
//!   per 64 KiB chunk (and a wait for it when it had not refilled the
//!   channel yet), a quarter of a worker's time in a process restore.
//! - **Faults first**: a worker backs off while the server wants the gate
//!   and yields its CPU between items while the server has faults queued;
//!   the server never waits for a worker's decompression.
//! - **Ending**: when no pass is left the feeder closes the task channel,
//!   which ends the workers (everything is served); a space that goes away
//!   (its target exited: `ESRCH`) has its remaining items skipped; `stop()`
//!   ends everything at the next item. A later pass (a fork, or
//!   `FaultServer::populate`) starts new workers. The feeder itself lives as
//!   long as the pool, idle; passes reach it through a preallocated channel,
//!   so the server thread can start one without allocating.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
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

/// Passes queued ahead of the workers, per worker.
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
    /// The next plan item to claim (may run past the plan's end).
    next: AtomicUsize,
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

    /// Claims the next item of a plan of `len` items, if any is left.
    fn claim(&self, len: usize) -> Option<usize> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        (i < len).then_some(i)
    }

    /// Claims every item left of a plan of `len` items and finishes them
    /// unrun (the space is gone, or the pool stops).
    fn skip_rest(&self, len: usize) {
        let from = self.next.swap(len, Ordering::Relaxed);
        self.finish(len.saturating_sub(from));
    }
}

/// A pass handed to a worker: it claims the pass's items until none is left.
#[derive(Debug)]
struct Task {
    pass: Arc<Pass>,
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
    /// Whether workers are running.
    pub(crate) running: AtomicBool,
}

/// A message to the feeder.
#[derive(Debug)]
enum Feed {
    /// Prefetch this space; `force`: even with a pool of zero workers (one
    /// is started).
    Pass { space: Arc<Space>, force: bool },
    /// End.
    Stop,
}

/// Requests the feeder can have queued (a preallocated channel: sending
/// never allocates, see `server/run.rs` on why the server thread must not).
const FEED_CAPACITY: usize = 1024;

/// The pool controller (see the module docs). The feeder thread lives as
/// long as the pool; worker threads only while there is work.
#[derive(Debug)]
pub(crate) struct Prefetcher {
    shared: Arc<PoolShared>,
    feed: Sender<Feed>,
    feeder: Mutex<Option<JoinHandle<()>>>,
}

impl Prefetcher {
    /// Starts the feeder thread.
    pub(crate) fn start(shared: PoolShared) -> std::io::Result<Self> {
        let shared = Arc::new(shared);
        let (feed, rx) = crossbeam_channel::bounded(FEED_CAPACITY);
        let s = Arc::clone(&shared);
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let feeder = std::thread::Builder::new()
            .name("lazarus-prefetch".into())
            .spawn(move || {
                prime_blocking_recv(&rx);
                let _ = ready_tx.send(());
                feeder(&s, &rx);
            })?;
        // Return once the thread runs (its start allocates; see
        // `server/run.rs` on allocations and fork).
        let _ = ready_rx.recv();
        Ok(Self {
            shared,
            feed,
            feeder: Mutex::new(Some(feeder)),
        })
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

    /// Whether workers are running.
    pub(crate) fn running(&self) -> bool {
        self.shared.running.load(Ordering::Acquire)
    }

    /// Starts prefetching `space` (the caller set its `prefetch_done` to
    /// false). `force`: even if the pool is disabled (with one worker).
    /// Never allocates.
    pub(crate) fn add_pass(&self, space: Arc<Space>, force: bool) {
        if !(self.enabled() || force) || self.shared.stop.load(Ordering::Acquire) {
            space.set_prefetch_done(true);
            return;
        }
        if let Err(e) = self.feed.send(Feed::Pass { space, force })
            && let Feed::Pass { space, .. } = e.into_inner()
        {
            space.set_prefetch_done(true);
        }
    }

    /// Stops every worker at its next item and joins all threads.
    pub(crate) fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
        let _ = self.feed.send(Feed::Stop);
        let feeder = self
            .feeder
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(t) = feeder
            && t.join().is_err()
        {
            log::error!("the prefetch feeder panicked");
        }
    }
}

/// Blocks once briefly on `rx`, so that the allocations crossbeam makes the
/// first time a thread blocks (its thread-local wait context, the channel's
/// waiter list) happen now, during start-up, rather than later at a moment
/// when the process may be forking (see `server/run.rs`).
pub(crate) fn prime_blocking_recv<T>(rx: &Receiver<T>) {
    if let Ok(unexpected) = rx.recv_timeout(Duration::from_millis(1)) {
        // Nobody sends before start-up is over.
        drop(unexpected);
    }
}

/// Worker threads of a run and their task channel.
struct Run {
    tasks: Sender<Task>,
    threads: Vec<JoinHandle<()>>,
}

impl Run {
    fn start(shared: &Arc<PoolShared>, workers: usize) -> Self {
        let (tasks, rx) = crossbeam_channel::bounded(workers * QUEUE_PER_WORKER);
        let mut threads = Vec::with_capacity(workers);
        for i in 0..workers {
            let (shared, rx) = (Arc::clone(shared), rx.clone());
            match std::thread::Builder::new()
                .name(format!("lazarus-prefetch-{i}"))
                .spawn(move || worker(&shared, &rx))
            {
                Ok(t) => threads.push(t),
                Err(e) => log::error!("cannot start prefetch worker {i}: {e}"),
            }
        }
        shared.running.store(true, Ordering::Release);
        Self { tasks, threads }
    }

    /// Closes the task channel and joins the workers.
    fn end(self, shared: &PoolShared) {
        drop(self.tasks);
        for t in self.threads {
            if t.join().is_err() {
                log::error!("a prefetch worker panicked");
            }
        }
        shared.running.store(false, Ordering::Release);
    }
}

/// The feeder: queues passes, starts workers when there is work, hands each
/// pass to every worker (which claim its items themselves), and ends the
/// workers when every pass handed out is done.
fn feeder(shared: &Arc<PoolShared>, feed: &Receiver<Feed>) {
    let mut passes: VecDeque<Arc<Pass>> = VecDeque::new();
    let mut forced = false;
    let mut run: Option<Run> = None;
    // Workers the front pass was handed to so far.
    let mut handed = 0usize;
    let take = |msg: Feed, passes: &mut VecDeque<Arc<Pass>>, forced: &mut bool| -> bool {
        match msg {
            Feed::Pass { space, force } => {
                *forced |= force;
                passes.push_back(Arc::new(Pass {
                    space,
                    next: AtomicUsize::new(0),
                    left: AtomicUsize::new(shared.plan.len()),
                }));
                true
            }
            Feed::Stop => false,
        }
    };
    'feed: loop {
        if shared.stop.load(Ordering::Acquire) {
            break;
        }
        if passes.is_empty() {
            // Every pass handed out: the workers end once they are done.
            if let Some(r) = run.take() {
                r.end(shared);
            }
            forced = false;
            match feed.recv() {
                Ok(msg) => {
                    if !take(msg, &mut passes, &mut forced) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        while let Ok(msg) = feed.try_recv() {
            if !take(msg, &mut passes, &mut forced) {
                break 'feed;
            }
        }
        let r = run.get_or_insert_with(|| {
            let n = if forced {
                shared.workers.max(1)
            } else {
                shared.workers
            };
            Run::start(shared, n)
        });
        let Some(pass) = passes.front().cloned() else {
            continue;
        };
        if pass.space.is_gone() || handed == r.threads.len() {
            if handed == 0 {
                // Never handed out (or no worker could start): nobody else
                // finishes its items.
                pass.skip_rest(shared.plan.len());
            }
            passes.pop_front();
            handed = 0;
            continue;
        }
        match r.tasks.send_timeout(
            Task {
                pass: Arc::clone(&pass),
            },
            Duration::from_millis(10),
        ) {
            Ok(()) => handed += 1,
            Err(crossbeam_channel::SendTimeoutError::Timeout(_)) => {}
            Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => break,
        }
    }
    if let Some(r) = run.take() {
        r.end(shared);
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
    };
    let len = shared.plan.len();
    while let Ok(task) = tasks.recv() {
        let (pass, space) = (&task.pass, &task.pass.space);
        while let Some(item) = pass.claim(len) {
            if shared.stop.load(Ordering::Acquire) || space.is_gone() {
                pass.finish(1);
                pass.skip_rest(len);
                break;
            }
            match shared.plan[item] {
                Item::Chunk(c) => w.chunk(space, c),
                Item::ZeroSweep => w.zero_sweep(space),
            }
            w.filler.counters.prefetch_items.inc();
            pass.finish(1);
            if shared.busy.load(Ordering::Relaxed) || space.gate.reader_waiting() {
                std::thread::yield_now();
            }
        }
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
    }
}

struct Worker<'a> {
    shared: &'a PoolShared,
    filler: &'a mut Filler,
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
                            match copy_direct(
                                &env, space, start, piece_end, src, counters, cancelled,
                            ) {
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

    /// Fills the huge units touched by chunk `c`'s uses, a few at a time
    /// (gathered inside the gate into a fixed array: nothing is allocated
    /// inside the gate, see `server/run.rs`).
    fn huge(&mut self, space: &Space, c: ChunkId) {
        const BATCH: usize = 8;
        let env = Arc::clone(&self.shared.env);
        for u in env.image.chunk_uses(c) {
            let end = u.addr + u.len;
            let mut from = u.addr;
            while from < end {
                let mut batch = [0u64; BATCH];
                let mut n = 0;
                let mut next = end;
                {
                    let Some(_inside) = space.gate.enter(|| self.cancelled(space)) else {
                        return;
                    };
                    let table = space.table();
                    'gather: for (s, a, b) in table.image_pieces(from, end) {
                        if env.direct(s) {
                            continue;
                        }
                        for k in s.unit_of_image(a)..=s.unit_of_image(b - 1) {
                            if n == BATCH {
                                next = s.image_of(k).max(from + 1);
                                break 'gather;
                            }
                            if s.state(k) == PageState::Snapshot {
                                batch[n] = s.image_of(k);
                                n += 1;
                            }
                        }
                    }
                }
                for &img in &batch[..n] {
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
                from = next;
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
        let Some(_inside) = space
            .gate
            .enter(|| self.shared.stop.load(Ordering::Acquire) || space.is_gone())
        else {
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
                drop(table);
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
                    drop(table);
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
