//! Everything decided and checked before the helper is created: the image's process
//! state, the machine (kernel release, vdso), the files (opened, identity-checked, and
//! placed where the helper will inherit them), shared memory (created and filled),
//! the pids. A refusal here leaves nothing behind: no process exists yet.

use std::path::Path;

use rustix::fs::OFlags;
use snapshot_format::Image;
use snapshot_format::process::{
    ARCH_X86_64, Credentials, MmFields, ProcessState, ResourceLimit, SignalAction,
};

use super::error::ProcessRestoreError;
use super::fds::{FdInstall, check_fds, keeper_fd, plan_fds};
use super::files::{Check, Sources, open_checked};
use super::layout::{CowPages, RegionPlan, plan_regions};
use super::maps::read_maps;
use super::procstate::{MAX_AUXV_WORDS, check_credentials, check_rlimits};
use super::threads::{ThreadPlan, plan_threads};
use super::vdso::{Specials, check_vdso_code};
use super::{PidChoice, ProcessRestoreOptions};

/// `RLIMIT_NOFILE`.
const RLIMIT_NOFILE: u32 = 7;

/// Descriptors kept free above the sources' base for the sources themselves.
const SOURCE_ROOM: u64 = 4096;

/// What the restore will do, decided and checked (see the module docs).
#[derive(Debug)]
pub(crate) struct Plan {
    /// The captured pid (the leader's tid).
    pub(crate) leader: i32,
    /// Recreate the original pid and tids.
    pub(crate) set_tids: bool,
    pub(crate) threads: Vec<ThreadPlan>,
    pub(crate) regions: Vec<RegionPlan>,
    /// The captured special mappings.
    pub(crate) specials: Specials,
    pub(crate) cow: CowPages,
    pub(crate) sources: Sources,
    pub(crate) fds: Vec<FdInstall>,
    /// Where the process keeps its copy of the userfaultfd while it is served.
    pub(crate) keeper: Option<i32>,
    pub(crate) exe_fd: Option<i32>,
    pub(crate) cwd_fd: Option<i32>,
    pub(crate) mm: MmFields,
    pub(crate) auxv: Vec<u64>,
    pub(crate) umask: u32,
    pub(crate) personality: u32,
    pub(crate) signal_actions: Vec<SignalAction>,
    pub(crate) rlimits: Vec<ResourceLimit>,
    pub(crate) creds: Option<Credentials>,
    /// Leave the process stopped (asked for, or it was job-control stopped).
    pub(crate) stop: bool,
}

