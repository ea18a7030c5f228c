//! The per-address-space gate between the thread that *reads* a userfaultfd
//! and the prefetch workers that *copy* into it: why it exists, and why it is
//! enough to never put stale snapshot bytes into a range the process dropped.
//!
//! # The race
//!
//! A prefetch worker looks at a unit's state (`Snapshot`), then calls
//! `UFFDIO_COPY`. Meanwhile the process calls `madvise(MADV_DONTNEED)` on that
//! range. What the kernel does (`mm/madvise.c`, `fs/userfaultfd.c`):
//!
//! ```text
//!  process (madvise)                 kernel ctx->mmap_changing   server (reader)
//!  ─────────────────                 ─────────────────────────   ───────────────
//!  Te: userfaultfd_remove():  ─────► set: every fill → EAGAIN
//!      queue REMOVE, sleep
//!                                                                 T1: read() returns REMOVE
//!  wakes (event completed at T1) ◄─────────────────────────────── (completes the event)
//!  T2: ─────────────────────────────► cleared
//!  T3: zap the range (pages missing again)
//! ```
//!
//! A fill attempted in `[Te, T2)` fails with `EAGAIN`, and the server marks
//! the range `Zero` right after `T1`. That is **not** enough when fills come
//! from other threads: a worker that checked the state *before* the server
//! applied the REMOVE, and whose `UFFDIO_COPY` starts *after* `T2` (it was
//! preempted in between, or its copy is long and the zap overtakes it), copies
//! snapshot bytes into pages the process has just dropped, and it succeeds,
//! because they are missing again. The process then reads stale bytes instead
//! of zeros, and nothing can undo it from outside the process (no ioctl
//! replaces a present page; `process_madvise` cannot drop pages). The same
//! holds for REMAP (a stale table copies a chunk to an address that now holds
//! another range) and UNMAP followed by a REMAP over the hole.
//!
//! # The rule
//!
//! **No `read()` of the userfaultfd may happen while a worker is between its
//! state check and the end of its `UFFDIO_COPY`.** The read is what completes
//! an event and lets the process go on to change its address space; so:
//!
//! - a worker copy that ended before the read ended before `T2`, hence before
//!   the zap (or it got `EAGAIN`): its pages are dropped by the zap, the
//!   process reads zeros;
//! - a worker copy that starts after the read starts after the server applied
//!   the batch's events (they are applied before the gate reopens): it sees
//!   `Zero`, or the new table, and copies nothing stale.
//!
//! The fault thread is the reader itself: it never copies while reading, and
//! applies every event of a batch before it serves the batch's faults, so its
//! own copies follow the same rule.
//!
//! # The gate
//!
//! One atomic word per address space: bit 31 says "the reader wants the
//! fd", bits 0..31 count workers inside their check-then-copy window.
//!
//! ```text
//!  worker                                   reader (server thread)
//!  ──────                                   ──────────────────────
//!  prev = fetch_add(1)                      fetch_or(READER)
//!  if prev & READER: fetch_sub(1), back off wait until count == 0
//!  check states, UFFDIO_COPY, set Served    read(); apply events (states, table)
//!  fetch_sub(1)                             fetch_and(!READER)
//! ```
//!
//! Both sides use read-modify-write operations on the same word, which the
//! hardware orders totally: a worker whose increment comes after the
//! reader's `fetch_or` sees the bit and backs off; one whose increment comes
//! before is counted and waited for. `SeqCst` also makes the reader's state
//! and table updates visible to every worker that enters afterwards.
//!
//! # What it costs
//!
//! The reader never waits for a worker's *decompression* (workers take chunks
//! from the cache before entering), only for copies in flight, each bounded
//! by one chunk use or one huge page ([`MAX_COPY_PER_ENTRY`] of base pages).
//! It only closes the gate when epoll says the fd is readable (a spinning
//! server polls epoll, which needs no gate), so prefetch runs undisturbed
//! while nothing is pending. Workers back off while the bit is set and yield
//! between chunks.

use std::sync::atomic::{AtomicU32, Ordering};

/// The most bytes of base pages a worker copies in one stay inside the gate
/// (so the reader never waits for more than about one such copy: ~90 µs at
/// the 2.9 GB/s this machine's `UFFDIO_COPY` reaches).
pub(crate) const MAX_COPY_PER_ENTRY: u64 = 256 * 1024;

const READER: u32 = 1 << 31;

