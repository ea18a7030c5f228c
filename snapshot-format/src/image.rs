//! An image with its parent chain resolved: [`Image`], the view restore and
//! `serve` use.
//!
//! A child image stores "in parent" runs for pages unchanged since its
//! parent. At open, the chain is flattened: every run of the top image is
//! resolved, through as many parents as needed, to where its bytes really
//! are, giving one sorted list of [`Extent`]s per region:
//!
//! ```text
//!  top     |  data c0  |   parent    | zero |     parent      |
//!  parent  | zero |  data c1  | data c2 |   data c3   | zero  |
//!  -------------------------------------------------------------
//!  extents |  c0 (top) | c1  | c2   | zero |  c3  | zero     |
//! ```
//!
//! Lookups are then one binary search, whatever the depth of the chain, and
//! the fault path never walks parents. Chunks of all layers share one
//! numbering ([`ChunkId`]): layer 0's chunks first, then layer 1's, and so on,
//! so callers can keep per-chunk state in flat arrays.
//!
//! Opening a chain refuses a missing parent, a parent whose identity differs
//! from the one the child recorded (it was rewritten), a cycle, a chain
//! deeper than [`MAX_PARENT_DEPTH`], and parent runs over addresses the
//! parent does not hold — each with its own [`OpenError`] variant.

use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::codec::ChunkDecoder;
use crate::error::{ChunkError, OpenError, ReadError};
use crate::file::ImageFile;
use crate::index::{ChunkEntry, RunSource};
use crate::limits::{MAX_EXTENTS, MAX_PARENT_DEPTH};
use crate::meta::{FileMapping, ImageId, ProcessMetadata, RegionInfo};

/// A chunk of any layer of a chain (see the [module documentation](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub u32);

/// A chunk of the chain: which layer holds it, and its table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkInfo {
    /// Layer (0 = the top image).
    pub layer: u16,
    /// Index in that layer's chunk table.
    pub index: u32,
    /// The table entry (file offset, lengths, codec, hash).
    pub entry: ChunkEntry,
}

/// Where a byte of memory comes from, after resolving parents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PageSource {
    /// Zero (or never populated).
    Zero,
    /// Byte `offset` of decoded chunk `chunk`.
    Chunk {
        /// The chunk.
        chunk: ChunkId,
        /// Byte offset in the decoded chunk.
        offset: u32,
    },
    /// Byte `offset` of the file mapped by region `region` of layer `layer`
    /// (see [`Image::file_mapping`]).
    File {
        /// Layer holding the region.
        layer: u16,
        /// Region index in that layer.
        region: u32,
        /// File offset.
        offset: u64,
    },
}

impl PageSource {
    /// The source `delta` bytes further on, in the same extent.
    fn advance(self, delta: u64) -> Self {
        match self {
            Self::Zero => Self::Zero,
            // Within an extent, offset + delta stays within the chunk's raw
            // length (a u32): checked when the image was opened.
            Self::Chunk { chunk, offset } => Self::Chunk {
                chunk,
                offset: offset + delta as u32,
            },
            Self::File {
                layer,
                region,
                offset,
            } => Self::File {
                layer,
                region,
                offset: offset + delta,
            },
        }
    }
}

/// A resolved range: `len` bytes from `start`, whose source advances byte
/// for byte with the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// First address.
    pub start: u64,
    /// Length in bytes (whole pages).
    pub len: u64,
    /// Source of the byte at `start`.
    pub source: PageSource,
}

impl Extent {
    /// One past the last address.
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// The answer to [`Image::locate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Located {
    /// Source of the byte at the address asked for.
    pub source: PageSource,
    /// How many bytes from that address on continue with the same source
    /// (to the end of the extent).
    pub len: u64,
    /// Index of the extent in [`Image::extents`].
    pub extent: usize,
}

