//! Round trips through the writer and reader: random layouts and contents,
//! every page checked byte for byte.

mod common;

use common::*;
use proptest::prelude::*;
use snapshot_format::{Compression, Image, ImageFile, PageSource, RegionInfo, WriterOptions};

fn page_kind() -> impl Strategy<Value = PageKind> {
    prop_oneof![
        2 => Just(PageKind::Skip),
        3 => Just(PageKind::Zero),
        2 => any::<u64>().prop_map(PageKind::Random),
        2 => (0u64..64).prop_map(PageKind::Text),
        3 => (0u8..3).prop_map(PageKind::Pattern),
    ]
}

fn compression() -> impl Strategy<Value = Compression> {
    prop_oneof![
        Just(Compression::Raw),
        (-3i32..4).prop_map(|level| Compression::Zstd { level }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_layouts_round_trip(
        regions in prop::collection::vec(prop::collection::vec(page_kind(), 1..48), 1..5),
        chunk_pages in 1usize..9,
        workers in 0usize..3,
        compression in compression(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img.lzr");
        let model = layout(regions);
        let summary = write_model(&path, &model, opts(chunk_pages, workers, compression));
        let image = Image::open(&path).unwrap();
        prop_assert_eq!(image.id(), summary.id);
        check_model(&image, &model);
        // Every use of a chunk lies within one aligned chunk-size window
        // (a deduplicated chunk is used in several windows).
        let window = image.top().chunk_size() as u64;
        for id in 0..image.chunks().len() as u32 {
            let uses = image.chunk_uses(snapshot_format::ChunkId(id));
            prop_assert!(!uses.is_empty());
            prop_assert!(uses.iter().all(|u| u.addr / window == (u.addr + u.len - 1) / window));
        }

        // The summary agrees with the model.
        let pages: Vec<PageKind> = model.iter().flat_map(|r| r.pages.clone()).collect();
        let zero_written = pages.iter().filter(|k| **k == PageKind::Zero).count() as u64;
        let data = pages.iter().filter(|k| !matches!(k, PageKind::Skip | PageKind::Zero)).count() as u64;
        prop_assert_eq!(summary.zero_pages, zero_written);
        prop_assert_eq!(summary.data_bytes, data * PAGE as u64);
        prop_assert_eq!(summary.raw_bytes, pages.len() as u64 * PAGE as u64);
        let stats = image.top().stats();
        prop_assert_eq!(stats.data_bytes, summary.data_bytes);
        prop_assert_eq!(stats.raw_bytes, summary.raw_bytes);
        prop_assert_eq!(stats.chunks as u64, summary.chunks);
        prop_assert_eq!(stats.stored_bytes, summary.stored_bytes);
        prop_assert_eq!(std::fs::metadata(&path).unwrap().len(), summary.file_len);
        // Only the image is left in the directory.
        prop_assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // The same bytes parse from memory too.
        let from_bytes = Image::from_bytes(&std::fs::read(&path).unwrap()).unwrap();
        prop_assert_eq!(from_bytes.extents(), image.extents());
    }
}

#[test]
fn identical_chunks_are_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dedup.lzr");
    // Four regions of the same 8 pages; chunks of 4 pages: 2 unique chunks.
    // Regions start on 64 KiB boundaries so that the blocks align with the
    // 16 KiB chunk windows.
    let block: Vec<PageKind> = (0..8).map(|i| PageKind::Random(i + 1)).collect();
    let model: Vec<ModelRegion> = (0..4u64)
        .map(|i| ModelRegion {
            start: 0x100_0000 + i * 0x10000,
            pages: block.clone(),
        })
        .collect();
    for workers in [0, 2] {
        let summary = write_model(&path, &model, opts(4, workers, Compression::default()));
        assert_eq!(summary.chunks, 2);
        assert_eq!(summary.dedup_hits, 6);
        assert_eq!(summary.dedup_bytes, 6 * 4 * PAGE as u64);
        let image = Image::open(&path).unwrap();
        check_model(&image, &model);
        // Each chunk backs four places.
        for id in 0..2 {
            assert_eq!(image.chunk_uses(snapshot_format::ChunkId(id)).len(), 4);
        }
        assert_eq!(image.top().stats().dedup_saved_bytes(), 6 * 4 * PAGE as u64);
    }
}

#[test]
fn large_region_with_many_chunks_and_workers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.lzr");
    // 24 MiB: a mix of every kind, fed in large writes.
    let pages: Vec<PageKind> = (0..6144u64)
        .map(|i| match (i / 7) % 5 {
            0 => PageKind::Zero,
            1 => PageKind::Random(i),
            2 => PageKind::Text(i % 50),
            3 => PageKind::Skip,
            _ => PageKind::Pattern((i % 3) as u8),
        })
        .collect();
    let model = layout(vec![pages]);
    let summary = write_model(&path, &model, opts(16, 2, Compression::default()));
    assert!(summary.stored_bytes < summary.data_bytes);
    let image = Image::open(&path).unwrap();
    check_model(&image, &model);
}

#[test]
fn file_and_zero_runs_and_explicit_writes() {
    use snapshot_format::{FileIdentity, FileMapping, ImageWriter, RegionKind};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file.lzr");
    let mut w = ImageWriter::create(&path, WriterOptions::default()).unwrap();
    let progress = w.progress();
    let mut info = RegionInfo::raw_file(0x40_0000, 8 * PAGE as u64);
    info.kind = RegionKind::FilePrivate;
    info.file = Some(FileMapping {
        path: "/usr/lib/libc.so.6".into(),
        offset: 0x2000,
        identity: FileIdentity {
            dev: 1,
            inode: 2,
            size: 3,
            mtime_sec: 4,
            mtime_nsec: 5,
        },
    });
    w.begin_region(info.clone()).unwrap();
    w.write_from_file(0x40_0000, 2 * PAGE as u64).unwrap();
    w.write_pages(0x40_0000 + 2 * PAGE as u64, &PageKind::Random(1).bytes())
        .unwrap();
    w.write_zero(0x40_0000 + 3 * PAGE as u64, PAGE as u64)
        .unwrap();
    w.write_from_file(0x40_0000 + 5 * PAGE as u64, 3 * PAGE as u64)
        .unwrap();
    assert_eq!(progress.bytes(), 8 * PAGE as u64);
    // Out of order, unaligned, outside the region, parent without parent.
    assert!(w.write_zero(0x40_0000, PAGE as u64).is_err());
    assert!(w.write_zero(0x40_0000 + 100, PAGE as u64).is_err());
    let summary = w.finish().unwrap();
    assert_eq!(summary.file_bytes, 5 * PAGE as u64);
    assert_eq!(summary.zero_bytes, 2 * PAGE as u64);

    let image = Image::open(&path).unwrap();
    assert_eq!(image.regions()[0], info);
    assert_eq!(image.region_at(0x40_0000), Some(0));
    assert_eq!(image.region_at(0x40_0000 + 8 * PAGE as u64 - 1), Some(0));
    assert_eq!(image.region_at(0x40_0000 + 8 * PAGE as u64), None);
    assert_eq!(image.region_at(0x3f_ffff), None);
    let loc = image.locate(0x40_0000 + 6 * PAGE as u64 + 5).unwrap();
    match loc.source {
        PageSource::File {
            layer: 0,
            region: 0,
            offset,
        } => {
            assert_eq!(offset, 0x2000 + 6 * PAGE as u64 + 5);
        }
        other => panic!("expected a file source, got {other:?}"),
    }
    assert_eq!(loc.len, 2 * PAGE as u64 - 5);
    assert!(matches!(
        image.locate(0x40_0000 + 4 * PAGE as u64).unwrap().source,
        PageSource::Zero
    ));
    let mut reader = image.range_reader().unwrap();
    let mut buf = vec![0u8; PAGE];
    assert!(matches!(
        reader.read(0x40_0000, &mut buf),
        Err(snapshot_format::ReadError::FileBacked { .. })
    ));
    assert!(matches!(
        reader.read(0x10, &mut buf),
        Err(snapshot_format::ReadError::Unmapped { addr: 0x10 })
    ));
}

#[test]
fn metadata_round_trips() {
    use snapshot_format::{ImageWriter, ProcessMetadata, SourceFile};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.lzr");
    let meta = ProcessMetadata {
        pid: Some(1234),
        cmdline: vec!["/bin/app".into(), "--flag".into()],
        exe: Some("/bin/app".into()),
        kernel_release: Some("6.18.0".into()),
        page_size: Some(4096),
        captured_at: Some(std::time::SystemTime::now()),
        source_file: Some(SourceFile {
            path: "/tmp/mem".into(),
            len: 5000,
        }),
        ..Default::default()
    };
    let mut w = ImageWriter::create(&path, WriterOptions::default()).unwrap();
    w.set_metadata(meta.clone());
    w.begin_region(RegionInfo::raw_file(0, PAGE as u64))
        .unwrap();
    w.finish().unwrap();
    let f = ImageFile::open(&path).unwrap();
    assert_eq!(f.metadata(), &meta);
    assert_eq!(f.version(), (1, 0));
    assert_eq!(f.page_size(), 4096);
    assert_eq!(f.chunks().len(), 0);
    assert_eq!(f.max_chunk_raw_len(), 0);
}

#[test]
fn dropped_or_failed_writers_leave_nothing() {
    use snapshot_format::ImageWriter;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("never.lzr");
    for workers in [0, 2] {
        let mut w = ImageWriter::create(
            &path,
            WriterOptions {
                workers,
                ..Default::default()
            },
        )
        .unwrap();
        w.begin_region(RegionInfo::raw_file(0, 64 * PAGE as u64))
            .unwrap();
        for i in 0..40u64 {
            w.write_pages(i * PAGE as u64, &PageKind::Random(i + 1).bytes())
                .unwrap();
        }
        // A misuse error, then the caller gives up.
        assert!(
            w.begin_region(RegionInfo::raw_file(0, PAGE as u64))
                .is_err()
        );
        drop(w);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "workers={workers}"
        );
    }
}

