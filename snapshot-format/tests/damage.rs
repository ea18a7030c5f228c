//! Damaged, truncated, foreign and hostile images: each gives its own typed
//! error, never a panic and never wrong bytes.

mod common;

use common::*;
use proptest::prelude::*;
use snapshot_format::{
    ChunkDecoder, ChunkError, Compression, Image, ImageFile, OpenError, fuzzing,
};

/// Footer fields: (index_offset, index_len) of an image.
fn footer(bytes: &[u8]) -> (u64, u64) {
    let f = &bytes[bytes.len() - 48..];
    (
        u64::from_le_bytes(f[0..8].try_into().unwrap()),
        u64::from_le_bytes(f[8..16].try_into().unwrap()),
    )
}

#[test]
fn truncation_at_every_section_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = sample_image(dir.path(), Compression::default());
    let (index_offset, index_len) = footer(&bytes);
    let len = bytes.len();
    let cuts = [
        0,
        7,
        31,
        32,
        33,
        (32 + index_offset as usize) / 2,
        index_offset as usize,
        index_offset as usize + index_len as usize / 2,
        len - 48,
        len - 47,
        len - 1,
    ];
    for cut in cuts {
        let err = ImageFile::from_bytes(&bytes[..cut]).unwrap_err();
        let ok = match cut {
            c if c < 80 => matches!(err, OpenError::Truncated { .. }),
            _ => matches!(err, OpenError::MissingFooter { .. }),
        };
        assert!(ok, "cut at {cut}: {err:?}");
    }
}

#[test]
fn flipped_byte_in_a_chunk_is_caught_by_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    for compression in [Compression::Raw, Compression::default()] {
        let mut bytes = sample_image(dir.path(), compression);
        let good = ImageFile::from_bytes(&bytes).unwrap();
        let victim = good.chunks()[1];
        bytes[victim.offset as usize + victim.stored_len as usize / 2] ^= 0x40;
        // The index does not cover chunk bytes: the image still opens...
        let image = Image::from_bytes(&bytes).unwrap();
        let mut dec = ChunkDecoder::new().unwrap();
        let mut buf = vec![0u8; image.max_chunk_raw_len()];
        // ...but the damaged chunk never decodes to bytes, and the others do.
        for (i, c) in image.chunks().iter().enumerate() {
            let r = image.decode_chunk(snapshot_format::ChunkId(i as u32), &mut dec, &mut buf);
            if c.index == 1 {
                let err = r.unwrap_err();
                assert!(err.is_corrupt(), "{err:?}");
                if compression == Compression::Raw {
                    assert!(
                        matches!(err, ChunkError::HashMismatch { chunk: 1, .. }),
                        "{err:?}"
                    );
                }
            } else {
                r.unwrap();
            }
        }
    }
}

#[test]
fn flipped_byte_in_the_index_or_footer() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = sample_image(dir.path(), Compression::default());
    let (index_offset, index_len) = footer(&bytes);
    let len = bytes.len();

    let mut b = bytes.clone();
    b[(index_offset + index_len / 2) as usize] ^= 1;
    assert!(matches!(
        ImageFile::from_bytes(&b),
        Err(OpenError::IndexChecksum { .. })
    ));

    // Footer: index hash, offset, length, magic.
    let mut b = bytes.clone();
    b[len - 48 + 20] ^= 1;
    assert!(matches!(
        ImageFile::from_bytes(&b),
        Err(OpenError::IndexChecksum { .. })
    ));
    let mut b = bytes.clone();
    b[len - 48] ^= 1;
    assert!(matches!(
        ImageFile::from_bytes(&b),
        Err(OpenError::IndexOutOfBounds { .. })
    ));
    let mut b = bytes.clone();
    b[len - 48 + 8] ^= 1;
    assert!(matches!(
        ImageFile::from_bytes(&b),
        Err(OpenError::IndexOutOfBounds { .. })
    ));
    let mut b = bytes.clone();
    b[len - 1] ^= 1;
    assert!(matches!(
        ImageFile::from_bytes(&b),
        Err(OpenError::MissingFooter { .. })
    ));
}

