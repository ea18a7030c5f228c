//! Process restore benchmark: `lazarus restore` of a captured 1 GiB process, from the
//! command's start until the process runs again and until every page is in, for
//! three strategies side by side in one run.
//!
//! ```text
//! prepare    memhog --mib N --check     N MiB: runs of 1-16 data pages (text or random)
//!                                       then as many zero pages (half the buffer);
//!                                       every tick verifies the whole buffer
//!            capture --kill             once, into a temporary DIR/memhog.lzr
//! for each run, for each mode (interleaved, so drift hits every mode alike):
//!   restore_once
//!     spawn `lazarus restore IMG --json ...`           t0
//!     first stdout line: {"pid", "timings_ms"}         t_running   the process runs
//!     the restored memhog's second `CHECKED ok`        t_read      it has read (and
//!                                                                  verified) its
//!                                                                  whole buffer
//!     lazy only: kill it (the restore never completes: see below)
//!     second stdout line: the summary; the command exits
//!     (from the summary) timings.populated             t_all_in    every page is in
//!     kill it; wait until its pid is free again (the next restore takes it back)
//! report     median (min–max) per mode, CRIU 4.2's figures beside them
//! ```
//!
//! memhog was captured in the middle of a check (or of its 10 ms pause): its first
//! `CHECKED` after the restore ends that check, the second is a check run entirely
//! after the restore. When it is printed, every page of the buffer has been read at
//! least once since the restore, and every byte was right.
//!
//! | mode | `lazarus restore` flags | what it is |
//! | --- | --- | --- |
//! | lazy | `--no-prefetch` | pages come only when the process touches them |
//! | lazy + prefetch | `--prefetch-workers W` | the prefetch pool fills the rest meanwhile |
//! | eager | `--eager --prefetch-workers W` | everything is filled before the process runs |
//!
//! `t_running` is measured from outside (spawn to the pid line), so it includes the
//! command's own start and the opening of the image. `t_all_in` is the agent's own
//! "populated" time (from its restore call) shifted onto the same clock
//! (`t_running - timings.running + timings.populated`): the command prints its summary
//! only after letting the process go on alone and unregistering, which is not part of
//! bringing the pages in.
//!
//! In lazy mode (no prefetch) "every page is in" is never reached: the process never
//! touches some of its pages (parts of libc's data, its environment, ...), so the agent
//! would serve forever. What the table shows for it is `t_read`, the time until the
//! process had read its whole 1 GiB buffer on demand (an upper bound: it includes the
//! 10 ms pause and the part of the second check over pages already in, and the 5 ms
//! polling of the output file). `t_read` is reported for every mode.
//!
//! CRIU 4.2's figures for the same workload were measured on this machine outside the
//! project ([`CRIU_RUNNING_MS`], [`CRIU_ALL_IN_MS`]) and are printed beside ours.
//!
//! # Reuse
//!
//! `lazarus bench` can drive the pieces itself: [`prepare`] captures once (the
//! returned [`BenchImage`] deletes its files when dropped), [`restore_once`] restores
//! one strategy once and returns its [`RestoreRun`]; [`run`] is the whole loop and
//! [`RestoreBenchResult::modes`] the per-mode [`Spread`]s.
//!
//! Configuration ([`RestoreBenchConfig::from_env`]): `LAZARUS_BENCH_RESTORE_MIB`
//! (1024), `LAZARUS_BENCH_RUNS` (3), `LAZARUS_BENCH_PREFETCH_WORKERS` (default: the
//! command's own, one per CPU up to 4),
//! `LAZARUS_BENCH_FAULT_POLICY` (`page` or `chunk`; default: the command's own),
//! `LAZARUS_BENCH_DIR` (the system temporary directory), `LAZARUS_BIN` (the `lazarus`
//! binary; default: next to the fixtures). Build first, in the same profile:
//! `cargo build --release -p lazarus -p fixtures`.

use std::io::{BufRead, BufReader, Lines};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use capture::{AfterCapture, CaptureOptions, capture_process};
use fixtures::{Fixture, LogTail};
use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};

use crate::capture::BenchError;

/// CRIU 4.2, lazy restore of the same 1 GiB memhog on this machine (measured outside
/// the project): from the start of the restore until the process ran, ms.
pub const CRIU_RUNNING_MS: f64 = 88.0;
/// CRIU 4.2: from the start of the restore until all its pages were in, ms.
pub const CRIU_ALL_IN_MS: f64 = 660.0;

