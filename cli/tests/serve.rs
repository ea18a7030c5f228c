//! `lazarus serve` end to end: a memory file imported with `capture
//! --from-file`, served on a socket to `vmm` fixture processes, with the
//! signals an operator sends (SIGUSR1 for statistics, SIGTERM to stop).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use fixtures::{Fixture, Line, LogTail};

const T: Duration = Duration::from_secs(60);

/// Writes a memory file with the `memfile` fixture and imports it.
fn image(dir: &Path, mib: u64) -> (std::path::PathBuf, std::path::PathBuf) {
    let mem = dir.join("guest.mem");
    let mut fx = Fixture::spawn(
        "memfile",
        [
            "--out",
            mem.to_str().expect("utf-8"),
            "--mib",
            &mib.to_string(),
        ],
    )
    .expect("spawn memfile");
    fx.wait_ready(T);
    assert!(fx.wait_exit(T).success());
    let img = dir.join("guest.lzr");
    common::ok(&[&"capture", &"--from-file", &mem, &"-o", &img]);
    (mem, img)
}

/// Starts `lazarus serve`, stdout read line by line, stderr (the log) into
/// `log`.
fn serve(args: &[&dyn AsRef<std::ffi::OsStr>], log: &Path) -> Fixture {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lazarus"));
    cmd.arg("serve")
        .args(args.iter().map(|a| a.as_ref()))
        .stderr(Stdio::from(std::fs::File::create(log).expect("log file")));
    Fixture::from_command("lazarus serve", cmd).expect("spawn lazarus serve")
}

fn signal(pid: u32, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("pid");
    rustix::process::kill_process(pid, sig).expect("kill");
}

/// A statistics line on stdout.
fn stats_line(serve: &mut Fixture) -> serde_json::Value {
    let line = serve.wait_line(|l: &Line| l.raw().starts_with('{'), T);
    serde_json::from_str(line.raw()).expect("statistics are JSON")
}

#[test]
fn serve_logs_connections_reports_on_sigusr1_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mem, img) = image(dir.path(), 16);
    let socket = dir.path().join("h.sock");
    let log = dir.path().join("serve.log");
    let stats_file = dir.path().join("stats.json");
    let mut srv = serve(
        &[
            &"--image",
            &img,
            &"--socket",
            &socket,
            &"--prefetch-workers",
            &"2",
            &"--fault-policy",
            &"chunk",
            &"--stats-json",
            &stats_file,
        ],
        &log,
    );
    let mut tail = LogTail::new(&log).watch_pid(srv.pid());
    tail.wait_line(|l| l.raw().contains("listening on"), T);
    let mode = std::fs::metadata(&socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode");

    // A VMM, served to the end.
    let vmm_args = |extra: &[&str]| {
        let mut v = vec![
            "--socket".to_owned(),
            socket.to_str().expect("utf-8").to_owned(),
            "--memfile".to_owned(),
            mem.to_str().expect("utf-8").to_owned(),
        ];
        v.extend(extra.iter().map(|s| (*s).to_owned()));
        v
    };
    let mut vmm = Fixture::spawn("vmm", vmm_args(&["--regions", "2"])).expect("spawn vmm");
    let checked = vmm.wait_tag("CHECKED", T);
    assert!(checked.has_word("ok"));
    assert!(vmm.wait_exit(T).success());
    let pid = vmm.pid();
    tail.wait_line(
        |l| {
            l.raw()
                .contains(&format!("conn 1 (pid {pid}): serving 2 regions"))
        },
        T,
    );
    tail.wait_line(
        |l| {
            l.raw()
                .contains(&format!("conn 1 (pid {pid}) ended (the VMM exited)"))
        },
        T,
    );

    // A malformed handshake: one log line, the connection closed.
    let mut bad = UnixStream::connect(&socket).expect("connect");
    std::io::Write::write_all(&mut bad, b"[{\"size\":1}]").expect("send");
    tail.wait_line(
        |l| l.raw().contains("conn 2") && l.raw().contains("handshake rejected"),
        T,
    );
    bad.set_read_timeout(Some(T)).expect("timeout");
    assert_eq!(
        std::io::Read::read(&mut bad, &mut [0u8; 8]).expect("eof"),
        0
    );

    // SIGUSR1: every statistic, on stdout and in the file.
    signal(srv.pid(), rustix::process::Signal::USR1);
    let stats = stats_line(&mut srv);
    assert_eq!(stats["connections"]["served"], 1);
    assert_eq!(stats["connections"]["rejected"], 1);
    assert_eq!(stats["ended"][0]["pid"], pid);
    assert!(stats["ended"][0]["stats"]["faults"]["total"].as_u64() > Some(0));
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&stats_file).expect("stats file")).expect("JSON");
    assert_eq!(file["connections"]["served"], 1);

    // A VMM still running when SIGTERM comes.
    let mut held = Fixture::spawn("vmm", vmm_args(&["--hold"])).expect("spawn vmm");
    held.wait_tag("CHECKED", T);
    signal(srv.pid(), rustix::process::Signal::TERM);
    let stats = stats_line(&mut srv);
    assert_eq!(stats["connections"]["served"], 2);
    assert_eq!(stats["ended"][1]["ended"], "shutdown");
    assert!(srv.wait_exit(T).success(), "lazarus serve exit status");
    assert!(!socket.exists(), "socket unlinked on SIGTERM");
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains("stopping with 1 live VMM"), "{text}");
    assert!(
        text.contains("stopped: 2 connections served, 1 rejected"),
        "{text}"
    );
    held.kill().expect("kill the held VMM");
}

