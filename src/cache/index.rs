//! One object version's index: header, state, presence bitmap and block records, held in a
//! slot of the catalog ([`super::catalog`]), read and written in place through its mapping.
//!
//! Ordering rule (see cache-format/README.md): a block's record (blake3, CRC) is written before
//! its presence bit, and the data before either. No fsync is needed for correctness: after a
//! crash, a present bit whose record or data is torn fails the blake3 check and the block is
//! fetched again.

use std::path::Path;

use super::catalog::{Catalog, Slot, SlotAt};
use super::format::{FormatError, IndexHeader, Layout, VerifyState, RECORD_LEN};
use super::ObjectId;

/// Why an index could not be read or created.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The file system said no.
    #[error("{path}: {source}")]
    Io {
        /// The index file, or the catalog.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The bytes are not a valid index.
    #[error("{path}: {source}")]
    Format {
        /// The index file, or the catalog slot.
        path: String,
        /// What is wrong.
        source: FormatError,
    },
}

/// How stale a last-access stamp may get before an open rewrites it: an hour.
pub const ACCESS_STAMP_EVERY_S: u64 = 3600;

/// An entry's index, in its catalog slot.
pub struct ObjectIndex {
    header: IndexHeader,
    layout: Layout,
    slot: Slot,
}

impl ObjectIndex {
    /// Writes a fresh, empty index for `header` into a free slot of `catalog`.
    pub fn create(catalog: &Catalog, id: &ObjectId, header: IndexHeader) -> Result<Self, IndexError> {
        let mut bytes = header.encode();
        let layout = Layout::new(bytes.len(), header.block_count());
        bytes.resize(layout.file_len, 0);
        let slot = catalog.alloc(id, &bytes).map_err(|source| IndexError::Io { path: "cache catalog".into(), source })?;
        Ok(Self { header, layout, slot })
    }

    /// The index in `slot`, checked like a file: header hash, then length against the layout.
    pub fn open(slot: Slot) -> Result<Self, FormatError> {
        let (header, layout) = parse(slot.bytes())?;
        Ok(Self { header, layout, slot })
    }

    /// Where it lives.
    pub fn at(&self) -> SlotAt {
        self.slot.at()
    }

    /// The index's bytes (for the checkpoint and `cache` readers).
    pub(super) fn bytes(&self) -> &[u8] {
        self.slot.bytes()
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        self.slot.bytes_mut()
    }

    /// Reads and validates a format 1 index file with plain reads (upgrading a cache dir, and
    /// reading one not upgraded yet).
    pub fn read_snapshot(path: &Path) -> Result<IndexSnapshot, IndexError> {
        let bytes = std::fs::read(path).map_err(|source| IndexError::Io { path: path.display().to_string(), source })?;
        IndexSnapshot::parse(bytes).map_err(|source| IndexError::Format { path: path.display().to_string(), source })
    }

    /// The immutable header.
    pub fn header(&self) -> &IndexHeader {
        &self.header
    }

    /// Whether block `b`'s presence bit is set.
    pub fn is_present(&self, b: u64) -> bool {
        bit(&self.bytes()[self.layout.bitmap_off..], b)
    }

    /// The recorded blake3 of block `b`.
    pub fn block_hash(&self, b: u64) -> [u8; 32] {
        let off = self.record_off(b);
        self.bytes()[off..off + 32].try_into().unwrap()
    }

    /// The recorded CRC of block `b` (in the object's CRC algorithm).
    pub fn block_crc(&self, b: u64) -> u64 {
        read_u64(self.bytes(), self.record_off(b) + 32)
    }

    /// Records block `b`'s hash and CRC, then sets its presence bit (in that order).
    pub fn mark_present(&mut self, b: u64, hash: &[u8; 32], crc: u64) {
        let off = self.record_off(b);
        let byte = self.layout.bitmap_off + (b / 8) as usize;
        let bytes = self.bytes_mut();
        bytes[off..off + 32].copy_from_slice(hash);
        bytes[off + 32..off + RECORD_LEN].copy_from_slice(&crc.to_le_bytes());
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        bytes[byte] |= 1 << (b % 8);
    }

