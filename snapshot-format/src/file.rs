//! One image file, parsed and validated: [`ImageFile`].
//!
//! Parsing works over any byte slice (a memory mapping is one backing, an
//! owned buffer another), so fuzzers and tests need no files. Every offset,
//! length and count read from the file is checked against the file length
//! and the [limits](crate::limits) before it is used or allocated from; once
//! `ImageFile` exists, all its tables are known to be consistent and the
//! accessors cannot fail.

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::xxh3_128;

use crate::codec::{ChunkDecoder, Codec, chunk_hash};
use crate::error::{ChunkError, OpenError};
use crate::index::{
    ChunkEntry, IndexRepr, Run, RunSource, decode_chunk, decode_index, decode_run, record_count,
};
use crate::layout::{CHUNK_RECORD_LEN, FOOTER_LEN, Footer, HEADER_LEN, Header, RUN_RECORD_LEN};
use crate::limits::{
    MAX_CHUNK_RAW_LEN, MAX_CHUNK_STORED_LEN, MAX_CHUNKS, MAX_INDEX_LEN, MAX_PAGE_SIZE, MAX_REGIONS,
    MAX_RUNS, MIN_PAGE_SIZE,
};
use crate::meta::{ImageId, METADATA_VERSION, ParentRef, ProcessMetadata, RegionInfo};

/// The bytes of an image.
enum Backing {
    Mmap(memmap2::Mmap),
    Owned(Box<[u8]>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Self::Mmap(m) => m,
            Self::Owned(b) => b,
        }
    }
}

/// Everything parsed out of an image, owned.
#[derive(Debug)]
struct Parsed {
    minor: u16,
    header_len: u32,
    index_offset: u64,
    index_len: u64,
    id: ImageId,
    page_size: u32,
    chunk_size: u32,
    metadata: ProcessMetadata,
    parent: Option<ParentRef>,
    regions: Vec<RegionInfo>,
    region_runs: Vec<Range<usize>>,
    runs: Vec<Run>,
    chunks: Vec<ChunkEntry>,
    max_chunk_raw_len: u32,
}

/// One image file (one layer of a parent chain), validated.
///
/// It is `Send + Sync`: share it between threads in an `Arc`.
pub struct ImageFile {
    path: Option<PathBuf>,
    data: Backing,
    p: Parsed,
}

impl std::fmt::Debug for ImageFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageFile")
            .field("path", &self.path)
            .field("id", &self.p.id)
            .field("regions", &self.p.regions.len())
            .field("chunks", &self.p.chunks.len())
            .finish_non_exhaustive()
    }
}

