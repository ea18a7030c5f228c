//! Chunk codecs, content hashes and the zero-page test.
//!
//! Every chunk carries a codec tag. v1 knows two:
//!
//! | tag | codec  | stored bytes                                    |
//! | --- | ------ | ----------------------------------------------- |
//! | 0   | `Raw`  | the raw pages, as is (incompressible chunks, baselines) |
//! | 1   | `Zstd` | one or more zstd frames decoding to the raw pages |
//!
//! Tags 2.. are reserved (lz4 is the likely next one); a reader refuses an
//! unknown tag when the image is opened, not when the chunk is first read.
//!
//! The hash of a chunk is the xxh3-128 of its *raw* bytes: it is what
//! deduplication compares and what the reader checks after decoding, so it
//! also catches a corrupt frame that still decodes.
//!
//! [`ChunkEncoder`] and [`ChunkDecoder`] own a zstd context each and are meant
//! to be kept per thread: after the first call they allocate nothing.
//!
//! # Hostile frames
//!
//! Chunk frames come from untrusted images. [`ChunkDecoder`] decodes them
//! with zstd's one-shot API (`ZSTD_decompressDCtx`) straight into the
//! caller's buffer, which is exactly the chunk's raw length (at most
//! [`MAX_CHUNK_RAW_LEN`](crate::limits::MAX_CHUNK_RAW_LEN)):
//!
//! - output is bounded by the buffer: a frame that would produce more, or
//!   declares a larger content size, is an error, and nothing is written
//!   past the buffer;
//! - the window is the output buffer itself, so a frame declaring a huge
//!   window (a header can declare up to 2 GiB) costs no memory. zstd's
//!   *streaming* decoder, by contrast, allocates a window buffer per frame,
//!   up to its `windowLogMax` (128 MiB by default): chunks are never decoded
//!   with it (`tests/zstd_memory.rs` checks both under an address-space
//!   limit);
//! - the decoders of the pre-1.0 zstd formats ("legacy", magic numbers
//!   `0xFD2FB521..=0xFD2FB527`) are compiled out (the workspace disables the
//!   `zstd` crate's default features): Lazarus never wrote such frames, and
//!   those old decoders would expose more code to hostile input and allocate
//!   a context per call. Such a frame is a corrupt chunk.
//!
//! The fuzz target `chunk_frame` (`fuzz/`) drives hostile frames through
//! the whole reader path.

use std::io;

use xxhash_rust::xxh3::xxh3_128;

/// A chunk's codec tag, as stored in the chunk table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// Stored uncompressed.
    Raw,
    /// zstd.
    Zstd,
}

impl Codec {
    /// The tag byte stored in the chunk table.
    pub const fn tag(self) -> u8 {
        match self {
            Self::Raw => 0,
            Self::Zstd => 1,
        }
    }

    /// The codec for a tag byte, if known.
    pub const fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            0 => Some(Self::Raw),
            1 => Some(Self::Zstd),
            _ => None,
        }
    }

    /// Lowercase name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Zstd => "zstd",
        }
    }
}

/// How the writer compresses chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Store chunks uncompressed.
    Raw,
    /// zstd at the given level (negative levels are faster; 1..=22 stronger).
    /// A chunk that zstd cannot shrink is stored raw.
    Zstd {
        /// The zstd level.
        level: i32,
    },
}

/// The default zstd level. On real process memory (`cargo bench -p
/// snapshot-format --bench format`, 64 KiB chunks, one thread) level 1
/// compresses at ~480 MiB/s and decodes at ~1.3 GiB/s with a ratio of 2.53;
/// level -1 is 16 % faster to compress but stores 9.5 % more (23 % more on
/// native heaps), level 3 stores 1 % less for 18 % slower compression. See
/// [the crate documentation](crate#defaults) for the figures.
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

impl Default for Compression {
    fn default() -> Self {
        Self::Zstd {
            level: DEFAULT_ZSTD_LEVEL,
        }
    }
}

/// The range of zstd levels the writer accepts.
pub fn zstd_levels() -> std::ops::RangeInclusive<i32> {
    zstd::compression_level_range()
}

/// xxh3-128 of a chunk's raw bytes.
pub fn chunk_hash(raw: &[u8]) -> u128 {
    xxh3_128(raw)
}

/// Whether every byte of `page` is zero.
///
/// ORs 8-byte words without early exit, which the compiler vectorises; a page
/// is small enough that scanning it whole is faster than branching.
pub fn is_zero(page: &[u8]) -> bool {
    let (words, rest) = page.as_chunks::<8>();
    let acc = words
        .iter()
        .fold(0u64, |acc, w| acc | u64::from_ne_bytes(*w));
    acc == 0 && rest.iter().all(|&b| b == 0)
}

