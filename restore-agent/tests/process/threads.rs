//! The threads fixture: every thread comes back with its own tid and state.

use std::collections::BTreeMap;

use fixtures::checked::CheckedBuffer;
use fixtures::pattern::{self, Stream};

use crate::support::{
    Alone, T, assert_memory_matches, capture_fixture, options, restore, signal, tail,
};

/// The checksum thread `k` of `threads --mib MIB --seed 1 --writes 1` prints after its
/// tick `n`.
fn model(mib: usize, k: u64, n: u64) -> u64 {
    let mut buf = CheckedBuffer::new("model", mib << 20, pattern::key(1, Stream::Thread, k))
        .expect("model buffer");
    for _ in 0..n {
        buf.mutate(1);
    }
    buf.checksum()
}

#[test]
fn every_thread_keeps_working_with_its_own_tid() {
    let threads = 4u64; // the main thread and 3 workers
    let c = capture_fixture(
        "threads",
        &["--threads", "3", "--mib", "4", "--interval-ms", "20"],
        |l| l.is("TICK") && l.u64("n") >= 3,
    );
    let ready = &c.lines[0];
    // The last tick each thread printed, and its tid.
    let mut last: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for l in c.lines.iter().filter(|l| l.is("TICK")) {
        last.insert(l.u64("thread"), (l.u64("n"), l.u64("tid")));
    }
    assert_eq!(
        last.len() as u64,
        threads,
        "every thread ticked before the capture"
    );

    let mut opts = options(&c);
    opts.stopped = true;
    let restored = restore(&c, opts);
    let pid = restored.pid();
    let mut tids: Vec<u64> = restored.tids().iter().map(|&t| t as u64).collect();
    tids.sort_unstable();
    let mut original: Vec<u64> = (0..threads)
        .map(|k| ready.u64(&format!("tid{k}")))
        .collect();
    original.sort_unstable();
    assert_eq!(tids, original, "the original tids");
    assert_memory_matches(pid, &c.image);
    signal(pid, libc::SIGCONT);

    let mut out = tail(&c, pid);
    let mut seen = BTreeMap::new();
    while seen.len() < threads as usize {
        let l = out.wait_tag("TICK", T);
        let k = l.u64("thread");
        if seen.contains_key(&k) {
            continue;
        }
        let (n, tid) = last[&k];
        assert_eq!(l.u64("n"), n + 1, "thread {k} continues with its next tick");
        assert_eq!(l.u64("tid"), tid, "thread {k} keeps its tid");
        assert_eq!(
            l.hex("checksum"),
            model(4, k, n + 1),
            "thread {k}'s checksum"
        );
        seen.insert(k, l);
    }
    let summary = restored.finish().expect("finish");
    assert_eq!(summary.threads, threads as usize);
    let alone = Alone::new(pid);
    // Every thread goes on alone.
    let mut later = BTreeMap::new();
    while later.len() < threads as usize {
        let l = out.wait_tag("TICK", T);
        let k = l.u64("thread");
        if l.u64("n") >= last[&k].0 + 4 {
            assert_eq!(l.hex("checksum"), model(4, k, l.u64("n")));
            later.insert(k, ());
        }
    }
    drop(alone);
}
