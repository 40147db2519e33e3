//! Rebuilding the cache's in-memory state from the directory at mount: from the checkpoint the
//! last writer left when it closed cleanly ([`super::checkpoint`]: one file), else by reading
//! the catalog's slabs (a few files, read in order) and walking the object shards. Nothing is
//! wiped. Leftovers of a crash (temp files, data without an index, an index without data) and
//! indexes that fail to parse are deleted. A format 1 directory's index files move into the
//! catalog here.

use std::collections::{HashMap, HashSet};

use super::catalog::{self, Catalog, SlotAt};
use super::checkpoint::{self, CheckpointError, Snapshot};
use super::entries::Entries;
use super::entry::accounted_bytes;
use super::format::FormatError;
use super::index::{IndexError, IndexSnapshot, ObjectIndex};
use super::store::DIR_VERSION;
use super::{version_key, CacheDir, ObjectId};

/// Threads reading format 1 index files. Default: 64.
const SCAN_THREADS: usize = 64;

/// What recovery found: every entry in eviction order, and their accounted bytes' sum.
pub(super) type Recovered = Snapshot;

/// Rebuilds the eviction order and size accounting of `dir` (which the caller has locked): from
/// its checkpoint if that is current, else from the catalog. Either way the checkpoint is
/// removed before the caller changes anything, so a crash from here on leaves none.
pub(super) fn recover(dir: &CacheDir) -> std::io::Result<(Recovered, Catalog)> {
    let started = std::time::Instant::now();
    let before = dir.lock_stamps().map(|(before, _)| before);
    let loaded = match before {
        Some(stamp) => checkpoint::load(dir.root(), &stamp),
        None => Err(CheckpointError::Missing),
    };
    checkpoint::remove(dir.root());
    match loaded {
        Ok(snapshot) => match Catalog::new(dir.root(), snapshot.entries.oldest_first().map(|r| r.at)) {
            Ok(catalog) => {
                let ms = started.elapsed().as_millis();
                tracing::info!("cache state read from its checkpoint: {} entries in {ms} ms", snapshot.entries.len());
                return Ok((snapshot, catalog));
            }
            Err(e) => tracing::info!("scanning the cache's catalog: {e}"),
        },
        Err(CheckpointError::Missing) => {}
        Err(e) => tracing::info!("scanning the cache's catalog: {e}"),
    }
    let scanned = scan(dir)?;
    tracing::info!("cache state rebuilt by a scan: {} entries in {} ms", scanned.0.entries.len(), started.elapsed().as_millis());
    Ok(scanned)
}

/// A full scan, whatever the checkpoint says (tests compare the two).
#[cfg(test)]
pub(super) fn scan_for_tests(dir: &CacheDir) -> std::io::Result<(Recovered, Catalog)> {
    scan(dir)
}

/// Rebuilds the state from the catalog and the shards, moving format 1 index files into the
/// catalog.
fn scan(dir: &CacheDir) -> std::io::Result<(Recovered, Catalog)> {
    let shards = dir.scan()?;
    for stray in &shards.strays {
        tracing::info!("removing leftover cache file {}", stray.display());
        let _ = std::fs::remove_file(stray);
    }
    let data: HashSet<ObjectId> = shards.data.iter().copied().collect();
    let mut entries = Entries::with_capacity(data.len());
    // What an entry needs of its index, not the index: a scan of 1.28 M slots that kept every
    // parsed index held ~0.5 GB more at its peak.
    let mut found: HashMap<ObjectId, Found> = HashMap::with_capacity(data.len());
    let mut dead = Vec::new();
    catalog::each_slot(dir.root(), |at, id, index| match parse_slot(index.map(<[u8]>::to_vec)) {
        Ok(snap) => {
            let h = &snap.header;
            let problem = if ObjectId::new(&h.bucket, &h.key, &h.etag) != id {
                Some("its id does not match its header")
            } else if !data.contains(&id) {
                Some("its data file is gone")
            } else if found.contains_key(&id) {
                Some("another slot holds the same entry")
            } else {
                None
            };
            match problem {
                None => drop(found.insert(id, Found::of(&entries, at, &snap))),
                Some(problem) => {
                    tracing::info!("dropping cache entry {}: {problem}", id.hex());
                    dead.push(at);
                }
            }
        }
        Err(e) => {
            tracing::warn!("dropping damaged cache entry {}: {e}", id.hex());
            dead.push(at);
        }
    })?;
    let catalog = Catalog::new(dir.root(), found.values().map(|f| f.at).chain(dead.iter().copied()))?;
    for at in dead {
        catalog.free(at);
    }
    let unread = upgrade_v1(dir, &shards.v1_indexes, &data, &catalog, &entries, &mut found)?;
    for id in data.iter().filter(|id| !found.contains_key(id) && !unread.contains(id)) {
        tracing::info!("removing cache data file without an index: {}", id.hex());
        let _ = std::fs::remove_file(dir.data_path(id));
    }
    let mut rows: Vec<(ObjectId, Found)> = found.into_iter().collect();
    // Least recently used first (ties by id, so that two scans of one directory agree), so the
    // last version of a key loaded is its newest.
    rows.sort_unstable_by_key(|(id, f)| (f.last_access, *id));
    let mut total = 0;
    for (id, f) in rows {
        entries.insert(id, f.at, f.bytes, f.key_hash, false);
        total += f.bytes;
    }
    Ok((Recovered { entries, total }, catalog))
}

