//! `capture_self_ranges`: ranges of the test process itself.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use capture::{CaptureError, capture_self_ranges};
use fixtures::pattern::{self, PageKind};
use fixtures::sys::Mapping;
use snapshot_format::{Image, PageSource, RegionKind};

use crate::common::{PAGE, kill_options, options};

#[test]
fn own_ranges_are_captured_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    // 64 pages: even pages hold a pattern, odd pages are never touched.
    let pages = 64u64;
    let mut map = Mapping::anonymous((pages * PAGE) as usize).unwrap();
    let key = 0x5eed;
    for p in (0..pages).step_by(2) {
        let kind = pattern::mixed_kind(key, p);
        pattern::fill_page(kind, key, p, pattern::page_words_mut(map.words_mut(), p));
    }
    let base = map.addr() as u64;
    // Two ranges given out of order; the second is part of the mapping.
    let ranges = [base + 40 * PAGE..base + 64 * PAGE, base..base + 32 * PAGE];
    let report = capture_self_ranges(&ranges, &options(dir.path(), "own.lzr")).unwrap();
    assert_eq!(report.pid, std::process::id() as i32);
    assert_eq!(report.regions, 2);
    assert_eq!(report.threads, 0);
    assert_eq!(report.image.raw_bytes, 56 * PAGE);
    // Only the populated (even) pages were read.
    assert_eq!(report.bytes_read, 28 * PAGE);

    let image = Image::open(&report.image.path).unwrap();
    assert!(image.metadata().process.is_none());
    let regions = image.regions();
    assert_eq!((regions[0].start, regions[0].len), (base, 32 * PAGE));
    assert_eq!(
        (regions[1].start, regions[1].len),
        (base + 40 * PAGE, 24 * PAGE)
    );
    assert!(regions.iter().all(|r| r.kind == RegionKind::Anonymous));
    let mut reader = image.range_reader().unwrap();
    let mut page = vec![0u8; PAGE as usize];
    for r in &ranges {
        for addr in (r.start..r.end).step_by(PAGE as usize) {
            let p = (addr - base) / PAGE;
            reader.read(addr, &mut page).unwrap();
            let want = &map.bytes()[(p * PAGE) as usize..((p + 1) * PAGE) as usize];
            assert_eq!(page, want, "page {p}");
            let source = image.locate(addr).unwrap().source;
            let zero = p % 2 == 1 || pattern::mixed_kind(key, p) == PageKind::Zero;
            assert_eq!(source == PageSource::Zero, zero, "page {p}");
        }
    }
}

#[test]
fn bad_ranges_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let map = Mapping::anonymous(8 * PAGE as usize).unwrap();
    let base = map.addr() as u64;
    let opts = options(dir.path(), "bad.lzr");
    let one = |r: Range<u64>| std::iter::once(r).collect::<Vec<_>>();
    let cases = [
        one(base + 1..base + PAGE),
        one(base..base),
        vec![base..base + 4 * PAGE, base + 2 * PAGE..base + 6 * PAGE],
    ];
    for ranges in cases {
        let err = capture_self_ranges(&ranges, &opts).unwrap_err();
        assert!(matches!(err, CaptureError::InvalidRange { .. }), "{err}");
    }
    // Unmapped memory: nothing is ever mapped below vm.mmap_min_addr.
    let err = capture_self_ranges(&one(PAGE..4 * PAGE), &opts).unwrap_err();
    assert!(
        matches!(err, CaptureError::InvalidRange { ref reason, .. } if reason.contains("not mapped")),
        "{err}"
    );
    let err = capture_self_ranges(&one(base..base + PAGE), &kill_options(dir.path(), "k.lzr"))
        .unwrap_err();
    assert!(matches!(err, CaptureError::InvalidOptions(_)), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    drop(map);
}

#[test]
fn concurrent_writers_do_not_break_the_capture() {
    // The consistency caveat: pages another thread writes during the capture may hold
    // any mix of what was written (even a word torn between two writes: the kernel's
    // copy is not atomic per word), so only the pages nobody writes are checked: they
    // must be exact, and the capture must succeed.
    let dir = tempfile::tempdir().unwrap();
    let pages = 256usize;
    let words_per_page = (PAGE / 8) as usize;
    // Page-aligned words inside a heap allocation.
    let storage: Arc<Vec<AtomicU64>> = Arc::new(
        (0..(pages + 1) * words_per_page)
            .map(|_| AtomicU64::new(0))
            .collect(),
    );
    let skip = (storage.as_ptr() as u64).div_ceil(PAGE) * PAGE - storage.as_ptr() as u64;
    let first = (skip / 8) as usize;
    for (i, w) in storage[first..first + pages * words_per_page]
        .iter()
        .enumerate()
    {
        w.store(i as u64 * 3 + 1, Ordering::Relaxed);
    }
    let stop = Arc::new(AtomicBool::new(false));
    // The writer bumps every word of the first 16 pages, over and over.
    let writer = {
        let (storage, stop) = (Arc::clone(&storage), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                for w in &storage[first..first + 16 * words_per_page] {
                    w.store(round, Ordering::Relaxed);
                }
            }
            round
        })
    };
    let base = storage.as_ptr() as u64 + skip;
    let range = base..base + (pages as u64) * PAGE;
    let mut reports = Vec::new();
    for i in 0..3 {
        let name = format!("c{i}.lzr");
        reports.push(
            capture_self_ranges(std::slice::from_ref(&range), &options(dir.path(), &name)).unwrap(),
        );
    }
    stop.store(true, Ordering::Relaxed);
    assert!(writer.join().unwrap() > 0);
    for report in reports {
        let image = Image::open(&report.image.path).unwrap();
        let mut bytes = vec![0u8; (range.end - range.start) as usize];
        image
            .range_reader()
            .unwrap()
            .read(range.start, &mut bytes)
            .unwrap();
        for (i, w) in bytes.chunks_exact(8).enumerate().skip(16 * words_per_page) {
            let value = u64::from_le_bytes(w.try_into().unwrap());
            assert_eq!(value, i as u64 * 3 + 1, "word {i} nobody wrote");
        }
    }
}
