//! [`Mapping`]: the generic description of what a server serves where.
//!
//! A userfaultfd belongs to one address space (the *target*: this process,
//! a restored process, a VM's guest memory). The server does not care how the
//! target's ranges were created and registered; it is told, for each range,
//! where its bytes are in the image and how large its pages are:
//!
//! ```text
//!   target address space                     image address space
//!   ┌──────────────────────┐                 ┌───────────────────────────┐
//!   │ host .. host + len   │ ─── serves ───► │ image .. image + len      │
//!   │ (registered MISSING) │                 │ (extents: chunks / zeros) │
//!   └──────────────────────┘                 └───────────────────────────┘
//!          page_size: 4 KiB (anonymous, shmem) or 2 MiB (hugetlbfs)
//! ```
//!
//! - In-process restore (`restore_into`): one mapping per image region,
//!   `host` = where the region was mapped, `image` = the region's start.
//! - Process restore: one mapping per captured VMA, `host == image`.
//! - `serve` (Firecracker): the image has one region (the guest memory
//!   file); each guest memory region the VMM sends is `host` = its base
//!   address, `image` = region start + its offset in the file, `page_size`
//!   = 2 MiB when the guest memory is on hugetlbfs.
//!
//! Pages are served in *units* of `page_size`: a hugetlbfs range must be
//! filled one whole huge page at a time (and zero huge pages with a copy of
//! zeros: hugetlbfs has no zero page).

use snapshot_format::{Image, PageSource};

use crate::state::PageState;

/// The largest unit (page size) a mapping may use: 2 MiB huge pages. (1 GiB
/// hugetlbfs pages would need a 1 GiB staging buffer per filling thread.)
pub const MAX_UNIT_SIZE: u64 = 2 * 1024 * 1024;

/// The most mappings one address space may have (`vm.max_map_count` is
/// 65 530 by default).
pub const MAX_MAPPINGS: usize = 1 << 17;

/// The most units (pages) one address space may have: one byte of state
/// each, so at most 1 GiB of state for 4 TiB of 4 KiB pages.
pub const MAX_SPACE_UNITS: u64 = 1 << 30;

/// One range of a target address space, served from the image (see the
/// [module documentation](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mapping {
    /// First address in the target (aligned to `page_size`).
    pub host: u64,
    /// Length in bytes (a positive multiple of `page_size`).
    pub len: u64,
    /// The image address whose bytes `host` gets (aligned to `page_size`).
    pub image: u64,
    /// The unit in which pages are served: the system page size, or the
    /// huge page size of a hugetlbfs range.
    pub page_size: u64,
}

impl Mapping {
    /// A mapping of base (system) pages.
    pub fn new(host: u64, image: u64, len: u64) -> Self {
        Self {
            host,
            len,
            image,
            page_size: rustix::param::page_size() as u64,
        }
    }

    /// The same mapping with another unit size (e.g. 2 MiB for hugetlbfs).
    pub fn with_page_size(self, page_size: u64) -> Self {
        Self { page_size, ..self }
    }

    /// One past the last host address.
    pub fn host_end(&self) -> u64 {
        self.host.saturating_add(self.len)
    }
}

/// A mapping that cannot be served from the image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    /// No mappings given.
    #[error("no mappings given")]
    Empty,
    /// More mappings than [`MAX_MAPPINGS`].
    #[error("{count} mappings, more than the limit of {limit}")]
    TooMany {
        /// Mappings given.
        count: usize,
        /// [`MAX_MAPPINGS`].
        limit: usize,
    },
    /// The page size is not a power of two between the system (and image)
    /// page size and [`MAX_UNIT_SIZE`].
    #[error("mapping at {host:#x}: unsupported page size {page_size:#x}")]
    PageSize {
        /// The mapping's host address.
        host: u64,
        /// The page size given.
        page_size: u64,
    },
    /// Address, image address or length not aligned to the page size, zero
    /// length, or an overflowing range.
    #[error(
        "mapping at {host:#x} (+{len:#x}, image {image:#x}) is not aligned to its page size {page_size:#x} or is empty"
    )]
    Misaligned {
        /// Host address.
        host: u64,
        /// Length.
        len: u64,
        /// Image address.
        image: u64,
        /// Page size.
        page_size: u64,
    },
    /// Two mappings overlap in the target.
    #[error("mappings overlap at host address {host:#x}")]
    Overlap {
        /// Where.
        host: u64,
    },
    /// Two mappings serve overlapping image ranges (each image page is
    /// served at one place per address space).
    #[error("two mappings serve image address {image:#x}")]
    ImageOverlap {
        /// Where.
        image: u64,
    },
    /// Part of the image range is in no region of the image.
    #[error("image address {addr:#x} is outside every region of the image")]
    OutsideImage {
        /// The first image address not covered.
        addr: u64,
    },
    /// Part of the image range is backed by a mapped file, whose pages the
    /// target maps from the file itself (they cannot be served through
    /// userfaultfd MISSING mode).
    #[error("image address {addr:#x} is backed by a mapped file, not by image data")]
    FileBacked {
        /// The first file-backed image address.
        addr: u64,
    },
    /// The space would have more units than [`MAX_SPACE_UNITS`].
    #[error("{units} pages in one address space, more than the limit of {limit}")]
    TooLarge {
        /// Units.
        units: u64,
        /// [`MAX_SPACE_UNITS`].
        limit: u64,
    },
}

