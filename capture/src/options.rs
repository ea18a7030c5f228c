//! Capture options, the observer interface and the report.

use std::path::PathBuf;
use std::time::Duration;

use snapshot_format::{
    Compression, DEFAULT_CHUNK_SIZE, DEFAULT_ZSTD_LEVEL, RegionInfo, WriteSummary, WriterOptions,
};

use crate::error::CaptureError;

/// What happens to the process once its image is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AfterCapture {
    /// Detach and let it continue (the default). It is detached as soon as its memory
    /// has been read, while the last chunks are still being compressed.
    #[default]
    LeaveRunning,
    /// Kill it, but only once the image is complete: renamed into place (and fsynced,
    /// with [`CaptureOptions::fsync`]). On any failure it is left running instead.
    Kill,
}

/// Options of [`capture_process`](crate::capture_process) and
/// [`capture_self_ranges`](crate::capture_self_ranges).
#[derive(Debug, Clone)]
pub struct CaptureOptions {
    /// The image to write (a temporary file beside it is renamed into place).
    pub output: PathBuf,
    /// Leave the process running (default) or kill it.
    pub after: AfterCapture,
    /// Largest chunk (a multiple of 4 KiB, 4 KiB to 4 MiB; default 64 KiB).
    pub chunk_size: usize,
    /// Chunk compression (default zstd at level
    /// [`DEFAULT_ZSTD_LEVEL`]).
    pub compression: Compression,
    /// Compression threads (default: one per CPU; 0 compresses on the capturing thread).
    pub workers: usize,
    /// fsync the image and its directory before returning.
    pub fsync: bool,
    /// Bound on every wait for a thread of the process (freezing it, each system call
    /// run inside it). Default [`tracee::DEFAULT_TIMEOUT`].
    pub timeout: Duration,
}

impl CaptureOptions {
    /// The defaults, writing to `output`.
    pub fn new(output: impl Into<PathBuf>) -> Self {
        Self {
            output: output.into(),
            after: AfterCapture::LeaveRunning,
            chunk_size: DEFAULT_CHUNK_SIZE,
            compression: Compression::Zstd {
                level: DEFAULT_ZSTD_LEVEL,
            },
            workers: std::thread::available_parallelism().map_or(1, usize::from),
            fsync: false,
            timeout: tracee::DEFAULT_TIMEOUT,
        }
    }

    /// The image writer's options (checked by the writer itself).
    pub(crate) fn writer_options(&self) -> WriterOptions {
        WriterOptions {
            page_size: crate::pagemap::PAGE as u32,
            chunk_size: self.chunk_size,
            compression: self.compression,
            workers: self.workers,
            fsync: self.fsync,
            parent: None,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), CaptureError> {
        if self.timeout.is_zero() {
            return Err(CaptureError::InvalidOptions(
                "the timeout must be positive".to_owned(),
            ));
        }
        Ok(())
    }
}

/// The steps of a capture, as [`CaptureObserver::stage`] reports them.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Stage<'a> {
    /// Every thread is stopped; nothing has been read yet.
    Frozen {
        /// The process.
        pid: i32,
        /// Its threads.
        tids: &'a [i32],
    },
    /// Thread and process state was read (the system calls run inside the process to
    /// read it were undone).
    StateRead,
    /// The memory layout is known: these regions are about to be written, in order.
    Layout {
        /// The regions.
        regions: &'a [RegionInfo],
    },
    /// Region `index` was handed to the writer.
    RegionWritten {
        /// Its index in the layout.
        index: usize,
        /// The region.
        region: &'a RegionInfo,
    },
    /// All memory was read; the process is still frozen. With
    /// [`AfterCapture::LeaveRunning`] it is detached right after.
    MemoryRead,
    /// The process was detached (or, with [`AfterCapture::Kill`], killed after the
    /// image was written).
    Released,
}

/// Receives a capture's progress: a progress bar, a log, or a test hook. Both methods
/// run on the capturing thread, the second one often; the default implementations do
/// nothing.
///
/// A test can inspect the frozen process from [`Stage::MemoryRead`] (read its memory
/// through `/proc/PID/mem` to compare with the image), or inject a failure from any
/// stage (kill the process).
pub trait CaptureObserver {
    /// A step of the capture was reached.
    fn stage(&mut self, stage: Stage<'_>) {
        let _ = stage;
    }

    /// `done` of `total` bytes of address space have been written.
    fn progress(&mut self, done: u64, total: u64) {
        let _ = (done, total);
    }
}

/// The observer that observes nothing.
impl CaptureObserver for () {}

/// What a successful capture reports.
#[derive(Debug, Clone)]
pub struct CaptureReport {
    /// The process captured (our own pid for [`capture_self_ranges`](crate::capture_self_ranges)).
    pub pid: i32,
    /// The image written: path, identity, raw / data / zero / file bytes, chunks,
    /// stored bytes, file length, time spent writing.
    pub image: WriteSummary,
    /// Threads captured (0 for a capture of own ranges).
    pub threads: usize,
    /// Regions in the image.
    pub regions: usize,
    /// Bytes read from the process's memory (and shared objects).
    pub bytes_read: u64,
    /// How long the process was frozen: from the start of seizing to detach (or, with
    /// [`AfterCapture::Kill`], to its death after the image was written).
    pub frozen: Duration,
    /// The whole capture, from start to the image in place.
    pub elapsed: Duration,
    /// Whether the process was killed.
    pub killed: bool,
}
