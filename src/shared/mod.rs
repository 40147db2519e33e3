//! The shared tier: verified blocks kept in an S3 bucket that many nodes read and fill, so the
//! second node of a training job reads the dataset from there instead of from the origin.
//!
//! Reads go local cache → shared tier → origin. The tier is trusted for nothing:
//! - Only objects the origin offers a checksum for use it, and only in strict mode, where no
//!   byte is served before its whole unit matched the origin's checksum. A block from the tier
//!   therefore passes the same two checks as one from the origin: its blake3 (against the
//!   digest stored with it, and against a digest this cache already proved, if any) and its
//!   unit's checksum against the origin's.
//! - A block that fails either check is counted (`hoardfs_shared_rejects_total`), and from then
//!   on that object version is read from the origin only in this mount.
//! - A tier that is slow, missing, denied or down is a miss: the origin serves the read.
//!
//! Writes happen only after this node verified a unit against the origin: each of its blocks is
//! queued (bounded; a full queue drops the put) and uploaded by a few background tasks, once,
//! with an S3 checksum and the block's identity in metadata. A put that fails is dropped.
//!
//! Keys: `PREFIX/hoardfs-v1/<blake3(bucket, key, ETag) hex>/<block size>/<block index>`. The
//! hash gives a fixed-length key whatever the object key's length and spreads keys evenly
//! across the bucket's partitions; the ETag pins the object version; the block size is in the
//! path so caches with different block sizes never read each other's blocks as their own; the
//! version tag lets a later layout live beside this one. Metadata carries the origin identity in
//! clear, and a block whose metadata names another object is rejected (a hash collision or a
//! misplaced object).

pub mod memory;
pub mod s3;
mod upload;

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;

use crate::cache::format::IndexHeader;
use crate::cache::{BlockCache, CachedObject, ObjectId};
use crate::checksum::{block_hash, Algorithm};
use crate::fetch::Fetcher;
use crate::metrics::Metrics;
use crate::object::{BoxFuture, ObjectError};
use crate::verify::VerifyMode;

pub use upload::Uploads;

/// Metadata names (sent as `x-amz-meta-*`).
const META_BLAKE3: &str = "hoardfs-blake3";
const META_ORIGIN: &str = "hoardfs-origin";

/// One object of the shared bucket: its body and user metadata.
#[derive(Clone, Debug, Default)]
pub struct SharedObject {
    /// The block's bytes.
    pub body: Bytes,
    /// User metadata, names without the `x-amz-meta-` prefix.
    pub meta: HashMap<String, String>,
}

/// The two operations the shared tier needs from its bucket.
pub trait SharedStore: Send + Sync + 'static {
    /// The object at `key`, or `None` if there is none.
    fn get(&self, key: &str) -> BoxFuture<'_, Result<Option<SharedObject>, ObjectError>>;
    /// Stores `object` at `key`.
    fn put(&self, key: &str, object: SharedObject) -> BoxFuture<'_, Result<(), ObjectError>>;
}

/// Where the shared tier lives and what this node may do with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedConfig {
    /// Bucket of the shared tier.
    pub bucket: String,
    /// Key prefix inside it ("" or ending in `/`).
    pub prefix: String,
    /// Read from the tier but never write to it.
    pub read_only: bool,
}

impl SharedConfig {
    /// The tier in `bucket` under `prefix` (normalised to "" or ending in `/`).
    pub fn new(bucket: &str, prefix: &str, read_only: bool) -> Self {
        let prefix = prefix.trim_matches('/');
        let prefix = if prefix.is_empty() { String::new() } else { format!("{prefix}/") };
        Self { bucket: bucket.to_string(), prefix, read_only }
    }
}

/// Attaches the tier `config` describes, on S3 and reached like `origin` (endpoint, region,
/// addressing), to `fetcher`: reads go through it if `mode` is strict, verified units are
/// offered to it. Run it on the runtime the fetcher uses: the upload tasks are spawned there.
pub async fn attach_s3(
    fetcher: &Arc<Fetcher>,
    config: SharedConfig,
    origin: &crate::object::s3::S3Config,
    cache: Arc<BlockCache>,
    metrics: Arc<Metrics>,
    mode: VerifyMode,
) {
    let store = s3::S3SharedStore::new(&crate::object::s3::S3Config { bucket: config.bucket.clone(), ..origin.clone() }).await;
    let reads = mode == VerifyMode::Strict;
    tracing::info!(bucket = %config.bucket, prefix = %config.prefix, reads, writes = !config.read_only, "shared cache tier attached");
    fetcher.set_shared_tier(SharedTier::new(Arc::new(store), &config, reads, fetcher, cache, metrics));
}

