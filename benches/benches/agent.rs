//! The restore agent suite (see `lazarus_bench::agent`), printed as a table.
//!
//! `cargo bench -p lazarus-bench --bench agent`
//! (`LAZARUS_BENCH_MIB=64 LAZARUS_BENCH_REPEAT=1` for a quick run)

use lazarus_bench::agent::{Config, run};

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: then
    // run small, once, as a smoke test.
    let benching = std::env::args().any(|a| a == "--bench");
    let mut cfg = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if !benching {
        cfg.mib = cfg.mib.min(16);
        cfg.repeats = 1;
    }
    match run(&cfg) {
        Ok(report) => print!("{}", report.table()),
        Err(e) => {
            eprintln!("agent benchmark failed: {e}");
            std::process::exit(1);
        }
    }
}
