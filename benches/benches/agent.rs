//! The restore agent suite (see `lazarus_bench::agent`), printed as a table.
//!
//! `cargo bench -p lazarus-bench --bench agent`
//! (`LAZARUS_BENCH_MIB=64 LAZARUS_BENCH_REPEAT=1` for a quick run)
//!
//! Under `cargo test` / `cargo nextest` (no `--bench` argument) it runs as
//! one small smoke test, `agent_smoke` (16 MiB, once): see
//! `lazarus_bench::harness`.

fn main() {
    lazarus_bench::harness::main("agent_smoke", |cfg| {
        lazarus_bench::agent::run(cfg).map(|r| r.table())
    });
}
