//! End-to-end tests of the `lazarus` binary: capture --from-file, inspect,
//! verify, extract.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
mod common;

use common::{lazarus, ok};

const PAGE: u64 = 4096;

/// Deterministic pseudo-random bytes.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A sparse memory file: data islands of every kind between holes, and a
/// length that is not a page multiple.
fn sparse_mem(path: &Path) -> Vec<u8> {
    let len = 24 * 1024 * 1024 + 1234;
    let mut model = vec![0u8; len];
    let f = File::create(path).unwrap();
    f.set_len(len as u64).unwrap();
    let mut put = |at: usize, bytes: &[u8]| {
        f.write_all_at(bytes, at as u64).unwrap();
        model[at..at + bytes.len()].copy_from_slice(bytes);
    };
    put(0, &noise(1, 300_000)); // incompressible, ends mid-page
    put(1 << 20, &b"compressible text ".repeat(20_000)); // compressible
    put(3 << 20, &vec![0u8; 256 * 1024]); // explicit zeros (data, not a hole)
    let block = noise(2, 64 * 1024);
    for i in 0..4 {
        put((5 << 20) + i * 64 * 1024, &block); // duplicate chunks
    }
    put(9 << 20, &[0xab; 100]); // a lone partial page
    put(len - 1234, &noise(3, 1234)); // the unaligned tail
    model
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[test]
fn sparse_file_round_trips_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let mem = dir.path().join("mem.raw");
    let img = dir.path().join("mem.lzr");
    let out = dir.path().join("out.raw");
    let model = sparse_mem(&mem);
    assert!(read(&mem) == model);

    for (workers, codec) in [("0", "zstd"), ("2", "zstd"), ("1", "raw")] {
        let summary = ok(&[
            &"capture",
            &"--from-file",
            &mem,
            &"-o",
            &img,
            &"--workers",
            &workers,
            &"--codec",
            &codec,
            &"--chunk-size",
            &"64K",
            &"--level",
            &"-1",
            &"--fsync",
        ]);
        assert!(summary.starts_with("captured "), "{summary}");
        assert!(summary.contains("GB/s"), "{summary}");
        assert!(summary.contains("3 deduplicated"), "{summary}");
        ok(&[&"extract", &img, &"-o", &out]);
        assert!(
            read(&out) == model,
            "workers={workers} codec={codec}: extracted bytes differ"
        );
        // Holes stay holes: far fewer blocks than the length.
        let meta = std::fs::metadata(&out).unwrap();
        assert!(meta.blocks() * 512 < meta.len() / 4, "output is not sparse");
    }
    // Nothing but our files in the directory (no temporary left over).
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["mem.lzr", "mem.raw", "out.raw"]);
}

#[test]
fn regions_and_parent_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let mem = dir.path().join("mem.raw");
    let model = sparse_mem(&mem);

    // Two regions of the file.
    let img = dir.path().join("two.lzr");
    let out = dir.path().join("two.raw");
    ok(&[
        &"capture",
        &"--from-file",
        &mem,
        &"-o",
        &img,
        &"--region",
        &"0x100000:1M",
        &"--region",
        &"0:256K",
    ]);
    let json: serde_json::Value =
        serde_json::from_str(&ok(&[&"inspect", &img, &"--json"])).unwrap();
    let regions = json["regions"].as_array().unwrap();
    assert_eq!(regions.len(), 2);
    assert_eq!(regions[0]["start"], 0);
    assert_eq!(regions[1]["start"], 1 << 20);
    ok(&[&"extract", &img, &"-o", &out]);
    let got = read(&out);
    assert_eq!(got.len(), 2 << 20);
    assert!(got[..256 << 10] == model[..256 << 10]);
    assert!(got[256 << 10..1 << 20].iter().all(|&b| b == 0));
    assert!(got[1 << 20..2 << 20] == model[1 << 20..2 << 20]);
    // --pack and a sub-range.
    ok(&[
        &"extract",
        &img,
        &"-o",
        &out,
        &"--region",
        &"0x100000:8K",
        &"--pack",
    ]);
    assert!(read(&out) == model[1 << 20..(1 << 20) + 8192]);

    // An incremental image against a parent.
    let base = dir.path().join("base.lzr");
    ok(&[&"capture", &"--from-file", &mem, &"-o", &base]);
    let same = lazarus(&[
        &"capture",
        &"--from-file",
        &mem,
        &"-o",
        &base,
        &"--parent",
        &base,
    ]);
    assert_eq!(same.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&same.stderr).contains("cannot also be the output"));
    let f = std::fs::OpenOptions::new().write(true).open(&mem).unwrap();
    let mut changed = model.clone();
    for at in [4096usize, (1 << 20) + 8192, 7 << 20] {
        f.write_all_at(b"CHANGED", at as u64).unwrap();
        changed[at..at + 7].copy_from_slice(b"CHANGED");
    }
    drop(f);
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let child = sub.join("child.lzr");
    let summary = ok(&[
        &"capture",
        &"--from-file",
        &mem,
        &"-o",
        &child,
        &"--parent",
        &base,
    ]);
    assert!(!summary.contains(" 0 B from parent"), "{summary}");
    let out2 = dir.path().join("child.raw");
    ok(&[&"extract", &child, &"-o", &out2]);
    assert!(read(&out2) == changed);
    let json: serde_json::Value =
        serde_json::from_str(&ok(&[&"inspect", &child, &"--json"])).unwrap();
    assert_eq!(json["parent_chain"].as_array().unwrap().len(), 2);
    assert!(json["stats"]["parent_bytes"].as_u64().unwrap() > 512 << 10);
    // The child stores far less than the parent.
    assert!(std::fs::metadata(&child).unwrap().len() * 4 < std::fs::metadata(&base).unwrap().len());
    ok(&[&"verify", &child]);

    // Parent gone: verify and extract fail with a clear message.
    std::fs::remove_file(&base).unwrap();
    let v = lazarus(&[&"verify", &child]);
    assert_eq!(v.status.code(), Some(1));
    let err = String::from_utf8_lossy(&v.stderr);
    assert!(
        err.contains("parent image") && err.contains("base.lzr"),
        "{err}"
    );
    let e = lazarus(&[&"extract", &child, &"-o", &out2]);
    assert_eq!(e.status.code(), Some(1));
}

