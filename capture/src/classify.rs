//! What each mapping is, and how its pages are captured.
//!
//! | mapping (smaps) | region kind | pages captured |
//! | --- | --- | --- |
//! | `[vsyscall]` | — | not a region: fixed, the same in every process |
//! | `[vdso]` | `vdso` | every page (two or three), so restore can check its own vdso is the same |
//! | `[vvar]`, `[vvar_vclock]` | `vvar`, `vvar_vclock` | none (kernel data, `VM_PFNMAP`: unreadable; runs say zero) |
//! | `[heap]`, `[stack]`, anonymous private, `[anon:NAME]` | `heap`, `stack`, `anonymous` | present or swapped pages (pagemap); never-populated pages are not read |
//! | `---p` anonymous with nothing populated | `guard` | none |
//! | private file mapping | `file_private` | pages copied on write (pagemap: present or swapped, "file/shared" bit clear); every other page is a `file` run |
//! | private mapping of a memfd or deleted file | `anonymous` (named after it) | every page inside the file: nothing can be reopened at restore |
//! | private anonymous hugetlb (`/anon_hugepage (deleted)`) | `anonymous` (named so) | present pages, as anonymous memory |
//! | `MAP_SHARED` regular file | `file_shared` | none: all `file` runs, restore maps the file again |
//! | shared anonymous (`/dev/zero (deleted)`, `[anon_shmem:NAME]`), SysV (`/SYSV...`), deleted shared file | `shmem` | the object's data, read through `/proc/PID/map_files` (holes are zero runs) |
//! | `MAP_SHARED` memfd (`/memfd:NAME (deleted)`) | `memfd` | as `shmem` |
//! | `VM_IO` / `VM_PFNMAP` (device memory), unknown special mappings | per backing / `other` | none (unreadable) |
//!
//! A mapping without read permission (`PROT_NONE` with data in it, execute-only code)
//! is read through `/proc/PID/mem` (`process_vm_readv` refuses it).
//!
//! For `shmem` and `memfd` regions, `file` names the shared object rather than a file
//! to check: `path` is what /proc shows, `offset` the region's offset in the object, and
//! `identity` its `st_dev`/`st_ino` (equal for regions mapping the same object, so
//! restore creates one object for them) and `st_size` (the object's size).
//!
//! Mappings registered with userfaultfd (`VmFlags` `um`/`uw`, a process still being
//! restored lazily) are refused: their missing pages are not in the process yet.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use snapshot_format::{FileIdentity, FileMapping, Protection, RegionInfo, RegionKind};

use crate::smaps::Vma;

/// How a region's pages are captured (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backing {
    /// Not a region (`[vsyscall]`).
    Skip,
    /// Present or swapped pages are read; the rest are zero.
    Private,
    /// Pages copied on write are read; the rest come from the mapped file.
    FilePrivate,
    /// Every page below address `until` is read; the rest are zero.
    Whole { until: u64 },
    /// The shared object's data extents are read through `map_files`.
    SharedObject,
    /// Every page comes from the mapped file.
    FileShared,
    /// Nothing is read; the region's runs are zero.
    NotRead,
}

/// A mapping, classified.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) info: RegionInfo,
    pub(crate) backing: Backing,
    /// No read permission: read through `/proc/PID/mem`.
    pub(crate) forced: bool,
}

/// Why a mapping cannot be captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) reason: String,
}

/// The file behind a mapping, as `/proc/PID/map_files/START-END` shows it: the mapped
/// inode itself, even if its path now names another file or none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MappedFile {
    pub(crate) path: PathBuf,
    pub(crate) identity: FileIdentity,
    /// No name left in the file system (`st_nlink == 0`: deleted files, memfds, shared
    /// anonymous memory, SysV segments).
    pub(crate) deleted: bool,
}

/// The suffix the kernel appends to the path of an unlinked file.
const DELETED: &[u8] = b" (deleted)";

/// The identity of a file from its `stat`.
pub(crate) fn identity_of(meta: &std::fs::Metadata) -> FileIdentity {
    FileIdentity {
        dev: meta.dev(),
        inode: meta.ino(),
        size: meta.size(),
        mtime_sec: meta.mtime(),
        mtime_nsec: u32::try_from(meta.mtime_nsec()).unwrap_or(0),
    }
}

