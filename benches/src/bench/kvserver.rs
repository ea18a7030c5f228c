//! The kvserver workload: a pointer-heavy table of hundreds of MiB answering
//! lookups read from a FIFO; after a restore, its first answers touch only
//! their working set.
//!
//! ```text
//!  prepare   kvserver --mib N --fifo DIR/requests.fifo; capture --kill
//!            the first N keys of kv::Requests (90 % from a hot tenth)
//!  run       lazarus restore IMG --stdout DIR/answers.fifo (read by us: no polling)
//!            write the N keys at once into requests.fifo
//!            ANS lines: each key in order, val == kv::value_of(seed, key)
//!              first ANS       → first_answer_ms
//!              N-th ANS        → answers_ms; `ns` fields → answer latency
//!            lazy: `quit` (the process exits) · else: until every page is in
//! ```
//!
//! The working set is recorded by a lazy restore answering the same N
//! requests. The baselines replay it in this process over every region of
//! the image (extracted raw, back to back): the pages the first N answers
//! touched, in the order they were first touched (chunk by chunk), then
//! everything.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use capture::{AfterCapture, CaptureOptions, capture_process};
use fixtures::{Fixture, Line};
use hdrhistogram::Histogram;
use restore_agent::WorkingSet;
use rustix::event::{PollFd, PollFlags, poll};
use snapshot_format::Image;

use super::memhog::{agent_run, restore_args};
use super::replay::{Answer, Pattern, Source, file_word_sum, replay};
use super::results::{Latency, Run};
use super::sample::RssSampler;
use super::{
    BenchOptions, CacheState, LIMIT, Outcome, Prepared, Strategy, Workload, extract_raw, ms_since,
    work_dir,
};
use crate::restore::{LiveRestore, remove_if_present};

const PAGE: u64 = 4096;
/// Longest answer latency the histogram holds, ns.
const LATENCY_MAX_NS: u64 = 60_000_000_000;

/// A captured kvserver.
pub(crate) struct Kvserver {
    opts: BenchOptions,
    dir: tempfile::TempDir,
    image: PathBuf,
    image_bytes: u64,
    capture_ms: f64,
    seed: u64,
    keys: u64,
    requests: Vec<u64>,
    raw: PathBuf,
    raw_len: u64,
    ws: PathBuf,
    pattern: Option<Pattern>,
}

/// Starts kvserver, captures it, records its working set, extracts its memory.
pub(crate) fn prepare(opts: &BenchOptions, mib: u64) -> Result<Kvserver, String> {
    let dir = work_dir(opts, Workload::Kvserver)?;
    let fifo = dir.path().join("requests.fifo");
    let image = dir.path().join("kvserver.lzr");
    let mib_arg = mib.to_string();
    let fifo_arg = fifo.to_string_lossy().into_owned();
    let mut fx = Fixture::spawn(
        "kvserver",
        ["--mib", mib_arg.as_str(), "--fifo", fifo_arg.as_str()],
    )
    .map_err(|e| format!("start kvserver: {e}"))?;
    let ready = fx
        .try_wait_ready(LIMIT)
        .map_err(|e| format!("kvserver: {e}"))?;
    let field = |k: &str| ready.try_u64(k).map_err(|e| format!("kvserver: {e}"));
    let (seed, keys) = (field("seed")?, field("keys")?);
    let pid = i32::try_from(fx.pid()).map_err(|_| "pid out of range".to_owned())?;
    let opts_c = CaptureOptions {
        after: AfterCapture::Kill,
        workers: std::thread::available_parallelism().map_or(1, usize::from),
        ..CaptureOptions::new(&image)
    };
    let t = Instant::now();
    let report = capture_process(pid, &opts_c, &mut ()).map_err(|e| format!("capture: {e}"))?;
    let capture_ms = ms_since(t);
    drop(fx);
    let requests: Vec<u64> = fixtures::kv::Requests::new(seed, keys)
        .take(opts.answer_count())
        .collect();
    let raw = dir.path().join("memory.raw");
    let ws = dir.path().join("kvserver.ws");
    let mut kv = Kvserver {
        opts: opts.clone(),
        image,
        image_bytes: report.image.file_len,
        capture_ms,
        seed,
        keys,
        requests,
        raw_len: 0,
        raw,
        ws,
        pattern: None,
        dir,
    };
    let replays = opts.strategies.iter().any(|s| s.is_replay());
    if replays || opts.strategies.contains(&Strategy::LazyWorkingSet) {
        let rec = kv.ws.to_string_lossy().into_owned();
        kv.restore(&["--no-prefetch".into(), "--working-set".into(), rec], true)?;
        if !kv.ws.is_file() {
            return Err(format!("no working set recorded at {}", kv.ws.display()));
        }
    }
    if replays {
        extract_raw(&opts.lazarus, &kv.image, &kv.raw, &[])?;
        kv.raw_len = std::fs::metadata(&kv.raw)
            .map_err(|e| format!("{}: {e}", kv.raw.display()))?
            .len();
        kv.pattern = Some(kv.replay_pattern()?);
    }
    Ok(kv)
}