/// Checks a space's mappings against the image and computes each mapping's
/// initial unit states: `Snapshot` for units holding any image data, `Zero`
/// for the others. Returns them in the order given, with the total number of
/// `Snapshot` units.
pub(crate) fn initial_states(
    image: &Image,
    mappings: &[Mapping],
) -> Result<(Vec<Vec<PageState>>, u64), MappingError> {
    if mappings.is_empty() {
        return Err(MappingError::Empty);
    }
    if mappings.len() > MAX_MAPPINGS {
        return Err(MappingError::TooMany {
            count: mappings.len(),
            limit: MAX_MAPPINGS,
        });
    }
    let base = (rustix::param::page_size() as u64).max(u64::from(image.page_size()));
    let mut units_total = 0u64;
    for m in mappings {
        if !m.page_size.is_power_of_two() || m.page_size < base || m.page_size > MAX_UNIT_SIZE {
            return Err(MappingError::PageSize {
                host: m.host,
                page_size: m.page_size,
            });
        }
        let mask = m.page_size - 1;
        let fits = m.host.checked_add(m.len).is_some() && m.image.checked_add(m.len).is_some();
        if m.len == 0 || (m.host | m.len | m.image) & mask != 0 || !fits {
            return Err(MappingError::Misaligned {
                host: m.host,
                len: m.len,
                image: m.image,
                page_size: m.page_size,
            });
        }
        units_total += m.len / m.page_size;
        if units_total > MAX_SPACE_UNITS {
            return Err(MappingError::TooLarge {
                units: units_total,
                limit: MAX_SPACE_UNITS,
            });
        }
    }
    let mut order: Vec<&Mapping> = mappings.iter().collect();
    order.sort_by_key(|m| m.host);
    for pair in order.windows(2) {
        if pair[0].host_end() > pair[1].host {
            return Err(MappingError::Overlap { host: pair[1].host });
        }
    }
    order.sort_by_key(|m| m.image);
    for pair in order.windows(2) {
        if pair[0].image + pair[0].len > pair[1].image {
            return Err(MappingError::ImageOverlap {
                image: pair[1].image,
            });
        }
    }
    let mut snapshot = 0u64;
    let mut all = Vec::with_capacity(mappings.len());
    for m in mappings {
        let (states, n) = mapping_states(image, m)?;
        snapshot += n;
        all.push(states);
    }
    Ok((all, snapshot))
}

