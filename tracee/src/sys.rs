//! The raw ptrace requests and system calls that neither nix nor rustix wrap in a form we
//! can use. This is the crate's only module with `unsafe`.
//!
//! Why not nix for everything:
//! - nix's `cont`, `syscall` and `detach` take an `Option<Signal>`, and nix's `Signal`
//!   cannot name real-time signals (34..=64). A real-time signal intercepted while seizing
//!   must be passed on unchanged, so the resuming requests here take the raw number.
//! - `PTRACE_GETREGSET` with a variable-sized buffer (`NT_X86_XSTATE`), `PTRACE_GETSIGMASK`,
//!   `PTRACE_SETSIGMASK`, `PTRACE_GET_RSEQ_CONFIGURATION` and `kcmp(2)` have no wrapper.
//!
//! Every function here is a safe wrapper: the caller passes Rust slices and integers, the
//! wrapper builds the pointers the kernel reads or writes and checks the result. A ptrace
//! request on a tid that is not a stopped tracee of the calling thread fails with `ESRCH`;
//! that is an error, never undefined behaviour.

use std::io;

use libc::{c_long, c_void, pid_t};
use linux_raw_sys::ptrace::ptrace_rseq_configuration;

/// `NT_PRSTATUS` from `<elf.h>`: the general registers (`struct user_regs_struct`).
pub(crate) const NT_PRSTATUS: u32 = 1;

/// `NT_X86_XSTATE` from `<elf.h>`: the XSAVE area, in the standard (uncompacted) format.
pub(crate) const NT_X86_XSTATE: u32 = 0x202;

/// `KCMP_FILE` from `<linux/kcmp.h>`.
const KCMP_FILE: libc::c_int = 0;

/// Size of the kernel's `siginfo_t`.
pub(crate) const SIGINFO_LEN: usize = 128;

const _: () = assert!(size_of::<libc::siginfo_t>() == SIGINFO_LEN);
const _: () = assert!(size_of::<ptrace_rseq_configuration>() == 24);

/// The one place that turns a `-1` return into the calling thread's `errno`.
fn check(ret: c_long) -> io::Result<c_long> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Requests that resume a stopped tracee, optionally injecting a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resume {
    /// `PTRACE_CONT`.
    Cont,
    /// `PTRACE_SYSCALL`: run until the next system-call entry or exit.
    Syscall,
    /// `PTRACE_DETACH`.
    Detach,
}

/// Resumes (or detaches) a stopped tracee, injecting `signal` (0 for none). The signal is
/// only delivered from a signal-delivery-stop; in other stops the kernel ignores it.
pub(crate) fn resume(request: Resume, tid: pid_t, signal: i32) -> io::Result<()> {
    let request = match request {
        Resume::Cont => libc::PTRACE_CONT,
        Resume::Syscall => libc::PTRACE_SYSCALL,
        Resume::Detach => libc::PTRACE_DETACH,
    };
    // The kernel takes the signal number in the `data` argument, as an integer.
    let data = usize::try_from(signal).unwrap_or(0) as *mut c_void;
    // SAFETY: these requests read no memory through `addr` (null) or `data` (an integer
    // signal number, not a pointer).
    let ret = unsafe { libc::ptrace(request, tid, std::ptr::null_mut::<c_void>(), data) };
    check(ret).map(drop)
}

/// `PTRACE_GETREGSET` into `buf`; returns how many bytes the kernel wrote. The kernel
/// clamps the transfer to the size of the register set, so a large `buf` probes the size.
pub(crate) fn get_regset(tid: pid_t, note: u32, buf: &mut [u8]) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: `iov` describes `buf`, which is valid for writes of `buf.len()` bytes for the
    // duration of the call; the kernel writes at most `iov_len` bytes there and updates
    // `iov.iov_len`, which lives on our stack.
    let ret = unsafe {
        libc::ptrace(
            libc::PTRACE_GETREGSET,
            tid,
            note as usize as *mut c_void,
            (&raw mut iov).cast::<c_void>(),
        )
    };
    check(ret)?;
    Ok(iov.iov_len)
}

