//! Captures of every kind of fixture, checked page by page against the frozen process.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};

use capture::CaptureOptions;
use fixtures::Fixture;
use fixtures::pattern::{self, PageKind, Stream};
use fixtures::procmem;
use snapshot_format::process::{FdKind, SyscallRestart};
use snapshot_format::{Image, PageSource, RegionKind};

use crate::common::{
    Frozen, PAGE, T, capture_checked, data_bytes_in, files_in, kill_options, options, region_at,
    registers, ticks_after, tracer_of, wait_blocked_in,
};
use crate::metadata::check_process;

#[test]
fn counter_is_captured_byte_for_byte_and_keeps_ticking() {
    let dir = tempfile::tempdir().unwrap();
    // stdin and stderr share one open file (as after `2>&1`).
    let null = File::open("/dev/null").unwrap();
    let mut command = Command::new(fixtures::binary("counter"));
    command
        .args(["--mib", "24", "--interval-ms", "20"])
        .stdin(Stdio::from(null.try_clone().unwrap()))
        .stderr(Stdio::from(null));
    let mut fx = Fixture::from_command("counter", command).unwrap();
    let ready = fx.wait_ready(T);
    let (buf, buf_len) = (ready.hex("buf"), ready.hex("buf_len"));
    let before = fx
        .wait_line(|l| l.is("TICK") && l.u64("n") >= 2, T)
        .u64("n");

    let c = capture_checked(fx.pid(), &options(dir.path(), "c.lzr"), Frozen::default());
    let (report, frozen, runs) = (&c.report, &c.frozen, &c.runs);
    assert_eq!(
        frozen.stages,
        ["frozen", "state", "layout", "memory", "released"]
    );
    assert_eq!(
        frozen.maps_at_freeze, frozen.maps_after_read,
        "nothing the capture injected is left in the layout"
    );

    // The buffer is one anonymous region, every page stored (the pattern has no zero
    // pages), and its bytes were checked above.
    let i = frozen.regions.iter().position(|r| r.start == buf).unwrap();
    assert_eq!(frozen.regions[i].len, buf_len);
    assert_eq!(frozen.regions[i].kind, RegionKind::Anonymous);
    assert_eq!(runs[i].data, buf_len);
    assert_eq!(report.threads, 1);
    assert_eq!(report.regions, frozen.regions.len());
    assert!(report.bytes_read >= buf_len);
    assert!(report.frozen <= report.elapsed);
    assert!(!report.killed);
    let total: u64 = frozen.regions.iter().map(|r| r.len).sum();
    assert_eq!(report.image.raw_bytes, total);
    assert_eq!(frozen.last_progress, Some((total, total)));

    let state = check_process(&c.meta, fx.pid(), &frozen.regions, &[]);
    assert_eq!(state.threads.len(), 1);
    let fd0 = state.fds.iter().find(|f| f.fd == 0).unwrap();
    let fd2 = state.fds.iter().find(|f| f.fd == 2).unwrap();
    assert_eq!(
        (fd0.kind, fd0.rdev),
        (FdKind::CharDevice, libc::makedev(1, 3))
    );
    assert_eq!(fd0.shares_with, None);
    assert_eq!(
        fd2.shares_with,
        Some(0),
        "2>&1-style sharing found with kcmp"
    );

    // Left running, untraced, and still verifying its memory on every tick.
    assert_eq!(tracer_of(fx.pid()), 0);
    ticks_after(&mut fx, None, before + 5);
    assert_eq!(
        files_in(dir.path()),
        std::slice::from_ref(&report.image.path)
    );
}

