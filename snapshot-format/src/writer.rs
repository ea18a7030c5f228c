//! The streaming image writer: [`ImageWriter`].
//!
//! The caller (process capture, `capture --from-file`) walks memory in
//! address order: it begins each region, then describes its pages with
//! [`write_pages`](ImageWriter::write_pages) (bytes read from memory),
//! [`write_zero`](ImageWriter::write_zero),
//! [`write_from_file`](ImageWriter::write_from_file) and
//! [`write_parent`](ImageWriter::write_parent). Addresses it skips are
//! recorded as zero (never populated).
//!
//! ```text
//!  caller thread                              worker threads (N)
//!  ─────────────                              ──────────────────
//!  write_pages ─► drop zero pages              ┌─► compress (own zstd ctx)
//!              ─► append to open chunk buffer  │   reserve file offset (atomic)
//!              ─► full: xxh3-128, dedup ──job──┤   pwrite frame
//!                 (known hash: reuse chunk)    └─► result (chunk id, entry)
//!  finish ─► seal last chunk, join workers, write index + footer,
//!            fsync (optional), rename temp file into place, fsync dir
//! ```
//!
//! **Chunk boundaries follow the address space**: a chunk holds the non-zero
//! pages of one aligned window of `chunk_size` bytes (`addr / chunk_size`),
//! never more. So a chunk's pages are always within one window (a fault or
//! a prefetch of "the chunk around an address" covers at most `chunk_size`
//! bytes of address space; a deduplicated chunk is used in several windows,
//! each use within one), chunk boundaries do not shift with the content
//! before them (identical aligned blocks deduplicate, wherever they are),
//! and sparse memory makes small chunks rather than chunks scattered over
//! gigabytes. The writer guarantees this; readers do not rely on it (use
//! [`Image::chunk_uses`](crate::Image::chunk_uses)).
//!
//! Hashing and dedup happen on the caller's thread (xxh3 runs at tens of
//! GB/s, far faster than compression), so duplicate chunks are never
//! compressed and chunk ids are assigned deterministically in stream order.
//! Only compression and the write run on the workers; frames land in the
//! file in completion order, and the chunk table records where.
//!
//! Raw chunk buffers come from a fixed pool (1 MiB of chunks per worker, at
//! least two), so memory is bounded and a caller faster than the workers
//! blocks instead of queuing.
//!
//! The image is written to a temporary file in the target directory and
//! renamed into place by [`finish`](ImageWriter::finish). It is created with
//! mode 0600: images hold memory contents, which may include secrets. If anything fails
//! (including `ENOSPC`), or the writer is dropped unfinished, the temporary
//! file is removed: no file is left under either name.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use xxhash_rust::xxh3::xxh3_128;

use crate::codec::{ChunkEncoder, Compression, chunk_hash, is_zero, zstd_levels};
use crate::error::WriteError;
use crate::index::{Blob, ChunkEntry, IndexRepr, RegionRepr, RunSource, encode_chunk, encode_run};
use crate::layout::{FOOTER_LEN, Footer, HEADER_LEN, Header};
use crate::limits::{
    DEFAULT_CHUNK_SIZE, MAX_CHUNK_RAW_LEN, MAX_CHUNKS, MAX_INDEX_ITEMS, MAX_INDEX_LEN,
    MAX_PAGE_SIZE, MAX_REGIONS, MAX_RUNS, MIN_CHUNK_SIZE, MIN_PAGE_SIZE,
};
use crate::meta::{ImageId, ParentRef, ProcessMetadata, RegionInfo};

/// Options of an [`ImageWriter`].
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Page size of the captured memory (a power of two in
    /// [`MIN_PAGE_SIZE`]..=[`MAX_PAGE_SIZE`]). Default 4096.
    pub page_size: u32,
    /// Largest raw chunk, a multiple of the page size in
    /// [`MIN_CHUNK_SIZE`]..=[`MAX_CHUNK_RAW_LEN`]. Default
    /// [`DEFAULT_CHUNK_SIZE`].
    pub chunk_size: usize,
    /// How chunks are compressed. Default zstd at
    /// [`DEFAULT_ZSTD_LEVEL`](crate::DEFAULT_ZSTD_LEVEL).
    pub compression: Compression,
    /// Compression worker threads. 0 compresses on the calling thread.
    pub workers: usize,
    /// fsync the image and its directory before returning from `finish`.
    pub fsync: bool,
    /// The parent this image is captured against (see [`parent_ref`]).
    /// Required for [`ImageWriter::write_parent`].
    pub parent: Option<ParentRef>,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            page_size: 4096,
            chunk_size: DEFAULT_CHUNK_SIZE,
            compression: Compression::default(),
            workers: 0,
            fsync: false,
            parent: None,
        }
    }
}

