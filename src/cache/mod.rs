//! The persistent block cache: which blocks of which object versions are on local disk, reading
//! them back verified, writing new ones, and keeping the directory under its size limit.
//!
//! Layers: [`store`] knows paths, the marker and the lock; [`catalog`] knows the slots that
//! hold the indexes, and [`format`] and [`index`] the index bytes; this module ties them to an [`IoEngine`] and the eviction order. A block read
//! that fails in any way (I/O error, blake3 mismatch) is a *miss*, never an error to the reader:
//! the fetcher gets the bytes from S3 again.

mod blocks;
pub mod catalog;
mod checkpoint;
mod descriptors;
mod entries;
mod entry;
pub mod format;
pub mod index;
mod offline;
mod recovery;
mod space;
pub mod store;

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use lru::LruCache;

use crate::io::IoEngine;
use crate::metrics::Metrics;
use crate::object::ObjectInfo;
use entries::Entries;
pub use entry::CachedObject;
use format::{IndexHeader, VerifyState};
use index::{IndexError, ObjectIndex};
use recovery::Recovered;
pub use recovery::{fold_indexes, read_indexes};
pub use store::{CacheDir, CacheDirError, ObjectId};

/// Default block size: 1 MiB, the largest request the kernel sends a FUSE daemon by default
/// (`/proc/sys/fs/fuse/max_pages_limit` pages), so one sequential read maps to one block.
pub const DEFAULT_BLOCK_SIZE: u32 = 1 << 20;
/// How long the cache stops growing after the disk said ENOSPC before it tries again.
const FULL_BACKOFF: Duration = Duration::from_secs(30);
/// Disk allocation unit assumed when accounting for space (what `du` would count).
const DISK_UNIT: u64 = 4096;
/// Idle open entries closed at once when the process runs out of descriptors, before retrying.
const SHED_ON_EMFILE: usize = 64;

/// How the cache behaves; plain fields with documented defaults.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// Block size for new entries. Default: [`DEFAULT_BLOCK_SIZE`].
    pub block_size: u32,
    /// Upper bound on data + index bytes on disk; `None` for no bound. Default: `None`.
    pub max_size: Option<u64>,
    /// Re-hash a block on every read from disk, not only the first per mount. Default: false.
    pub verify_every_read: bool,
    /// Entries kept open after their last handle closes (each holds its data file open), so a
    /// reopen finds its index mapped and its blocks' "checked in this mount" bits intact (needed
    /// before passthrough). A mount sizes it from the open-file limit
    /// ([`crate::limits::open_entries_for`]). Default: [`crate::limits::MAX_OPEN_ENTRIES`].
    pub open_entries: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self { block_size: DEFAULT_BLOCK_SIZE, max_size: None, verify_every_read: false, open_entries: crate::limits::MAX_OPEN_ENTRIES }
    }
}

/// Errors that stop an object from being cached at all (the reader then gets bytes from S3
/// without caching, or EIO if S3 fails too).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Index trouble.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// Other callers kept creating and dropping the same entry while this one tried.
    #[error("cache entry busy: created and dropped by other readers meanwhile")]
    Busy,
    /// Data file trouble.
    #[error("cache data file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

