//! The restore agent suite: fault latency, population throughput, and the
//! time to read a whole region under each restore strategy, side by side in
//! one run, with ratios against the machine facts of DESIGN.md.
//!
//! ```text
//!  fault latency     zero page · cached chunk · cold chunk       (µs, vs 13 µs round trip)
//!  population        prefetch, 1 and 2 workers                   (GB/s, vs 2.9 GB/s per thread)
//!  read all          demand (page, chunk policy) · prefetch ·     (ms to the hot set, ms to
//!                    working-set prefetch · eager                  everything, GB/s)
//! ```
//!
//! The image is a guest-memory-like layout (`fixtures::pattern::Layout::memfile`:
//! 40 % zero, 40 % text, 20 % random pages, in runs), `LAZARUS_BENCH_MIB`
//! MiB (default 1024), 64 KiB chunks, zstd level 1. Restores are in-process
//! (`restore_into`), read by one thread of this process. Every read-all run
//! checks the sum of all words against the image.
//!
//! The workload of the read-all suite touches a *hot set* first (the first
//! page of 5 % of the chunks, in a scrambled order, like a program's working
//! set), then reads every word of the region in address order. The
//! working-set run prefetches with the working set recorded by the first
//! demand run (whose first faults are exactly that hot set).
//!
//! Medians of `LAZARUS_BENCH_REPEAT` runs (default 3): the machine is a
//! shared VM (DESIGN.md: repeat and report medians).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fixtures::pattern::{self, Layout, PageKind};
use restore_agent::{
    FaultPolicy, Placement, RestoreOptions, ServerOptions, WorkingSetOptions, restore_into,
};
use serde::Serialize;
use snapshot_format::{Image, ImageWriter, PageSource, RegionInfo, WriterOptions};

use crate::mem::{sum_words, touch};

/// Environment variable: region size in MiB.
pub const MIB_ENV: &str = "LAZARUS_BENCH_MIB";
/// Environment variable: repetitions (medians are reported).
pub const REPEAT_ENV: &str = "LAZARUS_BENCH_REPEAT";

/// DESIGN.md: one 4 KiB fault served by another thread, round trip.
pub const FACT_FAULT_US: f64 = 13.0;
/// DESIGN.md: `UFFDIO_COPY` throughput per thread at 64 KiB per call.
pub const FACT_COPY_GBS: f64 = 2.9;

const PAGE: u64 = 4096;
const CHUNK: usize = 64 * 1024;
/// The longest any population or read may take before the suite fails.
const LIMIT: Duration = Duration::from_secs(600);
/// Touches measured per fault kind.
const LATENCY_SAMPLES: usize = 4000;
/// Hot set: one chunk in this many.
const HOT_ONE_IN: u64 = 20;

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Region size in MiB.
    pub mib: u64,
    /// Repetitions of each measurement.
    pub repeats: usize,
    /// Seed of the memory layout.
    pub seed: u64,
    /// Where the image is written (a temporary directory by default).
    pub dir: Option<PathBuf>,
}

impl Config {
    /// From `LAZARUS_BENCH_MIB` and `LAZARUS_BENCH_REPEAT`.
    pub fn from_env() -> Result<Self, BenchError> {
        let get = |name: &'static str, default: u64| -> Result<u64, BenchError> {
            match std::env::var(name) {
                Ok(v) => v
                    .trim()
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or(BenchError::Env { name, value: v }),
                Err(_) => Ok(default),
            }
        };
        Ok(Self {
            mib: get(MIB_ENV, 1024)?,
            repeats: get(REPEAT_ENV, 3)? as usize,
            seed: 1,
            dir: None,
        })
    }

    /// The smoke-test size: 16 MiB, once.
    pub fn shrink(&mut self) {
        self.mib = self.mib.min(16);
        self.repeats = 1;
    }
}

