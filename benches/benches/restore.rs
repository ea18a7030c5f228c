//! `cargo bench -p lazarus-bench --bench restore`: `lazarus restore` of a captured
//! memhog process, lazy, lazy with prefetch and eager, beside CRIU's figures. See
//! `lazarus_bench::restore` for what is measured and the environment variables
//! (`LAZARUS_BENCH_RESTORE_MIB`, `LAZARUS_BENCH_RUNS`, ...). Build first:
//! `cargo build --release -p lazarus -p fixtures`.
//!
//! Under `cargo test` / `cargo nextest` (no `--bench` argument) one run on a 32 MiB
//! process, the test `smoke`, checks that the harness works: see
//! `lazarus_bench::harness`.

use lazarus_bench::restore::{RestoreBenchConfig, run};

fn main() {
    lazarus_bench::harness::main(
        RestoreBenchConfig::from_env,
        RestoreBenchConfig::shrink,
        |c| run(c).map(|r| r.report()),
    );
}
