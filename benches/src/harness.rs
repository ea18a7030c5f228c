//! The `main` shared by the `harness = false` bench targets: under `cargo
//! bench` (a `--bench` argument) a full run; under `cargo test` / `cargo
//! nextest` one small smoke test (16 MiB, once) named `smoke`, answering
//! the libtest listing protocol (`--list --format terse`) that nextest uses.

use crate::agent::Config;

/// Runs a bench target: `suite` gets the configuration (from the
/// environment, shrunk for the smoke test) and returns the table to print.
pub fn main<E: std::fmt::Display>(smoke: &str, suite: impl FnOnce(&Config) -> Result<String, E>) {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    if has("--list") {
        if !has("--ignored") {
            println!("{smoke}: test");
        }
        return;
    }
    let benching = has("--bench");
    // A name filter that does not match the smoke test: nothing to run.
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    if !benching && !filters.is_empty() && !filters.iter().any(|f| smoke.contains(f.as_str())) {
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
    match suite(&cfg) {
        Ok(table) => print!("{table}"),
        Err(e) => {
            eprintln!("{smoke}: benchmark failed: {e}");
            std::process::exit(1);
        }
    }
}
