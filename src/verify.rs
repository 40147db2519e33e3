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

use crate::cache::{CachedObject, ObjectId};
use crate::checksum::{block_crc, block_hash, combine_crcs, Algorithm, UnitHasher};
use crate::fetch::{FetchError, Fetcher};
use crate::metrics::Metrics;

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
        let aligned = unit.start % bs == 0 && (unit.end % bs == 0 || unit.end == h.object_size);
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
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::cache::format::VerifyState;
    use crate::io::EngineChoice;
    use crate::object::memory::MemoryClient;
    use crate::testing::{pattern, read_all, rig_with, small_blocks};

    const ALGS: [Algorithm; 5] = [Algorithm::Crc32, Algorithm::Crc32c, Algorithm::Crc64nvme, Algorithm::Sha1, Algorithm::Sha256];

    fn strict() -> VerifyPolicy {
        VerifyPolicy::default()
    }

    /// Every algorithm, full-object and composite, with parts on and off block edges: the bytes
    /// come back right and the object ends Verified, persistently.
    #[tokio::test]
    async fn every_algorithm_and_layout_verifies_and_stays_verified() {
        let mem = Arc::new(MemoryClient::new("b"));
        let mut names = Vec::new();
        for (i, alg) in ALGS.iter().enumerate() {
            let body = pattern(4096 * 7 + 123, i as u8);
            for (layout, part) in [("full", None), ("parts-aligned", Some(8192)), ("parts-unaligned", Some(5000))] {
                if *alg >= Algorithm::Sha1 || part.is_some() || layout == "full" {
                    let name = format!("{alg:?}-{layout}");
                    mem.put_with_checksum(&name, body.clone(), *alg, part);
                    names.push((name, body.clone()));
                }
            }
        }
        mem.put("md5-etag", pattern(9000, 99));
        names.push(("md5-etag".into(), pattern(9000, 99)));
        let dir = tempfile::tempdir().unwrap();
        {
            let r = rig_with(dir.path(), mem.clone(), EngineChoice::Psync, small_blocks(), strict());
            for (name, body) in &names {
                assert_eq!(&read_all(&r.fs, name).await.unwrap(), body, "{name}");
            }
            assert_eq!(r.metrics.verify_failures.load(Ordering::Relaxed), 0);
        }
        let states = states(dir.path());
        assert_eq!(states.len(), names.len());
        assert!(states.iter().all(|s| *s == VerifyState::Verified), "{states:?}");
    }

    fn states(dir: &std::path::Path) -> Vec<VerifyState> {
        let cache = crate::cache::CacheDir::open_read_only(dir).unwrap();
        let (ids, _) = cache.scan().unwrap();
        ids.iter().map(|id| crate::cache::index::ObjectIndex::read_snapshot(&cache.paths(id).1).unwrap().verify_state()).collect()
    }

    /// Corrupt GET bodies: one bad answer is survived by a refetch; bad answers every time end in
    /// EIO; wrong bytes are never returned.
    #[tokio::test]
    async fn corrupt_bodies_are_never_served() {
        for alg in ALGS.into_iter().chain([Algorithm::Md5Etag]) {
            let mem = Arc::new(MemoryClient::new("b"));
            let body = pattern(4096 * 3 + 7, 5);
            if alg == Algorithm::Md5Etag {
                mem.put("o", body.clone());
            } else {
                mem.put_with_checksum("o", body.clone(), alg, None);
            }
            let bad = Arc::new(AtomicU32::new(1));
            let b2 = bad.clone();
            mem.corrupt_gets(move |_, v| {
                if b2.load(Ordering::SeqCst) > 0 && v.len() > 100 {
                    b2.fetch_sub(1, Ordering::SeqCst);
                    v[100] ^= 0x40;
                }
            });
            let dir = tempfile::tempdir().unwrap();
            let r = rig_with(dir.path(), mem.clone(), EngineChoice::Psync, small_blocks(), strict());
            assert_eq!(read_all(&r.fs, "o").await.unwrap(), body, "{alg:?}: one corrupt GET");
            assert_eq!(r.metrics.verify_failures.load(Ordering::Relaxed), 1, "{alg:?}");

            let dir = tempfile::tempdir().unwrap();
            bad.store(u32::MAX, Ordering::SeqCst);
            let r = rig_with(dir.path(), mem.clone(), EngineChoice::Psync, small_blocks(), strict());
            let err = read_all(&r.fs, "o").await.expect_err("every GET corrupt must fail");
            assert_eq!(err.errno, libc::EIO, "{alg:?}");
            assert!(err.message.contains("failed verification"), "{}", err.message);
            assert_eq!(states(dir.path()), vec![VerifyState::Failed]);
        }
    }

    /// A verified object whose block rots on disk is refetched, and the refetched bytes are
    /// checked against S3's checksum again: a corrupt refetch is refused, not trusted.
    #[tokio::test]
    async fn refetch_after_disk_corruption_is_verified_again() {
        let mem = Arc::new(MemoryClient::new("b"));
        let body = pattern(4096 * 3, 6);
        mem.put_with_checksum("o", body.clone(), Algorithm::Crc32c, None);
        let dir = tempfile::tempdir().unwrap();
        {
            let r = rig_with(dir.path(), mem.clone(), EngineChoice::Psync, small_blocks(), strict());
            assert_eq!(read_all(&r.fs, "o").await.unwrap(), body);
        }
        assert_eq!(states(dir.path()), vec![VerifyState::Verified]);
        let data = walk(dir.path()).into_iter().find(|p| p.extension().is_some_and(|e| e == "data")).unwrap();
        let mut bytes = std::fs::read(&data).unwrap();
        bytes[5000] ^= 1;
        std::fs::write(&data, bytes).unwrap();
        mem.corrupt_gets(|_, v| v[0] ^= 1);
        let r = rig_with(dir.path(), mem.clone(), EngineChoice::Psync, small_blocks(), strict());
        let err = read_all(&r.fs, "o").await.expect_err("a corrupt refetch must not be served");
        assert_eq!(r.metrics.blake3_mismatches.load(Ordering::Relaxed), 1);
        assert_eq!(err.errno, libc::EIO);
    }

    fn walk(root: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = vec![];
        for e in std::fs::read_dir(root).unwrap().flatten() {
            if e.path().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path());
            }
        }
        out
    }

    /// One corrupt GET, whose blocks are written to disk late (after the unit rejected them): the
    /// retry must fetch afresh, not take the rejected bytes for a new copy (the CI flake of
    /// `corrupted_get_bodies_never_reach_a_reader`, made deterministic by slow writes).
    #[tokio::test]
    async fn a_rejected_body_written_late_does_not_poison_the_retry() {
        for alg in [Algorithm::Crc32c, Algorithm::Sha256] {
            let mem = Arc::new(MemoryClient::new("b"));
            let body = pattern(4096 * 6 + 3, 9);
            mem.put_with_checksum("o", body.clone(), alg, None);
            let bad = Arc::new(AtomicU32::new(1));
            let b2 = bad.clone();
            mem.corrupt_gets(move |_, v| {
                if b2.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
                    v[10] ^= 1;
                }
            });
            let dir = tempfile::tempdir().unwrap();
            let io =
                Arc::new(crate::testing::SlowWrites(crate::io::probe(EngineChoice::Psync).unwrap(), std::time::Duration::from_millis(50)));
            let r = crate::testing::rig_on(dir.path(), mem, io, small_blocks(), strict());
            assert_eq!(read_all(&r.fs, "o").await.unwrap(), body, "{alg:?}");
            assert_eq!(r.metrics.verify_failures.load(Ordering::Relaxed), 1, "{alg:?}");
        }
    }

    /// A server whose listings carry no ETags (s3s-fs): the open HEADs the object, so the entry
    /// is keyed by the real ETag and verified against it, not recorded unverifiable under "".
    #[tokio::test]
    async fn a_listing_without_etags_is_pinned_by_a_head_at_open() {
        let mem = Arc::new(MemoryClient::new("b"));
        mem.lists_without_etags.store(true, Ordering::SeqCst);
        mem.put("o", pattern(9000, 4));
        let dir = tempfile::tempdir().unwrap();
        let r = rig_with(dir.path(), mem.clone(), EngineChoice::Psync, small_blocks(), strict());
        let dh = r.fs.opendir(crate::meta::ROOT_INO).await.unwrap(); // the listing, ETag-less
        r.fs.releasedir(dh);
        assert_eq!(read_all(&r.fs, "o").await.unwrap(), pattern(9000, 4));
        assert!(r.metrics.s3_head_requests.load(Ordering::Relaxed) >= 1);
        assert_eq!(states(dir.path()), vec![VerifyState::Verified]);
    }

    #[tokio::test]
    async fn unverifiable_objects_follow_the_policy() {
        let mem = Arc::new(MemoryClient::new("b"));
        let info = mem.put("multipart-etag", pattern(5000, 1));
        // An ETag with a part count is no MD5 of the content, and there is no checksum.
        mem.set_etag("multipart-etag", &format!("\"{}-3\"", info.etag.trim_matches('"')));
        let dir = tempfile::tempdir().unwrap();
        let r = rig_with(dir.path(), mem.clone(), EngineChoice::Psync, small_blocks(), strict());
        assert_eq!(read_all(&r.fs, "multipart-etag").await.unwrap(), pattern(5000, 1));
        drop(r);
        assert_eq!(states(dir.path()), vec![VerifyState::Unverifiable]);
        let dir = tempfile::tempdir().unwrap();
        let policy = VerifyPolicy { require_checksum: true, ..strict() };
        let r = rig_with(dir.path(), mem, EngineChoice::Psync, small_blocks(), policy);
        assert_eq!(read_all(&r.fs, "multipart-etag").await.unwrap_err().errno, libc::EIO);
    }

    #[tokio::test]
    async fn best_effort_serves_then_verifies_in_background() {
        let mem = Arc::new(MemoryClient::new("b"));
        let body = pattern(4096 * 4, 8);
        mem.put_with_checksum("o", body.clone(), Algorithm::Crc64nvme, None);
        let dir = tempfile::tempdir().unwrap();
        let policy = VerifyPolicy { mode: VerifyMode::BestEffort, ..strict() };
        let r = rig_with(dir.path(), mem, EngineChoice::Psync, small_blocks(), policy);
        assert_eq!(read_all(&r.fs, "o").await.unwrap(), body);
        for _ in 0..100 {
            if states(dir.path()) == vec![VerifyState::Verified] {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("object never verified in the background: {:?}", states(dir.path()));
    }
}