    /// Clears block `b`'s presence bit (a blake3 mismatch, or eviction of one block).
    pub fn clear(&mut self, b: u64) {
        if self.is_present(b) {
            let byte = self.layout.bitmap_off + (b / 8) as usize;
            self.bytes_mut()[byte] &= !(1 << (b % 8));
        }
    }

    /// Number of present blocks.
    pub fn present_count(&self) -> u64 {
        count_bits(&self.bytes()[self.layout.bitmap_off..self.layout.bitmap_off + self.layout.bitmap_len])
    }

    /// Stamps the last-access time (seconds since the epoch), which orders eviction after a
    /// crash and answers `cache ls`/`evict --older-than`, unless the stamp is less than
    /// [`ACCESS_STAMP_EVERY_S`] old: eviction within a mount follows the in-memory order, so
    /// the stamp needs no more precision, and an epoch repeated within the hour then writes
    /// nothing (every stamp dirtied a catalog page: at 1.28 M objects, ~0.5 GB written back
    /// per epoch of a read-only workload).
    pub fn touch(&mut self, now_s: u64) {
        if now_s.abs_diff(self.last_access()) < ACCESS_STAMP_EVERY_S {
            return;
        }
        let off = self.layout.state_off;
        self.bytes_mut()[off..off + 8].copy_from_slice(&now_s.to_le_bytes());
    }

    /// Last-access time, seconds since the epoch.
    pub fn last_access(&self) -> u64 {
        read_u64(self.bytes(), self.layout.state_off)
    }

    /// Verification state against S3's checksum.
    pub fn verify_state(&self) -> VerifyState {
        VerifyState::from_code(self.bytes()[self.layout.state_off + 8])
    }

    /// Records the verification state (an unchanged state writes nothing).
    pub fn set_verify_state(&mut self, state: VerifyState) {
        let off = self.layout.state_off + 8;
        if self.bytes()[off] != state as u8 {
            self.bytes_mut()[off] = state as u8;
        }
    }

    /// Asks the kernel to write dirty pages back soon; called at unmount, not on the hot path.
    pub fn flush_async(&self) -> std::io::Result<()> {
        self.slot.flush_async()
    }

    fn record_off(&self, b: u64) -> usize {
        assert!(b < self.header.block_count(), "block {b} out of range");
        self.layout.records_off + RECORD_LEN * b as usize
    }
}

/// An index read with plain reads (see [`ObjectIndex::read_snapshot`]).
pub struct IndexSnapshot {
    /// The header.
    pub header: IndexHeader,
    layout: Layout,
    bytes: Vec<u8>,
}

impl IndexSnapshot {
    /// Validates an index's bytes: header hash, then length against the layout.
    pub fn parse(bytes: Vec<u8>) -> Result<Self, FormatError> {
        let (header, layout) = parse(&bytes)?;
        Ok(Self { header, layout, bytes })
    }
    /// The index's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    /// Whether block `b` is present.
    pub fn is_present(&self, b: u64) -> bool {
        bit(&self.bytes[self.layout.bitmap_off..], b)
    }
    /// Number of present blocks.
    pub fn present_count(&self) -> u64 {
        count_bits(&self.bytes[self.layout.bitmap_off..self.layout.bitmap_off + self.layout.bitmap_len])
    }
    /// Last-access time, seconds since the epoch.
    pub fn last_access(&self) -> u64 {
        read_u64(&self.bytes, self.layout.state_off)
    }
    /// Verification state.
    pub fn verify_state(&self) -> VerifyState {
        VerifyState::from_code(self.bytes[self.layout.state_off + 8])
    }
    /// Recorded blake3 of block `b`.
    pub fn block_hash(&self, b: u64) -> [u8; 32] {
        let off = self.layout.records_off + RECORD_LEN * b as usize;
        self.bytes[off..off + 32].try_into().unwrap()
    }
}

/// Checks an index's bytes: the header (with its hash), then the length its layout implies.
fn parse(bytes: &[u8]) -> Result<(IndexHeader, Layout), FormatError> {
    let (header, header_len) = IndexHeader::decode(bytes)?;
    let layout = Layout::new(header_len, header.block_count());
    if bytes.len() != layout.file_len {
        return Err(FormatError::Corrupt("file length does not match the layout"));
    }
    Ok((header, layout))
}

