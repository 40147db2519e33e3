//! Filling cache misses from S3 with ranged GETs (from the shared tier first, when there is
//! one: [`crate::shared`]): never two loads of one block at once
//! (single-flight), runs of neighbouring missing blocks coalesced into one GET of up to
//! [`FetchLimits::max_get_size`], a bounded number of GETs in flight, and prefetch for
//! sequential readers.
//!
//! A fetch runs as its own task, so a reader that gives up (a cancelled FUSE request) does not
//! waste the GET: the blocks still land in the cache for the next reader.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use tokio::sync::{oneshot, Notify, Semaphore};
use tracing::Instrument;

use crate::cache::{BlockCache, CachedObject, ObjectId};
use crate::checksum::{block_crc, block_hash};
use crate::metrics::Metrics;
use crate::object::{ObjectClient, ObjectError};
use crate::shared::SharedTier;

/// Concurrent GETs at most, by default. 16 saturates a loopback server.
pub const DEFAULT_MAX_CONCURRENT_GETS: usize = 16;

/// Largest coalesced GET, by default. Per-request cost dominates below a few MiB (on S3 and on
/// local servers alike); 8 MiB keeps at most 16 × 8 = 128 MiB in flight.
pub const DEFAULT_MAX_GET_SIZE: u64 = 8 << 20;

/// How hard the fetcher may pull on S3, and so how much memory fetches hold at most
/// (`max_concurrent_gets × max_get_size`).
#[derive(Clone, Copy, Debug)]
pub struct FetchLimits {
    /// GETs in flight at once.
    pub max_concurrent_gets: usize,
    /// Bytes in one GET; runs of missing blocks longer than this are split. At least one block.
    pub max_get_size: u64,
}

impl Default for FetchLimits {
    fn default() -> Self {
        Self { max_concurrent_gets: DEFAULT_MAX_CONCURRENT_GETS, max_get_size: DEFAULT_MAX_GET_SIZE }
    }
}

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

type Waiter = oneshot::Sender<Result<Bytes, FetchError>>;

/// Who asked for a load: a reader waiting for it, or read-ahead that nobody waits for yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Demand {
    Reader,
    ReadAhead,
}

/// GET slots read-ahead may hold out of `max_concurrent_gets`: all but a quarter (at least one
/// kept back when there are two or more), so a reader's miss never queues behind a sequential
/// reader's whole window. 16 → 12.
fn prefetch_slots(max_concurrent_gets: usize) -> usize {
    let n = max_concurrent_gets.max(1);
    (n - (n / 4).max(1)).max(1)
}

/// A block on its way: await [`PendingBlock::wait`] for its bytes.
pub struct PendingBlock(oneshot::Receiver<Result<Bytes, FetchError>>);

impl PendingBlock {
    /// The block's bytes, or why they could not be had.
    pub async fn wait(self) -> Result<Bytes, FetchError> {
        self.0.await.unwrap_or_else(|_| Err(FetchError::Failed("fetch task ended without an answer".into())))
    }
}

/// One block as fetched: bytes, blake3, CRC of the object's algorithm.
type Fetched = (Bytes, [u8; 32], u64);

/// The background fetcher of one mount.
pub struct Fetcher {
    client: Arc<dyn ObjectClient>,
    cache: Arc<BlockCache>,
    metrics: Arc<Metrics>,
    inflight: Mutex<HashMap<(ObjectId, u64), Vec<Waiter>>>,
    /// Woken whenever a load ends (its block written and claimed, or failed).
    settled: Notify,
    /// GETs in flight, of any kind.
    permits: Semaphore,
    /// Read-ahead GETs in flight: taken before `permits` and fewer, so readers' own misses
    /// always find GET slots that read-ahead cannot fill ([`prefetch_slots`]).
    prefetch_permits: Semaphore,
    prefetch_slots: usize,
    max_get_size: u64,
    /// One lock per object version whose entry is being created, so a reader and a prefetch
    /// hint opening it together cause one HEAD or whole-object GET, not two.
    creating: Mutex<HashMap<(String, String), entry::CreationLock>>,
    /// The shared tier, if the mount has one (set once, after the cache exists).
    shared: OnceLock<Arc<SharedTier>>,
}

