//! The handler's Unix socket: creating it safely, accepting VMMs, learning
//! who they are, and receiving the handshake with its file descriptor.
//!
//! # Creating the socket
//!
//! The socket hands out the guest memory of every VM that connects to it,
//! so it is created mode 0600, without a window in which it is looser:
//! `bind(2)` creates the file with the socket inode's mode masked by the
//! umask, so the inode is `fchmod`ed to 0600 *before* `bind` (no change of
//! the process-wide umask, which other threads would see). The mode is
//! checked after `bind`, before `listen`: until `listen` nobody can connect
//! anyway (`ECONNREFUSED`).
//!
//! An existing path is never silently replaced: a socket some process
//! still listens on (a `connect` succeeds) means another handler is
//! running, and start-up fails; a socket nobody listens on (`ECONNREFUSED`:
//! a handler that died) is stale and removed; anything else that is not a
//! socket is left alone, and start-up fails. On drop, the path is unlinked
//! if it still is the socket this handler created (same device and inode),
//! so a successor's socket is never removed.
//!
//! # Receiving
//!
//! The VMM sends its handshake with one `sendmsg`, the userfaultfd attached
//! as `SCM_RIGHTS`. On a stream socket the kernel delivers a message's
//! descriptors with the *first* `recvmsg` that reads any of its bytes (and
//! never merges bytes of messages with different descriptors into one
//! read), so every read passes a control buffer. Its room is
//! [`MAX_FDS_PER_READ`] descriptors: a peer that sends more has the excess
//! closed by the kernel (`MSG_CTRUNC`); everything received beyond the one
//! expected descriptor is closed when the caller drops it.

use std::io::{self, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SocketAddrUnix, SocketFlags, SocketType,
};

/// The socket file's mode.
pub const SOCKET_MODE: u32 = 0o600;

/// Connections the kernel queues before they are accepted.
const BACKLOG: i32 = 128;

/// Descriptors one read can receive (one is expected; the room for more
/// lets the handler see, and refuse, a peer that sends several).
pub const MAX_FDS_PER_READ: usize = 4;

/// The socket could not be created.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// A handler (or anything) is listening on the path.
    #[error("{path} is a live socket: another handler is listening on it")]
    InUse {
        /// The path.
        path: PathBuf,
    },
    /// The path exists and is not a socket.
    #[error("{path} exists and is not a socket; not replacing it")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// The path does not fit a Unix socket address (108 bytes).
    #[error("{path}: path too long for a Unix socket")]
    PathTooLong {
        /// The path.
        path: PathBuf,
    },
    /// After `bind`, the file does not have mode 0600 (a file system that
    /// ignores the socket inode's mode).
    #[error("{path} was created with mode {mode:#o}, not {SOCKET_MODE:#o}")]
    Mode {
        /// The path.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// A system call failed.
    #[error("{path}: {op}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What failed.
        op: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// The listening socket; unlinks its path on drop (see the module docs).
#[derive(Debug)]
pub(crate) struct Listener {
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the socket file created.
    file: (u64, u64),
}

impl Listener {
    /// Creates the socket at `path`, mode 0600, non-blocking, listening.
    pub(crate) fn bind(path: &Path) -> Result<Self, BindError> {
        let io = |op: &'static str| {
            move |source: io::Error| BindError::Io {
                path: path.to_path_buf(),
                op,
                source,
            }
        };
        remove_stale(path)?;
        let addr = SocketAddrUnix::new(path).map_err(|_| BindError::PathTooLong {
            path: path.to_path_buf(),
        })?;
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .map_err(|e| io("socket")(e.into()))?;
        rustix::fs::fchmod(&fd, rustix::fs::Mode::from_raw_mode(SOCKET_MODE))
            .map_err(|e| io("fchmod")(e.into()))?;
        rustix::net::bind(&fd, &addr).map_err(|e| {
            if e == rustix::io::Errno::ADDRINUSE {
                BindError::InUse {
                    path: path.to_path_buf(),
                }
            } else {
                io("bind")(e.into())
            }
        })?;
        // From here on the file is ours: remove it again on failure.
        let unlink = |e: BindError| {
            let _ = std::fs::remove_file(path);
            e
        };
        let meta = std::fs::symlink_metadata(path)
            .map_err(io("stat"))
            .map_err(unlink)?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode != SOCKET_MODE {
            return Err(unlink(BindError::Mode {
                path: path.to_path_buf(),
                mode,
            }));
        }
        rustix::net::listen(&fd, BACKLOG)
            .map_err(|e| io("listen")(e.into()))
            .map_err(unlink)?;
        Ok(Self {
            listener: UnixListener::from(fd),
            path: path.to_path_buf(),
            file: (meta.dev(), meta.ino()),
        })
    }

    /// The path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts one pending connection, non-blocking, close-on-exec;
    /// `None` if there is none.
    pub(crate) fn accept(&self) -> io::Result<Option<UnixStream>> {
        match self.listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(true)?;
                Ok(Some(stream))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.listener.as_fd()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == self.file => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    log::warn!("cannot remove {}: {e}", self.path.display());
                }
            }
            _ => log::debug!(
                "{} is no longer this handler's socket; left alone",
                self.path.display()
            ),
        }
    }
}

