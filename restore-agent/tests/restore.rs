//! In-process restore (`restore_into`) against the real kernel: generated
//! images (random pages, zero pages, deduplicated chunks, several regions),
//! restored into this process, touched by several threads, compared byte for
//! byte; both fault policies; prefetch; working sets; a corrupt chunk; stop
//! while threads fault, without leaking threads or fds.

#[allow(dead_code)]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use restore_agent::{
    FaultPolicy, Placement, RestoreError, RestoreHandle, RestoreOptions, ServerOptions, WorkingSet,
    WorkingSetOptions, restore_into,
};
use support::image::{
    PAGE, RegionSpec, TestImage, mem_equals, mix, open_fds, read_mem, threads, write_mem,
};
use support::{TIMEOUT, fork_child};

fn regions() -> Vec<RegionSpec> {
    vec![
        RegionSpec {
            start: 0x10_0000,
            pages: 300,
        },
        RegionSpec {
            start: 0x40_0000,
            pages: 64,
        },
        RegionSpec {
            start: 0x80_0000,
            pages: 513,
        },
    ]
}

fn options(policy: FaultPolicy, workers: usize) -> RestoreOptions {
    RestoreOptions {
        placement: Placement::Anywhere,
        server: ServerOptions {
            fault_policy: policy,
            prefetch_workers: workers,
            ..ServerOptions::default()
        },
        working_set: WorkingSetOptions::NONE,
        ..RestoreOptions::default()
    }
}

/// Every page of every region, as (region, page index).
fn all_pages(img: &TestImage) -> Vec<(usize, usize)> {
    img.bytes
        .iter()
        .enumerate()
        .flat_map(|(r, b)| (0..b.len() / PAGE).map(move |p| (r, p)))
        .collect()
}

/// Compares every byte of the restored regions with the image.
fn assert_all_bytes(h: &RestoreHandle, img: &TestImage) {
    for (reg, want) in h.regions().iter().zip(&img.bytes) {
        let got = read_mem(reg.addr, reg.len as usize);
        if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
            panic!(
                "region {} differs at byte {i:#x} (page {}): got {:#x}, want {:#x}",
                reg.index,
                i / PAGE,
                got[i],
                want[i]
            );
        }
    }
}

