//! Capture a live process — or selected ranges of the calling process — into a Lazarus
//! image.
//!
//! ```text
//! capture_process(pid, &opts, &mut observer)
//!   ImageWriter::create            (fails early on an unwritable output)
//!   SeizedProcess::seize           every thread stopped, race-free      ─┐
//!   state::collect                 threads, signal handlers, mm, fds ... │ frozen
//!   smaps → classify → regions     what each mapping is, how it is read  │
//!   pagemap → process_vm_readv → ImageWriter (zero pages dropped,        │
//!                                  N workers compress)                  ─┘ detach
//!   ImageWriter::finish            index, footer, rename (fsync)     (--kill: then kill)
//! ```
//!
//! - [`capture_process`] — the whole process: memory, layout and the state restore
//!   needs ([`ProcessState`](snapshot_format::ProcessState) in the image metadata).
//! - [`capture_self_ranges`] — ranges of the calling process, not frozen (see its
//!   consistency caveat).
//! - [`CaptureObserver`] — progress, and hooks at each [`Stage`] (tests read the frozen
//!   process's memory from [`Stage::MemoryRead`], or kill it mid-capture).
//!
//! Module by module: `smaps` parses the layout, `classify` decides each mapping's kind
//! and which of its pages are read (the table is there), `pagemap` holds the page rules
//! (bit 61 for copied-on-write pages of private file mappings), `pages` reads and
//! writes in batches, `state` and `fds` read the process state, `process` runs it all
//! and guarantees that every error leaves the process running, untraced, and no image.
//!
//! `docs/CAPTURE.md` in the repository is the user documentation, with measured
//! figures.
//!
//! x86_64 Linux only (through `tracee`).

mod classify;
mod error;
mod fds;
mod options;
mod pagemap;
mod pages;
mod process;
mod self_ranges;
mod smaps;
mod state;

pub use error::{CaptureError, PermissionReason};
pub use fds::MAX_FDS;
pub use options::{AfterCapture, CaptureObserver, CaptureOptions, CaptureReport, Stage};
pub use pages::BATCH_BYTES;
pub use process::capture_process;
pub use self_ranges::capture_self_ranges;
pub use smaps::{MAX_LINE as MAX_SMAPS_LINE, MAX_VMAS};
pub use state::MAX_PROC_FILE;
