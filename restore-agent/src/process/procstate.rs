//! Process-wide state set through remote calls in the leader: the `mm` fields and the
//! auxiliary vector (`PR_SET_MM_MAP`, which also sets `/proc/PID/exe`), the working
//! directory, the umask, the personality and the signal handlers; and the resource
//! limits, set from outside with `prlimit`.
//!
//! `PR_SET_MM_MAP` takes a `struct prctl_mm_map`:
//!
//! ```text
//!   0  start_code end_code start_data end_data start_brk brk start_stack
//!      arg_start arg_end env_start env_end        (11 × u64)
//!  88  auxv        u64    pointer to (type, value) pairs
//!  96  auxv_size   u32    bytes
//! 100  exe_fd      u32    a descriptor of the executable, or -1
//! ```
//!
//! The kernel checks every address against the address space and the pairs' order,
//! and the data segment against `RLIMIT_DATA`; the new executable may be set only once
//! no mapping of the old one remains (the helper's are gone by then).

use snapshot_format::process::{
    Credentials, MmFields, ResourceLimit as CapturedLimit, SignalAction,
};
use tracee::{
    KernelSigaction, RLIMIT_COUNT, RemoteScratch, RemoteSession, ResourceLimit, SeizedProcess,
};

use super::error::ProcessRestoreError;

/// `sizeof(struct prctl_mm_map)`.
const MM_MAP_LEN: usize = 104;

const _: () = assert!(size_of::<linux_raw_sys::prctl::prctl_mm_map>() == MM_MAP_LEN);

/// `PR_SET_MM`, `PR_SET_MM_MAP`.
const PR_SET_MM: u64 = 35;
const PR_SET_MM_MAP: u64 = 14;

/// The most auxiliary-vector words accepted from an image (the kernel keeps fewer:
/// `AT_VECTOR_SIZE`, and refuses more).
pub const MAX_AUXV_WORDS: usize = 1024;

/// `NGROUPS_MAX`: the most supplementary groups a process may have.
pub const MAX_GROUPS: usize = 65536;

/// The signals whose disposition cannot be changed.
const FIXED_SIGNALS: [i32; 2] = [libc::SIGKILL, libc::SIGSTOP];

/// Builds the `struct prctl_mm_map` with `auxv` at `auxv_addr`.
fn mm_map_bytes(
    mm: &MmFields,
    auxv_addr: u64,
    auxv_words: usize,
    exe_fd: Option<i32>,
) -> [u8; MM_MAP_LEN] {
    let mut out = [0u8; MM_MAP_LEN];
    let fields = [
        mm.start_code,
        mm.end_code,
        mm.start_data,
        mm.end_data,
        mm.start_brk,
        mm.brk,
        mm.start_stack,
        mm.arg_start,
        mm.arg_end,
        mm.env_start,
        mm.env_end,
        auxv_addr,
    ];
    for (chunk, value) in out.chunks_exact_mut(8).zip(fields) {
        chunk.copy_from_slice(&value.to_le_bytes());
    }
    out[96..100].copy_from_slice(&((auxv_words * 8) as u32).to_le_bytes());
    let exe = exe_fd.map_or(u32::MAX, |fd| fd as u32);
    out[100..104].copy_from_slice(&exe.to_le_bytes());
    out
}

/// Sets the `mm` fields, the auxiliary vector and (with `exe_fd`, a descriptor in the
/// helper) the executable.
pub(crate) fn set_mm(
    session: &mut RemoteSession<'_>,
    mm: &MmFields,
    auxv: &[u64],
    exe_fd: Option<i32>,
) -> Result<(), ProcessRestoreError> {
    let len = MM_MAP_LEN + auxv.len() * 8;
    let mut scratch = RemoteScratch::map(session, len).map_err(ProcessRestoreError::remote(
        "cannot map scratch memory in the helper",
    ))?;
    let base = scratch.addr();
    let auxv_addr = base + MM_MAP_LEN as u64;
    let mut bytes = mm_map_bytes(mm, auxv_addr, auxv.len(), exe_fd).to_vec();
    for word in auxv {
        bytes.extend_from_slice(&word.to_le_bytes());
    }
    scratch
        .write(0, &bytes)
        .map_err(ProcessRestoreError::remote(
            "cannot write into scratch memory",
        ))?;
    scratch
        .session()
        .syscall_ok(
            libc::SYS_prctl as u64,
            [PR_SET_MM, PR_SET_MM_MAP, base, MM_MAP_LEN as u64, 0, 0],
        )
        .map_err(ProcessRestoreError::remote(
            "cannot restore the mm fields, auxiliary vector and executable (prctl \
             PR_SET_MM_MAP; needs CAP_SYS_RESOURCE and a kernel with \
             CONFIG_CHECKPOINT_RESTORE)",
        ))?;
    scratch.unmap().map_err(ProcessRestoreError::remote(
        "cannot unmap scratch memory in the helper",
    ))
}