#[test]
fn every_thread_is_captured_and_keeps_ticking() {
    let dir = tempfile::tempdir().unwrap();
    let mut fx = Fixture::spawn(
        "threads",
        ["--threads", "3", "--mib", "2", "--interval-ms", "20"],
    )
    .unwrap();
    let ready = fx.wait_ready(T);
    fx.wait_line(|l| l.is("TICK") && l.u64("n") >= 2, T);
    let c = capture_checked(fx.pid(), &options(dir.path(), "t.lzr"), Frozen::default());
    let (report, frozen, meta) = (&c.report, &c.frozen, &c.meta);
    let want: Vec<u32> = (0..4)
        .map(|k| ready.u64(&format!("tid{k}")) as u32)
        .collect();
    let state = check_process(meta, fx.pid(), &frozen.regions, &want);

    let mut tids: Vec<u32> = state.threads.iter().map(|t| t.tid).collect();
    assert_eq!(report.threads, 4);
    tids.sort_unstable();
    let mut want = want;
    want.sort_unstable();
    assert_eq!(tids, want);
    let mut frozen_tids: Vec<u32> = frozen.tids.iter().map(|&t| t as u32).collect();
    frozen_tids.sort_unstable();
    assert_eq!(frozen_tids, want);
    // Each thread has its own stack and TLS.
    let mut stacks: Vec<u64> = state
        .threads
        .iter()
        .map(|t| region_at(&frozen.regions, registers(t).rsp).start)
        .collect();
    stacks.sort_unstable();
    stacks.dedup();
    assert_eq!(stacks.len(), 4);
    // Each thread's buffer is stored whole (buffers mapped one after the other may
    // share a region).
    let image = Image::open(&report.image.path).unwrap();
    for k in 0..4 {
        let (buf, len) = (ready.hex(&format!("buf{k}")), ready.hex("buf_len"));
        assert_eq!(data_bytes_in(&image, buf, len), len, "buffer of thread {k}");
    }
    assert_eq!(tracer_of(fx.pid()), 0);
    let last = fx.wait_line(|l| l.is("TICK"), T).u64("n");
    for k in 0..4 {
        ticks_after(&mut fx, Some(k), last + 2);
    }
}

#[test]
fn threads_starting_and_ending_during_captures() {
    let dir = tempfile::tempdir().unwrap();
    let mut fx = Fixture::spawn(
        "threads",
        [
            "--threads",
            "1",
            "--mib",
            "1",
            "--churn",
            "4",
            "--interval-ms",
            "20",
        ],
    )
    .unwrap();
    let ready = fx.wait_ready(T);
    // The churners start right after the first ticks.
    fx.wait_line(|l| l.is("TICK") && l.u64("thread") == 0, T);
    for round in 0..5 {
        let name = format!("churn{round}.lzr");
        let c = capture_checked(fx.pid(), &options(dir.path(), &name), Frozen::default());
        let tickers = [ready.u64("tid0") as u32, ready.u64("tid1") as u32];
        let state = check_process(&c.meta, fx.pid(), &c.frozen.regions, &tickers);
        // The two tickers and the four churners, plus any short-lived thread caught.
        assert!(state.threads.len() >= 6, "{} threads", state.threads.len());
        for k in 0..2 {
            let tid = ready.u64(&format!("tid{k}")) as u32;
            assert!(state.threads.iter().any(|t| t.tid == tid));
        }
        assert_eq!(tracer_of(fx.pid()), 0);
    }
    let last = fx.wait_line(|l| l.is("TICK"), T).u64("n");
    ticks_after(&mut fx, Some(0), last + 2);
    ticks_after(&mut fx, Some(1), last + 2);
}

