//! In-process replays: a workload's memory restored into *this* process and
//! read with the workload's access pattern, under a baseline (or, for the
//! memory file, a Lazarus) strategy.
//!
//! ```text
//!  raw file (lazarus extract --pack, or the memfile fixture's file)
//!    kernel-mmap     mmap(MAP_PRIVATE) of the file: page-cache faults
//!    uffd-baseline   anonymous mapping + userfaultfd; serve::baseline's handler
//!                    copies each faulting page from the file (one UFFDIO_COPY)
//!  image
//!    lazarus         restore_into (demand, prefetch, working set, eager)
//!
//!  t0 ── set up ── running ── touch `first` pages in order ── answers ──
//!        read every word, page by page (each first touch timed) ── all in;
//!        the word sum must equal the expected sum (byte-for-byte proxy)
//! ```
//!
//! The access pattern replaces the process: memhog reads its whole buffer
//! (`first` empty), kvserver's pattern is the working set its first answers
//! touched (recorded by a Lazarus lazy restore), the memory file's a hot set
//! of 5 % of its chunks. Each first touch of a page is timed into an
//! hdrhistogram (`first touch` latency: what the workload waits, including
//! the handler's wake-up).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use hdrhistogram::Histogram;
use restore_agent::{RestoreHandle, RestoreOptions, restore_into};
use snapshot_format::Image;

use super::results::{Latency, Run};
use super::sample::{RssSampler, rss_mib};
use super::{LIMIT, Strategy, ms_since};
use crate::mem::{sum_words, touch};
use crate::serve::baseline::InProcess;

const PAGE: u64 = 4096;
/// Longest first-touch latency the histogram holds, ns.
const LATENCY_MAX_NS: u64 = 60_000_000_000;

/// What to replay.
#[derive(Debug, Clone)]
pub struct Pattern {
    /// Byte offsets of pages to touch first, in order (the working set).
    pub first: Vec<u64>,
    /// Wrapping sum of every 8-byte word of the memory.
    pub expected_sum: u64,
}

/// Where the memory comes from.
pub(crate) enum Source<'a> {
    /// A raw memory file (kernel-mmap, uffd-baseline).
    Raw(&'a Path),
    /// An image restored by Lazarus with these options; `eager`: wait until
    /// populated before the workload starts.
    Lazarus {
        image: &'a Arc<Image>,
        opts: RestoreOptions,
        eager: bool,
    },
}

/// The memory under replay.
enum Memory {
    Mapped(fixtures::sys::Mapping),
    Uffd(fixtures::sys::Mapping, InProcess),
    Lazarus(Box<RestoreHandle>),
}

/// What counts as the workload's first correct answer in a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The first page of the pattern read (the memory file's first access).
    FirstPage,
    /// The whole memory read and its sum checked (memhog's full check).
    WholeRead,
    /// No answer can be told from memory accesses (kvserver: its answers need
    /// the process).
    NotApplicable,
}

