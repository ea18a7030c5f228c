//! Progress bars, shown only when stderr is a terminal.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// A byte-count progress bar of `total` bytes, or a hidden one when stderr is
/// not a terminal (pipes, CI, tests).
pub(crate) fn bytes_bar(total: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(
        "{msg} [{bar:40}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
    )
    .expect("the template is valid")
    .progress_chars("=> ");
    ProgressBar::new(total)
        .with_style(style)
        .with_message(what.to_string())
}

/// Seconds and GB/s (decimal, as throughput is usually quoted) for a summary.
pub(crate) fn rate(bytes: u64, elapsed: std::time::Duration) -> (f64, f64) {
    let secs = elapsed.as_secs_f64();
    let gbps = if secs > 0.0 {
        bytes as f64 / secs / 1e9
    } else {
        0.0
    };
    (secs, gbps)
}
