//! The `UFFDIO_API` handshake, feature probing, and finding out whether a
//! received descriptor has had its handshake already.
//!
//! # Kernel rules
//!
//! - Nothing works on a new userfaultfd until `UFFDIO_API` succeeded: every other
//!   ioctl and `read(2)` fail with `EINVAL`, `poll()` reports `POLLERR`.
//! - `UFFDIO_API` succeeds **once** per context. A second call fails with
//!   `EINVAL`, and the features are fixed by the first one. So a feature *query*
//!   (features = 0, the kernel answers with everything it supports) uses up the
//!   fd it is made on: probing is done on a throwaway fd, then the real fd is
//!   opened and asked for the chosen features (ioctl_userfaultfd(2), BUGS). On
//!   this machine (6.18) a handshake *rejected* for an unsupported feature leaves
//!   the context uninitialised and could be retried, but that is not documented
//!   behaviour and this code never relies on it.
//! - Asking for a feature the kernel lacks fails the whole handshake with
//!   `EINVAL` (and the answer is zeroed): which features were missing is learnt
//!   from a probe, which is what [`handshake`] does to build its error.
//! - `EVENT_FORK` needs `CAP_SYS_PTRACE` (`EPERM`).
//! - A descriptor received from someone else (a VMM over a Unix socket, a helper
//!   process through `pidfd_getfd`) usually had its handshake done by its
//!   creator. The context's state is visible in `/proc/self/fdinfo/<fd>`
//!   (`API:\t<api>:<features>:<ioctls>`), where an initialised context has bit
//!   31 (`UFFD_FEATURE_INITIALIZED`) set in its features: [`handshake_state`]
//!   reads it without touching the context.

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use super::features::{Features, Ioctls, MissingFeatures, Support};
use super::open::{CreateError, OpenOptions};
use super::sys;

/// Longest `/proc/self/fdinfo/<fd>` read (a userfaultfd's is ~100 bytes).
pub const MAX_FDINFO_LEN: u64 = 4096;

