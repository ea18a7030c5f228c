//! Generated test images, with the bytes they hold, and raw access to
//! restored memory.
//!
//! Shared by several test crates, each of which uses part of it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use snapshot_format::{ChunkId, Image, ImageWriter, PageSource, RegionInfo, WriterOptions};

/// Page size.
pub(crate) const PAGE: usize = 4096;

/// One region of a generated image.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RegionSpec {
    /// Recorded address.
    pub(crate) start: u64,
    /// Pages.
    pub(crate) pages: usize,
}

/// A generated image on disk and the exact bytes of each region.
#[derive(Debug)]
pub(crate) struct TestImage {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) path: PathBuf,
    pub(crate) image: Arc<Image>,
    /// Bytes of each region, in region order.
    pub(crate) bytes: Vec<Vec<u8>>,
    pub(crate) chunk_size: usize,
}

/// splitmix64.
pub(crate) fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Content of page `p` of region `r`: a mix of zero pages, pages repeating
/// a common pattern (so whole chunks deduplicate) and random pages.
fn fill_page(seed: u64, r: usize, p: usize, chunk_pages: usize, out: &mut [u8]) {
    let window = p / chunk_pages;
    let kind = mix(seed ^ ((r as u64) << 32) ^ window as u64) % 8;
    match kind {
        // Whole zero windows, and scattered zero pages below.
        0 => out.fill(0),
        // Identical windows (dedup): content depends only on the page's
        // position in its window.
        1 => {
            let k = (p % chunk_pages) as u64;
            for (i, w) in out.chunks_exact_mut(8).enumerate() {
                w.copy_from_slice(&mix(seed ^ 0xd0d0 ^ (k << 20) ^ i as u64).to_le_bytes());
            }
        }
        _ => {
            if mix(seed ^ 0x2e40 ^ ((r as u64) << 40) ^ p as u64).is_multiple_of(6) {
                out.fill(0);
                return;
            }
            for (i, w) in out.chunks_exact_mut(8).enumerate() {
                let v = mix(seed ^ ((r as u64) << 48) ^ ((p as u64) << 16) ^ i as u64);
                w.copy_from_slice(&v.to_le_bytes());
            }
        }
    }
}

impl TestImage {
    /// Writes an image of `regions` with `chunk_size`-byte chunks.
    pub(crate) fn build(regions: &[RegionSpec], chunk_size: usize, seed: u64) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("test.lzr");
        let opts = WriterOptions {
            chunk_size,
            ..WriterOptions::default()
        };
        let mut w = ImageWriter::create(&path, opts).expect("create image");
        let chunk_pages = chunk_size / PAGE;
        let mut bytes = Vec::new();
        for (r, spec) in regions.iter().enumerate() {
            w.begin_region(RegionInfo::raw_file(spec.start, (spec.pages * PAGE) as u64))
                .expect("begin region");
            let mut data = vec![0u8; spec.pages * PAGE];
            for (p, page) in data.chunks_exact_mut(PAGE).enumerate() {
                fill_page(seed, r, p, chunk_pages, page);
            }
            w.write_pages(spec.start, &data).expect("write pages");
            bytes.push(data);
        }
        w.finish().expect("finish image");
        let image = Arc::new(Image::open(&path).expect("open image"));
        Self {
            dir,
            path,
            image,
            bytes,
            chunk_size,
        }
    }

    /// Reopens the image file (after it was modified).
    pub(crate) fn reopen(&mut self) {
        self.image = Arc::new(Image::open(&self.path).expect("reopen image"));
    }

    /// The chunk holding image address `addr`, if any.
    pub(crate) fn chunk_at(&self, addr: u64) -> Option<ChunkId> {
        match self.image.locate(addr)?.source {
            PageSource::Chunk { chunk, .. } => Some(chunk),
            _ => None,
        }
    }

    /// Flips a byte in the stored frame of `chunk` (the image must be
    /// reopened to see it).
    pub(crate) fn corrupt_chunk(&mut self, chunk: ChunkId) {
        let info = *self.image.chunk(chunk).expect("chunk exists");
        let mut file = std::fs::read(&self.path).expect("read image");
        let at = info.entry.offset as usize + info.entry.stored_len as usize / 2;
        file[at] ^= 0x5a;
        std::fs::write(&self.path, &file).expect("write image");
        self.reopen();
    }
}

/// Copies `len` bytes at raw address `addr` (faulting pages in as needed).
pub(crate) fn read_mem(addr: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    // SAFETY: the caller passes a range of a live restored mapping, readable;
    // it is raw memory (filled by the kernel behind Rust's back), read here
    // through a raw pointer only.
    unsafe { std::ptr::copy_nonoverlapping(addr as *const u8, out.as_mut_ptr(), len) };
    out
}

/// Whether the `want.len()` bytes at `addr` equal `want`, without allocating
/// (usable in a forked child).
pub(crate) fn mem_equals(addr: u64, want: &[u8]) -> bool {
    (0..want.len()).all(|i| {
        // SAFETY: as for `read_mem`: a live readable range; volatile because
        // the kernel fills it outside Rust's view.
        unsafe { std::ptr::read_volatile((addr as usize + i) as *const u8) == want[i] }
    })
}

/// Whether the `len` bytes at `addr` are zero (no allocation).
pub(crate) fn mem_is_zero(addr: u64, len: usize) -> bool {
    (0..len).all(|i| {
        // SAFETY: as for `mem_equals`.
        unsafe { std::ptr::read_volatile((addr as usize + i) as *const u8) == 0 }
    })
}

/// Writes `data` at raw address `addr`.
pub(crate) fn write_mem(addr: u64, data: &[u8]) {
    // SAFETY: the caller passes a range of a live restored writable mapping
    // that no Rust reference covers.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), addr as *mut u8, data.len()) };
}

/// Writes one byte at `addr` (no allocation).
pub(crate) fn write_byte(addr: u64, b: u8) {
    // SAFETY: as for `write_mem`.
    unsafe { std::ptr::write_volatile(addr as *mut u8, b) };
}

/// Number of open file descriptors of this process.
pub(crate) fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .count()
}

/// Number of threads of this process.
pub(crate) fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("read /proc/self/task")
        .count()
}
