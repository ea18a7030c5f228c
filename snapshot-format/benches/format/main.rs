//! Benchmarks of the image format: the numbers behind the default chunk
//! size and zstd level (`docs/FORMAT.md`, "Choosing the defaults").
//!
//! ```sh
//! cargo build --release -p fixtures          # kvserver, for the memory sample
//! cargo bench -p snapshot-format --bench format               # everything, ~5 min
//! cargo bench -p snapshot-format --bench format -- writer/    # one group
//! ```
//!
//! | group            | measures                                                           |
//! | ---------------- | ------------------------------------------------------------------ |
//! | `writer`         | [`ImageWriter`](snapshot_format::ImageWriter) throughput, 1 and 2 workers, zero / text / random / real pages ([`writer`]) |
//! | `read_page`      | one random 4 KiB page through `Image::locate` + `decode_chunk`, cold and cached chunk, per chunk size ([`read`]) |
//! | `codec_compress` | one thread's compress throughput per chunk size and level ([`codec`]) |
//! | `codec_decode`   | one thread's decode (decompress + hash check) throughput per chunk size and level ([`codec`]) |
//!
//! "real" is the memory sample: real memory of three processes, captured
//! once and cached under `target/` ([`sample`]). Throughput benchmarks
//! report their time per MiB of raw input ([`per_mib`]), so criterion's
//! `thrpt` is raw bytes per second.
//!
//! Each benchmark is short (10–20 samples, 2–3 s): the machine is small and
//! shared, so run the set several times and compare medians, and prefer
//! ratios of figures measured in the same run.
//!
//! In test mode (`cargo nextest run --all-targets`, `cargo test --benches`)
//! every benchmark runs once on small inputs: see [`sample`].

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};

mod codec;
mod read;
mod sample;
mod writer;

/// Runs `pass`, which processes `bytes` raw bytes, `iters` times and
/// returns the time scaled to one MiB per iteration: with
/// `Throughput::Bytes(MIB)`, criterion then reports raw bytes per second,
/// whatever the size of the input (which is only known once the lazily
/// built input exists).
fn per_mib(iters: u64, bytes: u64, mut pass: impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        pass();
    }
    start
        .elapsed()
        .mul_f64(sample::MIB as f64 / bytes.max(1) as f64)
}

criterion_group! {
    name = benches;
    // Plots take about as long as a short benchmark: leave them out.
    config = Criterion::default().without_plots();
    targets = writer::writer, read::read, codec::codec
}
criterion_main!(benches);
