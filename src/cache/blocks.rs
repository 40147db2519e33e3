//! Block I/O of the cache: reading a block back (checked against its blake3 record the first
//! time in a mount, or every time with `verify_every_read`) and writing a fetched one (space
//! reserved first, data before the record that claims it).

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::{round_up, BlockCache, CachedObject, FULL_BACKOFF};
use crate::checksum::block_hash;
use crate::metrics::Metrics;

/// Block reads in flight for [`BlockCache::check_all`] over every object being checked at once:
/// each holds a block in memory (1 MiB at the default size) until it is hashed, so this bounds
/// that memory whatever the number of large objects opened together after a remount.
pub(super) const CHECK_READS_MAX: usize = 128;
static CHECK_READS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(CHECK_READS_MAX);

/// Permits of [`CHECK_READS`] not in use (tests: none may leak).
#[cfg(test)]
pub(super) fn check_reads_available() -> usize {
    CHECK_READS.available_permits()
}

impl BlockCache {
    /// Fast path: `range` of block `b` if it is present *and* its blake3 was already checked in
    /// this mount (and `verify_every_read` is off). Anything else is `None`, and the caller goes
    /// through the fetcher's single-flight [`crate::fetch::Fetcher::load`], which verifies or
    /// fetches the block exactly once however many readers want it.
    pub async fn read_checked(&self, obj: &CachedObject, b: u64, range: Range<usize>) -> Option<Bytes> {
        if self.config.verify_every_read || !obj.was_checked(b) || !obj.is_present(b) {
            return None;
        }
        let offset = b * obj.header.block_size as u64 + range.start as u64;
        match self.io.read_at(&obj.data, offset, range.len()).await {
            Ok(bytes) => {
                Metrics::add(&self.metrics.cache_hit_blocks, 1);
                Metrics::add(&self.metrics.cache_bytes_read, bytes.len() as u64);
                Some(bytes)
            }
            Err(e) => {
                self.read_failed(obj, e);
                None
            }
        }
    }

    /// Reads the whole of block `b` from disk and checks its blake3. A mismatch clears the block
    /// (it is never served) and reports a miss; so does an I/O error.
    pub async fn read_verified(&self, obj: &CachedObject, b: u64) -> Option<Bytes> {
        if !obj.is_present(b) {
            Metrics::add(&self.metrics.cache_miss_blocks, 1);
            return None;
        }
        let offset = b * obj.header.block_size as u64;
        let read = self.io.read_at(&obj.data, offset, obj.header.block_len(b)).await;
        self.judge(obj, b, read)
    }

    /// Reads every present block of `obj` from disk, so that the page cache holds the object,
    /// and checks each block's blake3 on the way, checked in this mount or not (as a small
    /// file's open does when its bytes come off the disk: bit rot since the last check is caught
    /// before the kernel serves the bytes from memory). A mismatch clears the block; a read
    /// error is left for the open's own read to meet and report.
    pub async fn read_ahead(&self, obj: &CachedObject) {
        for b in 0..obj.block_count() {
            self.read_verified(obj, b).await;
        }
    }

    /// [`Self::read_verified`] with a plain `pread` on the calling thread, for every present
    /// block not yet checked in this mount: for the open of a small object on the FUSE thread,
    /// where a hop to the I/O engine's thread and back would cost more than the read.
    pub fn check_all_now(&self, obj: &CachedObject) {
        self.check_now(obj, false)
    }

    /// [`Self::check_all_now`] of every present block, checked in this mount or not.
    pub fn recheck_all_now(&self, obj: &CachedObject) {
        self.check_now(obj, true)
    }

    fn check_now(&self, obj: &CachedObject, again: bool) {
        use std::os::unix::fs::FileExt;
        for b in (0..obj.block_count()).filter(|&b| (again || !obj.block_checked(b)) && obj.is_present(b)) {
            let mut block = vec![0u8; obj.header.block_len(b)];
            let read = obj.data.read_exact_at(&mut block, b * obj.header.block_size as u64).map(|()| Bytes::from(block));
            self.judge(obj, b, read);
        }
    }

