//! One object version's entry in the cache: its index, data file, and what this mount has
//! checked about it (blake3 per block, S3 checksum per unit).

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::format::{IndexHeader, Layout, VerifyState};
use super::index::ObjectIndex;
use super::{round_up, ObjectId};

/// How long a unit that failed verification twice fails reads at once. Default: 5 s.
pub const FAIL_FAST: std::time::Duration = std::time::Duration::from_secs(5);

/// One object version's cache entry, shared by every open handle and in-flight fetch of it.
/// While any `Arc` to it lives, eviction leaves it alone.
pub struct CachedObject {
    /// The entry's id.
    pub id: ObjectId,
    pub(super) header: IndexHeader,
    pub(super) index: Mutex<ObjectIndex>,
    pub(super) data: Arc<File>,
    pub(super) data_path: std::path::PathBuf,
    /// Blocks whose blake3 was checked during this mount; the rest are checked on first read.
    pub(super) checked: Mutex<Vec<u64>>,
    /// Fast path: the whole object matched S3's checksum (persisted as `VerifyState::Verified`).
    pub(super) verified: AtomicBool,
    /// Per verification unit (part, or the whole object): matched in this mount.
    pub(super) units_verified: Mutex<Vec<bool>>,
    /// Per unit: failed twice in this mount, so reads fail fast instead of refetching again.
    pub(super) units_failed: Mutex<Vec<Option<std::time::Instant>>>,
    /// blake3 of blocks that belong to a verified unit but are not in the cache (it was full):
    /// a refetch of such a block must hash to this. Blocks in the cache are proven by their
    /// index record.
    pub(super) proven: Mutex<std::collections::HashMap<u64, [u8; 32]>>,
    /// Set when a background pass checking every block has started in this mount.
    pub(super) check_pass: AtomicBool,
}

impl CachedObject {
    /// The immutable header (size, block size, identity).
    pub fn header(&self) -> &IndexHeader {
        &self.header
    }

    /// Number of blocks.
    pub fn block_count(&self) -> u64 {
        self.header.block_count()
    }

    /// Whether every block is present: the object can be handed to the kernel whole.
    pub fn is_complete(&self) -> bool {
        self.index.lock().unwrap().present_count() == self.block_count()
    }

    /// Whether every block's blake3 was checked in this mount: only then may the kernel read the
    /// data file directly (passthrough), since the daemon no longer sees those reads.
    pub fn all_checked(&self) -> bool {
        let bits = self.checked.lock().unwrap();
        let n = self.block_count();
        (0..n).all(|b| bits[(b / 64) as usize] & (1 << (b % 64)) != 0)
    }

    /// Whether block `b` is present.
    pub fn is_present(&self, b: u64) -> bool {
        self.index.lock().unwrap().is_present(b)
    }

    /// The data file's path: its identity to passthrough (a new object version is a new file).
    pub fn data_path(&self) -> &Path {
        &self.data_path
    }

    /// The data file, open: passthrough registers this descriptor with the kernel, so handing an
    /// object to the kernel opens nothing.
    pub fn data_file(&self) -> &Arc<File> {
        &self.data
    }

    /// Asks the kernel to start reading the data file's first `len` bytes into the page cache
    /// (`POSIX_FADV_WILLNEED`): it returns once the reads are queued, and a later read, by the
    /// daemon's check or by the kernel through passthrough, finds the bytes in memory. Advice
    /// only: a refusal changes nothing but speed, so it is not reported.
    pub fn will_need(&self, len: u64) {
        use std::os::fd::AsRawFd;
        let len = libc::off_t::try_from(len).unwrap_or(libc::off_t::MAX);
        // SAFETY: advice on a descriptor this entry holds open for as long as the call runs.
        unsafe { libc::posix_fadvise(self.data.as_raw_fd(), 0, len, libc::POSIX_FADV_WILLNEED) };
    }

    /// Whether the data file's first page is in the page cache; if not, the kernel has begun
    /// reading the file's start, which every caller wants next ([`crate::io::resident`]).
    /// `false` also when the kernel cannot say.
    pub fn starts_in_memory_or_begin_reading(&self) -> bool {
        crate::io::resident::first_page_resident_or_start_reading(&*self.data)
    }

    /// Whether every unit matched S3's checksum.
    pub fn is_verified(&self) -> bool {
        self.verified.load(Ordering::Acquire)
    }

    /// Whether unit `u` matched S3's checksum.
    pub fn unit_verified(&self, u: usize) -> bool {
        self.is_verified() || self.units_verified.lock().unwrap()[u]
    }

    /// Records that unit `u` matched; when all have, persists `Verified`.
    pub fn set_unit_verified(&self, u: usize) {
        let mut units = self.units_verified.lock().unwrap();
        units[u] = true;
        if units.iter().all(|v| *v) {
            self.index.lock().unwrap().set_verify_state(VerifyState::Verified);
            self.verified.store(true, Ordering::Release);
        }
    }

    /// Claims every block without writing data: only for benchmarks of index handling.
    #[doc(hidden)]
    pub fn mark_all_present_for_bench(&self) {
        let mut index = self.index.lock().unwrap();
        for b in 0..self.block_count() {
            index.mark_present(b, &[0u8; 32], 0);
        }
    }

