//! Replays the committed `serve_handshake` fuzz corpus
//! (`fuzz/corpus/serve_handshake/`) through the target's own body
//! (`restore_agent::serve::protocol::fuzz_handshake`), so that every input
//! the fuzzer kept — including those that once failed — is checked on every
//! test run, without the fuzzer.

use std::path::{Path, PathBuf};

use restore_agent::serve::protocol::{MAX_HANDSHAKE_BYTES, fuzz_handshake};

/// The committed corpus, sorted by file name; fails when it is missing or
/// empty (the replay would silently prove nothing).
fn corpus() -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/serve_handshake");
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} cannot be read: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("corpus directory entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p)
                .unwrap_or_else(|e| panic!("corpus file {} cannot be read: {e}", p.display()));
            (p, bytes)
        })
        .collect()
}

#[test]
fn serve_handshake_corpus() {
    for (path, bytes) in corpus() {
        if std::panic::catch_unwind(|| fuzz_handshake(&bytes)).is_err() {
            panic!(
                "input {} fails (replay it with `cargo fuzz run serve_handshake {}`)",
                path.display(),
                path.display()
            );
        }
    }
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
