//! `lazarus verify IMG`: check the structure, every chunk's hash, and the
//! parent chain (and every chunk of every parent).
//!
//! Opening validates the header, footer, index checksum and every table;
//! then each chunk is decoded and hash-checked on a few threads. Every bad
//! chunk is named with its image, index, file offset and the addresses it
//! backs; the exit status is non-zero if anything is wrong.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use clap::Args;
use snapshot_format::{ChunkDecoder, ChunkError, Image, ImageFile};

use crate::util::progress::bytes_bar;
use crate::util::size::human;

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The image.
    #[arg(value_name = "IMG")]
    image: PathBuf,

    /// Checking threads (default: one per CPU).
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
}

pub(crate) fn run(args: &VerifyArgs) -> Result<()> {
    let top = ImageFile::open(&args.image)
        .with_context(|| format!("{} is not a valid image", args.image.display()))?;
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
        .max(1);

    // Check the top image's chunks even when its chain is broken, so that
    // every problem is reported in one run.
    let chain = Image::open(&args.image);
    let layers: Vec<&ImageFile> = match &chain {
        Ok(image) => image.layers().iter().collect(),
        Err(_) => vec![&top],
    };
    let total: u64 = layers.iter().map(|l| l.stats().chunk_raw_bytes).sum();
    let bar = bytes_bar(total, "verify");
    let mut problems = Vec::new();
    let mut chunks = 0usize;
    for layer in &layers {
        chunks += layer.chunks().len();
        problems.extend(check_chunks(layer, workers, &bar)?);
    }
    bar.finish_and_clear();
    if let Err(e) = &chain {
        problems.push(format!("parent chain: {e}"));
    }
    if problems.is_empty() {
        let raw: u64 = layers.iter().map(|l| l.stats().raw_bytes).sum();
        println!(
            "ok: {}: structure, {chunks} chunks in {} image{} and parent chain verified ({} of memory)",
            args.image.display(),
            layers.len(),
            if layers.len() == 1 { "" } else { "s" },
            human(raw)
        );
        return Ok(());
    }
    for p in &problems {
        eprintln!("lazarus: {p}");
    }
    bail!(
        "{}: {} problem{} found",
        args.image.display(),
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
}

/// Decodes and hash-checks every chunk of one image file on `workers`
/// threads; returns a description of each bad chunk, in chunk order.
fn check_chunks(
    file: &ImageFile,
    workers: usize,
    bar: &indicatif::ProgressBar,
) -> Result<Vec<String>> {
    let n = file.chunks().len();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let bad: Mutex<Vec<(u32, ChunkError)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| -> Result<()> {
        let mut handles = Vec::new();
        for _ in 0..workers.min(n.max(1)) {
            handles.push(s.spawn(|| -> Result<()> {
                let mut dec = ChunkDecoder::new().context("cannot create a decoder")?;
                let mut buf = vec![0u8; file.max_chunk_raw_len()];
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        return Ok(());
                    }
                    let i = i as u32;
                    if let Err(e) = file.decode_chunk(i, &mut dec, &mut buf) {
                        bad.lock()
                            .expect("no panics while holding the lock")
                            .push((i, e));
                    }
                    bar.inc(u64::from(file.chunks()[i as usize].raw_len));
                }
            }));
        }
        for h in handles {
            h.join().expect("verify threads do not panic")?;
        }
        Ok(())
    })?;
    let mut bad = bad.into_inner().expect("no panics while holding the lock");
    bad.sort_by_key(|(i, _)| *i);
    let path = file.path().unwrap_or(Path::new("<memory>"));
    Ok(bad
        .into_iter()
        .map(|(i, err)| {
            let e = file.chunks()[i as usize];
            let uses: Vec<String> = file
                .chunk_backing(i)
                .iter()
                .map(|(r, run)| format!("region {r} {:#x}-{:#x}", run.start, run.start + run.len))
                .collect();
            format!(
                "{}: bad chunk {i} (frame at file offset {}, {} bytes {}, {} bytes decoded): {err}; it backs {}",
                path.display(),
                e.offset,
                e.stored_len,
                e.codec.name(),
                e.raw_len,
                if uses.is_empty() {
                    "no pages".to_string()
                } else {
                    uses.join(", ")
                }
            )
        })
        .collect())
}