/// The initial states of one mapping's units (see [`initial_states`]).
fn mapping_states(image: &Image, m: &Mapping) -> Result<(Vec<PageState>, u64), MappingError> {
    let units = (m.len / m.page_size) as usize;
    let mut states = vec![PageState::Zero; units];
    let end = m.image + m.len;
    let extents = image.extents();
    let mut i = extents.partition_point(|e| e.end() <= m.image);
    let mut cursor = m.image;
    let mut filled = 0u64;
    while cursor < end {
        let Some(e) = extents.get(i).filter(|e| e.start <= cursor) else {
            return Err(MappingError::OutsideImage { addr: cursor });
        };
        let piece_end = e.end().min(end);
        match e.source {
            PageSource::Zero => {}
            PageSource::Chunk { .. } => {
                let first = ((cursor - m.image) / m.page_size) as usize;
                let last = ((piece_end - 1 - m.image) / m.page_size) as usize;
                states[first..=last].fill(PageState::Snapshot);
                filled += (last - first + 1) as u64;
            }
            PageSource::File { .. } => return Err(MappingError::FileBacked { addr: cursor }),
        }
        cursor = piece_end;
        i += 1;
    }
    // Units of image pages each lie in one extent (extents are whole image
    // pages), so the runs filled are disjoint and their sum is the count (a
    // second pass over a GiB's 262 144 states cost ~90 µs of a VM's first
    // fault); a larger unit can hold several extents: count those.
    let snapshot = if m.page_size == u64::from(image.page_size()) {
        debug_assert_eq!(
            filled,
            states.iter().filter(|s| **s == PageState::Snapshot).count() as u64
        );
        filled
    } else {
        states.iter().filter(|s| **s == PageState::Snapshot).count() as u64
    };
    Ok((states, snapshot))
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapshot_format::{ImageWriter, RegionInfo, WriterOptions};

    const P: u64 = 4096;

    /// Two regions: [0, 8 pages) with data in pages 2..4, [16, 20 pages) zero.
    fn image() -> (tempfile::TempDir, Image) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.lzr");
        let mut w = ImageWriter::create(&path, WriterOptions::default()).expect("create");
        w.begin_region(RegionInfo::raw_file(0, 8 * P))
            .expect("region");
        w.write_pages(2 * P, &[7u8; 2 * 4096]).expect("pages");
        w.begin_region(RegionInfo::raw_file(16 * P, 4 * P))
            .expect("region");
        w.finish().expect("finish");
        let img = Image::open(&path).expect("open");
        (dir, img)
    }

    #[test]
    fn initial_states_follow_the_image() {
        let (_d, img) = image();
        let (states, snapshot) = initial_states(
            &img,
            &[
                Mapping::new(0x10000, P, 4 * P),
                Mapping::new(0x40000, 16 * P, 4 * P),
            ],
        )
        .expect("valid");
        use PageState::{Snapshot as S, Zero as Z};
        assert_eq!(states, vec![vec![Z, S, S, Z], vec![Z; 4]]);
        assert_eq!(snapshot, 2);
        // One 8-page unit over the data: Snapshot.
        let (states, _) = initial_states(
            &img,
            &[Mapping::new(0x10000, 0, 8 * P).with_page_size(8 * P)],
        )
        .expect("valid");
        assert_eq!(states, vec![vec![S]]);
    }

    #[test]
    fn hostile_mappings_are_refused_with_typed_errors() {
        let (_d, img) = image();
        let check = |maps: &[Mapping], want: MappingError| {
            assert_eq!(initial_states(&img, maps).expect_err("refused"), want);
        };
        check(&[], MappingError::Empty);
        check(
            &[Mapping::new(0x10000, 0, P).with_page_size(3 * P)],
            MappingError::PageSize {
                host: 0x10000,
                page_size: 3 * P,
            },
        );
        check(
            &[Mapping::new(0x10000, 0, P).with_page_size(1 << 30)],
            MappingError::PageSize {
                host: 0x10000,
                page_size: 1 << 30,
            },
        );
        check(
            &[Mapping::new(0x10001, 0, P)],
            MappingError::Misaligned {
                host: 0x10001,
                len: P,
                image: 0,
                page_size: P,
            },
        );
        check(
            &[Mapping::new(0x10000, 0, 0)],
            MappingError::Misaligned {
                host: 0x10000,
                len: 0,
                image: 0,
                page_size: P,
            },
        );
        check(
            &[Mapping::new(u64::MAX - P + 1, 0, 2 * P)],
            MappingError::Misaligned {
                host: u64::MAX - P + 1,
                len: 2 * P,
                image: 0,
                page_size: P,
            },
        );
        check(
            &[
                Mapping::new(0x10000, 0, 2 * P),
                Mapping::new(0x11000, 4 * P, P),
            ],
            MappingError::Overlap { host: 0x11000 },
        );
        check(
            &[Mapping::new(0x10000, 0, 2 * P), Mapping::new(0x20000, P, P)],
            MappingError::ImageOverlap { image: P },
        );
        // The gap between the regions, and past the end.
        check(
            &[Mapping::new(0x10000, 6 * P, 4 * P)],
            MappingError::OutsideImage { addr: 8 * P },
        );
        check(
            &[Mapping::new(0x10000, 1 << 40, P)],
            MappingError::OutsideImage { addr: 1 << 40 },
        );
        check(
            &[Mapping::new(0x10000, 0, P << 31)],
            MappingError::TooLarge {
                units: 1 << 31,
                limit: MAX_SPACE_UNITS,
            },
        );
    }
}