/// Where a chunk's bytes appear in memory: `len` bytes at `addr` are the
/// decoded chunk's bytes from `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkUse {
    /// First address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
    /// Offset in the decoded chunk.
    pub offset: u32,
}

/// An image with its parent chain resolved. `Send + Sync`: share it in an
/// `Arc`; give each thread its own [`ChunkDecoder`] and buffer.
pub struct Image {
    layers: Vec<ImageFile>,
    chunks: Vec<ChunkInfo>,
    chunk_base: Vec<u32>,
    extents: Vec<Extent>,
    region_extents: Vec<Range<usize>>,
    use_start: Vec<u32>,
    uses: Vec<ChunkUse>,
    max_chunk_raw_len: usize,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("layers", &self.layers)
            .field("chunks", &self.chunks.len())
            .field("extents", &self.extents.len())
            .finish_non_exhaustive()
    }
}

const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Image>();
    send_sync::<ImageFile>();
};

impl Image {
    /// Opens the image at `path` and its parent chain (parent paths are
    /// relative to the directory of the image naming them).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, OpenError> {
        let path = path.as_ref();
        let io_err = |source| OpenError::Io {
            path: path.to_path_buf(),
            source,
        };
        let top = ImageFile::open(path)?;
        let mut seen = vec![path.canonicalize().map_err(io_err)?];
        let mut layers = vec![top];
        loop {
            let cur = layers.last().expect("at least the top layer");
            let Some(pref) = cur.parent() else {
                break;
            };
            let child = cur.path().expect("opened from a file").to_path_buf();
            if layers.len() >= MAX_PARENT_DEPTH {
                return Err(OpenError::ParentChainTooDeep {
                    top: path.to_path_buf(),
                    limit: MAX_PARENT_DEPTH,
                });
            }
            let parent = match child.parent() {
                Some(d) => d.join(&pref.path),
                None => pref.path.clone(),
            };
            let missing = |source| OpenError::ParentMissing {
                child: child.clone(),
                parent: parent.clone(),
                source,
            };
            let canon = parent.canonicalize().map_err(missing)?;
            if seen.contains(&canon) {
                return Err(OpenError::ParentCycle { child, parent });
            }
            let file = match ImageFile::open(&parent) {
                Ok(f) => f,
                Err(OpenError::Io { source, .. }) => return Err(missing(source)),
                Err(e) => {
                    return Err(OpenError::ParentInvalid {
                        child,
                        parent,
                        source: Box::new(e),
                    });
                }
            };
            if file.id() != pref.id {
                return Err(OpenError::ParentChanged {
                    child,
                    parent,
                    expected: pref.id,
                    found: file.id(),
                });
            }
            seen.push(canon);
            layers.push(file);
        }
        Self::from_layers(layers)
    }

    /// An image held in memory, without parent (one naming a parent gives
    /// [`OpenError::ParentNotSupplied`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, OpenError> {
        Self::from_layers(vec![ImageFile::from_bytes(bytes)?])
    }

    /// Resolves a chain given as layers, top first: each layer's recorded
    /// parent id must be the next layer's id, and the last has no parent.
    pub fn from_layers(layers: Vec<ImageFile>) -> Result<Self, OpenError> {
        if layers.is_empty() || layers.len() > MAX_PARENT_DEPTH {
            return Err(OpenError::LimitExceeded {
                what: "layers",
                count: layers.len() as u64,
                limit: MAX_PARENT_DEPTH as u64,
            });
        }
        let display = |f: &ImageFile| {
            f.path()
                .map_or_else(|| PathBuf::from("<memory>"), Path::to_path_buf)
        };
        for (i, layer) in layers.iter().enumerate() {
            match (layer.parent(), layers.get(i + 1)) {
                (None, None) => {}
                (None, Some(_)) => return Err(OpenError::UnexpectedLayer { layer: i }),
                (Some(p), None) => {
                    return Err(OpenError::ParentNotSupplied {
                        layer: i,
                        parent: p.path.clone(),
                        id: p.id,
                    });
                }
                (Some(p), Some(next)) => {
                    if next.id() != p.id {
                        return Err(OpenError::ParentChanged {
                            child: display(layer),
                            parent: display(next),
                            expected: p.id,
                            found: next.id(),
                        });
                    }
                    if next.page_size() != layer.page_size() {
                        return Err(OpenError::ParentPageSize {
                            child: layer.page_size(),
                            parent: next.page_size(),
                        });
                    }
                }
            }
        }

        // Global chunk numbering: layer 0 first.
        let mut chunks = Vec::new();
        let mut chunk_base = Vec::with_capacity(layers.len());
        for (l, layer) in layers.iter().enumerate() {
            chunk_base.push(chunks.len() as u32);
            chunks.extend(layer.chunks().iter().enumerate().map(|(i, e)| ChunkInfo {
                layer: l as u16,
                index: i as u32,
                entry: *e,
            }));
        }

        // Flatten from the base up: each layer resolves its parent runs
        // against the flattened view of the layer below.
        let mut below: Option<Vec<Extent>> = None;
        let mut region_extents = Vec::new();
        for l in (0..layers.len()).rev() {
            let (extents, ranges) = flatten(l, &layers[l], chunk_base[l], below.as_deref())?;
            below = Some(extents);
            region_extents = ranges;
        }
        let extents = below.expect("at least one layer");

        // Reverse map: for each chunk, where the top view uses it.
        let mut use_start = vec![0u32; chunks.len() + 1];
        for e in &extents {
            if let PageSource::Chunk { chunk, .. } = e.source {
                use_start[chunk.0 as usize + 1] += 1;
            }
        }
        for i in 1..use_start.len() {
            use_start[i] += use_start[i - 1];
        }
        let mut fill = use_start.clone();
        let mut uses = vec![
            ChunkUse {
                addr: 0,
                len: 0,
                offset: 0
            };
            *use_start.last().expect("len >= 1") as usize
        ];
        for e in &extents {
            if let PageSource::Chunk { chunk, offset } = e.source {
                let slot = &mut fill[chunk.0 as usize];
                uses[*slot as usize] = ChunkUse {
                    addr: e.start,
                    len: e.len,
                    offset,
                };
                *slot += 1;
            }
        }
        let max_chunk_raw_len = layers
            .iter()
            .map(ImageFile::max_chunk_raw_len)
            .max()
            .unwrap_or(0);
        Ok(Self {
            layers,
            chunks,
            chunk_base,
            extents,
            region_extents,
            use_start,
            uses,
            max_chunk_raw_len,
        })
    }

    /// The layers, top first.
    pub fn layers(&self) -> &[ImageFile] {
        &self.layers
    }

    /// The top image.
    pub fn top(&self) -> &ImageFile {
        &self.layers[0]
    }

    /// The top image's identity.
    pub fn id(&self) -> ImageId {
        self.top().id()
    }

    /// Page size (the same for every layer).
    pub fn page_size(&self) -> u32 {
        self.top().page_size()
    }

    /// The top image's process metadata.
    pub fn metadata(&self) -> &ProcessMetadata {
        self.top().metadata()
    }

    /// The regions of the top image, sorted by address.
    pub fn regions(&self) -> &[RegionInfo] {
        self.top().regions()
    }

    /// The index of the region containing `addr`, in O(log n).
    pub fn region_at(&self, addr: u64) -> Option<usize> {
        let regions = self.regions();
        let i = regions.partition_point(|r| r.end() <= addr);
        regions.get(i).filter(|r| r.start <= addr).map(|_| i)
    }

    /// Resolved extents of region `region` of the top image, in address
    /// order, tiling it exactly.
    ///
    /// # Panics
    /// If `region >= self.regions().len()`.
    pub fn region_extents(&self, region: usize) -> &[Extent] {
        &self.extents[self.region_extents[region].clone()]
    }

    /// All resolved extents, in address order.
    pub fn extents(&self) -> &[Extent] {
        &self.extents
    }

    /// Where the byte at `addr` comes from, in O(log n); `None` when `addr`
    /// is outside every region.
    pub fn locate(&self, addr: u64) -> Option<Located> {
        let i = self.extents.partition_point(|e| e.end() <= addr);
        let e = self.extents.get(i)?;
        if addr < e.start {
            return None;
        }
        let delta = addr - e.start;
        Some(Located {
            source: e.source.advance(delta),
            len: e.len - delta,
            extent: i,
        })
    }

    /// Every chunk of the chain, indexed by [`ChunkId`].
    pub fn chunks(&self) -> &[ChunkInfo] {
        &self.chunks
    }

    /// One chunk.
    pub fn chunk(&self, id: ChunkId) -> Option<&ChunkInfo> {
        self.chunks.get(id.0 as usize)
    }

    /// The global id of chunk `index` of layer `layer`.
    pub fn chunk_id(&self, layer: usize, index: u32) -> Option<ChunkId> {
        let base = *self.chunk_base.get(layer)?;
        (index < self.layers[layer].chunks().len() as u32).then_some(ChunkId(base + index))
    }

    /// Where chunk `id` is used in the resolved memory, in address order
    /// (empty for a chunk that is unused or fully overridden by a child).
    /// Prefetching a chunk means filling all of these.
    pub fn chunk_uses(&self, id: ChunkId) -> &[ChunkUse] {
        let i = id.0 as usize;
        match (self.use_start.get(i), self.use_start.get(i + 1)) {
            (Some(&a), Some(&b)) => &self.uses[a as usize..b as usize],
            _ => &[],
        }
    }

    /// A buffer of this length can receive any chunk of the chain.
    pub fn max_chunk_raw_len(&self) -> usize {
        self.max_chunk_raw_len
    }

    /// Decodes chunk `id` into `out[..raw_len]` and checks its hash; returns
    /// the raw length. Allocates nothing. A [`ChunkError::is_corrupt`] error
    /// means the chunk's stored bytes are damaged.
    pub fn decode_chunk(
        &self,
        id: ChunkId,
        decoder: &mut ChunkDecoder,
        out: &mut [u8],
    ) -> Result<usize, ChunkError> {
        let c = self.chunk(id).ok_or(ChunkError::NoSuchChunk {
            chunk: u64::from(id.0),
        })?;
        self.layers[c.layer as usize].decode_chunk(c.index, decoder, out)
    }

    /// The mapped file of a [`PageSource::File`] source.
    pub fn file_mapping(&self, layer: u16, region: u32) -> Option<&FileMapping> {
        self.layers
            .get(layer as usize)?
            .regions()
            .get(region as usize)?
            .file
            .as_ref()
    }

    /// A reader of byte ranges, with its own decoder and chunk buffer.
    pub fn range_reader(&self) -> std::io::Result<RangeReader<'_>> {
        Ok(RangeReader {
            image: self,
            decoder: ChunkDecoder::new()?,
            buf: vec![0u8; self.max_chunk_raw_len].into_boxed_slice(),
            cached: None,
        })
    }
}

