//! Statistics without stalling the fault path.
//!
//! - **Counters** live in one [`Counters`] block per filling thread (the
//!   server thread, each prefetch worker). Each block has a single writer,
//!   which bumps its fields with plain relaxed load + store (no locked
//!   instruction, no shared cache line with another writer); readers sum
//!   all blocks. A reader may see a snapshot a few increments old, never a
//!   torn value.
//! - **Fault latency** goes to an hdrhistogram behind a mutex that only the
//!   server thread records into, with `try_lock`: when a reader holds the
//!   lock (to copy the histogram), the server records into a private spill
//!   histogram instead and merges it at its next successful `try_lock`. The
//!   fault path never waits for a reader, and recording allocates nothing
//!   (fixed bounds, no auto-resize).
//! - [`Stats`] is the merged snapshot, serializable with serde (JSON via
//!   [`Stats::to_json`]).
//! - **Per address space**, a `SpaceMetrics` block counts the same things
//!   for one space alone (one VMM connection of `lazarus serve`): the server
//!   thread and every prefetch worker write it, so its counters are atomic
//!   adds (one uncontended locked instruction next to an ioctl that costs
//!   microseconds); its latency histogram has the server thread as single
//!   writer, with the same spill scheme, at two significant digits (a
//!   quarter of the memory). [`AddressSpaceStats`] is its snapshot, read through a
//!   [`SpaceMonitor`](crate::server::SpaceMonitor) that outlives the space.
//!
//! The latency measured is the server-side *service time* of a fault: from
//! the `read(2)` that returned its message to the fill that woke the
//! faulting thread (the kernel does not timestamp faults). The round trip a
//! faulting thread sees adds the wake-up and scheduling (DESIGN.md: about
//! 13 µs in all on this machine when the handler is running).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::space::SpaceId;
use crate::workset::Recorder;

/// Highest latency the histogram tracks exactly (60 s, in ns); longer ones
/// are recorded as this value.
const LATENCY_MAX_NS: u64 = 60_000_000_000;
/// Significant decimal digits of the server's latency histogram.
const LATENCY_SIGFIG: u8 = 3;
/// Significant decimal digits of a space's latency histogram (1 %
/// resolution; about 30 KiB instead of 220 KiB per histogram).
const SPACE_LATENCY_SIGFIG: u8 = 2;

/// A counter with a single writer (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Counter(pub(crate) AtomicU64);

impl Counter {
    /// Adds `n` (single writer: load + store, no RMW).
    pub(crate) fn add(&self, n: u64) {
        let v = self.0.load(Ordering::Relaxed);
        self.0.store(v.wrapping_add(n), Ordering::Relaxed);
    }

    /// Adds one.
    pub(crate) fn inc(&self) {
        self.add(1);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The counters of one filling thread (see the module docs). Opaque: read
/// them through [`Stats`].
#[derive(Debug, Default)]
pub struct Counters {
    pub(crate) faults: Counter,
    pub(crate) fault_copy: Counter,
    pub(crate) fault_zero: Counter,
    pub(crate) fault_poison: Counter,
    pub(crate) fault_present: Counter,
    pub(crate) fault_stray: Counter,
    pub(crate) fault_unserved: Counter,
    pub(crate) copy_ioctls: Counter,
    pub(crate) zeropage_ioctls: Counter,
    pub(crate) poison_ioctls: Counter,
    pub(crate) wake_ioctls: Counter,
    pub(crate) eexist: Counter,
    pub(crate) eagain: Counter,
    pub(crate) bytes_copied: Counter,
    pub(crate) bytes_zeroed: Counter,
    pub(crate) prefetch_items: Counter,
    pub(crate) prefetch_bytes: Counter,
    pub(crate) cache_hits: Counter,
    pub(crate) cache_misses: Counter,
    pub(crate) cache_evictions: Counter,
    pub(crate) cache_bypass: Counter,
    pub(crate) bad_chunks: Counter,
    pub(crate) events_fork: Counter,
    pub(crate) events_remove: Counter,
    pub(crate) events_unmap: Counter,
    pub(crate) events_remap: Counter,
    pub(crate) events_other: Counter,
}

/// The fault latency histogram (see the module docs).
#[derive(Debug)]
pub(crate) struct Latency {
    shared: Mutex<Histogram<u64>>,
}

fn new_histogram(sigfig: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_NS, sigfig)
        .expect("constant histogram bounds are valid")
}

impl Latency {
    pub(crate) fn new() -> Arc<Self> {
        Self::with_sigfig(LATENCY_SIGFIG)
    }

