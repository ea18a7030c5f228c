//! `writer`: [`ImageWriter`] throughput, raw input bytes per second, from
//! `create` to the end of `finish` (zero-page test, chunking, xxh3-128,
//! dedup, compression on the worker pool, `pwrite` into the page cache,
//! index, rename; no fsync), with 1 and 2 compression workers.
//!
//! Inputs, one region each, given to `write_pages` whole:
//! - `zero`: 64 MiB of zero pages (all dropped: the zero test alone);
//! - `text`: 64 MiB of the fixtures' `Text` pages (about 2:1);
//! - `random`: 64 MiB of `Random` pages (zstd gives up, stored raw);
//! - `real`: the whole memory sample (see [`crate::sample`]), its sources
//!   side by side: at zstd levels -1, 1 and 3 (`real_l<level>/w<workers>`),
//!   and with 2 workers at the default level per chunk size
//!   (`real_l1_w2/<chunk size>`).
//!
//! Unless stated, the chunk size and level are the defaults. Each iteration
//! writes a new image over the previous one in a temporary directory.

use std::cell::OnceCell;
use std::path::Path;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use fixtures::pattern::PageKind;
use snapshot_format::{
    Compression, DEFAULT_CHUNK_SIZE, DEFAULT_ZSTD_LEVEL, WriteSummary, WriterOptions,
};

use crate::codec::{CHUNK_SIZES, LEVELS, size_label};
use crate::per_mib;
use crate::sample::{self, MIB, Source, measuring};

/// Bytes of each synthetic input.
fn synthetic_len() -> usize {
    if measuring() { 64 << 20 } else { 1 << 20 }
}

/// Compression workers measured.
const WORKERS: [usize; 2] = [1, 2];

/// Writes `sources` to `path`; returns the summary.
fn write(sources: &[&Source], path: &Path, opts: &Opts) -> WriteSummary {
    sample::write_image(
        sources,
        path,
        &WriterOptions {
            chunk_size: opts.chunk_size,
            compression: Compression::Zstd { level: opts.level },
            workers: opts.workers,
            ..WriterOptions::default()
        },
    )
    .expect("image written")
}

/// The writer options a benchmark varies.
#[derive(Clone, Copy)]
struct Opts {
    chunk_size: usize,
    level: i32,
    workers: usize,
}

impl Opts {
    fn default_with(workers: usize) -> Self {
        Self {
            chunk_size: DEFAULT_CHUNK_SIZE,
            level: DEFAULT_ZSTD_LEVEL,
            workers,
        }
    }
}

pub(crate) fn writer(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("writer.lzr");
    let mut g = c.benchmark_group("writer");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Bytes(MIB));

    let synthetic: [(&str, PageKind); 3] = [
        ("zero", PageKind::Zero),
        ("text", PageKind::Text),
        ("random", PageKind::Random),
    ];
    for (name, kind) in synthetic {
        let input: OnceCell<Source> = OnceCell::new();
        for workers in WORKERS {
            g.bench_function(BenchmarkId::new(name, format!("w{workers}")), |b| {
                let source = input.get_or_init(|| {
                    sample::flat_source("synthetic", sample::synthetic(kind, synthetic_len()))
                });
                let bytes = synthetic_len() as u64;
                let opts = Opts::default_with(workers);
                b.iter_custom(|iters| {
                    per_mib(iters, bytes, || {
                        write(&[source], &path, &opts);
                    })
                });
            });
        }
    }

    let mut real = Vec::new();
    for level in LEVELS {
        for workers in WORKERS {
            let id = BenchmarkId::new(format!("real_l{level}"), format!("w{workers}"));
            real.push((
                id,
                Opts {
                    level,
                    ..Opts::default_with(workers)
                },
            ));
        }
    }
    for size in CHUNK_SIZES {
        let id = BenchmarkId::new(format!("real_l{DEFAULT_ZSTD_LEVEL}_w2"), size_label(size));
        real.push((
            id,
            Opts {
                chunk_size: size,
                ..Opts::default_with(2)
            },
        ));
    }
    for (id, opts) in real {
        // One line per image written (the same image for 1 and 2 workers).
        let mut reported = opts.workers != 2;
        g.bench_function(id, |b| {
            let sources: Vec<&Source> = sample::sample().sources.iter().collect();
            let bytes = sources.iter().map(|s| s.data_bytes()).sum();
            if !reported {
                reported = true;
                report(&write(&sources, &path, &opts), &opts);
            }
            b.iter_custom(|iters| {
                per_mib(iters, bytes, || {
                    write(&sources, &path, &opts);
                })
            });
        });
    }
    g.finish();
}

/// One line on what the image of the whole sample holds.
fn report(s: &WriteSummary, opts: &Opts) {
    eprintln!(
        "writer real l{} {}: {:.1} MiB of pages -> {:.1} MiB stored (ratio {:.2}), \
         {} chunks, {} duplicate chunks ({:.1} MiB), {} zero pages",
        opts.level,
        size_label(opts.chunk_size),
        sample::mib(s.data_bytes),
        sample::mib(s.stored_bytes),
        s.data_bytes as f64 / s.stored_bytes.max(1) as f64,
        s.chunks,
        s.dedup_hits,
        sample::mib(s.dedup_bytes),
        s.zero_pages,
    );
}
