//! Error types: one enum per operation (open, chunk decode, range read,
//! write). Variants carry what explains them.

use std::io;
use std::path::PathBuf;

use crate::meta::ImageId;

/// Why an image (or its parent chain) could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The file could not be opened, sized or mapped.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// The file is shorter than a header and a footer.
    #[error("file is truncated: {len} bytes, an image has at least {min}")]
    Truncated {
        /// File length.
        len: u64,
        /// Minimum image length.
        min: u64,
    },
    /// Wrong magic: not a Lazarus image.
    #[error("not a Lazarus image (bad magic)")]
    NotAnImage,
    /// A major version this reader does not know.
    #[error(
        "unsupported image format version {major}.{minor} (this build reads version {supported})"
    )]
    UnsupportedVersion {
        /// Major version found.
        major: u16,
        /// Minor version found.
        minor: u16,
        /// Major version supported.
        supported: u16,
    },
    /// Incompatible feature flags this reader does not know.
    #[error("image uses unsupported feature flags {flags:#x}")]
    UnsupportedFlags {
        /// The flags.
        flags: u32,
    },
    /// The header declares an impossible length.
    #[error("bad header length {header_len}")]
    BadHeaderLength {
        /// The declared length.
        header_len: u32,
    },
    /// No footer magic at the end: the file is truncated or its writer did
    /// not finish.
    #[error(
        "no footer at the end of the {file_len}-byte file: the image is truncated or was never finished"
    )]
    MissingFooter {
        /// File length.
        file_len: u64,
    },
    /// The footer locates the index outside the file or not right before the
    /// footer.
    #[error(
        "footer places the index at {offset}+{len}, outside the {file_len}-byte file's index area"
    )]
    IndexOutOfBounds {
        /// Declared index offset.
        offset: u64,
        /// Declared index length.
        len: u64,
        /// File length.
        file_len: u64,
    },
    /// The index is longer than [`MAX_INDEX_LEN`](crate::limits::MAX_INDEX_LEN).
    #[error("index of {len} bytes exceeds the limit of {limit}")]
    IndexTooLarge {
        /// Declared length.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// The index bytes do not match the footer's checksum.
    #[error(
        "index checksum mismatch (footer says {expected:032x}, index hashes to {actual:032x}): the image is corrupt"
    )]
    IndexChecksum {
        /// Checksum in the footer.
        expected: u128,
        /// Checksum of the bytes.
        actual: u128,
    },
    /// The index msgpack is malformed, or nests or counts beyond the limits.
    #[error("malformed index: {reason}")]
    IndexMalformed {
        /// What is wrong.
        reason: String,
    },
    /// The index does not decode into the v1 schema.
    #[error("index does not match the image schema: {source}")]
    IndexDecode {
        /// The decoder's error.
        #[source]
        source: rmp_serde::decode::Error,
    },
    /// Process metadata of a newer, unknown version.
    #[error("unsupported process metadata version {found} (this build reads up to {supported})")]
    UnsupportedMetadataVersion {
        /// Version found.
        found: u32,
        /// Newest version supported.
        supported: u32,
    },
    /// The image declares an unsupported page size.
    #[error("unsupported page size {page_size}")]
    BadPageSize {
        /// The declared page size.
        page_size: u32,
    },
    /// A count exceeds its limit.
    #[error("too many {what}: {count} (limit {limit})")]
    LimitExceeded {
        /// What is counted.
        what: &'static str,
        /// The count.
        count: u64,
        /// The limit.
        limit: u64,
    },
    /// A chunk table entry is invalid.
    #[error("chunk {chunk}: {reason}")]
    BadChunk {
        /// Index of the chunk in its image.
        chunk: u32,
        /// What is wrong.
        reason: String,
    },
    /// A region descriptor is invalid (alignment, order, overlap).
    #[error("region {region}: {reason}")]
    BadRegion {
        /// Index of the region.
        region: usize,
        /// What is wrong.
        reason: String,
    },
    /// A run of a region's page map is invalid.
    #[error("region {region}, run {run}: {reason}")]
    BadRun {
        /// Index of the region.
        region: usize,
        /// Index of the run in the region.
        run: usize,
        /// What is wrong.
        reason: String,
    },
    /// The parent image does not exist or cannot be read.
    #[error("parent image {parent} of {child} cannot be opened: {source}")]
    ParentMissing {
        /// The image naming the parent.
        child: PathBuf,
        /// The parent path, resolved against the child's directory.
        parent: PathBuf,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// The parent exists but is not a valid image.
    #[error("parent image {parent} of {child} is invalid: {source}")]
    ParentInvalid {
        /// The image naming the parent.
        child: PathBuf,
        /// The parent path.
        parent: PathBuf,
        /// Why it was refused.
        #[source]
        source: Box<OpenError>,
    },
    /// The parent exists but is not the image the child was made from.
    #[error("parent image {parent} of {child} has changed: expected id {expected}, found {found}")]
    ParentChanged {
        /// The image naming the parent.
        child: PathBuf,
        /// The parent path.
        parent: PathBuf,
        /// Id the child recorded.
        expected: ImageId,
        /// Id of the file found.
        found: ImageId,
    },
    /// The parent chain loops back to an image already in it.
    #[error("parent chain of {child} is cyclic: {parent} is already in the chain")]
    ParentCycle {
        /// The image naming the parent.
        child: PathBuf,
        /// The parent already seen.
        parent: PathBuf,
    },
    /// The parent chain is longer than [`MAX_PARENT_DEPTH`](crate::limits::MAX_PARENT_DEPTH).
    #[error("parent chain of {top} is deeper than {limit} images")]
    ParentChainTooDeep {
        /// The top image.
        top: PathBuf,
        /// The limit.
        limit: usize,
    },
    /// The image names a parent that was not supplied (opening from bytes).
    #[error("image layer {layer} names parent {parent} (id {id}), which was not supplied")]
    ParentNotSupplied {
        /// The layer index (0 = top).
        layer: usize,
        /// The recorded parent path.
        parent: PathBuf,
        /// The recorded parent id.
        id: ImageId,
    },
    /// More layers were supplied than the chain names.
    #[error("layer {layer} has no parent, but further layers were supplied")]
    UnexpectedLayer {
        /// The layer without a parent.
        layer: usize,
    },
    /// A parent has a different page size than its child.
    #[error("parent page size {parent} differs from the child's {child}")]
    ParentPageSize {
        /// The child's page size.
        child: u32,
        /// The parent's page size.
        parent: u32,
    },
    /// A run says "in parent" for addresses the parent does not hold.
    #[error(
        "layer {layer} refers to parent memory at {addr:#x}+{len:#x}, which its parent does not hold"
    )]
    ParentRangeMissing {
        /// The layer (0 = top) holding the parent run.
        layer: usize,
        /// First address not found in the parent.
        addr: u64,
        /// Length of the missing range.
        len: u64,
    },
}

