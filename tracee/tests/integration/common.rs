//! Driving `tracee-testee` children from the tests: spawn, line handshakes with
//! timeouts, /proc probes. Every wait here is bounded and fails with a clear message.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

/// Bound on every wait in the tests.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(20);

/// A running `tracee-testee`.
pub(crate) struct Testee {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Testee {
    /// Spawns `tracee-testee ARGS` with piped stdin and stdout.
    pub(crate) fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tracee-testee"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn tracee-testee");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stdin = child.stdin.take();
        Self {
            child,
            stdin,
            lines,
        }
    }

    /// The child's pid.
    pub(crate) fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The next line the child prints.
    pub(crate) fn line(&self) -> String {
        match self.lines.recv_timeout(TIMEOUT) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => {
                panic!("testee {} printed nothing within {TIMEOUT:?}", self.pid())
            }
            Err(RecvTimeoutError::Disconnected) => {
                panic!("testee {} closed its stdout", self.pid())
            }
        }
    }

    /// Expects the next line to be `want`.
    pub(crate) fn expect(&self, want: &str) {
        let got = self.line();
        assert_eq!(
            got,
            want,
            "testee {} said {got:?}, expected {want:?}",
            self.pid()
        );
    }

    /// Sends one line to the child's stdin, in one `write` (a child doing a single
    /// `read` must get the whole line, and may exit right after).
    pub(crate) fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        let line = format!("{line}\n");
        if let Err(e) = stdin.write_all(line.as_bytes()) {
            // Say what the child printed before it went away.
            let said: Vec<String> = self.lines.try_iter().collect();
            panic!(
                "cannot write to testee {}: {e}; it printed {said:?}",
                self.pid()
            );
        }
    }

    /// Closes the child's stdin (EOF).
    pub(crate) fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits (bounded) for the child to exit.
    pub(crate) fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "testee {} did not exit",
                self.pid()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Testee {
    fn drop(&mut self) {
        // Already gone (or reaped by SeizedProcess::kill) is fine.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `condition` until it holds, failing after [`TIMEOUT`] with `what`.
pub(crate) fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The system call thread `tid` of `pid` is blocked in (first field of
/// /proc/PID/task/TID/syscall), if it is blocked in one.
pub(crate) fn blocked_syscall(pid: i32, tid: i32) -> Option<i64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Waits until the child's main thread is blocked in system call `nr`.
pub(crate) fn wait_blocked_in(pid: i32, nr: i64) {
    wait_until(
        &format!("process {pid} is blocked in system call {nr}"),
        || blocked_syscall(pid, pid) == Some(nr),
    );
}

/// A field of /proc/PID/task/TID/status (`State`, `TracerPid`, ...), if the thread exists.
pub(crate) fn status_field(pid: i32, tid: i32, field: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_owned())
}

/// The tids listed in /proc/PID/task.
pub(crate) fn task_list(pid: i32) -> Vec<i32> {
    let mut tids: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    tids.sort_unstable();
    tids
}

/// Asserts that every thread of `pid` is untraced and not in a tracing stop.
pub(crate) fn assert_untraced(pid: i32) {
    for tid in task_list(pid) {
        // A thread may end between the listing and the read.
        let (Some(tracer), Some(state)) = (
            status_field(pid, tid, "TracerPid"),
            status_field(pid, tid, "State"),
        ) else {
            continue;
        };
        assert_eq!(tracer, "0", "thread {tid} of {pid} is still traced");
        assert!(
            !state.starts_with('t'),
            "thread {tid} of {pid} is in {state}"
        );
    }
}

/// The calling thread's tid (what TracerPid shows for a tracee we attached).
pub(crate) fn gettid() -> i32 {
    rustix::thread::gettid().as_raw_nonzero().get()
}
