//! A frozen process's open file descriptors.
//!
//! For each fd in `/proc/PID/task/TID/fd`: the link text (a path, `pipe:[ino]`,
//! `socket:[ino]`, `anon_inode:[eventfd]`), `stat` through the link (the open inode
//! itself: type, device, inode, size, mtime), and `fdinfo` (offset and open flags,
//! `O_CLOEXEC` included).
//!
//! **Shared open files.** Two fds share one open file description when one was made
//! from the other (`dup`, `2>&1`, inheritance): they share the offset and the status
//! flags, and restore must `dup3` one from the other rather than open the file twice.
//! Such fds necessarily have the same inode, so candidates are grouped by `(dev,
//! inode)` and only compared within a group with `kcmp(KCMP_FILE)`; each fd records the
//! lowest fd it shares with.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;

use snapshot_format::process::{FdKind, FdState};

use crate::classify::identity_of;
use crate::error::CaptureError;
use crate::state::{proc_error, read_small};

/// Most open fds captured (the kernel's default `fs.nr_open` is 2^20).
pub const MAX_FDS: usize = 1 << 20;

/// Reads the fds of process `pid` through its live thread `tid`.
pub(crate) fn collect(pid: i32, tid: i32) -> Result<Vec<FdState>, CaptureError> {
    let dir = PathBuf::from(format!("/proc/{pid}/task/{tid}"));
    let mut numbers = Vec::new();
    for entry in std::fs::read_dir(dir.join("fd")).map_err(proc_error(pid, "the fd list"))? {
        let entry = entry.map_err(proc_error(pid, "the fd list"))?;
        if let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        {
            if numbers.len() >= MAX_FDS {
                return Err(CaptureError::Proc {
                    pid,
                    what: "the fd list".to_owned(),
                    source: std::io::Error::other(format!("more than {MAX_FDS} open fds")),
                });
            }
            numbers.push(fd);
        }
    }
    numbers.sort_unstable();

    let mut fds = Vec::with_capacity(numbers.len());
    for fd in numbers {
        let link = dir.join("fd").join(fd.to_string());
        let what = format!("fd {fd}");
        // ENOENT: closed meanwhile (possible only if another process shares the fd
        // table, or for a capture of our own ranges): skip it.
        let gone = |e: &std::io::Error| e.raw_os_error() == Some(libc::ENOENT);
        let read = (|| {
            let path = std::fs::read_link(&link)?;
            let meta = std::fs::metadata(&link)?;
            let info = read_small(&dir.join("fdinfo").join(fd.to_string()))?;
            Ok::<_, std::io::Error>((path, meta, info))
        })();
        let (path, meta, info) = match read {
            Ok(r) => r,
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(proc_error(pid, &what)(e)),
        };
        let (pos, flags) = parse_fdinfo(&info).ok_or_else(|| CaptureError::Proc {
            pid,
            what: format!("fdinfo of fd {fd}"),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "no pos: or flags: line"),
        })?;
        let kind = kind_of(&meta.file_type(), path.as_os_str().as_bytes());
        fds.push(FdState {
            fd,
            kind,
            identity: (kind == FdKind::Regular).then(|| identity_of(&meta)),
            path,
            flags,
            pos,
            mode: meta.mode(),
            dev: meta.dev(),
            inode: meta.ino(),
            rdev: meta.rdev(),
            shares_with: None,
        });
    }

    // Group by inode, then kcmp within each group.
    let mut by_inode: HashMap<(u64, u64), Vec<usize>> = HashMap::new();
    for (i, f) in fds.iter().enumerate() {
        by_inode.entry((f.dev, f.inode)).or_default().push(i);
    }
    for group in by_inode.values().filter(|g| g.len() > 1) {
        for (k, &i) in group.iter().enumerate() {
            for &j in &group[..k] {
                let same = tracee::same_open_file(tid, fds[j].fd, fds[i].fd).map_err(|e| {
                    CaptureError::Proc {
                        pid,
                        what: format!("kcmp of fds {} and {}", fds[j].fd, fds[i].fd),
                        source: std::io::Error::other(e),
                    }
                })?;
                if same {
                    fds[i].shares_with = Some(fds[j].shares_with.unwrap_or(fds[j].fd));
                    break;
                }
            }
        }
    }
    Ok(fds)
}

/// What an fd refers to: its inode's type, or for inodes without one, its link text.
fn kind_of(t: &std::fs::FileType, link: &[u8]) -> FdKind {
    if t.is_file() {
        FdKind::Regular
    } else if t.is_dir() {
        FdKind::Directory
    } else if t.is_char_device() {
        FdKind::CharDevice
    } else if t.is_block_device() {
        FdKind::BlockDevice
    } else if t.is_fifo() {
        if link.starts_with(b"pipe:[") {
            FdKind::Pipe
        } else {
            FdKind::Fifo
        }
    } else if t.is_socket() {
        FdKind::Socket
    } else if link.starts_with(b"anon_inode:") {
        FdKind::AnonInode
    } else {
        FdKind::Other
    }
}

/// `pos:` (decimal) and `flags:` (octal) of an fdinfo file.
fn parse_fdinfo(text: &[u8]) -> Option<(u64, u32)> {
    let text = std::str::from_utf8(text).ok()?;
    let mut pos = None;
    let mut flags = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("pos:") {
            pos = v.trim().parse::<u64>().ok();
        } else if let Some(v) = line.strip_prefix("flags:") {
            flags = u32::from_str_radix(v.trim(), 8).ok();
        }
    }
    Some((pos?, flags?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_fields() {
        let text = b"pos:\t4096\nflags:\t02100002\nmnt_id:\t25\nino:\t123\n";
        assert_eq!(parse_fdinfo(text), Some((4096, 0o2100002)));
        assert_eq!(parse_fdinfo(b"pos:\tx\nflags:\t0\n"), None);
        assert_eq!(parse_fdinfo(b"flags:\t0\n"), None);
        assert_eq!(parse_fdinfo(&[0xff, 0xfe]), None);
    }

    #[test]
    fn our_own_fds() {
        // Our stdin dup'ed shares its open file; /dev/null opened anew does not.
        let null = std::fs::File::open("/dev/null").unwrap();
        let dup = null.try_clone().unwrap();
        let other = std::fs::File::open("/dev/null").unwrap();
        let me = std::process::id() as i32;
        let fds = collect(me, me).unwrap();
        use std::os::fd::AsRawFd;
        let find = |fd: i32| fds.iter().find(|f| f.fd == fd).unwrap();
        let (a, b, c) = (
            find(null.as_raw_fd()),
            find(dup.as_raw_fd()),
            find(other.as_raw_fd()),
        );
        assert_eq!(a.kind, FdKind::CharDevice);
        assert_eq!(a.path, PathBuf::from("/dev/null"));
        assert_eq!(a.rdev, libc::makedev(1, 3));
        assert_eq!(a.flags & libc::O_CLOEXEC as u32, libc::O_CLOEXEC as u32);
        let lower = a.fd.min(b.fd);
        let higher = if a.fd == lower { b } else { a };
        assert_eq!(higher.shares_with, Some(lower));
        assert_eq!(c.shares_with, None);
    }
}
