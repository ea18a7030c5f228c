//! Soak: one image of `churn --fork` (a process that forks, `madvise(DONTNEED)`s,
//! `mremap`s, unmaps and remaps, grows its stack and heap every tick, then exits) is
//! restored many times in a row by this process, which is the agent. Each run is
//! checked byte for byte before the process runs and by the process itself as it
//! churns; after each, the agent's resources must be back where they started.
//!
//! The runs rotate through three endings, so each cleanup path is soaked:
//!
//! | run % 3 | prefetch | ending |
//! | --- | --- | --- |
//! | 0 | none | the process exits (status 0) while still served: `finish` reaps it |
//! | 1 | 1 worker | every page is in while it runs: `finish` lets it go; it exits alone |
//! | 2 | none | `SIGKILL` while served: `finish` reaps it, the summary says so |
//!
//! What "back where they started" means, measured from `/proc/self` after a first,
//! warm-up run (which allocates what a process allocates once: the test harness's
//! buffers, the thread-local zstd context pools, the allocator's arenas):
//!
//! - fds (`/proc/self/fd`) and threads (`/proc/self/task`): exactly equal;
//! - children: none (every restored process reaped);
//! - heap in use (glibc `mallinfo2().uordblks`, all arenas): at most
//!   [`HEAP_SLACK`] above the baseline. The agent frees everything a restore allocates
//!   (server, cache, page tables, threads): a 200-run soak traced with glibc's `mtrace`
//!   left no allocation made during the runs live except three 304-byte TLS blocks of
//!   glibc's thread-stack cache. `uordblks` still drifts up by about 170 bytes per run
//!   (59 KiB after 200): blocks parked in the allocator's per-thread caches count as
//!   in use. The slack covers that drift over the full soak with room to spare, and is
//!   far below one restore's own footprint (its chunk cache alone is larger), so a
//!   restore that leaked its state would fail at once;
//! - resident memory (`VmRSS`): at most [`RSS_SLACK`] above the baseline. Looser:
//!   freed memory glibc keeps mapped (arena tops, trimmed lazily) and page-cache
//!   pages of the image's mapping count as resident.
//!
//! The figures (baseline, largest excess) are printed at the end. `LAZARUS_SOAK=1`
//! runs the full soak ([`FULL_RUNS`] restores); the normal suite runs [`SHORT_RUNS`].
//! These counts describe the whole process: run under nextest (one test per process),
//! as the workspace does; under `cargo test` use `--test-threads=1`.

use std::time::{Duration, Instant};

use fixtures::LogTail;
use restore_agent::ServerOptions;
use restore_agent::process::{ProcessRestoreOptions, Stdio, open_stdio_file};

use crate::events::model;
use crate::support::{
    Alone, Captured, T, assert_memory_matches, capture_fixture, children, restore, signal,
};

/// Restores in the normal test suite.
const SHORT_RUNS: u64 = 20;
/// Restores with `LAZARUS_SOAK=1`.
const FULL_RUNS: u64 = 200;
/// Heap in use allowed above the baseline after any run.
const HEAP_SLACK: u64 = 512 << 10;
/// Resident memory allowed above the baseline after any run.
const RSS_SLACK: u64 = 16 << 20;
/// The captured churn stops after this many ticks.
const TICKS: u64 = 8;
/// Size of churn's main buffer, MiB.
const MIB: usize = 4;

/// Whether the full soak was asked for (`LAZARUS_SOAK=1`).
pub(crate) fn full_soak() -> bool {
    std::env::var_os("LAZARUS_SOAK").is_some_and(|v| v == "1")
}

/// The agent's resources, from `/proc/self`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Resources {
    fds: usize,
    threads: usize,
    heap: u64,
    rss: u64,
}

impl Resources {
    fn now() -> Self {
        let count = |dir: &str| {
            std::fs::read_dir(dir)
                .unwrap_or_else(|e| panic!("read {dir}: {e}"))
                .count()
        };
        let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
        let rss_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("a VmRSS line");
        // SAFETY: mallinfo2 takes no arguments and only reads the allocator's
        // statistics (under its own locks).
        let info = unsafe { libc::mallinfo2() };
        Self {
            fds: count("/proc/self/fd"),
            threads: count("/proc/self/task"),
            heap: info.uordblks as u64,
            rss: rss_kib << 10,
        }
    }

