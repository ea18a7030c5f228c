//! Whole-process restore: [`restore_process`] brings a process captured with
//! `lazarus capture --pid` back to life, with its original pid, at once, while its
//! memory streams in on demand.
//!
//! # Method: a helper process driven by remote system calls
//!
//! No restorer code is injected. The agent forks a *helper* with the original pid
//! (`clone3` with `set_tid`), which parks itself; the agent seizes it with ptrace and,
//! through remote system calls executed by the helper's own (moved) vdso, turns it
//! into the captured process:
//!
//! ```text
//!  agent (restore thread)                        helper (pid = captured pid)
//!  ─ plan: check image, kernel, vdso, files,
//!    pids; open files; fill shared memory ─┐
//!  clone3(set_tid, CLEAR_SIGHAND) ─────────┼──► PR_SET_PDEATHSIG(SIGKILL); pause()
//!  seize (EXITKILL, TRACECLONE)            │
//!  remote: rseq unregister, close fds,     │    [vvar][vvar_vclock][vdso] only
//!          munmap all, mremap vdso & co ───┤
//!          mmap every region (FIXED_NOREPLACE) ► captured layout
//!  /proc/PID/mem: copied-on-write file pages
//!  remote: dup3 fds, fchdir, umask,        │
//!          personality, PR_SET_MM_MAP      │
//!          userfaultfd() ─► pidfd_getfd ───┼──► (kept at a high fd, close-on-exec)
//!  UFFDIO_API + REGISTER MISSING; start FaultServer: faults served from here on
//!  remote: clone3(set_tid) per thread ─────┼──► threads, stopped before any code
//!  remote, per thread: set_tid_address, robust list, sigaltstack, name, rseq
//!  remote: rt_sigaction; prlimit from outside
//!  per thread: registers (restart rules), NT_X86_XSTATE, signal mask
//!  detach ─────────────────────────────────┴──► the process runs
//! ```
//!
//! Every check that can be made beforehand is made before the helper exists (module
//! `plan`): a refused restore leaves nothing behind. After that, any failure kills and
//! reaps the half-built helper.
//!
//! # The agent must not die first
//!
//! A userfaultfd whose last descriptor is closed unregisters its ranges, and the pages
//! never served then read as zeros. The restored process must never see that:
//!
//! - The helper sets `PR_SET_PDEATHSIG(SIGKILL)` before anything else: when the
//!   agent's restore thread (its parent thread) dies, so does the process.
//! - The process itself keeps a copy of its userfaultfd, at a high fd (1023, or below
//!   its open-files limit; close-on-exec), so the agent's death never releases it:
//!   threads waiting on unserved pages stay blocked until the parent-death signal
//!   kills them; none can run on with zeros in the window between the agent's files
//!   being closed and its death being noticed.
//! - The restore thread lives as long as the [`RestoredProcess`].
//!
//! # Ending
//!
//! [`RestoredProcess::finish`], once every page is in: the process's leader is seized
//! once more, briefly, to close its copy of the userfaultfd and clear the
//! parent-death signal; then every range is unregistered (the restored process and
//! children it forked meanwhile) and the server stops. The process continues alone.
//! With `eager`, all of this happens before it first runs.
//!
//! The captured process's own parent-death signal is not restored: it referred to its
//! original parent, and the restored process's parent is the agent, which exits when
//! the restore is complete.

mod detach;
mod error;
mod fds;
mod files;
mod handle;
mod helper;
mod layout;
mod maps;
mod plan;
mod procstate;
mod run;
mod sys;
mod threads;
mod vdso;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use snapshot_format::Image;

pub use detach::{Background, quiet_stdio, run_in_background};
pub use error::ProcessRestoreError;
pub use fds::{KEEPER_FD_MAX, MAX_FD_NUMBER, MAX_FDS, Stdio, UnrestorableFds, open_stdio_file};
pub use handle::{ProcessExit, RestoreSummary, RestoredProcess};
pub use layout::MAX_SHARED_OBJECT_LEN;
pub use maps::MAX_MAPS_LINES;
pub use procstate::{MAX_AUXV_WORDS, MAX_GROUPS};

use crate::restore::{WorkingSetOptions, load_working_set};
use crate::server::ServerOptions;

/// Which pid the restored process gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PidChoice {
    /// The captured pid and tids (refused if one is taken).
    #[default]
    Original,
    /// Whatever the kernel gives. glibc keeps each thread's old tid in its thread
    /// data, so calls that use it (`raise`, `pthread_kill`, robust mutexes) misbehave.
    Any,
}

