//! File descriptors: which descriptor each captured fd gets (reopened by the agent,
//! given by the caller for stdin/stdout/stderr, or shared with another fd), and their
//! installation in the helper with `dup3`.
//!
//! Kinds that can be restored: regular files (reopened by path with the captured
//! flags, the same inode, the captured offset), directories, character devices
//! (`/dev/null`, a terminal: the same device number), FIFOs (by path; a FIFO opened
//! for writing needs a reader). Pipes, sockets and anonymous inodes (eventfd, epoll,
//! timerfd...) cannot: their other end or kernel state is not in the image. For
//! stdin, stdout and stderr the caller may replace what was captured ([`Stdio`]).
//!
//! Open files that were shared (`2>&1`, `dup`: one open file description, one offset)
//! are shared again: the first of them is opened, the others are `dup3`s of it. An fd
//! whose captured partner was replaced by a [`Stdio`] choice is opened on its own.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{Mode, OFlags, SeekFrom};
use snapshot_format::process::{FdKind, FdState};
use tracee::RemoteSession;

use super::error::ProcessRestoreError;
use super::files::{Check, Sources, open_checked};

/// The most fds a captured process may have for us to restore it.
pub const MAX_FDS: usize = 1 << 16;

/// The highest fd number accepted (`fs.nr_open`'s default maximum).
pub const MAX_FD_NUMBER: i32 = 1 << 20;

/// The highest fd the userfaultfd kept inside a lazily restored process may get (see
/// [`keeper_fd`]).
pub const KEEPER_FD_MAX: i32 = 1023;

/// What a restored process gets as one of its standard streams.
#[derive(Debug, Default)]
pub enum Stdio {
    /// What it had, reopened like any other fd (a pipe or a socket cannot be).
    #[default]
    AsCaptured,
    /// `/dev/null`.
    Null,
    /// This descriptor: a file the caller opened, or one of the caller's own standard
    /// streams ("the restoring terminal").
    Fd(OwnedFd),
}

/// What becomes of a captured fd that cannot be reopened: a pipe or socket (their other
/// end is not in the image), a kernel object (eventfd, epoll, timerfd...), a deleted
/// file. Standard streams chosen with [`Stdio`] are not concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnrestorableFds {
    /// Refuse to restore (the error names the fd).
    #[default]
    Refuse,
    /// Give it `/dev/null` instead, opened with the fd's access mode (reads see end of
    /// file, writes are discarded).
    Null,
    /// Leave the fd closed (using it fails with `EBADF`).
    Close,
}

/// One fd to create in the helper: `dup3(from, fd, cloexec)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FdInstall {
    pub(crate) fd: i32,
    /// A source number, or an fd installed before this one.
    pub(crate) from: i32,
    pub(crate) cloexec: bool,
}

/// Flags of an open file that `open` reproduces (the rest are creation-time flags or
/// per-descriptor ones).
fn reopen_flags(captured: u32) -> OFlags {
    let keep = OFlags::ACCMODE
        | OFlags::APPEND
        | OFlags::NONBLOCK
        | OFlags::DIRECT
        | OFlags::NOATIME
        | OFlags::PATH
        | OFlags::DIRECTORY
        | OFlags::LARGEFILE
        | OFlags::SYNC
        | OFlags::DSYNC
        | OFlags::NOFOLLOW;
    OFlags::from_bits_retain(captured) & keep
}

fn stream_option(fd: i32) -> &'static str {
    match fd {
        0 => " (choose another stdin: --stdin inherit|null|PATH)",
        1 => " (choose another stdout: --stdout inherit|null|PATH)",
        2 => " (choose another stderr: --stderr inherit|null|PATH)",
        _ => "",
    }
}

/// Why a captured fd cannot be reopened at all (its kind, or its file is gone), if so.
fn unreopenable(f: &FdState) -> Option<String> {
    let what = match f.kind {
        FdKind::Regular | FdKind::Directory | FdKind::CharDevice | FdKind::Fifo => {
            let deleted = f.path.as_os_str().as_bytes().ends_with(b" (deleted)");
            if deleted || !f.path.is_absolute() {
                return Some("the file was deleted".to_owned());
            }
            return None;
        }
        FdKind::Pipe => "pipe",
        FdKind::Socket => "socket",
        FdKind::AnonInode => "kernel object (anon inode)",
        FdKind::BlockDevice => "block device",
        FdKind::Other => "file of unknown kind",
    };
    Some(format!("a {what} cannot be reopened"))
}