/// `PTRACE_SETREGSET` from `buf`.
pub(crate) fn set_regset(tid: pid_t, note: u32, buf: &[u8]) -> io::Result<()> {
    let mut iov = libc::iovec {
        // The kernel only reads through this pointer for SETREGSET.
        iov_base: buf.as_ptr().cast_mut().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: `iov` describes `buf`, valid for reads of `buf.len()` bytes; SETREGSET only
    // reads the buffer (and may update `iov.iov_len`, on our stack).
    let ret = unsafe {
        libc::ptrace(
            libc::PTRACE_SETREGSET,
            tid,
            note as usize as *mut c_void,
            (&raw mut iov).cast::<c_void>(),
        )
    };
    check(ret).map(drop)
}

/// `PTRACE_GETSIGMASK`: the thread's blocked-signal mask (bit `n - 1` is signal `n`). When
/// the thread sits in a call that temporarily replaced its mask (`rt_sigsuspend`, `ppoll`,
/// `pselect6`, `epoll_pwait`), the kernel reports the mask that will be restored.
pub(crate) fn get_sigmask(tid: pid_t) -> io::Result<u64> {
    let mut mask: u64 = 0;
    // SAFETY: `addr` is the size of the kernel's sigset (8 bytes) and `data` points to a
    // `u64` on our stack, valid for writes of 8 bytes.
    let ret = unsafe {
        libc::ptrace(
            libc::PTRACE_GETSIGMASK,
            tid,
            size_of::<u64>() as *mut c_void,
            (&raw mut mask).cast::<c_void>(),
        )
    };
    check(ret)?;
    Ok(mask)
}

/// `PTRACE_SETSIGMASK`. The kernel silently keeps SIGKILL and SIGSTOP unblocked.
pub(crate) fn set_sigmask(tid: pid_t, mask: u64) -> io::Result<()> {
    // SAFETY: `addr` is the size of the kernel's sigset and `data` points to a `u64` on our
    // stack, valid for reads of 8 bytes; the kernel only reads it.
    let ret = unsafe {
        libc::ptrace(
            libc::PTRACE_SETSIGMASK,
            tid,
            size_of::<u64>() as *mut c_void,
            (&raw const mask).cast_mut().cast::<c_void>(),
        )
    };
    check(ret).map(drop)
}

/// `PTRACE_GET_RSEQ_CONFIGURATION` (Linux 5.13).
pub(crate) fn get_rseq_configuration(tid: pid_t) -> io::Result<ptrace_rseq_configuration> {
    let mut conf = ptrace_rseq_configuration {
        rseq_abi_pointer: 0,
        rseq_abi_size: 0,
        signature: 0,
        flags: 0,
        pad: 0,
    };
    // SAFETY: `addr` is the size of the structure and `data` points to one on our stack,
    // valid for writes of that many bytes; the kernel writes at most `addr` bytes.
    let ret = unsafe {
        libc::ptrace(
            linux_raw_sys::ptrace::PTRACE_GET_RSEQ_CONFIGURATION,
            tid,
            size_of::<ptrace_rseq_configuration>() as *mut c_void,
            (&raw mut conf).cast::<c_void>(),
        )
    };
    check(ret)?;
    Ok(conf)
}

/// `PTRACE_GETSIGINFO`, as the raw 128 bytes of the kernel's `siginfo_t`.
pub(crate) fn get_siginfo(tid: pid_t) -> io::Result<[u8; SIGINFO_LEN]> {
    let mut info = [0u8; SIGINFO_LEN];
    // SAFETY: `data` points to a 128-byte buffer on our stack, the size of the kernel's
    // `siginfo_t`, valid for writes; `addr` is ignored.
    let ret = unsafe {
        libc::ptrace(
            libc::PTRACE_GETSIGINFO,
            tid,
            std::ptr::null_mut::<c_void>(),
            info.as_mut_ptr().cast::<c_void>(),
        )
    };
    check(ret)?;
    Ok(info)
}

/// `kcmp(pid1, pid2, KCMP_FILE, fd1, fd2)`: 0 when both fds refer to one open file
/// description, 1 or 2 for an (obfuscated but consistent) ordering.
pub(crate) fn kcmp_file(pid1: pid_t, fd1: i32, pid2: pid_t, fd2: i32) -> io::Result<c_long> {
    // The fd arguments are `unsigned long` in the kernel; a negative fd is refused here
    // rather than turned into a huge number.
    let idx1 = u64::try_from(fd1).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    let idx2 = u64::try_from(fd2).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: kcmp takes only integers and reads no memory of ours.
    let ret = unsafe { libc::syscall(libc::SYS_kcmp, pid1, pid2, KCMP_FILE, idx1, idx2) };
    check(ret)
}

/// `get_robust_list(tid)`: the head address and length of the thread's robust futex list.
/// Needs ptrace read access to the thread (being its tracer suffices).
pub(crate) fn get_robust_list(tid: pid_t) -> io::Result<(u64, u64)> {
    let mut head: u64 = 0;
    let mut len: usize = 0;
    // SAFETY: the kernel writes one pointer-sized value through each of the two pointers,
    // which point to a `u64` and a `usize` on our stack (both 8 bytes on x86_64), valid
    // for writes for the duration of the call.
    let ret = unsafe { libc::syscall(libc::SYS_get_robust_list, tid, &raw mut head, &raw mut len) };
    check(ret)?;
    Ok((head, len as u64))
}

/// `prlimit(pid, resource, new, &old)`: reads (and, with `new`, sets) one resource limit of
/// another process; returns the limit in force before the call as `(soft, hard)`.
pub(crate) fn prlimit(
    pid: pid_t,
    resource: u32,
    new: Option<(u64, u64)>,
) -> io::Result<(u64, u64)> {
    let new = new.map(|(soft, hard)| libc::rlimit64 {
        rlim_cur: soft,
        rlim_max: hard,
    });
    let mut old = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let new_ptr = new.as_ref().map_or(std::ptr::null(), std::ptr::from_ref);
    // SAFETY: `new_ptr` is null or points to an `rlimit64` on our stack, which the kernel
    // only reads; `old` is an `rlimit64` on our stack, valid for writes. Both outlive the
    // call.
    let ret = unsafe { libc::prlimit64(pid, resource, new_ptr, &raw mut old) };
    check(c_long::from(ret))?;
    Ok((old.rlim_cur, old.rlim_max))
}
