//! The Lazarus benchmark harness: measuring code shared by `cargo bench`
//! targets and `lazarus bench`, one module per suite.
//!
//! - [`agent`]: the restore agent (fault latency, population throughput,
//!   read-all time per restore strategy). `cargo bench -p lazarus-bench
//!   --bench agent` runs it and prints the table; `LAZARUS_BENCH_MIB` sets
//!   the region size (default 1024), `LAZARUS_BENCH_REPEAT` the repetitions.
//! - [`capture`]: `lazarus capture --pid` of a memhog process against a raw
//!   copy of its memory (`cargo bench -p lazarus-bench --bench capture`).
//! - [`serve`]: `lazarus serve` as a VMM's page-fault handler against the
//!   example handlers' strategy (`cargo bench -p lazarus-bench --bench
//!   serve`; `LAZARUS_BENCH_MIB`, `LAZARUS_BENCH_REPEAT`).
//! - [`bench`]: `lazarus bench`, every strategy side by side on the
//!   memhog, kvserver and memfile workloads, with JSON, markdown and SVG
//!   output (docs/BENCH.md). It drives the per-run functions of
//!   [`restore`] and [`agent`] and the baseline handler of [`serve`].
//! - [`stats`]: median / min / max over repeats, ratios.
//! - [`restore`]: `lazarus restore` of a captured memhog process, lazy, lazy with
//!   prefetch and eager, beside CRIU's figures (`cargo bench -p lazarus-bench
//!   --bench restore`).

pub mod agent;
pub mod bench;
pub mod capture;
pub mod harness;
mod mem;
pub mod restore;
pub mod serve;
pub mod stats;
