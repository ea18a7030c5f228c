//! `lazarus bench`: every restore strategy side by side on real workloads, in
//! one run, with a JSON results file, a markdown table and SVG plots.
//!
//! ```text
//!  for each workload (memhog · kvserver · memfile):
//!    prepare       start it, capture it once (capture time, image size);
//!                  the raw memory file the baselines map; recorded working set
//!    for each repeat, for each cache state (cold · warm), for each strategy
//!    (interleaved, so drift on the shared machine hits every strategy alike):
//!      cache       cold: sync + drop_caches · warm: read the files once
//!      run once    → Run: until it runs, first correct answer, first N answers,
//!                    every page in, faults, bytes, latency quantiles, RSS samples
//!  summary         median (min–max) per figure, ratios to the reference strategy
//!  output          results.json · results.md · latency / RSS plots (SVG)
//! ```
//!
//! | strategy | process workloads (memhog, kvserver) | memfile |
//! | --- | --- | --- |
//! | `eager` | `lazarus restore --eager` | `restore_into`, wait until populated, then read |
//! | `lazy` | `lazarus restore --no-prefetch` | `restore_into`, no prefetch |
//! | `lazy-prefetch` | `lazarus restore` (1 prefetch worker) | `restore_into`, 1 worker |
//! | `lazy-working-set` | `lazarus restore --working-set WS` | `restore_into` loading WS |
//! | `kernel-mmap` | in-process replay: `MAP_PRIVATE` of the raw file | same |
//! | `uffd-baseline` | in-process replay: page-by-page uffd handler | same |
//! | `criu` | `criu check`, skipped with its reason when it fails | not applicable |
//!
//! The two baselines are measured *in this process* with the workload's
//! access pattern (module [`replay`]): the process restore would need new
//! hooks in the agent to map a raw file or to hand its userfaultfd to another
//! handler, and in-process they are measured with no restore overhead at all,
//! which favours them. docs/BENCH.md says what each figure means per
//! workload.

mod kvserver;
mod machine;
mod memfile;
mod memhog;
mod plot;
mod progress;
pub mod replay;
pub mod results;
mod sample;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::stats::Spread;
use progress::Progress;
pub use results::{BenchResults, Latency, Run, StrategyResult, WorkloadResult};

/// The version of the results file's schema (docs/BENCH.md). Bumped on any
/// change that is not a new optional field.
pub const SCHEMA_VERSION: u32 = 1;
/// The strategy ratios are computed against, unless told otherwise.
pub const DEFAULT_REFERENCE: Strategy = Strategy::LazyPrefetch;
/// The longest any single wait of a run may take (a fixture's setup, a
/// restore, an answer).
pub(crate) const LIMIT: Duration = Duration::from_secs(300);

/// A workload: what is captured and restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// `memhog`: a buffer of half zero, half patterned pages, checked in full.
    Memhog,
    /// `kvserver`: a pointer-heavy table answering requests from a FIFO.
    Kvserver,
    /// `memfile`: a VMM's guest memory file, restored in this process.
    Memfile,
}

impl Workload {
    /// Every workload, in report order.
    pub const ALL: [Workload; 3] = [Workload::Memhog, Workload::Kvserver, Workload::Memfile];

    /// Its name on the command line and in the results.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Memhog => "memhog",
            Workload::Kvserver => "kvserver",
            Workload::Memfile => "memfile",
        }
    }

    /// Default size, MiB.
    pub fn default_mib(self) -> u64 {
        match self {
            Workload::Memhog => 1024,
            Workload::Kvserver => 256,
            Workload::Memfile => 512,
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == s)
    }
}

/// A restore strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Lazarus: every page in before the workload runs.
    Eager,
    /// Lazarus: pages only on demand.
    Lazy,
    /// Lazarus: on demand, and the prefetch pool fills the rest.
    LazyPrefetch,
    /// Lazarus: on demand, the prefetch pool starting with the working set
    /// recorded by an earlier run.
    LazyWorkingSet,
    /// Baseline: the kernel's own lazy loading, a `MAP_PRIVATE` mapping of a
    /// raw memory file (page-cache faults).
    KernelMmap,
    /// Baseline: a simple handler copying each faulting page from a raw file
    /// with one `UFFDIO_COPY`.
    UffdBaseline,
    /// Baseline: CRIU, when a `criu` that passes `criu check` is on `PATH`.
    Criu,
}

