//! A small parser for `/proc/PID/smaps`: each mapping's range, permissions, backing
//! file, resident and swapped sizes, and kernel flags.
//!
//! ```text
//! 7f3c2a400000-7f3c2a600000 rw-p 00000000 00:00 0            [anon:buf]   <- header
//! Size:               2048 kB                                              <- fields
//! Rss:                 512 kB
//! Swap:                  0 kB
//! VmFlags: rd wr mr mw me ac sd nh
//! ```
//!
//! The header is `start-end perms offset major:minor inode`, then (after padding
//! spaces) the name: a path (the kernel escapes a newline in it as `\012`, so lines are
//! unambiguous), `[heap]`, `[stack]`, `[vdso]`, `[anon:NAME]`, ... or nothing. Field
//! lines start with an upper-case letter, headers with a lower-case hex digit.
//!
//! Why not the `procfs` crate: its map parser slices names beginning with `/SYSV` at
//! fixed offsets and panics on a file named, say, `/SYSVx`; /proc contents are
//! untrusted input here. This parser never panics and bounds what it reads: at most
//! [`MAX_VMAS`] mappings and [`MAX_LINE`] bytes per line.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

/// Most mappings a process may have for us to capture it (`vm.max_map_count` is 65 530
/// by default); the image format's own bound.
pub const MAX_VMAS: usize = snapshot_format::limits::MAX_REGIONS;

/// Longest smaps line accepted: a header with a `PATH_MAX` path, escaped, fits.
pub const MAX_LINE: usize = 16 * 1024;

/// One mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Vma {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) read: bool,
    pub(crate) write: bool,
    pub(crate) exec: bool,
    /// `s` (`MAP_SHARED`) rather than `p`.
    pub(crate) shared: bool,
    /// File offset (for anonymous private mappings, the kernel shows `start >> 12`).
    pub(crate) offset: u64,
    pub(crate) dev: (u32, u32),
    pub(crate) inode: u64,
    /// The name column, raw (empty for plain anonymous memory).
    pub(crate) name: Vec<u8>,
    /// `Rss:` in bytes.
    pub(crate) rss: u64,
    /// `Swap:` in bytes.
    pub(crate) swap: u64,
    /// The `VmFlags:` codes.
    pub(crate) vm_flags: Vec<String>,
}

impl Vma {
    pub(crate) fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether any page of the mapping may be in memory or swapped: `Rss` or `Swap` is
    /// not zero. Hugetlb pages count in neither (smaps reports them as `*_Hugetlb`), so a
    /// hugetlb mapping always may.
    pub(crate) fn may_hold_pages(&self) -> bool {
        self.rss > 0 || self.swap > 0 || self.has_flag("ht")
    }

    /// Whether `VmFlags` has code `flag`.
    pub(crate) fn has_flag(&self, flag: &str) -> bool {
        self.vm_flags.iter().any(|f| f == flag)
    }

    /// The name as text (lossy), for messages and region names.
    pub(crate) fn name_lossy(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }
}

/// Why smaps could not be parsed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SmapsError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("line {line}: {reason}")]
    Malformed { line: usize, reason: String },
    #[error("more than {MAX_VMAS} mappings")]
    TooMany,
}

/// Reads and parses the smaps file at `path`.
pub(crate) fn read(path: &Path) -> Result<Vec<Vma>, SmapsError> {
    parse(BufReader::with_capacity(256 * 1024, File::open(path)?))
}

