//! End-to-end tests of `lazarus capture --pid` against fixture processes.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{lazarus, ok};
use fixtures::Fixture;

const T: Duration = Duration::from_secs(30);

fn tracer_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn capture_pid_leaves_the_process_running_or_kills_it() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("c.lzr");
    let mut fx = Fixture::spawn("counter", ["--mib", "8", "--interval-ms", "20"]).unwrap();
    fx.wait_ready(T);
    let n = fx.wait_line(|l| l.is("TICK"), T).u64("n");
    let pid = fx.pid().to_string();

    let line = ok(&[&"capture", &"--pid", &pid, &"-o", &img, &"--workers", &"2"]);
    assert_eq!(line.lines().count(), 1, "{line}");
    for part in [
        &format!("captured pid {pid} (1 threads"),
        "ratio",
        "GB/s",
        "frozen",
        "left running",
    ] {
        assert!(line.contains(part), "{part:?} missing from {line:?}");
    }
    assert_eq!(tracer_of(fx.pid()), "0");
    fx.wait_line(|l| l.is("TICK") && l.u64("n") > n + 3, T);
    ok(&[&"verify", &img]);
    let text = ok(&[&"inspect", &img]);
    assert!(text.contains("process    1 threads"), "{text}");
    let inspect: serde_json::Value =
        serde_json::from_str(&ok(&[&"inspect", &img, &"--json"])).unwrap();
    let process = &inspect["metadata"]["process"];
    assert_eq!(process["threads"][0]["tid"], fx.pid());
    assert_eq!(process["signal_actions"].as_array().unwrap().len(), 64);

    // --kill --json: one JSON object, and the process is gone.
    let img2 = dir.path().join("k.lzr");
    let json: serde_json::Value = serde_json::from_str(&ok(&[
        &"capture", &"--pid", &pid, &"-o", &img2, &"--kill", &"--json", &"--level", &"3",
    ]))
    .unwrap();
    assert_eq!(json["pid"], fx.pid());
    assert_eq!(json["killed"], true);
    assert_eq!(json["threads"], 1);
    assert!(json["frozen_seconds"].as_f64().unwrap() > 0.0);
    assert!(json["file_len"].as_u64().unwrap() > 0);
    assert_eq!(json["path"], img2.to_string_lossy().as_ref());
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(fx.wait_exit(T).signal(), Some(9));
    ok(&[&"verify", &img2]);
}

#[test]
fn capture_pid_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("x.lzr");
    // A pid above pid_max exists nowhere.
    let out = lazarus(&[&"capture", &"--pid", &"2147483647", &"-o", &img]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no such process"), "{err}");
    // Sources are exclusive; --kill needs --pid; --region needs --from-file.
    for args in [
        vec!["capture", "--pid", "1", "--from-file", "/dev/null", "-o"],
        vec!["capture", "--from-file", "/dev/null", "--kill", "-o"],
        vec!["capture", "--pid", "1", "--region", "0:4K", "-o"],
    ] {
        let mut a: Vec<&dyn AsRef<std::ffi::OsStr>> = args
            .iter()
            .map(|s| s as &dyn AsRef<std::ffi::OsStr>)
            .collect();
        a.push(&img);
        assert_eq!(lazarus(&a).status.code(), Some(2), "{args:?}");
    }
    let out = lazarus(&[&"capture", &"--pid", &"1", &"--parent", &img, &"-o", &img]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--parent is not supported"));
    assert!(!Path::new(&img).exists());
}

#[test]
fn an_unprivileged_user_may_not_capture_roots_process() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root (to run a process as root and lazarus as nobody)");
        return;
    }
    // An output directory nobody may write to, so that only the process is refused.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let img = dir.path().join("x.lzr");
    let mut fx = Fixture::spawn("counter", ["--mib", "2", "--interval-ms", "20"]).unwrap();
    fx.wait_ready(T);
    let n = fx.wait_line(|l| l.is("TICK"), T).u64("n");
    let pid = fx.pid().to_string();
    const NOBODY: u32 = 65534;
    let lazarus =
        fixtures::runnable::RunnableCopy::new(Path::new(env!("CARGO_BIN_EXE_lazarus"))).unwrap();
    let out = std::process::Command::new(lazarus.path())
        .args(["capture", "--pid", &pid, "-o"])
        .arg(&img)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .expect("run lazarus as nobody");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    for part in [
        &format!("not permitted to capture process {pid}"),
        "it belongs to uid 0 and we run as uid 65534",
    ] {
        assert!(err.contains(part), "{part:?} missing from {err}");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    // Untouched: not traced, still verifying its memory as it ticks.
    assert_eq!(tracer_of(fx.pid()), "0");
    fx.wait_line(|l| l.is("TICK") && l.u64("n") > n + 2, T);
}
