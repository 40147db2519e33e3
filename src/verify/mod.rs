//! Proving cached bytes are S3's bytes: each *unit* (a part of a composite checksum, otherwise
//! the whole object) is checked against S3's own checksum once all its blocks are present.
//!
//! CRC units whose edges fall on block edges verify by combining the per-block CRCs recorded at
//! fill time (no I/O); other units (SHA, MD5, CRC parts that split a block) are hashed by
//! streaming their blocks. A mismatch drops the unit's blocks and fetches them again once; a
//! second mismatch marks the object Failed and reads of it fail with EIO, with the bucket, key,
//! ETag and byte range in the log. A verified object is marked in its index and is not verified
//! again after a remount.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::cache::{CacheError, CachedObject, ObjectId};
use crate::checksum::{block_crc, block_hash, combine_crcs, Algorithm, UnitHasher};
use crate::fetch::{Entry, FetchError, Fetcher};
use crate::metrics::Metrics;
use crate::object::ObjectInfo;

/// When bytes are checked against S3's checksum relative to serving them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum VerifyMode {
    /// A byte is served only after its unit matched S3's checksum. A first read of a large
    /// unverified unit waits for the whole unit to arrive (fetched in parallel).
    Strict,
    /// Bytes are served as they arrive (still blake3-checked at rest); each unit is verified in
    /// the background once complete, and a mismatch drops it so later reads refetch.
    BestEffort,
}

/// What to verify and what to do about objects S3 gives no checksum for.
#[derive(Clone, Copy, Debug)]
pub struct VerifyPolicy {
    /// When. Default: strict.
    pub mode: VerifyMode,
    /// Refuse (EIO) objects with nothing to verify against. Default: false (serve them, marked
    /// unverified in `hoardfs cache ls`).
    pub require_checksum: bool,
}

impl Default for VerifyPolicy {
    fn default() -> Self {
        Self { mode: VerifyMode::Strict, require_checksum: false }
    }
}

/// Why bytes cannot be served.
#[derive(Clone, Debug, thiserror::Error)]
pub enum VerifyError {
    /// The bytes did not match S3's checksum, twice.
    #[error("{0}")]
    Mismatch(String),
    /// Nothing to verify against and the policy requires it.
    #[error("{0}")]
    Unverifiable(String),
    /// The bytes could not be fetched.
    #[error(transparent)]
    Fetch(#[from] FetchError),
}

type Waiters = Vec<oneshot::Sender<Result<(), VerifyError>>>;

/// The verifier of one mount.
pub struct Verifier {
    fetcher: Arc<Fetcher>,
    metrics: Arc<Metrics>,
    policy: VerifyPolicy,
    inflight: Mutex<HashMap<(ObjectId, usize), Waiters>>,
}

impl Verifier {
    /// A verifier that loads blocks through `fetcher`.
    pub fn new(fetcher: Arc<Fetcher>, metrics: Arc<Metrics>, policy: VerifyPolicy) -> Arc<Self> {
        Arc::new(Self { fetcher, metrics, policy, inflight: Mutex::default() })
    }

    /// The policy this verifier applies.
    pub fn policy(&self) -> VerifyPolicy {
        self.policy
    }

    /// The counters it adds to.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The cache entry of an object version (see [`Fetcher::entry`]). When making it fetched the
    /// whole object, its units are checked against S3's checksum from those bytes in memory:
    /// the object is then verified before its first open returns, so that open can hand it to the
    /// kernel, and its bytes are never read back from disk to be hashed.
    pub async fn entry(&self, info: &ObjectInfo) -> Result<Result<Entry, CacheError>, FetchError> {
        Ok(self.fetcher.entry(info).await?.inspect(|entry| {
            if let Some(body) = &entry.fresh {
                self.accept_whole(&entry.obj, body);
            }
        }))
    }

    /// Marks the units of `obj` that `body` (the whole object, as just fetched and stored)
    /// proves. A unit that does not match is left alone: the next read verifies it the usual way
    /// (from disk, dropping and refetching what fails), so failures have one path.
    fn accept_whole(&self, obj: &Arc<CachedObject>, body: &[u8]) {
        let h = obj.header();
        if h.checksum.algorithm == Algorithm::None || obj.is_verified() || body.len() as u64 != h.object_size {
            return;
        }
        for (u, unit) in h.checksum.units(h.object_size).iter().enumerate() {
            let mut hasher = UnitHasher::new(h.checksum.algorithm);
            hasher.update(&body[unit.start as usize..unit.end as usize]);
            if Some(hasher.finish()) != h.checksum.expected(u) {
                continue;
            }
            let bs = h.block_size as u64;
            let blocks = blocks_of(obj, unit);
            // Blocks the cache could not keep (a full disk) are checked against these when
            // fetched again, as after any verification.
            obj.prove(blocks.clone().filter(|&b| !obj.is_present(b)).map(|b| {
                let start = (b * bs) as usize;
                (b, block_hash(&body[start..start + h.block_len(b)]))
            }));
            obj.set_unit_verified(u);
            tracing::debug!(range = ?unit, "unit matched S3's checksum in memory");
            self.offer_to_shared_tier(obj, unit);
        }
    }

