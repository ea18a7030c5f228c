//! Reading a region's pages and handing them to the image writer, in address order.
//!
//! ```text
//!  pagemap batch ──► segments: read 0x..000+3 pages | file 0x..003+1 | read ...
//!                    (zero gaps are simply skipped: the writer records them as zero)
//!       │  up to BATCH_BYTES of reads, or IOV_MAX ranges
//!       ▼
//!  process_vm_readv(ranges) into one buffer     (/proc/PID/mem for PROT_NONE regions,
//!       │                                        and to retry pages it refused)
//!       ▼
//!  for each segment in order: write_pages(addr, bytes) | write_from_file(addr, len)
//!       └─► the writer drops zero pages, cuts, hashes, dedups; workers compress
//! ```
//!
//! Shared objects (shmem, memfd) are read from the object itself through
//! `/proc/PID/map_files/START-END`, skipping its holes with `SEEK_DATA`/`SEEK_HOLE`:
//! reading them through the process would allocate a page for every hole. When the
//! object cannot be read that way (no access to `map_files`; SysV segments, whose file
//! has no `read`), its pages are read through the process instead.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use rustix::fs::SeekFrom;
use snapshot_format::{ImageWriter, WriteError};
use tracee::{IOV_MAX, MemoryError, ProcessMemory, RemoteRange};

use crate::classify::{Backing, Plan};
use crate::pagemap::{PAGE, Pagemap, Rule};
use crate::smaps::Vma;

/// Bytes of memory read per batch.
pub const BATCH_BYTES: usize = 4 << 20;

/// Why copying a region's pages failed.
#[derive(Debug)]
pub(crate) enum CopyError {
    /// Reading the process failed (gone, not permitted, ...).
    Memory(MemoryError),
    /// Pages that should be readable could not be read, even through /proc/PID/mem.
    Unreadable {
        addr: u64,
        len: u64,
        source: io::Error,
    },
    /// Reading pagemap failed.
    Pagemap(io::Error),
    /// The image writer failed.
    Write(WriteError),
}

impl From<WriteError> for CopyError {
    fn from(e: WriteError) -> Self {
        Self::Write(e)
    }
}

impl From<MemoryError> for CopyError {
    fn from(e: MemoryError) -> Self {
        Self::Memory(e)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SegmentKind {
    /// Bytes read into the batch buffer at `buf_pos`.
    Read { buf_pos: usize },
    /// The region's file supplies these pages.
    File,
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    addr: u64,
    len: u64,
    kind: SegmentKind,
}

/// Where pages come from: the process's memory, its pagemap and its `map_files`.
#[derive(Debug)]
pub(crate) struct Source<'m> {
    pub(crate) memory: &'m ProcessMemory,
    /// The process id (for `/proc/PID/map_files`).
    pub(crate) pid: i32,
    pub(crate) pagemap: Pagemap,
}

/// What one region copy works with.
struct Ctx<'a, 'm> {
    src: &'a mut Source<'m>,
    plan: &'a Plan,
    writer: &'a mut ImageWriter,
    progress: &'a mut dyn FnMut(&ImageWriter),
}

/// Copies regions into the writer with reusable buffers. See the module docs.
#[derive(Debug)]
pub(crate) struct PageCopier {
    buf: Vec<u8>,
    filled: usize,
    segments: Vec<Segment>,
    ranges: Vec<RemoteRange>,
    /// Bytes read from the process (or its shared objects) so far.
    pub(crate) bytes_read: u64,
}

impl PageCopier {
    pub(crate) fn new() -> Self {
        Self {
            buf: vec![0; BATCH_BYTES],
            filled: 0,
            segments: Vec::new(),
            ranges: Vec::new(),
            bytes_read: 0,
        }
    }

    /// Writes the pages of one region (already begun in `writer`). `progress` is called
    /// after every batch.
    pub(crate) fn copy_region(
        &mut self,
        src: &mut Source<'_>,
        vma: &Vma,
        plan: &Plan,
        writer: &mut ImageWriter,
        progress: &mut dyn FnMut(&ImageWriter),
    ) -> Result<(), CopyError> {
        let (start, end) = (plan.info.start, plan.info.end());
        let populated = vma.may_hold_pages();
        let mut cx = Ctx {
            src,
            plan,
            writer,
            progress,
        };
        match plan.backing {
            Backing::Skip | Backing::NotRead => {}
            Backing::FileShared => cx.writer.write_from_file(start, end - start)?,
            Backing::Private if populated => self.scan(&mut cx, Rule::Populated, false)?,
            Backing::Private => {}
            Backing::FilePrivate if populated => self.scan(&mut cx, Rule::CopiedOnWrite, true)?,
            Backing::FilePrivate => cx.writer.write_from_file(start, end - start)?,
            Backing::Whole { until } => {
                let stop = until.clamp(start, end);
                self.push_read(&mut cx, start, stop - start)?;
            }
            Backing::SharedObject => self.shared_object(&mut cx, vma)?,
        }
        self.flush(&mut cx)?;
        (cx.progress)(cx.writer);
        Ok(())
    }