impl Plan {
    /// The process state of the image (see the module docs).
    pub(crate) fn build(
        image: &Image,
        opts: &mut ProcessRestoreOptions,
    ) -> Result<Self, ProcessRestoreError> {
        let meta = image.metadata();
        let state: &ProcessState = meta
            .process
            .as_ref()
            .ok_or(ProcessRestoreError::NotAProcess)?;
        if state.arch != ARCH_X86_64 {
            return Err(ProcessRestoreError::unsupported(format!(
                "the process was captured on {:?}, this is x86_64",
                state.arch
            )));
        }
        let page = rustix::param::page_size() as u64;
        if u64::from(image.page_size()) != page
            || meta.page_size.is_some_and(|p| u64::from(p) != page)
        {
            return Err(ProcessRestoreError::unsupported(format!(
                "the image's page size is {}, this system's {page}",
                image.page_size()
            )));
        }
        let running =
            String::from_utf8_lossy(rustix::system::uname().release().to_bytes()).into_owned();
        match &meta.kernel_release {
            Some(captured) if *captured == running => {}
            Some(captured) => {
                return Err(ProcessRestoreError::KernelMismatch {
                    captured: captured.clone(),
                    running,
                });
            }
            None => {
                return Err(ProcessRestoreError::invalid(
                    "the image does not say which kernel it was captured on",
                ));
            }
        }
        let leader = meta
            .pid
            .and_then(|p| i32::try_from(p).ok())
            .filter(|&p| p > 0)
            .ok_or_else(|| ProcessRestoreError::invalid("no process id recorded"))?;
        let threads = plan_threads(&state.threads, leader)?;

        // The special mappings: ours (the helper inherits them) against the captured.
        let ours = Specials::from_maps(
            &read_maps(0).map_err(ProcessRestoreError::io("cannot read /proc/self/maps"))?,
            "this process",
        )?;
        let specials = Specials::from_image(image)?;
        ours.check_same_layout(&specials)?;
        let vdso = ours.vdso();
        let mut code = vec![0u8; vdso.len as usize];
        tracee::ProcessMemory::new(std::process::id() as i32)
            .read(vdso.start, &mut code)
            .map_err(|e| ProcessRestoreError::Io {
                step: "cannot read this process's own vdso".to_owned(),
                source: std::io::Error::other(e),
            })?;
        check_vdso_code(image, &code)?;

        let set_tids = opts.pid == PidChoice::Original;
        if set_tids {
            check_pids_free(&threads)?;
        }
        check_fds(&state.fds)?;
        check_rlimits(&state.rlimits)?;
        check_credentials(state.creds.as_ref())?;
        if state.auxv.len() > MAX_AUXV_WORDS || !state.auxv.len().is_multiple_of(2) {
            return Err(ProcessRestoreError::invalid(format!(
                "an auxiliary vector of {} words",
                state.auxv.len()
            )));
        }

        // Sources live above every captured fd.
        let base = state.fds.last().map_or(3, |f| f.fd + 1).max(3);
        ensure_fd_room(base)?;
        let mut sources = Sources::new(base);
        let (regions, cow) = plan_regions(image, &state.vma_flags, &mut sources)?;
        let stdio = std::mem::take(&mut opts.stdio);
        let fds = plan_fds(&state.fds, stdio, opts.unrestorable_fds, &mut sources)?;
        let exe_fd = match &meta.exe {
            Some(path) if !path.as_os_str().as_encoded_bytes().ends_with(b" (deleted)") => {
                let check = state.exe_identity.map_or(Check::None, Check::Content);
                let exe = open_checked("the executable", path, OFlags::RDONLY, check)?;
                Some(sources.add(exe)?)
            }
            Some(path) => {
                log::warn!(
                    "the executable {} was deleted; /proc/PID/exe of the restored process will \
                     not name it",
                    path.display()
                );
                None
            }
            None => None,
        };
        let cwd_fd = match &state.cwd {
            Some(path) => {
                if path.as_os_str().as_encoded_bytes().ends_with(b" (deleted)") {
                    return Err(ProcessRestoreError::unsupported(format!(
                        "the working directory {} was deleted",
                        path.display()
                    )));
                }
                let dir = open_checked(
                    "the working directory",
                    path,
                    OFlags::PATH | OFlags::DIRECTORY,
                    Check::None,
                )?;
                Some(sources.add(dir)?)
            }
            None => None,
        };
        let nofile = state
            .rlimits
            .iter()
            .find(|l| l.resource == RLIMIT_NOFILE)
            .map_or(1024, |l| l.soft);
        let keeper = keeper_fd(&fds, nofile);
        Ok(Self {
            leader,
            set_tids,
            threads,
            regions,
            specials,
            cow,
            sources,
            fds,
            keeper,
            exe_fd,
            cwd_fd,
            mm: state.mm,
            auxv: state.auxv.clone(),
            umask: state.umask,
            personality: state.personality,
            signal_actions: state.signal_actions.clone(),
            rlimits: state.rlimits.clone(),
            creds: state.creds.clone(),
            stop: opts.stopped || state.job_stop_signal.is_some(),
        })
    }
}

/// Who holds pid `pid` now (its name), for messages.
pub(crate) fn pid_user(pid: i32) -> String {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim_end().to_owned())
        .unwrap_or_else(|_| "another process".to_owned());
    let tgid = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Tgid:").map(|v| v.trim().to_owned()))
        });
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false);
    match tgid {
        Some(t) if t != pid.to_string() => format!("`{comm}` (a thread of process {t})"),
        _ if zombie => format!("`{comm}`, which has exited but was not reaped by its parent yet"),
        _ => format!("`{comm}`"),
    }
}

/// Refuses when a captured tid is taken or above `pid_max`.
fn check_pids_free(threads: &[ThreadPlan]) -> Result<(), ProcessRestoreError> {
    let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok());
    for (i, t) in threads.iter().enumerate() {
        let role = if i == 0 {
            "process".to_owned()
        } else {
            format!("thread {}", t.tid)
        };
        if pid_max.is_some_and(|max| i64::from(t.tid) >= max) {
            return Err(ProcessRestoreError::unsupported(format!(
                "the captured {role} had pid {}, above this system's pid_max ({}); restore \
                 with --pid any",
                t.tid,
                pid_max.unwrap_or(0)
            )));
        }
        if Path::new(&format!("/proc/{}", t.tid)).exists() {
            return Err(ProcessRestoreError::PidInUse {
                pid: t.tid,
                role,
                user: pid_user(t.tid),
            });
        }
    }
    Ok(())
}

/// Makes sure this process may open descriptors from `base` on (raising its own soft
/// open-files limit up to the hard one if needed).
fn ensure_fd_room(base: i32) -> Result<(), ProcessRestoreError> {
    let need = u64::try_from(base).unwrap_or(0) + SOURCE_ROOM;
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let soft = limit.current.unwrap_or(u64::MAX);
    if soft >= need {
        return Ok(());
    }
    let hard = limit.maximum.unwrap_or(u64::MAX);
    if hard < need {
        return Err(ProcessRestoreError::unsupported(format!(
            "the process used fd {}, which needs an open-files limit of {need}; this process's \
             hard limit is {hard}",
            base - 1
        )));
    }
    rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(need),
            maximum: limit.maximum,
        },
    )
    .map_err(|e| ProcessRestoreError::Io {
        step: "cannot raise this process's open-files limit".to_owned(),
        source: e.into(),
    })
}
