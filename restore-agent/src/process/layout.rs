//! The memory layout: what each captured region becomes, and building it inside the
//! helper.
//!
//! | captured region | recreated as | its bytes |
//! | --- | --- | --- |
//! | anonymous, `[heap]`, `[stack]`, guard | `mmap(MAP_PRIVATE \| MAP_ANONYMOUS)` at its address (`MAP_GROWSDOWN` where the kernel had `VM_GROWSDOWN`, so the stack still grows) | registered with userfaultfd (MISSING) and served by the agent, if the image holds any data for it; otherwise left to the kernel (all zero) |
//! | private file mapping | `mmap(MAP_PRIVATE)` of the same, identity-checked file at the same offset | the file's pages come from the file; pages the process had copied on write are written before it runs, through `/proc/PID/mem` (MISSING mode cannot register a private file mapping) |
//! | shared file mapping | `mmap(MAP_SHARED)` of the same file | the file |
//! | shared anonymous, shmem, memfd | `mmap(MAP_SHARED)` of a memfd per captured object, `st_size` long | written into the memfd by the agent before the helper exists (eagerly) |
//! | `[vdso]`, `[vvar]`, `[vvar_vclock]` | the helper's own, moved (module `vdso`) | the kernel's |
//!
//! Every mapping is made with `MAP_FIXED_NOREPLACE`: the helper has nothing else mapped
//! by then, and a region that would overlap another fails instead of replacing it.
//! Regions keep their smaps advice flags (`MADV_DONTFORK`, `WIPEONFORK`, `DONTDUMP`,
//! huge-page and KSM advice) and `[anon:NAME]` names.
//!
//! Before mapping anything, the helper is emptied: its inherited rseq registration is
//! dropped (the kernel would keep writing the agent's rseq area, which is about to
//! disappear), every fd but the sources is closed, and every mapping but the special
//! ones is unmapped.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use rustix::fs::OFlags;
use snapshot_format::process::VmaFlags;
use snapshot_format::{Image, PageSource, Protection, RegionInfo, RegionKind};
use tracee::{RemoteScratch, RemoteSession, RseqConfiguration};

use super::error::ProcessRestoreError;
use super::files::{Check, Sources, memfd, open_checked};
use super::maps::MapsEntry;
use super::vdso::{Specials, TASK_SIZE_47, move_specials};

/// The largest shared memory object (`st_size` of a shmem or memfd region's object)
/// accepted from an image.
pub const MAX_SHARED_OBJECT_LEN: u64 = 1 << 40;

/// `RSEQ_FLAG_UNREGISTER`.
const RSEQ_FLAG_UNREGISTER: u64 = 1;

/// `PR_SET_VMA`, `PR_SET_VMA_ANON_NAME`.
const PR_SET_VMA: u64 = 0x5356_4d41;
const PR_SET_VMA_ANON_NAME: u64 = 0;

/// The longest `[anon:NAME]` name (`ANON_VMA_NAME_MAX_LEN` less the NUL).
const ANON_NAME_MAX: usize = 79;

/// How a region is recreated (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Setup {
    /// A special mapping: moved, not mapped.
    Special,
    /// Private anonymous memory; `served` when the image holds data for it.
    Anonymous {
        growsdown: bool,
        noreserve: bool,
        served: bool,
    },
    /// A private mapping of source `fd` at `offset`.
    FilePrivate { fd: i32, offset: u64 },
    /// A shared mapping of source `fd` (a file or a memfd) at `offset`.
    Shared { fd: i32, offset: u64 },
}

/// One region to recreate.
#[derive(Debug, Clone)]
pub(crate) struct RegionPlan {
    pub(crate) start: u64,
    pub(crate) len: u64,
    pub(crate) prot: Protection,
    pub(crate) setup: Setup,
    /// `madvise` advice to apply, and whether a failure is fatal.
    pub(crate) advice: Vec<(i32, bool)>,
    /// The `[anon:NAME]` name.
    pub(crate) anon_name: Option<Vec<u8>>,
}

impl RegionPlan {
    /// Whether the region is registered with userfaultfd and served.
    pub(crate) fn served(&self) -> bool {
        matches!(self.setup, Setup::Anonymous { served: true, .. })
    }
}

