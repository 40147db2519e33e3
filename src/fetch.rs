//! Filling cache misses from S3: one ranged GET per missing block, never two for the same block
//! at once (single-flight), a bounded number in flight, and prefetch for sequential readers.
//!
//! A fetch runs as its own task, so a reader that gives up (a cancelled FUSE request) does not
//! waste the GET: the block still lands in the cache for the next reader.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{oneshot, Semaphore};

use crate::cache::{BlockCache, CachedObject, ObjectId};
use crate::cache::CacheError;
use crate::checksum::{block_crc, block_hash};
use crate::object::ObjectInfo;
use crate::metrics::Metrics;
use crate::object::{ObjectClient, ObjectError};

/// Concurrent GETs at most, by default. 16 saturates a loopback server and, with 1 MiB blocks,
/// keeps about 16 MiB in flight.
pub const DEFAULT_MAX_CONCURRENT_GETS: usize = 16;

/// Why a block could not be fetched; cloned to every waiter of a shared fetch.
#[derive(Clone, Debug, thiserror::Error)]
pub enum FetchError {
    /// The object changed in S3 since it was opened (If-Match failed).
    #[error("{0}")]
    Changed(String),
    /// The object is gone.
    #[error("{0}")]
    NotFound(String),
    /// S3 could not supply the bytes.
    #[error("{0}")]
    Failed(String),
}

impl From<ObjectError> for FetchError {
    fn from(e: ObjectError) -> Self {
        match e {
            ObjectError::PreconditionFailed(_) => Self::Changed(e.to_string()),
            ObjectError::NotFound(_) => Self::NotFound(e.to_string()),
            _ => Self::Failed(e.to_string()),
        }
    }
}

type Waiters = Vec<oneshot::Sender<Result<Bytes, FetchError>>>;

/// The background fetcher of one mount.
pub struct Fetcher {
    client: Arc<dyn ObjectClient>,
    cache: Arc<BlockCache>,
    metrics: Arc<Metrics>,
    inflight: Mutex<HashMap<(ObjectId, u64), Waiters>>,
    permits: Semaphore,
}

impl Fetcher {
    /// A fetcher allowing `max_concurrent_gets` GETs at once.
    pub fn new(client: Arc<dyn ObjectClient>, cache: Arc<BlockCache>, metrics: Arc<Metrics>, max_concurrent_gets: usize) -> Arc<Self> {
        Arc::new(Self {
            client,
            cache,
            metrics,
            inflight: Mutex::default(),
            permits: Semaphore::new(max_concurrent_gets.max(1)),
        })
    }

    /// The whole of block `b`: read from disk and verified if present, else fetched from S3 and
    /// stored. Concurrent callers for one block share one load.
    pub async fn load(self: &Arc<Self>, obj: &Arc<CachedObject>, b: u64) -> Result<Bytes, FetchError> {
        let (tx, rx) = oneshot::channel();
        self.start(obj, b, Some(tx));
        rx.await.unwrap_or_else(|_| Err(FetchError::Failed("fetch task ended without an answer".into())))
    }

    /// Starts fetching block `b` in the background unless it is present or already coming.
    pub fn prefetch(self: &Arc<Self>, obj: &Arc<CachedObject>, b: u64) {
        if b < obj.block_count() && !obj.is_present(b) && self.start(obj, b, None) {
            Metrics::add(&self.metrics.prefetch_blocks, 1);
        }
    }

    /// Registers `waiter` for block `b`; spawns the fetch if nobody else has. Returns whether a
    /// new fetch was spawned.
    fn start(self: &Arc<Self>, obj: &Arc<CachedObject>, b: u64, waiter: Option<oneshot::Sender<Result<Bytes, FetchError>>>) -> bool {
        let key = (obj.id, b);
        let mut inflight = self.inflight.lock().unwrap();
        if let Some(waiters) = inflight.get_mut(&key) {
            waiters.extend(waiter);
            return false;
        }
        inflight.insert(key, waiter.into_iter().collect());
        drop(inflight);
        let this = Arc::clone(self);
        let obj = Arc::clone(obj);
        tokio::spawn(async move { this.run(obj, b).await });
        true
    }

