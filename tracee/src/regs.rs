//! Plain-data register sets and per-thread state, as capture stores them in the image
//! metadata and restore applies them.
//!
//! Every type here is a plain struct of integers or bytes with serde derives, independent
//! of libc's definitions, so that the image format does not change when libc does. The
//! conversions to the kernel's layouts live next to the types.

use serde::{Deserialize, Serialize};

/// Declares [`GeneralRegisters`] with its fields in the kernel's order, and the byte
/// conversions that depend on that order.
macro_rules! general_registers {
    ($($field:ident),+ $(,)?) => {
        /// The general registers of an x86_64 thread: the kernel's
        /// `struct user_regs_struct` (`NT_PRSTATUS`), field for field and in the kernel's
        /// order, including `orig_rax` (the system call a thread is in, or -1) and the
        /// `fs`/`gs` segment bases (TLS).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
        #[allow(missing_docs)] // The fields are the x86_64 registers of the same name.
        pub struct GeneralRegisters {
            $(pub $field: u64,)+
        }

        impl GeneralRegisters {
            /// Size of `struct user_regs_struct`.
            pub const LEN: usize = [$(stringify!($field)),+].len() * 8;

            /// The kernel's layout: the fields as little-endian `u64`s, in order.
            pub fn to_bytes(&self) -> [u8; Self::LEN] {
                let mut out = [0u8; Self::LEN];
                let words = out.chunks_exact_mut(8);
                for (chunk, value) in words.zip([$(self.$field),+]) {
                    chunk.copy_from_slice(&value.to_le_bytes());
                }
                out
            }

            /// Parses the kernel's layout.
            pub fn from_bytes(bytes: &[u8; Self::LEN]) -> Self {
                let mut words = bytes.chunks_exact(8).map(|chunk| {
                    let mut word = [0u8; 8];
                    word.copy_from_slice(chunk);
                    u64::from_le_bytes(word)
                });
                Self {
                    $($field: words.next().unwrap_or(0),)+
                }
            }
        }
    };
}

general_registers!(
    r15, r14, r13, r12, rbp, rbx, r11, r10, r9, r8, rax, rcx, rdx, rsi, rdi, orig_rax, rip, cs,
    eflags, rsp, ss, fs_base, gs_base, ds, es, fs, gs,
);

const _: () = assert!(GeneralRegisters::LEN == size_of::<libc::user_regs_struct>());

/// The code segment selector of 64-bit user mode (`__USER_CS`). A thread running 32-bit
/// code has `cs = 0x23`; its system call ABI differs and this crate refuses it.
pub const USER64_CS: u64 = 0x33;

impl GeneralRegisters {
    /// Whether the thread runs 64-bit code (see [`USER64_CS`]).
    pub fn is_64bit(&self) -> bool {
        self.cs == USER64_CS
    }
}

/// The full FP/vector state of a thread (`NT_X86_XSTATE`): the XSAVE area in the standard
/// (uncompacted) format, exactly as many bytes as this machine's kernel reports.
///
/// ```text
/// offset 0    legacy FXSAVE region (512 bytes): FCW, FSW, ..., MXCSR, st0-7, xmm0-15
/// offset 512  XSAVE header (64 bytes): xstate_bv (u64), xcomp_bv (u64), reserved
/// offset 576  extended components at their CPUID(0xD, n) offsets: ymm_hi128 (AVX),
///             opmask/zmm (AVX-512), PKRU, AMX tiles, ...
/// ```
///
/// `NT_PRFPREG` (SETFPREGS) would only carry the legacy region and lose the upper halves
/// of the ymm/zmm registers; restore must use this set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct XState {
    /// The XSAVE area.
    pub bytes: Vec<u8>,
}

/// Offset of the XSAVE header (`xstate_bv`) in [`XState::bytes`].
pub const XSAVE_HEADER_OFFSET: usize = 512;

impl XState {
    /// The `xstate_bv` bitmap of the XSAVE header: which components hold non-initial state
    /// (bit 0 x87, 1 SSE, 2 AVX, ...). `None` if the area is too short to have a header.
    pub fn xstate_bv(&self) -> Option<u64> {
        let field = self
            .bytes
            .get(XSAVE_HEADER_OFFSET..XSAVE_HEADER_OFFSET + 8)?;
        Some(u64::from_le_bytes(field.try_into().ok()?))
    }
}

/// A thread's blocked-signal mask: bit `n - 1` set means signal `n` is blocked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SignalMask(pub u64);

impl SignalMask {
    /// Every signal blocked (the kernel still never blocks SIGKILL and SIGSTOP).
    pub const ALL: Self = Self(u64::MAX);

    /// Whether signal `signal` (1..=64) is in the mask.
    pub fn contains(self, signal: i32) -> bool {
        (1..=64).contains(&signal) && self.0 & (1u64 << (signal - 1)) != 0
    }
}

/// A thread's restartable-sequences registration, from `PTRACE_GET_RSEQ_CONFIGURATION`.
/// `rseq_abi_pointer == 0` means the thread has no rseq area registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RseqConfiguration {
    /// Address of the thread's `struct rseq` in its memory.
    pub rseq_abi_pointer: u64,
    /// Length registered with `rseq(2)`.
    pub rseq_abi_size: u32,
    /// The signature that must precede abort handlers.
    pub signature: u32,
    /// Flags registered with `rseq(2)`.
    pub flags: u32,
}

impl RseqConfiguration {
    /// Whether the thread has an rseq area registered.
    pub fn is_registered(&self) -> bool {
        self.rseq_abi_pointer != 0
    }
}

