//! Helpers shared by the integration tests: a model of memory (regions of
//! pages), written through `ImageWriter` and checked byte for byte through
//! `Image`.

#![allow(dead_code, unreachable_pub)]

use std::path::Path;

use snapshot_format::{
    Compression, Image, ImageWriter, PageSource, RegionInfo, WriteSummary, WriterOptions,
};

pub const PAGE: usize = 4096;

/// What one page of the model holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageKind {
    /// Never written (a gap): reads as zero.
    Skip,
    /// Written, all zero.
    Zero,
    /// Pseudo-random (incompressible) bytes from a seed.
    Random(u64),
    /// Compressible bytes from a seed.
    Text(u64),
    /// One of a few fixed patterns (duplicates across the image).
    Pattern(u8),
}

impl PageKind {
    pub fn bytes(self) -> Vec<u8> {
        let mut out = vec![0u8; PAGE];
        match self {
            Self::Skip | Self::Zero => {}
            Self::Random(seed) => {
                let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                for b in &mut out {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x as u8;
                }
            }
            Self::Text(seed) => {
                for (i, b) in out.iter_mut().enumerate() {
                    *b = b"lazarus restores memory lazily "[(i + seed as usize) % 31];
                }
                out[0] = seed as u8 | 1;
            }
            Self::Pattern(p) => {
                for (i, b) in out.iter_mut().enumerate() {
                    *b = (i as u8).wrapping_mul(p | 1).wrapping_add(p);
                }
                out[7] = 0xaa;
            }
        }
        out
    }
}

/// A region of the model: start address and its pages.
#[derive(Debug, Clone)]
pub struct ModelRegion {
    pub start: u64,
    pub pages: Vec<PageKind>,
}

impl ModelRegion {
    pub fn len(&self) -> u64 {
        (self.pages.len() * PAGE) as u64
    }
}

/// Lays regions out at increasing addresses with a gap between them.
pub fn layout(regions: Vec<Vec<PageKind>>) -> Vec<ModelRegion> {
    let mut addr = 0x1000_0000u64;
    regions
        .into_iter()
        .map(|pages| {
            let r = ModelRegion { start: addr, pages };
            addr += r.len() + 3 * PAGE as u64;
            r
        })
        .collect()
}

/// Writes the model, grouping consecutive written pages into one
/// `write_pages` call (as capture does).
pub fn write_model(path: &Path, model: &[ModelRegion], opts: WriterOptions) -> WriteSummary {
    let mut w = ImageWriter::create(path, opts).expect("create writer");
    for r in model {
        w.begin_region(RegionInfo::raw_file(r.start, r.len()))
            .unwrap();
        let mut i = 0;
        while i < r.pages.len() {
            if r.pages[i] == PageKind::Skip {
                i += 1;
                continue;
            }
            let mut buf = Vec::new();
            let first = i;
            while i < r.pages.len() && r.pages[i] != PageKind::Skip && buf.len() < 16 * PAGE {
                buf.extend_from_slice(&r.pages[i].bytes());
                i += 1;
            }
            w.write_pages(r.start + (first * PAGE) as u64, &buf)
                .unwrap();
        }
    }
    w.finish().expect("finish")
}

/// Checks every page of the model through `locate`, `RangeReader` and
/// `chunk_uses`.
pub fn check_model(image: &Image, model: &[ModelRegion]) {
    assert_eq!(image.regions().len(), model.len());
    let mut reader = image.range_reader().unwrap();
    let mut buf = vec![0u8; PAGE];
    for (ri, r) in model.iter().enumerate() {
        let info = &image.regions()[ri];
        assert_eq!((info.start, info.len), (r.start, r.len()));
        // Extents tile the region.
        let ext = image.region_extents(ri);
        assert_eq!(ext.first().unwrap().start, r.start);
        for w in ext.windows(2) {
            assert_eq!(w[0].end(), w[1].start);
        }
        assert_eq!(ext.last().unwrap().end(), r.start + r.len());
        for (pi, kind) in r.pages.iter().enumerate() {
            let addr = r.start + (pi * PAGE) as u64;
            let loc = image.locate(addr).expect("page is in a region");
            let expect = kind.bytes();
            let zero = expect.iter().all(|&b| b == 0);
            assert_eq!(
                matches!(loc.source, PageSource::Zero),
                zero,
                "page {addr:#x} ({kind:?}): {loc:?}"
            );
            reader.read(addr, &mut buf).unwrap();
            assert!(buf == expect, "page {addr:#x} ({kind:?}) differs");
        }
    }
    // Whole-region reads across extent boundaries.
    for r in model {
        let mut all = vec![0u8; r.len() as usize];
        reader.read(r.start, &mut all).unwrap();
        for (pi, kind) in r.pages.iter().enumerate() {
            assert!(all[pi * PAGE..(pi + 1) * PAGE] == kind.bytes()[..]);
        }
    }
    // Every chunk use maps to the right bytes.
    let mut dec = snapshot_format::ChunkDecoder::new().unwrap();
    let mut chunk = vec![0u8; image.max_chunk_raw_len()];
    for id in 0..image.chunks().len() as u32 {
        let id = snapshot_format::ChunkId(id);
        let n = image.decode_chunk(id, &mut dec, &mut chunk).unwrap();
        for u in image.chunk_uses(id) {
            let mut mem = vec![0u8; u.len as usize];
            reader.read(u.addr, &mut mem).unwrap();
            let off = u.offset as usize;
            assert!(off + mem.len() <= n);
            assert!(mem == chunk[off..off + mem.len()]);
        }
    }
    // Outside every region.
    assert!(image.locate(0).is_none());
    assert!(image.locate(u64::MAX).is_none());
}

/// Options with a given chunk size (in pages), workers and compression.
pub fn opts(chunk_pages: usize, workers: usize, compression: Compression) -> WriterOptions {
    WriterOptions {
        chunk_size: chunk_pages * PAGE,
        workers,
        compression,
        ..Default::default()
    }
}

/// A small valid image with compressible, random and zero pages; returns
/// its bytes.
pub fn sample_image(dir: &Path, compression: Compression) -> Vec<u8> {
    let model = layout(vec![
        (0..24)
            .map(|i| match i % 4 {
                0 => PageKind::Text(i),
                1 => PageKind::Random(i),
                2 => PageKind::Zero,
                _ => PageKind::Pattern(i as u8),
            })
            .collect(),
        vec![PageKind::Skip, PageKind::Random(99), PageKind::Skip],
    ]);
    let path = dir.join("sample.lzr");
    write_model(&path, &model, opts(4, 0, compression));
    std::fs::read(&path).unwrap()
}