/// The suite failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A bad environment variable.
    #[error("{name}={value:?}: expected a positive integer")]
    Env {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
    },
    /// Writing or opening the image failed.
    #[error("image: {0}")]
    Image(String),
    /// A restore failed.
    #[error("restore: {0}")]
    Restore(#[from] restore_agent::RestoreError),
    /// Population did not finish within the limit.
    #[error("population did not finish within {0:?}")]
    Timeout(Duration),
    /// Memory read back differs from the image.
    #[error("{0}: the memory read back differs from the image")]
    Mismatch(String),
    /// Temporary directory.
    #[error("temporary directory: {0}")]
    Io(#[from] std::io::Error),
}

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Suite (`fault latency`, `population`, `read all`).
    pub suite: &'static str,
    /// Case.
    pub case: String,
    /// What is measured.
    pub metric: &'static str,
    /// Median value.
    pub value: f64,
    /// Unit.
    pub unit: &'static str,
    /// Ratio to the machine fact it compares with (`value / fact`), and the
    /// fact's name.
    pub vs_fact: Option<(f64, &'static str)>,
}

/// The suite's results.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Region size in MiB.
    pub mib: u64,
    /// Repetitions behind each median.
    pub repeats: usize,
    /// Image size on disk.
    pub image_bytes: u64,
    /// Pages holding data (the rest are zero).
    pub data_pages: u64,
    /// Figures.
    pub rows: Vec<Row>,
}

impl Report {
    /// The report as an aligned text table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "restore agent: {} MiB region ({} data pages, image {:.1} MiB), medians of {} runs\n",
            self.mib,
            self.data_pages,
            self.image_bytes as f64 / (1 << 20) as f64,
            self.repeats
        );
        out.push_str(&format!(
            "{:<15} {:<26} {:<16} {:>12}  {}\n",
            "suite", "case", "metric", "value", "vs machine fact"
        ));
        for r in &self.rows {
            let vs = r
                .vs_fact
                .map(|(x, fact)| format!("{x:.2}× {fact}"))
                .unwrap_or_default();
            out.push_str(&format!(
                "{:<15} {:<26} {:<16} {:>9.2} {:<3}  {}\n",
                r.suite, r.case, r.metric, r.value, r.unit, vs
            ));
        }
        out
    }
}

/// The generated image and what it holds (also the `serve` suite's).
pub(crate) struct Bench {
    pub(crate) _dir: Option<tempfile::TempDir>,
    pub(crate) path: PathBuf,
    pub(crate) image: Arc<Image>,
    pub(crate) layout: Layout,
    /// Wrapping sum of every word of the region.
    pub(crate) sum: u64,
}

/// Runs the whole suite.
pub fn run(cfg: &Config) -> Result<Report, BenchError> {
    let bench = build(cfg)?;
    let pages = cfg.mib * (1 << 20) / PAGE;
    let data_pages = pages - bench.layout.count(PageKind::Zero);
    let mut rows = Vec::new();
    fault_latency(cfg, &bench, &mut rows)?;
    population(cfg, &bench, data_pages, &mut rows)?;
    read_all(cfg, &bench, &mut rows)?;
    Ok(Report {
        mib: cfg.mib,
        repeats: cfg.repeats,
        image_bytes: std::fs::metadata(&bench.path)?.len(),
        data_pages,
        rows,
    })
}

/// Writes the image (memfile layout: the bytes the `memfile` fixture writes
/// for the same seed and size) and computes its word sum.
pub(crate) fn build(cfg: &Config) -> Result<Bench, BenchError> {
    let (tmp, dir) = match &cfg.dir {
        Some(d) => (None, d.clone()),
        None => {
            let t = tempfile::tempdir()?;
            let d = t.path().to_path_buf();
            (Some(t), d)
        }
    };
    let path = dir.join("agent-bench.lzr");
    let pages = cfg.mib * (1 << 20) / PAGE;
    let layout = Layout::memfile(cfg.seed, pages);
    let img_err = |e: &dyn std::fmt::Display| BenchError::Image(e.to_string());
    let mut w = ImageWriter::create(
        &path,
        WriterOptions {
            chunk_size: CHUNK,
            workers: 2,
            ..WriterOptions::default()
        },
    )
    .map_err(|e| img_err(&e))?;
    w.begin_region(RegionInfo::raw_file(0, pages * PAGE))
        .map_err(|e| img_err(&e))?;
    let mut sum = 0u64;
    let batch = 512u64;
    let mut buf = vec![0u8; (batch * PAGE) as usize];
    let mut words = vec![0u64; pattern::WORDS_PER_PAGE];
    for first in (0..pages).step_by(batch as usize) {
        let n = batch.min(pages - first);
        for i in 0..n {
            let page = first + i;
            pattern::fill_page(layout.kind(page), layout.key(), page, &mut words);
            let out = &mut buf[(i * PAGE) as usize..((i + 1) * PAGE) as usize];
            for (b, w) in out.chunks_exact_mut(8).zip(&words) {
                b.copy_from_slice(&w.to_ne_bytes());
                sum = sum.wrapping_add(*w);
            }
        }
        w.write_pages(first * PAGE, &buf[..(n * PAGE) as usize])
            .map_err(|e| img_err(&e))?;
    }
    w.finish().map_err(|e| img_err(&e))?;
    let image = Arc::new(Image::open(&path).map_err(|e| img_err(&e))?);
    Ok(Bench {
        _dir: tmp,
        path,
        image,
        layout,
        sum,
    })
}