/// A counter of the bytes of address space the writer has consumed so far
/// (all `write_*` calls, including zero, file and parent ranges and skipped
/// gaps). Clone it to another thread to drive a progress bar.
#[derive(Debug, Clone, Default)]
pub struct Progress(Arc<AtomicU64>);

impl Progress {
    /// Bytes consumed so far.
    pub fn bytes(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
}

/// What [`ImageWriter::finish`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteSummary {
    /// The image written.
    pub path: PathBuf,
    /// Its identity.
    pub id: ImageId,
    /// Address space covered by all regions.
    pub raw_bytes: u64,
    /// Non-zero page bytes given to `write_pages`.
    pub data_bytes: u64,
    /// Bytes recorded as zero (zero pages dropped, gaps, `write_zero`).
    pub zero_bytes: u64,
    /// All-zero pages dropped from `write_pages` input.
    pub zero_pages: u64,
    /// Bytes recorded as unchanged since the parent.
    pub parent_bytes: u64,
    /// Bytes recorded as coming from mapped files.
    pub file_bytes: u64,
    /// Chunks stored (unique).
    pub chunks: u64,
    /// Chunks not stored because an identical one was.
    pub dedup_hits: u64,
    /// Raw bytes of those chunks.
    pub dedup_bytes: u64,
    /// Bytes of chunk frames stored.
    pub stored_bytes: u64,
    /// Length of the image file.
    pub file_len: u64,
    /// Time from `create` to the end of `finish`.
    pub elapsed: Duration,
}

/// Builds the [`ParentRef`] a child image at `child` stores for the parent
/// image at `parent` with identity `id`: the parent's path relative to the
/// child's directory, so that the pair can be moved together.
pub fn parent_ref(child: &Path, parent: &Path, id: ImageId) -> std::io::Result<ParentRef> {
    let child_dir = dir_of(child).canonicalize()?;
    let parent = parent.canonicalize()?;
    Ok(ParentRef {
        path: relative_path(&child_dir, &parent),
        id,
    })
}

/// `target` relative to the directory `base` (both absolute, canonical).
fn relative_path(base: &Path, target: &Path) -> PathBuf {
    let b: Vec<Component<'_>> = base.components().collect();
    let t: Vec<Component<'_>> = target.components().collect();
    let common = b.iter().zip(&t).take_while(|(x, y)| x == y).count();
    let mut out = PathBuf::new();
    for _ in common..b.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c.as_os_str());
    }
    out
}

/// A run as the writer accumulates it: data runs refer to chunk *sequence
/// numbers* (every sealed chunk, duplicates included), mapped to chunk ids at
/// `finish`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PendingSource {
    Zero,
    Data { seq: u32, page: u32 },
    Parent,
    File,
}

#[derive(Debug)]
struct RegionBuild {
    info: RegionInfo,
    runs: Vec<(u64, PendingSource)>,
}

/// The file being written, shared with the workers.
#[derive(Debug)]
struct Output {
    file: File,
    path: PathBuf,
    next_offset: AtomicU64,
    failed: AtomicBool,
}

impl Output {
    /// Compresses `raw` and writes its frame at a freshly reserved offset.
    fn store(
        &self,
        enc: &mut ChunkEncoder,
        raw: &[u8],
        hash: u128,
    ) -> Result<ChunkEntry, WriteError> {
        let (codec, bytes) = enc.encode(raw).map_err(WriteError::Compress)?;
        let offset = self
            .next_offset
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        self.file
            .write_all_at(bytes, offset)
            .map_err(|source| WriteError::Io {
                path: self.path.clone(),
                source,
            })?;
        Ok(ChunkEntry {
            offset,
            stored_len: bytes.len() as u32,
            raw_len: raw.len() as u32,
            codec,
            hash,
        })
    }
}

struct Job {
    id: u32,
    hash: u128,
    buf: Vec<u8>,
}

type ChunkResult = (u32, Result<ChunkEntry, WriteError>);

