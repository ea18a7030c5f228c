//! The fault server and real processes that fork, drop, move and unmap
//! their restored memory (non-cooperative userfaultfd events), and exit.
//!
//! Each target is a forked process serving its memory through a
//! userfaultfd it hands to the server in the test process (see
//! `support/target.rs`), as in process restore or `serve`. Targets check
//! every byte themselves and exit with a status naming the failed check.

#[allow(dead_code)]
mod support;

use std::time::Duration;

use restore_agent::uffd::Features;
use restore_agent::{FaultPolicy, FaultServer, HUGE_PAGE_2M, Mapping, ServerEvent, ServerOptions};
use support::image::{PAGE, RegionSpec, TestImage, mem_equals, mem_is_zero, mix, write_byte};
use support::target::{
    Reservation, Setup, dontneed, map_fixed_anon, mremap_fixed, register_more, start_target,
    start_target_with, unmap, wait_gone,
};
use support::{TIMEOUT, fork_child};

const P: u64 = PAGE as u64;

fn server(img: &TestImage, workers: usize, policy: FaultPolicy) -> FaultServer {
    FaultServer::start(
        std::sync::Arc::clone(&img.image),
        ServerOptions {
            fault_policy: policy,
            prefetch_workers: workers,
            liveness_interval: Duration::from_millis(20),
            ..ServerOptions::default()
        },
    )
    .expect("start the server")
}

fn one_region(pages: usize, chunk: usize, seed: u64) -> TestImage {
    TestImage::build(&[RegionSpec { start: 0, pages }], chunk, seed)
}

/// Whether page `p` at `addr` holds `marker` in every byte (no allocation).
fn page_is(addr: u64, marker: u8) -> bool {
    (0..PAGE).all(|i| {
        // SAFETY: a readable page of the target's own restored memory.
        unsafe { std::ptr::read_volatile((addr as usize + i) as *const u8) == marker }
    })
}

fn fill_page(addr: u64, marker: u8) {
    for i in 0..P {
        write_byte(addr + i, marker);
    }
}

/// Drains `events` until both spaces are reported gone; returns the
/// children reported forked.
fn forks_until_gone(server: &FaultServer, gone: usize) -> Vec<restore_agent::SpaceId> {
    let events = server.events();
    let mut forked = Vec::new();
    let mut seen = 0;
    while seen < gone {
        match events.recv_timeout(TIMEOUT) {
            Ok(ServerEvent::Forked { child, .. }) => forked.push(child),
            Ok(ServerEvent::Gone { .. }) => seen += 1,
            Ok(ServerEvent::Populated) => {}
            Err(_) => panic!("only {seen} of {gone} spaces reported gone"),
        }
    }
    forked
}

#[test]
fn a_forked_child_and_its_parent_each_see_correct_independent_data() {
    const PAGES: usize = 256;
    let img = one_region(PAGES, 16 * 1024, 3);
    for workers in [0, 1] {
        let server = server(&img, workers, FaultPolicy::Page);
        let res = Reservation::new(PAGES as u64 * P);
        let base = res.addr;
        let want = &img.bytes[0];
        let t = start_target(&server, &[Mapping::new(base, 0, PAGES as u64 * P)], |_| {
            // The parent has the first half before it forks; the child gets
            // it copied at fork and the rest served through its own uffd.
            if !mem_equals(base, &want[..PAGES / 2 * PAGE]) {
                return 2;
            }
            let child = fork_child(|| {
                if !mem_equals(base, want) {
                    return 3;
                }
                for p in (0..PAGES as u64).step_by(4) {
                    fill_page(base + p * P, 0xee);
                }
                if !(0..PAGES as u64)
                    .step_by(4)
                    .all(|p| page_is(base + p * P, 0xee))
                {
                    return 4;
                }
                0
            });
            let status = child.wait(TIMEOUT);
            if status.exit_status() != Some(0) {
                return 10 + status.exit_status().unwrap_or(50);
            }
            // The child's writes are its own.
            if !mem_equals(base, want) {
                return 5;
            }
            0
        });
        let space = t.space;
        t.finish("fork", TIMEOUT);
        let forked = forks_until_gone(&server, 2);
        assert_eq!(forked.len(), 1, "one child space");
        assert!(!server.is_live(space) && !server.is_live(forked[0]));
        let s = server.stats();
        assert_eq!(s.events.fork, 1, "{s:?}");
        assert_eq!(s.faults.unserved, 0, "{s:?}");
        server.stop().expect("stop");
    }
}