    /// Walks pagemap over the region: pages `rule` wants are read, the others are file
    /// runs (`others_from_file`) or zero.
    fn scan(
        &mut self,
        cx: &mut Ctx<'_, '_>,
        rule: Rule,
        others_from_file: bool,
    ) -> Result<(), CopyError> {
        let (mut addr, end) = (cx.plan.info.start, cx.plan.info.end());
        let mut runs: Vec<(u64, u64, bool)> = Vec::new();
        while addr < end {
            let entries = cx
                .src
                .pagemap
                .entries(addr, end)
                .map_err(CopyError::Pagemap)?;
            // Runs of pages with the same decision (copied out: the pagemap buffer is
            // borrowed).
            runs.clear();
            let mut i = 0;
            while i < entries.len() {
                let wanted = rule.wants(entries[i]);
                let j = entries[i..]
                    .iter()
                    .position(|&e| rule.wants(e) != wanted)
                    .map_or(entries.len(), |k| i + k);
                runs.push((addr + i as u64 * PAGE, (j - i) as u64 * PAGE, wanted));
                i = j;
            }
            addr += entries.len() as u64 * PAGE;
            for &(at, len, wanted) in &runs {
                if wanted {
                    self.push_read(cx, at, len)?;
                } else if others_from_file {
                    self.push_file(at, len);
                }
            }
        }
        Ok(())
    }

    /// Queues `len` bytes at `addr` to be read, flushing whenever the batch is full.
    fn push_read(
        &mut self,
        cx: &mut Ctx<'_, '_>,
        mut addr: u64,
        mut len: u64,
    ) -> Result<(), CopyError> {
        while len > 0 {
            if self.filled == self.buf.len() || self.ranges.len() == IOV_MAX {
                self.flush(cx)?;
                (cx.progress)(cx.writer);
            }
            let room = (self.buf.len() - self.filled) as u64;
            let n = len.min(room);
            let buf_pos = self.filled;
            match self.segments.last_mut() {
                Some(Segment {
                    addr: a,
                    len: l,
                    kind: SegmentKind::Read { .. },
                }) if *a + *l == addr => {
                    *l += n;
                    self.ranges
                        .last_mut()
                        .expect("a read segment has a range")
                        .len += n;
                }
                _ => {
                    self.segments.push(Segment {
                        addr,
                        len: n,
                        kind: SegmentKind::Read { buf_pos },
                    });
                    self.ranges.push(RemoteRange { addr, len: n });
                }
            }
            self.filled += n as usize;
            addr += n;
            len -= n;
        }
        Ok(())
    }

    /// Queues a file run.
    fn push_file(&mut self, addr: u64, len: u64) {
        match self.segments.last_mut() {
            Some(Segment {
                addr: a,
                len: l,
                kind: SegmentKind::File,
            }) if *a + *l == addr => *l += len,
            _ => self.segments.push(Segment {
                addr,
                len,
                kind: SegmentKind::File,
            }),
        }
    }

    /// Reads the queued ranges and writes every queued segment, in order.
    fn flush(&mut self, cx: &mut Ctx<'_, '_>) -> Result<(), CopyError> {
        if self.segments.is_empty() {
            return Ok(());
        }
        let memory = cx.src.memory;
        let buf = &mut self.buf[..self.filled];
        if cx.plan.forced {
            for seg in &self.segments {
                if let SegmentKind::Read { buf_pos } = seg.kind {
                    read_forced(
                        memory,
                        seg.addr,
                        &mut buf[buf_pos..buf_pos + seg.len as usize],
                    )?;
                }
            }
        } else if !self.ranges.is_empty() {
            let report = memory.read_ranges(&self.ranges, buf)?;
            // Pages process_vm_readv refused in a readable mapping: try /proc/PID/mem
            // (it fails the same way on truly unreadable pages, which is an error: never
            // store zeros for memory we could not read).
            for failed in &report.failed {
                let seg = self
                    .segments
                    .iter()
                    .find(|s| s.addr <= failed.addr && failed.addr < s.addr + s.len)
                    .expect("a failed range lies inside a queued read");
                let SegmentKind::Read { buf_pos } = seg.kind else {
                    unreachable!("only read segments have ranges")
                };
                let at = buf_pos + (failed.addr - seg.addr) as usize;
                read_forced(memory, failed.addr, &mut buf[at..at + failed.len as usize])?;
            }
        }
        for seg in &self.segments {
            match seg.kind {
                SegmentKind::Read { buf_pos } => {
                    cx.writer
                        .write_pages(seg.addr, &buf[buf_pos..buf_pos + seg.len as usize])?;
                    self.bytes_read += seg.len;
                }
                SegmentKind::File => cx.writer.write_from_file(seg.addr, seg.len)?,
            }
        }
        self.segments.clear();
        self.ranges.clear();
        self.filled = 0;
        Ok(())
    }

