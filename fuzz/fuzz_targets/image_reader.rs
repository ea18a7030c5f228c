//! Fuzzes the image reader: arbitrary bytes are parsed as an image and, when
//! they parse, every chunk is decoded and every extent looked up and read.
//! Nothing may panic, allocate without bound or read outside the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snapshot_format::{ChunkDecoder, ChunkId, Image};

fuzz_target!(|data: &[u8]| {
    let Ok(image) = Image::from_bytes(data) else {
        return;
    };
    let mut dec = ChunkDecoder::new().expect("zstd context");
    let mut buf = vec![0u8; image.max_chunk_raw_len()];
    for i in 0..image.chunks().len() as u32 {
        let _ = image.decode_chunk(ChunkId(i), &mut dec, &mut buf);
        let _ = image.chunk_uses(ChunkId(i));
    }
    let mut reader = image.range_reader().expect("zstd context");
    let mut page = vec![0u8; 4096];
    for e in image.extents() {
        let _ = image.locate(e.start);
        let _ = image.locate(e.end() - 1);
        let _ = reader.read(e.start, &mut page[..e.len.min(4096) as usize]);
    }
});
