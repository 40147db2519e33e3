//! The checkpoint: what a mount knows of the whole cache (every entry's id, accounted bytes,
//! place in the eviction order, bucket and key, and the catalog slot of its index), written in
//! one file when the cache is closed cleanly, so the next mount reads one file instead of the
//! whole catalog.
//!
//! It is a cache of the indexes, never the only copy of anything: it is trusted only if the
//! directory's lock file is exactly as the closing process left it (same pid, inode, mtime and
//! ctime, see [`LockStamp`]). Every writer rewrites the lock file when it takes it, an older hoardfs
//! included, so a checkpoint is stale as soon as anyone else has written the directory; a crash
//! leaves the lock rewritten by the crashed process, so its checkpoint is stale too. A stale,
//! torn or unparsable checkpoint means a full scan, as before. The byte layout is specified in
//! `cache-format/README.md`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use lru::LruCache;

use super::catalog::SlotAt;
use super::store::{write_private, LockStamp};
use super::{ObjectId, Placed};

/// The file's name in the cache dir.
pub const CHECKPOINT: &str = "checkpoint";
const MAGIC: &[u8; 8] = b"HOARDCKP";
const VERSION: u32 = 3;
const HEADER_LEN: usize = 64;
const TRAILER_LEN: usize = 32;
/// An entry: id, accounted bytes, rank, slot size, slot.
const ENTRY_LEN: usize = 32 + 8 + 4 + 4 + 4;

/// The in-memory state a checkpoint holds.
pub(super) struct Snapshot {
    /// Every entry, least recently used first, with its accounted bytes.
    pub lru: LruCache<ObjectId, u64>,
    /// Sum of the accounted bytes.
    pub total: u64,
    /// Entry ids per `bucket\0key`.
    pub versions: BTreeMap<String, Vec<ObjectId>>,
    /// The reverse of `versions`.
    pub version_of: HashMap<ObjectId, String>,
    /// Every entry's catalog slot.
    pub slots: HashMap<ObjectId, Placed>,
}

