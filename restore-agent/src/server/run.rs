//! The server thread: the epoll loop, batch reading with event application,
//! and fault service. See the parent module for the design.
//!
//! # No allocation in the loop
//!
//! Everything the fault path uses is allocated before the loop starts or,
//! for a space, by the caller of `add_space` (its message buffer, and its
//! fault queue: a `VecDeque` whose capacity is never exceeded; a fault that
//! would not fit is woken instead and its thread faults again), the filler's
//! decoder and buffers, the latency histograms. A fault reads its space's
//! table under a read lock nobody contends (workers read it too; only this
//! thread writes it, with the gate closed), and its chunk's cache shard:
//! no global lock. This is checked by
//! reading the code path (`serve_queue` → `serve_fault` → `fill::*`,
//! `ChunkCache::get`): no `Vec` growth, `Box`, `format!` or `String` outside
//! error logging.
//!
//! The rest of the loop avoids allocating too, for a reason beyond speed:
//! **in-process restore and `fork()`**. glibc's `fork()` takes every malloc
//! arena lock *before* the fork system call and releases them after it, and
//! the kernel makes that system call wait until the FORK event is read. If
//! the server thread called `malloc` or `free` in that window, *before*
//! reading the event, it would wait for the forking thread, which waits for
//! it: a deadlock (the first version of the poison test hung exactly so,
//! when a space was set up by the server thread while the test forked). So:
//! spaces are prepared by the caller of `add_space`; events for readers go
//! through a preallocated channel; spaces that are gone are handed to a
//! janitor thread that frees them; the registry is copy-on-write, updated
//! outside the server thread except after a FORK read; no lock the server
//! takes is ever held by another thread while it allocates. Right after
//! reading a FORK event the server does allocate (the child's copy of the
//! states): that is safe, the forking thread is already released (and glibc
//! serializes forks through those same locks). Events change segment tables
//! in place within preallocated room, and the segments they cut out go to
//! the janitor too (`table.rs`). What may still allocate between reads: a
//! table whose spare room ran out (after many splits), more than
//! `SPACES_RESERVED` spaces, and logging on error paths. A server in another
//! process than its target (process restore, `serve`) is not concerned.

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use rustix::event::epoll;
use snapshot_format::PageSource;

use super::{Control, FaultPolicy, GoneReason, ServerEvent, Shared};
use crate::cache::Use;
use crate::fill::{self, Filler, Outcome};
use crate::space::Space;
use crate::state::PageState;
use crate::stats::{Counters, LatencyWriter};
use crate::table::{Segment, Table};
use crate::uffd::{self, Event, MsgBuffer, Range, Userfaultfd, read_messages};

/// Epoll token of the wake-up eventfd; a space's token is its id.
const WAKE_TOKEN: u64 = 0;
/// Epoll events handled per wait.
const EPOLL_EVENTS: usize = 64;
/// Faults a space may have queued (each blocked thread has at most one).
const QUEUE_CAP: usize = 4096;
/// After this many consecutive `EAGAIN` retries with nothing new read, the
/// server stops spinning on a space and sleeps a little between reads (an
/// event can take long to appear: fork copies the whole address space first).
const AGAIN_SPINS: u32 = 64;

/// A fault waiting to be served.
#[derive(Debug, Clone, Copy)]
struct Pending {
    addr: u64,
    since: Instant,
}

/// Spaces the janitor can have queued.
pub(super) const JANITOR_CAPACITY: usize = 1024;
/// Spaces the server expects to hold at once (its list is allocated for
/// them; more is fine, but growing the list allocates).
const SPACES_RESERVED: usize = 256;

/// The server thread's view of one space (prepared by the caller of
/// `add_space`, or by the server after a FORK).
pub(crate) struct Local {
    space: Arc<Space>,
    /// Records into the space's own latency histogram.
    latency: LatencyWriter,
    msgs: MsgBuffer,
    queue: VecDeque<Pending>,
    /// Read again even without epoll readiness (after `EAGAIN`, or a full
    /// batch).
    needs_read: bool,
    /// Consecutive fruitless retries.
    again: u32,
}

impl Local {
    /// Allocates the buffers for serving `space`.
    pub(crate) fn new(space: Arc<Space>, batch: usize) -> Self {
        Self {
            latency: LatencyWriter::new(Arc::clone(&space.metrics.latency)),
            msgs: MsgBuffer::new(batch),
            queue: VecDeque::with_capacity(QUEUE_CAP),
            // Faults may have queued before the fd was polled.
            needs_read: true,
            again: 0,
            space,
        }
    }
}