    /// Units (indexes) whose byte range overlaps block `b`.
    pub fn units_of_block(&self, b: u64) -> Vec<usize> {
        let bs = self.header.block_size as u64;
        let block = b * bs..(b * bs + self.header.block_len(b) as u64);
        self.header
            .checksum
            .units(self.header.object_size)
            .iter()
            .enumerate()
            .filter(|(_, unit)| unit.start < block.end && block.start < unit.end.max(unit.start + 1))
            .map(|(u, _)| u)
            .collect()
    }

    /// What block `b`'s bytes must hash to, if a verified unit vouches for them: its index record
    /// when present, else the digest kept when its unit was verified. `None` if no verified unit
    /// covers it (then the bytes are checked against S3's checksum with their unit).
    pub fn proven_hash(&self, b: u64) -> Option<[u8; 32]> {
        if !self.units_of_block(b).iter().any(|&u| self.unit_verified(u)) {
            return None;
        }
        if let Some(h) = self.proven.lock().unwrap().get(&b) {
            return Some(*h);
        }
        let index = self.index.lock().unwrap();
        index.is_present(b).then(|| index.block_hash(b))
    }

    /// Records the digests of blocks that a unit's verification covered but the cache does not
    /// hold, so later refetches of them can be checked.
    pub fn prove(&self, blocks: impl IntoIterator<Item = (u64, [u8; 32])>) {
        self.proven.lock().unwrap().extend(blocks);
    }

    /// Whether unit `u` failed verification twice within the last [`FAIL_FAST`]: reads then
    /// fail at once instead of refetching again (a kernel retrying a failed read would otherwise
    /// cause a storm of GETs). After that, a read tries again.
    pub fn unit_failed(&self, u: usize) -> bool {
        self.units_failed.lock().unwrap()[u].is_some_and(|t| t.elapsed() < FAIL_FAST)
    }

    /// Records that unit `u` failed twice: persisted as `Failed` for the inspection tools.
    pub fn set_unit_failed(&self, u: usize) {
        self.units_failed.lock().unwrap()[u] = Some(std::time::Instant::now());
        self.set_verify_state(VerifyState::Failed);
    }

    /// Persists a verification state (Failed, Unverifiable).
    pub fn set_verify_state(&self, state: VerifyState) {
        self.index.lock().unwrap().set_verify_state(state);
    }

    /// The persisted verification state.
    pub fn verify_state(&self) -> VerifyState {
        self.index.lock().unwrap().verify_state()
    }

    /// Recorded CRC of block `b` (`None` if absent).
    pub fn block_crc(&self, b: u64) -> Option<u64> {
        let index = self.index.lock().unwrap();
        index.is_present(b).then(|| index.block_crc(b))
    }

    /// Clears block `b` (its bytes failed a check), so the next read fetches it again. The units
    /// containing it lose their verified status: the refetched bytes are checked against S3's
    /// checksum again before they are served.
    pub fn drop_block(&self, b: u64) {
        self.index.lock().unwrap().clear(b);
        self.set_checked(b, false);
        self.proven.lock().unwrap().remove(&b);
        self.verified.store(false, Ordering::Release);
        {
            let mut verified = self.units_verified.lock().unwrap();
            for u in self.units_of_block(b) {
                verified[u] = false;
            }
        }
        // Locks are taken one at a time (set_unit_verified takes units, then index).
        let mut index = self.index.lock().unwrap();
        if index.verify_state() == VerifyState::Verified {
            index.set_verify_state(VerifyState::Pending);
        }
    }

    /// Claims the one background check pass of this entry in this mount: true for the first
    /// caller only.
    pub fn begin_check_pass(&self) -> bool {
        !self.check_pass.swap(true, Ordering::AcqRel)
    }

    /// Whether the background check pass of this entry has started in this mount.
    pub fn check_pass_begun(&self) -> bool {
        self.check_pass.load(Ordering::Acquire)
    }

    /// Whether block `b`'s blake3 was checked in this mount.
    pub fn block_checked(&self, b: u64) -> bool {
        self.was_checked(b)
    }

    pub(super) fn was_checked(&self, b: u64) -> bool {
        self.checked.lock().unwrap()[(b / 64) as usize] & (1 << (b % 64)) != 0
    }

    pub(super) fn set_checked(&self, b: u64, yes: bool) {
        let mut bits = self.checked.lock().unwrap();
        let word = &mut bits[(b / 64) as usize];
        if yes {
            *word |= 1 << (b % 64);
        } else {
            *word &= !(1 << (b % 64));
        }
    }

    pub(super) fn entry_bytes(&self) -> u64 {
        let index = self.index.lock().unwrap();
        accounted_bytes(&self.header, |b| index.is_present(b))
    }
}

/// What an entry is charged (see "Size accounting" in cache-format/README.md): its catalog
/// slot, and each present block rounded up to the 4 KiB units `du` counts.
pub(super) fn accounted_bytes(header: &IndexHeader, is_present: impl Fn(u64) -> bool) -> u64 {
    let index_len = Layout::new(header.encoded_len(), header.block_count()).file_len;
    let slot = super::catalog::slot_size_for(index_len).unwrap_or(u32::MAX) as u64;
    let data: u64 = (0..header.block_count()).filter(|&b| is_present(b)).map(|b| round_up(header.block_len(b) as u64)).sum();
    slot + data
}
