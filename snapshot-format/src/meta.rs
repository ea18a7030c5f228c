//! The typed, extensible descriptions stored in the index: process metadata,
//! memory regions, file identities and the parent reference.
//!
//! These are encoded as msgpack maps with named fields
//! (`rmp_serde::to_vec_named`), so they evolve without breaking old images:
//!
//! - **Adding a field**: give it `#[serde(default)]` (optional data) and add it
//!   anywhere in the struct. Old images decode with the default; old readers
//!   skip the unknown key. No version bump is needed.
//! - **Changing the meaning** of existing data: bump
//!   [`METADATA_VERSION`]. Readers refuse a metadata version newer than the
//!   one they were built with ([`OpenError::UnsupportedMetadataVersion`](crate::OpenError)),
//!   rather than misread it.
//!
//! Paths are kept as raw bytes in msgpack (Linux paths need not be UTF-8) and
//! shown as (lossy) strings by human-readable serializers such as JSON, which
//! is what `lazarus inspect --json` prints.

use std::ffi::OsString;
use std::fmt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::process::ProcessState;

/// The process metadata version this crate writes and the newest it reads.
pub const METADATA_VERSION: u32 = 1;

/// Identity of an image: the xxh3-128 hash of its index. The index holds the
/// hash of every chunk and the whole page map, so two images with the same id
/// hold the same memory. A child image names its parent by this id, so a
/// parent that was rewritten (even with identical memory but a different
/// layout) is detected.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageId(pub [u8; 16]);

impl ImageId {
    /// The id as 32 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ImageId({self})")
    }
}

impl Serialize for ImageId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_hex())
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for ImageId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = d.deserialize_bytes(BytesOrStr)?;
        let arr: [u8; 16] = if bytes.len() == 32 {
            // Hex form, from a human-readable format.
            let mut arr = [0u8; 16];
            for (i, pair) in bytes.chunks_exact(2).enumerate() {
                let s = std::str::from_utf8(pair).map_err(serde::de::Error::custom)?;
                arr[i] = u8::from_str_radix(s, 16).map_err(serde::de::Error::custom)?;
            }
            arr
        } else {
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| serde::de::Error::invalid_length(bytes.len(), &"16 bytes"))?
        };
        Ok(Self(arr))
    }
}

/// Visitor accepting msgpack `bin` and `str` (and, for hand-written JSON,
/// arrays of bytes).
struct BytesOrStr;

impl<'de> serde::de::Visitor<'de> for BytesOrStr {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bytes or a string")
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
        Ok(v.as_bytes().to_vec())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut out = Vec::new();
        while let Some(b) = seq.next_element::<u8>()? {
            out.push(b);
        }
        Ok(out)
    }
}

/// Serde adapter for `PathBuf` fields: raw bytes in msgpack, a (lossy) string
/// in human-readable formats.
pub(crate) mod path_bytes {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&p.to_string_lossy())
        } else {
            s.serialize_bytes(p.as_os_str().as_bytes())
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
        let bytes = d.deserialize_bytes(BytesOrStr)?;
        Ok(PathBuf::from(OsString::from_vec(bytes)))
    }
}

