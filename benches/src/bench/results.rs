//! The results: one [`Run`] per strategy run, summarized per strategy
//! ([`StrategyResult`]: median, min and max of every figure, ratios to the
//! reference strategy), written as `results.json` (schema in docs/BENCH.md)
//! and `results.md`.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::{BenchError, BenchOptions, CacheState, Outcome, Strategy, Workload, spread_of};
use crate::stats::{Spread, ratio};

/// A latency distribution, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// What was timed (see docs/BENCH.md): `agent fault service`, `handler
    /// fault service`, `first touch`, `answer`.
    pub kind: &'static str,
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Largest.
    pub max_us: f64,
    /// `[quantile, µs]` pairs, ascending: the CDF.
    pub cdf: Vec<[f64; 2]>,
}

/// The quantiles a [`Latency`] keeps from a histogram (the agent's
/// `LATENCY_QUANTILES`, so every curve has the same points).
pub(crate) const QUANTILES: [f64; 16] = restore_agent::stats::LATENCY_QUANTILES;

impl Latency {
    /// From an hdrhistogram of nanoseconds; `None` if it is empty.
    pub(crate) fn from_histogram(
        kind: &'static str,
        h: &hdrhistogram::Histogram<u64>,
    ) -> Option<Latency> {
        if h.is_empty() {
            return None;
        }
        let us = |ns: u64| ns as f64 / 1e3;
        Some(Latency {
            kind,
            count: h.len(),
            p50_us: us(h.value_at_quantile(0.5)),
            p99_us: us(h.value_at_quantile(0.99)),
            max_us: us(h.max()),
            cdf: QUANTILES
                .iter()
                .map(|&q| [q, us(h.value_at_quantile(q))])
                .collect(),
        })
    }

    /// From the agent's statistics (`stats.faults.latency` of
    /// `lazarus restore --json`, or `Stats`); `None` if no fault was timed.
    pub(crate) fn from_agent_json(v: &serde_json::Value) -> Option<Latency> {
        let count = v["count"].as_u64().filter(|&c| c > 0)?;
        let cdf = v["quantiles_us"]
            .as_array()?
            .iter()
            .filter_map(|p| Some([p[0].as_f64()?, p[1].as_f64()?]))
            .collect();
        Some(Latency {
            kind: "agent fault service",
            count,
            p50_us: v["p50_us"].as_f64()?,
            p99_us: v["p99_us"].as_f64()?,
            max_us: v["max_us"].as_f64()?,
            cdf,
        })
    }
}

/// The figures of one run of one strategy. Times are ms from the start of
/// the restore (docs/BENCH.md defines each per workload).
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// Until the workload runs (its memory usable).
    pub running_ms: f64,
    /// Until its first correct answer.
    pub first_answer_ms: Option<f64>,
    /// Until its first N answers (kvserver) or its working set (memfile,
    /// replays) are done.
    pub answers_ms: Option<f64>,
    /// Until every page is in (`None`: never, on demand only).
    pub all_in_ms: Option<f64>,
    /// Page faults served (kernel-mmap: pages touched).
    pub faults: u64,
    /// Bytes copied into the memory (by faults and prefetch).
    pub bytes_copied: u64,
    /// Bytes of zero pages installed.
    pub bytes_zeroed: u64,
    /// Fault latency.
    pub fault_latency: Option<Latency>,
    /// Latency of the first N answers (kvserver).
    pub answer_latency: Option<Latency>,
    /// First-touch latency of every page as the workload saw it (in-process
    /// replays only).
    pub touch_latency: Option<Latency>,
    /// Resident memory after the restore: `[ms since the start, MiB]`.
    pub rss: Vec<[f64; 2]>,
}

/// A figure's spread and its ratio to the reference strategy's median.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Figure {
    /// Median, min and max over the repeats.
    #[serde(flatten)]
    pub spread: Spread,
    /// `median / reference median` (same workload and cache state).
    pub vs_reference: Option<f64>,
}

/// One strategy under one cache state.
#[derive(Debug, Clone, Serialize)]
pub struct StrategyResult {
    /// The strategy.
    pub strategy: Strategy,
    /// The page cache state.
    pub cache: CacheState,
    /// `ok` or `skipped`.
    pub status: &'static str,
    /// Why it was skipped.
    pub reason: Option<String>,
    /// How it was measured (`process restore` or `in-process replay`).
    pub method: &'static str,
    /// Until it runs, ms.
    pub running_ms: Option<Figure>,
    /// Until the first correct answer, ms.
    pub first_answer_ms: Option<Figure>,
    /// Until the first N answers / the working set, ms.
    pub answers_ms: Option<Figure>,
    /// Until every page is in, ms.
    pub all_in_ms: Option<Figure>,
    /// Faults.
    pub faults: Option<Spread>,
    /// Bytes copied.
    pub bytes_copied: Option<Spread>,
    /// Bytes zeroed.
    pub bytes_zeroed: Option<Spread>,
    /// Every run, in order.
    pub runs: Vec<Run>,
}

