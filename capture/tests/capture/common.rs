//! Shared by the capture tests: an observer that reads the frozen process's memory (and
//! the files behind its file regions) while it is still frozen, and a checker that
//! compares an image with it page by page.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use capture::{AfterCapture, CaptureObserver, CaptureOptions, CaptureReport, Stage};
use fixtures::{Fixture, Line};
use snapshot_format::process::ThreadState;
use snapshot_format::{Image, PageSource, ProcessMetadata, RegionInfo, RegionKind};
use tracee::GeneralRegisters;

/// Bound on every wait of the tests.
pub(crate) const T: Duration = Duration::from_secs(30);

pub(crate) const PAGE: u64 = 4096;

/// One region's bytes as read from the frozen process; `None` for pages that could
/// not be read (and the whole region for `[vvar]`-like regions).
pub(crate) struct RegionBytes {
    pub(crate) bytes: Vec<u8>,
    pub(crate) readable: Vec<bool>,
}

/// A hook run from [`Stage::MemoryRead`] before the memory is read back (the process
/// is frozen, its pid is given).
pub(crate) type Hook = Box<dyn FnMut(u32)>;

/// Records what the process looked like while frozen.
#[derive(Default)]
pub(crate) struct Frozen {
    pub(crate) pid: u32,
    pub(crate) tids: Vec<i32>,
    pub(crate) maps_at_freeze: String,
    pub(crate) maps_after_read: String,
    pub(crate) regions: Vec<RegionInfo>,
    pub(crate) memory: Vec<RegionBytes>,
    /// For file regions: the file's bytes behind the region (past its end: empty).
    pub(crate) files: HashMap<u64, Vec<u8>>,
    pub(crate) at_memory_read: Option<Hook>,
    pub(crate) stages: Vec<&'static str>,
    pub(crate) last_progress: Option<(u64, u64)>,
}

fn maps(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("read maps")
}

/// Reads `len` bytes at `addr` of `pid` through /proc/PID/mem, page by page where the
/// whole range fails.
fn read_region(pid: u32, addr: u64, len: u64) -> RegionBytes {
    let mem = File::open(format!("/proc/{pid}/mem")).expect("open /proc/PID/mem");
    let mut bytes = vec![0u8; len as usize];
    let pages = (len / PAGE) as usize;
    if mem.read_exact_at(&mut bytes, addr).is_ok() {
        return RegionBytes {
            bytes,
            readable: vec![true; pages],
        };
    }
    let mut readable = vec![false; pages];
    for (i, page) in bytes.chunks_exact_mut(PAGE as usize).enumerate() {
        readable[i] = mem.read_exact_at(page, addr + i as u64 * PAGE).is_ok();
        if !readable[i] {
            page.fill(0);
        }
    }
    RegionBytes { bytes, readable }
}

impl CaptureObserver for Frozen {
    fn stage(&mut self, stage: Stage<'_>) {
        match stage {
            Stage::Frozen { pid, tids } => {
                self.pid = pid as u32;
                self.tids = tids.to_vec();
                self.maps_at_freeze = maps(self.pid);
                self.stages.push("frozen");
            }
            Stage::StateRead => self.stages.push("state"),
            Stage::Layout { regions } => {
                self.regions = regions.to_vec();
                self.stages.push("layout");
            }
            Stage::RegionWritten { .. } => {}
            Stage::MemoryRead => {
                self.stages.push("memory");
                self.maps_after_read = maps(self.pid);
                if let Some(hook) = self.at_memory_read.as_mut() {
                    hook(self.pid);
                }
                for r in &self.regions {
                    let unreadable = matches!(r.kind, RegionKind::Vvar | RegionKind::VvarVclock);
                    self.memory.push(if unreadable {
                        RegionBytes {
                            bytes: vec![0; r.len as usize],
                            readable: vec![false; (r.len / PAGE) as usize],
                        }
                    } else {
                        read_region(self.pid, r.start, r.len)
                    });
                    if let Some(f) = &r.file
                        && matches!(r.kind, RegionKind::FilePrivate | RegionKind::FileShared)
                    {
                        let file = File::open(&f.path).expect("open a mapped file");
                        let mut bytes = vec![0u8; r.len as usize];
                        let mut got = 0;
                        while got < bytes.len() {
                            match file.read_at(&mut bytes[got..], f.offset + got as u64) {
                                Ok(0) => break,
                                Ok(n) => got += n,
                                Err(e) => panic!("read {}: {e}", f.path.display()),
                            }
                        }
                        bytes.truncate(got);
                        self.files.insert(r.start, bytes);
                    }
                }
            }
            Stage::Released => self.stages.push("released"),
            _ => {}
        }
    }