#[test]
fn serve_refuses_a_socket_another_handler_listens_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_mem, img) = image(dir.path(), 1);
    let socket = dir.path().join("h.sock");
    let log = dir.path().join("first.log");
    let mut first = serve(&[&"--image", &img, &"--socket", &socket], &log);
    LogTail::new(&log)
        .watch_pid(first.pid())
        .wait_line(|l| l.raw().contains("listening on"), T);
    let out = common::lazarus(&[&"serve", &"--image", &img, &"--socket", &socket]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another handler is listening"), "{err}");
    signal(first.pid(), rustix::process::Signal::INT);
    assert!(first.wait_exit(T).success());
    assert!(!socket.exists());
}

#[test]
fn serve_refuses_an_image_whose_parent_is_missing_or_changed_before_listening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mem, base) = image(dir.path(), 4);
    // A child image: a few pages changed, the rest in the parent.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&mem)
        .expect("open the memory file");
    std::os::unix::fs::FileExt::write_all_at(&f, b"changed", 1 << 20).expect("write");
    drop(f);
    let child = dir.path().join("child.lzr");
    common::ok(&[
        &"capture",
        &"--from-file",
        &mem,
        &"-o",
        &child,
        &"--parent",
        &base,
    ]);
    let socket = dir.path().join("h.sock");
    let refused = |case: &str| -> String {
        let log = dir.path().join(format!("{case}.log"));
        let mut srv = serve(&[&"--image", &child, &"--socket", &socket], &log);
        let status = srv.wait_exit(T);
        let err = std::fs::read_to_string(&log).expect("log");
        assert_eq!(status.code(), Some(1), "{case}: {err}");
        assert!(!socket.exists(), "{case}: a socket was created");
        err
    };
    // Missing.
    let kept = dir.path().join("base.kept");
    std::fs::rename(&base, &kept).expect("move the parent away");
    let err = refused("missing");
    assert!(
        err.contains("parent") && err.contains("guest.lzr"),
        "missing: {err}"
    );
    // Another image under the parent's name (another id).
    std::fs::write(&mem, b"another memory file").expect("write");
    common::ok(&[&"capture", &"--from-file", &mem, &"-o", &base]);
    let err = refused("changed");
    assert!(
        err.contains("parent") && err.contains("guest.lzr"),
        "changed: {err}"
    );
    // The parent back in place: served.
    std::fs::rename(&kept, &base).expect("put the parent back");
    let log = dir.path().join("ok.log");
    let mut srv = serve(&[&"--image", &child, &"--socket", &socket], &log);
    LogTail::new(&log)
        .watch_pid(srv.pid())
        .wait_line(|l| l.raw().contains("listening on"), T);
    signal(srv.pid(), rustix::process::Signal::TERM);
    assert!(srv.wait_exit(T).success());
}