#[test]
fn sparse_pages_are_classified_and_untouched_ones_never_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut fx = Fixture::spawn(
        "sparse",
        [
            "--untouched-mib",
            "64",
            "--region-mib",
            "2",
            "--data-mib",
            "4",
            "--interval-ms",
            "50",
        ],
    )
    .unwrap();
    let r = fx.wait_ready(T);
    let (untouched, untouched_len) = (r.hex("untouched"), r.hex("untouched_len"));
    let (readonly, zeroed, data) = (r.hex("readonly"), r.hex("zeroed"), r.hex("data"));
    let region_len = r.hex("readonly_len");
    let data_len = r.hex("data_len");
    let stride = r.u64("data_stride");
    let key = pattern::key(r.u64("seed"), Stream::SparseData, 0);

    let frozen = Frozen {
        // Before the test reads anything back: the capture left the untouched region
        // and the data holes unpopulated (it never read them).
        at_memory_read: Some(Box::new(move |pid| {
            let map = procmem::pagemap(pid, untouched, (untouched_len / PAGE) as usize).unwrap();
            assert!(
                map.iter().all(|e| !e.present()),
                "untouched pages were read"
            );
            let map = procmem::pagemap(pid, data, (data_len / PAGE) as usize).unwrap();
            for (i, e) in map.iter().enumerate() {
                assert_eq!(
                    e.present(),
                    (i as u64).is_multiple_of(stride),
                    "data page {i}"
                );
            }
        })),
        ..Frozen::default()
    };
    let c = capture_checked(fx.pid(), &options(dir.path(), "s.lzr"), frozen);
    let (report, frozen, runs) = (&c.report, &c.frozen, &c.runs);
    let region = |start: u64| {
        frozen
            .regions
            .iter()
            .position(|r| r.start == start)
            .unwrap()
    };

    // Never touched, read-only (the zero page) and zero-filled: all zero runs.
    for start in [untouched, readonly, zeroed] {
        let i = region(start);
        assert_eq!(frozen.regions[i].kind, RegionKind::Anonymous);
        assert_eq!(runs[i].zero, frozen.regions[i].len);
        assert_eq!(runs[i].data, 0);
    }
    // Each region is followed by its one-page PROT_NONE guard.
    for start in [untouched, readonly, zeroed, data] {
        let i = region(start);
        let guard = &frozen.regions[i + 1];
        assert_eq!(guard.start, frozen.regions[i].end());
        assert_eq!((guard.kind, guard.len), (RegionKind::Guard, PAGE));
    }
    // Data pages: exactly the written ones, with the pattern's bytes.
    let image = Image::open(&report.image.path).unwrap();
    let mut reader = image.range_reader().unwrap();
    let mut page = vec![0u8; PAGE as usize];
    let mut data_pages = 0;
    for p in 0..data_len / PAGE {
        let addr = data + p * PAGE;
        let loc = image.locate(addr).unwrap();
        if p % stride == 0 {
            let kind = pattern::mixed_kind(key, p);
            assert_ne!(kind, PageKind::Zero);
            assert!(matches!(loc.source, PageSource::Chunk { .. }), "page {p}");
            reader.read(addr, &mut page).unwrap();
            assert_eq!(page, pattern::page_bytes(kind, key, p), "data page {p}");
            data_pages += 1;
        } else {
            assert_eq!(loc.source, PageSource::Zero, "hole {p}");
        }
    }
    assert_eq!(data_pages, r.u64("data_pages"));
    assert_eq!(runs[region(data)].data, data_pages * PAGE);
    // What was read: the populated pages only — not the untouched region, not the
    // holes, and not `readonly` either: pages mapped to the shared zero page do not
    // count in smaps' Rss, so a mapping holding only those is not even scanned.
    let populated: u64 = region_len + data_pages * PAGE;
    assert!(report.bytes_read >= populated);
    assert!(
        report.bytes_read < report.image.raw_bytes - untouched_len,
        "read {} of {} bytes",
        report.bytes_read,
        report.image.raw_bytes
    );
    assert_eq!(tracer_of(fx.pid()), 0);
    ticks_after(&mut fx, None, 2);
}

