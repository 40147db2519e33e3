//! The production [`ObjectClient`], on `aws-sdk-s3`.

use std::ops::Range;
use std::time::{Duration, SystemTime};

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::DateTime;
use aws_sdk_s3::types::{ChecksumMode, ChecksumType as S3ChecksumType, ObjectAttributes, ServerSideEncryption};
use bytes::Bytes;

use crate::checksum::{Algorithm, ChecksumType, ObjectChecksum, Part};

use super::get::{self, Declined, GetPath};
use super::retry::{retry_bodies, sort_answer, source_chain};
pub use super::retry::{ATTEMPT_TIMEOUT, CONNECT_TIMEOUT, MAX_ATTEMPTS, OPERATION_TIMEOUT};
use super::{check_body_len, BoxFuture, ListPage, ObjectClient, ObjectError, ObjectInfo};

/// Where and how to reach S3; every field maps to one `hoardfs mount` flag.
#[derive(Clone, Debug, Default)]
pub struct S3Config {
    /// Bucket name.
    pub bucket: String,
    /// Custom endpoint (MinIO, moto, a VPC endpoint); `None` for AWS.
    pub endpoint_url: Option<String>,
    /// Region; `None` asks the standard AWS chain.
    pub region: Option<String>,
    /// Path-style addressing (`http://host/bucket/key`), needed by most local servers.
    pub force_path_style: bool,
    /// GETs through the SDK's request pipeline rather than hoardfs's own [`GetPath`].
    pub sdk_gets: bool,
}

/// `ObjectClient` backed by the AWS SDK, with its standard credential chain and retries; GETs go
/// through [`GetPath`] (the same endpoint and credentials, without the SDK's per-request cost)
/// unless the endpoint needs more than SigV4 or `sdk_gets` asks for the SDK.
pub struct S3Client {
    client: aws_sdk_s3::Client,
    bucket: String,
    get: Option<GetPath>,
}

impl S3Client {
    /// Builds the SDK client. With a custom endpoint and no region anywhere, `us-east-1` is used
    /// rather than asking EC2 instance metadata, which a local server does not need.
    pub async fn new(config: &S3Config) -> Self {
        Self::with_attempts(config, MAX_ATTEMPTS).await
    }

