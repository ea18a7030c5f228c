//! The segment table of one address space: which host ranges are served
//! from which image ranges, and where their unit states are.
//!
//! ```text
//!   by_host (sorted by host address)          states (one array per mapping)
//!   ┌────────────────────────────────┐        ┌───────────────────────────┐
//!   │ host, len, image, unit, first ─┼──────► │ S S S Z Z S S ... (bytes) │
//!   │ host, len, image, unit, first ─┼──┐     └───────────────────────────┘
//!   └────────────────────────────────┘  └──► (same array, later units: a
//!   by_image: indices sorted by image          segment split by a partial
//!             address, for prefetch            mremap or munmap)
//! ```
//!
//! Events change a table in place. Only the reader of the userfaultfd applies
//! them, with the gate closed (no worker is looking), and *without
//! allocating*: both vectors keep spare capacity (a split adds at most two
//! segments; capacity is topped up after each event, which allocates only
//! once the spare room is used up), sorting is in place, and segments cut
//! out are handed to the caller (who gives them to the janitor thread to
//! free: see `server/run.rs` on why the server thread must not allocate or
//! free between reads).
//!
//! - UNMAP: the range is cut out; the states of the cut units are orphaned.
//! - REMAP (`mremap`): the moved part is cut out and re-inserted at its new
//!   host address, keeping its image addresses and its states: the state
//!   follows the pages. A growing remap reports the old length; the new tail
//!   is unknown to the table and faults there are served as zeros, which is
//!   what fresh anonymous memory holds.
//! - FORK: the child gets a deep copy (its own state arrays).

use std::sync::Arc;

use crate::state::{PageState, StateArray};

/// A host range served from an image range (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct Segment {
    /// First host address.
    pub(crate) host: u64,
    /// Length in bytes (a multiple of `unit`).
    pub(crate) len: u64,
    /// Image address of `host`.
    pub(crate) image: u64,
    /// Unit (page) size, a power of two.
    pub(crate) unit: u64,
    states: Arc<StateArray>,
    /// Index in `states` of the unit at `host`.
    first: usize,
}

impl Segment {
    /// A segment covering all of `states`.
    pub(crate) fn new(host: u64, image: u64, unit: u64, states: Arc<StateArray>) -> Self {
        Self {
            host,
            len: states.len() as u64 * unit,
            image,
            unit,
            states,
            first: 0,
        }
    }

    /// One past the last host address.
    pub(crate) fn end(&self) -> u64 {
        self.host + self.len
    }

    /// One past the last image address.
    pub(crate) fn image_end(&self) -> u64 {
        self.image + self.len
    }

    /// Number of units.
    pub(crate) fn units(&self) -> usize {
        (self.len / self.unit) as usize
    }

    /// The unit holding host address `addr` (which must be inside).
    pub(crate) fn unit_at(&self, addr: u64) -> usize {
        debug_assert!(addr >= self.host && addr < self.end());
        ((addr - self.host) / self.unit) as usize
    }

    /// The unit holding image address `addr` (which must be inside).
    pub(crate) fn unit_of_image(&self, addr: u64) -> usize {
        debug_assert!(addr >= self.image && addr < self.image_end());
        ((addr - self.image) / self.unit) as usize
    }

    /// Host address of unit `u`.
    pub(crate) fn host_of(&self, u: usize) -> u64 {
        self.host + u as u64 * self.unit
    }

    /// Image address of unit `u`.
    pub(crate) fn image_of(&self, u: usize) -> u64 {
        self.image + u as u64 * self.unit
    }

    /// State of unit `u`.
    pub(crate) fn state(&self, u: usize) -> PageState {
        self.states.get(self.first + u)
    }

    /// CAS of unit `u` from `from` to `to`.
    pub(crate) fn transition(&self, u: usize, from: PageState, to: PageState) -> bool {
        self.states.transition(self.first + u, from, to)
    }

    /// Sets unit `u`; returns its previous state.
    pub(crate) fn replace(&self, u: usize, to: PageState) -> PageState {
        self.states.replace(self.first + u, to)
    }

    /// Counts the units of `[u0, u1)` in `state`.
    pub(crate) fn count(&self, u0: usize, u1: usize, state: PageState) -> u64 {
        (u0..u1).filter(|&u| self.state(u) == state).count() as u64
    }