/// The handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// A userfaultfd (the one to open, or the throwaway one of a probe) could
    /// not be created.
    #[error(transparent)]
    Create(#[from] CreateError),
    /// The kernel lacks some of the requested features.
    #[error(transparent)]
    Unsupported(#[from] MissingFeatures),
    /// This descriptor's handshake was already done (by its creator, or
    /// earlier): adopt it as initialised instead.
    #[error("userfaultfd handshake already done on this descriptor (enabled features: {enabled})")]
    AlreadyDone {
        /// The features its first handshake enabled.
        enabled: Features,
    },
    /// `EPERM`: a requested feature needs a privilege the caller lacks
    /// (`EVENT_FORK` needs `CAP_SYS_PTRACE`).
    #[error("userfaultfd features {requested} not permitted (EVENT_FORK needs CAP_SYS_PTRACE)")]
    NotPermitted {
        /// The features asked for.
        requested: Features,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// The kernel refused the handshake for another reason (e.g. it does not
    /// speak API version `0xAA`).
    #[error("userfaultfd handshake (UFFDIO_API) refused for features {requested}")]
    Rejected {
        /// The features asked for.
        requested: Features,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
}

/// `UFFDIO_API` on `fd`, enabling exactly `features`.
///
/// Returns what the kernel supports (all of it, not only what was enabled). On
/// `EINVAL` it finds out why: the handshake was already done
/// ([`HandshakeError::AlreadyDone`]), or some features are missing, named by a
/// probe on a throwaway fd ([`HandshakeError::Unsupported`]).
pub fn handshake(fd: BorrowedFd<'_>, features: Features) -> Result<Support, HandshakeError> {
    let mut arg = sys::uffdio_api {
        api: sys::UFFD_API,
        features: features.bits(),
        ioctls: 0,
    };
    match sys::api(fd, &mut arg) {
        Ok(()) => Ok(Support {
            features: Features::from_bits_retain(arg.features),
            ioctls: Ioctls::from_bits_retain(arg.ioctls),
        }),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => Err(HandshakeError::NotPermitted {
            requested: features,
            source: e,
        }),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Err(explain_einval(fd, features, e)),
        Err(e) => Err(HandshakeError::Rejected {
            requested: features,
            source: e,
        }),
    }
}

fn explain_einval(fd: BorrowedFd<'_>, features: Features, err: io::Error) -> HandshakeError {
    if let Ok(HandshakeState::Done { features: enabled }) = handshake_state(fd) {
        return HandshakeError::AlreadyDone { enabled };
    }
    // A user-mode-only fd reports the same features and is what an
    // unprivileged caller may create.
    let probed =
        probe(&OpenOptions::new()).or_else(|_| probe(&OpenOptions::new().user_mode_only(true)));
    match probed {
        Ok(support) => match support.require(features) {
            Err(missing) => HandshakeError::Unsupported(missing),
            Ok(()) => HandshakeError::Rejected {
                requested: features,
                source: err,
            },
        },
        Err(probe_err) => {
            log::debug!("probing userfaultfd features to explain EINVAL failed: {probe_err}");
            HandshakeError::Rejected {
                requested: features,
                source: err,
            }
        }
    }
}

/// Asks the kernel what it supports, on a throwaway userfaultfd created with
/// `opts` (`UFFDIO_API` with features = 0 uses up the fd it is made on).
pub fn probe(opts: &OpenOptions) -> Result<Support, HandshakeError> {
    let fd = opts.create()?;
    handshake(fd.as_fd(), Features::empty())
}

/// Whether a userfaultfd's `UFFDIO_API` handshake was done, as its fdinfo says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeState {
    /// No handshake yet: do it with [`handshake`].
    NotDone,
    /// Done (by whoever created the fd), with these features enabled.
    Done {
        /// The enabled features.
        features: Features,
    },
}

/// `/proc/self/fdinfo/<fd>` could not tell the handshake state.
#[derive(Debug, thiserror::Error)]
pub enum FdinfoError {
    /// Reading it failed (no `/proc`?).
    #[error("cannot read /proc/self/fdinfo/{fd}")]
    Read {
        /// The descriptor.
        fd: RawFd,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// It has no `API:` line: the descriptor is not a userfaultfd.
    #[error("fd {fd} is not a userfaultfd (no API line in its fdinfo)")]
    NotUserfaultfd {
        /// The descriptor.
        fd: RawFd,
    },
    /// The `API:` line could not be parsed.
    #[error("unexpected userfaultfd fdinfo line {line:?}")]
    Malformed {
        /// The line (bounded by [`MAX_FDINFO_LEN`]).
        line: String,
    },
    /// The context speaks an API version other than `0xAA`.
    #[error("userfaultfd speaks unknown API version {api:#x}")]
    UnknownApi {
        /// The version.
        api: u64,
    },
}

/// Reads a userfaultfd's handshake state from `/proc/self/fdinfo/<fd>` without
/// touching the context.
///
/// On kernels that mark an initialised context with bit 31
/// (`UFFD_FEATURE_INITIALIZED`; this machine's 6.18 does), the answer is exact.
/// On older kernels a context initialised with *no* features looks like one not
/// initialised yet (both read 0), and is reported as [`HandshakeState::NotDone`].
pub fn handshake_state(fd: BorrowedFd<'_>) -> Result<HandshakeState, FdinfoError> {
    let raw = fd.as_raw_fd();
    let path = format!("/proc/self/fdinfo/{raw}");
    let mut text = String::new();
    std::fs::File::open(&path)
        .and_then(|f| f.take(MAX_FDINFO_LEN).read_to_string(&mut text))
        .map_err(|source| FdinfoError::Read { fd: raw, source })?;
    parse_fdinfo(&text).unwrap_or(Err(FdinfoError::NotUserfaultfd { fd: raw }))
}

/// Parses the `API:` line of a userfaultfd's fdinfo; `None` if there is none.
fn parse_fdinfo(text: &str) -> Option<Result<HandshakeState, FdinfoError>> {
    let line = text.lines().find_map(|l| l.strip_prefix("API:"))?;
    let malformed = || FdinfoError::Malformed {
        line: format!("API:{line}"),
    };
    let mut fields = line.trim().split(':').map(|h| u64::from_str_radix(h, 16));
    let (Some(Ok(api)), Some(Ok(features)), Some(Ok(_ioctls)), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Some(Err(malformed()));
    };
    if api != sys::UFFD_API {
        return Some(Err(FdinfoError::UnknownApi { api }));
    }
    let state = if features == 0 {
        HandshakeState::NotDone
    } else {
        let features = features & !sys::UFFD_FEATURE_INITIALIZED;
        HandshakeState::Done {
            features: Features::from_bits_retain(features),
        }
    };
    Some(Ok(state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fdinfo_states() {
        let before = "pos:\t0\nflags:\t02004000\nmnt_id:\t17\nino:\t13125\npending:\t0\n\
                      total:\t0\nAPI:\taa:0:80000000000001ff\n";
        assert!(matches!(
            parse_fdinfo(before),
            Some(Ok(HandshakeState::NotDone))
        ));
        let after = "pending:\t0\ntotal:\t0\nAPI:\taa:80000102:80000000000001ff\n";
        assert!(matches!(
            parse_fdinfo(after),
            Some(Ok(HandshakeState::Done { features }))
                if features == Features::EVENT_FORK | Features::THREAD_ID
        ));
        let no_features = "API:\taa:80000000:80000000000001ff\n";
        assert!(matches!(
            parse_fdinfo(no_features),
            Some(Ok(HandshakeState::Done { features })) if features.is_empty()
        ));
    }

    #[test]
    fn rejects_bad_fdinfo() {
        assert!(parse_fdinfo("pos:\t0\nflags:\t02\n").is_none());
        assert!(matches!(
            parse_fdinfo("API:\tzz:0:0\n"),
            Some(Err(FdinfoError::Malformed { .. }))
        ));
        assert!(matches!(
            parse_fdinfo("API:\taa:0\n"),
            Some(Err(FdinfoError::Malformed { .. }))
        ));
        assert!(matches!(
            parse_fdinfo("API:\taa:0:0:0\n"),
            Some(Err(FdinfoError::Malformed { .. }))
        ));
        assert!(matches!(
            parse_fdinfo("API:\tab:0:0\n"),
            Some(Err(FdinfoError::UnknownApi { api: 0xab }))
        ));
    }
}