impl Strategy {
    /// Every strategy, in report order.
    pub const ALL: [Strategy; 7] = [
        Strategy::Eager,
        Strategy::Lazy,
        Strategy::LazyPrefetch,
        Strategy::LazyWorkingSet,
        Strategy::KernelMmap,
        Strategy::UffdBaseline,
        Strategy::Criu,
    ];

    /// Its name on the command line and in the results.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Eager => "eager",
            Strategy::Lazy => "lazy",
            Strategy::LazyPrefetch => "lazy-prefetch",
            Strategy::LazyWorkingSet => "lazy-working-set",
            Strategy::KernelMmap => "kernel-mmap",
            Strategy::UffdBaseline => "uffd-baseline",
            Strategy::Criu => "criu",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<Strategy> {
        Strategy::ALL.into_iter().find(|w| w.name() == s)
    }

    /// Whether the strategy runs in this process over a raw file (module
    /// [`replay`]).
    pub fn is_replay(self) -> bool {
        matches!(self, Strategy::KernelMmap | Strategy::UffdBaseline)
    }
}

/// Page cache state before a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheState {
    /// The files read by the run were dropped from the page cache
    /// (`sync`, then `3` into `/proc/sys/vm/drop_caches`; needs root).
    Cold,
    /// The files read by the run were read once just before.
    Warm,
}

impl CacheState {
    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            CacheState::Cold => "cold",
            CacheState::Warm => "warm",
        }
    }
}

/// Which cache states to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheChoice {
    /// Cold only.
    Cold,
    /// Warm only.
    Warm,
    /// Both, side by side.
    Both,
}

impl CacheChoice {
    /// The states to run.
    pub fn states(self) -> &'static [CacheState] {
        match self {
            CacheChoice::Cold => &[CacheState::Cold],
            CacheChoice::Warm => &[CacheState::Warm],
            CacheChoice::Both => &[CacheState::Cold, CacheState::Warm],
        }
    }
}

/// What `lazarus bench` runs.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Workloads to run.
    pub workloads: Vec<Workload>,
    /// Strategies to run.
    pub strategies: Vec<Strategy>,
    /// Size of every workload, MiB (`None`: each its default, or the quick size).
    pub mib: Option<u64>,
    /// Repeats of every strategy.
    pub repeat: usize,
    /// Tiny sizes, one repeat: the whole run in well under a minute.
    pub quick: bool,
    /// Page cache states.
    pub cache: CacheChoice,
    /// Where results.json, results.md and the plots go.
    pub out: PathBuf,
    /// Where temporary files (images, raw files) go; removed afterwards.
    pub work_dir: PathBuf,
    /// The `lazarus` binary (for `lazarus restore` and `lazarus extract`).
    pub lazarus: PathBuf,
    /// Answers measured per kvserver run ("the first N answers").
    pub answers: usize,
    /// Interval of the RSS samples.
    pub rss_interval: Duration,
    /// The strategy ratios are computed against.
    pub reference: Strategy,
    /// The command line, recorded in the results.
    pub command: String,
}

/// Size of every workload under `--quick`, MiB.
pub const QUICK_MIB: u64 = 16;
/// kvserver answers measured per run under `--quick`.
pub const QUICK_ANSWERS: usize = 20;
/// kvserver answers measured per run by default.
pub const DEFAULT_ANSWERS: usize = 200;
/// Largest workload size accepted, MiB (disk and memory are shared).
pub const MAX_MIB: u64 = 4096;
/// Most answers measured per kvserver run (the requests are written to the
/// FIFO at once and must fit in its buffer).
pub const MAX_ANSWERS: usize = 4096;
/// Most repeats accepted.
pub const MAX_REPEAT: usize = 100;

