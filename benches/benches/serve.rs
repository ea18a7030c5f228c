//! The serve suite (see `lazarus_bench::serve`): Lazarus as a VMM's
//! page-fault handler side by side with the example handlers' strategy,
//! printed as a table.
//!
//! `cargo bench -p lazarus-bench --bench serve`
//! (`LAZARUS_BENCH_MIB=64 LAZARUS_BENCH_REPEAT=1` for a quick run; the
//! `memfile` fixture must be built in the same profile:
//! `cargo build --release -p fixtures`)
//!
//! Under `cargo test` / `cargo nextest` (no `--bench` argument) it runs as
//! one small smoke test, `smoke` (16 MiB, once): see `lazarus_bench::harness`.

use lazarus_bench::agent::Config;

fn main() {
    lazarus_bench::harness::main(
        || Config::from_env().map_err(lazarus_bench::serve::ServeBenchError::from),
        Config::shrink,
        |cfg| lazarus_bench::serve::run(cfg).map(|r| r.table()),
    );
}
