//! The one seam between hoardfs and S3.
//!
//! Everything above this module talks to a `dyn ObjectClient`, so the file system and the cache
//! can be driven by the real SDK client ([`s3::S3Client`]), an in-memory store for unit tests
//! ([`memory::MemoryClient`]), or either wrapped in [`counting::CountingClient`], which feeds the
//! request counters that tests and `--metrics-addr` read.

pub mod counting;
mod get;
pub mod memory;
mod retry;
pub mod s3;

use std::future::Future;
use std::pin::Pin;
use std::time::SystemTime;

use bytes::Bytes;

/// A boxed future, because the trait is used as `dyn ObjectClient`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What S3 says about one object version; the ETag pins the version for every later read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Full key, without any mount prefix removed.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// ETag exactly as S3 sends it, quotes included, so `If-Match` can echo it back.
    pub etag: String,
    /// Last-Modified, shown as the file's mtime.
    pub last_modified: SystemTime,
}

/// One page of a delimited listing.
#[derive(Clone, Debug, Default)]
pub struct ListPage {
    /// Objects directly under the prefix.
    pub objects: Vec<ObjectInfo>,
    /// Common prefixes (sub-"directories"), each ending in the delimiter.
    pub prefixes: Vec<String>,
    /// Token for the next page, `None` on the last one.
    pub next_token: Option<String>,
}

/// Why an S3 request failed, sorted by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// The key (or bucket) does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// `If-Match` failed: the object changed since we learned its ETag.
    #[error("object changed in S3 (ETag no longer matches): {0}")]
    PreconditionFailed(String),
    /// Credentials were refused.
    #[error("access denied: {0}")]
    AccessDenied(String),
    /// The server answered with fewer or more bytes than the range asked for.
    #[error("short or oversized body: wanted {wanted} bytes, got {got}")]
    WrongLength {
        /// Bytes requested.
        wanted: u64,
        /// Bytes received.
        got: u64,
    },
    /// The body stopped before its length (connection reset mid-body); retried by the client.
    #[error("truncated body: {0}")]
    Truncated(String),
    /// Anything else (network, 5xx, throttling); worth a retry.
    #[error("S3 request failed: {0}")]
    Other(String),
}

/// The S3 operations hoardfs needs, and nothing more.
pub trait ObjectClient: Send + Sync + 'static {
    /// HeadObject: size, ETag, mtime of `key`.
    fn head(&self, key: &str) -> BoxFuture<'_, Result<ObjectInfo, ObjectError>>;

    /// GetObject of `range` (half-open) of `key`, failing with `PreconditionFailed` unless the
    /// object's ETag is still `etag`. Implementations check the body length.
    fn get_range(&self, key: &str, etag: &str, range: std::ops::Range<u64>) -> BoxFuture<'_, Result<Bytes, ObjectError>>;

    /// What S3 offers to verify `key` (at `etag`) against: its additional checksum and, for a
    /// composite checksum, the parts with theirs; else the MD5 ETag of a single-part object.
    /// Asked once per object version, when it is first cached; the answer is kept in the index.
    fn object_checksum(&self, key: &str, etag: &str) -> BoxFuture<'_, Result<crate::checksum::ObjectChecksum, ObjectError>>;

    /// GetObject of the whole of `key` (at `etag`) with checksum mode: the bytes and what S3
    /// offers to verify them against, in one request. Used for objects that fit in one block,
    /// where a separate HeadObject would double the requests per file.
    fn get_whole(&self, key: &str, etag: &str) -> BoxFuture<'_, Result<(Bytes, crate::checksum::ObjectChecksum), ObjectError>>;

    /// The mount's check that the bucket exists and that these credentials may read `prefix`.
    /// By default a one-key LIST of `prefix`; an implementation may answer it more cheaply.
    fn check_bucket(&self, prefix: &str) -> BoxFuture<'_, Result<(), ObjectError>> {
        let fut = self.list(prefix, None, Some(1));
        Box::pin(async move { fut.await.map(drop) })
    }

    /// ListObjectsV2 with delimiter `/`.
    fn list(&self, prefix: &str, token: Option<String>, max_keys: Option<i32>) -> BoxFuture<'_, Result<ListPage, ObjectError>>;

    /// The bucket name, part of every cache key.
    fn bucket(&self) -> &str;
}

/// Checks that a GET body has exactly the length of the range it answered.
pub fn check_body_len(range: &std::ops::Range<u64>, body: &Bytes) -> Result<(), ObjectError> {
    let wanted = range.end - range.start;
    if body.len() as u64 != wanted {
        return Err(ObjectError::WrongLength { wanted, got: body.len() as u64 });
    }
    Ok(())
}
