//! The catalog (format 2): every entry's index in a slot of a few slab files, mapped once,
//! instead of one index file per object. At 100,000 objects of 16 KiB the index files were a
//! second file per object, a 4 KiB block each on disk (+25 %), and an open plus a map per first
//! open; a slot is 256 or 384 bytes in a file that is already mapped.
//!
//! ```text
//! catalog/<size>.slab    slots of <size> bytes (256·2^k or 384·2^k), slot i at offset i·size
//! slot:  +0 u32 index_len (0: free) | +4 u32 reserved | +8 32-byte object id | +40 the index
//! ```
//! The index is the version 1 index file byte for byte (header, state, presence bitmap, block
//! records: see [`super::format`]), so the crash rules carry over: the index bytes are written
//! before `index_len`, a block's record before its presence bit, and the blake3 of each block
//! decides what is served. A slab grows by whole chunks ([`CHUNK`]) and each chunk is mapped on
//! first use, so growing never moves a slot another thread holds. Chunks are allocated on disk
//! when they are added (`fallocate`): a store into a mapped hole of a full file system would
//! be a SIGBUS, while a failed `fallocate` is an ENOSPC the cache handles like any other.
//!
//! Slots are handed out so that at most one [`Slot`] handle of each slot lives at a time:
//! [`Catalog::alloc`] takes a free slot, and [`Catalog::open`] is called by the cache only under
//! its state lock for an entry that has no live handle (see `BlockCache::open_existing`).

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use memmap2::{MmapOptions, MmapRaw};

use super::ObjectId;

mod reading;
pub use reading::{each_slot, fold_slots, read_slots, SlotRead};

/// The catalog's directory in the cache dir.
pub const CATALOG: &str = "catalog";
/// Bytes before the index in a slot: its length, a reserved word and the object id.
pub const SLOT_HEADER: usize = 40;
/// Smallest slot.
const MIN_SLOT: u64 = 256;
/// Largest slot: an index of 4 GiB would describe a 100 TiB object at 1 MiB blocks.
const MAX_SLOT: u64 = 1 << 32;
/// Bytes a slab grows by at a time (rounded so chunks start on page boundaries): 1 MiB, about
/// 2,700 one-block objects' slots.
const CHUNK: u64 = 1 << 20;
const PAGE: u64 = 4096;

/// Where an entry's index lives: slot `slot` of the slab whose slots are `size` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotAt {
    /// Slot size in bytes, which names the slab.
    pub size: u32,
    /// Slot number in that slab.
    pub slot: u32,
}

/// The slot size for an index of `index_len` bytes: the smallest 256·2^k or 384·2^k that holds
/// it after the slot header. `None` past 2^31 bytes.
pub fn slot_size_for(index_len: usize) -> Option<u32> {
    let need = index_len as u64 + SLOT_HEADER as u64;
    let mut size = MIN_SLOT;
    while size < MAX_SLOT {
        if size >= need {
            return u32::try_from(size).ok();
        }
        let next = if size.is_power_of_two() { size / 2 * 3 } else { size / 3 * 4 };
        size = next;
    }
    None
}

/// Whether `size` is a slot size this format uses.
fn is_slot_size(size: u64) -> bool {
    (MIN_SLOT..MAX_SLOT).contains(&size) && (size.is_power_of_two() || (size.is_multiple_of(3) && (size / 3).is_power_of_two()))
}