/// How long memhog may take to fill or check its buffer, and a restore to complete.
const LIMIT: Duration = Duration::from_secs(300);
/// How long a killed restored process may take to disappear.
const KILL_LIMIT: Duration = Duration::from_secs(30);

/// What to measure.
#[derive(Debug, Clone)]
pub struct RestoreBenchConfig {
    /// Size of the process's buffer, MiB.
    pub mib: u64,
    /// Runs of each mode (medians are reported).
    pub runs: usize,
    /// Prefetch threads of the prefetching modes; `None`: the command's default.
    pub prefetch_workers: Option<usize>,
    /// `--fault-policy` of every mode (`page` or `chunk`); `None`: the command's
    /// default.
    pub fault_policy: Option<String>,
    /// Where the image is written (in a temporary directory below it).
    pub dir: PathBuf,
    /// The `lazarus` binary.
    pub lazarus: PathBuf,
}

impl RestoreBenchConfig {
    /// The defaults, overridden by the environment (see the module docs).
    pub fn from_env() -> Result<Self, BenchError> {
        fn var(name: &'static str, default: u64) -> Result<u64, BenchError> {
            match std::env::var(name) {
                Ok(v) => v
                    .trim()
                    .parse()
                    .map_err(|_| BenchError::Config { name, value: v }),
                Err(_) => Ok(default),
            }
        }
        let lazarus = match std::env::var_os("LAZARUS_BIN") {
            Some(p) => PathBuf::from(p),
            None => fixtures::try_binary("lazarus")?,
        };
        Ok(Self {
            mib: var("LAZARUS_BENCH_RESTORE_MIB", 1024)?.max(1),
            runs: usize::try_from(var("LAZARUS_BENCH_RUNS", 3)?.max(1)).unwrap_or(usize::MAX),
            prefetch_workers: match std::env::var("LAZARUS_BENCH_PREFETCH_WORKERS") {
                Ok(_) => Some(
                    usize::try_from(var("LAZARUS_BENCH_PREFETCH_WORKERS", 1)?.max(1))
                        .unwrap_or(usize::MAX),
                ),
                Err(_) => None,
            },
            fault_policy: match std::env::var("LAZARUS_BENCH_FAULT_POLICY") {
                Ok(v) if matches!(v.trim(), "page" | "chunk") => Some(v.trim().to_owned()),
                Ok(value) => {
                    return Err(BenchError::Config {
                        name: "LAZARUS_BENCH_FAULT_POLICY",
                        value,
                    });
                }
                Err(_) => None,
            },
            dir: std::env::var_os("LAZARUS_BENCH_DIR")
                .map_or_else(std::env::temp_dir, PathBuf::from),
            lazarus,
        })
    }

    /// The smoke-test size: 32 MiB, one run.
    pub fn shrink(&mut self) {
        self.mib = 32;
        self.runs = 1;
    }
}

/// A restore strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// On demand only.
    Lazy,
    /// On demand, and the prefetch pool.
    LazyPrefetch,
    /// Everything before the process runs.
    Eager,
}

impl Mode {
    /// All modes, in report order.
    pub const ALL: [Mode; 3] = [Mode::Lazy, Mode::LazyPrefetch, Mode::Eager];

    /// The name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Lazy => "lazy",
            Mode::LazyPrefetch => "lazy + prefetch",
            Mode::Eager => "eager",
        }
    }

    /// The `lazarus restore` options selecting this strategy (`prefetch_workers`:
    /// `None` for the command's default).
    pub fn flags(self, prefetch_workers: Option<usize>) -> Vec<String> {
        let workers = prefetch_workers
            .map(|n| vec!["--prefetch-workers".into(), n.to_string()])
            .unwrap_or_default();
        match self {
            Mode::Lazy => vec!["--no-prefetch".into()],
            Mode::LazyPrefetch => workers,
            Mode::Eager => [vec!["--eager".into()], workers].concat(),
        }
    }
}

/// The image of a captured memhog; its temporary directory is deleted on drop.
#[derive(Debug)]
pub struct BenchImage {
    dir: tempfile::TempDir,
    path: PathBuf,
    /// Time the capture took, ms.
    pub capture_ms: f64,
    /// Where memhog's buffer was.
    pub buf: u64,
    /// Its length, bytes.
    pub buf_len: u64,
    /// The image file's size, bytes.
    pub image_bytes: u64,
    /// Data pages of memhog's buffer.
    pub data_pages: u64,
    /// Zero pages of memhog's buffer.
    pub zero_pages: u64,
}

