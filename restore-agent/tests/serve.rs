//! `serve`: the Firecracker-compatible page-fault handler, with real
//! sockets, real userfaultfds and the `vmm` fixture (a separate process that
//! behaves like a VMM: maps guest memory, registers it, sends the handshake,
//! then reads, writes and balloons its memory from several threads and
//! checks every byte against the memory file).
//!
//! The handler runs in the test process; each test has its own socket and
//! image in a temporary directory. Every wait is bounded.

#[allow(dead_code)]
mod support;

use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use fixtures::vmm::send_with_fds;
use fixtures::{Fixture, Line};
use restore_agent::serve::{
    ConnectionEvent, ConnectionInfo, ConnectionStats, EndReason, Handler, HandlerOptions,
    HandshakeError, ProtocolError, StartError,
};
use restore_agent::{ServerOptions, WorkingSet, WorkingSetOptions};
use snapshot_format::{Image, ImageWriter, RegionInfo, WriterOptions};

/// The longest any step may take.
const T: Duration = Duration::from_secs(60);

/// A memory file, its image, and where the handler's socket goes.
struct Setup {
    dir: tempfile::TempDir,
    memfile: PathBuf,
    image_path: PathBuf,
    image: Arc<Image>,
    socket: PathBuf,
}

/// Writes a `mib` MiB memory file with the `memfile` fixture and imports it
/// as one region at address 0 (address = file offset, as `capture
/// --from-file` does).
fn setup(mib: u64, seed: u64) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let memfile = dir.path().join("guest.mem");
    let mut fx = Fixture::spawn(
        "memfile",
        [
            "--out",
            memfile.to_str().expect("utf-8 path"),
            "--mib",
            &mib.to_string(),
            "--seed",
            &seed.to_string(),
        ],
    )
    .expect("spawn memfile");
    fx.wait_ready(T);
    assert!(fx.wait_exit(T).success(), "memfile failed");
    let bytes = std::fs::read(&memfile).expect("read memory file");
    let image_path = dir.path().join("guest.lzr");
    let mut w = ImageWriter::create(&image_path, WriterOptions::default()).expect("create image");
    w.begin_region(RegionInfo::raw_file(0, bytes.len() as u64))
        .expect("region");
    for (i, block) in bytes.chunks(4 << 20).enumerate() {
        w.write_pages((i as u64) << 22, block).expect("write pages");
    }
    w.finish().expect("finish image");
    let image = Arc::new(Image::open(&image_path).expect("open image"));
    let socket = dir.path().join("handler.sock");
    Setup {
        dir,
        memfile,
        image_path,
        image,
        socket,
    }
}

fn options(workers: usize) -> HandlerOptions {
    HandlerOptions {
        server: ServerOptions {
            prefetch_workers: workers,
            liveness_interval: Duration::from_millis(20),
            ..ServerOptions::default()
        },
        handshake_timeout: Duration::from_millis(500),
        ..HandlerOptions::default()
    }
}

fn start(s: &Setup, opts: HandlerOptions) -> Handler {
    Handler::start(Arc::clone(&s.image), &s.socket, opts).expect("start the handler")
}

/// Starts the `vmm` client against the handler of `s`.
fn vmm(s: &Setup, extra: &[&str]) -> Fixture {
    let mut args = vec![
        "--socket".to_owned(),
        s.socket.to_str().expect("utf-8").to_owned(),
        "--memfile".to_owned(),
        s.memfile.to_str().expect("utf-8").to_owned(),
    ];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    Fixture::spawn("vmm", args).expect("spawn vmm")
}

/// Waits for the client's full check and its exit status 0.
fn expect_checked(fx: &mut Fixture) -> Line {
    let checked = fx.wait_tag("CHECKED", T);
    assert!(checked.has_word("ok"), "{}", checked.raw());
    assert!(fx.wait_exit(T).success(), "vmm exited with an error");
    checked
}

/// The handler's connection events; those a wait does not want are kept
/// for later waits.
struct Events {
    rx: Receiver<ConnectionEvent>,
    kept: Vec<ConnectionEvent>,
}

impl Events {
    fn new(h: &Handler) -> Self {
        Self {
            rx: h.events(),
            kept: Vec::new(),
        }
    }

