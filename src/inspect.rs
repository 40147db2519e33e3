//! `hoardfs cache stat | ls | verify | evict`: what a cache directory holds, whether it is
//! intact, and removing parts of it. `stat` and `ls` read the catalog with plain reads and take
//! no lock, so they run beside a mount; `verify` and `evict` change the directory and take its
//! lock, so they refuse to run while a mount owns it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::cache::format::VerifyState;
use crate::cache::index::{IndexError, IndexSnapshot};
use crate::cache::store::{MountRecord, LAST_MOUNT_RECORD, MOUNT_RECORD};
use crate::cache::{fold_indexes, BlockCache, CacheConfig, CacheDir, CacheDirError};
use crate::checksum::{block_crc, Algorithm};
use crate::io::{probe, EngineChoice};
use crate::metrics::Metrics;

/// Which entries a command applies to: all, or those under `s3://bucket/prefix`.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Bucket, if restricted.
    pub bucket: Option<String>,
    /// Key prefix within the bucket.
    pub prefix: String,
}

impl Filter {
    fn matches(&self, bucket: &str, key: &str) -> bool {
        self.bucket.as_deref().is_none_or(|b| b == bucket) && key.starts_with(&self.prefix)
    }
}

/// One cached object version, as `cache ls` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct EntryReport {
    /// Bucket.
    pub bucket: String,
    /// Key.
    pub key: String,
    /// ETag.
    pub etag: String,
    /// Object size.
    pub size: u64,
    /// Bytes of the object present in the cache.
    pub cached_bytes: u64,
    /// `cached_bytes / size`, in percent.
    pub percent_cached: f64,
    /// Verification against S3's checksum.
    pub verify: VerifyState,
    /// S3 checksum algorithm recorded.
    pub checksum: Algorithm,
    /// Last access, seconds since the epoch.
    pub last_access: u64,
    /// Blocks and how many are present.
    pub blocks: u64,
    /// Present blocks.
    pub present_blocks: u64,
    /// Bytes its data file takes on disk (present blocks in 4 KiB units).
    #[serde(skip)]
    pub disk_bytes: u64,
}

/// Threads reading the catalog for `cache stat` and `cache ls`: the slabs are split between
/// them, and parsing (a blake3 of each index header) is most of the work.
fn readers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().min(8))
}

/// Every readable entry matching `filter`, and how many indexes could not be read.
pub fn entries(dir: &CacheDir, filter: &Filter) -> std::io::Result<(Vec<EntryReport>, usize)> {
    let parts = fold_indexes(
        dir,
        readers(),
        || (Vec::new(), 0),
        |(rows, unreadable): &mut (Vec<EntryReport>, usize), _, snap| match snap {
            Ok(snap) if filter.matches(&snap.header.bucket, &snap.header.key) => rows.push(report(&snap)),
            Ok(_) => {}
            Err(_) => *unreadable += 1,
        },
    )?;
    let mut all = Vec::with_capacity(parts.iter().map(|(rows, _)| rows.len()).sum());
    let mut unreadable = 0;
    for (rows, bad) in parts {
        all.extend(rows);
        unreadable += bad;
    }
    Ok((all, unreadable))
}

/// What an entry's present blocks add up to: how many, their bytes, and the bytes their data
/// file takes on disk (each block in 4 KiB units).
struct Presence {
    blocks: u64,
    bytes: u64,
    disk_bytes: u64,
}

fn presence(snap: &IndexSnapshot) -> Presence {
    let h = &snap.header;
    let mut p = Presence { blocks: 0, bytes: 0, disk_bytes: 0 };
    for len in (0..h.block_count()).filter(|&b| snap.is_present(b)).map(|b| h.block_len(b) as u64) {
        p.blocks += 1;
        p.bytes += len;
        p.disk_bytes += crate::cache::round_up(len);
    }
    p
}