#[test]
fn file_and_shared_mappings_come_from_the_right_place() {
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("files");
    std::fs::create_dir(&files).unwrap();
    let mut fx = Fixture::spawn(
        "filemap",
        ["--dir", files.to_str().unwrap(), "--interval-ms", "30"],
    )
    .unwrap();
    let r = fx.wait_ready(T);
    fx.wait_line(|l| l.is("TICK") && l.u64("n") >= 2, T);
    let seed = r.u64("seed");
    let c = capture_checked(fx.pid(), &options(dir.path(), "f.lzr"), Frozen::default());
    let (report, frozen, runs) = (&c.report, &c.frozen, &c.runs);
    let state = check_process(&c.meta, fx.pid(), &frozen.regions, &[]);
    let region = |start: u64| {
        frozen
            .regions
            .iter()
            .position(|r| r.start == start)
            .unwrap()
    };
    let image = Image::open(&report.image.path).unwrap();
    let pages = r.u64("pages");

    // Private file mapping: the written pages are data, the others come from the file.
    let private = r.hex("private");
    let i = region(private);
    let reg = &frozen.regions[i];
    assert_eq!(reg.kind, RegionKind::FilePrivate);
    let f = reg.file.as_ref().unwrap();
    assert_eq!(f.path.to_str(), Some(r.str("private_path")));
    let st = std::fs::metadata(&f.path).unwrap();
    assert_eq!(
        (f.identity.dev, f.identity.inode, f.identity.size),
        (st.dev(), st.ino(), st.size())
    );
    assert_eq!(
        (f.identity.mtime_sec, f.identity.mtime_nsec as i64),
        (st.mtime(), st.mtime_nsec())
    );
    let written_key = pattern::key(seed, Stream::PrivateWritten, 0);
    let mut reader = image.range_reader().unwrap();
    let mut page = vec![0u8; PAGE as usize];
    for p in 0..pages {
        let addr = private + p * PAGE;
        let source = image.locate(addr).unwrap().source;
        if p % 3 == 0 {
            reader.read(addr, &mut page).unwrap();
            let kind = pattern::mixed_kind(written_key, p);
            assert_eq!(page, pattern::page_bytes(kind, written_key, p), "page {p}");
        } else {
            assert!(
                matches!(source, PageSource::File { offset, .. } if offset == f.offset + p * PAGE),
                "page {p} comes from the file"
            );
        }
    }
    assert_eq!(runs[i].data, pages.div_ceil(3) * PAGE);

    // MAP_SHARED file: all of it from the file, with its identity.
    let shared = region(r.hex("shared"));
    assert_eq!(frozen.regions[shared].kind, RegionKind::FileShared);
    assert!(frozen.regions[shared].shared);
    assert_eq!(runs[shared].file, frozen.regions[shared].len);
    let sf = frozen.regions[shared].file.as_ref().unwrap();
    assert_eq!(sf.path.to_str(), Some(r.str("shared_path")));

    // memfd and shared anonymous memory: stored, with the tick counter in word 0.
    for (start, kind, stream) in [
        (r.hex("memfd"), RegionKind::Memfd, Stream::Memfd),
        (r.hex("shm"), RegionKind::Shmem, Stream::SharedAnon),
    ] {
        let i = region(start);
        assert_eq!(frozen.regions[i].kind, kind);
        assert!(frozen.regions[i].shared);
        assert_eq!(runs[i].data + runs[i].zero, frozen.regions[i].len);
        let object = frozen.regions[i].file.as_ref().expect("object identity");
        assert!(object.identity.size >= frozen.regions[i].len);
        let key = pattern::key(seed, stream, 0);
        for p in 1..pages {
            reader.read(start + p * PAGE, &mut page).unwrap();
            assert_eq!(
                page,
                pattern::page_bytes(pattern::mixed_kind(key, p), key, p)
            );
        }
    }
    // The shared file's fd: a regular file with its identity, read-write.
    let fd = state
        .fds
        .iter()
        .find(|f| f.fd == r.u64("shared_fd") as i32)
        .unwrap();
    assert_eq!(fd.kind, FdKind::Regular);
    assert_eq!(fd.path.to_str(), Some(r.str("shared_path")));
    assert_eq!(fd.flags & libc::O_ACCMODE as u32, libc::O_RDWR as u32);
    assert_eq!(fd.identity.unwrap().inode, sf.identity.inode);
    assert_eq!(tracer_of(fx.pid()), 0);
    ticks_after(&mut fx, None, 3);
}