    /// Reads a shared object's data extents through `map_files`; falls back to reading
    /// the rest through the process if the object cannot be read that way.
    fn shared_object(&mut self, cx: &mut Ctx<'_, '_>, vma: &Vma) -> Result<(), CopyError> {
        let end = cx.plan.info.end();
        let link = format!(
            "/proc/{}/map_files/{:x}-{:x}",
            cx.src.pid, vma.start, vma.end
        );
        let mut next = cx.plan.info.start;
        // The object offset of the region's first page (the region may be a part of the
        // mapping).
        let offset = vma.offset + (cx.plan.info.start - vma.start);
        match File::open(&link) {
            Ok(object) => {
                match self.object_extents(cx, &object, offset, &mut next)? {
                    None => next = end,
                    Some(e) => log::debug!(
                        "cannot read shared object {} directly ({e}); reading \
                         {next:#x}..{end:#x} through the process",
                        vma.name_lossy(),
                    ),
                }
                (cx.progress)(cx.writer);
            }
            Err(e) => log::debug!(
                "cannot open {link} ({e}); reading {} through the process",
                vma.name_lossy()
            ),
        }
        self.push_read(cx, next, end - next)
    }

    /// Copies the data extents of `object` (mapped from `offset` at the region's start)
    /// for the whole region, advancing `*next` past what was written; holes are left
    /// to the writer (zero). Reads go straight to the writer, bypassing the batch (empty
    /// here). A failure to read the object is returned as `Ok(Some(error))`, for the
    /// caller to fall back; writer failures are errors.
    fn object_extents(
        &mut self,
        cx: &mut Ctx<'_, '_>,
        object: &File,
        offset: u64,
        next: &mut u64,
    ) -> Result<Option<io::Error>, CopyError> {
        let (start, end) = (cx.plan.info.start, cx.plan.info.end());
        let to_addr = |off: u64| start + (off - offset);
        let end_off = offset + (end - start);
        let mut pos = offset;
        while pos < end_off {
            let data = match rustix::fs::seek(object, SeekFrom::Data(pos)) {
                Ok(d) => (d / PAGE * PAGE).max(pos),
                Err(rustix::io::Errno::NXIO) => break,
                Err(e) => return Ok(Some(e.into())),
            };
            if data >= end_off {
                break;
            }
            let hole = match rustix::fs::seek(object, SeekFrom::Hole(data)) {
                Ok(h) => h.div_ceil(PAGE) * PAGE,
                Err(e) => return Ok(Some(e.into())),
            };
            // A file without real SEEK_HOLE support reports no hole: all of it is data.
            let stop = if hole > data {
                hole.min(end_off)
            } else {
                end_off
            };
            let mut off = data;
            while off < stop {
                let n = (stop - off).min(self.buf.len() as u64) as usize;
                let block = &mut self.buf[..n];
                let got = match read_at_most(object, block, off) {
                    Ok(got) => got,
                    Err(e) => return Ok(Some(e)),
                };
                block[got..].fill(0);
                cx.writer.write_pages(to_addr(off), block)?;
                self.bytes_read += n as u64;
                off += n as u64;
                *next = to_addr(off);
            }
            pos = stop;
        }
        Ok(None)
    }
}

/// `pread` until `buf` is full or the file ends; returns the bytes read.
fn read_at_most(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn read_forced(memory: &ProcessMemory, addr: u64, buf: &mut [u8]) -> Result<(), CopyError> {
    memory.read_forced(addr, buf).map_err(|e| match e {
        MemoryError::Read {
            addr, len, source, ..
        } => CopyError::Unreadable { addr, len, source },
        other => CopyError::Memory(other),
    })
}