fn report(snap: &IndexSnapshot) -> EntryReport {
    let h = &snap.header;
    let present = presence(snap);
    let cached = present.bytes;
    EntryReport {
        bucket: h.bucket.clone(),
        key: h.key.clone(),
        etag: h.etag.clone(),
        size: h.object_size,
        cached_bytes: cached,
        percent_cached: if h.object_size == 0 { 100.0 } else { 100.0 * cached as f64 / h.object_size as f64 },
        verify: snap.verify_state(),
        checksum: h.checksum.algorithm,
        last_access: snap.last_access(),
        blocks: h.block_count(),
        present_blocks: present.blocks,
        disk_bytes: present.disk_bytes,
    }
}

/// What `cache stat` adds up over every index.
#[derive(Default)]
struct Totals {
    objects: usize,
    blocks: u64,
    bytes_cached: u64,
    data_on_disk: u64,
    /// By [`VerifyState`]: pending, verified, unverifiable, failed.
    states: [usize; 4],
    unreadable: usize,
}

impl Totals {
    fn add(&mut self, snap: Result<IndexSnapshot, IndexError>) {
        let Ok(snap) = snap else {
            self.unreadable += 1;
            return;
        };
        let present = presence(&snap);
        self.objects += 1;
        self.blocks += present.blocks;
        self.bytes_cached += present.bytes;
        self.data_on_disk += present.disk_bytes;
        self.states[snap.verify_state() as usize] += 1;
    }

    fn merge(mut self, other: Self) -> Self {
        self.objects += other.objects;
        self.blocks += other.blocks;
        self.bytes_cached += other.bytes_cached;
        self.data_on_disk += other.data_on_disk;
        for (a, b) in self.states.iter_mut().zip(other.states) {
            *a += b;
        }
        self.unreadable += other.unreadable;
        self
    }
}

/// `cache stat`: totals, verification counts, and the counters of the current or last mount.
#[derive(Debug, Serialize)]
pub struct StatReport {
    /// The directory.
    pub cache_dir: String,
    /// Its format version (1 is upgraded in place by the next writer or `cache upgrade`).
    pub format_version: u32,
    /// Object versions cached.
    pub objects: usize,
    /// Blocks present.
    pub blocks: u64,
    /// Bytes of objects present.
    pub bytes_cached: u64,
    /// Bytes the directory takes on disk (allocated blocks of all its files).
    pub bytes_on_disk: u64,
    /// `--max-cache-size` of the current or last mount.
    pub max_cache_size: Option<u64>,
    /// Objects verified against S3's checksum.
    pub verified: usize,
    /// Objects S3 offers nothing to verify against.
    pub unverifiable: usize,
    /// Objects not yet verified (partly cached).
    pub pending: usize,
    /// Objects whose bytes failed verification.
    pub failed: usize,
    /// Index files that could not be read (a mount deletes and refetches them).
    pub unreadable: usize,
    /// The mount the counters come from, if any.
    pub mount: Option<MountStatus>,
}

/// A running or finished mount's identity and counters.
#[derive(Debug, Serialize)]
pub struct MountStatus {
    /// Running now (true) or the last one (false).
    pub running: bool,
    /// Its record.
    pub record: MountRecord,
    /// Counters (live from `--metrics-addr`, or final), or empty if unavailable.
    pub counters: Vec<(String, u64)>,
}

