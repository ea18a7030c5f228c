//! Working sets: which chunks a restored workload touches first, recorded on
//! one restore and prefetched first on the next.
//!
//! The fault thread records each chunk the first time a fault needs its
//! bytes (prefetched chunks are not faults and are not recorded), into a
//! `Recorder`: a preallocated, lock-free, append-only log with a single
//! writer. [`WorkingSet::save`] writes the order beside the image
//! (`IMG.ws` by default: the image path with `.ws` appended), atomically (a
//! temporary file renamed into place); the next restore loads it and its
//! prefetch plan starts with those chunks, in that order.
//!
//! # File format (version 1)
//!
//! All integers little endian.
//!
//! ```text
//!  0  magic     [u8; 8]   "LZRWSET\n"
//!  8  version   u32       1
//! 12  count     u32       number of chunk ids (≤ MAX_WORKING_SET)
//! 16  image     [u8; 16]  identity (ImageId) of the image it was recorded on
//! 32  chunks    [u32; count]  chunk ids (the image's global ChunkId), first-fault order
//! 32 + 4·count  checksum  u64   xxh3-64 of every byte before it
//! ```
//!
//! A working set is untrusted input: [`WorkingSet::load`] checks the length
//! (before reading), magic, version, count, checksum, that it was recorded
//! on *this* image, that every id names a chunk of the image, and that no id
//! repeats; any failure is a typed [`WorkingSetError`] (a restore then warns
//! and prefetches in address order).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use snapshot_format::{ChunkId, Image, ImageId};
use xxhash_rust::xxh3::xxh3_64;

/// File magic.
const MAGIC: [u8; 8] = *b"LZRWSET\n";
/// The version this code writes and reads.
pub const WORKING_SET_VERSION: u32 = 1;
/// Header length.
const HEADER_LEN: usize = 32;
/// The most chunk ids a working set holds (4 MiB of ids; 64 GiB of memory in
/// 64 KiB chunks). Recording stops there.
pub const MAX_WORKING_SET: usize = 1 << 20;

/// An ordered list of chunks (see the [module documentation](self)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkingSet {
    image: ImageId,
    chunks: Vec<ChunkId>,
}

/// A working-set file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum WorkingSetError {
    /// Reading or writing the file failed.
    #[error("working set {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Not a working-set file, or damaged.
    #[error("working set {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A newer version.
    #[error(
        "working set {path}: version {version} not supported (this reads {WORKING_SET_VERSION})"
    )]
    Version {
        /// The file.
        path: PathBuf,
        /// Its version.
        version: u32,
    },
    /// Recorded on another image.
    #[error("working set {path} was recorded on image {recorded}, not {image}")]
    OtherImage {
        /// The file.
        path: PathBuf,
        /// The image it was recorded on.
        recorded: ImageId,
        /// The image in use.
        image: ImageId,
    },
}

impl WorkingSet {
    /// A working set of `chunks` of `image` (truncated to
    /// [`MAX_WORKING_SET`], duplicates dropped).
    pub fn new(image: ImageId, chunks: impl IntoIterator<Item = ChunkId>) -> Self {
        let mut seen = std::collections::HashSet::new();
        let chunks = chunks
            .into_iter()
            .filter(|c| seen.insert(*c))
            .take(MAX_WORKING_SET)
            .collect();
        Self { image, chunks }
    }

    /// The chunks, first-fault order.
    pub fn chunks(&self) -> &[ChunkId] {
        &self.chunks
    }

    /// The image it belongs to.
    pub fn image(&self) -> ImageId {
        self.image
    }

    /// The default path for `image_path`'s working set: `IMG.ws`.
    pub fn default_path(image_path: &Path) -> PathBuf {
        let mut s = image_path.as_os_str().to_owned();
        s.push(".ws");
        PathBuf::from(s)
    }

