//! Capture tests against real fixture processes and the real kernel: every captured
//! page is compared with the process's memory read back while it was still frozen,
//! page classification and metadata are checked, and every failure path must leave
//! the process running, untraced, and no image behind.
//!
//! The fixture programs must be built (`cargo build -p fixtures`; `cargo nextest run
//! --workspace` does it).

mod common;
mod failures;
mod metadata;
mod process;
mod self_ranges;
