//! The index: what it holds, how it is encoded, and how a hostile one is kept
//! from doing harm.
//!
//! The index is one msgpack map with named fields:
//!
//! ```text
//! {
//!   "page_size":  u32,                 // granularity of the page maps
//!   "chunk_size": u32,                 // largest raw chunk the writer cut
//!   "metadata":   ProcessMetadata,     // named fields, see meta.rs
//!   "parent":     ParentRef | nil,     // path (relative to this image) + id
//!   "regions":    [ { "info": RegionInfo, "runs": bin }, ... ],
//!   "chunks":     bin,                 // the chunk table
//! }
//! ```
//!
//! The two big tables (a VM image can have a million chunks and runs) are
//! msgpack `bin` blobs of fixed-size little-endian records rather than maps
//! with named keys: that makes them 3–4× smaller, decodes them at memcpy
//! speed, and bounds their memory exactly (the count is the blob length
//! divided by the record length, checked against the limits before
//! allocating).
//!
//! ```text
//! chunk record (40 bytes)                 run record (24 bytes)
//! 0  offset      u64  frame file offset   0  pages        u64  run length in pages
//! 8  stored_len  u32  frame length        8  kind         u8   0 zero, 1 data,
//! 12 raw_len     u32  decoded length                           2 parent, 3 file
//! 16 codec       u8   0 raw, 1 zstd       9  reserved     [u8; 3], zero
//! 17 reserved    [u8; 7], zero            12 chunk        u32  data: chunk index
//! 24 hash        u128 xxh3-128 of raw     16 page_offset  u32  data: first page in chunk
//!                                         20 reserved     u32, zero
//! ```
//!
//! Runs have no start address: they tile their region in order, so the
//! reader computes each start, and an image cannot describe overlapping or
//! missing pages.
//!
//! Before the msgpack is decoded, `scan_msgpack` walks it without
//! allocating and refuses more than [`MAX_INDEX_ITEMS`] values or more than
//! [`MAX_INDEX_DEPTH`] levels: rmp-serde allocates per decoded value, and a
//! hostile index of millions of empty strings would otherwise cost far more
//! memory than its length.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::codec::Codec;
use crate::error::OpenError;
use crate::layout::{le_u32, le_u64};
use crate::limits::{MAX_INDEX_DEPTH, MAX_INDEX_ITEMS};
use crate::meta::{ParentRef, ProcessMetadata, RegionInfo};

/// One entry of the chunk table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkEntry {
    /// File offset of the chunk's frame.
    pub offset: u64,
    /// Length of the frame in the file.
    pub stored_len: u32,
    /// Length of the decoded chunk (a multiple of the page size).
    pub raw_len: u32,
    /// How the frame is encoded.
    pub codec: Codec,
    /// xxh3-128 of the decoded bytes.
    pub hash: u128,
}

/// Where the pages of a run come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunSource {
    /// All zero (or never populated).
    Zero,
    /// Stored in chunk `chunk` (an index into this image's chunk table),
    /// starting `offset` bytes into its decoded bytes.
    Data {
        /// Chunk index in this image.
        chunk: u32,
        /// Byte offset of the run's first page in the decoded chunk.
        offset: u32,
    },
    /// Unchanged since the parent image: read the same addresses there.
    Parent,
    /// Unmodified pages of the region's mapped file (a private file mapping
    /// never written to): read them from the file at the region's file
    /// offset plus the distance from the region's start.
    File,
}

/// A run of a region's page map: `len` bytes from address `start`, all with
/// the same source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// First address.
    pub start: u64,
    /// Length in bytes (whole pages).
    pub len: u64,
    /// Where the bytes are.
    pub source: RunSource,
}

const RUN_ZERO: u8 = 0;
const RUN_DATA: u8 = 1;
const RUN_PARENT: u8 = 2;
const RUN_FILE: u8 = 3;

/// A borrowed msgpack `bin`: serializes with `serialize_bytes`, and
/// deserializes borrowing from the input (no copy of the tables).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Blob<'a>(pub(crate) &'a [u8]);

