//! The helper: a fork of the agent, created with the original pid, that parks itself
//! and is then seized and turned into the restored process (module `sys` has its own
//! code). [`Helper`] owns it until it runs as the restored process: on every error
//! path it is killed and reaped, so a failed restore leaves nothing behind.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags};
use tracee::{SeizeOptions, SeizedProcess};

use super::error::ProcessRestoreError;
use super::sys;

/// A helper process, killed and reaped on drop unless [`released`](Self::release).
#[derive(Debug)]
pub(crate) struct Helper {
    pub(crate) pid: i32,
    pidfd: Option<OwnedFd>,
    seized: Option<SeizedProcess>,
    timeout: Duration,
}

impl Helper {
    /// Creates the helper (with pid `set_tid` if given) and waits until it is parked.
    pub(crate) fn spawn(
        set_tid: Option<i32>,
        timeout: Duration,
    ) -> Result<Self, ProcessRestoreError> {
        let (ready_r, ready_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| ProcessRestoreError::Helper {
                detail: ": cannot create a pipe".to_owned(),
                source: e.into(),
            })?;
        let (pid, pidfd) =
            sys::clone_helper(set_tid, ready_w.as_raw_fd()).map_err(|source| {
                match (source.raw_os_error(), set_tid) {
                    (Some(libc::EEXIST), Some(pid)) => ProcessRestoreError::PidInUse {
                        pid,
                        role: "process".to_owned(),
                        user: super::plan::pid_user(pid),
                    },
                    (Some(libc::EPERM), Some(pid)) => ProcessRestoreError::Helper {
                        detail: format!(
                            " with pid {pid} (choosing a pid needs CAP_SYS_ADMIN or \
                         CAP_CHECKPOINT_RESTORE; or restore with --pid any)"
                        ),
                        source,
                    },
                    _ => ProcessRestoreError::Helper {
                        detail: String::new(),
                        source,
                    },
                }
            })?;
        drop(ready_w);
        let helper = Self {
            pid,
            pidfd: Some(pidfd),
            seized: None,
            timeout,
        };
        // Wait for its byte: it is parked (or it exited: EOF).
        let mut fds = [PollFd::new(&ready_r, PollFlags::IN)];
        let wait = rustix::time::Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        let ready = loop {
            match rustix::event::poll(&mut fds, Some(&wait)) {
                Ok(n) => break n > 0,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    return Err(ProcessRestoreError::Helper {
                        detail: ": cannot wait for it".to_owned(),
                        source: e.into(),
                    });
                }
            }
        };
        let mut byte = [0u8; 1];
        let parked = ready && matches!(rustix::io::read(&ready_r, &mut byte), Ok(1));
        if !parked {
            return Err(ProcessRestoreError::Helper {
                detail: format!(" (pid {pid} did not get ready within {timeout:?})"),
                source: std::io::Error::from_raw_os_error(libc::ETIMEDOUT),
            });
        }
        Ok(helper)
    }

    /// Seizes the parked helper: every later thread it creates is attached at birth,
    /// and if the seizing thread dies the kernel kills the helper.
    pub(crate) fn seize(&mut self) -> Result<&mut SeizedProcess, ProcessRestoreError> {
        let options = SeizeOptions::default()
            .timeout(self.timeout)
            .exit_kill(true)
            .trace_clone(true);
        let process =
            SeizedProcess::seize(self.pid, options).map_err(ProcessRestoreError::Seize)?;
        Ok(self.seized.insert(process))
    }

    /// Detaches every thread: the helper runs as the restored process from now on and
    /// is no longer killed on drop. Returns its pidfd. If some thread cannot be
    /// detached, the process is killed instead.
    pub(crate) fn detach(mut self) -> Result<OwnedFd, ProcessRestoreError> {
        let process = self
            .seized
            .take()
            .expect("the helper is seized before it is detached");
        match process.detach() {
            Ok(()) => Ok(self.pidfd.take().expect("the pidfd lives until detach")),
            // Drop kills what is left.
            Err(e) => Err(ProcessRestoreError::Io {
                step: "cannot let the restored process run (detach)".to_owned(),
                source: std::io::Error::other(e),
            }),
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let Some(pidfd) = self.pidfd.take() else {
            return;
        };
        if let Some(process) = self.seized.take() {
            // Kills, waits for every thread and reaps the helper (our child).
            if let Err(e) = process.kill() {
                log::error!("cannot kill the helper {}: {e}", self.pid);
            }
            return;
        }
        let _ = rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::KILL);
        reap(&pidfd, self.timeout);
    }
}

/// Waits (at most `timeout`) for the exited child behind `pidfd` and reaps it; returns
/// its end.
pub(crate) fn reap(pidfd: &OwnedFd, timeout: Duration) -> Option<rustix::process::WaitIdStatus> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match rustix::process::waitid(
            rustix::process::WaitId::PidFd(pidfd.as_fd()),
            rustix::process::WaitIdOptions::EXITED | rustix::process::WaitIdOptions::NOHANG,
        ) {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return None,
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