    fn progress(&mut self, done: u64, total: u64) {
        if let Some((d, t)) = self.last_progress {
            assert!(done >= d && total == t, "progress went backwards");
        }
        self.last_progress = Some((done, total));
    }
}

/// Bytes per run kind of one region.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Runs {
    pub(crate) data: u64,
    pub(crate) zero: u64,
    pub(crate) file: u64,
}

/// Checks every page of the image against the frozen process: data runs hold exactly
/// its bytes, zero runs cover only zero memory, file runs only memory equal to the file.
/// Returns the run totals of each region.
pub(crate) fn check_image(path: &Path, frozen: &Frozen) -> Vec<Runs> {
    let image = Image::open(path).expect("open the image");
    assert_eq!(
        image.regions(),
        frozen.regions.as_slice(),
        "the image holds the regions of the layout"
    );
    let mut reader = image.range_reader().expect("range reader");
    let mut totals = Vec::new();
    for (i, region) in image.regions().iter().enumerate() {
        let mem = &frozen.memory[i];
        let mut runs = Runs::default();
        for ext in image.region_extents(i) {
            let off = (ext.start - region.start) as usize;
            let len = ext.len as usize;
            let first_page = off / PAGE as usize;
            let pages = len / PAGE as usize;
            let readable = &mem.readable[first_page..first_page + pages];
            let memory = &mem.bytes[off..off + len];
            match ext.source {
                PageSource::Zero => {
                    runs.zero += ext.len;
                    for (p, page) in memory.chunks_exact(PAGE as usize).enumerate() {
                        assert!(
                            !readable[p] || page.iter().all(|&b| b == 0),
                            "zero run over non-zero memory at {:#x} ({:?} region {:#x})",
                            ext.start + p as u64 * PAGE,
                            region.kind,
                            region.start
                        );
                    }
                }
                PageSource::Chunk { .. } => {
                    runs.data += ext.len;
                    assert!(
                        readable.iter().all(|&r| r),
                        "data at {:#x} that the test could not read",
                        ext.start
                    );
                    let mut stored = vec![0u8; len];
                    reader.read(ext.start, &mut stored).expect("read the image");
                    if stored != memory {
                        let at = stored
                            .iter()
                            .zip(memory)
                            .position(|(a, b)| a != b)
                            .unwrap_or(0);
                        panic!(
                            "captured bytes differ from the process at {:#x} ({:?} region {:#x})",
                            ext.start + at as u64,
                            region.kind,
                            region.start
                        );
                    }
                }
                PageSource::File { offset, .. } => {
                    runs.file += ext.len;
                    let file = frozen
                        .files
                        .get(&region.start)
                        .expect("file bytes recorded");
                    let f = region.file.as_ref().expect("file run in a file region");
                    let at = (offset - f.offset) as usize;
                    for (p, page) in memory.chunks_exact(PAGE as usize).enumerate() {
                        let o = at + p * PAGE as usize;
                        if !readable[p] || o >= file.len() {
                            continue; // past the end of the file: SIGBUS there anyway
                        }
                        let end = (o + PAGE as usize).min(file.len());
                        assert_eq!(
                            &page[..end - o],
                            &file[o..end],
                            "file run at {:#x} over memory that differs from the file",
                            ext.start + p as u64 * PAGE
                        );
                    }
                }
            }
        }
        totals.push(runs);
    }
    totals
}

/// A capture whose image was checked against the frozen process.
pub(crate) struct Checked {
    pub(crate) report: CaptureReport,
    pub(crate) frozen: Frozen,
    pub(crate) runs: Vec<Runs>,
    pub(crate) meta: ProcessMetadata,
}

