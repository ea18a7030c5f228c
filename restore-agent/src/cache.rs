//! [`ChunkCache`]: a bounded cache of decompressed chunks shared by the fault
//! thread and the prefetch workers, with no global lock and no allocation per
//! lookup.
//!
//! ```text
//!  chunk id ──(id % shards)──► shard k
//!                              ┌──────────────────────────────────────────┐
//!                              │ meta: Mutex { tags[], referenced[], hand }│  a few ns
//!                              │ slots: [RwLock<Slot>; n]                  │  held while
//!                              │         Slot { chunk, len, buf: [u8; max] }│  copying
//!                              └──────────────────────────────────────────┘
//! ```
//!
//! - **Preallocated**: every slot owns a buffer of the image's largest chunk,
//!   allocated when the cache is built. A lookup allocates nothing.
//! - **Striped locks**: chunks are spread over shards by id; a shard's
//!   `meta` mutex is held only to find or claim a slot (a scan of a handful
//!   of tags), never while decoding or copying. Threads working on chunks of
//!   different shards never touch the same lock.
//! - **Per-slot reader-writer locks**: a thread holds a slot's read lock
//!   while it copies from the slot's buffer straight into the target
//!   (`UFFDIO_COPY` reads the buffer: no intermediate copy). Several threads
//!   read one slot at once. A slot is only ever write-locked with
//!   `try_write` (to claim it as a victim: a slot in use is skipped, never
//!   waited for), and by the thread decoding into it; a thread that wants a
//!   chunk being decoded waits on its read lock, which is what it would have
//!   spent decoding the chunk itself.
//! - **Clock eviction** per shard, with a second chance for chunks faults
//!   come back to. Prefetch reads cached chunks but does not insert the ones
//!   it misses: it decodes them into its worker's own buffer (a chunk is
//!   needed once per address space), so it neither pushes out the chunks
//!   faults keep coming back to nor pays for cold slot memory.
//! - **Warm slots**: slot buffers are allocated zeroed and untouched, so the
//!   first decode into a slot would pay the kernel's first-touch of 16 fresh
//!   pages (about 1.5 GB/s on this machine: ~40 µs for 64 KiB, more than the
//!   decode itself). [`ChunkCache::pretouch`] touches them from a background
//!   thread right after start.
//! - **Progress without waiting**: if every slot of a shard is in use, the
//!   chunk is decoded into the caller's private buffer ([`Scratch`]) instead.
//! - **Corrupt chunks** (hash mismatch, undecodable frame) are remembered in a
//!   bitmap and never decoded again; callers poison their pages.
//!
//! A thread holds at most one [`CachedChunk`] at a time (so a read lock is
//! never taken recursively).
//!
//! A seqlock per slot would let readers skip the lock word, but readers copy
//! from the buffer into *another process* with a system call: a torn read
//! could only be detected after the bytes were installed, which is too late.
//! A read lock held across the copy is the simple correct choice.

use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard};

use snapshot_format::{ChunkDecoder, ChunkError, ChunkId, Image};

use crate::stats::Counters;

/// Default cache capacity: 32 MiB of decoded chunks (512 chunks of 64 KiB).
/// Only faults fill the cache (prefetch decodes privately), and faults have
/// locality, so this is plenty; `serve` of many VMs keeps its memory small.
pub const DEFAULT_CACHE_BYTES: usize = 32 << 20;

/// Slots per shard when the shard count is chosen automatically.
const SLOTS_PER_SHARD: usize = 8;

/// The fewest slots a cache gets, whatever its capacity.
pub const MIN_CACHE_SLOTS: usize = 16;

/// The most slots a cache gets (bounds the memory taken from a hostile
/// image's chunk count and the caller's capacity together).
pub const MAX_CACHE_SLOTS: usize = 1 << 20;

const NONE: u32 = u32::MAX;

/// How to size a [`ChunkCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheOptions {
    /// Bytes of decoded chunks to keep (rounded to whole slots of the image's
    /// largest chunk; at least [`MIN_CACHE_SLOTS`] slots).
    pub capacity: usize,
    /// Number of shards (lock stripes); 0 picks one per eight slots.
    pub shards: usize,
}

impl Default for CacheOptions {
    fn default() -> Self {
        Self {
            capacity: DEFAULT_CACHE_BYTES,
            shards: 0,
        }
    }
}

/// Why a chunk's bytes are unavailable: it is corrupt (or could not be
/// decoded at all). Its pages must be poisoned, never served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("chunk {} is corrupt", .0.0)]
pub struct BadChunk(pub ChunkId);

