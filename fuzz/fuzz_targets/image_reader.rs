//! Fuzzes the image reader: arbitrary bytes are parsed as an image and, when
//! they parse, every chunk is decoded and every extent located and read.
//! The body (and the properties it checks) is `snapshot_format::fuzzing::image_reader`,
//! shared with the corpus replay test.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| snapshot_format::fuzzing::image_reader(data));