/// The shared tier of one mount (or `cache warm` run).
pub struct SharedTier {
    store: Arc<dyn SharedStore>,
    prefix: String,
    metrics: Arc<Metrics>,
    uploads: Option<Uploads>,
    /// Whether reads may take blocks from the tier (strict mode only: see the module docs).
    reads: bool,
    /// What this mount has learnt about the tier, under one lock.
    state: Mutex<TierState>,
}

#[derive(Default)]
struct TierState {
    /// Objects some of whose blocks were taken from the tier and are not yet all verified.
    taken: HashSet<ObjectId>,
    /// Objects a tier block failed a check for: read from the origin only from now on.
    distrusted: HashSet<ObjectId>,
    /// After a failed tier read, the tier is skipped until then (a tier that is down costs one
    /// failed request per [`PAUSE_AFTER_ERROR`], not one per block).
    paused_until: Option<Instant>,
}

/// How long the tier is skipped after a read of it failed.
pub const PAUSE_AFTER_ERROR: Duration = Duration::from_secs(30);

impl SharedTier {
    /// A tier over `store`. Reads take blocks from it if `reads` (the mount verifies strictly);
    /// puts go through `cache` (blocks are read back, checked, from disk) unless
    /// `config.read_only`.
    pub fn new(
        store: Arc<dyn SharedStore>,
        config: &SharedConfig,
        reads: bool,
        fetcher: &Arc<Fetcher>,
        cache: Arc<BlockCache>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let fetcher = Arc::downgrade(fetcher);
        Arc::new_cyclic(|tier| Self {
            reads,
            state: Mutex::default(),
            store,
            prefix: config.prefix.clone(),
            metrics,
            uploads: (!config.read_only).then(|| Uploads::start(tier.clone(), fetcher, cache)),
        })
    }

    /// The tier's key for block `b` of the object version `h` describes.
    pub fn key(&self, h: &IndexHeader, b: u64) -> String {
        format!("{}{}", self.prefix, key_suffix(h, b))
    }

    /// Whether blocks of `obj` may be taken from the tier now: reads are on, the tier is not
    /// paused after an error, the origin offers a checksum for every unit of `obj`, and no tier
    /// block of it has failed a check in this mount.
    pub fn readable_for(&self, obj: &CachedObject) -> bool {
        self.reads_now() && verifiable(obj) && !self.state.lock().unwrap().distrusted.contains(&obj.id)
    }

    /// Whether reads may consult the tier at all now (on, and not paused after an error).
    pub fn reads_now(&self) -> bool {
        self.reads && self.state.lock().unwrap().paused_until.is_none_or(|t| Instant::now() >= t)
    }

    /// Blocks `blocks` of `obj` from the tier, each checked against the blake3 and the origin
    /// identity stored with it, or `None` if any is missing, foreign or damaged (the caller then
    /// fetches the whole stretch from the origin). Fetched concurrently, one GET per block.
    pub async fn fetch(&self, obj: &Arc<CachedObject>, blocks: Range<u64>) -> Option<Vec<Bytes>> {
        let h = obj.header();
        let mut gets = tokio::task::JoinSet::new();
        for b in blocks.clone() {
            let (store, key) = (self.store.clone(), self.key(h, b));
            gets.spawn(async move { (b, store.get(&key).await) });
        }
        let mut found = HashMap::new();
        let mut complete = true;
        while let Some(joined) = gets.join_next().await {
            let Ok((b, got)) = joined else {
                complete = false;
                continue;
            };
            match got {
                Ok(Some(object)) => match self.check(h, b, object) {
                    Ok(bytes) => {
                        found.insert(b, bytes);
                    }
                    Err(why) => {
                        self.reject(obj, &why);
                        complete = false;
                    }
                },
                Ok(None) => {
                    Metrics::add(&self.metrics.shared_misses, 1);
                    complete = false;
                }
                Err(e) => {
                    tracing::warn!("shared tier read failed ({e}); reading the origin, and skipping the tier for {PAUSE_AFTER_ERROR:?}");
                    Metrics::add(&self.metrics.shared_errors, 1);
                    self.state.lock().unwrap().paused_until = Some(Instant::now() + PAUSE_AFTER_ERROR);
                    complete = false;
                }
            }
        }
        if !complete {
            return None;
        }
        Metrics::add(&self.metrics.shared_hits, found.len() as u64);
        self.state.lock().unwrap().taken.insert(obj.id);
        tracing::debug!(blocks = ?blocks, "blocks taken from the shared tier");
        Some(blocks.map(|b| found.remove(&b).expect("every block was found")).collect())
    }

