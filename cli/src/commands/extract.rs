//! `lazarus extract IMG -o OUT`: write an image's memory back out as a raw
//! file.
//!
//! By default each byte goes to the file offset equal to its address, so
//! that `capture --from-file MEM` then `extract` reproduces MEM byte for byte
//! (the exact length comes from the image metadata). Zero pages are not
//! written: they stay holes of a sparse file. `--region` limits the output
//! to address ranges; `--pack` writes the selected ranges back to back from
//! offset 0 instead (for process images, whose addresses are far apart).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use snapshot_format::{ChunkDecoder, ChunkId, FileMapping, Image, PageSource};

use crate::util::progress::{bytes_bar, rate};
use crate::util::size::{Range, human, parse_range};

#[derive(Debug, Args)]
pub(crate) struct ExtractArgs {
    /// The image.
    #[arg(value_name = "IMG")]
    image: PathBuf,

    /// The raw file to write (replaced if it exists).
    #[arg(short, long, value_name = "OUT")]
    output: PathBuf,

    /// Only these address ranges, as START:LEN (K/M/G suffixes, 0x hex).
    /// Default: every region.
    #[arg(long = "region", value_name = "START:LEN", value_parser = parse_range)]
    regions: Vec<Range>,

    /// Write the selected ranges back to back from offset 0 instead of at
    /// offset = address.
    #[arg(long)]
    pack: bool,
}

pub(crate) fn run(args: &ExtractArgs) -> Result<()> {
    let started = Instant::now();
    let image = Image::open(&args.image)
        .with_context(|| format!("cannot open {}", args.image.display()))?;
    let ranges: Vec<Range> = if args.regions.is_empty() {
        image
            .regions()
            .iter()
            .map(|r| Range {
                start: r.start,
                len: r.len,
            })
            .collect()
    } else {
        let mut v = args.regions.clone();
        v.sort_by_key(|r| r.start);
        v
    };
    let out = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&args.output)
        .with_context(|| format!("cannot create {}", args.output.display()))?;

    let total: u64 = ranges.iter().map(|r| r.len).sum();
    let bar = bytes_bar(total, "extract");
    let mut copier = Copier::new(&image)?;
    let mut out_len = 0u64;
    let mut packed = 0u64;
    let mut data = 0u64;
    for r in &ranges {
        // Where address `a` of this range goes in the output.
        let base = if args.pack { packed } else { r.start };
        let mut addr = r.start;
        while addr < r.end() {
            let Some(loc) = image.locate(addr) else {
                // Between regions: nothing to write (a hole).
                let ext = image.extents();
                let next = ext
                    .get(ext.partition_point(|e| e.start <= addr))
                    .map_or(u64::MAX, |e| e.start);
                addr = next.min(r.end());
                continue;
            };
            let n = loc.len.min(r.end() - addr);
            let at = base + (addr - r.start);
            if !matches!(loc.source, PageSource::Zero) {
                copier
                    .copy(&image, loc.source, n, &out, at)
                    .with_context(|| format!("cannot extract {addr:#x}+{n:#x}"))?;
                data += n;
            }
            addr += n;
            bar.inc(n);
        }
        packed += r.len;
        out_len = out_len.max(base + r.len);
    }
    // An imported file keeps its exact length (its last page was padded).
    if let (false, false, Some(src)) = (
        args.pack,
        !args.regions.is_empty(),
        &image.metadata().source_file,
    ) && src.len <= out_len
    {
        out_len = src.len;
    }
    out.set_len(out_len)
        .with_context(|| format!("cannot size {}", args.output.display()))?;
    bar.finish_and_clear();
    let (secs, gbps) = rate(total, started.elapsed());
    println!(
        "extracted {} ({} data) from {} into {} in {secs:.2} s, {gbps:.2} GB/s",
        human(total),
        human(data),
        args.image.display(),
        args.output.display()
    );
    Ok(())
}

/// Copies resolved sources to the output, keeping the last decoded chunk.
struct Copier {
    decoder: ChunkDecoder,
    buf: Vec<u8>,
    cached: Option<ChunkId>,
    files: Vec<(PathBuf, File)>,
}

impl Copier {
    fn new(image: &Image) -> Result<Self> {
        Ok(Self {
            decoder: ChunkDecoder::new().context("cannot create a decoder")?,
            buf: vec![0u8; image.max_chunk_raw_len()],
            cached: None,
            files: Vec::new(),
        })
    }

    fn copy(
        &mut self,
        image: &Image,
        source: PageSource,
        len: u64,
        out: &File,
        at: u64,
    ) -> Result<()> {
        match source {
            PageSource::Zero => Ok(()),
            PageSource::Chunk { chunk, offset } => {
                if self.cached != Some(chunk) {
                    self.cached = None;
                    image.decode_chunk(chunk, &mut self.decoder, &mut self.buf)?;
                    self.cached = Some(chunk);
                }
                let off = offset as usize;
                out.write_all_at(&self.buf[off..off + len as usize], at)
                    .context("write failed")
            }
            PageSource::File {
                layer,
                region,
                offset,
            } => {
                let mapping = image
                    .file_mapping(layer, region)
                    .context("file extent without a file mapping")?;
                let file = self.mapped_file(mapping)?;
                let mut chunk = vec![0u8; len.min(1 << 20) as usize];
                let mut done = 0u64;
                while done < len {
                    let n = (len - done).min(chunk.len() as u64) as usize;
                    let avail = mapping
                        .identity
                        .size
                        .saturating_sub(offset + done)
                        .min(n as u64) as usize;
                    file.read_exact_at(&mut chunk[..avail], offset + done)
                        .with_context(|| format!("cannot read {}", mapping.path.display()))?;
                    chunk[avail..n].fill(0);
                    out.write_all_at(&chunk[..n], at + done)
                        .context("write failed")?;
                    done += n as u64;
                }
                Ok(())
            }
        }
    }

    /// Opens a mapped file once, refusing one that changed since capture.
    fn mapped_file(&mut self, m: &FileMapping) -> Result<&File> {
        if let Some(i) = self.files.iter().position(|(p, _)| *p == m.path) {
            return Ok(&self.files[i].1);
        }
        let f = File::open(&m.path)
            .with_context(|| format!("cannot open mapped file {}", m.path.display()))?;
        let st = f
            .metadata()
            .with_context(|| format!("cannot stat {}", m.path.display()))?;
        let id = &m.identity;
        if st.dev() != id.dev
            || st.ino() != id.inode
            || st.size() != id.size
            || st.mtime() != id.mtime_sec
            || st.mtime_nsec() != i64::from(id.mtime_nsec)
        {
            bail!("mapped file {} changed since the capture", m.path.display());
        }
        self.files.push((m.path.clone(), f));
        Ok(&self.files.last().expect("just pushed").1)
    }
}