/// Sets the working directory (`fchdir` to a source), umask and personality.
pub(crate) fn set_basics(
    session: &mut RemoteSession<'_>,
    cwd_fd: Option<i32>,
    umask: u32,
    personality: u32,
) -> Result<(), ProcessRestoreError> {
    if let Some(fd) = cwd_fd {
        session
            .syscall_ok(libc::SYS_fchdir as u64, [fd as u64, 0, 0, 0, 0, 0])
            .map_err(ProcessRestoreError::remote(
                "cannot restore the working directory",
            ))?;
    }
    session
        .syscall_ok(
            libc::SYS_umask as u64,
            [u64::from(umask & 0o777), 0, 0, 0, 0, 0],
        )
        .map_err(ProcessRestoreError::remote("cannot restore the umask"))?;
    // personality(0xffffffff) only queries: never pass that.
    if personality != u32::MAX {
        session
            .syscall_ok(
                libc::SYS_personality as u64,
                [u64::from(personality), 0, 0, 0, 0, 0],
            )
            .map_err(ProcessRestoreError::remote(
                "cannot restore the personality",
            ))?;
    }
    Ok(())
}

/// The dispositions to set: every signal whose captured disposition differs from the
/// helper's (`current`, element `i` is signal `i + 1`). Signals missing from `captured`
/// are `SIG_DFL`.
pub(crate) fn sigactions_to_set(
    captured: &[SignalAction],
    current: &[KernelSigaction],
) -> Result<Vec<(i32, KernelSigaction)>, ProcessRestoreError> {
    if captured.len() > 64 {
        return Err(ProcessRestoreError::invalid(format!(
            "{} signal dispositions (x86_64 has 64 signals)",
            captured.len()
        )));
    }
    let mut out = Vec::new();
    for signal in 1..=64i32 {
        if FIXED_SIGNALS.contains(&signal) {
            continue;
        }
        let want = captured
            .get(signal as usize - 1)
            .map(|a| KernelSigaction {
                handler: a.handler,
                flags: a.flags,
                restorer: a.restorer,
                mask: a.mask,
            })
            .unwrap_or_default();
        if current.get(signal as usize - 1) != Some(&want) {
            out.push((signal, want));
        }
    }
    Ok(out)
}

/// Sets signal dispositions in the helper.
pub(crate) fn set_sigactions(
    session: &mut RemoteSession<'_>,
    actions: &[(i32, KernelSigaction)],
) -> Result<(), ProcessRestoreError> {
    session
        .set_sigactions(actions)
        .map_err(ProcessRestoreError::remote(
            "cannot restore the signal handlers",
        ))
}

/// Checks the captured credentials.
pub(crate) fn check_credentials(creds: Option<&Credentials>) -> Result<(), ProcessRestoreError> {
    if creds.is_some_and(|c| c.groups.len() > MAX_GROUPS) {
        return Err(ProcessRestoreError::invalid(format!(
            "more than {MAX_GROUPS} supplementary groups"
        )));
    }
    Ok(())
}

/// Gives the helper the captured user and group ids: supplementary groups, then group
/// ids, then user ids (after which it may no longer change the others), and makes it
/// dumpable again (a change of effective uid clears that flag; a process that can be
/// captured was dumpable). The last remote calls that need privileges come before.
pub(crate) fn set_credentials(
    session: &mut RemoteSession<'_>,
    creds: &Credentials,
) -> Result<(), ProcessRestoreError> {
    let [ruid, euid, suid, fsuid] = creds.uid.map(u64::from);
    let [rgid, egid, sgid, fsgid] = creds.gid.map(u64::from);
    let groups: Vec<u8> = creds.groups.iter().flat_map(|g| g.to_le_bytes()).collect();
    let mut scratch = RemoteScratch::map(session, groups.len().max(4)).map_err(
        ProcessRestoreError::remote("cannot map scratch memory in the helper"),
    )?;
    scratch
        .write(0, &groups)
        .map_err(ProcessRestoreError::remote(
            "cannot write into scratch memory",
        ))?;
    let addr = scratch.addr();
    let step = |what: &str| format!("cannot restore the process's {what}");
    scratch
        .session()
        .syscall_ok(
            libc::SYS_setgroups as u64,
            [creds.groups.len() as u64, addr, 0, 0, 0, 0],
        )
        .map_err(ProcessRestoreError::remote(step("supplementary groups")))?;
    scratch.unmap().map_err(ProcessRestoreError::remote(
        "cannot unmap scratch memory in the helper",
    ))?;
    session
        .syscall_ok(libc::SYS_setresgid as u64, [rgid, egid, sgid, 0, 0, 0])
        .map_err(ProcessRestoreError::remote(step("group ids")))?;
    // setfsgid/setfsuid return the previous id, never an error.
    if fsgid != egid {
        session
            .syscall(libc::SYS_setfsgid as u64, [fsgid, 0, 0, 0, 0, 0])
            .map_err(ProcessRestoreError::remote(step("filesystem group id")))?;
    }
    session
        .syscall_ok(libc::SYS_setresuid as u64, [ruid, euid, suid, 0, 0, 0])
        .map_err(ProcessRestoreError::remote(step("user ids")))?;
    if fsuid != euid {
        session
            .syscall(libc::SYS_setfsuid as u64, [fsuid, 0, 0, 0, 0, 0])
            .map_err(ProcessRestoreError::remote(step("filesystem user id")))?;
    }
    session
        .syscall_ok(
            libc::SYS_prctl as u64,
            [libc::PR_SET_DUMPABLE as u64, 1, 0, 0, 0, 0],
        )
        .map_err(ProcessRestoreError::remote(step("dumpable flag")))?;
    Ok(())
}

