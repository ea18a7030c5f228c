//! What a hostile zstd frame can make the reader allocate.
//!
//! A zstd frame header declares a window size, up to 2 GiB. zstd's *streaming*
//! decoder allocates a window buffer of that size for each frame (refusing
//! only windows above its `windowLogMax`, 128 MiB by default), so a few bytes
//! of hostile frame could cost 128 MiB. The reader decodes chunks with the
//! *one-shot* API into the caller's buffer instead: the window is the output
//! buffer itself, and a frame declaring a huge window costs nothing more.
//!
//! This test decodes such a frame through the reader under an address-space
//! limit (`RLIMIT_AS`) of 64 MiB above what the process already maps, and
//! checks, as a control, that the streaming decoder does run out of memory on
//! the same frame under the same limit. It is alone in its test binary: the
//! limit is process-wide.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use snapshot_format::fuzzing::{FRAME_TRUE_HASH, FRAME_ZSTD, chunk_frame};

/// Headroom above the current address-space size.
const HEADROOM: u64 = 64 << 20;

/// The process's current address-space size, from `/proc/self/statm`.
fn vm_size() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .next()
        .and_then(|f| f.parse().ok())
        .expect("statm starts with the size in pages");
    pages * rustix::param::page_size() as u64
}

#[test]
fn a_huge_declared_window_costs_the_reader_no_memory() {
    // A frame declaring a 128 MiB window (window log 27, the most the
    // streaming decoder accepts by default), no content size, one RLE block
    // of 64 KiB.
    let len: u32 = 64 << 10;
    let h = (len << 3) | (1 << 1) | 1; // RLE, last block
    let frame = [
        0x28,
        0xb5,
        0x2f,
        0xfd,           // magic
        0x00,           // no content size, not single segment
        (27 - 10) << 3, // window descriptor: 2^27
        h as u8,
        (h >> 8) as u8,
        (h >> 16) as u8,
        0x5a,
    ];
    // The chunk_frame target with the true hash asserts that the reader
    // decodes exactly these 64 KiB (16 pages) and the range reader agrees.
    let mut input = vec![FRAME_ZSTD | FRAME_TRUE_HASH, 15];
    input.extend_from_slice(&frame);
    chunk_frame(&input); // once unlimited: allocator arenas are set up

    let old = getrlimit(Resource::As);
    let limit = vm_size() + HEADROOM;
    setrlimit(
        Resource::As,
        Rlimit {
            current: Some(limit),
            maximum: old.maximum,
        },
    )
    .expect("lowering RLIMIT_AS");
    let reader = std::panic::catch_unwind(|| chunk_frame(&input));
    let streaming = zstd::stream::decode_all(&frame[..]);
    setrlimit(Resource::As, old).expect("restoring RLIMIT_AS");

    assert!(
        reader.is_ok(),
        "the reader could not decode the frame within {HEADROOM} bytes of address space"
    );
    let err = streaming.expect_err(
        "the streaming decoder fit in the limit too: the limit does not bite, the test proves nothing",
    );
    assert!(err.to_string().contains("Allocation"), "{err}");
    // Unlimited, the streaming decoder decodes it: memory was its only problem.
    assert_eq!(
        zstd::stream::decode_all(&frame[..]).expect("unlimited streaming decode"),
        vec![0x5a; len as usize]
    );
}
