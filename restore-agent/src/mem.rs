//! Anonymous mappings for restored regions: the memory-management `unsafe`
//! code of the agent (the userfaultfd calls have their own module,
//! `uffd/sys.rs`).
//!
//! A [`MappedRegion`] is raw memory handed out as an *address*, never as a
//! Rust reference: its pages are filled behind the program's back by
//! `UFFDIO_COPY`, so the agent never reads or writes it, and callers that
//! build slices over it do so in their own `unsafe` code, for as long as the
//! region lives.

use std::io;

use rustix::mm::{MapFlags, MprotectFlags, ProtFlags};
use snapshot_format::Protection;

/// `MAP_HUGE_2MB`: the huge page size for `MAP_HUGETLB` mappings.
pub const HUGE_PAGE_2M: u64 = 2 * 1024 * 1024;

/// Where [`MappedRegion::map`] puts a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum At {
    /// Exactly this address; fails with `EEXIST` if anything is mapped there
    /// (`MAP_FIXED_NOREPLACE`: never replaces a mapping).
    Fixed(u64),
    /// Where the kernel finds room.
    Anywhere,
}

/// An owned private anonymous mapping, unmapped on drop (unless
/// [`leak`](Self::leak)ed).
#[derive(Debug)]
pub struct MappedRegion {
    addr: u64,
    len: u64,
}

impl MappedRegion {
    /// Maps `len` bytes of fresh private anonymous memory with protection
    /// `prot`, backed by 2 MiB hugetlbfs pages when `huge`. Nothing is
    /// populated (`MAP_NORESERVE`).
    pub(crate) fn map(at: At, len: u64, prot: Protection, huge: bool) -> io::Result<Self> {
        let len_usize =
            usize::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::ENOMEM))?;
        let mut flags = MapFlags::PRIVATE | MapFlags::NORESERVE;
        let hint = match at {
            At::Fixed(addr) => {
                flags |= MapFlags::FIXED_NOREPLACE;
                addr as *mut libc::c_void
            }
            At::Anywhere => std::ptr::null_mut(),
        };
        if huge {
            flags |= MapFlags::HUGETLB | MapFlags::HUGE_2MB;
        }
        // SAFETY: a new anonymous mapping either where the kernel picks or at a
        // fixed address with MAP_FIXED_NOREPLACE, which fails rather than
        // replace an existing mapping: no memory of this program changes.
        let ret = unsafe { rustix::mm::mmap_anonymous(hint, len_usize, prot_flags(prot), flags) }?;
        let addr = ret as u64;
        if let At::Fixed(want) = at
            && addr != want
        {
            // Kernels before 4.17 ignore MAP_FIXED_NOREPLACE and treat the
            // address as a hint: give the mapping back and report the clash.
            drop(Self { addr, len });
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        Ok(Self { addr, len })
    }

    /// First address.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the mapping is empty (never: mappings have at least a page).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Makes every page inaccessible (any access raises SIGSEGV). Used when a
    /// restore is abandoned before its memory is complete: loud failure
    /// rather than silently zero pages.
    pub(crate) fn protect_none(&self) -> io::Result<()> {
        // SAFETY: changes the protection of our own mapping; no Rust reference
        // points into it (the agent hands out addresses only), so no Rust
        // code can be broken by the change, only raw accesses fault.
        unsafe {
            rustix::mm::mprotect(
                self.addr as *mut libc::c_void,
                self.len as usize,
                MprotectFlags::empty(),
            )
        }
        .map_err(io::Error::from)
    }

    /// Gives up ownership: the mapping stays for the rest of the process.
    pub fn leak(self) -> (u64, u64) {
        let this = std::mem::ManuallyDrop::new(self);
        (this.addr, this.len)
    }
}

impl Drop for MappedRegion {
    fn drop(&mut self) {
        // SAFETY: we own this mapping and hand out no references into it; the
        // caller of the restore promised (see `RestoredMemory`) not to use the
        // addresses after dropping it.
        let ret = unsafe { rustix::mm::munmap(self.addr as *mut libc::c_void, self.len as usize) };
        if let Err(e) = ret {
            log::error!("munmap({:#x}, {:#x}): {e}", self.addr, self.len);
        }
    }
}

fn prot_flags(p: Protection) -> ProtFlags {
    let mut f = ProtFlags::empty();
    if p.read {
        f |= ProtFlags::READ;
    }
    if p.write {
        f |= ProtFlags::WRITE;
    }
    if p.exec {
        f |= ProtFlags::EXEC;
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_noreplace_refuses_an_occupied_address() {
        let a = MappedRegion::map(At::Anywhere, 4 * 4096, Protection::READ_WRITE, false)
            .expect("map anywhere");
        let err = MappedRegion::map(At::Fixed(a.addr()), 4096, Protection::READ_WRITE, false)
            .expect_err("address in use");
        assert_eq!(err.raw_os_error(), Some(libc::EEXIST));
        let (addr, len) = (a.addr(), a.len());
        drop(a);
        let b = MappedRegion::map(At::Fixed(addr), len, Protection::READ_WRITE, false)
            .expect("free again after drop");
        assert_eq!((b.addr(), b.len()), (addr, len));
        b.protect_none().expect("mprotect");
    }
}
