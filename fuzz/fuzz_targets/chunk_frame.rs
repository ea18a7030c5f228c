//! Fuzzes chunk decompression with a hostile frame: the input is
//! `[flags][raw length in pages - 1][frame]`, stored as the one chunk
//! of an otherwise valid image whose table declares that raw length, codec
//! and (true or false) hash, and decoded through `Image::decode_chunk` and
//! the range reader. The body is `snapshot_format::fuzzing::chunk_frame`,
//! shared with the corpus replay test.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| snapshot_format::fuzzing::chunk_frame(data));
