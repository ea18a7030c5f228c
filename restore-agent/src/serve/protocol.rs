//! The handshake a VMM sends to its page-fault handler (the Firecracker
//! wire format, versions 1.7 to 1.17): recognising the end of the message,
//! parsing it and checking it. Pure: no system calls.
//!
//! # Wire format
//!
//! ```text
//!  VMM                                            handler (listening)
//!  ───                                            ───────────────────
//!  connect ─────────────────────────────────────► accept
//!  sendmsg (one call):
//!    data:      [{"base_host_virt_addr":140346579222528,"size":268435456,
//!                 "offset":0,"page_size":4096,"page_size_kib":4096}, ...]
//!    ancillary: SCM_RIGHTS [userfaultfd]
//!  ... never sends anything more, never closes the socket
//!      (it closes when the VMM process exits)
//! ```
//!
//! - Compact JSON, no length prefix, no newline: the message ends where the
//!   top-level array closes. The handler cannot wait for EOF (it never
//!   comes) and a stream socket may deliver the message in several pieces
//!   (a VMM with many regions, or a small receive buffer), so
//!   [`HandshakeScanner`] finds the end incrementally, in one pass over the
//!   bytes however they are split: it tracks the bracket depth outside
//!   strings (and escapes inside them) and reports the length of the array
//!   once its depth returns to zero. Only then is the message parsed.
//! - Each object is one guest memory region: `size` bytes mapped at
//!   `base_host_virt_addr` in the VMM, whose contents are at `offset` in the
//!   guest memory file (the regions concatenated; a sparse file's holes are
//!   zero pages). An image made by `lazarus capture --from-file` holds that
//!   file at image address = file offset, so a fault at `addr` is served
//!   from image address `offset + (addr - base_host_virt_addr)`.
//! - `page_size` (bytes) is 4096, or 2 MiB for guest memory on hugetlbfs.
//!   Older VMMs send only the first three fields (4096 then);
//!   `page_size_kib` is a legacy field that, despite its name, holds bytes
//!   too. When both are present they must agree.
//! - Unknown fields are ignored (a later VMM may add some).
//!
//! # Hostile input
//!
//! Anything may connect to the socket (it is 0600, so anything running as
//! the handler's user). The scanner refuses a message that does not start
//! with `[`, that nests deeper than [`MAX_NESTING`] or that grows past
//! [`MAX_HANDSHAKE_BYTES`] before it is complete; parsing refuses more than
//! [`MAX_REGIONS`] regions, then every region is checked
//! ([`validate`]): page size, alignment of address, size and offset to it,
//! no empty region, no overflow, no overlap (in the VMM nor in the file).
//! Whether the file ranges lie inside the image is checked when the
//! regions are added to the fault server.
//!
//! The scanner and the parser are fuzzed together (`fuzz_handshake`, the
//! `serve_handshake` target in `fuzz/`); the committed corpus is replayed by
//! `tests/fuzz_corpus.rs`.

use serde::{Deserialize, Serialize};

use crate::mapping::Mapping;
use crate::mem::HUGE_PAGE_2M;

/// The longest handshake accepted: a region is under 150 bytes of JSON, so
/// this holds [`MAX_REGIONS`] with room to spare.
pub const MAX_HANDSHAKE_BYTES: usize = 256 * 1024;

/// The most guest memory regions one VMM may describe (Firecracker sends one
/// or two; memory hotplug adds a few).
pub const MAX_REGIONS: usize = 1024;

/// The deepest bracket nesting accepted (a valid handshake has depth 2:
/// the array and its objects; unknown fields may add some).
pub const MAX_NESTING: u32 = 16;

/// The base page size of guest memory.
pub const BASE_PAGE_SIZE: u64 = 4096;

/// What [`HandshakeScanner::feed`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// The array is not closed yet: more bytes are needed.
    Incomplete,
    /// The array is complete; it is the first `len` bytes.
    Complete {
        /// Its length in bytes (leading whitespace included).
        len: usize,
    },
}