/// Pages of private file mappings that the process had copied on write: written into
/// the mapping before the process runs.
#[derive(Debug, Default)]
pub(crate) struct CowPages {
    pub(crate) bytes: Vec<u8>,
    /// `(address, offset in bytes, length)`.
    pub(crate) runs: Vec<(u64, usize, usize)>,
}

/// Advice from smaps `VmFlags` codes: (code, advice, whether failing it is fatal).
const ADVICE: [(&str, i32, bool); 6] = [
    ("dc", libc::MADV_DONTFORK, true),
    ("wf", libc::MADV_WIPEONFORK, true),
    ("dd", libc::MADV_DONTDUMP, false),
    ("hg", libc::MADV_HUGEPAGE, false),
    ("nh", libc::MADV_NOHUGEPAGE, false),
    ("mg", libc::MADV_MERGEABLE, false),
];

/// Decides every region (see the module docs): opens and checks mapped files, creates
/// and fills the memfds of shared memory, reads the copied-on-write pages of private
/// file mappings. Descriptors the helper needs go into `sources`.
pub(crate) fn plan_regions(
    image: &Image,
    vma_flags: &[VmaFlags],
    sources: &mut Sources,
) -> Result<(Vec<RegionPlan>, CowPages), ProcessRestoreError> {
    let mut reader = image
        .range_reader()
        .map_err(ProcessRestoreError::io("cannot start reading the image"))?;
    let mut files: HashMap<(PathBuf, bool), i32> = HashMap::new();
    let mut objects: HashMap<(u64, u64), i32> = HashMap::new();
    let mut cow = CowPages::default();
    let mut plans = Vec::with_capacity(image.regions().len());
    for (index, r) in image.regions().iter().enumerate() {
        if r.end() > TASK_SIZE_47 {
            return Err(ProcessRestoreError::unsupported(format!(
                "region {:#x}-{:#x} lies above the 47-bit address space",
                r.start,
                r.end()
            )));
        }
        let flags = vma_flags.iter().find(|f| f.start == r.start);
        let has = |code: &str| flags.is_some_and(|f| f.has(code));
        let extents = image.region_extents(index);
        let has_file_runs = extents
            .iter()
            .any(|e| matches!(e.source, PageSource::File { .. }));
        let describe = || format!("region {:#x}-{:#x} ({})", r.start, r.end(), r.kind);
        let setup = match r.kind {
            RegionKind::Vdso | RegionKind::Vvar | RegionKind::VvarVclock => Setup::Special,
            RegionKind::Anonymous | RegionKind::Heap | RegionKind::Stack | RegionKind::Guard => {
                if has_file_runs || r.shared {
                    return Err(ProcessRestoreError::invalid(format!(
                        "{}: anonymous private memory with file pages or shared",
                        describe()
                    )));
                }
                Setup::Anonymous {
                    growsdown: has("gd"),
                    noreserve: has("nr"),
                    served: extents
                        .iter()
                        .any(|e| matches!(e.source, PageSource::Chunk { .. })),
                }
            }
            RegionKind::FilePrivate | RegionKind::FileShared => {
                let shared = r.kind == RegionKind::FileShared;
                let file = r.file.as_ref().ok_or_else(|| {
                    ProcessRestoreError::invalid(format!("{}: no file recorded", describe()))
                })?;
                // A shared mapping that may become writable needs a writable fd.
                let write = shared && (r.prot.write || has("mw"));
                let key = (file.path.clone(), write);
                let fd = match files.get(&key) {
                    Some(&fd) => fd,
                    None => {
                        let flags = if write { OFlags::RDWR } else { OFlags::RDONLY };
                        let opened = open_checked(
                            "mapped file",
                            &file.path,
                            flags,
                            Check::Content(file.identity),
                        )?;
                        let fd = sources.add(opened)?;
                        files.insert(key, fd);
                        fd
                    }
                };
                if shared {
                    Setup::Shared {
                        fd,
                        offset: file.offset,
                    }
                } else {
                    read_cow_pages(image, index, r, &mut reader, &mut cow)?;
                    Setup::FilePrivate {
                        fd,
                        offset: file.offset,
                    }
                }
            }
            RegionKind::Shmem | RegionKind::Memfd => {
                if has_file_runs {
                    return Err(ProcessRestoreError::invalid(format!(
                        "{}: shared memory with file pages",
                        describe()
                    )));
                }
                let (key, size, offset, name) = match &r.file {
                    Some(f) => (
                        (f.identity.dev, f.identity.inode),
                        f.identity.size,
                        f.offset,
                        object_name(&f.path),
                    ),
                    // No identity: an object of its own, as long as the region.
                    None => (
                        (u64::MAX, index as u64),
                        r.len,
                        0,
                        b"lazarus-shmem".to_vec(),
                    ),
                };
                if size > MAX_SHARED_OBJECT_LEN {
                    return Err(ProcessRestoreError::invalid(format!(
                        "{}: a shared object of {size} bytes (limit {MAX_SHARED_OBJECT_LEN})",
                        describe()
                    )));
                }
                let fd = match objects.get(&key) {
                    Some(&fd) => fd,
                    None => {
                        let object = memfd(&name, size)?;
                        let fd = sources.add(object)?;
                        objects.insert(key, fd);
                        fd
                    }
                };
                let object = sources.get(fd).expect("just added");
                fill_object(image, index, r, offset, size, object.as_fd(), &mut reader)?;
                Setup::Shared { fd, offset }
            }
            RegionKind::RawFile | RegionKind::Other => {
                return Err(ProcessRestoreError::unsupported(format!(
                    "{} {}cannot be recreated (a device or kernel mapping, or a region of an \
                     imported memory file)",
                    describe(),
                    r.name
                        .as_deref()
                        .map(|n| format!("{n} "))
                        .unwrap_or_default()
                )));
            }
        };
        let advice = if setup == Setup::Special {
            Vec::new()
        } else {
            ADVICE
                .iter()
                .filter(|(code, ..)| has(code))
                .map(|&(_, advice, fatal)| (advice, fatal))
                .collect()
        };
        if has("lo") {
            log::warn!(
                "{}: the mapping was locked (mlock); it is restored unlocked",
                describe()
            );
        }
        let anon_name = match (&setup, &r.name) {
            (Setup::Anonymous { .. }, Some(name)) => name
                .strip_prefix("[anon:")
                .and_then(|n| n.strip_suffix(']'))
                .map(|n| n.bytes().take(ANON_NAME_MAX).collect()),
            _ => None,
        };
        plans.push(RegionPlan {
            start: r.start,
            len: r.len,
            prot: r.prot,
            setup,
            advice,
            anon_name,
        });
    }
    Ok((plans, cow))
}

