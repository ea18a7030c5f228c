//! The content the benchmarks run on: real process memory (the *memory
//! sample*) and synthetic pages.
//!
//! # The memory sample
//!
//! Synthetic patterns say little about how real memory compresses, so the
//! codec and read benchmarks run on memory read from three live processes,
//! captured once and cached as `.lzr` images:
//!
//! | source        | what it is                                                         |
//! | ------------- | ------------------------------------------------------------------ |
//! | `self-heap`   | this benchmark process after building a document index of about 64 MiB (`Vec` of records with strings, word-id vectors, floats, plus a `HashMap<String, usize>` and a `BTreeMap<u32, Vec<u32>>` posting list): 87 MiB of non-zero pages in all |
//! | `python-dict` | `python3` holding a dict of 100 000 user records (`"user:00000042" -> {"id", "name", "email", "score", "tags", "visits"}`): CPython objects, 74 MiB |
//! | `kvserver`    | the `fixtures` program `kvserver --mib 64`: a `HashMap<u64, Box<Record>>` whose payloads are chains of boxed nodes holding random 64-bit words (pointer-heavy and mostly incompressible): 63 MiB |
//!
//! What is read is what a process capture stores: for every private,
//! readable mapping (except `[vvar]`, `[vvar_vclock]`, `[vdso]`,
//! `[vsyscall]`), the pages `/proc/PID/pagemap` reports present (or swapped)
//! and anonymous — heap, stacks, anonymous mappings, and copied-on-write
//! pages of file mappings — read through `/proc/PID/mem`. Pages never
//! touched, and unmodified pages of files, are left out as capture leaves
//! them out.
//!
//! The images go to `<target>/lazarus-memory-sample/v1/` (or
//! `$LAZARUS_MEMORY_SAMPLE_DIR`); delete the directory to capture afresh.
//! Capturing `kvserver` needs it built in the same profile as the benchmark
//! (`cargo build --release -p fixtures`, or `$LAZARUS_FIXTURES_DIR`); a
//! source that cannot be captured (no `python3`, no `kvserver`) is skipped
//! with a warning, and the benchmarks print which sources they ran on.
//!
//! In criterion's test mode (`cargo test --benches`, `cargo nextest run
//! --all-targets`) nothing is cached and no process is started: the sample is
//! a few MiB of this process's own memory, so every benchmark runs once,
//! quickly, through the same code.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fixtures::pattern::{self, PageKind};
use fixtures::procmem;
use snapshot_format::{
    Image, ImageWriter, PageSource, ProcessMetadata, Protection, RegionInfo, RegionKind,
    WriteSummary, WriterOptions,
};

/// Bytes per page of every sample and synthetic input.
pub(crate) const PAGE: usize = 4096;

/// One MiB.
pub(crate) const MIB: u64 = 1 << 20;

/// Bumped when the capture rules change, so that an old cache is not reused.
const SAMPLE_VERSION: &str = "v1";

/// Where the cached sample lives, when not in `<target>/lazarus-memory-sample`.
const SAMPLE_DIR_ENV: &str = "LAZARUS_MEMORY_SAMPLE_DIR";

/// Most bytes read from one process: bounds the sample if a process is far
/// larger than expected.
const MAX_SOURCE_BYTES: u64 = 512 << 20;

/// Bytes per `/proc/PID/mem` read.
const READ_PIECE: usize = 4 << 20;

/// How long a process may take to build its data and say `READY`.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Whether criterion measures (`cargo bench`: `--bench` without `--test`)
/// rather than running each benchmark once as a test.
pub(crate) fn measuring() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test")
}

/// Consecutive pages read from a process: `bytes` at `addr`. Runs loaded
/// from an image hold only non-zero pages (the writer dropped the others).
#[derive(Debug)]
pub(crate) struct DataRun {
    pub(crate) addr: u64,
    pub(crate) bytes: Vec<u8>,
}

/// One mapping of a sampled process and the pages read from it.
#[derive(Debug)]
pub(crate) struct SampleRegion {
    pub(crate) info: RegionInfo,
    pub(crate) runs: Vec<DataRun>,
}

