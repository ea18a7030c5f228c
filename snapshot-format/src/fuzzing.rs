//! The bodies of the fuzz targets, shared by the cargo-fuzz harnesses in
//! `fuzz/` and by the corpus replay test (`tests/fuzz_corpus.rs`), so that a
//! finding fixed once stays fixed without the fuzzer.
//!
//! Not part of the crate's API (hidden from the documentation): each function
//! takes the fuzzer's bytes, builds whatever it needs around them, drives the
//! real reader paths and **panics** when a property the reader promises is
//! broken. A returned error is never a failure: refusing hostile input is the
//! point. The properties:
//!
//! - no panic (an arithmetic overflow, a slice out of bounds, an `expect`);
//! - a chunk decodes only to bytes whose xxh3-128 is the table's hash, and to
//!   exactly its declared raw length;
//! - decoding writes nothing outside `out[..raw_len]` of the caller's buffer
//!   (checked with a guard pattern behind the chunk, and by AddressSanitizer
//!   in the fuzz build);
//! - a damaged chunk gives a [`ChunkError::is_corrupt`] error, never another
//!   kind;
//! - allocation stays within the [limits](crate::limits) (enforced by the
//!   fuzzer's `-malloc_limit_mb` / `-rss_limit_mb`, see `fuzz/README.md`).
//!
//! | target          | input                                                              |
//! | --------------- | ------------------------------------------------------------------ |
//! | [`image_reader`] | any bytes, parsed as a whole image (one naming a parent gets [`fuzz_parent`]) |
//! | [`image_index`]  | `[u16 LE n][n bytes of chunk area][index]`, wrapped in a valid header and a footer whose checksum matches |
//! | [`chunk_frame`]  | `[flags][raw pages - 1][frame]`: one chunk with that frame, inside an image that passes validation |

use std::path::Path;
use std::sync::OnceLock;

use crate::codec::{ChunkDecoder, Codec, chunk_hash, is_zero};
use crate::error::{ChunkError, OpenError, ReadError, WriteError};
use crate::file::ImageFile;
use crate::image::{ChunkId, Image, PageSource};
use crate::index::{Blob, ChunkEntry, IndexRepr, RegionRepr, RunSource, encode_chunk, encode_run};
use crate::layout::{Footer, HEADER_LEN, Header};
use crate::limits::{MAX_CHUNK_RAW_LEN, MAX_CHUNK_STORED_LEN, MAX_PAGE_SIZE, MIN_PAGE_SIZE};
use crate::meta::{ParentRef, ProcessMetadata, RegionInfo};
use crate::writer::{ImageWriter, WriteSummary, WriterOptions};

/// Bytes of guard pattern kept behind every chunk buffer.
const GUARD_LEN: usize = 64;
/// The guard pattern (a decoder writing it by chance is vanishingly unlikely
/// to write it everywhere).
const GUARD: u8 = 0xa5;
/// A block of guard bytes to compare against: slices are compared with
/// `memcmp`, not byte by byte, which the fuzzer's comparison tracing would
/// make slow.
static GUARD_BLOCK: [u8; 4096] = [GUARD; 4096];
/// How many raw chunk bytes [`exercise`] decodes per input, at most, with
/// each of its two decoding paths.
const DECODE_BUDGET: usize = 64 << 20;
/// Where [`chunk_frame`] puts its one region.
const FRAME_REGION_START: u64 = 0x10_0000;

/// Wraps a chunk area and an index into a whole image: the v1 header,
/// `chunk_area`, `index`, and a footer whose offset, length and checksum
/// match. The image passes the header and footer checks; whether it opens
/// depends on the index.
pub fn wrap(chunk_area: &[u8], index: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN as usize + chunk_area.len() + index.len() + 48);
    out.extend_from_slice(&Header::encode());
    out.extend_from_slice(chunk_area);
    let footer = Footer {
        index_offset: out.len() as u64,
        index_len: index.len() as u64,
        index_hash: chunk_hash(index),
    };
    out.extend_from_slice(index);
    out.extend_from_slice(&footer.encode());
    out
}