fn bit(bitmap: &[u8], b: u64) -> bool {
    bitmap[(b / 8) as usize] & (1 << (b % 8)) != 0
}

fn count_bits(bitmap: &[u8]) -> u64 {
    bitmap.iter().map(|x| x.count_ones() as u64).sum()
}

fn read_u64(bytes: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(bytes[off..off + 8].try_into().unwrap())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::format::tests::vector_header;

    #[test]
    fn create_mark_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::new(dir.path(), []).unwrap();
        let id = ObjectId([5; 32]);
        let mut idx = ObjectIndex::create(&catalog, &id, vector_header()).unwrap();
        assert_eq!(idx.present_count(), 0);
        idx.mark_present(2, &[9u8; 32], 77);
        idx.touch(1_700_000_000);
        idx.touch(1_700_000_000 + ACCESS_STAMP_EVERY_S - 1); // too soon to write again
        idx.set_verify_state(VerifyState::Verified);
        let at = idx.at();
        drop(idx);
        let idx = ObjectIndex::open(catalog.open(at).unwrap()).unwrap();
        assert!(idx.is_present(2) && !idx.is_present(0));
        assert_eq!(idx.block_hash(2), [9u8; 32]);
        assert_eq!(idx.last_access(), 1_700_000_000);
        assert_eq!(idx.verify_state(), VerifyState::Verified);
        let read = crate::cache::catalog::read_slots(dir.path()).unwrap();
        let snap = IndexSnapshot::parse(read[0].index.clone().unwrap()).unwrap();
        assert_eq!((read[0].id, snap.present_count()), (id, 1));
    }

    #[test]
    fn truncated_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.idx");
        let mut bytes = std::fs::read(fixture()).unwrap();
        bytes.pop();
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(ObjectIndex::read_snapshot(&path), Err(IndexError::Format { .. })));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]
        /// A valid index with any byte changed, or cut anywhere, either fails to parse or parses
        /// into an index whose every accessor stays in bounds: never a panic.
        #[test]
        fn damaged_indexes_never_panic(pos in 0usize..400, val in 0u8..=255, cut in proptest::option::of(0usize..400)) {
            let mut bytes = std::fs::read(fixture()).unwrap();
            let pos = pos % bytes.len();
            bytes[pos] ^= val;
            if let Some(cut) = cut {
                bytes.truncate(cut % bytes.len());
            }
            if let Ok(snap) = IndexSnapshot::parse(bytes.clone()) {
                for b in 0..snap.header.block_count() {
                    let _ = (snap.is_present(b), snap.block_hash(b));
                }
                let _ = (snap.present_count(), snap.last_access(), snap.verify_state());
            }
            // One catalog for every case (a new one per case is a new slab each time).
            static CATALOG: std::sync::OnceLock<(tempfile::TempDir, Catalog)> = std::sync::OnceLock::new();
            let (_, catalog) = CATALOG.get_or_init(|| {
                let dir = tempfile::tempdir().unwrap();
                let catalog = Catalog::new(dir.path(), []).unwrap();
                (dir, catalog)
            });
            // An empty index is refused (its slot would read as free); any other is stored.
            proptest::prop_assert_eq!(catalog.alloc(&ObjectId([1; 32]), &bytes).is_err(), bytes.is_empty());
            if let Ok(slot) = catalog.alloc(&ObjectId([1; 32]), &bytes) {
                let _ = ObjectIndex::open(slot).map(|i| (i.present_count(), i.verify_state()));
            }
        }
    }

    fn fixture() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cache-format/vectors/index-v1.idx")
    }

    /// The committed fixture: an index with block 1 present, made by `create` + `mark_present`.
    #[test]
    fn fixture_index_parses() {
        let snap = ObjectIndex::read_snapshot(&fixture()).unwrap();
        assert_eq!(snap.header, vector_header());
        assert_eq!(snap.present_count(), 1);
        assert!(snap.is_present(1));
        assert_eq!(snap.block_hash(1), *blake3::hash(&[0xABu8; 1 << 20]).as_bytes());
        assert_eq!(snap.last_access(), 1_700_000_500);
        assert_eq!(snap.verify_state(), VerifyState::Pending);
    }
}
