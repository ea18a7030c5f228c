//! Replays the committed `serve_handshake` fuzz corpus
//! (`fuzz/corpus/serve_handshake/`) through the target's own body
//! (`restore_agent::serve::protocol::fuzz_handshake`), so that every input
//! the fuzzer kept — including those that once failed — is checked on every
//! test run, without the fuzzer.

use restore_agent::serve::protocol::{MAX_HANDSHAKE_BYTES, fuzz_handshake};

#[test]
fn serve_handshake_corpus() {
    fixtures::fuzz::replay("serve_handshake", fuzz_handshake);
}

/// Inputs the fuzzer cannot reach with its default lengths: a message at
/// the size limit, complete or not, in pieces and at once.
#[test]
fn serve_handshake_at_the_size_limit() {
    let region = br#"{"base_host_virt_addr":4096,"size":4096,"offset":0}"#;
    for split in [0u8, 200, u8::MAX] {
        // An unterminated array filling the limit, then more.
        let mut open = vec![split, b'['];
        open.resize(MAX_HANDSHAKE_BYTES + 100, b' ');
        fuzz_handshake(&open);
        // A complete array whose last byte is the last byte allowed.
        let mut full = vec![split, b'['];
        full.extend_from_slice(region);
        full.resize(MAX_HANDSHAKE_BYTES, b' ');
        full.push(b']');
        fuzz_handshake(&full);
    }
}
