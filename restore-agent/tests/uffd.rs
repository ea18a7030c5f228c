//! The userfaultfd layer against the real kernel: real userfaultfds, real
//! faults from other threads and other processes, byte-for-byte checks.
//!
//! Every wait is bounded (see `support`). Tests that need another process fork
//! a *target*: it creates its own userfaultfd, registers memory, sends the fd
//! over a Unix socket (as a VMM does) and then touches its memory, while the
//! test serves its faults through the received, adopted fd.

mod support;

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use restore_agent::uffd::{
    AdoptError, ContinueMode, CopyMode, Event, Features, FillError, HandshakeError, HandshakeState,
    Ioctls, MoveMode, MsgBuffer, OpenOptions, PageFault, PageFaultFlags, PoisonMode, Range,
    RegisterMode, Source, Userfaultfd, WriteProtect, ZeroPageMode, continue_range, copy, handshake,
    handshake_state, move_pages, poison, probe, register, target_alive, unregister, wake,
    writeprotect, zeropage,
};
use rustix::process::Pid;
use support::{
    Bounded, Child, Mapping, TIMEOUT, assert_no_message, fork_child, next_event, next_events, page,
    page64, pattern, recv_fd, send_fd, socket_pair, spawn_bounded, wait_pending_faults,
    wait_readable,
};

fn open(features: Features) -> Userfaultfd {
    Userfaultfd::open(&OpenOptions::new(), features).expect("open a userfaultfd")
}

fn expect_fault(event: Event) -> PageFault {
    match event {
        Event::PageFault(pf) => pf,
        other => panic!("expected a page fault, got {other:?}"),
    }
}

/// Reads `len` bytes at `off` of `map` on another thread, which may block in
/// a fault; the thread shares the mapping so it outlives any failure.
fn spawn_reader(name: &str, map: &Arc<Mapping>, off: usize, len: usize) -> Bounded<Vec<u8>> {
    let map = Arc::clone(map);
    spawn_bounded(name, move || map.read(off, len))
}

fn tid_of(pid: Pid) -> u32 {
    pid.as_raw_nonzero().get().unsigned_abs()
}

fn errno(e: &std::io::Error) -> Option<i32> {
    e.raw_os_error()
}

/// The errno of a failed call (`None` if it succeeded).
fn errno_of<T>(result: std::io::Result<T>) -> Option<i32> {
    result.err().and_then(|e| e.raw_os_error())
}

// ---------------------------------------------------------------------------
// Creation and handshake.

#[test]
fn probe_sees_every_feature_on_this_machine() {
    for source in [Source::Auto, Source::Device, Source::Syscall] {
        let support = probe(&OpenOptions::new().source(source)).expect("probe");
        assert!(
            support.features.contains(Features::all_known()),
            "{source:?}: kernel lacks {}",
            support.missing(Features::all_known())
        );
        assert!(support.require(Features::all_known()).is_ok());
        assert!(
            support
                .ioctls
                .contains(Ioctls::API | Ioctls::REGISTER | Ioctls::UNREGISTER)
        );
    }

    // The default fd is non-blocking and close-on-exec; the options are honoured.
    let fd = OpenOptions::new().create().expect("create");
    assert!(
        rustix::fs::fcntl_getfl(&fd)
            .expect("getfl")
            .contains(rustix::fs::OFlags::NONBLOCK)
    );
    assert!(
        rustix::io::fcntl_getfd(&fd)
            .expect("getfd")
            .contains(rustix::io::FdFlags::CLOEXEC)
    );
    let fd = OpenOptions::new()
        .non_blocking(false)
        .close_on_exec(false)
        .user_mode_only(true)
        .create()
        .expect("create blocking, inheritable, user-mode-only");
    assert!(
        !rustix::fs::fcntl_getfl(&fd)
            .expect("getfl")
            .contains(rustix::fs::OFlags::NONBLOCK)
    );
    assert!(
        !rustix::io::fcntl_getfd(&fd)
            .expect("getfd")
            .contains(rustix::io::FdFlags::CLOEXEC)
    );
}