impl ImageFile {
    /// Opens and validates the image at `path` (memory-mapped, read-only).
    /// Its parent, if it names one, is not opened: see
    /// [`Image::open`](crate::Image::open).
    ///
    /// The file must not be truncated or modified while open (Lazarus never
    /// does either: images are written under a temporary name and renamed);
    /// reading a mapping past a truncation raises SIGBUS.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, OpenError> {
        let path = path.as_ref();
        let io_err = |source| OpenError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        let min = u64::from(HEADER_LEN) + FOOTER_LEN;
        if len < min {
            return Err(OpenError::Truncated { len, min });
        }
        let map = crate::mmap::map_file(&file).map_err(io_err)?;
        let p = parse(&map)?;
        Ok(Self {
            path: Some(path.to_path_buf()),
            data: Backing::Mmap(map),
            p,
        })
    }

    /// Parses and validates an image held in memory (copied).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, OpenError> {
        Self::from_vec(bytes.to_vec())
    }

    /// Parses and validates an image held in memory.
    pub fn from_vec(bytes: Vec<u8>) -> Result<Self, OpenError> {
        let p = parse(&bytes)?;
        Ok(Self {
            path: None,
            data: Backing::Owned(bytes.into_boxed_slice()),
            p,
        })
    }

    /// The path it was opened from, if opened from a file.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The image's identity (xxh3-128 of its index).
    pub fn id(&self) -> ImageId {
        self.p.id
    }

    /// Format version (major, minor).
    pub fn version(&self) -> (u16, u16) {
        (crate::layout::VERSION_MAJOR, self.p.minor)
    }

    /// Page size: the granularity of the page maps.
    pub fn page_size(&self) -> u32 {
        self.p.page_size
    }

    /// The largest raw chunk the writer was configured to cut.
    pub fn chunk_size(&self) -> u32 {
        self.p.chunk_size
    }

    /// The largest raw length of any chunk in this image: a buffer this long
    /// can receive any of its chunks. Zero when it has no chunks.
    pub fn max_chunk_raw_len(&self) -> usize {
        self.p.max_chunk_raw_len as usize
    }

    /// Process metadata.
    pub fn metadata(&self) -> &ProcessMetadata {
        &self.p.metadata
    }

    /// The parent this image was captured against, if any.
    pub fn parent(&self) -> Option<&ParentRef> {
        self.p.parent.as_ref()
    }

    /// The regions, sorted by address, non-overlapping.
    pub fn regions(&self) -> &[RegionInfo] {
        &self.p.regions
    }

    /// The runs of region `region`: sorted, tiling the region exactly.
    ///
    /// # Panics
    /// If `region >= self.regions().len()`.
    pub fn runs(&self, region: usize) -> &[Run] {
        &self.p.runs[self.p.region_runs[region].clone()]
    }

    /// The chunk table.
    pub fn chunks(&self) -> &[ChunkEntry] {
        &self.p.chunks
    }

    /// Total length of the file.
    pub fn file_len(&self) -> u64 {
        self.data.bytes().len() as u64
    }

    /// File offset and length of the index.
    pub fn index_range(&self) -> (u64, u64) {
        (self.p.index_offset, self.p.index_len)
    }

    /// The stored bytes (frame) of chunk `chunk`.
    pub fn chunk_frame(&self, chunk: u32) -> Option<&[u8]> {
        let e = self.p.chunks.get(chunk as usize)?;
        // Validated at open: the frame lies inside the chunk area.
        let start = e.offset as usize;
        Some(&self.data.bytes()[start..start + e.stored_len as usize])
    }

    /// Decodes chunk `chunk` into `out[..raw_len]` and checks its hash.
    /// Returns the raw length. Allocates nothing.
    ///
    /// A [`ChunkError::is_corrupt`] error means the chunk's bytes are damaged.
    pub fn decode_chunk(
        &self,
        chunk: u32,
        decoder: &mut ChunkDecoder,
        out: &mut [u8],
    ) -> Result<usize, ChunkError> {
        let e = self
            .p
            .chunks
            .get(chunk as usize)
            .ok_or(ChunkError::NoSuchChunk {
                chunk: u64::from(chunk),
            })?;
        let raw_len = e.raw_len as usize;
        let Some(out) = out.get_mut(..raw_len) else {
            return Err(ChunkError::BufferTooSmall {
                chunk,
                need: raw_len,
                have: out.len(),
            });
        };
        let frame = self.chunk_frame(chunk).expect("chunk index checked above");
        let corrupt = |reason: String| ChunkError::Corrupt {
            chunk,
            offset: e.offset,
            reason,
        };
        let n = decoder
            .decode_into(e.codec, frame, out)
            .map_err(|err| corrupt(err.to_string()))?;
        if n != raw_len {
            return Err(corrupt(format!("decodes to {n} bytes, expected {raw_len}")));
        }
        let actual = chunk_hash(out);
        if actual != e.hash {
            return Err(ChunkError::HashMismatch {
                chunk,
                offset: e.offset,
                expected: e.hash,
                actual,
            });
        }
        Ok(raw_len)
    }

    /// Where chunk `chunk`'s bytes are used: `(region index, run)` for every
    /// data run referring to it (several with deduplication). Scans all runs:
    /// meant for reports, not for hot paths (see
    /// [`Image::chunk_uses`](crate::Image::chunk_uses)).
    pub fn chunk_backing(&self, chunk: u32) -> Vec<(usize, Run)> {
        let mut out = Vec::new();
        for (r, range) in self.p.region_runs.iter().enumerate() {
            for run in &self.p.runs[range.clone()] {
                if let RunSource::Data { chunk: c, .. } = run.source
                    && c == chunk
                {
                    out.push((r, *run));
                }
            }
        }
        out
    }

    /// Byte counts over all regions and chunks.
    pub fn stats(&self) -> ImageStats {
        let mut s = ImageStats {
            regions: self.p.regions.len(),
            runs: self.p.runs.len(),
            chunks: self.p.chunks.len(),
            file_len: self.file_len(),
            ..ImageStats::default()
        };
        for run in &self.p.runs {
            s.raw_bytes += run.len;
            match run.source {
                RunSource::Zero => s.zero_bytes += run.len,
                RunSource::Data { .. } => s.data_bytes += run.len,
                RunSource::Parent => s.parent_bytes += run.len,
                RunSource::File => s.file_bytes += run.len,
            }
        }
        for c in &self.p.chunks {
            s.chunk_raw_bytes += u64::from(c.raw_len);
            s.stored_bytes += u64::from(c.stored_len);
            match c.codec {
                Codec::Raw => s.raw_chunks += 1,
                Codec::Zstd => s.zstd_chunks += 1,
            }
        }
        s
    }
}

