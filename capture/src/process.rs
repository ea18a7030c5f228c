//! [`capture_process`] and the steps it shares with
//! [`capture_self_ranges`](crate::capture_self_ranges).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use rustix::event::{PollFd, PollFlags, poll};
use snapshot_format::process::VmaFlags;
use snapshot_format::{ImageWriter, ProcessMetadata, RegionInfo};
use tracee::{SeizeError, SeizeOptions, SeizedProcess};

use crate::classify::{self, Backing, Plan};
use crate::error::{CaptureError, PermissionReason};
use crate::options::{AfterCapture, CaptureObserver, CaptureOptions, CaptureReport, Stage};
use crate::pagemap::{PAGE, Pagemap};
use crate::pages::{CopyError, PageCopier, Source};
use crate::smaps::{self, Vma};
use crate::state::{self, proc_error, read_small};

/// Captures process `pid` into `opts.output`: freezes it, reads its state, layout and
/// memory, writes the image, and lets the process go (or kills it once the image is
/// safe).
///
/// ```text
/// create the image writer (temporary file)     unwritable output fails here, untouched
/// seize: every thread PTRACE_SEIZEd + stopped  ── frozen from here ──────────────┐
/// state: registers, xstate, ... per thread;                                      │
///        remote rt_sigaction / brk / prctl / sigaltstack (scratch mapped, unmapped)
///        /proc: stat, status, auxv, exe, cwd, fds (+kcmp), prlimit               │
/// layout: /proc/PID/smaps → classified regions (after the remote calls)          │
/// memory: pagemap → process_vm_readv batches → writer (workers compress)         │
/// leave running: detach ───────────────────────────────────────────────────────┘
///                finish (last chunks, index, footer, rename, fsync)
/// --kill:        finish, then SIGKILL  ────────────────────────────────────────┘
/// ```
///
/// On every error the seized process is dropped (every thread detached: it continues
/// where it was) and so is the writer (its temporary file is removed): no image, a
/// running process. An error caused by the process dying is reported as
/// [`CaptureError::Exited`].
///
/// `docs/CAPTURE.md` in the repository is the user documentation.
pub fn capture_process(
    pid: i32,
    opts: &CaptureOptions,
    observer: &mut dyn CaptureObserver,
) -> Result<CaptureReport, CaptureError> {
    let started = Instant::now();
    opts.validate()?;
    let mut writer = ImageWriter::create(&opts.output, opts.writer_options())
        .map_err(|e| CaptureError::output(&opts.output, e))?;
    let freeze_started = Instant::now();
    let captured_at = SystemTime::now();
    let mut process = SeizedProcess::seize(pid, SeizeOptions::default().timeout(opts.timeout))
        .map_err(|e| seize_error(pid, e))?;
    let tids = process.tids();
    observer.stage(Stage::Frozen { pid, tids: &tids });

    let mut phase = "reading its state";
    let read = capture_frozen(
        &mut process,
        &mut writer,
        &opts.output,
        captured_at,
        observer,
        &mut phase,
    )
    .map_err(|e| explain(&process, e, phase))?;
    observer.stage(Stage::MemoryRead);

    let (image, frozen, killed) = match opts.after {
        AfterCapture::LeaveRunning => {
            process
                .detach()
                .map_err(|source| CaptureError::Detach { pid, source })?;
            let frozen = freeze_started.elapsed();
            observer.stage(Stage::Released);
            let image = writer
                .finish()
                .map_err(|e| CaptureError::output(&opts.output, e))?;
            (image, frozen, false)
        }
        AfterCapture::Kill => {
            // Still frozen: the process must not run past the state in the image.
            let image = writer
                .finish()
                .map_err(|e| CaptureError::output(&opts.output, e))?;
            process
                .kill()
                .map_err(|source| CaptureError::Kill { pid, source })?;
            let frozen = freeze_started.elapsed();
            observer.stage(Stage::Released);
            (image, frozen, true)
        }
    };
    Ok(CaptureReport {
        pid,
        image,
        threads: read.threads,
        regions: read.regions,
        bytes_read: read.bytes_read,
        frozen,
        elapsed: started.elapsed(),
        killed,
    })
}

/// What reading the frozen process produced.
struct Read {
    threads: usize,
    regions: usize,
    bytes_read: u64,
}

