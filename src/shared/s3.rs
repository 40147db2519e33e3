//! The shared tier's bucket on `aws-sdk-s3`: plain GetObject and PutObject, no retries (a
//! failed read goes to the origin, a failed put is dropped).

use std::collections::HashMap;

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::types::ChecksumAlgorithm;

use super::{SharedObject, SharedStore};
use crate::object::s3::{classify, S3Client, S3Config};
use crate::object::{BoxFuture, ObjectError};

/// A [`SharedStore`] on an S3 bucket (in production, an S3 Express One Zone directory bucket in
/// the nodes' zone).
pub struct S3SharedStore {
    client: aws_sdk_s3::Client,
    bucket: String,
}

impl S3SharedStore {
    /// A store on `config.bucket`, reached like the origin (endpoint, region, addressing).
    pub async fn new(config: &S3Config) -> Self {
        let client = S3Client::with_attempts(config, 1).await;
        Self { client: client.sdk().clone(), bucket: config.bucket.clone() }
    }
}

impl SharedStore for S3SharedStore {
    fn get(&self, key: &str) -> BoxFuture<'_, Result<Option<SharedObject>, ObjectError>> {
        let key = key.to_string();
        Box::pin(async move {
            let what = format!("GetObject s3://{}/{key} (shared tier)", self.bucket);
            let out = match self.client.get_object().bucket(&self.bucket).key(&key).send().await {
                Ok(out) => out,
                // Only a missing key is a miss; a missing bucket is an error (the tier is down).
                Err(e) if e.code() == Some("NoSuchKey") => return Ok(None),
                Err(e) => return Err(classify(&what, e)),
            };
            let meta = out.metadata().cloned().unwrap_or_default();
            let body = out.body.collect().await.map_err(|e| ObjectError::Truncated(format!("{what}: {e}")))?.into_bytes();
            Ok(Some(SharedObject { body, meta }))
        })
    }

    fn put(&self, key: &str, object: SharedObject) -> BoxFuture<'_, Result<(), ObjectError>> {
        let key = key.to_string();
        Box::pin(async move {
            let what = format!("PutObject s3://{}/{key} (shared tier)", self.bucket);
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&key)
                .checksum_algorithm(ChecksumAlgorithm::Crc32C)
                .set_metadata(Some(object.meta.into_iter().collect::<HashMap<_, _>>()))
                .body(object.body.into())
                .send()
                .await
                .map_err(|e| classify(&what, e))?;
            Ok(())
        })
    }
}