/// Restores `len` bytes with `strategy` from `source`, replays `pattern`,
/// checks the sum.
pub(crate) fn replay(
    strategy: Strategy,
    source: Source<'_>,
    len: u64,
    pattern: &Pattern,
    answer: Answer,
    rss_interval: std::time::Duration,
) -> Result<Run, String> {
    let base_rss = rss_mib(None).unwrap_or(0.0);
    let t0 = Instant::now();
    let sampler = RssSampler::start(None, base_rss, t0, rss_interval);
    let memory = match (strategy, source) {
        (Strategy::KernelMmap, Source::Raw(path)) => {
            let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
            Memory::Mapped(
                fixtures::sys::Mapping::file(&file, len as usize, fixtures::sys::Sharing::Private)
                    .map_err(|e| format!("mmap {}: {e}", path.display()))?,
            )
        }
        (Strategy::UffdBaseline, Source::Raw(path)) => {
            let m = fixtures::sys::Mapping::anonymous(len as usize)
                .map_err(|e| format!("map {len} bytes: {e}"))?;
            let h = InProcess::start(path, m.addr() as u64, len)
                .map_err(|e| format!("baseline handler: {e}"))?;
            Memory::Uffd(m, h)
        }
        (_, Source::Lazarus { image, opts, eager }) => {
            let h = restore_into(Arc::clone(image), opts).map_err(|e| format!("restore: {e}"))?;
            if eager && !h.wait_populated(LIMIT) {
                return Err(format!("not populated within {LIMIT:?}"));
            }
            Memory::Lazarus(Box::new(h))
        }
        (s, Source::Raw(_)) => return Err(format!("{} does not replay a raw file", s.name())),
    };
    let base = match &memory {
        Memory::Mapped(m) | Memory::Uffd(m, _) => m.addr() as u64,
        Memory::Lazarus(h) => h.regions()[0].addr,
    };
    let running_ms = ms_since(t0);
    let minflt_before = minor_faults();
    let mut hist = Histogram::<u64>::new_with_bounds(1, LATENCY_MAX_NS, 3)
        .expect("static histogram bounds are valid");
    let mut touched = vec![false; (len / PAGE) as usize];
    let mut first_answer_ms = None;
    for &off in &pattern.first {
        let page = (off / PAGE) as usize;
        if off >= len || touched[page] {
            continue;
        }
        touched[page] = true;
        let t = Instant::now();
        std::hint::black_box(touch(base + off));
        hist.saturating_record(t.elapsed().as_nanos() as u64);
        if answer == Answer::FirstPage && first_answer_ms.is_none() {
            first_answer_ms = Some(ms_since(t0));
        }
    }
    let answers_ms = (!pattern.first.is_empty()).then(|| ms_since(t0));
    let mut sum = 0u64;
    for page in 0..len / PAGE {
        let addr = base + page * PAGE;
        if !touched[page as usize] {
            let t = Instant::now();
            std::hint::black_box(touch(addr));
            hist.saturating_record(t.elapsed().as_nanos() as u64);
        }
        sum = sum.wrapping_add(sum_words(addr, PAGE));
    }
    let all_in_ms = ms_since(t0);
    let minflt = minor_faults().saturating_sub(minflt_before);
    let rss = sampler.stop();
    if sum != pattern.expected_sum {
        return Err(format!(
            "{}: the memory read back differs from the image (word sum {sum:#x}, expected {:#x})",
            strategy.name(),
            pattern.expected_sum
        ));
    }
    let (faults, bytes_copied, bytes_zeroed, fault_latency) = match memory {
        Memory::Mapped(m) => {
            drop(m);
            // The kernel's own faults (fault-around maps up to 16 cached
            // pages per fault).
            (minflt, 0, 0, Latency::from_histogram("first touch", &hist))
        }
        Memory::Uffd(m, h) => {
            let served = h.stop().map_err(|e| format!("baseline handler: {e}"))?;
            drop(m);
            (
                served.len(),
                served.len() * PAGE,
                0,
                Latency::from_histogram("handler fault service", &served),
            )
        }
        Memory::Lazarus(h) => {
            let s = h.stats();
            h.stop().map_err(|e| format!("stop the restore: {e}"))?;
            let lat = serde_json::to_value(&s.faults.latency)
                .ok()
                .and_then(|v| Latency::from_agent_json(&v));
            (
                s.faults.total,
                s.bytes.fault_copied + s.bytes.prefetch_copied,
                s.bytes.zeroed,
                lat,
            )
        }
    };
    let first_touch = Latency::from_histogram("first touch", &hist);
    Ok(Run {
        running_ms,
        first_answer_ms: match answer {
            Answer::WholeRead => Some(all_in_ms),
            Answer::FirstPage | Answer::NotApplicable => first_answer_ms,
        },
        answers_ms,
        all_in_ms: Some(all_in_ms),
        faults,
        bytes_copied,
        bytes_zeroed,
        fault_latency,
        answer_latency: None,
        touch_latency: first_touch,
        rss,
    })
}

/// Minor page faults of the calling thread so far (`minflt`, the 10th field
/// of `/proc/thread-self/stat`); 0 if unreadable.
fn minor_faults() -> u64 {
    std::fs::read_to_string("/proc/thread-self/stat")
        .ok()
        .and_then(|s| {
            // The command name (field 2) may hold spaces: count after its ')'.
            let rest = &s[s.rfind(')')? + 1..];
            rest.split_whitespace().nth(7)?.parse().ok()
        })
        .unwrap_or(0)
}

/// Wrapping sum of every 8-byte word of `path` (read with `read(2)`, not
/// through a mapping: an independent path to the expected contents).
pub(crate) fn file_word_sum(path: &Path) -> Result<u64, String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut sum = 0u64;
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| format!("read {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        carry.extend_from_slice(&buf[..n]);
        let whole = carry.len() / 8 * 8;
        for w in carry[..whole].chunks_exact(8) {
            sum = sum.wrapping_add(u64::from_ne_bytes(w.try_into().expect("8 bytes")));
        }
        carry.drain(..whole);
    }
    Ok(sum)
}
