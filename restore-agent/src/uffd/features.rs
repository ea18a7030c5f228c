//! Feature and ioctl bitmasks of the `UFFDIO_API` handshake, and the error that
//! names the features a kernel lacks.

use linux_raw_sys::general as k;

use super::flags::flag_set;

flag_set! {
    /// `UFFD_FEATURE_*`: what a userfaultfd context can do, asked for at
    /// `UFFDIO_API` time and reported back by the kernel.
    ///
    /// A feature is enabled on a context only if it was *requested* in its
    /// handshake; the kernel reports every feature it *supports* in either case.
    pub struct Features;
    /// Page-fault messages say whether a fault is a write-protect fault
    /// (needed to register `UFFDIO_REGISTER_MODE_WP` ranges).
    const PAGEFAULT_FLAG_WP = k::UFFD_FEATURE_PAGEFAULT_FLAG_WP;
    /// `fork()` of the target duplicates the context into the child and sends
    /// a FORK message carrying the child's new userfaultfd. Requires
    /// `CAP_SYS_PTRACE` (`EPERM` otherwise).
    const EVENT_FORK = k::UFFD_FEATURE_EVENT_FORK;
    /// `mremap()` of a registered range sends a REMAP message.
    const EVENT_REMAP = k::UFFD_FEATURE_EVENT_REMAP;
    /// `madvise(MADV_DONTNEED / MADV_REMOVE)` sends a REMOVE message.
    const EVENT_REMOVE = k::UFFD_FEATURE_EVENT_REMOVE;
    /// MISSING-mode registration of hugetlbfs ranges is supported.
    const MISSING_HUGETLBFS = k::UFFD_FEATURE_MISSING_HUGETLBFS;
    /// MISSING-mode registration of shmem ranges is supported.
    const MISSING_SHMEM = k::UFFD_FEATURE_MISSING_SHMEM;
    /// `munmap()` (and the implicit unmaps of `mremap()`) sends an UNMAP message.
    const EVENT_UNMAP = k::UFFD_FEATURE_EVENT_UNMAP;
    /// No messages at all: a fault in a registered range raises SIGBUS in the
    /// faulting thread instead.
    const SIGBUS = k::UFFD_FEATURE_SIGBUS;
    /// Page-fault messages carry the faulting thread's id.
    const THREAD_ID = k::UFFD_FEATURE_THREAD_ID;
    /// MINOR-mode registration of hugetlbfs ranges is supported.
    const MINOR_HUGETLBFS = k::UFFD_FEATURE_MINOR_HUGETLBFS;
    /// MINOR-mode registration of shmem ranges is supported.
    const MINOR_SHMEM = k::UFFD_FEATURE_MINOR_SHMEM;
    /// Page-fault addresses are exact, not rounded down to the page.
    const EXACT_ADDRESS = k::UFFD_FEATURE_EXACT_ADDRESS;
    /// WP-mode registration of hugetlbfs and shmem ranges is supported.
    const WP_HUGETLBFS_SHMEM = k::UFFD_FEATURE_WP_HUGETLBFS_SHMEM;
    /// Write protection also applies to pages not populated yet.
    const WP_UNPOPULATED = k::UFFD_FEATURE_WP_UNPOPULATED;
    /// `UFFDIO_POISON` is supported.
    const POISON = k::UFFD_FEATURE_POISON;
    /// Write-protect faults are resolved by the kernel itself (dirty tracking).
    const WP_ASYNC = k::UFFD_FEATURE_WP_ASYNC;
    /// `UFFDIO_MOVE` is supported.
    const MOVE = k::UFFD_FEATURE_MOVE;
}

