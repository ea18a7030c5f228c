//! `capture --from-file`: import a raw memory file.
//!
//! Each region is a range of the file, at address = file offset (what
//! `lazarus serve` looks up as `offset + (addr - base)`). Holes of a sparse
//! file are found with `SEEK_DATA`/`SEEK_HOLE` and recorded as zero without
//! being read (where `SEEK_DATA` is unsupported, as on block devices, the
//! whole range is read); data is read in large blocks and handed to the writer, which
//! drops zero pages itself. A file whose length is not a page multiple is
//! padded with zeros to the page; its exact length is kept in the metadata
//! so that `extract` reproduces it.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::SystemTime;

use anyhow::{Context, Result, bail};
use rustix::fs::SeekFrom;
use snapshot_format::{
    Image, ImageWriter, ProcessMetadata, RangeReader, ReadError, RegionInfo, SourceFile,
    WriteSummary, WriterOptions, parent_ref,
};

use super::CaptureArgs;
use crate::util::progress::bytes_bar;
use crate::util::size::{Range, human};

/// Bytes read per `pread`.
const BLOCK: usize = 4 << 20;

pub(super) fn capture(mem: &Path, args: &CaptureArgs, opts: WriterOptions) -> Result<WriteSummary> {
    write_image(mem, args, opts).map_err(|e| full_disk(e, &args.output))
}

/// A full file system (`ENOSPC`, `EDQUOT`) anywhere in `e`'s chain becomes one clear
/// line naming the image. The writer has already removed its temporary file, so
/// nothing is left.
fn full_disk(e: anyhow::Error, output: &Path) -> anyhow::Error {
    let full = [rustix::io::Errno::NOSPC, rustix::io::Errno::DQUOT].map(|e| e.raw_os_error());
    let is_full = e
        .chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(|io| io.raw_os_error().is_some_and(|n| full.contains(&n)));
    if is_full {
        anyhow::anyhow!(
            "no space left for the image {}: nothing was written",
            output.display()
        )
    } else {
        e
    }
}