#[test]
fn verify_names_a_corrupted_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let mem = dir.path().join("mem.raw");
    let img = dir.path().join("mem.lzr");
    sparse_mem(&mem);
    ok(&[&"capture", &"--from-file", &mem, &"-o", &img]);
    let report = ok(&[&"verify", &img]);
    assert!(report.starts_with("ok: "), "{report}");

    // Damage chunk 2 in the middle of its frame.
    let file = snapshot_format::ImageFile::open(&img).unwrap();
    let victim = file.chunks()[2];
    let backing = file.chunk_backing(2);
    drop(file);
    let mut bytes = read(&img);
    bytes[(victim.offset + u64::from(victim.stored_len) / 2) as usize] ^= 0x55;
    std::fs::write(&img, &bytes).unwrap();

    let out = lazarus(&[&"verify", &img]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad chunk 2 "), "{err}");
    assert!(
        err.contains(&format!("file offset {}", victim.offset)),
        "{err}"
    );
    let (_, run) = backing[0];
    assert!(
        err.contains(&format!("region 0 {:#x}-", run.start)),
        "{err}"
    );
    assert!(err.contains("1 problem found"), "{err}");
    assert!(
        !err.contains("bad chunk 1 ") && !err.contains("bad chunk 3 "),
        "{err}"
    );
    // Extract refuses rather than writing wrong bytes.
    let x = lazarus(&[&"extract", &img, &"-o", &dir.path().join("x.raw")]);
    assert_eq!(x.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&x.stderr).contains("chunk 2"));
}