    /// The part `[off, off + len)` (byte offsets from `host`, unit-aligned),
    /// sharing the states.
    fn part(&self, off: u64, len: u64) -> Self {
        debug_assert!(
            off.is_multiple_of(self.unit) && len.is_multiple_of(self.unit) && off + len <= self.len
        );
        Self {
            host: self.host + off,
            len,
            image: self.image + off,
            unit: self.unit,
            states: Arc::clone(&self.states),
            first: self.first + (off / self.unit) as usize,
        }
    }

    /// A copy with its own state array (for a forked child).
    fn deep_copy(&self) -> Self {
        let states = Arc::new(StateArray::from_states(
            (0..self.units()).map(|u| self.state(u)),
        ));
        Self {
            states,
            first: 0,
            ..self.clone()
        }
    }

    /// Rounds a host address inside (or at the edges of) this segment down
    /// to a unit boundary.
    fn round_down(&self, addr: u64) -> u64 {
        self.host + (addr - self.host) / self.unit * self.unit
    }

    /// Rounds a host address up to a unit boundary (capped at the end).
    fn round_up(&self, addr: u64) -> u64 {
        (self.host + (addr - self.host).div_ceil(self.unit) * self.unit).min(self.end())
    }
}

/// Spare segment slots a table keeps (each event splits at most two).
const SPARE_SEGMENTS: usize = 16;

/// The segments of one address space (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Table {
    by_host: Vec<Segment>,
    by_image: Vec<u32>,
}

impl Table {
    /// A table of `segments` (host ranges must not overlap).
    pub(crate) fn new(mut segments: Vec<Segment>) -> Self {
        segments.retain(|s| s.len > 0);
        let mut t = Self {
            by_host: segments,
            by_image: Vec::new(),
        };
        t.top_up();
        t.reindex();
        t
    }

    /// All segments, by host address.
    pub(crate) fn segments(&self) -> &[Segment] {
        &self.by_host
    }

    /// The segment holding host address `addr`. O(log n), no allocation.
    pub(crate) fn find(&self, addr: u64) -> Option<&Segment> {
        let i = self.by_host.partition_point(|s| s.end() <= addr);
        self.by_host.get(i).filter(|s| s.host <= addr)
    }

