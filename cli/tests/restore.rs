//! End-to-end tests of `lazarus restore` against fixture processes captured with
//! `lazarus capture --pid --kill`: the output, the agent serving in the foreground and
//! in the background, the agent's death, a process that exits while served, and a
//! corrupt image refused before anything starts.

mod common;

use std::io::{BufRead, BufReader};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{lazarus, ok};
use fixtures::{Fixture, LogTail};

const T: Duration = Duration::from_secs(30);

/// A counter captured with `--kill`: the image, the original's pid and last tick.
struct Captured {
    dir: tempfile::TempDir,
    img: PathBuf,
    pid: i32,
    last_tick: u64,
    /// The counter's buffer: address and length.
    buf: (u64, u64),
}

impl Captured {
    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `restore` arguments sending the process's output to files of the test.
    fn restore_args(&self) -> Vec<String> {
        vec![
            "restore".into(),
            self.img.to_string_lossy().into_owned(),
            "--stdin".into(),
            "null".into(),
            "--stdout".into(),
            self.file("out.log").to_string_lossy().into_owned(),
            "--stderr".into(),
            self.file("err.log").to_string_lossy().into_owned(),
            // Descriptors the test harness leaks into the fixture (a jobserver pipe).
            "--unrestorable-fds".into(),
            "null".into(),
        ]
    }

    fn tail(&self, pid: i32) -> LogTail {
        LogTail::new(self.file("out.log")).watch_pid(pid as u32)
    }
}

fn capture_counter(args: &[&str]) -> Captured {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("c.lzr");
    let mut fx = Fixture::spawn("counter", args).expect("spawn");
    let ready = fx.wait_ready(T);
    let buf = (ready.hex("buf"), ready.hex("buf_len"));
    let mut last_tick = fx
        .wait_line(|l| l.is("TICK") && l.u64("n") >= 2, T)
        .u64("n");
    let pid = fx.pid() as i32;
    ok(&[
        &"capture",
        &"--pid",
        &pid.to_string(),
        &"-o",
        &img,
        &"--kill",
    ]);
    while let Ok(l) = fx.try_wait_line(|l| l.is("TICK"), Duration::from_secs(5)) {
        last_tick = l.u64("n");
    }
    // Reap it: its pid is free again.
    fx.wait_exit(T);
    Captured {
        dir,
        img,
        pid,
        last_tick,
        buf,
    }
}

/// A running `lazarus` command with its stdout read line by line; killed and reaped
/// on drop.
struct Agent {
    child: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Agent {
    fn spawn(args: &[String]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lazarus"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run lazarus");
        let lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        Self { child, lines }
    }

    /// The next line it prints (the command prints its first line as soon as the
    /// process runs; the wait is bounded by the restore's own timeouts).
    fn line(&mut self) -> String {
        self.lines
            .next()
            .expect("a line from lazarus")
            .expect("read lazarus's stdout")
    }