impl Serialize for Blob<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Blob<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = &'de [u8];
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a msgpack bin borrowed from the index")
            }
            fn visit_borrowed_bytes<E: serde::de::Error>(
                self,
                v: &'de [u8],
            ) -> Result<Self::Value, E> {
                Ok(v)
            }
        }
        d.deserialize_bytes(V).map(Blob)
    }
}

/// The index as encoded.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct IndexRepr<'a> {
    pub(crate) page_size: u32,
    pub(crate) chunk_size: u32,
    pub(crate) metadata: ProcessMetadata,
    #[serde(default)]
    pub(crate) parent: Option<ParentRef>,
    #[serde(borrow)]
    pub(crate) regions: Vec<RegionRepr<'a>>,
    #[serde(borrow)]
    pub(crate) chunks: Blob<'a>,
}

/// A region as encoded: its description and its run table.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RegionRepr<'a> {
    pub(crate) info: RegionInfo,
    #[serde(borrow)]
    pub(crate) runs: Blob<'a>,
}

/// Appends the record of `entry` to a chunk table.
pub(crate) fn encode_chunk(out: &mut Vec<u8>, entry: &ChunkEntry) {
    out.extend_from_slice(&entry.offset.to_le_bytes());
    out.extend_from_slice(&entry.stored_len.to_le_bytes());
    out.extend_from_slice(&entry.raw_len.to_le_bytes());
    out.push(entry.codec.tag());
    out.extend_from_slice(&[0u8; 7]);
    out.extend_from_slice(&entry.hash.to_le_bytes());
}

/// Decodes one chunk record (exactly `CHUNK_RECORD_LEN` bytes).
pub(crate) fn decode_chunk(index: u32, rec: &[u8]) -> Result<ChunkEntry, OpenError> {
    let bad = |reason: String| OpenError::BadChunk {
        chunk: index,
        reason,
    };
    let tag = rec[16];
    let codec = Codec::from_tag(tag).ok_or_else(|| bad(format!("unknown codec tag {tag}")))?;
    if rec[17..24].iter().any(|&b| b != 0) {
        return Err(bad("reserved bytes are not zero".into()));
    }
    Ok(ChunkEntry {
        offset: le_u64(&rec[0..8]),
        stored_len: le_u32(&rec[8..12]),
        raw_len: le_u32(&rec[12..16]),
        codec,
        hash: u128::from_le_bytes(rec[24..40].try_into().expect("16-byte slice")),
    })
}

/// Appends a run record: `pages` pages of `source` (data offsets in pages).
pub(crate) fn encode_run(out: &mut Vec<u8>, pages: u64, source: RunSource, page_size: u32) {
    let (kind, chunk, page_offset) = match source {
        RunSource::Zero => (RUN_ZERO, 0, 0),
        RunSource::Data { chunk, offset } => (RUN_DATA, chunk, offset / page_size),
        RunSource::Parent => (RUN_PARENT, 0, 0),
        RunSource::File => (RUN_FILE, 0, 0),
    };
    out.extend_from_slice(&pages.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&[0u8; 3]);
    out.extend_from_slice(&chunk.to_le_bytes());
    out.extend_from_slice(&page_offset.to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
}

/// A decoded run record, before it is placed and checked.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunRecord {
    pub(crate) pages: u64,
    pub(crate) kind: u8,
    pub(crate) chunk: u32,
    pub(crate) page_offset: u32,
}

/// Decodes one run record (exactly `RUN_RECORD_LEN` bytes). Returns `None`
/// when reserved bytes are set.
pub(crate) fn decode_run(rec: &[u8]) -> Option<RunRecord> {
    if rec[9..12].iter().any(|&b| b != 0) || rec[20..24].iter().any(|&b| b != 0) {
        return None;
    }
    Some(RunRecord {
        pages: le_u64(&rec[0..8]),
        kind: rec[8],
        chunk: le_u32(&rec[12..16]),
        page_offset: le_u32(&rec[16..20]),
    })
}

