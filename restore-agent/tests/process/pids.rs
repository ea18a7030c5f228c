//! Pids: the original one by default (refused, clearly, while it is taken), any with
//! `PidChoice::Any`; the same image restored twice in a row; an eager restore.

use std::sync::Arc;

use capture::{AfterCapture, CaptureOptions, capture_process};
use restore_agent::process::{PidChoice, ProcessRestoreError};
use snapshot_format::Image;

use crate::support::{
    Alone, Captured, T, assert_memory_matches, capture_fixture, options, restore, restore_result,
    signal, spawn, tail,
};

fn counter() -> Captured {
    capture_fixture("counter", &["--mib", "8", "--interval-ms", "20"], |l| {
        l.is("TICK") && l.u64("n") >= 2
    })
}

/// Restores `c`, checks that it continues from its last tick, and kills it.
fn restore_and_check(c: &Captured, pid: PidChoice) -> i32 {
    let k = c.last("TICK");
    let mut opts = options(c);
    opts.pid = pid;
    let restored = restore(c, opts);
    let new_pid = restored.pid();
    let mut out = tail(c, new_pid);
    // Skip what an earlier restore wrote to the same file.
    let next = out.wait_line(|l| l.is("TICK") && l.u64("pid") == new_pid as u64, T);
    assert_eq!(next.u64("n"), k.u64("n") + 1);
    restored.kill().expect("kill");
    new_pid
}

#[test]
fn the_same_image_restores_twice_in_a_row_with_the_original_pid() {
    let c = counter();
    assert_eq!(restore_and_check(&c, PidChoice::Original), c.pid);
    // The first one was killed and reaped: its pid is free again.
    assert_eq!(restore_and_check(&c, PidChoice::Original), c.pid);
}

#[test]
fn a_taken_pid_is_refused_clearly_and_any_pid_works() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut fx = spawn("counter", &["--mib", "4", "--interval-ms", "20"]);
    fx.wait_ready(T);
    fx.wait_line(|l| l.is("TICK") && l.u64("n") >= 2, T);
    // Captured and left running: its pid stays taken.
    let path = dir.path().join("img.lzr");
    let opts = CaptureOptions {
        after: AfterCapture::LeaveRunning,
        workers: 1,
        ..CaptureOptions::new(&path)
    };
    capture_process(fx.pid() as i32, &opts, &mut ()).expect("capture");
    let image = Arc::new(Image::open(&path).expect("open"));
    let c = Captured::from_image(dir, image, fx.pid() as i32);
    match restore_result(&c, options(&c)) {
        Err(e @ ProcessRestoreError::PidInUse { .. }) => {
            let text = e.to_string();
            assert!(text.contains(&format!("pid {} ", c.pid)), "{text}");
            assert!(text.contains("`counter`"), "{text}");
            assert!(text.contains("--pid any"), "{text}");
        }
        other => panic!("expected PidInUse, got {other:?}"),
    }
    let mut opts = options(&c);
    opts.pid = PidChoice::Any;
    let restored = restore(&c, opts);
    let pid = restored.pid();
    assert_ne!(pid, c.pid);
    let mut out = tail(&c, pid);
    let l = out.wait_tag("TICK", T);
    assert_eq!(l.u64("pid"), pid as u64, "getpid() gives the new pid");
    restored.finish().expect("finish");
    let _alone = Alone::new(pid);
    // Both run side by side.
    fx.wait_tag("TICK", T);
    out.wait_tag("TICK", T);
}

#[test]
fn an_eager_restore_has_every_page_in_before_the_process_runs() {
    let c = counter();
    let k = c.last("TICK").u64("n");
    let mut opts = options(&c);
    opts.eager = true;
    opts.stopped = true;
    let restored = restore(&c, opts);
    let pid = restored.pid();
    let timings = restored.timings().clone();
    let populated = timings.populated.expect("populated before running");
    assert!(populated <= timings.running);
    let stats = restored.stats();
    assert!(stats.population.populated);
    assert_eq!(stats.faults.total, 0, "nothing faulted");
    // The agent is not needed any more: finish at once, then look at the memory.
    let summary = restored.finish().expect("finish");
    assert_eq!(summary.stats.faults.total, 0);
    let alone = Alone::new(pid);
    assert_memory_matches(pid, &c.image);
    signal(pid, libc::SIGCONT);
    let l = tail(&c, pid).wait_tag("TICK", T);
    assert_eq!(l.u64("n"), k + 1);
    drop(alone);
}

#[test]
fn a_process_of_another_user_gets_its_user_and_groups_back() {
    use std::os::unix::process::CommandExt;
    let nobody = 65534;
    let dir = tempfile::tempdir().expect("tempdir");
    // The copy must outlive the restore (its executable is checked and mapped).
    let counter = fixtures::runnable::RunnableCopy::new(&fixtures::binary("counter"))
        .expect("a copy of counter nobody can run");
    let mut command = std::process::Command::new(counter.path());
    command
        .args(["--mib", "4", "--interval-ms", "20"])
        .uid(nobody)
        .gid(nobody)
        // Somewhere it may be.
        .current_dir("/");
    let mut fx = crate::support::spawn_command("counter", command);
    let ready = fx.wait_ready(T);
    let tick = fx.wait_line(|l| l.is("TICK") && l.u64("n") >= 2, T);
    let c = crate::support::capture_running(fx, dir, vec![ready, tick]);
    let restored = restore(&c, options(&c));
    let pid = restored.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(field("Uid:"), "65534 65534 65534 65534");
    assert_eq!(field("Gid:"), "65534 65534 65534 65534");
    assert_eq!(field("CapEff:"), "0000000000000000", "no privileges left");
    let l = tail(&c, pid).wait_tag("TICK", T);
    assert_eq!(l.u64("n"), c.last("TICK").u64("n") + 1);
    restored
        .finish()
        .expect("finish (the agent still controls it)");
    let _alone = Alone::new(pid);
}
