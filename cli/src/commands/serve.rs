//! `lazarus serve`: a Firecracker-compatible page-fault handler serving guest
//! memory from an image (see `restore_agent::serve` and docs/SERVE.md).
//!
//! The work is the library's (`restore_agent::serve::Handler`); this command
//! parses options, sets up logging (`RUST_LOG`, default `info`: one line per
//! connection start and end), and handles signals:
//!
//! | signal | effect |
//! | --- | --- |
//! | `SIGUSR1` | prints every statistic as one JSON line on stdout (and rewrites `--stats-json`) |
//! | `SIGTERM`, `SIGINT` | stops: closes and unlinks the socket, ends the live connections (logged), prints the final statistics, exits 0 |

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::ValueEnum;
use restore_agent::serve::{Handler, HandlerOptions, HandlerStats};
use restore_agent::{FaultPolicy, ServerOptions, WorkingSetOptions};
use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
use snapshot_format::Image;

/// The most prefetch threads accepted.
const MAX_PREFETCH_WORKERS: usize = 64;

/// Arguments of `lazarus serve`.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// The image to serve (made by `lazarus capture --from-file` from the
    /// VMM's guest memory file).
    #[arg(long, value_name = "IMG")]
    image: PathBuf,
    /// The Unix socket to listen on; the VMM's `mem_backend.backend_path`.
    /// Created mode 0600; refused if a handler is listening on it already, replaced
    /// if stale.
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,
    /// Prefetch threads, shared by the VMs served: they populate each VM's memory
    /// ahead of its faults (working set first, then in address order).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=MAX_PREFETCH_WORKERS as u64))]
    prefetch_workers: u64,
    /// Serve on demand only (no prefetch).
    #[arg(long, conflicts_with = "prefetch_workers")]
    no_prefetch: bool,
    /// The working-set file (default: IMG.ws beside the image): prefetched first,
    /// and rewritten as each VMM's connection ends.
    #[arg(long, value_name = "PATH", conflicts_with = "no_working_set")]
    working_set: Option<PathBuf>,
    /// Neither load nor save a working set.
    #[arg(long)]
    no_working_set: bool,
    /// How much a fault copies: the faulting page, or its whole chunk run.
    #[arg(long, value_enum, default_value_t = Policy::Page)]
    fault_policy: Policy,
    /// Also write the statistics printed on SIGUSR1 and on exit to this file.
    #[arg(long, value_name = "PATH")]
    stats_json: Option<PathBuf>,
}

/// `--fault-policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Policy {
    /// Copy the faulting page only.
    Page,
    /// Copy the faulting page, then the rest of its chunk's run.
    Chunk,
}

pub(crate) fn run(args: &ServeArgs) -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .format_target(false)
        .init();
    // Before any thread starts: signals are then handled by signal-hook's
    // pipe whichever thread they hit.
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGUSR1])
        .context("cannot install signal handlers")?;
    let image = Arc::new(
        Image::open(&args.image)
            .with_context(|| format!("cannot open image {}", args.image.display()))?,
    );
    let opts = HandlerOptions {
        server: ServerOptions {
            fault_policy: match args.fault_policy {
                Policy::Page => FaultPolicy::Page,
                Policy::Chunk => FaultPolicy::Chunk,
            },
            prefetch_workers: if args.no_prefetch {
                0
            } else {
                args.prefetch_workers as usize
            },
            ..ServerOptions::default()
        },
        working_set: WorkingSetOptions {
            path: args.working_set.clone(),
            load: !args.no_working_set,
            save: !args.no_working_set,
        },
        ..HandlerOptions::default()
    };
    let handler = Handler::start(image, &args.socket, opts)
        .with_context(|| format!("cannot serve on {}", args.socket.display()))?;
    for signal in signals.forever() {
        if signal == SIGUSR1 {
            report(&handler.stats(), args.stats_json.as_deref());
        } else {
            log::info!(
                "{}: stopping",
                if signal == SIGTERM {
                    "SIGTERM"
                } else {
                    "SIGINT"
                }
            );
            break;
        }
    }
    let stats = handler.shutdown().context("the fault server failed")?;
    report(&stats, args.stats_json.as_deref());
    Ok(())
}

/// Writes the statistics to `file` if asked (atomically: a temporary file
/// renamed over it), then prints them as one JSON line on stdout: a reader
/// that sees the line can rely on the file being current.
fn report(stats: &HandlerStats, file: Option<&Path>) {
    let json = stats.to_json();
    if let Some(path) = file
        && let Err(e) = write_atomically(path, json.as_bytes())
    {
        log::warn!("cannot write statistics to {}: {e:#}", path.display());
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{json}").and_then(|()| out.flush()) {
        log::warn!("cannot print statistics: {e}");
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".stats-")
        .tempfile_in(dir)
        .context("cannot create a temporary file")?;
    tmp.write_all(bytes).context("cannot write")?;
    tmp.write_all(b"\n").context("cannot write")?;
    tmp.persist(path).context("cannot rename into place")?;
    Ok(())
}