    /// As [`S3Client::new`], with `attempts` tries per request (1: no retry, for a source
    /// whose failure only sends the read elsewhere).
    pub async fn with_attempts(config: &S3Config, attempts: u32) -> Self {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = &config.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        } else if config.endpoint_url.is_some() && std::env::var_os("AWS_REGION").is_none() {
            loader = loader.region(aws_config::Region::new("us-east-1"));
        }
        if let Some(url) = &config.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        loader = loader
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .operation_timeout(OPERATION_TIMEOUT)
                    .build(),
            )
            // Standard mode: 5xx, throttling (SlowDown), timeouts and connection resets are
            // retried with exponential backoff and full jitter.
            .retry_config(
                aws_config::retry::RetryConfig::standard()
                    .with_max_attempts(attempts.max(1))
                    .with_initial_backoff(Duration::from_millis(100))
                    .with_max_backoff(Duration::from_secs(5)),
            );
        let shared = loader.load().await;
        let s3_config = aws_sdk_s3::config::Builder::from(&shared).force_path_style(config.force_path_style).build();
        let get = if config.sdk_gets { None } else { Self::get_path(config, &shared, attempts).await };
        Self { client: aws_sdk_s3::Client::from_conf(s3_config), bucket: config.bucket.clone(), get }
    }

    /// The SDK-free GET path for this bucket, or `None` (said in the log) where the SDK must
    /// serve GETs: no region or credentials chain, or an endpoint signed otherwise than SigV4.
    async fn get_path(config: &S3Config, shared: &aws_config::SdkConfig, attempts: u32) -> Option<GetPath> {
        let made = async {
            let region = shared.region().ok_or(Declined::NoRegion)?;
            let provider = shared.credentials_provider().ok_or(Declined::NoCredentials)?;
            let (fips, dual_stack) = (shared.use_fips().unwrap_or(false), shared.use_dual_stack().unwrap_or(false));
            let endpoint =
                get::resolve(&config.bucket, region.as_ref(), config.endpoint_url.as_deref(), config.force_path_style, fips, dual_stack)
                    .await?;
            GetPath::new(endpoint, provider, attempts)
        };
        made.await.inspect_err(|why| tracing::info!("GETs of s3://{} go through the AWS SDK: {}", config.bucket, source_chain(why))).ok()
    }

    /// Part sizes and part checksums of a multipart object (GetObjectAttributes, paged); `None`
    /// when the server does not list them all with checksums.
    async fn parts(&self, key: &str, algorithm: Algorithm) -> Result<Option<Vec<Part>>, ObjectError> {
        let what = format!("GetObjectAttributes s3://{}/{key}", self.bucket);
        let mut parts = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let out = self
                .client
                .get_object_attributes()
                .bucket(&self.bucket)
                .key(key)
                .object_attributes(ObjectAttributes::ObjectParts)
                .object_attributes(ObjectAttributes::Checksum)
                .max_parts(1000)
                .set_part_number_marker(marker.clone())
                .send()
                .await
                .map_err(|e| classify(&what, e))?;
            let Some(op) = out.object_parts() else { break };
            for p in op.parts() {
                let checksum = match algorithm {
                    Algorithm::Crc32 => p.checksum_crc32(),
                    Algorithm::Crc32c => p.checksum_crc32_c(),
                    Algorithm::Crc64nvme => p.checksum_crc64_nvme(),
                    Algorithm::Sha1 => p.checksum_sha1(),
                    Algorithm::Sha256 => p.checksum_sha256(),
                    _ => None,
                };
                let (Some(size), Some(checksum)) = (p.size(), checksum) else { return Ok(None) };
                parts.push(Part { size: size.max(0) as u64, checksum: checksum.to_string() });
            }
            if op.is_truncated() != Some(true) {
                break;
            }
            marker = op.next_part_number_marker().map(str::to_owned);
        }
        Ok((!parts.is_empty()).then_some(parts))
    }

    /// Whether GetObjectAttributes calls `key`'s checksum composite; false if it cannot say.
    async fn composite_by_attributes(&self, key: &str) -> bool {
        let asked =
            self.client.get_object_attributes().bucket(&self.bucket).key(key).object_attributes(ObjectAttributes::Checksum).send().await;
        match asked {
            Ok(out) => out.checksum().and_then(|c| c.checksum_type()) == Some(&S3ChecksumType::Composite),
            Err(e) => {
                let what = format!("GetObjectAttributes s3://{}/{key}", self.bucket);
                tracing::debug!("{}; taking its checksum as full-object", classify(&what, e));
                false
            }
        }
    }

    async fn get_range_once(&self, key: &str, etag: &str, range: Range<u64>) -> Result<Bytes, ObjectError> {
        if let Some(get) = &self.get {
            let got = get.get(key, etag, Some(range.clone()), false).await?;
            check_body_len(&range, &got.body)?;
            return Ok(got.body);
        }
        let what = || format!("GetObject s3://{}/{key} bytes {}-{}", self.bucket, range.start, range.end - 1);
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .if_match(etag)
            .range(format!("bytes={}-{}", range.start, range.end - 1))
            .send()
            .await
            .map_err(|e| classify(&what(), e))?;
        let body = out.body.collect().await.map_err(|e| ObjectError::Truncated(format!("{}: {}", what(), source_chain(&e))))?.into_bytes();
        check_body_len(&range, &body)?;
        Ok(body)
    }

    /// The SDK client, for callers (tests, `cache warm`) that need an operation not in the trait.
    pub fn sdk(&self) -> &aws_sdk_s3::Client {
        &self.client
    }
}