/// Everything done while the process is frozen: state, layout, memory.
fn capture_frozen(
    process: &mut SeizedProcess,
    writer: &mut ImageWriter,
    output: &Path,
    captured_at: SystemTime,
    observer: &mut dyn CaptureObserver,
    phase: &mut &'static str,
) -> Result<Read, CaptureError> {
    let pid = process.pid();
    let tids = process.tids();
    // A zombie leader (it called pthread_exit) has no mm: use a live thread's /proc.
    let mm_tid = if tids.contains(&pid) {
        pid
    } else {
        *tids.first().ok_or(CaptureError::Exited {
            pid,
            during: "freezing it",
        })?
    };
    let dir = PathBuf::from(format!("/proc/{pid}/task/{mm_tid}"));
    let mut state = state::collect(process, mm_tid)?;
    observer.stage(Stage::StateRead);

    *phase = "reading its memory layout";
    let vmas = smaps::read(&dir.join("smaps")).map_err(|e| CaptureError::Proc {
        pid,
        what: "smaps".to_owned(),
        source: std::io::Error::other(e),
    })?;
    let layout = plan_layout(pid, vmas)?;
    state.vma_flags = layout
        .iter()
        .map(|(vma, plan)| VmaFlags {
            start: plan.info.start,
            flags: vma.vm_flags.clone(),
        })
        .collect();
    let threads = state.threads.len();
    writer.set_metadata(ProcessMetadata {
        pid: Some(pid as u32),
        cmdline: cmdline(&dir).map_err(proc_error(pid, "cmdline"))?,
        exe: std::fs::read_link(dir.join("exe")).ok(),
        kernel_release: Some(kernel_release()),
        page_size: Some(PAGE as u32),
        captured_at: Some(captured_at),
        process: Some(state),
        ..ProcessMetadata::default()
    });
    let regions: Vec<RegionInfo> = layout.iter().map(|(_, p)| p.info.clone()).collect();
    observer.stage(Stage::Layout { regions: &regions });

    *phase = "reading its memory";
    let job = MemoryJob {
        memory: process.memory(),
        pid,
        dir: &dir,
        output,
    };
    let bytes_read = copy_memory(&job, &layout, writer, observer)?;
    // A process killed while frozen may have shown us an empty or partial layout: what
    // was read is only trustworthy if it is still alive now.
    if has_exited(process) {
        return Err(CaptureError::Exited { pid, during: phase });
    }
    Ok(Read {
        threads,
        regions: regions.len(),
        bytes_read,
    })
}

/// Classifies every mapping (dropping `[vsyscall]`); a mapping that cannot be captured
/// faithfully fails the capture.
pub(crate) fn plan_layout(pid: i32, vmas: Vec<Vma>) -> Result<Vec<(Vma, Plan)>, CaptureError> {
    let mut layout = Vec::with_capacity(vmas.len());
    for vma in vmas {
        let file = (vma.inode != 0)
            .then(|| classify::mapped_file(pid, &vma))
            .flatten();
        let plan =
            classify::classify(&vma, file.as_ref()).map_err(|r| CaptureError::Unsupported {
                pid,
                start: r.start,
                end: r.end,
                reason: r.reason,
            })?;
        if plan.backing != Backing::Skip {
            layout.push((vma, plan));
        }
    }
    Ok(layout)
}

/// Where pages are read from and written to.
pub(crate) struct MemoryJob<'a> {
    pub(crate) memory: &'a tracee::ProcessMemory,
    pub(crate) pid: i32,
    /// `/proc/PID/task/TID` of a live thread (for pagemap).
    pub(crate) dir: &'a Path,
    /// The image path (for error messages).
    pub(crate) output: &'a Path,
}

/// Writes every region of `layout`, reading pages through `job`; returns the bytes
/// read.
pub(crate) fn copy_memory(
    job: &MemoryJob<'_>,
    layout: &[(Vma, Plan)],
    writer: &mut ImageWriter,
    observer: &mut dyn CaptureObserver,
) -> Result<u64, CaptureError> {
    let MemoryJob {
        memory,
        pid,
        dir,
        output,
    } = *job;
    let total: u64 = layout.iter().map(|(_, p)| p.info.len).sum();
    let mut source = Source {
        memory,
        pid,
        pagemap: Pagemap::open(&dir.join("pagemap")).map_err(proc_error(pid, "pagemap"))?,
    };
    let mut copier = PageCopier::new();
    for (index, (vma, plan)) in layout.iter().enumerate() {
        writer
            .begin_region(plan.info.clone())
            .map_err(|e| CaptureError::output(output, e))?;
        let mut progress = |w: &ImageWriter| observer.progress(w.progress().bytes(), total);
        copier
            .copy_region(&mut source, vma, plan, writer, &mut progress)
            .map_err(|e| copy_error(pid, output, e))?;
        observer.stage(Stage::RegionWritten {
            index,
            region: &plan.info,
        });
    }
    Ok(copier.bytes_read)
}

fn copy_error(pid: i32, output: &Path, e: CopyError) -> CaptureError {
    match e {
        CopyError::Memory(source) => CaptureError::Memory { pid, source },
        CopyError::Unreadable { addr, len, source } => CaptureError::Unreadable {
            pid,
            addr,
            len,
            source,
        },
        CopyError::Pagemap(source) => CaptureError::Proc {
            pid,
            what: "pagemap".to_owned(),
            source,
        },
        CopyError::Write(source) => CaptureError::output(output, source),
    }
}

/// `/proc/PID/cmdline` as lossy strings.
fn cmdline(dir: &Path) -> std::io::Result<Vec<String>> {
    let bytes = read_small(&dir.join("cmdline"))?;
    Ok(bytes
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect())
}

pub(crate) fn kernel_release() -> String {
    rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned()
}

/// How long an error path waits for signs that the process is dying, before reporting
/// the error itself: a process killed while frozen makes our next request fail at once,
/// but its threads take a moment to exit.
const DEATH_GRACE: Duration = Duration::from_secs(1);