/// The memory of one process.
#[derive(Debug)]
pub(crate) struct Source {
    pub(crate) name: &'static str,
    pub(crate) regions: Vec<SampleRegion>,
}

impl Source {
    /// Bytes of page data held.
    pub(crate) fn data_bytes(&self) -> u64 {
        self.regions
            .iter()
            .flat_map(|r| &r.runs)
            .map(|d| d.bytes.len() as u64)
            .sum()
    }
}

/// The memory sample: see the [module documentation](self).
#[derive(Debug)]
pub(crate) struct Sample {
    pub(crate) sources: Vec<Source>,
}

impl fmt::Display for Sample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "memory sample:")?;
        for (i, s) in self.sources.iter().enumerate() {
            write!(
                f,
                "{} {} ({} regions, {:.1} MiB of non-zero pages)",
                if i == 0 { "" } else { ";" },
                s.name,
                s.regions.len(),
                mib(s.data_bytes()),
            )?;
        }
        Ok(())
    }
}

/// `bytes` in MiB.
pub(crate) fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

/// The memory sample, captured or loaded on first use.
pub(crate) fn sample() -> &'static Sample {
    static SAMPLE: OnceLock<Sample> = OnceLock::new();
    SAMPLE.get_or_init(|| {
        let started = Instant::now();
        let sample = if measuring() {
            cached_sample()
        } else {
            quick_sample()
        }
        .unwrap_or_else(|e| panic!("memory sample: {e}"));
        eprintln!("{sample} ({:.1} s)", started.elapsed().as_secs_f64());
        sample
    })
}

/// Test mode: a few MiB of this process, after building a small index,
/// through a temporary image like the cached sample.
fn quick_sample() -> io::Result<Sample> {
    let index = DocIndex::build(2 << 20);
    let source = capture_process("self-heap", std::process::id(), 8 << 20)?;
    drop(index);
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("self-heap.lzr");
    let source = store_and_load(&source, &path)?;
    Ok(Sample {
        sources: vec![source],
    })
}

/// Writes `source` to an image at `path` and reads it back: the pages
/// exactly as an image holds them (zero pages dropped).
fn store_and_load(source: &Source, path: &Path) -> io::Result<Source> {
    write_image(&[source], path, &cache_options())
        .map_err(|e| io::Error::other(format!("writing {}: {e}", path.display())))?;
    load_source(source.name, path)
        .map_err(|e| io::Error::other(format!("reading {}: {e}", path.display())))
}

