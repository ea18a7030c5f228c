//! `cargo bench -p lazarus-bench --bench capture`: a live process's capture side by side
//! with a raw copy of its memory. See `lazarus_bench::capture` for what is measured and
//! the environment variables (`LAZARUS_BENCH_CAPTURE_MIB`, `LAZARUS_BENCH_RUNS`, ...).
//! Build the fixtures first: `cargo build --release -p fixtures`.
//!
//! Like criterion's harness, it follows cargo's conventions: `cargo bench` passes
//! `--bench` and gets the measurement; without it (`cargo test --benches`, or nextest
//! running the one test this binary lists, `smoke`) a single run on a small process
//! checks that the harness works. `--list` answers nextest's discovery (libtest's
//! terse format).

use std::process::ExitCode;

use lazarus_bench::capture::{CaptureBenchConfig, run};

/// Buffer size of the smoke run, MiB.
const SMOKE_MIB: u64 = 16;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        if !args.iter().any(|a| a == "--ignored") {
            println!("smoke: test");
        }
        return ExitCode::SUCCESS;
    }
    let measure = args.iter().any(|a| a == "--bench");
    let result = CaptureBenchConfig::from_env().and_then(|mut config| {
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
            eprintln!("capture benchmark: {e}");
            ExitCode::FAILURE
        }
    }
}
