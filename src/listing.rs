//! Listings persisted in the cache directory (`listings/<id>.json`), so a remount of an
//! immutable dataset answers `ls`, `stat` and `open` without LIST or HEAD requests, and can run
//! with S3 unreachable.
//!
//! Each file holds one directory's listing and the wall-clock time it was learned; freshness is
//! judged against `--metadata-ttl` when it is read back. Files are written to a temp name and
//! renamed, so a crash leaves the old listing or the new one. An unreadable file is ignored (and
//! the listing fetched again): these files are a cache of S3's answers, never the only copy.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::object::ObjectInfo;
use crate::private::{create_private_dir_all, write_private};

/// Directory in the cache dir.
pub const LISTINGS: &str = "listings";
/// Version of the listing file layout.
const LISTING_VERSION: u32 = 1;

/// One directory's listing as stored.
#[derive(Debug, Serialize, Deserialize)]
pub struct StoredListing {
    /// Layout version ([`LISTING_VERSION`]).
    pub version: u32,
    /// Bucket.
    pub bucket: String,
    /// The directory's prefix ("" or ending in `/`).
    pub prefix: String,
    /// When S3 gave this answer, seconds since the epoch.
    pub learned_s: u64,
    /// Sub-directory names.
    pub dirs: Vec<String>,
    /// Files: name, size, ETag, Last-Modified in ms since the epoch.
    pub files: Vec<(String, u64, String, i64)>,
}

impl StoredListing {
    /// The age of this answer.
    pub fn age(&self) -> Duration {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
        Duration::from_secs(now.saturating_sub(self.learned_s))
    }

    /// The files as S3 object descriptions.
    pub fn objects(&self) -> impl Iterator<Item = (String, ObjectInfo)> + '_ {
        self.files.iter().map(|(name, size, etag, mtime_ms)| {
            let info = ObjectInfo {
                key: format!("{}{name}", self.prefix),
                size: *size,
                etag: etag.clone(),
                last_modified: SystemTime::UNIX_EPOCH + Duration::from_millis((*mtime_ms).max(0) as u64),
            };
            (name.clone(), info)
        })
    }
}

/// Reads and writes listings of one bucket under a cache dir.
#[derive(Clone, Debug)]
pub struct ListingStore {
    dir: PathBuf,
    bucket: String,
}

impl ListingStore {
    /// The store in `cache_dir` for `bucket` (the directory is created on first write).
    pub fn new(cache_dir: &std::path::Path, bucket: &str) -> Self {
        Self { dir: cache_dir.join(LISTINGS), bucket: bucket.to_string() }
    }

    fn path(&self, prefix: &str) -> PathBuf {
        let id = blake3::hash(format!("{}\0{prefix}", self.bucket).as_bytes()).to_hex();
        self.dir.join(format!("{}.json", &id[..32]))
    }

    /// Whether a listing of `prefix` is stored (without reading it).
    pub fn exists(&self, prefix: &str) -> bool {
        self.path(prefix).exists()
    }

    /// How long ago the listing of `prefix` was stored, from its file's mtime (without reading
    /// it); `None` if there is none.
    pub fn age(&self, prefix: &str) -> Option<Duration> {
        let modified = std::fs::metadata(self.path(prefix)).and_then(|m| m.modified()).ok()?;
        Some(SystemTime::now().duration_since(modified).unwrap_or_default())
    }

    /// The stored listing of `prefix`, if there is a readable one.
    pub fn load(&self, prefix: &str) -> Option<StoredListing> {
        let text = std::fs::read(self.path(prefix)).ok()?;
        let l: StoredListing = serde_json::from_slice(&text).ok()?;
        (l.version == LISTING_VERSION && l.bucket == self.bucket && l.prefix == prefix).then_some(l)
    }

    /// Stores a listing learned now. Failure only costs a future LIST, so it is logged, not
    /// returned.
    pub fn save(&self, prefix: &str, dirs: Vec<String>, files: &[(String, ObjectInfo)]) {
        let listing = StoredListing {
            version: LISTING_VERSION,
            bucket: self.bucket.clone(),
            prefix: prefix.to_string(),
            learned_s: SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs(),
            dirs,
            files: files
                .iter()
                .map(|(name, o)| {
                    let ms = o.last_modified.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
                    (name.clone(), o.size, o.etag.clone(), ms)
                })
                .collect(),
        };
        let path = self.path(prefix);
        let result = create_private_dir_all(&self.dir).and_then(|_| {
            let tmp = path.with_extension("json.tmp");
            write_private(&tmp, &serde_json::to_vec(&listing).map_err(std::io::Error::other)?)?;
            std::fs::rename(tmp, &path)
        });
        if let Err(e) = result {
            tracing::warn!("could not persist the listing of s3://{}/{prefix} ({e}); a remount will list it again", self.bucket);
        }
    }
}