/// Bench mode: the cached sample, captured first if missing.
fn cached_sample() -> io::Result<Sample> {
    let dir = sample_dir()?;
    std::fs::create_dir_all(&dir)?;
    let mut sources = Vec::new();
    type Capture = fn() -> io::Result<Source>;
    let all: [(&'static str, Capture); 3] = [
        ("self-heap", capture_self),
        ("python-dict", capture_python),
        ("kvserver", capture_kvserver),
    ];
    for (name, capture) in all {
        let path = dir.join(format!("{name}.lzr"));
        if let Ok(source) = load_source(name, &path) {
            sources.push(source);
            continue;
        }
        eprintln!("memory sample: capturing {name} into {}", path.display());
        match capture() {
            Ok(source) => sources.push(store_and_load(&source, &path)?),
            Err(e) => eprintln!("memory sample: WARNING: {name} skipped: {e}"),
        }
    }
    if sources.is_empty() {
        return Err(io::Error::other("no source could be captured"));
    }
    Ok(Sample { sources })
}

fn cache_options() -> WriterOptions {
    WriterOptions {
        workers: 2,
        ..WriterOptions::default()
    }
}

/// `$LAZARUS_MEMORY_SAMPLE_DIR`, else `<target>/lazarus-memory-sample/v1`
/// (the bench executable is `<target>/<profile>/deps/<name>`).
fn sample_dir() -> io::Result<PathBuf> {
    if let Some(dir) = std::env::var_os(SAMPLE_DIR_ENV) {
        return Ok(PathBuf::from(dir).join(SAMPLE_VERSION));
    }
    let exe = std::env::current_exe()?;
    let target = exe.ancestors().nth(3).ok_or_else(|| {
        io::Error::other(format!(
            "cannot find the target directory above {}: set {SAMPLE_DIR_ENV}",
            exe.display()
        ))
    })?;
    Ok(target.join("lazarus-memory-sample").join(SAMPLE_VERSION))
}

/// Reads a cached source back: every region, and its data extents as runs.
fn load_source(name: &'static str, path: &Path) -> Result<Source, String> {
    let image = Image::open(path).map_err(|e| e.to_string())?;
    let mut reader = image.range_reader().map_err(|e| e.to_string())?;
    let mut regions = Vec::new();
    for (r, info) in image.regions().iter().enumerate() {
        let mut runs: Vec<DataRun> = Vec::new();
        for e in image.region_extents(r) {
            if !matches!(e.source, PageSource::Chunk { .. }) {
                continue;
            }
            let len = usize::try_from(e.len).map_err(|e| e.to_string())?;
            let mut bytes = vec![0u8; len];
            reader
                .read(e.start, &mut bytes)
                .map_err(|e| e.to_string())?;
            match runs.last_mut() {
                Some(last) if last.addr + last.bytes.len() as u64 == e.start => {
                    last.bytes.extend_from_slice(&bytes);
                }
                _ => runs.push(DataRun {
                    addr: e.start,
                    bytes,
                }),
            }
        }
        regions.push(SampleRegion {
            info: info.clone(),
            runs,
        });
    }
    Ok(Source { name, regions })
}

/// Writes `sources` into one image at `path`. Several sources are placed
/// side by side: source `i`'s addresses are offset by `i << 47` (user
/// addresses are below 2^47 on x86-64), keeping every page's alignment.
pub(crate) fn write_image(
    sources: &[&Source],
    path: &Path,
    opts: &WriterOptions,
) -> Result<WriteSummary, snapshot_format::WriteError> {
    let mut w = ImageWriter::create(path, opts.clone())?;
    if let [single] = sources {
        w.set_metadata(metadata_of(single));
    }
    for (i, s) in sources.iter().enumerate() {
        let base = (i as u64) << 47;
        for r in &s.regions {
            let mut info = r.info.clone();
            info.start += base;
            w.begin_region(info)?;
            for run in &r.runs {
                w.write_pages(base + run.addr, &run.bytes)?;
            }
        }
    }
    w.finish()
}

fn metadata_of(source: &Source) -> ProcessMetadata {
    ProcessMetadata {
        cmdline: vec![format!("lazarus memory sample: {}", source.name)],
        page_size: Some(PAGE as u32),
        captured_at: Some(std::time::SystemTime::now()),
        ..ProcessMetadata::default()
    }
}

/// One line of `/proc/PID/maps` worth reading.
#[derive(Debug)]
struct Mapping {
    start: u64,
    end: u64,
    prot: Protection,
    name: String,
}

/// The private, readable mappings of `pid`, minus the kernel's special ones.
fn private_mappings(pid: u32) -> io::Result<Vec<Mapping>> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let bad = |line: &str| io::Error::other(format!("unexpected /proc/{pid}/maps line: {line}"));
    let mut out = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_ascii_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            return Err(bad(line));
        };
        // offset, device, inode; the rest is the name (paths may hold spaces).
        let name = fields.skip(3).collect::<Vec<_>>().join(" ");
        let (start, end) = range.split_once('-').ok_or_else(|| bad(line))?;
        let parse = |s| u64::from_str_radix(s, 16).map_err(|_| bad(line));
        let (start, end) = (parse(start)?, parse(end)?);
        let p = perms.as_bytes();
        if p.len() != 4 || p[0] != b'r' || p[3] != b'p' {
            continue;
        }
        if matches!(
            name.as_str(),
            "[vvar]" | "[vvar_vclock]" | "[vdso]" | "[vsyscall]"
        ) {
            continue;
        }
        out.push(Mapping {
            start,
            end,
            prot: Protection {
                read: true,
                write: p[1] == b'w',
                exec: p[2] == b'x',
            },
            name,
        });
    }
    Ok(out)
}