/// Looks up the file behind `vma` of process `pid`: through `map_files` (exact, needs
/// `CAP_SYS_ADMIN` or `CAP_CHECKPOINT_RESTORE`), else through the path in smaps if it
/// still names the mapped inode.
pub(crate) fn mapped_file(pid: i32, vma: &Vma) -> Option<MappedFile> {
    let link = format!("/proc/{pid}/map_files/{:x}-{:x}", vma.start, vma.end);
    if let (Ok(meta), Ok(target)) = (std::fs::metadata(&link), std::fs::read_link(&link)) {
        let deleted = meta.nlink() == 0;
        let mut bytes = target.into_os_string().into_vec();
        if deleted && bytes.ends_with(DELETED) {
            bytes.truncate(bytes.len() - DELETED.len());
        }
        return Some(MappedFile {
            path: PathBuf::from(OsString::from_vec(bytes)),
            identity: identity_of(&meta),
            deleted,
        });
    }
    if vma.name.ends_with(DELETED) || !vma.name.starts_with(b"/") {
        return None;
    }
    let path = Path::new(std::ffi::OsStr::from_bytes(&vma.name));
    let meta = std::fs::metadata(path).ok()?;
    (meta.ino() == vma.inode).then(|| MappedFile {
        path: path.to_path_buf(),
        identity: identity_of(&meta),
        deleted: false,
    })
}

/// Classifies `vma`; `file` is what [`mapped_file`] found for it (looked up only for
/// mappings with an inode).
pub(crate) fn classify(vma: &Vma, file: Option<&MappedFile>) -> Result<Plan, Refusal> {
    let refuse = |reason: String| Refusal {
        start: vma.start,
        end: vma.end,
        reason,
    };
    if vma.has_flag("um") || vma.has_flag("uw") || vma.has_flag("ui") {
        return Err(refuse(
            "registered with userfaultfd (a process still being restored lazily?): its \
             missing pages are not in the process; capture it once it is fully restored"
                .to_owned(),
        ));
    }
    let prot = Protection {
        read: vma.read,
        write: vma.write,
        exec: vma.exec,
    };
    let forced = !vma.read;
    let mut info = RegionInfo {
        start: vma.start,
        len: vma.len(),
        prot,
        shared: vma.shared,
        kind: RegionKind::Other,
        name: None,
        file: None,
    };
    let name = vma.name.as_slice();
    let special = name.starts_with(b"[") && name.ends_with(b"]");
    let unreadable = vma.has_flag("io") || vma.has_flag("pf");
    let plan = |info: RegionInfo, backing: Backing| Plan {
        info,
        backing,
        forced,
    };
    if special || name.is_empty() {
        if !name.is_empty() {
            info.name = Some(vma.name_lossy());
        }
        let (kind, backing) = match name {
            b"[vsyscall]" => return Ok(plan(info, Backing::Skip)),
            b"[vdso]" => (RegionKind::Vdso, Backing::Whole { until: vma.end }),
            b"[vvar]" => (RegionKind::Vvar, Backing::NotRead),
            b"[vvar_vclock]" => (RegionKind::VvarVclock, Backing::NotRead),
            b"[heap]" => (RegionKind::Heap, Backing::Private),
            b"[stack]" => (RegionKind::Stack, Backing::Private),
            // Thread stacks as kernels before 4.5 named them.
            _ if name.starts_with(b"[stack:") => (RegionKind::Anonymous, Backing::Private),
            _ if unreadable => (RegionKind::Other, Backing::NotRead),
            _ if name.starts_with(b"[anon_shmem:") || vma.shared => {
                (RegionKind::Shmem, Backing::SharedObject)
            }
            _ if name.is_empty() || name.starts_with(b"[anon:") => {
                if !vma.read && !vma.write && !vma.exec && !vma.may_hold_pages() {
                    (RegionKind::Guard, Backing::NotRead)
                } else {
                    (RegionKind::Anonymous, Backing::Private)
                }
            }
            _ => (RegionKind::Other, Backing::NotRead),
        };
        info.kind = kind;
        if backing == Backing::SharedObject {
            info.file = file.map(|f| shared_object(f, vma));
        }
        return Ok(plan(info, backing));
    }
    if !name.starts_with(b"/") {
        // `anon_inode:[io_uring]`, `/dev/...` handled below; other pseudo files are
        // kernel objects whose pages cannot be recreated from an image.
        info.name = Some(vma.name_lossy());
        return Ok(plan(info, Backing::NotRead));
    }
    let deleted = file.map_or(name.ends_with(DELETED), |f| f.deleted);
    let memfd = name.starts_with(b"/memfd:");
    let sysv = name.starts_with(b"/SYSV");
    let unknown_file = || {
        refuse(format!(
            "cannot identify the file {} behind the mapping (no access to \
             /proc/PID/map_files, and the path names another file now)",
            vma.name_lossy()
        ))
    };
    if unreadable {
        // Device memory: nothing to read; restore maps the device again.
        info.kind = if vma.shared {
            RegionKind::FileShared
        } else {
            RegionKind::FilePrivate
        };
        info.file = file.map(|f| file_mapping(f, vma));
        let backing = if info.file.is_some() {
            Backing::FileShared
        } else {
            Backing::NotRead
        };
        return Ok(plan(info, backing));
    }
    if vma.shared {
        if deleted || memfd || sysv {
            info.kind = if memfd {
                RegionKind::Memfd
            } else {
                RegionKind::Shmem
            };
            info.name = Some(vma.name_lossy());
            info.file = file.map(|f| shared_object(f, vma));
            return Ok(plan(info, Backing::SharedObject));
        }
        info.kind = RegionKind::FileShared;
        info.file = Some(file_mapping(file.ok_or_else(unknown_file)?, vma));
        return Ok(plan(info, Backing::FileShared));
    }
    if name.starts_with(b"/anon_hugepage") {
        // MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB: anonymous memory the kernel backs
        // with an unlinked hugetlbfs file. Read what is populated, like any anonymous
        // memory (reading the rest would allocate huge pages).
        info.kind = RegionKind::Anonymous;
        info.name = Some(vma.name_lossy());
        return Ok(plan(info, Backing::Private));
    }
    if deleted || memfd {
        // Nothing to map again at restore: capture every page inside the file.
        info.kind = RegionKind::Anonymous;
        info.name = Some(vma.name_lossy());
        let len = match file {
            Some(f) => {
                let in_file = f.identity.size.saturating_sub(vma.offset);
                in_file.div_ceil(4096).saturating_mul(4096).min(vma.len())
            }
            None => vma.len(),
        };
        return Ok(plan(
            info,
            Backing::Whole {
                until: vma.start + len,
            },
        ));
    }
    info.kind = RegionKind::FilePrivate;
    info.file = Some(file_mapping(file.ok_or_else(unknown_file)?, vma));
    Ok(plan(info, Backing::FilePrivate))
}

