//! The `serve` suite: Lazarus as a VMM's page-fault handler, side by side
//! with the baseline handler of the common examples ([`baseline`]: mmap the
//! raw memory file, copy the faulting page on each fault).
//!
//! ```text
//!  memory file (memfile fixture, LAZARUS_BENCH_MIB MiB: 40 % zero, 40 % text, 20 % random)
//!  image of the same bytes (64 KiB chunks, zstd)
//!
//!  per handler, a fresh "VM" each run (fixtures::vmm::GuestMemory in this
//!  process: anonymous memory, userfaultfd with EVENT_REMOVE, Firecracker's
//!  handshake over the handler's socket):
//!   first fault      connect + handshake → first word of a data page read
//!   fault latency    touches of random data pages (first page of a chunk: a
//!                    cold chunk for Lazarus), of the next page (its chunk
//!                    cached), of zero pages; no prefetch
//!   population       one thread reads every word (sum checked), per strategy:
//!                    Lazarus demand (page policy, chunk policy), Lazarus with
//!                    2 prefetch workers, baseline demand; and Lazarus prefetch
//!                    alone (no reader) until populated
//! ```
//!
//! The VM is a thread of the benchmark process, the handlers run in threads
//! of it too: the userfaultfd path is the same as across processes (DESIGN.md
//! measured 12 vs 13 µs). Such a VM never exits, so each run starts its
//! handler afresh (not timed; the VM connects [`SETTLE`] later, as a VMM
//! finds its handler already listening) and stops it afterwards. Both handlers read
//! files the benchmark just wrote (page cache). Medians of
//! `LAZARUS_BENCH_REPEAT` runs.

pub(crate) mod baseline;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fixtures::Fixture;
use fixtures::vmm::{Backing, GuestMemory, HandshakeStyle};
use restore_agent::serve::{Handler, HandlerOptions};
use restore_agent::{FaultPolicy, ServerOptions, WorkingSetOptions};
use serde::Serialize;
use snapshot_format::PageSource;

use crate::agent::{self, BenchError, Config, median, quantile};
use baseline::Baseline;

const PAGE: u64 = 4096;
/// Touches measured per fault kind and run.
const LATENCY_SAMPLES: usize = 2000;
/// The longest a population or a fixture may take.
const LIMIT: Duration = Duration::from_secs(600);
/// Pause between a handler's start and its VM's connection: a handler is
/// started before its VMM (it must listen first), so its start-up (thread
/// creation, the chunk cache's memory being touched) is not part of a
/// VM's restore.
const SETTLE: Duration = Duration::from_millis(200);

/// The suite failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeBenchError {
    /// Building the image, a mismatch, a timeout (shared with the agent
    /// suite).
    #[error(transparent)]
    Bench(#[from] BenchError),
    /// The `memfile` fixture is not built.
    #[error(transparent)]
    Fixture(#[from] fixtures::BinaryNotFound),
    /// A handler or a VM could not be set up.
    #[error("{what}: {source}")]
    Setup {
        /// What.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The Lazarus handler did not start.
    #[error("lazarus handler: {0}")]
    Handler(#[from] restore_agent::serve::StartError),
}

fn setup(what: &'static str) -> impl FnOnce(std::io::Error) -> ServeBenchError {
    move |source| ServeBenchError::Setup { what, source }
}

/// One figure for both handlers.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// What is measured.
    pub metric: String,
    /// Unit.
    pub unit: &'static str,
    /// Lazarus, per configuration: (configuration, median).
    pub lazarus: Vec<(&'static str, f64)>,
    /// The baseline handler's median (`None`: it has no such mode).
    pub baseline: Option<f64>,
}

/// The suite's results.
#[derive(Debug, Clone, Serialize)]
pub struct ServeReport {
    /// Guest memory size in MiB.
    pub mib: u64,
    /// Repetitions behind each median.
    pub repeats: usize,
    /// Pages holding data.
    pub data_pages: u64,
    /// Image size on disk.
    pub image_bytes: u64,
    /// Memory file size on disk (allocated blocks: zero runs are holes).
    pub memfile_bytes: u64,
    /// Figures.
    pub rows: Vec<Row>,
}

impl ServeReport {
    /// The report as an aligned text table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "serve: {} MiB guest memory ({} data pages; memory file {:.1} MiB on disk, image {:.1} MiB), medians of {} runs\n",
            self.mib,
            self.data_pages,
            self.memfile_bytes as f64 / (1 << 20) as f64,
            self.image_bytes as f64 / (1 << 20) as f64,
            self.repeats
        );
        out.push_str(&format!(
            "{:<50} {:>10} {:>10}  {}\n",
            "metric", "baseline", "lazarus", "lazarus configuration (÷ baseline)"
        ));
        for r in &self.rows {
            let base = r
                .baseline
                .map_or_else(|| "—".to_owned(), |b| format!("{b:.2}"));
            for (i, (cfg, v)) in r.lazarus.iter().enumerate() {
                let ratio = r
                    .baseline
                    .map(|b| format!(" ({:.2}×)", v / b))
                    .unwrap_or_default();
                let metric = if i == 0 {
                    format!("{} [{}]", r.metric, r.unit)
                } else {
                    String::new()
                };
                let base = if i == 0 { base.as_str() } else { "" };
                out.push_str(&format!(
                    "{metric:<50} {base:>10} {v:>10.2}  {cfg}{ratio}\n"
                ));
            }
        }
        out
    }
}

/// Which handler serves a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Baseline,
    Lazarus { policy: FaultPolicy, workers: usize },
}