/// Waits (bounded) until this process has `n` threads.
fn wait_threads(n: usize) {
    let deadline = Instant::now() + TIMEOUT;
    while threads() != n {
        assert!(
            Instant::now() < deadline,
            "thread count stayed {} (expected {n})",
            threads()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn many_threads_read_and_write_every_page_with_both_policies() {
    for policy in [FaultPolicy::Page, FaultPolicy::Chunk] {
        let img = TestImage::build(&regions(), 16 * 1024, 7);
        let h = restore_into(Arc::clone(&img.image), options(policy, 0)).expect("restore");
        let regs: Vec<_> = h.regions().to_vec();
        let pages = all_pages(&img);
        let bytes = Arc::new(img.bytes.clone());
        // Pages with index % 8 == 7 are written by their owner thread; the
        // others are read (and compared) by every thread, sequentially or in
        // its own random order, so threads fault on the same pages at once.
        let workers: Vec<_> = (0..4u64)
            .map(|t| {
                let (regs, pages, bytes) = (regs.clone(), pages.clone(), Arc::clone(&bytes));
                std::thread::spawn(move || -> Result<(), String> {
                    // Thread 0 goes in address order, the others at random.
                    let mut order = pages;
                    if t > 0 {
                        order.sort_by_key(|&(r, p)| mix(t ^ ((r as u64) << 32) ^ p as u64));
                    }
                    for (r, p) in order {
                        let addr = regs[r].addr + (p * PAGE) as u64;
                        let want = &bytes[r][p * PAGE..(p + 1) * PAGE];
                        if p % 8 == 7 {
                            if (p / 8) as u64 % 4 == t {
                                let mine = vec![t as u8 + 1; PAGE];
                                write_mem(addr, &mine);
                                if !mem_equals(addr, &mine) {
                                    return Err(format!("thread {t}: own write lost at {r}/{p}"));
                                }
                            }
                        } else if !mem_equals(addr, want) {
                            return Err(format!("thread {t}: region {r} page {p} differs"));
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join()
                .expect("worker thread")
                .expect("bytes as in the image");
        }
        for (r, reg) in regs.iter().enumerate() {
            for p in (7..reg.len as usize / PAGE).step_by(8) {
                let owner = (p / 8) % 4;
                let got = read_mem(reg.addr + (p * PAGE) as u64, PAGE);
                assert!(
                    got.iter().all(|&b| b == owner as u8 + 1),
                    "{policy:?}: page {r}/{p}"
                );
            }
        }
        let s = h.stats();
        assert!(
            s.faults.total > 0 && s.faults.copy > 0 && s.faults.zero > 0,
            "{s:?}"
        );
        assert_eq!(s.faults.unserved, 0, "{s:?}");
        assert_eq!(s.faults.stray, 0, "{s:?}");
        if policy == FaultPolicy::Chunk {
            assert!(
                s.ioctls.copy > s.faults.copy,
                "chunk policy copies the rest: {s:?}"
            );
        }
        let mem = h.stop().expect("stop");
        assert_eq!(mem.regions().len(), 3);
    }
}

#[test]
fn prefetch_populates_everything_and_no_fault_follows() {
    let img = TestImage::build(&regions(), 64 * 1024, 11);
    let h = restore_into(Arc::clone(&img.image), options(FaultPolicy::Chunk, 2)).expect("restore");
    assert!(h.wait_populated(TIMEOUT), "not populated: {:?}", h.stats());
    let before = h.stats();
    assert_eq!(before.population.remaining_pages, 0);
    assert!(before.population.populated);
    assert!(before.population.time_to_populated_ms.is_some());
    assert!(before.bytes.prefetch_copied > 0);
    assert!(
        before.bytes.zeroed > 0,
        "zero runs are mapped too: {before:?}"
    );
    assert_all_bytes(&h, &img);
    let after = h.stats();
    assert_eq!(
        after.faults.total, before.faults.total,
        "every page (zeros included) was present after population"
    );
    let json: serde_json::Value = serde_json::from_str(&after.to_json()).expect("stats JSON");
    assert_eq!(json["population"]["remaining_pages"], 0);
    assert!(json["faults"]["latency"]["p99_us"].is_number());
    h.stop().expect("stop");
}

#[test]
fn working_set_is_recorded_in_fault_order_and_prefetched_first() {
    let img = TestImage::build(&regions(), 16 * 1024, 23);
    let ws_opts = WorkingSetOptions {
        path: None,
        load: true,
        save: true,
    };
    // First restore: no prefetch; touch pages in a scrambled order.
    let mut o = options(FaultPolicy::Page, 0);
    o.working_set = ws_opts.clone();
    let h = restore_into(Arc::clone(&img.image), o).expect("restore");
    assert!(h.loaded_working_set().is_none());
    let mut order = all_pages(&img);
    order.sort_by_key(|&(r, p)| mix(0xabc ^ ((r as u64) << 32) ^ p as u64));
    order.truncate(200);
    let mut faulted = Vec::new();
    for &(r, p) in &order {
        let reg = h.regions()[r];
        let want = &img.bytes[r][p * PAGE..(p + 1) * PAGE];
        assert!(mem_equals(reg.addr + (p * PAGE) as u64, want));
        let image_addr = img.image.regions()[r].start + (p * PAGE) as u64;
        if let Some(c) = img.chunk_at(image_addr)
            && !faulted.contains(&c)
        {
            faulted.push(c);
        }
    }
    assert!(faulted.len() > 10);
    h.stop().expect("stop");
    let path = WorkingSet::default_path(&img.path);
    let ws = WorkingSet::load(&path, &img.image).expect("working set saved beside the image");
    assert_eq!(
        ws.chunks(),
        &faulted[..],
        "recorded order = first-fault order"
    );

    // Without it, the plan is in address order.
    let plain =
        restore_into(Arc::clone(&img.image), options(FaultPolicy::Page, 1)).expect("restore");
    let address_order = plain.server().prefetch_plan();
    assert!(plain.wait_populated(TIMEOUT));
    plain.stop().expect("stop");
    assert_ne!(address_order[..faulted.len()], faulted[..]);

    // Second restore: the working set goes first, then the rest in address
    // order.
    let mut o = options(FaultPolicy::Page, 1);
    o.working_set = ws_opts;
    let h = restore_into(Arc::clone(&img.image), o).expect("restore");
    assert_eq!(h.loaded_working_set(), Some(&ws));
    let plan = h.server().prefetch_plan();
    assert_eq!(&plan[..faulted.len()], &faulted[..]);
    let rest: Vec<_> = address_order
        .iter()
        .filter(|c| !faulted.contains(c))
        .copied()
        .collect();
    assert_eq!(&plan[faulted.len()..], &rest[..]);
    assert!(h.wait_populated(TIMEOUT));
    assert_all_bytes(&h, &img);
    assert_eq!(h.stats().working_set.loaded, faulted.len());
    h.stop().expect("stop");
}

#[test]
fn a_corrupt_chunk_raises_sigbus_in_the_reader_and_the_rest_is_served() {
    let mut img = TestImage::build(&regions(), 16 * 1024, 31);
    // A data page of region 2 and its chunk; every page using the chunk.
    let base = img.image.regions()[2].start;
    let bad_page = (0..513)
        .find(|&p| {
            img.chunk_at(base + (p * PAGE) as u64).is_some()
                && img
                    .image
                    .chunk_uses(img.chunk_at(base + (p * PAGE) as u64).unwrap())
                    .len()
                    == 1
        })
        .expect("a data page with an undeduplicated chunk");
    let chunk = img
        .chunk_at(base + (bad_page * PAGE) as u64)
        .expect("chunk");
    let bad: Vec<(usize, usize)> = all_pages(&img)
        .into_iter()
        .filter(|&(r, p)| {
            img.chunk_at(img.image.regions()[r].start + (p * PAGE) as u64) == Some(chunk)
        })
        .collect();
    img.corrupt_chunk(chunk);

    let h = restore_into(Arc::clone(&img.image), options(FaultPolicy::Chunk, 0)).expect("restore");
    let bad_addr = h.regions()[2].addr + (bad_page * PAGE) as u64;
    let child = fork_child(|| {
        let _ = read_mem_byte(bad_addr);
        3
    });
    let status = child.wait(TIMEOUT);
    assert_eq!(
        status.terminating_signal(),
        Some(libc::SIGBUS),
        "the child touching a corrupt chunk's page dies of SIGBUS: {status:?}"
    );
    // Another child reads a good page of the same region.
    let good = (0..513)
        .find(|p| !bad.contains(&(2, *p)))
        .expect("a good page");
    let good_addr = h.regions()[2].addr + (good * PAGE) as u64;
    let want = img.bytes[2][good * PAGE..(good + 1) * PAGE].to_vec();
    let child = fork_child(|| if mem_equals(good_addr, &want) { 0 } else { 2 });
    assert_eq!(child.wait(TIMEOUT).exit_status(), Some(0));
    // This process reads everything else.
    for (r, p) in all_pages(&img) {
        if bad.contains(&(r, p)) {
            continue;
        }
        let addr = h.regions()[r].addr + (p * PAGE) as u64;
        assert!(
            mem_equals(addr, &img.bytes[r][p * PAGE..(p + 1) * PAGE]),
            "page {r}/{p}"
        );
    }
    // Population poisons what is left of the bad chunk and completes.
    h.server().populate();
    assert!(h.wait_populated(TIMEOUT), "{:?}", h.stats());
    let s = h.stats();
    assert_eq!(s.cache.bad_chunks, 1, "{s:?}");
    assert!(s.faults.poison >= 1 && s.ioctls.poison >= 1, "{s:?}");
    assert_eq!(s.events.fork, 2, "{s:?}");
    h.stop().expect("stop");
}

/// One byte read through a raw pointer (no allocation: forked child).
fn read_mem_byte(addr: u64) -> u8 {
    // SAFETY: a live restored mapping; reading it may fault (or SIGBUS).
    unsafe { std::ptr::read_volatile(addr as *const u8) }
}

#[test]
fn clean_stop_while_threads_are_faulting_leaks_no_threads_or_fds() {
    let img = TestImage::build(&regions(), 64 * 1024, 41);
    let fds = open_fds();
    let tasks = threads();
    for workers in [0, 2] {
        let h = restore_into(Arc::clone(&img.image), options(FaultPolicy::Page, workers))
            .expect("restore");
        let regs: Vec<_> = h.regions().to_vec();
        let bytes = Arc::new(img.bytes.clone());
        let readers: Vec<_> = (0..4u64)
            .map(|t| {
                let (regs, bytes) = (regs.clone(), Arc::clone(&bytes));
                std::thread::spawn(move || {
                    let mut pages: Vec<(usize, usize)> = (0..regs.len())
                        .flat_map(|r| (0..regs[r].len as usize / PAGE).map(move |p| (r, p)))
                        .collect();
                    pages.sort_by_key(|&(r, p)| mix(t ^ 0x77 ^ ((r as u64) << 32) ^ p as u64));
                    pages.iter().all(|&(r, p)| {
                        mem_equals(
                            regs[r].addr + (p * PAGE) as u64,
                            &bytes[r][p * PAGE..(p + 1) * PAGE],
                        )
                    })
                })
            })
            .collect();
        // Stop while the readers are faulting: stop completes the
        // population, so every reader gets the right bytes.
        let mem = h.stop().expect("stop");
        for r in readers {
            assert!(r.join().expect("reader"), "a reader saw wrong bytes");
        }
        for (reg, want) in mem.regions().iter().zip(&img.bytes) {
            assert_eq!(&read_mem(reg.addr, reg.len as usize), want, "after stop");
        }
        drop(mem);
    }
    wait_threads(tasks);
    assert_eq!(open_fds(), fds, "file descriptors leaked");
}

#[test]
fn dropping_a_handle_abandons_the_restore_cleanly() {
    let img = TestImage::build(&regions(), 16 * 1024, 43);
    let fds = open_fds();
    let tasks = threads();
    let h = restore_into(Arc::clone(&img.image), options(FaultPolicy::Page, 1)).expect("restore");
    let reg = h.regions()[0];
    assert!(mem_equals(reg.addr, &img.bytes[0][..PAGE]));
    drop(h);
    wait_threads(tasks);
    assert_eq!(open_fds(), fds);
}

#[test]
fn regions_go_to_recorded_or_given_addresses() {
    // Recorded addresses far from anything this process maps.
    let base = 0x5a5a_0000_0000u64 + (u64::from(std::process::id()) << 24);
    let specs = vec![
        RegionSpec {
            start: base,
            pages: 8,
        },
        RegionSpec {
            start: base + 0x10_0000,
            pages: 16,
        },
    ];
    let img = TestImage::build(&specs, 16 * 1024, 47);
    let mut o = options(FaultPolicy::Page, 0);
    o.placement = Placement::Recorded;
    let h = restore_into(Arc::clone(&img.image), o.clone()).expect("restore at recorded addresses");
    assert_eq!(h.regions()[0].addr, base);
    assert_eq!(h.regions()[1].addr, base + 0x10_0000);
    assert_all_bytes(&h, &img);
    // The addresses are taken: a second restore there must refuse.
    match restore_into(Arc::clone(&img.image), o) {
        Err(RestoreError::Map { source, .. }) => {
            assert_eq!(source.raw_os_error(), Some(libc::EEXIST));
        }
        other => panic!("expected EEXIST, got {other:?}"),
    }
    h.stop().expect("stop");

    // Given addresses, and a subset of the regions.
    let mut o = options(FaultPolicy::Page, 0);
    o.regions = Some(vec![1]);
    o.placement = Placement::At(vec![base + 0x100_0000]);
    let h = restore_into(Arc::clone(&img.image), o).expect("restore at given addresses");
    assert_eq!(h.regions().len(), 1);
    assert_eq!(
        (h.regions()[0].index, h.regions()[0].addr),
        (1, base + 0x100_0000)
    );
    assert!(mem_equals(h.regions()[0].addr, &img.bytes[1]));
    h.stop().expect("stop");

    let mut o = options(FaultPolicy::Page, 0);
    o.regions = Some(vec![5]);
    assert!(matches!(
        restore_into(Arc::clone(&img.image), o),
        Err(RestoreError::NoRegion { index: 5, count: 2 })
    ));
}

#[test]
fn hugetlb_regions_are_served_in_whole_huge_pages() {
    let Some(_reservation) = support::hugepages::reserve(12) else {
        eprintln!("skipped: cannot reserve 2 MiB huge pages (not root, or no memory)");
        return;
    };
    let specs = vec![
        RegionSpec {
            start: 0x20_0000,
            pages: 3 * 512,
        },
        RegionSpec {
            start: 0x100_0000,
            pages: 2 * 512,
        },
    ];
    let img = TestImage::build(&specs, 64 * 1024, 53);
    for workers in [0, 2] {
        let mut o = options(FaultPolicy::Page, workers);
        o.huge_pages = true;
        let h = restore_into(Arc::clone(&img.image), o).expect("restore on hugetlbfs");
        if workers > 0 {
            assert!(h.wait_populated(TIMEOUT), "{:?}", h.stats());
        }
        assert_all_bytes(&h, &img);
        let s = h.stats();
        if workers == 0 {
            // One fault per huge page touched, at most.
            assert!(s.faults.total <= 5 + 4, "{s:?}");
            assert!(s.faults.zero + s.faults.copy >= 5, "{s:?}");
        }
        h.stop().expect("stop");
    }
}