flag_set! {
    /// A bitmask of ioctls, `1 << _UFFDIO_*`, as reported by `UFFDIO_API` (the
    /// context-wide ioctls) and by `UFFDIO_REGISTER` (the ioctls that work on
    /// the registered range: hugetlbfs ranges, for example, lack `ZEROPAGE`).
    pub struct Ioctls;
    /// `UFFDIO_REGISTER`.
    const REGISTER = 1u64 << k::_UFFDIO_REGISTER;
    /// `UFFDIO_UNREGISTER`.
    const UNREGISTER = 1u64 << k::_UFFDIO_UNREGISTER;
    /// `UFFDIO_WAKE`.
    const WAKE = 1u64 << k::_UFFDIO_WAKE;
    /// `UFFDIO_COPY`.
    const COPY = 1u64 << k::_UFFDIO_COPY;
    /// `UFFDIO_ZEROPAGE`.
    const ZEROPAGE = 1u64 << k::_UFFDIO_ZEROPAGE;
    /// `UFFDIO_MOVE`.
    const MOVE = 1u64 << k::_UFFDIO_MOVE;
    /// `UFFDIO_WRITEPROTECT`.
    const WRITEPROTECT = 1u64 << k::_UFFDIO_WRITEPROTECT;
    /// `UFFDIO_CONTINUE`.
    const CONTINUE = 1u64 << k::_UFFDIO_CONTINUE;
    /// `UFFDIO_POISON`.
    const POISON = 1u64 << super::sys::NR_UFFDIO_POISON;
    /// `UFFDIO_API`.
    const API = 1u64 << k::_UFFDIO_API;
}

/// Requested userfaultfd features this kernel does not support.
///
/// The message names them, e.g. "userfaultfd features not supported by this
/// kernel: EVENT_FORK | MOVE (supported: ...)".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("userfaultfd features not supported by this kernel: {missing} (supported: {supported})")]
pub struct MissingFeatures {
    /// The requested features the kernel lacks.
    pub missing: Features,
    /// Everything the kernel supports.
    pub supported: Features,
}

/// What a kernel supports, as reported by a `UFFDIO_API` probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Support {
    /// Every feature the kernel supports.
    pub features: Features,
    /// The context-wide ioctls (`API`, `REGISTER`, `UNREGISTER`); the range
    /// ioctls are reported per range by `UFFDIO_REGISTER`.
    pub ioctls: Ioctls,
}

impl Support {
    /// The features of `wanted` this kernel lacks (empty when all are there).
    pub fn missing(&self, wanted: Features) -> Features {
        wanted - self.features
    }

    /// `Ok` when every feature of `wanted` is supported, otherwise an error that
    /// names the missing ones.
    pub fn require(&self, wanted: Features) -> Result<(), MissingFeatures> {
        let missing = self.missing(wanted);
        if missing.is_empty() {
            Ok(())
        } else {
            Err(MissingFeatures {
                missing,
                supported: self.features,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_known_bits_and_hex_for_the_rest() {
        let f = Features::EVENT_FORK | Features::THREAD_ID | Features::from_bits_retain(1 << 40);
        assert_eq!(f.to_string(), "EVENT_FORK | THREAD_ID | 0x10000000000");
        assert_eq!(Features::empty().to_string(), "(none)");
        assert_eq!(format!("{:?}", Ioctls::COPY), "Ioctls(COPY)");
    }

    #[test]
    fn all_known_features_match_the_kernel_header() {
        // UFFD_API_FEATURES of Linux 6.18: bits 0..=16.
        assert_eq!(Features::all_known().bits(), 0x1_ffff);
    }

    #[test]
    fn require_names_exactly_the_missing_features() {
        let support = Support {
            features: Features::EVENT_FORK | Features::EVENT_REMOVE,
            ioctls: Ioctls::API,
        };
        assert!(support.require(Features::EVENT_FORK).is_ok());
        let err = support
            .require(Features::EVENT_FORK | Features::MOVE | Features::POISON)
            .unwrap_err();
        assert_eq!(err.missing, Features::MOVE | Features::POISON);
        assert_eq!(
            err.to_string(),
            "userfaultfd features not supported by this kernel: POISON | MOVE \
             (supported: EVENT_FORK | EVENT_REMOVE)"
        );
    }
}
