//! The restore agent suite (see `lazarus_bench::agent`), printed as a table.
//!
//! `cargo bench -p lazarus-bench --bench agent`
//! (`LAZARUS_BENCH_MIB=64 LAZARUS_BENCH_REPEAT=1` for a quick run)
//!
//! Under `cargo test` / `cargo nextest` (no `--bench` argument) it runs as
//! one small smoke test, `smoke` (16 MiB, once): see `lazarus_bench::harness`.

use lazarus_bench::agent::{Config, run};

fn main() {
    lazarus_bench::harness::main(Config::from_env, Config::shrink, |cfg| {
        run(cfg).map(|r| r.table())
    });
}