/// Resolves one layer's runs to extents. `below` is the flattened view of
/// its parent (present whenever the layer has parent runs: checked by
/// `from_layers` and at open).
fn flatten(
    layer: usize,
    file: &ImageFile,
    chunk_base: u32,
    below: Option<&[Extent]>,
) -> Result<(Vec<Extent>, Vec<Range<usize>>), OpenError> {
    let runs: usize = (0..file.regions().len()).map(|r| file.runs(r).len()).sum();
    let mut out = Vec::with_capacity(runs);
    let mut ranges = Vec::with_capacity(file.regions().len());
    for (r, info) in file.regions().iter().enumerate() {
        let first = out.len();
        for run in file.runs(r) {
            let source = match run.source {
                RunSource::Zero => PageSource::Zero,
                RunSource::Data { chunk, offset } => PageSource::Chunk {
                    chunk: ChunkId(chunk_base + chunk),
                    offset,
                },
                RunSource::File => PageSource::File {
                    layer: layer as u16,
                    region: r as u32,
                    // No overflow: checked at open.
                    offset: info.file.as_ref().map_or(0, |f| f.offset) + (run.start - info.start),
                },
                RunSource::Parent => {
                    let below = below.ok_or(OpenError::ParentRangeMissing {
                        layer,
                        addr: run.start,
                        len: run.len,
                    })?;
                    copy_range(layer, below, run.start, run.len, &mut out)?;
                    continue;
                }
            };
            out.push(Extent {
                start: run.start,
                len: run.len,
                source,
            });
        }
        if out.len() > MAX_EXTENTS {
            return Err(OpenError::LimitExceeded {
                what: "resolved extents",
                count: out.len() as u64,
                limit: MAX_EXTENTS as u64,
            });
        }
        ranges.push(first..out.len());
    }
    Ok((out, ranges))
}