impl Fetcher {
    /// A fetcher within `limits`.
    pub fn new(client: Arc<dyn ObjectClient>, cache: Arc<BlockCache>, metrics: Arc<Metrics>, limits: FetchLimits) -> Arc<Self> {
        let prefetch_slots = prefetch_slots(limits.max_concurrent_gets);
        Arc::new(Self {
            client,
            cache,
            metrics,
            inflight: Mutex::default(),
            settled: Notify::new(),
            permits: Semaphore::new(limits.max_concurrent_gets.max(1)),
            prefetch_permits: Semaphore::new(prefetch_slots),
            prefetch_slots,
            max_get_size: limits.max_get_size,
            creating: Mutex::default(),
            shared: OnceLock::new(),
        })
    }

    /// Reads go local cache → `tier` → origin from now on; verified units are offered to it.
    pub fn set_shared_tier(&self, tier: Arc<SharedTier>) {
        let _ = self.shared.set(tier);
    }

    /// The shared tier, if any.
    pub fn shared_tier(&self) -> Option<&Arc<SharedTier>> {
        self.shared.get()
    }

    /// The whole of block `b`: read from disk and verified if present, else fetched from S3 and
    /// stored. Concurrent callers for one block share one load.
    pub async fn load(self: &Arc<Self>, obj: &Arc<CachedObject>, b: u64) -> Result<Bytes, FetchError> {
        self.load_each(obj, &[b]).pop().expect("one block asked, one answer").wait().await
    }

    /// Loads of `blocks` (ascending), as [`Fetcher::load`] but started together, so that
    /// neighbouring missing blocks come in one GET. One pending answer per block, in order.
    pub fn load_each(self: &Arc<Self>, obj: &Arc<CachedObject>, blocks: &[u64]) -> Vec<PendingBlock> {
        let mut pending = Vec::with_capacity(blocks.len());
        self.claim(obj, blocks.iter().copied(), Demand::Reader, |_| {
            let (tx, rx) = oneshot::channel();
            pending.push(PendingBlock(rx));
            Some(tx)
        });
        pending
    }

    /// Starts fetching the missing blocks of `blocks` in the background (those neither present
    /// nor already coming), coalesced into as few GETs as the size limit allows.
    pub fn prefetch(self: &Arc<Self>, obj: &Arc<CachedObject>, blocks: Range<u64>) {
        let blocks = blocks.start..blocks.end.min(obj.block_count());
        let claimed = self.claim(obj, blocks.filter(|&b| !obj.is_present(b)), Demand::ReadAhead, |_| None);
        Metrics::add(&self.metrics.prefetch_blocks, claimed);
    }

    /// Blocks of `obj` that read-ahead GETs carry at once: the most a sequential reader's
    /// window need be, since more would only queue.
    pub fn prefetch_capacity(&self, obj: &CachedObject) -> u64 {
        self.prefetch_slots as u64 * self.blocks_per_get(obj)
    }

    /// Blocks in one GET of this object at most.
    pub fn blocks_per_get(&self, obj: &CachedObject) -> u64 {
        (self.max_get_size / obj.header().block_size as u64).max(1)
    }

    /// Registers a waiter (from `waiter`) for each block of `blocks`; blocks nobody is loading
    /// yet are claimed, grouped into runs of neighbours, and each run is loaded by one task.
    /// Returns how many blocks were claimed.
    fn claim(
        self: &Arc<Self>,
        obj: &Arc<CachedObject>,
        blocks: impl Iterator<Item = u64>,
        demand: Demand,
        mut waiter: impl FnMut(u64) -> Option<Waiter>,
    ) -> u64 {
        let per_get = self.blocks_per_get(obj);
        let mut runs: Vec<Range<u64>> = Vec::new();
        {
            let mut inflight = self.inflight.lock().unwrap();
            for b in blocks {
                let w = waiter(b);
                if let Some(waiters) = inflight.get_mut(&(obj.id, b)) {
                    waiters.extend(w);
                    continue;
                }
                inflight.insert((obj.id, b), w.into_iter().collect());
                match runs.last_mut() {
                    Some(run) if run.end == b && run.end - run.start < per_get => run.end += 1,
                    _ => runs.push(b..b + 1),
                }
            }
        }
        let claimed = runs.iter().map(|r| r.end - r.start).sum();
        for run in runs {
            let (this, obj) = (Arc::clone(self), Arc::clone(obj));
            // The fetch's span is created here, so it is a child of the read (or prefetch) that
            // claimed the blocks, although it runs as a task of its own.
            let span = tracing::debug_span!("fetch", key = %obj.header().key, blocks = ?run);
            tokio::spawn(async move { this.run(obj, run, demand).await }.instrument(span));
        }
        claimed
    }