/// Slots per chunk of a slab: about [`CHUNK`] bytes, a whole number of pages.
fn chunk_slots(size: u64) -> u64 {
    let step = PAGE / gcd(size, PAGE);
    (CHUNK / size).max(1).div_ceil(step) * step
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn slab_path(dir: &Path, size: u32) -> PathBuf {
    dir.join(CATALOG).join(format!("{size}.slab"))
}

/// One mapped chunk of a slab.
struct Chunk {
    map: MmapRaw,
}

/// One slab file: its chunks, mapped as needed, and its free slots.
struct Slab {
    file: File,
    size: u64,
    chunks: Vec<Option<Arc<Chunk>>>,
    /// Slots in the file (a whole number of chunks).
    slots: u64,
    free: BTreeSet<u32>,
}

impl Slab {
    fn chunk(&mut self, slot: u32) -> std::io::Result<(Arc<Chunk>, usize)> {
        let per = chunk_slots(self.size);
        let c = slot as u64 / per;
        let off = ((slot as u64 % per) * self.size) as usize;
        if c as usize >= self.chunks.len() {
            self.chunks.resize(c as usize + 1, None);
        }
        if let Some(chunk) = &self.chunks[c as usize] {
            return Ok((chunk.clone(), off));
        }
        let len = per * self.size;
        let map = MmapOptions::new().offset(c * len).len(len as usize).map_raw(&self.file)?;
        let chunk = Arc::new(Chunk { map });
        self.chunks[c as usize] = Some(chunk.clone());
        Ok((chunk, off))
    }

    /// Adds one chunk of free slots at the end of the file.
    fn grow(&mut self) -> std::io::Result<()> {
        let per = chunk_slots(self.size);
        let slots = self.slots + per;
        if slots > u32::MAX as u64 {
            return Err(std::io::Error::other("catalog slab is full"));
        }
        allocate(&self.file, self.slots * self.size, slots * self.size)?;
        self.free.extend(self.slots as u32..slots as u32);
        self.slots = slots;
        Ok(())
    }
}

/// The catalog of a cache dir that this process writes.
pub struct Catalog {
    dir: PathBuf,
    slabs: Mutex<HashMap<u32, Slab>>,
}

/// A slot handed to one owner: the index bytes it holds, read and written in place.
pub struct Slot {
    chunk: Arc<Chunk>,
    off: usize,
    at: SlotAt,
    /// Length of the index it holds, read once (only `alloc` and `free` write it).
    len: usize,
}

// SAFETY: a `Slot` is the only handle of its bytes (see the module doc), and the mapping it
// points into lives as long as its `Arc<Chunk>`.
unsafe impl Send for Slot {}
// SAFETY: shared access only reads through `&self`.
unsafe impl Sync for Slot {}

impl Slot {
    /// Where it is.
    pub fn at(&self) -> SlotAt {
        self.at
    }

    fn base(&self) -> *mut u8 {
        // SAFETY: `off + size` is inside the chunk's mapping (Slab::chunk computed it).
        unsafe { self.chunk.map.as_mut_ptr().add(self.off) }
    }

    /// Length of the index as the slot's header says (0: free), capped at the slot's room.
    fn stored_len(&self) -> usize {
        let mut len = [0u8; 4];
        // SAFETY: the first 4 bytes of the slot are inside the mapping.
        unsafe { std::ptr::copy_nonoverlapping(self.base(), len.as_mut_ptr(), 4) };
        (u32::from_le_bytes(len) as usize).min(self.at.size as usize - SLOT_HEADER)
    }

    /// The index bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: inside the slot (`len` is capped at the slot's room); this handle is the
        // only one of the slot, so nobody writes these bytes while the borrow lives.
        unsafe { std::slice::from_raw_parts(self.base().add(SLOT_HEADER), self.len) }
    }

    /// The index bytes, to change.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as `bytes`, and `&mut self` makes the borrow exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.base().add(SLOT_HEADER), self.len) }
    }

    /// Asks the kernel to write the slot's dirty pages back soon (at unmount).
    pub fn flush_async(&self) -> std::io::Result<()> {
        self.chunk.map.flush_async_range(self.off, self.at.size as usize)
    }
}

impl Catalog {
    /// The catalog of `dir` (whose writer is this process), with `used` the slots that hold
    /// entries; every other slot in the slabs is free.
    pub fn new(dir: &Path, used: impl IntoIterator<Item = SlotAt>) -> std::io::Result<Self> {
        let mut slabs = HashMap::new();
        let mut used_by_size: HashMap<u32, Vec<u32>> = HashMap::new();
        for at in used {
            used_by_size.entry(at.size).or_default().push(at.slot);
        }
        for size in slab_sizes(dir)? {
            let file = open_slab(&slab_path(dir, size))?;
            // Whole chunks only, so every mapped page is backed by the file (a page past its end
            // would fault); a slab written by another tool may end anywhere.
            let chunk_len = chunk_slots(size as u64) * size as u64;
            let len = file.metadata()?.len();
            if len % chunk_len != 0 {
                allocate(&file, len, len.next_multiple_of(chunk_len))?;
            }
            let slots = file.metadata()?.len() / size as u64;
            let mut used = vec![false; slots as usize];
            for slot in used_by_size.remove(&size).unwrap_or_default() {
                if let Some(u) = used.get_mut(slot as usize) {
                    *u = true;
                }
            }
            // From a sorted iterator, the set is built in one pass.
            let free: BTreeSet<u32> = (0..slots as u32).filter(|&s| !used[s as usize]).collect();
            slabs.insert(size, Slab { file, size: size as u64, chunks: Vec::new(), slots, free });
        }
        if let Some((size, _)) = used_by_size.into_iter().find(|(_, s)| !s.is_empty()) {
            return Err(std::io::Error::other(format!("the cache's state names slots of {size} bytes, but there is no such slab")));
        }
        Ok(Self { dir: dir.to_path_buf(), slabs: Mutex::new(slabs) })
    }

