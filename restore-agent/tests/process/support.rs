//! Shared by the process-restore tests: capturing a running fixture, restoring it with
//! its output in files, comparing a restored process's memory with the image byte for
//! byte, and guards that leave no process behind on any failure.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use capture::{AfterCapture, CaptureOptions, capture_process};
use fixtures::{Fixture, Line, LogTail};
use restore_agent::process::{ProcessRestoreError, ProcessRestoreOptions, Stdio, open_stdio_file};
use restore_agent::{RestoredProcess, ServerOptions, WorkingSetOptions, restore_process};
use snapshot_format::{Image, PageSource, RegionKind};

/// Bound on every wait of these tests.
pub(crate) const T: Duration = Duration::from_secs(30);

/// A fixture captured with `--kill`, and what it printed.
pub(crate) struct Captured {
    pub(crate) dir: tempfile::TempDir,
    /// Other directories the test keeps until the end.
    kept: Vec<tempfile::TempDir>,
    pub(crate) image: Arc<Image>,
    /// The original's pid.
    pub(crate) pid: i32,
    /// Every line the original printed, READY first.
    pub(crate) lines: Vec<Line>,
}

impl Captured {
    /// The last line with `tag` the original printed.
    pub(crate) fn last(&self, tag: &str) -> Line {
        self.lines
            .iter()
            .rev()
            .find(|l| l.is(tag))
            .unwrap_or_else(|| panic!("the original printed no {tag} line"))
            .clone()
    }

    /// An image captured some other way (no lines recorded).
    pub(crate) fn from_image(dir: tempfile::TempDir, image: Arc<Image>, pid: i32) -> Self {
        Self {
            dir,
            kept: Vec::new(),
            image,
            pid,
            lines: Vec::new(),
        }
    }

    /// Keeps `dir` until the end of the test.
    pub(crate) fn keep(&mut self, dir: tempfile::TempDir) {
        self.kept.push(dir);
    }

