//! Rebuilding the cache's in-memory state from the directory at mount: from the checkpoint the
//! last writer left when it closed cleanly ([`super::checkpoint`]: one file), else by scanning
//! every index. Nothing is wiped. Leftovers of a crash (temp files, data without an index) and
//! indexes that fail to parse are deleted; indexes of a newer format and entries that cannot be
//! read now (an I/O error proves nothing) are left alone.

use std::collections::{BTreeMap, HashMap};

use lru::LruCache;

use super::checkpoint::{self, CheckpointError, Snapshot};
use super::format::{self, Layout};
use super::index::{self, IndexError, ObjectIndex};
use super::{round_up, version_key, CacheDir, ObjectId};

/// Threads reading index files at mount. Default: 64.
const SCAN_THREADS: usize = 64;

/// What recovery found: eviction order with each entry's accounted bytes, their sum, and the
/// entry ids of each `bucket\0key`.
pub(super) type Recovered = Snapshot;

/// Rebuilds the eviction order and size accounting of `dir` (which the caller has locked): from
/// its checkpoint if that is current, else from the index files. Either way the checkpoint is
/// removed before the caller changes anything, so a crash from here on leaves none.
pub(super) fn recover(dir: &CacheDir) -> std::io::Result<Recovered> {
    let before = dir.lock_stamps().map(|(before, _)| before);
    let loaded = match before {
        Some(stamp) => checkpoint::load(dir.root(), &stamp),
        None => Err(CheckpointError::Missing),
    };
    checkpoint::remove(dir.root());
    match loaded {
        Ok(snapshot) => {
            tracing::info!("cache state read from its checkpoint: {} entries", snapshot.lru.len());
            return Ok(snapshot);
        }
        Err(CheckpointError::Missing) => {}
        Err(e) => tracing::info!("scanning the cache's indexes: {e}"),
    }
    scan(dir)
}

/// A full scan, whatever the checkpoint says (tests compare the two).
#[cfg(test)]
pub(super) fn scan_for_tests(dir: &CacheDir) -> std::io::Result<Recovered> {
    scan(dir)
}

/// Rebuilds the state from the index files, reading them from [`SCAN_THREADS`] threads.
fn scan(dir: &CacheDir) -> std::io::Result<Recovered> {
    let (ids, strays) = dir.scan()?;
    for stray in strays {
        tracing::info!("removing leftover cache file {}", stray.display());
        let _ = std::fs::remove_file(stray);
    }
    let mut entries = Vec::with_capacity(ids.len());
    let mut versions: BTreeMap<String, Vec<ObjectId>> = BTreeMap::new();
    let mut version_of = HashMap::new();
    let snapshots = read_snapshots(dir, &ids);
    for (id, snapshot) in snapshots {
        let (data, idx) = dir.paths(&id);
        match snapshot {
            Ok(snap) => {
                let h = &snap.header;
                versions.entry(version_key(&h.bucket, &h.key)).or_default().push(id);
                version_of.insert(id, version_key(&h.bucket, &h.key));
                let idx_len = Layout::new(h.encoded_len(), h.block_count()).file_len as u64;
                let data_bytes: u64 = (0..h.block_count()).filter(|&b| snap.is_present(b)).map(|b| round_up(h.block_len(b) as u64)).sum();
                entries.push((snap.last_access(), id, round_up(idx_len) + data_bytes));
            }
            Err(IndexError::Format { source: format::FormatError::NewerVersion { .. }, .. }) => {
                tracing::warn!("{} was written by a newer hoardfs; leaving it alone", idx.display());
            }
            Err(e @ IndexError::Format { .. }) => {
                tracing::warn!("dropping damaged cache entry: {e}");
                let _ = std::fs::remove_file(&idx);
                let _ = std::fs::remove_file(&data);
            }
            // An I/O error proves nothing about the bytes (EMFILE, EIO of a flaky disk): the
            // entry stays, charged what the file system says it holds, and is read again
            // when an open needs it.
            Err(e) => {
                tracing::warn!("cannot read cache entry now ({e}); keeping it");
                entries.push((0, id, allocated(&data) + allocated(&idx)));
            }
        }
    }
    entries.sort();
    let mut lru = LruCache::unbounded();
    let mut total = 0;
    for (_, id, bytes) in entries {
        lru.put(id, bytes);
        total += bytes;
    }
    Ok(Recovered { lru, total, versions, version_of, images: super::images::Images::none() })
}

/// Reads the indexes of `ids` with plain reads, from [`SCAN_THREADS`] threads: index files are
/// small random reads, which a cold NVMe (or any SSD) serves far faster many at a time than one
/// after another. For the scan at mount and for the inspection commands.
pub fn read_snapshots(dir: &CacheDir, ids: &[ObjectId]) -> Vec<(ObjectId, Result<index::IndexSnapshot, IndexError>)> {
    let chunk = ids.len().div_ceil(SCAN_THREADS).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .chunks(chunk)
            .map(|part| s.spawn(move || part.iter().map(|id| (*id, ObjectIndex::read_snapshot(&dir.paths(id).1))).collect::<Vec<_>>()))
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    })
}

/// Every index of `dir` for readers that take no lock (`cache stat`, `cache ls`): from a
/// current checkpoint's images (one file), else from the index files. With the checkpoint comes
/// the accounted total of the entries' bytes (index and present blocks, as `du` counts them).
pub fn read_indexes(dir: &CacheDir) -> std::io::Result<Indexes> {
    if let Some((accounted, images)) = checkpoint::current(dir) {
        let snapshots = images
            .into_iter()
            .map(|(id, bytes)| {
                let path = || dir.paths(&id).1.display().to_string();
                (id, index::IndexSnapshot::parse(bytes).map_err(|source| IndexError::Format { path: path(), source }))
            })
            .collect();
        return Ok(Indexes { snapshots, accounted: Some(accounted) });
    }
    let (ids, _) = dir.scan()?;
    Ok(Indexes { snapshots: read_snapshots(dir, &ids), accounted: None })
}

/// What [`read_indexes`] found.
pub struct Indexes {
    /// Every entry's index, or why it could not be read.
    pub snapshots: Vec<(ObjectId, Result<index::IndexSnapshot, IndexError>)>,
    /// The entries' accounted bytes, when they came from a checkpoint.
    pub accounted: Option<u64>,
}

/// Bytes a file occupies on disk (allocated blocks, as `du` counts), 0 if it cannot be read.
fn allocated(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map(|m| m.blocks() * 512).unwrap_or(0)
}
