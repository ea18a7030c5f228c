//! Address-space events after restore: forks (children served too), madvise(DONTNEED),
//! mremap, munmap and mmap, stack and heap growth.

use fixtures::checked::CheckedBuffer;
use fixtures::pattern::{self, Stream};

use crate::support::{
    Alone, T, assert_memory_matches, capture_fixture, options, restore, signal, tail,
};

/// The checksum of a `counter`-style buffer of `mib` MiB (seed 1, 1 write per tick)
/// after `n` ticks.
pub(crate) fn model(mib: usize, n: u64) -> u64 {
    let mut buf = CheckedBuffer::new("model", mib << 20, pattern::key(1, Stream::Counter, 0))
        .expect("model buffer");
    for _ in 0..n {
        buf.mutate(1);
    }
    buf.checksum()
}

#[test]
fn a_restored_process_forks_and_its_children_are_served() {
    let c = capture_fixture("forker", &["--mib", "16", "--interval-ms", "20"], |l| {
        l.is("FORK") && l.u64("n") >= 2
    });
    let k = c.last("FORK").u64("n");
    let mut opts = options(&c);
    // No prefetch: the children fork while most pages are still missing in the parent
    // and fault on them through their own userfaultfd.
    opts.server.prefetch_workers = 0;
    let restored = restore(&c, opts);
    let pid = restored.pid();
    let mut out = tail(&c, pid);
    for n in k + 1..=k + 4 {
        let l = out.wait_tag("FORK", T);
        assert_eq!(l.u64("n"), n);
        assert_eq!(l.str("child"), "ok", "{l:?}");
        assert_eq!(l.hex("checksum"), model(16, n));
    }
    let stats = restored.stats();
    assert!(stats.events.fork >= 4, "forks seen: {}", stats.events.fork);
    let summary = restored.finish().expect("finish");
    assert!(summary.exit.is_none());
    let alone = Alone::new(pid);
    let l = out.wait_line(|l| l.is("FORK") && l.u64("n") >= k + 7, T);
    assert_eq!(l.hex("checksum"), model(16, l.u64("n")));
    drop(alone);
}

#[test]
fn dontneed_mremap_munmap_stack_and_heap_growth_after_restore() {
    let c = capture_fixture(
        "churn",
        &["--mib", "4", "--fork", "--interval-ms", "20"],
        |l| l.is("CHURN") && l.u64("n") >= 2,
    );
    let ready = &c.lines[0];
    let k = c.last("CHURN").u64("n");
    let mut opts = options(&c);
    opts.stopped = true;
    opts.server.prefetch_workers = 0;
    let restored = restore(&c, opts);
    let pid = restored.pid();
    assert_memory_matches(pid, &c.image);
    signal(pid, libc::SIGCONT);
    let mut out = tail(&c, pid);
    for n in k + 1..=k + 6 {
        let l = out.wait_tag("CHURN", T);
        assert_eq!(l.u64("n"), n);
        assert!(l.has_word("ok"), "{l:?}");
        assert_eq!(l.hex("checksum"), model(4, n));
        // The heap probe leaves the break where the original had it.
        assert_eq!(l.hex("brk"), ready.hex("brk"));
    }
    let stats = restored.stats();
    assert!(stats.events.remove > 0, "MADV_DONTNEED seen");
    assert!(stats.events.remap > 0, "mremap seen");
    assert!(stats.events.unmap > 0, "munmap seen");
    assert!(stats.events.fork > 0, "fork seen");
    restored.finish().expect("finish");
    let alone = Alone::new(pid);
    let l = out.wait_line(|l| l.is("CHURN") && l.u64("n") >= k + 9, T);
    assert!(l.has_word("ok"));
    drop(alone);
}