    fn wait(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + T;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "lazarus did not exit within {T:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process that is not our child: killed when dropped.
struct Process {
    pidfd: OwnedFd,
    pid: i32,
}

impl Process {
    fn new(pid: i32) -> Self {
        let pidfd = rustix::process::pidfd_open(
            rustix::process::Pid::from_raw(pid).expect("pid"),
            rustix::process::PidfdFlags::empty(),
        )
        .expect("pidfd_open");
        Self { pidfd, pid }
    }

    /// The process `pid`, if it exists.
    fn try_new(pid: i32) -> Option<Self> {
        let pidfd = rustix::process::pidfd_open(
            rustix::process::Pid::from_raw(pid)?,
            rustix::process::PidfdFlags::empty(),
        )
        .ok()?;
        Some(Self { pidfd, pid })
    }

    fn gone_within(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let mut fds = [rustix::event::PollFd::new(
                &self.pidfd,
                rustix::event::PollFlags::IN,
            )];
            let zero = rustix::time::Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            if matches!(rustix::event::poll(&mut fds, Some(&zero)), Ok(n) if n > 0) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn status_field(&self, field: &str) -> Option<String> {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix(field).map(|v| v.trim().to_owned()))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = rustix::process::pidfd_send_signal(&self.pidfd, rustix::process::Signal::KILL);
        self.gone_within(T);
    }
}

#[test]
fn restore_prints_the_pid_serves_then_leaves_the_process_alone() {
    let c = capture_counter(&["--mib", "16", "--interval-ms", "20"]);
    let mut args = c.restore_args();
    args.push("--json".into());
    let mut agent = Agent::spawn(&args);
    let started: serde_json::Value = serde_json::from_str(&agent.line()).expect("JSON");
    let pid = started["pid"].as_i64().expect("pid") as i32;
    assert_eq!(pid, c.pid, "the original pid");
    assert_eq!(
        started["agent_pid"].as_u64(),
        Some(u64::from(agent.child.id()))
    );
    let process = Process::new(pid);
    let mut out = c.tail(pid);
    let next = out.wait_tag("TICK", T);
    assert_eq!(next.u64("n"), c.last_tick + 1);
    // The counter touches all its memory every tick: the agent finishes soon.
    let summary: serde_json::Value = serde_json::from_str(&agent.line()).expect("JSON");
    assert!(agent.wait().success());
    assert_eq!(summary["pid"], pid);
    assert!(summary["exit"].is_null(), "{summary}");
    assert!(
        summary["stats"]["population"]["populated"]
            .as_bool()
            .unwrap_or(false)
    );
    assert!(summary["timings"]["running"].as_f64().is_some());
    // The working set was saved beside the image.
    assert!(Path::new(&format!("{}.ws", c.img.display())).exists());
    // Alone now: not traced, reparented, still ticking.
    assert_eq!(process.status_field("TracerPid:").as_deref(), Some("0"));
    out.wait_line(|l| l.is("TICK") && l.u64("n") >= c.last_tick + 4, T);
}

/// A 64 MiB counter of which each tick verifies 1 MiB: without prefetch most
/// of its pages stay unserved for a long time.
const MOSTLY_UNTOUCHED_64M: &[&str] = &[
    "--mib",
    "64",
    "--verify-mib",
    "1",
    "--full-every",
    "100000",
    "--interval-ms",
    "20",
];

#[test]
fn the_restored_process_dies_with_its_agent() {
    let c = capture_counter(MOSTLY_UNTOUCHED_64M);
    let mut args = c.restore_args();
    args.push("--no-prefetch".into());
    let mut agent = Agent::spawn(&args);
    let pid: i32 = agent.line().trim().parse().expect("the pid");
    let process = Process::new(pid);
    let mut out = c.tail(pid);
    out.wait_line(|l| l.is("TICK") && l.u64("n") >= c.last_tick + 2, T);
    // SIGKILL: the agent cannot clean anything up.
    agent.child.kill().expect("kill the agent");
    assert!(
        process.gone_within(T),
        "the restored process outlived its agent: {:?}",
        process.status_field("State:")
    );
    // It never saw a zero page in place of a missing one.
    let log = std::fs::read_to_string(c.file("out.log")).expect("out.log");
    assert!(!log.contains("CORRUPT"), "{log}");
    // Dead, not stopped or traced: gone, or a zombie until its new parent (the
    // agent's reaper) collects it.
    let state = process.status_field("State:").unwrap_or_default();
    assert!(
        state.is_empty() || state.starts_with('Z'),
        "left in state {state}"
    );
}

#[test]
fn a_process_that_exits_while_served_is_reported() {
    let c = capture_counter(&[
        "--mib",
        "32",
        "--verify-mib",
        "1",
        "--full-every",
        "100000",
        "--interval-ms",
        "20",
        "--ticks",
        "8",
    ]);
    let mut args = c.restore_args();
    args.push("--no-prefetch".into());
    let mut agent = Agent::spawn(&args);
    let pid: i32 = agent.line().trim().parse().expect("the pid");
    let summary = agent.line();
    assert!(agent.wait().success());
    assert!(
        summary.contains(&format!("restored pid {pid}")),
        "{summary}"
    );
    assert!(
        summary.contains("the process exited with status 0"),
        "{summary}"
    );
    let log = std::fs::read_to_string(c.file("out.log")).expect("out.log");
    assert!(log.contains("DONE ticks=8"), "{log}");
}

#[test]
fn detach_returns_once_the_process_runs_and_the_agent_serves_in_the_background() {
    let c = capture_counter(&["--mib", "16", "--interval-ms", "20"]);
    let log = c.file("agent.log");
    let mut args = c.restore_args();
    args.extend(["--detach", "--json", "--log"].map(String::from));
    args.push(log.to_string_lossy().into_owned());
    let out = lazarus(
        &args
            .iter()
            .map(|a| a as &dyn AsRef<std::ffi::OsStr>)
            .collect::<Vec<_>>(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let started: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let pid = started["pid"].as_i64().expect("pid") as i32;
    let agent_pid = started["agent_pid"].as_i64().expect("agent pid") as i32;
    let process = Process::new(pid);
    let agent = Process::new(agent_pid);
    // The restored process's parent is the background agent.
    assert_eq!(
        process.status_field("PPid:"),
        Some(agent_pid.to_string()),
        "parent"
    );
    let mut ticks = c.tail(pid);
    assert_eq!(ticks.wait_tag("TICK", T).u64("n"), c.last_tick + 1);
    // Once every page is in, the agent finishes, logs its summary and exits.
    assert!(agent.gone_within(T), "the agent did not finish");
    let text = std::fs::read_to_string(&log).expect("agent log");
    let summary: serde_json::Value = serde_json::from_str(text.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(summary["pid"], pid);
    ticks.wait_line(|l| l.is("TICK") && l.u64("n") >= c.last_tick + 4, T);
}

#[test]
fn a_corrupt_image_is_refused_before_anything_starts() {
    let c = capture_counter(&["--mib", "4", "--interval-ms", "20"]);
    let bytes = std::fs::read(&c.img).expect("read the image");
    let truncated = c.file("truncated.lzr");
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).expect("write");
    let flipped = c.file("flipped.lzr");
    let mut damaged = bytes.clone();
    // A byte of the index (just before the 48-byte footer).
    let at = damaged.len() - 48 - 10;
    damaged[at] ^= 0x40;
    std::fs::write(&flipped, &damaged).expect("write");
    for img in [&truncated, &flipped] {
        let mut args = c.restore_args();
        args[1] = img.to_string_lossy().into_owned();
        let out = lazarus(
            &args
                .iter()
                .map(|a| a as &dyn AsRef<std::ffi::OsStr>)
                .collect::<Vec<_>>(),
        );
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("cannot open"), "{err}");
        assert!(out.stdout.is_empty());
        // Nothing was started: the captured pid is still free.
        assert!(!Path::new(&format!("/proc/{}", c.pid)).exists());
    }
}

/// `TracerPid` and `State` of every thread of process `pid` (empty once it is gone).
fn threads_state(pid: i32) -> Vec<(i32, String, String)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| {
            let tid: i32 = t.file_name().to_str()?.parse().ok()?;
            let status = std::fs::read_to_string(t.path().join("status")).ok()?;
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_owned())
                    .unwrap_or_default()
            };
            Some((tid, field("TracerPid:"), field("State:")))
        })
        .collect()
}