#[test]
fn dropped_pages_read_zero_never_snapshot_bytes_even_while_prefetch_runs() {
    const PAGES: usize = 512;
    const ITERATIONS: u64 = 100;
    const OPS: u64 = 40;
    let img = one_region(PAGES, 64 * 1024, 5);
    let server = server(&img, 2, FaultPolicy::Chunk);
    let want = &img.bytes[0];
    for iter in 0..ITERATIONS {
        let res = Reservation::new(PAGES as u64 * P);
        let base = res.addr;
        // Per page: 0 = image bytes, 1 = zeros, m >= 2 = every byte m.
        let mut model = vec![0u8; PAGES];
        let t = start_target(&server, &[Mapping::new(base, 0, PAGES as u64 * P)], |_| {
            // Start dropping at once, while the prefetch pass is copying.
            for op in 0..OPS {
                let r = mix(iter << 32 | op);
                let a = (r % PAGES as u64) as usize;
                let b = (a + 1 + (r >> 20) as usize % 48).min(PAGES);
                if (r >> 40) % 3 == 2 {
                    let m = 2 + (op % 200) as u8;
                    for p in a..b {
                        fill_page(base + p as u64 * P, m);
                    }
                    model[a..b].fill(m);
                } else {
                    if !dontneed(base + a as u64 * P, (b - a) as u64 * P) {
                        return 2;
                    }
                    if !mem_is_zero(base + a as u64 * P, (b - a) * PAGE) {
                        return 3;
                    }
                    model[a..b].fill(1);
                }
            }
            for (p, &m) in model.iter().enumerate() {
                let addr = base + p as u64 * P;
                let ok = match m {
                    0 => mem_equals(addr, &want[p * PAGE..(p + 1) * PAGE]),
                    1 => mem_is_zero(addr, PAGE),
                    m => page_is(addr, m),
                };
                if !ok {
                    return 4;
                }
            }
            0
        });
        t.finish(&format!("iteration {iter}"), TIMEOUT);
    }
    let s = server.stats();
    assert!(s.events.remove > 0 && s.bytes.prefetch_copied > 0, "{s:?}");
    server.stop().expect("stop");
}

#[test]
fn remapped_ranges_read_their_snapshot_bytes_at_the_new_address() {
    const PAGES: u64 = 64;
    let img = one_region(PAGES as usize, 16 * 1024, 9);
    for workers in [0, 1] {
        let server = server(&img, workers, FaultPolicy::Page);
        let res = Reservation::new(4 * PAGES * P);
        let base = res.addr;
        let (land_a, land_b, land_c) =
            (base + PAGES * P, base + 2 * PAGES * P, base + 3 * PAGES * P);
        let want = &img.bytes[0];
        let w = |from: u64, to: u64| &want[(from * P) as usize..(to * P) as usize];
        let t = start_target(&server, &[Mapping::new(base, 0, PAGES * P)], |_| {
            // Partial move of pages 4..12.
            if !mremap_fixed(base + 4 * P, 8 * P, 8 * P, land_a, false) {
                return 2;
            }
            if !mem_equals(land_a, w(4, 12)) {
                return 3;
            }
            // Growing move of pages 16..24 to 16 pages: the tail is new.
            if !mremap_fixed(base + 16 * P, 8 * P, 16 * P, land_b, false) {
                return 4;
            }
            if !mem_equals(land_b, w(16, 24)) || !mem_is_zero(land_b + 8 * P, 8 * PAGE) {
                return 5;
            }
            // MREMAP_DONTUNMAP of pages 32..40: data moves, the old range
            // stays, empty.
            if !mremap_fixed(base + 32 * P, 8 * P, 8 * P, land_c, true) {
                return 6;
            }
            if !mem_equals(land_c, w(32, 40)) || !mem_is_zero(base + 32 * P, 8 * PAGE) {
                return 7;
            }
            // Onto another registered range: pages 48..56 over pages 0..8.
            if !mremap_fixed(base + 48 * P, 8 * P, 8 * P, base, false) {
                return 8;
            }
            if !mem_equals(base, w(48, 56)) {
                return 9;
            }
            // What did not move is untouched.
            let rest = [(12, 16), (24, 32), (40, 48), (56, 64)];
            if !rest.iter().all(|&(a, b)| mem_equals(base + a * P, w(a, b))) {
                return 10;
            }
            0
        });
        t.finish("remap", TIMEOUT);
        let s = server.stats();
        assert!(s.events.remap >= 4, "{s:?}");
        assert!(
            s.faults.stray >= 16,
            "new tail and emptied range served as zeros: {s:?}"
        );
        server.stop().expect("stop");
    }
}

