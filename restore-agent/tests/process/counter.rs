//! The counter fixture: one buffer with a self-maintained checksum.

use fixtures::checked::CheckedBuffer;
use fixtures::pattern::{self, Stream};

use crate::support::{
    Alone, T, assert_memory_matches, capture_fixture, options, restore, signal, tail,
};

/// The checksum `counter --mib MIB --writes 1 --seed 1` prints after tick `n`.
fn model_checksum(mib: usize, n: u64) -> u64 {
    let mut model = CheckedBuffer::new("model", mib << 20, pattern::key(1, Stream::Counter, 0))
        .expect("model buffer");
    for _ in 0..n {
        model.mutate(1);
    }
    model.checksum()
}

#[test]
fn a_counter_continues_from_where_it_stopped_with_the_same_checksum() {
    let c = capture_fixture("counter", &["--mib", "16", "--interval-ms", "20"], |l| {
        l.is("TICK") && l.u64("n") >= 3
    });
    let last = c.last("TICK");
    let k = last.u64("n");
    assert_eq!(last.hex("checksum"), model_checksum(16, k));

    let mut opts = options(&c);
    opts.stopped = true;
    let restored = restore(&c, opts);
    let pid = restored.pid();
    assert_eq!(pid, c.pid, "the original pid");
    // Before it runs: every byte as captured (faulted in through the agent).
    let compared = assert_memory_matches(pid, &c.image);
    assert!(compared >= 16 << 20);
    signal(pid, libc::SIGCONT);

    let mut out = tail(&c, pid);
    let next = out.wait_tag("TICK", T);
    assert_eq!(next.u64("n"), k + 1, "continues with the next tick");
    assert_eq!(next.u64("pid"), pid as u64);
    assert_eq!(next.hex("checksum"), model_checksum(16, k + 1));
    // While it is served, it holds a copy of its userfaultfd (so that the agent's
    // death cannot unregister its memory) ...
    assert_eq!(userfaultfds(pid), vec![1023]);
    let summary = restored.finish().expect("finish");
    // ... and no more once it runs alone.
    assert!(userfaultfds(pid).is_empty());
    let alone = Alone::new(pid);
    assert!(summary.exit.is_none());
    assert!(summary.stats.population.populated);
    // It goes on alone, verifying its whole buffer every tick.
    let later = out.wait_line(|l| l.is("TICK") && l.u64("n") >= k + 5, T);
    assert_eq!(later.hex("checksum"), model_checksum(16, later.u64("n")));
    drop(alone);
}

/// The fds of `pid` that are userfaultfds.
fn userfaultfds(pid: i32) -> Vec<i32> {
    let mut fds: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|t| t.as_os_str() == "anon_inode:[userfaultfd]")
        })
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    fds
}
