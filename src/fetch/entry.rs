//! Making an object version's cache entry: on first use, with what S3 offers to verify it
//! against. One object's creators queue on one lock, so a reader and a prefetch hint opening it
//! together cause one HEAD (or one whole-object GET, for an object of one block), not two.

use std::sync::Arc;

use bytes::Bytes;

use super::{reply, FetchError, Fetcher};
use crate::cache::{CacheError, CachedObject, ObjectId};
use crate::checksum::{block_crc, block_hash};
use crate::object::ObjectInfo;

/// Held while one object version's cache entry is created.
pub(super) type CreationLock = Arc<tokio::sync::Mutex<()>>;

/// An object version's cache entry, as [`Fetcher::entry`] found or made it.
pub struct Entry {
    /// The entry.
    pub obj: Arc<CachedObject>,
    /// The object's whole body, when making the entry fetched it in one GET (objects of one
    /// block): the verifier checks these bytes in memory rather than reading them back.
    pub fresh: Option<Bytes>,
}

impl Entry {
    fn existing(obj: Arc<CachedObject>) -> Self {
        Self { obj, fresh: None }
    }
}

impl Fetcher {
    /// The cache entry of an object version, created on first use with what S3 offers to verify
    /// it against (one HeadObject, plus GetObjectAttributes for composite checksums). The
    /// outer error is S3's, the inner the cache's (the caller may then read uncached).
    pub async fn entry(&self, info: &ObjectInfo) -> Result<Result<Entry, CacheError>, FetchError> {
        let bucket = self.client.bucket().to_string();
        match self.open_existing(&bucket, info).await {
            Ok(Some(obj)) => return Ok(Ok(Entry::existing(obj))),
            Ok(None) => {}
            // Present but not openable now (out of descriptors, an I/O error): read uncached.
            Err(e) => return Ok(Err(e)),
        }
        let id = (info.key.clone(), info.etag.clone());
        let lock = Arc::clone(self.creating.lock().unwrap().entry(id.clone()).or_default());
        let result = {
            let _creator = lock.lock().await;
            self.create_entry(&bucket, info).await
        };
        let mut creating = self.creating.lock().unwrap();
        if Arc::strong_count(&lock) == 2 {
            creating.remove(&id); // nobody else waits: only the map and this task hold it
        }
        result
    }

    /// Whether some task is making this object version's cache entry right now (for an object
    /// of one block, fetching it whole): a caller with no need to wait for it can move on.
    pub fn creating(&self, info: &ObjectInfo) -> bool {
        self.creating.lock().unwrap().contains_key(&(info.key.clone(), info.etag.clone()))
    }

    /// [`BlockCache::open_existing`], on a blocking thread unless the entry is in memory or
    /// absent: a cold index read is a random disk read, which must not stall a runtime worker
    /// (opens of many objects then overlap on the disk, as the readers' own reads do). An object
    /// the entry table does not name has nothing on disk to read, so a cold file's open skips
    /// the hop to a blocking thread and back.
    pub async fn open_existing(&self, bucket: &str, info: &ObjectInfo) -> Result<Option<Arc<CachedObject>>, CacheError> {
        if let Some(obj) = self.cache.open_in_memory(bucket, info) {
            return Ok(Some(obj));
        }
        if !self.cache.holds(bucket, info) {
            return Ok(None); // `create_entry` looks again under the object's lock
        }
        let (cache, bucket, info) = (self.cache.clone(), bucket.to_string(), info.clone());
        let path = format!("the cache entry of s3://{bucket}/{}", info.key);
        tokio::task::spawn_blocking(move || cache.open_existing(&bucket, &info))
            .await
            .unwrap_or_else(|e| Err(CacheError::Io { path, source: std::io::Error::other(e) }))
    }

    /// [`Fetcher::entry`] under its object's lock: a waiter finds the entry its predecessor made.
    async fn create_entry(&self, bucket: &str, info: &ObjectInfo) -> Result<Result<Entry, CacheError>, FetchError> {
        // Only memory needs a second look: a creator that got here first made its entry live
        // before it let go of the lock, and `BlockCache::create` checks the disk itself.
        if let Some(obj) = self.cache.open_in_memory(bucket, info) {
            return Ok(Ok(Entry::existing(obj)));
        }
        // With a shared tier to read, the entry is made from a HEAD and the block then loaded
        // like any other (tier first); without one, the whole-object GET below saves the HEAD.
        let tier_first = self.shared.get().is_some_and(|t| t.reads_now());
        if info.size > 0 && info.size <= self.cache.block_size() as u64 && !tier_first {
            // One block: one GET brings the bytes and the checksum, and the block is cached
            // before the open returns (small objects are fetched whole at open). The block is
            // claimed before the entry exists, so a reader who finds the entry while its block
            // is being written joins this fetch rather than sending a GET of its own.
            let claim = (ObjectId::new(bucket, &info.key, &info.etag), 0);
            self.inflight.lock().unwrap().entry(claim).or_default();
            let fetched = async {
                let (body, checksum) = self.client.get_whole(&info.key, &info.etag).await?;
                Ok(self.cache.create(bucket, info, checksum).map(|obj| {
                    let (hash, crc) = (block_hash(&body), block_crc(obj.header().checksum.algorithm, &body));
                    (obj, (body, hash, crc))
                }))
            };
            return match fetched.await {
                Ok(Ok((obj, block))) => {
                    let fresh = block.0.clone();
                    self.finish(&obj, 0, &Ok(block), true).await;
                    Ok(Ok(Entry { obj, fresh: Some(fresh) }))
                }
                other => {
                    let waiters = self.inflight.lock().unwrap().remove(&claim).unwrap_or_default();
                    self.settled.notify_waiters();
                    reply(waiters, &Err(FetchError::Failed(format!("fetching s3://{bucket}/{} whole failed", info.key))));
                    other.map(|r| r.map(|(obj, _)| Entry::existing(obj)))
                }
            };
        }
        let checksum = self.client.object_checksum(&info.key, &info.etag).await?;
        Ok(self.cache.create(bucket, info, checksum).map(Entry::existing))
    }
}