#[test]
fn an_unmapped_range_is_forgotten_and_never_served_again() {
    const PAGES: u64 = 64;
    let img = one_region(PAGES as usize, 16 * 1024, 13);
    let server = server(&img, 0, FaultPolicy::Chunk);
    let res = Reservation::new(PAGES * P);
    let base = res.addr;
    let want = &img.bytes[0];
    let t = start_target(&server, &[Mapping::new(base, 0, PAGES * P)], |ctx| {
        if !mem_equals(base, &want[..PAGE]) {
            return 2;
        }
        // Unmap pages 8..40 mid-restore, map fresh memory there and register
        // it: it must read zeros, never the old snapshot bytes.
        if !unmap(base + 8 * P, 32 * P) {
            return 3;
        }
        if !map_fixed_anon(base + 8 * P, 32 * P) || !register_more(ctx, base + 8 * P, 32 * P) {
            return 4;
        }
        if !mem_is_zero(base + 8 * P, 32 * PAGE) {
            return 5;
        }
        if !mem_equals(base + P, &want[PAGE..8 * PAGE])
            || !mem_equals(base + 40 * P, &want[40 * PAGE..])
        {
            return 6;
        }
        0
    });
    t.finish("unmap", TIMEOUT);
    let s = server.stats();
    assert!(s.events.unmap >= 1 && s.faults.stray >= 32, "{s:?}");
    server.stop().expect("stop");
}

#[test]
fn faults_below_a_registered_range_get_zeros_as_stack_growth_does() {
    const PAGES: u64 = 32;
    let img = one_region(PAGES as usize, 16 * 1024, 17);
    let server = server(&img, 1, FaultPolicy::Page);
    let res = Reservation::new(2 * PAGES * P);
    let stack = res.addr + PAGES * P;
    let want = &img.bytes[0];
    let t = start_target(&server, &[Mapping::new(stack, 0, PAGES * P)], |ctx| {
        // The range below grows into registered memory no mapping describes.
        if !map_fixed_anon(res.addr, PAGES * P) || !register_more(ctx, res.addr, PAGES * P) {
            return 2;
        }
        if !mem_is_zero(res.addr, PAGES as usize * PAGE) {
            return 3;
        }
        if !mem_equals(stack, want) {
            return 4;
        }
        0
    });
    t.finish("stack growth", TIMEOUT);
    assert!(server.stats().faults.stray >= PAGES);
    server.stop().expect("stop");
}

#[test]
fn the_server_survives_its_targets_exiting() {
    const PAGES: usize = 2048;
    let img = one_region(PAGES, 64 * 1024, 19);
    let server = server(&img, 1, FaultPolicy::Page);
    let events = server.events();
    let res = Reservation::new(PAGES as u64 * P);
    let base = res.addr;
    let want = &img.bytes[0];
    let maps = [Mapping::new(base, 0, PAGES as u64 * P)];
    // Exits mid-restore: most pages unserved, prefetch running.
    let first = start_target(&server, &maps, |_| {
        if mem_equals(base, &want[..PAGE]) {
            0
        } else {
            2
        }
    });
    let gone = first.space;
    first.finish("exiting target", TIMEOUT);
    wait_gone(&events, gone);
    assert!(!server.is_live(gone));
    // The server goes on serving others.
    let second = start_target(
        &server,
        &maps,
        |_| if mem_equals(base, want) { 0 } else { 2 },
    );
    second.finish("second target", TIMEOUT);
    let s = server.stats();
    assert!(s.spaces.gone >= 1, "{s:?}");
    server.stop().expect("stop");
}

