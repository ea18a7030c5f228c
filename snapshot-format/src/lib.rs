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
//! The default chunk size (64 KiB) and zstd level (1) come from the
//! measurements in DESIGN.md (zstd -1 on 64 KiB chunks: ~0.75 GB/s compress,
//! ~2.2 GB/s decompress per thread; level 3 about 3x slower to compress) and
//! from `cargo bench -p snapshot-format --bench codec`, whose figures are in
//! `docs/FORMAT.md`. 64 KiB keeps a fault's decompression around 30 µs while
//! still compressing well; larger chunks compress slightly better but make
//! every cold fault pay for more bytes.

pub mod codec;
mod error;
pub mod file;
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
