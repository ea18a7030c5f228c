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
    /// never writes past `out`, whatever the frame claims.
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
