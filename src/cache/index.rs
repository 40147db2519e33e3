//! One object version's index file, mapped into memory.
//!
//! The map is the only `unsafe` in the cache, and it is confined to index files (never data):
//! an index is a few KiB per GiB of object, updated a bit at a time, which is what a shared
//! mapping is good at. Data files are read and written through the [`crate::io::IoEngine`].
//!
//! Ordering rule (see cache-format/README.md): a block's record (blake3, CRC) is written before
//! its presence bit, and the data before either. No fsync is needed for correctness: after a
//! crash, a present bit whose record or data is torn fails the blake3 check and the block is
//! fetched again.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::MmapMut;

use super::format::{FormatError, IndexHeader, Layout, VerifyState, RECORD_LEN};
use super::images::Images;
use super::ObjectId;

/// Why an index file could not be opened or created.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The file system said no.
    #[error("{path}: {source}")]
    Io {
        /// The index file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The bytes are not a valid index.
    #[error("{path}: {source}")]
    Format {
        /// The index file.
        path: String,
        /// What is wrong.
        source: FormatError,
    },
}

/// An index: header, state, presence bitmap and block records; mapped from its file, or a copy
/// of an image of it (from the checkpoint, or kept when the entry last left memory) until the
/// first change (see [`super::images`]).
pub struct ObjectIndex {
    header: IndexHeader,
    layout: Layout,
    store: Store,
}

/// Where an index's bytes live.
enum Store {
    /// The index file, mapped: every change is a change of the file.
    Mapped(MmapMut),
    /// An image of the file, which equals it; the first change maps the file.
    Image { bytes: Vec<u8>, path: PathBuf, images: Arc<Images>, id: ObjectId },
    /// An image whose file could not be mapped when it had to change (out of descriptors, the
    /// file gone or changed): this mount's changes stay in memory, the file keeps its older
    /// state, and at worst the next mount fetches or checks a block again.
    Detached(Vec<u8>),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> IndexError + '_ {
    move |source| IndexError::Io { path: path.display().to_string(), source }
}

impl ObjectIndex {
    /// Writes a fresh, empty index for `header` atomically (temp file + rename), then maps it.
    pub fn create(path: &Path, header: IndexHeader) -> Result<Self, IndexError> {
        let encoded = header.encode();
        let layout = Layout::new(encoded.len(), header.block_count());
        let tmp = path.with_extension("idx.tmp");
        {
            let mut f = super::store::create_private(&tmp).map_err(io_err(&tmp))?;
            f.write_all(&encoded).map_err(io_err(&tmp))?;
            f.set_len(layout.file_len as u64).map_err(io_err(&tmp))?;
        }
        std::fs::rename(&tmp, path).map_err(io_err(path))?;
        Self::open(path)
    }

    /// Maps an existing index and checks its header and length.
    pub fn open(path: &Path) -> Result<Self, IndexError> {
        let file = OpenOptions::new().read(true).write(true).open(path).map_err(io_err(path))?;
        let (header, layout) = Self::check(path, &file)?;
        // SAFETY: the cache directory's lock (store::CacheDir) makes this process the only writer
        // of index files, and nothing truncates a mapped index while the mount runs (eviction
        // drops the map before deleting). Readers beside a mount (`hoardfs cache ls`) use plain
        // reads, not maps. The length was checked against the layout just above, so every
        // offset computed from the layout is inside the map.
        let map = unsafe { MmapMut::map_mut(&file) }.map_err(io_err(path))?;
        Ok(Self { header, layout, store: Store::Mapped(map) })
    }

    /// An index from entry `id`'s image, which stands for the file at `path` until
    /// the first change. Checked like a file: header hash, then length against the layout.
    pub(super) fn from_image(path: &Path, bytes: Vec<u8>, images: Arc<Images>, id: ObjectId) -> Result<Self, FormatError> {
        let (header, layout) = parse(&bytes)?;
        Ok(Self { header, layout, store: Store::Image { bytes, path: path.to_path_buf(), images, id } })
    }

    /// Whether the index is still an image (nothing read from its file).
    pub fn is_image(&self) -> bool {
        matches!(self.store, Store::Image { .. })
    }

    /// The bytes that stand for the index file, unless the index is detached from it.
    pub(super) fn file_bytes(&self) -> Option<&[u8]> {
        match &self.store {
            Store::Mapped(map) => Some(map),
            Store::Image { bytes, .. } => Some(bytes),
            Store::Detached(_) => None,
        }
    }

    /// The index's bytes as they stand, which is what its file holds unless the index is
    /// detached (for the checkpoint).
    pub(super) fn bytes(&self) -> &[u8] {
        match &self.store {
            Store::Mapped(map) => map,
            Store::Image { bytes, .. } | Store::Detached(bytes) => bytes,
        }
    }

    /// The bytes to change; an image first retires, then maps its file and copies itself over
    /// it (only the access time may differ).
    fn bytes_mut(&mut self) -> &mut [u8] {
        if let Store::Image { .. } = self.store {
            let Store::Image { bytes, path, images, id } = std::mem::replace(&mut self.store, Store::Detached(Vec::new())) else {
                unreachable!()
            };
            images.retire(&id);
            self.store = match Self::open(&path) {
                Ok(ObjectIndex { header, store: Store::Mapped(mut map), .. }) if header == self.header && map.len() == bytes.len() => {
                    if map[..] != bytes[..] {
                        map.copy_from_slice(&bytes);
                    }
                    Store::Mapped(map)
                }
                Ok(_) => {
                    tracing::warn!("{} changed since the checkpoint; this mount keeps its copy in memory", path.display());
                    Store::Detached(bytes)
                }
                Err(e) => {
                    tracing::warn!("cannot map a cache index ({e}); this mount keeps its copy in memory");
                    Store::Detached(bytes)
                }
            };
        }
        match &mut self.store {
            Store::Mapped(map) => map,
            Store::Image { bytes, .. } | Store::Detached(bytes) => bytes,
        }
    }

