//! `/proc/PID/pagemap`: which pages of a mapping hold something worth reading.
//!
//! One little-endian `u64` per virtual page, at file offset `(addr / 4096) * 8`
//! (kernel `Documentation/admin-guide/mm/pagemap.rst`):
//!
//! ```text
//! bit 63     present in RAM
//! bit 62     swapped out (or another swap-type entry: migration, ...)
//! bit 61     "file-page or shared-anon": the page is not a private anonymous page
//! bit 58     a guard region (MADV_GUARD_INSTALL marker)
//! bit 56     mapped exclusively
//! bit 55     soft-dirty
//! bits 0-54  PFN if present (zero without CAP_SYS_ADMIN), swap type/offset if swapped
//! ```
//!
//! The rules capture applies:
//!
//! - **private anonymous memory**: a page is read iff it is present or swapped. A
//!   page that is neither was never touched (or was dropped with `MADV_DONTNEED`):
//!   it reads as zero, and reading it would only map the zero page into the process.
//!   Pages mapped to the shared zero page are present and are read (the writer drops
//!   them as zero pages).
//! - **private file mappings**: a page is read iff it is present or swapped **and bit
//!   61 is clear**. The kernel sets bit 61 when the page table maps a page that is not
//!   anonymous (`!PageAnon`: a page-cache page of the file, unmodified); a page copied on
//!   write is an anonymous page, so bit 61 is clear. Swap entries are only ever
//!   anonymous pages (file pages are dropped, not swapped), so a swapped page of a
//!   private file mapping is a copied page too (a migration entry of a file page
//!   reports bit 61 as well). Every other page — mapped from the file or never touched
//!   — is recorded as coming from the file.
//! - shared mappings are not decided from pagemap: a shared page absent from this
//!   process's page table may still hold data in the shared object (see `classify`).
//!
//! Entries are read [`BATCH_PAGES`] at a time (512 KiB of entries, 256 MiB of address
//! space per `pread`), and mappings whose smaps `Rss` and `Swap` are both zero are not
//! scanned at all (a 1 TiB `PROT_NONE` reservation costs nothing). Two facts make that
//! shortcut exact: the shared zero page is not counted in `Rss` (and reads as zero,
//! which is what an unscanned mapping records), and hugetlb pages are not counted in it
//! either, so hugetlb mappings are always scanned.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Bit 63: present.
pub(crate) const PM_PRESENT: u64 = 1 << 63;
/// Bit 62: swapped.
pub(crate) const PM_SWAP: u64 = 1 << 62;
/// Bit 61: file page or shared anonymous page.
pub(crate) const PM_FILE: u64 = 1 << 61;

/// Page size the entries describe (x86_64 base pages).
pub(crate) const PAGE: u64 = 4096;

/// Entries read per `pread`.
pub(crate) const BATCH_PAGES: usize = 64 * 1024;

/// Which pages of a mapping are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rule {
    /// Present or swapped.
    Populated,
    /// Present or swapped, and anonymous (bit 61 clear): copied on write.
    CopiedOnWrite,
}

impl Rule {
    /// Whether the page with entry `entry` is read.
    pub(crate) fn wants(self, entry: u64) -> bool {
        let populated = entry & (PM_PRESENT | PM_SWAP) != 0;
        match self {
            Rule::Populated => populated,
            Rule::CopiedOnWrite => populated && entry & PM_FILE == 0,
        }
    }
}

/// An open pagemap with a reusable entry buffer.
#[derive(Debug)]
pub(crate) struct Pagemap {
    file: File,
    entries: Vec<u64>,
    bytes: Vec<u8>,
}

impl Pagemap {
    /// Opens the pagemap at `path` (`/proc/PID/pagemap` or a task's).
    pub(crate) fn open(path: &Path) -> io::Result<Self> {
        Ok(Self {
            file: File::open(path)?,
            entries: Vec::with_capacity(BATCH_PAGES),
            bytes: vec![0; BATCH_PAGES * 8],
        })
    }

    /// The entries of the pages from `addr` (page aligned), at most [`BATCH_PAGES`] and
    /// at most up to `end`.
    pub(crate) fn entries(&mut self, addr: u64, end: u64) -> io::Result<&[u64]> {
        let pages = usize::try_from((end.saturating_sub(addr)) / PAGE)
            .unwrap_or(usize::MAX)
            .min(BATCH_PAGES);
        let want = pages * 8;
        let buf = &mut self.bytes[..want];
        let offset = addr / PAGE * 8;
        let mut got = 0;
        while got < want {
            match self.file.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "pagemap ended early",
                    ));
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.entries.clear();
        self.entries.extend(
            buf.chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().expect("8-byte chunks"))),
        );
        Ok(&self.entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_follow_the_documented_bits() {
        let absent = 0;
        let zero_page = PM_PRESENT; // present, anonymous (the zero page has no struct page)
        let file_page = PM_PRESENT | PM_FILE;
        let swapped = PM_SWAP | 0x1234;
        let migrating_file = PM_SWAP | PM_FILE;
        assert!(!Rule::Populated.wants(absent));
        assert!(Rule::Populated.wants(zero_page));
        assert!(Rule::Populated.wants(swapped));
        assert!(!Rule::CopiedOnWrite.wants(absent));
        assert!(!Rule::CopiedOnWrite.wants(file_page));
        assert!(!Rule::CopiedOnWrite.wants(migrating_file));
        assert!(Rule::CopiedOnWrite.wants(zero_page));
        assert!(Rule::CopiedOnWrite.wants(swapped));
    }

    #[test]
    fn reads_our_own_entries() {
        // A page of ours we just wrote is present; one we never touched is not.
        let mut v = vec![0u8; 3 * PAGE as usize];
        let base = (v.as_ptr() as u64).div_ceil(PAGE) * PAGE;
        let first = (base - v.as_ptr() as u64) as usize;
        v[first] = 1;
        let mut map = Pagemap::open(Path::new("/proc/self/pagemap")).unwrap();
        let e = map.entries(base, base + PAGE).unwrap();
        assert_eq!(e.len(), 1);
        assert!(Rule::Populated.wants(e[0]));
        std::hint::black_box(&v);
    }
}
