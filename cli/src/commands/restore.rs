//! `lazarus restore IMG`: brings a process captured with `capture --pid` back, with its
//! original pid, and serves its memory until every page is in (then it continues
//! alone) or it exits. See `docs/RESTORE.md`.
//!
//! ```text
//! foreground:  restore ─ print pid ─ serve ─ finish ─ print summary ─ exit
//! --detach:    fork ─┬─ this process: print the agent's report (pid), exit
//!                    └─ agent (own session): restore ─ report ─ serve ─ finish ─ exit
//! ```
//!
//! With `--detach` the fork happens before anything else, so that the restored
//! process's parent is the long-lived agent (the process dies with its agent while
//! its memory is being served: it never reads zeros in place of missing pages).

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, ValueEnum};
use restore_agent::process::{
    Background, PidChoice, ProcessRestoreOptions, RestoreSummary, RestoredProcess, Stdio,
    UnrestorableFds, open_stdio_file, quiet_stdio, run_in_background,
};
use restore_agent::{
    FaultPolicy, ServerOptions, WorkingSetOptions, default_prefetch_workers, restore_process,
};
use snapshot_format::Image;

use crate::util::size::human;

#[derive(Debug, Args)]
pub(crate) struct RestoreArgs {
    /// The image (made by `lazarus capture --pid`).
    #[arg(value_name = "IMG")]
    image: PathBuf,

    /// Fill all memory before the process runs (default: lazily, on first touch and
    /// by the prefetch pool).
    #[arg(long)]
    eager: bool,

    /// Return as soon as the process runs, leaving the agent serving its memory in the
    /// background.
    #[arg(long)]
    detach: bool,

    /// Leave the process stopped (it runs on SIGCONT).
    #[arg(long)]
    stopped: bool,

    /// `original`: the captured pid (refused if it is taken); `any`: a new one.
    #[arg(long, value_enum, default_value_t = PidArg::Original)]
    pid: PidArg,

    /// The process's stdin: `captured` (reopened as it was), `inherit` (this command's
    /// own, e.g. the terminal), `null`, or a file.
    #[arg(long, value_name = "WHERE", default_value = "captured")]
    stdin: String,

    /// The process's stdout: `captured`, `inherit`, `null`, or a file (appended to).
    #[arg(long, value_name = "WHERE", default_value = "captured")]
    stdout: String,

    /// The process's stderr: `captured`, `inherit`, `null`, or a file (appended to).
    #[arg(long, value_name = "WHERE", default_value = "captured")]
    stderr: String,

    /// Other fds that cannot be reopened (pipes, sockets, eventfds, deleted files):
    /// refuse the restore, give them /dev/null, or leave them closed.
    #[arg(long, value_enum, default_value_t = FdsArg::Refuse)]
    unrestorable_fds: FdsArg,

    /// Prefetch threads (default: one per available CPU, at most 4).
    #[arg(long, value_name = "N", default_value_t = default_prefetch_workers())]
    prefetch_workers: usize,

    /// Serve on demand only (no prefetch pool).
    #[arg(long, conflicts_with = "prefetch_workers")]
    no_prefetch: bool,

    /// What a fault copies: the page, or the rest of its chunk too.
    #[arg(long, value_enum, default_value_t = PolicyArg::Page)]
    fault_policy: PolicyArg,

    /// The working-set file (default: IMG.ws): prefetched first, and updated at the
    /// end with the order in which this run touched its memory.
    #[arg(long, value_name = "PATH")]
    working_set: Option<PathBuf>,

    /// Neither read nor write a working-set file.
    #[arg(long, conflicts_with = "working_set")]
    no_working_set: bool,

    /// With --detach: where the background agent writes its warnings and final
    /// summary (default: nowhere).
    #[arg(long, value_name = "PATH", requires = "detach")]
    log: Option<PathBuf>,