/// The capture of a workload.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CaptureRecord {
    /// Capture (or, memfile, image writing) time, ms.
    pub time_ms: f64,
    /// Image size, bytes.
    pub image_bytes: u64,
}

/// One workload.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadResult {
    /// The workload.
    pub workload: Workload,
    /// Its size, MiB.
    pub mib: u64,
    /// What it held (pages, keys).
    pub description: String,
    /// Its capture.
    pub capture: CaptureRecord,
    /// The reference strategy of the ratios.
    pub reference: Strategy,
    /// Per strategy and cache state.
    pub results: Vec<StrategyResult>,
}

/// The machine the run was made on.
pub use super::machine::Machine;

/// The options of the run.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigRecord {
    /// Workloads.
    pub workloads: Vec<Workload>,
    /// Strategies.
    pub strategies: Vec<Strategy>,
    /// Repeats.
    pub repeat: usize,
    /// `--quick`.
    pub quick: bool,
    /// Cache states.
    pub cache: Vec<CacheState>,
    /// kvserver answers measured per run.
    pub answers: usize,
    /// RSS sampling interval, ms.
    pub rss_interval_ms: f64,
    /// Reference strategy of the ratios.
    pub reference: Strategy,
    /// Whether it ran as root.
    pub root: bool,
}

impl ConfigRecord {
    pub(crate) fn of(o: &BenchOptions, root: bool) -> Self {
        Self {
            workloads: o.workloads.clone(),
            strategies: o.strategies.clone(),
            repeat: o.repeats(),
            quick: o.quick,
            cache: o.cache.states().to_vec(),
            answers: o.answer_count(),
            rss_interval_ms: o.rss_interval.as_secs_f64() * 1e3,
            reference: o.reference,
            root,
        }
    }
}

/// Everything `lazarus bench` measured: `results.json`.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResults {
    /// [`super::SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Version of Lazarus.
    pub lazarus_version: String,
    /// The command line.
    pub command: String,
    /// When it started, seconds since the Unix epoch.
    pub started_unix_s: u64,
    /// How long it took, s.
    pub elapsed_s: f64,
    /// The machine.
    pub machine: Machine,
    /// The options.
    pub config: ConfigRecord,
    /// Per workload.
    pub workloads: Vec<WorkloadResult>,
}

impl WorkloadResult {
    /// The workload's name.
    pub fn workload_name(&self) -> &'static str {
        self.workload.name()
    }
}

impl StrategyResult {
    /// The strategy's name.
    pub fn strategy_name(&self) -> &'static str {
        self.strategy.name()
    }

    /// Its position in [`Strategy::ALL`] (a stable color in plots).
    pub fn strategy_index(&self) -> usize {
        Strategy::ALL
            .iter()
            .position(|s| *s == self.strategy)
            .unwrap_or(0)
    }
}

/// Groups the runs of a workload per strategy and cache state.
pub(crate) fn summarize(
    workload: Workload,
    mib: u64,
    description: String,
    capture_ms: f64,
    image_bytes: u64,
    opts: &BenchOptions,
    runs: &[(Strategy, CacheState, Outcome)],
) -> WorkloadResult {
    let mut results = Vec::new();
    for &cache in opts.cache.states() {
        for &strategy in &opts.strategies {
            let mut ok = Vec::new();
            let mut reason = None;
            for (s, c, o) in runs {
                if (*s, *c) != (strategy, cache) {
                    continue;
                }
                match o {
                    Outcome::Ran(r) => ok.push((**r).clone()),
                    Outcome::Skipped(why) => reason = Some(why.clone()),
                }
            }
            let fig = |f: fn(&Run) -> Option<f64>| {
                spread_of(&ok, f).map(|spread| Figure {
                    spread,
                    vs_reference: None,
                })
            };
            let cnt = |f: fn(&Run) -> u64| spread_of(&ok, |r| Some(f(r) as f64));
            results.push(StrategyResult {
                strategy,
                cache,
                status: if ok.is_empty() { "skipped" } else { "ok" },
                reason: if ok.is_empty() {
                    Some(reason.unwrap_or_else(|| "no run".into()))
                } else {
                    None
                },
                method: if strategy.is_replay() || workload == Workload::Memfile {
                    "in-process replay"
                } else {
                    "process restore"
                },
                running_ms: fig(|r| Some(r.running_ms)),
                first_answer_ms: fig(|r| r.first_answer_ms),
                answers_ms: fig(|r| r.answers_ms),
                all_in_ms: fig(|r| r.all_in_ms),
                faults: cnt(|r| r.faults),
                bytes_copied: cnt(|r| r.bytes_copied),
                bytes_zeroed: cnt(|r| r.bytes_zeroed),
                runs: ok,
            });
        }
    }
    // Ratios to the reference, within the same cache state.
    let reference: Vec<(CacheState, [Option<f64>; 4])> = results
        .iter()
        .filter(|r| r.strategy == opts.reference)
        .map(|r| (r.cache, medians(r)))
        .collect();
    for r in &mut results {
        let Some((_, refs)) = reference.iter().find(|(c, _)| *c == r.cache) else {
            continue;
        };
        for (fig, reference) in [
            &mut r.running_ms,
            &mut r.first_answer_ms,
            &mut r.answers_ms,
            &mut r.all_in_ms,
        ]
        .into_iter()
        .zip(refs)
        {
            if let (Some(f), Some(reference)) = (fig.as_mut(), reference) {
                f.vs_reference = ratio(f.spread.median, *reference);
            }
        }
    }
    WorkloadResult {
        workload,
        mib,
        description,
        capture: CaptureRecord {
            time_ms: capture_ms,
            image_bytes,
        },
        reference: opts.reference,
        results,
    }
}

