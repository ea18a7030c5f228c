//! The memhog workload: a buffer of half zero, half patterned pages that the
//! process checks in full, over and over (`memhog --check`).
//!
//! - Lazarus strategies: `lazarus restore` of the captured process
//!   ([`crate::restore::LiveRestore`]). The first answer is its first full
//!   check run entirely after the restore (its second `CHECKED ok`: every
//!   page of the buffer read and verified). Lazy: the process is then
//!   killed (the restore would never complete: the process never touches
//!   some of its pages).
//! - Baselines: the buffer (extracted raw from the image) read in full in
//!   this process, the sum checked against `Layout::memhog` (module
//!   [`super::replay`]).

use std::path::{Path, PathBuf};

use fixtures::pattern::{self, Layout};

use super::replay::{Answer, Pattern, Source, replay};
use super::results::{Latency, Run};
use super::sample::RssSampler;
use super::{BenchOptions, CacheState, Outcome, Prepared, Strategy, extract_raw};
use crate::restore::{self as rb, BenchImage, LiveRestore, RestoreBenchConfig};

/// A captured memhog.
pub(crate) struct Memhog {
    opts: BenchOptions,
    image: BenchImage,
    raw: PathBuf,
    ws: PathBuf,
    pattern: Pattern,
}

/// Starts memhog, captures it, extracts its buffer, records a working set.
pub(crate) fn prepare(opts: &BenchOptions, mib: u64) -> Result<Memhog, String> {
    let cfg = RestoreBenchConfig {
        mib,
        runs: 1,
        prefetch_workers: None,
        fault_policy: None,
        dir: opts.work_dir.clone(),
        lazarus: opts.lazarus.clone(),
    };
    let image = rb::prepare(&cfg).map_err(|e| e.to_string())?;
    let raw = image.dir().join("buffer.raw");
    extract_raw(
        &opts.lazarus,
        image.path(),
        &raw,
        &[(image.buf, image.buf_len)],
    )?;
    let layout = Layout::memhog(1, image.buf_len / pattern::PAGE_SIZE as u64);
    let mut words = vec![0u64; pattern::WORDS_PER_PAGE];
    let mut expected_sum = 0u64;
    for page in 0..layout.pages() {
        pattern::fill_page(layout.kind(page), layout.key(), page, &mut words);
        expected_sum = words.iter().fold(expected_sum, |s, w| s.wrapping_add(*w));
    }
    let ws = image.dir().join("memhog.ws");
    let m = Memhog {
        opts: opts.clone(),
        raw,
        ws,
        pattern: Pattern {
            first: Vec::new(),
            expected_sum,
        },
        image,
    };
    if opts.strategies.contains(&Strategy::LazyWorkingSet) {
        // The recording run: on demand, the working set saved at its end.
        let rec = m.ws.to_string_lossy().into_owned();
        m.restore(&["--no-prefetch".into(), "--working-set".into(), rec], true)?;
        if !m.ws.is_file() {
            return Err(format!("no working set recorded at {}", m.ws.display()));
        }
    }
    Ok(m)
}

impl Memhog {
    /// One `lazarus restore` with `args`; `lazy`: kill the process after its
    /// first full check.
    fn restore(&self, args: &[String], lazy: bool) -> Result<Run, String> {
        let out = self.image.dir().join("restored.out");
        rb::remove_if_present(&out).map_err(|e| e.to_string())?;
        let mut live = LiveRestore::start(&self.opts.lazarus, self.image.path(), &out, args)
            .map_err(|e| e.to_string())?;
        let sampler = RssSampler::start(Some(live.pid), 0.0, live.t0, self.opts.rss_interval);
        rb::wait_checks(&out, live.pid, 2).map_err(|e| e.to_string())?;
        let checked = live.elapsed_ms();
        if lazy {
            live.kill_process();
        }
        let running_ms = live.running_ms;
        let end = live.finish().map_err(|e| e.to_string())?;
        let rss = sampler.stop();
        if !lazy && end.all_in_ms.is_none() {
            return Err("the restore ended before every page was in".into());
        }
        Ok(agent_run(running_ms, Some(checked), None, &end, rss))
    }
}

/// A [`Run`] from a process restore's figures and its agent's statistics.
pub(crate) fn agent_run(
    running_ms: f64,
    first_answer_ms: Option<f64>,
    answers: Option<(f64, Latency)>,
    end: &rb::RestoreEnd,
    rss: Vec<[f64; 2]>,
) -> Run {
    let s = &end.stats;
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let (answers_ms, answer_latency) = answers.map_or((None, None), |(t, l)| (Some(t), Some(l)));
    Run {
        running_ms,
        first_answer_ms,
        answers_ms,
        all_in_ms: end.all_in_ms,
        faults: n(&s["faults"]["total"]),
        bytes_copied: n(&s["bytes"]["fault_copied"]) + n(&s["bytes"]["prefetch_copied"]),
        bytes_zeroed: n(&s["bytes"]["zeroed"]),
        fault_latency: Latency::from_agent_json(&s["faults"]["latency"]),
        answer_latency,
        touch_latency: None,
        rss,
    }
}

/// `lazarus restore` options of the Lazarus strategies (`None`: not one):
/// the command's own defaults (one prefetch worker per CPU, page policy),
/// what a user gets. `lazy-working-set` loads a fresh copy of the `recorded`
/// working set, made in `dir` (a run rewrites the file it loads with its
/// own, smaller, order: every run must start from the recording).
pub(crate) fn restore_args(
    s: Strategy,
    recorded: &Path,
    dir: &Path,
) -> Result<Option<Vec<String>>, String> {
    let v = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    Ok(Some(match s {
        Strategy::Eager => v(&["--eager", "--no-working-set"]),
        Strategy::Lazy => v(&["--no-prefetch", "--no-working-set"]),
        Strategy::LazyPrefetch => v(&["--no-working-set"]),
        Strategy::LazyWorkingSet => {
            let copy = dir.join("run.ws");
            std::fs::copy(recorded, &copy)
                .map_err(|e| format!("copy the working set {}: {e}", recorded.display()))?;
            let mut a = v(&["--working-set"]);
            a.push(copy.to_string_lossy().into_owned());
            a
        }
        _ => return Ok(None),
    }))
}

impl Prepared for Memhog {
    fn capture(&self) -> (f64, u64) {
        (self.image.capture_ms, self.image.image_bytes)
    }

    fn files(&self) -> Vec<PathBuf> {
        vec![self.image.path().to_path_buf(), self.raw.clone()]
    }

    fn run(&mut self, strategy: Strategy, _cache: CacheState) -> Result<Outcome, String> {
        if let Some(args) = restore_args(strategy, &self.ws, self.image.dir())? {
            return self
                .restore(&args, strategy == Strategy::Lazy)
                .map(|r| Outcome::Ran(Box::new(r)));
        }
        replay(
            strategy,
            Source::Raw(&self.raw),
            self.image.buf_len,
            &self.pattern,
            Answer::WholeRead,
            self.opts.rss_interval,
        )
        .map(|r| Outcome::Ran(Box::new(r)))
    }

    fn describe(&self) -> String {
        format!(
            "memhog --check: {} data pages, {} zero pages",
            self.image.data_pages, self.image.zero_pages
        )
    }
}