/// Appends the parent's extents covering `[start, start + len)`, clipped.
fn copy_range(
    layer: usize,
    below: &[Extent],
    start: u64,
    len: u64,
    out: &mut Vec<Extent>,
) -> Result<(), OpenError> {
    let end = start + len;
    let mut cur = start;
    let mut i = below.partition_point(|e| e.end() <= cur);
    while cur < end {
        let missing = OpenError::ParentRangeMissing {
            layer,
            addr: cur,
            len: end - cur,
        };
        let Some(e) = below.get(i) else {
            return Err(missing);
        };
        if e.start > cur {
            return Err(missing);
        }
        let piece_end = e.end().min(end);
        out.push(Extent {
            start: cur,
            len: piece_end - cur,
            source: e.source.advance(cur - e.start),
        });
        cur = piece_end;
        i += 1;
    }
    Ok(())
}

/// Reads byte ranges of an [`Image`], decoding chunks as needed and keeping
/// the last one decoded. For `serve`-style users that copy ranges (such as
/// whole 2 MiB huge pages) rather than chunks.
#[derive(Debug)]
pub struct RangeReader<'a> {
    image: &'a Image,
    decoder: ChunkDecoder,
    buf: Box<[u8]>,
    cached: Option<ChunkId>,
}

impl RangeReader<'_> {
    /// Fills `out` with the memory at `addr..addr + out.len()`. Zero extents
    /// read as zeros; the range must lie inside regions and must not touch
    /// file-backed extents (their bytes are in the mapped file).
    pub fn read(&mut self, addr: u64, out: &mut [u8]) -> Result<(), ReadError> {
        let mut done = 0usize;
        while done < out.len() {
            let a = addr
                .checked_add(done as u64)
                .ok_or(ReadError::Unmapped { addr: u64::MAX })?;
            let loc = self
                .image
                .locate(a)
                .ok_or(ReadError::Unmapped { addr: a })?;
            let n = (out.len() - done).min(usize::try_from(loc.len).unwrap_or(usize::MAX));
            let dst = &mut out[done..done + n];
            match loc.source {
                PageSource::Zero => dst.fill(0),
                PageSource::Chunk { chunk, offset } => {
                    if self.cached != Some(chunk) {
                        self.cached = None;
                        self.image
                            .decode_chunk(chunk, &mut self.decoder, &mut self.buf)?;
                        self.cached = Some(chunk);
                    }
                    let off = offset as usize;
                    dst.copy_from_slice(&self.buf[off..off + n]);
                }
                PageSource::File { layer, region, .. } => {
                    let path = self
                        .image
                        .file_mapping(layer, region)
                        .map(|f| f.path.clone())
                        .unwrap_or_default();
                    return Err(ReadError::FileBacked { addr: a, path });
                }
            }
            done += n;
        }
        Ok(())
    }
}