/// Finds the end of the handshake's JSON array in a byte stream that
/// arrives in pieces (see the [module documentation](self)). Each byte is
/// looked at once.
#[derive(Debug, Clone, Default)]
pub struct HandshakeScanner {
    /// Bytes scanned so far.
    scanned: usize,
    /// Current bracket depth (0 before the array opens).
    depth: u32,
    /// Inside a JSON string.
    in_string: bool,
    /// The previous byte was a backslash inside a string.
    escaped: bool,
}

impl HandshakeScanner {
    /// A scanner at the start of a message.
    pub fn new() -> Self {
        Self::default()
    }

    /// Scans the bytes of `buf` not scanned yet (`buf` is everything
    /// received so far, in order: the bytes already scanned must not have
    /// changed).
    pub fn feed(&mut self, buf: &[u8]) -> Result<Scan, ProtocolError> {
        let start = self.scanned.min(buf.len());
        // Never past the limit, whatever the caller buffered: a message
        // that is not complete within it is refused below.
        let limited = &buf[..buf.len().min(MAX_HANDSHAKE_BYTES)];
        for (i, &b) in limited.iter().enumerate().skip(start) {
            self.scanned = i + 1;
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            if self.depth == 0 {
                // Before the array: only whitespace may precede it.
                match b {
                    b'[' => self.depth = 1,
                    b' ' | b'\t' | b'\n' | b'\r' => {}
                    _ => return Err(ProtocolError::NotAnArray { found: b }),
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'[' | b'{' => {
                    self.depth += 1;
                    if self.depth > MAX_NESTING {
                        return Err(ProtocolError::TooDeep { limit: MAX_NESTING });
                    }
                }
                b']' | b'}' => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        return Ok(Scan::Complete { len: i + 1 });
                    }
                }
                _ => {}
            }
        }
        if buf.len() >= MAX_HANDSHAKE_BYTES {
            return Err(ProtocolError::TooLarge {
                limit: MAX_HANDSHAKE_BYTES,
            });
        }
        Ok(Scan::Incomplete)
    }
}

/// One guest memory region of a handshake, its page size resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GuestRegion {
    /// Where the region is mapped in the VMM.
    pub base_host_virt_addr: u64,
    /// Its length in bytes.
    pub size: u64,
    /// Where its contents are in the guest memory file (= image address).
    pub offset: u64,
    /// Its page size in bytes: 4096, or 2 MiB (hugetlbfs).
    pub page_size: u64,
}

impl GuestRegion {
    /// The fault-server mapping that serves it: host range at
    /// `base_host_virt_addr`, image range at `offset`.
    pub fn mapping(&self) -> Mapping {
        Mapping::new(self.base_host_virt_addr, self.offset, self.size)
            .with_page_size(self.page_size)
    }
}

/// A region as it is on the wire.
#[derive(Debug, Deserialize)]
struct WireRegion {
    base_host_virt_addr: u64,
    size: u64,
    offset: u64,
    #[serde(default)]
    page_size: Option<u64>,
    #[serde(default)]
    page_size_kib: Option<u64>,
}

