//! Reading and writing another process's memory.
//!
//! - **Reads** use `process_vm_readv(2)`: one system call copies many remote ranges
//!   (up to [`IOV_MAX`] iovecs) straight into one local buffer, without stopping the
//!   process and without page-table tricks. The kernel stops at the first byte it cannot
//!   read and returns the count copied so far, so a batch that fails part-way is resumed
//!   right after the failing page: the caller learns exactly which pages failed (unmapped,
//!   `PROT_NONE`, `VM_IO`/`VM_PFNMAP` like `[vvar]`), never just "the batch failed".
//! - **Writes** go through `/proc/PID/mem`, which writes with `FOLL_FORCE` like a
//!   debugger: read-only private pages (code, RELRO, a restored `PROT_READ` mapping) can
//!   be written; `process_vm_writev` refuses them.
//! - **Forced reads** ([`ProcessMemory::read_forced`]) go through `/proc/PID/mem` too,
//!   for the pages `process_vm_readv` refuses: mappings without read permission
//!   (`PROT_NONE` with data in it, execute-only code).
//!
//! Both need ptrace access permission to the process (being its tracer suffices). A
//! `ProcessMemory` names the process by pid: use it while the process is known to stay
//! alive (seized, or our child), so that the pid cannot be reused underneath.

use std::fs::File;
use std::io::{self, IoSliceMut};
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

use nix::sys::uio::{RemoteIoVec, process_vm_readv};
use nix::unistd::Pid;

use crate::error::MemoryError;

/// The most iovecs the kernel accepts in one `process_vm_readv` call (`UIO_MAXIOV`).
pub const IOV_MAX: usize = 1024;

/// The page size of x86_64 Linux (base pages). Failures are reported per page.
pub const PAGE_SIZE: u64 = 4096;

/// A range of the remote process's address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteRange {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
}

/// A remote range that could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailedRange {
    /// Start address.
    pub addr: u64,
    /// Length in bytes (whole pages, except where a requested range starts or ends
    /// inside a page).
    pub len: u64,
    /// The errno `process_vm_readv` reported (`EFAULT` for an inaccessible page).
    pub errno: i32,
}

/// The outcome of [`ProcessMemory::read_ranges`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadReport {
    /// Bytes read successfully.
    pub bytes_read: u64,
    /// The ranges that could not be read, in request order; adjacent failures with the
    /// same errno are merged. Their bytes in the buffer are zero.
    pub failed: Vec<FailedRange>,
}

impl ReadReport {
    /// Whether every byte was read.
    pub fn is_complete(&self) -> bool {
        self.failed.is_empty()
    }
}

/// Where [`ProcessMemory::read_ranges`] is: range index, offset inside that range, and
/// the matching offset in the local buffer.
#[derive(Debug, Default)]
struct Cursor {
    index: usize,
    offset: u64,
    buf_pos: usize,
}

/// Records the page at the cursor as unreadable, zeroes it in `buf` and moves past it.
/// The cursor is inside a non-empty range.
fn fail_page(
    ranges: &[RemoteRange],
    at: &mut Cursor,
    buf: &mut [u8],
    errno: i32,
    report: &mut ReadReport,
) {
    let range = ranges[at.index];
    let addr = range.addr.wrapping_add(at.offset);
    let to_page_end = PAGE_SIZE - addr % PAGE_SIZE;
    let len = to_page_end.min(range.len - at.offset);
    // `len` is at most the range's remaining length, which fits in `buf`.
    let len_usize = usize::try_from(len).unwrap_or(usize::MAX);
    buf[at.buf_pos..at.buf_pos + len_usize].fill(0);
    match report.failed.last_mut() {
        Some(last) if last.addr.wrapping_add(last.len) == addr && last.errno == errno => {
            last.len += len;
        }
        _ => report.failed.push(FailedRange { addr, len, errno }),
    }
    at.buf_pos += len_usize;
    at.offset += len;
    if at.offset == range.len {
        at.index += 1;
        at.offset = 0;
    }
}