/// Who asks for a chunk: decides its eviction priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// A page fault: likely to be needed again soon.
    Fault,
    /// Prefetch: usually needed once per address space.
    Prefetch,
}

/// Per-thread decoding state: a decoder and a private chunk buffer for when
/// the cache has no free slot. Created once per thread.
#[derive(Debug)]
pub struct Scratch {
    decoder: ChunkDecoder,
    buf: Box<[u8]>,
}

impl Scratch {
    /// Scratch space for chunks of `image`.
    pub fn new(image: &Image) -> std::io::Result<Self> {
        Ok(Self {
            decoder: ChunkDecoder::new()?,
            buf: vec![0u8; image.max_chunk_raw_len()].into_boxed_slice(),
        })
    }
}

/// A decoded chunk: in a cache slot (read-locked) or in the caller's
/// [`Scratch`]. Dereferences to exactly the chunk's raw bytes.
#[derive(Debug)]
pub enum CachedChunk<'a> {
    /// In a cache slot.
    Cached(ChunkGuard<'a>),
    /// In the caller's scratch buffer.
    Private(&'a [u8]),
}

/// A read-locked cache slot holding a chunk.
#[derive(Debug)]
pub struct ChunkGuard<'a>(RwLockReadGuard<'a, Slot>);

impl Deref for CachedChunk<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Self::Cached(g) => &g.0.buf[..g.0.len],
            Self::Private(b) => b,
        }
    }
}

/// One cache slot: a decoded chunk.
#[derive(Debug)]
pub struct Slot {
    chunk: u32,
    len: usize,
    buf: Box<[u8]>,
}

#[derive(Debug)]
struct Meta {
    /// The chunk each slot holds or is being loaded with (`NONE`: free).
    tags: Box<[u32]>,
    referenced: Box<[bool]>,
    hand: usize,
}

#[derive(Debug)]
struct Shard {
    meta: Mutex<Meta>,
    slots: Box<[RwLock<Slot>]>,
}

/// The cache (see the [module documentation](self)).
#[derive(Debug)]
pub struct ChunkCache {
    image: Arc<Image>,
    shards: Box<[Shard]>,
    bad: Box<[AtomicU64]>,
    slots: usize,
}

impl ChunkCache {
    /// A cache for `image`, with every slot allocated now.
    pub fn new(image: Arc<Image>, opts: CacheOptions) -> Self {
        let slot_len = image.max_chunk_raw_len().max(1);
        let slots = (opts.capacity / slot_len).clamp(MIN_CACHE_SLOTS, MAX_CACHE_SLOTS);
        let shards = if opts.shards == 0 {
            slots.div_ceil(SLOTS_PER_SHARD)
        } else {
            opts.shards.clamp(1, slots)
        };
        let per_shard = slots.div_ceil(shards);
        let shards: Box<[Shard]> = (0..shards)
            .map(|_| Shard {
                meta: Mutex::new(Meta {
                    tags: vec![NONE; per_shard].into_boxed_slice(),
                    referenced: vec![false; per_shard].into_boxed_slice(),
                    hand: 0,
                }),
                slots: (0..per_shard)
                    .map(|_| {
                        RwLock::new(Slot {
                            chunk: NONE,
                            len: 0,
                            buf: vec![0u8; slot_len].into_boxed_slice(),
                        })
                    })
                    .collect(),
            })
            .collect();
        let bad = (0..image.chunks().len().div_ceil(64))
            .map(|_| AtomicU64::new(0))
            .collect();
        let slots = shards.len() * per_shard;
        Self {
            image,
            shards,
            bad,
            slots,
        }
    }

