//! Integration tests of the tracee crate against real child processes
//! (`tracee-testee`, built from `testee/main.rs`).

mod common;
mod fds;
mod memory;
mod remote;
mod seize;
mod state;