impl BenchOptions {
    /// The defaults: every workload and strategy, default sizes, 3 repeats,
    /// warm cache, results in `out`.
    pub fn new(out: impl Into<PathBuf>, lazarus: impl Into<PathBuf>) -> Self {
        Self {
            workloads: Workload::ALL.to_vec(),
            strategies: Strategy::ALL.to_vec(),
            mib: None,
            repeat: 3,
            quick: false,
            cache: CacheChoice::Warm,
            out: out.into(),
            work_dir: std::env::temp_dir(),
            lazarus: lazarus.into(),
            answers: DEFAULT_ANSWERS,
            rss_interval: Duration::from_millis(10),
            reference: DEFAULT_REFERENCE,
            command: String::new(),
        }
    }

    /// The size of `w`, MiB.
    pub fn mib_of(&self, w: Workload) -> u64 {
        match (self.mib, self.quick) {
            (Some(m), _) => m,
            (None, true) => QUICK_MIB,
            (None, false) => w.default_mib(),
        }
    }

    /// Repeats actually run (`--quick`: one).
    pub fn repeats(&self) -> usize {
        if self.quick { 1 } else { self.repeat }
    }

    /// Answers actually measured per kvserver run.
    pub fn answer_count(&self) -> usize {
        if self.quick {
            self.answers.min(QUICK_ANSWERS)
        } else {
            self.answers
        }
    }

    fn validate(&self) -> Result<(), BenchError> {
        let bad = |what: String| Err(BenchError::Options(what));
        if self.workloads.is_empty() {
            return bad("no workload".into());
        }
        if self.strategies.is_empty() {
            return bad("no strategy".into());
        }
        if let Some(m) = self.mib
            && !(1..=MAX_MIB).contains(&m)
        {
            return bad(format!("--mib {m}: between 1 and {MAX_MIB}"));
        }
        if !(1..=MAX_REPEAT).contains(&self.repeat) {
            return bad(format!(
                "--repeat {}: between 1 and {MAX_REPEAT}",
                self.repeat
            ));
        }
        if !(1..=MAX_ANSWERS).contains(&self.answers) {
            return bad(format!(
                "{} answers: between 1 and {MAX_ANSWERS}",
                self.answers
            ));
        }
        Ok(())
    }
}