    /// A path in the test's directory.
    pub(crate) fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Starts fixture `name` with `args`, waits for its READY line and then for a line
/// accepted by `until`, captures it (killing it once the image is written) and reaps
/// it, keeping every line it printed.
pub(crate) fn capture_fixture(
    name: &str,
    args: &[&str],
    until: impl Fn(&Line) -> bool,
) -> Captured {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut fx = spawn(name, args);
    let mut lines = vec![fx.wait_ready(T)];
    let last = fx.wait_line(
        |l| {
            let done = until(l);
            if !done {
                lines.push(l.clone());
            }
            done
        },
        T,
    );
    lines.push(last);
    capture_running(fx, dir, lines)
}

/// Starts fixture `name` with `args`, with no descriptors but stdin, stdout and stderr
/// (the test harness's others, such as a jobserver pipe, would be unrestorable).
pub(crate) fn spawn(name: &str, args: &[&str]) -> Fixture {
    let mut command = std::process::Command::new(fixtures::binary(name));
    command.args(args);
    spawn_command(name, command)
}

/// Starts `command` as a fixture (see [`spawn`]); `name` labels messages.
pub(crate) fn spawn_command(name: &str, mut command: std::process::Command) -> Fixture {
    use std::os::unix::process::CommandExt;
    let close_others = || {
        // SAFETY: close_range takes integers; it closes descriptors of the child, after
        // its standard streams are in place.
        let ret = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
        if ret != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the closure makes one system call, which is async-signal-safe.
    unsafe { command.pre_exec(close_others) };
    Fixture::from_command(name, command).expect("spawn the fixture")
}

/// Captures the running `fx` (see [`capture_fixture`]).
pub(crate) fn capture_running(
    mut fx: Fixture,
    dir: tempfile::TempDir,
    mut lines: Vec<Line>,
) -> Captured {
    let pid = fx.pid() as i32;
    let path = dir.path().join("img.lzr");
    let opts = CaptureOptions {
        after: AfterCapture::Kill,
        workers: 1,
        ..CaptureOptions::new(&path)
    };
    capture_process(pid, &opts, &mut ()).expect("capture");
    // Everything it printed until it was frozen (the capture killed and reaped it:
    // its pid is free again).
    while let Ok(line) = fx.try_wait_line(|_| true, Duration::from_secs(5)) {
        lines.push(line);
    }
    let image = Arc::new(Image::open(&path).expect("open the image"));
    Captured {
        dir,
        kept: Vec::new(),
        image,
        pid,
        lines,
    }
}

/// Restore options for tests: stdin from /dev/null, stdout and stderr to files in the
/// test's directory, no working-set file.
pub(crate) fn options(c: &Captured) -> ProcessRestoreOptions {
    ProcessRestoreOptions {
        stdio: [
            Stdio::Null,
            Stdio::Fd(open_stdio_file(1, &c.file("out.log")).expect("stdout file")),
            Stdio::Fd(open_stdio_file(2, &c.file("err.log")).expect("stderr file")),
        ],
        server: ServerOptions::default(),
        working_set: WorkingSetOptions::NONE,
        ..ProcessRestoreOptions::default()
    }
}

/// Follows the restored process's stdout.
pub(crate) fn tail(c: &Captured, pid: i32) -> LogTail {
    LogTail::new(c.file("out.log")).watch_pid(pid as u32)
}

/// Restores `c` with `opts`.
pub(crate) fn restore(c: &Captured, opts: ProcessRestoreOptions) -> RestoredProcess {
    restore_result(c, opts).expect("restore")
}

/// Restores `c` with `opts`, returning the error if it fails.
pub(crate) fn restore_result(
    c: &Captured,
    opts: ProcessRestoreOptions,
) -> Result<RestoredProcess, ProcessRestoreError> {
    restore_process(Arc::clone(&c.image), opts)
}

/// Sends `signal` to `pid`.
pub(crate) fn signal(pid: i32, signal: i32) {
    // SAFETY: kill(2) with integer arguments.
    let ret = unsafe { libc::kill(pid, signal) };
    assert_eq!(ret, 0, "kill({pid}, {signal})");
}

/// A restored process that runs alone (its restore finished): killed and reaped when
/// dropped.
pub(crate) struct Alone {
    pidfd: OwnedFd,
}

impl Alone {
    pub(crate) fn new(pid: i32) -> Self {
        let pidfd = rustix::process::pidfd_open(
            rustix::process::Pid::from_raw(pid).expect("pid"),
            rustix::process::PidfdFlags::empty(),
        )
        .expect("pidfd_open");
        Self { pidfd }
    }
}

impl Drop for Alone {
    fn drop(&mut self) {
        let _ = rustix::process::pidfd_send_signal(&self.pidfd, rustix::process::Signal::KILL);
        let deadline = Instant::now() + T;
        while Instant::now() < deadline {
            match rustix::process::waitid(
                rustix::process::WaitId::PidFd(self.pidfd.as_fd()),
                rustix::process::WaitIdOptions::EXITED | rustix::process::WaitIdOptions::NOHANG,
            ) {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    }
}

/// The bytes the image says `len` bytes at `addr` of region `index` hold (data, zeros
/// and, for file pages, the mapped file's bytes).
fn expected_bytes(image: &Image, index: usize, addr: u64, out: &mut [u8]) {
    let mut reader = image.range_reader().expect("reader");
    let end = addr + out.len() as u64;
    for e in image.region_extents(index) {
        let (lo, hi) = (e.start.max(addr), e.end().min(end));
        if lo >= hi {
            continue;
        }
        let dst = &mut out[(lo - addr) as usize..(hi - addr) as usize];
        match e.source {
            PageSource::Zero | PageSource::Chunk { .. } => {
                reader.read(lo, dst).expect("read the image");
            }
            PageSource::File {
                layer,
                region,
                offset,
            } => {
                let f = image.file_mapping(layer, region).expect("file mapping");
                let file = File::open(&f.path).expect("open the mapped file");
                let at = offset + (lo - e.start);
                let size = file.metadata().expect("stat").len();
                dst.fill(0);
                if at < size {
                    let n = dst.len().min((size - at) as usize);
                    file.read_exact_at(&mut dst[..n], at)
                        .expect("read the file");
                }
            }
        }
    }
}

/// Compares every readable region of process `pid` with the image, byte for byte.
/// Reads go through `process_vm_readv`, which waits for the agent to serve a missing
/// page (`/proc/PID/mem` would fail with EIO on it). Returns the bytes compared.
///
/// The threads' rseq areas are left out: the kernel rewrites their `cpu_id` fields
/// whenever a thread returns to user mode (the restore's remote calls do).
pub(crate) fn assert_memory_matches(pid: i32, image: &Image) -> u64 {
    let memory = tracee::ProcessMemory::new(pid);
    let rseq: Vec<(u64, u64)> = image
        .metadata()
        .process
        .as_ref()
        .map(|p| {
            p.threads
                .iter()
                .filter_map(|t| t.rseq)
                .map(|r| (r.abi_pointer, r.abi_pointer + u64::from(r.abi_size)))
                .collect()
        })
        .unwrap_or_default();
    let mut compared = 0;
    for (index, r) in image.regions().iter().enumerate() {
        if !r.prot.read || matches!(r.kind, RegionKind::Vvar | RegionKind::VvarVclock) {
            continue;
        }
        const BLOCK: u64 = 1 << 20;
        let mut at = r.start;
        while at < r.end() {
            let len = (r.end() - at).min(BLOCK) as usize;
            let mut want = vec![0u8; len];
            let mut got = vec![0u8; len];
            expected_bytes(image, index, at, &mut want);
            memory
                .read(at, &mut got)
                .unwrap_or_else(|e| panic!("read {at:#x}+{len:#x} of {pid} ({}): {e}", r.kind));
            for &(lo, hi) in &rseq {
                for a in lo.max(at)..hi.min(at + len as u64) {
                    let i = (a - at) as usize;
                    got[i] = want[i];
                }
            }
            if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
                panic!(
                    "process {pid}, region {:#x}-{:#x} ({}, {:?}): byte {:#x} is {:#x}, the image \
                     has {:#x}",
                    r.start,
                    r.end(),
                    r.kind,
                    r.name,
                    at + i as u64,
                    got[i],
                    want[i]
                );
            }
            compared += len as u64;
            at += len as u64;
        }
    }
    compared
}

/// This process's children (over all its threads).
pub(crate) fn children() -> Vec<String> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task")
        .expect("tasks")
        .flatten()
    {
        if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(list.split_whitespace().map(str::to_owned));
        }
    }
    out.sort();
    out
}