    /// The first event (kept or new) that `pick` accepts, within [`T`].
    fn wait<R>(&mut self, what: &str, mut pick: impl FnMut(&ConnectionEvent) -> Option<R>) -> R {
        if let Some((i, r)) = self
            .kept
            .iter()
            .enumerate()
            .find_map(|(i, e)| pick(e).map(|r| (i, r)))
        {
            self.kept.remove(i);
            return r;
        }
        let deadline = Instant::now() + T;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(e) => match pick(&e) {
                    Some(r) => return r,
                    None => self.kept.push(e),
                },
                Err(_) => panic!("no {what} event within {T:?}; seen: {:?}", self.kept),
            }
        }
    }

    /// The start of the connection of client `pid`.
    fn serving(&mut self, pid: u32) -> ConnectionInfo {
        self.wait("Serving", |e| match e {
            ConnectionEvent::Serving(i) if i.pid == Some(pid) => Some(i.clone()),
            _ => None,
        })
    }

    /// The end of the connection of client `pid`.
    fn ended(&mut self, pid: u32) -> ConnectionStats {
        self.wait("Ended", |e| match e {
            ConnectionEvent::Ended(s) if s.info.pid == Some(pid) => Some((**s).clone()),
            _ => None,
        })
    }

    /// The next rejection.
    fn rejected(&mut self, what: &str) -> Arc<HandshakeError> {
        self.wait(what, |e| match e {
            ConnectionEvent::Rejected { error, .. } => Some(Arc::clone(error)),
            _ => None,
        })
    }
}

#[test]
fn a_vmm_with_4k_pages_gets_every_byte() {
    let s = setup(32, 7);
    let h = start(&s, options(1));
    let mut events = Events::new(&h);
    let mut fx = vmm(&s, &["--regions", "3", "--threads", "4", "--seed", "7"]);
    let ready = fx.wait_ready(T);
    assert_eq!(ready.u64("regions"), 3);
    assert_eq!(ready.u64("page_size"), 4096);
    let serving = events.serving(fx.pid());
    assert_eq!(serving.pid, Some(fx.pid()));
    assert_eq!(serving.regions.len(), 3);
    assert_eq!(serving.guest_bytes, 32 << 20);
    let early = fx.wait_line(|l| l.is("BALLOON") && l.str("phase") == "early", T);
    assert!(early.u64("pages") > 0, "the early balloon dropped nothing");
    let checked = expect_checked(&mut fx);
    assert!(checked.u64("written") > 0 && checked.u64("zero") > 0);

    let end = events.ended(fx.pid());
    assert_eq!(end.ended, Some(EndReason::Exited));
    let st = &end.stats;
    assert!(st.faults.total > 0, "{st:?}");
    assert!(st.events.remove > 0, "balloon REMOVE events: {st:?}");
    assert_eq!(st.faults.unserved, 0, "{st:?}");
    let stats = h.stats();
    assert_eq!(stats.connections.served, 1);
    assert_eq!(stats.connections.live, 0);
    assert_eq!(stats.ended.len(), 1);
    // Its working set was saved beside the image, for this image.
    let ws = WorkingSet::load(&WorkingSet::default_path(&s.image_path), &s.image)
        .expect("working set saved beside the image");
    assert!(!ws.chunks().is_empty());
    let final_stats = h.shutdown().expect("shutdown");
    assert!(!s.socket.exists(), "socket unlinked");
    assert_eq!(final_stats.server.faults.unserved, 0);
}

#[test]
fn several_vmms_at_once_each_served_independently() {
    let s = setup(24, 3);
    let h = start(&s, options(2));
    let mut events = Events::new(&h);
    let mut clients: Vec<Fixture> = [
        &["--regions", "1", "--seed", "1"][..],
        &["--regions", "2", "--seed", "2", "--handshake", "legacy"],
        &[
            "--regions",
            "4",
            "--seed",
            "3",
            "--handshake",
            "kib",
            "--threads",
            "3",
        ],
        &["--regions", "1", "--seed", "4", "--balloon-every", "3"],
    ]
    .iter()
    .map(|a| vmm(&s, a))
    .collect();
    for fx in &mut clients {
        fx.wait_ready(T);
    }
    let mut pids = Vec::new();
    for fx in &mut clients {
        expect_checked(fx);
        pids.push(fx.pid());
    }
    for pid in pids {
        let end = events.ended(pid);
        assert_eq!(end.ended, Some(EndReason::Exited));
        assert_eq!(end.stats.faults.unserved, 0);
    }
    let stats = h.shutdown().expect("shutdown");
    assert_eq!(stats.connections.served, 4);
    assert_eq!(stats.connections.rejected, 0);
}