    /// Called before bytes `range` of `obj` are served: in strict mode, returns once every unit
    /// overlapping the range is verified (or failed). Refuses unverifiable objects if required.
    pub async fn before_serve(self: &Arc<Self>, obj: &Arc<CachedObject>, range: Range<u64>) -> Result<(), VerifyError> {
        self.check(obj, range, VerifyMode::Strict).await
    }

    /// Whether every byte of `obj` may be served with no further check (it is verified, or S3
    /// offers nothing and the policy serves such objects).
    pub fn servable(&self, obj: &CachedObject) -> bool {
        obj.is_verified() || (obj.header().checksum.algorithm == Algorithm::None && !self.policy.require_checksum)
    }

    /// Whether bytes `range` of `obj` may be returned now: in strict mode, every unit they touch
    /// is verified (a block dropped during the read un-verifies its units, and the read must
    /// then be redone); in best-effort mode, always.
    pub fn covers(&self, obj: &CachedObject, range: Range<u64>) -> bool {
        if self.policy.mode != VerifyMode::Strict || obj.is_verified() {
            return true;
        }
        let h = obj.header();
        if h.checksum.algorithm == Algorithm::None {
            return !self.policy.require_checksum;
        }
        h.checksum
            .units(h.object_size)
            .iter()
            .enumerate()
            .all(|(u, unit)| unit.end <= range.start || unit.start >= range.end.max(range.start + 1) || obj.unit_verified(u))
    }

    /// Called after bytes `range` of `obj` were served: in best-effort mode, starts background
    /// verification of the overlapping units that are now complete.
    pub async fn after_serve(self: &Arc<Self>, obj: &Arc<CachedObject>, range: Range<u64>) {
        let _ = self.check(obj, range, VerifyMode::BestEffort).await;
    }

    async fn check(self: &Arc<Self>, obj: &Arc<CachedObject>, range: Range<u64>, phase: VerifyMode) -> Result<(), VerifyError> {
        if phase != self.policy.mode {
            return Ok(());
        }
        if obj.is_verified() {
            return Ok(());
        }
        let h = obj.header();
        if h.checksum.algorithm == Algorithm::None {
            if self.policy.require_checksum {
                return Err(VerifyError::Unverifiable(format!(
                    "s3://{}/{} has no checksum to verify against and --require-checksum is set",
                    h.bucket, h.key
                )));
            }
            return Ok(());
        }
        let units = h.checksum.units(h.object_size);
        for (u, unit) in units.iter().enumerate() {
            if unit.end <= range.start || unit.start >= range.end.max(range.start + 1) || obj.unit_verified(u) {
                continue;
            }
            match self.policy.mode {
                VerifyMode::Strict => self.ensure(obj, u).await?,
                VerifyMode::BestEffort => {
                    if blocks_of(obj, unit).all(|b| obj.is_present(b)) {
                        let (this, obj) = (self.clone(), obj.clone());
                        tokio::spawn(async move { this.ensure(&obj, u).await });
                    }
                }
            }
        }
        Ok(())
    }

    /// Verifies unit `u`, once however many callers ask at the same time.
    pub async fn ensure(self: &Arc<Self>, obj: &Arc<CachedObject>, u: usize) -> Result<(), VerifyError> {
        let key = (obj.id, u);
        let (tx, rx) = oneshot::channel();
        let joined = {
            let mut inflight = self.inflight.lock().unwrap();
            match inflight.get_mut(&key) {
                Some(w) => {
                    w.push(tx);
                    true
                }
                None => {
                    inflight.insert(key, vec![tx]);
                    false
                }
            }
        };
        if joined {
            return rx.await.unwrap_or_else(|_| Err(VerifyError::Mismatch("verification abandoned".into())));
        }
        let result = self.verify_unit(obj, u).await;
        for w in self.inflight.lock().unwrap().remove(&key).unwrap_or_default() {
            let _ = w.send(result.clone());
        }
        result
    }