/// Byte counts of one image file (see [`ImageFile::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ImageStats {
    /// Number of regions.
    pub regions: usize,
    /// Number of runs.
    pub runs: usize,
    /// Number of (unique) chunks.
    pub chunks: usize,
    /// Chunks stored raw.
    pub raw_chunks: usize,
    /// Chunks stored with zstd.
    pub zstd_chunks: usize,
    /// Address space covered by the regions.
    pub raw_bytes: u64,
    /// Bytes in zero runs.
    pub zero_bytes: u64,
    /// Bytes in data runs (counted once per use: with deduplication, more
    /// than `chunk_raw_bytes`).
    pub data_bytes: u64,
    /// Bytes in parent runs.
    pub parent_bytes: u64,
    /// Bytes in file runs.
    pub file_bytes: u64,
    /// Decoded bytes of the unique chunks.
    pub chunk_raw_bytes: u64,
    /// Stored bytes of the chunks (frames).
    pub stored_bytes: u64,
    /// Length of the image file.
    pub file_len: u64,
}

impl ImageStats {
    /// Bytes saved by deduplication: data bytes referenced beyond the unique
    /// chunk bytes.
    pub fn dedup_saved_bytes(&self) -> u64 {
        self.data_bytes.saturating_sub(self.chunk_raw_bytes)
    }
}

/// Parses and validates a whole image.
fn parse(file: &[u8]) -> Result<Parsed, OpenError> {
    let file_len = file.len() as u64;
    let min = u64::from(HEADER_LEN) + FOOTER_LEN;
    if file_len < min {
        return Err(OpenError::Truncated { len: file_len, min });
    }
    let header = Header::decode(file)?;
    let footer = Footer::decode(file)?;

    // The index lies between the chunk area and the footer, exactly.
    let index_area_end = file_len - FOOTER_LEN;
    let out_of_bounds = || OpenError::IndexOutOfBounds {
        offset: footer.index_offset,
        len: footer.index_len,
        file_len,
    };
    if footer.index_len > MAX_INDEX_LEN {
        return Err(OpenError::IndexTooLarge {
            len: footer.index_len,
            limit: MAX_INDEX_LEN,
        });
    }
    let index_end = footer
        .index_offset
        .checked_add(footer.index_len)
        .ok_or_else(out_of_bounds)?;
    if footer.index_offset < u64::from(header.header_len) || index_end != index_area_end {
        return Err(out_of_bounds());
    }
    let index = &file[footer.index_offset as usize..index_end as usize];
    let actual = xxh3_128(index);
    if actual != footer.index_hash {
        return Err(OpenError::IndexChecksum {
            expected: footer.index_hash,
            actual,
        });
    }
    let repr = decode_index(index)?;
    let chunk_area = u64::from(header.header_len)..footer.index_offset;
    validate(repr, header, footer, chunk_area)
}