/// Whether `tracer_pid` (a `TracerPid`: the tracing *thread*) is a thread of process
/// `pid`. The agent traces from its restore thread.
fn is_thread_of(tracer_pid: &str, pid: u32) -> bool {
    tracer_pid != "0" && Path::new(&format!("/proc/{pid}/task/{tracer_pid}")).exists()
}

/// Every process traced by process `tracer` (dead or alive: its pid or one of its
/// former thread ids), from `/proc/*/status`.
fn traced_by(tracer: u32, tids: &[String]) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            threads_state(pid).iter().any(|(_, tracer_pid, _)| {
                *tracer_pid == tracer.to_string() || tids.contains(tracer_pid)
            })
        })
        .collect()
}

/// Waits (bounded) for our child `p` to end and reaps it: its exit status.
fn reap(p: &Process) -> rustix::process::WaitIdStatus {
    let deadline = Instant::now() + T;
    loop {
        match rustix::process::waitid(
            rustix::process::WaitId::PidFd(p.pidfd.as_fd()),
            rustix::process::WaitIdOptions::EXITED | rustix::process::WaitIdOptions::NOHANG,
        ) {
            Ok(Some(status)) => return status,
            Ok(None) => {}
            Err(e) => panic!("waitid for {}: {e}", p.pid),
        }
        assert!(Instant::now() < deadline, "process {} did not end", p.pid);
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn the_helper_dies_with_an_agent_killed_while_it_drives_it() {
    // Orphans (the helper, once its agent is dead) become our children, so their end
    // can be seen and they are reaped (this machine's init reaps nobody).
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .expect("PR_SET_CHILD_SUBREAPER");
    // 96 MiB filled before the process runs (--eager): the agent holds the helper
    // under ptrace for the whole fill, a window of tens of milliseconds.
    let c = capture_counter(&["--mib", "96", "--verify-mib", "1", "--interval-ms", "20"]);
    let mut args = c.restore_args();
    args.extend(["--eager", "--no-working-set"].map(String::from));
    // Catch the agent with the helper seized: stop it (SIGSTOP freezes it in whatever
    // step it is in), check it still traces the helper, then SIGKILL it. A restore
    // that got past the fill before the stop landed is let go and tried again.
    const ATTEMPTS: usize = 5;
    for attempt in 1..=ATTEMPTS {
        let mut agent = Agent::spawn(&args);
        let agent_pid = agent.child.id();
        let deadline = Instant::now() + T;
        let seized = loop {
            if threads_state(c.pid)
                .iter()
                .any(|(_, t, _)| is_thread_of(t, agent_pid))
            {
                break true;
            }
            if Instant::now() > deadline || agent.child.try_wait().expect("wait").is_some() {
                break false;
            }
            std::thread::sleep(Duration::from_micros(200));
        };
        assert!(seized, "the agent never seized the helper (pid {})", c.pid);
        let agent_proc = Process::new(agent_pid as i32);
        rustix::process::pidfd_send_signal(&agent_proc.pidfd, rustix::process::Signal::STOP)
            .expect("stop the agent");
        let deadline = Instant::now() + T;
        while agent_proc
            .status_field("State:")
            .is_some_and(|s| !s.starts_with('T'))
        {
            assert!(Instant::now() < deadline, "the agent did not stop");
            std::thread::sleep(Duration::from_millis(1));
        }
        let caught = threads_state(c.pid);
        if caught.is_empty() || !caught.iter().all(|(_, t, _)| is_thread_of(t, agent_pid)) {
            eprintln!("attempt {attempt}: the restore was past the fill: {caught:?}");
            // Kill both (the process may run alone already) and reap them.
            drop(agent);
            if let Some(p) = Process::try_new(c.pid) {
                let _ = rustix::process::pidfd_send_signal(&p.pidfd, rustix::process::Signal::KILL);
                reap(&p);
            }
            continue;
        }
        let helper = Process::new(c.pid);
        assert!(
            !std::fs::read_to_string(c.file("out.log"))
                .unwrap_or_default()
                .contains("TICK"),
            "the process printed before its restore ended"
        );
        let tracers: Vec<String> = caught.into_iter().map(|(_, t, _)| t).collect();
        agent.child.kill().expect("kill the agent");
        agent.child.wait().expect("reap the agent");
        // The helper (reparented to us) was killed, not left stopped, traced, or
        // running on with memory it does not have.
        let status = reap(&helper);
        assert_eq!(
            status.terminating_signal(),
            Some(rustix::process::Signal::KILL.as_raw()),
            "{status:?}"
        );
        assert!(
            threads_state(c.pid).is_empty(),
            "{:?}",
            threads_state(c.pid)
        );
        let left = traced_by(agent_pid, &tracers);
        assert!(left.is_empty(), "still traced by the dead agent: {left:?}");
        return;
    }
    panic!("in {ATTEMPTS} attempts the agent was never caught with the helper seized");
}

#[test]
fn a_restored_process_killed_while_served_ends_its_agent() {
    let c = capture_counter(MOSTLY_UNTOUCHED_64M);
    let mut args = c.restore_args();
    args.extend(["--no-prefetch", "--no-working-set", "--json"].map(String::from));
    let mut agent = Agent::spawn(&args);
    let started: serde_json::Value = serde_json::from_str(&agent.line()).expect("JSON");
    let pid = started["pid"].as_i64().expect("pid") as i32;
    let process = Process::new(pid);
    c.tail(pid)
        .wait_line(|l| l.is("TICK") && l.u64("n") > c.last_tick, T);
    // Most of its memory is still unserved.
    rustix::process::pidfd_send_signal(&process.pidfd, rustix::process::Signal::KILL)
        .expect("kill the restored process");
    let summary: serde_json::Value = serde_json::from_str(&agent.line()).expect("JSON");
    assert!(agent.wait().success(), "the agent's exit status");
    assert_eq!(summary["exit"]["signal"], libc_sigkill(), "{summary}");
    assert_eq!(summary["stats"]["spaces"]["gone"], 1, "{summary}");
    // The agent reaped it before it exited: the pid is free.
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
}

/// `SIGKILL`'s number, as the summary reports it.
fn libc_sigkill() -> i32 {
    rustix::process::Signal::KILL.as_raw()
}

#[test]
fn a_chunk_corrupted_on_disk_is_named_by_verify_and_only_its_pages_raise_sigbus() {
    let c = capture_counter(&["--mib", "8", "--interval-ms", "20"]);
    let (buf, buf_len) = c.buf;
    // A chunk holding pages of the counter's buffer only, in the middle of it.
    let file = snapshot_format::ImageFile::open(&c.img).expect("open the image");
    let (victim, entry, bad) = (0..file.chunks().len() as u32)
        .find_map(|i| {
            let backing = file.chunk_backing(i);
            let inside = backing.iter().all(|(_, run)| {
                run.start >= buf + buf_len / 4 && run.start + run.len <= buf + buf_len * 3 / 4
            });
            (inside && !backing.is_empty()).then(|| {
                let pages: Vec<(u64, u64)> = backing
                    .iter()
                    .map(|(_, run)| (run.start, run.start + run.len))
                    .collect();
                (i, file.chunks()[i as usize], pages)
            })
        })
        .expect("a chunk in the middle of the buffer");
    drop(file);
    let mut bytes = std::fs::read(&c.img).expect("read the image");
    bytes[(entry.offset + u64::from(entry.stored_len) / 2) as usize] ^= 0x55;
    std::fs::write(&c.img, &bytes).expect("write the damaged image");

    // verify names it: its index and file offset; exit status 1.
    let out = lazarus(&[&"verify", &c.img]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("bad chunk {victim} ")), "{err}");
    assert!(
        err.contains(&format!("file offset {}", entry.offset)),
        "{err}"
    );
    assert!(err.contains("1 problem found"), "{err}");

    // The structure is sound, so the restore goes ahead; the process is left stopped
    // so that its memory can be read first.
    let mut args = c.restore_args();
    args.extend(["--stopped", "--no-prefetch", "--no-working-set", "--json"].map(String::from));
    let mut agent = Agent::spawn(&args);
    let started: serde_json::Value = serde_json::from_str(&agent.line()).expect("JSON");
    let pid = started["pid"].as_i64().expect("pid") as i32;
    let process = Process::new(pid);
    let image = snapshot_format::Image::open(&c.img).expect("open the image");
    let mut reader = image.range_reader().expect("reader");
    let memory = tracee::ProcessMemory::new(pid);
    let (mut good, mut poisoned) = (0, 0);
    let mut got = vec![0u8; PAGE];
    let mut want = vec![0u8; PAGE];
    for addr in (buf..buf + buf_len).step_by(PAGE) {
        let in_bad = bad.iter().any(|&(lo, hi)| (lo..hi).contains(&addr));
        let read = memory.read(addr, &mut got);
        if in_bad {
            // Poisoned: no bytes at all, never wrong ones.
            assert!(
                read.is_err(),
                "page {addr:#x} of the bad chunk was readable"
            );
            poisoned += 1;
        } else {
            read.unwrap_or_else(|e| panic!("page {addr:#x}: {e}"));
            reader.read(addr, &mut want).expect("read the image");
            assert!(got == want, "page {addr:#x} differs from the image");
            good += 1;
        }
    }
    assert!(
        poisoned > 0 && good > poisoned,
        "{poisoned} bad, {good} good"
    );
    // Running, the counter reads its whole buffer: it dies of SIGBUS at the bad chunk
    // and never reports a corruption.
    rustix::process::pidfd_send_signal(&process.pidfd, rustix::process::Signal::CONT)
        .expect("continue");
    let summary: serde_json::Value = serde_json::from_str(&agent.line()).expect("JSON");
    assert!(agent.wait().success());
    assert_eq!(
        summary["exit"]["signal"],
        rustix::process::Signal::BUS.as_raw(),
        "{summary}"
    );
    assert!(
        summary["stats"]["faults"]["poison"].as_u64() >= Some(1),
        "{summary}"
    );
    let log = std::fs::read_to_string(c.file("out.log")).unwrap_or_default();
    assert!(!log.contains("CORRUPT"), "{log}");
}

/// Page size of the captured processes.
const PAGE: usize = 4096;
