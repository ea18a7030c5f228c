//! The kernel's special mappings: `[vvar]`, `[vvar_vclock]` (Linux 6.x) and `[vdso]`.
//!
//! They cannot be created by `mmap`; the helper inherits the agent's, which the restore
//! moves to the captured addresses with `mremap` (the kernel allows moving them, not
//! resizing them). That is only right if the kernel is the same: the same set of
//! mappings, the same sizes and the same distances between them (the vdso code
//! addresses the vvar pages relative to itself), and the same vdso code (a captured
//! thread may be stopped inside it, in `clock_gettime`). All three are checked before
//! anything is started.
//!
//! ```text
//!  agent / helper:   [vvar][vvar_vclock][vdso]                  at A
//!  captured:                        [vvar][vvar_vclock][vdso]   at C
//!  move (remote mremap, vdso last: it holds the syscall site):
//!    if the two spans overlap: first to a free span T, then to C
//! ```

use snapshot_format::{Image, RegionKind};
use tracee::RemoteSession;

use super::error::ProcessRestoreError;
use super::maps::MapsEntry;

/// Page size.
const PAGE: u64 = 4096;

/// The top of a 47-bit user address space (`TASK_SIZE` with 4-level page tables).
pub(crate) const TASK_SIZE_47: u64 = (1 << 47) - PAGE;

/// The lowest address a mapping may have by default (`vm.mmap_min_addr`).
const MIN_ADDR: u64 = 0x10000;

/// Which special mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum SpecialKind {
    Vvar,
    VvarVclock,
    Vdso,
}

impl SpecialKind {
    fn name(self) -> &'static str {
        match self {
            Self::Vvar => "[vvar]",
            Self::VvarVclock => "[vvar_vclock]",
            Self::Vdso => "[vdso]",
        }
    }
}

/// One special mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Special {
    pub(crate) kind: SpecialKind,
    pub(crate) start: u64,
    pub(crate) len: u64,
}

/// The special mappings of one address space, in address order; the vdso is always
/// among them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Specials {
    pub(crate) list: Vec<Special>,
}

impl Specials {
    fn new(mut list: Vec<Special>, whose: &str) -> Result<Self, ProcessRestoreError> {
        list.sort_by_key(|s| s.start);
        for kind in [
            SpecialKind::Vvar,
            SpecialKind::VvarVclock,
            SpecialKind::Vdso,
        ] {
            if list.iter().filter(|s| s.kind == kind).count() > 1 {
                return Err(ProcessRestoreError::VdsoMismatch {
                    reason: format!("{whose} has more than one {}", kind.name()),
                });
            }
        }
        if !list.iter().any(|s| s.kind == SpecialKind::Vdso) {
            return Err(ProcessRestoreError::VdsoMismatch {
                reason: format!("{whose} has no [vdso]"),
            });
        }
        Ok(Self { list })
    }

    /// The special mappings listed in a maps file.
    pub(crate) fn from_maps(maps: &[MapsEntry], whose: &str) -> Result<Self, ProcessRestoreError> {
        let list = maps
            .iter()
            .filter_map(|m| {
                let kind = match m.name.as_slice() {
                    b"[vvar]" => SpecialKind::Vvar,
                    b"[vvar_vclock]" => SpecialKind::VvarVclock,
                    b"[vdso]" => SpecialKind::Vdso,
                    _ => return None,
                };
                Some(Special {
                    kind,
                    start: m.start,
                    len: m.end - m.start,
                })
            })
            .collect();
        Self::new(list, whose)
    }

    /// The captured special mappings.
    pub(crate) fn from_image(image: &Image) -> Result<Self, ProcessRestoreError> {
        let list = image
            .regions()
            .iter()
            .filter_map(|r| {
                let kind = match r.kind {
                    RegionKind::Vvar => SpecialKind::Vvar,
                    RegionKind::VvarVclock => SpecialKind::VvarVclock,
                    RegionKind::Vdso => SpecialKind::Vdso,
                    _ => return None,
                };
                Some(Special {
                    kind,
                    start: r.start,
                    len: r.len,
                })
            })
            .collect();
        Self::new(list, "the image")
    }

    /// The vdso.
    pub(crate) fn vdso(&self) -> Special {
        *self
            .list
            .iter()
            .find(|s| s.kind == SpecialKind::Vdso)
            .expect("constructors require a vdso")
    }

    /// First address and end of the whole group.
    fn span(&self) -> (u64, u64) {
        let lo = self.list.first().map_or(0, |s| s.start);
        let hi = self.list.iter().map(|s| s.start + s.len).max().unwrap_or(0);
        (lo, hi)
    }

