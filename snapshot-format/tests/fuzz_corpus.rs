//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) through the
//! fuzz targets' own bodies (`snapshot_format::fuzzing`), so that every input
//! the fuzzer kept — including those that once crashed — is checked on every
//! test run, without the fuzzer.

mod common;

use common::sample_image;
use fixtures::fuzz::replay;
use snapshot_format::{Compression, Image, ImageFile, PageSource, fuzzing};

#[test]
fn image_reader_corpus() {
    replay("image_reader", fuzzing::image_reader);
}

#[test]
fn image_index_corpus() {
    replay("image_index", fuzzing::image_index);
}

#[test]
fn chunk_frame_corpus() {
    replay("chunk_frame", fuzzing::chunk_frame);
}

/// The seed encoders are the inverses of the targets' input formats: a real
/// image's `image_index` input wraps back into the same bytes, and its
/// `chunk_frame` inputs carry the true hashes, so the target asserts that
/// each decodes to the chunk's bytes.
#[test]
fn seed_encoders_invert_the_input_formats() {
    let dir = tempfile::tempdir().unwrap();
    let mut index_inputs = 0;
    for compression in [Compression::Raw, Compression::default()] {
        let bytes = sample_image(dir.path(), compression);
        // The uncompressed sample's chunk area is longer than 64 KiB.
        if let Some(input) = fuzzing::image_index_input(&bytes) {
            let n = usize::from(u16::from_le_bytes([input[0], input[1]]));
            let (area, index) = input[2..].split_at(n);
            assert_eq!(fuzzing::wrap(area, index), bytes);
            fuzzing::image_index(&input);
            index_inputs += 1;
        }

        let file = ImageFile::from_bytes(&bytes).unwrap();
        let frames = fuzzing::chunk_frame_inputs(&file);
        assert_eq!(frames.len(), file.chunks().len());
        for input in frames {
            fuzzing::chunk_frame(&input);
        }
    }
    assert_eq!(index_inputs, 1);
}

/// The image_reader target resolves a child against its built-in parent:
/// the child the seeds use opens as a two-layer chain whose parent runs are
/// flattened to the parent's chunks.
#[test]
fn fuzz_child_resolves_against_the_fuzz_parent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fuzz-child.lzr");
    fuzzing::write_fuzz_child(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let child = ImageFile::from_bytes(&bytes).unwrap();
    let parent = ImageFile::from_bytes(fuzzing::fuzz_parent()).unwrap();
    let image = Image::from_layers(vec![child, parent]).unwrap();
    assert_eq!(image.layers().len(), 2);
    assert!(
        image.extents().iter().any(|e| matches!(
            e.source,
            PageSource::Chunk { chunk, .. } if image.chunks()[chunk.0 as usize].layer == 1
        )),
        "no extent resolves to a parent chunk"
    );
    fuzzing::image_reader(&bytes);
}