    fn with_sigfig(sigfig: u8) -> Arc<Self> {
        Arc::new(Self {
            shared: Mutex::new(new_histogram(sigfig)),
        })
    }

    /// A copy of the histogram (readers only).
    fn snapshot(&self) -> Histogram<u64> {
        self.shared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The server thread's side of [`Latency`]: records without ever waiting.
#[derive(Debug)]
pub(crate) struct LatencyWriter {
    shared: Arc<Latency>,
    spill: Histogram<u64>,
    spilled: bool,
}

impl LatencyWriter {
    pub(crate) fn new(shared: Arc<Latency>) -> Self {
        // An empty histogram with the shared one's bounds and precision.
        let spill =
            Histogram::new_from(&*shared.shared.lock().unwrap_or_else(PoisonError::into_inner));
        Self {
            shared,
            spill,
            spilled: false,
        }
    }

    /// Records one fault's service time.
    pub(crate) fn record(&mut self, ns: u64) {
        let ns = ns.max(1);
        match self.shared.shared.try_lock() {
            Ok(mut h) => {
                if self.spilled {
                    h.add(&self.spill)
                        .expect("histograms with the same bounds always add");
                    self.spill.reset();
                    self.spilled = false;
                }
                h.saturating_record(ns);
            }
            Err(_) => {
                self.spill.saturating_record(ns);
                self.spilled = true;
            }
        }
    }
}

/// Latency summary, in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LatencyStats {
    /// Faults recorded.
    pub count: u64,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Maximum.
    pub max_us: f64,
    /// Mean.
    pub mean_us: f64,
    /// The distribution: `[quantile, µs]` at each of [`LATENCY_QUANTILES`]
    /// (empty when no fault was recorded), for plotting a CDF.
    pub quantiles_us: Vec<[f64; 2]>,
}

/// The quantiles [`LatencyStats::quantiles_us`] reports.
pub const LATENCY_QUANTILES: [f64; 16] = [
    0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.995, 0.999, 1.0,
];

impl LatencyStats {
    fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Self {
            count: h.len(),
            p50_us: us(h.value_at_quantile(0.5)),
            p99_us: us(h.value_at_quantile(0.99)),
            max_us: us(h.max()),
            mean_us: h.mean() / 1000.0,
            quantiles_us: LATENCY_QUANTILES
                .iter()
                .map(|&q| [q, us(h.value_at_quantile(q))])
                .collect(),
        }
    }
}

/// Faults, by how they were served.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FaultStats {
    /// Page faults read.
    pub total: u64,
    /// Served with image bytes (`UFFDIO_COPY`).
    pub copy: u64,
    /// Served with zeros.
    pub zero: u64,
    /// Served with a poison marker (the thread gets SIGBUS).
    pub poison: u64,
    /// On a unit already served (a fill raced the fault, or the page was
    /// dropped without a REMOVE event): woken, or given zeros.
    pub present: u64,
    /// Outside every mapping (stack growth, the grown tail of an mremap):
    /// served with zeros.
    pub stray: u64,
    /// Left unserved: a poisoned unit on a userfaultfd without the POISON
    /// feature (the thread stays blocked rather than read wrong bytes), or a
    /// fill that failed unexpectedly.
    pub unserved: u64,
    /// Service time (see the module docs).
    pub latency: LatencyStats,
}

