//! `cargo bench -p lazarus-bench --bench capture`: a live process's capture side by side
//! with a raw copy of its memory. See `lazarus_bench::capture` for what is measured and
//! the environment variables (`LAZARUS_BENCH_CAPTURE_MIB`, `LAZARUS_BENCH_RUNS`, ...).
//! Build the fixtures first: `cargo build --release -p fixtures`.
//!
//! Under `cargo test` / `cargo nextest` (no `--bench` argument) one run on a 16 MiB
//! process, the test `smoke`, checks that the harness works: see
//! `lazarus_bench::harness`.

use lazarus_bench::capture::{CaptureBenchConfig, run};

fn main() {
    lazarus_bench::harness::main(
        CaptureBenchConfig::from_env,
        CaptureBenchConfig::shrink,
        |c| run(c).map(|r| r.report()),
    );
}
