//! Running the `lazarus` binary from the end-to-end tests.

use std::process::{Command, Output};

/// Runs `lazarus ARGS` and returns its output.
pub(crate) fn lazarus(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lazarus"))
        .args(args.iter().map(|a| a.as_ref()))
        .output()
        .expect("run lazarus")
}

/// Runs `lazarus ARGS`, expects success, and returns its stdout.
pub(crate) fn ok(args: &[&dyn AsRef<std::ffi::OsStr>]) -> String {
    let out = lazarus(args);
    assert!(
        out.status.success(),
        "lazarus {:?} failed: {}",
        args.iter()
            .map(|a| a.as_ref().to_owned())
            .collect::<Vec<_>>(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