impl Kvserver {
    /// The working set as byte offsets in the raw file (regions back to back,
    /// in the image's order, as `lazarus extract --pack` writes them).
    fn replay_pattern(&self) -> Result<Pattern, String> {
        let image = Arc::new(Image::open(&self.image).map_err(|e| format!("open image: {e}"))?);
        let ws = WorkingSet::load(&self.ws, &image).map_err(|e| format!("working set: {e}"))?;
        let mut packed = Vec::new();
        let mut at = 0u64;
        for r in image.regions() {
            packed.push((r.start, r.len, at));
            at += r.len;
        }
        let mut first = Vec::new();
        for &chunk in ws.chunks() {
            for u in image.chunk_uses(chunk) {
                let mut a = u.addr;
                while a < u.addr + u.len {
                    if let Some((start, _, base)) =
                        packed.iter().find(|(s, l, _)| (*s..*s + *l).contains(&a))
                    {
                        first.push(base + (a - start));
                    }
                    a += PAGE;
                }
            }
        }
        Ok(Pattern {
            first,
            expected_sum: file_word_sum(&self.raw)?,
        })
    }

    /// One `lazarus restore` with `args`, answering the requests; `lazy`: then
    /// `quit` (the restore ends with the process).
    fn restore(&self, args: &[String], lazy: bool) -> Result<Run, String> {
        let out = self.dir.path().join("answers.fifo");
        remove_if_present(&out).map_err(|e| e.to_string())?;
        fixtures::sys::mkfifo(&out, 0o600).map_err(|e| format!("mkfifo: {e}"))?;
        // Read and write, so that it never reads as ended and the restore's
        // open for writing finds a reader.
        let mut answers = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc_nonblock())
            .open(&out)
            .map_err(|e| format!("open {}: {e}", out.display()))?;
        let live = LiveRestore::start(&self.opts.lazarus, &self.image, &out, args)
            .map_err(|e| e.to_string())?;
        let sampler = RssSampler::start(Some(live.pid), 0.0, live.t0, self.opts.rss_interval);
        let fifo = self.dir.path().join("requests.fifo");
        let mut requests = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc_nonblock())
            .open(&fifo)
            .map_err(|e| format!("open {}: {e}", fifo.display()))?;
        let text: String = self.requests.iter().map(|k| format!("{k}\n")).collect();
        requests
            .write_all(text.as_bytes())
            .map_err(|e| format!("write the requests: {e}"))?;
        let mut hist = Histogram::<u64>::new_with_bounds(1, LATENCY_MAX_NS, 3)
            .expect("static histogram bounds are valid");
        let mut lines = LineReader::default();
        let mut first = None;
        for (i, &key) in self.requests.iter().enumerate() {
            let line = lines.next(&mut answers, live.pid, LIMIT)?;
            if !line.is("ANS") || line.get("key") != Some(key.to_string().as_str()) {
                return Err(format!(
                    "answer {i}: expected ANS key={key}, got {}",
                    line.raw()
                ));
            }
            let val = line.try_hex("val").map_err(|e| e.to_string())?;
            if val != fixtures::kv::value_of(self.seed, key) {
                return Err(format!(
                    "answer {i}: wrong value for key {key}: {}",
                    line.raw()
                ));
            }
            first.get_or_insert_with(|| live.elapsed_ms());
            hist.saturating_record(line.try_u64("ns").map_err(|e| e.to_string())?);
        }
        let answered = live.elapsed_ms();
        if lazy {
            requests
                .write_all(b"quit\n")
                .map_err(|e| format!("write quit: {e}"))?;
        }
        let running_ms = live.running_ms;
        let end = live.finish().map_err(|e| e.to_string())?;
        let rss = sampler.stop();
        if !lazy && end.all_in_ms.is_none() {
            return Err("the restore ended before every page was in".into());
        }
        let latency = Latency::from_histogram("answer", &hist)
            .ok_or_else(|| "no answer latency".to_owned())?;
        Ok(agent_run(
            running_ms,
            first,
            Some((answered, latency)),
            &end,
            rss,
        ))
    }
}