/// Every entry's `bucket\0key`, read from the catalog's slabs in order (for the checkpoint, and
/// for offline lookups of directories); slots that do not parse are left out.
pub(super) fn read_keys(dir: &CacheDir) -> std::io::Result<Vec<(ObjectId, String)>> {
    let mut keys = Vec::new();
    catalog::each_slot(dir.root(), |_, id, index| {
        if let Some(Ok((h, _))) = index.map(super::format::IndexHeader::decode) {
            keys.push((id, version_key(&h.bucket, &h.key)));
        }
    })?;
    Ok(keys)
}

fn parse_slot(index: Option<Vec<u8>>) -> Result<IndexSnapshot, FormatError> {
    IndexSnapshot::parse(index.ok_or(FormatError::Corrupt("index longer than its slot"))?)
}

/// What the scan keeps of an entry's index.
struct Found {
    at: SlotAt,
    last_access: u64,
    bytes: u64,
    key_hash: u64,
}

impl Found {
    fn of(entries: &Entries, at: SlotAt, snap: &IndexSnapshot) -> Self {
        let h = &snap.header;
        Self {
            at,
            last_access: snap.last_access(),
            bytes: accounted_bytes(h, |b| snap.is_present(b)),
            key_hash: entries.key_hash(version_key(&h.bucket, &h.key).as_bytes()),
        }
    }
}

/// Moves format 1 index files into the catalog: each is copied into a slot, the slots are
/// written back, and only then are the files removed (a crash in between leaves both, and the
/// next scan keeps the slot). Returns the ids whose file could not be read now (an I/O error
/// proves nothing: they stay for the next writer, data file included).
fn upgrade_v1(
    dir: &CacheDir,
    ids: &[ObjectId],
    data: &HashSet<ObjectId>,
    catalog: &Catalog,
    entries: &Entries,
    found: &mut HashMap<ObjectId, Found>,
) -> std::io::Result<HashSet<ObjectId>> {
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    let (mut moved, mut gone, mut unread) = (Vec::new(), Vec::new(), HashSet::new());
    for (id, snapshot) in read_snapshots(dir, ids) {
        match snapshot {
            Ok(snap) if data.contains(&id) && !found.contains_key(&id) => {
                let slot = catalog.alloc(&id, snap.bytes())?;
                found.insert(id, Found::of(entries, slot.at(), &snap));
                moved.push(id);
            }
            Ok(_) => gone.push(id),
            Err(e @ IndexError::Format { .. }) => {
                tracing::warn!("dropping damaged cache entry: {e}");
                gone.push(id);
            }
            Err(e) => {
                tracing::warn!("cannot read cache index now ({e}); it stays for the next mount");
                unread.insert(id);
            }
        }
    }
    catalog.flush()?;
    for id in moved.iter().chain(&gone) {
        let _ = std::fs::remove_file(dir.v1_index_path(id));
    }
    tracing::info!("moved {} format 1 index files into the catalog ({} dropped, {} left for later)", moved.len(), gone.len(), unread.len());
    Ok(unread)
}

/// Reads format 1 index files with plain reads, from [`SCAN_THREADS`] threads: they are small
/// random reads, which a cold NVMe (or any SSD) serves far faster many at a time than one
/// after another.
fn read_snapshots(dir: &CacheDir, ids: &[ObjectId]) -> Vec<(ObjectId, Result<IndexSnapshot, IndexError>)> {
    let chunk = ids.len().div_ceil(SCAN_THREADS).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || part.iter().map(|id| (*id, ObjectIndex::read_snapshot(&dir.v1_index_path(id)))).collect::<Vec<_>>())
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    })
}

/// Folds every index of `dir` (as [`read_indexes`] reads them) on `threads` threads into one `T`
/// each, without holding them all; returns the `T`s. For `cache stat` and `cache ls` of
/// millions of entries.
pub fn fold_indexes<T: Send>(
    dir: &CacheDir,
    threads: usize,
    init: impl Fn() -> T + Sync,
    f: impl Fn(&mut T, ObjectId, Result<IndexSnapshot, IndexError>) + Sync,
) -> std::io::Result<Vec<T>> {
    let mut out = catalog::fold_slots(dir.root(), threads, &init, |acc, at, id, index| {
        let where_ = || format!("cache catalog, slot {} of {} bytes", at.slot, at.size);
        f(acc, id, parse_slot(index.map(<[u8]>::to_vec)).map_err(|source| IndexError::Format { path: where_(), source }))
    })?;
    if dir.found_version() < DIR_VERSION {
        let mut acc = init();
        for (id, snap) in read_snapshots(dir, &dir.scan()?.v1_indexes) {
            f(&mut acc, id, snap);
        }
        out.push(acc);
    }
    Ok(out)
}

/// Every index of `dir`, for readers that take no lock (`cache stat`, `cache ls`): the
/// catalog's slabs read in order, and a format 1 directory's index files. A slot being written
/// by a mount at that instant reads as damaged.
pub fn read_indexes(dir: &CacheDir) -> std::io::Result<Vec<(ObjectId, Result<IndexSnapshot, IndexError>)>> {
    // One thread visits the slabs in order, then the format 1 files: the order of old.
    Ok(fold_indexes(dir, 1, Vec::new, |out, id, snap| out.push((id, snap)))?.into_iter().flatten().collect())
}
