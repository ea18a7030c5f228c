//! The restore agent suite (see `lazarus_bench::agent`), printed as a table.
//!
//! `cargo bench -p lazarus-bench --bench agent`
//! (`LAZARUS_BENCH_MIB=64 LAZARUS_BENCH_REPEAT=1` for a quick run)
//!
//! Under `cargo test` / `cargo nextest` (no `--bench` argument) it runs as
//! one small smoke test, `agent_smoke` (16 MiB, once), and answers the
//! libtest listing protocol (`--list --format terse`) that nextest uses.

use lazarus_bench::agent::{Config, run};

const SMOKE: &str = "agent_smoke";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    if has("--list") {
        if !has("--ignored") {
            println!("{SMOKE}: test");
        }
        return;
    }
    let benching = has("--bench");
    // A name filter that does not match the smoke test: nothing to run.
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    if !benching && !filters.is_empty() && !filters.iter().any(|f| SMOKE.contains(f.as_str())) {
        return;
    }
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
