//! The state of a captured live process, beyond its memory: threads and their
//! registers, signal handlers, the `mm` fields, file descriptors, limits.
//!
//! [`ProcessState`] is [`ProcessMetadata::process`](crate::ProcessMetadata::process):
//! written by `lazarus capture --pid` (the `capture` crate), read by process
//! restore. Images imported from a file have none.
//!
//! Like the rest of the metadata these are msgpack maps with named fields, every
//! field defaulted on decode (`#[serde(default)]`), unit enums decode unknown
//! values as `Other`/`Unknown`: later versions add fields without breaking old
//! readers. The types are plain data, independent of libc and of the `tracee`
//! crate that reads them from the kernel.
//!
//! # Register sets are the kernel's bytes
//!
//! A thread's general registers and FP/vector state are stored exactly as the
//! kernel's `PTRACE_GETREGSET` returned them — `NT_PRSTATUS` (`struct
//! user_regs_struct`, 27 little-endian `u64`s: r15 r14 r13 r12 rbp rbx r11 r10
//! r9 r8 rax rcx rdx rsi rdi orig_rax rip cs eflags rsp ss fs_base gs_base ds
//! es fs gs) and `NT_X86_XSTATE` (the standard-format XSAVE area, as long as
//! the capturing kernel's) — the way an ELF core file stores them. Restore
//! hands them back to `PTRACE_SETREGSET` after checking their lengths; there
//! is no second register list to keep in sync. `fs_base` and `gs_base` (TLS)
//! are part of `NT_PRSTATUS`. In JSON (`lazarus inspect --json`) they show as
//! hex strings.
//!
//! Untrusted input: a reader must check `regs` is
//! [`ThreadState::REGS_LEN`] bytes and `xstate` matches its own kernel's XSAVE
//! size before using them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::meta::{FileIdentity, hex_bytes, opt_path_bytes, path_bytes};

/// `ProcessState::arch` of an x86_64 capture.
pub const ARCH_X86_64: &str = "x86_64";

/// Everything about a live process that is not memory. See the
/// [module documentation](self).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcessState {
    /// The architecture whose register layouts `threads` use
    /// ([`ARCH_X86_64`]).
    pub arch: String,
    /// The process's name (`/proc/PID/comm`).
    pub comm: String,
    /// Parent pid at capture time (informational).
    pub ppid: u32,
    /// Process group id.
    pub pgid: u32,
    /// Session id.
    pub sid: u32,
    /// Every thread, the thread-group leader first when it is alive (a
    /// leader that called `pthread_exit` is a zombie and is not listed).
    pub threads: Vec<ThreadState>,
    /// The disposition of every signal: element `i` is signal `i + 1`
    /// (64 entries on x86_64).
    pub signal_actions: Vec<SignalAction>,
    /// Signals pending for the whole process (`ShdPnd`): bit `n - 1` is
    /// signal `n`. They are delivered to the captured process after a
    /// `--leave-running` capture; the image only records them.
    pub shared_pending_signals: u64,
    /// If the process was in a job-control stop when captured: the stop
    /// signal (SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU).
    pub job_stop_signal: Option<i32>,
    /// The `mm` fields that `prctl(PR_SET_MM, PR_SET_MM_MAP)` sets.
    pub mm: MmFields,
    /// The auxiliary vector (`/proc/PID/auxv`) as `(type, value)` pairs
    /// flattened, `AT_NULL` pair included: what `PR_SET_MM_MAP` takes.
    pub auxv: Vec<u64>,
    /// Identity of the executable (`/proc/PID/exe`) at capture time; its path
    /// is [`ProcessMetadata::exe`](crate::ProcessMetadata::exe).
    pub exe_identity: Option<FileIdentity>,
    /// Working directory.
    #[serde(with = "opt_path_bytes")]
    pub cwd: Option<PathBuf>,
    /// File-mode creation mask.
    pub umask: u32,
    /// Execution domain (`personality(2)`, `/proc/PID/personality`).
    pub personality: u32,
    /// Resource limits, one per resource the kernel knows.
    pub rlimits: Vec<ResourceLimit>,
    /// Open file descriptors, ascending.
    pub fds: Vec<FdState>,
    /// Kernel flags of each captured region (`VmFlags` of
    /// `/proc/PID/smaps`), by region start.
    pub vma_flags: Vec<VmaFlags>,
    /// User and group ids (`None` in images of captures that did not record
    /// them).
    pub creds: Option<Credentials>,
}

/// A process's user and group ids (`Uid:`, `Gid:` and `Groups:` of
/// `/proc/PID/status`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Credentials {
    /// Real, effective, saved and filesystem user ids.
    pub uid: [u32; 4],
    /// Real, effective, saved and filesystem group ids.
    pub gid: [u32; 4],
    /// Supplementary group ids.
    pub groups: Vec<u32>,
}

