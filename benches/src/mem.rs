//! Raw access to restored memory (the `unsafe` of the harness): touching a
//! page, and reading a whole range.
//!
//! Restored regions are raw memory filled by the kernel behind Rust's back
//! (through userfaultfd); they are read through raw pointers only, never
//! through references.

/// Reads one byte at `addr` (faulting its page in).
///
/// The caller passes an address inside a live, readable restored region.
pub(crate) fn touch(addr: u64) -> u8 {
    // SAFETY: per the contract, `addr` is inside a live readable mapping;
    // volatile so the access happens exactly once and is not elided.
    unsafe { std::ptr::read_volatile(addr as *const u8) }
}

/// Reads every 8-byte word of `[addr, addr + len)` (`len` a multiple of 8)
/// and returns their wrapping sum.
///
/// The caller passes a live, readable restored region, 8-byte aligned.
pub(crate) fn sum_words(addr: u64, len: u64) -> u64 {
    let mut sum = 0u64;
    let mut p = addr;
    let end = addr + len;
    while p < end {
        // SAFETY: per the contract, `p` is an aligned word inside a live
        // readable mapping.
        sum = sum.wrapping_add(unsafe { std::ptr::read_volatile(p as *const u64) });
        p += 8;
    }
    sum
}