#[test]
fn legacy_handshakes_default_to_4k_pages() {
    let s = setup(8, 11);
    let h = start(&s, options(0));
    let mut events = Events::new(&h);
    for style in ["legacy", "kib"] {
        let mut fx = vmm(&s, &["--handshake", style, "--threads", "2"]);
        assert_eq!(fx.wait_ready(T).str("handshake"), style);
        let info = events.serving(fx.pid());
        assert!(info.regions.iter().all(|r| r.page_size == 4096));
        expect_checked(&mut fx);
        events.ended(fx.pid());
    }
}

/// A raw client connection to the handler.
fn connect(s: &Setup) -> UnixStream {
    let c = UnixStream::connect(&s.socket).expect("connect");
    c.set_read_timeout(Some(T)).expect("read timeout");
    c
}

/// The handler closed `c`: a read gets end of file.
fn assert_closed(c: &mut UnixStream, what: &str) {
    let mut b = [0u8; 16];
    match c.read(&mut b) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("{what}: the connection was not closed: {other:?}"),
    }
}

#[test]
fn malformed_handshakes_are_refused_while_a_vmm_is_served() {
    let s = setup(16, 5);
    let h = start(&s, options(1));
    let mut events = Events::new(&h);
    // A VMM being served the whole time.
    let mut held = vmm(&s, &["--hold", "--seed", "5"]);
    held.wait_ready(T);
    events.serving(held.pid());
    held.wait_tag("CHECKED", T);

    let uffd =
        fixtures::sys::userfaultfd(fixtures::sys::UFFD_FEATURE_EVENT_REMOVE).expect("userfaultfd");
    let devnull = std::fs::File::open("/dev/null").expect("/dev/null");
    let region = |base: u64, size: u64, offset: u64| {
        format!(
            r#"{{"base_host_virt_addr":{base},"size":{size},"offset":{offset},"page_size":4096,"page_size_kib":4096}}"#
        )
    };
    let mib16 = 16u64 << 20;
    let ok = format!("[{}]", region(0x7000_0000_0000, mib16, 0));
    let cases: Vec<(&str, Vec<u8>, Vec<std::os::fd::BorrowedFd<'_>>)> = vec![
        ("not JSON", b"hello, handler".to_vec(), vec![uffd.as_fd()]),
        (
            "not an array",
            br#"{"base_host_virt_addr":0}"#.to_vec(),
            vec![uffd.as_fd()],
        ),
        (
            "bad fields",
            br#"[{"size":4096}]"#.to_vec(),
            vec![uffd.as_fd()],
        ),
        ("no fd", ok.clone().into_bytes(), vec![]),
        (
            "two fds",
            ok.clone().into_bytes(),
            vec![uffd.as_fd(), devnull.as_fd()],
        ),
        (
            "not a userfaultfd",
            ok.clone().into_bytes(),
            vec![devnull.as_fd()],
        ),
        (
            "outside the image",
            format!("[{}]", region(0x7000_0000_0000, mib16, 4096)).into_bytes(),
            vec![uffd.as_fd()],
        ),
        (
            "overlapping regions",
            format!(
                "[{},{}]",
                region(0x7000_0000_0000, 1 << 20, 0),
                region(0x7000_0008_0000, 1 << 20, 2 << 20)
            )
            .into_bytes(),
            vec![uffd.as_fd()],
        ),
        (
            "truncated then silent",
            ok.as_bytes()[..40].to_vec(),
            vec![uffd.as_fd()],
        ),
        (
            "oversized",
            {
                let mut v = b"[".to_vec();
                v.resize(
                    restore_agent::serve::protocol::MAX_HANDSHAKE_BYTES + 10,
                    b' ',
                );
                v
            },
            vec![uffd.as_fd()],
        ),
    ];
    for (what, bytes, fds) in &cases {
        let mut c = connect(&s);
        // A large message may not fit the socket buffer at once: send the
        // rest from a thread while the handler reads (and refuses) it.
        let first = bytes.len().min(64 * 1024);
        send_with_fds(&c, &bytes[..first], fds).unwrap_or_else(|e| panic!("{what}: send: {e}"));
        let rest = bytes[first..].to_vec();
        let mut writer = c.try_clone().expect("clone");
        let sender = std::thread::spawn(move || {
            let _ = std::io::Write::write_all(&mut writer, &rest);
        });
        let error = events.rejected(what);
        let matches = match *what {
            "not JSON" | "not an array" => matches!(
                *error,
                HandshakeError::Protocol(ProtocolError::NotAnArray { .. })
            ),
            "bad fields" => matches!(*error, HandshakeError::Protocol(ProtocolError::Json(_))),
            "no fd" => matches!(*error, HandshakeError::NoFd),
            "two fds" => matches!(*error, HandshakeError::TooManyFds { count: 2 }),
            "not a userfaultfd" => matches!(*error, HandshakeError::Userfaultfd(_)),
            "outside the image" => matches!(*error, HandshakeError::Regions(_)),
            "overlapping regions" => matches!(
                *error,
                HandshakeError::Protocol(ProtocolError::Overlap { .. })
            ),
            "truncated then silent" => matches!(*error, HandshakeError::TimedOut { .. }),
            "oversized" => matches!(
                *error,
                HandshakeError::Protocol(ProtocolError::TooLarge { .. })
            ),
            _ => unreachable!(),
        };
        assert!(matches, "{what}: unexpected rejection {error:?}");
        assert_closed(&mut c, what);
        drop(c);
        sender.join().expect("sender");
    }
    // A client that connects and closes at once.
    drop(connect(&s));
    let error = events.rejected("Rejected (closed)");
    assert!(
        matches!(*error, HandshakeError::Closed { received: 0 }),
        "{error:?}"
    );

    // The held VMM is still served, and a new one is served in full.
    assert_eq!(h.connections().len(), 1, "the held VMM is live");
    let mut fresh = vmm(&s, &["--seed", "6", "--regions", "2"]);
    expect_checked(&mut fresh);
    let stats = h.stats();
    assert_eq!(stats.connections.rejected, cases.len() as u64 + 1);
    assert_eq!(stats.connections.served, 2);
    assert!(
        events
            .kept
            .iter()
            .all(|e| !matches!(e, ConnectionEvent::Rejected { .. })),
        "unexpected rejections: {:?}",
        events.kept
    );
    held.kill().expect("kill the held VMM");
    let end = events.ended(held.pid());
    assert_eq!(end.ended, Some(EndReason::Exited));
}