    /// Reads and validates an index with plain reads, without mapping it; for inspection tools
    /// that may run beside a mount.
    pub fn read_snapshot(path: &Path) -> Result<IndexSnapshot, IndexError> {
        let bytes = std::fs::read(path).map_err(io_err(path))?;
        IndexSnapshot::parse(bytes).map_err(|source| IndexError::Format { path: path.display().to_string(), source })
    }

    fn check(path: &Path, file: &File) -> Result<(IndexHeader, Layout), IndexError> {
        use std::io::Read;
        let mut head = Vec::new();
        file.take(64 * 1024).read_to_end(&mut head).map_err(io_err(path))?;
        let fmt = |source| IndexError::Format { path: path.display().to_string(), source };
        let (header, header_len) = IndexHeader::decode(&head).map_err(fmt)?;
        let layout = Layout::new(header_len, header.block_count());
        let len = file.metadata().map_err(io_err(path))?.len();
        if len != layout.file_len as u64 {
            return Err(fmt(FormatError::Corrupt("file length does not match the layout")));
        }
        Ok((header, layout))
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
    /// crash and answers `cache ls`/`evict --older-than`. An image keeps it in memory and in the
    /// next checkpoint rather than dirtying its file's page.
    pub fn touch(&mut self, now_s: u64) {
        let off = self.layout.state_off;
        match &mut self.store {
            Store::Image { bytes, images, id, .. } => {
                bytes[off..off + 8].copy_from_slice(&now_s.to_le_bytes());
                images.touch(id, now_s);
            }
            Store::Mapped(map) => map[off..off + 8].copy_from_slice(&now_s.to_le_bytes()),
            Store::Detached(bytes) => bytes[off..off + 8].copy_from_slice(&now_s.to_le_bytes()),
        }
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
        match &self.store {
            Store::Mapped(map) => map.flush_async(),
            Store::Image { .. } | Store::Detached(_) => Ok(()),
        }
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
    pub(super) fn into_bytes(self) -> Vec<u8> {
        self.bytes
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
        let path = dir.path().join("x.idx");
        let mut idx = ObjectIndex::create(&path, vector_header()).unwrap();
        assert_eq!(idx.present_count(), 0);
        idx.mark_present(2, &[9u8; 32], 77);
        idx.touch(1234);
        idx.set_verify_state(VerifyState::Verified);
        drop(idx);
        let idx = ObjectIndex::open(&path).unwrap();
        assert!(idx.is_present(2) && !idx.is_present(0));
        assert_eq!(idx.block_hash(2), [9u8; 32]);
        assert_eq!(idx.last_access(), 1234);
        assert_eq!(idx.verify_state(), VerifyState::Verified);
        let snap = ObjectIndex::read_snapshot(&path).unwrap();
        assert_eq!(snap.present_count(), 1);
    }

    #[test]
    fn truncated_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.idx");
        ObjectIndex::create(&path, vector_header()).unwrap();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        let len = f.metadata().unwrap().len();
        f.set_len(len - 1).unwrap();
        assert!(matches!(ObjectIndex::open(&path), Err(IndexError::Format { .. })));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]
        /// A valid index file with any byte changed, or cut anywhere, either fails to parse or
        /// parses into a snapshot whose every accessor stays in bounds: never a panic.
        #[test]
        fn damaged_index_files_never_panic(pos in 0usize..400, val in 0u8..=255, cut in proptest::option::of(0usize..400)) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("x.idx");
            let mut idx = ObjectIndex::create(&path, vector_header()).unwrap();
            idx.mark_present(0, &[7u8; 32], 1);
            drop(idx);
            let mut bytes = std::fs::read(&path).unwrap();
            let pos = pos % bytes.len();
            bytes[pos] ^= val;
            if let Some(cut) = cut {
                bytes.truncate(cut % bytes.len());
            }
            std::fs::write(&path, &bytes).unwrap();
            if let Ok(snap) = ObjectIndex::read_snapshot(&path) {
                for b in 0..snap.header.block_count() {
                    let _ = (snap.is_present(b), snap.block_hash(b));
                }
                let _ = (snap.present_count(), snap.last_access(), snap.verify_state());
            }
            let _ = ObjectIndex::open(&path).map(|i| (i.present_count(), i.verify_state()));
        }
    }

    /// The committed fixture: an index with block 1 present, made by `create` + `mark_present`.
    #[test]
    fn fixture_index_parses() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cache-format/vectors/index-v1.idx");
        let snap = ObjectIndex::read_snapshot(&path).unwrap();
        assert_eq!(snap.header, vector_header());
        assert_eq!(snap.present_count(), 1);
        assert!(snap.is_present(1));
        assert_eq!(snap.block_hash(1), *blake3::hash(&[0xABu8; 1 << 20]).as_bytes());
        assert_eq!(snap.last_access(), 1_700_000_500);
        assert_eq!(snap.verify_state(), VerifyState::Pending);
    }
}