/// The memfd name for a shared object, from the name /proc showed
/// (`/memfd:NAME (deleted)`, `/dev/zero (deleted)`, `/SYSV0000002a (deleted)`).
fn object_name(path: &std::path::Path) -> Vec<u8> {
    let bytes = path.as_os_str().as_bytes();
    let bytes = bytes.strip_suffix(b" (deleted)").unwrap_or(bytes);
    let bytes = bytes.strip_prefix(b"/memfd:").unwrap_or(bytes);
    let bytes = bytes.strip_prefix(b"/").unwrap_or(bytes);
    bytes.to_vec()
}

/// Appends the copied-on-write pages of private file region `index` (its data and zero
/// extents: a zero extent there is a page the process had copied and zeroed).
fn read_cow_pages(
    image: &Image,
    index: usize,
    r: &RegionInfo,
    reader: &mut snapshot_format::RangeReader<'_>,
    cow: &mut CowPages,
) -> Result<(), ProcessRestoreError> {
    for e in image.region_extents(index) {
        if matches!(e.source, PageSource::File { .. }) {
            continue;
        }
        let len = usize::try_from(e.len).map_err(|_| {
            ProcessRestoreError::invalid(format!("region {:#x}: extent too large", r.start))
        })?;
        let offset = cow.bytes.len();
        cow.bytes.resize(offset + len, 0);
        reader
            .read(e.start, &mut cow.bytes[offset..])
            .map_err(|source| ProcessRestoreError::Image {
                addr: e.start,
                source,
            })?;
        cow.runs.push((e.start, offset, len));
    }
    Ok(())
}