    /// Loads a claimed run: blocks present on disk are read (and checked) from there, the
    /// missing ones fetched in one GET per stretch of neighbours.
    async fn run(self: Arc<Self>, obj: Arc<CachedObject>, run: Range<u64>, demand: Demand) {
        let mut missing: Vec<u64> = Vec::new();
        for b in run {
            if obj.is_present(b) {
                if let Some(bytes) = self.cache.read_verified(&obj, b).await {
                    self.finish(&obj, b, &Ok((bytes, [0; 32], 0)), false).await;
                    continue;
                }
            }
            missing.push(b);
        }
        for stretch in stretches(&missing) {
            match self.get_blocks(&obj, stretch.clone(), demand).await {
                Ok(blocks) => {
                    // Answer every waiter first, then write: nobody waits on the disk.
                    for (b, block) in stretch.clone().zip(&blocks) {
                        self.answer(&obj, b, &Ok(block.clone()));
                    }
                    for (b, block) in stretch.zip(blocks) {
                        self.finish(&obj, b, &Ok(block), true).await;
                    }
                }
                Err(e) => {
                    for b in stretch {
                        self.finish(&obj, b, &Err(e.clone()), false).await;
                    }
                }
            }
        }
    }

    /// Answers the waiters of block `b` that are registered now; the entry stays, so readers
    /// arriving meanwhile still join this load rather than start another.
    fn answer(&self, obj: &CachedObject, b: u64, result: &Result<Fetched, FetchError>) {
        let waiters = self.inflight.lock().unwrap().get_mut(&(obj.id, b)).map(std::mem::take).unwrap_or_default();
        reply(waiters, result);
    }

    /// Stores a fetched block (if `store`), then ends its load, answering late waiters.
    async fn finish(&self, obj: &Arc<CachedObject>, b: u64, result: &Result<Fetched, FetchError>, store: bool) {
        if let (true, Ok((bytes, hash, crc))) = (store, result) {
            self.cache.write_block(obj, b, bytes.clone(), *hash, *crc).await;
        }
        let late = self.inflight.lock().unwrap().remove(&(obj.id, b)).unwrap_or_default();
        self.settled.notify_waiters();
        reply(late, result);
    }

    /// Waits until no load of `blocks` of `obj` is in flight. A load answers its readers before
    /// it writes and claims its block, so a caller that is about to drop blocks it found wrong
    /// waits here first: otherwise the write of the very bytes it rejected could land after the
    /// drop and be taken for a fresh copy by the retry.
    pub async fn settle(&self, obj: &CachedObject, blocks: impl Iterator<Item = u64> + Clone) {
        self.wait_until(|inflight| !blocks.clone().any(|b| inflight.contains_key(&(obj.id, b)))).await;
    }

    async fn wait_until(&self, done: impl Fn(&HashMap<(ObjectId, u64), Vec<Waiter>>) -> bool) {
        loop {
            let notified = self.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable(); // registered before the check: no wake-up is missed
            if done(&self.inflight.lock().unwrap()) {
                return;
            }
            notified.await;
        }
    }

    /// GETs blocks `blocks` in one request and cuts the body into blocks. A block for which a
    /// verified unit already vouches (verified, then evicted) must match that digest; a
    /// mismatching one is fetched again alone, and a second mismatch is an error, so a corrupt
    /// refetch never passes for verified bytes.
    async fn get_blocks(&self, obj: &Arc<CachedObject>, blocks: Range<u64>, demand: Demand) -> Result<Vec<Fetched>, FetchError> {
        if let Some(fetched) = self.shared_tier_blocks(obj, blocks.clone()).await {
            return Ok(fetched);
        }
        let h = obj.header();
        let bs = h.block_size as u64;
        let range = blocks.start * bs..(blocks.end * bs).min(h.object_size);
        let body = {
            let _read_ahead = match demand {
                Demand::ReadAhead => Some(self.prefetch_permits.acquire().await.expect("semaphore is never closed")),
                Demand::Reader => None,
            };
            let _permit = self.permits.acquire().await.expect("semaphore is never closed");
            self.client.get_range(&h.key, &h.etag, range.clone()).await.map_err(|e| {
                tracing::warn!("fetching bytes {}-{} of s3://{}/{}: {e}", range.start, range.end - 1, h.bucket, h.key);
                FetchError::from(e)
            })?
        };
        tracing::debug!(range = ?range, bytes = body.len(), "GET done");
        let mut out = Vec::with_capacity((blocks.end - blocks.start) as usize);
        for b in blocks {
            let start = (b * bs - range.start) as usize;
            let bytes = body.slice(start..start + h.block_len(b));
            match self.digests(obj, b, bytes, 1) {
                Some(block) => out.push(block),
                None => out.push(self.get_block(obj, b).await?),
            }
        }
        Ok(out)
    }

