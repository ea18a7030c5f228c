//! Whole-process restore (`restore_process`) of real fixture programs captured with the
//! `capture` crate: each test checks that the restored process goes on behaving
//! correctly and that its memory equals the image byte for byte. Needs root and the
//! fixture programs (`cargo build -p fixtures`).

mod blocked;
mod counter;
mod events;
mod files;
mod pids;
mod python;
mod soak;
mod support;
mod threads;