impl Which {
    fn name(self) -> &'static str {
        match self {
            Self::Baseline => "baseline",
            Self::Lazarus {
                policy: FaultPolicy::Page,
                workers: 0,
            } => "demand, page policy",
            Self::Lazarus {
                policy: FaultPolicy::Chunk,
                workers: 0,
            } => "demand, chunk policy",
            Self::Lazarus { workers: 1, .. } => "prefetch, 1 worker",
            Self::Lazarus { .. } => "prefetch, 2 workers",
        }
    }
}

/// A running handler of either kind.
enum Running {
    Baseline(Baseline),
    Lazarus(Handler),
}

/// The files and the expected contents.
struct Files {
    bench: agent::Bench,
    memfile: PathBuf,
    dir: PathBuf,
}

impl Files {
    /// Starts a handler on a fresh socket.
    fn start(&self, which: Which) -> Result<Running, ServeBenchError> {
        let socket = self.socket();
        Ok(match which {
            Which::Baseline => Running::Baseline(
                Baseline::start(&self.memfile, &socket).map_err(setup("baseline handler"))?,
            ),
            Which::Lazarus { policy, workers } => Running::Lazarus(Handler::start(
                Arc::clone(&self.bench.image),
                &socket,
                HandlerOptions {
                    server: ServerOptions {
                        fault_policy: policy,
                        prefetch_workers: workers,
                        ..ServerOptions::default()
                    },
                    working_set: WorkingSetOptions::NONE,
                    ..HandlerOptions::default()
                },
            )?),
        })
    }
}

impl Files {
    /// Where handlers listen (one at a time).
    fn socket(&self) -> PathBuf {
        self.dir.join("handler.sock")
    }

    /// Runs `f` with a fresh VM served by a fresh handler of kind `which`:
    /// `f` gets the VM and the time its handshake was sent; the handler
    /// stops afterwards (see the module docs).
    fn run_vm<R>(
        &self,
        which: Which,
        f: impl FnOnce(&Running, &GuestMemory, Instant) -> Result<R, ServeBenchError>,
    ) -> Result<R, ServeBenchError> {
        let running = self.start(which)?;
        std::thread::sleep(SETTLE);
        let size = self.bench.layout.pages() * PAGE;
        let (mem, stream, t0) = vm(size, &self.socket())?;
        let r = f(&running, &mem, t0);
        drop(stream);
        match running {
            Running::Lazarus(h) => {
                h.shutdown()
                    .map_err(|e| setup("lazarus handler")(std::io::Error::other(e.to_string())))?;
            }
            Running::Baseline(b) => drop(b),
        }
        drop(mem);
        r
    }
}