/// A handshake that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The first byte that is not whitespace is not `[`.
    #[error("the handshake is not a JSON array (it starts with byte {found:#04x})")]
    NotAnArray {
        /// That byte.
        found: u8,
    },
    /// The message grew past the limit before the array was complete.
    #[error("the handshake is longer than {limit} bytes")]
    TooLarge {
        /// [`MAX_HANDSHAKE_BYTES`].
        limit: usize,
    },
    /// Brackets nest deeper than the limit.
    #[error("the handshake nests deeper than {limit} levels")]
    TooDeep {
        /// [`MAX_NESTING`].
        limit: u32,
    },
    /// Bytes other than whitespace follow the array.
    #[error("{count} unexpected bytes follow the handshake")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
    /// Not the expected JSON (a field missing or of the wrong type, a
    /// number out of range, malformed JSON).
    #[error("malformed handshake: {0}")]
    Json(#[source] serde_json::Error),
    /// An empty array.
    #[error("the handshake describes no memory region")]
    NoRegions,
    /// More regions than the limit.
    #[error("the handshake describes {count} regions, more than the limit of {limit}")]
    TooManyRegions {
        /// Regions described.
        count: usize,
        /// [`MAX_REGIONS`].
        limit: usize,
    },
    /// A page size other than 4096 or 2 MiB.
    #[error("region {index}: unsupported page size {page_size} (4096 or 2097152)")]
    PageSize {
        /// The region's index.
        index: usize,
        /// The page size given.
        page_size: u64,
    },
    /// `page_size` and `page_size_kib` disagree.
    #[error("region {index}: page_size {page_size} and page_size_kib {page_size_kib} disagree")]
    InconsistentPageSize {
        /// The region's index.
        index: usize,
        /// `page_size`.
        page_size: u64,
        /// `page_size_kib` (which holds bytes).
        page_size_kib: u64,
    },
    /// A zero size.
    #[error("region {index} is empty")]
    Empty {
        /// The region's index.
        index: usize,
    },
    /// Address, size or offset not a multiple of the page size.
    #[error("region {index}: {field} {value:#x} is not a multiple of its page size {page_size}")]
    Misaligned {
        /// The region's index.
        index: usize,
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// The region's page size.
        page_size: u64,
    },
    /// `base + size` or `offset + size` overflows.
    #[error("region {index}: address or offset plus size overflows")]
    Overflow {
        /// The region's index.
        index: usize,
    },
    /// Two regions overlap in the VMM's address space.
    #[error("regions {first} and {second} overlap in the VMM's memory")]
    Overlap {
        /// One region's index.
        first: usize,
        /// The other's.
        second: usize,
    },
    /// Two regions take their contents from overlapping ranges of the file.
    #[error("regions {first} and {second} overlap in the memory file")]
    FileOverlap {
        /// One region's index.
        first: usize,
        /// The other's.
        second: usize,
    },
}