/// What the janitor frees for the server thread.
pub(crate) enum Garbage {
    /// A space that is gone (also dropped from the registry).
    Space(Local),
    /// A segment cut out of a table by an event.
    Segment(Segment),
    /// End.
    Stop,
}

/// The janitor thread: first warms the chunk cache's memory, then frees
/// what the server thread hands it (spaces that are gone, segments cut out
/// of tables), so that the server thread never frees memory between reads.
pub(super) fn janitor(
    shared: &Shared,
    rx: &crossbeam_channel::Receiver<Garbage>,
    ready: &crossbeam_channel::Sender<()>,
) {
    crate::prefetch::prime_blocking_recv(rx);
    let _ = ready.send(());
    shared.env.cache.pretouch();
    while let Ok(garbage) = rx.recv() {
        match garbage {
            Garbage::Space(local) => {
                let space = Arc::clone(&local.space);
                shared
                    .registry
                    .update(|v| v.retain(|s| !Arc::ptr_eq(s, &space)));
                drop(local);
            }
            Garbage::Segment(segment) => drop(segment),
            Garbage::Stop => return,
        }
    }
}

pub(super) struct Server {
    shared: Arc<Shared>,
    epoll: std::os::fd::OwnedFd,
    spaces: Vec<Local>,
    filler: Filler,
    latency: LatencyWriter,
    last_activity: Instant,
    last_probe: Instant,
}

