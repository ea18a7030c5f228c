//! `cargo bench -p lazarus-bench --bench restore`: `lazarus restore` of a captured
//! memhog process, lazy, lazy with prefetch and eager, beside CRIU's figures. See
//! `lazarus_bench::restore` for what is measured and the environment variables
//! (`LAZARUS_BENCH_RESTORE_MIB`, `LAZARUS_BENCH_RUNS`, ...). Build first:
//! `cargo build --release -p lazarus -p fixtures`.
//!
//! As the capture bench: with `--bench` it measures; otherwise (`cargo test --benches`,
//! nextest running the one test it lists, `smoke`) one run on a small process checks
//! that the harness works; `--list` answers nextest's discovery.

use std::process::ExitCode;

use lazarus_bench::restore::{RestoreBenchConfig, run};

/// Buffer size of the smoke run, MiB.
const SMOKE_MIB: u64 = 32;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        if !args.iter().any(|a| a == "--ignored") {
            println!("smoke: test");
        }
        return ExitCode::SUCCESS;
    }
    let measure = args.iter().any(|a| a == "--bench");
    let result = RestoreBenchConfig::from_env().and_then(|mut config| {
        if !measure {
            config.mib = SMOKE_MIB;
            config.runs = 1;
        }
        run(&config)
    });
    match result {
        Ok(result) => {
            println!("{}", result.report());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("restore benchmark: {e}");
            ExitCode::FAILURE
        }
    }
}