    /// The file bytes.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + 4 * self.chunks.len() + 8);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&WORKING_SET_VERSION.to_le_bytes());
        out.extend_from_slice(&(self.chunks.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.image.0);
        for c in &self.chunks {
            out.extend_from_slice(&c.0.to_le_bytes());
        }
        let sum = xxh3_64(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    /// Writes the file atomically: a temporary file in the same directory,
    /// flushed, then renamed over `path`.
    pub fn save(&self, path: &Path) -> Result<(), WorkingSetError> {
        let io = |source| WorkingSetError::Io {
            path: path.to_path_buf(),
            source,
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let mut tmp = tempfile::Builder::new()
            .prefix(".ws-")
            .tempfile_in(dir)
            .map_err(io)?;
        tmp.write_all(&self.encode()).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(path).map_err(|e| io(e.error))?;
        Ok(())
    }

    /// Reads and checks the working set at `path` for `image` (see the
    /// [module documentation](self)).
    pub fn load(path: &Path, image: &Image) -> Result<Self, WorkingSetError> {
        let invalid = |reason: String| WorkingSetError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let io = |source| WorkingSetError::Io {
            path: path.to_path_buf(),
            source,
        };
        let max_len = (HEADER_LEN + 4 * MAX_WORKING_SET + 8) as u64;
        let file = std::fs::File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len > max_len {
            return Err(invalid(format!(
                "{len} bytes, more than a working set can hold"
            )));
        }
        let mut bytes = Vec::with_capacity(len as usize);
        file.take(max_len).read_to_end(&mut bytes).map_err(io)?;
        Self::decode(&bytes, image).map_err(|e| match e {
            Decode::Invalid(r) => invalid(r),
            Decode::Version(version) => WorkingSetError::Version {
                path: path.to_path_buf(),
                version,
            },
            Decode::OtherImage(recorded) => WorkingSetError::OtherImage {
                path: path.to_path_buf(),
                recorded,
                image: image.id(),
            },
        })
    }

    fn decode(bytes: &[u8], image: &Image) -> Result<Self, Decode> {
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
        if bytes.len() < HEADER_LEN + 8 || bytes[..8] != MAGIC {
            return Err(Decode::Invalid("not a working-set file".into()));
        }
        let version = u32_at(8);
        if version != WORKING_SET_VERSION {
            return Err(Decode::Version(version));
        }
        let count = u32_at(12) as usize;
        if count > MAX_WORKING_SET {
            return Err(Decode::Invalid(format!(
                "{count} chunks, more than {MAX_WORKING_SET}"
            )));
        }
        let body = HEADER_LEN + 4 * count;
        if bytes.len() != body + 8 {
            return Err(Decode::Invalid(format!(
                "{} bytes, {} expected for {count} chunks",
                bytes.len(),
                body + 8
            )));
        }
        let sum = u64::from_le_bytes(bytes[body..].try_into().expect("8 bytes"));
        if sum != xxh3_64(&bytes[..body]) {
            return Err(Decode::Invalid("checksum mismatch".into()));
        }
        let recorded = ImageId(bytes[16..32].try_into().expect("16 bytes"));
        if recorded != image.id() {
            return Err(Decode::OtherImage(recorded));
        }
        let n_chunks = image.chunks().len();
        let mut seen = vec![false; n_chunks];
        let mut chunks = Vec::with_capacity(count);
        for i in 0..count {
            let id = u32_at(HEADER_LEN + 4 * i);
            let Some(flag) = seen.get_mut(id as usize) else {
                return Err(Decode::Invalid(format!(
                    "chunk {id} is not in the image ({n_chunks} chunks)"
                )));
            };
            if std::mem::replace(flag, true) {
                return Err(Decode::Invalid(format!("chunk {id} listed twice")));
            }
            chunks.push(ChunkId(id));
        }
        Ok(Self {
            image: recorded,
            chunks,
        })
    }
}

enum Decode {
    Invalid(String),
    Version(u32),
    OtherImage(ImageId),
}

/// The first-fault log: one writer (the fault thread), any readers, no lock,
/// no allocation after creation.
#[derive(Debug)]
pub(crate) struct Recorder {
    seen: Box<[AtomicU64]>,
    order: Box<[AtomicU32]>,
    len: AtomicUsize,
}

impl Recorder {
    /// A recorder for an image of `chunks` chunks (room for
    /// `min(chunks, MAX_WORKING_SET)` entries).
    pub(crate) fn new(chunks: usize) -> Self {
        Self {
            seen: (0..chunks.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            order: (0..chunks.min(MAX_WORKING_SET))
                .map(|_| AtomicU32::new(0))
                .collect(),
            len: AtomicUsize::new(0),
        }
    }

    /// Records `id` if it is new (single writer).
    pub(crate) fn record(&self, id: ChunkId) {
        let i = id.0 as usize;
        let Some(word) = self.seen.get(i / 64) else {
            return;
        };
        let bit = 1u64 << (i % 64);
        let w = word.load(Ordering::Relaxed);
        if w & bit != 0 {
            return;
        }
        word.store(w | bit, Ordering::Relaxed);
        let n = self.len.load(Ordering::Relaxed);
        if let Some(slot) = self.order.get(n) {
            slot.store(id.0, Ordering::Relaxed);
            self.len.store(n + 1, Ordering::Release);
        }
    }

    /// The chunks recorded so far, in order.
    pub(crate) fn chunks(&self) -> Vec<ChunkId> {
        let n = self.len.load(Ordering::Acquire);
        self.order[..n]
            .iter()
            .map(|c| ChunkId(c.load(Ordering::Relaxed)))
            .collect()
    }

    /// Number recorded.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapshot_format::{ImageWriter, RegionInfo, WriterOptions};

    fn image(dir: &Path, pages: usize) -> Image {
        let path = dir.join("i.lzr");
        let mut w = ImageWriter::create(
            &path,
            WriterOptions {
                chunk_size: 4096,
                ..WriterOptions::default()
            },
        )
        .expect("create");
        w.begin_region(RegionInfo::raw_file(0, (pages * 4096) as u64))
            .expect("region");
        for p in 0..pages {
            w.write_pages((p * 4096) as u64, &[p as u8 + 1; 4096])
                .expect("write");
        }
        w.finish().expect("finish");
        Image::open(&path).expect("open")
    }

    #[test]
    fn round_trip_and_every_rejection() {
        let dir = tempfile::tempdir().expect("tempdir");
        let img = image(dir.path(), 8);
        let path = WorkingSet::default_path(&dir.path().join("i.lzr"));
        assert!(path.to_string_lossy().ends_with("i.lzr.ws"));
        let ws = WorkingSet::new(img.id(), [ChunkId(5), ChunkId(1), ChunkId(5), ChunkId(7)]);
        assert_eq!(ws.chunks(), &[ChunkId(5), ChunkId(1), ChunkId(7)]);
        ws.save(&path).expect("save");
        assert_eq!(WorkingSet::load(&path, &img).expect("load"), ws);

        let good = std::fs::read(&path).expect("read");
        let check = |bytes: &[u8], want: &str| {
            std::fs::write(&path, bytes).expect("write");
            let err = WorkingSet::load(&path, &img).expect_err(want).to_string();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        };
        check(&good[..good.len() - 1], "expected");
        check(b"hello", "not a working-set file");
        let mut v = good.clone();
        v[8] = 9;
        check(&v, "version 9");
        let mut v = good.clone();
        v[HEADER_LEN] ^= 1;
        check(&v, "checksum");
        let mut v = good.clone();
        v[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        check(&v, "more than");
        let other = WorkingSet::new(ImageId([9; 16]), [ChunkId(1)]);
        std::fs::write(&path, other.encode()).expect("write");
        assert!(matches!(
            WorkingSet::load(&path, &img),
            Err(WorkingSetError::OtherImage { .. })
        ));
        let outside = WorkingSet {
            image: img.id(),
            chunks: vec![ChunkId(8)],
        };
        check(&outside.encode(), "not in the image");
        let twice = WorkingSet {
            image: img.id(),
            chunks: vec![ChunkId(2), ChunkId(2)],
        };
        check(&twice.encode(), "twice");
        std::fs::remove_file(&path).expect("rm");
        assert!(matches!(
            WorkingSet::load(&path, &img),
            Err(WorkingSetError::Io { .. })
        ));
    }

    #[test]
    fn recorder_keeps_first_fault_order() {
        let r = Recorder::new(100);
        for id in [7, 3, 7, 99, 3, 0, 500] {
            r.record(ChunkId(id));
        }
        assert_eq!(
            r.chunks(),
            vec![ChunkId(7), ChunkId(3), ChunkId(99), ChunkId(0)]
        );
        assert_eq!(r.len(), 4);
    }

    proptest::proptest! {
        /// Arbitrary bytes never panic the loader and are accepted only when
        /// they are exactly a valid encoding.
        #[test]
        fn hostile_bytes_are_rejected_cleanly(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let dir = tempfile::tempdir().expect("tempdir");
            let img = image(dir.path(), 4);
            if let Ok(ws) = WorkingSet::decode(&bytes, &img) {
                proptest::prop_assert_eq!(ws.encode(), bytes);
            }
        }
    }
}
