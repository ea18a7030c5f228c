//! [`RestoredProcess`]: a restored process while its memory is served, and how a
//! restore ends (see the `process` module docs, "Ending").

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use serde::Serialize;
use tracee::{SeizeError, SeizeOptions, SeizedProcess};

use super::Timings;
use super::error::ProcessRestoreError;
use super::helper::reap;
use super::run::{Started, populate};
use crate::restore::save_working_set;
use crate::server::FaultServer;
use crate::stats::Stats;
use crate::workset::WorkingSet;

/// How long the spaces of a finished restore may take to be unregistered.
const UNREGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// How a restored process ended, if it did before the restore was finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ProcessExit {
    /// Its exit status, if it exited.
    pub code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
}

impl std::fmt::Display for ProcessExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exited with status {code}"),
            (None, Some(signal)) => write!(f, "was killed by signal {signal}"),
            (None, None) => f.write_str("ended"),
        }
    }
}

/// What a finished restore did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreSummary {
    /// The restored process.
    pub pid: i32,
    /// Its threads.
    pub threads: usize,
    /// Regions recreated.
    pub regions: usize,
    /// Regions served through userfaultfd.
    pub served_regions: usize,
    /// When each step was done.
    pub timings: Timings,
    /// The fault server's statistics at the end.
    pub stats: Stats,
    /// If the process ended before the restore was complete: how.
    pub exit: Option<ProcessExit>,
    /// The working-set file written, if any.
    pub working_set: Option<PathBuf>,
}

/// Working-set handling at the end of a restore.
#[derive(Debug, Default)]
pub(crate) struct WorkingSetEnd {
    pub(crate) path: Option<PathBuf>,
    pub(crate) loaded: Option<WorkingSet>,
    pub(crate) save: bool,
}

/// A restored process whose memory the agent serves (see the `process` module docs).
///
/// Dropping it before [`finish`](Self::finish) kills the process (its memory would
/// otherwise be incomplete).
#[derive(Debug)]
pub struct RestoredProcess {
    pid: i32,
    tids: Vec<i32>,
    pidfd: Option<OwnedFd>,
    server: Option<FaultServer>,
    keeper: Option<i32>,
    armed: bool,
    stopped: bool,
    regions: usize,
    served_regions: usize,
    timings: Timings,
    started: Instant,
    timeout: Duration,
    ws: WorkingSetEnd,
    /// The restore thread (the process's parent thread) and the channel that keeps it
    /// alive.
    owner: Option<(JoinHandle<()>, Sender<()>)>,
    exit: Option<ProcessExit>,
}