    /// Writes `index` for entry `id` into a free slot: the index bytes, then the id, then the
    /// length, which makes the slot used.
    pub fn alloc(&self, id: &ObjectId, index: &[u8]) -> std::io::Result<Slot> {
        if index.is_empty() {
            return Err(std::io::Error::other("an empty index cannot be stored (its slot would read as free)"));
        }
        let size = slot_size_for(index.len()).ok_or_else(|| std::io::Error::other("index too large for any catalog slot"))?;
        let mut slabs = self.slabs.lock().unwrap();
        let slab = match slabs.entry(size) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                super::store::create_private_dir_all(&self.dir.join(CATALOG))?;
                let file = open_slab(&slab_path(&self.dir, size))?;
                e.insert(Slab { file, size: size as u64, chunks: Vec::new(), slots: 0, free: BTreeSet::new() })
            }
        };
        if slab.free.is_empty() {
            slab.grow()?;
        }
        let slot = *slab.free.first().expect("grown");
        let (chunk, off) = slab.chunk(slot)?;
        slab.free.remove(&slot);
        drop(slabs);
        let slot = Slot { chunk, off, at: SlotAt { size, slot }, len: index.len() };
        let base = slot.base();
        // SAFETY: the slot was free, so this is its only handle; every write is inside it.
        unsafe {
            std::ptr::write_bytes(base, 0, 4);
            std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
            std::ptr::copy_nonoverlapping(index.as_ptr(), base.add(SLOT_HEADER), index.len());
            std::ptr::write_bytes(base.add(4), 0, 4);
            std::ptr::copy_nonoverlapping(id.0.as_ptr(), base.add(8), 32);
            std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
            std::ptr::copy_nonoverlapping((index.len() as u32).to_le_bytes().as_ptr(), base, 4);
        }
        Ok(slot)
    }

    /// The handle of a used slot. The caller guarantees no other handle of it lives.
    pub fn open(&self, at: SlotAt) -> std::io::Result<Slot> {
        let mut slabs = self.slabs.lock().unwrap();
        let slab =
            slabs.get_mut(&at.size).filter(|s| (at.slot as u64) < s.slots).ok_or_else(|| std::io::Error::other("no such catalog slot"))?;
        let (chunk, off) = slab.chunk(at.slot)?;
        drop(slabs);
        let mut slot = Slot { chunk, off, at, len: 0 };
        slot.len = slot.stored_len();
        Ok(slot)
    }

    /// Reads the slot's pages in (outside any lock), so that opening it under the cache's lock
    /// does not wait for the disk.
    pub fn prefault(&self, at: SlotAt) {
        let Ok(slot) = self.open(at) else { return };
        let base = slot.base();
        let mut sum = 0u8;
        let mut off = 0;
        while off < at.size as usize {
            // SAFETY: inside the slot; a plain read of a byte.
            sum ^= unsafe { std::ptr::read_volatile(base.add(off)) };
            off += PAGE as usize;
        }
        std::hint::black_box(sum);
    }

    /// Marks a slot free: its length becomes 0 (the entry is gone from the catalog), and the
    /// slot is reused by a later `alloc`. The caller has dropped every handle of it.
    pub fn free(&self, at: SlotAt) {
        let Ok(slot) = self.open(at) else { return };
        // SAFETY: the first 4 bytes of the slot; the caller dropped the other handles.
        unsafe { std::ptr::write_bytes(slot.base(), 0, 4) };
        if let Some(slab) = self.slabs.lock().unwrap().get_mut(&at.size) {
            slab.free.insert(at.slot);
        }
    }

    /// Asks the kernel to read every chunk in ahead of the opens that will need it (at mount),
    /// from a thread of its own: `madvise(WILLNEED)` submits the reads itself and can wait for
    /// room in the disk's queue, which made a 100,000-entry remount 0.4 s slower.
    pub fn will_need(&self) {
        let mut chunks = Vec::new();
        let mut slabs = self.slabs.lock().unwrap();
        for slab in slabs.values_mut() {
            let per = chunk_slots(slab.size);
            for c in 0..slab.slots.div_ceil(per) {
                if let Ok((chunk, _)) = slab.chunk((c * per) as u32) {
                    chunks.push(chunk);
                }
            }
        }
        drop(slabs);
        let spawned = std::thread::Builder::new().name("catalog-readahead".into()).spawn(move || {
            for chunk in chunks {
                let _ = chunk.map.advise(memmap2::Advice::WillNeed);
            }
        });
        if let Err(e) = spawned {
            tracing::debug!("no readahead of the cache catalog: {e}");
        }
    }

    /// Writes every mapped chunk back and waits (after an upgrade moved index files in, before
    /// they are removed).
    pub fn flush(&self) -> std::io::Result<()> {
        let slabs = self.slabs.lock().unwrap();
        for chunk in slabs.values().flat_map(|s| s.chunks.iter().flatten()) {
            chunk.map.flush()?;
        }
        Ok(())
    }
}