/// Target `image_reader`: `data` parsed as a whole image; when it opens,
/// everything the reader offers is exercised.
///
/// An image naming a parent is resolved against [`fuzz_parent`] (its
/// identity must match what the image recorded, as when opening a chain
/// from files), which reaches the flattening of parent runs.
pub fn image_reader(data: &[u8]) {
    let Ok(top) = ImageFile::from_bytes(data) else {
        return;
    };
    let mut layers = vec![top];
    if layers[0].parent().is_some() {
        layers.push(ImageFile::from_bytes(fuzz_parent()).expect("the fuzz parent is valid"));
    }
    if let Ok(image) = Image::from_layers(layers) {
        exercise(&image);
    }
}

/// Target `image_index`: `data` is `[u16 LE n][n bytes of chunk area][index]`
/// (`n` clipped to what there is), wrapped by [`wrap`] so that every input
/// gets past the checksum into the msgpack scan, the schema decode and the
/// table validation.
pub fn image_index(data: &[u8]) {
    let Some((len, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let n = usize::from(u16::from_le_bytes(*len)).min(rest.len());
    let (chunk_area, index) = rest.split_at(n);
    image_reader(&wrap(chunk_area, index));
}

/// Flag bit of [`chunk_frame`]'s first byte: the chunk's codec is zstd
/// (else raw).
pub const FRAME_ZSTD: u8 = 1 << 0;
/// Flag bit: the table's hash is the hash of what the frame really decodes
/// to, when it decodes to the declared length (else a hash that cannot
/// match).
pub const FRAME_TRUE_HASH: u8 = 1 << 1;
/// Flag bit (raw codec only): pad or cut the frame to the declared raw length,
/// so that the table validation accepts it.
pub const FRAME_FIT: u8 = 1 << 2;
/// Flag bit: the image's page size is the largest supported (64 KiB) rather
/// than the smallest (4 KiB); raw lengths are counted in these pages.
pub const FRAME_BIG_PAGES: u8 = 1 << 3;

/// Target `chunk_frame`: one chunk with a hostile frame, decoded through the
/// real reader path.
///
/// ```text
/// byte 0      flags: FRAME_ZSTD | FRAME_TRUE_HASH | FRAME_FIT | FRAME_BIG_PAGES
/// byte 1      declared raw length in pages, minus one, modulo the most pages
///             a chunk may hold: 4 KiB to 1 MiB with 4 KiB pages, 64 KiB to
///             4 MiB (MAX_CHUNK_RAW_LEN) with 64 KiB pages
/// bytes 2..   the stored frame
/// ```
///
/// (One length byte rather than two keeps most inputs small: a fuzzer's
/// executions per second fall with the buffers it fills.)
///
/// The image around it is valid: one region exactly as long as the chunk's
/// raw length, one data run over all of it. The table validation must accept
/// it exactly when the frame length is legal for the codec; then:
///
/// - with the true hash, `decode_chunk` returns the bytes the frame decodes
///   to, and only when it decodes to exactly the declared length;
/// - otherwise it returns a corrupt-chunk error;
/// - it never writes outside `out[..raw_len]`, refuses a buffer one byte too
///   short without touching it, and gives the same answer twice in a row with
///   the same decoder (no state leaks from a hostile frame into the next);
/// - the range reader serves the same bytes, or the same refusal.
pub fn chunk_frame(data: &[u8]) {
    let Some((&[flags, pages], frame)) = data.split_first_chunk::<2>() else {
        return;
    };
    let codec = if flags & FRAME_ZSTD != 0 {
        Codec::Zstd
    } else {
        Codec::Raw
    };
    let page_size = if flags & FRAME_BIG_PAGES != 0 {
        MAX_PAGE_SIZE
    } else {
        MIN_PAGE_SIZE
    };
    let max_pages = MAX_CHUNK_RAW_LEN / page_size;
    let pages = u32::from(pages) % max_pages + 1;
    let raw_len = (pages * page_size) as usize;

    let mut frame = frame.to_vec();
    if codec == Codec::Raw && flags & FRAME_FIT != 0 {
        frame.resize(raw_len, 0);
    }
    let reference = reference_decode(codec, &frame, raw_len);
    let true_hash = reference.as_deref().map(chunk_hash);
    let hash = match true_hash {
        Some(h) if flags & FRAME_TRUE_HASH != 0 => h,
        // Any other value: xxh3-128 collisions are out of a fuzzer's reach.
        Some(h) => !h,
        None => chunk_hash(&frame),
    };
    let accepted = !frame.is_empty()
        && frame.len() <= MAX_CHUNK_STORED_LEN as usize
        && (codec == Codec::Zstd || frame.len() == raw_len);

    let bytes = one_chunk_image(page_size, codec, &frame, raw_len, hash);
    let image = match Image::from_bytes(&bytes) {
        Ok(image) => {
            assert!(
                accepted,
                "a {codec:?} frame of {} bytes for {raw_len} raw bytes was accepted",
                frame.len()
            );
            image
        }
        Err(err) => {
            assert!(
                !accepted && matches!(err, OpenError::BadChunk { chunk: 0, .. }),
                "a {codec:?} frame of {} bytes for {raw_len} raw bytes was refused: {err}",
                frame.len()
            );
            return;
        }
    };
    assert_eq!(image.max_chunk_raw_len(), raw_len);

    let id = ChunkId(0);
    let mut dec = ChunkDecoder::new().expect("a zstd context can be allocated");
    let mut buf = vec![GUARD; raw_len + GUARD_LEN];

    // One byte short: refused before anything is written.
    match image.decode_chunk(id, &mut dec, &mut buf[..raw_len - 1]) {
        Err(ChunkError::BufferTooSmall { need, have, .. }) => {
            assert_eq!((need, have), (raw_len, raw_len - 1));
        }
        other => panic!("a buffer one byte short gave {other:?}"),
    }
    assert!(all_guard(&buf), "a refused decode wrote into the buffer");

    let first = decode_guarded(&image, id, &mut dec, &mut buf);
    match (&first, &reference, true_hash == Some(hash)) {
        (Ok(n), Some(r), true) => {
            assert_eq!(*n, raw_len);
            assert!(
                buf[..raw_len] == r[..],
                "decoded bytes differ from the frame's content"
            );
        }
        (Err(e), Some(_), true) => panic!("a frame with its true hash was refused: {e}"),
        (Ok(_), _, _) => panic!("a chunk decoded although its hash cannot match"),
        (Err(e), _, _) => assert!(e.is_corrupt(), "a damaged chunk gave {e:?}"),
    }
    let second = decode_guarded(&image, id, &mut dec, &mut buf);
    assert_eq!(
        format!("{first:?}"),
        format!("{second:?}"),
        "the same chunk decoded differently the second time"
    );

    // The range reader agrees, at both ends of the region.
    let mut reader = image
        .range_reader()
        .expect("a zstd context can be allocated");
    let mut page = vec![0u8; page_size as usize];
    for at in [0, raw_len - page.len()] {
        let r = reader.read(FRAME_REGION_START + at as u64, &mut page);
        match (&r, &reference, &first) {
            (Ok(()), Some(reference), Ok(_)) => {
                assert!(
                    page[..] == reference[at..at + page.len()],
                    "range reader bytes differ"
                );
            }
            (Err(ReadError::Chunk(_)), _, Err(_)) => {}
            _ => panic!("range reader gave {r:?} where decode_chunk gave {first:?}"),
        }
    }
}

/// What the frame decodes to when it decodes to exactly `raw_len` bytes,
/// decoded independently of the reader (its own context, its own buffer).
fn reference_decode(codec: Codec, frame: &[u8], raw_len: usize) -> Option<Vec<u8>> {
    match codec {
        Codec::Raw => (frame.len() == raw_len).then(|| frame.to_vec()),
        Codec::Zstd => {
            let mut out = vec![0u8; raw_len];
            let mut z = zstd::bulk::Decompressor::new().expect("a zstd context can be allocated");
            match z.decompress_to_buffer(frame, &mut out[..]) {
                Ok(n) if n == raw_len => Some(out),
                _ => None,
            }
        }
    }
}

/// A valid image holding one chunk (`frame`, declared `raw_len` long with
/// `hash`) used by one region of exactly that length.
fn one_chunk_image(
    page_size: u32,
    codec: Codec,
    frame: &[u8],
    raw_len: usize,
    hash: u128,
) -> Vec<u8> {
    let pages = (raw_len / page_size as usize) as u64;
    build_image(
        page_size,
        None,
        &[(codec, frame, raw_len as u32, hash)],
        &[(
            RegionInfo::raw_file(FRAME_REGION_START, raw_len as u64),
            &[(
                pages,
                RunSource::Data {
                    chunk: 0,
                    offset: 0,
                },
            )],
        )],
    )
}

/// An image built by hand: `chunks` as `(codec, frame, raw length, hash)`,
/// frames stored back to back after the header; `regions` with their runs
/// as `(pages, source)`. Nothing is checked: that is the reader's job.
fn build_image(
    page_size: u32,
    parent: Option<ParentRef>,
    chunks: &[(Codec, &[u8], u32, u128)],
    regions: &[(RegionInfo, &[(u64, RunSource)])],
) -> Vec<u8> {
    let mut table = Vec::new();
    let mut frames = Vec::new();
    for &(codec, frame, raw_len, hash) in chunks {
        encode_chunk(
            &mut table,
            &ChunkEntry {
                offset: u64::from(HEADER_LEN) + frames.len() as u64,
                // Frames longer than u32 can hold are beyond a fuzzer's
                // inputs; saturate rather than wrap so the table still
                // refuses them.
                stored_len: u32::try_from(frame.len()).unwrap_or(u32::MAX),
                raw_len,
                codec,
                hash,
            },
        );
        frames.extend_from_slice(frame);
    }
    let run_tables: Vec<Vec<u8>> = regions
        .iter()
        .map(|(_, runs)| {
            let mut t = Vec::new();
            for &(pages, source) in *runs {
                encode_run(&mut t, pages, source, page_size);
            }
            t
        })
        .collect();
    let index = IndexRepr {
        page_size,
        chunk_size: MAX_CHUNK_RAW_LEN,
        metadata: ProcessMetadata::default(),
        parent,
        regions: regions
            .iter()
            .zip(&run_tables)
            .map(|((info, _), t)| RegionRepr {
                info: info.clone(),
                runs: Blob(t),
            })
            .collect(),
        chunks: Blob(&table),
    };
    let index = rmp_serde::to_vec_named(&index).expect("an index serializes");
    wrap(&frames, &index)
}

/// First address of the [`fuzz_parent`]'s regions: 16 pages, then 8 pages.
pub const FUZZ_PARENT_REGIONS: [(u64, u64); 2] = [(0x10_0000, 16 * 4096), (0x20_0000, 8 * 4096)];

/// The parent image that [`image_reader`] resolves every input naming a
/// parent against (whatever path it names), so that the target reaches
/// parent-chain resolution. Built by hand, so its bytes, and therefore its
/// identity, never change: seeds can name it (see `examples/fuzz_seeds.rs`).
///
/// 4 KiB pages; two raw chunks of 4 and 8 pages; region 0: 4 pages of chunk
/// 0, 4 zero pages, 8 pages of chunk 1; region 1: the second half of chunk
/// 1 (deduplicated), then 4 zero pages.
pub fn fuzz_parent() -> &'static [u8] {
    static PARENT: OnceLock<Vec<u8>> = OnceLock::new();
    PARENT.get_or_init(|| {
        let a: Vec<u8> = (0..4 * 4096u32).map(|i| (i % 251) as u8).collect();
        let b: Vec<u8> = (0..8 * 4096u32).map(|i| (i % 13) as u8 | 0x40).collect();
        let [(start0, len0), (start1, len1)] = FUZZ_PARENT_REGIONS;
        build_image(
            4096,
            None,
            &[
                (Codec::Raw, &a, a.len() as u32, chunk_hash(&a)),
                (Codec::Raw, &b, b.len() as u32, chunk_hash(&b)),
            ],
            &[
                (
                    RegionInfo::raw_file(start0, len0),
                    &[
                        (
                            4,
                            RunSource::Data {
                                chunk: 0,
                                offset: 0,
                            },
                        ),
                        (4, RunSource::Zero),
                        (
                            8,
                            RunSource::Data {
                                chunk: 1,
                                offset: 0,
                            },
                        ),
                    ],
                ),
                (
                    RegionInfo::raw_file(start1, len1),
                    &[
                        (
                            4,
                            RunSource::Data {
                                chunk: 1,
                                offset: 4 * 4096,
                            },
                        ),
                        (4, RunSource::Zero),
                    ],
                ),
            ],
        )
    })
}

/// Whether `b` holds only the guard pattern.
fn all_guard(b: &[u8]) -> bool {
    b.chunks(GUARD_BLOCK.len())
        .all(|c| c == &GUARD_BLOCK[..c.len()])
}

/// Decodes chunk `id` into `buf` (at least `max_chunk_raw_len`, plus guard
/// room) and checks what the reader promises about the result: nothing
/// written past the chunk's raw length, the right length and hash on
/// success, a corrupt-chunk error otherwise.
fn decode_guarded(
    image: &Image,
    id: ChunkId,
    dec: &mut ChunkDecoder,
    buf: &mut [u8],
) -> Result<usize, ChunkError> {
    let entry = image
        .chunk(id)
        .expect("the caller passes a chunk of the image")
        .entry;
    let raw_len = entry.raw_len as usize;
    buf[raw_len..].fill(GUARD);
    let r = image.decode_chunk(id, dec, buf);
    assert!(
        all_guard(&buf[raw_len..]),
        "decoding chunk {} wrote past its raw length {raw_len}",
        id.0
    );
    match &r {
        Ok(n) => {
            assert_eq!(*n, raw_len, "chunk {} decoded to the wrong length", id.0);
            assert_eq!(
                chunk_hash(&buf[..raw_len]),
                entry.hash,
                "chunk {} decoded to bytes that do not hash",
                id.0
            );
        }
        Err(e) => assert!(e.is_corrupt(), "chunk {} gave {e:?}", id.0),
    }
    r
}

/// Exercises everything an opened image offers and checks its consistency:
/// every chunk decoded (guarded), every chunk's uses inside it, every extent
/// located at both ends and read, the statistics of every layer.
///
/// Chunks are decoded (by `decode_chunk` and by the range reader) while
/// [`DECODE_BUDGET`] lasts: a few bytes of table can declare megabytes of
/// chunk, which is legitimate (that is what a chunk is) but would make a
/// fuzzer spend its time in `memset` and hashing.
fn exercise(image: &Image) {
    let mut dec = ChunkDecoder::new().expect("a zstd context can be allocated");
    let mut buf = vec![0u8; image.max_chunk_raw_len() + GUARD_LEN];
    // Per chunk: whether it decodes, when it was tried.
    let mut good = Vec::with_capacity(image.chunks().len());
    let mut budget = DECODE_BUDGET;
    for (i, c) in image.chunks().iter().enumerate() {
        let id = ChunkId(i as u32);
        let raw_len = c.entry.raw_len as usize;
        good.push((raw_len <= budget).then(|| {
            budget -= raw_len;
            decode_guarded(image, id, &mut dec, &mut buf).is_ok()
        }));
        for u in image.chunk_uses(id) {
            assert!(
                u64::from(u.offset) + u.len <= u64::from(c.entry.raw_len),
                "chunk {i} used beyond its raw length: {u:?}"
            );
        }
    }
    let mut reader = image
        .range_reader()
        .expect("a zstd context can be allocated");
    let mut page = vec![0u8; image.page_size() as usize];
    let mut prev_end = 0;
    let mut budget = DECODE_BUDGET;
    let mut last_read = None;
    for (i, e) in image.extents().iter().enumerate() {
        assert!(
            e.len > 0 && e.start >= prev_end,
            "extent {i} is empty or out of order: {e:?}"
        );
        prev_end = e.end();
        let first = image
            .locate(e.start)
            .expect("an extent's first byte is located");
        assert_eq!(
            (first.source, first.len, first.extent),
            (e.source, e.len, i)
        );
        let last = image
            .locate(e.end() - 1)
            .expect("an extent's last byte is located");
        assert_eq!((last.len, last.extent), (1, i));
        let mut decodes = None;
        if let PageSource::Chunk { chunk, .. } = e.source {
            // The reader keeps the last chunk it decoded.
            let cost = if last_read == Some(chunk) {
                0
            } else {
                image.chunks()[chunk.0 as usize].entry.raw_len as usize
            };
            match good[chunk.0 as usize] {
                Some(ok) if cost <= budget => {
                    budget -= cost;
                    last_read = Some(chunk);
                    decodes = Some(ok);
                }
                _ => continue,
            }
        }
        let n = page.len().min(usize::try_from(e.len).unwrap_or(usize::MAX));
        let r = reader.read(e.start, &mut page[..n]);
        match (e.source, &r, decodes) {
            (PageSource::Zero, Ok(()), _) => assert!(is_zero(&page[..n])),
            (PageSource::Chunk { .. }, Ok(()), Some(true)) => {}
            (PageSource::Chunk { .. }, Err(ReadError::Chunk(_)), Some(false)) => {}
            (PageSource::File { .. }, Err(ReadError::FileBacked { .. }), _) => {}
            _ => panic!("reading extent {e:?} gave {r:?} (chunk decodes: {decodes:?})"),
        }
    }
    for layer in image.layers() {
        let _ = layer.stats();
    }
}

/// Writes an incremental image over [`fuzz_parent`] at `path` (naming it
/// as `fuzz-parent.lzr`): parent ranges, three changed pages, a region of
/// its own. Seeds [`image_reader`]'s parent-chain resolution.
pub fn write_fuzz_child(path: &Path) -> Result<WriteSummary, WriteError> {
    let id = ImageFile::from_bytes(fuzz_parent())
        .expect("the fuzz parent is valid")
        .id();
    let opts = WriterOptions {
        chunk_size: 8192,
        parent: Some(ParentRef {
            path: "fuzz-parent.lzr".into(),
            id,
        }),
        ..WriterOptions::default()
    };
    let mut w = ImageWriter::create(path, opts)?;
    let [(start0, len0), (start1, len1)] = FUZZ_PARENT_REGIONS;
    let page = 4096;
    w.begin_region(RegionInfo::raw_file(start0, len0))?;
    w.write_parent(start0, 4 * page)?;
    let changed: Vec<u8> = (0..3 * page).map(|i| (i % 7) as u8 + 1).collect();
    w.write_pages(start0 + 4 * page, &changed)?;
    w.write_parent(start0 + 7 * page, len0 - 7 * page)?;
    w.begin_region(RegionInfo::raw_file(start1, len1))?;
    w.write_parent(start1, len1)?;
    w.begin_region(RegionInfo::raw_file(0x30_0000, 2 * page))?;
    w.write_pages(0x30_0000, &changed[..2 * page as usize])?;
    w.finish()
}

/// The [`image_index`] input that wraps back into `image` byte for byte:
/// `None` when `image` does not open, has a longer header than v1's, or a
/// chunk area longer than the input's `u16` can state. Seeds the target from
/// real images.
pub fn image_index_input(image: &[u8]) -> Option<Vec<u8>> {
    let file = ImageFile::from_bytes(image).ok()?;
    let (offset, len) = file.index_range();
    if file.header_len() != HEADER_LEN {
        return None;
    }
    let (offset, len) = (usize::try_from(offset).ok()?, usize::try_from(len).ok()?);
    let chunk_area = &image[HEADER_LEN as usize..offset];
    let mut out = u16::try_from(chunk_area.len()).ok()?.to_le_bytes().to_vec();
    out.extend_from_slice(chunk_area);
    out.extend_from_slice(&image[offset..offset + len]);
    Some(out)
}

/// [`chunk_frame`] inputs for the chunks of `image`, each with its true
/// hash, so each must decode: one per chunk whose raw length the input's
/// length byte can state (every chunk up to 1 MiB, and 64 KiB multiples up
/// to the limit). Seeds the target from real frames.
pub fn chunk_frame_inputs(image: &ImageFile) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (i, c) in image.chunks().iter().enumerate() {
        let raw_len = c.raw_len;
        let (big, page_size) = if raw_len / MIN_PAGE_SIZE <= 256 {
            (0, MIN_PAGE_SIZE)
        } else {
            (FRAME_BIG_PAGES, MAX_PAGE_SIZE)
        };
        if !raw_len.is_multiple_of(page_size) {
            continue;
        }
        let codec = match c.codec {
            Codec::Raw => 0,
            Codec::Zstd => FRAME_ZSTD,
        };
        // At most 256 pages of either size: fits the byte.
        let pages = (raw_len / page_size - 1) as u8;
        let frame = image
            .chunk_frame(i as u32)
            .expect("a chunk of the table has a frame");
        let mut input = vec![codec | FRAME_TRUE_HASH | big, pages];
        input.extend_from_slice(frame);
        out.push(input);
    }
    out
}