#[test]
fn vmms_that_exit_mid_population_leave_the_others_served() {
    let s = setup(48, 9);
    let h = start(&s, options(1));
    let mut events = Events::new(&h);
    let mut steady = vmm(&s, &["--seed", "9", "--threads", "2"]);
    steady.wait_ready(T);
    for round in 0..3 {
        // Killed right after its handshake: population (prefetch, faults)
        // is under way.
        let mut quitter = vmm(&s, &["--hold", "--seed", &round.to_string()]);
        quitter.wait_ready(T);
        if round == 1 {
            // ... or once its threads are faulting.
            quitter.wait_tag("FIRST", T);
        }
        quitter.kill().expect("kill");
        let end = events.ended(quitter.pid());
        assert_eq!(end.ended, Some(EndReason::Exited), "round {round}");
    }
    expect_checked(&mut steady);
    let end = events.ended(steady.pid());
    assert_eq!(end.stats.faults.unserved, 0);
    assert_eq!(h.stats().connections.live, 0);
}

#[test]
fn the_socket_is_0600_and_a_second_handler_is_refused() {
    let s = setup(4, 1);
    let h = start(&s, options(0));
    let mode = std::fs::metadata(&s.socket)
        .expect("stat socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    match Handler::start(Arc::clone(&s.image), &s.socket, options(0)) {
        Err(StartError::Bind(restore_agent::serve::BindError::InUse { .. })) => {}
        other => panic!("a second handler on a live socket: {other:?}"),
    }
    drop(h);
    assert!(!s.socket.exists(), "unlinked when the handler stops");
    // A stale socket (its handler died) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&s.socket).expect("stale socket"));
    let h = start(&s, options(0));
    let mut fx = vmm(&s, &["--threads", "1"]);
    expect_checked(&mut fx);
    drop(h);
    // Something that is not a socket is left alone.
    std::fs::write(&s.socket, b"keep me").expect("write");
    assert!(matches!(
        Handler::start(Arc::clone(&s.image), &s.socket, options(0)),
        Err(StartError::Bind(
            restore_agent::serve::BindError::NotASocket { .. }
        ))
    ));
    assert_eq!(std::fs::read(&s.socket).expect("read"), b"keep me");
}

