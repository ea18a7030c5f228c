//! `lazarus inspect IMG [--json]`: what an image holds.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;
use snapshot_format::{
    Image, ImageFile, ImageId, ImageStats, ProcessMetadata, RegionInfo, RunSource,
};

use crate::util::size::human;

#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    /// The image.
    #[arg(value_name = "IMG")]
    image: PathBuf,

    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Everything `inspect` reports; also its JSON form.
#[derive(Debug, Serialize)]
struct Report<'a> {
    path: &'a Path,
    id: ImageId,
    version: String,
    page_size: u32,
    chunk_size: u32,
    file_len: u64,
    metadata: &'a ProcessMetadata,
    stats: ImageStats,
    dedup_saved_bytes: u64,
    ratio: f64,
    regions: Vec<RegionReport<'a>>,
    parent_chain: Vec<Layer>,
    parent_chain_error: Option<String>,
}

#[derive(Debug, Serialize)]
struct RegionReport<'a> {
    #[serde(flatten)]
    info: &'a RegionInfo,
    runs: usize,
    data_bytes: u64,
    zero_bytes: u64,
    parent_bytes: u64,
    file_bytes: u64,
}

#[derive(Debug, Serialize)]
struct Layer {
    path: PathBuf,
    id: ImageId,
    chunks: usize,
    stored_bytes: u64,
}

pub(crate) fn run(args: &InspectArgs) -> Result<()> {
    let file = ImageFile::open(&args.image)
        .with_context(|| format!("cannot open {}", args.image.display()))?;
    let stats = file.stats();
    let regions = (0..file.regions().len())
        .map(|r| {
            let mut rr = RegionReport {
                info: &file.regions()[r],
                runs: file.runs(r).len(),
                data_bytes: 0,
                zero_bytes: 0,
                parent_bytes: 0,
                file_bytes: 0,
            };
            for run in file.runs(r) {
                match run.source {
                    RunSource::Data { .. } => rr.data_bytes += run.len,
                    RunSource::Zero => rr.zero_bytes += run.len,
                    RunSource::Parent => rr.parent_bytes += run.len,
                    RunSource::File => rr.file_bytes += run.len,
                }
            }
            rr
        })
        .collect();
    let (parent_chain, parent_chain_error) = match Image::open(&args.image) {
        Ok(image) => (
            image
                .layers()
                .iter()
                .map(|l| Layer {
                    path: l.path().map(Path::to_path_buf).unwrap_or_default(),
                    id: l.id(),
                    chunks: l.chunks().len(),
                    stored_bytes: l.stats().stored_bytes,
                })
                .collect(),
            None,
        ),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    let (major, minor) = file.version();
    let report = Report {
        path: &args.image,
        id: file.id(),
        version: format!("{major}.{minor}"),
        page_size: file.page_size(),
        chunk_size: file.chunk_size(),
        file_len: file.file_len(),
        metadata: file.metadata(),
        stats,
        dedup_saved_bytes: stats.dedup_saved_bytes(),
        ratio: stats.raw_bytes as f64 / file.file_len().max(1) as f64,
        regions,
        parent_chain,
        parent_chain_error,
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("cannot encode JSON")?
        );
    } else {
        let written = print_text(
            &mut std::io::stdout().lock(),
            &report,
            file.parent().map(|p| (p.path.as_path(), p.id)),
        );
        match written {
            // The reader went away (`lazarus inspect IMG | head`): not an error.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
            other => other.context("cannot write to stdout")?,
        }
    }
    Ok(())
}