    /// Checks one tier object against what block `b` of `h` must be.
    fn check(&self, h: &IndexHeader, b: u64, object: SharedObject) -> Result<Bytes, String> {
        if object.meta.get(META_ORIGIN).map(String::as_str) != Some(origin(h, b).as_str()) {
            return Err(format!("block {b}: metadata names another object ({:?})", object.meta.get(META_ORIGIN)));
        }
        if object.body.len() != h.block_len(b) {
            return Err(format!("block {b}: {} bytes where {} were due", object.body.len(), h.block_len(b)));
        }
        let hash = blake3::Hash::from(block_hash(&object.body)).to_hex();
        if object.meta.get(META_BLAKE3).map(String::as_str) != Some(hash.as_str()) {
            return Err(format!("block {b}: blake3 does not match the digest stored with it"));
        }
        Ok(object.body)
    }

    /// Counts a tier copy of `obj` that failed a check, and reads `obj` from the origin only
    /// from now on.
    pub fn reject(&self, obj: &CachedObject, why: &str) {
        let h = obj.header();
        Metrics::add(&self.metrics.shared_rejects, 1);
        tracing::warn!("shared tier copy of s3://{}/{} (ETag {}) rejected: {why}; reading the origin", h.bucket, h.key, h.etag);
        self.state.lock().unwrap().distrusted.insert(obj.id);
    }

    /// Called when a unit of `obj` failed the origin's checksum: if tier blocks were in it,
    /// the tier is blamed (counted) and the object is read from the origin from now on.
    pub fn unit_failed(&self, obj: &CachedObject) {
        let was_taken = self.state.lock().unwrap().taken.remove(&obj.id);
        if was_taken {
            self.reject(obj, "a unit built from its blocks does not match the origin's checksum");
        }
    }

    /// Called when a unit of `obj` (its blocks `blocks`) matched the origin's checksum: its
    /// blocks are offered to the tier, unless they came from it. (An object whose tier copy was
    /// rejected is offered once the origin's bytes verified: that repairs the tier.)
    pub fn unit_verified(&self, obj: &Arc<CachedObject>, blocks: Range<u64>) {
        let from_tier = {
            let taken = &mut self.state.lock().unwrap().taken;
            // Forget the object once all of it is verified: the set stays as small as the
            // objects being read right now.
            if obj.is_verified() {
                taken.remove(&obj.id)
            } else {
                taken.contains(&obj.id)
            }
        };
        if let Some(uploads) = self.uploads.as_ref().filter(|_| !from_tier && verifiable(obj)) {
            uploads.offer(obj, blocks);
        }
    }

    /// Waits (up to `limit`) for queued puts to finish; puts still queued then are dropped.
    pub async fn drain(&self, limit: std::time::Duration) {
        if let Some(uploads) = &self.uploads {
            uploads.drain(limit).await;
        }
    }

    /// The object to store for block `b` of `h`.
    fn object(&self, h: &IndexHeader, b: u64, body: Bytes) -> (String, SharedObject) {
        let hash = blake3::Hash::from(block_hash(&body)).to_hex().to_string();
        let meta = HashMap::from([(META_BLAKE3.to_string(), hash), (META_ORIGIN.to_string(), origin(h, b))]);
        (self.key(h, b), SharedObject { body, meta })
    }
}

/// Whether the origin offers a checksum for every unit of `obj`: only then can a tier copy be
/// proven, so only then is the tier read or written for it.
fn verifiable(obj: &CachedObject) -> bool {
    let h = obj.header();
    let units = h.checksum.units(h.object_size).len();
    h.checksum.algorithm != Algorithm::None && (0..units).all(|u| h.checksum.expected(u).is_some())
}

/// `hoardfs-v1/<blake3 of the length-prefixed bucket, key and ETag>/<block size>/<b>`.
fn key_suffix(h: &IndexHeader, b: u64) -> String {
    let mut id = blake3::Hasher::new();
    for part in [&h.bucket, &h.key, &h.etag] {
        id.update(&(part.len() as u64).to_le_bytes());
        id.update(part.as_bytes());
    }
    format!("hoardfs-v1/{}/{}/{b}", id.finalize().to_hex(), h.block_size)
}

/// The origin identity of block `b` of `h`, as stored in metadata (ASCII, as S3 requires:
/// the key in URL-safe base64). Compared whole, so any field that differs makes it foreign.
fn origin(h: &IndexHeader, b: u64) -> String {
    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(h.key.as_bytes());
    let etag = h.etag.trim_matches('"');
    format!("bucket={};key={key};etag={etag};block-size={};offset={}", h.bucket, h.block_size, b * h.block_size as u64)
}

#[cfg(test)]
mod tests;