/// Where sealed chunks go.
enum Sink {
    Inline(ChunkEncoder),
    Pool {
        jobs: Option<Sender<Job>>,
        results: Receiver<ChunkResult>,
        free: Receiver<Vec<u8>>,
        buffers_made: usize,
        buffers_max: usize,
        workers: Vec<JoinHandle<()>>,
    },
}

/// Writes one image. See the [module documentation](self).
pub struct ImageWriter {
    path: PathBuf,
    tmp: Option<tempfile::NamedTempFile>,
    out: Arc<Output>,
    opts: WriterOptions,
    page: u64,
    metadata: ProcessMetadata,
    regions: Vec<RegionBuild>,
    total_runs: usize,
    /// Next address expected in the current (last) region.
    cursor: u64,
    chunk: Vec<u8>,
    /// Address window (address / chunk size) of the open chunk's pages.
    chunk_window: u64,
    /// Sequence number of the open chunk.
    seq: u32,
    seq_to_id: Vec<u32>,
    dedup: HashMap<u128, u32>,
    table: Vec<Option<ChunkEntry>>,
    sink: Sink,
    progress: Progress,
    stats: WriteSummary,
    started: Instant,
    /// A worker's error has been returned to the caller.
    worker_error_reported: bool,
}

// Capture may hand the writer to another thread.
const _: fn() = || {
    fn send<T: Send>() {}
    send::<ImageWriter>();
};

impl std::fmt::Debug for ImageWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageWriter")
            .field("path", &self.path)
            .field("regions", &self.regions.len())
            .field("chunks", &self.table.len())
            .finish_non_exhaustive()
    }
}

impl ImageWriter {
    /// Starts writing an image that will appear at `path` when
    /// [`finish`](Self::finish) succeeds.
    pub fn create(path: impl AsRef<Path>, opts: WriterOptions) -> Result<Self, WriteError> {
        let started = Instant::now();
        let path = path.as_ref().to_path_buf();
        validate_options(&opts)?;
        let io_err = |source| WriteError::Io {
            path: path.clone(),
            source,
        };
        let dir = dir_of(&path).to_path_buf();
        let name = path.file_name().ok_or_else(|| {
            WriteError::InvalidOption(format!("{} has no file name", path.display()))
        })?;
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{}.", name.to_string_lossy()))
            .suffix(".tmp")
            .tempfile_in(&dir)
            .map_err(io_err)?;
        let file = tmp.as_file().try_clone().map_err(io_err)?;
        file.write_all_at(&Header::encode(), 0).map_err(io_err)?;
        let out = Arc::new(Output {
            file,
            path: tmp.path().to_path_buf(),
            next_offset: AtomicU64::new(u64::from(HEADER_LEN)),
            failed: AtomicBool::new(false),
        });
        let sink = if opts.workers == 0 {
            Sink::Inline(ChunkEncoder::new(opts.compression).map_err(WriteError::Compress)?)
        } else {
            start_pool(&out, &opts)?
        };
        let chunk = Vec::with_capacity(opts.chunk_size);
        Ok(Self {
            page: u64::from(opts.page_size),
            stats: WriteSummary {
                path: path.clone(),
                id: ImageId([0; 16]),
                raw_bytes: 0,
                data_bytes: 0,
                zero_bytes: 0,
                zero_pages: 0,
                parent_bytes: 0,
                file_bytes: 0,
                chunks: 0,
                dedup_hits: 0,
                dedup_bytes: 0,
                stored_bytes: 0,
                file_len: 0,
                elapsed: Duration::ZERO,
            },
            path,
            tmp: Some(tmp),
            out,
            opts,
            metadata: ProcessMetadata::default(),
            regions: Vec::new(),
            total_runs: 0,
            cursor: 0,
            chunk,
            chunk_window: 0,
            seq: 0,
            seq_to_id: Vec::new(),
            dedup: HashMap::new(),
            table: Vec::new(),
            sink,
            progress: Progress::default(),
            started,
            worker_error_reported: false,
        })
    }

    /// A handle on the bytes consumed so far, for progress reporting.
    pub fn progress(&self) -> Progress {
        self.progress.clone()
    }

    /// Sets the process metadata stored in the index.
    pub fn set_metadata(&mut self, metadata: ProcessMetadata) {
        self.metadata = metadata;
    }

    /// The page size.
    pub fn page_size(&self) -> u32 {
        self.opts.page_size
    }

