//! The `main` shared by every `harness = false` bench target: under `cargo
//! bench` (a `--bench` argument) a full run; under `cargo test` / `cargo
//! nextest` one small smoke test named `smoke`, answering the libtest listing
//! protocol (`--list --format terse`) that nextest uses.
//!
//! Each suite brings its configuration from the environment (`from_env`) and
//! says how to shrink it for the smoke test (`shrink`: a few MiB, one run).

/// Runs a bench target: `from_env` reads the suite's configuration, `shrink`
/// makes it small when not benchmarking, `suite` runs it and returns the
/// table to print.
pub fn main<C, E: std::fmt::Display>(
    from_env: impl FnOnce() -> Result<C, E>,
    shrink: impl FnOnce(&mut C),
    suite: impl FnOnce(&C) -> Result<String, E>,
) {
    const SMOKE: &str = "smoke";
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
    let mut cfg = match from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if !benching {
        shrink(&mut cfg);
    }
    match suite(&cfg) {
        Ok(table) => print!("{table}"),
        Err(e) => {
            eprintln!("{SMOKE}: benchmark failed: {e}");
            std::process::exit(1);
        }
    }
}