/// Builds the `cache stat` report.
pub fn stat(dir: &CacheDir) -> std::io::Result<StatReport> {
    let totals =
        fold_indexes(dir, readers(), Totals::default, |t, _, snap| t.add(snap))?.into_iter().fold(Totals::default(), Totals::merge);
    // Data files are sparse and hold exactly their present blocks, each rounded up to the 4 KiB
    // units `du` counts, so only the files beside the objects are walked (a `stat` per data
    // file took seconds at 100,000 objects).
    let bytes_on_disk = totals.data_on_disk + disk_usage_except_objects(dir.root());
    let count = |s: VerifyState| totals.states[s as usize];
    let mount = running_mount(dir).or_else(|| {
        MountRecord::read(&dir.root().join(LAST_MOUNT_RECORD)).map(|r| MountStatus {
            running: false,
            counters: r.counters.clone(),
            record: r,
        })
    });
    Ok(StatReport {
        cache_dir: dir.root().display().to_string(),
        format_version: dir.found_version(),
        objects: totals.objects,
        blocks: totals.blocks,
        bytes_cached: totals.bytes_cached,
        bytes_on_disk,
        max_cache_size: mount.as_ref().and_then(|m| m.record.max_cache_size),
        verified: count(VerifyState::Verified),
        unverifiable: count(VerifyState::Unverifiable),
        pending: count(VerifyState::Pending),
        failed: count(VerifyState::Failed),
        unreadable: totals.unreadable,
        mount,
    })
}

fn running_mount(dir: &CacheDir) -> Option<MountStatus> {
    CacheDir::is_locked(dir.root())?;
    let record = MountRecord::read(&dir.root().join(MOUNT_RECORD))?;
    let counters = record.metrics_addr.as_deref().and_then(scrape).unwrap_or_default();
    Some(MountStatus { running: true, record, counters })
}

/// Reads a mount's `/metrics` (loopback only: the address is the mount's own).
fn scrape(addr: &str) -> Option<Vec<(String, u64)>> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(Metrics::parse_prometheus(text.split_once("\r\n\r\n")?.1))
}

/// Bytes the files under `root` take on disk: allocated blocks, so a sparse data file counts
/// only the blocks it holds. What the size limit is about, and what tests compare it with.
/// The subdirectories found are walked from several threads (a cache dir's 256 shards hold one
/// inode per file, and a cold `stat` of each is a small random read).
pub fn disk_usage(root: &std::path::Path) -> u64 {
    const THREADS: usize = 16;
    // The top two levels in this thread, then every directory below (the shards) in parallel.
    let (mut total, mut pending) = (0, vec![root.to_path_buf()]);
    for _ in 0..2 {
        let mut next = Vec::new();
        for d in pending {
            let (bytes, subdirs) = usage_of_one_dir(&d);
            total += bytes;
            next.extend(subdirs);
        }
        pending = next;
    }
    let walk = |dirs: &[std::path::PathBuf]| {
        let (mut total, mut stack) = (0, dirs.to_vec());
        while let Some(d) = stack.pop() {
            let (bytes, subdirs) = usage_of_one_dir(&d);
            total += bytes;
            stack.extend(subdirs);
        }
        total
    };
    let per = pending.len().div_ceil(THREADS).max(1);
    total
        + std::thread::scope(|s| {
            pending
                .chunks(per)
                .map(|part| s.spawn(move || walk(part)))
                .collect::<Vec<_>>()
                .into_iter()
                .map(|h| h.join().unwrap_or(0))
                .sum::<u64>()
        })
}

/// [`disk_usage`] of everything in `root` but the object shards.
fn disk_usage_except_objects(root: &std::path::Path) -> u64 {
    let (files, subdirs) = usage_of_one_dir(root);
    files
        + subdirs.iter().filter(|d| !d.ends_with(crate::cache::store::OBJECTS)).map(|d| disk_usage(d)).sum::<u64>()
        + usage_of_one_dir(&root.join(crate::cache::store::OBJECTS)).0
}

/// Allocated bytes of the files directly in `dir`, and its subdirectories.
fn usage_of_one_dir(dir: &std::path::Path) -> (u64, Vec<std::path::PathBuf>) {
    use std::os::unix::fs::MetadataExt;
    let (mut bytes, mut subdirs) = (0, Vec::new());
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        match e.metadata() {
            Ok(m) if m.is_dir() => subdirs.push(e.path()),
            Ok(m) => bytes += m.blocks() * 512,
            Err(_) => {}
        }
    }
    (bytes, subdirs)
}

