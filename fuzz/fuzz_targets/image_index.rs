//! Fuzzes index decoding and validation past the checksum: the input is
//! `[chunk area length: u16 LE][chunk area][index]`, wrapped in a valid
//! header and a footer whose checksum matches, so every input reaches the
//! msgpack scan, the schema decode and the table validation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snapshot_format::{ChunkDecoder, ChunkId, Image, chunk_hash};

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let n = (usize::from(u16::from_le_bytes([data[0], data[1]]))).min(data.len() - 2);
    let (chunks, index) = data[2..].split_at(n);
    let mut img = Vec::with_capacity(32 + data.len() + 48);
    img.extend_from_slice(b"\x89LZR\r\n\x1a\n");
    img.extend_from_slice(&1u16.to_le_bytes());
    img.extend_from_slice(&0u16.to_le_bytes());
    img.extend_from_slice(&0u32.to_le_bytes());
    img.extend_from_slice(&32u32.to_le_bytes());
    img.extend_from_slice(&[0u8; 12]);
    img.extend_from_slice(chunks);
    let index_offset = img.len() as u64;
    img.extend_from_slice(index);
    img.extend_from_slice(&index_offset.to_le_bytes());
    img.extend_from_slice(&(index.len() as u64).to_le_bytes());
    img.extend_from_slice(&chunk_hash(index).to_le_bytes());
    img.extend_from_slice(&[0u8; 8]);
    img.extend_from_slice(b"LZR-END\n");

    let Ok(image) = Image::from_bytes(&img) else {
        return;
    };
    let mut dec = ChunkDecoder::new().expect("zstd context");
    let mut buf = vec![0u8; image.max_chunk_raw_len()];
    for i in 0..image.chunks().len() as u32 {
        let _ = image.decode_chunk(ChunkId(i), &mut dec, &mut buf);
    }
    let mut reader = image.range_reader().expect("zstd context");
    let mut page = vec![0u8; 4096];
    for e in image.extents() {
        let _ = image.locate(e.start);
        let _ = reader.read(e.start, &mut page[..e.len.min(4096) as usize]);
    }
});