#[test]
fn a_process_blocked_in_sleep_or_read_is_captured_inside_the_call() {
    let dir = tempfile::tempdir().unwrap();
    // clock_nanosleep: interrupted with -ERESTART_RESTARTBLOCK.
    let mut sleeper =
        Fixture::spawn("blocked", ["--mode", "sleep", "--interval-ms", "400"]).unwrap();
    sleeper.wait_ready(T);
    wait_blocked_in(sleeper.pid(), libc::SYS_clock_nanosleep);
    let c = capture_checked(
        sleeper.pid(),
        &options(dir.path(), "sleep.lzr"),
        Frozen::default(),
    );
    let state = check_process(&c.meta, sleeper.pid(), &c.frozen.regions, &[]);
    let sc = state.threads[0].syscall.expect("inside a system call");
    assert_eq!(sc.nr, libc::SYS_clock_nanosleep as u64);
    assert_eq!(sc.restart, Some(SyscallRestart::RestartBlock));
    assert_eq!(sc.rax, -516);
    // The call restarts on detach: the sleeper wakes up as usual.
    sleeper.wait_line(|l| l.is("WOKE") && l.u64("n") == 1, T);

    // read() on a FIFO: interrupted with -ERESTARTSYS.
    let fifo = dir.path().join("fifo");
    let mut reader = Fixture::spawn(
        "blocked",
        ["--mode", "fifo", "--fifo", fifo.to_str().unwrap()],
    )
    .unwrap();
    let ready = reader.wait_ready(T);
    wait_blocked_in(reader.pid(), libc::SYS_read);
    let c = capture_checked(
        reader.pid(),
        &options(dir.path(), "fifo.lzr"),
        Frozen::default(),
    );
    let state = check_process(&c.meta, reader.pid(), &c.frozen.regions, &[]);
    let t = &state.threads[0];
    let sc = t.syscall.expect("inside read");
    assert_eq!(sc.nr, libc::SYS_read as u64);
    assert_eq!(sc.restart, Some(SyscallRestart::RestartSys));
    assert_eq!(registers(t).rdi, ready.u64("fd"), "read(fd, ...)");
    let fd = state
        .fds
        .iter()
        .find(|f| f.fd == ready.u64("fd") as i32)
        .unwrap();
    assert_eq!(fd.kind, FdKind::Fifo);
    assert_eq!(fd.path, fifo);
    assert_eq!(fd.flags & libc::O_ACCMODE as u32, libc::O_RDWR as u32);
    // The read restarts on detach and gets the next line.
    let mut w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    w.write_all(b"after capture\n").unwrap();
    let got = reader.wait_tag("GOT", T);
    assert_eq!(got.rest(), "after capture");
}

#[test]
fn kill_ends_the_process_only_after_the_image_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut fx = Fixture::spawn("counter", ["--mib", "8", "--interval-ms", "20"]).unwrap();
    fx.wait_ready(T);
    fx.wait_line(|l| l.is("TICK") && l.u64("n") >= 1, T);
    let opts = CaptureOptions {
        fsync: true,
        ..kill_options(dir.path(), "k.lzr")
    };
    let c = capture_checked(fx.pid(), &opts, Frozen::default());
    let (report, frozen) = (&c.report, &c.frozen);
    assert!(report.killed);
    assert_eq!(
        frozen.stages,
        ["frozen", "state", "layout", "memory", "released"]
    );
    // Killed and reaped (tracee reaps its tracer's own child): gone from /proc, and
    // its output ended.
    assert!(!std::path::Path::new(&format!("/proc/{}", fx.pid())).exists());
    assert!(fx.try_wait_tag("NEVER", T).is_err());
    assert_eq!(
        files_in(dir.path()),
        std::slice::from_ref(&report.image.path)
    );
}