/// Parses smaps text.
pub(crate) fn parse(mut reader: impl BufRead) -> Result<Vec<Vma>, SmapsError> {
    let mut vmas: Vec<Vma> = Vec::new();
    let mut line = Vec::with_capacity(256);
    let mut number = 0usize;
    loop {
        line.clear();
        let n = reader
            .by_ref()
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        number += 1;
        let malformed = |reason: &str| SmapsError::Malformed {
            line: number,
            reason: reason.to_owned(),
        };
        if line.last() == Some(&b'\n') {
            line.pop();
        } else if n > MAX_LINE {
            return Err(malformed("line too long"));
        }
        match line.first() {
            Some(b'0'..=b'9' | b'a'..=b'f') => {
                if vmas.len() >= MAX_VMAS {
                    return Err(SmapsError::TooMany);
                }
                let vma = parse_header(&line).map_err(malformed)?;
                if let Some(prev) = vmas.last()
                    && vma.start < prev.end
                {
                    return Err(malformed("mappings overlap or are out of order"));
                }
                vmas.push(vma);
            }
            Some(b'A'..=b'Z') => {
                let Some(vma) = vmas.last_mut() else {
                    return Err(malformed("a field before the first mapping"));
                };
                parse_field(vma, &line).map_err(malformed)?;
            }
            _ if line.is_empty() => {}
            _ => return Err(malformed("neither a mapping nor a field")),
        }
    }
    Ok(vmas)
}

/// Splits off the text up to the next space.
fn token<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
    let (tok, tail) = rest.split_at(end);
    *rest = tail.strip_prefix(b" ").unwrap_or(tail);
    (!tok.is_empty()).then_some(tok)
}

fn hex(tok: &[u8]) -> Option<u64> {
    u64::from_str_radix(std::str::from_utf8(tok).ok()?, 16).ok()
}

fn parse_header(line: &[u8]) -> Result<Vma, &'static str> {
    let mut rest = line;
    let range = token(&mut rest).ok_or("no address range")?;
    let dash = range
        .iter()
        .position(|&b| b == b'-')
        .ok_or("address range without '-'")?;
    let start = hex(&range[..dash]).ok_or("bad start address")?;
    let end = hex(&range[dash + 1..]).ok_or("bad end address")?;
    if start >= end || start % 4096 != 0 || end % 4096 != 0 {
        return Err("empty or unaligned address range");
    }
    let perms = token(&mut rest).ok_or("no permissions")?;
    let [r, w, x, s] = perms else {
        return Err("permissions are not 4 characters");
    };
    let flag = |c: u8, on: u8| match c {
        b'-' => Ok(false),
        c if c == on => Ok(true),
        _ => Err("unknown permission character"),
    };
    let shared = match s {
        b's' => true,
        b'p' => false,
        _ => return Err("sharing is neither 's' nor 'p'"),
    };
    let offset = hex(token(&mut rest).ok_or("no offset")?).ok_or("bad offset")?;
    let dev = token(&mut rest).ok_or("no device")?;
    let colon = dev
        .iter()
        .position(|&b| b == b':')
        .ok_or("device without ':'")?;
    let major = hex(&dev[..colon]).ok_or("bad device major")?;
    let minor = hex(&dev[colon + 1..]).ok_or("bad device minor")?;
    let inode = std::str::from_utf8(token(&mut rest).ok_or("no inode")?)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or("bad inode")?;
    // The name follows the padding.
    let skip = rest.iter().position(|&b| b != b' ').unwrap_or(rest.len());
    Ok(Vma {
        start,
        end,
        read: flag(*r, b'r')?,
        write: flag(*w, b'w')?,
        exec: flag(*x, b'x')?,
        shared,
        offset,
        dev: (
            u32::try_from(major).map_err(|_| "device major too large")?,
            u32::try_from(minor).map_err(|_| "device minor too large")?,
        ),
        inode,
        name: rest[skip..].to_vec(),
        rss: 0,
        swap: 0,
        vm_flags: Vec::new(),
    })
}

/// Most `VmFlags` codes kept per mapping (the kernel has about 40).
const MAX_VM_FLAGS: usize = 64;