/// Reopens a captured fd's file (see the module docs); its kind is reopenable.
fn reopen(f: &FdState) -> Result<OwnedFd, ProcessRestoreError> {
    let target = String::from_utf8_lossy(f.path.as_os_str().as_bytes()).into_owned();
    let refuse = |reason: String| ProcessRestoreError::Fd {
        fd: f.fd,
        target: target.clone(),
        reason,
    };
    let what = format!("fd {}", f.fd);
    let path = Path::new(&f.path);
    let flags = reopen_flags(f.flags);
    let inode = Check::Inode {
        dev: f.dev,
        inode: f.inode,
    };
    let fd = match f.kind {
        FdKind::Regular | FdKind::Directory => {
            let fd = open_checked(&what, path, flags, inode)?;
            if !flags.contains(OFlags::PATH) && f.pos != 0 {
                rustix::fs::seek(&fd, SeekFrom::Start(f.pos))
                    .map_err(|e| refuse(format!("cannot restore its offset {}: {e}", f.pos)))?;
            }
            fd
        }
        FdKind::CharDevice => open_checked(&what, path, flags, Check::Device { rdev: f.rdev })?,
        FdKind::Fifo => {
            // Opening a FIFO blocks until the other side is opened too, unless
            // O_NONBLOCK (then a writer without a reader fails with ENXIO).
            let fd = open_checked(&what, path, flags | OFlags::NONBLOCK, inode).map_err(
                |e| match e {
                    ProcessRestoreError::Open { ref source, .. }
                        if source.raw_os_error() == Some(libc::ENXIO) =>
                    {
                        refuse("a FIFO open for writing needs a reader, and it has none".into())
                    }
                    e => e,
                },
            )?;
            rustix::fs::fcntl_setfl(&fd, flags & !OFlags::ACCMODE)
                .map_err(|e| refuse(format!("cannot restore its flags: {e}")))?;
            fd
        }
        FdKind::Pipe | FdKind::Socket | FdKind::AnonInode | FdKind::BlockDevice | FdKind::Other => {
            return Err(refuse(unreopenable(f).unwrap_or_default()));
        }
    };
    Ok(fd)
}

/// Decides every fd of the restored process (see the module docs); the descriptors
/// the helper needs are added to `sources`.
pub(crate) fn plan_fds(
    fds: &[FdState],
    stdio: [Stdio; 3],
    unrestorable: UnrestorableFds,
    sources: &mut Sources,
) -> Result<Vec<FdInstall>, ProcessRestoreError> {
    let mut installs: Vec<FdInstall> = Vec::with_capacity(fds.len() + 3);
    // The first fd installed for each captured open file (`shares_with` root) among the
    // fds restored as captured.
    let mut first_of: HashMap<i32, i32> = HashMap::new();
    let mut stdio = stdio.map(Some);
    let mut captured = fds.iter().peekable();
    // Walk fds in order, inserting the standard streams the caller chose even where
    // the process had none.
    for fd in 0..=fds.last().map_or(2, |f| f.fd.max(2)) {
        let state = captured.next_if(|f| f.fd == fd);
        if fd > 2 && state.is_none() {
            // Skip quickly to the next captured fd.
            continue;
        }
        let choice = if fd <= 2 {
            stdio[fd as usize].take().unwrap_or_default()
        } else {
            Stdio::AsCaptured
        };
        let install = match (choice, state) {
            (Stdio::Null, _) => {
                let flags = if fd == 0 {
                    OFlags::RDONLY
                } else {
                    OFlags::WRONLY
                };
                let null = open_checked("/dev/null", Path::new("/dev/null"), flags, Check::None)?;
                Some((sources.add(null)?, false))
            }
            (Stdio::Fd(given), _) => Some((sources.add(given.as_fd())?, false)),
            (Stdio::AsCaptured, None) => None,
            (Stdio::AsCaptured, Some(f)) => {
                let cloexec = f.flags & OFlags::CLOEXEC.bits() != 0;
                let root = f.shares_with.unwrap_or(f.fd);
                if let Some(&first) = first_of.get(&root) {
                    Some((first, cloexec))
                } else {
                    let opened = match (unreopenable(f), unrestorable) {
                        (None, _) => Some(reopen(f)?),
                        (Some(reason), UnrestorableFds::Refuse) => {
                            return Err(ProcessRestoreError::Fd {
                                fd,
                                target: f.path.to_string_lossy().into_owned(),
                                reason: format!("{reason}{}", stream_option(fd)),
                            });
                        }
                        (Some(reason), UnrestorableFds::Null) => {
                            log::warn!(
                                "fd {fd} ({}): {reason}; the restored process gets /dev/null",
                                f.path.display()
                            );
                            let mode = OFlags::from_bits_retain(f.flags) & OFlags::ACCMODE;
                            Some(open_checked(
                                "/dev/null",
                                Path::new("/dev/null"),
                                mode,
                                Check::None,
                            )?)
                        }
                        (Some(reason), UnrestorableFds::Close) => {
                            log::warn!(
                                "fd {fd} ({}): {reason}; it is left closed",
                                f.path.display()
                            );
                            None
                        }
                    };
                    match opened {
                        Some(opened) => {
                            first_of.insert(root, fd);
                            Some((sources.add(opened)?, cloexec))
                        }
                        None => None,
                    }
                }
            }
        };
        if let Some((from, cloexec)) = install {
            installs.push(FdInstall { fd, from, cloexec });
        }
    }
    Ok(installs)
}