/// Why a chunk could not be decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkError {
    /// The decoded bytes do not match the chunk's hash: the chunk is corrupt.
    /// Its pages must not be served (the restore agent poisons them).
    #[error(
        "chunk {chunk} at file offset {offset}: content hash mismatch (expected {expected:032x}, got {actual:032x})"
    )]
    HashMismatch {
        /// Chunk index in its image file.
        chunk: u32,
        /// File offset of the frame.
        offset: u64,
        /// Hash in the chunk table.
        expected: u128,
        /// Hash of the decoded bytes.
        actual: u128,
    },
    /// The frame does not decode, or decodes to the wrong length: the chunk
    /// is corrupt.
    #[error("chunk {chunk} at file offset {offset}: frame does not decode: {reason}")]
    Corrupt {
        /// Chunk index in its image file.
        chunk: u32,
        /// File offset of the frame.
        offset: u64,
        /// What failed.
        reason: String,
    },
    /// The caller's buffer is smaller than the chunk's raw length.
    #[error("buffer of {have} bytes is too small for chunk {chunk} of {need} bytes")]
    BufferTooSmall {
        /// Chunk index.
        chunk: u32,
        /// Raw length.
        need: usize,
        /// Buffer length.
        have: usize,
    },
    /// No such chunk.
    #[error("no chunk {chunk}")]
    NoSuchChunk {
        /// The index asked for.
        chunk: u64,
    },
}

impl ChunkError {
    /// Whether the chunk's stored bytes are damaged ([`HashMismatch`] or
    /// [`Corrupt`]): its pages must never be served. Other errors are the
    /// caller's mistakes.
    ///
    /// [`HashMismatch`]: ChunkError::HashMismatch
    /// [`Corrupt`]: ChunkError::Corrupt
    pub fn is_corrupt(&self) -> bool {
        matches!(self, Self::HashMismatch { .. } | Self::Corrupt { .. })
    }
}

/// Why a byte range could not be read from an image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The address is not inside any region.
    #[error("address {addr:#x} is not in any region of the image")]
    Unmapped {
        /// The address.
        addr: u64,
    },
    /// The bytes live in a mapped file, not in the image.
    #[error("address {addr:#x} is backed by the mapped file {path}, not by the image")]
    FileBacked {
        /// The address.
        addr: u64,
        /// The mapped file.
        path: PathBuf,
    },
    /// The chunk holding the bytes could not be decoded.
    #[error(transparent)]
    Chunk(#[from] ChunkError),
}

/// Why writing an image failed. When a write fails, nothing is left on disk
/// under the final name or the temporary one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// A system call failed (including `ENOSPC`, a full disk).
    #[error("{path}: {source}")]
    Io {
        /// The file being written.
        path: PathBuf,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// The compressor failed.
    #[error("compression failed: {0}")]
    Compress(#[source] io::Error),
    /// An option is out of range.
    #[error("invalid writer option: {0}")]
    InvalidOption(String),
    /// Pages were written with no region begun.
    #[error("no region begun before writing pages at {addr:#x}")]
    NoRegion {
        /// The address written.
        addr: u64,
    },
    /// A region was begun that overlaps or precedes the previous one, or is
    /// not page aligned.
    #[error("bad region {start:#x}+{len:#x}: {reason}")]
    BadRegion {
        /// Region start.
        start: u64,
        /// Region length.
        len: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// A write is unaligned, out of order or outside the current region.
    #[error("bad write at {addr:#x}+{len:#x}: {reason}")]
    BadWrite {
        /// Address written.
        addr: u64,
        /// Length written.
        len: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// A limit of the format would be exceeded.
    #[error("image would hold too many {what} (limit {limit})")]
    LimitExceeded {
        /// What is counted.
        what: &'static str,
        /// The limit.
        limit: u64,
    },
    /// The metadata could not be encoded.
    #[error("index encoding failed: {0}")]
    Encode(#[source] rmp_serde::encode::Error),
    /// An earlier error (I/O, compression, a limit) lost data: the image
    /// cannot be finished. Drop the writer.
    #[error("an earlier error left the image incomplete")]
    Poisoned,
    /// A compression worker panicked (a bug).
    #[error("a compression worker thread panicked")]
    WorkerPanicked,
}