    /// Begins a region. Regions must come in increasing address order and
    /// not overlap; the previous region's unwritten tail is recorded as zero.
    pub fn begin_region(&mut self, info: RegionInfo) -> Result<(), WriteError> {
        self.check_usable()?;
        let bad = |reason| WriteError::BadRegion {
            start: info.start,
            len: info.len,
            reason,
        };
        if !info.start.is_multiple_of(self.page)
            || !info.len.is_multiple_of(self.page)
            || info.len == 0
        {
            return Err(bad("not a non-empty page-aligned range"));
        }
        if info.start.checked_add(info.len).is_none() {
            return Err(bad("end overflows"));
        }
        if let Some(f) = &info.file
            && f.offset.checked_add(info.len).is_none()
        {
            return Err(bad("file offset + length overflows"));
        }
        if let Some(prev) = self.regions.last()
            && info.start < prev.info.end()
        {
            return Err(bad("overlaps or precedes the previous region"));
        }
        if self.regions.len() >= MAX_REGIONS {
            return Err(WriteError::LimitExceeded {
                what: "regions",
                limit: MAX_REGIONS as u64,
            });
        }
        self.end_region()?;
        self.cursor = info.start;
        self.stats.raw_bytes += info.len;
        self.regions.push(RegionBuild {
            info,
            runs: Vec::new(),
        });
        Ok(())
    }

    /// Records the pages of `data` (a whole number of pages) at `addr`.
    /// All-zero pages are recorded as zero and not stored; the others go
    /// into chunks.
    pub fn write_pages(&mut self, addr: u64, data: &[u8]) -> Result<(), WriteError> {
        self.advance_to(addr, data.len() as u64)?;
        let page = self.page as usize;
        for (i, p) in data.chunks_exact(page).enumerate() {
            let page_addr = addr + (i * page) as u64;
            if is_zero(p) {
                self.stats.zero_pages += 1;
                self.stats.zero_bytes += self.page;
                self.push_run(1, PendingSource::Zero)?;
            } else {
                // A chunk holds the non-zero pages of one aligned window of
                // `chunk_size` bytes of address space (see the module docs).
                let window = page_addr / self.opts.chunk_size as u64;
                if !self.chunk.is_empty() && window != self.chunk_window {
                    self.seal_chunk()?;
                }
                self.chunk_window = window;
                let page_in_chunk = (self.chunk.len() / page) as u32;
                self.chunk.extend_from_slice(p);
                self.stats.data_bytes += self.page;
                self.push_run(
                    1,
                    PendingSource::Data {
                        seq: self.seq,
                        page: page_in_chunk,
                    },
                )?;
            }
            self.cursor = page_addr + self.page;
            self.progress.add(self.page);
        }
        Ok(())
    }

    /// Records `len` bytes at `addr` as zero.
    pub fn write_zero(&mut self, addr: u64, len: u64) -> Result<(), WriteError> {
        self.write_kind(addr, len, PendingSource::Zero)
    }

    /// Records `len` bytes at `addr` as the unmodified content of the
    /// region's mapped file (the region must have a [`FileMapping`](crate::FileMapping)).
    pub fn write_from_file(&mut self, addr: u64, len: u64) -> Result<(), WriteError> {
        if self.regions.last().is_some_and(|r| r.info.file.is_none()) {
            return Err(WriteError::BadWrite {
                addr,
                len,
                reason: "file run in a region without a file mapping",
            });
        }
        self.write_kind(addr, len, PendingSource::File)
    }

    /// Records `len` bytes at `addr` as unchanged since the parent image (the
    /// writer must have been created with a parent).
    pub fn write_parent(&mut self, addr: u64, len: u64) -> Result<(), WriteError> {
        if self.opts.parent.is_none() {
            return Err(WriteError::BadWrite {
                addr,
                len,
                reason: "parent run in an image without a parent",
            });
        }
        self.write_kind(addr, len, PendingSource::Parent)
    }