fn limit(what: &'static str, count: usize, limit: usize) -> Result<(), OpenError> {
    if count > limit {
        return Err(OpenError::LimitExceeded {
            what,
            count: count as u64,
            limit: limit as u64,
        });
    }
    Ok(())
}

/// Checks the decoded index and builds the owned tables.
fn validate(
    repr: IndexRepr<'_>,
    header: Header,
    footer: Footer,
    chunk_area: Range<u64>,
) -> Result<Parsed, OpenError> {
    let IndexRepr {
        page_size,
        chunk_size,
        metadata,
        parent,
        regions: region_reprs,
        chunks: chunk_blob,
    } = repr;

    if metadata.version == 0 || metadata.version > METADATA_VERSION {
        return Err(OpenError::UnsupportedMetadataVersion {
            found: metadata.version,
            supported: METADATA_VERSION,
        });
    }
    if !page_size.is_power_of_two() || !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&page_size) {
        return Err(OpenError::BadPageSize { page_size });
    }
    if chunk_size == 0 || chunk_size % page_size != 0 || chunk_size > MAX_CHUNK_RAW_LEN {
        return Err(OpenError::IndexMalformed {
            reason: format!("chunk size {chunk_size} is not a page multiple within limits"),
        });
    }

    // Chunk table.
    let chunk_count =
        record_count(chunk_blob.0, CHUNK_RECORD_LEN).ok_or_else(|| OpenError::IndexMalformed {
            reason: format!(
                "chunk table of {} bytes is not whole records",
                chunk_blob.0.len()
            ),
        })?;
    limit("chunks", chunk_count, MAX_CHUNKS as usize)?;
    let mut chunks = Vec::with_capacity(chunk_count);
    let mut max_chunk_raw_len = 0;
    for (i, rec) in chunk_blob.0.chunks_exact(CHUNK_RECORD_LEN).enumerate() {
        let index = i as u32; // < MAX_CHUNKS
        let e = decode_chunk(index, rec)?;
        let bad = |reason: String| OpenError::BadChunk {
            chunk: index,
            reason,
        };
        if e.raw_len == 0 || e.raw_len % page_size != 0 || e.raw_len > MAX_CHUNK_RAW_LEN {
            return Err(bad(format!(
                "raw length {} is not a page multiple within limits",
                e.raw_len
            )));
        }
        if e.stored_len == 0 || e.stored_len > MAX_CHUNK_STORED_LEN {
            return Err(bad(format!("stored length {} out of range", e.stored_len)));
        }
        if e.codec == Codec::Raw && e.stored_len != e.raw_len {
            return Err(bad(format!(
                "raw chunk stores {} bytes for {} raw bytes",
                e.stored_len, e.raw_len
            )));
        }
        let end = e.offset.checked_add(u64::from(e.stored_len));
        if e.offset < chunk_area.start || end.is_none_or(|end| end > chunk_area.end) {
            return Err(bad(format!(
                "frame {}+{} lies outside the chunk area {}..{}",
                e.offset, e.stored_len, chunk_area.start, chunk_area.end
            )));
        }
        max_chunk_raw_len = max_chunk_raw_len.max(e.raw_len);
        chunks.push(e);
    }

    // Regions and their runs.
    limit("regions", region_reprs.len(), MAX_REGIONS)?;
    let total_runs: usize = region_reprs
        .iter()
        .map(|r| r.runs.0.len() / RUN_RECORD_LEN)
        .sum();
    limit("runs", total_runs, MAX_RUNS)?;
    let page = u64::from(page_size);
    let mut regions = Vec::with_capacity(region_reprs.len());
    let mut region_runs = Vec::with_capacity(region_reprs.len());
    let mut runs = Vec::with_capacity(total_runs);
    let mut prev_end = 0u64;
    for (ri, rr) in region_reprs.into_iter().enumerate() {
        let info = rr.info;
        let bad = |reason: String| OpenError::BadRegion { region: ri, reason };
        if info.start % page != 0 || info.len % page != 0 || info.len == 0 {
            return Err(bad(format!(
                "{:#x}+{:#x} is not a non-empty page-aligned range",
                info.start, info.len
            )));
        }
        let end = info
            .start
            .checked_add(info.len)
            .ok_or_else(|| bad("end overflows".into()))?;
        if ri > 0 && info.start < prev_end {
            return Err(bad(format!(
                "starts at {:#x}, before the previous region ends ({prev_end:#x})",
                info.start
            )));
        }
        if let Some(f) = &info.file
            && f.offset.checked_add(info.len).is_none()
        {
            return Err(bad("file offset + length overflows".into()));
        }
        prev_end = end;

        let n = record_count(rr.runs.0, RUN_RECORD_LEN)
            .ok_or_else(|| bad("run table is not whole records".into()))?;
        let first = runs.len();
        let mut addr = info.start;
        for (k, rec) in rr.runs.0.chunks_exact(RUN_RECORD_LEN).enumerate() {
            let bad_run = |reason: String| OpenError::BadRun {
                region: ri,
                run: k,
                reason,
            };
            let r = decode_run(rec).ok_or_else(|| bad_run("reserved bytes are not zero".into()))?;
            let source = r.source(page_size).ok_or_else(|| {
                bad_run(format!("unknown run kind {} or offset overflow", r.kind))
            })?;
            let len = r
                .pages
                .checked_mul(page)
                .filter(|&l| l > 0 && l <= end - addr)
                .ok_or_else(|| {
                    bad_run(format!(
                        "{} pages from {addr:#x} do not fit in the region (ends {end:#x})",
                        r.pages
                    ))
                })?;
            match source {
                RunSource::Zero => {}
                RunSource::Data { chunk, offset } => {
                    let c = chunks.get(chunk as usize).ok_or_else(|| {
                        bad_run(format!(
                            "chunk {chunk} does not exist ({chunk_count} chunks)"
                        ))
                    })?;
                    if u64::from(offset) + len > u64::from(c.raw_len) {
                        return Err(bad_run(format!(
                            "{len} bytes at offset {offset} overrun chunk {chunk} of {} bytes",
                            c.raw_len
                        )));
                    }
                }
                RunSource::Parent => {
                    if parent.is_none() {
                        return Err(bad_run("parent run in an image without a parent".into()));
                    }
                }
                RunSource::File => {
                    if info.file.is_none() {
                        return Err(bad_run("file run in a region without a file".into()));
                    }
                }
            }
            runs.push(Run {
                start: addr,
                len,
                source,
            });
            addr += len;
        }
        if addr != end || n == 0 {
            return Err(bad(format!(
                "runs cover {:#x}..{addr:#x}, not the whole region {:#x}..{end:#x}",
                info.start, info.start
            )));
        }
        region_runs.push(first..runs.len());
        regions.push(info);
    }

    Ok(Parsed {
        minor: header.minor,
        header_len: header.header_len,
        index_offset: footer.index_offset,
        index_len: footer.index_len,
        id: ImageId(footer.index_hash.to_le_bytes()),
        page_size,
        chunk_size,
        metadata,
        parent,
        regions,
        region_runs,
        runs,
        chunks,
        max_chunk_raw_len,
    })
}

