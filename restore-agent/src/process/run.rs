//! The restore itself, step by step, on the agent's restore thread (the helper's
//! parent and tracer). See the `process` module docs for the picture.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use snapshot_format::Image;
use tracee::{KernelSigaction, RemoteSession};

use super::error::ProcessRestoreError;
use super::helper::Helper;
use super::layout::{empty_helper, map_regions, name_regions, write_cow_pages};
use super::maps::read_maps;
use super::plan::Plan;
use super::procstate::{
    set_basics, set_credentials, set_mm, set_rlimits, set_sigactions, sigactions_to_set,
};
use super::threads::{create_threads, set_registers, set_thread_state};
use super::vdso::Specials;
use super::{Timings, fds, sys};
use crate::mapping::Mapping;
use crate::server::{FaultServer, ServerOptions};
use crate::uffd::{self, Features, Range, RegisterMode, Userfaultfd};

/// The features the restored process's userfaultfd must have: forks, `mremap`,
/// `madvise(DONTNEED)` and `munmap` are reported, corrupt chunks poisoned.
pub(crate) const REQUIRED_FEATURES: Features = Features::EVENT_FORK
    .union(Features::EVENT_REMAP)
    .union(Features::EVENT_REMOVE)
    .union(Features::EVENT_UNMAP)
    .union(Features::POISON);

/// How long population may stop progressing before an eager restore gives up.
pub(crate) const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// What the restore thread hands back once the process runs.
#[derive(Debug)]
pub(crate) struct Started {
    pub(crate) pid: i32,
    pub(crate) tids: Vec<i32>,
    pub(crate) pidfd: OwnedFd,
    pub(crate) server: FaultServer,
    /// The fd of the process's own copy of its userfaultfd (lazy restores).
    pub(crate) keeper: Option<i32>,
    /// The process will die with the restore thread (`PR_SET_PDEATHSIG`) until
    /// released.
    pub(crate) armed: bool,
    pub(crate) stopped: bool,
    pub(crate) regions: usize,
    pub(crate) served_regions: usize,
    pub(crate) timings: Timings,
}

/// Mode of a restore.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mode {
    pub(crate) eager: bool,
    pub(crate) timeout: Duration,
}

/// The disposition of every signal in a fresh helper: `clone3(CLONE_CLEAR_SIGHAND)`
/// resets handled signals to `SIG_DFL` with no flags, mask or restorer. Signals the
/// agent ignores stay ignored; the kernel may or may not clear their other fields, so
/// they get a value that never matches a captured one (they are always set).
fn helper_dispositions() -> Result<Vec<KernelSigaction>, ProcessRestoreError> {
    let ours = sys::signal_dispositions().map_err(ProcessRestoreError::io(
        "cannot read this process's signal dispositions",
    ))?;
    Ok(ours
        .into_iter()
        .map(|a| {
            if a.handler == libc::SIG_IGN as u64 {
                KernelSigaction {
                    handler: libc::SIG_IGN as u64,
                    flags: u64::MAX,
                    restorer: u64::MAX,
                    mask: u64::MAX,
                }
            } else {
                KernelSigaction::default()
            }
        })
        .collect())
}

/// One remote call that must succeed.
fn call(
    session: &mut RemoteSession<'_>,
    nr: libc::c_long,
    args: [u64; 6],
    step: &str,
) -> Result<u64, ProcessRestoreError> {
    session
        .syscall_ok(nr as u64, args)
        .map_err(ProcessRestoreError::remote(step))
}