/// Why a checkpoint was not used.
#[derive(Debug, thiserror::Error)]
pub(super) enum CheckpointError {
    /// There is none (the last writer did not close cleanly, or never wrote one).
    #[error("no checkpoint")]
    Missing,
    /// It could not be read.
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// Someone wrote the directory after it was made.
    #[error("the checkpoint is older than the last writer of the directory")]
    Stale,
    /// Its bytes are not a checkpoint of this version.
    #[error("the checkpoint is damaged: {0}")]
    Damaged(&'static str),
}

/// Encodes `versions`, `lru` and `slots` as a checkpoint for a lock file in state `stamp`.
/// `None` if some entry has no bucket and key known or no slot: such a cache is scanned again
/// rather than described partly.
pub(super) fn encode(
    stamp: &LockStamp,
    lru: &LruCache<ObjectId, u64>,
    versions: &BTreeMap<String, Vec<ObjectId>>,
    slots: &HashMap<ObjectId, Placed>,
) -> Option<Vec<u8>> {
    let described: usize = versions.values().map(Vec::len).sum();
    if described != lru.len() {
        return None;
    }
    // Rank 0 is the least recently used entry.
    let rank: HashMap<ObjectId, u32> = lru.iter().rev().enumerate().map(|(i, (id, _))| (*id, i as u32)).collect();
    let total: u64 = lru.iter().map(|(_, b)| *b).sum();
    let mut out = Vec::with_capacity(HEADER_LEN + lru.len() * (ENTRY_LEN + 32) + TRAILER_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&stamp.pid.to_le_bytes());
    for v in [stamp.dev, stamp.ino, stamp.mtime_ns as u64, stamp.ctime_ns as u64, lru.len() as u64, total] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    let mut previous: &[u8] = &[];
    for (vkey, ids) in versions {
        let key = vkey.as_bytes();
        let shared = key.iter().zip(previous).take_while(|(a, b)| a == b).count().min(u16::MAX as usize);
        let suffix = &key[shared..];
        out.extend_from_slice(&(shared as u16).to_le_bytes());
        out.extend_from_slice(&u16::try_from(suffix.len()).ok()?.to_le_bytes());
        out.extend_from_slice(suffix);
        out.extend_from_slice(&u32::try_from(ids.len()).ok()?.to_le_bytes());
        for id in ids {
            out.extend_from_slice(&id.0);
            out.extend_from_slice(&lru.peek(id)?.to_le_bytes());
            out.extend_from_slice(&rank.get(id)?.to_le_bytes());
            let at = slots.get(id)?.at;
            out.extend_from_slice(&at.size.to_le_bytes());
            out.extend_from_slice(&at.slot.to_le_bytes());
        }
        previous = key;
    }
    let hash = blake3::hash(&out);
    out.extend_from_slice(hash.as_bytes());
    Some(out)
}

/// Decodes a checkpoint, trusting it only if it was made for a lock file in state `stamp`.
pub(super) fn decode(bytes: &[u8], stamp: &LockStamp) -> Result<Snapshot, CheckpointError> {
    use CheckpointError::Damaged;
    if bytes.len() < HEADER_LEN + TRAILER_LEN || &bytes[..8] != MAGIC {
        return Err(Damaged("no checkpoint header"));
    }
    let (body, trailer) = bytes.split_at(bytes.len() - TRAILER_LEN);
    if blake3::hash(body).as_bytes() != trailer {
        return Err(Damaged("its blake3 does not match (torn or altered)"));
    }
    let mut r = Reader { bytes: body, at: 8 };
    if r.u32()? != VERSION {
        return Err(Damaged("unknown checkpoint version"));
    }
    let pid = r.u32()?;
    let found = LockStamp { pid, dev: r.u64()?, ino: r.u64()?, mtime_ns: r.u64()? as i64, ctime_ns: r.u64()? as i64 };
    if found != *stamp {
        return Err(CheckpointError::Stale);
    }
    let count = usize::try_from(r.u64()?).map_err(|_| Damaged("entry count"))?;
    let total = r.u64()?;
    if count > body.len() / ENTRY_LEN {
        return Err(Damaged("more entries than bytes"));
    }
    let mut by_rank: Vec<Option<(ObjectId, u64)>> = vec![None; count];
    let mut versions = BTreeMap::new();
    let mut version_of = HashMap::with_capacity(count);
    let mut slots = HashMap::with_capacity(count);
    let mut key: Vec<u8> = Vec::new();
    let mut sum = 0u64;
    while r.at < body.len() {
        let shared = r.u16()? as usize;
        let suffix_len = r.u16()? as usize;
        if shared > key.len() {
            return Err(Damaged("key prefix longer than the previous key"));
        }
        key.truncate(shared);
        key.extend_from_slice(r.take(suffix_len)?);
        let vkey = String::from_utf8(key.clone()).map_err(|_| Damaged("key is not UTF-8"))?;
        let n = r.u32()? as usize;
        if n == 0 {
            return Err(Damaged("a key without entries"));
        }
        let mut ids = Vec::with_capacity(n.min(count));
        for _ in 0..n {
            let id = ObjectId(r.take(32)?.try_into().expect("32 bytes"));
            let bytes = r.u64()?;
            let rank = r.u32()? as usize;
            slots.insert(id, SlotAt { size: r.u32()?, slot: r.u32()? }.into());
            match by_rank.get_mut(rank) {
                Some(slot @ None) => *slot = Some((id, bytes)),
                _ => return Err(Damaged("an eviction rank is out of range or repeated")),
            }
            sum = sum.checked_add(bytes).ok_or(Damaged("byte total overflows"))?;
            ids.push(id);
            version_of.insert(id, vkey.clone());
        }
        versions.insert(vkey, ids);
    }
    if sum != total || version_of.len() != count {
        return Err(Damaged("entries do not add up to the header's totals"));
    }
    let mut lru = LruCache::unbounded();
    for (id, bytes) in by_rank.into_iter().flatten() {
        lru.put(id, bytes);
    }
    if lru.len() != count {
        return Err(Damaged("an eviction rank is missing"));
    }
    if slots.len() != count {
        return Err(Damaged("an entry is listed twice"));
    }
    Ok(Snapshot { lru, total, versions, version_of, slots })
}

/// Reads and decodes `dir/checkpoint`.
pub(super) fn load(dir: &Path, stamp: &LockStamp) -> Result<Snapshot, CheckpointError> {
    let path = dir.join(CHECKPOINT);
    match std::fs::read(&path) {
        Ok(bytes) => decode(&bytes, stamp),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(CheckpointError::Missing),
        Err(source) => Err(CheckpointError::Io { path, source }),
    }
}

/// Writes `bytes` as `dir/checkpoint` (through a temporary file and a rename, no fsync: a torn
/// file fails its blake3 and costs a scan).
pub(super) fn store(dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{CHECKPOINT}.tmp"));
    write_private(&tmp, bytes)?;
    std::fs::rename(&tmp, dir.join(CHECKPOINT))
}

/// Removes `dir/checkpoint`: the cache is about to change.
pub(super) fn remove(dir: &Path) {
    match std::fs::remove_file(dir.join(CHECKPOINT)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("removing the cache checkpoint: {e} (it is stale and will be ignored)"),
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CheckpointError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or(CheckpointError::Damaged("truncated"))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn u16(&mut self) -> Result<u16, CheckpointError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self) -> Result<u32, CheckpointError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, CheckpointError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
}

impl super::BlockCache {
    /// Writes the checkpoint of the current state, for the next writer to start from; called
    /// when the cache is closed cleanly (unmount, end of `cache warm`, `verify`, `evict`), after
    /// fetches drained.
    /// Should anything change afterwards, the change removes it first.
    pub fn checkpoint(&self) {
        let Some((_, stamp)) = self.dir.lock_stamps() else { return };
        let mut state = self.state.lock().unwrap();
        let Some(bytes) = encode(&stamp, &state.lru, &state.versions, &state.slots) else {
            tracing::info!("no cache checkpoint written: the state does not describe every entry");
            return;
        };
        match store(self.dir.root(), &bytes) {
            Ok(()) => state.checkpointed = true,
            Err(e) => tracing::warn!("writing the cache checkpoint: {e}; the next mount scans the indexes"),
        }
    }

    /// Removes the checkpoint if one was written: `state` is about to change.
    pub(super) fn spoil_checkpoint(&self, state: &mut super::State) {
        if std::mem::take(&mut state.checkpointed) {
            remove(self.dir.root());
        }
    }
}

#[cfg(test)]
mod tests;
