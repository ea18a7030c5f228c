//! Splits real images into seed inputs for the fuzz targets in `fuzz/`
//! (see `fuzz/README.md`, which runs it from `fuzz/seeds.sh`):
//!
//! ```sh
//! cargo run -p snapshot-format --example fuzz_seeds -- OUT_DIR IMAGE...
//! ```
//!
//! writes, for each image `NAME.lzr`, `OUT_DIR/image_reader/NAME` (the image
//! as is), `OUT_DIR/image_index/NAME` (when its chunk area is under 64 KiB)
//! and `OUT_DIR/chunk_frame/NAME-<chunk>` (one per chunk the input can state).
//! It adds two images of its own: `fuzz-parent` (the parent the
//! `image_reader` target resolves parents against) and `fuzz-child`, an
//! incremental image captured against it.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use snapshot_format::ImageFile;
use snapshot_format::fuzzing::{
    chunk_frame_inputs, fuzz_parent, image_index_input, write_fuzz_child,
};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let Some(out) = args.next().map(PathBuf::from) else {
        bail!("usage: fuzz_seeds OUT_DIR IMAGE...");
    };
    for target in ["image_reader", "image_index", "chunk_frame"] {
        std::fs::create_dir_all(out.join(target))
            .with_context(|| format!("creating {}", out.join(target).display()))?;
    }
    let tmp = tempfile::tempdir()?;
    let mut images: Vec<PathBuf> = args.map(PathBuf::from).collect();
    images.extend(parent_and_child(tmp.path())?);
    for image in images {
        let bytes =
            std::fs::read(&image).with_context(|| format!("reading {}", image.display()))?;
        let file = ImageFile::from_bytes(&bytes)
            .with_context(|| format!("{} is not a valid image", image.display()))?;
        let name = image
            .file_stem()
            .with_context(|| format!("{} has no file name", image.display()))?
            .to_string_lossy()
            .into_owned();
        write(&out.join("image_reader").join(&name), &bytes)?;
        if let Some(input) = image_index_input(&bytes) {
            write(&out.join("image_index").join(&name), &input)?;
        }
        let frames = chunk_frame_inputs(&file);
        for (i, input) in frames.iter().enumerate() {
            write(&out.join("chunk_frame").join(format!("{name}-{i}")), input)?;
        }
        println!(
            "{}: {} bytes, {} chunks, {} frame seeds",
            image.display(),
            bytes.len(),
            file.chunks().len(),
            frames.len()
        );
    }
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Writes `fuzz-parent.lzr` and `fuzz-child.lzr` into `dir`.
fn parent_and_child(dir: &Path) -> anyhow::Result<[PathBuf; 2]> {
    let parent = dir.join("fuzz-parent.lzr");
    std::fs::write(&parent, fuzz_parent())?;
    let child = dir.join("fuzz-child.lzr");
    write_fuzz_child(&child)?;
    Ok([parent, child])
}
