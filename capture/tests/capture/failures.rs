//! Failures, injected for real: an unwritable output, a full file system, a process
//! killed mid-capture, a process someone else traces. Each must leave no image and
//! (unless it died) a running, untraced process.

use capture::{CaptureError, CaptureObserver, PermissionReason, Stage, capture_process};
use fixtures::{Fixture, SmallFs};
use tracee::{SeizeOptions, SeizedProcess};

use crate::common::{T, files_in, kill_options, options, ticks_after, tracer_of};

/// A counter fixture that has ticked, and the last tick seen.
fn counter(mib: &str) -> (Fixture, u64) {
    let mut fx = Fixture::spawn("counter", ["--mib", mib, "--interval-ms", "20"]).unwrap();
    fx.wait_ready(T);
    let n = fx.wait_line(|l| l.is("TICK"), T).u64("n");
    (fx, n)
}

/// The process runs on, untraced, still verifying its memory.
fn still_running(fx: &mut Fixture, after: u64) {
    assert_eq!(tracer_of(fx.pid()), 0, "the process is left untraced");
    ticks_after(fx, None, after + 3);
}

#[test]
fn an_unwritable_output_leaves_the_process_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let (mut fx, n) = counter("4");
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, b"x").unwrap();
    for output in [dir.path().join("missing/x.lzr"), not_a_dir.join("x.lzr")] {
        let mut stages = Stages::default();
        let opts = capture::CaptureOptions {
            output: output.clone(),
            ..kill_options(dir.path(), "unused")
        };
        let err = capture_process(fx.pid() as i32, &opts, &mut stages).unwrap_err();
        assert!(
            matches!(&err, CaptureError::Output { path, .. } if *path == output),
            "{err}"
        );
        assert!(stages.0.is_empty(), "failed before freezing the process");
    }
    assert_eq!(files_in(dir.path()), [not_a_dir]);
    still_running(&mut fx, n);
}

/// Records the stages seen.
#[derive(Default)]
struct Stages(Vec<String>);

impl CaptureObserver for Stages {
    fn stage(&mut self, stage: Stage<'_>) {
        self.0.push(format!("{stage:?}"));
    }
}

#[test]
fn a_full_disk_leaves_no_image_and_the_process_running() {
    let dir = tempfile::tempdir().unwrap();
    let Some(fs) = SmallFs::mount(dir.path(), "1M") else {
        eprintln!("skipped: cannot mount a tmpfs (not root?)");
        return;
    };
    let (mut fx, n) = counter("16");
    // Leave running and kill alike: the image does not fit, the process survives.
    for opts in [
        options(fs.path(), "full.lzr"),
        kill_options(fs.path(), "full.lzr"),
    ] {
        let mut stages = Stages::default();
        let err = capture_process(fx.pid() as i32, &opts, &mut stages).unwrap_err();
        assert!(
            matches!(&err, CaptureError::DiskFull { path, .. } if *path == opts.output),
            "{err}"
        );
        assert!(err.to_string().contains("no space left"), "{err}");
        assert!(
            files_in(fs.path()).is_empty(),
            "nothing is left on the full disk"
        );
        assert!(!stages.0.iter().any(|s| s == "Released"));
        still_running(&mut fx, n);
    }
}

/// Kills the process when it reaches a given stage.
struct KillAt {
    pid: u32,
    stage: &'static str,
}

impl CaptureObserver for KillAt {
    fn stage(&mut self, stage: Stage<'_>) {
        let name = match stage {
            Stage::Frozen { .. } => "frozen",
            Stage::StateRead => "state",
            Stage::RegionWritten { index: 3, .. } => "region 3",
            _ => return,
        };
        if name == self.stage {
            let pid = rustix::process::Pid::from_raw(self.pid as i32).unwrap();
            rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
        }
    }
}

#[test]
fn a_process_killed_mid_capture_is_reported_as_exited() {
    // The kill takes effect asynchronously: the capture notices it in the step it is
    // killed in or a later one, at the latest before it releases the process.
    let phases = [
        "reading its state",
        "reading its memory layout",
        "reading its memory",
    ];
    for (stage, first) in [("frozen", 0), ("state", 1), ("region 3", 2)] {
        let dir = tempfile::tempdir().unwrap();
        let (fx, _) = counter("8");
        let mut hook = KillAt {
            pid: fx.pid(),
            stage,
        };
        let err =
            capture_process(fx.pid() as i32, &options(dir.path(), "x.lzr"), &mut hook).unwrap_err();
        match err {
            CaptureError::Exited { pid, during } => {
                assert_eq!(pid, fx.pid() as i32);
                assert!(
                    phases[first..].contains(&during),
                    "killed at {stage}: {during}"
                );
            }
            other => panic!("killed at {stage}: expected Exited, got {other:?}"),
        }
        assert!(
            files_in(dir.path()).is_empty(),
            "no image, no temporary file"
        );
    }
}

#[test]
fn a_traced_process_is_refused_naming_its_tracer() {
    let dir = tempfile::tempdir().unwrap();
    let (mut fx, n) = counter("2");
    let pid = fx.pid() as i32;
    let tracer = SeizedProcess::seize(pid, SeizeOptions::default()).unwrap();
    let err = capture_process(pid, &options(dir.path(), "x.lzr"), &mut ()).unwrap_err();
    match &err {
        CaptureError::NotPermitted {
            reason: PermissionReason::TracedBy { tracer: by, .. },
            ..
        } => assert_eq!(*by, fixtures::sys::gettid(), "our (tracing) thread"),
        other => panic!("expected NotPermitted(TracedBy), got {other:?}"),
    }
    assert!(
        err.to_string().contains("already traced by process"),
        "{err}"
    );
    drop(tracer);
    assert!(files_in(dir.path()).is_empty());
    still_running(&mut fx, n);
}

#[test]
fn missing_and_forbidden_processes_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(dir.path(), "x.lzr");
    for pid in [0, -5, i32::MAX] {
        let err = capture_process(pid, &opts, &mut ()).unwrap_err();
        assert!(
            matches!(err, CaptureError::NoSuchProcess { pid: p } if p == pid),
            "{err:?}"
        );
    }
    // A kernel thread cannot be traced, even by root.
    let err = capture_process(2, &opts, &mut ()).unwrap_err();
    assert!(
        matches!(
            err,
            CaptureError::NotPermitted {
                pid: 2,
                reason: PermissionReason::KernelThread
            }
        ),
        "{err:?}"
    );
    // Nor can the calling process itself.
    let err = capture_process(std::process::id() as i32, &opts, &mut ()).unwrap_err();
    assert!(matches!(err, CaptureError::Seize { .. }), "{err:?}");
    assert!(files_in(dir.path()).is_empty());
}