impl Plan {
    /// The plan for the part `[start, end)` of its mapping (page aligned, inside it):
    /// the region and its file offset move with the start.
    pub(crate) fn clip(&self, start: u64, end: u64) -> Plan {
        let mut plan = self.clone();
        let shift = start - self.info.start;
        plan.info.start = start;
        plan.info.len = end - start;
        if let Some(f) = &mut plan.info.file {
            f.offset += shift;
        }
        plan
    }
}

fn file_mapping(file: &MappedFile, vma: &Vma) -> FileMapping {
    FileMapping {
        path: file.path.clone(),
        offset: vma.offset,
        identity: file.identity,
    }
}

/// A shared object's description (see the module docs): the name /proc shows, the
/// offset in the object, and the object's identity.
fn shared_object(file: &MappedFile, vma: &Vma) -> FileMapping {
    FileMapping {
        path: PathBuf::from(std::ffi::OsStr::from_bytes(&vma.name)),
        offset: vma.offset,
        identity: file.identity,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vma(perms: &str, name: &str, inode: u64) -> Vma {
        let b = perms.as_bytes();
        Vma {
            start: 0x10000,
            end: 0x20000,
            read: b[0] == b'r',
            write: b[1] == b'w',
            exec: b[2] == b'x',
            shared: b[3] == b's',
            offset: 0x2000,
            dev: (0, 1),
            inode,
            name: name.as_bytes().to_vec(),
            rss: 0,
            swap: 0,
            vm_flags: Vec::new(),
        }
    }

    fn file(path: &str, deleted: bool) -> MappedFile {
        MappedFile {
            path: path.into(),
            identity: FileIdentity {
                dev: 1,
                inode: 7,
                size: 0x5000,
                mtime_sec: 1,
                mtime_nsec: 2,
            },
            deleted,
        }
    }

    fn kind_and_backing(v: &Vma, f: Option<&MappedFile>) -> (RegionKind, Backing) {
        let plan = classify(v, f).unwrap();
        (plan.info.kind, plan.backing)
    }

    #[test]
    fn special_and_anonymous_mappings() {
        use RegionKind as K;
        let cases = [
            ("rw-p", "", K::Anonymous, Backing::Private),
            ("rw-p", "[heap]", K::Heap, Backing::Private),
            ("rw-p", "[stack]", K::Stack, Backing::Private),
            ("rw-p", "[stack:1234]", K::Anonymous, Backing::Private),
            ("rw-p", "[anon:buf]", K::Anonymous, Backing::Private),
            ("---p", "", K::Guard, Backing::NotRead),
            ("r-xp", "[vdso]", K::Vdso, Backing::Whole { until: 0x20000 }),
            ("r--p", "[vvar]", K::Vvar, Backing::NotRead),
            ("r--p", "[vvar_vclock]", K::VvarVclock, Backing::NotRead),
            ("rw-s", "[anon_shmem:x]", K::Shmem, Backing::SharedObject),
            ("r--p", "[uprobes]", K::Other, Backing::NotRead),
            ("--xp", "[vsyscall]", K::Other, Backing::Skip),
        ];
        for (perms, name, kind, backing) in cases {
            assert_eq!(
                kind_and_backing(&vma(perms, name, 0), None),
                (kind, backing),
                "{perms} {name}"
            );
        }
        // PROT_NONE with data is anonymous memory read through /proc/PID/mem.
        let mut v = vma("---p", "", 0);
        v.rss = 4096;
        let plan = classify(&v, None).unwrap();
        assert_eq!(plan.info.kind, RegionKind::Anonymous);
        assert!(plan.forced);
    }

    #[test]
    fn file_mappings() {
        use RegionKind as K;
        let lib = file("/usr/lib/libc.so.6", false);
        let plan = classify(&vma("r--p", "/usr/lib/libc.so.6", 7), Some(&lib)).unwrap();
        assert_eq!(
            (plan.info.kind, plan.backing),
            (K::FilePrivate, Backing::FilePrivate)
        );
        let f = plan.info.file.unwrap();
        assert_eq!((f.offset, f.identity.inode), (0x2000, 7));
        assert_eq!(
            kind_and_backing(&vma("rw-s", "/data/shared.dat", 7), Some(&lib)),
            (K::FileShared, Backing::FileShared)
        );
        let memfd = file("/memfd:x", true);
        assert_eq!(
            kind_and_backing(&vma("rw-s", "/memfd:x (deleted)", 7), Some(&memfd)),
            (K::Memfd, Backing::SharedObject)
        );
        let zero = file("/dev/zero", true);
        assert_eq!(
            kind_and_backing(&vma("rw-s", "/dev/zero (deleted)", 7), Some(&zero)),
            (K::Shmem, Backing::SharedObject)
        );
        // A private mapping of a deleted file: every page inside the file (0x5000 bytes,
        // from offset 0x2000) is captured.
        let gone = file("/tmp/gone", true);
        assert_eq!(
            kind_and_backing(&vma("r--p", "/tmp/gone (deleted)", 7), Some(&gone)),
            (K::Anonymous, Backing::Whole { until: 0x13000 })
        );
        // Private anonymous hugetlb memory is anonymous memory.
        let mut huge = vma("rw-p", "/anon_hugepage (deleted)", 7);
        huge.vm_flags = vec!["ht".into()];
        assert_eq!(
            kind_and_backing(&huge, Some(&file("/anon_hugepage", true))),
            (K::Anonymous, Backing::Private)
        );
        // Without a way to identify the file: refused, not guessed.
        assert!(classify(&vma("r--p", "/usr/lib/x.so", 7), None).is_err());
        let mut uffd = vma("rw-p", "", 0);
        uffd.vm_flags = vec!["rd".into(), "um".into()];
        assert!(classify(&uffd, None).is_err());
    }
}