    #[tracing::instrument(level = "debug", name = "verify", skip_all, fields(key = %obj.header().key, unit = u))]
    async fn verify_unit(&self, obj: &Arc<CachedObject>, u: usize) -> Result<(), VerifyError> {
        if obj.unit_verified(u) {
            return Ok(());
        }
        let h = obj.header();
        let unit = h.checksum.units(h.object_size)[u].clone();
        let what = format!("s3://{}/{} (ETag {}) bytes {}-{}", h.bucket, h.key, h.etag, unit.start, unit.end.saturating_sub(1));
        let failed = || VerifyError::Mismatch(format!("{what} failed verification against S3's {:?} checksum twice", h.checksum.algorithm));
        if obj.unit_failed(u) {
            return Err(failed());
        }
        let expected = h.checksum.expected(u);
        for attempt in 1..=2 {
            let mut proof = Vec::new();
            let actual = self.unit_checksum(obj, &unit, &mut proof).await?;
            if actual.is_some() && actual == expected {
                obj.prove(proof.into_iter().filter(|(b, _)| !obj.is_present(*b)));
                obj.set_unit_verified(u);
                tracing::debug!(range = ?unit, attempt, "unit matched S3's checksum");
                self.offer_to_shared_tier(obj, &unit);
                if obj.is_verified() {
                    tracing::debug!("s3://{}/{} verified against its {:?} checksum", h.bucket, h.key, h.checksum.algorithm);
                }
                return Ok(());
            }
            Metrics::add(&self.metrics.verify_failures, 1);
            if let Some(tier) = self.fetcher.shared_tier() {
                tier.unit_failed(obj);
            }
            tracing::warn!("{what} do not match S3's {:?} checksum (attempt {attempt} of 2); dropping them", h.checksum.algorithm);
            self.fetcher.settle(obj, blocks_of(obj, &unit)).await;
            for b in blocks_of(obj, &unit) {
                obj.drop_block(b);
            }
        }
        obj.set_unit_failed(u);
        Err(failed())
    }

    /// Offers a verified unit's blocks to the shared tier (queued; uploaded in the background
    /// once they are on disk).
    fn offer_to_shared_tier(&self, obj: &Arc<CachedObject>, unit: &Range<u64>) {
        if let Some(tier) = self.fetcher.shared_tier() {
            tier.unit_verified(obj, blocks_of(obj, unit));
        }
    }

    /// The checksum of the unit's bytes, loading missing blocks first. `None` if a block
    /// vanished in between (the caller then counts it as a mismatch and refetches).
    async fn unit_checksum(
        &self,
        obj: &Arc<CachedObject>,
        unit: &Range<u64>,
        proof: &mut Vec<(u64, [u8; 32])>,
    ) -> Result<Option<Vec<u8>>, FetchError> {
        let h = obj.header();
        let bs = h.block_size as u64;
        let blocks: Vec<u64> = blocks_of(obj, unit).collect();
        // Load every missing block at once (the fetcher bounds how many GETs run). A load answers
        // before its block is claimed in the index, so CRCs of loaded blocks come from their
        // bytes, and those of blocks already present from their index records.
        let missing: Vec<u64> = blocks.iter().copied().filter(|&b| !obj.is_present(b)).collect();
        let loads = self.fetcher.load_each(obj, &missing);
        let mut loaded = HashMap::new();
        let mut digests = Vec::new();
        for (&b, pending) in missing.iter().zip(loads) {
            let bytes = pending.wait().await?;
            loaded.insert(b, block_crc(h.checksum.algorithm, &bytes));
            digests.push((b, block_hash(&bytes)));
        }
        // If the unit verifies, these digests are what its blocks' bytes were; blocks the cache
        // could not keep are checked against them when fetched again.
        *proof = digests;
        let aligned = unit.start.is_multiple_of(bs) && (unit.end.is_multiple_of(bs) || unit.end == h.object_size);
        if h.checksum.algorithm.crc().is_some() && aligned {
            let pieces: Option<Vec<(u64, u64)>> =
                blocks.iter().map(|&b| loaded.get(&b).copied().or_else(|| obj.block_crc(b)).map(|c| (c, h.block_len(b) as u64))).collect();
            return Ok(pieces.and_then(|p| combine_crcs(h.checksum.algorithm, p)));
        }
        let mut hasher = UnitHasher::new(h.checksum.algorithm);
        for &b in &blocks {
            let block = self.fetcher.load(obj, b).await?;
            proof.push((b, block_hash(&block)));
            let start = b * bs;
            let lo = unit.start.max(start) - start;
            let hi = unit.end.min(start + block.len() as u64) - start;
            hasher.update(&block[lo as usize..hi as usize]);
        }
        Ok(Some(hasher.finish()))
    }
}

/// Blocks overlapping a byte range.
fn blocks_of(obj: &CachedObject, unit: &Range<u64>) -> Range<u64> {
    let bs = obj.header().block_size as u64;
    let first = unit.start / bs;
    let end = if unit.is_empty() { first } else { unit.end.div_ceil(bs) };
    first..end
}

#[cfg(test)]
mod tests;