#[test]
fn prot_none_memory_with_data_is_read_through_proc_mem() {
    let dir = tempfile::tempdir().unwrap();
    let mut fx = Fixture::spawn("counter", ["--mib", "1", "--interval-ms", "20"]).unwrap();
    fx.wait_ready(T);
    let pid = fx.pid() as i32;
    // Inside the fixture: map 4 pages, fill them, make them PROT_NONE.
    let stamp: Vec<u8> = (0..4 * PAGE).map(|i| (i % 251) as u8 + 1).collect();
    let addr = {
        let mut p = tracee::SeizedProcess::seize(pid, tracee::SeizeOptions::default()).unwrap();
        let addr = p
            .remote_syscall(
                pid,
                libc::SYS_mmap as u64,
                [
                    0,
                    4 * PAGE,
                    (libc::PROT_READ | libc::PROT_WRITE) as u64,
                    (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                    u64::MAX,
                    0,
                ],
            )
            .unwrap() as u64;
        p.memory().write(addr, &stamp).unwrap();
        let r = p
            .remote_syscall(
                pid,
                libc::SYS_mprotect as u64,
                [addr, 4 * PAGE, libc::PROT_NONE as u64, 0, 0, 0],
            )
            .unwrap();
        assert_eq!(r, 0);
        p.detach().unwrap();
        addr
    };
    let c = capture_checked(fx.pid(), &options(dir.path(), "n.lzr"), Frozen::default());
    let (report, frozen) = (&c.report, &c.frozen);
    let region = region_at(&frozen.regions, addr);
    assert_eq!(region.kind, RegionKind::Anonymous);
    assert!(!region.prot.read && !region.prot.write);
    let image = Image::open(&report.image.path).unwrap();
    let mut back = vec![0u8; stamp.len()];
    image.range_reader().unwrap().read(addr, &mut back).unwrap();
    assert_eq!(back, stamp);
    ticks_after(&mut fx, None, 1);
}

#[test]
fn a_stopped_process_is_captured_and_stays_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let mut fx = Fixture::spawn("counter", ["--mib", "2", "--interval-ms", "20"]).unwrap();
    fx.wait_ready(T);
    fx.wait_line(|l| l.is("TICK"), T);
    let pid = rustix::process::Pid::from_raw(fx.pid() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
    crate::common::wait_state(fx.pid(), 'T');
    let c = capture_checked(fx.pid(), &options(dir.path(), "s.lzr"), Frozen::default());
    let state = check_process(&c.meta, fx.pid(), &c.frozen.regions, &[]);
    assert_eq!(state.job_stop_signal, Some(libc::SIGSTOP));
    // Still stopped after the capture, untraced; SIGCONT lets it tick again.
    crate::common::wait_state(fx.pid(), 'T');
    assert_eq!(tracer_of(fx.pid()), 0);
    rustix::process::kill_process(pid, rustix::process::Signal::CONT).unwrap();
    let n = fx.wait_line(|l| l.is("TICK"), T).u64("n");
    ticks_after(&mut fx, None, n + 2);
}

/// Huge pages added to the pool for a test, given back on drop (read-modify-write of
/// `vm.nr_hugepages`, so another test's reservation is not undone).
struct HugePages(u64);

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

fn nr_hugepages() -> Option<u64> {
    std::fs::read_to_string(NR_HUGEPAGES)
        .ok()?
        .trim()
        .parse()
        .ok()
}

impl HugePages {
    fn reserve(n: u64) -> Option<HugePages> {
        let now = nr_hugepages()?;
        std::fs::write(NR_HUGEPAGES, (now + n).to_string()).ok()?;
        let got = nr_hugepages()?;
        let guard = HugePages(got.saturating_sub(now));
        (guard.0 >= n).then_some(guard)
    }
}

impl Drop for HugePages {
    fn drop(&mut self) {
        if let Some(now) = nr_hugepages() {
            let _ = std::fs::write(NR_HUGEPAGES, now.saturating_sub(self.0).to_string());
        }
    }
}

#[test]
fn hugetlb_memory_is_captured() {
    // Hugetlb pages are not counted in smaps' Rss: the mapping must be scanned anyway.
    let Some(_pages) = HugePages::reserve(1) else {
        eprintln!("skipped: cannot reserve a huge page (not root?)");
        return;
    };
    let script = "
import ctypes, mmap, sys, time
m = mmap.mmap(-1, 2 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x40000)
for i in range(0, 2 << 20, 4096):
    m[i:i + 8] = (i // 4096 + 1).to_bytes(8, 'little')
addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
sys.stdout.write('READY addr=0x%x\\n' % addr)
sys.stdout.flush()
while True:
    time.sleep(1)
";
    let mut command = Command::new("python3");
    command.args(["-c", script]);
    let Ok(mut fx) = Fixture::from_command("python3", command) else {
        eprintln!("skipped: no python3");
        return;
    };
    let addr = fx.wait_ready(T).hex("addr");
    let dir = tempfile::tempdir().unwrap();
    let c = capture_checked(fx.pid(), &options(dir.path(), "h.lzr"), Frozen::default());
    let region = region_at(&c.frozen.regions, addr);
    assert_eq!(region.start, addr);
    assert_eq!(region.len, 2 << 20);
    let image = Image::open(&c.report.image.path).unwrap();
    assert_eq!(
        data_bytes_in(&image, addr, 2 << 20),
        2 << 20,
        "every page stored"
    );
    let flags = c.meta.process.as_ref().unwrap().vma_flags.iter();
    assert!(flags.filter(|f| f.start == addr).all(|f| f.has("ht")));
}