/// Restores the process described by `plan` (see the module docs of `process`).
pub(crate) fn restore(
    image: Arc<Image>,
    mut plan: Plan,
    server_opts: ServerOptions,
    mode: Mode,
    t0: Instant,
    mut timings: Timings,
) -> Result<Started, ProcessRestoreError> {
    let helper_state = helper_dispositions()?;
    let sigactions = sigactions_to_set(&plan.signal_actions, &helper_state)?;

    let mut helper = Helper::spawn(plan.set_tids.then_some(plan.leader), mode.timeout)?;
    let pid = helper.pid;
    let process = helper.seize()?;
    timings.helper = t0.elapsed();

    // Last checks on the helper itself, before anything is changed.
    let xstate_len = process
        .xstate(pid)
        .map_err(ProcessRestoreError::thread(
            "cannot read the helper's XSAVE area",
        ))?
        .bytes
        .len();
    if let Some(t) = plan
        .threads
        .iter()
        .find(|t| t.xstate.bytes.len() != xstate_len)
    {
        return Err(ProcessRestoreError::unsupported(format!(
            "thread {} has an XSAVE area of {} bytes; this machine's is {xstate_len} bytes (a \
             CPU with other vector extensions)",
            t.tid,
            t.xstate.bytes.len()
        )));
    }
    let rseq = process
        .rseq_configuration(pid)
        .map_err(ProcessRestoreError::thread(
            "cannot read the helper's rseq registration",
        ))?;
    let maps = read_maps(pid).map_err(ProcessRestoreError::io("cannot read the helper's maps"))?;
    let current = Specials::from_maps(&maps, "the helper")?;
    let site = process.syscall_site().map_err(ProcessRestoreError::remote(
        "cannot find a syscall instruction in the helper",
    ))?;
    let vdso = current.vdso();
    if !(vdso.start..vdso.start + vdso.len).contains(&site) {
        return Err(ProcessRestoreError::unsupported(
            "the helper's vdso has no syscall instruction",
        ));
    }

    // The address space, fds and process-wide state, from the leader.
    let lazy_keeper = if mode.eager { None } else { plan.keeper };
    let target_uffd = {
        let mut session = process
            .remote(pid)
            .map_err(ProcessRestoreError::remote("cannot drive the helper"))?;
        empty_helper(&mut session, rseq, &plan.sources.numbers(), &maps)?;
        map_regions(&mut session, &plan.regions, &current, &plan.specials)?;
        write_cow_pages(&session, &plan.cow)?;
        fds::install(&mut session, &plan.fds)?;
        set_basics(&mut session, plan.cwd_fd, plan.umask, plan.personality)?;
        set_mm(&mut session, &plan.mm, &plan.auxv, plan.exe_fd)?;
        name_regions(&mut session, &plan.regions)?;
        call(
            &mut session,
            libc::SYS_close_range,
            [plan.sources.base() as u64, u64::from(u32::MAX), 0, 0, 0, 0],
            "cannot close the helper's sources",
        )?;
        let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
        let created = call(
            &mut session,
            libc::SYS_userfaultfd,
            [flags, 0, 0, 0, 0, 0],
            "cannot create a userfaultfd in the helper",
        )? as i32;
        let target = match lazy_keeper {
            Some(keeper) => {
                call(
                    &mut session,
                    libc::SYS_dup3,
                    [
                        created as u64,
                        keeper as u64,
                        libc::O_CLOEXEC as u64,
                        0,
                        0,
                        0,
                    ],
                    "cannot move the userfaultfd",
                )?;
                call(
                    &mut session,
                    libc::SYS_close,
                    [created as u64, 0, 0, 0, 0, 0],
                    "cannot move the userfaultfd",
                )?;
                keeper
            }
            None => created,
        };
        session
            .finish()
            .map_err(ProcessRestoreError::remote("cannot end the remote session"))?;
        target
    };
    drop(std::mem::replace(
        &mut plan.sources,
        super::files::Sources::new(0),
    ));
    timings.layout = t0.elapsed();

    // The userfaultfd, from here, and the fault server.
    let fd = process
        .take_fd(target_uffd)
        .map_err(|e| ProcessRestoreError::Io {
            step: "cannot take the helper's userfaultfd (pidfd_getfd)".to_owned(),
            source: std::io::Error::other(e),
        })?;
    let uffd =
        Userfaultfd::adopt(fd, REQUIRED_FEATURES).map_err(ProcessRestoreError::Userfaultfd)?;
    let mut mappings = Vec::new();
    for r in plan.regions.iter().filter(|r| r.served()) {
        uffd::register(
            uffd.as_fd(),
            Range::new(r.start, r.len),
            RegisterMode::MISSING,
        )
        .map_err(|source| ProcessRestoreError::Io {
            step: format!(
                "cannot register region {:#x}-{:#x} with userfaultfd",
                r.start,
                r.start + r.len
            ),
            source,
        })?;
        mappings.push(Mapping::new(r.start, r.start, r.len));
    }
    let server = FaultServer::start(image, server_opts)?;
    // A lazy restore prefetches once the process runs (see
    // `add_space_without_prefetch`); an eager one at once.
    let space = if mappings.is_empty() {
        drop(uffd);
        None
    } else if mode.eager {
        Some(server.add_space(uffd, &mappings)?)
    } else {
        Some(server.add_space_without_prefetch(uffd, &mappings)?)
    };

    if mode.eager
        && let Some(space) = space
    {
        // Everything in before the process runs (and before the rseq registrations
        // below write into its memory: no fault at all).
        populate(&server)?;
        server.remove_space(space, true);
        timings.populated = Some(t0.elapsed());
    }

    // Threads, and what each thread sets itself (rseq writes into the process's
    // memory: a lazy restore serves it already).
    let tids = create_threads(process, pid, &plan.threads, plan.set_tids)?;
    for (tid, t) in tids.iter().zip(&plan.threads) {
        set_thread_state(process, *tid, t, true)?;
    }
    {
        let mut session = process
            .remote(pid)
            .map_err(ProcessRestoreError::remote("cannot drive the helper"))?;
        set_sigactions(&mut session, &sigactions)?;
        session
            .finish()
            .map_err(ProcessRestoreError::remote("cannot end the remote session"))?;
    }

    let armed = if mode.eager {
        // It needs the agent no more.
        let mut session = process
            .remote(pid)
            .map_err(ProcessRestoreError::remote("cannot drive the helper"))?;
        call(
            &mut session,
            libc::SYS_close,
            [target_uffd as u64, 0, 0, 0, 0, 0],
            "cannot close the helper's userfaultfd",
        )?;
        call(
            &mut session,
            libc::SYS_prctl,
            [libc::PR_SET_PDEATHSIG as u64, 0, 0, 0, 0, 0],
            "cannot clear the parent-death signal",
        )?;
        session
            .finish()
            .map_err(ProcessRestoreError::remote("cannot end the remote session"))?;
        timings.populated.get_or_insert(t0.elapsed());
        false
    } else {
        true
    };

    // Limits (from outside, while the helper has our credentials), then its own
    // credentials, last of the remote calls: from here on it may have no privileges.
    set_rlimits(process, &plan.rlimits)?;
    if let Some(creds) = &plan.creds {
        let mut session = process
            .remote(pid)
            .map_err(ProcessRestoreError::remote("cannot drive the helper"))?;
        set_credentials(&mut session, creds)?;
        session
            .finish()
            .map_err(ProcessRestoreError::remote("cannot end the remote session"))?;
    }

    // Registers; then let it go.
    for (tid, t) in tids.iter().zip(&plan.threads) {
        set_registers(process, *tid, t)?;
    }
    if plan.stop {
        rustix::process::pidfd_send_signal(process.pidfd(), rustix::process::Signal::STOP)
            .map_err(|e| ProcessRestoreError::Io {
                step: "cannot stop the restored process".to_owned(),
                source: e.into(),
            })?;
    }
    let pidfd = helper.detach()?;
    timings.running = t0.elapsed();
    if !mode.eager
        && let Some(space) = space
    {
        server.start_prefetch(space);
    }
    Ok(Started {
        pid,
        tids,
        pidfd,
        server,
        // Without a free fd for it, the userfaultfd stayed where it was created.
        keeper: armed.then_some(target_uffd),
        armed,
        stopped: plan.stop,
        regions: plan.regions.len(),
        served_regions: mappings.len(),
        timings,
    })
}

/// Starts population and waits until it is complete, giving up when it stops
/// progressing for [`STALL_TIMEOUT`].
pub(crate) fn populate(server: &FaultServer) -> Result<(), ProcessRestoreError> {
    server.populate();
    let mut last = u64::MAX;
    let mut progress = Instant::now();
    while !server.wait_populated(Duration::from_millis(50)) {
        let remaining = server.stats().population.remaining_pages;
        if remaining < last {
            last = remaining;
            progress = Instant::now();
        } else if progress.elapsed() > STALL_TIMEOUT {
            return Err(ProcessRestoreError::Stalled { remaining });
        }
    }
    Ok(())
}