/// Options of [`restore_process`].
#[derive(Debug)]
pub struct ProcessRestoreOptions {
    /// Pid of the restored process.
    pub pid: PidChoice,
    /// Its stdin, stdout and stderr.
    pub stdio: [Stdio; 3],
    /// What becomes of other fds that cannot be reopened.
    pub unrestorable_fds: UnrestorableFds,
    /// Fill all memory before the process runs (then the agent is not needed once it
    /// runs).
    pub eager: bool,
    /// Leave the process stopped (it runs after `SIGCONT`). A process captured in a
    /// job-control stop is always left stopped.
    pub stopped: bool,
    /// The fault server.
    pub server: ServerOptions,
    /// Working set: loaded to prefetch first, saved by
    /// [`RestoredProcess::finish`].
    pub working_set: WorkingSetOptions,
    /// Bound on each wait for a thread of the helper (a stop, a remote call).
    pub timeout: Duration,
}

impl Default for ProcessRestoreOptions {
    fn default() -> Self {
        Self {
            pid: PidChoice::Original,
            stdio: Default::default(),
            unrestorable_fds: UnrestorableFds::Refuse,
            eager: false,
            stopped: false,
            server: ServerOptions::default(),
            working_set: WorkingSetOptions::default(),
            timeout: tracee::DEFAULT_TIMEOUT,
        }
    }
}

/// When each step of a restore was done, from the call of [`restore_process`].
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Timings {
    /// Everything checked, files opened, shared memory filled.
    #[serde(serialize_with = "ms")]
    pub planned: Duration,
    /// The helper exists and is seized.
    #[serde(serialize_with = "ms")]
    pub helper: Duration,
    /// Its memory layout, fds and process state are built.
    #[serde(serialize_with = "ms")]
    pub layout: Duration,
    /// The process runs (or, if left stopped, is ready to).
    #[serde(serialize_with = "ms")]
    pub running: Duration,
    /// Every page is in (eager: before it runs).
    #[serde(serialize_with = "opt_ms")]
    pub populated: Option<Duration>,
}

fn ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1e3)
}

fn opt_ms<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&(d.as_secs_f64() * 1e3)),
        None => s.serialize_none(),
    }
}

/// Restores the process captured in `image` (see the [module docs](self)); returns once
/// it runs (or is ready to run, when left stopped), its memory served by the agent.
///
/// The restore thread this starts is the process's parent; it ends with the returned
/// [`RestoredProcess`].
pub fn restore_process(
    image: Arc<Image>,
    mut opts: ProcessRestoreOptions,
) -> Result<RestoredProcess, ProcessRestoreError> {
    let t0 = Instant::now();
    let (ws_path, ws_loaded, _) = load_working_set(&opts.working_set, &image);
    let mut server = opts.server.clone();
    if let Some(ws) = &ws_loaded {
        server.prefetch_first = ws.chunks().to_vec();
    }
    server.record_working_set |= opts.working_set.save;
    let plan = plan::Plan::build(&image, &mut opts)?;
    let timings = Timings {
        planned: t0.elapsed(),
        ..Timings::default()
    };
    let mode = run::Mode {
        eager: opts.eager,
        timeout: opts.timeout,
    };
    let (result_tx, result_rx) = std::sync::mpsc::channel();
    let (keep_tx, keep_rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("lazarus-restore".into())
        .spawn(move || {
            let result = run::restore(image, plan, server, mode, t0, timings);
            let started = result.is_ok();
            if result_tx.send(result).is_ok() && started {
                // The process's parent thread: live until the handle lets it go.
                let _ = keep_rx.recv();
            }
        })
        .map_err(ProcessRestoreError::io("cannot start the restore thread"))?;
    let started = match result_rx.recv() {
        Ok(Ok(started)) => started,
        Ok(Err(e)) => {
            let _ = thread.join();
            return Err(e);
        }
        Err(_) => {
            let _ = thread.join();
            return Err(ProcessRestoreError::Crashed);
        }
    };
    Ok(RestoredProcess::new(
        started,
        (thread, keep_tx),
        t0,
        opts.timeout,
        handle::WorkingSetEnd {
            path: ws_path,
            loaded: ws_loaded,
            save: opts.working_set.save,
        },
    ))
}