/// Writes the report as text. Errors are the output's (a closed pipe
/// when piped into `head`, say).
fn print_text(
    out: &mut impl Write,
    r: &Report<'_>,
    parent: Option<(&Path, ImageId)>,
) -> io::Result<()> {
    let s = &r.stats;
    writeln!(out, "image      {}", r.path.display())?;
    writeln!(out, "id         {}", r.id)?;
    writeln!(
        out,
        "format     version {}, page size {}, chunk size {}",
        r.version,
        human(u64::from(r.page_size)),
        human(u64::from(r.chunk_size))
    )?;
    let m = r.metadata;
    let mut meta = Vec::new();
    if let Some(pid) = m.pid {
        meta.push(format!("pid {pid}"));
    }
    if !m.cmdline.is_empty() {
        meta.push(format!("cmdline {:?}", m.cmdline.join(" ")));
    }
    if let Some(exe) = &m.exe {
        meta.push(format!("exe {}", exe.display()));
    }
    if let Some(src) = &m.source_file {
        meta.push(format!(
            "imported from {} ({} bytes)",
            src.path.display(),
            src.len
        ));
    }
    if let Some(k) = &m.kernel_release {
        meta.push(format!("kernel {k}"));
    }
    if let Some(t) = m
        .captured_at
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
    {
        meta.push(format!("captured at unix time {}", t.as_secs()));
    }
    writeln!(
        out,
        "metadata   {}",
        if meta.is_empty() {
            "-".into()
        } else {
            meta.join(", ")
        }
    )?;
    if let Some(p) = &m.process {
        let handlers = p.signal_actions.iter().filter(|a| a.handler > 1).count();
        let in_syscall = p.threads.iter().filter(|t| t.syscall.is_some()).count();
        writeln!(
            out,
            "process    {} threads ({in_syscall} in a system call), {} fds, {handlers} signal handlers, brk {:#x}, cwd {}{}",
            p.threads.len(),
            p.fds.len(),
            p.mm.brk,
            p.cwd
                .as_deref()
                .map_or("-".into(), |c| c.display().to_string()),
            p.job_stop_signal
                .map_or(String::new(), |s| format!(", stopped by signal {s}")),
        )?;
    }
    writeln!(
        out,
        "memory     {} in {} regions: {} data, {} zero, {} in parent, {} from files",
        human(s.raw_bytes),
        s.regions,
        human(s.data_bytes),
        human(s.zero_bytes),
        human(s.parent_bytes),
        human(s.file_bytes)
    )?;
    writeln!(
        out,
        "chunks     {} ({} zstd, {} raw): {} raw, {} stored, dedup saved {}",
        s.chunks,
        s.zstd_chunks,
        s.raw_chunks,
        human(s.chunk_raw_bytes),
        human(s.stored_bytes),
        human(r.dedup_saved_bytes)
    )?;
    writeln!(
        out,
        "file       {}, ratio {:.2}x",
        human(r.file_len),
        r.ratio
    )?;
    writeln!(out, "regions")?;
    for reg in &r.regions {
        let i = reg.info;
        let what = match (&i.file, &i.name) {
            (Some(f), _) => format!("{} @ {:#x}", f.path.display(), f.offset),
            (None, Some(n)) => n.clone(),
            (None, None) => String::new(),
        };
        writeln!(
            out,
            "  {:#014x}-{:#014x} {:>10} {}{} {:<12} {} runs: data {}, zero {}, parent {}, file {} {}",
            i.start,
            i.end(),
            human(i.len),
            i.prot,
            if i.shared { 's' } else { 'p' },
            i.kind.to_string(),
            reg.runs,
            human(reg.data_bytes),
            human(reg.zero_bytes),
            human(reg.parent_bytes),
            human(reg.file_bytes),
            what
        )?;
    }
    match (parent, &r.parent_chain_error) {
        (None, _) => writeln!(out, "parent     none")?,
        (Some((path, id)), None) => {
            writeln!(out, "parent     {} ({id})", path.display())?;
            writeln!(out, "chain")?;
            for (n, l) in r.parent_chain.iter().enumerate() {
                writeln!(
                    out,
                    "  {n} {} {} ({} chunks, {} stored)",
                    l.path.display(),
                    l.id,
                    l.chunks,
                    human(l.stored_bytes)
                )?;
            }
        }
        (Some((path, id)), Some(err)) => {
            writeln!(out, "parent     {} ({id})", path.display())?;
            writeln!(out, "chain      BROKEN: {err}")?;
        }
    }
    Ok(())
}
