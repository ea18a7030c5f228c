//! The memfile workload: a VMM's guest memory file (40 % zero, 40 % text,
//! 20 % random pages, in runs), restored into this process.
//!
//! The image is written from the same layout as the `memfile` fixture's raw
//! file (`agent::build`); Lazarus strategies restore it with `restore_into`,
//! the baselines map or serve the raw file (module [`super::replay`]). The
//! access pattern is a VM resuming: a hot set first (the first page of 5 %
//! of the 64 KiB chunks, in a scrambled order; its first page is the first
//! answer, the whole set the working set), then every page in address order.
//! The working set strategy loads the set recorded by a demand restore that
//! touched only the hot set.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use fixtures::Fixture;
use fixtures::pattern::{self, PageKind};
use restore_agent::{
    FaultPolicy, Placement, RestoreOptions, ServerOptions, WorkingSetOptions, restore_into,
};

use super::replay::{Answer, Pattern, Source, replay};
use super::{
    BenchOptions, CacheState, LIMIT, Outcome, Prepared, Strategy, Workload, ms_since, work_dir,
};
use crate::agent::{self, Bench, Config};
use crate::mem::touch;

const CHUNK: u64 = 64 * 1024;
/// The hot set: one chunk in this many.
const HOT_ONE_IN: u64 = 20;
/// Seed of the layout.
const SEED: u64 = 1;

/// The image, the raw file and the pattern.
pub(crate) struct Memfile {
    opts: BenchOptions,
    bench: Bench,
    _dir: tempfile::TempDir,
    raw: PathBuf,
    len: u64,
    ws: PathBuf,
    build_ms: f64,
    pattern: Pattern,
}

/// Writes the image and the raw file; records the working set.
pub(crate) fn prepare(opts: &BenchOptions, mib: u64) -> Result<Memfile, String> {
    let dir = work_dir(opts, Workload::Memfile)?;
    let t = Instant::now();
    let bench = agent::build(&Config {
        mib,
        repeats: 1,
        seed: SEED,
        dir: Some(dir.path().to_path_buf()),
    })
    .map_err(|e| e.to_string())?;
    let build_ms = ms_since(t);
    let raw = dir.path().join("guest.mem");
    let raw_arg = raw.to_string_lossy().into_owned();
    let mib_arg = mib.to_string();
    let seed_arg = SEED.to_string();
    let mut fx = Fixture::spawn(
        "memfile",
        [
            "--out",
            raw_arg.as_str(),
            "--mib",
            mib_arg.as_str(),
            "--seed",
            seed_arg.as_str(),
        ],
    )
    .map_err(|e| format!("start memfile: {e}"))?;
    fx.try_wait_exit(LIMIT)
        .map_err(|e| format!("memfile: {e}"))?;
    let len = mib << 20;
    let mut hot: Vec<u64> = (0..len / CHUNK)
        .filter(|c| pattern::mix64(SEED ^ c).is_multiple_of(HOT_ONE_IN))
        .map(|c| c * CHUNK)
        .collect();
    hot.sort_by_key(|a| pattern::mix64(a ^ 0x5eed));
    let m = Memfile {
        opts: opts.clone(),
        ws: dir.path().join("memfile.ws"),
        pattern: Pattern {
            first: hot,
            expected_sum: bench.sum,
        },
        bench,
        _dir: dir,
        raw,
        len,
        build_ms,
    };
    if opts.strategies.contains(&Strategy::LazyWorkingSet) {
        m.record_working_set()?;
    }
    Ok(m)
}

impl Memfile {
    fn options(&self, workers: usize, ws: Option<(bool, bool)>) -> RestoreOptions {
        RestoreOptions {
            placement: Placement::Anywhere,
            server: ServerOptions {
                fault_policy: FaultPolicy::Page,
                prefetch_workers: workers,
                ..ServerOptions::default()
            },
            working_set: WorkingSetOptions {
                path: ws.map(|_| self.ws.clone()),
                load: ws.is_some_and(|(load, _)| load),
                save: ws.is_some_and(|(_, save)| save),
            },
            ..RestoreOptions::default()
        }
    }

    /// A demand restore touching the hot set only; its working set is saved.
    fn record_working_set(&self) -> Result<(), String> {
        let h = restore_into(
            Arc::clone(&self.bench.image),
            self.options(0, Some((false, true))),
        )
        .map_err(|e| format!("restore: {e}"))?;
        let base = h.regions()[0].addr;
        for &a in &self.pattern.first {
            std::hint::black_box(touch(base + a));
        }
        h.stop().map_err(|e| format!("stop: {e}"))?;
        if !self.ws.is_file() {
            return Err(format!("no working set recorded at {}", self.ws.display()));
        }
        Ok(())
    }
}

impl Prepared for Memfile {
    fn capture(&self) -> (f64, u64) {
        let bytes = std::fs::metadata(&self.bench.path).map_or(0, |m| m.len());
        (self.build_ms, bytes)
    }

    fn files(&self) -> Vec<PathBuf> {
        vec![self.bench.path.clone(), self.raw.clone()]
    }

    fn run(&mut self, strategy: Strategy, _cache: CacheState) -> Result<Outcome, String> {
        let lazarus = |workers, ws, eager| Source::Lazarus {
            image: &self.bench.image,
            opts: self.options(workers, ws),
            eager,
        };
        // The agent's default pool, as `lazarus restore` uses.
        let workers = restore_agent::default_prefetch_workers();
        let source = match strategy {
            Strategy::Eager => lazarus(workers, None, true),
            Strategy::Lazy => lazarus(0, None, false),
            Strategy::LazyPrefetch => lazarus(workers, None, false),
            Strategy::LazyWorkingSet => lazarus(workers, Some((true, false)), false),
            Strategy::KernelMmap | Strategy::UffdBaseline => Source::Raw(&self.raw),
            Strategy::Criu => return Ok(Outcome::Skipped("not applicable".into())),
        };
        replay(
            strategy,
            source,
            self.len,
            &self.pattern,
            Answer::FirstPage,
            self.opts.rss_interval,
        )
        .map(|r| Outcome::Ran(Box::new(r)))
    }

    fn describe(&self) -> String {
        let pages = self.bench.layout.pages();
        format!(
            "guest memory file: {} pages, {} zero; hot set {} chunks",
            pages,
            self.bench.layout.count(PageKind::Zero),
            self.pattern.first.len()
        )
    }
}