impl ImageFile {
    /// Length of the header (where chunk frames start).
    pub fn header_len(&self) -> u32 {
        self.p.header_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::wrap;
    use crate::index::{Blob, RegionRepr, encode_chunk, encode_run};

    /// A description of a hand-made image: one 8-byte raw chunk area and
    /// whatever tables the test wants, assembled with a correct checksum.
    struct Craft {
        page_size: u32,
        metadata: ProcessMetadata,
        parent: Option<ParentRef>,
        regions: Vec<(RegionInfo, Vec<(u64, RunSource)>)>,
        chunks: Vec<ChunkEntry>,
        frames: Vec<u8>,
    }

    impl Craft {
        /// One region of 2 pages: a data page (chunk 0) and a zero page.
        fn valid() -> Self {
            let page = vec![9u8; 4096];
            Self {
                page_size: 4096,
                metadata: ProcessMetadata::default(),
                parent: None,
                regions: vec![(
                    RegionInfo::raw_file(0x1000, 0x2000),
                    vec![
                        (
                            1,
                            RunSource::Data {
                                chunk: 0,
                                offset: 0,
                            },
                        ),
                        (1, RunSource::Zero),
                    ],
                )],
                chunks: vec![ChunkEntry {
                    offset: 32,
                    stored_len: 4096,
                    raw_len: 4096,
                    codec: Codec::Raw,
                    hash: chunk_hash(&page),
                }],
                frames: page,
            }
        }

        fn bytes(&self) -> Vec<u8> {
            let mut chunk_blob = Vec::new();
            for c in &self.chunks {
                encode_chunk(&mut chunk_blob, c);
            }
            let run_blobs: Vec<Vec<u8>> = self
                .regions
                .iter()
                .map(|(_, runs)| {
                    let mut b = Vec::new();
                    for &(pages, src) in runs {
                        encode_run(&mut b, pages, src, 4096);
                    }
                    b
                })
                .collect();
            let repr = IndexRepr {
                page_size: self.page_size,
                chunk_size: 65536,
                metadata: self.metadata.clone(),
                parent: self.parent.clone(),
                regions: self
                    .regions
                    .iter()
                    .zip(&run_blobs)
                    .map(|((info, _), b)| RegionRepr {
                        info: info.clone(),
                        runs: Blob(b),
                    })
                    .collect(),
                chunks: Blob(&chunk_blob),
            };
            wrap(&self.frames, &rmp_serde::to_vec_named(&repr).unwrap())
        }

        fn open(&self) -> Result<ImageFile, OpenError> {
            ImageFile::from_bytes(&self.bytes())
        }
    }

    #[test]
    fn crafted_valid_image_opens() {
        let f = Craft::valid().open().unwrap();
        assert_eq!(f.runs(0).len(), 2);
        assert_eq!(f.chunk_frame(0).unwrap(), &[9u8; 4096][..]);
    }

    fn expect_err(c: &Craft, check: impl Fn(&OpenError) -> bool) {
        let err = c.open().unwrap_err();
        assert!(check(&err), "unexpected error: {err:?}");
        // The message is one line.
        assert!(!err.to_string().contains('\n'));
    }

    #[test]
    fn chunk_frames_outside_the_chunk_area() {
        for (offset, stored_len) in [(0, 4096), (33, 4096), (u64::MAX - 10, 4096), (32, 4097)] {
            let mut c = Craft::valid();
            c.chunks[0].offset = offset;
            c.chunks[0].stored_len = stored_len;
            c.chunks[0].codec = Codec::Zstd;
            expect_err(&c, |e| matches!(e, OpenError::BadChunk { chunk: 0, .. }));
        }
    }

    #[test]
    fn chunk_lengths_are_checked() {
        for raw_len in [0, 100, MAX_CHUNK_RAW_LEN + 4096] {
            let mut c = Craft::valid();
            c.chunks[0].raw_len = raw_len;
            expect_err(&c, |e| matches!(e, OpenError::BadChunk { .. }));
        }
        let mut c = Craft::valid();
        c.chunks[0].stored_len = 4000; // raw codec must store raw_len bytes
        expect_err(&c, |e| matches!(e, OpenError::BadChunk { .. }));
    }

    #[test]
    fn runs_must_reference_real_chunks_within_bounds() {
        let mut c = Craft::valid();
        c.regions[0].1[0].1 = RunSource::Data {
            chunk: 5,
            offset: 0,
        };
        expect_err(&c, |e| {
            matches!(
                e,
                OpenError::BadRun {
                    region: 0,
                    run: 0,
                    ..
                }
            )
        });
        let mut c = Craft::valid();
        c.regions[0].1[0].1 = RunSource::Data {
            chunk: 0,
            offset: 4096,
        };
        expect_err(&c, |e| matches!(e, OpenError::BadRun { .. }));
    }

    #[test]
    fn runs_must_tile_their_region() {
        let mut c = Craft::valid();
        c.regions[0].1.pop();
        expect_err(&c, |e| matches!(e, OpenError::BadRegion { .. }));
        let mut c = Craft::valid();
        c.regions[0].1[1].0 = 2;
        expect_err(&c, |e| matches!(e, OpenError::BadRun { .. }));
        let mut c = Craft::valid();
        c.regions[0].1[1].0 = 0;
        expect_err(&c, |e| matches!(e, OpenError::BadRun { .. }));
        let mut c = Craft::valid();
        c.regions[0].1[1].0 = u64::MAX;
        expect_err(&c, |e| matches!(e, OpenError::BadRun { .. }));
        let mut c = Craft::valid();
        c.regions[0].1.clear();
        expect_err(&c, |e| matches!(e, OpenError::BadRegion { .. }));
    }

    #[test]
    fn regions_must_be_aligned_sorted_and_disjoint() {
        let mut c = Craft::valid();
        c.regions[0].0.start = 0x1001;
        expect_err(&c, |e| matches!(e, OpenError::BadRegion { .. }));
        let mut c = Craft::valid();
        let again = c.regions[0].clone();
        c.regions.push(again);
        expect_err(&c, |e| matches!(e, OpenError::BadRegion { region: 1, .. }));
        let mut c = Craft::valid();
        c.regions[0].0.start = u64::MAX - 0xfff;
        expect_err(&c, |e| matches!(e, OpenError::BadRegion { .. }));
    }

    #[test]
    fn parent_and_file_runs_need_a_parent_and_a_file() {
        let mut c = Craft::valid();
        c.regions[0].1[1].1 = RunSource::Parent;
        expect_err(&c, |e| matches!(e, OpenError::BadRun { run: 1, .. }));
        let mut c = Craft::valid();
        c.regions[0].1[1].1 = RunSource::File;
        expect_err(&c, |e| matches!(e, OpenError::BadRun { run: 1, .. }));
    }

    #[test]
    fn page_size_and_metadata_version_are_checked() {
        for page_size in [0, 1000, 2048, 1 << 20] {
            let mut c = Craft::valid();
            c.page_size = page_size;
            expect_err(&c, |e| matches!(e, OpenError::BadPageSize { .. }));
        }
        let mut c = Craft::valid();
        c.metadata.version = METADATA_VERSION + 1;
        expect_err(&c, |e| {
            matches!(e, OpenError::UnsupportedMetadataVersion { .. })
        });
    }

    #[test]
    fn index_of_the_wrong_shape_is_refused() {
        // A valid msgpack value that is not an index, with a good checksum.
        let out = wrap(&[], &rmp_serde::to_vec_named(&vec![1u32, 2, 3]).unwrap());
        assert!(matches!(
            ImageFile::from_bytes(&out),
            Err(OpenError::IndexDecode { .. })
        ));
    }
}