    /// The segments serving image range `[start, end)`, each with the part of
    /// the range it serves (`(segment, image start, image end)`), in image
    /// order. No allocation.
    pub(crate) fn image_pieces(&self, start: u64, end: u64) -> ImagePieces<'_> {
        let i = self
            .by_image
            .partition_point(|&k| self.by_host[k as usize].image_end() <= start);
        ImagePieces {
            table: self,
            i,
            start,
            end,
        }
    }

    /// Makes sure an event can be applied without allocating (call after
    /// each event; allocates only when the spare room is used up).
    pub(crate) fn top_up(&mut self) {
        let want = self.by_host.len() + SPARE_SEGMENTS;
        if self.by_host.capacity() < want {
            self.by_host.reserve(want * 2 - self.by_host.len());
        }
        if self.by_image.capacity() < self.by_host.capacity() {
            self.by_image
                .reserve(self.by_host.capacity() - self.by_image.len());
        }
    }

    /// Sorts by host address and rebuilds the image index, in place.
    fn reindex(&mut self) {
        self.by_host.sort_unstable_by_key(|s| s.host);
        self.by_image.clear();
        self.by_image.extend(0..self.by_host.len() as u32);
        let segs = &self.by_host;
        self.by_image
            .sort_unstable_by_key(|&i| segs[i as usize].image);
    }

    /// Splits the segment that strictly contains host address `addr`
    /// (rounded down to its unit) in two.
    fn cut_at(&mut self, addr: u64) {
        if let Some(i) = self
            .by_host
            .iter()
            .position(|s| s.host < addr && addr < s.end())
        {
            let s = &self.by_host[i];
            let at = s.round_down(addr) - s.host;
            if at == 0 {
                return;
            }
            let (head, tail) = (s.part(0, at), s.part(at, s.len - at));
            self.by_host[i] = head;
            self.by_host.push(tail);
        }
    }

    /// Cuts host range `[start, end)` out (UNMAP), handing each part cut
    /// out to `dropped`. Partial units at the edges are cut out entirely
    /// (the kernel never unmaps part of a huge page; for base pages there
    /// are none).
    pub(crate) fn remove(&mut self, start: u64, end: u64, mut dropped: impl FnMut(Segment)) {
        let (start, end) = self.round_out(start, end);
        self.cut_at(start);
        self.cut_at(end);
        for s in self
            .by_host
            .extract_if(.., |s| s.host >= start && s.end() <= end)
        {
            dropped(s);
        }
        self.reindex();
    }

    /// `mremap` moved host range `[from, from + len)` to `to` (REMAP):
    /// whatever the table had at the destination is cut out (handed to
    /// `dropped`); the moved segments keep their image addresses and states.
    pub(crate) fn remap(&mut self, from: u64, to: u64, len: u64, mut dropped: impl FnMut(Segment)) {
        self.remove(to, to.saturating_add(len), &mut dropped);
        let end = from.saturating_add(len);
        self.cut_at(from);
        self.cut_at(end);
        for s in &mut self.by_host {
            if s.host >= from && s.end() <= end {
                s.host = s.host - from + to;
            }
        }
        self.reindex();
        if self.has_overlap() {
            // A destination overlapping the source is impossible for mremap
            // (EINVAL); keep the table consistent anyway.
            log::error!(
                "REMAP {from:#x} -> {to:#x} (+{len:#x}) made segments overlap; dropping them"
            );
            self.remove(to, to.saturating_add(len), dropped);
        }
    }

    /// A copy with its own states (for a forked child), and its number of
    /// `Snapshot` units.
    pub(crate) fn deep_copy(&self) -> (Self, u64) {
        let segments: Vec<Segment> = self.by_host.iter().map(Segment::deep_copy).collect();
        let snapshot = segments
            .iter()
            .map(|s| s.count(0, s.units(), PageState::Snapshot))
            .sum();
        (Self::new(segments), snapshot)
    }

    /// `[start, end)` widened to the unit boundaries of the segments at its
    /// edges.
    fn round_out(&self, start: u64, end: u64) -> (u64, u64) {
        let start = self.find(start).map_or(start, |s| s.round_down(start));
        let end = match end.checked_sub(1).and_then(|last| self.find(last)) {
            Some(s) => s.round_up(end),
            None => end,
        };
        (start, end)
    }

    fn has_overlap(&self) -> bool {
        self.by_host.windows(2).any(|w| w[0].end() > w[1].host)
    }
}

/// Iterator of [`Table::image_pieces`].
#[derive(Debug)]
pub(crate) struct ImagePieces<'a> {
    table: &'a Table,
    i: usize,
    start: u64,
    end: u64,
}