#[test]
fn missing_features_are_named() {
    let unknown = Features::from_bits_retain(1 << 40);
    match Userfaultfd::open(&OpenOptions::new(), Features::THREAD_ID | unknown) {
        Err(HandshakeError::Unsupported(missing)) => {
            assert_eq!(missing.missing, unknown);
            assert!(missing.supported.contains(Features::all_known()));
            assert!(
                missing
                    .to_string()
                    .contains("not supported by this kernel: 0x10000000000")
            );
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }

    // Optional features the kernel lacks are left out; required ones are kept.
    let uffd = Userfaultfd::negotiate(
        &OpenOptions::new(),
        Features::THREAD_ID,
        unknown | Features::MOVE,
    )
    .expect("negotiate");
    assert_eq!(uffd.features(), Features::THREAD_ID | Features::MOVE);
    assert!(matches!(
        Userfaultfd::negotiate(&OpenOptions::new(), unknown, Features::empty()),
        Err(HandshakeError::Unsupported(m)) if m.missing == unknown
    ));
}

#[test]
fn handshake_happens_once_and_fdinfo_tells_its_state() {
    let fd = OpenOptions::new().create().expect("create");
    assert_eq!(
        handshake_state(fd.as_fd()).expect("state"),
        HandshakeState::NotDone
    );
    // Before the handshake nothing else works.
    let map = Mapping::anon(1);
    let err = register(fd.as_fd(), map.range(), RegisterMode::MISSING).unwrap_err();
    assert_eq!(errno(&err), Some(libc::EINVAL));

    let wanted = Features::THREAD_ID | Features::EVENT_REMOVE;
    let support = handshake(fd.as_fd(), wanted).expect("handshake");
    assert!(support.features.contains(Features::all_known()));
    assert_eq!(
        handshake_state(fd.as_fd()).expect("state"),
        HandshakeState::Done { features: wanted }
    );
    match handshake(fd.as_fd(), Features::empty()) {
        Err(HandshakeError::AlreadyDone { enabled }) => assert_eq!(enabled, wanted),
        other => panic!("expected AlreadyDone, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Faults and fills within this process.

#[test]
fn missing_fault_is_reported_and_served_by_copy() {
    let uffd = open(Features::THREAD_ID);
    let map = Mapping::anon(4);
    let ioctls = register(uffd.as_fd(), map.range(), RegisterMode::MISSING).expect("register");
    let expected = Ioctls::WAKE | Ioctls::COPY | Ioctls::ZEROPAGE | Ioctls::MOVE | Ioctls::POISON;
    assert!(ioctls.contains(expected), "range ioctls {ioctls}");
    assert!(
        !ioctls.contains(Ioctls::WRITEPROTECT),
        "WP ioctl only for WP ranges: {ioctls}"
    );

    // A read fault on page 2, from another thread.
    let target = map.page_addr(2);
    let reader = spawn_bounded("reader", move || {
        let tid = rustix::thread::gettid();
        let bytes = map.read(2 * page() + 100, page() - 100);
        (tid, bytes, map)
    });
    let mut buf = MsgBuffer::new(16);
    let pf = expect_fault(next_event(&uffd, &mut buf, "read fault on page 2"));
    assert_eq!(pf.address, target, "fault address is the page start");
    assert_eq!(
        pf.flags,
        PageFaultFlags::empty(),
        "a read fault has no flag"
    );
    let data = pattern(7, page());
    assert_eq!(
        copy(uffd.as_fd(), target, &data, CopyMode::empty()).expect("copy"),
        page64()
    );
    let (tid, bytes, mut map) = reader.join(TIMEOUT);
    assert_eq!(
        pf.thread_id,
        Some(tid_of(tid)),
        "THREAD_ID names the faulting thread"
    );
    assert_eq!(bytes, data[100..]);
    assert_no_message(&uffd, &mut buf);

    // A write fault on page 0: the WRITE flag; the write lands on the copied page.
    let target = map.page_addr(0);
    let writer = spawn_bounded("writer", move || {
        map.write(5, &[0xAB]);
        map
    });
    let pf = expect_fault(next_event(&uffd, &mut buf, "write fault on page 0"));
    assert_eq!(pf.address, target);
    assert_eq!(pf.flags, PageFaultFlags::WRITE);
    let data = pattern(9, page());
    copy(uffd.as_fd(), target, &data, CopyMode::empty()).expect("copy");
    let map = writer.join(TIMEOUT);
    let mut expected = data;
    expected[5] = 0xAB;
    assert_eq!(map.read(0, page()), expected);
    assert_eq!(map.read(2 * page(), page()), pattern(7, page()));
    unregister(uffd.as_fd(), map.range()).expect("unregister");
}

#[test]
fn zeropage_serves_zeros_and_a_second_fill_is_exists() {
    let uffd = open(Features::empty());
    let map = Arc::new(Mapping::anon(2));
    register(uffd.as_fd(), map.range(), RegisterMode::MISSING).expect("register");
    let reader = spawn_reader("reader", &map, 0, page());
    let mut buf = MsgBuffer::new(4);
    let pf = expect_fault(next_event(&uffd, &mut buf, "fault on page 0"));
    assert_eq!(pf.address, map.page_addr(0));
    let filled = zeropage(uffd.as_fd(), map.pages(0, 1), ZeroPageMode::empty()).expect("zeropage");
    assert_eq!(filled, page64());
    assert_eq!(reader.join(TIMEOUT), vec![0u8; page()]);

    // The page is present now: every fill of it is EEXIST, and changes nothing.
    assert!(matches!(
        zeropage(uffd.as_fd(), map.pages(0, 1), ZeroPageMode::empty()),
        Err(FillError::Exists)
    ));
    assert!(matches!(
        copy(
            uffd.as_fd(),
            map.page_addr(0),
            &pattern(1, page()),
            CopyMode::empty()
        ),
        Err(FillError::Exists)
    ));
    assert_eq!(map.read(0, page()), vec![0u8; page()]);
}

#[test]
fn populated_pages_never_fault_and_copy_reports_partial_progress() {
    let uffd = open(Features::empty());
    let mut map = Mapping::anon(3);
    let before = pattern(3, page());
    map.write(page(), &before); // page 1 populated before registration
    register(uffd.as_fd(), map.range(), RegisterMode::MISSING).expect("register");

    // Reading the populated page raises no fault.
    let map = Arc::new(map);
    let reader = spawn_reader("reader", &map, page(), page());
    assert_eq!(reader.join(TIMEOUT), before);
    let mut buf = MsgBuffer::new(4);
    assert_no_message(&uffd, &mut buf);

    // COPY over pages 0..2: page 0 is filled, page 1 is present, so the kernel
    // stops there and reports EAGAIN with the bytes done; the retry from there
    // says why it stopped.
    let data = pattern(4, 2 * page());
    match copy(uffd.as_fd(), map.page_addr(0), &data, CopyMode::empty()) {
        Err(FillError::Again { done }) => assert_eq!(done, page64()),
        other => panic!("expected partial progress, got {other:?}"),
    }
    match copy(
        uffd.as_fd(),
        map.page_addr(1),
        &data[page()..],
        CopyMode::empty(),
    ) {
        Err(FillError::Exists) => {}
        other => panic!("expected EEXIST, got {other:?}"),
    }
    assert_eq!(map.read(0, page()), data[..page()]);
    assert_eq!(
        map.read(page(), page()),
        before,
        "the present page is untouched"
    );
}

#[test]
fn dontwake_fills_wait_for_one_wake() {
    let uffd = open(Features::empty());
    let map = Arc::new(Mapping::anon(2));
    register(uffd.as_fd(), map.range(), RegisterMode::MISSING).expect("register");
    let readers: Vec<_> = (0..2)
        .map(|i| spawn_reader(&format!("reader-{i}"), &map, i * page(), page()))
        .collect();
    let mut buf = MsgBuffer::new(8);
    let mut faults = Vec::new();
    while faults.len() < 2 {
        faults.extend(
            next_events(&uffd, &mut buf, "two faults")
                .into_iter()
                .map(expect_fault),
        );
    }
    faults.sort_by_key(|pf| pf.address);
    assert_eq!(
        faults.iter().map(|pf| pf.address).collect::<Vec<_>>(),
        [map.page_addr(0), map.page_addr(1)]
    );

    // Fill both pages without waking, then wake the batch at once.
    for i in 0..2 {
        copy(
            uffd.as_fd(),
            map.page_addr(i),
            &pattern(i as u8, page()),
            CopyMode::DONTWAKE,
        )
        .expect("copy without wake");
    }
    wake(uffd.as_fd(), map.pages(0, 2)).expect("wake");
    for (i, reader) in readers.into_iter().enumerate() {
        assert_eq!(reader.join(TIMEOUT), pattern(i as u8, page()), "reader {i}");
    }
}

#[test]
fn a_wake_without_a_fill_faults_again_and_unregister_or_close_release_waiters() {
    let uffd = open(Features::empty());
    let map = Arc::new(Mapping::anon(2));
    register(uffd.as_fd(), map.range(), RegisterMode::MISSING).expect("register");
    let mut buf = MsgBuffer::new(4);

    let reader = spawn_reader("reader-0", &map, 0, page());
    let first = expect_fault(next_event(&uffd, &mut buf, "fault on page 0"));
    // Woken with the page still missing, the thread faults again.
    wake(uffd.as_fd(), map.pages(0, 1)).expect("wake");
    let again = expect_fault(next_event(&uffd, &mut buf, "the same fault again"));
    assert_eq!(again.address, first.address);
    // Unregistering wakes it for good: the page faults like ordinary memory.
    unregister(uffd.as_fd(), map.pages(0, 1)).expect("unregister");
    assert_eq!(reader.join(TIMEOUT), vec![0u8; page()]);

    // Closing the userfaultfd releases waiters too: unserved pages read zero.
    let reader = spawn_reader("reader-1", &map, page(), page());
    let pf = expect_fault(next_event(&uffd, &mut buf, "fault on page 1"));
    assert_eq!(pf.address, map.page_addr(1));
    drop(uffd);
    assert_eq!(reader.join(TIMEOUT), vec![0u8; page()]);
}

#[test]
fn exact_address_reports_the_faulting_byte() {
    let uffd = open(Features::EXACT_ADDRESS);
    let map = Arc::new(Mapping::anon(1));
    register(uffd.as_fd(), map.range(), RegisterMode::MISSING).expect("register");
    let reader = spawn_reader("reader", &map, 123, 1);
    let mut buf = MsgBuffer::new(4);
    let pf = expect_fault(next_event(&uffd, &mut buf, "fault"));
    assert_eq!(pf.address, map.addr() + 123);
    let data = pattern(40, page());
    copy(
        uffd.as_fd(),
        pf.address & !(page64() - 1),
        &data,
        CopyMode::empty(),
    )
    .expect("copy");
    assert_eq!(reader.join(TIMEOUT), [data[123]]);
}

#[test]
fn pending_faults_are_read_before_pending_events() {
    let uffd = open(Features::EVENT_REMOVE);
    let mut removed = Mapping::anon(1);
    let faulted = Arc::new(Mapping::anon(1));
    register(uffd.as_fd(), removed.range(), RegisterMode::MISSING).expect("register");
    register(uffd.as_fd(), faulted.range(), RegisterMode::MISSING).expect("register");
    let removed_range = removed.range();

    // First an event (REMOVE), then a fault.
    let madvise = spawn_bounded("madvise", move || {
        removed.dontneed(0, 1);
        removed
    });
    assert!(
        wait_readable(uffd.as_fd(), TIMEOUT),
        "no REMOVE event within {TIMEOUT:?}"
    );
    let reader = spawn_reader("reader", &faulted, 0, page());
    wait_pending_faults(uffd.as_fd(), 1);

    // One read returns both: the later fault first.
    let mut buf = MsgBuffer::new(4);
    let events = next_events(&uffd, &mut buf, "fault and REMOVE");
    match events.as_slice() {
        [Event::PageFault(pf), Event::Remove { start, end }] => {
            assert_eq!(pf.address, faulted.addr());
            assert_eq!(
                (*start, *end),
                (removed_range.start, removed_range.start + removed_range.len)
            );
        }
        other => panic!("expected [PageFault, Remove], got {other:?}"),
    }
    let _removed = madvise.join(TIMEOUT);
    copy(
        uffd.as_fd(),
        faulted.addr(),
        &pattern(1, page()),
        CopyMode::empty(),
    )
    .expect("copy");
    assert_eq!(reader.join(TIMEOUT), pattern(1, page()));
}

#[test]
fn a_poison_marker_blocks_zeropage_and_poison_but_copy_replaces_it() {
    // Nothing in this process touches the poisoned page (that would be SIGBUS).
    let uffd = open(Features::POISON);
    let map = Mapping::anon(2);
    register(uffd.as_fd(), map.range(), RegisterMode::MISSING).expect("register");
    let poisoned = poison(uffd.as_fd(), map.pages(0, 2), PoisonMode::empty()).expect("poison");
    assert_eq!(poisoned, 2 * page64());
    assert!(matches!(
        zeropage(uffd.as_fd(), map.pages(0, 1), ZeroPageMode::empty()),
        Err(FillError::Exists)
    ));
    assert!(matches!(
        poison(uffd.as_fd(), map.pages(0, 1), PoisonMode::empty()),
        Err(FillError::Exists)
    ));
    let data = pattern(50, page());
    copy(uffd.as_fd(), map.page_addr(1), &data, CopyMode::empty()).expect("copy over the marker");
    assert_eq!(map.read(page(), page()), data);
}

#[test]
fn move_takes_pages_from_a_buffer_of_this_process() {
    let uffd = open(Features::MOVE);
    let dst = Arc::new(Mapping::anon(3));
    register(uffd.as_fd(), dst.range(), RegisterMode::MISSING).expect("register");
    let mut src = Mapping::anon(3);
    let data = pattern(11, page());
    src.write(0, &data); // only page 0 of the source is populated

    let reader = spawn_reader("reader", &dst, 0, page());
    let mut buf = MsgBuffer::new(4);
    let pf = expect_fault(next_event(&uffd, &mut buf, "fault on dst page 0"));
    assert_eq!(pf.address, dst.page_addr(0));
    let moved = move_pages(
        uffd.as_fd(),
        pf.address,
        &mut src.as_mut_slice()[..page()],
        MoveMode::empty(),
    )
    .expect("move");
    assert_eq!(moved, page64());
    assert_eq!(reader.join(TIMEOUT), data);
    assert_eq!(
        src.read(0, page()),
        vec![0u8; page()],
        "the source page is gone"
    );

    // A hole in the source: ENOENT, unless holes are allowed.
    let hole = &mut src.as_mut_slice()[page()..2 * page()];
    assert!(matches!(
        move_pages(uffd.as_fd(), dst.page_addr(1), hole, MoveMode::empty()),
        Err(FillError::NoEntry)
    ));
    let hole = &mut src.as_mut_slice()[page()..2 * page()];
    assert_eq!(
        move_pages(
            uffd.as_fd(),
            dst.page_addr(1),
            hole,
            MoveMode::ALLOW_SRC_HOLES
        )
        .expect("move with holes allowed"),
        page64()
    );
    // A source page shared with another process (copy-on-write after fork)
    // cannot be moved: EBUSY.
    src.write(2 * page(), &data);
    let (parent_end, child_end) = socket_pair();
    let sharer = fork_child(|| {
        let mut byte = [0u8; 1];
        // Until the parent says so (it cannot close the socket on us: we hold
        // a copy of its end too).
        let _ = rustix::io::read(&child_end, &mut byte);
        0
    });
    drop(child_end);
    let shared = &mut src.as_mut_slice()[2 * page()..];
    assert!(matches!(
        move_pages(uffd.as_fd(), dst.page_addr(2), shared, MoveMode::empty()),
        Err(FillError::Busy)
    ));
    rustix::io::write(&parent_end, b"x").expect("release the sharer");
    assert_eq!(sharer.wait(TIMEOUT).exit_status(), Some(0));

    // Onto a present page: EEXIST, and the source keeps its page.
    let full = &mut src.as_mut_slice()[2 * page()..];
    assert!(matches!(
        move_pages(uffd.as_fd(), dst.page_addr(0), full, MoveMode::empty()),
        Err(FillError::Exists)
    ));
    assert_eq!(src.read(2 * page(), page()), data);
}

#[test]
fn continue_resolves_a_minor_fault_on_shmem() {
    use rustix::fs::{MemfdFlags, ftruncate, memfd_create};
    let uffd = open(Features::MINOR_SHMEM);
    let memfd = memfd_create("uffd-minor", MemfdFlags::CLOEXEC).expect("memfd");
    ftruncate(&memfd, 2 * page64()).expect("ftruncate");
    let data = pattern(21, page());
    // Page 0 goes into the page cache through the file, not the mapping.
    assert_eq!(
        rustix::io::pwrite(&memfd, &data, 0).expect("pwrite"),
        page()
    );
    let map = Arc::new(Mapping::shared(memfd.as_fd(), 2));
    let ioctls = register(uffd.as_fd(), map.range(), RegisterMode::MINOR).expect("register minor");
    assert!(ioctls.contains(Ioctls::CONTINUE), "range ioctls {ioctls}");

    let reader = spawn_reader("reader", &map, 0, page());
    let mut buf = MsgBuffer::new(4);
    let pf = expect_fault(next_event(&uffd, &mut buf, "minor fault on page 0"));
    assert_eq!(pf.address, map.page_addr(0));
    assert_eq!(pf.flags, PageFaultFlags::MINOR);
    let mapped =
        continue_range(uffd.as_fd(), map.pages(0, 1), ContinueMode::empty()).expect("continue");
    assert_eq!(mapped, page64());
    assert_eq!(reader.join(TIMEOUT), data);

    // Mapped already: EEXIST. Not in the page cache: EFAULT.
    assert!(matches!(
        continue_range(uffd.as_fd(), map.pages(0, 1), ContinueMode::empty()),
        Err(FillError::Exists)
    ));
    match continue_range(uffd.as_fd(), map.pages(1, 1), ContinueMode::empty()) {
        Err(FillError::Other(e)) => assert_eq!(errno(&e), Some(libc::EFAULT)),
        other => panic!("expected EFAULT, got {other:?}"),
    }
}

#[test]
fn writeprotect_round_trip() {
    let uffd = open(Features::PAGEFAULT_FLAG_WP);
    let mut map = Mapping::anon(2);
    let data = pattern(5, 2 * page());
    map.write(0, &data);
    let ioctls = register(uffd.as_fd(), map.range(), RegisterMode::WP).expect("register wp");
    assert!(
        ioctls.contains(Ioctls::WRITEPROTECT),
        "range ioctls {ioctls}"
    );
    writeprotect(uffd.as_fd(), map.range(), WriteProtect::Protect).expect("protect");

    // Reads of a protected page do not fault.
    let map = spawn_bounded("reader", move || {
        assert_eq!(map.read(0, 2 * page()), pattern(5, 2 * page()));
        map
    })
    .join(TIMEOUT);
    let mut buf = MsgBuffer::new(4);
    assert_no_message(&uffd, &mut buf);

    // A write does: WP | WRITE; removing the protection wakes the writer.
    let target = map.page_addr(1);
    let writer = spawn_bounded("writer", move || {
        let mut map = map;
        map.write(page() + 9, &[0xEE]);
        map
    });
    let pf = expect_fault(next_event(&uffd, &mut buf, "write-protect fault"));
    assert_eq!(pf.address, target);
    assert_eq!(pf.flags, PageFaultFlags::WP | PageFaultFlags::WRITE);
    writeprotect(
        uffd.as_fd(),
        Range::new(target, page64()),
        WriteProtect::Unprotect { wake: true },
    )
    .expect("unprotect");
    let map = writer.join(TIMEOUT);
    let mut expected = data;
    expected[page() + 9] = 0xEE;
    assert_eq!(map.read(0, 2 * page()), expected);
}

// ---------------------------------------------------------------------------
// Non-cooperative events within this process.

#[test]
fn copy_gets_eagain_while_an_event_is_pending() {
    let uffd = open(Features::EVENT_REMOVE);
    let mut map = Mapping::anon(4);
    register(uffd.as_fd(), map.range(), RegisterMode::MISSING).expect("register");
    let (start, end) = (map.page_addr(0), map.page_addr(2));
    let free_page = map.page_addr(3);

    // The madvise thread blocks until its REMOVE event is read; while it is
    // pending (the fd is readable), every fill is refused with EAGAIN.
    let madvise = spawn_bounded("madvise", move || {
        map.dontneed(0, 2);
        map
    });
    assert!(
        wait_readable(uffd.as_fd(), TIMEOUT),
        "no REMOVE event within {TIMEOUT:?}"
    );
    let data = pattern(8, page());
    assert!(matches!(
        copy(uffd.as_fd(), free_page, &data, CopyMode::empty()),
        Err(FillError::Again { done: 0 })
    ));
    assert!(matches!(
        zeropage(
            uffd.as_fd(),
            Range::new(free_page, page64()),
            ZeroPageMode::empty()
        ),
        Err(FillError::Again { done: 0 })
    ));
    let mut buf = MsgBuffer::new(4);
    match next_event(&uffd, &mut buf, "REMOVE") {
        Event::Remove { start: s, end: e } => assert_eq!((s, e), (start, end)),
        other => panic!("expected REMOVE, got {other:?}"),
    }
    // Once read and the target resumed, fills work again.
    let map = madvise.join(TIMEOUT);
    assert_eq!(
        copy(uffd.as_fd(), free_page, &data, CopyMode::empty()).expect("copy"),
        page64()
    );
    assert_eq!(map.read(3 * page(), page()), data);
}

#[test]
fn remove_event_after_madvise_dontneed_and_the_page_faults_again() {
    let uffd = open(Features::EVENT_REMOVE);
    let mut map = Mapping::anon(2);
    register(uffd.as_fd(), map.range(), RegisterMode::MISSING).expect("register");
    copy(
        uffd.as_fd(),
        map.page_addr(0),
        &pattern(2, 2 * page()),
        CopyMode::empty(),
    )
    .expect("copy");
    assert_eq!(map.read(0, page()), pattern(2, page()));
    let removed = map.pages(0, 1);

    let madvise = spawn_bounded("madvise", move || {
        map.dontneed(0, 1);
        map
    });
    let mut buf = MsgBuffer::new(4);
    match next_event(&uffd, &mut buf, "REMOVE") {
        Event::Remove { start, end } => {
            assert_eq!((start, end), (removed.start, removed.start + removed.len));
        }
        other => panic!("expected REMOVE, got {other:?}"),
    }
    let map = madvise.join(TIMEOUT);

    // The range is still registered: the dropped page faults again (the old
    // bytes are gone); the untouched page does not.
    let reader = spawn_bounded("reader", move || (map.read(0, 2 * page()), map));
    let pf = expect_fault(next_event(&uffd, &mut buf, "fault on the removed page"));
    assert_eq!(pf.address, removed.start);
    zeropage(uffd.as_fd(), removed, ZeroPageMode::empty()).expect("zeropage");
    let (bytes, _map) = reader.join(TIMEOUT);
    assert_eq!(bytes[..page()], vec![0u8; page()]);
    assert_eq!(bytes[page()..], pattern(2, 2 * page())[page()..]);
}

#[test]
fn unmap_event_after_munmap() {
    // Runs in its own process under nextest, so nothing else can map the hole
    // between the munmap and the fill below.
    let uffd = open(Features::EVENT_UNMAP);
    let map = Mapping::anon(4);
    register(uffd.as_fd(), map.range(), RegisterMode::MISSING).expect("register");
    let range = map.range();
    // munmap blocks until its UNMAP event is read.
    let munmap = spawn_bounded("munmap", move || drop(map));
    let mut buf = MsgBuffer::new(4);
    match next_event(&uffd, &mut buf, "UNMAP") {
        Event::Unmap { start, end } => {
            assert_eq!((start, end), (range.start, range.start + range.len));
        }
        other => panic!("expected UNMAP, got {other:?}"),
    }
    munmap.join(TIMEOUT);
    assert!(matches!(
        copy(
            uffd.as_fd(),
            range.start,
            &pattern(1, page()),
            CopyMode::empty()
        ),
        Err(FillError::NoEntry)
    ));
}

#[test]
fn remap_event_after_mremap_then_unmap_of_the_old_range() {
    let uffd = open(Features::EVENT_REMAP | Features::EVENT_UNMAP);
    let map = Mapping::anon(4);
    register(uffd.as_fd(), map.range(), RegisterMode::MISSING).expect("register");
    let data = pattern(6, page());
    copy(uffd.as_fd(), map.page_addr(0), &data, CopyMode::empty()).expect("copy");
    let old = map.range();
    let target = Mapping::anon(4);
    let new_start = target.addr();

    let mremap = spawn_bounded("mremap", move || map.mremap_onto(target));
    let mut buf = MsgBuffer::new(4);
    // Reading REMAP lets mremap go on to queue the UNMAP of the old range,
    // which can land in the same read (the kernel keeps filling the buffer
    // with messages already queued): take one or two reads.
    let mut events = next_events(&uffd, &mut buf, "REMAP");
    if events.len() == 1 {
        events.extend(next_events(&uffd, &mut buf, "UNMAP of the old range"));
    }
    match events.as_slice() {
        [Event::Remap { from, to, len }, Event::Unmap { start, end }] => {
            assert_eq!((*from, *to, *len), (old.start, new_start, old.len));
            assert_eq!((*start, *end), (old.start, old.start + old.len));
        }
        other => panic!("expected REMAP then UNMAP, got {other:?}"),
    }
    let map = mremap.join(TIMEOUT);
    assert_eq!(map.addr(), new_start);

    // The served page moved with the range; the registration too.
    let reader = spawn_bounded("reader", move || (map.read(0, 2 * page()), map));
    let pf = expect_fault(next_event(&uffd, &mut buf, "fault at the new address"));
    assert_eq!(pf.address, new_start + page64());
    let more = pattern(7, page());
    copy(uffd.as_fd(), pf.address, &more, CopyMode::empty()).expect("copy at the new address");
    let (bytes, map) = reader.join(TIMEOUT);
    assert_eq!(bytes[..page()], data);
    assert_eq!(bytes[page()..], more);
    // Unregister first: with EVENT_UNMAP the munmap would wait for its event.
    unregister(uffd.as_fd(), map.range()).expect("unregister");
    drop(map);
    assert_no_message(&uffd, &mut buf);
}

// ---------------------------------------------------------------------------
// Errors.

#[test]
fn bad_ranges_get_exact_errnos() {
    let uffd = open(Features::empty());
    let other = open(Features::empty());
    let map = Mapping::anon(2);
    let unregistered = Mapping::anon(1);
    let fd = uffd.as_fd();

    assert_eq!(
        errno_of(register(
            fd,
            Range::new(map.addr() + 1, page64()),
            RegisterMode::MISSING
        )),
        Some(libc::EINVAL)
    );
    assert_eq!(
        errno_of(register(
            fd,
            Range::new(map.addr(), 100),
            RegisterMode::MISSING
        )),
        Some(libc::EINVAL)
    );
    assert_eq!(
        errno_of(register(
            fd,
            Range::new(map.addr(), 0),
            RegisterMode::MISSING
        )),
        Some(libc::EINVAL)
    );
    assert_eq!(
        errno_of(register(fd, map.range(), RegisterMode::MINOR)),
        Some(libc::EINVAL),
        "MINOR on anonymous memory"
    );
    register(fd, map.range(), RegisterMode::MISSING).expect("register");
    assert_eq!(
        errno_of(register(other.as_fd(), map.range(), RegisterMode::MISSING)),
        Some(libc::EBUSY),
        "a range belongs to one userfaultfd"
    );
    assert_eq!(
        errno_of(unregister(fd, Range::new(map.addr() + 1, page64()))),
        Some(libc::EINVAL)
    );
    assert_eq!(
        errno_of(wake(fd, Range::new(map.addr(), 0))),
        Some(libc::EINVAL)
    );

    let data = pattern(0, page());
    assert!(matches!(
        copy(fd, map.addr() + 8, &data, CopyMode::empty()),
        Err(FillError::Invalid)
    ));
    assert!(matches!(
        copy(fd, map.addr(), &data[..100], CopyMode::empty()),
        Err(FillError::Invalid)
    ));
    assert!(matches!(
        copy(fd, map.addr(), &data, CopyMode::from_bits_retain(1 << 10)),
        Err(FillError::Invalid)
    ));
    assert!(matches!(
        zeropage(fd, Range::new(map.addr(), 0), ZeroPageMode::empty()),
        Err(FillError::Invalid)
    ));
    // A range this userfaultfd does not own.
    assert!(matches!(
        copy(fd, unregistered.addr(), &data, CopyMode::empty()),
        Err(FillError::NoEntry)
    ));
    assert!(matches!(
        writeprotect(fd, map.pages(0, 1), WriteProtect::Protect),
        Err(FillError::NoEntry)
    ));
    // Another kind of fd refuses userfaultfd ioctl numbers.
    let memfd =
        rustix::fs::memfd_create("not-uffd", rustix::fs::MemfdFlags::CLOEXEC).expect("memfd");
    match copy(memfd.as_fd(), map.addr(), &data, CopyMode::empty()) {
        Err(FillError::Other(e)) => assert_eq!(errno(&e), Some(libc::ENOTTY)),
        other => panic!("expected ENOTTY, got {other:?}"),
    }
    let e = std::io::Error::from(FillError::NoEntry);
    assert_eq!(errno(&e), Some(libc::ENOENT));
}

// ---------------------------------------------------------------------------
// Descriptors from elsewhere.

#[test]
fn adopt_received_descriptors() {
    let (tx, rx) = socket_pair();
    let features = Features::THREAD_ID | Features::EVENT_REMOVE;

    // Handshake done by the creator: adopted with the creator's features, and a
    // second handshake is refused with AlreadyDone.
    let creator = open(features);
    send_fd(tx.as_fd(), creator.as_fd()).expect("send");
    let received = recv_fd(rx.as_fd()).expect("recv");
    assert_eq!(
        handshake_state(received.as_fd()).expect("state"),
        HandshakeState::Done { features }
    );
    assert!(matches!(
        handshake(received.as_fd(), Features::THREAD_ID),
        Err(HandshakeError::AlreadyDone { enabled }) if enabled == features
    ));
    let adopted = Userfaultfd::adopt(received, Features::THREAD_ID).expect("adopt");
    assert_eq!(adopted.features(), features);

    // It serves faults like the original (same context).
    let map = Mapping::anon(1);
    register(adopted.as_fd(), map.range(), RegisterMode::MISSING).expect("register");
    let target = map.addr();
    let reader = spawn_bounded("reader", move || map.read(0, page()));
    let mut buf = MsgBuffer::new(4);
    let pf = expect_fault(next_event(&adopted, &mut buf, "fault via the adopted fd"));
    assert_eq!(pf.address, target);
    copy(
        adopted.as_fd(),
        target,
        &pattern(3, page()),
        CopyMode::empty(),
    )
    .expect("copy");
    assert_eq!(reader.join(TIMEOUT), pattern(3, page()));

    // A feature the creator did not enable cannot be added.
    send_fd(tx.as_fd(), creator.as_fd()).expect("send");
    let received = recv_fd(rx.as_fd()).expect("recv");
    match Userfaultfd::adopt(received, Features::EVENT_FORK) {
        Err(AdoptError::NotEnabled { missing, enabled }) => {
            assert_eq!((missing, enabled), (Features::EVENT_FORK, features));
        }
        other => panic!("expected NotEnabled, got {other:?}"),
    }

    // No handshake yet, and blocking: adopt makes it non-blocking and does it.
    let fresh = OpenOptions::new()
        .non_blocking(false)
        .create()
        .expect("create");
    send_fd(tx.as_fd(), fresh.as_fd()).expect("send");
    drop(fresh);
    let received = recv_fd(rx.as_fd()).expect("recv");
    assert_eq!(
        handshake_state(received.as_fd()).expect("state"),
        HandshakeState::NotDone
    );
    let adopted = Userfaultfd::adopt(received, Features::EVENT_UNMAP).expect("adopt fresh");
    assert_eq!(adopted.features(), Features::EVENT_UNMAP);
    assert!(
        rustix::fs::fcntl_getfl(&adopted)
            .expect("getfl")
            .contains(rustix::fs::OFlags::NONBLOCK)
    );
    assert_eq!(
        handshake_state(adopted.as_fd()).expect("state"),
        HandshakeState::Done {
            features: Features::EVENT_UNMAP
        }
    );

    // from_initialized takes the caller's word for the handshake and features.
    send_fd(tx.as_fd(), creator.as_fd()).expect("send");
    let received = recv_fd(rx.as_fd()).expect("recv");
    let trusted = Userfaultfd::from_initialized(received, features).expect("from_initialized");
    assert_eq!(trusted.features(), features);

    // Not a userfaultfd at all: refused by both, so that nothing ever reads
    // (and trusts FORK messages from) another kind of fd.
    let memfd =
        || rustix::fs::memfd_create("not-uffd", rustix::fs::MemfdFlags::CLOEXEC).expect("memfd");
    assert!(matches!(
        Userfaultfd::adopt(memfd(), Features::empty()),
        Err(AdoptError::NotUserfaultfd { .. })
    ));
    assert!(matches!(
        Userfaultfd::from_initialized(memfd(), Features::empty()),
        Err(AdoptError::NotUserfaultfd { .. })
    ));
}

// ---------------------------------------------------------------------------
// Another process: poison, fork, target exit.

/// A forked target process: it creates its own userfaultfd with `features`,
/// registers `map` (inherited, not registered in the parent), sends the fd
/// over a socket, then runs `body` and exits with its result. Returns the
/// target (killed on drop if still running), the adopted fd and the parent's
/// end of the socket.
///
/// Target exit codes: 10..=12 setup failures, then whatever `body` returns.
fn spawn_target(
    map: &Mapping,
    features: Features,
    body: impl FnOnce(&OwnedFd) -> i32,
) -> (Child, Userfaultfd, OwnedFd) {
    let (parent_end, child_end) = socket_pair();
    rustix::net::sockopt::set_socket_timeout(
        &parent_end,
        rustix::net::sockopt::Timeout::Recv,
        Some(TIMEOUT),
    )
    .expect("socket timeout");
    let range = map.range();
    let target = fork_child(|| {
        let Ok(uffd) = Userfaultfd::open(&OpenOptions::new(), features) else {
            return 10;
        };
        if register(uffd.as_fd(), range, RegisterMode::MISSING).is_err() {
            return 11;
        }
        if send_fd(child_end.as_fd(), uffd.as_fd()).is_err() {
            return 12;
        }
        body(&child_end)
    });
    drop(child_end); // so that the receive sees EOF if the target dies first
    let received = match recv_fd(parent_end.as_fd()) {
        Ok(fd) => fd,
        Err(e) => {
            let status = target.wait(TIMEOUT);
            panic!("no userfaultfd from the target ({e}); target ended with {status:?}")
        }
    };
    let uffd = Userfaultfd::adopt(received, features).expect("adopt the target's userfaultfd");
    (target, uffd, parent_end)
}

#[test]
fn poison_makes_the_faulting_access_die_with_sigbus() {
    let map = Mapping::anon(2);
    let good = pattern(12, page());
    let expected = good.clone();
    let (target, uffd, _sock) = spawn_target(&map, Features::POISON, |_| {
        if map.read_byte(0) != expected[0] || map.read_byte(page() - 1) != expected[page() - 1] {
            return 2;
        }
        map.read_byte(page() + 7); // poisoned: SIGBUS
        3
    });
    let mut buf = MsgBuffer::new(4);
    let pf = expect_fault(next_event(&uffd, &mut buf, "target fault on page 0"));
    assert_eq!(pf.address, map.page_addr(0));
    copy(uffd.as_fd(), pf.address, &good, CopyMode::empty()).expect("copy");
    let pf = expect_fault(next_event(&uffd, &mut buf, "target fault on page 1"));
    assert_eq!(pf.address, map.page_addr(1));
    let poisoned = poison(
        uffd.as_fd(),
        Range::new(pf.address, page64()),
        PoisonMode::empty(),
    )
    .expect("poison");
    assert_eq!(poisoned, page64());
    let status = target.wait(TIMEOUT);
    assert_eq!(
        status.terminating_signal(),
        Some(libc::SIGBUS),
        "target should die of SIGBUS, ended with {status:?} (exit {:?})",
        status.exit_status()
    );
}

#[test]
fn fork_event_hands_over_the_child_userfaultfd() {
    let map = Mapping::anon(3);
    let (a, b, c) = (
        pattern(30, page()),
        pattern(31, page()),
        pattern(32, page()),
    );
    let (ea, eb, ec) = (a.clone(), b.clone(), c.clone());
    let matches = |m: &Mapping, i: usize, want: &[u8]| {
        (0..page()).all(|j| m.read_byte(i * page() + j) == want[j])
    };

    // Target: reads page 0 (served), forks a child that reads page 0 (copied at
    // fork, no fault) and page 1 (served through the child's userfaultfd),
    // waits for it, then reads page 1 itself (served independently).
    let (target, uffd, sock) =
        spawn_target(&map, Features::EVENT_FORK | Features::THREAD_ID, |sock| {
            if !matches(&map, 0, &ea) {
                return 2;
            }
            let child = fork_child(|| {
                if !matches(&map, 0, &ea) {
                    return 3;
                }
                if !matches(&map, 1, &eb) {
                    return 4;
                }
                0
            });
            let raw = child.pid().as_raw_nonzero().get().to_ne_bytes();
            if rustix::io::write(sock, &raw).is_err() {
                return 5;
            }
            let status = child.wait(TIMEOUT);
            if status.exit_status() != Some(0) {
                return 20 + status.exit_status().unwrap_or(99);
            }
            if !matches(&map, 1, &ec) {
                return 7;
            }
            0
        });
    let target_tid = tid_of(target.pid());
    let mut buf = MsgBuffer::new(8);

    let pf = expect_fault(next_event(&uffd, &mut buf, "target fault on page 0"));
    assert_eq!(
        (pf.address, pf.thread_id),
        (map.page_addr(0), Some(target_tid))
    );
    copy(uffd.as_fd(), pf.address, &a, CopyMode::empty()).expect("copy page 0");

    let child_uffd = match next_event(&uffd, &mut buf, "FORK") {
        Event::Fork { uffd: fd } => Userfaultfd::from_fork(fd, &uffd),
        other => panic!("expected FORK, got {other:?}"),
    };
    assert_eq!(
        child_uffd.features(),
        Features::EVENT_FORK | Features::THREAD_ID
    );
    assert_eq!(
        handshake_state(child_uffd.as_fd()).expect("state"),
        HandshakeState::Done {
            features: child_uffd.features()
        }
    );
    let mut raw = [0u8; 4];
    rustix::io::read(&sock, &mut raw).expect("child pid from the target");
    let child_tid = i32::from_ne_bytes(raw).unsigned_abs();

    let pf = expect_fault(next_event(&child_uffd, &mut buf, "child fault on page 1"));
    assert_eq!(
        (pf.address, pf.thread_id),
        (map.page_addr(1), Some(child_tid))
    );
    copy(child_uffd.as_fd(), pf.address, &b, CopyMode::empty()).expect("copy into the child");

    let pf = expect_fault(next_event(&uffd, &mut buf, "target fault on page 1"));
    assert_eq!(
        (pf.address, pf.thread_id),
        (map.page_addr(1), Some(target_tid))
    );
    copy(uffd.as_fd(), pf.address, &c, CopyMode::empty()).expect("copy page 1");

    let status = target.wait(TIMEOUT);
    assert_eq!(
        status.exit_status(),
        Some(0),
        "target ended with {status:?}"
    );

    // Both address spaces are gone now: fills get ESRCH, REGISTER ENOMEM.
    assert_eq!(
        errno_of(register(uffd.as_fd(), map.range(), RegisterMode::MISSING)),
        Some(libc::ENOMEM)
    );
    for (who, fd) in [("target", uffd.as_fd()), ("child", child_uffd.as_fd())] {
        match copy(fd, map.page_addr(2), &a, CopyMode::empty()) {
            Err(FillError::TargetGone) => {}
            other => panic!("{who}: expected ESRCH after exit, got {other:?}"),
        }
    }
}

#[test]
fn target_alive_tells_an_exit_and_changes_nothing() {
    let map = Mapping::anon(2);
    let (target, uffd, sock) = spawn_target(&map, Features::empty(), |sock| {
        let mut go = [0u8; 1];
        let _ = rustix::io::read(sock, &mut go);
        0
    });
    assert!(target_alive(uffd.as_fd(), map.page_addr(0)).expect("probe a live target"));
    // Also away from any mapping.
    assert!(target_alive(uffd.as_fd(), 0x1_0000_0000).expect("probe"));
    // The probe installed nothing: page 0 is still missing.
    let bytes = pattern(7, page());
    assert_eq!(
        copy(uffd.as_fd(), map.page_addr(0), &bytes, CopyMode::DONTWAKE)
            .expect("page 0 still missing"),
        page64()
    );
    rustix::io::write(&sock, b"x").expect("let the target exit");
    assert_eq!(target.wait(TIMEOUT).exit_status(), Some(0));
    assert!(!target_alive(uffd.as_fd(), map.page_addr(0)).expect("probe an exited target"));
}