fn to_system_time(t: Option<&DateTime>) -> SystemTime {
    t.and_then(|t| SystemTime::try_from(*t).ok()).unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Sorts an SDK error into the variants callers act on ([`sort_answer`]).
pub(crate) fn classify<E>(what: &str, err: SdkError<E, HttpResponse>) -> ObjectError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = match &err {
        SdkError::ServiceError(e) => Some(e.raw().status().as_u16()),
        _ => None,
    };
    let code = err.code().map(str::to_owned);
    let detail = format!("{what}: {}", err.message().map(str::to_owned).or(code.clone()).unwrap_or_else(|| source_chain(&err)));
    if matches!(err, SdkError::DispatchFailure(_)) && detail.contains("no credentials found") {
        return ObjectError::AccessDenied(format!("{what}: no AWS credentials found"));
    }
    sort_answer(code.as_deref(), status, detail)
}

/// Picks the checksum headers out of a HeadObject or GetObject response: the two SDK types
/// share these accessors but no trait, and the rule must be the same for both.
macro_rules! checksum_headers {
    ($out:expr) => {
        ChecksumHeaders {
            values: [
                $out.checksum_crc64_nvme(),
                $out.checksum_crc32_c(),
                $out.checksum_crc32(),
                $out.checksum_sha256(),
                $out.checksum_sha1(),
            ],
            kind: $out.checksum_type(),
            encrypted: encrypted($out.server_side_encryption(), $out.sse_customer_algorithm()),
        }
    };
}

/// The headers of [`ChecksumHeaders`]'s values, in its order.
const CHECKSUM_HEADERS: [&str; 5] =
    ["x-amz-checksum-crc64nvme", "x-amz-checksum-crc32c", "x-amz-checksum-crc32", "x-amz-checksum-sha256", "x-amz-checksum-sha1"];

/// The checksum headers of a HeadObject or GetObject response, in hoardfs's order of
/// preference: CRC64NVME, CRC32C, CRC32, SHA256, SHA1.
struct ChecksumHeaders<'a> {
    values: [Option<&'a str>; 5],
    kind: Option<&'a S3ChecksumType>,
    encrypted: bool,
}

/// Owned form of [`ChecksumHeaders`].
struct OwnedChecksumHeaders {
    values: [Option<String>; 5],
    kind: Option<S3ChecksumType>,
    encrypted: bool,
}

impl ChecksumHeaders<'_> {
    fn to_owned(&self) -> OwnedChecksumHeaders {
        OwnedChecksumHeaders { values: self.values.map(|v| v.map(str::to_owned)), kind: self.kind.cloned(), encrypted: self.encrypted }
    }
}

impl OwnedChecksumHeaders {
    fn borrowed(&self) -> ChecksumHeaders<'_> {
        ChecksumHeaders { values: [0, 1, 2, 3, 4].map(|i| self.values[i].as_deref()), kind: self.kind.as_ref(), encrypted: self.encrypted }
    }
}

/// Whether an object is encrypted in a way that makes its ETag something other than an MD5.
fn encrypted(sse: Option<&ServerSideEncryption>, sse_c: Option<&str>) -> bool {
    matches!(sse, Some(ServerSideEncryption::AwsKms | ServerSideEncryption::AwsKmsDsse)) || sse_c.is_some()
}