    /// Blocks `blocks` from the shared tier, if it holds them all and each matches any digest
    /// this cache already proved for it; `None` sends the caller to the origin.
    async fn shared_tier_blocks(&self, obj: &Arc<CachedObject>, blocks: Range<u64>) -> Option<Vec<Fetched>> {
        let tier = self.shared.get().filter(|t| t.readable_for(obj))?;
        let bodies = tier.fetch(obj, blocks.clone()).await?;
        let fetched: Option<Vec<Fetched>> = blocks.zip(bodies).map(|(b, bytes)| self.digests(obj, b, bytes, 1)).collect();
        if fetched.is_none() {
            tier.reject(obj, "a block does not match the digest this cache proved for it");
        }
        fetched
    }

    /// GETs block `b` alone, for a block whose coalesced copy failed its verified digest.
    async fn get_block(&self, obj: &CachedObject, b: u64) -> Result<Fetched, FetchError> {
        let h = obj.header();
        let start = b * h.block_size as u64;
        let range = start..start + h.block_len(b) as u64;
        let bytes = {
            let _permit = self.permits.acquire().await.expect("semaphore is never closed");
            self.client.get_range(&h.key, &h.etag, range).await?
        };
        self.digests(obj, b, bytes, 2).ok_or_else(|| {
            FetchError::Failed(format!("block {b} of s3://{}/{} (ETag {}) failed its verified digest twice", h.bucket, h.key, h.etag))
        })
    }

    /// Both digests of fresh bytes in one pass (blake3 guards them at rest; the CRC lets their
    /// unit verify by combination later), or `None` if they contradict a verified digest.
    fn digests(&self, obj: &CachedObject, b: u64, bytes: Bytes, attempt: u32) -> Option<Fetched> {
        let h = obj.header();
        let hash = block_hash(&bytes);
        if obj.proven_hash(b).is_some_and(|expected| expected != hash) {
            Metrics::add(&self.metrics.verify_failures, 1);
            tracing::warn!(
                "block {b} of s3://{}/{} (ETag {}) does not match its verified digest (attempt {attempt} of 2)",
                h.bucket,
                h.key,
                h.etag
            );
            return None;
        }
        let crc = block_crc(h.checksum.algorithm, &bytes);
        Some((bytes, hash, crc))
    }

    /// Waits until no load is in flight, so every fetched block is written and claimed: called
    /// before a `cache warm` reports success and before a mount's runtime stops.
    pub async fn drain(&self) {
        self.wait_until(HashMap::is_empty).await;
    }

    /// What S3 offers to verify an object version against (HeadObject with checksum mode, plus
    /// the parts of a composite checksum).
    pub async fn object_checksum(&self, key: &str, etag: &str) -> Result<crate::checksum::ObjectChecksum, FetchError> {
        Ok(self.client.object_checksum(key, etag).await?)
    }

    /// The bucket fetched from.
    pub fn bucket(&self) -> &str {
        self.client.bucket()
    }

    /// A range straight from S3 without caching or checking: the caller verifies it
    /// ([`crate::uncached`]).
    pub async fn fetch_uncached(&self, key: &str, etag: &str, range: Range<u64>) -> Result<Bytes, FetchError> {
        let _permit = self.permits.acquire().await.expect("semaphore is never closed");
        Ok(self.client.get_range(key, etag, range).await?)
    }
}

/// Runs of consecutive numbers in an ascending list.
fn stretches(blocks: &[u64]) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    for &b in blocks {
        match out.last_mut() {
            Some(r) if r.end == b => r.end += 1,
            _ => out.push(b..b + 1),
        }
    }
    out
}

fn reply(waiters: Vec<Waiter>, result: &Result<Fetched, FetchError>) {
    for w in waiters {
        let _ = w.send(result.clone().map(|(bytes, _, _)| bytes));
    }
}

mod entry;
#[cfg(test)]
mod tests;

pub use entry::Entry;