    /// Seals the last chunk, writes the index and footer, and renames the
    /// image into place. On error nothing is left on disk.
    pub fn finish(mut self) -> Result<WriteSummary, WriteError> {
        self.check_usable()?;
        self.end_region()?;
        if !self.chunk.is_empty() {
            self.seal_chunk()?;
        }
        self.drain_pool()?;
        let table: Vec<ChunkEntry> = self
            .table
            .iter()
            .map(|e| e.ok_or(WriteError::WorkerPanicked))
            .collect::<Result<_, _>>()?;

        // Encode the tables and the index.
        let page_size = self.opts.page_size;
        let mut chunk_blob = Vec::with_capacity(table.len() * crate::layout::CHUNK_RECORD_LEN);
        for e in &table {
            encode_chunk(&mut chunk_blob, e);
            self.stats.stored_bytes += u64::from(e.stored_len);
        }
        let mut run_blobs = Vec::with_capacity(self.regions.len());
        for r in &self.regions {
            let mut blob = Vec::with_capacity(r.runs.len() * crate::layout::RUN_RECORD_LEN);
            for &(pages, src) in &r.runs {
                let source = match src {
                    PendingSource::Zero => RunSource::Zero,
                    PendingSource::Parent => RunSource::Parent,
                    PendingSource::File => RunSource::File,
                    PendingSource::Data { seq, page } => RunSource::Data {
                        chunk: self.seq_to_id[seq as usize],
                        offset: page * page_size,
                    },
                };
                encode_run(&mut blob, pages, source, page_size);
            }
            run_blobs.push(blob);
        }
        let repr = IndexRepr {
            page_size,
            chunk_size: self.opts.chunk_size as u32,
            metadata: self.metadata.clone(),
            parent: self.opts.parent.clone(),
            regions: self
                .regions
                .iter()
                .zip(&run_blobs)
                .map(|(r, blob)| RegionRepr {
                    info: r.info.clone(),
                    runs: Blob(blob),
                })
                .collect(),
            chunks: Blob(&chunk_blob),
        };
        let index = rmp_serde::to_vec_named(&repr).map_err(WriteError::Encode)?;
        if index.len() as u64 > MAX_INDEX_LEN {
            return Err(WriteError::LimitExceeded {
                what: "index bytes",
                limit: MAX_INDEX_LEN,
            });
        }
        // The reader's pre-decode scan bounds the number of msgpack values and their
        // nesting; metadata (a process with a million fds, say) could exceed it.
        if crate::index::scan_msgpack(&index).is_err() {
            return Err(WriteError::LimitExceeded {
                what: "index values",
                limit: MAX_INDEX_ITEMS as u64,
            });
        }
        let index_hash = xxh3_128(&index);
        let index_offset = self.out.next_offset.load(Ordering::Relaxed);
        let footer = Footer {
            index_offset,
            index_len: index.len() as u64,
            index_hash,
        };
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| WriteError::Io { path, source }
        };
        let tmp_path = self.out.path.clone();
        self.out
            .file
            .write_all_at(&index, index_offset)
            .map_err(io_err(&tmp_path))?;
        let footer_offset = index_offset + index.len() as u64;
        self.out
            .file
            .write_all_at(&footer.encode(), footer_offset)
            .map_err(io_err(&tmp_path))?;
        let file_len = footer_offset + FOOTER_LEN;
        if self.opts.fsync {
            self.out.file.sync_all().map_err(io_err(&tmp_path))?;
        }
        let tmp = self
            .tmp
            .take()
            .expect("temporary file present until finish");
        tmp.persist(&self.path)
            .map_err(|e| io_err(&self.path)(e.error))?;
        if self.opts.fsync
            && let Err(e) = sync_parent_dir(&self.path)
        {
            // The rename may not be durable: do not leave an image that may
            // vanish on a crash while we report failure.
            let _ = std::fs::remove_file(&self.path);
            return Err(io_err(&self.path)(e));
        }
        self.stats.id = ImageId(index_hash.to_le_bytes());
        self.stats.chunks = table.len() as u64;
        self.stats.file_len = file_len;
        self.stats.elapsed = self.started.elapsed();
        Ok(self.stats.clone())
    }

    /// Checks a write of `len` bytes at `addr` against the current region
    /// and cursor, and records any skipped gap as zero.
    fn advance_to(&mut self, addr: u64, len: u64) -> Result<(), WriteError> {
        self.check_usable()?;
        let bad = |reason| WriteError::BadWrite { addr, len, reason };
        let Some(region) = self.regions.last() else {
            return Err(WriteError::NoRegion { addr });
        };
        if !addr.is_multiple_of(self.page) || !len.is_multiple_of(self.page) {
            return Err(bad("not page aligned"));
        }
        let end = addr.checked_add(len).ok_or_else(|| bad("end overflows"))?;
        if addr < self.cursor {
            return Err(bad(
                "before the end of the previous write (writes must be in address order)",
            ));
        }
        if end > region.info.end() {
            return Err(bad("past the end of the current region"));
        }
        self.zero_fill_to(addr)
    }

    /// Records the unwritten pages from the cursor up to `to` as zero.
    fn zero_fill_to(&mut self, to: u64) -> Result<(), WriteError> {
        if to > self.cursor {
            let gap = to - self.cursor;
            self.stats.zero_bytes += gap;
            self.push_run(gap / self.page, PendingSource::Zero)?;
            self.progress.add(gap);
            self.cursor = to;
        }
        Ok(())
    }

    fn write_kind(&mut self, addr: u64, len: u64, src: PendingSource) -> Result<(), WriteError> {
        self.advance_to(addr, len)?;
        if len == 0 {
            return Ok(());
        }
        match src {
            PendingSource::Zero => self.stats.zero_bytes += len,
            PendingSource::Parent => self.stats.parent_bytes += len,
            PendingSource::File => self.stats.file_bytes += len,
            PendingSource::Data { .. } => unreachable!("data runs come from write_pages"),
        }
        self.push_run(len / self.page, src)?;
        self.cursor = addr + len;
        self.progress.add(len);
        Ok(())
    }

    /// Appends a run of `pages` pages to the current region, merging it into
    /// the previous run when it continues it.
    fn push_run(&mut self, pages: u64, src: PendingSource) -> Result<(), WriteError> {
        let region = self
            .regions
            .last_mut()
            .expect("callers check a region is open");
        if let Some((last_pages, last_src)) = region.runs.last_mut() {
            let continues = match (*last_src, src) {
                (
                    PendingSource::Data { seq: a, page: pa },
                    PendingSource::Data { seq: b, page: pb },
                ) => a == b && u64::from(pa) + *last_pages == u64::from(pb),
                (a, b) => a == b,
            };
            if continues {
                *last_pages += pages;
                return Ok(());
            }
        }
        if self.total_runs >= MAX_RUNS {
            return Err(WriteError::LimitExceeded {
                what: "runs",
                limit: MAX_RUNS as u64,
            });
        }
        self.total_runs += 1;
        region.runs.push((pages, src));
        Ok(())
    }

    /// Records the current region's unwritten tail as zero.
    fn end_region(&mut self) -> Result<(), WriteError> {
        let Some(region) = self.regions.last() else {
            return Ok(());
        };
        let end = region.info.end();
        self.zero_fill_to(end)
    }

    /// Seals the open chunk. A failure here loses data (the chunk is not
    /// stored), so it poisons the writer: every later call fails.
    fn seal_chunk(&mut self) -> Result<(), WriteError> {
        let r = self.seal_chunk_inner();
        if r.is_err() {
            self.out.failed.store(true, Ordering::Release);
        }
        r
    }

    /// Fails if an earlier error left the image incomplete: with the
    /// worker's own error if none has been reported yet, else `Poisoned`.
    fn check_usable(&mut self) -> Result<(), WriteError> {
        // Acquire: a worker sends its error before setting the flag
        // (Release), so the error is in the channel when the flag is seen.
        if self.out.failed.load(Ordering::Acquire) {
            if !self.worker_error_reported {
                self.collect_results()?;
            }
            return Err(WriteError::Poisoned);
        }
        Ok(())
    }

    /// Hashes the open chunk and either maps it to an identical stored chunk
    /// or assigns it a new id and hands it to the sink.
    fn seal_chunk_inner(&mut self) -> Result<(), WriteError> {
        let hash = chunk_hash(&self.chunk);
        if let Some(&id) = self.dedup.get(&hash) {
            self.stats.dedup_hits += 1;
            self.stats.dedup_bytes += self.chunk.len() as u64;
            self.seq_to_id.push(id);
            self.chunk.clear();
        } else {
            if self.table.len() >= MAX_CHUNKS as usize {
                return Err(WriteError::LimitExceeded {
                    what: "chunks",
                    limit: u64::from(MAX_CHUNKS),
                });
            }
            let id = self.table.len() as u32;
            self.table.push(None);
            self.dedup.insert(hash, id);
            self.seq_to_id.push(id);
            match &mut self.sink {
                Sink::Inline(enc) => {
                    let entry = self.out.store(enc, &self.chunk, hash)?;
                    self.table[id as usize] = Some(entry);
                    self.chunk.clear();
                }
                Sink::Pool { .. } => {
                    let next = self.take_buffer()?;
                    let buf = std::mem::replace(&mut self.chunk, next);
                    let Sink::Pool { jobs, .. } = &self.sink else {
                        unreachable!("matched above")
                    };
                    let sent = jobs
                        .as_ref()
                        .expect("job channel open until finish")
                        .send(Job { id, hash, buf });
                    if sent.is_err() {
                        return Err(WriteError::WorkerPanicked);
                    }
                }
            }
        }
        self.seq += 1;
        self.collect_results()
    }

    /// A cleared raw buffer from the pool, waiting for a worker to return
    /// one when all are in flight.
    fn take_buffer(&mut self) -> Result<Vec<u8>, WriteError> {
        let chunk_size = self.opts.chunk_size;
        let Sink::Pool {
            free,
            buffers_made,
            buffers_max,
            workers,
            ..
        } = &mut self.sink
        else {
            unreachable!("only the pool takes buffers")
        };
        if let Ok(b) = free.try_recv() {
            return Ok(b);
        }
        if *buffers_made < *buffers_max {
            *buffers_made += 1;
            return Ok(Vec::with_capacity(chunk_size));
        }
        loop {
            match free.recv_timeout(Duration::from_millis(100)) {
                Ok(b) => return Ok(b),
                Err(RecvTimeoutError::Timeout) => {
                    // A worker only ends early by panicking.
                    if workers.iter().any(JoinHandle::is_finished) {
                        return Err(WriteError::WorkerPanicked);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return Err(WriteError::WorkerPanicked),
            }
        }
    }

    /// Moves finished chunk entries into the table; returns the first worker
    /// error. Several workers can fail at once (a full disk fails every
    /// chunk in flight): only the first error is returned, and the calls
    /// after it get `Poisoned` from [`check_usable`](Self::check_usable).
    fn collect_results(&mut self) -> Result<(), WriteError> {
        let Sink::Pool { results, .. } = &self.sink else {
            return Ok(());
        };
        while let Ok((id, r)) = results.try_recv() {
            match r {
                Ok(entry) => self.table[id as usize] = Some(entry),
                Err(e) => {
                    self.worker_error_reported = true;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Closes the job queue, waits for the workers and collects every result.
    fn drain_pool(&mut self) -> Result<(), WriteError> {
        let Sink::Pool { jobs, workers, .. } = &mut self.sink else {
            return Ok(());
        };
        drop(jobs.take());
        let mut panicked = false;
        for w in workers.drain(..) {
            panicked |= w.join().is_err();
        }
        self.collect_results()?;
        if panicked {
            return Err(WriteError::WorkerPanicked);
        }
        Ok(())
    }
}

impl Drop for ImageWriter {
    fn drop(&mut self) {
        // Stop the workers before the temporary file is removed (by the
        // `NamedTempFile` field's own drop).
        if let Sink::Pool { jobs, workers, .. } = &mut self.sink {
            self.out.failed.store(true, Ordering::Release);
            drop(jobs.take());
            for w in workers.drain(..) {
                let _ = w.join();
            }
        }
    }
}

fn validate_options(o: &WriterOptions) -> Result<(), WriteError> {
    let bad = |m: String| Err(WriteError::InvalidOption(m));
    if !o.page_size.is_power_of_two() || !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&o.page_size) {
        return bad(format!(
            "page size {} is not a power of two in {MIN_PAGE_SIZE}..={MAX_PAGE_SIZE}",
            o.page_size
        ));
    }
    if !o.chunk_size.is_multiple_of(o.page_size as usize)
        || !(MIN_CHUNK_SIZE..=MAX_CHUNK_RAW_LEN as usize).contains(&o.chunk_size)
    {
        return bad(format!(
            "chunk size {} must be a multiple of the page size ({}) between {MIN_CHUNK_SIZE} and {MAX_CHUNK_RAW_LEN}",
            o.chunk_size, o.page_size
        ));
    }
    if let Compression::Zstd { level } = o.compression
        && !zstd_levels().contains(&level)
    {
        let r = zstd_levels();
        return bad(format!(
            "zstd level {level} is outside {}..={}",
            r.start(),
            r.end()
        ));
    }
    if o.workers > 256 {
        return bad(format!("{} workers is more than 256", o.workers));
    }
    Ok(())
}

/// Raw chunk bytes the buffer pool holds per compression worker (in whole
/// chunks, at least two). With only two buffers per worker, the caller and
/// a single worker hand every chunk back and forth and each blocks on the
/// other for every chunk (futex wake-ups across vCPUs are costly here); a
/// deeper pool lets the caller run ahead and the worker drain its queue
/// without sleeping. Measured with `TMPDIR=/dev/shm cargo bench -p
/// snapshot-format --bench format -- 'writer/(text|real_l1)/w'`, two
/// versions alternated four times each (medians): one worker writes `text`
/// at ~700 MiB/s instead of ~535 and `real` at ~385 MiB/s instead of ~275;
/// two workers are unchanged (~1.3 GiB/s and ~760 MiB/s).
const POOL_BYTES_PER_WORKER: usize = 1 << 20;

fn start_pool(out: &Arc<Output>, opts: &WriterOptions) -> Result<Sink, WriteError> {
    let buffers_max = opts.workers * (POOL_BYTES_PER_WORKER / opts.chunk_size).max(2);
    let (job_tx, job_rx) = crossbeam_channel::bounded::<Job>(buffers_max);
    let (res_tx, res_rx) = crossbeam_channel::unbounded::<ChunkResult>();
    let (free_tx, free_rx) = crossbeam_channel::bounded::<Vec<u8>>(buffers_max + 1);
    let mut workers = Vec::with_capacity(opts.workers);
    for i in 0..opts.workers {
        let mut enc = ChunkEncoder::new(opts.compression).map_err(WriteError::Compress)?;
        let (rx, res, free, shared) = (
            job_rx.clone(),
            res_tx.clone(),
            free_tx.clone(),
            Arc::clone(out),
        );
        let handle = std::thread::Builder::new()
            .name(format!("lzr-compress-{i}"))
            .spawn(move || {
                for mut job in rx {
                    if !shared.failed.load(Ordering::Acquire) {
                        let r = shared.store(&mut enc, &job.buf, job.hash);
                        let failed = r.is_err();
                        let _ = res.send((job.id, r));
                        if failed {
                            shared.failed.store(true, Ordering::Release);
                        }
                    }
                    job.buf.clear();
                    let _ = free.send(job.buf);
                }
            })
            .map_err(|source| WriteError::Io {
                path: out.path.clone(),
                source,
            })?;
        workers.push(handle);
    }
    Ok(Sink::Pool {
        jobs: Some(job_tx),
        results: res_rx,
        free: free_rx,
        buffers_made: 1, // the writer's open chunk buffer
        buffers_max,
        workers,
    })
}

/// The directory holding `path` (`.` for a bare file name).
fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

fn sync_parent_dir(path: &Path) -> std::io::Result<()> {
    File::open(dir_of(path))?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        assert_eq!(
            relative_path(Path::new("/a/b"), Path::new("/a/b/p.lzr")),
            PathBuf::from("p.lzr")
        );
        assert_eq!(
            relative_path(Path::new("/a/b"), Path::new("/a/c/p.lzr")),
            PathBuf::from("../c/p.lzr")
        );
        assert_eq!(
            relative_path(Path::new("/"), Path::new("/x")),
            PathBuf::from("x")
        );
    }

    #[test]
    fn metadata_the_reader_would_refuse_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.lzr");
        let mut w = ImageWriter::create(&path, WriterOptions::default()).unwrap();
        w.set_metadata(ProcessMetadata {
            process: Some(crate::ProcessState {
                auxv: vec![0; MAX_INDEX_ITEMS],
                ..Default::default()
            }),
            ..Default::default()
        });
        let e = w.finish().unwrap_err();
        assert!(
            matches!(
                e,
                WriteError::LimitExceeded {
                    what: "index values",
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn options_are_checked() {
        let bad = [
            WriterOptions {
                chunk_size: 5000,
                ..Default::default()
            },
            WriterOptions {
                chunk_size: 2 * MAX_CHUNK_RAW_LEN as usize,
                ..Default::default()
            },
            WriterOptions {
                page_size: 3000,
                ..Default::default()
            },
            WriterOptions {
                compression: Compression::Zstd { level: 99 },
                ..Default::default()
            },
        ];
        let dir = tempfile::tempdir().unwrap();
        for o in bad {
            let e = ImageWriter::create(dir.path().join("x.lzr"), o).unwrap_err();
            assert!(matches!(e, WriteError::InvalidOption(_)), "{e}");
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
