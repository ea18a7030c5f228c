//! Parsing and printing sizes and address ranges.
//!
//! Sizes on the command line are binary: `64K` and `64KiB` are 65 536 bytes
//! (a chunk size of "64K" meaning 64 000 would never be a page multiple).
//! Numbers may be decimal or `0x` hexadecimal.

use bytesize::ByteSize;

/// Parses `4096`, `0x1000`, `64K`, `64KiB`, `2M`, `1G`, `1T` (binary units).
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    if let Some(hex) = lower.strip_prefix("0x") {
        return u64::from_str_radix(hex, 16).map_err(|e| format!("bad hex number {t:?}: {e}"));
    }
    let digits_end = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (num, unit) = lower.split_at(digits_end);
    let n: u64 = num.parse().map_err(|_| format!("bad size {t:?}"))?;
    let shift = match unit.trim() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {t:?} (use K, M, G or T)"
            ));
        }
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size {t:?} is too large"))
}

/// An address range given as `START:LEN` (both sizes as in [`parse_size`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Range {
    pub(crate) start: u64,
    pub(crate) len: u64,
}

impl Range {
    pub(crate) fn end(&self) -> u64 {
        self.start.saturating_add(self.len)
    }
}

/// Parses `START:LEN`.
pub(crate) fn parse_range(s: &str) -> Result<Range, String> {
    let (a, b) = s
        .split_once(':')
        .ok_or_else(|| format!("expected START:LEN, got {s:?}"))?;
    let r = Range {
        start: parse_size(a)?,
        len: parse_size(b)?,
    };
    if r.len == 0 {
        return Err(format!("range {s:?} is empty"));
    }
    if r.start.checked_add(r.len).is_none() {
        return Err(format!("range {s:?} overflows"));
    }
    Ok(r)
}

/// `n` bytes in binary units (`1.5 GiB`).
pub(crate) fn human(n: u64) -> String {
    ByteSize(n).display().iec().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("0x1000"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("2m"), Ok(2 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn ranges() {
        assert_eq!(
            parse_range("0x1000:8K"),
            Ok(Range {
                start: 4096,
                len: 8192
            })
        );
        assert!(parse_range("4096").is_err());
        assert!(parse_range("0:0").is_err());
        assert!(parse_range("0xffffffffffffffff:2").is_err());
    }
}