/// Serde adapter for `Option<PathBuf>` fields.
pub(crate) mod opt_path_bytes {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(p: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct W<'a>(#[serde(with = "path_bytes")] &'a Path);
        match p {
            Some(p) => s.serialize_some(&W(p)),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<PathBuf>, D::Error> {
        #[derive(Deserialize)]
        struct W(#[serde(with = "path_bytes")] PathBuf);
        Ok(Option::<W>::deserialize(d)?.map(|w| w.0))
    }
}

/// Serde adapter for raw byte fields (register sets): `bin` in msgpack, a
/// lowercase hex string in human-readable formats.
pub(crate) mod hex_bytes {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            let mut hex = String::with_capacity(b.len() * 2);
            for byte in b {
                hex.push_str(&format!("{byte:02x}"));
            }
            s.serialize_str(&hex)
        } else {
            s.serialize_bytes(b)
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        if !d.is_human_readable() {
            return d.deserialize_bytes(BytesOrStr);
        }
        let text = d.deserialize_str(BytesOrStr)?;
        if text.len() % 2 != 0 {
            return Err(serde::de::Error::custom("odd number of hex digits"));
        }
        text.chunks_exact(2)
            .map(|pair| {
                std::str::from_utf8(pair)
                    .ok()
                    .and_then(|s| u8::from_str_radix(s, 16).ok())
                    .ok_or_else(|| serde::de::Error::custom("not a hex string"))
            })
            .collect()
    }
}

/// Metadata of the captured process (or of the imported memory file).
///
/// Every field is optional on decode (`#[serde(default)]`), so fields can be
/// added by later captures without breaking old images. What only live
/// process captures record (threads, signal handlers, mm fields, file
/// descriptors, rlimits) is grouped in [`ProcessMetadata::process`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcessMetadata {
    /// Version of the metadata semantics ([`METADATA_VERSION`]).
    pub version: u32,
    /// Process id at capture time.
    pub pid: Option<u32>,
    /// Command line (lossy UTF-8; informational).
    pub cmdline: Vec<String>,
    /// Executable path.
    #[serde(with = "opt_path_bytes")]
    pub exe: Option<PathBuf>,
    /// Kernel release (`uname -r`) of the capturing machine.
    pub kernel_release: Option<String>,
    /// Page size of the captured process, in bytes. The image's own page
    /// granularity is [`ImageFile::page_size`](crate::ImageFile::page_size).
    pub page_size: Option<u32>,
    /// When the capture started.
    pub captured_at: Option<SystemTime>,
    /// For `lazarus capture --from-file`: the imported file.
    pub source_file: Option<SourceFile>,
    /// For `lazarus capture --pid`: threads, signal handlers, mm fields,
    /// file descriptors, limits (see [`ProcessState`]).
    pub process: Option<ProcessState>,
}

impl Default for ProcessMetadata {
    fn default() -> Self {
        Self {
            version: METADATA_VERSION,
            pid: None,
            cmdline: Vec::new(),
            exe: None,
            kernel_release: None,
            page_size: None,
            captured_at: None,
            source_file: None,
            process: None,
        }
    }
}

/// A raw memory file imported with `capture --from-file`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFile {
    /// The path it was imported from.
    #[serde(with = "path_bytes")]
    pub path: PathBuf,
    /// Its exact length in bytes. Regions are whole pages; a file whose length
    /// is not a page multiple is padded with zeros, and `extract` truncates
    /// back to this length.
    pub len: u64,
}

/// Memory protection of a region.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Protection {
    /// `PROT_READ`.
    pub read: bool,
    /// `PROT_WRITE`.
    pub write: bool,
    /// `PROT_EXEC`.
    pub exec: bool,
}

impl Protection {
    /// Read and write.
    pub const READ_WRITE: Self = Self {
        read: true,
        write: true,
        exec: false,
    };
}

impl fmt::Display for Protection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = |on: bool, ch: char| if on { ch } else { '-' };
        write!(
            f,
            "{}{}{}",
            c(self.read, 'r'),
            c(self.write, 'w'),
            c(self.exec, 'x')
        )
    }
}

/// What a region is. Unknown kinds written by newer versions decode as
/// [`RegionKind::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegionKind {
    /// Private anonymous memory.
    Anonymous,
    /// The `[heap]` (brk area).
    Heap,
    /// A `[stack]` (main thread stack; grows down).
    Stack,
    /// A private mapping of a file: unmodified pages come from the file.
    FilePrivate,
    /// A shared mapping of a regular file.
    FileShared,
    /// Shared anonymous memory or SysV shm (`/dev/zero (deleted)`, `SYSV...`).
    Shmem,
    /// A mapping of a memfd (`/memfd:...`).
    Memfd,
    /// `[vdso]`.
    Vdso,
    /// `[vvar]`.
    Vvar,
    /// `[vvar_vclock]` (Linux 6.x).
    VvarVclock,
    /// A guard area (`PROT_NONE`, no content).
    Guard,
    /// A range of a raw memory file (`capture --from-file`): address equals
    /// file offset.
    RawFile,
    /// Anything else, including kinds written by a newer version.
    #[serde(other)]
    Other,
}

