//! Parent chains: incremental images resolved through their parents, and a
//! missing, changed, cyclic or too deep chain refused with its own error.

mod common;

use std::path::Path;

use common::*;
use snapshot_format::{
    Image, ImageId, ImageWriter, OpenError, PageSource, ParentRef, RegionInfo, WriteSummary,
    WriterOptions, parent_ref,
};

const BASE: u64 = 0x10_0000;
const PAGES: u64 = 16;

/// Writes an image of one region; `page(i)` says what page `i` is: `Some`
/// bytes (stored) or `None` (unchanged since the parent).
fn write_layer(
    path: &Path,
    parent: Option<ParentRef>,
    page: impl Fn(u64) -> Option<Vec<u8>>,
) -> WriteSummary {
    let opts = WriterOptions {
        chunk_size: 2 * PAGE,
        parent,
        ..Default::default()
    };
    let mut w = ImageWriter::create(path, opts).unwrap();
    w.begin_region(RegionInfo::raw_file(BASE, PAGES * PAGE as u64))
        .unwrap();
    for i in 0..PAGES {
        let addr = BASE + i * PAGE as u64;
        match page(i) {
            Some(bytes) => w.write_pages(addr, &bytes).unwrap(),
            None => w.write_parent(addr, PAGE as u64).unwrap(),
        }
    }
    w.finish().unwrap()
}

fn page_bytes(tag: u64) -> Vec<u8> {
    PageKind::Random(tag + 1).bytes()
}

fn read_page(image: &Image, i: u64) -> Vec<u8> {
    let mut buf = vec![0u8; PAGE];
    image
        .range_reader()
        .unwrap()
        .read(BASE + i * PAGE as u64, &mut buf)
        .unwrap();
    buf
}

#[test]
fn chain_of_three_resolves_every_page() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.lzr");
    let mid = dir.path().join("sub/mid.lzr");
    let top = dir.path().join("top.lzr");
    std::fs::create_dir(dir.path().join("sub")).unwrap();

    // base: every page i holds tag i, except page 3 is zero.
    let b = write_layer(&base, None, |i| {
        Some(if i == 3 { vec![0; PAGE] } else { page_bytes(i) })
    });
    // mid: pages 0..4 changed (tag 100+i), the rest from base.
    let m = write_layer(&mid, Some(parent_ref(&mid, &base, b.id).unwrap()), |i| {
        (i < 4).then(|| page_bytes(100 + i))
    });
    // top: even pages from 2 on changed (tag 200+i), page 1 zeroed.
    let t = write_layer(
        &top,
        Some(parent_ref(&top, &mid, m.id).unwrap()),
        |i| match i {
            1 => Some(vec![0; PAGE]),
            i if i >= 2 && i % 2 == 0 => Some(page_bytes(200 + i)),
            _ => None,
        },
    );
    assert_eq!(t.parent_bytes, 8 * PAGE as u64);

    let image = Image::open(&top).unwrap();
    assert_eq!(image.layers().len(), 3);
    assert_eq!(
        image.layers()[0].parent().unwrap().path,
        Path::new("sub/mid.lzr")
    );
    assert_eq!(
        image.layers()[1].parent().unwrap().path,
        Path::new("../base.lzr")
    );
    let expect = |i: u64| -> Vec<u8> {
        match i {
            1 => vec![0; PAGE],
            i if i >= 2 && i % 2 == 0 => page_bytes(200 + i),
            i if i < 4 => page_bytes(100 + i),
            _ => page_bytes(i),
        }
    };
    for i in 0..PAGES {
        assert!(read_page(&image, i) == expect(i), "page {i}");
        let loc = image.locate(BASE + i * PAGE as u64).unwrap();
        // Which layer serves the page.
        let want = match i {
            1 => None,
            i if i >= 2 && i % 2 == 0 => Some(0),
            i if i < 4 => Some(1),
            _ => Some(2),
        };
        let got = match loc.source {
            PageSource::Chunk { chunk, .. } => Some(image.chunk(chunk).unwrap().layer),
            PageSource::Zero => None,
            other => panic!("page {i}: {other:?}"),
        };
        assert_eq!(got, want, "page {i}");
    }
    // Chunk uses only name the addresses each chunk really serves: base's
    // chunk of pages 0-1 is fully overridden.
    let base_chunk0 = image.chunk_id(2, 0).unwrap();
    assert!(image.chunk_uses(base_chunk0).is_empty());
    // Moving the whole directory keeps the chain (relative paths).
    let moved = tempfile::tempdir().unwrap();
    let to = moved.path().join("d");
    std::fs::rename(dir.path(), &to).unwrap_or_else(|_| {
        // Across filesystems: copy instead.
        copy_dir(dir.path(), &to);
    });
    let image = Image::open(to.join("top.lzr")).unwrap();
    assert!(read_page(&image, 7) == page_bytes(7));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn missing_parent_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.lzr");
    let top = dir.path().join("top.lzr");
    let b = write_layer(&base, None, |i| Some(page_bytes(i)));
    write_layer(&top, Some(parent_ref(&top, &base, b.id).unwrap()), |i| {
        (i == 0).then(|| page_bytes(50))
    });
    std::fs::remove_file(&base).unwrap();
    let err = Image::open(&top).unwrap_err();
    assert!(matches!(err, OpenError::ParentMissing { .. }), "{err:?}");
    assert!(err.to_string().contains("base.lzr"), "{err}");
}

