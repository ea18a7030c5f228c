//! The fixed-size parts of an image: header, footer and the binary table
//! records, with their exact byte layouts. All integers are little endian.
//!
//! ```text
//! Header (32 bytes, at offset 0)
//! +--------+--------+--------+--------+--------+--------+--------+--------+
//! | 0x89 'L' 'Z' 'R' '\r' '\n' 0x1a '\n'         magic                     |  0
//! +--------+--------+--------+--------+--------+--------+--------+--------+
//! | major (u16)     | minor (u16)     | flags (u32)                       |  8
//! +--------+--------+--------+--------+--------+--------+--------+--------+
//! | header_len (u32) = 32             | reserved (12 bytes, zero)         | 16
//! +--------+--------+--------+--------+                                   +
//! |                                                                       | 24
//! +--------+--------+--------+--------+--------+--------+--------+--------+
//!
//! Footer (48 bytes, the last 48 bytes of the file)
//! +--------+--------+--------+--------+--------+--------+--------+--------+
//! | index_offset (u64)                                                    |  0
//! | index_len (u64)                                                       |  8
//! | index_hash: xxh3-128 of the index bytes (u128)                        | 16
//! |                                                                       | 24
//! | reserved (u64, zero)                                                  | 32
//! | 'L' 'Z' 'R' '-' 'E' 'N' 'D' '\n'             footer magic             | 40
//! +--------+--------+--------+--------+--------+--------+--------+--------+
//! ```
//!
//! The magic follows PNG's: a high byte catches 7-bit transfers, CR LF and
//! 0x1a catch text-mode conversions. A reader refuses a major version it does
//! not know and any `flags` bit it does not know (flags announce incompatible
//! features); minor versions only add fields that old readers may ignore.
//!
//! The footer sits at the end so that the writer can stream chunk frames
//! first and write the index once every chunk's place is known. An image
//! whose writer died has no footer: it is refused as unfinished.

use crate::error::OpenError;

/// The first eight bytes of every image.
pub const MAGIC: [u8; 8] = *b"\x89LZR\r\n\x1a\n";
/// The last eight bytes of every finished image.
pub const FOOTER_MAGIC: [u8; 8] = *b"LZR-END\n";
/// The format major version this crate reads and writes.
pub const VERSION_MAJOR: u16 = 1;
/// The format minor version this crate writes.
pub const VERSION_MINOR: u16 = 0;
/// Length of the v1 header.
pub const HEADER_LEN: u32 = 32;
/// Length of the footer.
pub const FOOTER_LEN: u64 = 48;

/// The parsed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) minor: u16,
    pub(crate) header_len: u32,
}

impl Header {
    /// The header this crate writes.
    pub(crate) fn encode() -> [u8; HEADER_LEN as usize] {
        let mut out = [0u8; HEADER_LEN as usize];
        out[0..8].copy_from_slice(&MAGIC);
        out[8..10].copy_from_slice(&VERSION_MAJOR.to_le_bytes());
        out[10..12].copy_from_slice(&VERSION_MINOR.to_le_bytes());
        out[12..16].copy_from_slice(&0u32.to_le_bytes());
        out[16..20].copy_from_slice(&HEADER_LEN.to_le_bytes());
        out
    }

    /// Parses and checks the header at the start of `file`, whose length has
    /// already been checked to hold a header and a footer.
    pub(crate) fn decode(file: &[u8]) -> Result<Self, OpenError> {
        let h = &file[..HEADER_LEN as usize];
        if h[0..8] != MAGIC {
            return Err(OpenError::NotAnImage);
        }
        let major = le_u16(&h[8..10]);
        let minor = le_u16(&h[10..12]);
        if major != VERSION_MAJOR {
            return Err(OpenError::UnsupportedVersion {
                major,
                minor,
                supported: VERSION_MAJOR,
            });
        }
        let flags = le_u32(&h[12..16]);
        if flags != 0 {
            return Err(OpenError::UnsupportedFlags { flags });
        }
        let header_len = le_u32(&h[16..20]);
        if !(HEADER_LEN..=crate::limits::MAX_HEADER_LEN).contains(&header_len) {
            return Err(OpenError::BadHeaderLength { header_len });
        }
        Ok(Self { minor, header_len })
    }
}

/// The parsed footer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Footer {
    pub(crate) index_offset: u64,
    pub(crate) index_len: u64,
    pub(crate) index_hash: u128,
}

impl Footer {
    pub(crate) fn encode(&self) -> [u8; FOOTER_LEN as usize] {
        let mut out = [0u8; FOOTER_LEN as usize];
        out[0..8].copy_from_slice(&self.index_offset.to_le_bytes());
        out[8..16].copy_from_slice(&self.index_len.to_le_bytes());
        out[16..32].copy_from_slice(&self.index_hash.to_le_bytes());
        out[40..48].copy_from_slice(&FOOTER_MAGIC);
        out
    }

    /// Parses the footer at the end of `file` (at least `FOOTER_LEN` long).
    pub(crate) fn decode(file: &[u8]) -> Result<Self, OpenError> {
        let start = file.len() - FOOTER_LEN as usize;
        let f = &file[start..];
        if f[40..48] != FOOTER_MAGIC {
            return Err(OpenError::MissingFooter {
                file_len: file.len() as u64,
            });
        }
        Ok(Self {
            index_offset: le_u64(&f[0..8]),
            index_len: le_u64(&f[8..16]),
            index_hash: u128::from_le_bytes(f[16..32].try_into().expect("16-byte slice")),
        })
    }
}

/// Length of one chunk table record.
pub(crate) const CHUNK_RECORD_LEN: usize = 40;
/// Length of one run table record.
pub(crate) const RUN_RECORD_LEN: usize = 24;

pub(crate) fn le_u16(b: &[u8]) -> u16 {
    u16::from_le_bytes(b.try_into().expect("caller passes 2 bytes"))
}

pub(crate) fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b.try_into().expect("caller passes 4 bytes"))
}

pub(crate) fn le_u64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b.try_into().expect("caller passes 8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let mut file = vec![0u8; 128];
        file[..32].copy_from_slice(&Header::encode());
        let h = Header::decode(&file).unwrap();
        assert_eq!(h.header_len, HEADER_LEN);
        assert_eq!(h.minor, VERSION_MINOR);
    }

    #[test]
    fn footer_round_trip() {
        let f = Footer {
            index_offset: 1234,
            index_len: 99,
            index_hash: 0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10,
        };
        let mut file = vec![0u8; 100];
        file.extend_from_slice(&f.encode());
        assert_eq!(Footer::decode(&file).unwrap(), f);
    }

    #[test]
    fn future_major_and_flags_are_refused() {
        let mut file = vec![0u8; 128];
        file[..32].copy_from_slice(&Header::encode());
        file[8] = 2;
        assert!(matches!(
            Header::decode(&file),
            Err(OpenError::UnsupportedVersion { major: 2, .. })
        ));
        file[8] = 1;
        file[12] = 1;
        assert!(matches!(
            Header::decode(&file),
            Err(OpenError::UnsupportedFlags { flags: 1 })
        ));
    }
}