impl fmt::Display for RegionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Self::Anonymous => "anonymous",
            Self::Heap => "heap",
            Self::Stack => "stack",
            Self::FilePrivate => "file_private",
            Self::FileShared => "file_shared",
            Self::Shmem => "shmem",
            Self::Memfd => "memfd",
            Self::Vdso => "vdso",
            Self::Vvar => "vvar",
            Self::VvarVclock => "vvar_vclock",
            Self::Guard => "guard",
            Self::RawFile => "raw_file",
            Self::Other => "other",
        };
        f.write_str(s)
    }
}

/// Identity of a file at capture time, so that restore can refuse a file that
/// changed since (`stat` fields).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub inode: u64,
    /// `st_size`.
    pub size: u64,
    /// `st_mtime` seconds.
    pub mtime_sec: i64,
    /// `st_mtime` nanoseconds.
    pub mtime_nsec: u32,
}

/// The file behind a file mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMapping {
    /// Path of the mapped file.
    #[serde(with = "path_bytes")]
    pub path: PathBuf,
    /// File offset of the region's first byte.
    pub offset: u64,
    /// The file's identity at capture time.
    pub identity: FileIdentity,
}

/// Description of one memory region (a VMA, or a range of a raw memory file).
/// Its page map (runs) is kept separately.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionInfo {
    /// First address (page aligned).
    pub start: u64,
    /// Length in bytes (a positive multiple of the page size).
    pub len: u64,
    /// Protection.
    pub prot: Protection,
    /// `MAP_SHARED` (true) or `MAP_PRIVATE` (false).
    pub shared: bool,
    /// What the region is.
    pub kind: RegionKind,
    /// The name `/proc/PID/maps` shows for non-file regions (`[heap]`,
    /// `[anon:name]`), if any.
    #[serde(default)]
    pub name: Option<String>,
    /// For file mappings: the file, offset and identity.
    #[serde(default)]
    pub file: Option<FileMapping>,
}

impl RegionInfo {
    /// A private read-write region of a raw memory file, as
    /// `capture --from-file` writes.
    pub fn raw_file(start: u64, len: u64) -> Self {
        Self {
            start,
            len,
            prot: Protection::READ_WRITE,
            shared: false,
            kind: RegionKind::RawFile,
            name: None,
            file: None,
        }
    }

    /// One past the last address (`start + len`, saturating).
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.len)
    }
}

/// Reference from a child image to its parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentRef {
    /// Path of the parent, relative to the child's directory (or absolute).
    #[serde(with = "path_bytes")]
    pub path: PathBuf,
    /// The parent's identity.
    pub id: ImageId,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_region_kind_decodes_as_other() {
        let bytes = rmp_serde::to_vec_named(&"hugetlb_future").unwrap();
        let kind: RegionKind = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(kind, RegionKind::Other);
        let bytes = rmp_serde::to_vec_named(&RegionKind::VvarVclock).unwrap();
        let kind: RegionKind = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(kind, RegionKind::VvarVclock);
    }

    #[test]
    fn metadata_tolerates_missing_and_unknown_fields() {
        #[derive(Serialize)]
        struct Future {
            version: u32,
            pid: u32,
            threads: Vec<u32>,
        }
        let bytes = rmp_serde::to_vec_named(&Future {
            version: 1,
            pid: 7,
            threads: vec![1, 2],
        })
        .unwrap();
        let m: ProcessMetadata = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(m.pid, Some(7));
        assert!(m.cmdline.is_empty());
    }

    #[test]
    fn non_utf8_paths_survive_msgpack_and_show_in_json() {
        let path = PathBuf::from(OsString::from_vec(b"/tmp/\xffx".to_vec()));
        let m = ProcessMetadata {
            exe: Some(path.clone()),
            ..Default::default()
        };
        let bytes = rmp_serde::to_vec_named(&m).unwrap();
        let back: ProcessMetadata = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back.exe, Some(path));
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains("/tmp/"));
    }

    #[test]
    fn image_id_hex_and_bytes() {
        let id = ImageId([0xab; 16]);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{}\"", "ab".repeat(16)));
        let back: ImageId = serde_json::from_str(&json).unwrap();
        assert_eq!(back, id);
        let bytes = rmp_serde::to_vec_named(&id).unwrap();
        let back: ImageId = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back, id);
    }
}