/// Checks the captured resource limits.
pub(crate) fn check_rlimits(limits: &[CapturedLimit]) -> Result<(), ProcessRestoreError> {
    if limits.len() > RLIMIT_COUNT as usize
        || limits
            .iter()
            .any(|l| l.resource >= RLIMIT_COUNT || l.soft > l.hard)
    {
        return Err(ProcessRestoreError::invalid("resource limits"));
    }
    Ok(())
}

/// Sets the resource limits (from outside, with `prlimit`, while the helper still has
/// the agent's credentials). A hard limit above the agent's own needs
/// `CAP_SYS_RESOURCE`: without it, the limit is kept at the agent's hard limit (with
/// a warning) rather than failing the restore.
pub(crate) fn set_rlimits(
    process: &mut SeizedProcess,
    limits: &[CapturedLimit],
) -> Result<(), ProcessRestoreError> {
    for l in limits {
        let want = ResourceLimit {
            soft: l.soft,
            hard: l.hard,
        };
        let error = |e: tracee::LimitError| ProcessRestoreError::Io {
            step: format!("cannot restore resource limit {}", l.resource),
            source: e.source,
        };
        match process.set_resource_limit(l.resource, want) {
            Ok(()) => {}
            Err(e) if e.source.raw_os_error() == Some(libc::EPERM) => {
                let now = process.resource_limit(l.resource).map_err(error)?;
                let clamped = ResourceLimit {
                    soft: want.soft.min(now.hard),
                    hard: want.hard.min(now.hard),
                };
                log::warn!(
                    "resource limit {}: the hard limit {} cannot be raised above {} without                      CAP_SYS_RESOURCE; restored as soft {} hard {}",
                    l.resource,
                    want.hard,
                    now.hard,
                    clamped.soft,
                    clamped.hard
                );
                process
                    .set_resource_limit(l.resource, clamped)
                    .map_err(error)?;
            }
            Err(e) => return Err(error(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mm_map_layout() {
        let mm = MmFields {
            start_code: 1,
            env_end: 11,
            ..MmFields::default()
        };
        let b = mm_map_bytes(&mm, 0x5000, 4, Some(7));
        assert_eq!(u64::from_le_bytes(b[0..8].try_into().unwrap()), 1);
        assert_eq!(u64::from_le_bytes(b[80..88].try_into().unwrap()), 11);
        assert_eq!(u64::from_le_bytes(b[88..96].try_into().unwrap()), 0x5000);
        assert_eq!(u32::from_le_bytes(b[96..100].try_into().unwrap()), 32);
        assert_eq!(u32::from_le_bytes(b[100..104].try_into().unwrap()), 7);
        let none = mm_map_bytes(&mm, 0, 0, None);
        assert_eq!(
            u32::from_le_bytes(none[100..104].try_into().unwrap()),
            u32::MAX
        );
        use linux_raw_sys::prctl::prctl_mm_map;
        use std::mem::offset_of;
        assert_eq!(offset_of!(prctl_mm_map, auxv), 88);
        assert_eq!(offset_of!(prctl_mm_map, auxv_size), 96);
        assert_eq!(offset_of!(prctl_mm_map, exe_fd), 100);
    }

    #[test]
    fn only_differing_dispositions_are_set() {
        let mut current = vec![KernelSigaction::default(); 64];
        current[libc::SIGPIPE as usize - 1].handler = 1; // ignored
        let mut captured = vec![SignalAction::default(); 64];
        captured[libc::SIGPIPE as usize - 1].handler = 1;
        captured[libc::SIGINT as usize - 1] = SignalAction {
            handler: 0x4000,
            flags: 0x0400_0000,
            restorer: 0x5000,
            mask: 0,
        };
        captured[libc::SIGKILL as usize - 1].handler = 0x1234; // never set
        let set = sigactions_to_set(&captured, &current).expect("valid");
        assert_eq!(set.len(), 1);
        assert_eq!(set[0].0, libc::SIGINT);
        assert_eq!(set[0].1.handler, 0x4000);
        // A shorter list means SIG_DFL for the rest: SIGPIPE must be reset.
        let set = sigactions_to_set(&captured[..2], &current).expect("valid");
        assert!(
            set.iter()
                .any(|(s, a)| *s == libc::SIGPIPE && a.handler == 0)
        );
        assert!(sigactions_to_set(&vec![SignalAction::default(); 65], &current).is_err());
    }
}
