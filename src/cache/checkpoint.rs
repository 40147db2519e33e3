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

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::catalog::SlotAt;
use super::entries::{Entries, Record};
use super::store::{write_private, LockStamp};
use super::ObjectId;

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
    /// Every entry, in eviction order.
    pub entries: Entries,
    /// Sum of their accounted bytes.
    pub total: u64,
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

/// Encodes `entries` as a checkpoint for a lock file in state `stamp`, with each entry's
/// `bucket\0key` from `keys`. `None` if some entry has no key there: such a cache is scanned
/// again rather than described partly.
pub(super) fn encode(stamp: &LockStamp, entries: &Entries, keys: &HashMap<ObjectId, String>) -> Option<Vec<u8>> {
    // Rank 0 is the least recently used entry; groups in byte order of their key, and a group's
    // entries in rank order.
    let mut rows: Vec<(&str, u32, &Record)> = entries
        .oldest_first()
        .enumerate()
        .map(|(rank, r)| Some((keys.get(&r.id())?.as_str(), u32::try_from(rank).ok()?, r)))
        .collect::<Option<_>>()?;
    rows.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    let total: u64 = rows.iter().map(|(_, _, r)| r.bytes).sum();
    let mut out = Vec::with_capacity(HEADER_LEN + rows.len() * (ENTRY_LEN + 32) + TRAILER_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&stamp.pid.to_le_bytes());
    for v in [stamp.dev, stamp.ino, stamp.mtime_ns as u64, stamp.ctime_ns as u64, rows.len() as u64, total] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    let mut previous: &[u8] = &[];
    for group in rows.chunk_by(|a, b| a.0 == b.0) {
        let key = group[0].0.as_bytes();
        let shared = key.iter().zip(previous).take_while(|(a, b)| a == b).count().min(u16::MAX as usize);
        let suffix = &key[shared..];
        out.extend_from_slice(&(shared as u16).to_le_bytes());
        out.extend_from_slice(&u16::try_from(suffix.len()).ok()?.to_le_bytes());
        out.extend_from_slice(suffix);
        out.extend_from_slice(&u32::try_from(group.len()).ok()?.to_le_bytes());
        for (_, rank, r) in group {
            out.extend_from_slice(&r.id().0);
            out.extend_from_slice(&r.bytes.to_le_bytes());
            out.extend_from_slice(&rank.to_le_bytes());
            out.extend_from_slice(&r.at.size.to_le_bytes());
            out.extend_from_slice(&r.at.slot.to_le_bytes());
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
    let mut entries = Entries::with_capacity(count);
    let mut by_rank: Vec<Option<(ObjectId, u64, SlotAt, u64)>> = vec![None; count];
    let mut key: Vec<u8> = Vec::new();
    let (mut sum, mut described) = (0u64, 0usize);
    while r.at < body.len() {
        let shared = r.u16()? as usize;
        let suffix_len = r.u16()? as usize;
        if shared > key.len() {
            return Err(Damaged("key prefix longer than the previous key"));
        }
        key.truncate(shared);
        key.extend_from_slice(r.take(suffix_len)?);
        if std::str::from_utf8(&key).is_err() {
            return Err(Damaged("key is not UTF-8"));
        }
        let key_hash = entries.key_hash(&key);
        let n = r.u32()? as usize;
        if n == 0 {
            return Err(Damaged("a key without entries"));
        }
        for _ in 0..n {
            let id = ObjectId(r.take(32)?.try_into().expect("32 bytes"));
            let bytes = r.u64()?;
            let rank = r.u32()? as usize;
            let at = SlotAt { size: r.u32()?, slot: r.u32()? };
            match by_rank.get_mut(rank) {
                Some(slot @ None) => *slot = Some((id, bytes, at, key_hash)),
                _ => return Err(Damaged("an eviction rank is out of range or repeated")),
            }
            sum = sum.checked_add(bytes).ok_or(Damaged("byte total overflows"))?;
            described += 1;
        }
    }
    if sum != total || described != count {
        return Err(Damaged("entries do not add up to the header's totals"));
    }
    // Least recently used first, so the last version of a key loaded is its newest.
    for (id, bytes, at, key_hash) in by_rank.into_iter().flatten() {
        if entries.get(&id).is_some() {
            return Err(Damaged("an entry is listed twice"));
        }
        entries.insert(id, at, bytes, key_hash, false);
    }
    if entries.len() != count {
        return Err(Damaged("an eviction rank is missing"));
    }
    Ok(Snapshot { entries, total })
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
        // Keys are read from the slots (the state holds none); slots change only under the state
        // lock, which is held from here on, and fetches have drained.
        let mut state = self.state.lock().unwrap();
        let keys = match super::recovery::read_keys(&self.dir) {
            Ok(keys) => keys.into_iter().collect(),
            Err(e) => {
                tracing::warn!("no cache checkpoint written: reading the catalog's keys: {e}");
                return;
            }
        };
        let Some(bytes) = encode(&stamp, &state.entries, &keys) else {
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