fn options(policy: FaultPolicy, workers: usize, ws: Option<(&Path, bool, bool)>) -> RestoreOptions {
    RestoreOptions {
        placement: Placement::Anywhere,
        server: ServerOptions {
            fault_policy: policy,
            prefetch_workers: workers,
            ..ServerOptions::default()
        },
        working_set: match ws {
            Some((p, load, save)) => WorkingSetOptions {
                path: Some(p.to_path_buf()),
                load,
                save,
            },
            None => WorkingSetOptions::NONE,
        },
        ..RestoreOptions::default()
    }
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

pub(crate) fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Fault latency seen by the faulting thread: zero pages, cold chunks
/// (decoded by the fault), cached chunks (another page of a chunk just
/// decoded). Page policy, no prefetch, within the first 64 MiB.
fn fault_latency(cfg: &Config, b: &Bench, rows: &mut Vec<Row>) -> Result<(), BenchError> {
    let window = (64u64 << 20).min(cfg.mib << 20);
    let (mut cold, mut cached, mut zero) = (Vec::new(), Vec::new(), Vec::new());
    for e in b.image.extents() {
        if e.start >= window {
            break;
        }
        match e.source {
            PageSource::Chunk { .. } if e.len >= 2 * PAGE && cold.len() < LATENCY_SAMPLES => {
                cold.push(e.start);
                cached.push(e.start + PAGE);
            }
            PageSource::Zero if zero.len() < LATENCY_SAMPLES => zero.push(e.start),
            _ => {}
        }
    }
    let mut samples: [Vec<Vec<f64>>; 3] = Default::default();
    for _ in 0..cfg.repeats {
        let h = restore_into(Arc::clone(&b.image), options(FaultPolicy::Page, 0, None))?;
        let base = h.regions()[0].addr;
        let mut lat = [Vec::new(), Vec::new(), Vec::new()];
        let timed = |addr: u64| {
            let t = Instant::now();
            std::hint::black_box(touch(base + addr));
            t.elapsed().as_secs_f64() * 1e6
        };
        for i in 0..cold.len().max(zero.len()) {
            if let (Some(&c), Some(&k)) = (cold.get(i), cached.get(i)) {
                lat[0].push(timed(c));
                lat[1].push(timed(k));
            }
            if let Some(&z) = zero.get(i) {
                lat[2].push(timed(z));
            }
        }
        drop(h);
        for (s, l) in samples.iter_mut().zip(lat) {
            s.push(l);
        }
    }
    for (name, runs) in ["cold chunk", "cached chunk", "zero page"]
        .iter()
        .zip(samples)
    {
        let (mut p50, mut p99) = (Vec::new(), Vec::new());
        for mut l in runs {
            l.sort_by(f64::total_cmp);
            p50.push(quantile(&l, 0.5));
            p99.push(quantile(&l, 0.99));
        }
        let p50 = median(p50);
        rows.push(Row {
            suite: "fault latency",
            case: (*name).into(),
            metric: "p50",
            value: p50,
            unit: "µs",
            vs_fact: Some((p50 / FACT_FAULT_US, "13 µs round trip")),
        });
        rows.push(Row {
            suite: "fault latency",
            case: (*name).into(),
            metric: "p99",
            value: median(p99),
            unit: "µs",
            vs_fact: None,
        });
    }
    Ok(())
}

/// Prefetch of the whole region, nothing touching it: data GB/s.
fn population(
    cfg: &Config,
    b: &Bench,
    data_pages: u64,
    rows: &mut Vec<Row>,
) -> Result<(), BenchError> {
    for workers in [1usize, 2] {
        let mut rates = Vec::new();
        for _ in 0..cfg.repeats {
            let t = Instant::now();
            let h = restore_into(
                Arc::clone(&b.image),
                options(FaultPolicy::Chunk, workers, None),
            )?;
            if !h.wait_populated(LIMIT) {
                return Err(BenchError::Timeout(LIMIT));
            }
            let secs = t.elapsed().as_secs_f64();
            rates.push((data_pages * PAGE) as f64 / secs / 1e9);
            h.stop()?;
        }
        let gbs = median(rates);
        rows.push(Row {
            suite: "population",
            case: format!(
                "prefetch, {workers} worker{}",
                if workers > 1 { "s" } else { "" }
            ),
            metric: "data copied",
            value: gbs,
            unit: "GB/s",
            vs_fact: Some((
                gbs / (FACT_COPY_GBS * workers as f64),
                "2.9 GB/s per thread",
            )),
        });
    }
    Ok(())
}

/// How a read-all run restores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Demand(FaultPolicy),
    Prefetch,
    WorkingSet,
    Eager,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Demand(FaultPolicy::Page) => "demand, page policy",
            Self::Demand(FaultPolicy::Chunk) => "demand, chunk policy",
            Self::Prefetch => "prefetch (2 workers)",
            Self::WorkingSet => "working-set prefetch",
            Self::Eager => "eager (populate, then run)",
        }
    }
}

