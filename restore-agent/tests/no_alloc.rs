//! The server thread allocates nothing between reads: with a counting
//! global allocator, a burst of faults (cold chunks, cache hits, zero pages,
//! both policies) and of events (REMOVE, UNMAP, REMAP of restored memory of
//! this very process) adds no allocation in the server thread; and the
//! faults alone add none anywhere in the process.
//!
//! Its own test binary, because it replaces the global allocator.

#[allow(dead_code)]
mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

use restore_agent::{
    FaultPolicy, Placement, RestoreOptions, ServerOptions, WorkingSetOptions, restore_into,
};
use support::image::{PAGE, RegionSpec, TestImage, mem_equals, mem_is_zero};
use support::target::{dontneed, mremap_fixed, unmap};

struct Counting;

/// Allocations (and frees) by any thread.
static ALL: AtomicU64 = AtomicU64::new(0);
/// Allocations (and frees) by the thread whose id is in `SERVER`.
static BY_SERVER: AtomicU64 = AtomicU64::new(0);
static SERVER: AtomicI32 = AtomicI32::new(0);

fn count() {
    ALL.fetch_add(1, Ordering::Relaxed);
    let server = SERVER.load(Ordering::Relaxed);
    if server != 0 && rustix::thread::gettid().as_raw_nonzero().get() == server {
        BY_SERVER.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count();
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The id of this process's thread named `name`.
fn thread_named(name: &str) -> i32 {
    let tids: Vec<i32> = std::fs::read_dir("/proc/self/task")
        .expect("tasks")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|tid| {
            std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
                .is_ok_and(|c| c.trim() == name)
        })
        .collect();
    assert_eq!(tids.len(), 1, "one thread named {name}: {tids:?}");
    tids[0]
}

/// Waits until thread `tid` sleeps. The janitor's first blocking receive
/// makes crossbeam's one-time allocations (its wait context, the channel's
/// waiter list); start-up primes them with a 1 ms timed receive, but on a
/// loaded machine the receive's spin-and-yield phase can outlast that
/// timeout and return without ever blocking, leaving the allocations to the
/// janitor's first real wait, which then races the measured faults. After
/// start-up the janitor's only sleep is that wait, so once it sleeps it has
/// made them.
fn wait_asleep(tid: i32) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).expect("stat");
        // The state follows the parenthesised command name.
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next());
        if state == Some("S") {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "thread {tid} never slept: {stat}"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

fn options(policy: FaultPolicy) -> RestoreOptions {
    RestoreOptions {
        placement: Placement::Anywhere,
        server: ServerOptions {
            fault_policy: policy,
            prefetch_workers: 0,
            record_working_set: true,
            ..ServerOptions::default()
        },
        working_set: WorkingSetOptions::NONE,
        ..RestoreOptions::default()
    }
}

#[test]
fn the_server_thread_allocates_nothing_between_reads() {
    const PAGES: usize = 1024;
    let img = TestImage::build(
        &[RegionSpec {
            start: 0,
            pages: PAGES,
        }],
        64 * 1024,
        61,
    );
    let want = &img.bytes[0];
    let p = PAGE as u64;
    for policy in [FaultPolicy::Page, FaultPolicy::Chunk] {
        let h = restore_into(Arc::clone(&img.image), options(policy)).expect("restore");
        let base = h.regions()[0].addr;
        SERVER.store(thread_named("lazarus-faults"), Ordering::SeqCst);
        wait_asleep(thread_named("lazarus-janitor"));
        // Warm up: the first fault of the process.
        assert!(mem_equals(base, &want[..PAGE]));

        // Faults only: nothing allocates anywhere in the process.
        let (all, server) = (ALL.load(Ordering::SeqCst), BY_SERVER.load(Ordering::SeqCst));
        for pg in (2..PAGES / 2).step_by(2).chain((1..PAGES / 2).step_by(2)) {
            let off = pg * PAGE;
            assert!(mem_equals(base + off as u64, &want[off..off + PAGE]));
        }
        assert_eq!(
            ALL.load(Ordering::SeqCst) - all,
            0,
            "{policy:?}: faults allocated"
        );
        assert_eq!(BY_SERVER.load(Ordering::SeqCst) - server, 0);

        // Events on this process's own restored memory, then more faults:
        // the server thread still allocates nothing (the janitor frees).
        let half = base + (PAGES / 2) as u64 * p;
        assert!(dontneed(base, 16 * p) && mem_is_zero(base, 16 * PAGE));
        assert!(unmap(half, 8 * p));
        let to = half + 64 * p;
        assert!(unmap(to, 8 * p), "make room for the move");
        assert!(mremap_fixed(half + 16 * p, 8 * p, 8 * p, to, false));
        let moved = (PAGES / 2 + 16) * PAGE;
        assert!(mem_equals(to, &want[moved..moved + 8 * PAGE]));
        let rest = (PAGES / 2 + 32) * PAGE;
        assert!(mem_equals(half + 32 * p, &want[rest..rest + 32 * PAGE]));
        assert_eq!(
            BY_SERVER.load(Ordering::SeqCst) - server,
            0,
            "{policy:?}: the server thread allocated while applying events"
        );
        let s = h.stats();
        assert!(
            s.events.remove >= 1 && s.events.unmap >= 2 && s.events.remap >= 1,
            "{s:?}"
        );
        SERVER.store(0, Ordering::SeqCst);
        drop(h);
    }
}