fn parse_field(vma: &mut Vma, line: &[u8]) -> Result<(), &'static str> {
    let text = std::str::from_utf8(line).map_err(|_| "field is not UTF-8")?;
    let (key, value) = text.split_once(':').ok_or("field without ':'")?;
    match key {
        "VmFlags" => {
            vma.vm_flags = value
                .split_ascii_whitespace()
                .take(MAX_VM_FLAGS)
                .map(str::to_owned)
                .collect();
        }
        "Rss" | "Swap" => {
            let kib = value
                .trim()
                .strip_suffix("kB")
                .ok_or("size without kB")?
                .trim()
                .parse::<u64>()
                .map_err(|_| "bad size")?;
            let bytes = kib.checked_mul(1024).ok_or("size overflows")?;
            if key == "Rss" {
                vma.rss = bytes;
            } else {
                vma.swap = bytes;
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
55d0c0a00000-55d0c0a21000 r--p 00000000 fe:01 1311                       /usr/bin/counter
Size:                132 kB
Rss:                 128 kB
Swap:                  0 kB
VmFlags: rd mr mw me dw sd
7f0000000000-7f0000100000 rw-s 00000000 00:01 2055                       /memfd:fixtures filemap (deleted)
Rss:                   8 kB
Swap:                  4 kB
VmFlags: rd wr sh mr mw me ms sd
7ffd3c9f0000-7ffd3ca11000 rw-p 00000000 00:00 0                          [stack]
VmFlags: rd wr mr mw me gd ac
7ffd3cbee000-7ffd3cbf0000 r-xp 00000000 00:00 0 
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
";

    #[test]
    fn parses_headers_names_and_fields() {
        let vmas = parse(SAMPLE.as_bytes()).unwrap();
        assert_eq!(vmas.len(), 5);
        let exe = &vmas[0];
        assert_eq!((exe.start, exe.end), (0x55d0c0a00000, 0x55d0c0a21000));
        assert!(exe.read && !exe.write && !exe.exec && !exe.shared);
        assert_eq!(exe.dev, (0xfe, 1));
        assert_eq!(exe.inode, 1311);
        assert_eq!(exe.name, b"/usr/bin/counter");
        assert_eq!(exe.rss, 128 * 1024);
        assert!(exe.has_flag("dw") && !exe.has_flag("wr"));
        let memfd = &vmas[1];
        assert!(memfd.shared);
        assert_eq!(memfd.name, b"/memfd:fixtures filemap (deleted)");
        assert_eq!(memfd.swap, 4096);
        assert!(vmas[2].has_flag("gd"));
        assert_eq!(vmas[2].name, b"[stack]");
        assert!(vmas[3].name.is_empty() && vmas[3].exec);
        assert_eq!(vmas[4].name, b"[vsyscall]");
        assert!(!vmas[4].read && vmas[4].exec);
    }

    #[test]
    fn hostile_text_is_an_error_not_a_panic() {
        let bad = [
            "zz-1000 rw-p 0 00:00 0\n",
            "1000-0 rw-p 0 00:00 0\n",
            "1000-2000 rw 0 00:00 0\n",
            "1000-2000 rwxq 0 00:00 0\n",
            "1000-2000 rw-p 0 0000 0\n",
            "1000-2000 rw-p 0 00:00 x\n",
            "Rss: 4 kB\n",
            "1000-2000 rw-p 0 00:00 0\nRss: 4\n",
            "1000-2000 rw-p 0 00:00 0\nRss: 99999999999999999999 kB\n",
            "3000-4000 rw-p 0 00:00 0\n1000-2000 rw-p 0 00:00 0\n",
            "1000-2000 rw-p 0 00:00 0 /SYSVx\n~\n",
        ];
        for text in bad {
            assert!(parse(text.as_bytes()).is_err(), "{text:?} was accepted");
        }
        let long = format!("1000-2000 rw-p 0 00:00 0 /{}\n", "a".repeat(MAX_LINE));
        assert!(parse(long.as_bytes()).is_err());
        // A file literally named /SYSVx is just a path.
        let ok = parse("1000-2000 rw-p 0 00:00 7 /SYSVx\n".as_bytes()).unwrap();
        assert_eq!(ok[0].name, b"/SYSVx");
    }
}
