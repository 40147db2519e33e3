//! Counts every request and byte that crosses the S3 seam, so "a remount issues zero GETs" is a
//! number a test (or an operator) can read rather than a belief.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use super::{BoxFuture, ListPage, ObjectClient, ObjectError, ObjectInfo};
use crate::metrics::Metrics;

/// Wraps any client and feeds [`Metrics`].
pub struct CountingClient {
    inner: Arc<dyn ObjectClient>,
    metrics: Arc<Metrics>,
}

impl CountingClient {
    /// Wraps `inner`; counts go to `metrics`.
    pub fn new(inner: Arc<dyn ObjectClient>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }

    fn tally<T>(&self, result: Result<T, ObjectError>) -> Result<T, ObjectError> {
        // A 404 is an answer, not a failure: lookups of absent names are routine.
        if matches!(result, Err(ref e) if !matches!(e, ObjectError::NotFound(_))) {
            Metrics::add(&self.metrics.s3_errors, 1);
        }
        result
    }
}

impl ObjectClient for CountingClient {
    fn head(&self, key: &str) -> BoxFuture<'_, Result<ObjectInfo, ObjectError>> {
        Metrics::add(&self.metrics.s3_head_requests, 1);
        let fut = self.inner.head(key);
        Box::pin(async move { self.tally(fut.await) })
    }

    fn get_range(&self, key: &str, etag: &str, range: Range<u64>) -> BoxFuture<'_, Result<Bytes, ObjectError>> {
        Metrics::add(&self.metrics.s3_get_requests, 1);
        let fut = self.inner.get_range(key, etag, range);
        Box::pin(async move {
            let result = self.tally(fut.await);
            if let Ok(body) = &result {
                Metrics::add(&self.metrics.s3_get_bytes, body.len() as u64);
            }
            result
        })
    }

    fn object_checksum(&self, key: &str, etag: &str) -> BoxFuture<'_, Result<crate::checksum::ObjectChecksum, ObjectError>> {
        Metrics::add(&self.metrics.s3_head_requests, 1);
        let fut = self.inner.object_checksum(key, etag);
        Box::pin(async move { self.tally(fut.await) })
    }

    fn get_whole(&self, key: &str, etag: &str) -> BoxFuture<'_, Result<(Bytes, crate::checksum::ObjectChecksum), ObjectError>> {
        Metrics::add(&self.metrics.s3_get_requests, 1);
        let fut = self.inner.get_whole(key, etag);
        Box::pin(async move {
            let result = self.tally(fut.await);
            if let Ok((body, _)) = &result {
                Metrics::add(&self.metrics.s3_get_bytes, body.len() as u64);
            }
            result
        })
    }

    fn list(&self, prefix: &str, token: Option<String>, max_keys: Option<i32>) -> BoxFuture<'_, Result<ListPage, ObjectError>> {
        Metrics::add(&self.metrics.s3_list_requests, 1);
        let fut = self.inner.list(prefix, token, max_keys);
        Box::pin(async move { self.tally(fut.await) })
    }

    fn check_bucket(&self, prefix: &str) -> BoxFuture<'_, Result<(), ObjectError>> {
        Metrics::add(&self.metrics.s3_bucket_checks, 1);
        let fut = self.inner.check_bucket(prefix);
        Box::pin(async move { self.tally(fut.await) })
    }

    fn bucket(&self) -> &str {
        self.inner.bucket()
    }
}