    /// Checks that `captured` has the same mappings as these, of the same sizes, at
    /// the same distances from the vdso.
    pub(crate) fn check_same_layout(&self, captured: &Specials) -> Result<(), ProcessRestoreError> {
        let describe = |s: &Specials| {
            let vdso = s.vdso().start;
            s.list
                .iter()
                .map(|m| {
                    format!(
                        "{} {:+#x} ({} KiB)",
                        m.kind.name(),
                        m.start as i128 - vdso as i128,
                        m.len / 1024
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (ours, theirs) = (describe(self), describe(captured));
        if ours != theirs {
            return Err(ProcessRestoreError::VdsoMismatch {
                reason: format!("captured: {theirs}; this kernel: {ours}"),
            });
        }
        Ok(())
    }
}

/// Checks that the image's `[vdso]` bytes are this kernel's vdso (`ours`, read from
/// this process's own vdso).
pub(crate) fn check_vdso_code(image: &Image, ours: &[u8]) -> Result<(), ProcessRestoreError> {
    let Some(region) = image.regions().iter().find(|r| r.kind == RegionKind::Vdso) else {
        return Err(ProcessRestoreError::VdsoMismatch {
            reason: "the image has no [vdso]".to_owned(),
        });
    };
    let mut captured = vec![0u8; ours.len()];
    image
        .range_reader()
        .map_err(ProcessRestoreError::io("cannot start reading the image"))?
        .read(region.start, &mut captured)
        .map_err(|source| ProcessRestoreError::Image {
            addr: region.start,
            source,
        })?;
    if captured != ours {
        let at = captured
            .iter()
            .zip(ours)
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        return Err(ProcessRestoreError::VdsoMismatch {
            reason: format!("the vdso code differs (first at byte {at:#x})"),
        });
    }
    Ok(())
}

/// Moves the helper's special mappings (`current`) to the captured addresses
/// (`target`, same layout), keeping the syscall site (which lies in the vdso) valid.
/// The helper has no other mappings when this runs.
pub(crate) fn move_specials(
    session: &mut RemoteSession<'_>,
    current: &Specials,
    target: &Specials,
) -> Result<(), ProcessRestoreError> {
    let (cur_lo, cur_hi) = current.span();
    let (tgt_lo, tgt_hi) = target.span();
    if cur_lo == tgt_lo {
        return Ok(());
    }
    let len = cur_hi - cur_lo;
    let overlap = cur_lo < tgt_hi && tgt_lo < cur_hi;
    let mut at = current.clone();
    if overlap {
        // A span that overlaps neither: above both, else below both.
        let above = cur_hi.max(tgt_hi) + PAGE;
        let temp = if above + len <= TASK_SIZE_47 {
            above
        } else {
            let below = cur_lo.min(tgt_lo).saturating_sub(len + PAGE);
            if below < MIN_ADDR {
                return Err(ProcessRestoreError::unsupported(
                    "no room to move the vdso out of the way",
                ));
            }
            below
        };
        at = shift(session, &at, temp)?;
    }
    shift(session, &at, tgt_lo)?;
    Ok(())
}

/// Moves the group so that it starts at `to`; returns its new description.
fn shift(
    session: &mut RemoteSession<'_>,
    current: &Specials,
    to: u64,
) -> Result<Specials, ProcessRestoreError> {
    let (lo, _) = current.span();
    let old_vdso = current.vdso().start;
    let mut moved = current.clone();
    // The vdso last: the remote calls execute the syscall instruction inside it.
    let mut order: Vec<usize> = (0..current.list.len()).collect();
    order.sort_by_key(|&i| current.list[i].kind == SpecialKind::Vdso);
    for i in order {
        let s = current.list[i];
        let new = to + (s.start - lo);
        session
            .syscall_ok(
                libc::SYS_mremap as u64,
                [
                    s.start,
                    s.len,
                    s.len,
                    (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64,
                    new,
                    0,
                ],
            )
            .map_err(ProcessRestoreError::remote(format!(
                "cannot move the helper's {} from {:#x} to {new:#x}",
                s.kind.name(),
                s.start
            )))?;
        moved.list[i].start = new;
    }
    let new_vdso = moved.vdso().start;
    let site = session.syscall_site() - old_vdso + new_vdso;
    session
        .set_syscall_site(site)
        .map_err(ProcessRestoreError::remote(
            "cannot use the moved vdso for remote calls",
        ))?;
    Ok(moved)
}