/// Checks the captured fd list: bounded, ascending, sane numbers and partners.
pub(crate) fn check_fds(fds: &[FdState]) -> Result<(), ProcessRestoreError> {
    if fds.len() > MAX_FDS {
        return Err(ProcessRestoreError::invalid(format!(
            "{} open fds, more than the limit of {MAX_FDS}",
            fds.len()
        )));
    }
    let mut last = -1;
    for f in fds {
        if f.fd <= last || f.fd >= MAX_FD_NUMBER {
            return Err(ProcessRestoreError::invalid(format!(
                "fd {} out of order or out of range",
                f.fd
            )));
        }
        last = f.fd;
        if let Some(s) = f.shares_with
            && (s >= f.fd || fds.binary_search_by_key(&s, |g| g.fd).is_err())
        {
            return Err(ProcessRestoreError::invalid(format!(
                "fd {} shares its file with fd {s}, which is not an earlier fd",
                f.fd
            )));
        }
    }
    Ok(())
}

/// Where the lazily restored process keeps its own copy of the userfaultfd (see the
/// module docs of `process`): the highest fd number below the process's open-files
/// limit (and at most [`KEEPER_FD_MAX`]) that it does not use. `None` if there is
/// none.
pub(crate) fn keeper_fd(installs: &[FdInstall], nofile_soft: u64) -> Option<i32> {
    let limit = i32::try_from(nofile_soft)
        .unwrap_or(i32::MAX)
        .min(KEEPER_FD_MAX + 1);
    (3..limit)
        .rev()
        .find(|fd| installs.iter().all(|i| i.fd != *fd))
}

/// Installs the planned fds in the helper.
pub(crate) fn install(
    session: &mut RemoteSession<'_>,
    installs: &[FdInstall],
) -> Result<(), ProcessRestoreError> {
    for i in installs {
        let flags = if i.cloexec { libc::O_CLOEXEC as u64 } else { 0 };
        session
            .syscall_ok(
                libc::SYS_dup3 as u64,
                [i.from as u64, i.fd as u64, flags, 0, 0, 0],
            )
            .map_err(ProcessRestoreError::remote(format!(
                "cannot install fd {}",
                i.fd
            )))?;
    }
    Ok(())
}