    /// The image the chunks come from.
    pub fn image(&self) -> &Arc<Image> {
        &self.image
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Whether `id` is known to be corrupt.
    pub fn is_bad(&self, id: ChunkId) -> bool {
        let i = id.0 as usize;
        self.bad
            .get(i / 64)
            .is_some_and(|w| w.load(Ordering::Acquire) & (1 << (i % 64)) != 0)
    }

    fn mark_bad(&self, id: ChunkId, err: &ChunkError, counters: &Counters) {
        let i = id.0 as usize;
        if let Some(w) = self.bad.get(i / 64) {
            let prev = w.fetch_or(1 << (i % 64), Ordering::AcqRel);
            if prev & (1 << (i % 64)) == 0 {
                counters.bad_chunks.inc();
                log::error!("chunk {}: {err}; its pages will be poisoned", id.0);
            }
        }
    }

    /// The decoded bytes of chunk `id`, from the cache or decoded now (with
    /// the caller's `scratch`). Allocates nothing. `Err` if the chunk is
    /// corrupt (now or before). Hold at most one result per thread at a time.
    pub fn get<'a>(
        &'a self,
        id: ChunkId,
        scratch: &'a mut Scratch,
        usage: Use,
        counters: &Counters,
    ) -> Result<CachedChunk<'a>, BadChunk> {
        if self.is_bad(id) {
            return Err(BadChunk(id));
        }
        let shard = &self.shards[id.0 as usize % self.shards.len()];
        loop {
            let mut meta = shard.meta.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(i) = meta.tags.iter().position(|&t| t == id.0) {
                if usage == Use::Fault {
                    meta.referenced[i] = true;
                }
                drop(meta);
                let guard = shard.slots[i]
                    .read()
                    .unwrap_or_else(PoisonError::into_inner);
                if guard.chunk == id.0 {
                    counters.cache_hits.inc();
                    return Ok(CachedChunk::Cached(ChunkGuard(guard)));
                }
                // Its loader failed (corrupt) or the slot was reused since.
                drop(guard);
                if self.is_bad(id) {
                    return Err(BadChunk(id));
                }
                continue;
            }
            counters.cache_misses.inc();
            if usage == Use::Prefetch {
                drop(meta);
                return self.decode_private(id, scratch, counters);
            }
            let Some((i, mut slot)) = Self::claim(shard, &mut meta) else {
                drop(meta);
                counters.cache_bypass.inc();
                return self.decode_private(id, scratch, counters);
            };
            if meta.tags[i] != NONE {
                counters.cache_evictions.inc();
            }
            meta.tags[i] = id.0;
            meta.referenced[i] = usage == Use::Fault;
            drop(meta);
            slot.chunk = NONE;
            match self
                .image
                .decode_chunk(id, &mut scratch.decoder, &mut slot.buf)
            {
                Ok(len) => {
                    slot.len = len;
                    slot.chunk = id.0;
                    // Keep it, as a reader: threads waiting for this chunk
                    // read it too.
                    let guard = std::sync::RwLockWriteGuard::downgrade(slot);
                    return Ok(CachedChunk::Cached(ChunkGuard(guard)));
                }
                Err(e) => {
                    self.mark_bad(id, &e, counters);
                    drop(slot);
                    let mut meta = shard.meta.lock().unwrap_or_else(PoisonError::into_inner);
                    if meta.tags[i] == id.0 {
                        meta.tags[i] = NONE;
                    }
                    return Err(BadChunk(id));
                }
            }
        }
    }

    /// Touches every page of every slot buffer that holds no chunk at the
    /// moment (a slot that holds one is already warm), so that later decodes
    /// do not pay the kernel's first touch of fresh memory. Allocates
    /// nothing; holds each slot's write lock only while touching it.
    ///
    /// It *writes* without reading first: a read of a never-touched page maps
    /// the shared zero page, and the write after it then copies it and
    /// flushes the old translation on every CPU this process runs on (one
    /// IPI per page: 8192 for the default 32 MiB, interrupting the fault
    /// server and the prefetch workers). The bytes of a slot without a chunk
    /// mean nothing, so overwriting them is harmless.
    pub fn pretouch(&self) {
        let page = rustix::param::page_size();
        for shard in &*self.shards {
            for slot in &*shard.slots {
                if let Ok(mut s) = slot.try_write()
                    && s.chunk == NONE
                {
                    for i in (0..s.buf.len()).step_by(page) {
                        s.buf[i] = std::hint::black_box(0);
                    }
                }
            }
        }
    }

    /// Picks a victim slot by clock, skipping slots in use; None if every
    /// slot is in use.
    fn claim<'s>(
        shard: &'s Shard,
        meta: &mut Meta,
    ) -> Option<(usize, std::sync::RwLockWriteGuard<'s, Slot>)> {
        let n = meta.tags.len();
        for _ in 0..2 * n {
            let i = meta.hand;
            meta.hand = (meta.hand + 1) % n;
            if meta.referenced[i] {
                meta.referenced[i] = false;
                continue;
            }
            if let Ok(w) = shard.slots[i].try_write() {
                return Some((i, w));
            }
        }
        None
    }

    fn decode_private<'a>(
        &self,
        id: ChunkId,
        scratch: &'a mut Scratch,
        counters: &Counters,
    ) -> Result<CachedChunk<'a>, BadChunk> {
        match self
            .image
            .decode_chunk(id, &mut scratch.decoder, &mut scratch.buf)
        {
            Ok(len) => Ok(CachedChunk::Private(&scratch.buf[..len])),
            Err(e) => {
                self.mark_bad(id, &e, counters);
                Err(BadChunk(id))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapshot_format::{ImageWriter, RegionInfo, WriterOptions};

    fn image_with_chunks(n: usize) -> (tempfile::TempDir, Arc<Image>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.lzr");
        let opts = WriterOptions {
            chunk_size: 8192,
            ..WriterOptions::default()
        };
        let mut w = ImageWriter::create(&path, opts).expect("create");
        w.begin_region(RegionInfo::raw_file(0, (n * 8192) as u64))
            .expect("region");
        for i in 0..n {
            let page: Vec<u8> = (0..8192).map(|b| (b as u8) ^ (i as u8) ^ 0x5a).collect();
            w.write_pages((i * 8192) as u64, &page).expect("pages");
        }
        w.finish().expect("finish");
        let image = Arc::new(Image::open(&path).expect("open"));
        (dir, image)
    }

    #[test]
    fn hits_misses_eviction_and_bypass() {
        let (_dir, image) = image_with_chunks(40);
        let cache = ChunkCache::new(
            Arc::clone(&image),
            CacheOptions {
                capacity: 0,
                shards: 1,
            },
        );
        assert_eq!(cache.slots(), MIN_CACHE_SLOTS);
        let mut scratch = Scratch::new(&image).expect("scratch");
        let c = Counters::default();
        let mut reference = vec![0u8; 8192];
        for round in 0..2 {
            for i in 0..40u32 {
                let got = cache
                    .get(ChunkId(i), &mut scratch, Use::Fault, &c)
                    .expect("good chunk");
                let mut dec = ChunkDecoder::new().expect("decoder");
                image
                    .decode_chunk(ChunkId(i), &mut dec, &mut reference)
                    .expect("decode");
                assert_eq!(&*got, &reference[..], "chunk {i} round {round}");
            }
        }
        let hits = c.cache_hits.0.load(Ordering::Relaxed);
        let misses = c.cache_misses.0.load(Ordering::Relaxed);
        assert_eq!(hits + misses, 80);
        assert!(c.cache_evictions.0.load(Ordering::Relaxed) > 0);

        // Hold a slot; the rest of the shard stays usable; a second holder of
        // the same chunk shares the slot.
        let mut s2 = Scratch::new(&image).expect("scratch");
        let held = cache
            .get(ChunkId(3), &mut scratch, Use::Fault, &c)
            .expect("get");
        let same = cache.get(ChunkId(3), &mut s2, Use::Fault, &c).expect("get");
        assert!(matches!(
            (&held, &same),
            (CachedChunk::Cached(_), CachedChunk::Cached(_))
        ));
        assert_eq!(&*held, &*same);
    }

    #[test]
    fn prefetch_reads_cached_chunks_but_does_not_insert_misses() {
        let (_dir, image) = image_with_chunks(4);
        let cache = ChunkCache::new(Arc::clone(&image), CacheOptions::default());
        cache.pretouch();
        let mut scratch = Scratch::new(&image).expect("scratch");
        let c = Counters::default();
        let got = cache
            .get(ChunkId(1), &mut scratch, Use::Prefetch, &c)
            .expect("get");
        assert!(matches!(got, CachedChunk::Private(_)));
        drop(got);
        drop(
            cache
                .get(ChunkId(2), &mut scratch, Use::Fault, &c)
                .expect("get"),
        );
        let got = cache
            .get(ChunkId(2), &mut scratch, Use::Prefetch, &c)
            .expect("get");
        assert!(matches!(got, CachedChunk::Cached(_)), "a fault cached it");
    }

    #[test]
    fn a_full_shard_decodes_privately() {
        let (_dir, image) = image_with_chunks(MIN_CACHE_SLOTS + 1);
        let cache = ChunkCache::new(
            Arc::clone(&image),
            CacheOptions {
                capacity: 0,
                shards: 1,
            },
        );
        let c = Counters::default();
        let mut scratches: Vec<Scratch> = (0..=MIN_CACHE_SLOTS)
            .map(|_| Scratch::new(&image).expect("scratch"))
            .collect();
        let mut held = Vec::new();
        for (i, s) in scratches.iter_mut().enumerate() {
            held.push(
                cache
                    .get(ChunkId(i as u32), s, Use::Fault, &c)
                    .expect("good chunk"),
            );
        }
        assert!(matches!(held.last(), Some(CachedChunk::Private(_))));
        assert_eq!(c.cache_bypass.0.load(Ordering::Relaxed), 1);
    }
}
