//! `read_page`: the latency of reading one random 4 KiB page through the
//! reader, per chunk size, as a fault handler does it:
//!
//! - `cold`: [`Image::locate`], then [`Image::decode_chunk`] of the page's
//!   chunk into the caller's buffer (zstd + xxh3-128 check), then a copy of
//!   the page out of it: a fault on a chunk not decoded yet;
//! - `cached`: [`Image::locate`], then a copy of the page out of the chunk
//!   already decoded (a flat cache indexed by [`ChunkId`]): a fault on a
//!   chunk a previous fault or the prefetcher decoded.
//!
//! The image is the whole memory sample (see [`crate::sample`]) written at
//! the chunk size measured and the default level, memory-mapped from a
//! temporary file (its pages are in the page cache after the warm-up: "cold"
//! means not decoded, not read from disk). Pages are drawn at random
//! (seeded) among the data pages; `cached` uses those whose chunks fit a
//! 64 MiB cache. Each iteration reads one page. Neither includes the
//! userfaultfd round trip or `UFFDIO_COPY` (DESIGN.md: ~13 µs and
//! ~2.9 GB/s per thread).

use std::cell::OnceCell;
use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion};
use fixtures::pattern::Rng;
use snapshot_format::{ChunkDecoder, ChunkId, Image, PageSource, WriterOptions};
use tempfile::TempDir;

use crate::codec::{CHUNK_SIZES, size_label};
use crate::sample::{self, PAGE, Source};

/// Random pages drawn.
const PAGES: usize = 4096;

/// Bytes of decoded chunks the `cached` benchmark keeps.
const CACHE_BUDGET: usize = 64 << 20;

/// An image of the sample at one chunk size, and the pages to read.
struct Setup {
    _dir: TempDir,
    image: Image,
    /// Random data pages.
    cold: Vec<u64>,
    /// Random data pages whose chunks are in `cache`.
    cached: Vec<u64>,
    cache: Vec<Option<Box<[u8]>>>,
}

impl Setup {
    fn new(chunk_size: usize) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("read.lzr");
        let sources: Vec<&Source> = sample::sample().sources.iter().collect();
        sample::write_image(
            &sources,
            &path,
            &WriterOptions {
                chunk_size,
                workers: 2,
                ..WriterOptions::default()
            },
        )
        .expect("image written");
        let image = Image::open(&path).expect("image opens");

        let data_pages: Vec<u64> = image
            .extents()
            .iter()
            .filter(|e| matches!(e.source, PageSource::Chunk { .. }))
            .flat_map(|e| (e.start..e.end()).step_by(PAGE))
            .collect();
        assert!(!data_pages.is_empty(), "the sample has data pages");
        let mut rng = Rng::new(0x7ead);
        let cold: Vec<u64> = (0..PAGES)
            .map(|_| data_pages[rng.below(data_pages.len() as u64) as usize])
            .collect();

        let mut cache: Vec<Option<Box<[u8]>>> = vec![None; image.chunks().len()];
        let mut cached = Vec::new();
        let mut cached_bytes = 0;
        let mut dec = ChunkDecoder::new().expect("zstd context");
        for &addr in &cold {
            let chunk = chunk_of(&image, addr).0;
            let slot = &mut cache[chunk.0 as usize];
            if slot.is_none() {
                let len = image.chunks()[chunk.0 as usize].entry.raw_len as usize;
                if cached_bytes + len > CACHE_BUDGET {
                    continue;
                }
                let mut buf = vec![0u8; len].into_boxed_slice();
                image
                    .decode_chunk(chunk, &mut dec, &mut buf)
                    .expect("sound chunk");
                cached_bytes += len;
                *slot = Some(buf);
            }
            cached.push(addr);
        }
        Self {
            _dir: dir,
            image,
            cold,
            cached,
            cache,
        }
    }
}

/// The chunk holding the page at `addr`, and the page's offset in it.
fn chunk_of(image: &Image, addr: u64) -> (ChunkId, usize) {
    match image.locate(addr).map(|l| l.source) {
        Some(PageSource::Chunk { chunk, offset }) => (chunk, offset as usize),
        other => panic!("page {addr:#x} is not a data page: {other:?}"),
    }
}

pub(crate) fn read(c: &mut Criterion) {
    let mut g = c.benchmark_group("read_page");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(1));
    for size in CHUNK_SIZES {
        let setup: OnceCell<Setup> = OnceCell::new();
        let mut page = [0u8; PAGE];

        let mut dec = ChunkDecoder::new().expect("zstd context");
        let mut buf = vec![0u8; size];
        let mut next = 0usize;
        g.bench_function(BenchmarkId::new("cold", size_label(size)), |b| {
            let s = setup.get_or_init(|| Setup::new(size));
            b.iter(|| {
                let addr = s.cold[next % s.cold.len()];
                next += 1;
                let (chunk, offset) = chunk_of(&s.image, addr);
                s.image
                    .decode_chunk(chunk, &mut dec, &mut buf)
                    .expect("sound chunk");
                page.copy_from_slice(&buf[offset..offset + PAGE]);
                black_box(&page);
            });
        });

        let mut next = 0usize;
        g.bench_function(BenchmarkId::new("cached", size_label(size)), |b| {
            let s = setup.get_or_init(|| Setup::new(size));
            b.iter(|| {
                let addr = s.cached[next % s.cached.len()];
                next += 1;
                let (chunk, offset) = chunk_of(&s.image, addr);
                let data = s.cache[chunk.0 as usize]
                    .as_deref()
                    .expect("chunk in the cache");
                page.copy_from_slice(&data[offset..offset + PAGE]);
                black_box(&page);
            });
        });
    }
    g.finish();
}