    /// Print the pid and the summary as JSON objects (one per line).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PidArg {
    Original,
    Any,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FdsArg {
    Refuse,
    Null,
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PolicyArg {
    Page,
    Chunk,
}

/// One standard stream's choice, opened.
fn stdio(stream: i32, choice: &str) -> Result<Stdio> {
    Ok(match choice {
        "captured" => Stdio::AsCaptured,
        "null" => Stdio::Null,
        "inherit" => {
            // Our own standard stream, duplicated (close-on-exec).
            let fd: OwnedFd = match stream {
                0 => std::io::stdin().as_fd().try_clone_to_owned(),
                1 => std::io::stdout().as_fd().try_clone_to_owned(),
                _ => std::io::stderr().as_fd().try_clone_to_owned(),
            }
            .with_context(|| format!("cannot duplicate this command's fd {stream}"))?;
            Stdio::Fd(fd)
        }
        path => {
            let path = Path::new(path);
            Stdio::Fd(
                open_stdio_file(stream, path)
                    .with_context(|| format!("cannot open {}", path.display()))?,
            )
        }
    })
}

fn options(args: &RestoreArgs) -> Result<ProcessRestoreOptions> {
    Ok(ProcessRestoreOptions {
        pid: match args.pid {
            PidArg::Original => PidChoice::Original,
            PidArg::Any => PidChoice::Any,
        },
        stdio: [
            stdio(0, &args.stdin)?,
            stdio(1, &args.stdout)?,
            stdio(2, &args.stderr)?,
        ],
        unrestorable_fds: match args.unrestorable_fds {
            FdsArg::Refuse => UnrestorableFds::Refuse,
            FdsArg::Null => UnrestorableFds::Null,
            FdsArg::Close => UnrestorableFds::Close,
        },
        eager: args.eager,
        stopped: args.stopped,
        server: ServerOptions {
            fault_policy: match args.fault_policy {
                PolicyArg::Page => FaultPolicy::Page,
                PolicyArg::Chunk => FaultPolicy::Chunk,
            },
            prefetch_workers: if args.no_prefetch {
                0
            } else {
                args.prefetch_workers
            },
            ..ServerOptions::default()
        },
        working_set: WorkingSetOptions {
            path: args.working_set.clone(),
            load: !args.no_working_set,
            save: !args.no_working_set,
        },
        ..ProcessRestoreOptions::default()
    })
}

pub(crate) fn run(args: &RestoreArgs) -> Result<()> {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_target(false)
        .try_init();
    // Files for the standard streams are opened here, so that a bad path is reported
    // by this command itself (with --detach too).
    let opts = options(args)?;
    if !args.detach {
        let restored = start(args, opts)?;
        println!("{}", started_line(args, &restored));
        std::io::stdout().flush().ok();
        let summary = serve(restored)?;
        println!("{}", summary_line(args, &summary));
        return Ok(());
    }
    match run_in_background().context("cannot start the background agent")? {
        Background::Caller { agent, report } => relay_report(agent, report),
        Background::Agent { mut report } => {
            let restored = match start(args, opts) {
                Ok(r) => r,
                Err(e) => {
                    let _ = writeln!(report, "error {e:#}");
                    return Err(e);
                }
            };
            writeln!(report, "ok {}", started_line(args, &restored))
                .context("cannot report to the command")?;
            drop(report);
            quiet_stdio(args.log.as_deref()).context("cannot detach from the terminal")?;
            let summary = serve(restored)?;
            println!("{}", summary_line(args, &summary));
            Ok(())
        }
    }
}

/// Opens the image and restores the process.
fn start(args: &RestoreArgs, opts: ProcessRestoreOptions) -> Result<RestoredProcess> {
    let image = Image::open(&args.image)
        .with_context(|| format!("cannot open {}", args.image.display()))?;
    restore_process(Arc::new(image), opts)
        .with_context(|| format!("cannot restore {}", args.image.display()))
}

/// Serves until every page is in, or every served process exited; then completes
/// the restore.
fn serve(mut restored: RestoredProcess) -> Result<RestoreSummary> {
    while !restored.wait_done(Duration::from_millis(200)) {}
    restored.finish().context("cannot complete the restore")
}

/// In the command, with --detach: prints what the agent reported.
fn relay_report(agent: i32, report: File) -> Result<()> {
    let mut line = String::new();
    BufReader::new(report)
        .read_line(&mut line)
        .context("cannot read the background agent's report")?;
    let line = line.trim_end();
    if let Some(ok) = line.strip_prefix("ok ") {
        println!("{ok}");
        return Ok(());
    }
    if let Some(error) = line.strip_prefix("error ") {
        bail!("{error}");
    }
    Err(anyhow!(
        "the background agent (pid {agent}) ended without reporting"
    ))
}

/// The line printed once the process runs: its pid (or JSON).
fn started_line(args: &RestoreArgs, r: &RestoredProcess) -> String {
    if args.json {
        serde_json::json!({
            "pid": r.pid(),
            "tids": r.tids(),
            "agent_pid": std::process::id(),
            "stopped": r.is_stopped(),
            "timings_ms": r.timings(),
        })
        .to_string()
    } else {
        r.pid().to_string()
    }
}

/// The summary printed at the end.
fn summary_line(args: &RestoreArgs, s: &RestoreSummary) -> String {
    if args.json {
        return serde_json::to_string(s).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let st = &s.stats;
    let end = match (&s.exit, s.timings.populated) {
        (Some(exit), _) => format!("the process {exit}"),
        (None, Some(p)) => format!(
            "all pages in after {:.1} ms; the process continues alone",
            ms(p)
        ),
        (None, None) => "the process continues alone".to_owned(),
    };
    let ws = s
        .working_set
        .as_ref()
        .map(|p| format!("; working set saved to {}", p.display()))
        .unwrap_or_default();
    format!(
        "restored pid {} ({} threads, {} regions, {} served lazily) running after {:.1} ms; {end}; \
         {} faults (p50 {:.1} µs, p99 {:.1} µs), {} copied on fault, {} prefetched, {} zero{ws}",
        s.pid,
        s.threads,
        s.regions,
        s.served_regions,
        ms(s.timings.running),
        st.faults.total,
        st.faults.latency.p50_us,
        st.faults.latency.p99_us,
        human(st.bytes.fault_copied),
        human(st.bytes.prefetch_copied),
        human(st.bytes.zeroed),
    )
}