/// A fresh VM connected to `socket`; returns it, its socket, and the time
/// the handshake was sent.
fn vm(
    size: u64,
    socket: &Path,
) -> Result<(GuestMemory, std::os::unix::net::UnixStream, Instant), ServeBenchError> {
    let mem = GuestMemory::map(size, 1, &Backing::Anonymous).map_err(setup("map guest memory"))?;
    let t0 = Instant::now();
    let stream = mem
        .connect(socket, HandshakeStyle::Current)
        .map_err(setup("handshake"))?;
    Ok((mem, stream, t0))
}

/// Reads the word at byte `at` of the guest memory (faulting its page in).
fn touch(mem: &GuestMemory, at: u64) -> u64 {
    let words = mem.regions()[0].mem.words();
    std::hint::black_box(words[(at / 8) as usize].load(Ordering::Relaxed))
}

/// Runs the suite.
pub fn run(cfg: &Config) -> Result<ServeReport, ServeBenchError> {
    fixtures::try_binary("memfile")?;
    let tmp = tempfile::tempdir().map_err(setup("temporary directory"))?;
    let dir = tmp.path().to_path_buf();
    let bench = agent::build(&Config {
        dir: Some(dir.clone()),
        ..cfg.clone()
    })?;
    let memfile = dir.join("guest.mem");
    let mut fx = Fixture::spawn(
        "memfile",
        [
            "--out",
            memfile.to_str().expect("temporary paths are UTF-8"),
            "--mib",
            &cfg.mib.to_string(),
            "--seed",
            &cfg.seed.to_string(),
        ],
    )
    .map_err(setup("memfile"))?;
    fx.try_wait_exit(LIMIT)
        .map_err(|e| setup("memfile")(std::io::Error::other(e.to_string())))?;
    let files = Files {
        bench,
        memfile,
        dir,
    };
    let pages = (cfg.mib << 20) / PAGE;
    let data_pages = pages - files.bench.layout.count(fixtures::pattern::PageKind::Zero);
    let mut rows = Vec::new();

    // Samples: first and second page of data extents, and zero pages,
    // spread over the whole memory.
    let (mut cold, mut warm, mut zero) = (Vec::new(), Vec::new(), Vec::new());
    let extents = files.bench.image.extents();
    let step = (extents.len() / (4 * LATENCY_SAMPLES)).max(1);
    for e in extents.iter().step_by(step) {
        match e.source {
            PageSource::Chunk { offset: 0, .. }
                if e.len >= 2 * PAGE && cold.len() < LATENCY_SAMPLES =>
            {
                cold.push(e.start);
                warm.push(e.start + PAGE);
            }
            PageSource::Zero if zero.len() < LATENCY_SAMPLES => zero.push(e.start),
            _ => {}
        }
    }
    let first_page = cold.first().copied().unwrap_or(0);

    let demand = Which::Lazarus {
        policy: FaultPolicy::Page,
        workers: 0,
    };
    let default = Which::Lazarus {
        policy: FaultPolicy::Page,
        workers: 1,
    };
    // Handshake → first fault, and fault latencies.
    let mut first: Vec<(Which, Vec<f64>)> = Vec::new();
    let mut lat: Vec<(Which, [Vec<f64>; 6])> = Vec::new();
    for which in [Which::Baseline, demand, default] {
        let mut firsts = Vec::new();
        let mut l: [Vec<f64>; 6] = Default::default();
        for _ in 0..cfg.repeats {
            files.run_vm(which, |_, mem, t0| {
                touch(mem, first_page);
                firsts.push(t0.elapsed().as_secs_f64() * 1e6);
                if which == default {
                    return Ok(());
                }
                let mut samples: [Vec<f64>; 3] = Default::default();
                for (i, &a) in cold.iter().enumerate().skip(1) {
                    let timed = |at: u64| {
                        let t = Instant::now();
                        touch(mem, at);
                        t.elapsed().as_secs_f64() * 1e6
                    };
                    samples[0].push(timed(a));
                    samples[1].push(timed(warm[i]));
                    if let Some(&z) = zero.get(i) {
                        samples[2].push(timed(z));
                    }
                }
                for (k, mut s) in samples.into_iter().enumerate() {
                    s.sort_by(f64::total_cmp);
                    l[2 * k].push(quantile(&s, 0.5));
                    l[2 * k + 1].push(quantile(&s, 0.99));
                }
                Ok(())
            })?;
        }
        first.push((which, firsts));
        lat.push((which, l));
    }
    let pick = |v: &[(Which, Vec<f64>)], w: Which| {
        v.iter()
            .find(|(x, _)| *x == w)
            .map(|(_, s)| median(s.clone()))
    };
    rows.push(Row {
        metric: "handshake → first fault served".into(),
        unit: "µs",
        lazarus: vec![
            (demand.name(), pick(&first, demand).unwrap_or(f64::NAN)),
            (default.name(), pick(&first, default).unwrap_or(f64::NAN)),
        ],
        baseline: pick(&first, Which::Baseline),
    });
    for (k, name) in [
        "fault latency, data page (cold chunk) p50",
        "fault latency, data page (cold chunk) p99",
        "fault latency, next page (chunk cached) p50",
        "fault latency, next page (chunk cached) p99",
        "fault latency, zero page p50",
        "fault latency, zero page p99",
    ]
    .iter()
    .enumerate()
    {
        let of = |w: Which| {
            lat.iter()
                .find(|(x, _)| *x == w)
                .map(|(_, l)| median(l[k].clone()))
        };
        rows.push(Row {
            metric: (*name).into(),
            unit: "µs",
            lazarus: vec![(demand.name(), of(demand).unwrap_or(f64::NAN))],
            baseline: of(Which::Baseline),
        });
    }

    // Population: one thread reads everything.
    let strategies = [
        Which::Baseline,
        demand,
        Which::Lazarus {
            policy: FaultPolicy::Chunk,
            workers: 0,
        },
        Which::Lazarus {
            policy: FaultPolicy::Chunk,
            workers: 2,
        },
    ];
    let mut read_all: Vec<(Which, Vec<f64>)> = Vec::new();
    for which in strategies {
        let mut times = Vec::new();
        for _ in 0..cfg.repeats {
            files.run_vm(which, |_, mem, t0| {
                let sum = mem.regions()[0]
                    .mem
                    .words()
                    .iter()
                    .fold(0u64, |s, w| s.wrapping_add(w.load(Ordering::Relaxed)));
                let t = t0.elapsed();
                if sum != files.bench.sum {
                    return Err(BenchError::Mismatch(format!("serve, {}", which.name())).into());
                }
                times.push(t.as_secs_f64() * 1e3);
                Ok(())
            })?;
        }
        read_all.push((which, times));
    }
    rows.push(Row {
        metric: "population: one thread reads everything".into(),
        unit: "ms",
        lazarus: strategies[1..]
            .iter()
            .map(|&w| (w.name(), pick(&read_all, w).unwrap_or(f64::NAN)))
            .collect(),
        baseline: pick(&read_all, Which::Baseline),
    });

    // Prefetch alone: handshake → every page populated, nothing touching.
    let mut alone = Vec::new();
    for workers in [1, 2] {
        let which = Which::Lazarus {
            policy: FaultPolicy::Chunk,
            workers,
        };
        let mut times = Vec::new();
        for _ in 0..cfg.repeats {
            files.run_vm(which, |running, _, t0| {
                let Running::Lazarus(h) = running else {
                    unreachable!("a Lazarus configuration");
                };
                // The handler counts as populated until the VM's space exists.
                while h.connections().is_empty() && t0.elapsed() < LIMIT {
                    std::thread::yield_now();
                }
                if !h.wait_populated(LIMIT) {
                    return Err(BenchError::Timeout(LIMIT).into());
                }
                times.push(t0.elapsed().as_secs_f64() * 1e3);
                Ok(())
            })?;
        }
        alone.push((which.name(), median(times)));
    }
    rows.push(Row {
        metric: "population: prefetch alone (nothing reads)".into(),
        unit: "ms",
        lazarus: alone,
        baseline: None,
    });

    let image_bytes = std::fs::metadata(&files.bench.path)
        .map_err(setup("image size"))?
        .len();
    let memfile_bytes = std::os::unix::fs::MetadataExt::blocks(
        &std::fs::metadata(&files.memfile).map_err(setup("memory file size"))?,
    ) * 512;
    drop(tmp);
    Ok(ServeReport {
        mib: cfg.mib,
        repeats: cfg.repeats,
        data_pages,
        image_bytes,
        memfile_bytes,
        rows,
    })
}