/// Kernel calls of fault thread and prefetch workers together.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct IoctlStats {
    /// `UFFDIO_COPY` calls.
    pub copy: u64,
    /// `UFFDIO_ZEROPAGE` calls.
    pub zeropage: u64,
    /// `UFFDIO_POISON` calls.
    pub poison: u64,
    /// `UFFDIO_WAKE` calls.
    pub wake: u64,
    /// Fills that found a page present (`EEXIST`).
    pub eexist: u64,
    /// Fills refused because an event was pending (`EAGAIN`), then retried.
    pub eagain_retries: u64,
}

/// Bytes installed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ByteStats {
    /// Image bytes copied by the fault thread.
    pub fault_copied: u64,
    /// Image bytes copied by prefetch workers.
    pub prefetch_copied: u64,
    /// Bytes of zero pages installed.
    pub zeroed: u64,
}

/// Prefetch pool.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PrefetchStats {
    /// Worker threads per run.
    pub workers: usize,
    /// Plan items (chunks, zero sweeps) done.
    pub items: u64,
    /// Whether a run is in progress.
    pub running: bool,
}

/// Chunk cache.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CacheStats {
    /// Slots (decoded chunks it can hold).
    pub slots: usize,
    /// Lookups served from the cache.
    pub hits: u64,
    /// Lookups that decoded the chunk.
    pub misses: u64,
    /// Chunks evicted to make room.
    pub evictions: u64,
    /// Decodes into a thread's private buffer because every candidate slot
    /// was in use.
    pub bypasses: u64,
    /// Chunks found corrupt (their pages are poisoned).
    pub bad_chunks: u64,
}

/// Non-cooperative events applied.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EventStats {
    /// FORK (a child address space to serve).
    pub fork: u64,
    /// REMOVE (`MADV_DONTNEED` / `MADV_REMOVE`).
    pub remove: u64,
    /// UNMAP.
    pub unmap: u64,
    /// REMAP (`mremap`).
    pub remap: u64,
    /// Unknown or undecodable messages.
    pub other: u64,
}

/// Address spaces.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SpaceStats {
    /// Being served.
    pub live: usize,
    /// Gone (process exited, or removed).
    pub gone: u64,
}

/// Population progress.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PopulationStats {
    /// Units (pages) still holding only image data, over live spaces.
    pub remaining_pages: u64,
    /// Whether every live space is populated (see `FaultServer::wait_populated`).
    pub populated: bool,
    /// Time from server start until it was first populated.
    pub time_to_populated_ms: Option<f64>,
}

/// Working set.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WorkingSetStats {
    /// Chunks of the loaded working set (prefetched first).
    pub loaded: usize,
    /// Chunks recorded, in first-fault order.
    pub recorded: usize,
}

/// A snapshot of a server's statistics.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {
    /// Time since the server started.
    pub uptime_ms: f64,
    /// Faults.
    pub faults: FaultStats,
    /// Fill and wake calls.
    pub ioctls: IoctlStats,
    /// Bytes installed.
    pub bytes: ByteStats,
    /// Prefetch pool.
    pub prefetch: PrefetchStats,
    /// Chunk cache.
    pub cache: CacheStats,
    /// Events.
    pub events: EventStats,
    /// Address spaces.
    pub spaces: SpaceStats,
    /// Population.
    pub population: PopulationStats,
    /// Working set.
    pub working_set: WorkingSetStats,
    /// Server events dropped because nobody read them (see
    /// `FaultServer::events`).
    pub notifications_dropped: u64,
}