impl RestoredProcess {
    pub(crate) fn new(
        started: Started,
        owner: (JoinHandle<()>, Sender<()>),
        t0: Instant,
        timeout: Duration,
        ws: WorkingSetEnd,
    ) -> Self {
        Self {
            pid: started.pid,
            tids: started.tids,
            pidfd: Some(started.pidfd),
            server: Some(started.server),
            keeper: started.keeper,
            armed: started.armed,
            stopped: started.stopped,
            regions: started.regions,
            served_regions: started.served_regions,
            timings: started.timings,
            started: t0,
            timeout,
            ws,
            owner: Some(owner),
            exit: None,
        }
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Its threads' ids, the leader first.
    pub fn tids(&self) -> &[i32] {
        &self.tids
    }

    /// Whether it was left stopped (`stopped` option, or captured in a job-control
    /// stop): it runs after `SIGCONT`.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// When each step was done (so far).
    pub fn timings(&self) -> &Timings {
        &self.timings
    }

    /// The fault server (events, statistics).
    pub fn server(&self) -> &FaultServer {
        self.server
            .as_ref()
            .expect("the server lives until finish or drop")
    }

    /// Live statistics.
    pub fn stats(&self) -> Stats {
        self.server().stats()
    }

    /// Whether the process has ended.
    pub fn has_exited(&self) -> bool {
        let Some(pidfd) = &self.pidfd else {
            return true;
        };
        let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
        let zero = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        matches!(rustix::event::poll(&mut fds, Some(&zero)), Ok(n) if n > 0)
    }

    /// Waits up to `timeout` until there is nothing left to serve: every page of every
    /// served process (the restored one and its children) is in, or they have all
    /// exited. Returns whether that is so; [`finish`](Self::finish) then completes the
    /// restore at once.
    pub fn wait_done(&mut self, timeout: Duration) -> bool {
        let done = self.server().wait_populated(timeout);
        if done && self.timings.populated.is_none() && !self.has_exited() {
            self.timings.populated = Some(self.started.elapsed());
        }
        done
    }

    /// Completes the restore: makes sure every page is in (prefetching whatever is
    /// left; population that stops progressing for a minute is an error), lets the
    /// process continue alone (its parent-death signal cleared and its copy of the
    /// userfaultfd closed, then every range unregistered), saves the working set and
    /// stops the fault server. A process that has exited meanwhile is reaped.
    pub fn finish(mut self) -> Result<RestoreSummary, ProcessRestoreError> {
        let server = self
            .server
            .as_ref()
            .expect("the server lives until finish or drop");
        populate(server)?;
        if self.timings.populated.is_none() && !self.has_exited() {
            self.timings.populated = Some(self.started.elapsed());
        }
        if self.armed {
            self.disarm()?;
            self.armed = false;
        }
        let server = self
            .server
            .take()
            .expect("the server lives until finish or drop");
        // Unregister every range still served (the process, its children): copies of
        // the process's userfaultfd that children inherited must not keep ranges
        // registered with nobody serving them.
        for space in server.spaces() {
            server.remove_space(space, true);
        }
        let deadline = Instant::now() + UNREGISTER_TIMEOUT;
        while !server.spaces().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let stats = server.stats();
        let mut working_set = None;
        if self.ws.save
            && let Some(path) = &self.ws.path
            && save_working_set(&server, self.ws.loaded.as_ref(), path)
        {
            working_set = Some(path.clone());
        }
        server.stop()?;
        self.collect_exit();
        self.end_owner();
        Ok(RestoreSummary {
            pid: self.pid,
            threads: self.tids.len(),
            regions: self.regions,
            served_regions: self.served_regions,
            timings: self.timings.clone(),
            stats,
            exit: self.exit,
            working_set,
        })
    }

    /// Kills the process and ends the restore.
    pub fn kill(mut self) -> Result<(), ProcessRestoreError> {
        self.abandon();
        Ok(())
    }

    /// Reaps the process if it has exited.
    fn collect_exit(&mut self) {
        if self.exit.is_some() || !self.has_exited() {
            return;
        }
        if let Some(pidfd) = &self.pidfd
            && let Some(status) = reap(pidfd, self.timeout)
        {
            self.exit = Some(ProcessExit {
                code: status.exit_status(),
                signal: status.terminating_signal(),
            });
        }
    }

    /// Lets the process outlive the agent: in its leader, closes its copy of the
    /// userfaultfd and clears the parent-death signal. Every page is in by now, so
    /// neither matters any more for its memory.
    fn disarm(&mut self) -> Result<(), ProcessRestoreError> {
        let options = SeizeOptions::default().timeout(self.timeout);
        let mut process = match SeizedProcess::seize(self.pid, options) {
            Ok(p) => p,
            Err(SeizeError::NoSuchProcess { .. } | SeizeError::Exited { .. }) => return Ok(()),
            Err(e) => return Err(ProcessRestoreError::Seize(e)),
        };
        let mut session = match process.remote(self.pid) {
            Ok(s) => s,
            Err(e) if self.has_exited() => {
                log::debug!("process {} exited while finishing: {e}", self.pid);
                return Ok(());
            }
            Err(e) => {
                return Err(ProcessRestoreError::Remote {
                    step: "cannot drive the restored process to finish the restore (is its \
                           leader thread gone?)"
                        .to_owned(),
                    source: e,
                });
            }
        };
        if let Some(keeper) = self.keeper {
            // The program may have closed or replaced it: only close what is still ours.
            let link = std::fs::read_link(format!("/proc/{}/fd/{keeper}", self.pid));
            if link.is_ok_and(|l| l.as_os_str() == "anon_inode:[userfaultfd]") {
                session
                    .syscall_ok(libc::SYS_close as u64, [keeper as u64, 0, 0, 0, 0, 0])
                    .map_err(ProcessRestoreError::remote(
                        "cannot close the restored process's copy of its userfaultfd",
                    ))?;
            }
        }
        session
            .syscall_ok(
                libc::SYS_prctl as u64,
                [libc::PR_SET_PDEATHSIG as u64, 0, 0, 0, 0, 0],
            )
            .map_err(ProcessRestoreError::remote(
                "cannot clear the restored process's parent-death signal",
            ))?;
        session
            .finish()
            .map_err(ProcessRestoreError::remote("cannot end the remote session"))?;
        process.detach().map_err(|e| ProcessRestoreError::Io {
            step: "cannot let the restored process go".to_owned(),
            source: std::io::Error::other(e),
        })
    }

    /// Ends the restore thread (the process's parent thread): only once the process
    /// no longer dies with it, or is dead.
    fn end_owner(&mut self) {
        if let Some((thread, keep_alive)) = self.owner.take() {
            drop(keep_alive);
            if thread.join().is_err() {
                log::error!("the restore thread panicked");
            }
        }
    }

    /// Kills the process, reaps it, stops the server and the restore thread.
    fn abandon(&mut self) {
        if let Some(pidfd) = &self.pidfd {
            let _ = rustix::process::pidfd_send_signal(pidfd, rustix::process::Signal::KILL);
            if let Some(status) = reap(pidfd, self.timeout) {
                self.exit = Some(ProcessExit {
                    code: status.exit_status(),
                    signal: status.terminating_signal(),
                });
            }
        }
        if let Some(server) = self.server.take()
            && let Err(e) = server.stop()
        {
            log::error!("{e}");
        }
        self.end_owner();
        self.pidfd = None;
    }
}

impl Drop for RestoredProcess {
    fn drop(&mut self) {
        if self.server.is_some() || self.owner.is_some() {
            self.abandon();
        }
    }
}
