//! [`capture_self_ranges`].

use std::ops::Range;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use snapshot_format::{ImageWriter, ProcessMetadata};

use crate::classify::{Backing, Plan};
use crate::error::CaptureError;
use crate::options::{AfterCapture, CaptureOptions, CaptureReport};
use crate::pagemap::PAGE;
use crate::process::{MemoryJob, copy_memory, kernel_release, plan_layout};
use crate::smaps::{self, Vma};

/// Captures `ranges` (page-aligned, non-empty, non-overlapping address ranges of the
/// calling process, in any order) into `opts.output`: an image of selected memory of
/// the calling process, for runtimes that snapshot their own heap. `opts.after` must be
/// [`AfterCapture::LeaveRunning`].
///
/// The ranges are classified and read exactly as a process capture reads the same
/// mappings (never-populated pages are not read, zero pages are dropped, private file
/// pages that were never written are file runs, ...), through the same
/// `process_vm_readv` path — a read of an unmapped page is an error, never a crash.
/// Each piece of a range that lies in one mapping becomes one region.
///
/// ```
/// use capture::{CaptureOptions, capture_self_ranges};
///
/// let dir = tempfile::tempdir().unwrap();
/// let heap = vec![7u8; 1 << 20];
/// let page = 4096u64;
/// let start = (heap.as_ptr() as u64).div_ceil(page) * page; // whole pages inside it
/// let range = start..start + 64 * page;
/// let opts = CaptureOptions::new(dir.path().join("heap.lzr"));
/// let report = capture_self_ranges(std::slice::from_ref(&range), &opts).unwrap();
/// assert_eq!(report.image.raw_bytes, 64 * page);
/// assert_eq!(report.image.data_bytes, 64 * page); // every page was sevens
/// ```
///
/// # Consistency
///
/// The calling process is **not** frozen: other threads keep running while the ranges
/// are read, in batches of a few MiB, in address order. A page another thread writes
/// during the capture may be captured before, after or partway through that write (even
/// one 8-byte word may be torn: the kernel's copy is not atomic per word), and two pages
/// are not captured at the same instant. Callers that need a consistent image
/// must keep the ranges unchanged for the duration of the call (stop their mutator
/// threads, or capture memory that is not being written). The image holds no process
/// state ([`ProcessMetadata::process`](snapshot_format::ProcessMetadata::process) is
/// `None`).
pub fn capture_self_ranges(
    ranges: &[Range<u64>],
    opts: &CaptureOptions,
) -> Result<CaptureReport, CaptureError> {
    let started = Instant::now();
    opts.validate()?;
    if opts.after == AfterCapture::Kill {
        return Err(CaptureError::InvalidOptions(
            "a capture of the calling process cannot kill it".to_owned(),
        ));
    }
    let mut sorted = ranges.to_vec();
    sorted.sort_by_key(|r| r.start);
    let invalid = |r: &Range<u64>, reason: &str| CaptureError::InvalidRange {
        start: r.start,
        end: r.end,
        reason: reason.to_owned(),
    };
    for (i, r) in sorted.iter().enumerate() {
        if r.start >= r.end {
            return Err(invalid(r, "empty"));
        }
        if r.start % PAGE != 0 || r.end % PAGE != 0 {
            return Err(invalid(r, "not page aligned"));
        }
        if i > 0 && r.start < sorted[i - 1].end {
            return Err(invalid(r, "overlaps another range"));
        }
    }

    let pid = std::process::id() as i32;
    let mut writer = ImageWriter::create(&opts.output, opts.writer_options())
        .map_err(|e| CaptureError::output(&opts.output, e))?;
    let dir = PathBuf::from(format!("/proc/{pid}"));
    let vmas = smaps::read(&dir.join("smaps")).map_err(|e| CaptureError::Proc {
        pid,
        what: "smaps".to_owned(),
        source: std::io::Error::other(e),
    })?;
    // Only the mappings the ranges touch are classified.
    let touched: Vec<Vma> = vmas
        .into_iter()
        .filter(|v| sorted.iter().any(|r| r.start < v.end && v.start < r.end))
        .collect();
    let mappings = plan_layout(pid, touched)?;
    let mut layout: Vec<(Vma, Plan)> = Vec::new();
    for r in &sorted {
        let mut at = r.start;
        for (vma, plan) in &mappings {
            if vma.end <= at || vma.start >= r.end {
                continue;
            }
            if vma.start > at {
                break;
            }
            let end = vma.end.min(r.end);
            layout.push((vma.clone(), plan.clip(at, end)));
            at = end;
        }
        if at < r.end {
            return Err(invalid(
                &(at..r.end),
                "not mapped (or a mapping that cannot be captured)",
            ));
        }
    }
    if let Some((vma, _)) = layout.iter().find(|(_, p)| p.backing == Backing::Skip) {
        return Err(invalid(
            &(vma.start..vma.end),
            "[vsyscall] cannot be captured",
        ));
    }

    writer.set_metadata(ProcessMetadata {
        pid: Some(pid as u32),
        cmdline: std::env::args().collect(),
        exe: std::env::current_exe().ok(),
        kernel_release: Some(kernel_release()),
        page_size: Some(PAGE as u32),
        captured_at: Some(SystemTime::now()),
        ..ProcessMetadata::default()
    });
    let memory = tracee::ProcessMemory::new(pid);
    let job = MemoryJob {
        memory: &memory,
        pid,
        dir: &dir,
        output: &opts.output,
    };
    let bytes_read = copy_memory(&job, &layout, &mut writer, &mut ())?;
    let image = writer
        .finish()
        .map_err(|e| CaptureError::output(&opts.output, e))?;
    Ok(CaptureReport {
        pid,
        image,
        threads: 0,
        regions: layout.len(),
        bytes_read,
        frozen: Duration::ZERO,
        elapsed: started.elapsed(),
        killed: false,
    })
}