fn write_image(mem: &Path, args: &CaptureArgs, mut opts: WriterOptions) -> Result<WriteSummary> {
    let page = u64::from(opts.page_size);
    let file = File::open(mem).with_context(|| format!("cannot open {}", mem.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("cannot stat {}", mem.display()))?;
    // A block device reports length 0: ask it for its end instead.
    let file_len = if meta.is_file() {
        meta.len()
    } else {
        rustix::fs::seek(&file, SeekFrom::End(0))
            .with_context(|| format!("cannot find the size of {}", mem.display()))?
    };
    if file_len == 0 {
        bail!("{} is empty", mem.display());
    }
    let padded_len = file_len.div_ceil(page) * page;
    let regions = regions(&args.regions, padded_len, page)
        .with_context(|| format!("bad --region for {}", mem.display()))?;

    let parent = match &args.parent {
        Some(p) => {
            if args.output.exists()
                && std::fs::canonicalize(&args.output).ok() == std::fs::canonicalize(p).ok()
            {
                bail!("the parent {} cannot also be the output", p.display());
            }
            let image =
                Image::open(p).with_context(|| format!("cannot open parent {}", p.display()))?;
            if image.page_size() != opts.page_size {
                bail!(
                    "parent {} has page size {}, not {}",
                    p.display(),
                    image.page_size(),
                    opts.page_size
                );
            }
            opts.parent = Some(parent_ref(&args.output, p, image.id()).with_context(|| {
                format!(
                    "cannot locate parent {} from {}",
                    p.display(),
                    args.output.display()
                )
            })?);
            Some(image)
        }
        None => None,
    };
    let mut parent_reader = match &parent {
        Some(image) => Some(
            image
                .range_reader()
                .context("cannot set up a parent reader")?,
        ),
        None => None,
    };

    let mut writer = ImageWriter::create(&args.output, opts)
        .with_context(|| format!("cannot create {}", args.output.display()))?;
    writer.set_metadata(ProcessMetadata {
        kernel_release: Some(
            rustix::system::uname()
                .release()
                .to_string_lossy()
                .into_owned(),
        ),
        page_size: Some(page as u32),
        captured_at: Some(SystemTime::now()),
        source_file: Some(SourceFile {
            path: std::path::absolute(mem).unwrap_or_else(|_| mem.to_path_buf()),
            len: file_len,
        }),
        ..ProcessMetadata::default()
    });
    let total: u64 = regions.iter().map(|r| r.len).sum();
    let bar = bytes_bar(total, "capture");
    let progress = writer.progress();
    let mut buf = vec![0u8; BLOCK];
    let mut parent_page = vec![0u8; page as usize];
    for r in &regions {
        writer
            .begin_region(RegionInfo::raw_file(r.start, r.len))
            .context("cannot begin region")?;
        let mut pos = r.start;
        while pos < r.end() {
            // The next data extent, page aligned; holes stay unwritten (zero).
            let Some(data) = next_data(&file, pos, r.end(), page)
                .with_context(|| format!("cannot find data in {} at {pos:#x}", mem.display()))?
            else {
                break;
            };
            let mut at = data.start;
            while at < data.end() {
                let n = (data.end() - at).min(BLOCK as u64) as usize;
                let block = &mut buf[..n];
                read_padded(&file, at, file_len, block)
                    .with_context(|| format!("cannot read {} at {at:#x}", mem.display()))?;
                match parent_reader.as_mut() {
                    Some(reader) => {
                        write_against_parent(&mut writer, reader, at, block, &mut parent_page)?;
                    }
                    None => writer
                        .write_pages(at, block)
                        .context("cannot write pages")?,
                }
                at += n as u64;
                bar.set_position(progress.bytes());
            }
            pos = data.end();
        }
        bar.set_position(progress.bytes());
    }
    let summary = writer
        .finish()
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    bar.finish_and_clear();
    Ok(summary)
}

/// The regions to import: the given ranges (sorted, checked), or the whole
/// (page-padded) file.
fn regions(given: &[Range], padded_len: u64, page: u64) -> Result<Vec<Range>> {
    if given.is_empty() {
        return Ok(vec![Range {
            start: 0,
            len: padded_len,
        }]);
    }
    let mut v = given.to_vec();
    v.sort_by_key(|r| r.start);
    for (i, r) in v.iter().enumerate() {
        if r.start % page != 0 || r.len % page != 0 {
            bail!(
                "{:#x}:{:#x} is not page aligned ({page} bytes)",
                r.start,
                r.len
            );
        }
        if r.end() > padded_len {
            bail!(
                "{:#x}:{:#x} ends past the end of the file ({})",
                r.start,
                r.len,
                human(padded_len)
            );
        }
        if i > 0 && r.start < v[i - 1].end() {
            bail!("{:#x}:{:#x} overlaps the previous region", r.start, r.len);
        }
    }
    Ok(v)
}

/// The next data extent of `file` at or after `pos`, clipped to `end` and
/// widened to whole pages; `None` when only holes remain.
fn next_data(file: &File, pos: u64, end: u64, page: u64) -> std::io::Result<Option<Range>> {
    let start = match rustix::fs::seek(file, SeekFrom::Data(pos)) {
        Ok(s) => s,
        // ENXIO: no data at or after `pos`.
        Err(e) if e == rustix::io::Errno::NXIO => return Ok(None),
        // EINVAL: no SEEK_DATA here (block devices): all of it is data.
        Err(e) if e == rustix::io::Errno::INVAL => {
            return Ok(Some(Range {
                start: pos,
                len: end - pos,
            }));
        }
        Err(e) => return Err(e.into()),
    };
    let start = (start / page * page).max(pos);
    if start >= end {
        return Ok(None);
    }
    let hole = rustix::fs::seek(file, SeekFrom::Hole(start))?;
    let stop = hole.div_ceil(page).saturating_mul(page).min(end);
    Ok(Some(Range {
        start,
        len: stop.max(start + page) - start,
    }))
}

/// Reads `buf.len()` bytes at `at`, with zeros past the end of the file.
fn read_padded(file: &File, at: u64, file_len: u64, buf: &mut [u8]) -> std::io::Result<()> {
    let avail = file_len.saturating_sub(at).min(buf.len() as u64) as usize;
    file.read_exact_at(&mut buf[..avail], at)?;
    buf[avail..].fill(0);
    Ok(())
}

/// Writes a block, recording non-zero pages equal to the parent's as parent
/// runs.
fn write_against_parent(
    writer: &mut ImageWriter,
    parent: &mut RangeReader<'_>,
    addr: u64,
    block: &[u8],
    parent_page: &mut [u8],
) -> Result<()> {
    let page = parent_page.len();
    let mut pending_start = 0usize; // first page not yet handed to the writer
    let mut i = 0usize;
    while i < block.len() {
        let p = &block[i..i + page];
        let a = addr + i as u64;
        let same = !snapshot_format::is_zero(p)
            && match parent.read(a, parent_page) {
                Ok(()) => parent_page == p,
                Err(ReadError::Unmapped { .. } | ReadError::FileBacked { .. }) => false,
                Err(e) => return Err(e).context("cannot read the parent image"),
            };
        if same {
            if pending_start < i {
                writer
                    .write_pages(addr + pending_start as u64, &block[pending_start..i])
                    .context("cannot write pages")?;
            }
            writer
                .write_parent(a, page as u64)
                .context("cannot write parent run")?;
            pending_start = i + page;
        }
        i += page;
    }
    if pending_start < block.len() {
        writer
            .write_pages(addr + pending_start as u64, &block[pending_start..])
            .context("cannot write pages")?;
    }
    Ok(())
}