/// Why `lazarus bench` failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Options out of range.
    #[error("bad options: {0}")]
    Options(String),
    /// A workload could not be prepared or run.
    #[error("{workload} / {strategy}: {message}")]
    Run {
        /// The workload.
        workload: &'static str,
        /// The strategy (or `prepare`).
        strategy: &'static str,
        /// What failed.
        message: String,
    },
    /// Writing the results.
    #[error("{what}: {source}")]
    Output {
        /// What was being written.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

/// What one strategy's run gives back to the driver.
pub(crate) enum Outcome {
    /// Measured.
    Ran(Box<Run>),
    /// Not measured, with the reason (e.g. CRIU unusable, cold cache without
    /// root).
    Skipped(String),
}

/// A prepared workload: runs one strategy once.
pub(crate) trait Prepared {
    /// Capture time, ms, and image size, bytes.
    fn capture(&self) -> (f64, u64);
    /// Files a run reads (the image, the raw file): warmed or dropped.
    fn files(&self) -> Vec<PathBuf>;
    /// Runs `strategy` once.
    fn run(&mut self, strategy: Strategy, cache: CacheState) -> Result<Outcome, String>;
    /// A description for the report (sizes, pages).
    fn describe(&self) -> String;
}

/// Runs the benchmark and writes its results into `opts.out`.
pub fn run(opts: &BenchOptions) -> Result<BenchResults, BenchError> {
    opts.validate()?;
    std::fs::create_dir_all(&opts.out).map_err(|source| BenchError::Output {
        what: format!("create {}", opts.out.display()),
        source,
    })?;
    let started = Instant::now();
    let root = rustix::process::geteuid().is_root();
    let criu = if opts.strategies.contains(&Strategy::Criu) {
        Some(criu_status())
    } else {
        None
    };
    let states = opts.cache.states();
    let per_workload = opts.repeats() * states.len() * opts.strategies.len();
    let mut progress = Progress::new((opts.workloads.len() * (per_workload + 1)) as u64);
    let mut workloads = Vec::new();
    for &w in &opts.workloads {
        let mib = opts.mib_of(w);
        let fail = |strategy: &'static str| {
            move |message: String| BenchError::Run {
                workload: w.name(),
                strategy,
                message,
            }
        };
        progress.step(&format!("{}: prepare ({mib} MiB)", w.name()));
        let mut prepared: Box<dyn Prepared> = match w {
            Workload::Memhog => Box::new(memhog::prepare(opts, mib).map_err(fail("prepare"))?),
            Workload::Kvserver => Box::new(kvserver::prepare(opts, mib).map_err(fail("prepare"))?),
            Workload::Memfile => Box::new(memfile::prepare(opts, mib).map_err(fail("prepare"))?),
        };
        let mut runs: Vec<(Strategy, CacheState, Outcome)> = Vec::new();
        for _ in 0..opts.repeats() {
            for &cache in states {
                for &s in &opts.strategies {
                    progress.step(&format!(
                        "{}: {} ({} cache)",
                        w.name(),
                        s.name(),
                        cache.name()
                    ));
                    let outcome = if s == Strategy::Criu {
                        let reason = match (&criu, w) {
                            (_, Workload::Memfile) => {
                                "CRIU restores processes, not a VMM's memory file".to_owned()
                            }
                            (Some(Err(reason)), _) => reason.clone(),
                            (_, _) => "criu check passed, but this harness does not drive CRIU \
                                       restores yet"
                                .to_owned(),
                        };
                        Outcome::Skipped(reason)
                    } else if cache == CacheState::Cold && !root {
                        Outcome::Skipped("a cold page cache needs root (drop_caches)".into())
                    } else {
                        prepare_cache(cache, &prepared.files()).map_err(fail(s.name()))?;
                        prepared.run(s, cache).map_err(fail(s.name()))?
                    };
                    runs.push((s, cache, outcome));
                }
            }
        }
        let (capture_ms, image_bytes) = prepared.capture();
        workloads.push(results::summarize(
            w,
            mib,
            prepared.describe(),
            capture_ms,
            image_bytes,
            opts,
            &runs,
        ));
        drop(prepared);
    }
    progress.finish();
    let results = BenchResults {
        schema_version: SCHEMA_VERSION,
        lazarus_version: env!("CARGO_PKG_VERSION").to_owned(),
        command: opts.command.clone(),
        started_unix_s: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .saturating_sub(started.elapsed().as_secs()),
        elapsed_s: started.elapsed().as_secs_f64(),
        machine: machine::Machine::probe(),
        config: results::ConfigRecord::of(opts, root),
        workloads,
    };
    results::write(&results, &opts.out)?;
    plot::write_all(&results, &opts.out)?;
    Ok(results)
}

/// Makes the page cache cold or warm for `files`.
fn prepare_cache(cache: CacheState, files: &[PathBuf]) -> Result<(), String> {
    match cache {
        CacheState::Warm => {
            for f in files {
                let mut file =
                    std::fs::File::open(f).map_err(|e| format!("warm {}: {e}", f.display()))?;
                std::io::copy(&mut file, &mut std::io::sink())
                    .map_err(|e| format!("warm {}: {e}", f.display()))?;
            }
            Ok(())
        }
        CacheState::Cold => {
            rustix::fs::sync();
            std::fs::write("/proc/sys/vm/drop_caches", "3\n")
                .map_err(|e| format!("drop the page cache: {e}"))
        }
    }
}

/// Longest skip reason kept from `criu check`'s message, bytes.
const MAX_REASON: usize = 400;