/// Writes the data of shared region `index` into its object (`offset` is the region's
/// offset in it; nothing is written past `size`, the object's size).
fn fill_object(
    image: &Image,
    index: usize,
    r: &RegionInfo,
    offset: u64,
    size: u64,
    object: std::os::fd::BorrowedFd<'_>,
    reader: &mut snapshot_format::RangeReader<'_>,
) -> Result<(), ProcessRestoreError> {
    const BLOCK: usize = 1 << 20;
    let mut buf = Vec::new();
    for e in image.region_extents(index) {
        if !matches!(e.source, PageSource::Chunk { .. }) {
            continue;
        }
        let mut at = e.start;
        while at < e.end() {
            let in_object = offset + (at - r.start);
            if in_object >= size {
                break;
            }
            let n = (e.end() - at).min(BLOCK as u64).min(size - in_object) as usize;
            buf.resize(n, 0);
            reader
                .read(at, &mut buf)
                .map_err(|source| ProcessRestoreError::Image { addr: at, source })?;
            let mut done = 0;
            while done < n {
                done += rustix::io::pwrite(object, &buf[done..], in_object + done as u64).map_err(
                    |e| ProcessRestoreError::Io {
                        step: "cannot write shared memory into its memfd".to_owned(),
                        source: e.into(),
                    },
                )?;
            }
            at += n as u64;
        }
    }
    Ok(())
}

/// Empties the helper (see the module docs): drops its rseq registration, closes every
/// fd but `keep`, unmaps everything but the special mappings of `helper_maps`.
pub(crate) fn empty_helper(
    session: &mut RemoteSession<'_>,
    rseq: RseqConfiguration,
    keep: &[i32],
    helper_maps: &[MapsEntry],
) -> Result<(), ProcessRestoreError> {
    if rseq.is_registered() {
        session
            .syscall_ok(
                libc::SYS_rseq as u64,
                [
                    rseq.rseq_abi_pointer,
                    u64::from(rseq.rseq_abi_size),
                    RSEQ_FLAG_UNREGISTER,
                    u64::from(rseq.signature),
                    0,
                    0,
                ],
            )
            .map_err(ProcessRestoreError::remote(
                "cannot unregister the helper's rseq area",
            ))?;
    }
    let close = |session: &mut RemoteSession<'_>, first: u32, last: u32| {
        session
            .syscall_ok(
                libc::SYS_close_range as u64,
                [u64::from(first), u64::from(last), 0, 0, 0, 0],
            )
            .map_err(ProcessRestoreError::remote("cannot close the helper's fds"))
    };
    // `keep` is ascending: close the gap before each kept fd, then all after the last.
    let mut first = 0u32;
    for &fd in keep {
        let fd = u32::try_from(fd).unwrap_or(0);
        if fd > first {
            close(session, first, fd - 1)?;
        }
        first = fd + 1;
    }
    close(session, first, u32::MAX)?;

    let mut specials: Vec<&MapsEntry> = helper_maps
        .iter()
        .filter(|m| matches!(m.name.as_slice(), b"[vvar]" | b"[vvar_vclock]" | b"[vdso]"))
        .collect();
    specials.sort_by_key(|m| m.start);
    // Everything in the user address space ([vsyscall] lies above it).
    let top = helper_maps
        .iter()
        .filter(|m| m.end <= 1 << 47)
        .map(|m| m.end)
        .max()
        .unwrap_or(0);
    let unmap = |session: &mut RemoteSession<'_>, from: u64, to: u64| {
        session
            .syscall_ok(libc::SYS_munmap as u64, [from, to - from, 0, 0, 0, 0])
            .map(drop)
            .map_err(ProcessRestoreError::remote(format!(
                "cannot unmap the helper's memory at {from:#x}-{to:#x}"
            )))
    };
    let mut from = 0u64;
    for s in specials {
        if s.start > from {
            unmap(session, from, s.start)?;
        }
        from = s.end;
    }
    if top > from {
        unmap(session, from, top)?;
    }
    Ok(())
}