/// Time to read the hot set, then every page, per restore strategy.
fn read_all(cfg: &Config, b: &Bench, rows: &mut Vec<Row>) -> Result<(), BenchError> {
    let bytes = cfg.mib << 20;
    let mut hot: Vec<u64> = (0..bytes / CHUNK as u64)
        .filter(|c| pattern::mix64(cfg.seed ^ c).is_multiple_of(HOT_ONE_IN))
        .map(|c| c * CHUNK as u64)
        .collect();
    hot.sort_by_key(|a| pattern::mix64(a ^ 0x5eed));
    let ws = b.path.with_extension("lzr.ws");
    let _ = std::fs::remove_file(&ws);
    let modes = [
        Mode::Demand(FaultPolicy::Page),
        Mode::Demand(FaultPolicy::Chunk),
        Mode::Prefetch,
        Mode::WorkingSet,
        Mode::Eager,
    ];
    for mode in modes {
        let (mut to_hot, mut total, mut faults) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..cfg.repeats {
            let opts = match mode {
                // The first demand run records the working set.
                Mode::Demand(p) => {
                    options(p, 0, Some((&ws, false, run == 0 && p == FaultPolicy::Page)))
                }
                Mode::Prefetch | Mode::Eager => options(FaultPolicy::Chunk, 2, None),
                Mode::WorkingSet => options(FaultPolicy::Chunk, 2, Some((&ws, true, false))),
            };
            let t = Instant::now();
            let h = restore_into(Arc::clone(&b.image), opts)?;
            if mode == Mode::WorkingSet && h.loaded_working_set().is_none() {
                return Err(BenchError::Image(format!(
                    "no working set at {}",
                    ws.display()
                )));
            }
            if mode == Mode::Eager && !h.wait_populated(LIMIT) {
                return Err(BenchError::Timeout(LIMIT));
            }
            let base = h.regions()[0].addr;
            for &a in &hot {
                std::hint::black_box(touch(base + a));
            }
            let hot_done = t.elapsed();
            let sum = sum_words(base, bytes);
            let all_done = t.elapsed();
            if sum != b.sum {
                return Err(BenchError::Mismatch(mode.name().into()));
            }
            faults.push(h.stats().faults.total as f64);
            h.stop()?;
            to_hot.push(hot_done.as_secs_f64() * 1e3);
            total.push(all_done.as_secs_f64() * 1e3);
        }
        let total_ms = median(total);
        let gbs = bytes as f64 / (total_ms / 1e3) / 1e9;
        let case = mode.name().to_string();
        rows.push(Row {
            suite: "read all",
            case: case.clone(),
            metric: "to hot set",
            value: median(to_hot),
            unit: "ms",
            vs_fact: None,
        });
        rows.push(Row {
            suite: "read all",
            case: case.clone(),
            metric: "to every page",
            value: total_ms,
            unit: "ms",
            vs_fact: None,
        });
        rows.push(Row {
            suite: "read all",
            case: case.clone(),
            metric: "rate",
            value: gbs,
            unit: "GB/s",
            vs_fact: Some((gbs / FACT_COPY_GBS, "2.9 GB/s per thread")),
        });
        rows.push(Row {
            suite: "read all",
            case,
            metric: "faults",
            value: median(faults),
            unit: "",
            vs_fact: None,
        });
    }
    Ok(())
}