/// Whether CRIU can be used here: `Ok` if a `criu` on `PATH` passes `criu
/// check`, otherwise the reason.
pub(crate) fn criu_status() -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let Some(criu) = std::env::split_paths(&path)
        .map(|d| d.join("criu"))
        .find(|p| p.is_file())
    else {
        return Err("no criu binary on PATH".into());
    };
    let out = std::process::Command::new(&criu)
        .arg("check")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {} check: {e}", criu.display()))?;
    if out.status.success() {
        return Ok(criu);
    }
    let why = criu_reason(&String::from_utf8_lossy(&out.stderr));
    Err(format!(
        "`{} check` failed ({}): {why}",
        criu.display(),
        out.status
    ))
}

/// The root cause in `criu check`'s messages. criu prints a chain of
/// `Error (file.c:line): message` lines, helpers' exit statuses first, then
/// the cause (`vdso: Unexpected rt vDSO area bounds`), then its
/// consequences: the first message that is not an exit status, at most
/// [`MAX_REASON`] bytes.
fn criu_reason(stderr: &str) -> String {
    let mut why = stderr
        .lines()
        .map(|l| l.trim().split_once("): ").map_or(l.trim(), |(_, msg)| msg))
        .find(|msg| !msg.is_empty() && !msg.starts_with("exited, status"))
        .unwrap_or("no message")
        .to_owned();
    if why.len() > MAX_REASON {
        let cut = (0..=MAX_REASON)
            .rev()
            .find(|&i| why.is_char_boundary(i))
            .unwrap_or(0);
        why.truncate(cut);
        why.push('…');
    }
    why
}

/// Wall-clock milliseconds since `t0`.
pub(crate) fn ms_since(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64() * 1e3
}

/// A temporary directory for a workload's files under `opts.work_dir`.
pub(crate) fn work_dir(opts: &BenchOptions, w: Workload) -> Result<tempfile::TempDir, String> {
    tempfile::Builder::new()
        .prefix(&format!("lazarus-bench-{}-", w.name()))
        .tempdir_in(&opts.work_dir)
        .map_err(|e| format!("temporary directory in {}: {e}", opts.work_dir.display()))
}

/// Runs `lazarus extract IMAGE -o OUT --pack [--region START:LEN]...`: the
/// selected memory of the image back to back in a raw file.
pub(crate) fn extract_raw(
    lazarus: &Path,
    image: &Path,
    out: &Path,
    regions: &[(u64, u64)],
) -> Result<(), String> {
    let mut cmd = std::process::Command::new(lazarus);
    cmd.arg("extract")
        .arg(image)
        .arg("-o")
        .arg(out)
        .arg("--pack")
        .stdout(std::process::Stdio::null());
    for (start, len) in regions {
        cmd.arg("--region").arg(format!("{start:#x}:{len:#x}"));
    }
    let st = cmd
        .output()
        .map_err(|e| format!("run {} extract: {e}", lazarus.display()))?;
    if !st.status.success() {
        return Err(format!(
            "lazarus extract: {}",
            String::from_utf8_lossy(&st.stderr).trim()
        ));
    }
    Ok(())
}

/// The spread of `f` over the runs that have it.
pub(crate) fn spread_of<'a>(
    runs: impl IntoIterator<Item = &'a Run>,
    f: impl Fn(&Run) -> Option<f64>,
) -> Option<Spread> {
    Spread::of(runs.into_iter().filter_map(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criu_reason_is_the_root_cause() {
        // `criu check` (3.17.1) on Linux 6.18, as printed here.
        let stderr = "Error (criu/util.c:642): exited, status=1\n\
                      Error (criu/util.c:642): exited, status=1\n\
                      Error (criu/vdso.c:381): vdso: Unexpected rt vDSO area bounds\n\
                      Error (criu/vdso.c:613): vdso: Failed to fill self vdso symtable\n\
                      Error (criu/crtools.c:260): Could not initialize kernel features detection.\n";
        assert_eq!(criu_reason(stderr), "vdso: Unexpected rt vDSO area bounds");
        assert_eq!(criu_reason(""), "no message");
        let long = format!("Error (x.c:1): {}", "é".repeat(MAX_REASON));
        let why = criu_reason(&long);
        assert!(why.len() <= MAX_REASON + '…'.len_utf8() && why.ends_with('…'));
    }
}