/// Where a slot of the stress model is.
#[derive(Clone, Copy)]
struct Slot {
    moved: bool,
}

#[test]
fn stress_fork_remove_remap_unmap_with_prefetch_repeated() {
    const SLOTS: usize = 16;
    const SLOT_PAGES: u64 = 8;
    const PAGES: u64 = SLOTS as u64 * SLOT_PAGES;
    const ROUNDS: u64 = 6;
    const TARGETS: u64 = 3;
    const OPS: u64 = 150;
    let img = one_region(PAGES as usize, 16 * 1024, 29);
    let server = server(&img, 2, FaultPolicy::Chunk);
    let want = &img.bytes[0];
    for round in 0..ROUNDS {
        let mut running = Vec::new();
        let mut reservations = Vec::new();
        for t in 0..TARGETS {
            let res = Reservation::new(2 * PAGES * P);
            let base = res.addr;
            let home = move |s: usize| base + s as u64 * SLOT_PAGES * P;
            let landing = move |s: usize| base + (PAGES + s as u64 * SLOT_PAGES) * P;
            let mut state = vec![0u8; PAGES as usize];
            let mut slots = vec![Slot { moved: false }; SLOTS];
            let seed = round << 40 | t << 32;
            let target = start_target(&server, &[Mapping::new(base, 0, PAGES * P)], |ctx| {
                let at =
                    |slots: &[Slot], s: usize| if slots[s].moved { landing(s) } else { home(s) };
                let check = |state: &[u8], slots: &[Slot], s: usize| {
                    (0..SLOT_PAGES).all(|i| {
                        let p = s * SLOT_PAGES as usize + i as usize;
                        let addr = at(slots, s) + i * P;
                        match state[p] {
                            0 => mem_equals(addr, &want[p * PAGE..(p + 1) * PAGE]),
                            1 => mem_is_zero(addr, PAGE),
                            m => page_is(addr, m),
                        }
                    })
                };
                for op in 0..OPS {
                    let r = mix(seed | op);
                    let s = (r % SLOTS as u64) as usize;
                    let pages = s * SLOT_PAGES as usize..(s + 1) * SLOT_PAGES as usize;
                    let len = SLOT_PAGES * P;
                    match (r >> 16) % 6 {
                        0 => {
                            if !check(&state, &slots, s) {
                                return 2;
                            }
                        }
                        1 => {
                            let m = 2 + (op % 250) as u8;
                            for i in 0..SLOT_PAGES {
                                fill_page(at(&slots, s) + i * P, m);
                            }
                            state[pages].fill(m);
                        }
                        2 => {
                            if !dontneed(at(&slots, s), len) {
                                return 3;
                            }
                            state[pages].fill(1);
                        }
                        3 => {
                            let (from, to) = (
                                at(&slots, s),
                                if slots[s].moved { home(s) } else { landing(s) },
                            );
                            if !mremap_fixed(from, len, len, to, false) {
                                return 4;
                            }
                            slots[s].moved = !slots[s].moved;
                        }
                        4 => {
                            let a = at(&slots, s);
                            if !unmap(a, len)
                                || !map_fixed_anon(a, len)
                                || !register_more(ctx, a, len)
                            {
                                return 5;
                            }
                            state[pages].fill(1);
                        }
                        _ => {
                            let child = fork_child(|| {
                                if !(0..SLOTS).all(|s| check(&state, &slots, s)) {
                                    return 6;
                                }
                                fill_page(at(&slots, 0), 0xfe);
                                0
                            });
                            if child.wait(TIMEOUT).exit_status() != Some(0) {
                                return 7;
                            }
                        }
                    }
                }
                if (0..SLOTS).all(|s| check(&state, &slots, s)) {
                    0
                } else {
                    8
                }
            });
            running.push(target);
            reservations.push(res);
        }
        for (t, target) in running.into_iter().enumerate() {
            target.finish(&format!("round {round} target {t}"), TIMEOUT * 3);
        }
    }
    let s = server.stats();
    assert!(
        s.events.fork > 0 && s.events.remove > 0 && s.events.remap > 0 && s.events.unmap > 0,
        "{s:?}"
    );
    assert_eq!(s.faults.unserved, 0, "{s:?}");
    server.stop().expect("stop");
}