#[test]
fn capture_from_file_on_a_full_disk_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let Some(fs) = fixtures::mount::TempMount::new("tmpfs", "size=8M") else {
        eprintln!("skipped: cannot mount a tmpfs (not root?)");
        return;
    };
    // 24 MiB of incompressible data: the image cannot fit in 8 MiB.
    let mem = dir.path().join("mem.raw");
    std::fs::write(&mem, noise(11, 24 << 20)).unwrap();
    let img = fs.path().join("mem.lzr");
    for workers in ["0", "2"] {
        let out = lazarus(&[
            &"capture",
            &"--from-file",
            &mem,
            &"-o",
            &img,
            &"--workers",
            &workers,
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(err.lines().count(), 1, "not one line: {err}");
        assert!(err.contains("no space left"), "{err}");
        assert!(err.contains("mem.lzr"), "names the image: {err}");
        let left: Vec<_> = std::fs::read_dir(fs.path()).unwrap().collect();
        assert!(left.is_empty(), "left on the full disk: {left:?}");
    }
    // With room the same capture works; the image (a process's memory, secrets
    // included) is readable by its owner only.
    let img = dir.path().join("mem.lzr");
    ok(&[&"capture", &"--from-file", &mem, &"-o", &img]);
    ok(&[&"verify", &img]);
    assert_eq!(std::fs::metadata(&img).unwrap().mode() & 0o777, 0o600);
}

#[test]
fn inspect_json_parses_and_text_is_complete() {
    let dir = tempfile::tempdir().unwrap();
    let mem = dir.path().join("mem.raw");
    let img = dir.path().join("mem.lzr");
    let model = sparse_mem(&mem);
    ok(&[&"capture", &"--from-file", &mem, &"-o", &img]);
    let json: serde_json::Value =
        serde_json::from_str(&ok(&[&"inspect", &img, &"--json"])).unwrap();
    assert_eq!(json["version"], "1.0");
    assert_eq!(json["page_size"], 4096);
    assert_eq!(json["id"].as_str().unwrap().len(), 32);
    assert_eq!(json["metadata"]["source_file"]["len"], model.len() as u64);
    assert_eq!(
        json["stats"]["raw_bytes"],
        model.len() as u64 / PAGE * PAGE + PAGE
    );
    assert!(json["dedup_saved_bytes"].as_u64().unwrap() >= 3 * 64 * 1024);
    assert_eq!(json["regions"][0]["kind"], "raw_file");
    assert_eq!(json["parent_chain"].as_array().unwrap().len(), 1);
    assert!(json["parent_chain_error"].is_null());
    let text = ok(&[&"inspect", &img]);
    for want in [
        "id ",
        "chunks ",
        "dedup saved",
        "regions",
        "raw_file",
        "parent     none",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}

#[test]
fn inspect_into_a_closed_pipe_exits_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let mem = dir.path().join("mem.raw");
    let img = dir.path().join("mem.lzr");
    sparse_mem(&mem);
    ok(&[&"capture", &"--from-file", &mem, &"-o", &img]);
    // `lazarus inspect IMG | head -0`: the reader is gone before the first
    // line (Rust ignores SIGPIPE, so the write fails with EPIPE).
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lazarus"))
        .args([std::ffi::OsStr::new("inspect"), img.as_os_str()])
        .stdout(writer)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}

#[test]
fn errors_are_one_line_with_a_non_zero_status() {
    let dir = tempfile::tempdir().unwrap();
    let mem = dir.path().join("mem.raw");
    std::fs::write(&mem, noise(5, 3 * PAGE as usize)).unwrap();
    let img: PathBuf = dir.path().join("x.lzr");
    let (m, i) = (mem.to_str().unwrap(), img.to_str().unwrap());
    let capture = |extra: &[&str]| -> Vec<String> {
        let mut v = vec!["capture", "--from-file", m, "-o", i];
        v.extend_from_slice(extra);
        v.into_iter().map(String::from).collect()
    };
    let cases: Vec<Vec<String>> = vec![
        vec!["inspect".into(), m.into()],
        vec!["verify".into(), "/nonexistent.lzr".into()],
        vec!["capture", "--from-file", "/nonexistent", "-o", i]
            .into_iter()
            .map(String::from)
            .collect(),
        capture(&["--chunk-size", "64000"]),
        capture(&["--level", "99"]),
        capture(&["--region", "0:1M"]),
        capture(&["--region", "100:4K"]),
        vec!["capture", "--from-file", m, "-o", "/nonexistent-dir/x.lzr"]
            .into_iter()
            .map(String::from)
            .collect(),
    ];
    for args in cases {
        let args: Vec<&dyn AsRef<std::ffi::OsStr>> = args.iter().map(|a| a as _).collect();
        let out = lazarus(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(err.lines().count(), 1, "not one line: {err}");
        assert!(err.starts_with("lazarus: error: "), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(!img.exists());
    // Usage errors are clap's (status 2).
    let out = lazarus(&[&"capture", &"-o", &img]);
    assert_eq!(out.status.code(), Some(2));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 12, ..Default::default() })]

    /// Random sparse files (islands of random, repeated and zero bytes at
    /// arbitrary, unaligned offsets; any length) survive capture + extract
    /// byte for byte.
    #[test]
    fn random_sparse_files_round_trip(
        len in 1usize..(3 << 20),
        islands in proptest::collection::vec((0.0f64..1.0, 1usize..70_000, 0u8..3, proptest::prelude::any::<u64>()), 0..8),
        chunk_kib in proptest::sample::select(vec![4u64, 16, 64, 256]),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mem = dir.path().join("m.raw");
        let img = dir.path().join("m.lzr");
        let out = dir.path().join("o.raw");
        let f = File::create(&mem).unwrap();
        f.set_len(len as u64).unwrap();
        let mut model = vec![0u8; len];
        for (pos, size, kind, seed) in islands {
            let at = ((len as f64) * pos) as usize;
            let size = size.min(len - at);
            let bytes = match kind {
                0 => noise(seed, size),
                1 => vec![(seed as u8) | 1; size],
                _ => vec![0u8; size],
            };
            f.write_all_at(&bytes, at as u64).unwrap();
            model[at..at + size].copy_from_slice(&bytes);
        }
        drop(f);
        let chunk = format!("{chunk_kib}K");
        ok(&[&"capture", &"--from-file", &mem, &"-o", &img, &"--chunk-size", &chunk, &"--workers", &"2"]);
        ok(&[&"extract", &img, &"-o", &out]);
        proptest::prop_assert!(read(&out) == model);
    }
}
