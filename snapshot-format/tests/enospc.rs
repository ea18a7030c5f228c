//! A full disk during a write: a clear ENOSPC error and no file left behind,
//! under the final name or the temporary one. Uses a real 1 MiB tmpfs (needs
//! root; skipped with a message otherwise).

mod common;

use std::path::Path;

use common::*;
use snapshot_format::{Compression, ImageWriter, RegionInfo, WriteError, WriterOptions};

fn fill(path: &Path, workers: usize) -> Result<(), WriteError> {
    let mut first_err = None;
    let opts = WriterOptions {
        workers,
        compression: Compression::default(),
        ..Default::default()
    };
    let mut w = ImageWriter::create(path, opts)?;
    let pages = 1024u64; // 4 MiB of incompressible pages on a 1 MiB disk
    w.begin_region(RegionInfo::raw_file(0, pages * PAGE as u64))?;
    for i in 0..pages {
        // Keep writing after the first error, as a careless caller would:
        // the writer must stay failed.
        if let Err(e) = w.write_pages(i * PAGE as u64, &PageKind::Random(i).bytes()) {
            if first_err.is_none() {
                first_err = Some(e);
            } else {
                assert!(matches!(e, WriteError::Poisoned), "{e}");
            }
        }
    }
    match first_err {
        Some(e) => {
            assert!(matches!(w.finish(), Err(WriteError::Poisoned)));
            Err(e)
        }
        None => w.finish().map(drop),
    }
}

#[test]
fn full_disk_leaves_no_file() {
    let Some(fs) = fixtures::mount::TempMount::new("tmpfs", "size=1M") else {
        eprintln!("SKIPPED: cannot mount a tmpfs (not root?); ENOSPC behaviour untested");
        return;
    };
    for workers in [0, 2] {
        let err = fill(&fs.path().join("full.lzr"), workers).unwrap_err();
        match &err {
            WriteError::Io { source, .. } => {
                assert_eq!(source.kind(), std::io::ErrorKind::StorageFull, "{err}");
            }
            other => panic!("expected an I/O error, got {other:?}"),
        }
        let left: Vec<_> = std::fs::read_dir(fs.path()).unwrap().collect();
        assert!(left.is_empty(), "workers={workers}: left behind {left:?}");
    }
    // The disk is usable again: a small image fits.
    let path = fs.path().join("small.lzr");
    let mut w = ImageWriter::create(&path, WriterOptions::default()).unwrap();
    w.begin_region(RegionInfo::raw_file(0, PAGE as u64))
        .unwrap();
    w.write_pages(0, &PageKind::Random(1).bytes()).unwrap();
    w.finish().unwrap();
    snapshot_format::Image::open(&path).unwrap();
}
