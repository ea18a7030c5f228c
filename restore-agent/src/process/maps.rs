//! Reading the mappings of a process from `/proc/PID/maps` (the agent's own, to
//! compare its vdso with the captured one, and the helper's, to know what to
//! unmap). Only addresses and names are needed.

use std::io::{BufRead, BufReader, Read};

/// Most lines read from one maps file (`vm.max_map_count` is 65 530 by default).
pub const MAX_MAPS_LINES: usize = 1 << 18;

/// Longest maps line accepted (a path of `PATH_MAX` plus the fixed fields).
const MAX_LINE: u64 = 8192;

/// One mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MapsEntry {
    pub(crate) start: u64,
    pub(crate) end: u64,
    /// The name column (`[vdso]`, a path, empty).
    pub(crate) name: Vec<u8>,
}

/// Parses one line: `START-END PERMS OFFSET DEV INODE [NAME]`.
fn parse_line(line: &[u8]) -> Option<MapsEntry> {
    let text = std::str::from_utf8(line.get(..line.iter().position(|&b| b == b' ')?)?).ok()?;
    let (start, end) = text.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    if end <= start {
        return None;
    }
    // The name starts after the fifth field; fields are separated by runs of spaces.
    let mut rest = line;
    for field in 0..5 {
        // The fifth field (inode) ends the line when there is no name.
        let field_end = match rest.iter().position(|&b| b == b' ') {
            Some(at) => at,
            None if field == 4 && !rest.is_empty() => rest.len(),
            None => return None,
        };
        rest = &rest[field_end..];
        let skip = rest.iter().position(|&b| b != b' ').unwrap_or(rest.len());
        rest = &rest[skip..];
    }
    Some(MapsEntry {
        start,
        end,
        name: rest.to_vec(),
    })
}

/// Reads `/proc/PID/maps` (pid 0: this process).
pub(crate) fn read_maps(pid: i32) -> std::io::Result<Vec<MapsEntry>> {
    let path = if pid == 0 {
        "/proc/self/maps".to_owned()
    } else {
        format!("/proc/{pid}/maps")
    };
    parse(std::fs::File::open(path)?)
}

fn parse(source: impl Read) -> std::io::Result<Vec<MapsEntry>> {
    let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut reader = BufReader::new(source);
    let mut out = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut reader).take(MAX_LINE).read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(out);
        }
        if line.last() != Some(&b'\n') && n as u64 == MAX_LINE {
            return Err(invalid(format!("a maps line longer than {MAX_LINE} bytes")));
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        if out.len() == MAX_MAPS_LINES {
            return Err(invalid(format!("more than {MAX_MAPS_LINES} mappings")));
        }
        let entry = parse_line(&line).ok_or_else(|| {
            invalid(format!(
                "bad maps line {:?}",
                String::from_utf8_lossy(&line)
            ))
        })?;
        out.push(entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_with_spaces_and_anonymous_lines() {
        let text =
            b"7f9a57d1a000-7f9a57d1e000 r--p 00000000 00:00 0                          [vvar]\n\
55d0c0a00000-55d0c0a21000 rw-p 00000000 00:00 0\n\
7f00-8f00 r-xp 00001000 08:01 1234                       /tmp/a b (deleted)\n";
        let maps = parse(&text[..]).expect("parse");
        assert_eq!(maps.len(), 3);
        assert_eq!(maps[0].start, 0x7f9a57d1a000);
        assert_eq!(maps[0].name, b"[vvar]");
        assert_eq!(maps[1].name, b"");
        assert_eq!(maps[2].name, b"/tmp/a b (deleted)");
        assert!(parse(&b"zz-10 r--p 0 0:0 0\n"[..]).is_err());
        assert!(parse(&b"20-10 r--p 0 0:0 0\n"[..]).is_err());
    }

    #[test]
    fn reads_our_own_vdso() {
        let maps = read_maps(0).expect("own maps");
        assert!(maps.iter().any(|m| m.name == b"[vdso]"));
    }
}
