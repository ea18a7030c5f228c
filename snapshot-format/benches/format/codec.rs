//! `codec_compress` / `codec_decode`: one thread's compress and decode
//! throughput per chunk size (16 KiB to 2 MiB) and zstd level (-1, 1, 3).
//!
//! Content:
//! - `real`: up to 8 MiB of non-zero pages from each source of the memory
//!   sample (see [`crate::sample`]), taken as whole 2 MiB-aligned address
//!   windows spread evenly over each process, so every chunk size cuts the
//!   very same bytes;
//! - `text`: 8 MiB of the fixtures' `Text` pages (four random bits per byte:
//!   the synthetic "compressible" pattern).
//!
//! Chunks are cut as [`ImageWriter`](snapshot_format::ImageWriter) cuts them:
//! the non-zero pages of one aligned window of `chunk_size` bytes of address
//! space. `compress` runs a reused [`ChunkEncoder`] over them (no hashing,
//! dedup or I/O); `decode` runs [`ImageFile::decode_chunk`] over every chunk
//! of an image written from them — zstd decompression into a caller buffer
//! plus the xxh3-128 check, the work a cold fault does. Times are per MiB
//! of raw bytes (see [`per_mib`]), so criterion's throughput is raw bytes
//! per second.
//!
//! After the group, the compression ratio (raw bytes / stored bytes, a chunk
//! that does not shrink stored raw) of every combination that ran is printed,
//! per source.

use std::cell::{OnceCell, RefCell};
use std::collections::{BTreeMap, HashSet};
use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use fixtures::pattern::PageKind;
use snapshot_format::{ChunkDecoder, ChunkEncoder, Compression, ImageFile, WriterOptions, is_zero};

use crate::per_mib;
use crate::sample::{self, DataRun, MIB, PAGE, SampleRegion, Source, measuring};

/// Chunk sizes measured.
pub(crate) const CHUNK_SIZES: [usize; 8] = [
    16 << 10,
    32 << 10,
    64 << 10,
    128 << 10,
    256 << 10,
    512 << 10,
    1 << 20,
    2 << 20,
];

/// zstd levels measured.
pub(crate) const LEVELS: [i32; 3] = [-1, 1, 3];

/// The address windows the `real` subset is made of (the largest chunk).
const SUBSET_WINDOW: u64 = 2 << 20;

/// Bytes of pages per source in the `real` subset, and of `text`.
fn budget() -> u64 {
    if measuring() { 8 << 20 } else { 1 << 20 }
}

/// `16K`, `2M`.
pub(crate) fn size_label(size: usize) -> String {
    if size >= 1 << 20 {
        format!("{}M", size >> 20)
    } else {
        format!("{}K", size >> 10)
    }
}

/// One chunk as the writer would cut it, and the source it comes from.
struct Chunk {
    source: usize,
    bytes: Vec<u8>,
}

/// A content and what is derived from it, built on first use (criterion
/// runs the group functions even for benchmarks it then filters out).
struct Content {
    name: &'static str,
    make: fn() -> Vec<Source>,
    sources: OnceCell<Vec<Source>>,
    chunks: [OnceCell<Vec<Chunk>>; CHUNK_SIZES.len()],
}

impl Content {
    fn new(name: &'static str, make: fn() -> Vec<Source>) -> Self {
        Self {
            name,
            make,
            sources: OnceCell::new(),
            chunks: Default::default(),
        }
    }

    fn sources(&self) -> &[Source] {
        self.sources.get_or_init(self.make)
    }

    fn chunks(&self, size_index: usize) -> &[Chunk] {
        self.chunks[size_index].get_or_init(|| chunks_of(self.sources(), CHUNK_SIZES[size_index]))
    }
}