    /// Samples until fds and threads equal `base`'s (threads of a stopped server end
    /// asynchronously after their last message); panics after [`T`].
    fn settled(base: &Self, run: u64) -> Self {
        let deadline = Instant::now() + T;
        loop {
            let now = Self::now();
            if (now.fds, now.threads) == (base.fds, base.threads) {
                return now;
            }
            assert!(
                Instant::now() < deadline,
                "run {run}: fds/threads did not return to {}/{} within {T:?}: {}/{} (fds: {:?})",
                base.fds,
                base.threads,
                now.fds,
                now.threads,
                std::fs::read_dir("/proc/self/fd")
                    .map(|d| d
                        .flatten()
                        .filter_map(|e| std::fs::read_link(e.path()).ok())
                        .collect::<Vec<_>>())
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// One restore of `c` (run number `run`), checked from start to end.
fn run_once(c: &Captured, k: u64, run: u64) {
    let out = c.file(&format!("out{run}.log"));
    let prefetch = run % 3 == 1;
    let opts = ProcessRestoreOptions {
        stdio: [
            Stdio::Null,
            Stdio::Fd(open_stdio_file(1, &out).expect("stdout file")),
            Stdio::Fd(open_stdio_file(2, &c.file("err.log")).expect("stderr file")),
        ],
        stopped: true,
        server: ServerOptions {
            prefetch_workers: usize::from(prefetch),
            ..ServerOptions::default()
        },
        working_set: restore_agent::WorkingSetOptions::NONE,
        ..ProcessRestoreOptions::default()
    };
    let mut restored = restore(c, opts);
    let pid = restored.pid();
    assert_eq!(pid, c.pid, "run {run}: the original pid");
    assert_memory_matches(pid, &c.image);
    signal(pid, libc::SIGCONT);
    let mut tail = LogTail::new(&out).watch_pid(pid as u32);
    let mut check = |n: u64| {
        let l = tail.wait_tag("CHURN", T);
        assert_eq!(l.u64("n"), n, "run {run}");
        assert!(l.has_word("ok"), "run {run}: {}", l.raw());
        assert_eq!(l.hex("checksum"), model(MIB, n), "run {run}");
    };
    match run % 3 {
        0 => {
            for n in k + 1..=TICKS {
                check(n);
            }
            tail.wait_tag("DONE", T);
            let summary = restored.finish().expect("finish");
            let exit = summary.exit.expect("it exited while served");
            assert_eq!(exit.code, Some(0), "run {run}: {exit}");
            let s = summary.stats;
            assert!(
                s.events.fork > 0 && s.events.remove > 0 && s.events.remap > 0,
                "run {run}: {s:?}"
            );
        }
        1 => {
            check(k + 1);
            assert!(restored.wait_done(T), "run {run}: population did not end");
            let summary = restored.finish().expect("finish");
            // Usually still running (alone now); it may have finished its ticks.
            let alone = summary.exit.is_none().then(|| Alone::new(pid));
            for n in k + 2..=TICKS {
                check(n);
            }
            tail.wait_tag("DONE", T);
            drop(alone);
        }
        _ => {
            check(k + 1);
            signal(pid, libc::SIGKILL);
            let deadline = Instant::now() + T;
            while !restored.has_exited() {
                assert!(Instant::now() < deadline, "run {run}: SIGKILL ignored");
                std::thread::sleep(Duration::from_millis(2));
            }
            let summary = restored.finish().expect("finish");
            let exit = summary.exit.expect("it was killed while served");
            assert_eq!(exit.signal, Some(libc::SIGKILL), "run {run}: {exit}");
        }
    }
    std::fs::remove_file(&out).expect("remove the run's output");
}

#[test]
fn two_hundred_restores_of_a_churning_process_leak_nothing() {
    let runs = if full_soak() { FULL_RUNS } else { SHORT_RUNS };
    let c = capture_fixture(
        "churn",
        &[
            "--mib",
            &MIB.to_string(),
            "--fork",
            "--interval-ms",
            "20",
            "--ticks",
            &TICKS.to_string(),
        ],
        |l| l.is("CHURN") && l.u64("n") >= 2,
    );
    let k = c.last("CHURN").u64("n");
    assert!(k < TICKS, "captured before its last tick");
    run_once(&c, k, 0);
    let base = Resources::settled(&Resources::now(), 0);
    let (mut heap_excess, mut rss_excess) = (0u64, 0u64);
    let started = Instant::now();
    for run in 1..runs {
        run_once(&c, k, run);
        let now = Resources::settled(&base, run);
        assert!(
            children().is_empty(),
            "run {run}: children left: {:?}",
            children()
        );
        heap_excess = heap_excess.max(now.heap.saturating_sub(base.heap));
        rss_excess = rss_excess.max(now.rss.saturating_sub(base.rss));
        assert!(
            now.heap <= base.heap + HEAP_SLACK,
            "run {run}: heap in use {} bytes, baseline {} (+{} allowed)",
            now.heap,
            base.heap,
            HEAP_SLACK
        );
        assert!(
            now.rss <= base.rss + RSS_SLACK,
            "run {run}: VmRSS {} bytes, baseline {} (+{} allowed)",
            now.rss,
            base.rss,
            RSS_SLACK
        );
    }
    let last = Resources::now();
    eprintln!(
        "soak: {runs} restores in {:.1} s; baseline {} fds, {} threads, heap {} KiB, VmRSS {} \
         KiB; largest excess: heap {} KiB, VmRSS {} KiB; at the end: heap {} KiB, VmRSS {} KiB",
        started.elapsed().as_secs_f64(),
        base.fds,
        base.threads,
        base.heap >> 10,
        base.rss >> 10,
        heap_excess >> 10,
        rss_excess >> 10,
        last.heap >> 10,
        last.rss >> 10,
    );
}