/// Spins before a waiting side starts yielding its CPU.
const SPINS_BEFORE_YIELD: u32 = 64;

/// The gate of one address space (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Gate {
    word: AtomicU32,
}

/// A worker inside the gate; leaving is dropping it.
#[derive(Debug)]
pub(crate) struct Inside<'a> {
    gate: &'a Gate,
}

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        self.gate.word.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The reader holding the gate closed; reopening is dropping it.
#[derive(Debug)]
pub(crate) struct Closed<'a> {
    gate: &'a Gate,
}

impl Drop for Closed<'_> {
    fn drop(&mut self) {
        self.gate.word.fetch_and(!READER, Ordering::SeqCst);
    }
}

impl Gate {
    /// Enters as a worker, unless the reader holds or wants the gate.
    pub(crate) fn try_enter(&self) -> Option<Inside<'_>> {
        let prev = self.word.fetch_add(1, Ordering::SeqCst);
        if prev & READER != 0 {
            self.word.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Inside { gate: self })
    }

    /// Enters as a worker, waiting while the reader holds the gate; gives up
    /// (None) as soon as `cancelled()` says so.
    pub(crate) fn enter(&self, cancelled: impl Fn() -> bool) -> Option<Inside<'_>> {
        let mut spins = 0u32;
        loop {
            if let Some(inside) = self.try_enter() {
                return Some(inside);
            }
            if cancelled() {
                return None;
            }
            backoff(&mut spins);
        }
    }

    /// Closes the gate for the reader: waits until no worker is inside. New
    /// workers back off until the returned guard is dropped.
    pub(crate) fn close(&self) -> Closed<'_> {
        self.word.fetch_or(READER, Ordering::SeqCst);
        let mut spins = 0u32;
        while self.word.load(Ordering::SeqCst) & !READER != 0 {
            backoff(&mut spins);
        }
        Closed { gate: self }
    }

    /// Whether the reader holds or wants the gate (workers check it between
    /// chunks, to let faults go first).
    pub(crate) fn reader_waiting(&self) -> bool {
        self.word.load(Ordering::Relaxed) & READER != 0
    }
}

fn backoff(spins: &mut u32) {
    if *spins < SPINS_BEFORE_YIELD {
        *spins += 1;
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use std::time::{Duration, Instant};

    #[test]
    fn workers_back_off_while_the_reader_holds_the_gate() {
        let gate = Gate::default();
        let a = gate.try_enter().expect("open gate");
        let b = gate.try_enter().expect("open gate");
        drop(a);
        drop(b);
        let closed = gate.close();
        assert!(gate.reader_waiting());
        assert!(gate.try_enter().is_none());
        assert!(gate.enter(|| true).is_none(), "cancelled while closed");
        drop(closed);
        assert!(!gate.reader_waiting());
        assert!(gate.try_enter().is_some());
    }

    /// Workers and a reader hammer the gate; the reader must never observe a
    /// worker inside, and a worker never the reader.
    #[test]
    fn mutual_exclusion_under_contention() {
        let gate = Arc::new(Gate::default());
        let inside = Arc::new(AtomicU32::new(0));
        let reading = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..3)
            .map(|_| {
                let (gate, inside, reading, stop) = (
                    Arc::clone(&gate),
                    Arc::clone(&inside),
                    Arc::clone(&reading),
                    Arc::clone(&stop),
                );
                std::thread::spawn(move || {
                    let mut entries = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        if let Some(_g) = gate.enter(|| stop.load(Ordering::Relaxed)) {
                            inside.fetch_add(1, Ordering::SeqCst);
                            assert!(!reading.load(Ordering::SeqCst), "worker saw the reader");
                            inside.fetch_sub(1, Ordering::SeqCst);
                            entries += 1;
                        }
                    }
                    entries
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_millis(300);
        let mut closes = 0u64;
        while Instant::now() < deadline {
            let _c = gate.close();
            reading.store(true, Ordering::SeqCst);
            assert_eq!(inside.load(Ordering::SeqCst), 0, "reader saw a worker");
            reading.store(false, Ordering::SeqCst);
            closes += 1;
        }
        stop.store(true, Ordering::Relaxed);
        let entries: u64 = workers.into_iter().map(|w| w.join().expect("worker")).sum();
        assert!(
            closes > 0 && entries > 0,
            "both sides ran ({closes}, {entries})"
        );
    }
}