impl BenchImage {
    /// The image file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The temporary directory holding the image (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// One restore of one strategy.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct RestoreRun {
    /// The strategy.
    pub mode: Mode,
    /// From the command's start until the process runs, ms.
    pub running_ms: f64,
    /// From the command's start until every page is in, ms; `None` in lazy mode
    /// (never: only what the process touches comes in).
    pub all_in_ms: Option<f64>,
    /// From the command's start until the restored memhog had read and verified its
    /// whole buffer (its second check after the restore), ms.
    pub buffer_read_ms: f64,
    /// Inside the agent, ms since its restore call: every check done, files opened.
    pub planned_ms: f64,
    /// Inside the agent: the helper exists and is seized.
    pub helper_ms: f64,
    /// Inside the agent: the layout, fds and process state are built.
    pub layout_ms: f64,
    /// Page faults served.
    pub faults: u64,
    /// Bytes copied by the fault server.
    pub fault_copied_bytes: u64,
    /// Bytes copied by the prefetch pool.
    pub prefetch_copied_bytes: u64,
}

pub use crate::stats::Spread;

/// The figures of one mode over all its runs.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ModeSummary {
    /// The strategy.
    pub mode: Mode,
    /// Until the process runs, ms.
    pub running_ms: Spread,
    /// Until every page is in, ms (`None`: lazy, never).
    pub all_in_ms: Option<Spread>,
    /// Until the process had read its whole buffer, ms.
    pub buffer_read_ms: Spread,
    /// Median page faults served.
    pub faults: f64,
    /// Median MiB copied by the fault server.
    pub fault_copied_mib: f64,
    /// Median MiB copied by the prefetch pool.
    pub prefetch_copied_mib: f64,
}

/// Every run of every mode.
#[derive(Debug, Clone)]
pub struct RestoreBenchResult {
    /// The configuration.
    pub config: RestoreBenchConfig,
    /// The image's size, bytes.
    pub image_bytes: u64,
    /// Data pages of the buffer.
    pub data_pages: u64,
    /// Zero pages of the buffer.
    pub zero_pages: u64,
    /// The runs, in the order they were made.
    pub runs: Vec<RestoreRun>,
}

impl RestoreBenchResult {
    /// The summary of each mode that has runs, in report order.
    pub fn modes(&self) -> Vec<ModeSummary> {
        Mode::ALL
            .into_iter()
            .filter_map(|mode| {
                let runs: Vec<&RestoreRun> = self.runs.iter().filter(|r| r.mode == mode).collect();
                Some(ModeSummary {
                    mode,
                    running_ms: Spread::of(runs.iter().map(|r| r.running_ms))?,
                    all_in_ms: Spread::of(runs.iter().filter_map(|r| r.all_in_ms)),
                    buffer_read_ms: Spread::of(runs.iter().map(|r| r.buffer_read_ms))?,
                    faults: Spread::of(runs.iter().map(|r| r.faults as f64))?.median,
                    fault_copied_mib: Spread::of(runs.iter().map(|r| mib(r.fault_copied_bytes)))?
                        .median,
                    prefetch_copied_mib: Spread::of(
                        runs.iter().map(|r| mib(r.prefetch_copied_bytes)),
                    )?
                    .median,
                })
            })
            .collect()
    }