impl From<linux_raw_sys::ptrace::ptrace_rseq_configuration> for RseqConfiguration {
    fn from(c: linux_raw_sys::ptrace::ptrace_rseq_configuration) -> Self {
        Self {
            rseq_abi_pointer: c.rseq_abi_pointer,
            rseq_abi_size: c.rseq_abi_size,
            signature: c.signature,
            flags: c.flags,
        }
    }
}

/// A thread's robust futex list registration (`get_robust_list(2)`); `head == 0` when the
/// thread registered none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RobustList {
    /// Address of the thread's `struct robust_list_head`.
    pub head: u64,
    /// The length registered with `set_robust_list(2)`.
    pub len: u64,
}

/// The `siginfo_t` of a thread's current ptrace stop (`PTRACE_GETSIGINFO`), as the kernel's
/// 128 raw bytes, with accessors for the three leading fields every variant shares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigInfo {
    /// The raw `siginfo_t` (128 bytes).
    pub bytes: Vec<u8>,
}

impl SigInfo {
    fn int_at(&self, offset: usize) -> i32 {
        self.bytes
            .get(offset..offset + 4)
            .and_then(|b| b.try_into().ok())
            .map_or(0, i32::from_le_bytes)
    }

    /// `si_signo`.
    pub fn signo(&self) -> i32 {
        self.int_at(0)
    }

    /// `si_errno`.
    pub fn errno(&self) -> i32 {
        self.int_at(4)
    }

    /// `si_code`. For a ptrace event stop this is `SIGTRAP | event << 8`.
    pub fn code(&self) -> i32 {
        self.int_at(8)
    }
}

/// A signal's disposition in the kernel's x86_64 `struct sigaction` layout, as
/// `rt_sigaction(2)` reads and writes it (not glibc's layout):
///
/// ```text
/// offset  0  sa_handler   (u64: SIG_DFL = 0, SIG_IGN = 1, or a handler address)
/// offset  8  sa_flags     (u64: SA_SIGINFO, SA_RESTART, SA_RESTORER, ...)
/// offset 16  sa_restorer  (u64: the sigreturn trampoline, with SA_RESTORER)
/// offset 24  sa_mask      (u64: signals blocked while the handler runs)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KernelSigaction {
    /// `sa_handler`.
    pub handler: u64,
    /// `sa_flags`.
    pub flags: u64,
    /// `sa_restorer`.
    pub restorer: u64,
    /// `sa_mask`.
    pub mask: u64,
}

impl KernelSigaction {
    /// Size of the kernel structure.
    pub const LEN: usize = 32;

    /// The kernel's byte layout.
    pub fn to_bytes(self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        for (chunk, value) in
            out.chunks_exact_mut(8)
                .zip([self.handler, self.flags, self.restorer, self.mask])
        {
            chunk.copy_from_slice(&value.to_le_bytes());
        }
        out
    }

    /// Parses the kernel's byte layout.
    pub fn from_bytes(bytes: &[u8; Self::LEN]) -> Self {
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            u64::from_le_bytes(w)
        };
        Self {
            handler: word(0),
            flags: word(1),
            restorer: word(2),
            mask: word(3),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_bytes_follow_the_kernel_order() {
        let mut bytes = [0u8; GeneralRegisters::LEN];
        for (i, chunk) in bytes.chunks_exact_mut(8).enumerate() {
            chunk.copy_from_slice(&(i as u64 + 1).to_le_bytes());
        }
        let regs = GeneralRegisters::from_bytes(&bytes);
        assert_eq!(regs.r15, 1);
        assert_eq!(regs.rax, 11);
        assert_eq!(regs.orig_rax, 16);
        assert_eq!(regs.rip, 17);
        assert_eq!(regs.fs_base, 22);
        assert_eq!(regs.gs, 27);
        assert_eq!(regs.to_bytes(), bytes);
        // Offsets as in libc's user_regs_struct.
        assert_eq!(
            std::mem::offset_of!(libc::user_regs_struct, orig_rax),
            15 * 8
        );
        assert_eq!(
            std::mem::offset_of!(libc::user_regs_struct, fs_base),
            21 * 8
        );
    }

    #[test]
    fn sigaction_bytes_round_trip() {
        let act = KernelSigaction {
            handler: 0x1122_3344_5566_7788,
            flags: 0x0400_0004,
            restorer: 0xdead_beef,
            mask: 1 << 9,
        };
        let bytes = act.to_bytes();
        assert_eq!(&bytes[0..8], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(KernelSigaction::from_bytes(&bytes), act);
    }

    #[test]
    fn signal_mask_membership() {
        let mask = SignalMask(1 << (libc::SIGUSR1 - 1));
        assert!(mask.contains(libc::SIGUSR1));
        assert!(!mask.contains(libc::SIGUSR2));
        assert!(!mask.contains(0));
        assert!(!mask.contains(65));
        assert!(SignalMask::ALL.contains(64));
    }

    #[test]
    fn siginfo_accessors_read_leading_fields() {
        let mut bytes = vec![0u8; 128];
        bytes[0..4].copy_from_slice(&5i32.to_le_bytes());
        bytes[8..12].copy_from_slice(&(5i32 | 0x80 << 8).to_le_bytes());
        let info = SigInfo { bytes };
        assert_eq!(info.signo(), 5);
        assert_eq!(info.errno(), 0);
        assert_eq!(info.code(), 5 | 0x80 << 8);
        assert_eq!(SigInfo { bytes: vec![] }.signo(), 0);
    }
}
