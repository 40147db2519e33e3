//! Index images: each entry's index as the checkpoint recorded it, kept in the checkpoint's
//! mapping, so that the first open of a cached object after a clean remount reads no index file
//! (at 100,000 small objects that file read was half the random reads of an epoch).
//!
//! The same holds for an entry that leaves memory during a mount (past the entries kept open):
//! its index bytes, which equal its file at that moment, are kept here (up to
//! [`KEPT_BYTES`]), so that a warm epoch over more objects than are kept open does not read and
//! map every index file again either.
//!
//! An image stands for its index file until this mount changes the entry: the first change
//! (a block written or dropped, a new verification state) maps the file and *retires* the
//! image, and from then on the file is the truth again, exactly as for an entry the checkpoint
//! never described. Opening only stamps the access time, which is kept here rather than written
//! to the file (that write dirtied one page per object per epoch) and goes into the next
//! checkpoint. Why an image may stand for the file at all: the checkpoint was trusted only
//! because nobody wrote the directory after it was made (see [`super::checkpoint`]), so at mount
//! every image equals its file, and only this process can make them differ.

use std::collections::HashMap;
use std::sync::Mutex;

use memmap2::Mmap;

use super::ObjectId;

/// Where one image lies in the checkpoint, and the access time this mount gave it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ImageAt {
    /// Byte offset in the checkpoint.
    pub offset: usize,
    /// Length: exactly the index file's.
    pub len: usize,
    /// Set when an open in this mount stamped the entry (seconds since the epoch).
    pub touched: Option<u64>,
}

/// Most bytes of index images kept in memory for entries that left memory (64 MiB: a
/// quarter of a million one-block objects). Past it, such entries read their file again.
pub const KEPT_BYTES: usize = 64 << 20;

/// Index images: the checkpoint's (mapped), and those of entries that left memory (owned).
pub(super) struct Images {
    map: Option<Mmap>,
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    at: HashMap<ObjectId, ImageAt>,
    kept: HashMap<ObjectId, Box<[u8]>>,
    kept_bytes: usize,
}

impl Images {
    /// No images: every index is read from its file.
    pub fn none() -> Self {
        Self { map: None, table: Mutex::default() }
    }

    /// The images of a decoded checkpoint held in `map`. Each was bounds-checked by the decoder.
    pub fn new(map: Mmap, at: HashMap<ObjectId, ImageAt>) -> Self {
        Self { map: Some(map), table: Mutex::new(Table { at, ..Table::default() }) }
    }

    /// A copy of entry `id`'s image, with the access time this mount stamped, if it still
    /// stands for the index file.
    pub fn get(&self, id: &ObjectId) -> Option<Vec<u8>> {
        let table = self.table.lock().unwrap();
        if let Some(kept) = table.kept.get(id) {
            return Some(kept.to_vec());
        }
        let at = *table.at.get(id)?;
        drop(table);
        let mut bytes = self.map.as_ref()?.get(at.offset..at.offset + at.len)?.to_vec();
        if let Some(t) = at.touched {
            stamp_access(&mut bytes, t);
        }
        Some(bytes)
    }

    /// Whether entry `id` has an image that stands for its file.
    pub fn has(&self, id: &ObjectId) -> bool {
        let table = self.table.lock().unwrap();
        table.kept.contains_key(id) || table.at.contains_key(id)
    }

    /// Records an open's access time for the next checkpoint.
    pub fn touch(&self, id: &ObjectId, now_s: u64) {
        let mut table = self.table.lock().unwrap();
        if let Some(kept) = table.kept.get_mut(id) {
            stamp_access(kept, now_s);
        } else if let Some(at) = table.at.get_mut(id) {
            at.touched = Some(now_s);
        }
    }

    /// Keeps the bytes of an entry that leaves memory, which stand for its index file (they
    /// are the file's, or an image of it with a newer access time), unless the budget is spent.
    pub fn keep(&self, id: ObjectId, bytes: &[u8]) {
        let mut table = self.table.lock().unwrap();
        let replaced = table.kept.get(&id).map_or(0, |b| b.len());
        if table.kept_bytes - replaced + bytes.len() > KEPT_BYTES {
            return;
        }
        table.kept_bytes = table.kept_bytes - replaced + bytes.len();
        table.kept.insert(id, bytes.into());
        table.at.remove(&id);
    }

    /// The image no longer stands for the index file (the entry changed, or is gone).
    pub fn retire(&self, id: &ObjectId) {
        let mut table = self.table.lock().unwrap();
        table.at.remove(id);
        if let Some(kept) = table.kept.remove(id) {
            table.kept_bytes -= kept.len();
        }
    }
}

/// Writes the last-access time into an index's bytes (state section: the first 8 bytes after
/// the header, whose length is the u32 at offset 12). Leaves bytes too short for that alone:
/// they fail validation when parsed.
pub(super) fn stamp_access(index: &mut [u8], now_s: u64) {
    let Some(header_len) = index.get(12..16).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize) else { return };
    let state_off = header_len.next_multiple_of(8);
    if let Some(slot) = index.get_mut(state_off..state_off + 8) {
        slot.copy_from_slice(&now_s.to_le_bytes());
    }
}
