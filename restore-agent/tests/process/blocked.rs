//! Processes captured inside a blocking system call resume it correctly.

use std::io::Write;
use std::time::Duration;

use crate::support::{Alone, T, capture_running, options, restore, spawn, tail};

#[test]
fn a_process_captured_in_nanosleep_wakes_up_after_restore() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut fx = spawn("blocked", &["--mode", "sleep", "--interval-ms", "1500"]);
    let ready = fx.wait_ready(T);
    // Inside its clock_nanosleep (ERESTART_RESTARTBLOCK: the restored thread gets
    // EINTR, and std's sleep goes on with the remaining time).
    std::thread::sleep(Duration::from_millis(200));
    let c = capture_running(fx, dir, vec![ready]);
    assert!(
        c.lines.iter().all(|l| !l.is("WOKE")),
        "captured before it woke"
    );
    let restored = restore(&c, options(&c));
    let pid = restored.pid();
    let mut out = tail(&c, pid);
    let woke = out.wait_tag("WOKE", T);
    assert_eq!(woke.u64("n"), 1);
    assert_eq!(woke.u64("pid"), pid as u64);
    restored.finish().expect("finish");
    let alone = Alone::new(pid);
    assert_eq!(out.wait_tag("WOKE", T).u64("n"), 2);
    drop(alone);
}

#[test]
fn a_process_captured_in_a_fifo_read_reads_on_after_restore() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("fifo");
    let fifo_arg = fifo.to_str().expect("utf-8 path").to_owned();
    let mut fx = spawn("blocked", &["--mode", "fifo", "--fifo", &fifo_arg]);
    let ready = fx.wait_ready(T);
    std::thread::sleep(Duration::from_millis(100));
    let c = capture_running(fx, dir, vec![ready]);
    let restored = restore(&c, options(&c));
    let pid = restored.pid();
    // The restored process holds the FIFO open read-write again (reopened by path
    // with the captured flags): opening it for writing does not block.
    let mut writer = std::fs::OpenOptions::new()
        .write(true)
        .open(&fifo)
        .expect("open the FIFO");
    writer.write_all(b"hello after restore\n").expect("write");
    let mut out = tail(&c, pid);
    let got = out.wait_tag("GOT", T);
    assert_eq!(got.rest(), "hello after restore");
    restored.finish().expect("finish");
    let alone = Alone::new(pid);
    writer.write_all(b"and alone\n").expect("write");
    assert_eq!(out.wait_tag("GOT", T).rest(), "and alone");
    drop(alone);
}
