//! File descriptors of a seized child: pidfd_getfd and kcmp.

use std::cmp::Ordering;
use std::io::Read;

use tracee::{FdError, SeizeOptions, SeizedProcess, compare_open_files};

use crate::common::Testee;

#[test]
fn take_fd_copies_a_pipe_and_kcmp_finds_dups() {
    let child = Testee::spawn(&["fds"]);
    let line = child.line();
    let fds: Vec<i32> = line
        .strip_prefix("fds ")
        .expect("fds R W W2 NULL")
        .split(' ')
        .map(|s| s.parse().expect("fd"))
        .collect();
    let [r, w, w2, null] = fds[..] else {
        panic!("four fds expected in {line:?}")
    };
    let pid = child.pid();
    let process = SeizedProcess::seize(pid, SeizeOptions::default()).expect("seize");

    let ours = process.take_fd(r).expect("take the read end");
    let mut data = [0u8; 9];
    std::fs::File::from(ours)
        .read_exact(&mut data)
        .expect("read pipe");
    assert_eq!(&data, b"pipe-data");
    assert!(matches!(
        process.take_fd(999),
        Err(FdError::NoSuchFd { fd: 999, .. })
    ));

    assert!(process.same_open_file(w, w2).expect("kcmp"));
    assert!(!process.same_open_file(w, null).expect("kcmp"));
    assert!(!process.same_open_file(r, w).expect("kcmp"));
    assert_eq!(
        compare_open_files(pid, w, pid, w2).expect("kcmp"),
        Ordering::Equal
    );
    let a = compare_open_files(pid, r, pid, null).expect("kcmp");
    let b = compare_open_files(pid, null, pid, r).expect("kcmp");
    assert_eq!(a, b.reverse(), "a consistent order");
    assert!(matches!(
        process.same_open_file(w, 999),
        Err(FdError::Kcmp { .. })
    ));
    process.detach().expect("detach");
}