/// Compresses chunks; keep one per thread (it owns a zstd context and an
/// output buffer, both reused).
pub struct ChunkEncoder {
    compression: Compression,
    zstd: Option<zstd::bulk::Compressor<'static>>,
    out: Vec<u8>,
}

impl std::fmt::Debug for ChunkEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkEncoder")
            .field("compression", &self.compression)
            .finish_non_exhaustive()
    }
}

impl ChunkEncoder {
    /// A new encoder. Fails only if zstd cannot allocate its context or
    /// refuses the level.
    pub fn new(compression: Compression) -> io::Result<Self> {
        let zstd = match compression {
            Compression::Raw => None,
            Compression::Zstd { level } => {
                let mut c = zstd::bulk::Compressor::new(level)?;
                // The chunk table records lengths and hashes; a frame
                // checksum would only duplicate the xxh3 check.
                c.include_checksum(false)?;
                c.include_contentsize(true)?;
                Some(c)
            }
        };
        Ok(Self {
            compression,
            zstd,
            out: Vec::new(),
        })
    }

    /// Encodes `raw`. Returns the codec used and the stored bytes, which
    /// borrow the encoder's buffer until the next call. Chunks that do not
    /// shrink are returned raw.
    pub fn encode<'a>(&'a mut self, raw: &'a [u8]) -> io::Result<(Codec, &'a [u8])> {
        let Some(zstd) = self.zstd.as_mut() else {
            return Ok((Codec::Raw, raw));
        };
        self.out.clear();
        self.out.reserve(zstd::zstd_safe::compress_bound(raw.len()));
        let n = zstd.compress_to_buffer(raw, &mut self.out)?;
        if n >= raw.len() {
            return Ok((Codec::Raw, raw));
        }
        Ok((Codec::Zstd, &self.out[..n]))
    }
}

/// Decompresses chunks into caller buffers; keep one per thread. It owns a
/// zstd decompression context; decoding allocates nothing.
pub struct ChunkDecoder {
    zstd: zstd::bulk::Decompressor<'static>,
}

impl std::fmt::Debug for ChunkDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkDecoder").finish_non_exhaustive()
    }
}

