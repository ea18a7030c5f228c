//! `capture --pid PID`: a live process, through the `capture` crate.
//!
//! The process is frozen while its state and memory are read, then detached (it
//! continues) or, with `--kill`, killed once the image is safely in place. On any
//! error it is left running and no image is left behind.

use anyhow::{Context, Result, bail};
use capture::{AfterCapture, CaptureObserver, CaptureOptions, CaptureReport, Stage};
use indicatif::ProgressBar;
use snapshot_format::WriterOptions;

use super::{CaptureArgs, ratio, summary_json};
use crate::util::progress::{bytes_bar, rate};
use crate::util::size::human;

pub(super) fn run(pid: i32, args: &CaptureArgs, w: &WriterOptions) -> Result<()> {
    if args.parent.is_some() {
        bail!(
            "--parent is not supported with --pid (incremental process captures are not implemented)"
        );
    }
    let opts = CaptureOptions {
        after: if args.kill {
            AfterCapture::Kill
        } else {
            AfterCapture::LeaveRunning
        },
        chunk_size: w.chunk_size,
        compression: w.compression,
        workers: w.workers,
        fsync: w.fsync,
        ..CaptureOptions::new(&args.output)
    };
    let mut bar = Bar(None);
    let report = capture::capture_process(pid, &opts, &mut bar)
        .with_context(|| format!("cannot capture process {pid}"))?;
    if let Some(b) = bar.0 {
        b.finish_and_clear();
    }
    if args.json {
        println!("{}", report_json(&report));
    } else {
        print_report(&report);
    }
    Ok(())
}

/// A progress bar drawn once the layout (and so the total) is known.
struct Bar(Option<ProgressBar>);

impl CaptureObserver for Bar {
    fn stage(&mut self, stage: Stage<'_>) {
        if let Stage::Layout { regions } = stage {
            self.0 = Some(bytes_bar(regions.iter().map(|r| r.len).sum(), "capture"));
        }
    }

    fn progress(&mut self, done: u64, _total: u64) {
        if let Some(b) = &self.0 {
            b.set_position(done);
        }
    }
}

/// One line: raw, stored, ratio, time, GB/s, frozen time.
fn print_report(r: &CaptureReport) {
    let s = &r.image;
    let (secs, gbps) = rate(s.raw_bytes, r.elapsed);
    println!(
        "captured pid {} ({} threads, {} regions) into {}: {} raw, {} stored (ratio {:.2}x) in {secs:.2} s, {gbps:.2} GB/s, frozen {:.3} s; {} read, {} zero, {} from files; process {}",
        r.pid,
        r.threads,
        r.regions,
        s.path.display(),
        human(s.raw_bytes),
        human(s.file_len),
        ratio(s),
        r.frozen.as_secs_f64(),
        human(r.bytes_read),
        human(s.zero_bytes),
        human(s.file_bytes),
        if r.killed { "killed" } else { "left running" },
    );
}

fn report_json(r: &CaptureReport) -> serde_json::Value {
    let mut v = summary_json(&r.image);
    let (secs, gbps) = rate(r.image.raw_bytes, r.elapsed);
    let extra = serde_json::json!({
        "pid": r.pid,
        "threads": r.threads,
        "regions": r.regions,
        "bytes_read": r.bytes_read,
        "frozen_seconds": r.frozen.as_secs_f64(),
        "seconds": secs,
        "gb_per_s": gbps,
        "killed": r.killed,
    });
    if let (Some(map), serde_json::Value::Object(more)) = (v.as_object_mut(), extra) {
        map.extend(more);
    }
    v
}