/// Reads what a capture of `pid` would store (see the module docs), at most
/// `cap` bytes.
fn capture_process(name: &'static str, pid: u32, cap: u64) -> io::Result<Source> {
    let mut regions = Vec::new();
    let mut total = 0u64;
    for m in private_mappings(pid)? {
        if total >= cap {
            break;
        }
        let pages = ((m.end - m.start) / PAGE as u64) as usize;
        let entries = procmem::pagemap(pid, m.start, pages)?;
        let stored = |i: usize| {
            let e = entries[i];
            (e.present() || e.swapped()) && !e.file_or_shared()
        };
        let mut runs = Vec::new();
        let mut i = 0;
        while i < pages && total < cap {
            if !stored(i) {
                i += 1;
                continue;
            }
            let first = i;
            let limit = first + READ_PIECE / PAGE;
            while i < pages && i < limit && stored(i) {
                i += 1;
            }
            let addr = m.start + (first * PAGE) as u64;
            let bytes = match procmem::read_mem(pid, addr, (i - first) * PAGE) {
                Ok(b) => b,
                // EIO: the range was unmapped since maps was read (our own
                // process unmaps as it frees large allocations).
                Err(e) if e.raw_os_error() == Some(libc::EIO) => continue,
                Err(e) => return Err(e),
            };
            total += bytes.len() as u64;
            match runs.last_mut() {
                Some(DataRun { addr: a, bytes: b }) if *a + b.len() as u64 == addr => {
                    b.extend_from_slice(&bytes);
                }
                _ => runs.push(DataRun { addr, bytes }),
            }
        }
        if runs.is_empty() {
            continue;
        }
        let kind = match m.name.as_str() {
            "[heap]" => RegionKind::Heap,
            "[stack]" => RegionKind::Stack,
            n if n.is_empty() || n.starts_with("[anon") => RegionKind::Anonymous,
            _ => RegionKind::Other,
        };
        regions.push(SampleRegion {
            info: RegionInfo {
                start: m.start,
                len: m.end - m.start,
                prot: m.prot,
                shared: false,
                kind,
                name: (!m.name.is_empty()).then_some(m.name),
                file: None,
            },
            runs,
        });
    }
    if regions.is_empty() {
        return Err(io::Error::other(format!(
            "process {pid} has no private anonymous page to read"
        )));
    }
    Ok(Source { name, regions })
}

/// This process, holding a 64 MiB document index.
fn capture_self() -> io::Result<Source> {
    let index = DocIndex::build(64 << 20);
    let source = capture_process("self-heap", std::process::id(), MAX_SOURCE_BYTES);
    drop(index);
    source
}

/// The Python program behind `python-dict`: builds the dict, says `READY`
/// with its pid, then sleeps until killed.
const PYTHON_DICT: &str = r#"
import os, random, sys, time
rng = random.Random(1)
letters = "abcdefghijklmnopqrstuvwxyz"
words = ["alpha", "beta", "gamma", "delta", "prod", "staging", "eu-west", "us-east",
         "admin", "guest", "beta-tester", "premium"]
n = int(sys.argv[1])
users = {}
for i in range(n):
    users[f"user:{i:08d}"] = {
        "id": i,
        "name": "".join(rng.choices(letters, k=rng.randint(5, 12))),
        "email": f"user{i}@example.com",
        "score": rng.random() * 100,
        "tags": rng.sample(words, 3),
        "visits": rng.randint(0, 10000),
    }
print(f"READY pid={os.getpid()} entries={n}", flush=True)
time.sleep(3600)
"#;