/// Which way a /proc/PID/mem transfer goes.
#[derive(Debug, Clone, Copy)]
enum Direction {
    Read,
    Write,
}

/// Access to the memory of process `pid`.
#[derive(Debug)]
pub struct ProcessMemory {
    pid: i32,
    /// The thread whose address space is used: the leader, unless it is a zombie (a
    /// zombie leader has no mm, so /proc/PID/mem and process_vm_readv(PID) fail).
    via: i32,
    /// /proc/VIA/mem, opened on the first write.
    mem: OnceLock<File>,
}

impl ProcessMemory {
    /// Memory access to process `pid`. Nothing is opened yet.
    pub fn new(pid: i32) -> Self {
        Self::via_thread(pid, pid)
    }

    /// Memory access to process `pid` through its thread `tid` (any live thread shares
    /// the address space).
    pub fn via_thread(pid: i32, tid: i32) -> Self {
        Self {
            pid,
            via: tid,
            mem: OnceLock::new(),
        }
    }

    /// The process.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Reads `buf.len()` bytes at `addr`; fails if any byte cannot be read.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let range = RemoteRange {
            addr,
            len: buf.len() as u64,
        };
        let report = self.read_ranges(&[range], buf)?;
        match report.failed.first() {
            None => Ok(()),
            Some(f) => Err(MemoryError::Read {
                pid: self.pid,
                addr: f.addr,
                len: f.len,
                source: io::Error::from_raw_os_error(f.errno),
            }),
        }
    }

    /// Reads the remote `ranges`, in order, into `buf`, whose length must be the sum of
    /// the range lengths. Batches of up to [`IOV_MAX`] ranges go in one system call.
    /// Pages that cannot be read are reported in [`ReadReport::failed`] and left zero in
    /// `buf`; an error is returned only when the process is gone or may not be read.
    pub fn read_ranges(
        &self,
        ranges: &[RemoteRange],
        buf: &mut [u8],
    ) -> Result<ReadReport, MemoryError> {
        let total = ranges
            .iter()
            .try_fold(0u64, |acc, r| acc.checked_add(r.len))
            .unwrap_or(u64::MAX);
        if total != buf.len() as u64 {
            return Err(MemoryError::LengthMismatch {
                pid: self.pid,
                ranges_len: total,
                buf_len: buf.len(),
            });
        }
        let mut report = ReadReport::default();
        let mut at = Cursor::default();
        let mut iovs: Vec<RemoteIoVec> = Vec::with_capacity(IOV_MAX.min(ranges.len()));
        while at.index < ranges.len() {
            if at.offset == ranges[at.index].len {
                at.index += 1;
                at.offset = 0;
                continue;
            }
            // Build a batch from the cursor.
            iovs.clear();
            let mut batch_len = 0usize;
            for (i, range) in ranges[at.index..].iter().enumerate() {
                if iovs.len() == IOV_MAX {
                    break;
                }
                let skip = if i == 0 { at.offset } else { 0 };
                let len = usize::try_from(range.len - skip).unwrap_or(usize::MAX);
                if len == 0 {
                    continue;
                }
                let Some(addr) = range.addr.checked_add(skip) else {
                    break;
                };
                iovs.push(RemoteIoVec {
                    base: usize::try_from(addr).unwrap_or(usize::MAX),
                    len,
                });
                batch_len += len;
            }
            let local = &mut buf[at.buf_pos..at.buf_pos + batch_len];
            let result = process_vm_readv(
                Pid::from_raw(self.via),
                &mut [IoSliceMut::new(local)],
                &iovs,
            );
            let advanced = match result {
                Ok(n) if n > 0 => n as u64,
                Ok(_) => {
                    fail_page(ranges, &mut at, buf, libc::EFAULT, &mut report);
                    continue;
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::ESRCH) => {
                    return Err(MemoryError::ProcessGone { pid: self.pid });
                }
                Err(e @ nix::errno::Errno::EPERM) => {
                    return Err(MemoryError::NotPermitted {
                        pid: self.pid,
                        source: e.into(),
                    });
                }
                Err(
                    e @ (nix::errno::Errno::EFAULT
                    | nix::errno::Errno::EIO
                    | nix::errno::Errno::ENOMEM),
                ) => {
                    fail_page(ranges, &mut at, buf, e as i32, &mut report);
                    continue;
                }
                Err(e) => {
                    return Err(MemoryError::ReadV {
                        pid: self.pid,
                        source: e.into(),
                    });
                }
            };
            report.bytes_read += advanced;
            // Move the cursor over the bytes copied.
            let mut left = advanced;
            at.buf_pos += usize::try_from(advanced).unwrap_or(usize::MAX);
            while left > 0 && at.index < ranges.len() {
                let in_range = ranges[at.index].len - at.offset;
                if left >= in_range {
                    left -= in_range;
                    at.index += 1;
                    at.offset = 0;
                } else {
                    at.offset += left;
                    left = 0;
                }
            }
        }
        Ok(report)
    }

    /// Reads `buf.len()` bytes at `addr` through /proc/PID/mem, which reads like a debugger
    /// (`FOLL_FORCE`): unlike `process_vm_readv` it can read pages of mappings without
    /// read permission (`PROT_NONE`, execute-only), as long as the mapping could be made
    /// readable (`VM_MAYREAD`). Fails on unmapped pages and on `VM_IO`/`VM_PFNMAP`
    /// mappings.
    pub fn read_forced(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let mem = self.mem_file()?;
        self.transfer(addr, buf.len(), Direction::Read, |done, at| {
            mem.read_at(&mut buf[done..], at)
        })
    }

    /// Writes `bytes` at `addr` through /proc/PID/mem (read-only pages included).
    pub fn write(&self, addr: u64, bytes: &[u8]) -> Result<(), MemoryError> {
        let mem = self.mem_file()?;
        self.transfer(addr, bytes.len(), Direction::Write, |done, at| {
            mem.write_at(&bytes[done..], at)
        })
    }

    /// Repeats `op(done, addr + done)` (one `pread`/`pwrite` of /proc/PID/mem) until
    /// `len` bytes are transferred; a zero-length transfer (an unmapped page) or an error
    /// ends it, naming the first address that failed.
    fn transfer(
        &self,
        addr: u64,
        len: usize,
        direction: Direction,
        mut op: impl FnMut(usize, u64) -> io::Result<usize>,
    ) -> Result<(), MemoryError> {
        let mut done = 0usize;
        while done < len {
            let at = addr.wrapping_add(done as u64);
            match op(done, at) {
                Ok(0) => {
                    let eio = io::Error::from_raw_os_error(libc::EIO);
                    return Err(self.transfer_error(direction, at, len - done, eio));
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.transfer_error(direction, at, len - done, e)),
            }
        }
        Ok(())
    }

    fn transfer_error(
        &self,
        direction: Direction,
        addr: u64,
        len: usize,
        source: io::Error,
    ) -> MemoryError {
        let pid = self.pid;
        match (source.raw_os_error(), direction) {
            (Some(libc::ESRCH), _) => MemoryError::ProcessGone { pid },
            (_, Direction::Read) => MemoryError::Read {
                pid,
                addr,
                len: len as u64,
                source,
            },
            (_, Direction::Write) => MemoryError::Write {
                pid,
                addr,
                len,
                source,
            },
        }
    }

    fn mem_file(&self) -> Result<&File, MemoryError> {
        if let Some(file) = self.mem.get() {
            return Ok(file);
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{}/mem", self.via))
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => MemoryError::ProcessGone { pid: self.pid },
                io::ErrorKind::PermissionDenied => MemoryError::NotPermitted {
                    pid: self.pid,
                    source: e,
                },
                _ => MemoryError::OpenMem {
                    pid: self.pid,
                    source: e,
                },
            })?;
        Ok(self.mem.get_or_init(|| file))
    }
}