    async fn run(self: Arc<Self>, obj: Arc<CachedObject>, b: u64) {
        let key = (obj.id, b);
        if let Some(bytes) = self.cache.read_verified(&obj, b).await {
            let waiters = self.inflight.lock().unwrap().remove(&key).unwrap_or_default();
            for w in waiters {
                let _ = w.send(Ok(bytes.clone()));
            }
            return;
        }
        let result = self.get_block(&obj, b).await;
        // Answer everyone waiting now, then write; readers who arrive during the write join the
        // entry (still present) and are answered after it.
        let waiters = std::mem::take(self.inflight.lock().unwrap().get_mut(&key).unwrap());
        answer(waiters, &result);
        if let Ok((bytes, hash, crc)) = &result {
            self.cache.write_block(&obj, b, bytes.clone(), *hash, *crc).await;
        }
        let late = self.inflight.lock().unwrap().remove(&key).unwrap_or_default();
        answer(late, &result);
    }

    /// GETs block `b`. If a verified unit already vouches for the block's digest (it was
    /// verified but did not fit in the cache), the bytes must match it: one mismatch is
    /// refetched, a second is an error, so a corrupt refetch never passes for verified bytes.
    async fn get_block(&self, obj: &CachedObject, b: u64) -> Result<(Bytes, [u8; 32], u64), FetchError> {
        let h = obj.header();
        let start = b * h.block_size as u64;
        let range = start..start + h.block_len(b) as u64;
        let _permit = self.permits.acquire().await.expect("semaphore is never closed");
        for attempt in 1..=2 {
            let bytes = self.client.get_range(&h.key, &h.etag, range.clone()).await.map_err(|e| {
                tracing::warn!("fetching block {b} of s3://{}/{}: {e}", h.bucket, h.key);
                FetchError::from(e)
            })?;
            // Both digests in one pass over fresh bytes: blake3 guards them at rest, the CRC (if
            // the object has a CRC checksum) lets its unit verify by combination later.
            let hash = block_hash(&bytes);
            match obj.proven_hash(b) {
                Some(expected) if expected != hash => {
                    Metrics::add(&self.metrics.verify_failures, 1);
                    tracing::warn!(
                        "block {b} of s3://{}/{} (ETag {}) does not match its verified digest (attempt {attempt} of 2)",
                        h.bucket, h.key, h.etag
                    );
                }
                _ => return Ok((bytes.clone(), hash, block_crc(h.checksum.algorithm, &bytes))),
            }
        }
        Err(FetchError::Failed(format!(
            "block {b} of s3://{}/{} (ETag {}) failed its verified digest twice",
            h.bucket, h.key, h.etag
        )))
    }

    /// The cache entry of an object version, created on first use with what S3 offers to verify
    /// it against (one HeadObject, plus GetObjectAttributes for composite checksums). The
    /// outer error is S3's, the inner the cache's (the caller may then read uncached).
    pub async fn entry(&self, info: &ObjectInfo) -> Result<Result<Arc<CachedObject>, CacheError>, FetchError> {
        let bucket = self.client.bucket().to_string();
        match self.cache.open_existing(&bucket, info) {
            Ok(Some(obj)) => return Ok(Ok(obj)),
            Ok(None) => {}
            Err(e) => return Ok(Err(e)),
        }
        if info.size > 0 && info.size <= self.cache.block_size() as u64 {
            // One block: one GET brings the bytes and the checksum, and the block is cached
            // before the open returns (small objects are fetched whole at open).
            let (body, checksum) = self.client.get_whole(&info.key, &info.etag).await?;
            let obj = match self.cache.create(&bucket, info, checksum) {
                Ok(obj) => obj,
                Err(e) => return Ok(Err(e)),
            };
            let (hash, crc) = (block_hash(&body), block_crc(obj.header().checksum.algorithm, &body));
            self.cache.write_block(&obj, 0, body, hash, crc).await;
            return Ok(Ok(obj));
        }
        let checksum = self.client.object_checksum(&info.key, &info.etag).await?;
        Ok(self.cache.create(&bucket, info, checksum))
    }

    /// Waits until no load is in flight, so every fetched block is written and claimed: called
    /// before a `cache warm` reports success and before a mount's runtime stops.
    pub async fn drain(&self) {
        while !self.inflight.lock().unwrap().is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// A range straight from S3 without caching: the path of last resort when the cache cannot
    /// hold an entry for the object at all.
    pub async fn fetch_uncached(&self, key: &str, etag: &str, range: std::ops::Range<u64>) -> Result<Bytes, FetchError> {
        let _permit = self.permits.acquire().await.expect("semaphore is never closed");
        Ok(self.client.get_range(key, etag, range).await?)
    }
}

fn answer(waiters: Waiters, result: &Result<(Bytes, [u8; 32], u64), FetchError>) {
    for w in waiters {
        let _ = w.send(result.clone().map(|(bytes, _, _)| bytes));
    }
}