fn capture_python() -> io::Result<Source> {
    let mut cmd = Command::new("python3");
    cmd.args(["-c", PYTHON_DICT, "100000"]);
    let mut fx = fixtures::Fixture::from_command("python-dict", cmd)?;
    let ready = fx
        .try_wait_ready(READY_TIMEOUT)
        .map_err(|e| io::Error::other(e.to_string()))?;
    let pid = ready
        .try_u64("pid")
        .map_err(|e| io::Error::other(e.to_string()))?;
    let pid = u32::try_from(pid).map_err(io::Error::other)?;
    capture_process("python-dict", pid, MAX_SOURCE_BYTES)
}

fn capture_kvserver() -> io::Result<Source> {
    fixtures::try_binary("kvserver").map_err(io::Error::other)?;
    // One batch of requests, then a sleep far longer than the capture.
    let mut fx = fixtures::Fixture::spawn("kvserver", ["--mib", "64", "--interval-ms", "3600000"])?;
    fx.try_wait_ready(READY_TIMEOUT)
        .map_err(|e| io::Error::other(e.to_string()))?;
    capture_process("kvserver", fx.pid(), MAX_SOURCE_BYTES)
}

/// A document index, the big structure of `self-heap`: records with
/// strings, word ids and scores, a title map and a posting list.
struct DocIndex {
    _docs: Vec<Doc>,
    _by_title: HashMap<String, usize>,
    _postings: BTreeMap<u32, Vec<u32>>,
}

struct Doc {
    _id: u64,
    _title: String,
    _words: Vec<u32>,
    _score: f64,
    _tags: Vec<String>,
}

const VOCABULARY: [&str; 16] = [
    "memory", "restore", "page", "fault", "chunk", "image", "kernel", "thread", "process",
    "snapshot", "lazy", "prefetch", "region", "heap", "stack", "index",
];

impl DocIndex {
    /// An index of roughly `bytes` bytes of heap.
    fn build(bytes: usize) -> Self {
        let mut rng = pattern::Rng::new(0x1a2a_5eed);
        let mut docs = Vec::new();
        let mut by_title = HashMap::new();
        let mut postings: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        let mut used = 0usize;
        while used < bytes {
            let id = docs.len() as u64;
            let mut title = String::new();
            for _ in 0..2 + rng.below(4) {
                title.push_str(VOCABULARY[rng.below(16) as usize]);
                title.push(' ');
            }
            title.push_str(&id.to_string());
            let words: Vec<u32> = (0..16 + rng.below(112))
                .map(|_| (rng.below(50_000) * rng.below(4)) as u32)
                .collect();
            for &w in words.iter().take(4) {
                postings.entry(w).or_default().push(id as u32);
            }
            let tags: Vec<String> = (0..rng.below(4))
                .map(|_| format!("tag-{}", VOCABULARY[rng.below(16) as usize]))
                .collect();
            used += 96 + title.len() * 2 + words.len() * 4 + tags.len() * 40 + 32;
            by_title.insert(title.clone(), docs.len());
            docs.push(Doc {
                _id: id,
                _title: title,
                _words: words,
                _score: rng.below(1_000_000) as f64 / 7.0,
                _tags: tags,
            });
        }
        Self {
            _docs: docs,
            _by_title: by_title,
            _postings: postings,
        }
    }
}

/// `len` bytes (whole pages) of synthetic pages of `kind`, as the fixtures
/// write them (`Text`: four random bits per byte, about 2:1; `Random`:
/// incompressible).
pub(crate) fn synthetic(kind: PageKind, len: usize) -> Vec<u8> {
    let mut words = vec![0u64; len / 8];
    for (p, page) in words.chunks_exact_mut(PAGE / 8).enumerate() {
        pattern::fill_page(kind, 0x5eed, p as u64, page);
    }
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// `bytes` as a one-region source at address 0 (synthetic inputs).
pub(crate) fn flat_source(name: &'static str, bytes: Vec<u8>) -> Source {
    Source {
        name,
        regions: vec![SampleRegion {
            info: RegionInfo::raw_file(0, bytes.len() as u64),
            runs: vec![DataRun { addr: 0, bytes }],
        }],
    }
}