/// Parses a complete handshake (the bytes [`HandshakeScanner`] delimited,
/// plus whatever followed them in the same reads) and checks its regions
/// ([`validate`]).
pub fn parse(message: &[u8], len: usize) -> Result<Vec<GuestRegion>, ProtocolError> {
    let (array, rest) = message.split_at(len.min(message.len()));
    let trailing = rest.iter().filter(|b| !b.is_ascii_whitespace()).count();
    if trailing > 0 {
        return Err(ProtocolError::TrailingBytes { count: trailing });
    }
    // The message is at most MAX_HANDSHAKE_BYTES, which bounds what serde
    // allocates here (a few thousand regions at most).
    let wire: Vec<WireRegion> = serde_json::from_slice(array).map_err(ProtocolError::Json)?;
    if wire.len() > MAX_REGIONS {
        return Err(ProtocolError::TooManyRegions {
            count: wire.len(),
            limit: MAX_REGIONS,
        });
    }
    let regions = wire
        .iter()
        .enumerate()
        .map(|(index, w)| {
            let page_size = match (w.page_size, w.page_size_kib) {
                (Some(p), Some(k)) if p != k => {
                    return Err(ProtocolError::InconsistentPageSize {
                        index,
                        page_size: p,
                        page_size_kib: k,
                    });
                }
                (Some(p), _) | (None, Some(p)) => p,
                (None, None) => BASE_PAGE_SIZE,
            };
            Ok(GuestRegion {
                base_host_virt_addr: w.base_host_virt_addr,
                size: w.size,
                offset: w.offset,
                page_size,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    validate(&regions)?;
    Ok(regions)
}

/// Checks regions on their own (see the [module documentation](self)).
pub fn validate(regions: &[GuestRegion]) -> Result<(), ProtocolError> {
    if regions.is_empty() {
        return Err(ProtocolError::NoRegions);
    }
    if regions.len() > MAX_REGIONS {
        return Err(ProtocolError::TooManyRegions {
            count: regions.len(),
            limit: MAX_REGIONS,
        });
    }
    for (index, r) in regions.iter().enumerate() {
        let page_size = r.page_size;
        if page_size != BASE_PAGE_SIZE && page_size != HUGE_PAGE_2M {
            return Err(ProtocolError::PageSize { index, page_size });
        }
        if r.size == 0 {
            return Err(ProtocolError::Empty { index });
        }
        for (field, value) in [
            ("base_host_virt_addr", r.base_host_virt_addr),
            ("size", r.size),
            ("offset", r.offset),
        ] {
            if value % page_size != 0 {
                return Err(ProtocolError::Misaligned {
                    index,
                    field,
                    value,
                    page_size,
                });
            }
        }
        if r.base_host_virt_addr.checked_add(r.size).is_none()
            || r.offset.checked_add(r.size).is_none()
        {
            return Err(ProtocolError::Overflow { index });
        }
    }
    // Overlaps: sort indices by start, compare neighbours (no overflow:
    // checked above).
    let mut order: Vec<usize> = (0..regions.len()).collect();
    let mut check = |start: fn(&GuestRegion) -> u64, file: bool| {
        order.sort_by_key(|&i| start(&regions[i]));
        for pair in order.windows(2) {
            let (a, b) = (&regions[pair[0]], &regions[pair[1]]);
            if start(a) + a.size > start(b) {
                let (first, second) = (pair[0].min(pair[1]), pair[0].max(pair[1]));
                return Err(if file {
                    ProtocolError::FileOverlap { first, second }
                } else {
                    ProtocolError::Overlap { first, second }
                });
            }
        }
        Ok(())
    };
    check(|r| r.base_host_virt_addr, false)?;
    check(|r| r.offset, true)?;
    Ok(())
}

/// The body of the `serve_handshake` fuzz target (`fuzz/`), shared with the
/// corpus replay test (`tests/fuzz_corpus.rs`); not part of the API.
///
/// ```text
/// byte 0     split seed: the bytes arrive in pieces of (seed + 1) bytes,
///            or all at once when the seed is 0xff
/// bytes 1..  what the client sends
/// ```
///
/// It drives the scanner and the parser as a connection does (the whole
/// buffer received so far given to [`HandshakeScanner::feed`] after each
/// piece, then [`parse`] of that buffer) and panics when a promise is
/// broken:
///
/// - no panic, whatever the bytes;
/// - the split never changes the scanner's answer (compared with feeding
///   everything at once), and a complete array ends inside the buffer;
/// - parsed regions are what [`validate`] accepts, checked again here
///   independently: 1 to [`MAX_REGIONS`] regions, page size 4 KiB or 2 MiB,
///   non-empty, aligned, no overflow, no two overlapping (pairwise), in the
///   VMM's memory nor in the file;
/// - the regions, written back as a handshake, parse to the same regions.
#[doc(hidden)]
pub fn fuzz_handshake(data: &[u8]) {
    let Some((&seed, bytes)) = data.split_first() else {
        return;
    };
    let step = if seed == u8::MAX {
        bytes.len()
    } else {
        usize::from(seed) + 1
    };
    let (scan, received) = scan_in_pieces(bytes, step);
    let (whole, _) = scan_in_pieces(bytes, bytes.len());
    assert_eq!(
        format!("{scan:?}"),
        format!("{whole:?}"),
        "pieces of {step} bytes changed the scanner's answer"
    );
    let Ok(Scan::Complete { len }) = scan else {
        return;
    };
    assert!(
        len <= received.len() && len <= MAX_HANDSHAKE_BYTES,
        "the array ends at {len}, past the {} bytes received or the limit",
        received.len()
    );
    let Ok(regions) = parse(received, len) else {
        return;
    };
    check_regions(&regions);
    let again = serde_json::to_vec(&regions).expect("regions serialize");
    let (rescan, _) = scan_in_pieces(&again, again.len());
    let reparsed = match rescan {
        Ok(Scan::Complete { len }) => parse(&again, len),
        other => panic!("the regions written back scan as {other:?}"),
    };
    assert_eq!(
        reparsed.ok().as_ref(),
        Some(&regions),
        "the regions written back parse differently"
    );
}

/// Feeds `bytes` to a new scanner `step` bytes at a time, as a connection
/// receives them (at least one byte at a time), until it answers other than
/// `Incomplete` or the bytes run out; returns its last answer and the bytes
/// received by then.
fn scan_in_pieces(bytes: &[u8], step: usize) -> (Result<Scan, ProtocolError>, &[u8]) {
    let step = step.max(1);
    let mut scanner = HandshakeScanner::new();
    let mut end = 0;
    loop {
        end = (end + step).min(bytes.len());
        let r = scanner.feed(&bytes[..end]);
        if end == bytes.len() || !matches!(r, Ok(Scan::Incomplete)) {
            return (r, &bytes[..end]);
        }
    }
}

/// The checks [`validate`] promises, done the naive way (every pair).
fn check_regions(regions: &[GuestRegion]) {
    assert!(
        !regions.is_empty() && regions.len() <= MAX_REGIONS,
        "{} regions accepted",
        regions.len()
    );
    for r in regions {
        let p = r.page_size;
        assert!(p == BASE_PAGE_SIZE || p == HUGE_PAGE_2M, "{r:?} accepted");
        assert!(r.size > 0, "{r:?} accepted");
        assert!(
            r.base_host_virt_addr % p == 0 && r.size % p == 0 && r.offset % p == 0,
            "{r:?} accepted"
        );
        assert!(
            r.base_host_virt_addr.checked_add(r.size).is_some()
                && r.offset.checked_add(r.size).is_some(),
            "{r:?} accepted"
        );
    }
    let overlap = |a: u64, b: u64, size_a: u64, size_b: u64| a < b + size_b && b < a + size_a;
    for (i, a) in regions.iter().enumerate() {
        for b in &regions[i + 1..] {
            assert!(
                !overlap(a.base_host_virt_addr, b.base_host_virt_addr, a.size, b.size),
                "overlapping regions accepted: {a:?} {b:?}"
            );
            assert!(
                !overlap(a.offset, b.offset, a.size, b.size),
                "regions overlapping in the file accepted: {a:?} {b:?}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRECRACKER: &[u8] = br#"[{"base_host_virt_addr":140346579222528,"size":268435456,"offset":0,"page_size":4096,"page_size_kib":4096}]"#;

    #[test]
    fn firecracker_message_in_any_split() {
        for step in [1, 2, 7, 64, FIRECRACKER.len()] {
            assert_eq!(
                scan_in_pieces(FIRECRACKER, step).0.expect("scan"),
                Scan::Complete {
                    len: FIRECRACKER.len()
                }
            );
        }
        let regions = parse(FIRECRACKER, FIRECRACKER.len()).expect("parse");
        assert_eq!(
            regions,
            vec![GuestRegion {
                base_host_virt_addr: 140_346_579_222_528,
                size: 268_435_456,
                offset: 0,
                page_size: 4096
            }]
        );
    }

    #[test]
    fn brackets_inside_strings_do_not_count() {
        let msg =
            br#" [{"base_host_virt_addr":4096,"size":4096,"offset":0,"x":"]}\"]["}] trailing"#;
        let Scan::Complete { len } = scan_in_pieces(msg, 3).0.expect("scan") else {
            panic!("incomplete");
        };
        assert_eq!(&msg[len..], b" trailing");
        assert!(matches!(
            parse(msg, len),
            Err(ProtocolError::TrailingBytes { count: 8 })
        ));
        let clean = &msg[..len];
        assert_eq!(parse(clean, len).expect("parse")[0].page_size, 4096);
    }

    #[test]
    fn legacy_handshakes() {
        let old = br#"[{"base_host_virt_addr":8192,"size":8192,"offset":4096}]"#;
        assert_eq!(parse(old, old.len()).expect("old")[0].page_size, 4096);
        let kib = br#"[{"base_host_virt_addr":2097152,"size":2097152,"offset":0,"page_size_kib":2097152}]"#;
        assert_eq!(
            parse(kib, kib.len()).expect("kib")[0].page_size,
            HUGE_PAGE_2M
        );
    }

    #[test]
    fn scanner_refusals() {
        let mut s = HandshakeScanner::new();
        assert!(matches!(
            s.feed(b"  {\"a\":1}"),
            Err(ProtocolError::NotAnArray { found: b'{' })
        ));
        let deep = vec![b'['; MAX_NESTING as usize + 1];
        assert!(matches!(
            HandshakeScanner::new().feed(&deep),
            Err(ProtocolError::TooDeep { .. })
        ));
        let mut big = b"[\"".to_vec();
        big.resize(MAX_HANDSHAKE_BYTES, b'a');
        assert!(matches!(
            HandshakeScanner::new().feed(&big),
            Err(ProtocolError::TooLarge { .. })
        ));
        // Complete only past the limit, all in one buffer: still too large.
        let mut long = big.clone();
        long.extend_from_slice(b"\"]");
        assert!(matches!(
            HandshakeScanner::new().feed(&long),
            Err(ProtocolError::TooLarge { .. })
        ));
        // An unterminated string keeps it incomplete.
        assert_eq!(
            HandshakeScanner::new().feed(b"[\"]]]").expect("scan"),
            Scan::Incomplete
        );
    }

    #[test]
    fn region_checks() {
        let r = |base, size, offset, page_size| GuestRegion {
            base_host_virt_addr: base,
            size,
            offset,
            page_size,
        };
        let p = 4096;
        let h = HUGE_PAGE_2M;
        assert!(validate(&[r(p, p, 0, p), r(3 * p, 2 * p, p, p)]).is_ok());
        assert!(validate(&[r(h, h, 0, h)]).is_ok());
        let err = |v: &[GuestRegion]| validate(v).expect_err("refused").to_string();
        assert!(err(&[]).contains("no memory region"));
        assert!(err(&[r(p, p, 0, 8192)]).contains("page size 8192"));
        assert!(err(&[r(p, 0, 0, p)]).contains("empty"));
        assert!(err(&[r(p + 1, p, 0, p)]).contains("base_host_virt_addr"));
        assert!(err(&[r(h, p, 0, h)]).contains("size"));
        assert!(err(&[r(h, h, p, h)]).contains("offset"));
        assert!(err(&[r(u64::MAX - p + 1, 2 * p, 0, p)]).contains("overflows"));
        assert!(err(&[r(0, p, u64::MAX - p + 1, p), r(p, p, 0, p)]).contains("overflows"));
        assert!(
            err(&[r(8 * p, 2 * p, 0, p), r(9 * p, p, 4 * p, p)])
                .contains("regions 0 and 1 overlap in the VMM")
        );
        assert!(
            err(&[r(0, p, 0, p), r(4 * p, 2 * p, 0, p)]).contains("overlap in the memory file")
        );
        let json = br#"[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096,"page_size_kib":8192}]"#;
        assert!(matches!(
            parse(json, json.len()),
            Err(ProtocolError::InconsistentPageSize { .. })
        ));
        for bad in [
            &br#"[{"size":4096,"offset":0}]"#[..],
            br#"[{"base_host_virt_addr":-1,"size":4096,"offset":0}]"#,
            br#"[{"base_host_virt_addr":18446744073709551616,"size":4096,"offset":0}]"#,
            br#"[1,2]"#,
            br#"[{"base_host_virt_addr":4096,"size":4096,"offset":0},]"#,
        ] {
            assert!(
                matches!(parse(bad, bad.len()), Err(ProtocolError::Json(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let many: Vec<GuestRegion> = (0..=MAX_REGIONS as u64)
            .map(|i| r(i * p, p, i * p, p))
            .collect();
        assert!(err(&many).contains("more than the limit"));
    }

    proptest::proptest! {
        /// Arbitrary bytes, split anywhere, never panic the scanner or the
        /// parser, and a split never changes the scanner's answer.
        #[test]
        fn hostile_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), step in 1usize..40) {
            let whole = HandshakeScanner::new().feed(&bytes).map_err(|e| e.to_string());
            let pieces = scan_in_pieces(&bytes, step).0.map_err(|e| e.to_string());
            match (&whole, &pieces) {
                (Ok(a), Ok(b)) => proptest::prop_assert_eq!(a, b),
                (Err(_), Err(_)) => {}
                _ => proptest::prop_assert!(false, "{whole:?} vs {pieces:?}"),
            }
            if let Ok(Scan::Complete { len }) = whole {
                let _ = parse(&bytes, len);
            }
        }
    }
}
