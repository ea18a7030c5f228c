//! Fuzzes the `serve` handshake: the input is `[split seed][bytes]`, the
//! bytes a client sends, delivered in pieces to the incremental scanner as
//! a connection receives them, then parsed and validated. The body is
//! `restore_agent::serve::protocol::fuzz_handshake`, shared with the corpus
//! replay test.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| restore_agent::serve::protocol::fuzz_handshake(data));