impl Stats {
    /// The statistics as one line of JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("Stats serializes to JSON")
    }

    /// Adds the counters of `blocks` and the latency histogram.
    pub(crate) fn collect(blocks: &[Arc<Counters>], latency: &Latency) -> Self {
        let sum = |f: fn(&Counters) -> &Counter| blocks.iter().map(|c| f(c).get()).sum::<u64>();
        Self {
            faults: FaultStats {
                total: sum(|c| &c.faults),
                copy: sum(|c| &c.fault_copy),
                zero: sum(|c| &c.fault_zero),
                poison: sum(|c| &c.fault_poison),
                present: sum(|c| &c.fault_present),
                stray: sum(|c| &c.fault_stray),
                unserved: sum(|c| &c.fault_unserved),
                latency: LatencyStats::from_histogram(&latency.snapshot()),
            },
            ioctls: IoctlStats {
                copy: sum(|c| &c.copy_ioctls),
                zeropage: sum(|c| &c.zeropage_ioctls),
                poison: sum(|c| &c.poison_ioctls),
                wake: sum(|c| &c.wake_ioctls),
                eexist: sum(|c| &c.eexist),
                eagain_retries: sum(|c| &c.eagain),
            },
            bytes: ByteStats {
                fault_copied: sum(|c| &c.bytes_copied) - sum(|c| &c.prefetch_bytes),
                prefetch_copied: sum(|c| &c.prefetch_bytes),
                zeroed: sum(|c| &c.bytes_zeroed),
            },
            prefetch: PrefetchStats {
                items: sum(|c| &c.prefetch_items),
                ..PrefetchStats::default()
            },
            cache: CacheStats {
                hits: sum(|c| &c.cache_hits),
                misses: sum(|c| &c.cache_misses),
                evictions: sum(|c| &c.cache_evictions),
                bypasses: sum(|c| &c.cache_bypass),
                bad_chunks: sum(|c| &c.bad_chunks),
                ..CacheStats::default()
            },
            events: EventStats {
                fork: sum(|c| &c.events_fork),
                remove: sum(|c| &c.events_remove),
                unmap: sum(|c| &c.events_unmap),
                remap: sum(|c| &c.events_remap),
                other: sum(|c| &c.events_other),
            },
            ..Self::default()
        }
    }
}

/// A counter any thread may bump (an atomic add; see the module docs).
#[derive(Debug, Default)]
pub(crate) struct SharedCounter(AtomicU64);

