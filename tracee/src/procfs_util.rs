//! The few /proc reads the crate needs: a process's thread list and a thread's status.
//! /proc contents are untrusted input: names that are not numbers are skipped and the
//! thread count is bounded by [`MAX_THREADS`].

use std::io;

use crate::MAX_THREADS;

/// Lists the tids in /proc/PID/task. `Ok(None)` if the process does not exist (any more).
/// A listing is a snapshot: threads may appear or vanish right after.
pub(crate) fn list_threads(pid: i32) -> io::Result<Option<Vec<i32>>> {
    let dir = match std::fs::read_dir(format!("/proc/{pid}/task")) {
        Ok(dir) => dir,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut tids = Vec::new();
    for entry in dir {
        let entry = match entry {
            Ok(entry) => entry,
            // The process died during the listing.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        };
        if let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        {
            if tids.len() > MAX_THREADS {
                // Let the caller report the limit; one more than allowed is enough to know.
                break;
            }
            tids.push(tid);
        }
    }
    tids.sort_unstable();
    Ok(Some(tids))
}

/// The fields of /proc/PID/task/TID/status that seizing needs.
#[derive(Debug, Clone)]
pub(crate) struct ThreadStatus {
    /// First letter of `State:` (`R`, `S`, `D`, `T`, `t`, `Z`, `X`, ...).
    pub(crate) state: char,
    /// `TracerPid:` (0 when untraced).
    pub(crate) tracer: i32,
}

impl ThreadStatus {
    /// Whether the thread has finished (zombie or dead): it has no user state left and
    /// cannot be traced.
    pub(crate) fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Reads a thread's status. `None` if the thread does not exist.
pub(crate) fn thread_status(pid: i32, tid: i32) -> Option<ThreadStatus> {
    let status = procfs::process::Process::new(pid)
        .and_then(|p| p.task_from_tid(tid))
        .and_then(|t| t.status())
        .ok()?;
    Some(ThreadStatus {
        state: status.state.chars().next().unwrap_or('?'),
        tracer: status.tracerpid,
    })
}

/// The `Tgid:` of a pid (a thread's process), if it exists.
pub(crate) fn tgid_of(pid: i32) -> Option<i32> {
    procfs::process::Process::new(pid)
        .and_then(|p| p.status())
        .ok()
        .map(|s| s.tgid)
}

/// The parent pid of a process, if it exists.
pub(crate) fn parent_of(pid: i32) -> Option<i32> {
    procfs::process::Process::new(pid)
        .and_then(|p| p.stat())
        .ok()
        .map(|s| s.ppid)
}