/// Captures `pid` with `opts`, observing with `frozen`, and checks the image page by
/// page ([`check_image`]).
pub(crate) fn capture_checked(pid: u32, opts: &CaptureOptions, mut frozen: Frozen) -> Checked {
    let report = capture::capture_process(pid as i32, opts, &mut frozen).expect("capture");
    let runs = check_image(&report.image.path, &frozen);
    let meta = metadata(&report.image.path);
    Checked {
        report,
        frozen,
        runs,
        meta,
    }
}

/// The image's metadata.
pub(crate) fn metadata(path: &Path) -> ProcessMetadata {
    Image::open(path)
        .expect("open the image")
        .metadata()
        .clone()
}

/// A thread's general registers, decoded.
pub(crate) fn registers(thread: &ThreadState) -> GeneralRegisters {
    let bytes: [u8; GeneralRegisters::LEN] = thread
        .regs
        .as_slice()
        .try_into()
        .expect("NT_PRSTATUS length");
    GeneralRegisters::from_bytes(&bytes)
}

/// The region holding `addr`.
pub(crate) fn region_at(regions: &[RegionInfo], addr: u64) -> &RegionInfo {
    regions
        .iter()
        .find(|r| r.start <= addr && addr < r.end())
        .unwrap_or_else(|| panic!("{addr:#x} is in no region"))
}

/// Options writing to `dir/name` with two workers (the default of this machine).
pub(crate) fn options(dir: &Path, name: &str) -> CaptureOptions {
    CaptureOptions {
        workers: 2,
        timeout: T,
        ..CaptureOptions::new(dir.join(name))
    }
}

/// Options that kill the process after the capture.
pub(crate) fn kill_options(dir: &Path, name: &str) -> CaptureOptions {
    CaptureOptions {
        after: AfterCapture::Kill,
        ..options(dir, name)
    }
}

/// `TracerPid` of a process.
pub(crate) fn tracer_of(pid: u32) -> i32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("TracerPid line")
}

/// Waits for a `TICK` (of thread `thread`, if given) numbered above `after`: the
/// process runs on, and verified its memory on the way (a `CORRUPT` line fails the
/// wait).
pub(crate) fn ticks_after(fx: &mut Fixture, thread: Option<u64>, after: u64) -> Line {
    fx.wait_line(
        |l| l.is("TICK") && thread.is_none_or(|k| l.u64("thread") == k) && l.u64("n") > after,
        T,
    )
}

/// The files in `dir` (to check nothing is left behind).
pub(crate) fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("dir entry").path())
        .collect();
    v.sort();
    v
}

/// Signals with a handler (bit set) and ignored signals, from /proc/PID/status.
pub(crate) fn caught_and_ignored(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let mask = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .expect("signal mask line")
    };
    (mask("SigCgt:"), mask("SigIgn:"))
}

/// Bytes of `[start, start + len)` the image stores as data (chunks).
pub(crate) fn data_bytes_in(image: &Image, start: u64, len: u64) -> u64 {
    let mut at = start;
    let mut data = 0;
    while at < start + len {
        let loc = image.locate(at).expect("inside a region");
        let n = loc.len.min(start + len - at);
        if matches!(loc.source, PageSource::Chunk { .. }) {
            data += n;
        }
        at += n;
    }
    data
}

/// Waits until process `pid` is blocked in system call `nr` (`/proc/PID/syscall`).
pub(crate) fn wait_blocked_in(pid: u32, nr: i64) {
    let deadline = std::time::Instant::now() + T;
    loop {
        let text = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
        if text.split(' ').next().and_then(|n| n.parse::<i64>().ok()) == Some(nr) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "process {pid} did not block in system call {nr} within {T:?} (now: {text:?})"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits until process `pid`'s state (`/proc/PID/stat`) is `state` (`T`: stopped).
pub(crate) fn wait_state(pid: u32, state: char) {
    let deadline = std::time::Instant::now() + T;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let now = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next());
        if now == Some(state) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "process {pid} did not reach state {state} within {T:?} (now {now:?})"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}