/// Reports an error caused by the process dying as [`CaptureError::Exited`].
fn explain(process: &SeizedProcess, error: CaptureError, during: &'static str) -> CaptureError {
    let could_be_death = !matches!(
        error,
        CaptureError::DiskFull { .. }
            | CaptureError::Output { .. }
            | CaptureError::Unsupported { .. }
            | CaptureError::InvalidOptions(_)
    );
    if !could_be_death {
        return error;
    }
    let deadline = Instant::now() + DEATH_GRACE;
    let gone = error.means_gone()
        || loop {
            if has_exited(process) {
                break true;
            }
            if Instant::now() >= deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
    if gone {
        log::debug!("process {} is gone: {error}", process.pid());
        CaptureError::Exited {
            pid: process.pid(),
            during,
        }
    } else {
        error
    }
}

/// `SIGKILL`'s bit in the pending-signal masks.
const SIGKILL_BIT: u64 = 1 << (libc::SIGKILL - 1);

/// Whether the seized process has died or is dying (only SIGKILL ends a process whose
/// threads are all stopped).
fn has_exited(process: &SeizedProcess) -> bool {
    let pidfd = process.pidfd();
    let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
    let zero = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // The pidfd turns readable once the whole group is gone; a leader that died while
    // other (traced) threads wait for us to reap them is already a zombie; a process
    // being killed has SIGKILL pending until its threads get to it.
    matches!(poll(&mut fds, Some(&zero)), Ok(n) if n > 0)
        || procfs::process::Process::new(process.pid())
            .and_then(|p| p.status())
            .map_or(true, |s| {
                s.state.starts_with(['Z', 'X']) || (s.sigpnd | s.shdpnd) & SIGKILL_BIT != 0
            })
}

fn seize_error(pid: i32, e: SeizeError) -> CaptureError {
    match e {
        SeizeError::NoSuchProcess { .. } | SeizeError::InvalidPid { .. } => {
            CaptureError::NoSuchProcess { pid }
        }
        SeizeError::AlreadyTraced { tid, tracer, .. } => CaptureError::NotPermitted {
            pid,
            reason: PermissionReason::TracedBy { tid, tracer },
        },
        SeizeError::NotPermitted { .. } => CaptureError::NotPermitted {
            pid,
            reason: permission_reason(pid),
        },
        SeizeError::Exited { .. } => CaptureError::Exited {
            pid,
            during: "freezing it",
        },
        source => CaptureError::Seize { pid, source },
    }
}

/// `PF_KTHREAD` in the task flags of `/proc/PID/stat`.
const PF_KTHREAD: u32 = 0x0020_0000;

/// `CAP_SYS_PTRACE`'s bit in the capability sets.
const CAP_SYS_PTRACE: u32 = 19;

/// Why the kernel refused to let us trace `pid` (after `PTRACE_SEIZE` said `EPERM` and
/// the thread was not traced by someone else).
fn permission_reason(pid: i32) -> PermissionReason {
    let target = procfs::process::Process::new(pid)
        .and_then(|p| p.stat())
        .ok();
    if target.as_ref().is_some_and(|s| s.flags & PF_KTHREAD != 0) {
        return PermissionReason::KernelThread;
    }
    let ours = procfs::process::Process::myself()
        .and_then(|p| p.status())
        .ok();
    let can_ptrace = ours
        .as_ref()
        .is_some_and(|s| s.capeff >> CAP_SYS_PTRACE & 1 == 1);
    let scope = read_small(Path::new("/proc/sys/kernel/yama/ptrace_scope"))
        .ok()
        .and_then(|b| String::from_utf8_lossy(&b).trim().parse::<u32>().ok());
    match scope {
        Some(3) => return PermissionReason::PtraceScope { scope: 3 },
        Some(2) if !can_ptrace => return PermissionReason::PtraceScope { scope: 2 },
        Some(1) if !can_ptrace && !is_descendant(pid) => {
            return PermissionReason::PtraceScope { scope: 1 };
        }
        _ => {}
    }
    let target_uid = procfs::process::Process::new(pid)
        .and_then(|p| p.status())
        .ok()
        .map(|s| s.ruid);
    let uid = rustix::process::geteuid().as_raw();
    match target_uid {
        Some(target_uid) if !can_ptrace && target_uid != uid => {
            PermissionReason::OtherUser { uid, target_uid }
        }
        _ => PermissionReason::Refused,
    }
}

/// Most parent links followed when checking ancestry.
const MAX_ANCESTRY: usize = 4096;

/// Whether `pid` descends from the calling process.
fn is_descendant(pid: i32) -> bool {
    let me = std::process::id() as i32;
    let mut at = pid;
    for _ in 0..MAX_ANCESTRY {
        let Ok(stat) = procfs::process::Process::new(at).and_then(|p| p.stat()) else {
            return false;
        };
        if stat.ppid == me {
            return true;
        }
        if stat.ppid <= 1 {
            return false;
        }
        at = stat.ppid;
    }
    false
}
