//! `lazarus capture`: write an image from a memory source.
//!
//! The source is chosen by one of a group of mutually exclusive flags:
//! `--from-file MEM` (a raw memory file such as a VMM's guest memory
//! snapshot) or `--pid PID` (a live process), each in its own module; the
//! image options below are shared by every source.

mod from_file;
mod pid;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use snapshot_format::{
    Compression, DEFAULT_CHUNK_SIZE, DEFAULT_ZSTD_LEVEL, WriteSummary, WriterOptions,
};

use crate::util::progress::rate;
use crate::util::size::{Range, human, parse_range, parse_size};

#[derive(Debug, Args)]
pub(crate) struct CaptureArgs {
    #[command(flatten)]
    source: Source,

    /// The image to write (written to a temporary name, renamed when done).
    #[arg(short, long, value_name = "IMG")]
    output: PathBuf,

    /// Largest chunk: a multiple of the page size (4 KiB) up to 4 MiB.
    #[arg(long, value_name = "SIZE", default_value_t = DEFAULT_CHUNK_SIZE as u64, value_parser = parse_size)]
    chunk_size: u64,

    /// zstd compression level (negative is faster; 1..=22 stronger).
    #[arg(long, value_name = "N", allow_negative_numbers = true, default_value_t = DEFAULT_ZSTD_LEVEL)]
    level: i32,

    /// Chunk codec.
    #[arg(long, value_enum, default_value_t = CodecArg::Zstd)]
    codec: CodecArg,

    /// Compression threads (default: one per CPU).
    #[arg(long, value_name = "N")]
    workers: Option<usize>,

    /// With --from-file: import only these ranges of the file, as
    /// START:LEN (page aligned; K/M/G suffixes, 0x hex). Each becomes a
    /// region at address START. Default: the whole file as one region.
    // (`requires` alone is satisfied by an argument that conflicts with a present one,
    // as the other source does: hence `conflicts_with` too.)
    #[arg(long = "region", value_name = "START:LEN", value_parser = parse_range, requires = "from_file", conflicts_with = "pid")]
    regions: Vec<Range>,

    /// Store pages that equal this image's as references to it (an
    /// incremental image; the parent must stay beside the child).
    #[arg(long, value_name = "IMG")]
    parent: Option<PathBuf>,

    /// fsync the image and its directory before reporting success.
    #[arg(long)]
    fsync: bool,

    /// With --pid: kill the process once the image is safely written
    /// (default: leave it running).
    #[arg(long, requires = "pid", conflicts_with = "from_file")]
    kill: bool,

    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

/// Where the memory comes from: exactly one of these.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct Source {
    /// Import a raw memory file (address = file offset; holes of a sparse
    /// file are zero pages and are never read).
    #[arg(long, value_name = "MEM")]
    from_file: Option<PathBuf>,

    /// Capture a live process: its memory, layout, threads, signal handlers,
    /// file descriptors and limits. It is frozen while its memory is read.
    #[arg(long, value_name = "PID")]
    pid: Option<i32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CodecArg {
    /// zstd at --level.
    Zstd,
    /// Uncompressed (baselines).
    Raw,
}

pub(crate) fn run(args: &CaptureArgs) -> Result<()> {
    let opts = writer_options(args)?;
    if let Some(pid) = args.source.pid {
        return pid::run(pid, args, &opts);
    }
    let summary = match &args.source.from_file {
        Some(mem) => from_file::capture(mem, args, opts)?,
        None => bail!("no capture source given"),
    };
    if args.json {
        println!("{}", summary_json(&summary));
    } else {
        print_summary(&summary);
    }
    Ok(())
}

/// Writer options common to every source.
fn writer_options(args: &CaptureArgs) -> Result<WriterOptions> {
    let chunk_size = usize::try_from(args.chunk_size).context("chunk size too large")?;
    let workers = match args.workers {
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, usize::from),
    };
    Ok(WriterOptions {
        chunk_size,
        compression: match args.codec {
            CodecArg::Zstd => Compression::Zstd { level: args.level },
            CodecArg::Raw => Compression::Raw,
        },
        workers,
        fsync: args.fsync,
        ..WriterOptions::default()
    })
}

/// The one-line summary: raw, stored, ratio, time, throughput.
fn print_summary(s: &WriteSummary) {
    let (secs, gbps) = rate(s.raw_bytes, s.elapsed);
    println!(
        "captured {} into {} ({}, ratio {:.2}x) in {secs:.2} s, {gbps:.2} GB/s: {} chunks, {} deduplicated, {} zero, {} from parent",
        human(s.raw_bytes),
        s.path.display(),
        human(s.file_len),
        ratio(s),
        s.chunks,
        s.dedup_hits,
        human(s.zero_bytes),
        human(s.parent_bytes),
    );
}

/// Raw size over image size.
fn ratio(s: &WriteSummary) -> f64 {
    s.raw_bytes as f64 / s.file_len.max(1) as f64
}

/// The summary as JSON (sizes in bytes, times in seconds).
fn summary_json(s: &WriteSummary) -> serde_json::Value {
    let (secs, gbps) = rate(s.raw_bytes, s.elapsed);
    serde_json::json!({
        "path": s.path.to_string_lossy(),
        "id": s.id.to_hex(),
        "raw_bytes": s.raw_bytes,
        "data_bytes": s.data_bytes,
        "zero_bytes": s.zero_bytes,
        "file_bytes": s.file_bytes,
        "parent_bytes": s.parent_bytes,
        "chunks": s.chunks,
        "dedup_hits": s.dedup_hits,
        "stored_bytes": s.stored_bytes,
        "file_len": s.file_len,
        "ratio": ratio(s),
        "seconds": secs,
        "gb_per_s": gbps,
    })
}
