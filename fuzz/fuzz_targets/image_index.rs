//! Fuzzes index decoding and validation past the checksum: the input is
//! `[chunk area length: u16 LE][chunk area][index]`, wrapped in a valid
//! header and a footer whose checksum matches, so every input reaches the
//! msgpack scan, the schema decode and the table validation.
//! The body is `snapshot_format::fuzzing::image_index`, shared with the
//! corpus replay test.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| snapshot_format::fuzzing::image_index(data));