    /// A markdown table: median (min–max) per mode, CRIU's figures, the agent's steps.
    pub fn report(&self) -> String {
        let c = &self.config;
        let mut out = format!(
            "restore benchmark: memhog {} MiB ({} data pages, {} zero pages), image {:.1} MiB, \
             {} run(s) per mode, prefetch workers {}, fault policy {}\n\n",
            c.mib,
            self.data_pages,
            self.zero_pages,
            self.image_bytes as f64 / f64::from(1u32 << 20),
            c.runs,
            c.prefetch_workers
                .map_or_else(|| "(default)".to_owned(), |n| n.to_string()),
            c.fault_policy.as_deref().unwrap_or("(default)"),
        );
        out.push_str(
            "times in ms from the start of `lazarus restore`: median (min–max)\n\n\
             | mode | until it runs | until every page is in | until it has read its whole buffer | faults served | MiB copied on fault / prefetched |\n\
             | --- | --- | --- | --- | --- | --- |\n",
        );
        for m in self.modes() {
            let all_in = m
                .all_in_ms
                .map_or_else(|| "never (on demand only)".to_owned(), |s| s.to_string());
            out.push_str(&format!(
                "| {} | {} | {all_in} | {} | {:.0} | {:.1} / {:.1} |\n",
                m.mode.name(),
                m.running_ms,
                m.buffer_read_ms,
                m.faults,
                m.fault_copied_mib,
                m.prefetch_copied_mib,
            ));
        }
        out.push_str(&format!(
            "| CRIU 4.2, lazy pages with background fetch (measured outside the project) | \
             {CRIU_RUNNING_MS:.0} | {CRIU_ALL_IN_MS:.0} | | | |\n\n\
             inside the agent (ms since its restore call, medians): checks / helper / layout\n"
        ));
        for mode in Mode::ALL {
            let runs: Vec<&RestoreRun> = self.runs.iter().filter(|r| r.mode == mode).collect();
            let med = |f: fn(&RestoreRun) -> f64| {
                Spread::of(runs.iter().map(|r| f(r))).map_or(0.0, |s| s.median)
            };
            if !runs.is_empty() {
                out.push_str(&format!(
                    "  {}: {:.1} / {:.1} / {:.1}\n",
                    mode.name(),
                    med(|r| r.planned_ms),
                    med(|r| r.helper_ms),
                    med(|r| r.layout_ms),
                ));
            }
        }
        out
    }
}

/// Bytes to MiB.
fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
    let what = what.into();
    move |source| BenchError::Io { what, source }
}

/// Runs the whole benchmark (see the module docs): [`prepare`], then
/// `config.runs` × every [`Mode`] of [`restore_once`], interleaved.
pub fn run(config: &RestoreBenchConfig) -> Result<RestoreBenchResult, BenchError> {
    let image = prepare(config)?;
    let mut runs = Vec::with_capacity(config.runs.saturating_mul(Mode::ALL.len()));
    for _ in 0..config.runs {
        for mode in Mode::ALL {
            runs.push(restore_once(config, &image, mode)?);
        }
    }
    Ok(RestoreBenchResult {
        config: config.clone(),
        image_bytes: image.image_bytes,
        data_pages: image.data_pages,
        zero_pages: image.zero_pages,
        runs,
    })
}

/// Starts memhog (`config.mib` MiB, checking), waits for its first full check and
/// captures it into a new temporary directory under `config.dir`, killing it.
pub fn prepare(config: &RestoreBenchConfig) -> Result<BenchImage, BenchError> {
    fixtures::try_binary("memhog")?;
    let dir = tempfile::Builder::new()
        .prefix("lazarus-restore-bench-")
        .tempdir_in(&config.dir)
        .map_err(io(format!(
            "create a temporary directory in {}",
            config.dir.display()
        )))?;
    let path = dir.path().join("memhog.lzr");
    let mib = config.mib.to_string();
    let mut fx = Fixture::spawn(
        "memhog",
        ["--mib", mib.as_str(), "--check", "--interval-ms", "10"],
    )
    .map_err(io("start memhog"))?;
    let ready = fx
        .try_wait_ready(LIMIT)
        .map_err(|e| BenchError::Ready(e.to_string()))?;
    let field = |key: &str| {
        ready
            .try_u64(key)
            .map_err(|e| BenchError::Ready(e.to_string()))
    };
    let (data_pages, zero_pages) = (field("data_pages")?, field("zero_pages")?);
    let buf = ready
        .try_hex("buf")
        .map_err(|e| BenchError::Ready(e.to_string()))?;
    let buf_len = ready
        .try_hex("buf_len")
        .map_err(|e| BenchError::Ready(e.to_string()))?;
    fx.try_wait_tag("CHECKED", LIMIT)
        .map_err(|e| BenchError::Ready(e.to_string()))?;
    let opts = CaptureOptions {
        after: AfterCapture::Kill,
        workers: std::thread::available_parallelism().map_or(1, usize::from),
        ..CaptureOptions::new(&path)
    };
    let pid = i32::try_from(fx.pid()).map_err(|_| BenchError::Ready("pid out of range".into()))?;
    let t = Instant::now();
    let report = capture_process(pid, &opts, &mut ())?;
    let capture_ms = t.elapsed().as_secs_f64() * 1e3;
    drop(fx);
    Ok(BenchImage {
        dir,
        path,
        capture_ms,
        buf,
        buf_len,
        image_bytes: report.image.file_len,
        data_pages,
        zero_pages,
    })
}