/// Removes a stale socket at `path` (see the module docs).
fn remove_stale(path: &Path) -> Result<(), BindError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(BindError::Io {
                path: path.to_path_buf(),
                op: "stat",
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(BindError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(BindError::InUse {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            log::info!("removing stale socket {}", path.display());
            std::fs::remove_file(path).map_err(|source| BindError::Io {
                path: path.to_path_buf(),
                op: "remove stale socket",
                source,
            })
        }
        Err(source) => Err(BindError::Io {
            path: path.to_path_buf(),
            op: "probe existing socket",
            source,
        }),
    }
}

/// The pid of the process that connected `stream` (`SO_PEERCRED`, as of
/// its `connect`); `None` if the kernel cannot tell (a peer in a pid
/// namespace this process cannot see reads as 0).
///
/// Read with `nix` rather than `rustix::net::sockopt::socket_peercred`,
/// whose `Pid` type cannot hold the 0 the kernel reports for such a peer.
pub(crate) fn peer_pid(stream: &UnixStream) -> Option<u32> {
    let cred =
        nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials).ok()?;
    u32::try_from(cred.pid()).ok().filter(|&pid| pid > 0)
}

/// What one [`recv`] got.
#[derive(Debug)]
pub(crate) struct Received {
    /// Bytes read into the buffer; 0 means the peer closed its end.
    pub(crate) bytes: usize,
    /// Descriptors received (owned: closed when dropped).
    pub(crate) fds: Vec<OwnedFd>,
    /// The peer sent more descriptors than there was room for (the kernel
    /// closed the excess).
    pub(crate) fds_truncated: bool,
}

/// Reads what is available into `buf`, with any descriptors (close-on-exec,
/// non-blocking read: `WouldBlock` if nothing is there).
pub(crate) fn recv(stream: &UnixStream, buf: &mut [u8]) -> io::Result<Received> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_READ))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = rustix::net::recvmsg(
        stream,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
    )?;
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = m {
            fds.extend(received);
        }
    }
    Ok(Received {
        bytes: msg.bytes,
        fds,
        fds_truncated: msg.flags.contains(ReturnFlags::CTRUNC),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_0600_refuses_live_replaces_stale_and_unlinks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("h.sock");
        let l = Listener::bind(&path).expect("bind");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            Listener::bind(&path),
            Err(BindError::InUse { .. })
        ));
        drop(l);
        assert!(!path.exists(), "unlinked on drop");

        // A stale socket (bound, never listening or its owner gone).
        let stale = UnixListener::bind(&path).expect("stale");
        drop(stale);
        assert!(path.exists());
        let l = Listener::bind(&path).expect("replaces the stale socket");
        drop(l);

        std::fs::write(&path, b"not a socket").expect("write");
        assert!(matches!(
            Listener::bind(&path),
            Err(BindError::NotASocket { .. })
        ));
        assert_eq!(std::fs::read(&path).expect("read"), b"not a socket");
    }

    #[test]
    fn recv_takes_fds_with_the_first_bytes() {
        let (a, b) = UnixStream::pair().expect("pair");
        b.set_nonblocking(true).expect("nonblocking");
        let file = std::fs::File::open("/dev/null").expect("open");
        let fds = [file.as_fd(), file.as_fd()];
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
        assert!(control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)));
        rustix::net::sendmsg(
            &a,
            &[std::io::IoSlice::new(b"hello")],
            &mut control,
            rustix::net::SendFlags::empty(),
        )
        .expect("sendmsg");
        let mut buf = [0u8; 3];
        let r = recv(&b, &mut buf).expect("recv");
        assert_eq!((r.bytes, r.fds.len(), r.fds_truncated), (3, 2, false));
        let r = recv(&b, &mut buf).expect("recv rest");
        assert_eq!((r.bytes, r.fds.len()), (2, 0));
        let e = recv(&b, &mut buf).expect_err("nothing more");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        drop(a);
        assert_eq!(recv(&b, &mut buf).expect("eof").bytes, 0);
    }
}