#[test]
fn working_sets_load_on_the_next_start() {
    let s = setup(8, 2);
    let ws_path = s.dir.path().join("guest.ws");
    let opts = || HandlerOptions {
        working_set: WorkingSetOptions {
            path: Some(ws_path.clone()),
            load: true,
            save: true,
        },
        ..options(0)
    };
    let h = start(&s, opts());
    let mut events = Events::new(&h);
    let mut fx = vmm(&s, &["--threads", "1"]);
    expect_checked(&mut fx);
    let end = events.ended(fx.pid());
    assert!(end.stats.working_set_recorded > 0);
    drop(h);
    let saved = WorkingSet::load(&ws_path, &s.image).expect("saved");
    assert_eq!(saved.chunks().len(), end.stats.working_set_recorded);
    let h = start(&s, opts());
    assert_eq!(h.stats().server.working_set.loaded, saved.chunks().len());
    drop(h);
}

#[test]
fn hugetlbfs_guest_memory_is_served_in_whole_2m_pages() {
    const MIB: u64 = 32;
    let s = setup(MIB, 4);
    // The client maps MIB MiB of huge pages at a time (plus slack).
    let Some(_reservation) = support::hugepages::reserve(MIB / 2 + 2) else {
        eprintln!("SKIPPED: cannot reserve 2 MiB huge pages (not root, or no memory)");
        return;
    };
    let Some(mount) = fixtures::mount::TempMount::new("hugetlbfs", "pagesize=2M,mode=0700") else {
        eprintln!("SKIPPED: cannot mount hugetlbfs");
        return;
    };
    let h = start(&s, options(1));
    let mut events = Events::new(&h);
    let dir = mount.path().to_str().expect("utf-8").to_owned();
    for backing in ["anon", dir.as_str()] {
        let mut fx = vmm(
            &s,
            &[
                "--huge-pages",
                backing,
                "--regions",
                "2",
                "--balloon-every",
                "5",
                "--seed",
                "4",
            ],
        );
        let ready = fx.wait_ready(T);
        assert_eq!(ready.u64("page_size"), 2 << 20, "{backing}");
        let info = events.serving(fx.pid());
        assert!(info.regions.iter().all(|r| r.page_size == 2 << 20));
        for phase in ["early", "late"] {
            let b = fx.wait_line(|l| l.is("BALLOON") && l.str("phase") == phase, T);
            assert!(b.u64("windows") > 0, "{backing}: no {phase} balloon window");
        }
        expect_checked(&mut fx);
        let end = events.ended(fx.pid());
        assert_eq!(end.stats.faults.unserved, 0, "{backing}");
        assert!(end.stats.events.remove > 0, "{backing}");
        // Zero huge pages are copies of zeros (no ZEROPAGE for hugetlbfs).
        assert_eq!(end.stats.bytes.zeroed % (2 << 20), 0, "{backing}");
    }
}

/// Concurrent clients of the soak.
const SOAK_CLIENTS: usize = 8;
/// How long the soak runs: [`SOAK_SHORT`] in the normal suite, [`SOAK_FULL`] with
/// `LAZARUS_SOAK=1`.
const SOAK_SHORT: Duration = Duration::from_secs(15);
/// See [`SOAK_SHORT`].
const SOAK_FULL: Duration = Duration::from_secs(300);
/// One client in this many is killed mid-population instead of running to its end.
const SOAK_QUIT_ONE_IN: u64 = 5;

/// How a soak client ended.
enum Outcome {
    /// Every byte checked, exit status 0.
    Checked(u32),
    /// Killed after its first fault was served.
    Killed(u32),
}

