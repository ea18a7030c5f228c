//! Capture benchmark: a live process's memory into an image, side by side with simply
//! copying the same process's memory to a raw file, in one run.
//!
//! ```text
//! memhog --mib N          N MiB anonymous buffer: runs of 1-16 data pages (text or
//!                         random) then as many zero pages, every page written
//! for each run:
//!   raw copy   freeze (seize) · process_vm_readv every readable mapping in 4 MiB
//!              blocks · write() them to one file · detach        → time, bytes, GB/s
//!   capture    capture::capture_process (leave running)           → time, frozen time,
//!                                                                  image size, GB/s
//! report medians
//! ```
//!
//! GB/s is bytes of process memory handled per second (decimal GB): for the raw copy
//! the bytes copied, for the capture the address space the image covers (the same
//! mappings, plus the few it does not read, such as `[vvar]`). Neither is fsynced:
//! both measure the work up to the page cache. Files are deleted after each run.
//!
//! Configuration ([`CaptureBenchConfig::from_env`]): `LAZARUS_BENCH_CAPTURE_MIB`
//! (default 1024), `LAZARUS_BENCH_RUNS` (3), `LAZARUS_BENCH_DIR` (the system temporary
//! directory), and the capture's settings `LAZARUS_BENCH_WORKERS` (one per CPU),
//! `LAZARUS_BENCH_LEVEL` (the zstd default), `LAZARUS_BENCH_CHUNK_KIB` (64) and
//! `LAZARUS_BENCH_CODEC` (`zstd` or `raw`). The fixture programs must be built in the
//! same profile (`cargo build --release -p fixtures`).

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use capture::{CaptureOptions, capture_process};
use fixtures::Fixture;
use snapshot_format::{Compression, DEFAULT_CHUNK_SIZE, DEFAULT_ZSTD_LEVEL};
use tracee::{RemoteRange, SeizeOptions, SeizedProcess};

/// Bytes copied per `process_vm_readv` + `write` in the raw copy.
const BLOCK: u64 = 4 << 20;

/// How long memhog may take to fill its buffer.
const STARTUP: Duration = Duration::from_secs(300);

/// What to measure.
#[derive(Debug, Clone)]
pub struct CaptureBenchConfig {
    /// Size of the process's buffer, MiB.
    pub mib: u64,
    /// Runs of each method (medians are reported).
    pub runs: usize,
    /// Where the raw file and the image are written.
    pub dir: PathBuf,
    /// Compression workers of the capture.
    pub workers: usize,
    /// Chunk size of the capture.
    pub chunk_size: usize,
    /// Chunk compression of the capture.
    pub compression: Compression,
}

impl CaptureBenchConfig {
    /// The defaults, overridden by the environment (see the module docs).
    pub fn from_env() -> Result<Self, BenchError> {
        fn parsed<T: std::str::FromStr>(name: &'static str, default: T) -> Result<T, BenchError> {
            match std::env::var(name) {
                Ok(v) => v.trim().parse().map_err(|_| BenchError::Config {
                    name,
                    value: v.clone(),
                }),
                Err(_) => Ok(default),
            }
        }
        let var = parsed::<u64>;
        let level = parsed("LAZARUS_BENCH_LEVEL", DEFAULT_ZSTD_LEVEL)?;
        let compression = match std::env::var("LAZARUS_BENCH_CODEC").as_deref() {
            Err(_) | Ok("zstd") => Compression::Zstd { level },
            Ok("raw") => Compression::Raw,
            Ok(other) => {
                return Err(BenchError::Config {
                    name: "LAZARUS_BENCH_CODEC",
                    value: other.to_owned(),
                });
            }
        };
        let chunk_kib = var(
            "LAZARUS_BENCH_CHUNK_KIB",
            (DEFAULT_CHUNK_SIZE / 1024) as u64,
        )?;
        let cpus = std::thread::available_parallelism().map_or(1, usize::from) as u64;
        Ok(Self {
            mib: var("LAZARUS_BENCH_CAPTURE_MIB", 1024)?.max(1),
            runs: var("LAZARUS_BENCH_RUNS", 3)?.max(1) as usize,
            dir: std::env::var_os("LAZARUS_BENCH_DIR")
                .map_or_else(std::env::temp_dir, PathBuf::from),
            workers: var("LAZARUS_BENCH_WORKERS", cpus)? as usize,
            chunk_size: usize::try_from(chunk_kib.saturating_mul(1024)).unwrap_or(usize::MAX),
            compression,
        })
    }