fn medians(r: &StrategyResult) -> [Option<f64>; 4] {
    [
        r.running_ms.map(|f| f.spread.median),
        r.first_answer_ms.map(|f| f.spread.median),
        r.answers_ms.map(|f| f.spread.median),
        r.all_in_ms.map(|f| f.spread.median),
    ]
}

/// Writes `results.json` and `results.md` into `out`.
pub(crate) fn write(results: &BenchResults, out: &Path) -> Result<(), BenchError> {
    let err = |what: &str| {
        let what = format!("{what} in {}", out.display());
        move |source| BenchError::Output { what, source }
    };
    let json = serde_json::to_string_pretty(results)
        .map_err(|e| err("serialize results.json")(std::io::Error::other(e)))?;
    std::fs::write(out.join("results.json"), json + "\n").map_err(err("write results.json"))?;
    std::fs::write(out.join("results.md"), markdown(results)).map_err(err("write results.md"))
}

/// A time figure as `median (min–max)`, with its ratio.
fn cell(f: Option<Figure>) -> String {
    match f {
        None => "—".into(),
        Some(f) => {
            let r = f
                .vs_reference
                .map(|x| format!(" ×{x:.2}"))
                .unwrap_or_default();
            format!("{}{r}", f.spread)
        }
    }
}

/// The markdown report: one table per workload.
pub fn markdown(results: &BenchResults) -> String {
    let m = &results.machine;
    let mut out = String::new();
    let _ = writeln!(out, "# lazarus bench\n");
    let _ = writeln!(
        out,
        "`{}` — {} cores ({}), {:.1} GiB, Linux {}; {} repeat(s), {:.0} s in all.\n",
        results.command,
        m.cores,
        m.cpu_model,
        m.memory_bytes as f64 / f64::from(1u32 << 30),
        m.kernel,
        results.config.repeat,
        results.elapsed_s,
    );
    let _ = writeln!(
        out,
        "Times in ms from the start of the restore: median (min–max) ×ratio to the median \
         of `{}` in the same run and cache state.\n",
        results.config.reference.name()
    );
    for w in &results.workloads {
        let _ = writeln!(
            out,
            "## {} ({} MiB)\n\n{}; capture {:.1} ms, image {:.1} MiB.\n",
            w.workload.name(),
            w.mib,
            w.description,
            w.capture.time_ms,
            w.capture.image_bytes as f64 / f64::from(1u32 << 20),
        );
        let _ = writeln!(
            out,
            "| strategy | cache | until it runs | first answer | first N answers / working set | every page in | faults | MiB copied | fault p50 / p99 µs |\n\
             | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        );
        for r in &w.results {
            if r.status != "ok" {
                let _ = writeln!(
                    out,
                    "| {} | {} | skipped: {} | | | | | | |",
                    r.strategy.name(),
                    r.cache.name(),
                    r.reason.as_deref().unwrap_or("")
                );
                continue;
            }
            let lat = r
                .runs
                .iter()
                .filter_map(|x| x.fault_latency.as_ref())
                .map(|l| (l.p50_us, l.p99_us))
                .collect::<Vec<_>>();
            let lat = Spread::of(lat.iter().map(|l| l.0))
                .zip(Spread::of(lat.iter().map(|l| l.1)))
                .map_or_else(
                    || "—".into(),
                    |(a, b)| format!("{:.1} / {:.1}", a.median, b.median),
                );
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {:.0} | {:.1} | {lat} |",
                r.strategy.name(),
                r.cache.name(),
                cell(r.running_ms),
                cell(r.first_answer_ms),
                cell(r.answers_ms),
                cell(r.all_in_ms),
                r.faults.map_or(0.0, |s| s.median),
                r.bytes_copied.map_or(0.0, |s| s.median) / f64::from(1u32 << 20),
            );
        }
        let _ = writeln!(out);
    }
    out
}