/// The `lazarus restore` command of one run; killed on drop (an early return), which
/// kills the restored process too (it dies with its agent).
#[derive(Debug)]
struct Agent {
    child: Child,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A restored process; killed on drop, which waits until its pid is free again.
#[derive(Debug)]
struct Restored {
    pidfd: OwnedFd,
    pid: i32,
}

impl Drop for Restored {
    fn drop(&mut self) {
        let _ = pidfd_send_signal(&self.pidfd, Signal::KILL);
        // Its parent (the agent, or init once the agent is gone) reaps it.
        let deadline = Instant::now() + KILL_LIMIT;
        while Path::new(&format!("/proc/{}", self.pid)).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Reads the next line of `lazarus restore --json` as JSON.
fn json_line(
    lines: &mut Lines<BufReader<ChildStdout>>,
    what: &str,
) -> Result<serde_json::Value, BenchError> {
    let text = lines
        .next()
        .ok_or_else(|| BenchError::Restore(format!("lazarus restore printed no {what}")))?
        .map_err(io("read the output of lazarus restore"))?;
    serde_json::from_str(&text).map_err(|e| BenchError::Restore(format!("{what}: {e}: {text}")))
}

/// A number of milliseconds in `v[key]`.
fn json_ms(v: &serde_json::Value, key: &str) -> Result<f64, BenchError> {
    v[key]
        .as_f64()
        .ok_or_else(|| BenchError::Restore(format!("no {key} in the timings: {v}")))
}

/// A `lazarus restore --json` under way: the process runs (its pid line was read).
/// Dropping it kills the command and the restored process.
#[derive(Debug)]
pub struct LiveRestore {
    agent: Agent,
    lines: Lines<BufReader<ChildStdout>>,
    restored: Option<Restored>,
    /// When the command was started.
    pub t0: Instant,
    /// From the command's start until the process ran, ms.
    pub running_ms: f64,
    /// The restored process.
    pub pid: i32,
}

/// What the summary of a finished `lazarus restore --json` says.
#[derive(Debug, Clone)]
pub struct RestoreEnd {
    /// From the command's start until every page was in, ms (on the clock of
    /// [`LiveRestore::t0`]); `None` if the restore ended before (the process was
    /// killed first).
    pub all_in_ms: Option<f64>,
    /// Inside the agent, ms since its restore call: every check done, files opened.
    pub planned_ms: f64,
    /// Inside the agent: the helper exists and is seized.
    pub helper_ms: f64,
    /// Inside the agent: the layout, fds and process state are built.
    pub layout_ms: f64,
    /// The agent's statistics (`stats` of the summary, see docs/AGENT.md).
    pub stats: serde_json::Value,
}

impl LiveRestore {
    /// Starts `lazarus restore IMAGE --json` with the restored process's stdout to
    /// `stdout` (a file), stdin and stderr to `/dev/null`, other unrestorable fds to
    /// `/dev/null`, plus `args`; returns once the process runs.
    pub fn start(
        lazarus: &Path,
        image: &Path,
        stdout: &Path,
        args: &[String],
    ) -> Result<LiveRestore, BenchError> {
        let mut all: Vec<String> = vec![
            "restore".into(),
            image.to_string_lossy().into_owned(),
            "--json".into(),
            "--stdin".into(),
            "null".into(),
            "--stdout".into(),
            stdout.to_string_lossy().into_owned(),
            "--stderr".into(),
            "null".into(),
            "--unrestorable-fds".into(),
            "null".into(),
        ];
        all.extend(args.iter().cloned());
        let t0 = Instant::now();
        let mut agent = Agent {
            child: Command::new(lazarus)
                .args(&all)
                // Its warnings (e.g. the fds given /dev/null) would clutter the report.
                .env("RUST_LOG", "error")
                .stdout(Stdio::piped())
                .spawn()
                .map_err(io(format!("run {}", lazarus.display())))?,
        };
        let stdout = agent
            .child
            .stdout
            .take()
            .ok_or_else(|| BenchError::Restore("no stdout pipe".into()))?;
        let mut lines = BufReader::new(stdout).lines();
        let started = json_line(&mut lines, "pid line")?;
        let running_ms = t0.elapsed().as_secs_f64() * 1e3;
        let pid = started["pid"]
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| BenchError::Restore(format!("no pid in {started}")))?;
        let pidfd = pidfd_open(
            Pid::from_raw(pid).ok_or_else(|| BenchError::Restore(format!("pid {pid}")))?,
            PidfdFlags::empty(),
        )
        .map_err(|e| io(format!("pidfd of the restored process {pid}"))(e.into()))?;
        Ok(LiveRestore {
            agent,
            lines,
            restored: Some(Restored { pidfd, pid }),
            t0,
            running_ms,
            pid,
        })
    }

    /// Milliseconds since the command was started.
    pub fn elapsed_ms(&self) -> f64 {
        self.t0.elapsed().as_secs_f64() * 1e3
    }

    /// Kills the restored process and waits until its pid is free (a lazy restore
    /// without prefetch never completes on its own: this ends it).
    pub fn kill_process(&mut self) {
        self.restored = None;
    }

    /// Waits for the summary (the restore complete, or the process gone) and the
    /// command's exit; then kills the process if it still runs.
    pub fn finish(mut self) -> Result<RestoreEnd, BenchError> {
        let summary = json_line(&mut self.lines, "summary")?;
        let status = self
            .agent
            .child
            .wait()
            .map_err(io("wait for lazarus restore"))?;
        if !status.success() {
            return Err(BenchError::Restore(format!(
                "lazarus restore exited with {status}"
            )));
        }
        let timings = &summary["timings"];
        let all_in_ms = timings["populated"]
            .as_f64()
            .map(|populated| -> Result<f64, BenchError> {
                Ok(self.running_ms - json_ms(timings, "running")? + populated)
            })
            .transpose()?;
        Ok(RestoreEnd {
            all_in_ms,
            planned_ms: json_ms(timings, "planned")?,
            helper_ms: json_ms(timings, "helper")?,
            layout_ms: json_ms(timings, "layout")?,
            stats: summary["stats"].clone(),
        })
    }
}

/// Restores `image` once with `mode` (`lazarus restore`, original pid) and measures it;
/// checks that the restored memhog verifies its whole buffer, then kills it and waits
/// until its pid is free again.
pub fn restore_once(
    config: &RestoreBenchConfig,
    image: &BenchImage,
    mode: Mode,
) -> Result<RestoreRun, BenchError> {
    let out = image.dir.path().join("restored.out");
    remove_if_present(&out)?;
    let mut args = vec!["--no-working-set".to_owned()];
    args.extend(mode.flags(config.prefetch_workers));
    if let Some(policy) = &config.fault_policy {
        args.extend(["--fault-policy".to_owned(), policy.clone()]);
    }
    let mut live = LiveRestore::start(&config.lazarus, &image.path, &out, &args)?;
    // The first check may have begun before the capture; the second ran entirely
    // after the restore: every page of the buffer was read, every byte was right.
    wait_checks(&out, live.pid, 2)?;
    let buffer_read = live.elapsed_ms();
    if mode == Mode::Lazy {
        // On demand only, the restore never completes: end it.
        live.kill_process();
    }
    let running = live.running_ms;
    let end = live.finish()?;
    if mode != Mode::Lazy && end.all_in_ms.is_none() {
        return Err(BenchError::Restore(
            "the restore ended before every page was in".into(),
        ));
    }
    Ok(RestoreRun {
        mode,
        running_ms: running,
        all_in_ms: end.all_in_ms.filter(|_| mode != Mode::Lazy),
        buffer_read_ms: buffer_read,
        planned_ms: end.planned_ms,
        helper_ms: end.helper_ms,
        layout_ms: end.layout_ms,
        faults: end.stats["faults"]["total"].as_u64().unwrap_or(0),
        fault_copied_bytes: end.stats["bytes"]["fault_copied"].as_u64().unwrap_or(0),
        prefetch_copied_bytes: end.stats["bytes"]["prefetch_copied"].as_u64().unwrap_or(0),
    })
}

/// Removes `path` if it exists.
pub(crate) fn remove_if_present(path: &Path) -> Result<(), BenchError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(io(format!("remove {}", path.display()))(e))
        }
        _ => Ok(()),
    }
}

/// Waits until the restored memhog `pid` wrote `n` `CHECKED` lines to `out`.
pub fn wait_checks(out: &Path, pid: i32, n: usize) -> Result<(), BenchError> {
    let mut tail = LogTail::new(out).watch_pid(pid as u32);
    for _ in 0..n {
        tail.try_wait_tag("CHECKED", LIMIT)
            .map_err(|e| BenchError::Restore(format!("the restored memhog: {e}")))?;
    }
    Ok(())
}