impl Server {
    pub(super) fn new(shared: Arc<Shared>) -> std::io::Result<Self> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        epoll::add(
            &epoll,
            shared.wakeup.fd(),
            epoll::EventData::new_u64(WAKE_TOKEN),
            epoll::EventFlags::IN,
        )?;
        let counters = Arc::new(Counters::default());
        shared
            .counters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::clone(&counters));
        let filler = Filler::new(&shared.env.image, counters)?;
        let latency = LatencyWriter::new(Arc::clone(&shared.latency));
        let now = Instant::now();
        Ok(Self {
            shared,
            epoll,
            spaces: Vec::with_capacity(SPACES_RESERVED),
            filler,
            latency,
            last_activity: now,
            last_probe: now,
        })
    }

    /// The thread body: serves until told to stop. If the loop panics, every
    /// space is made to fail closed (see the parent module).
    pub(super) fn run(mut self, ready: &crossbeam_channel::Sender<()>) {
        let shared = Arc::clone(&self.shared);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.serve(ready)));
        if result.is_err() {
            log::error!("the fault server thread panicked; leaving the userfaultfds open");
            shared.crashed.store(true, Ordering::Release);
            for s in shared.registry.snapshot().iter() {
                s.fail_closed();
            }
        } else {
            shared.registry.update(Vec::clear);
        }
        shared.set_stopped();
    }

    fn serve(&mut self, started: &crossbeam_channel::Sender<()>) {
        let mut ready = [epoll::Event {
            flags: epoll::EventFlags::empty(),
            data: epoll::EventData::new_u64(0),
        }; EPOLL_EVENTS];
        let _ = started.send(());
        loop {
            let timeout = self.timeout();
            let n = match epoll::wait(&self.epoll, &mut ready, timeout.as_ref()) {
                Ok(n) => n,
                Err(rustix::io::Errno::INTR) => 0,
                Err(e) => {
                    log::error!("epoll_wait: {e}");
                    std::thread::sleep(Duration::from_millis(1));
                    0
                }
            };
            let mut woken = false;
            for ev in &ready[..n] {
                let (token, flags) = (ev.data.u64(), { ev.flags });
                if token == WAKE_TOKEN {
                    woken = true;
                } else if let Some(l) = self.spaces.iter_mut().find(|l| l.space.id.0 == token) {
                    if flags.intersects(epoll::EventFlags::ERR | epoll::EventFlags::HUP) {
                        log::error!("{}: userfaultfd reports {flags:?}", l.space.id);
                        l.space.set_gone();
                    } else {
                        l.needs_read = true;
                    }
                }
            }
            if woken {
                self.shared.wakeup.clear();
                if !self.control() {
                    return;
                }
            }
            for i in 0..self.spaces.len() {
                if self.spaces[i].needs_read {
                    self.read_batch(i);
                }
            }
            let mut busy = false;
            for i in 0..self.spaces.len() {
                self.serve_queue(i);
                busy |= !self.spaces[i].queue.is_empty();
            }
            self.shared.busy.store(busy, Ordering::Relaxed);
            if self.last_probe.elapsed() >= self.shared.opts.liveness_interval {
                self.last_probe = Instant::now();
                for l in &self.spaces {
                    if !l.space.is_gone() && !l.space.probe_alive() {
                        l.space.set_gone();
                    }
                }
            }
            let gone = self.reap();
            if woken || gone {
                self.update_population();
            }
        }
    }

    /// How long the next `epoll_wait` may block.
    fn timeout(&self) -> Option<rustix::time::Timespec> {
        let zero = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let retrying = self
            .spaces
            .iter()
            .any(|l| l.needs_read || !l.queue.is_empty());
        if retrying {
            let sleepy = self
                .spaces
                .iter()
                .all(|l| l.again >= AGAIN_SPINS || !l.needs_read);
            return Some(if sleepy {
                rustix::time::Timespec {
                    tv_sec: 0,
                    tv_nsec: 50_000,
                }
            } else {
                zero
            });
        }
        if self.last_activity.elapsed() < self.shared.opts.spin {
            return Some(zero);
        }
        let t = self.shared.opts.liveness_interval;
        Some(rustix::time::Timespec {
            tv_sec: t.as_secs() as i64,
            tv_nsec: i64::from(t.subsec_nanos()),
        })
    }

    /// Handles the control queue; false when told to stop.
    fn control(&mut self) -> bool {
        while let Ok(msg) = self.shared.control_rx.try_recv() {
            match msg {
                Control::Add(local) => {
                    self.add(local);
                    self.shared.pending_adds.fetch_sub(1, Ordering::AcqRel);
                }
                Control::Remove { id, unregister } => {
                    if let Some(l) = self.spaces.iter().find(|l| l.space.id == id) {
                        if unregister {
                            unregister_all(&l.space, &l.space.table());
                        }
                        l.space.set_gone();
                        self.drop_space(id, GoneReason::Removed);
                    }
                }
                Control::Stop => return false,
            }
        }
        true
    }

    /// Starts serving a space (already in the registry, its prefetch pass
    /// started). Allocates nothing (within `SPACES_RESERVED` spaces).
    fn add(&mut self, local: Local) {
        let space = Arc::clone(&local.space);
        let token = epoll::EventData::new_u64(space.id.0);
        if let Err(e) = epoll::add(&self.epoll, space.fd(), token, epoll::EventFlags::IN) {
            log::error!("{}: cannot poll its userfaultfd: {e}", space.id);
            space.set_gone();
            self.bury(local, GoneReason::Error);
            return;
        }
        self.spaces.push(local);
    }

    /// Whether every live space is populated, told to the waiters; notes
    /// the time each space first was.
    fn update_population(&self) {
        let mut all = true;
        for l in &self.spaces {
            if l.space.is_populated() {
                l.space.metrics.set_populated();
            } else if !l.space.is_gone() {
                all = false;
            }
        }
        self.shared.set_population(all);
    }

    /// Removes spaces whose target is gone; true if any.
    fn reap(&mut self) -> bool {
        let mut any = false;
        let mut i = 0;
        while i < self.spaces.len() {
            if self.spaces[i].space.is_gone() {
                let l = self.spaces.swap_remove(i);
                let _ = epoll::delete(&self.epoll, l.space.fd());
                self.bury(l, GoneReason::Exited);
                any = true;
            } else {
                i += 1;
            }
        }
        any
    }

    fn drop_space(&mut self, id: crate::SpaceId, reason: GoneReason) {
        if let Some(i) = self.spaces.iter().position(|l| l.space.id == id) {
            let l = self.spaces.swap_remove(i);
            let _ = epoll::delete(&self.epoll, l.space.fd());
            self.bury(l, reason);
        }
    }

    /// Hands a space that is gone to the janitor, which frees it.
    fn bury(&self, local: Local, reason: GoneReason) {
        let id = local.space.id;
        self.shared.gone.fetch_add(1, Ordering::Relaxed);
        self.shared.emit(ServerEvent::Gone { space: id, reason });
        if let Err(e) = self.shared.janitor.try_send(Garbage::Space(local)) {
            // The janitor is behind (or gone): free it here.
            if let Garbage::Space(local) = e.into_inner() {
                let space = Arc::clone(&local.space);
                self.shared
                    .registry
                    .update(|v| v.retain(|s| !Arc::ptr_eq(s, &space)));
            }
        }
        log::debug!("{id}: gone ({reason:?})");
    }

    /// Reads one batch from space `i` with its gate closed: queues the
    /// faults, applies the events in order.
    fn read_batch(&mut self, i: usize) {
        let counters = Arc::clone(&self.filler.counters);
        let mut children = Vec::new();
        let l = &mut self.spaces[i];
        l.needs_read = false;
        let space = Arc::clone(&l.space);
        let n = {
            let _closed = space.gate.close();
            let n = match read_messages(space.uffd(), &mut l.msgs) {
                Ok(n) => n,
                Err(e) => {
                    log::error!("{}: reading its userfaultfd: {e}", space.id);
                    space.set_gone();
                    return;
                }
            };
            let now = Instant::now();
            for msg in l.msgs.drain() {
                match msg {
                    Ok(Event::PageFault(pf)) => {
                        counters.faults.inc();
                        space.metrics.counters.faults.inc();
                        if l.queue.len() < QUEUE_CAP {
                            l.queue.push_back(Pending {
                                addr: pf.address,
                                since: now,
                            });
                        } else {
                            // No room (more blocked threads than QUEUE_CAP):
                            // wake it; its thread faults again later.
                            counters.wake_ioctls.inc();
                            let page = rustix::param::page_size() as u64;
                            let _ =
                                uffd::wake(space.fd(), Range::new(pf.address & !(page - 1), page));
                        }
                    }
                    Ok(Event::Remove { start, end }) => {
                        counters.events_remove.inc();
                        space.metrics.counters.events_remove.inc();
                        space.apply_remove(start, end);
                    }
                    Ok(Event::Unmap { start, end }) => {
                        counters.events_unmap.inc();
                        space.metrics.counters.events_unmap.inc();
                        space.apply_unmap(start, end);
                    }
                    Ok(Event::Remap { from, to, len }) => {
                        counters.events_remap.inc();
                        space.metrics.counters.events_remap.inc();
                        space.apply_remap(from, to, len);
                    }
                    Ok(Event::Fork { uffd: child }) => {
                        counters.events_fork.inc();
                        space.metrics.counters.events_fork.inc();
                        let uffd = Userfaultfd::from_fork(child, space.uffd());
                        let id = self.shared.new_id();
                        children.push(Arc::new(space.fork(id, uffd)));
                    }
                    Err(e) => {
                        counters.events_other.inc();
                        space.metrics.counters.events_other.inc();
                        log::warn!("{}: {e}", space.id);
                    }
                }
            }
            n
        };
        if n > 0 {
            self.last_activity = Instant::now();
            l.again = 0;
        }
        if n == l.msgs.capacity() {
            l.needs_read = true;
        }
        // After a FORK read the forking thread is released: allocating is
        // safe (see the module docs).
        for child in children {
            if self.shared.prefetcher.enabled() {
                child.prefetch_done.store(false, Ordering::Release);
            }
            self.shared.registry.update(|v| v.push(Arc::clone(&child)));
            self.shared.emit(ServerEvent::Forked {
                parent: space.id,
                child: child.id,
            });
            let local = Local::new(Arc::clone(&child), self.shared.opts.batch);
            self.add(local);
            self.shared.prefetcher.add_pass(child, false);
            self.update_population();
        }
    }

    /// Serves the queued faults of space `i` until it is empty, or an event
    /// must be read first.
    fn serve_queue(&mut self, i: usize) {
        while let Some(p) = self.spaces[i].queue.front().copied() {
            let space = Arc::clone(&self.spaces[i].space);
            if space.is_gone() {
                self.spaces[i].queue.clear();
                return;
            }
            let table = space.table();
            let outcome = self.serve_fault(&space, &table, p.addr);
            drop(table);
            let l = &mut self.spaces[i];
            match outcome {
                Outcome::Done => {
                    l.queue.pop_front();
                    let ns = u64::try_from(p.since.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    self.latency.record(ns);
                    l.latency.record(ns);
                }
                Outcome::Failed => {
                    l.queue.pop_front();
                    self.filler.counters.fault_unserved.inc();
                    space.metrics.counters.fault_unserved.inc();
                }
                Outcome::Again => {
                    l.needs_read = true;
                    l.again = l.again.saturating_add(1);
                    return;
                }
                Outcome::NoEntry => {
                    // Unmapped under us (an UNMAP is pending): wake the
                    // thread, which finds the new layout.
                    l.queue.pop_front();
                    l.needs_read = true;
                    self.filler.counters.wake_ioctls.inc();
                    let page = rustix::param::page_size() as u64;
                    let _ = uffd::wake(space.fd(), Range::new(p.addr & !(page - 1), page));
                }
                Outcome::Gone => {
                    l.queue.clear();
                    return;
                }
            }
            self.last_activity = Instant::now();
        }
    }

    /// Serves one fault at `addr`.
    fn serve_fault(&mut self, space: &Space, table: &Table, addr: u64) -> Outcome {
        let env = Arc::clone(&self.shared.env);
        let kinds = &space.metrics.counters;
        let Some(seg) = table.find(addr) else {
            self.filler.counters.fault_stray.inc();
            kinds.fault_stray.inc();
            return stray(&env, space, addr, &self.filler.counters);
        };
        let u = seg.unit_at(addr);
        match seg.state(u) {
            PageState::Snapshot => self.snapshot(space, table, seg, u),
            PageState::Zero => {
                self.filler.counters.fault_zero.inc();
                kinds.fault_zero.inc();
                let (a, b) = self.zero_window(seg, u);
                fill::zero_units(&env, space, seg, a, b, true, &self.filler.counters)
            }
            PageState::Served => {
                self.filler.counters.fault_present.inc();
                kinds.fault_present.inc();
                present(&env, space, seg, u, &self.filler.counters)
            }
            PageState::Poisoned => {
                self.filler.counters.fault_poison.inc();
                kinds.fault_poison.inc();
                repoison(space, seg, u, &self.filler.counters)
            }
        }
    }

    /// The zero units to map for a zero fault at `u`: just `u`, or (chunk
    /// policy, base pages) the chunk-sized window of the image around it.
    fn zero_window(&self, seg: &Segment, u: usize) -> (usize, usize) {
        let env = &self.shared.env;
        if self.shared.opts.fault_policy == FaultPolicy::Page || !env.direct(seg) {
            return (u, u + 1);
        }
        let window = u64::from(env.image.top().chunk_size()).max(seg.unit);
        let img = seg.image_of(u);
        let lo = (img / window * window).max(seg.image);
        let hi = (img / window * window + window).min(seg.image_end());
        (seg.unit_of_image(lo), seg.unit_of_image(hi - 1) + 1)
    }

    /// A fault on a `Snapshot` unit: copy it from its chunk (poison it if the
    /// chunk is corrupt); with the chunk policy, then the rest of the run.
    fn snapshot(&mut self, space: &Space, table: &Table, seg: &Segment, u: usize) -> Outcome {
        let env = Arc::clone(&self.shared.env);
        let policy = self.shared.opts.fault_policy;
        let recorder = self.shared.recorder.as_ref();
        let Filler {
            scratch,
            staging,
            counters,
        } = &mut self.filler;
        let own = space.metrics.recorder.as_ref();
        let kinds = &space.metrics.counters;
        let img = seg.image_of(u);
        if !env.direct(seg) {
            let unit = seg.unit as usize;
            let out = &mut staging[..unit];
            let assembled = fill::assemble(&env, scratch, img, out, Use::Fault, counters, |c| {
                for r in recorder.into_iter().chain(own) {
                    r.record(c);
                }
            });
            counters.fault_copy.inc();
            kinds.fault_copy.inc();
            return match assembled {
                Ok(()) => fill::copy_units(space, seg, u, u + 1, out, true, false, counters),
                Err(_) => {
                    counters.fault_poison.inc();
                    kinds.fault_poison.inc();
                    fill::poison_units(space, seg, u, u + 1, true, counters)
                }
            };
        }
        let loc = env.image.locate(img);
        let Some((chunk, offset, extent)) = loc.and_then(|l| match l.source {
            PageSource::Chunk { chunk, offset } => Some((chunk, offset, l.extent)),
            _ => None,
        }) else {
            // States say image data but the image says otherwise: cannot
            // happen (states are computed from the image); never guess.
            log::error!(
                "{}: unit at {:#x} has no chunk in the image",
                space.id,
                seg.host_of(u)
            );
            return Outcome::Failed;
        };
        for r in recorder.into_iter().chain(own) {
            r.record(chunk);
        }
        let Ok(bytes) = env.cache.get(chunk, scratch, Use::Fault, counters) else {
            counters.fault_poison.inc();
            kinds.fault_poison.inc();
            return fill::poison_units(space, seg, u, u + 1, true, counters);
        };
        counters.fault_copy.inc();
        kinds.fault_copy.inc();
        let unit = seg.unit as usize;
        let off = offset as usize;
        let first = fill::copy_units(
            space,
            seg,
            u,
            u + 1,
            &bytes[off..off + unit],
            true,
            false,
            counters,
        );
        if first != Outcome::Done || policy == FaultPolicy::Page {
            return first;
        }
        // The rest of this chunk's run (the extent holding the fault), in
        // whatever segments map it now, without waking.
        let ext = env.image.extents()[extent];
        let ext_off = u64::from(offset) - (img - ext.start);
        for (s, a, b) in table.image_pieces(ext.start, ext.end()) {
            if !env.direct(s) {
                continue;
            }
            let (k0, k1) = (s.unit_of_image(a), s.unit_of_image(b - 1) + 1);
            let from = (ext_off + (a - ext.start)) as usize;
            let src = &bytes[from..from + (b - a) as usize];
            if fill::copy_units(space, s, k0, k1, src, false, false, counters) != Outcome::Done {
                break;
            }
        }
        Outcome::Done
    }
}