/// The `real` content: whole [`SUBSET_WINDOW`]s spread evenly over each
/// source, about [`budget`] bytes per source.
fn real_subset() -> Vec<Source> {
    let budget = budget();
    sample::sample()
        .sources
        .iter()
        .map(|s| {
            let mut windows: BTreeMap<u64, u64> = BTreeMap::new();
            for run in s.regions.iter().flat_map(|r| &r.runs) {
                for (i, _) in run.bytes.chunks_exact(PAGE).enumerate() {
                    let addr = run.addr + (i * PAGE) as u64;
                    *windows.entry(addr / SUBSET_WINDOW).or_default() += PAGE as u64;
                }
            }
            let total: u64 = windows.values().sum();
            let n = windows.len() as u64;
            // Take `m` of the `n` windows, evenly spaced.
            let m = (n * budget).div_ceil(total.max(1)).clamp(1, n.max(1));
            let chosen: HashSet<u64> = windows
                .keys()
                .enumerate()
                .filter(|&(i, _)| (i as u64 + 1) * m / n > i as u64 * m / n)
                .map(|(_, &w)| w)
                .collect();
            Source {
                name: s.name,
                regions: s
                    .regions
                    .iter()
                    .map(|r| SampleRegion {
                        info: r.info.clone(),
                        runs: runs_within(&r.runs, &chosen),
                    })
                    .filter(|r| !r.runs.is_empty())
                    .collect(),
            }
        })
        .collect()
}

/// The pages of `runs` that lie in the `chosen` windows, as runs.
fn runs_within(runs: &[DataRun], chosen: &HashSet<u64>) -> Vec<DataRun> {
    let mut out: Vec<DataRun> = Vec::new();
    for run in runs {
        for (i, page) in run.bytes.chunks_exact(PAGE).enumerate() {
            let addr = run.addr + (i * PAGE) as u64;
            if !chosen.contains(&(addr / SUBSET_WINDOW)) {
                continue;
            }
            match out.last_mut() {
                Some(last) if last.addr + last.bytes.len() as u64 == addr => {
                    last.bytes.extend_from_slice(page);
                }
                _ => out.push(DataRun {
                    addr,
                    bytes: page.to_vec(),
                }),
            }
        }
    }
    out
}

fn text_content() -> Vec<Source> {
    vec![sample::flat_source(
        "text",
        sample::synthetic(PageKind::Text, budget() as usize),
    )]
}

/// The writer's chunking: the non-zero pages of each aligned window of
/// `size` bytes of address space.
fn chunks_of(sources: &[Source], size: usize) -> Vec<Chunk> {
    let mut out: Vec<Chunk> = Vec::new();
    for (si, s) in sources.iter().enumerate() {
        let mut window = None;
        for run in s.regions.iter().flat_map(|r| &r.runs) {
            for (i, page) in run.bytes.chunks_exact(PAGE).enumerate() {
                if is_zero(page) {
                    continue;
                }
                let w = (run.addr + (i * PAGE) as u64) / size as u64;
                if window != Some(w) {
                    window = Some(w);
                    out.push(Chunk {
                        source: si,
                        bytes: Vec::with_capacity(size),
                    });
                }
                out.last_mut()
                    .expect("a chunk was just pushed")
                    .bytes
                    .extend_from_slice(page);
            }
        }
    }
    out
}

/// Raw and stored bytes of one (content, level, size), per source.
#[derive(Default)]
struct Ratios(BTreeMap<(&'static str, &'static str, i32, usize), (u64, u64)>);

impl Ratios {
    fn record(&mut self, content: &Content, level: i32, size_index: usize, enc: &mut ChunkEncoder) {
        let sources = content.sources();
        for c in content.chunks(size_index) {
            let (_, stored) = enc.encode(&c.bytes).expect("zstd compresses");
            for name in [sources[c.source].name, "all"] {
                let e = self
                    .0
                    .entry((content.name, name, level, CHUNK_SIZES[size_index]))
                    .or_default();
                e.0 += c.bytes.len() as u64;
                e.1 += stored.len() as u64;
            }
        }
    }