impl RunRecord {
    /// The run's source, with data offsets converted to bytes. `None` for an
    /// unknown kind.
    pub(crate) fn source(&self, page_size: u32) -> Option<RunSource> {
        match self.kind {
            RUN_ZERO => Some(RunSource::Zero),
            RUN_DATA => Some(RunSource::Data {
                chunk: self.chunk,
                offset: self.page_offset.checked_mul(page_size)?,
            }),
            RUN_PARENT => Some(RunSource::Parent),
            RUN_FILE => Some(RunSource::File),
            _ => None,
        }
    }
}

/// Number of records in a table blob, checked to be whole.
pub(crate) fn record_count(blob: &[u8], record_len: usize) -> Option<usize> {
    blob.len()
        .is_multiple_of(record_len)
        .then_some(blob.len() / record_len)
}

/// Checks that `bytes` is exactly one msgpack value of at most
/// [`MAX_INDEX_ITEMS`] values nested at most [`MAX_INDEX_DEPTH`] deep, without
/// allocating (beyond a stack of at most `MAX_INDEX_DEPTH` counters).
pub(crate) fn scan_msgpack(bytes: &[u8]) -> Result<(), OpenError> {
    use rmp::Marker;

    let malformed = |reason: String| OpenError::IndexMalformed { reason };
    let mut pos = 0usize;
    let mut items = 0usize;
    // Values still expected by each open container; the outermost "container"
    // is the single top value.
    let mut pending: Vec<u64> = Vec::with_capacity(MAX_INDEX_DEPTH + 1);
    pending.push(1);

    let take = |pos: &mut usize, n: u64| -> Result<&[u8], OpenError> {
        let n = usize::try_from(n).map_err(|_| malformed("length overflows".into()))?;
        let end = pos
            .checked_add(n)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| malformed(format!("value at {} runs past the index end", *pos)))?;
        let s = &bytes[*pos..end];
        *pos = end;
        Ok(s)
    };
    let be = |s: &[u8]| s.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));

    while let Some(top) = pending.last_mut() {
        if *top == 0 {
            pending.pop();
            continue;
        }
        *top -= 1;
        items += 1;
        if items > MAX_INDEX_ITEMS {
            return Err(malformed(format!("more than {MAX_INDEX_ITEMS} values")));
        }
        let marker = Marker::from_u8(take(&mut pos, 1)?[0]);
        // (bytes of payload to skip, values contained)
        let (skip, children): (u64, u64) = match marker {
            Marker::FixPos(_) | Marker::FixNeg(_) | Marker::Null | Marker::True | Marker::False => {
                (0, 0)
            }
            Marker::U8 | Marker::I8 => (1, 0),
            Marker::U16 | Marker::I16 => (2, 0),
            Marker::U32 | Marker::I32 | Marker::F32 => (4, 0),
            Marker::U64 | Marker::I64 | Marker::F64 => (8, 0),
            Marker::FixStr(n) => (u64::from(n), 0),
            Marker::Str8 | Marker::Bin8 => (be(take(&mut pos, 1)?), 0),
            Marker::Str16 | Marker::Bin16 => (be(take(&mut pos, 2)?), 0),
            Marker::Str32 | Marker::Bin32 => (be(take(&mut pos, 4)?), 0),
            Marker::FixArray(n) => (0, u64::from(n)),
            Marker::Array16 => (0, be(take(&mut pos, 2)?)),
            Marker::Array32 => (0, be(take(&mut pos, 4)?)),
            Marker::FixMap(n) => (0, 2 * u64::from(n)),
            Marker::Map16 => (0, 2 * be(take(&mut pos, 2)?)),
            Marker::Map32 => (0, 2 * be(take(&mut pos, 4)?)),
            Marker::FixExt1 => (2, 0),
            Marker::FixExt2 => (3, 0),
            Marker::FixExt4 => (5, 0),
            Marker::FixExt8 => (9, 0),
            Marker::FixExt16 => (17, 0),
            Marker::Ext8 => (be(take(&mut pos, 1)?) + 1, 0),
            Marker::Ext16 => (be(take(&mut pos, 2)?) + 1, 0),
            Marker::Ext32 => (be(take(&mut pos, 4)?) + 1, 0),
            Marker::Reserved => return Err(malformed(format!("reserved marker at {}", pos - 1))),
        };
        take(&mut pos, skip)?;
        if children > 0 {
            // Every value takes at least one byte: a count larger than what is
            // left cannot be honest.
            if children > (bytes.len() - pos) as u64 {
                return Err(malformed(format!(
                    "container at {pos} declares {children} values, more than the bytes left"
                )));
            }
            if pending.len() > MAX_INDEX_DEPTH {
                return Err(malformed(format!("nested deeper than {MAX_INDEX_DEPTH}")));
            }
            pending.push(children);
        }
    }
    if pos != bytes.len() {
        return Err(malformed(format!(
            "{} trailing bytes after the index value",
            bytes.len() - pos
        )));
    }
    Ok(())
}

