//! File-backed and shared memory: private file mappings (copied-on-write pages
//! written back), shared file mappings, memfds and shared anonymous memory; and the
//! refusal of a mapped file changed since the capture, or replaced by another file
//! that looks the same (size, modification time, bytes).

use std::os::unix::fs::FileExt;
use std::path::Path;

use restore_agent::process::ProcessRestoreError;

use crate::support::{
    Alone, Captured, T, assert_memory_matches, capture_fixture, children, options, restore,
    restore_result, signal, tail,
};

fn capture_filemap() -> Captured {
    capture_dir_fixture("filemap", |dir| {
        vec![
            "--dir".to_owned(),
            dir.to_str().expect("utf-8").to_owned(),
            "--interval-ms".into(),
            "20".into(),
        ]
    })
}

/// Captures `name` run with the arguments `args(dir)` gives for a fresh directory.
fn capture_dir_fixture(name: &str, args: impl Fn(&Path) -> Vec<String>) -> Captured {
    let files = tempfile::tempdir().expect("tempdir");
    let args = args(files.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut c = capture_fixture(name, &args, |l| l.is("TICK") && l.u64("n") >= 3);
    c.keep(files);
    c
}

#[test]
fn file_backed_and_shared_memory_come_back() {
    let c = capture_filemap();
    let k = c.last("TICK").u64("n");
    let ready = c.lines[0].clone();
    let mut opts = options(&c);
    opts.stopped = true;
    let restored = restore(&c, opts);
    let pid = restored.pid();
    assert_memory_matches(pid, &c.image);
    // The shared file fd is open again, on the same file.
    let shared_fd = ready.u64("shared_fd") as i32;
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/fd/{shared_fd}")).expect("fd link"),
        Path::new(ready.str("shared_path"))
    );
    signal(pid, libc::SIGCONT);
    let mut out = tail(&c, pid);
    // Each tick verifies every region (and that the shared file equals its mapping)
    // and stores the tick in word 0 of the shared regions.
    for n in k + 1..=k + 3 {
        let l = out.wait_tag("TICK", T);
        assert_eq!(l.u64("n"), n);
        assert_eq!(l.u64("counter"), n);
    }
    restored.finish().expect("finish");
    let alone = Alone::new(pid);
    let l = out.wait_line(|l| l.is("TICK") && l.u64("n") >= k + 5, T);
    // The restored process writes the same shared file the original did.
    let file = std::fs::File::open(ready.str("shared_path")).expect("shared file");
    let mut word = [0u8; 8];
    file.read_exact_at(&mut word, 0).expect("read");
    assert!(u64::from_le_bytes(word) >= l.u64("n"));
    drop(alone);
}

#[test]
fn a_changed_mapped_file_is_refused_before_anything_starts() {
    let c = capture_filemap();
    let ready = c.lines[0].clone();
    // Same size, same inode, other bytes: only the modification time tells.
    let private = ready.str("private_path").to_owned();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&private)
        .expect("open the private file");
    file.write_all_at(b"changed", 4096).expect("write");
    drop(file);
    let children_before = children();
    match restore_result(&c, options(&c)) {
        Err(ProcessRestoreError::FileChanged { path, change, .. }) => {
            assert_eq!(path, Path::new(&private));
            assert!(change.contains("modified"), "{change}");
        }
        other => panic!("expected FileChanged, got {other:?}"),
    }
    // Nothing was started: no child, and the captured pid is free.
    assert_eq!(children(), children_before);
    assert!(!Path::new(&format!("/proc/{}", c.pid)).exists());
}

#[test]
fn a_mapped_file_replaced_by_an_identical_looking_one_is_refused() {
    let c = capture_filemap();
    let ready = c.lines[0].clone();
    // Same bytes, same size, same modification time, another inode: renamed over the
    // captured path, as an attacker (or a package upgrade) would swap it.
    let private = Path::new(ready.str("private_path")).to_owned();
    let mtime = std::fs::metadata(&private)
        .and_then(|m| m.modified())
        .expect("stat the private file");
    let twin = private.with_extension("twin");
    std::fs::copy(&private, &twin).expect("copy");
    std::fs::File::options()
        .write(true)
        .open(&twin)
        .and_then(|f| f.set_modified(mtime))
        .expect("set the twin's modification time");
    std::fs::rename(&twin, &private).expect("rename over the captured file");
    let children_before = children();
    match restore_result(&c, options(&c)) {
        Err(ProcessRestoreError::FileChanged { path, change, .. }) => {
            assert_eq!(path, private);
            assert!(change.contains("another file now"), "{change}");
        }
        other => panic!("expected FileChanged, got {other:?}"),
    }
    assert_eq!(children(), children_before);
    assert!(!Path::new(&format!("/proc/{}", c.pid)).exists());
}
