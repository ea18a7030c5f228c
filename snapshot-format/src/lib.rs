//! The Lazarus image format (`.lzr`): writer, reader, index and chunk codecs.
//!
//! An image holds the memory of a process (or a VM's guest memory file) as
//! compressed, deduplicated chunks plus a page map that says, for every page
//! of every region, where its bytes are. It is pure data: this crate does no
//! system calls beyond file I/O.
//!
//! # Layout
//!
//! ```text
//! offset 0
//! +-----------------------------+
//! | header (32 bytes)           |  magic "\x89LZR\r\n\x1a\n", version 1.0, flags
//! +-----------------------------+  header_len
//! | chunk frame                 |  each chunk: zstd frame(s) or raw pages,
//! | chunk frame                 |  in any order, located only through the
//! | ...                         |  chunk table; identical chunks stored once
//! +-----------------------------+  index_offset
//! | index (msgpack, named)      |  metadata, parent, regions + run tables,
//! |                             |  chunk table
//! +-----------------------------+  file_len - 48
//! | footer (48 bytes)           |  index offset, length, xxh3-128 of the
//! +-----------------------------+  index, "LZR-END\n"
//! ```
//!
//! The exact byte layouts are drawn in [`layout`] (header, footer) and
//! [`index`] (index map, chunk and run records); `docs/FORMAT.md` in the
//! repository describes the format for other implementers.
//!
//! # Page maps
//!
//! Each region's page map is a list of runs tiling it exactly:
//!
//! | run    | bytes come from                                              |
//! | ------ | ------------------------------------------------------------ |
//! | zero   | nowhere: all zero, or never populated                         |
//! | data   | a chunk, from a page offset in its decoded bytes             |
//! | parent | the parent image, at the same address                        |
//! | file   | the region's mapped file (private file pages never written)  |
//!
//! # Using it
//!
//! - Write with [`ImageWriter`]: regions in address order, pages in address
//!   order; zero pages are dropped, chunks are cut, hashed, deduplicated and
//!   compressed on a pool of workers; the file appears atomically.
//! - Read one file with [`ImageFile`] (validated tables, chunk decoding), or a
//!   whole parent chain with [`Image`] (resolved extents, O(log n)
//!   [`Image::locate`], chunk reverse map, [`RangeReader`]).
//! - Decode chunks with a per-thread [`ChunkDecoder`] into a buffer of
//!   [`Image::max_chunk_raw_len`] bytes: nothing is allocated per call, and a
//!   damaged chunk gives [`ChunkError::HashMismatch`] (or
//!   [`ChunkError::Corrupt`]; see [`ChunkError::is_corrupt`]).
//!
//! ```
//! use snapshot_format::{Image, ImageWriter, RegionInfo, WriterOptions};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("demo.lzr");
//! let mut w = ImageWriter::create(&path, WriterOptions::default()).unwrap();
//! w.begin_region(RegionInfo::raw_file(0, 3 * 4096)).unwrap();
//! w.write_pages(0, &[7u8; 4096]).unwrap();  // stored
//! w.write_pages(4096, &[0u8; 4096]).unwrap(); // dropped: a zero run
//! // the last page is never written: zero too
//! let summary = w.finish().unwrap();
//!
//! let image = Image::open(&path).unwrap();
//! assert_eq!(image.id(), summary.id);
//! let mut reader = image.range_reader().unwrap();
//! let mut buf = vec![1u8; 2 * 4096];
//! reader.read(4096 - 2048, &mut buf).unwrap();
//! assert!(buf[..2048].iter().all(|&b| b == 7));
//! assert!(buf[2048..].iter().all(|&b| b == 0));
//! ```
//!
//! # Hostile input
//!
//! Every offset, length and count read from an image is checked against the
//! file length and the named [`limits`] before it is used or allocated from;
//! the index is checksummed, scanned for size and nesting before msgpack
//! decoding, and every chunk is hash-checked after decoding. A truncated,
//! corrupt or hostile image gives a typed [`OpenError`], never a panic, a
//! wild read or an unbounded allocation.
//!
//! # Defaults
//!
//! Chunks of 64 KiB ([`DEFAULT_CHUNK_SIZE`]), zstd level 1
//! ([`DEFAULT_ZSTD_LEVEL`]), chosen from the benchmarks in
//! `benches/format/`, run on the project's 2-vCPU VM on real memory (223.5
//! MiB of non-zero pages captured from this benchmark's own heap, a `python3`
//! dict of 100 000 records and the `kvserver` fixture):
//!
//! ```sh
//! cargo build --release -p fixtures   # kvserver, for the memory sample
//! cargo bench -p snapshot-format --bench format
//! cargo bench -p snapshot-format --bench format -- 'codec_(compress|decode)/real_l(-1|1|3)/64K'
//! ```
//!
//! Medians of three runs (five for the level figures), level 1 unless
//! stated; "cold fault" adds DESIGN.md's 13 µs userfaultfd round trip and a
//! 4 KiB `UFFDIO_COPY` to the measured cold page read:
//!
//! | chunk  | ratio | writer, 2 workers | decode, 1 thread | cold page read | cold fault ≈ |
//! | ------ | ----- | ----------------- | ---------------- | -------------- | ------------ |
//! | 16 KiB | 2.51  | 512 MiB/s         | 1147 MiB/s       | 17 µs          | 33 µs        |
//! | 32 KiB | 2.52  | 578 MiB/s         | 1278 MiB/s       | 30 µs          | 46 µs        |
//! | 64 KiB | 2.53  | 617 MiB/s         | 1244 MiB/s       | 53 µs          | 69 µs        |
//! | 128 KiB | 2.54 | 652 MiB/s         | 1181 MiB/s       | 98 µs          | 113 µs       |
//! | 2 MiB  | 2.55  | 639 MiB/s         | 1423 MiB/s       | 1464 µs        | 1480 µs      |
//!
//! - The ratio hardly depends on the chunk size (+0.8 % from 64 KiB to
//!   2 MiB), and throughput is flat from 64 KiB on; below, per-chunk costs
//!   show (the writer is 17 % slower at 16 KiB, 6 % at 32 KiB).
//! - A cold fault decodes (and hash-checks) its whole chunk, so its cost
//!   grows linearly with the chunk: at 64 KiB decoding is four times the
//!   round trip, at 128 KiB it would be 64 % slower per fault. A workload
//!   touching every chunk prefers fewer faults, but at 64 KiB it is only
//!   30 % slower than at 2 MiB (91 against 70 ms per 64 MiB, derived).
//! - 64 KiB is also the smallest chunk holding whole pages of every
//!   supported page size.
//! - Level -1 compresses 16 % faster and decodes 13–21 % faster but stores
//!   9.5 % more (23 % more on the native heap: 2.15 against 2.64); level 3
//!   stores 1 % less and compresses 18 % slower. Level 1 is the balance;
//!   pass level -1 when capture time matters more than image size.
//!
//! `docs/FORMAT.md` ("Choosing the defaults") has every figure, per source
//! and per level, and the reasoning in full.

pub mod codec;
mod error;
pub mod file;
#[doc(hidden)]
pub mod fuzzing;
pub mod image;
pub mod index;
pub mod layout;
pub mod limits;
mod meta;
mod mmap;
pub mod process;
pub mod writer;

pub use codec::{
    ChunkDecoder, ChunkEncoder, Codec, Compression, DEFAULT_ZSTD_LEVEL, chunk_hash, is_zero,
    zstd_levels,
};
pub use error::{ChunkError, OpenError, ReadError, WriteError};
pub use file::{ImageFile, ImageStats};
pub use image::{ChunkId, ChunkInfo, ChunkUse, Extent, Image, Located, PageSource, RangeReader};
pub use index::{ChunkEntry, Run, RunSource};
pub use limits::DEFAULT_CHUNK_SIZE;
pub use meta::{
    FileIdentity, FileMapping, ImageId, METADATA_VERSION, ParentRef, ProcessMetadata, Protection,
    RegionInfo, RegionKind, SourceFile,
};
pub use process::ProcessState;
pub use writer::{ImageWriter, Progress, WriteSummary, WriterOptions, parent_ref};
