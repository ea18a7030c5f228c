//! The `lazarus` command.
//!
//! Thin by design: argument parsing, progress and output formatting. The work
//! is done by the library crates. Each subcommand lives in its own module
//! under `commands/` and owns its arguments; adding a subcommand means adding
//! a module and one variant to [`Command`], without touching the others.
//!
//! Every error is printed as one line on stderr (`lazarus: error: ...`, the
//! causes joined by `: `) with exit status 1; usage errors exit with 2
//! (clap's convention).

mod commands;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Lazarus: capture memory into compressed chunked images and bring it back
/// lazily.
#[derive(Debug, Parser)]
#[command(name = "lazarus", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Capture memory into an image.
    Capture(commands::capture::CaptureArgs),
    /// Describe an image: metadata, regions, chunks, parent chain.
    Inspect(commands::inspect::InspectArgs),
    /// Check an image's structure, every chunk's hash and its parent chain.
    Verify(commands::verify::VerifyArgs),
    /// Write an image's memory back out as a raw (sparse) file.
    Extract(commands::extract::ExtractArgs),
    /// Serve VMs' guest memory from an image: a Firecracker-compatible
    /// userfaultfd page-fault handler on a Unix socket.
    Serve(commands::serve::ServeArgs),
    /// Restore a process captured with `capture --pid`, its memory served lazily.
    Restore(commands::restore::RestoreArgs),
    /// Run restore strategies side by side on real workloads: JSON, markdown
    /// table, SVG plots.
    Bench(commands::bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Capture(args) => commands::capture::run(&args),
        Command::Inspect(args) => commands::inspect::run(&args),
        Command::Verify(args) => commands::verify::run(&args),
        Command::Extract(args) => commands::extract::run(&args),
        Command::Serve(args) => commands::serve::run(&args),
        Command::Restore(args) => commands::restore::run(&args),
        Command::Bench(args) => commands::bench::run_bench(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("lazarus: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