/// One thread.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ThreadState {
    /// Thread id at capture time.
    pub tid: u32,
    /// Thread name (`/proc/PID/task/TID/comm`).
    pub comm: String,
    /// General registers: the kernel's `NT_PRSTATUS` regset
    /// ([`Self::REGS_LEN`] bytes, see the module docs), after the rseq
    /// fix-up (see `rseq_aborted`).
    #[serde(with = "hex_bytes")]
    pub regs: Vec<u8>,
    /// FP/vector state: the kernel's `NT_X86_XSTATE` regset (standard XSAVE
    /// format).
    #[serde(with = "hex_bytes")]
    pub xstate: Vec<u8>,
    /// Blocked signals (bit `n - 1` is signal `n`).
    pub sigmask: u64,
    /// Signals pending for this thread only (`SigPnd`); recorded, not
    /// re-raised.
    pub pending_signals: u64,
    /// The rseq registration, if any.
    pub rseq: Option<Rseq>,
    /// The thread was stopped inside an rseq critical section: `regs.rip`
    /// was moved to the section's abort handler (what the kernel does when
    /// it preempts such a thread; a restored thread must not continue in the
    /// middle of a per-CPU critical section on another CPU).
    pub rseq_aborted: bool,
    /// The robust futex list (`get_robust_list`).
    pub robust_list: RobustList,
    /// `clear_child_tid` (`set_tid_address`; `prctl(PR_GET_TID_ADDRESS)`).
    pub clear_child_tid: u64,
    /// The alternate signal stack (`sigaltstack`).
    pub sigaltstack: SignalStack,
    /// The system call the thread was stopped in, if any.
    pub syscall: Option<InSyscall>,
}

impl ThreadState {
    /// Length of the `NT_PRSTATUS` regset on x86_64 (`struct
    /// user_regs_struct`: 27 `u64`s).
    pub const REGS_LEN: usize = 27 * 8;
}

/// A thread stopped inside a system call (`orig_rax >= 0`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InSyscall {
    /// The system call number (`orig_rax`).
    pub nr: u64,
    /// `rax`: the result, or `-ERESTART*` when the call was interrupted.
    pub rax: i64,
    /// For an interrupted call: the restart the kernel prepared. A restored
    /// thread must be given registers that already include it (`tracee`'s
    /// `SyscallState::resume_registers` applies CRIU's rules).
    pub restart: Option<SyscallRestart>,
}

/// Which restart the kernel prepared for an interrupted system call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyscallRestart {
    /// `-ERESTARTSYS`.
    RestartSys,
    /// `-ERESTARTNOINTR`.
    RestartNoIntr,
    /// `-ERESTARTNOHAND`.
    RestartNoHand,
    /// `-ERESTART_RESTARTBLOCK`.
    RestartBlock,
    /// A kind written by a newer version.
    #[serde(other)]
    Unknown,
}

/// A thread's rseq registration (`PTRACE_GET_RSEQ_CONFIGURATION`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Rseq {
    /// Address of the thread's `struct rseq`.
    pub abi_pointer: u64,
    /// Registered length.
    pub abi_size: u32,
    /// Abort-handler signature.
    pub signature: u32,
    /// Registration flags.
    pub flags: u32,
}

/// A thread's robust futex list head (`get_robust_list`); `head == 0` when
/// none is registered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RobustList {
    /// Address of the `struct robust_list_head`.
    pub head: u64,
    /// Its registered length.
    pub len: u64,
}

/// A thread's alternate signal stack (`stack_t`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SignalStack {
    /// `ss_sp`.
    pub sp: u64,
    /// `ss_flags` (`SS_DISABLE` = 2 when there is none; `SS_AUTODISARM`).
    pub flags: i32,
    /// `ss_size`.
    pub size: u64,
}

/// A signal's disposition, in the kernel's `struct sigaction` terms (what
/// `rt_sigaction(2)` reads and writes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SignalAction {
    /// `sa_handler`: 0 `SIG_DFL`, 1 `SIG_IGN`, or a handler address.
    pub handler: u64,
    /// `sa_flags`.
    pub flags: u64,
    /// `sa_restorer`.
    pub restorer: u64,
    /// `sa_mask` (bit `n - 1` is signal `n`).
    pub mask: u64,
}

/// The `mm` fields that `PR_SET_MM_MAP` restores (`struct prctl_mm_map`, less
/// `auxv` and `exe_fd`, which are [`ProcessState::auxv`] and the exe path).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MmFields {
    /// Start of the program text.
    pub start_code: u64,
    /// End of the program text.
    pub end_code: u64,
    /// Start of initialised and BSS data.
    pub start_data: u64,
    /// End of initialised and BSS data.
    pub end_data: u64,
    /// Start of the heap (`brk` area).
    pub start_brk: u64,
    /// The current program break (`brk(0)` in the process; not page aligned).
    pub brk: u64,
    /// Start (bottom) of the main stack.
    pub start_stack: u64,
    /// Start of the argument strings.
    pub arg_start: u64,
    /// End of the argument strings.
    pub arg_end: u64,
    /// Start of the environment strings.
    pub env_start: u64,
    /// End of the environment strings.
    pub env_end: u64,
}

