//! `lazarus bench`: restore strategies side by side on real workloads, with
//! tables and plots. Only parses options: the harness is
//! `lazarus_bench::bench` (docs/BENCH.md).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use lazarus_bench::bench::{BenchOptions, CacheChoice, Strategy, Workload, run};

/// Which page cache states to measure.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Cache {
    Cold,
    Warm,
    Both,
}

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Workload: memhog, kvserver, memfile or all.
    #[arg(long, value_name = "NAME", default_value = "all")]
    workload: String,

    /// Comma-separated strategies (default all): eager, lazy, lazy-prefetch,
    /// lazy-working-set, kernel-mmap, uffd-baseline, criu.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    strategies: Vec<String>,

    /// Size of every workload, MiB (default: memhog 1024, kvserver 256,
    /// memfile 512; --quick: 16).
    #[arg(long, value_name = "N")]
    mib: Option<u64>,

    /// Runs of every strategy (medians are reported).
    #[arg(long, value_name = "N", default_value_t = 3)]
    repeat: usize,

    /// Every workload and strategy at a tiny size, once: well under a minute.
    #[arg(long)]
    quick: bool,

    /// Where results.json, results.md and the plots go.
    #[arg(long, value_name = "DIR", default_value = "bench-results")]
    out: PathBuf,

    /// Page cache before each run: cold (dropped; needs root), warm (files
    /// read once), or both side by side.
    #[arg(long, value_enum, default_value = "warm")]
    cache: Cache,

    /// kvserver answers measured per run (the first N).
    #[arg(long, value_name = "N", default_value_t = lazarus_bench::bench::DEFAULT_ANSWERS)]
    answers: usize,

    /// Strategy the ratios are computed against.
    #[arg(long, value_name = "NAME", default_value = "lazy-prefetch")]
    reference: String,

    /// Where temporary images and raw files go (removed afterwards).
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
}

pub(crate) fn run_bench(args: &BenchArgs) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the lazarus binary")?;
    let mut opts = BenchOptions::new(&args.out, exe);
    opts.workloads =
        match args.workload.as_str() {
            "all" => Workload::ALL.to_vec(),
            w => vec![Workload::parse(w).with_context(|| {
                format!("unknown workload {w:?} (memhog, kvserver, memfile, all)")
            })?],
        };
    if !args.strategies.is_empty() {
        opts.strategies = args
            .strategies
            .iter()
            .map(|s| Strategy::parse(s.trim()).with_context(|| format!("unknown strategy {s:?}")))
            .collect::<Result<_>>()?;
    }
    opts.reference = Strategy::parse(&args.reference)
        .with_context(|| format!("unknown strategy {:?}", args.reference))?;
    opts.mib = args.mib;
    opts.repeat = args.repeat;
    opts.quick = args.quick;
    opts.answers = args.answers;
    opts.cache = match args.cache {
        Cache::Cold => CacheChoice::Cold,
        Cache::Warm => CacheChoice::Warm,
        Cache::Both => CacheChoice::Both,
    };
    if let Some(d) = &args.work_dir {
        opts.work_dir = d.clone();
    }
    opts.command = std::iter::once("lazarus".to_owned())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    if opts.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    let results = run(&opts)?;
    print!("{}", lazarus_bench::bench::results::markdown(&results));
    println!(
        "results in {}: results.json, results.md, *.svg",
        args.out.display()
    );
    Ok(())
}