#[test]
fn changed_parent_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.lzr");
    let top = dir.path().join("top.lzr");
    let b = write_layer(&base, None, |i| Some(page_bytes(i)));
    write_layer(&top, Some(parent_ref(&top, &base, b.id).unwrap()), |_| None);
    // Rewrite the parent with one page different.
    write_layer(&base, None, |i| Some(page_bytes(i + u64::from(i == 5))));
    let err = Image::open(&top).unwrap_err();
    match err {
        OpenError::ParentChanged {
            expected, found, ..
        } => {
            assert_eq!(expected, b.id);
            assert_ne!(found, b.id);
        }
        other => panic!("expected ParentChanged, got {other:?}"),
    }
}

#[test]
fn corrupt_parent_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.lzr");
    let top = dir.path().join("top.lzr");
    let b = write_layer(&base, None, |i| Some(page_bytes(i)));
    write_layer(&top, Some(parent_ref(&top, &base, b.id).unwrap()), |_| None);
    std::fs::write(
        &base,
        b"not an image at all, but long enough to be read as one; padding padding",
    )
    .unwrap();
    let err = Image::open(&top).unwrap_err();
    assert!(matches!(err, OpenError::ParentInvalid { .. }), "{err:?}");
}

#[test]
fn cyclic_chain_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.lzr");
    let b = dir.path().join("b.lzr");
    // b names a.lzr (any id); a names b with b's real id. Opening a: a -> b
    // -> a again.
    let bs = write_layer(
        &b,
        Some(ParentRef {
            path: "a.lzr".into(),
            id: ImageId([7; 16]),
        }),
        |_| None,
    );
    write_layer(
        &a,
        Some(ParentRef {
            path: "b.lzr".into(),
            id: bs.id,
        }),
        |_| None,
    );
    let err = Image::open(&a).unwrap_err();
    assert!(matches!(err, OpenError::ParentCycle { .. }), "{err:?}");

    // An image naming itself.
    let s = dir.path().join("self.lzr");
    write_layer(
        &s,
        Some(ParentRef {
            path: "self.lzr".into(),
            id: ImageId([1; 16]),
        }),
        |_| None,
    );
    assert!(matches!(
        Image::open(&s),
        Err(OpenError::ParentCycle { .. })
    ));
}

#[test]
fn too_deep_chain_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let limit = snapshot_format::limits::MAX_PARENT_DEPTH;
    let mut prev: Option<(std::path::PathBuf, ImageId)> = None;
    for n in 0..=limit {
        let path = dir.path().join(format!("l{n}.lzr"));
        let parent = prev
            .as_ref()
            .map(|(p, id)| parent_ref(&path, p, *id).unwrap());
        let s = write_layer(&path, parent, |i| {
            (n == 0 || i == n as u64 % PAGES).then(|| page_bytes(i + n as u64))
        });
        if n + 1 == limit {
            // Exactly at the limit: opens and resolves.
            let image = Image::open(&path).unwrap();
            assert_eq!(image.layers().len(), limit);
        }
        prev = Some((path, s.id));
    }
    let (top, _) = prev.unwrap();
    let err = Image::open(&top).unwrap_err();
    assert!(
        matches!(err, OpenError::ParentChainTooDeep { .. }),
        "{err:?}"
    );
}

#[test]
fn parent_runs_outside_the_parent_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.lzr");
    let top = dir.path().join("top.lzr");
    // The parent holds only the first half of the region.
    let mut w = ImageWriter::create(&base, WriterOptions::default()).unwrap();
    w.begin_region(RegionInfo::raw_file(BASE, PAGES / 2 * PAGE as u64))
        .unwrap();
    w.write_pages(BASE, &page_bytes(1)).unwrap();
    let b = w.finish().unwrap();
    write_layer(&top, Some(parent_ref(&top, &base, b.id).unwrap()), |_| None);
    let err = Image::open(&top).unwrap_err();
    match err {
        OpenError::ParentRangeMissing { layer: 0, addr, .. } => {
            assert_eq!(addr, BASE + PAGES / 2 * PAGE as u64);
        }
        other => panic!("expected ParentRangeMissing, got {other:?}"),
    }
}

#[test]
fn layers_from_memory() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.lzr");
    let top = dir.path().join("top.lzr");
    let b = write_layer(&base, None, |i| Some(page_bytes(i)));
    write_layer(&top, Some(parent_ref(&top, &base, b.id).unwrap()), |i| {
        (i == 0).then(|| page_bytes(77))
    });
    let top_bytes = std::fs::read(&top).unwrap();
    let base_bytes = std::fs::read(&base).unwrap();
    assert!(matches!(
        Image::from_bytes(&top_bytes),
        Err(OpenError::ParentNotSupplied { layer: 0, .. })
    ));
    let layers = |a: &[u8], b: &[u8]| {
        vec![
            snapshot_format::ImageFile::from_bytes(a).unwrap(),
            snapshot_format::ImageFile::from_bytes(b).unwrap(),
        ]
    };
    let image = Image::from_layers(layers(&top_bytes, &base_bytes)).unwrap();
    assert!(read_page(&image, 0) == page_bytes(77));
    assert!(read_page(&image, 9) == page_bytes(9));
    assert!(matches!(
        Image::from_layers(layers(&base_bytes, &top_bytes)),
        Err(OpenError::UnexpectedLayer { layer: 0 })
    ));
}