    /// The smoke-test size: 16 MiB, one run.
    pub fn shrink(&mut self) {
        self.mib = 16;
        self.runs = 1;
    }
}

/// Why the benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A bad environment variable.
    #[error("{name}={value:?} is not a number")]
    Config {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
    },
    /// The fixture is not built.
    #[error(transparent)]
    Fixture(#[from] fixtures::BinaryNotFound),
    /// Starting or reading the fixture, or file I/O.
    #[error("{what}")]
    Io {
        /// What failed.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The fixture did not become ready.
    #[error("memhog did not become ready: {0}")]
    Ready(String),
    /// Freezing or reading the process for the raw copy.
    #[error("raw copy of process {pid}: {message}")]
    RawCopy {
        /// The process.
        pid: i32,
        /// What failed.
        message: String,
    },
    /// The capture failed.
    #[error(transparent)]
    Capture(#[from] capture::CaptureError),
    /// A restore failed, or its process or output was not what was expected.
    #[error("restore: {0}")]
    Restore(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
    let what = what.into();
    move |source| BenchError::Io { what, source }
}

/// One run of one method.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    /// Wall time, seconds.
    pub secs: f64,
    /// Time the process was frozen, seconds.
    pub frozen_secs: f64,
    /// Process memory handled, bytes (see the module docs).
    pub memory_bytes: u64,
    /// Bytes of the file written.
    pub file_bytes: u64,
}

impl Measurement {
    /// Memory handled per second, GB/s (decimal).
    pub fn gbps(&self) -> f64 {
        self.memory_bytes as f64 / self.secs.max(1e-9) / 1e9
    }
}

/// Every run of both methods.
#[derive(Debug, Clone)]
pub struct CaptureBenchResult {
    /// The configuration measured.
    pub config: CaptureBenchConfig,
    /// Pages of the buffer that hold data (the rest are zero pages).
    pub data_pages: u64,
    /// Zero pages of the buffer.
    pub zero_pages: u64,
    /// Raw copies.
    pub raw_copy: Vec<Measurement>,
    /// Captures.
    pub capture: Vec<Measurement>,
}

/// The run with the median wall time (the upper one for an even count).
pub fn median_run(runs: &[Measurement]) -> Option<Measurement> {
    let mut v = runs.to_vec();
    v.sort_by(|a, b| a.secs.total_cmp(&b.secs));
    v.get(v.len() / 2).copied()
}

impl CaptureBenchResult {
    /// A markdown table of the medians, and every run.
    pub fn report(&self) -> String {
        let c = &self.config;
        let codec = match c.compression {
            Compression::Zstd { level } => format!("zstd level {level}"),
            Compression::Raw => "raw chunks".to_owned(),
        };
        let mut out = format!(
            "capture benchmark: memhog {} MiB ({} data pages, {} zero pages), {} runs, \
             {} workers, chunk {} KiB, {codec}\n\n",
            c.mib,
            self.data_pages,
            self.zero_pages,
            c.runs,
            c.workers,
            c.chunk_size / 1024,
        );
        out.push_str("median run (by time):\n\n");
        out.push_str("| method | time (s) | frozen (s) | file (MiB) | GB/s |\n");
        out.push_str("| --- | --- | --- | --- | --- |\n");
        for (name, runs) in [("raw copy", &self.raw_copy), ("capture", &self.capture)] {
            if let Some(m) = median_run(runs) {
                out.push_str(&format!(
                    "| {name} | {:.3} | {:.3} | {:.1} | {:.2} |\n",
                    m.secs,
                    m.frozen_secs,
                    m.file_bytes as f64 / (1 << 20) as f64,
                    m.gbps(),
                ));
            }
        }
        out.push_str("\nruns (time s / frozen s / GB/s):\n");
        for (name, runs) in [("raw copy", &self.raw_copy), ("capture", &self.capture)] {
            let list: Vec<String> = runs
                .iter()
                .map(|m| format!("{:.3}/{:.3}/{:.2}", m.secs, m.frozen_secs, m.gbps()))
                .collect();
            out.push_str(&format!("  {name}: {}\n", list.join("  ")));
        }
        out
    }
}

/// Runs the benchmark (see the module docs).
pub fn run(config: &CaptureBenchConfig) -> Result<CaptureBenchResult, BenchError> {
    fixtures::try_binary("memhog")?;
    let dir = config
        .dir
        .join(format!("lazarus-capture-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
    let result = run_in(config, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(
    config: &CaptureBenchConfig,
    dir: &std::path::Path,
) -> Result<CaptureBenchResult, BenchError> {
    let mib = config.mib.to_string();
    let mut fx = Fixture::spawn("memhog", ["--mib", mib.as_str(), "--interval-ms", "1000"])
        .map_err(io("start memhog"))?;
    let ready = fx
        .try_wait_ready(STARTUP)
        .map_err(|e| BenchError::Ready(e.to_string()))?;
    let pid = fx.pid() as i32;
    let mut result = CaptureBenchResult {
        config: config.clone(),
        data_pages: ready.u64("data_pages"),
        zero_pages: ready.u64("zero_pages"),
        raw_copy: Vec::new(),
        capture: Vec::new(),
    };
    let raw_path = dir.join("memory.raw");
    let image_path = dir.join("memory.lzr");
    for _ in 0..config.runs {
        result.raw_copy.push(raw_copy(pid, &raw_path)?);
        let _ = std::fs::remove_file(&raw_path);

        let opts = CaptureOptions {
            workers: config.workers,
            chunk_size: config.chunk_size,
            compression: config.compression,
            ..CaptureOptions::new(&image_path)
        };
        let started = Instant::now();
        let report = capture_process(pid, &opts, &mut ())?;
        result.capture.push(Measurement {
            secs: started.elapsed().as_secs_f64(),
            frozen_secs: report.frozen.as_secs_f64(),
            memory_bytes: report.image.raw_bytes,
            file_bytes: report.image.file_len,
        });
        let _ = std::fs::remove_file(&image_path);
    }
    Ok(result)
}

/// The readable mappings of `pid` (`/proc/PID/maps`), without `[vvar]`-like kernel
/// pages and `[vsyscall]`.
fn readable_ranges(pid: i32) -> Result<Vec<RemoteRange>, BenchError> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_err(io(format!("read /proc/{pid}/maps")))?;
    let mut ranges = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        let name = fields.nth(3).unwrap_or("");
        if !perms.starts_with('r') || name.starts_with("[vvar") || name == "[vsyscall]" {
            continue;
        }
        let parsed = range.split_once('-').and_then(|(a, b)| {
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            ))
        });
        if let Some((start, end)) = parsed {
            ranges.push(RemoteRange {
                addr: start,
                len: end - start,
            });
        }
    }
    Ok(ranges)
}

/// Freezes `pid`, copies every readable mapping into `path`, lets it go.
fn raw_copy(pid: i32, path: &std::path::Path) -> Result<Measurement, BenchError> {
    let fail = |message: String| BenchError::RawCopy { pid, message };
    let started = Instant::now();
    let mut file = File::create(path).map_err(io(format!("create {}", path.display())))?;
    let freeze = Instant::now();
    let process =
        SeizedProcess::seize(pid, SeizeOptions::default()).map_err(|e| fail(e.to_string()))?;
    let ranges = readable_ranges(pid)?;
    let mut buf = vec![0u8; BLOCK as usize];
    let mut copied = 0u64;
    for r in &ranges {
        let mut at = r.addr;
        while at < r.addr + r.len {
            let n = (r.addr + r.len - at).min(BLOCK);
            let block = &mut buf[..n as usize];
            process
                .memory()
                .read_ranges(&[RemoteRange { addr: at, len: n }], block)
                .map_err(|e| fail(e.to_string()))?;
            file.write_all(block)
                .map_err(io(format!("write {}", path.display())))?;
            copied += n;
            at += n;
        }
    }
    process.detach().map_err(|e| fail(e.to_string()))?;
    let frozen = freeze.elapsed();
    drop(file);
    Ok(Measurement {
        secs: started.elapsed().as_secs_f64(),
        frozen_secs: frozen.as_secs_f64(),
        memory_bytes: copied,
        file_bytes: copied,
    })
}