    /// What a read of block `b` from disk proves: its bytes if they hash to the block's record
    /// (the block is then checked in this mount); a miss otherwise, and a mismatch clears it.
    fn judge(&self, obj: &CachedObject, b: u64, read: std::io::Result<Bytes>) -> Option<Bytes> {
        match read {
            Ok(block) if block_hash(&block) == obj.index.lock().unwrap().block_hash(b) => {
                obj.set_checked(b, true);
                Metrics::add(&self.metrics.cache_hit_blocks, 1);
                Metrics::add(&self.metrics.cache_bytes_read, block.len() as u64);
                Some(block)
            }
            Ok(_) => {
                Metrics::add(&self.metrics.blake3_mismatches, 1);
                Metrics::add(&self.metrics.cache_miss_blocks, 1);
                tracing::warn!(
                    "cached block {b} of s3://{}/{} failed its blake3 check; fetching it again",
                    obj.header.bucket,
                    obj.header.key
                );
                obj.drop_block(b);
                None
            }
            Err(e) => {
                self.read_failed(obj, e);
                None
            }
        }
    }

    fn read_failed(&self, obj: &CachedObject, e: std::io::Error) {
        Metrics::add(&self.metrics.cache_read_errors, 1);
        Metrics::add(&self.metrics.cache_miss_blocks, 1);
        tracing::warn!("reading cache file {}: {e}; serving from S3", obj.data_path.display());
    }

    /// Stores block `b` (already fetched and checked by the caller). Space is reserved first,
    /// evicting least recently used entries that nobody has open; if none can go, or the disk is
    /// full, the block is simply not cached. The data is written before the index claims it.
    pub async fn write_block(&self, obj: &Arc<CachedObject>, b: u64, data: Bytes, hash: [u8; 32], crc: u64) {
        let cost = round_up(data.len() as u64);
        if !self.reserve(obj.id, cost) {
            return;
        }
        let offset = b * obj.header.block_size as u64;
        match self.io.write_at(&obj.data, offset, data).await {
            Ok(()) => {
                obj.index.lock().unwrap().mark_present(b, &hash, crc);
                obj.set_checked(b, true);
                Metrics::add(&self.metrics.blocks_written, 1);
            }
            Err(e) => {
                self.release(obj.id, cost);
                Metrics::add(&self.metrics.cache_write_errors, 1);
                let mut state = self.state.lock().unwrap();
                if state.full_until.is_none() {
                    tracing::warn!(
                        "writing to the cache failed ({e}); reads continue from S3 and the cache stops growing for {}s",
                        FULL_BACKOFF.as_secs()
                    );
                }
                state.full_until = Some(Instant::now() + FULL_BACKOFF);
            }
        }
    }

    /// A background pass over an object too large to check at open: [`Self::check_all`], counted
    /// when it ends (`hoardfs_check_passes_total`), whatever it found.
    pub async fn check_pass(self: &Arc<Self>, obj: &Arc<CachedObject>, in_flight: usize) {
        self.check_all(obj, in_flight).await;
        Metrics::add(&self.metrics.check_passes, 1);
    }

    /// Reads and hashes every present block of `obj` not yet checked in this mount, `in_flight`
    /// at a time (reads overlap on the disk, hashing spreads over the worker threads), so the
    /// object can be handed to the kernel whole. A block that fails is cleared (and refetched by
    /// the next read that wants it), so afterwards the object is either complete and checked, or
    /// not complete.
    pub async fn check_all(self: &Arc<Self>, obj: &Arc<CachedObject>, in_flight: usize) {
        let mut pending = (0..obj.block_count()).filter(|&b| !obj.block_checked(b) && obj.is_present(b));
        let mut running = tokio::task::JoinSet::new();
        loop {
            while running.len() < in_flight.max(1) {
                let Some(b) = pending.next() else { break };
                let Ok(permit) = CHECK_READS.acquire().await else { return }; // never closed
                let (cache, obj) = (Arc::clone(self), Arc::clone(obj));
                running.spawn(async move {
                    let _permit = permit;
                    cache.read_verified(&obj, b).await.map(|bytes| bytes.len())
                });
            }
            if running.join_next().await.is_none() {
                return;
            }
        }
    }
}