#[test]
fn index_pointing_outside_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = sample_image(dir.path(), Compression::default());
    let len = bytes.len();
    for (offset, index_len) in [
        (u64::MAX - 10, 100),
        (len as u64 * 2, 10),
        (5, 10),
        (0, u64::MAX),
    ] {
        let mut b = bytes.clone();
        b[len - 48..len - 40].copy_from_slice(&offset.to_le_bytes());
        b[len - 40..len - 32].copy_from_slice(&index_len.to_le_bytes());
        let err = ImageFile::from_bytes(&b).unwrap_err();
        assert!(
            matches!(
                err,
                OpenError::IndexOutOfBounds { .. } | OpenError::IndexTooLarge { .. }
            ),
            "{offset}+{index_len}: {err:?}"
        );
    }
}

#[test]
fn foreign_files_and_future_versions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = sample_image(dir.path(), Compression::default());

    let mut b = bytes.clone();
    b[0..8].copy_from_slice(b"\x7fELF\x02\x01\x01\x00");
    assert!(matches!(
        ImageFile::from_bytes(&b),
        Err(OpenError::NotAnImage)
    ));
    assert!(matches!(
        ImageFile::from_bytes(&[0u8; 200]),
        Err(OpenError::NotAnImage)
    ));

    let mut b = bytes.clone();
    b[8..10].copy_from_slice(&2u16.to_le_bytes());
    let err = ImageFile::from_bytes(&b).unwrap_err();
    assert!(matches!(
        err,
        OpenError::UnsupportedVersion {
            major: 2,
            minor: 0,
            supported: 1
        }
    ));
    assert!(err.to_string().contains("version 2.0"), "{err}");

    // A newer minor version is fine.
    let mut b = bytes.clone();
    b[10..12].copy_from_slice(&7u16.to_le_bytes());
    assert_eq!(ImageFile::from_bytes(&b).unwrap().version(), (1, 7));

    let mut b = bytes;
    b[12] = 0x80;
    assert!(matches!(
        ImageFile::from_bytes(&b),
        Err(OpenError::UnsupportedFlags { flags: 0x80 })
    ));

    let missing = ImageFile::open(dir.path().join("nope.lzr")).unwrap_err();
    assert!(matches!(missing, OpenError::Io { .. }));
    std::fs::write(dir.path().join("empty.lzr"), b"").unwrap();
    assert!(matches!(
        ImageFile::open(dir.path().join("empty.lzr")),
        Err(OpenError::Truncated { len: 0, .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_damage_never_panics(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cut in prop::option::of(any::<prop::sample::Index>()),
        raw in any::<bool>(),
    ) {
        let bytes = SAMPLES.with(|s| s[usize::from(raw)].clone());
        let mut b = bytes;
        for (at, v) in flips {
            let i = at.index(b.len());
            b[i] ^= v | 1;
        }
        if let Some(cut) = cut {
            b.truncate(cut.index(b.len()));
        }
        fuzzing::image_reader(&b);
    }

    /// Damage inside the index with the footer checksum recomputed: this
    /// reaches msgpack decoding and every table validation.
    #[test]
    fn index_damage_with_a_valid_checksum_never_panics(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        raw in any::<bool>(),
    ) {
        let mut b = SAMPLES.with(|s| s[usize::from(raw)].clone());
        let (off, len) = footer(&b);
        let (off, len) = (off as usize, len as usize);
        for (at, v) in flips {
            b[off + at.index(len)] ^= v | 1;
        }
        let hash = snapshot_format::chunk_hash(&b[off..off + len]);
        let n = b.len();
        b[n - 32..n - 16].copy_from_slice(&hash.to_le_bytes());
        fuzzing::image_reader(&b);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        fuzzing::image_reader(&bytes);
        // With a valid header and footer magic around the garbage.
        let mut b = vec![0u8; 32];
        b[..8].copy_from_slice(b"\x89LZR\r\n\x1a\n");
        b[8] = 1;
        b[16] = 32;
        b.extend_from_slice(&bytes);
        b.extend_from_slice(&[0u8; 40]);
        b.extend_from_slice(b"LZR-END\n");
        fuzzing::image_reader(&b);
    }
}

thread_local! {
    static SAMPLES: [Vec<u8>; 2] = {
        let dir = tempfile::tempdir().unwrap();
        [sample_image(dir.path(), Compression::default()), sample_image(dir.path(), Compression::Raw)]
    };
}
