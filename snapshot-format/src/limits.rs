//! Limits that bound what an image may declare.
//!
//! Images are untrusted input: the reader checks every size, offset and count
//! against these constants (and against the file length) *before* it allocates
//! or reads anything sized by them. The writer refuses to produce an image that
//! its own reader would refuse.
//!
//! The values are generous for real workloads (a 64 GiB VM image with 64 KiB
//! chunks has one million chunks) while keeping the memory a hostile image can
//! make the reader allocate to a few hundred MiB at most.

/// The smallest page size an image may declare (x86-64 base pages).
pub const MIN_PAGE_SIZE: u32 = 4096;

/// The largest page size an image may declare (arm64 / ppc64 64 KiB pages).
pub const MAX_PAGE_SIZE: u32 = 64 * 1024;

/// The smallest chunk a writer may be configured with.
pub const MIN_CHUNK_SIZE: usize = 4 * 1024;

/// The largest chunk a writer may be configured with, and the largest
/// decompressed length a chunk in an image may declare.
pub const MAX_CHUNK_RAW_LEN: u32 = 4 * 1024 * 1024;

/// The default chunk size: 64 KiB. It is a multiple of every supported page
/// size. Measured on real memory (`cargo bench -p snapshot-format --bench
/// format`): the ratio is within 1 % of what 2 MiB chunks give, capture
/// throughput is flat from 64 KiB on, and a cold fault decodes 53 µs of
/// chunk (98 µs at 128 KiB). See [the crate documentation](crate#defaults)
/// for the figures.
pub const DEFAULT_CHUNK_SIZE: usize = 64 * 1024;

/// The largest stored (compressed) length a chunk may declare: a chunk that
/// does not compress is stored raw, so the stored length never exceeds the raw
/// length; zstd's worst case bound is allowed for images written by other
/// tools that keep expanded frames.
pub const MAX_CHUNK_STORED_LEN: u32 = MAX_CHUNK_RAW_LEN + MAX_CHUNK_RAW_LEN / 128 + 4096;

/// The most chunks one image may hold (2^24: 1 TiB of unique data at 64 KiB).
pub const MAX_CHUNKS: u32 = 1 << 24;

/// The most memory regions one image may hold. Linux allows 65 530 mappings
/// per process by default (`vm.max_map_count`); this leaves room for raised
/// limits.
pub const MAX_REGIONS: usize = 1 << 18;

/// The most runs (page map entries) one image may hold, over all regions.
pub const MAX_RUNS: usize = 1 << 24;

/// The largest index (msgpack) an image may have.
pub const MAX_INDEX_LEN: u64 = 1 << 30;

/// The most msgpack values (maps, arrays, scalars, strings) the index may
/// contain. The binary chunk and run tables count as one value each. This is
/// checked by a scan of the raw msgpack before it is decoded, so that a
/// hostile index of millions of tiny values cannot make the decoder allocate
/// far more than the index length.
pub const MAX_INDEX_ITEMS: usize = 1 << 23;

/// The deepest nesting of msgpack containers the index may use. The v1 schema
/// nests about six levels; the rest is room for future fields.
pub const MAX_INDEX_DEPTH: usize = 32;

/// The longest chain of parent images (the image itself included).
pub const MAX_PARENT_DEPTH: usize = 16;

/// The largest header length an image may declare (future minor versions may
/// extend the header; chunk frames start right after it).
pub const MAX_HEADER_LEN: u32 = 4096;

/// The most resolved extents an image chain may flatten to (see
/// [`Image`](crate::Image)): a parent run can split the parent's extents, so a
/// chain has at most the runs of all its layers plus one split per run.
pub const MAX_EXTENTS: usize = 2 * MAX_RUNS;

const _: () = assert!(MIN_PAGE_SIZE.is_power_of_two() && MAX_PAGE_SIZE.is_power_of_two());
const _: () = assert!(DEFAULT_CHUNK_SIZE.is_multiple_of(MAX_PAGE_SIZE as usize));
const _: () = assert!((MAX_CHUNK_RAW_LEN as usize).is_multiple_of(MAX_PAGE_SIZE as usize));
const _: () = assert!(MIN_CHUNK_SIZE >= MIN_PAGE_SIZE as usize);
// Every chunk id of every layer of a chain fits in a `u32` global id.
const _: () = assert!((MAX_CHUNKS as u64) * (MAX_PARENT_DEPTH as u64) <= u32::MAX as u64);
