//! Page states: one byte per unit (page) of a served range, updated with
//! atomic compare-and-swap by the fault thread, the prefetch workers and the
//! event handling, without any lock.
//!
//! ```text
//!            fill (COPY)                 REMOVE event
//!  Snapshot ───────────────► Served ────────────────► Zero
//!     │  \                     ▲  ▲                    │
//!     │   \ chunk failed its   │  └── fill (ZEROPAGE) ─┘
//!     │    \ hash (POISON)     │
//!     │     ▼                  │
//!     │   Poisoned ── REMOVE ──┼──────────────────────► Zero
//!     └──────────── REMOVE ────┴──────────────────────► Zero
//! ```
//!
//! - **Snapshot**: the unit's bytes come from the image; it is missing in the
//!   target. The only state that needs image data; a space is *populated*
//!   when none is left.
//! - **Zero**: the unit reads as zeros and is missing: never populated at
//!   capture, or dropped by `MADV_DONTNEED` after restore (REMOVE event).
//!   Served with `UFFDIO_ZEROPAGE` (or a copy of zeros on hugetlbfs).
//! - **Served**: filled (copied, zero page, or found present: `EEXIST`).
//! - **Poisoned**: its chunk failed its hash; a poison marker was installed
//!   (`UFFDIO_POISON`), so any access raises SIGBUS, never wrong bytes.
//!
//! Who changes what, and why no lock is needed:
//!
//! - Fillers (the fault thread, prefetch workers) only move a unit *forward*
//!   (`Snapshot → Served / Poisoned`, `Zero → Served`), each with a CAS from
//!   the state they saw; the winner of the CAS does the accounting. Two
//!   fillers racing on one unit both copy the same bytes: the kernel installs
//!   one page and the other gets `EEXIST`.
//! - Events (REMOVE) move units *back* to `Zero`. They are applied only by
//!   the thread that reads the userfaultfd, while the space's
//!   [`Gate`](crate::gate::Gate) keeps every prefetch worker out of its
//!   check-then-copy window; see `gate.rs` for the argument.

use std::sync::atomic::{AtomicU8, Ordering};

/// The state of one unit (page) of a served range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PageState {
    /// Missing; its bytes come from the image.
    Snapshot = 0,
    /// Missing; reads as zeros.
    Zero = 1,
    /// Present (filled, or found present).
    Served = 2,
    /// A poison marker is installed (its chunk is corrupt).
    Poisoned = 3,
}

impl PageState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Snapshot,
            1 => Self::Zero,
            2 => Self::Served,
            _ => Self::Poisoned,
        }
    }
}

/// A fixed array of unit states, allocated once per mapping.
#[derive(Debug)]
pub(crate) struct StateArray {
    cells: Box<[AtomicU8]>,
}

impl StateArray {
    /// States taken from `initial` (one byte per unit, `PageState as u8`).
    pub(crate) fn from_states(initial: impl IntoIterator<Item = PageState>) -> Self {
        Self {
            cells: initial
                .into_iter()
                .map(|s| AtomicU8::new(s as u8))
                .collect(),
        }
    }

    /// Number of units.
    pub(crate) fn len(&self) -> usize {
        self.cells.len()
    }

    /// The state of unit `i`.
    pub(crate) fn get(&self, i: usize) -> PageState {
        PageState::from_u8(self.cells[i].load(Ordering::Acquire))
    }

    /// Moves unit `i` from `from` to `to`; false if it was not in `from`.
    pub(crate) fn transition(&self, i: usize, from: PageState, to: PageState) -> bool {
        self.cells[i]
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Sets unit `i` to `to` whatever it was; returns the previous state.
    pub(crate) fn replace(&self, i: usize, to: PageState) -> PageState {
        PageState::from_u8(self.cells[i].swap(to as u8, Ordering::AcqRel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_are_compare_and_swap() {
        let a = StateArray::from_states([PageState::Snapshot, PageState::Zero]);
        assert_eq!(a.len(), 2);
        assert!(a.transition(0, PageState::Snapshot, PageState::Served));
        assert!(!a.transition(0, PageState::Snapshot, PageState::Poisoned));
        assert_eq!(a.get(0), PageState::Served);
        assert_eq!(a.replace(1, PageState::Served), PageState::Zero);
        assert_eq!(a.replace(1, PageState::Poisoned), PageState::Served);
        assert_eq!(a.get(1), PageState::Poisoned);
    }
}