    fn print(&self) {
        if self.0.is_empty() {
            return;
        }
        eprintln!("\ncompression ratio (raw / stored) per chunk size:");
        let mut rows: BTreeMap<(&str, &str, i32), Vec<String>> = BTreeMap::new();
        for (&(content, source, level, size), &(raw, stored)) in &self.0 {
            rows.entry((content, source, level))
                .or_default()
                .push(format!(
                    "{}={:.2}",
                    size_label(size),
                    raw as f64 / stored.max(1) as f64
                ));
        }
        for ((content, source, level), cells) in rows {
            eprintln!("  {content:4} {source:11} l{level:<2} {}", cells.join(" "));
        }
    }
}

pub(crate) fn codec(c: &mut Criterion) {
    let contents = [
        Content::new("real", real_subset),
        Content::new("text", text_content),
    ];
    let ratios = RefCell::new(Ratios::default());

    let mut g = c.benchmark_group("codec_compress");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(1))
        .throughput(Throughput::Bytes(MIB));
    for content in &contents {
        for level in LEVELS {
            for (si, &size) in CHUNK_SIZES.iter().enumerate() {
                // Text is only a reference: one level.
                if content.name == "text" && level != snapshot_format::DEFAULT_ZSTD_LEVEL {
                    continue;
                }
                let id = BenchmarkId::new(format!("{}_l{level}", content.name), size_label(size));
                let mut enc = None;
                g.bench_function(id, |b| {
                    let enc = enc.get_or_insert_with(|| {
                        let mut enc =
                            ChunkEncoder::new(Compression::Zstd { level }).expect("zstd context");
                        ratios.borrow_mut().record(content, level, si, &mut enc);
                        enc
                    });
                    let chunks = content.chunks(si);
                    let bytes = chunks.iter().map(|c| c.bytes.len() as u64).sum();
                    b.iter_custom(|iters| {
                        per_mib(iters, bytes, || {
                            for c in chunks {
                                black_box(enc.encode(&c.bytes).expect("zstd compresses").1.len());
                            }
                        })
                    });
                });
            }
        }
    }
    g.finish();

    let mut g = c.benchmark_group("codec_decode");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(1))
        .throughput(Throughput::Bytes(MIB));
    for content in &contents {
        for level in LEVELS {
            for size in CHUNK_SIZES {
                if content.name == "text" && level != snapshot_format::DEFAULT_ZSTD_LEVEL {
                    continue;
                }
                let id = BenchmarkId::new(format!("{}_l{level}", content.name), size_label(size));
                let mut image: Option<ImageFile> = None;
                let mut dec = ChunkDecoder::new().expect("zstd context");
                let mut buf = vec![0u8; size];
                g.bench_function(id, |b| {
                    let image =
                        image.get_or_insert_with(|| image_of(content.sources(), size, level));
                    let chunks = image.chunks().len() as u32;
                    let bytes = image.chunks().iter().map(|c| u64::from(c.raw_len)).sum();
                    b.iter_custom(|iters| {
                        per_mib(iters, bytes, || {
                            for i in 0..chunks {
                                black_box(
                                    image.decode_chunk(i, &mut dec, &mut buf).expect("sound"),
                                );
                            }
                        })
                    });
                });
            }
        }
    }
    g.finish();
    ratios.borrow().print();
}

/// An in-memory image of `sources` at chunk size `size` and zstd `level`.
fn image_of(sources: &[Source], size: usize, level: i32) -> ImageFile {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("codec.lzr");
    let refs: Vec<&Source> = sources.iter().collect();
    sample::write_image(
        &refs,
        &path,
        &WriterOptions {
            chunk_size: size,
            compression: Compression::Zstd { level },
            ..WriterOptions::default()
        },
    )
    .expect("image written");
    ImageFile::from_vec(std::fs::read(&path).expect("image read")).expect("image opens")
}
