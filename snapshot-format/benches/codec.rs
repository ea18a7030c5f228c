//! Chunk codec micro-benchmarks: compress and decompress one chunk of mixed
//! memory-like content, per chunk size and zstd level.
//!
//! `cargo bench -p snapshot-format --bench codec`

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use snapshot_format::{ChunkDecoder, ChunkEncoder, Compression};

/// Memory-like content: a quarter text-like, a quarter small integers, a
/// quarter pseudo-random, a quarter repeated structs.
fn sample(len: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let block = (out.len() / 4096) % 4;
        for i in 0..4096usize {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let b = match block {
                0 => b"the quick brown fox jumps over the lazy dog "[i % 44],
                1 => ((i / 8) % 16) as u8 * ((i % 8 == 0) as u8),
                2 => x as u8,
                _ => [0x10, 0, 0, 0, 0xff, 0x7f, 0, 0][i % 8] ^ (i / 256) as u8,
            };
            out.push(b);
        }
    }
    out.truncate(len);
    out
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("chunk");
    for &size in &[16 * 1024, 64 * 1024, 256 * 1024, 2 * 1024 * 1024] {
        let raw = sample(size);
        g.throughput(Throughput::Bytes(size as u64));
        for level in [-1, 1, 3] {
            let mut enc = ChunkEncoder::new(Compression::Zstd { level }).unwrap();
            g.bench_with_input(
                BenchmarkId::new(format!("compress_l{level}"), size),
                &raw,
                |b, raw| b.iter(|| black_box(enc.encode(raw).unwrap().1.len())),
            );
            let stored = enc.encode(&raw).unwrap().1.to_vec();
            let mut dec = ChunkDecoder::new().unwrap();
            let mut out = vec![0u8; size];
            let image = snapshot_format_bench_image(&raw, level);
            let img = snapshot_format::ImageFile::from_vec(image).unwrap();
            g.bench_function(
                BenchmarkId::new(format!("decompress_l{level}"), size),
                |b| {
                    b.iter(|| black_box(img.decode_chunk(0, &mut dec, &mut out).unwrap()));
                },
            );
            eprintln!(
                "chunk {size} level {level}: ratio {:.2}",
                size as f64 / stored.len() as f64
            );
        }
    }
    g.finish();
}

/// An in-memory image holding `raw` as its single chunk.
fn snapshot_format_bench_image(raw: &[u8], level: i32) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.lzr");
    let mut w = snapshot_format::ImageWriter::create(
        &path,
        snapshot_format::WriterOptions {
            chunk_size: raw.len(),
            compression: Compression::Zstd { level },
            ..Default::default()
        },
    )
    .unwrap();
    w.begin_region(snapshot_format::RegionInfo::raw_file(0, raw.len() as u64))
        .unwrap();
    w.write_pages(0, raw).unwrap();
    w.finish().unwrap();
    std::fs::read(&path).unwrap()
}

criterion_group!(benches, codec);
criterion_main!(benches);