pub(crate) fn round_up(n: u64) -> u64 {
    n.div_ceil(DISK_UNIT) * DISK_UNIT
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// `State::open` is never pruned below this size.
const MIN_PRUNE_AT: usize = 1024;

struct State {
    /// Entries in memory; eviction skips any that someone besides `warm` holds. Dead weak
    /// references are pruned when the map has doubled since the last prune (amortised O(1) per
    /// open; pruning on every open made an epoch quadratic in the number of objects).
    open: HashMap<ObjectId, Weak<CachedObject>>,
    /// `open`'s size at which it is pruned next.
    prune_open_at: usize,
    /// The most recently used entries, kept alive.
    warm: LruCache<ObjectId, Arc<CachedObject>>,
    /// Every entry on disk, in eviction order, with its slot and accounted bytes.
    entries: Entries,
    /// Sum of the accounted bytes.
    total: u64,
    /// Set after ENOSPC: the cache does not grow until this instant.
    full_until: Option<Instant>,
    /// Every cached `bucket\0key`, sorted, for offline lookups of directories: built from the
    /// catalog when first needed, for the entries' generation it was built at.
    offline_keys: Option<(u64, Arc<Vec<Box<str>>>)>,
    /// A checkpoint of this state is on disk: the next change removes it.
    checkpointed: bool,
}

impl State {
    /// Records what this mount checked of an entry that leaves memory (the warm set lets go of
    /// it): its checked bits go with it, and the flag is what its next open starts from. The
    /// flag lets a warm epoch over more objects than are kept open hand each one to the kernel
    /// at open without reading it again. That is as strong as the bits it stands for: the data
    /// file is the one that was checked (an entry's file changes only by deletion, which removes
    /// its record), and only this process writes the directory while it holds the lock.
    fn leaving_memory(&mut self, obj: &CachedObject) {
        if let Some(record) = self.entries.get_mut(&obj.id) {
            record.checked = obj.all_checked();
        }
    }

    /// Puts `obj` at the front of the warm set; the entry that falls off the back leaves memory.
    fn keep_warm(&mut self, id: ObjectId, obj: Arc<CachedObject>) {
        if let Some((old_id, old)) = self.warm.push(id, obj) {
            if old_id != id {
                self.leaving_memory(&old);
            }
        }
    }
}

fn version_key(bucket: &str, key: &str) -> String {
    format!("{bucket}\0{key}")
}

/// The block cache of one cache directory.
pub struct BlockCache {
    dir: CacheDir,
    io: Arc<dyn IoEngine>,
    metrics: Arc<Metrics>,
    config: CacheConfig,
    state: Mutex<State>,
    /// The slots holding every entry's index.
    catalog: catalog::Catalog,
    /// Told the data file path of every entry deleted, so whoever holds the file open beyond
    /// the cache (the kernel, through a passthrough backing) lets go and its blocks are freed.
    on_delete: std::sync::OnceLock<OnDelete>,
}

/// What [`BlockCache`] calls with the data file path of each entry it deletes.
type OnDelete = Box<dyn Fn(&std::path::Path) + Send + Sync>;

impl BlockCache {
    /// Opens the directory (which must already be locked by `dir`) and rebuilds the eviction
    /// order and size accounting from its checkpoint or its catalog: nothing is wiped.
    /// Leftovers of a crash (temp files, data without an index) and damaged indexes are
    /// deleted; a format 1 directory's index files move into the catalog.
    pub fn open(dir: CacheDir, io: Arc<dyn IoEngine>, metrics: Arc<Metrics>, config: CacheConfig) -> std::io::Result<Self> {
        let (Recovered { entries, total }, catalog) = recovery::recover(&dir)?;
        catalog.will_need();
        let warm_capacity = std::num::NonZeroUsize::new(config.open_entries.max(1)).expect("at least 1");
        Ok(Self {
            dir,
            io,
            metrics,
            config,
            state: Mutex::new(State {
                open: HashMap::new(),
                prune_open_at: MIN_PRUNE_AT,
                warm: LruCache::new(warm_capacity),
                entries,
                total,
                full_until: None,
                offline_keys: None,
                checkpointed: false,
            }),
            catalog,
            on_delete: std::sync::OnceLock::new(),
        })
    }

    /// Registers the one listener told of every deleted entry's data file (see `on_delete`).
    pub fn on_delete(&self, listener: impl Fn(&std::path::Path) + Send + Sync + 'static) {
        if self.on_delete.set(Box::new(listener)).is_err() {
            tracing::error!("a second delete listener was registered and ignored");
        }
    }

    /// The cache directory.
    pub fn dir(&self) -> &CacheDir {
        &self.dir
    }

    /// Block size of new entries.
    pub fn block_size(&self) -> u32 {
        self.config.block_size
    }

    /// Accounted bytes on disk (data rounded to 4 KiB units, plus indexes).
    pub fn total_bytes(&self) -> u64 {
        self.state.lock().unwrap().total
    }

    /// Number of object versions on disk.
    pub fn entry_count(&self) -> usize {
        self.state.lock().unwrap().entries.len()
    }

    /// Whether the cache has an entry (whole or partial) for this object version: a lookup in
    /// memory, no disk access.
    pub fn holds(&self, bucket: &str, info: &ObjectInfo) -> bool {
        self.state.lock().unwrap().entries.get(&ObjectId::new(bucket, &info.key, &info.etag)).is_some()
    }

    /// The entry for an object version if it is already in memory; never touches the disk, so
    /// the FUSE thread may call it.
    pub fn open_in_memory(&self, bucket: &str, info: &ObjectInfo) -> Option<Arc<CachedObject>> {
        let id = ObjectId::new(bucket, &info.key, &info.etag);
        let mut state = self.state.lock().unwrap();
        let obj = state.open.get(&id).and_then(Weak::upgrade)?;
        state.entries.promote(&id);
        state.keep_warm(id, obj.clone());
        Some(obj)
    }

    /// The entry for an object version if the cache has one, else `None`. A damaged entry is
    /// deleted and reported as absent. The index's slot and the data file are read in without
    /// the cache's lock (each is a random disk read when cold, and opens of different objects
    /// must not queue behind each other); callers on an async runtime run this on a blocking
    /// thread.
    pub fn open_existing(&self, bucket: &str, info: &ObjectInfo) -> Result<Option<Arc<CachedObject>>, CacheError> {
        if let Some(obj) = self.open_in_memory(bucket, info) {
            return Ok(Some(obj));
        }
        let id = ObjectId::new(bucket, &info.key, &info.etag);
        let Some(at) = self.state.lock().unwrap().entries.get(&id).map(|r| r.at) else { return Ok(None) };
        self.catalog.prefault(at);
        let data_path = self.dir.data_path(&id);
        let data = match self.retrying_on_emfile(|| OpenOptions::new().read(true).write(true).open(&data_path)) {
            Ok(data) => data,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!("cache entry {} has no data file; replacing it", data_path.display());
                return self.forget_unless_open(id);
            }
            // Out of descriptors, or a transient I/O error: the entry is not damaged. Report it
            // (the read is then served verified without the cache) and leave it on disk.
            Err(source) => return Err(CacheError::Io { path: data_path.display().to_string(), source }),
        };
        let mut state = self.state.lock().unwrap();
        // Another opener of the same version may have got there first: one entry per version,
        // and so one handle per slot.
        if let Some(obj) = state.open.get(&id).and_then(Weak::upgrade) {
            return Ok(Some(obj));
        }
        // Evicted while the data file was being opened (it is unlinked now): absent, so the
        // caller makes a new entry rather than living on in a deleted file nobody accounts for.
        let Some(checked) = state.entries.get(&id).filter(|r| r.at == at).map(|r| r.checked) else { return Ok(None) };
        let opened = match self.catalog.open(at) {
            Ok(slot) => ObjectIndex::open(slot).map_err(|e| e.to_string()),
            Err(e) => Err(format!("its catalog slot cannot be mapped: {e}")),
        };
        let problem = match opened {
            Ok(index) if index.header().describes(bucket, info) => {
                return Ok(Some(self.activate(&mut state, id, index, data, data_path, checked)));
            }
            Ok(index) => {
                drop(index); // the slot's one handle goes before the slot is freed
                format!("it does not describe s3://{bucket}/{} {}", info.key, info.etag)
            }
            Err(problem) => problem,
        };
        tracing::warn!("replacing cache entry {}: {problem}", id.hex());
        self.forget(&mut state, id);
        Ok(None)
    }

    /// Deletes a damaged entry, unless someone holds it open by now (then it is theirs to use).
    fn forget_unless_open(&self, id: ObjectId) -> Result<Option<Arc<CachedObject>>, CacheError> {
        let mut state = self.state.lock().unwrap();
        if let Some(obj) = state.open.get(&id).and_then(Weak::upgrade) {
            return Ok(Some(obj));
        }
        self.forget(&mut state, id);
        Ok(None)
    }

    /// Creates the entry for an object version with what S3 offers to verify it against. The
    /// data file (sparse, full length) is created before the index, so an index always has its
    /// data file. If another caller created it meanwhile, that entry is returned.
    pub fn create(
        &self,
        bucket: &str,
        info: &ObjectInfo,
        checksum: crate::checksum::ObjectChecksum,
    ) -> Result<Arc<CachedObject>, CacheError> {
        if let Some(obj) = self.open_existing(bucket, info)? {
            return Ok(obj);
        }
        let id = ObjectId::new(bucket, &info.key, &info.etag);
        let mut state = self.state.lock().unwrap();
        if let Some(obj) = state.open.get(&id).and_then(Weak::upgrade) {
            return Ok(obj);
        }
        if state.entries.get(&id).is_some() {
            // Another caller created it since `open_existing` looked, and it already left
            // memory: open that one (one slot per entry). If it is gone by now, create anew.
            drop(state);
            if let Some(obj) = self.open_existing(bucket, info)? {
                return Ok(obj);
            }
            state = self.state.lock().unwrap();
            if let Some(obj) = state.open.get(&id).and_then(Weak::upgrade) {
                return Ok(obj);
            }
            if state.entries.get(&id).is_some() {
                return Err(CacheError::Busy);
            }
        }
        self.spoil_checkpoint(&mut state);
        let data_path = self.dir.data_path(&id);
        let header = IndexHeader {
            block_size: self.config.block_size,
            object_size: info.size,
            mtime_ms: info.last_modified.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0),
            checksum,
            bucket: bucket.to_string(),
            key: info.key.clone(),
            etag: info.etag.clone(),
        };
        let io_err = |source| CacheError::Io { path: data_path.display().to_string(), source };
        let data = Self::shedding_on_emfile(&mut state, || store::create_private_rw(&data_path)).map_err(io_err)?;
        data.set_len(info.size).map_err(io_err)?;
        let mut index = match ObjectIndex::create(&self.catalog, &id, header) {
            Ok(index) => index,
            Err(e) => {
                // No slot (a full disk): the data file would be an orphan until the next scan.
                let _ = std::fs::remove_file(&data_path);
                return Err(e.into());
            }
        };
        // The version this one replaces will not be read again by new opens: evict it first.
        let key_hash = state.entries.key_hash(version_key(bucket, &info.key).as_bytes());
        state.entries.insert(id, index.at(), 0, key_hash, true);
        if index.header().checksum.algorithm == crate::checksum::Algorithm::None {
            index.set_verify_state(VerifyState::Unverifiable);
        }
        Ok(self.activate(&mut state, id, index, data, data_path, false))
    }

    /// Makes an opened entry live: in the open map, the warm set and the eviction order.
    /// `checked`: every block was checked in this mount before the entry last left memory.
    fn activate(
        &self,
        state: &mut State,
        id: ObjectId,
        mut index: ObjectIndex,
        data: std::fs::File,
        data_path: std::path::PathBuf,
        checked: bool,
    ) -> Arc<CachedObject> {
        index.touch(now_secs());
        let header = index.header().clone();
        let words = header.block_count().div_ceil(64) as usize;
        let units = header.checksum.units(header.object_size).len();
        // Verified on disk means every block was proven then; a unit missing a block now (it did
        // not fit in the cache) has no proof for that block's next fetch, so it verifies again.
        let verified = index.verify_state() == VerifyState::Verified;
        let units_verified: Vec<bool> = header
            .checksum
            .units(header.object_size)
            .iter()
            .map(|unit| {
                let bs = header.block_size as u64;
                let blocks = unit.start / bs..unit.end.div_ceil(bs);
                verified && blocks.clone().all(|b| index.is_present(b))
            })
            .collect();
        let verified = verified && units_verified.iter().all(|v| *v);
        let obj = Arc::new(CachedObject {
            id,
            header,
            index: Mutex::new(index),
            data: Arc::new(data),
            data_path,
            checked: Mutex::new(vec![if checked { u64::MAX } else { 0 }; words]),
            verified: AtomicBool::new(verified),
            units_verified: Mutex::new(units_verified),
            units_failed: Mutex::new(vec![None; units]),
            proven: Mutex::default(),
            check_pass: AtomicBool::new(false),
        });
        let bytes = obj.entry_bytes();
        let record = state.entries.get_mut(&id).expect("an entry is recorded before it is activated");
        let old = std::mem::replace(&mut record.bytes, bytes);
        state.entries.promote(&id);
        state.total = state.total - old + bytes;
        if state.open.len() >= state.prune_open_at {
            state.open.retain(|_, w| w.strong_count() > 0);
            state.prune_open_at = (2 * state.open.len()).max(MIN_PRUNE_AT);
        }
        state.open.insert(id, Arc::downgrade(&obj));
        state.keep_warm(id, obj.clone());
        obj
    }

    /// Ids of every entry on disk, least recently used first.
    pub fn entry_ids(&self) -> Vec<ObjectId> {
        self.state.lock().unwrap().entries.oldest_first().map(|r| r.id()).collect()
    }

    /// Opens entry `id` from its index (for maintenance commands that start from the disk).
    pub fn open_id(&self, id: ObjectId) -> Result<Option<Arc<CachedObject>>, CacheError> {
        let h = self.snapshot(&id)?.header;
        self.open_existing(&h.bucket, &h.object_info())
    }

    /// A copy of entry `id`'s index as it stands.
    pub fn snapshot(&self, id: &ObjectId) -> Result<index::IndexSnapshot, IndexError> {
        let state = self.state.lock().unwrap();
        let bytes = match state.open.get(id).and_then(Weak::upgrade) {
            Some(obj) => obj.index.lock().unwrap().bytes().to_vec(),
            None => {
                let at = state.entries.get(id).map(|r| r.at).ok_or_else(|| IndexError::Io {
                    path: id.hex(),
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such cache entry"),
                })?;
                // No live entry, and the state lock held: this is the slot's one handle.
                let slot = self.catalog.open(at).map_err(|source| IndexError::Io { path: "cache catalog".into(), source })?;
                slot.bytes().to_vec()
            }
        };
        index::IndexSnapshot::parse(bytes).map_err(|source| IndexError::Format { path: id.hex(), source })
    }

    /// Flushes every open index's map; called at unmount.
    pub fn flush(&self) {
        let state = self.state.lock().unwrap();
        for obj in state.open.values().filter_map(Weak::upgrade) {
            let _ = obj.index.lock().unwrap().flush_async();
        }
    }
}

#[cfg(test)]
mod tests;