impl S3Client {
    /// Turns checksum headers into what the object can be verified against: its additional
    /// checksum (with the parts of a composite one), else its MD5 ETag, else nothing.
    async fn resolve(&self, key: &str, etag: &str, headers: ChecksumHeaders<'_>) -> Result<ObjectChecksum, ObjectError> {
        const ORDER: [Algorithm; 5] = [Algorithm::Crc64nvme, Algorithm::Crc32c, Algorithm::Crc32, Algorithm::Sha256, Algorithm::Sha1];
        let found = ORDER.into_iter().zip(headers.values).find_map(|(a, v)| Some((a, v?.to_string())));
        let Some((algorithm, value)) = found else {
            return Ok(ObjectChecksum::from_md5_etag(etag, headers.encrypted));
        };
        let composite = match headers.kind {
            Some(kind) => *kind == S3ChecksumType::Composite || value.contains('-'),
            None if value.contains('-') => true,
            // A multipart object whose server names no type and drops the `-N` suffix (moto):
            // the value may be either kind, and taking a composite one for a full-object CRC
            // would fail every read of a good object. Ask; a server that cannot say keeps the
            // full-object reading (a wrong guess refuses bytes, never serves them).
            None if etag.trim_matches('"').contains('-') => self.composite_by_attributes(key).await,
            None => false,
        };
        let checksum = if !composite {
            ObjectChecksum { algorithm, kind: ChecksumType::FullObject, value, parts: vec![] }
        } else {
            match self.parts(key, algorithm).await? {
                Some(parts) => ObjectChecksum { algorithm, kind: ChecksumType::Composite, value, parts },
                None => {
                    tracing::warn!(
                        "s3://{}/{key} has a composite {algorithm:?} checksum but the server lists no part checksums; \
                         it cannot be verified and is recorded as unverified",
                        self.bucket
                    );
                    return Ok(ObjectChecksum::none());
                }
            }
        };
        if !checksum.well_formed() {
            tracing::warn!(
                "s3://{}/{key}: the server's {algorithm:?} checksum {:?} is malformed; recorded as unverified",
                self.bucket,
                checksum.value
            );
            return Ok(ObjectChecksum::none());
        }
        if checksum.composite_consistent() == Some(false) {
            tracing::warn!(
                "s3://{}/{key}: composite checksum {} is not the checksum of its part checksums; verifying the parts",
                self.bucket,
                checksum.value
            );
        }
        Ok(checksum)
    }
}

impl ObjectClient for S3Client {
    fn head(&self, key: &str) -> BoxFuture<'_, Result<ObjectInfo, ObjectError>> {
        let key = key.to_string();
        Box::pin(async move {
            let out = self
                .client
                .head_object()
                .bucket(&self.bucket)
                .key(&key)
                .send()
                .await
                .map_err(|e| classify(&format!("HeadObject s3://{}/{key}", self.bucket), e))?;
            Ok(ObjectInfo {
                size: out.content_length().unwrap_or(0).max(0) as u64,
                etag: out.e_tag().unwrap_or_default().to_string(),
                last_modified: to_system_time(out.last_modified()),
                key,
            })
        })
    }

    fn get_range(&self, key: &str, etag: &str, range: Range<u64>) -> BoxFuture<'_, Result<Bytes, ObjectError>> {
        let key = key.to_string();
        let etag = etag.to_string();
        Box::pin(async move {
            if range.is_empty() {
                return Ok(Bytes::new());
            }
            retry_bodies(|| self.get_range_once(&key, &etag, range.clone())).await
        })
    }

    fn object_checksum(&self, key: &str, etag: &str) -> BoxFuture<'_, Result<ObjectChecksum, ObjectError>> {
        let key = key.to_string();
        let etag = etag.to_string();
        Box::pin(async move {
            let what = format!("HeadObject s3://{}/{key}", self.bucket);
            let h = self
                .client
                .head_object()
                .bucket(&self.bucket)
                .key(&key)
                .if_match(&etag)
                .checksum_mode(ChecksumMode::Enabled)
                .send()
                .await
                .map_err(|e| classify(&what, e))?;
            self.resolve(&key, &etag, checksum_headers!(h)).await
        })
    }

    fn get_whole(&self, key: &str, etag: &str) -> BoxFuture<'_, Result<(Bytes, ObjectChecksum), ObjectError>> {
        let key = key.to_string();
        let etag = etag.to_string();
        Box::pin(async move { retry_bodies(|| self.get_whole_once(&key, &etag)).await })
    }

    fn list(&self, prefix: &str, token: Option<String>, max_keys: Option<i32>) -> BoxFuture<'_, Result<ListPage, ObjectError>> {
        self.list_impl(prefix, token, max_keys)
    }

    /// HeadBucket: constant time on every server, where a one-key LIST is not (a server that
    /// walks a directory tree to answer it, as s3s-fs does, takes seconds at 10^6 objects). It
    /// needs the same permission (s3:ListBucket) as the LIST, except where a policy grants that
    /// only under a prefix (an `s3:prefix` condition), which HeadBucket cannot name; so when the
    /// server answers anything but "no such bucket", the one-key LIST of `prefix` decides.
    fn check_bucket(&self, prefix: &str) -> BoxFuture<'_, Result<(), ObjectError>> {
        let prefix = prefix.to_string();
        Box::pin(async move {
            let err = match self.client.head_bucket().bucket(&self.bucket).send().await {
                Ok(_) => return Ok(()),
                Err(err) => err,
            };
            let answered = matches!(err, SdkError::ServiceError(_));
            match classify(&format!("HeadBucket s3://{}", self.bucket), err) {
                e @ ObjectError::NotFound(_) => Err(e),
                e if !answered => Err(e),
                e => {
                    tracing::debug!("{e}; asking with a one-key LIST of {prefix:?} instead");
                    self.list_impl(&prefix, None, Some(1)).await.map(drop)
                }
            }
        })
    }

    fn bucket(&self) -> &str {
        &self.bucket
    }
}

