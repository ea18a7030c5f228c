//! Targets: forked processes whose memory a `FaultServer` in the test
//! process serves, as in process restore or `serve`.
//!
//! The test reserves the target's address ranges (PROT_NONE) before
//! forking, so both sides know them. The target maps fresh anonymous memory
//! over its copy of the reservation, creates its own userfaultfd, registers
//! the ranges, sends the fd over a Unix socket, waits for "go", then runs
//! its scenario (touching, writing, dropping, moving, unmapping, forking its
//! memory, and comparing every byte with what it must hold) and exits with
//! the scenario's status. The test adds the received fd to the server with
//! the ranges' `Mapping`s.
//!
//! Target code runs in a forked child of a multi-threaded process: it only
//! touches memory, compares bytes and makes system calls (the helpers below
//! allocate nothing).
#![allow(dead_code)]

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use restore_agent::uffd::{Features, OpenOptions, Range, RegisterMode, Userfaultfd, register};
use restore_agent::{FaultServer, Mapping, ServerEvent, SpaceId};

use super::{Child, TIMEOUT, fork_child, recv_fd, send_fd, socket_pair};

/// The features targets enable.
pub(crate) fn target_features() -> Features {
    Features::EVENT_FORK
        | Features::EVENT_REMOVE
        | Features::EVENT_UNMAP
        | Features::EVENT_REMAP
        | Features::POISON
        | Features::THREAD_ID
}

/// What a scenario gets in the target.
pub(crate) struct TargetCtx<'a> {
    /// The target's own userfaultfd (to register more ranges).
    pub(crate) uffd: &'a Userfaultfd,
    /// The target's end of the socket to the test.
    pub(crate) sock: BorrowedFd<'a>,
}

/// A running target.
pub(crate) struct Target {
    pub(crate) child: Child,
    pub(crate) sock: OwnedFd,
    pub(crate) space: SpaceId,
}

/// How a target sets its memory up.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Setup {
    /// Its userfaultfd's features.
    pub(crate) features: Features,
    /// Map its ranges on hugetlbfs (2 MiB pages).
    pub(crate) huge: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            features: target_features(),
            huge: false,
        }
    }
}

/// Forks a target serving `maps` (their host ranges must lie in address
/// space the test reserved) and adds it to `server`.
pub(crate) fn start_target(
    server: &FaultServer,
    maps: &[Mapping],
    scenario: impl FnOnce(&TargetCtx<'_>) -> i32,
) -> Target {
    start_target_with(server, maps, Setup::default(), scenario)
}

/// [`start_target`] with another setup.
pub(crate) fn start_target_with(
    server: &FaultServer,
    maps: &[Mapping],
    setup: Setup,
    scenario: impl FnOnce(&TargetCtx<'_>) -> i32,
) -> Target {
    let (ours, theirs) = socket_pair();
    rustix::net::sockopt::set_socket_timeout(
        &ours,
        rustix::net::sockopt::Timeout::Recv,
        Some(TIMEOUT),
    )
    .expect("socket timeout");
    let child = fork_child(|| {
        let Ok(uffd) = Userfaultfd::open(&OpenOptions::new(), setup.features) else {
            return 90;
        };
        for m in maps {
            let mapped = if setup.huge {
                map_fixed_huge(m.host, m.len)
            } else {
                map_fixed_anon(m.host, m.len)
            };
            if !mapped {
                return 91;
            }
            if register(
                uffd.as_fd(),
                Range::new(m.host, m.len),
                RegisterMode::MISSING,
            )
            .is_err()
            {
                return 92;
            }
        }
        if send_fd(theirs.as_fd(), uffd.as_fd()).is_err() {
            return 93;
        }
        let mut go = [0u8; 1];
        if !matches!(rustix::io::read(&theirs, &mut go), Ok(1)) {
            return 94;
        }
        scenario(&TargetCtx {
            uffd: &uffd,
            sock: theirs.as_fd(),
        })
    });
    drop(theirs);
    let fd = recv_fd(ours.as_fd()).expect("the target sends its userfaultfd");
    let uffd = Userfaultfd::adopt(fd, setup.features).expect("adopt the target's userfaultfd");
    let space = server.add_space(uffd, maps).expect("serve the target");
    rustix::io::write(&ours, b"g").expect("tell the target to go");
    Target {
        child,
        sock: ours,
        space,
    }
}

impl Target {
    /// Waits for the target's exit; fails the test unless it exits with 0.
    pub(crate) fn finish(self, what: &str, timeout: std::time::Duration) {
        let status = self.child.wait(timeout);
        assert_eq!(
            status.exit_status(),
            Some(0),
            "{what}: target ended with {status:?} (exit status names the failed check)"
        );
    }
}

/// Waits until the server reports `space` gone.
pub(crate) fn wait_gone(events: &crossbeam_channel::Receiver<ServerEvent>, space: SpaceId) {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match events.recv_timeout(left) {
            Ok(ServerEvent::Gone { space: s, .. }) if s == space => return,
            Ok(_) => {}
            Err(_) => panic!("{space} not reported gone within {TIMEOUT:?}"),
        }
    }
}

/// Reserves `len` bytes of address space (PROT_NONE), unmapped on drop.
pub(crate) struct Reservation {
    pub(crate) addr: u64,
    pub(crate) len: u64,
}

impl Reservation {
    pub(crate) fn new(len: u64) -> Self {
        // SAFETY: a new PROT_NONE mapping where the kernel finds room: it
        // overlaps nothing.
        let addr = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                len as usize,
                rustix::mm::ProtFlags::empty(),
                rustix::mm::MapFlags::PRIVATE | rustix::mm::MapFlags::NORESERVE,
            )
        }
        .expect("reserve address space");
        Self {
            addr: addr as u64,
            len,
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // SAFETY: our own reservation; nothing in this process uses it.
        let _ = unsafe { rustix::mm::munmap(self.addr as *mut libc::c_void, self.len as usize) };
    }
}