impl<'a> Iterator for ImagePieces<'a> {
    type Item = (&'a Segment, u64, u64);

    fn next(&mut self) -> Option<Self::Item> {
        let k = *self.table.by_image.get(self.i)?;
        let s = &self.table.by_host[k as usize];
        if s.image >= self.end {
            return None;
        }
        self.i += 1;
        Some((s, s.image.max(self.start), s.image_end().min(self.end)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = 4096;

    fn seg(host: u64, image: u64, pages: usize) -> Segment {
        let states = Arc::new(StateArray::from_states((0..pages).map(|i| {
            if i % 2 == 0 {
                PageState::Snapshot
            } else {
                PageState::Zero
            }
        })));
        Segment::new(host, image, P, states)
    }

    fn layout(t: &Table) -> Vec<(u64, u64, u64)> {
        t.segments()
            .iter()
            .map(|s| (s.host, s.len, s.image))
            .collect()
    }

    fn layout_of(v: &[Segment]) -> Vec<(u64, u64, u64)> {
        v.iter().map(|s| (s.host, s.len, s.image)).collect()
    }

    #[test]
    fn find_and_image_pieces() {
        let t = Table::new(vec![seg(0x10000, 0x0, 4), seg(0x1000, 0x8000, 2)]);
        assert_eq!(t.find(0x1fff).map(|s| s.image), Some(0x8000));
        assert!(t.find(0x3000).is_none());
        assert_eq!(t.find(0x13fff).map(|s| s.unit_at(0x13fff)), Some(3));
        let pieces: Vec<_> = t
            .image_pieces(0x2000, 0x9000)
            .map(|(s, a, b)| (s.host, a, b))
            .collect();
        assert_eq!(
            pieces,
            vec![(0x10000, 0x2000, 0x4000), (0x1000, 0x8000, 0x9000)]
        );
    }

    #[test]
    fn unmap_cuts_out_a_middle_part_and_keeps_states() {
        let mut t = Table::new(vec![seg(0x10000, 0, 8)]);
        let mut removed = Vec::new();
        t.remove(0x12000, 0x14000, |s| removed.push(s));
        assert_eq!(
            layout(&t),
            vec![(0x10000, 0x2000, 0), (0x14000, 0x4000, 0x4000)]
        );
        assert_eq!(layout_of(&removed), vec![(0x12000, 0x2000, 0x2000)]);
        let tail = &t.segments()[1];
        assert_eq!(tail.state(0), PageState::Snapshot, "unit 4 of the original");
        assert_eq!(tail.state(1), PageState::Zero);
    }

    #[test]
    fn remap_moves_state_with_the_range() {
        let mut t = Table::new(vec![seg(0x10000, 0, 8), seg(0x40000, 0x9000, 2)]);
        let old = t.find(0x12000).expect("seg").clone();
        // Partial move of units 2..4 to 0x80000.
        let mut dropped = Vec::new();
        t.remap(0x12000, 0x80000, 0x2000, |s| dropped.push(s));
        assert!(dropped.is_empty());
        assert_eq!(
            layout(&t),
            vec![
                (0x10000, 0x2000, 0),
                (0x14000, 0x4000, 0x4000),
                (0x40000, 0x2000, 0x9000),
                (0x80000, 0x2000, 0x2000),
            ]
        );
        let moved = t.find(0x80000).expect("moved");
        assert_eq!(moved.state(0), PageState::Snapshot);
        moved.replace(0, PageState::Served);
        // Shared states: the segment as it was sees the change (same pages).
        assert_eq!(old.state(2), PageState::Served);

        // Onto an existing segment: its old content is dropped.
        t.remap(0x80000, 0x40000, 0x2000, |s| dropped.push(s));
        assert_eq!(layout_of(&dropped), vec![(0x40000, 0x2000, 0x9000)]);
        assert_eq!(t.find(0x40000).map(|s| s.image), Some(0x2000));
        assert!(t.find(0x80000).is_none());
    }

    #[test]
    fn events_within_the_spare_room_do_not_allocate() {
        let mut t = Table::new(vec![seg(0x10000, 0, 64)]);
        let (cap, icap) = (t.by_host.capacity(), t.by_image.capacity());
        for k in 0..4u64 {
            t.remove(0x10000 + (2 + 4 * k) * P, 0x10000 + (3 + 4 * k) * P, drop);
            t.remap(0x10000 + (4 * k) * P, 0x100000 + k * P, P, drop);
        }
        assert_eq!((t.by_host.capacity(), t.by_image.capacity()), (cap, icap));
        t.top_up();
        assert!(t.by_host.capacity() >= t.by_host.len() + SPARE_SEGMENTS);
    }

    #[test]
    fn fork_copy_is_independent() {
        let t = Table::new(vec![seg(0x10000, 0, 4)]);
        let (child, snapshot) = t.deep_copy();
        assert_eq!(snapshot, 2);
        child
            .find(0x10000)
            .expect("seg")
            .replace(0, PageState::Served);
        assert_eq!(t.find(0x10000).expect("seg").state(0), PageState::Snapshot);
    }

    #[test]
    fn huge_units_round_outward_on_unmap() {
        let states = Arc::new(StateArray::from_states([PageState::Snapshot; 4]));
        let mut t = Table::new(vec![Segment::new(0x40_0000, 0, 0x20_0000, states)]);
        let mut removed = 0;
        t.remove(0x40_1000, 0x60_1000, |s| removed += s.len);
        assert_eq!(removed, 0x40_0000);
        assert_eq!(layout(&t), vec![(0x80_0000, 0x40_0000, 0x40_0000)]);
    }
}