impl ChunkDecoder {
    /// A new decoder. Fails only if zstd cannot allocate its context.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            zstd: zstd::bulk::Decompressor::new()?,
        })
    }

    /// Decodes `stored` (of codec `codec`) into `out`, which must be exactly
    /// the chunk's raw length. Returns the number of bytes produced; zstd
    /// never writes past `out` and allocates nothing, whatever the frame
    /// claims (see [Hostile frames](self#hostile-frames)).
    pub(crate) fn decode_into(
        &mut self,
        codec: Codec,
        stored: &[u8],
        out: &mut [u8],
    ) -> io::Result<usize> {
        match codec {
            Codec::Raw => {
                let n = stored.len().min(out.len());
                out[..n].copy_from_slice(&stored[..n]);
                Ok(stored.len())
            }
            Codec::Zstd => self.zstd.decompress_to_buffer(stored, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        let mut page = vec![0u8; 4096];
        assert!(is_zero(&page));
        page[4095] = 1;
        assert!(!is_zero(&page));
        page[4095] = 0;
        page[0] = 0x80;
        assert!(!is_zero(&page));
        assert!(is_zero(&[0u8; 5]));
        assert!(!is_zero(&[0, 0, 0, 0, 0, 0, 0, 0, 1]));
    }

    #[test]
    fn encode_decode_round_trip_and_raw_fallback() {
        let mut enc = ChunkEncoder::new(Compression::default()).unwrap();
        let mut dec = ChunkDecoder::new().unwrap();
        let compressible: Vec<u8> = (0..65536u32).map(|i| (i / 512) as u8).collect();
        let (codec, stored) = enc.encode(&compressible).unwrap();
        assert_eq!(codec, Codec::Zstd);
        let stored = stored.to_vec();
        let mut out = vec![0u8; compressible.len()];
        assert_eq!(
            dec.decode_into(codec, &stored, &mut out).unwrap(),
            out.len()
        );
        assert_eq!(out, compressible);

        // Pseudo-random bytes do not compress: stored raw.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let random: Vec<u8> = (0..65536)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let (codec, stored) = enc.encode(&random).unwrap();
        assert_eq!(codec, Codec::Raw);
        assert_eq!(stored, &random[..]);
    }

    /// A zstd frame header without content size, declaring a window of
    /// `2^window_log` bytes, followed by `blocks`.
    fn frame(window_log: u8, blocks: &[u8]) -> Vec<u8> {
        let mut f = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, (window_log - 10) << 3];
        f.extend_from_slice(blocks);
        f
    }

    /// A block header: `len` bytes (raw) or `len` repeats (RLE).
    fn block(kind: u32, len: u32, last: bool) -> [u8; 3] {
        let h = (len << 3) | (kind << 1) | u32::from(last);
        [h as u8, (h >> 8) as u8, (h >> 16) as u8]
    }

    const RAW_BLOCK: u32 = 0;
    const RLE_BLOCK: u32 = 1;

    #[test]
    fn huge_declared_window_needs_no_window_buffer() {
        // 2 GiB window (the most zstd can declare on 64-bit), 4 KiB of
        // content: one-shot decoding writes straight into the caller's
        // buffer and allocates nothing for the window.
        let payload: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        let mut f = frame(31, &block(RAW_BLOCK, 4096, true));
        f.extend_from_slice(&payload);
        let mut dec = ChunkDecoder::new().unwrap();
        let mut out = vec![0u8; 4096];
        assert_eq!(dec.decode_into(Codec::Zstd, &f, &mut out).unwrap(), 4096);
        assert_eq!(out, payload);
    }

    #[test]
    fn frames_producing_more_than_the_buffer_are_refused_within_it() {
        let mut dec = ChunkDecoder::new().unwrap();
        // 64 RLE blocks of 128 KiB (8 MiB) under a 128 MiB window, into a
        // 64 KiB chunk: refused, nothing written past the chunk.
        let mut blocks = Vec::new();
        for i in 0..64 {
            blocks.extend_from_slice(&block(RLE_BLOCK, 128 << 10, i == 63));
            blocks.push(0x5a);
        }
        let f = frame(27, &blocks);
        let mut buf = vec![0xa5u8; (64 << 10) + 64];
        let (chunk, guard) = buf.split_at_mut(64 << 10);
        assert!(dec.decode_into(Codec::Zstd, &f, chunk).is_err());
        assert!(guard.iter().all(|&b| b == 0xa5));

        // A content size of 2^40 bytes in the header: refused.
        let mut f = vec![0x28, 0xb5, 0x2f, 0xfd, 0xc0, 11 << 3];
        f.extend_from_slice(&(1u64 << 40).to_le_bytes());
        f.extend_from_slice(&block(RLE_BLOCK, 4096, true));
        f.push(1);
        let mut out = vec![0u8; 4096];
        assert!(dec.decode_into(Codec::Zstd, &f, &mut out).is_err());

        // The decoder is still good for an honest frame afterwards.
        let mut f = frame(12, &block(RLE_BLOCK, 4096, true));
        f.push(3);
        assert_eq!(dec.decode_into(Codec::Zstd, &f, &mut out).unwrap(), 4096);
        assert!(out.iter().all(|&b| b == 3));
    }

    /// Regression (found reviewing the zstd side for the `chunk_frame` fuzz
    /// target): with the `zstd` crate's default features, this frame decoded
    /// through the v0.7 legacy decoder, which allocates a context per call.
    #[test]
    fn legacy_zstd_frames_are_refused() {
        // A zstd v0.7 frame (magic 0xFD2FB527, 64 KiB window, one raw block
        // of 16 bytes, end block). Lazarus never wrote one.
        let mut f = vec![0x27, 0xb5, 0x2f, 0xfd, 0x00, 0x30, 0x40, 0x00, 0x10];
        f.extend_from_slice(b"sixteen bytes!!!");
        f.extend_from_slice(&[0xc0, 0x00, 0x00]);
        let mut dec = ChunkDecoder::new().unwrap();
        let mut out = vec![0u8; 16];
        let err = dec.decode_into(Codec::Zstd, &f, &mut out).unwrap_err();
        assert!(
            err.to_string().contains("Unknown frame descriptor"),
            "{err}"
        );
    }

    #[test]
    fn decoder_never_overruns_a_small_buffer() {
        let mut enc = ChunkEncoder::new(Compression::default()).unwrap();
        let data = vec![7u8; 65536];
        let (_, stored) = enc.encode(&data).unwrap();
        let stored = stored.to_vec();
        let mut dec = ChunkDecoder::new().unwrap();
        let mut small = vec![0u8; 4096];
        assert!(dec.decode_into(Codec::Zstd, &stored, &mut small).is_err());
    }
}