#[test]
fn once_populated_the_ranges_are_unregistered_and_the_process_goes_on_alone() {
    const PAGES: usize = 1024;
    let img = one_region(PAGES, 64 * 1024, 37);
    let server = server(&img, 2, FaultPolicy::Page);
    let res = Reservation::new(PAGES as u64 * P);
    let base = res.addr;
    let want = &img.bytes[0];
    let t = start_target(&server, &[Mapping::new(base, 0, PAGES as u64 * P)], |ctx| {
        // Wait until the server is gone, then read everything: no fault may
        // need it any more.
        let mut go = [0u8; 1];
        if !matches!(rustix::io::read(ctx.sock, &mut go), Ok(1)) {
            return 2;
        }
        if !mem_equals(base, want) {
            return 3;
        }
        // Unregistered: dropping a page raises no event (which nobody would
        // read now: madvise would block forever) and it reads zeros.
        if !dontneed(base, P) || !mem_is_zero(base, PAGE) {
            return 4;
        }
        0
    });
    assert!(server.wait_populated(TIMEOUT), "{:?}", server.stats());
    let faults = server.stats().faults.total;
    server.remove_space(t.space, true);
    wait_gone(&server.events(), t.space);
    server.stop().expect("stop");
    rustix::io::write(&t.sock, b"g").expect("tell the target");
    t.finish("alone", TIMEOUT);
    assert_eq!(faults, 0, "the target touched nothing before population");
}

#[test]
fn hugetlb_guest_memory_with_only_remove_events_is_served_in_huge_pages() {
    // As `lazarus serve` gets it from a VMM: the VMM's userfaultfd, with
    // only EVENT_REMOVE, over guest memory on 2 MiB hugetlbfs pages, given
    // as base address + size + offset into the image's one region.
    let Some(_huge) = support::hugepages::reserve(8) else {
        eprintln!("skipped: cannot reserve 2 MiB huge pages");
        return;
    };
    const HUGE: u64 = HUGE_PAGE_2M;
    let img = one_region(4 * HUGE as usize / PAGE, 64 * 1024, 41);
    for workers in [0, 1] {
        let server = server(&img, workers, FaultPolicy::Page);
        let res = Reservation::new(4 * HUGE);
        let base = res.addr.next_multiple_of(HUGE);
        let want = &img.bytes[0];
        // Guest memory: the image's second and third huge pages, then the
        // first (two guest regions, offsets into the file).
        let maps = [
            Mapping::new(base, HUGE, 2 * HUGE).with_page_size(HUGE),
            Mapping::new(base + 2 * HUGE, 0, HUGE).with_page_size(HUGE),
        ];
        let setup = Setup {
            features: Features::EVENT_REMOVE,
            huge: true,
        };
        let t = start_target_with(&server, &maps, setup, |_| {
            let h = HUGE as usize;
            if !mem_equals(base, &want[h..3 * h]) || !mem_equals(base + 2 * HUGE, &want[..h]) {
                return 2;
            }
            // A balloon takes a huge page back: it reads zeros afterwards.
            if !dontneed(base + HUGE, HUGE) || !mem_is_zero(base + HUGE, h) {
                return 3;
            }
            0
        });
        t.finish("hugetlb guest", TIMEOUT);
        let s = server.stats();
        assert_eq!(s.events.remove, 1, "{s:?}");
        if workers == 0 {
            assert!(s.faults.total <= 4, "one fault per huge page: {s:?}");
        }
        server.stop().expect("stop");
    }
}
