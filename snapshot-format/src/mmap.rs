//! Read-only memory mapping of an image file: the only `unsafe` in this
//! crate.

use std::fs::File;
use std::io;

/// A read-only shared mapping of a whole file.
pub(crate) fn map_file(file: &File) -> io::Result<memmap2::Mmap> {
    // SAFETY: memmap2 requires that the mapped file is not modified or
    // truncated while mapped, because the mapping would then change under
    // `&[u8]` borrows (or raise SIGBUS past a truncation). Images are written
    // once to a temporary name and renamed into place, never modified in
    // place by Lazarus; an outside process that truncates an open image is
    // outside what the format can defend against, and this is documented on
    // `ImageFile::open`. The mapping is read-only (PROT_READ, MAP_SHARED).
    unsafe { memmap2::Mmap::map(file) }
}