/// Decodes the index bytes (already checksummed and scanned).
pub(crate) fn decode_index(bytes: &[u8]) -> Result<IndexRepr<'_>, OpenError> {
    scan_msgpack(bytes)?;
    rmp_serde::from_slice(bytes).map_err(|source| OpenError::IndexDecode { source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{CHUNK_RECORD_LEN, RUN_RECORD_LEN};

    #[test]
    fn scan_accepts_real_index_and_refuses_garbage() {
        let repr = IndexRepr {
            page_size: 4096,
            chunk_size: 65536,
            metadata: ProcessMetadata::default(),
            parent: None,
            regions: vec![RegionRepr {
                info: RegionInfo::raw_file(0, 4096),
                runs: Blob(&[1, 2, 3]),
            }],
            chunks: Blob(&[]),
        };
        let bytes = rmp_serde::to_vec_named(&repr).unwrap();
        scan_msgpack(&bytes).unwrap();
        let back = decode_index(&bytes).unwrap();
        assert_eq!(back.regions[0].runs.0, &[1, 2, 3]);

        // Trailing bytes.
        let mut more = bytes.clone();
        more.push(0xc0);
        assert!(matches!(
            scan_msgpack(&more),
            Err(OpenError::IndexMalformed { .. })
        ));
        // Truncated.
        assert!(scan_msgpack(&bytes[..bytes.len() - 1]).is_err());
        // Reserved marker.
        assert!(scan_msgpack(&[0xc1]).is_err());
        // An array claiming 2^32-1 elements in 5 bytes.
        assert!(scan_msgpack(&[0xdd, 0xff, 0xff, 0xff, 0xff]).is_err());
        // Deep nesting.
        let deep = vec![0x91u8; 1000];
        assert!(scan_msgpack(&deep).is_err());
    }

    #[test]
    fn scan_bounds_item_count() {
        // An array32 of MAX_INDEX_ITEMS + 1 nils.
        let n = MAX_INDEX_ITEMS as u32 + 1;
        let mut bytes = vec![0xdd];
        bytes.extend_from_slice(&n.to_be_bytes());
        bytes.extend(std::iter::repeat_n(0xc0, n as usize));
        let err = scan_msgpack(&bytes).unwrap_err();
        assert!(err.to_string().contains("more than"), "{err}");
    }

    #[test]
    fn run_and_chunk_records_round_trip() {
        let mut buf = Vec::new();
        encode_run(
            &mut buf,
            5,
            RunSource::Data {
                chunk: 9,
                offset: 8192,
            },
            4096,
        );
        assert_eq!(buf.len(), RUN_RECORD_LEN);
        let r = decode_run(&buf).unwrap();
        assert_eq!(r.pages, 5);
        assert_eq!(
            r.source(4096),
            Some(RunSource::Data {
                chunk: 9,
                offset: 8192
            })
        );

        let e = ChunkEntry {
            offset: 32,
            stored_len: 100,
            raw_len: 65536,
            codec: Codec::Zstd,
            hash: 42,
        };
        let mut buf = Vec::new();
        encode_chunk(&mut buf, &e);
        assert_eq!(buf.len(), CHUNK_RECORD_LEN);
        assert_eq!(decode_chunk(0, &buf).unwrap(), e);
        buf[16] = 9;
        assert!(matches!(
            decode_chunk(0, &buf),
            Err(OpenError::BadChunk { .. })
        ));
    }
}