/// Samples this process's fds and threads until they equal `want`; panics after [`T`].
fn settle(want: (usize, usize)) {
    let deadline = Instant::now() + T;
    loop {
        let now = (support::image::open_fds(), support::image::threads());
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "fds/threads {now:?}, expected {want:?} after every connection ended"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn soak_eight_vmms_at_a_time_with_random_access_and_balloons() {
    let full = std::env::var_os("LAZARUS_SOAK").is_some_and(|v| v == "1");
    let length = if full { SOAK_FULL } else { SOAK_SHORT };
    let s = setup(16, 21);
    let h = start(&s, options(1));
    let events = h.events();
    let before = (support::image::open_fds(), support::image::threads());
    let (tx, rx) = crossbeam_channel::unbounded();
    let deadline = Instant::now() + length;
    let started = Instant::now();
    // Each worker thread keeps one client running until the deadline: a client maps
    // 16 MiB of guest memory, balloons windows before and after 2 threads visit every
    // page in random orders, and checks every byte; one in five is killed as soon as
    // its first fault was served (a disconnect mid-population).
    let workers: Vec<_> = (0..SOAK_CLIENTS as u64)
        .map(|w| {
            let (socket, memfile, tx) = (s.socket.clone(), s.memfile.clone(), tx.clone());
            std::thread::spawn(move || {
                let mut round = 0u64;
                while Instant::now() < deadline {
                    let seed = w * 1_000_000 + round;
                    let quit = round % SOAK_QUIT_ONE_IN == w % SOAK_QUIT_ONE_IN;
                    let mut args = vec![
                        "--socket".to_owned(),
                        socket.to_str().expect("utf-8").to_owned(),
                        "--memfile".to_owned(),
                        memfile.to_str().expect("utf-8").to_owned(),
                        "--threads".to_owned(),
                        "2".to_owned(),
                        "--balloon-every".to_owned(),
                        "4".to_owned(),
                        "--seed".to_owned(),
                        seed.to_string(),
                    ];
                    if quit {
                        args.push("--hold".to_owned());
                    }
                    let mut fx = Fixture::spawn("vmm", args).expect("spawn vmm");
                    if quit {
                        fx.wait_tag("FIRST", T);
                        fx.kill().expect("kill the VMM");
                        tx.send(Outcome::Killed(fx.pid())).expect("report");
                    } else {
                        expect_checked(&mut fx);
                        tx.send(Outcome::Checked(fx.pid())).expect("report");
                    }
                    round += 1;
                }
            })
        })
        .collect();
    drop(tx);
    // Meanwhile, every connection's end: none left a fault unserved.
    let mut ended = std::collections::HashMap::new();
    let mut outcomes = Vec::new();
    let mut workers_done = false;
    while !workers_done || ended.len() < outcomes.len() {
        assert!(
            Instant::now() < deadline + T,
            "{} clients ended, {} connections ended",
            outcomes.len(),
            ended.len()
        );
        match rx.recv_timeout(Duration::from_millis(10)) {
            Ok(o) => outcomes.push(o),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => workers_done = true,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
        }
        while let Ok(e) = events.try_recv() {
            if let ConnectionEvent::Ended(st) = e {
                assert_eq!(st.ended, Some(EndReason::Exited), "{st:?}");
                assert_eq!(st.stats.faults.unserved, 0, "{st:?}");
                ended.insert(st.info.pid.expect("a local client's pid"), st.stats.clone());
            }
        }
    }
    for w in workers {
        w.join().expect("a soak client failed (see above)");
    }
    let (mut checked, mut killed, mut faults, mut removes) = (0, 0, 0, 0);
    for o in &outcomes {
        let pid = match o {
            Outcome::Checked(pid) => {
                checked += 1;
                pid
            }
            Outcome::Killed(pid) => {
                killed += 1;
                pid
            }
        };
        let st = &ended[pid];
        faults += st.faults.total;
        removes += st.events.remove;
    }
    let stats = h.stats();
    assert_eq!(stats.connections.served, outcomes.len() as u64);
    assert_eq!(stats.connections.rejected, 0);
    assert_eq!(stats.connections.live, 0);
    assert_eq!(stats.connections.events_dropped, 0);
    assert!(removes > 0, "no balloon event reached the handler");
    // Every connection's resources (its userfaultfd, its space's threads) are gone.
    settle(before);
    eprintln!(
        "serve soak: {} clients ({checked} checked to the last byte, {killed} killed \
         mid-population), {SOAK_CLIENTS} at a time for {:.0} s: {faults} faults, {removes} \
         REMOVE events",
        outcomes.len(),
        started.elapsed().as_secs_f64()
    );
    h.shutdown().expect("shutdown");
}