impl S3Client {
    async fn get_whole_once(&self, key: &str, etag: &str) -> Result<(Bytes, ObjectChecksum), ObjectError> {
        if let Some(get) = &self.get {
            let got = get.get(key, etag, None, true).await?;
            let header = |name: &str| got.headers.get(name).and_then(|v| v.to_str().ok());
            let kind = header("x-amz-checksum-type").map(S3ChecksumType::from);
            let headers = ChecksumHeaders {
                values: CHECKSUM_HEADERS.map(header),
                kind: kind.as_ref(),
                encrypted: encrypted(
                    header("x-amz-server-side-encryption").map(ServerSideEncryption::from).as_ref(),
                    header("x-amz-server-side-encryption-customer-algorithm"),
                ),
            };
            let expected_len = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
            check_body_len(&(0..expected_len), &got.body)?;
            let checksum = self.resolve(key, etag, headers).await?;
            return Ok((got.body, checksum));
        }
        let what = format!("GetObject s3://{}/{key}", self.bucket);
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .if_match(etag)
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await
            .map_err(|e| classify(&what, e))?;
        // Owned copies, so the body can be consumed after the headers are read.
        let headers = checksum_headers!(out).to_owned();
        let expected_len = out.content_length().unwrap_or(0).max(0) as u64;
        let body = out.body.collect().await.map_err(|e| ObjectError::Truncated(format!("{what}: {}", source_chain(&e))))?.into_bytes();
        check_body_len(&(0..expected_len), &body)?;
        let checksum = self.resolve(key, etag, headers.borrowed()).await?;
        Ok((body, checksum))
    }

    fn list_impl(&self, prefix: &str, token: Option<String>, max_keys: Option<i32>) -> BoxFuture<'_, Result<ListPage, ObjectError>> {
        let prefix = prefix.to_string();
        Box::pin(async move {
            let out = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&prefix)
                .delimiter("/")
                .set_continuation_token(token)
                .set_max_keys(max_keys)
                .send()
                .await
                .map_err(|e| classify(&format!("ListObjectsV2 s3://{}/{prefix}", self.bucket), e))?;
            let objects = out
                .contents()
                .iter()
                .filter_map(|o| {
                    Some(ObjectInfo {
                        key: o.key()?.to_string(),
                        size: o.size().unwrap_or(0).max(0) as u64,
                        etag: o.e_tag().unwrap_or_default().to_string(),
                        last_modified: to_system_time(o.last_modified()),
                    })
                })
                .collect();
            let prefixes = out.common_prefixes().iter().filter_map(|p| p.prefix().map(str::to_owned)).collect();
            let next_token = if out.is_truncated().unwrap_or(false) { out.next_continuation_token().map(str::to_owned) } else { None };
            Ok(ListPage { objects, prefixes, next_token })
        })
    }
}
