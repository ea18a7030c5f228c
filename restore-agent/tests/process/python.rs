//! A program nobody here wrote: the system's python3, holding a large dict.

use std::path::Path;
use std::process::Command;

use crate::support::{
    Alone, T, assert_memory_matches, capture_running, options, restore, signal, spawn_command, tail,
};

/// The system's interpreter (not a pyenv shim: a real ELF program).
const PYTHON: &str = "/usr/bin/python3";

const N: u64 = 300_000;

/// Builds a dict of N ints and N strings, then every tick increments one entry and
/// prints a sum over a slice of it and one string looked up by key.
const SCRIPT: &str = r#"
import os, time
N = 300000
d = {i: i * i for i in range(N)}
names = {f"key{i}": f"value-{i * 7}" for i in range(N)}
print(f"READY pid={os.getpid()}", flush=True)
n = 0
while True:
    d[n % N] += 1
    s = sum(d[i] for i in range(0, N, 1000))
    print(f"TICK n={n} pid={os.getpid()} s={s} name={names['key' + str(n % N)]}", flush=True)
    n += 1
    time.sleep(0.02)
"#;

/// What tick `n` prints as `s` (for n < N).
fn expected_sum(n: u64) -> u64 {
    let base: u64 = (0..N).step_by(1000).map(|i| i * i).sum();
    base + n / 1000 + 1
}

#[test]
fn the_systems_python3_goes_on_printing_correct_values() {
    if !Path::new(PYTHON).exists() {
        eprintln!("skipped: {PYTHON} is not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut command = Command::new(PYTHON);
    command.args(["-c", SCRIPT]);
    let mut fx = spawn_command("python3", command);
    let ready = fx.wait_ready(T);
    let mut lines = vec![ready];
    lines.push(fx.wait_line(|l| l.is("TICK") && l.u64("n") >= 3, T));
    let c = capture_running(fx, dir, lines);
    let k = c.last("TICK").u64("n");

    let mut opts = options(&c);
    opts.stopped = true;
    let restored = restore(&c, opts);
    let pid = restored.pid();
    assert_memory_matches(pid, &c.image);
    signal(pid, libc::SIGCONT);
    let mut out = tail(&c, pid);
    for n in k + 1..=k + 5 {
        let l = out.wait_tag("TICK", T);
        assert_eq!(l.u64("n"), n);
        assert_eq!(l.u64("pid"), pid as u64);
        assert_eq!(l.u64("s"), expected_sum(n));
        assert_eq!(l.str("name"), format!("value-{}", (n % N) * 7));
    }
    let summary = restored.finish().expect("finish");
    assert!(summary.exit.is_none());
    let alone = Alone::new(pid);
    let l = out.wait_line(|l| l.is("TICK") && l.u64("n") >= k + 10, T);
    assert_eq!(l.u64("s"), expected_sum(l.u64("n")));
    drop(alone);
}