/// A fault outside every mapping: serve a zero page (stack growth, a grown
/// mremap tail, the empty old range of `MREMAP_DONTUNMAP`).
fn stray(env: &fill::Env, space: &Space, addr: u64, counters: &Counters) -> Outcome {
    let page = rustix::param::page_size() as u64;
    let at = addr & !(page - 1);
    match fill::fill_zero(env, space, at, page, page, true, counters) {
        Ok(_) => Outcome::Done,
        Err(uffd::FillError::Exists) => {
            counters.wake_ioctls.inc();
            let _ = uffd::wake(space.fd(), Range::new(at, page));
            Outcome::Done
        }
        Err(uffd::FillError::Again { .. }) => Outcome::Again,
        Err(uffd::FillError::NoEntry) => Outcome::NoEntry,
        Err(uffd::FillError::TargetGone) => {
            space.set_gone();
            Outcome::Gone
        }
        Err(e) => {
            log::warn!(
                "{}: stray fault at {addr:#x}: zero page failed: {e}",
                space.id
            );
            Outcome::Failed
        }
    }
}

/// A fault on a unit already served: either a fill raced the fault message
/// (the page is there: wake), or the page was dropped without a REMOVE event
/// (`MADV_FREE` reclaim, or a userfaultfd without `EVENT_REMOVE`): anonymous
/// memory then reads as zeros.
fn present(
    env: &fill::Env,
    space: &Space,
    seg: &Segment,
    u: usize,
    counters: &Counters,
) -> Outcome {
    let result = fill::fill_zero(
        env,
        space,
        seg.host_of(u),
        seg.unit,
        seg.unit,
        true,
        counters,
    );
    refill_outcome(space, seg, u, counters, "refill", result)
}

