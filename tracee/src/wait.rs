//! Bounded waiting for one traced thread, and decoding of its wait status.
//!
//! There is no file descriptor that becomes readable when a tracee enters a ptrace stop
//! (a pidfd reports exits only), and a blocking `waitpid` cannot time out. So we poll
//! `waitpid(tid, WNOHANG | __WALL)`: a few `sched_yield`s first, which is enough for the
//! common case where the tracee stops within microseconds, then sleeps that double up to
//! [`MAX_POLL_INTERVAL`], until the deadline.
//!
//! `__WALL` is required: threads other than the leader are "clone" children that a plain
//! `waitpid` does not see.
//!
//! Wait status of a stopped tracee (`status & 0xff == 0x7f`):
//!
//! ```text
//! bits 31..16  ptrace event (PTRACE_EVENT_STOP = 0x80, CLONE = 3, ...) or 0
//! bits 15..8   signal: SIGTRAP | 0x80 for a syscall stop (PTRACE_O_TRACESYSGOOD),
//!              SIGTRAP for an interrupt stop, the stop signal for a group stop,
//!              the signal itself for a signal-delivery-stop
//! bits  7..0   0x7f
//! ```

use std::io;
use std::time::{Duration, Instant};

use rustix::process::{Pid, WaitOptions, waitpid};

/// Longest sleep between two polls.
const MAX_POLL_INTERVAL: Duration = Duration::from_millis(2);
/// Polls that only yield the CPU before the first sleep.
const YIELD_POLLS: u32 = 16;

/// The kind of ptrace stop a thread reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// A `PTRACE_EVENT_*` stop. For `PTRACE_EVENT_STOP`, `signal` is SIGTRAP for a
    /// `PTRACE_INTERRUPT` stop and the stop signal for a group (job-control) stop.
    Event { event: u32, signal: i32 },
    /// A system-call entry or exit stop (needs `PTRACE_O_TRACESYSGOOD`).
    Syscall,
    /// A signal-delivery-stop: the thread dequeued `signal`, which is delivered only if
    /// the tracer passes it back when resuming.
    Signal(i32),
}

/// What waiting for a thread produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waited {
    /// The thread is in a ptrace stop.
    Stopped(Stop),
    /// The thread is gone: it exited or was killed (status reaped), or it is no longer
    /// ours to wait for (`ECHILD`).
    Gone,
}

/// Why waiting failed.
#[derive(Debug)]
pub(crate) enum WaitFailure {
    /// Nothing was reported before the deadline.
    Timeout,
    /// `waitpid` failed unexpectedly.
    Os(io::Error),
}

/// Decodes a raw wait status.
fn decode(status: i32) -> Waited {
    if status & 0xff != 0x7f {
        // Exited or killed by a signal (WIFEXITED / WIFSIGNALED).
        return Waited::Gone;
    }
    let signal = (status >> 8) & 0xff;
    let event = (status as u32) >> 16;
    if signal == libc::SIGTRAP | 0x80 {
        Waited::Stopped(Stop::Syscall)
    } else if event != 0 {
        Waited::Stopped(Stop::Event { event, signal })
    } else {
        Waited::Stopped(Stop::Signal(signal))
    }
}

/// Waits until thread `tid` reports a stop or its end, for at most `timeout`.
pub(crate) fn wait_for(tid: i32, timeout: Duration) -> Result<Waited, WaitFailure> {
    let Some(pid) = Pid::from_raw(tid) else {
        return Ok(Waited::Gone);
    };
    let options = WaitOptions::NOHANG | WaitOptions::from_bits_retain(libc::__WALL as u32);
    let deadline = Instant::now() + timeout;
    let mut polls = 0u32;
    let mut interval = Duration::from_micros(20);
    loop {
        match waitpid(Some(pid), options) {
            Ok(Some((_, status))) => return Ok(decode(status.as_raw())),
            Ok(None) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::CHILD) => return Ok(Waited::Gone),
            Err(e) => return Err(WaitFailure::Os(e.into())),
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(WaitFailure::Timeout);
        }
        polls += 1;
        if polls <= YIELD_POLLS {
            std::thread::yield_now();
        } else {
            std::thread::sleep(interval.min(deadline - now));
            interval = (interval * 2).min(MAX_POLL_INTERVAL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_each_kind_of_status() {
        // exit(3)
        assert_eq!(decode(3 << 8), Waited::Gone);
        // killed by SIGKILL
        assert_eq!(decode(libc::SIGKILL), Waited::Gone);
        // syscall stop
        assert_eq!(
            decode(((libc::SIGTRAP | 0x80) << 8) | 0x7f),
            Waited::Stopped(Stop::Syscall)
        );
        // PTRACE_EVENT_STOP from PTRACE_INTERRUPT
        assert_eq!(
            decode((0x80 << 16) | (libc::SIGTRAP << 8) | 0x7f),
            Waited::Stopped(Stop::Event {
                event: 0x80,
                signal: libc::SIGTRAP
            })
        );
        // group stop
        assert_eq!(
            decode((0x80 << 16) | (libc::SIGSTOP << 8) | 0x7f),
            Waited::Stopped(Stop::Event {
                event: 0x80,
                signal: libc::SIGSTOP
            })
        );
        // signal-delivery-stop of a real-time signal
        assert_eq!(decode((40 << 8) | 0x7f), Waited::Stopped(Stop::Signal(40)));
    }
}
