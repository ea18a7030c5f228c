//! Micro-benchmarks of the restore agent: the chunk cache hit path, and the
//! fault round trip per fault policy (a thread of this process touches a page
//! of an unserved chunk; the server thread decodes the chunk and copies the
//! page, or the whole chunk, and wakes it).
//!
//! `cargo bench -p restore-agent --bench agent -- --warm-up-time 1 --measurement-time 2`
//!
//! The harness suite (`cargo bench -p lazarus-bench --bench agent`) measures
//! the same paths at scale, side by side, with ratios against DESIGN.md's
//! machine facts.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use restore_agent::cache::{CacheOptions, ChunkCache, Scratch, Use};
use restore_agent::stats::Counters;
use restore_agent::{
    FaultPolicy, Placement, RestoreOptions, ServerOptions, WorkingSetOptions, restore_into,
};
use snapshot_format::{ChunkId, Image, ImageWriter, RegionInfo, WriterOptions};

const CHUNK: usize = 64 * 1024;
const CHUNKS: usize = 512;

/// A 32 MiB image of pseudo-random pages, 64 KiB chunks.
fn image(dir: &std::path::Path) -> Arc<Image> {
    let path = dir.join("bench.lzr");
    let mut w = ImageWriter::create(
        &path,
        WriterOptions {
            chunk_size: CHUNK,
            workers: 2,
            ..WriterOptions::default()
        },
    )
    .expect("create image");
    let len = CHUNK * CHUNKS;
    w.begin_region(RegionInfo::raw_file(0, len as u64))
        .expect("region");
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let data: Vec<u8> = (0..len / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Half the bits fixed: compresses about 2:1, like text.
            (x & 0x0f0f_0f0f_0f0f_0f0f | 0x6060_6060_6060_6060).to_le_bytes()
        })
        .collect();
    w.write_pages(0, &data).expect("pages");
    w.finish().expect("finish");
    Arc::new(Image::open(&path).expect("open"))
}

fn cache_hit(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = image(dir.path());
    let cache = ChunkCache::new(Arc::clone(&img), CacheOptions::default());
    let mut scratch = Scratch::new(&img).expect("scratch");
    let counters = Counters::default();
    drop(cache.get(ChunkId(7), &mut scratch, Use::Fault, &counters));
    c.bench_function("cache/hit", |b| {
        b.iter(|| {
            let chunk = cache
                .get(black_box(ChunkId(7)), &mut scratch, Use::Fault, &counters)
                .expect("good chunk");
            black_box(chunk[0]);
        });
    });
}

/// Reads one byte (faulting the page in).
fn touch(addr: u64) -> u8 {
    // SAFETY: `addr` is inside a live restored region of this process.
    unsafe { std::ptr::read_volatile(addr as *const u8) }
}

fn fault_round_trip(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = image(dir.path());
    let mut g = c.benchmark_group("fault/cold-chunk");
    for policy in [FaultPolicy::Page, FaultPolicy::Chunk] {
        g.bench_function(format!("{policy:?}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let opts = RestoreOptions {
                        placement: Placement::Anywhere,
                        server: ServerOptions {
                            fault_policy: policy,
                            prefetch_workers: 0,
                            ..ServerOptions::default()
                        },
                        working_set: WorkingSetOptions::NONE,
                        ..RestoreOptions::default()
                    };
                    let h = restore_into(Arc::clone(&img), opts).expect("restore");
                    let base = h.regions()[0].addr;
                    let n = left.min(CHUNKS as u64);
                    let start = Instant::now();
                    for k in 0..n {
                        black_box(touch(base + k * CHUNK as u64));
                    }
                    total += start.elapsed();
                    left -= n;
                    drop(h);
                }
                total
            });
        });
    }
    g.finish();
}

criterion_group!(benches, cache_hit, fault_round_trip);
criterion_main!(benches);