/// A fault on a poisoned unit whose marker is gone: poison it again (never
/// zeros, never bytes).
fn repoison(space: &Space, seg: &Segment, u: usize, counters: &Counters) -> Outcome {
    if !space.features().contains(uffd::Features::POISON) {
        return Outcome::Failed;
    }
    counters.poison_ioctls.inc();
    let range = Range::new(seg.host_of(u), seg.unit);
    let result = uffd::poison(space.fd(), range, uffd::PoisonMode::empty());
    refill_outcome(space, seg, u, counters, "poison", result)
}

/// What a fill of unit `u` alone, with no state to move (`present`,
/// `repoison`), ended in: `EEXIST` means the unit is there, so its waiters
/// are woken.
fn refill_outcome(
    space: &Space,
    seg: &Segment,
    u: usize,
    counters: &Counters,
    what: &str,
    result: Result<u64, uffd::FillError>,
) -> Outcome {
    match result {
        Ok(_) => Outcome::Done,
        Err(uffd::FillError::Exists) => {
            counters.eexist.inc();
            fill::wake_unit(space, seg, u, counters);
            Outcome::Done
        }
        Err(uffd::FillError::Again { .. }) => Outcome::Again,
        Err(uffd::FillError::NoEntry) => Outcome::NoEntry,
        Err(uffd::FillError::TargetGone) => {
            space.set_gone();
            Outcome::Gone
        }
        Err(e) => {
            log::warn!("{}: {what} at {:#x}: {e}", space.id, seg.host_of(u));
            Outcome::Failed
        }
    }
}

/// Unregisters every range the table tracks (best effort: ranges the target
/// has since unmapped are skipped by the kernel).
fn unregister_all(space: &Space, table: &Table) {
    for s in table.segments() {
        if let Err(e) = uffd::unregister(space.uffd().as_fd(), Range::new(s.host, s.len)) {
            log::debug!("{}: unregister {:#x}+{:#x}: {e}", space.id, s.host, s.len);
        }
    }
}