#[test]
fn threads_share_one_image_and_decode_concurrently() {
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.lzr");
    let pages: Vec<PageKind> = (0..512u64)
        .map(|i| {
            if i % 3 == 0 {
                PageKind::Text(i % 40)
            } else {
                PageKind::Random(i)
            }
        })
        .collect();
    let model = layout(vec![pages]);
    write_model(&path, &model, opts(16, 2, Compression::default()));
    let image = Arc::new(Image::open(&path).unwrap());
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let image = Arc::clone(&image);
            let model = model.clone();
            std::thread::spawn(move || {
                // Each thread: its own decoder and buffer, allocated once.
                let mut dec = snapshot_format::ChunkDecoder::new().unwrap();
                let mut buf = vec![0u8; image.max_chunk_raw_len()];
                let r = &model[0];
                for k in 0..r.pages.len() {
                    let pi = (k * 7 + t * 13) % r.pages.len();
                    let addr = r.start + (pi * PAGE) as u64;
                    let loc = image.locate(addr).unwrap();
                    let PageSource::Chunk { chunk, offset } = loc.source else {
                        panic!("page {pi} is not in a chunk: {loc:?}");
                    };
                    let n = image.decode_chunk(chunk, &mut dec, &mut buf).unwrap();
                    assert_eq!(n, image.chunk(chunk).unwrap().entry.raw_len as usize);
                    let off = offset as usize;
                    assert!(buf[off..off + PAGE] == r.pages[pi].bytes()[..]);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}
