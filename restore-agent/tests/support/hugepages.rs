//! Reserving 2 MiB huge pages for a test, and giving them back.
//!
//! The pool size is machine-wide: reservations of concurrent test processes
//! are serialized with an exclusive `flock` on [`LOCK_FILE`], held from
//! reading the pool size until restoring it (otherwise two tests could
//! interleave their read-grow-restore and leave the pool changed, or shrink
//! it under each other).
#![allow(dead_code)]

use std::fs::File;

const NR: &str = "/proc/sys/vm/nr_hugepages";
/// Serializes huge page reservations across processes.
pub(crate) const LOCK_FILE: &str = "/tmp/lazarus-hugepages.lock";

/// A reservation of huge pages; restores the previous pool size on drop.
#[derive(Debug)]
pub(crate) struct Reservation {
    previous: u64,
    /// Holds the lock until the pool is restored.
    _lock: File,
}

fn free_huge_pages() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("HugePages_Free:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Grows the huge page pool by `n` pages; `None` if that is not possible
/// here (not root, or not enough memory), in which case nothing changed.
/// Blocks while another test process holds a reservation.
pub(crate) fn reserve(n: u64) -> Option<Reservation> {
    let lock = File::create(LOCK_FILE).ok()?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).ok()?;
    let previous: u64 = std::fs::read_to_string(NR).ok()?.trim().parse().ok()?;
    std::fs::write(NR, (previous + n).to_string()).ok()?;
    let reservation = Reservation {
        previous,
        _lock: lock,
    };
    (free_huge_pages() >= n).then_some(reservation)
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(NR, self.previous.to_string()) {
            eprintln!("cannot restore {NR} to {}: {e}", self.previous);
        }
    }
}
