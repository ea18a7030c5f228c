//! The fault path allocates nothing: with a counting global allocator, a
//! burst of faults served by the server thread (cold chunks, cache hits, zero
//! pages, both policies) adds no allocation anywhere in the process.
//!
//! Its own test binary, because it replaces the global allocator.

#[allow(dead_code)]
mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use restore_agent::{
    FaultPolicy, Placement, RestoreOptions, ServerOptions, WorkingSetOptions, restore_into,
};
use support::image::{PAGE, RegionSpec, TestImage, mem_equals};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn serving_faults_allocates_nothing() {
    let img = TestImage::build(
        &[RegionSpec {
            start: 0,
            pages: 1024,
        }],
        64 * 1024,
        61,
    );
    for policy in [FaultPolicy::Page, FaultPolicy::Chunk] {
        let opts = RestoreOptions {
            placement: Placement::Anywhere,
            server: ServerOptions {
                fault_policy: policy,
                prefetch_workers: 0,
                record_working_set: true,
                ..ServerOptions::default()
            },
            working_set: WorkingSetOptions {
                path: None,
                load: false,
                save: false,
            },
            ..RestoreOptions::default()
        };
        let h = restore_into(Arc::clone(&img.image), opts).expect("restore");
        let reg = h.regions()[0];
        let want = &img.bytes[0];
        // Warm up: the first fault of the process.
        assert!(mem_equals(reg.addr, &want[..PAGE]));
        let before = ALLOCATIONS.load(Ordering::SeqCst);
        // Every other page, then the rest: cold chunks, cache hits, zeros.
        for p in (2..1024).step_by(2).chain((1..1024).step_by(2)) {
            let off = p * PAGE;
            assert!(mem_equals(reg.addr + off as u64, &want[off..off + PAGE]));
        }
        let after = ALLOCATIONS.load(Ordering::SeqCst);
        let faults = h.stats().faults.total;
        assert!(faults > 100, "{policy:?}: {faults} faults");
        assert_eq!(
            after - before,
            0,
            "{policy:?}: {} allocations while serving {faults} faults",
            after - before
        );
        h.stop().expect("stop");
    }
}