/// Moves the special mappings and maps every region (see the module docs).
pub(crate) fn map_regions(
    session: &mut RemoteSession<'_>,
    plans: &[RegionPlan],
    current: &Specials,
    target: &Specials,
) -> Result<(), ProcessRestoreError> {
    move_specials(session, current, target)?;
    for p in plans {
        let (mut flags, fd, offset) = match p.setup {
            Setup::Special => continue,
            Setup::Anonymous {
                growsdown,
                noreserve,
                ..
            } => {
                let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
                if growsdown {
                    flags |= libc::MAP_GROWSDOWN;
                }
                if noreserve {
                    flags |= libc::MAP_NORESERVE;
                }
                (flags, u64::MAX, 0)
            }
            Setup::FilePrivate { fd, offset } => (libc::MAP_PRIVATE, fd as u64, offset),
            Setup::Shared { fd, offset } => (libc::MAP_SHARED, fd as u64, offset),
        };
        flags |= libc::MAP_FIXED_NOREPLACE;
        let mut prot = 0;
        if p.prot.read {
            prot |= libc::PROT_READ;
        }
        if p.prot.write {
            prot |= libc::PROT_WRITE;
        }
        if p.prot.exec {
            prot |= libc::PROT_EXEC;
        }
        let at = session
            .syscall_ok(
                libc::SYS_mmap as u64,
                [p.start, p.len, prot as u64, flags as u64, fd, offset],
            )
            .map_err(ProcessRestoreError::remote(format!(
                "cannot map region {:#x}-{:#x}",
                p.start,
                p.start + p.len
            )))?;
        if at != p.start {
            return Err(ProcessRestoreError::unsupported(format!(
                "region {:#x} was mapped at {at:#x} (this kernel ignored MAP_FIXED_NOREPLACE)",
                p.start
            )));
        }
        for &(advice, fatal) in &p.advice {
            let result = session.syscall_ok(
                libc::SYS_madvise as u64,
                [p.start, p.len, advice as u64, 0, 0, 0],
            );
            match result {
                Ok(_) => {}
                Err(e) if !fatal => {
                    log::warn!("region {:#x}: madvise({advice}) not restored: {e}", p.start);
                }
                Err(e) => {
                    return Err(ProcessRestoreError::Remote {
                        step: format!("region {:#x}: cannot restore madvise({advice})", p.start),
                        source: e,
                    });
                }
            }
        }
    }
    Ok(())
}

/// Names the `[anon:NAME]` regions (best effort: a kernel without anonymous VMA names
/// only loses the names).
pub(crate) fn name_regions(
    session: &mut RemoteSession<'_>,
    plans: &[RegionPlan],
) -> Result<(), ProcessRestoreError> {
    let named: Vec<&RegionPlan> = plans.iter().filter(|p| p.anon_name.is_some()).collect();
    if named.is_empty() {
        return Ok(());
    }
    let mut scratch = RemoteScratch::map(session, ANON_NAME_MAX + 1).map_err(
        ProcessRestoreError::remote("cannot map scratch memory in the helper"),
    )?;
    for p in named {
        let mut name = p.anon_name.clone().unwrap_or_default();
        name.push(0);
        scratch
            .write(0, &name)
            .map_err(ProcessRestoreError::remote(
                "cannot write into scratch memory",
            ))?;
        let addr = scratch.addr();
        if let Err(e) = scratch.session().syscall_ok(
            libc::SYS_prctl as u64,
            [PR_SET_VMA, PR_SET_VMA_ANON_NAME, p.start, p.len, addr, 0],
        ) {
            log::warn!("region {:#x}: its name is not restored: {e}", p.start);
        }
    }
    scratch.unmap().map_err(ProcessRestoreError::remote(
        "cannot unmap scratch memory in the helper",
    ))
}

/// Writes the copied-on-write pages of private file mappings into the helper.
pub(crate) fn write_cow_pages(
    session: &RemoteSession<'_>,
    cow: &CowPages,
) -> Result<(), ProcessRestoreError> {
    for &(addr, offset, len) in &cow.runs {
        session
            .memory()
            .write(addr, &cow.bytes[offset..offset + len])
            .map_err(ProcessRestoreError::memory(format!(
                "cannot write the copied-on-write pages at {addr:#x}"
            )))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_object_names() {
        assert_eq!(object_name("/memfd:shm-a (deleted)".as_ref()), b"shm-a");
        assert_eq!(object_name("/dev/zero (deleted)".as_ref()), b"dev/zero");
        assert_eq!(
            object_name("/SYSV0000002a (deleted)".as_ref()),
            b"SYSV0000002a"
        );
    }
}