/// Opens a file for one of the standard streams of a restored process: `O_RDONLY` for
/// stdin, else `O_WRONLY | O_CREAT | O_APPEND` (mode 0644).
pub fn open_stdio_file(stream: i32, path: &Path) -> std::io::Result<OwnedFd> {
    let flags = if stream == 0 {
        OFlags::RDONLY
    } else {
        OFlags::WRONLY | OFlags::CREATE | OFlags::APPEND
    };
    Ok(rustix::fs::open(
        path,
        flags | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(fd: i32, kind: FdKind, path: &str, shares_with: Option<i32>) -> FdState {
        FdState {
            fd,
            kind,
            path: path.into(),
            shares_with,
            ..FdState::default()
        }
    }

    #[test]
    fn the_fd_list_is_checked() {
        let ok = [
            state(0, FdKind::CharDevice, "/dev/null", None),
            state(1, FdKind::CharDevice, "/dev/null", Some(0)),
        ];
        check_fds(&ok).expect("valid");
        let unordered = [ok[1].clone(), ok[0].clone()];
        assert!(check_fds(&unordered).is_err());
        let bad_partner = [state(0, FdKind::Pipe, "pipe:[1]", Some(5))];
        assert!(check_fds(&bad_partner).is_err());
        let huge = [state(MAX_FD_NUMBER, FdKind::Regular, "/x", None)];
        assert!(check_fds(&huge).is_err());
    }

    #[test]
    fn shared_files_are_shared_again_and_stdio_choices_break_sharing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("log");
        std::fs::write(&log, b"0123456789").expect("write");
        let meta = std::fs::metadata(&log).expect("stat");
        use std::os::unix::fs::MetadataExt;
        let file = |fd: i32, shares_with| FdState {
            fd,
            kind: FdKind::Regular,
            path: log.clone(),
            flags: (libc::O_WRONLY | libc::O_APPEND) as u32,
            pos: 4,
            dev: meta.dev(),
            inode: meta.ino(),
            shares_with,
            ..FdState::default()
        };
        // 0: /dev/null; 1 and 2 one open file (2>&1); 5 shares it too.
        let fds = [
            state(0, FdKind::CharDevice, "/dev/null", None),
            file(1, None),
            file(2, Some(1)),
            file(5, Some(1)),
        ];
        let null_rdev = std::fs::metadata("/dev/null").expect("null").rdev();
        let mut fds = fds;
        fds[0].rdev = null_rdev;
        check_fds(&fds).expect("valid");

        let mut sources = Sources::new(100);
        let installs = plan_fds(
            &fds,
            Default::default(),
            UnrestorableFds::Refuse,
            &mut sources,
        )
        .expect("plan as captured");
        assert_eq!(sources.numbers(), vec![100, 101]);
        assert_eq!(
            installs,
            vec![
                FdInstall {
                    fd: 0,
                    from: 100,
                    cloexec: false
                },
                FdInstall {
                    fd: 1,
                    from: 101,
                    cloexec: false
                },
                FdInstall {
                    fd: 2,
                    from: 1,
                    cloexec: false
                },
                FdInstall {
                    fd: 5,
                    from: 1,
                    cloexec: false
                },
            ]
        );
        // The reopened file has the captured offset.
        let src = sources.get(101).expect("source");
        assert_eq!(
            rustix::fs::seek(src, SeekFrom::Current(0)).expect("tell"),
            4
        );

        // stdout replaced: stderr and fd 5 share their own reopened file.
        drop(sources);
        let mut sources = Sources::new(100);
        let given = rustix::fs::open("/dev/null", OFlags::WRONLY, Mode::empty()).expect("open");
        let installs = plan_fds(
            &fds,
            [Stdio::AsCaptured, Stdio::Fd(given), Stdio::AsCaptured],
            UnrestorableFds::Refuse,
            &mut sources,
        )
        .expect("plan");
        assert_eq!(
            installs[1],
            FdInstall {
                fd: 1,
                from: 101,
                cloexec: false
            }
        );
        assert_eq!(
            installs[2],
            FdInstall {
                fd: 2,
                from: 102,
                cloexec: false
            }
        );
        assert_eq!(
            installs[3],
            FdInstall {
                fd: 5,
                from: 2,
                cloexec: false
            }
        );
        drop(sources);

        // A pipe cannot be reopened; the error says how to replace it.
        let piped = [state(1, FdKind::Pipe, "pipe:[77]", None)];
        let err = plan_fds(
            &piped,
            Default::default(),
            UnrestorableFds::Refuse,
            &mut Sources::new(100),
        )
        .expect_err("a pipe is refused");
        assert!(err.to_string().contains("--stdout"), "{err}");
        // Replaced, it is fine; stdin and stderr the caller chose appear even though
        // the process had none.
        let installs = plan_fds(
            &piped,
            [Stdio::Null, Stdio::Null, Stdio::Null],
            UnrestorableFds::Refuse,
            &mut Sources::new(100),
        )
        .expect("replaced");
        assert_eq!(
            installs.iter().map(|i| i.fd).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        // Other unrestorable fds: /dev/null or closed, when asked.
        let extra = [state(7, FdKind::Socket, "socket:[9]", None)];
        let mut sources = Sources::new(100);
        let installs = plan_fds(
            &extra,
            Default::default(),
            UnrestorableFds::Null,
            &mut sources,
        )
        .expect("null");
        assert_eq!(
            installs,
            vec![FdInstall {
                fd: 7,
                from: 100,
                cloexec: false
            }]
        );
        let installs = plan_fds(
            &extra,
            Default::default(),
            UnrestorableFds::Close,
            &mut Sources::new(100),
        )
        .expect("close");
        assert!(installs.is_empty());
        assert!(
            plan_fds(
                &extra,
                Default::default(),
                UnrestorableFds::Refuse,
                &mut Sources::new(100)
            )
            .is_err()
        );

        // A replaced file is refused when it is another file now (created before the
        // old one goes, so that it cannot reuse its inode number).
        let new = dir.path().join("new");
        std::fs::write(&new, b"new").expect("write");
        std::fs::rename(&new, &log).expect("rename");
        let err = plan_fds(
            &fds,
            Default::default(),
            UnrestorableFds::Null,
            &mut Sources::new(100),
        )
        .expect_err("another inode");
        assert!(
            matches!(err, ProcessRestoreError::FileChanged { .. }),
            "{err}"
        );
    }

    #[test]
    fn the_keeper_fd_avoids_used_numbers_and_respects_the_limit() {
        let at = |fd| FdInstall {
            fd,
            from: 100,
            cloexec: false,
        };
        assert_eq!(keeper_fd(&[at(0), at(1)], 1024), Some(1023));
        assert_eq!(keeper_fd(&[at(1023)], 1 << 20), Some(1022));
        assert_eq!(keeper_fd(&[at(5)], 8), Some(7));
        assert_eq!(keeper_fd(&[], 3), None);
    }
}