/// What `cache verify` found.
#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    /// Objects examined.
    pub objects: usize,
    /// Blocks re-hashed.
    pub blocks_checked: u64,
    /// Blocks whose bytes no longer matched their blake3 or CRC record; dropped.
    pub corrupt_blocks: Vec<(String, u64)>,
    /// Entries whose index could not be read; deleted.
    pub unreadable: usize,
}

/// Opens a cache directory for a command that changes it: takes the lock, with an error that
/// names a running mount.
pub fn open_for_writing(root: &std::path::Path, config: CacheConfig, metrics: Arc<Metrics>) -> Result<BlockCache, CacheDirError> {
    let dir = CacheDir::open_exclusive(root)?;
    let io = probe(EngineChoice::Auto).map_err(|source| CacheDirError::Io { path: root.to_path_buf(), source })?;
    BlockCache::open(dir, io, metrics, config).map_err(|source| CacheDirError::Io { path: root.to_path_buf(), source })
}

/// `cache verify`: re-reads every present block (through the I/O engine, several objects at a
/// time), checks its blake3 and its CRC record, and drops blocks that fail.
pub async fn verify(cache: Arc<BlockCache>, filter: &Filter, parallel: usize) -> VerifyReport {
    let mut report = VerifyReport::default();
    let permits = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for id in cache.entry_ids() {
        let obj = match cache.open_id(id) {
            Ok(Some(obj)) => obj,
            _ => {
                report.unreadable += 1;
                continue;
            }
        };
        let h = obj.header();
        if !filter.matches(&h.bucket, &h.key) {
            continue;
        }
        report.objects += 1;
        let (cache, permits) = (cache.clone(), permits.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire().await.expect("never closed");
            let h = obj.header().clone();
            let mut checked = 0;
            let mut corrupt = Vec::new();
            for b in (0..obj.block_count()).filter(|&b| obj.is_present(b)) {
                checked += 1;
                let crc = obj.block_crc(b);
                match cache.read_verified(&obj, b).await {
                    Some(bytes) if h.checksum.algorithm.crc().is_none() || crc == Some(block_crc(h.checksum.algorithm, &bytes)) => {}
                    Some(_) => {
                        obj.drop_block(b);
                        corrupt.push((h.key.clone(), b));
                    }
                    None => corrupt.push((h.key.clone(), b)),
                }
            }
            (checked, corrupt)
        });
    }
    while let Some(Ok((checked, corrupt))) = tasks.join_next().await {
        report.blocks_checked += checked;
        report.corrupt_blocks.extend(corrupt);
    }
    report
}

/// What `cache evict` removes.
#[derive(Clone, Debug)]
pub enum EvictWhat {
    /// Everything.
    All,
    /// Entries under a bucket/prefix.
    Matching(Filter),
    /// Entries not accessed for this long.
    OlderThan(Duration),
}

/// What `cache evict` did.
#[derive(Debug, Default, Serialize)]
pub struct EvictReport {
    /// Entries removed.
    pub objects: usize,
    /// Bytes freed (as accounted: data and index, rounded to 4 KiB).
    pub bytes: u64,
}

/// `cache evict`.
pub fn evict(cache: &BlockCache, what: &EvictWhat) -> EvictReport {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut report = EvictReport::default();
    for id in cache.entry_ids() {
        let Ok(snap) = cache.snapshot(&id) else { continue };
        let h = &snap.header;
        let chosen = match what {
            EvictWhat::All => true,
            EvictWhat::Matching(f) => f.matches(&h.bucket, &h.key),
            EvictWhat::OlderThan(age) => snap.last_access() + age.as_secs() < now,
        };
        if chosen {
            if let Some(bytes) = cache.remove(id) {
                report.objects += 1;
                report.bytes += bytes;
            }
        }
    }
    report
}