/// One resource limit (`prlimit(2)`); `u64::MAX` is `RLIM_INFINITY`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ResourceLimit {
    /// The resource number (`RLIMIT_CPU` = 0 ... `RLIMIT_RTTIME` = 15).
    pub resource: u32,
    /// Soft limit.
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
}

/// What an open file descriptor refers to (from the file type of its inode
/// and, for inodes without a file type, its link text).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FdKind {
    /// A regular file: restore reopens it by path (refusing a changed
    /// identity) with the same flags and offset.
    Regular,
    /// A directory.
    Directory,
    /// A character device (`/dev/null`, a terminal, ...); `rdev` says which.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// An anonymous pipe (`pipe:[inode]`; both ends share the inode).
    Pipe,
    /// A named pipe (FIFO) with a path.
    Fifo,
    /// A socket (`socket:[inode]`).
    Socket,
    /// An anonymous inode (`anon_inode:[eventfd]`, epoll, timerfd, ...).
    AnonInode,
    /// Anything else, including kinds written by a newer version.
    #[default]
    #[serde(other)]
    Other,
}

/// One open file descriptor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FdState {
    /// The descriptor number.
    pub fd: i32,
    /// What it refers to.
    pub kind: FdKind,
    /// The link text of `/proc/PID/fd/N`: a path, `pipe:[ino]`,
    /// `socket:[ino]`, `anon_inode:[...]`; ` (deleted)` appended for an
    /// unlinked file.
    #[serde(with = "path_bytes")]
    pub path: PathBuf,
    /// Open flags (`/proc/PID/fdinfo/N`), `O_CLOEXEC` included.
    pub flags: u32,
    /// File offset.
    pub pos: u64,
    /// `st_mode` of the inode.
    pub mode: u32,
    /// `st_dev` of the inode.
    pub dev: u64,
    /// `st_ino` of the inode.
    pub inode: u64,
    /// `st_rdev` (which device, for device files).
    pub rdev: u64,
    /// For regular files: the identity restore checks before reopening.
    pub identity: Option<FileIdentity>,
    /// The lowest fd that shares this fd's open file description (made by
    /// `dup`, inheritance or `SCM_RIGHTS`, found with `kcmp(KCMP_FILE)`);
    /// `None` when this is the lowest (or only) one. Restore `dup3`s it.
    pub shares_with: Option<i32>,
}

/// The kernel's flags of one mapping, as the two-letter `VmFlags` codes of
/// `/proc/PID/smaps` (`gd` grows down, `ht` hugetlb, `dc` don't fork, `dd`
/// don't dump, `wf` wipe on fork, `lo` locked, `hg`/`nh` huge-page advice,
/// `mg` mergeable, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct VmaFlags {
    /// Start of the region.
    pub start: u64,
    /// The codes, in the kernel's order.
    pub flags: Vec<String>,
}

impl VmaFlags {
    /// Whether code `flag` (such as `"gd"`) is set.
    pub fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ProcessMetadata;

    fn sample() -> ProcessState {
        ProcessState {
            arch: ARCH_X86_64.into(),
            comm: "counter".into(),
            threads: vec![ThreadState {
                tid: 42,
                regs: (0..ThreadState::REGS_LEN as u8).collect(),
                xstate: vec![0xab; 1024],
                syscall: Some(InSyscall {
                    nr: 230,
                    rax: -516,
                    restart: Some(SyscallRestart::RestartBlock),
                }),
                ..Default::default()
            }],
            signal_actions: vec![SignalAction::default(); 64],
            fds: vec![FdState {
                fd: 2,
                kind: FdKind::CharDevice,
                path: "/dev/null".into(),
                shares_with: Some(0),
                ..Default::default()
            }],
            cwd: Some("/tmp".into()),
            ..Default::default()
        }
    }

    #[test]
    fn round_trips_through_msgpack_and_json() {
        let m = ProcessMetadata {
            process: Some(sample()),
            ..Default::default()
        };
        let bytes = rmp_serde::to_vec_named(&m).unwrap();
        let back: ProcessMetadata = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back, m);
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains("\"regs\":\"000102"), "{json}");
        let back: ProcessMetadata = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn unknown_kinds_decode_as_other() {
        let bytes = rmp_serde::to_vec_named(&"io_uring_future").unwrap();
        let kind: FdKind = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(kind, FdKind::Other);
        let restart: SyscallRestart = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(restart, SyscallRestart::Unknown);
    }
}