impl SharedCounter {
    /// Adds `n`.
    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one.
    pub(crate) fn inc(&self) {
        self.add(1);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The counters of one address space (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct SpaceCounters {
    pub(crate) faults: SharedCounter,
    pub(crate) fault_copy: SharedCounter,
    pub(crate) fault_zero: SharedCounter,
    pub(crate) fault_poison: SharedCounter,
    pub(crate) fault_present: SharedCounter,
    pub(crate) fault_stray: SharedCounter,
    pub(crate) fault_unserved: SharedCounter,
    pub(crate) fault_bytes: SharedCounter,
    pub(crate) prefetch_bytes: SharedCounter,
    pub(crate) zeroed_bytes: SharedCounter,
    pub(crate) eagain: SharedCounter,
    pub(crate) events_fork: SharedCounter,
    pub(crate) events_remove: SharedCounter,
    pub(crate) events_unmap: SharedCounter,
    pub(crate) events_remap: SharedCounter,
    pub(crate) events_other: SharedCounter,
}

/// Everything one address space records about itself; shared by its
/// `Space`, the server thread's view of it and any
/// [`SpaceMonitor`](crate::server::SpaceMonitor), so it outlives the space.
#[derive(Debug)]
pub(crate) struct SpaceMetrics {
    pub(crate) id: SpaceId,
    pub(crate) counters: SpaceCounters,
    /// Fault service times (the server thread writes, through a
    /// [`LatencyWriter`]).
    pub(crate) latency: Arc<Latency>,
    /// Units in `Snapshot` state.
    pub(crate) remaining: AtomicU64,
    /// When the space was added.
    pub(crate) started: Instant,
    /// Nanoseconds from `started` until the space was first populated; 0:
    /// not yet.
    populated_after_ns: AtomicU64,
    /// First-fault order of this space's chunks (single writer: the server
    /// thread), if recorded.
    pub(crate) recorder: Option<Recorder>,
}

impl SpaceMetrics {
    /// Metrics for a space with `snapshot_units` units to fill; records its
    /// working set when `recorder` is given.
    pub(crate) fn new(id: SpaceId, snapshot_units: u64, recorder: Option<Recorder>) -> Self {
        Self {
            id,
            counters: SpaceCounters::default(),
            latency: Latency::with_sigfig(SPACE_LATENCY_SIGFIG),
            remaining: AtomicU64::new(snapshot_units),
            started: Instant::now(),
            populated_after_ns: AtomicU64::new(0),
            recorder,
        }
    }

    /// Notes that the space is populated now, unless it was before.
    pub(crate) fn set_populated(&self) {
        if self.populated_after_ns.load(Ordering::Relaxed) == 0 {
            let ns = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.populated_after_ns.store(ns.max(1), Ordering::Relaxed);
        }
    }

    /// A snapshot of the statistics.
    pub(crate) fn stats(&self) -> AddressSpaceStats {
        let c = &self.counters;
        let populated = self.populated_after_ns.load(Ordering::Relaxed);
        AddressSpaceStats {
            space: self.id,
            uptime_ms: self.started.elapsed().as_secs_f64() * 1e3,
            faults: FaultStats {
                total: c.faults.get(),
                copy: c.fault_copy.get(),
                zero: c.fault_zero.get(),
                poison: c.fault_poison.get(),
                present: c.fault_present.get(),
                stray: c.fault_stray.get(),
                unserved: c.fault_unserved.get(),
                latency: LatencyStats::from_histogram(&self.latency.snapshot()),
            },
            bytes: ByteStats {
                fault_copied: c.fault_bytes.get(),
                prefetch_copied: c.prefetch_bytes.get(),
                zeroed: c.zeroed_bytes.get(),
            },
            eagain_retries: c.eagain.get(),
            events: EventStats {
                fork: c.events_fork.get(),
                remove: c.events_remove.get(),
                unmap: c.events_unmap.get(),
                remap: c.events_remap.get(),
                other: c.events_other.get(),
            },
            remaining_pages: self.remaining.load(Ordering::Acquire),
            time_to_populated_ms: (populated != 0).then(|| populated as f64 / 1e6),
            working_set_recorded: self.recorder.as_ref().map_or(0, Recorder::len),
        }
    }
}

/// The statistics of one address space (one VMM connection of `lazarus
/// serve`): the same counters as [`Stats`], for this space alone.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AddressSpaceStats {
    /// The space.
    pub space: SpaceId,
    /// Time since the space was added.
    pub uptime_ms: f64,
    /// Faults (and their service time).
    pub faults: FaultStats,
    /// Bytes installed, by the fault thread and by prefetch.
    pub bytes: ByteStats,
    /// Fills refused because an event was pending (`EAGAIN`), then retried.
    pub eagain_retries: u64,
    /// Events applied.
    pub events: EventStats,
    /// Units (pages) still holding only image data.
    pub remaining_pages: u64,
    /// Time from the space's start until no unit needed image data any more
    /// and its prefetch pass was over.
    pub time_to_populated_ms: Option<f64>,
    /// Chunks recorded in first-fault order.
    pub working_set_recorded: usize,
}

impl AddressSpaceStats {
    /// The statistics as one line of JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("AddressSpaceStats serializes to JSON")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_spills_while_a_reader_holds_the_lock() {
        let shared = Latency::new();
        let mut w = LatencyWriter::new(Arc::clone(&shared));
        w.record(1_000);
        {
            let _reader = shared.shared.lock().expect("lock");
            w.record(5_000); // spilled, not blocked
            w.record(9_000);
        }
        w.record(2_000); // merges the spill
        let s = LatencyStats::from_histogram(&shared.snapshot());
        assert_eq!(s.count, 4);
        assert!((8.9..=9.1).contains(&s.max_us), "{s:?}");
    }

    #[test]
    fn stats_sum_blocks_and_serialize() {
        let a = Arc::new(Counters::default());
        let b = Arc::new(Counters::default());
        a.faults.add(3);
        b.faults.inc();
        b.bytes_copied.add(8192);
        b.prefetch_bytes.add(4096);
        let s = Stats::collect(&[a, b], &Latency::new());
        assert_eq!(s.faults.total, 4);
        assert_eq!(s.bytes.fault_copied, 4096);
        assert_eq!(s.bytes.prefetch_copied, 4096);
        let json = s.to_json();
        assert!(json.contains("\"faults\":{\"total\":4"), "{json}");
    }
}
