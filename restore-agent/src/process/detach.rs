//! Running the agent in the background (`lazarus restore --detach`).
//!
//! The restored process's parent is the agent's restore thread, and the process is
//! killed when it dies (see the `process` module docs). So the background agent must
//! exist *before* the restore starts: the command forks first, the child becomes the
//! agent (in its own session, so that closing the terminal does not hang it up) and
//! restores, and reports the pid (or the error) back through a pipe; the command
//! prints it and exits.
//!
//! ```text
//!  lazarus restore --detach ─ fork ─┬─ parent: read the report, print it, exit
//!                                   └─ agent: setsid; restore; report; serve; exit
//! ```

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use rustix::fs::{Mode, OFlags};

use super::sys;

/// Which side of [`run_in_background`] this is.
#[derive(Debug)]
pub enum Background {
    /// The calling process: `agent` runs the restore and writes to `report`'s other
    /// end; read it to its end.
    Caller {
        /// The agent's pid.
        agent: i32,
        /// The read end of the report pipe.
        report: File,
    },
    /// The new background agent, in its own session.
    Agent {
        /// The write end of the report pipe (close it once reported).
        report: File,
    },
}

/// Forks the background agent. The calling process must have a single thread (it is
/// checked: forking a multi-threaded process copies only the calling thread, and locks
/// held by the others would stay locked forever in the child).
pub fn run_in_background() -> io::Result<Background> {
    let threads = std::fs::read_dir("/proc/self/task")?.count();
    if threads != 1 {
        return Err(io::Error::other(format!(
            "cannot move into the background: this process already runs {threads} threads"
        )));
    }
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    match sys::fork_single_threaded()? {
        Some(agent) => {
            drop(write);
            Ok(Background::Caller {
                agent,
                report: File::from(read),
            })
        }
        None => {
            drop(read);
            rustix::process::setsid()?;
            Ok(Background::Agent {
                report: File::from(write),
            })
        }
    }
}

/// In the background agent, once the restore is reported: stdin from `/dev/null`,
/// stdout and stderr to `log` (appended, created 0600) or `/dev/null`, so that the
/// agent holds nothing of the terminal it was started from.
pub fn quiet_stdio(log: Option<&Path>) -> io::Result<()> {
    let null: OwnedFd =
        rustix::fs::open("/dev/null", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())?;
    sys::redirect_stdio(null.as_raw_fd(), 0..1)?;
    let out: OwnedFd = match log {
        Some(path) => rustix::fs::open(
            path,
            OFlags::WRONLY | OFlags::CREATE | OFlags::APPEND | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?,
        None => null,
    };
    sys::redirect_stdio(out.as_raw_fd(), 1..3)
}
