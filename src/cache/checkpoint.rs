//! The checkpoint: what a mount knows of the whole cache (every entry's id, accounted bytes,
//! place in the eviction order, bucket and key, and the image of its index), written in one file
//! when the cache is closed cleanly, so the next mount reads one file instead of every index (a
//! 100,000-object remount read 100,000 index files), and opens after it read no index file
//! either (see [`super::images`]).
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

use super::images::{ImageAt, Images};
use super::store::{write_private, LockStamp};
use super::ObjectId;

/// The file's name in the cache dir.
pub const CHECKPOINT: &str = "checkpoint";
const MAGIC: &[u8; 8] = b"HOARDCKP";
const VERSION: u32 = 2;
const HEADER_LEN: usize = 64;
const TRAILER_LEN: usize = 32;
/// An entry without its image: id, accounted bytes, rank, image length.
const ENTRY_LEN: usize = 32 + 8 + 4 + 4;

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
    /// Every entry's index image.
    pub images: Images,
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

/// Encodes `versions` and `lru`, with each entry's index bytes as `image` gives them, as a
/// checkpoint for a lock file in state `stamp`. `None` if some entry has no bucket and key known
/// (its index was unreadable at the last scan) or no image: such a cache is scanned again rather
/// than described partly.
pub(super) fn encode(
    stamp: &LockStamp,
    lru: &LruCache<ObjectId, u64>,
    versions: &BTreeMap<String, Vec<ObjectId>>,
    mut image: impl FnMut(&ObjectId) -> Option<Vec<u8>>,
) -> Option<Vec<u8>> {
    let described: usize = versions.values().map(Vec::len).sum();
    if described != lru.len() {
        return None;
    }
    // Rank 0 is the least recently used entry.
    let rank: HashMap<ObjectId, u32> = lru.iter().rev().enumerate().map(|(i, (id, _))| (*id, i as u32)).collect();
    let total: u64 = lru.iter().map(|(_, b)| *b).sum();
    let mut out = Vec::with_capacity(HEADER_LEN + lru.len() * (ENTRY_LEN + 256) + TRAILER_LEN);
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
            let image = image(id)?;
            out.extend_from_slice(&u32::try_from(image.len()).ok()?.to_le_bytes());
            out.extend_from_slice(&image);
        }
        previous = key;
    }
    let hash = blake3::hash(&out);
    out.extend_from_slice(hash.as_bytes());
    Some(out)
}

/// Decodes a checkpoint, trusting it only if it was made for a lock file in state `stamp`; the
/// images are located, not parsed (an open parses the one it uses).
pub(super) fn decode(bytes: &[u8], stamp: &LockStamp) -> Result<(Snapshot, HashMap<ObjectId, ImageAt>), CheckpointError> {
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
    let mut images = HashMap::with_capacity(count);
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
            let len = r.u32()? as usize;
            images.insert(id, ImageAt { offset: r.at, len, touched: None });
            r.take(len)?;
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
    Ok((Snapshot { lru, total, versions, version_of, images: Images::none() }, images))
}

/// Maps and decodes `dir/checkpoint`; the mapping, which outlives the file's removal, holds
/// the images.
pub(super) fn load(dir: &Path, stamp: &LockStamp) -> Result<Snapshot, CheckpointError> {
    let path = dir.join(CHECKPOINT);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(CheckpointError::Missing),
        Err(source) => return Err(CheckpointError::Io { path, source }),
    };
    // SAFETY: the file is private to the cache dir's one writer, which is this process (the
    // caller holds the lock), and it is only ever replaced by rename, never written in place,
    // so the mapped bytes cannot change under us.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| CheckpointError::Io { path, source })?;
    let (mut snapshot, at) = decode(&map, stamp)?;
    snapshot.images = Images::new(map, at);
    Ok(snapshot)
}

/// Every entry's index image and the accounted total, if `dir` holds a checkpoint that
/// describes it now: for readers beside the directory's writers (`cache stat`, `cache ls`),
/// which take no lock. The file is read before the lock file is looked at, so a writer that
/// started meanwhile (it rewrites the lock before it changes anything) makes it stale.
pub(super) fn current(dir: &super::CacheDir) -> Option<(u64, Vec<(ObjectId, Vec<u8>)>)> {
    let bytes = std::fs::read(dir.root().join(CHECKPOINT)).ok()?;
    let stamp = dir.lock_stamp_now()?;
    let (snapshot, at) = decode(&bytes, &stamp).ok()?;
    let images = at.into_iter().map(|(id, at)| (id, bytes[at.offset..at.offset + at.len].to_vec())).collect();
    Some((snapshot.total, images))
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
        // Each entry's index: as held in memory if open, else its image if that still stands
        // for the file, else the file (read from many threads: after a scan, that is most).
        let unread: Vec<ObjectId> = state
            .lru
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| state.open.get(id).and_then(std::sync::Weak::upgrade).is_none() && !self.images.has(id))
            .collect();
        let mut read: HashMap<ObjectId, Vec<u8>> =
            super::read_snapshots(&self.dir, &unread).into_iter().filter_map(|(id, s)| Some((id, s.ok()?.into_bytes()))).collect();
        let image = |id: &ObjectId| match state.open.get(id).and_then(std::sync::Weak::upgrade) {
            Some(obj) => Some(obj.index.lock().unwrap().bytes().to_vec()),
            None => self.images.get(id).or_else(|| read.remove(id)),
        };
        let Some(bytes) = encode(&stamp, &state.lru, &state.versions, image) else {
            tracing::info!("no cache checkpoint written: some entry was unreadable at the last scan");
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