fn libc_nonblock() -> i32 {
    rustix::fs::OFlags::NONBLOCK.bits() as i32
}

/// Lines from a non-blocking FIFO, waited for with `poll`.
#[derive(Default)]
struct LineReader {
    buf: Vec<u8>,
}

impl LineReader {
    /// The next line; fails after `limit` or when process `pid` is gone.
    fn next(&mut self, f: &mut std::fs::File, pid: i32, limit: Duration) -> Result<Line, String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                return Ok(Line::parse(String::from_utf8_lossy(&line).trim_end()));
            }
            if Instant::now() >= deadline {
                return Err(format!("no answer within {limit:?}"));
            }
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                return Err(format!(
                    "the restored kvserver {pid} is gone; it wrote: {}",
                    String::from_utf8_lossy(&self.buf)
                ));
            }
            let mut fds = [PollFd::new(&*f, PollFlags::IN)];
            match poll(
                &mut fds,
                Some(&rustix::event::Timespec {
                    tv_sec: 0,
                    tv_nsec: 100_000_000,
                }),
            ) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(format!("poll: {e}")),
            }
            let mut chunk = [0u8; 4096];
            match f.read(&mut chunk) {
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(format!("read the answers: {e}")),
            }
        }
    }
}

impl Prepared for Kvserver {
    fn capture(&self) -> (f64, u64) {
        (self.capture_ms, self.image_bytes)
    }

    fn files(&self) -> Vec<PathBuf> {
        let mut v = vec![self.image.clone()];
        if self.raw.is_file() {
            v.push(self.raw.clone());
        }
        v
    }

    fn run(&mut self, strategy: Strategy, _cache: CacheState) -> Result<Outcome, String> {
        if let Some(args) = restore_args(strategy, &self.ws, self.dir.path())? {
            return self
                .restore(&args, strategy == Strategy::Lazy)
                .map(|r| Outcome::Ran(Box::new(r)));
        }
        let pattern = self
            .pattern
            .as_ref()
            .ok_or_else(|| "no replay pattern".to_owned())?;
        replay(
            strategy,
            Source::Raw(&self.raw),
            self.raw_len,
            pattern,
            Answer::NotApplicable,
            self.opts.rss_interval,
        )
        .map(|r| Outcome::Ran(Box::new(r)))
    }

    fn describe(&self) -> String {
        format!(
            "kvserver --fifo: {} keys, the first {} requests of kv::Requests",
            self.keys,
            self.requests.len()
        )
    }
}