/// `mmap(MAP_FIXED)` of fresh read-write anonymous memory at `addr` (in a
/// target: over its copy of the test's reservation). No allocation.
pub(crate) fn map_fixed_anon(addr: u64, len: u64) -> bool {
    // SAFETY: in a target, `addr..addr + len` is the target's own copy of a
    // reservation (or a range it unmapped itself): replacing it affects no
    // memory any Rust code refers to.
    let ret = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    ret as u64 == addr
}

/// `mmap(MAP_FIXED | MAP_HUGETLB)` of fresh 2 MiB hugetlbfs pages at `addr`
/// (2 MiB aligned). No allocation.
pub(crate) fn map_fixed_huge(addr: u64, len: u64) -> bool {
    // SAFETY: as for `map_fixed_anon`: the target's own copy of a
    // reservation, which no Rust code refers to.
    let ret = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE
                | libc::MAP_ANONYMOUS
                | libc::MAP_FIXED
                | libc::MAP_NORESERVE
                | libc::MAP_HUGETLB
                | libc::MAP_HUGE_2MB,
            -1,
            0,
        )
    };
    ret as u64 == addr
}

/// `madvise(MADV_DONTNEED)`. No allocation.
pub(crate) fn dontneed(addr: u64, len: u64) -> bool {
    // SAFETY: drops the pages of a target's own raw memory range; they read
    // as zeros (or are served again) afterwards; no Rust reference covers it.
    unsafe { libc::madvise(addr as *mut libc::c_void, len as usize, libc::MADV_DONTNEED) == 0 }
}

/// `mremap(MREMAP_MAYMOVE | MREMAP_FIXED [| MREMAP_DONTUNMAP])`. No
/// allocation.
pub(crate) fn mremap_fixed(
    from: u64,
    old_len: u64,
    new_len: u64,
    to: u64,
    dontunmap: bool,
) -> bool {
    let mut flags = libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED;
    if dontunmap {
        flags |= libc::MREMAP_DONTUNMAP;
    }
    // SAFETY: moves a target's own raw memory range to a range of its
    // address space that it reserved for this; no Rust reference covers
    // either.
    let ret = unsafe {
        libc::mremap(
            from as *mut libc::c_void,
            old_len as usize,
            new_len as usize,
            flags,
            to as *mut libc::c_void,
        )
    };
    ret as u64 == to
}

/// `munmap`. No allocation.
pub(crate) fn unmap(addr: u64, len: u64) -> bool {
    // SAFETY: unmaps a target's own raw memory range, which no Rust
    // reference covers.
    unsafe { libc::munmap(addr as *mut libc::c_void, len as usize) == 0 }
}

/// Registers `addr..addr + len` with the target's userfaultfd.
pub(crate) fn register_more(ctx: &TargetCtx<'_>, addr: u64, len: u64) -> bool {
    register(
        ctx.uffd.as_fd(),
        Range::new(addr, len),
        RegisterMode::MISSING,
    )
    .is_ok()
}