/// Allocates bytes `[from, to)` of a slab on disk, growing the file to `to`.
fn allocate(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = i64::try_from(to - from).map_err(std::io::Error::other)?;
    let from = i64::try_from(from).map_err(std::io::Error::other)?;
    // SAFETY: posix_fallocate on a descriptor we own; no memory is involved.
    match unsafe { libc::posix_fallocate(file.as_raw_fd(), from, len) } {
        0 => Ok(()),
        errno => Err(std::io::Error::from_raw_os_error(errno)),
    }
}

fn open_slab(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(super::store::FILE_MODE)
        .open(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// The slot sizes that have a slab in `dir`'s catalog.
fn slab_sizes(dir: &Path) -> std::io::Result<Vec<u32>> {
    let entries = match std::fs::read_dir(dir.join(CATALOG)) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut sizes = Vec::new();
    for e in entries {
        let name = e?.file_name();
        let Some(size) = name.to_str().and_then(|n| n.strip_suffix(".slab")).and_then(|s| s.parse::<u32>().ok()) else { continue };
        if is_slot_size(size as u64) {
            sizes.push(size);
        }
    }
    sizes.sort_unstable();
    Ok(sizes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_sizes_go_up_by_halves_and_thirds() {
        assert_eq!(slot_size_for(0), Some(256));
        assert_eq!(slot_size_for(216), Some(256));
        assert_eq!(slot_size_for(217), Some(384));
        assert_eq!(slot_size_for(345), Some(512));
        assert_eq!(slot_size_for(600), Some(768));
        assert_eq!(slot_size_for(100_000), Some(131_072));
        for size in [256, 384, 512, 768, 1024, 1536, 6144, 1 << 31] {
            assert!(is_slot_size(size), "{size}");
            assert_eq!(chunk_slots(size) * size % PAGE, 0, "{size}");
        }
        assert!(!is_slot_size(640) && !is_slot_size(128));
    }

    #[test]
    fn alloc_free_reuse_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::new(dir.path(), []).unwrap();
        let a = catalog.alloc(&ObjectId([1; 32]), &[7u8; 300]).unwrap();
        let b = catalog.alloc(&ObjectId([2; 32]), &[8u8; 100]).unwrap();
        assert_eq!((a.at(), b.at()), (SlotAt { size: 384, slot: 0 }, SlotAt { size: 256, slot: 0 }));
        assert_eq!(a.bytes(), &[7u8; 300][..]);
        let read = read_slots(dir.path()).unwrap();
        assert_eq!(read.len(), 2);
        assert!(read.iter().any(|s| s.id == ObjectId([1; 32]) && s.index.as_deref() == Some(&[7u8; 300][..])));
        let at = a.at();
        drop(a);
        catalog.free(at);
        assert_eq!(read_slots(dir.path()).unwrap().len(), 1);
        let c = catalog.alloc(&ObjectId([3; 32]), &[9u8; 250]).unwrap();
        assert_eq!(c.at(), at, "a freed slot is reused");
        drop((b, c));
        // A new catalog over the same files knows which slots are free from what it is told.
        let used: Vec<SlotAt> = read_slots(dir.path()).unwrap().iter().map(|s| s.at).collect();
        let again = Catalog::new(dir.path(), used).unwrap();
        assert_eq!(again.alloc(&ObjectId([4; 32]), &[1u8; 300]).unwrap().at(), SlotAt { size: 384, slot: 1 });
        assert_eq!(std::fs::metadata(slab_path(dir.path(), 384)).unwrap().len(), chunk_slots(384) * 384);
    }
}
