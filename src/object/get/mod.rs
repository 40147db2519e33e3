//! GetObject without the SDK's request pipeline: hyper, and AWS's own SigV4 crate.
//!
//! A cold epoch of small files makes one GET per file, and on a training node the client's CPU
//! per GET is what bounds it. Measured with `benches/client.sh` (20,000 × 16 KiB, 8 in flight,
//! the bench server on the same two cores): the SDK's `GetObject` costs 215-260 µs of client CPU
//! per request and reaches 0.69-0.70x of `curl`; this path costs 55-71 µs and reaches 0.99-1.02x.
//! The SDK keeps
//! everything else (HEAD, LIST, attributes, credentials, endpoint rules): this path takes the
//! endpoint the SDK's rules resolve for the bucket, once, and the credentials its chain provides,
//! cached until shortly before they expire, and owns only the request itself, its retries and its
//! errors. Where the rules ask for anything but plain SigV4 (S3 Express, multi-region access
//! points), [`GetPath::new`] declines and the SDK serves GETs as before.

use std::ops::Range;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_s3::config::endpoint::{DefaultResolver, Params, ResolveEndpoint};
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings, UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body, Incoming};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::retry::{sort_answer, source_chain as chain, Backoff, ATTEMPT_TIMEOUT, CONNECT_TIMEOUT, OPERATION_TIMEOUT};
use super::ObjectError;

/// Credentials are refreshed this long before they expire, so no request is signed with
/// credentials that expire before it reaches S3 (each attempt is signed anew). The SDK's own
/// identity cache keeps a margin of seconds; a minute also covers a clock a little behind.
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(60);

/// Bytes of a key left as they are in the request path: RFC 3986's unreserved characters and
/// the `/` between segments. Everything else is percent-encoded once, as S3 signs it.
const KEY_ENCODE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~').remove(b'/');

/// A GET's answer: its headers (checksums, encryption, length) and its whole body.
pub(crate) struct Got {
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Why a bucket's GETs do not take this path (the SDK then sends them, as with `--sdk-gets`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum Declined {
    /// The SDK's configuration names no region to sign for.
    #[error("no region")]
    NoRegion,
    /// The SDK's configuration has no credentials chain.
    #[error("no credentials provider")]
    NoCredentials,
    /// The SDK's endpoint rules refused the bucket's parameters.
    #[error("the SDK's endpoint rules: {0}")]
    Endpoint(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The endpoint is signed otherwise than with SigV4 for `s3`.
    #[error("the endpoint asks for {scheme} signing for {name:?}")]
    Signing {
        /// The auth scheme the rules name (`sigv4a`, `sigv4-s3express`).
        scheme: String,
        /// The signing name they give, if any.
        name: Option<String>,
    },
    /// No TLS trust roots could be loaded from the system.
    #[error("loading the system's TLS roots")]
    TlsRoots(#[source] std::io::Error),
    /// The environment sends requests to this endpoint through a proxy (`HTTPS_PROXY`,
    /// `HTTP_PROXY`, `ALL_PROXY`, less `NO_PROXY`), which the SDK's client honours.
    #[error("the environment names a proxy for {0}")]
    Proxied(String),
    /// The endpoint the rules gave is not a URI.
    #[error("the endpoint {0:?} is not a URI")]
    NotUri(String),
}

/// What a failed attempt means for the next one.
enum Failure {
    /// Worth another attempt (transport error, timeout, 5xx, throttling).
    Retry(ObjectError),
    /// Not retried here: the answer will not change (404, 412, 403, a malformed request), or
    /// the body was cut short, which the caller retries.
    Final(ObjectError),
}

/// The endpoint the SDK's rules resolve for a bucket, and the SigV4 region they sign for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Resolved {
    /// Scheme, authority and (path-style) `/bucket`; a key's path is appended.
    pub base: String,
    /// The region the rules say to sign for.
    pub region: String,
}

/// The bucket's endpoint by the SDK's own rules, unless it is signed otherwise than with SigV4
/// for `s3`.
pub(crate) async fn resolve(
    bucket: &str,
    region: &str,
    endpoint: Option<&str>,
    force_path_style: bool,
    fips: bool,
    dual_stack: bool,
) -> Result<Resolved, Declined> {
    let params = Params::builder()
        .bucket(bucket)
        .region(region)
        .set_endpoint(endpoint.map(str::to_owned))
        .force_path_style(force_path_style)
        .use_fips(fips)
        .use_dual_stack(dual_stack)
        .build()
        .map_err(|e| Declined::Endpoint(e.into()))?;
    let resolved = DefaultResolver::new().resolve_endpoint(&params).await.map_err(Declined::Endpoint)?;
    let scheme = resolved.auth_schemes().first().map(|s| {
        let text = |k: &str| s.get(k).and_then(|d| d.as_string()).map(str::to_owned);
        (s.name().to_owned(), text("signingName"), text("signingRegion"))
    });
    let region = match scheme {
        None => region.to_owned(),
        Some((name, signing_name, signing_region)) if name == "sigv4" && signing_name.as_deref().unwrap_or("s3") == "s3" => {
            signing_region.unwrap_or_else(|| region.to_owned())
        }
        Some((scheme, name, _)) => return Err(Declined::Signing { scheme, name }),
    };
    Ok(Resolved { base: resolved.url().trim_end_matches('/').to_owned(), region })
}

/// GetObject on hyper: one pooled HTTP/1.1 client, SigV4 signing with cached credentials, the
/// SDK's retry rule as hoardfs configures it (exponential backoff with jitter) and its timeouts.
pub(crate) struct GetPath {
    http: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    endpoint: Resolved,
    credentials: Credentials,
    attempts: u32,
    /// Bound on one attempt up to its response's headers ([`ATTEMPT_TIMEOUT`]).
    attempt_timeout: Duration,
    /// Bound on a body's silence: a body may take as long as its size and the link need, as
    /// the SDK's bodies may (its timeouts also end at the headers), but not stall this long.
    stall_timeout: Duration,
}

impl GetPath {
    /// The path for `endpoint`, signing with what `provider` gives; `attempts` per request.
    /// Declined where the environment's proxy settings cover the endpoint: the SDK's client
    /// follows them, and a GET must go the same way as every other request.
    pub(crate) fn new(endpoint: Resolved, provider: SharedCredentialsProvider, attempts: u32) -> Result<Self, Declined> {
        proxy_free(&Matcher::from_env(), &endpoint.base)?;
        let mut tcp = HttpConnector::new();
        tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
        tcp.set_nodelay(true);
        tcp.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(Declined::TlsRoots)?
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let http = Client::builder(TokioExecutor::new()).build(https);
        Ok(Self {
            http,
            endpoint,
            credentials: Credentials { provider, current: Mutex::default(), refresh: tokio::sync::Mutex::default() },
            attempts: attempts.max(1),
            attempt_timeout: ATTEMPT_TIMEOUT,
            stall_timeout: ATTEMPT_TIMEOUT,
        })
    }

    /// GETs `key` at `etag` (`If-Match`), `range` of it or all, with `x-amz-checksum-mode` when
    /// `checksums`; retried as the SDK would, within [`OPERATION_TIMEOUT`].
    #[tracing::instrument(level = "debug", name = "get", skip(self, etag), fields(range = ?range))]
    pub(crate) async fn get(&self, key: &str, etag: &str, range: Option<Range<u64>>, checksums: bool) -> Result<Got, ObjectError> {
        let what = || match &range {
            Some(r) => format!("GetObject {key} bytes {}-{}", r.start, r.end.saturating_sub(1)),
            None => format!("GetObject {key}"),
        };
        let attempts = async {
            let mut backoff = Backoff::from(Duration::from_millis(100));
            for n in 1..=self.attempts {
                let failure = match tokio::time::timeout(self.attempt_timeout, self.attempt(key, etag, range.clone(), checksums)).await {
                    Ok(Ok(answer)) => return Ok(answer),
                    Ok(Err(failure)) => failure,
                    Err(_) => Failure::Retry(ObjectError::Other(format!("{}: no answer within {:?}", what(), self.attempt_timeout))),
                };
                match failure {
                    Failure::Retry(e) if n < self.attempts => {
                        tracing::debug!(attempt = n, "retrying after {e}");
                        backoff.wait().await;
                    }
                    Failure::Retry(e) | Failure::Final(e) => return Err(e),
                }
            }
            unreachable!("the loop returns on the last attempt")
        };
        let (headers, body) = tokio::time::timeout(OPERATION_TIMEOUT, attempts)
            .await
            .unwrap_or_else(|_| Err(ObjectError::Other(format!("{}: no answer within {OPERATION_TIMEOUT:?}", what()))))?;
        // A body cut short is the caller's to retry (`retry::retry_bodies`, as for the SDK's GETs,
        // whose retries also end at the headers), so one GET never gets two retry budgets.
        let body = self.collect(body).await.map_err(|why| ObjectError::Truncated(format!("{}: {why}", what())))?;
        Ok(Got { headers, body })
    }

    /// One attempt, up to a successful answer's headers (an error answer's small body is read
    /// here, for its code).
    async fn attempt(&self, key: &str, etag: &str, range: Option<Range<u64>>, checksums: bool) -> Result<(HeaderMap, Incoming), Failure> {
        let uri = format!("{}/{}", self.endpoint.base, utf8_percent_encode(key, KEY_ENCODE));
        let mut request = http::Request::get(&uri).header("if-match", etag);
        if let Some(r) = &range {
            request = request.header("range", format!("bytes={}-{}", r.start, r.end - 1));
        }
        if checksums {
            request = request.header("x-amz-checksum-mode", "ENABLED");
        }
        let mut request = request.body(Empty::new()).map_err(|e| Failure::Final(ObjectError::Other(format!("GetObject {uri}: {e}"))))?;
        let identity = self.credentials.get().await.map_err(Failure::Final)?;
        self.sign(&mut request, &uri, &identity)
            .map_err(|e| Failure::Final(ObjectError::Other(format!("signing GetObject {uri}: {e}"))))?;
        let response =
            self.http.request(request).await.map_err(|e| Failure::Retry(ObjectError::Other(format!("GetObject {uri}: {}", chain(&e)))))?;
        let (parts, body) = response.into_parts();
        if !parts.status.is_success() {
            let text = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            return Err(refused(&uri, parts.status, &text));
        }
        Ok((parts.headers, body))
    }

    /// A body's bytes, failing if the connection breaks or no byte arrives for
    /// [`Self::stall_timeout`].
    async fn collect(&self, mut body: Incoming) -> Result<Bytes, String> {
        let mut out = BytesMut::with_capacity(body.size_hint().exact().unwrap_or(0).min(64 << 20) as usize);
        loop {
            match tokio::time::timeout(self.stall_timeout, body.frame()).await {
                Err(_) => return Err(format!("no byte for {:?} after {} bytes", self.stall_timeout, out.len())),
                Ok(None) => return Ok(out.freeze()),
                Ok(Some(Err(e))) => return Err(chain(&e)),
                Ok(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        out.extend_from_slice(data);
                    }
                }
            }
        }
    }

    fn sign(
        &self,
        request: &mut http::Request<Empty<Bytes>>,
        uri: &str,
        identity: &Identity,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let mut settings = SigningSettings::default();
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        let params = v4::SigningParams::builder()
            .identity(identity)
            .region(&self.endpoint.region)
            .name("s3")
            .time(SystemTime::now())
            .settings(settings)
            .build()?
            .into();
        let headers: Vec<(&str, &str)> =
            request.headers().iter().map(|(k, v)| Ok((k.as_str(), v.to_str()?))).collect::<Result<_, http::header::ToStrError>>()?;
        let signable = SignableRequest::new("GET", uri, headers.into_iter(), SignableBody::UnsignedPayload)?;
        let (instructions, _signature) = sign(signable, &params)?.into_parts();
        instructions.apply_to_request_http1x(request);
        Ok(())
    }
}

/// Whether `base` is reached without a proxy under `proxies` (the same matcher the SDK's client
/// builds from the environment).
fn proxy_free(proxies: &Matcher, base: &str) -> Result<(), Declined> {
    let uri: http::Uri = base.parse().map_err(|_| Declined::NotUri(base.to_owned()))?;
    match proxies.intercept(&uri) {
        Some(_) => Err(Declined::Proxied(base.to_owned())),
        None => Ok(()),
    }
}

/// The SDK's credentials, kept until [`REFRESH_BEFORE_EXPIRY`] before they expire; one refresh
/// at a time, which every request waiting for it shares.
struct Credentials {
    provider: SharedCredentialsProvider,
    current: Mutex<Option<(Identity, Option<SystemTime>)>>,
    refresh: tokio::sync::Mutex<()>,
}

impl Credentials {
    fn fresh(&self) -> Option<Identity> {
        let current = self.current.lock().unwrap();
        let (identity, expiry) = current.as_ref()?;
        expiry.is_none_or(|e| e > SystemTime::now() + REFRESH_BEFORE_EXPIRY).then(|| identity.clone())
    }

    async fn get(&self) -> Result<Identity, ObjectError> {
        if let Some(identity) = self.fresh() {
            return Ok(identity);
        }
        let _refreshing = self.refresh.lock().await;
        if let Some(identity) = self.fresh() {
            return Ok(identity);
        }
        let credentials = self
            .provider
            .provide_credentials()
            .await
            .map_err(|e| ObjectError::AccessDenied(format!("no AWS credentials found: {}", chain(&e))))?;
        let expiry = credentials.expiry();
        let identity: Identity = credentials.into();
        *self.current.lock().unwrap() = Some((identity.clone(), expiry));
        Ok(identity)
    }
}

/// An error answer, sorted by [`sort_answer`] as the SDK's are; throttling, timeouts and server
/// errors are retried first (a 404 or 412 never is).
fn refused(uri: &str, status: StatusCode, body: &[u8]) -> Failure {
    let text = String::from_utf8_lossy(body);
    let element = |name: &str| {
        let (open, close) = (format!("<{name}>"), format!("</{name}>"));
        let start = text.find(&open)? + open.len();
        Some(text[start..].split(&close).next()?.to_owned())
    };
    let code = element("Code");
    let detail = format!("GetObject {uri}: {}", element("Message").or(code.clone()).unwrap_or_else(|| status.to_string()));
    let retryable =
        matches!(code.as_deref(), Some("SlowDown" | "Throttling" | "RequestTimeout" | "RequestTimeTooSkewed" | "InternalError"))
            || matches!(status.as_u16(), 408 | 429 | 500..=599);
    match sort_answer(code.as_deref(), Some(status.as_u16()), detail.clone()) {
        e @ (ObjectError::NotFound(_) | ObjectError::PreconditionFailed(_)) => Failure::Final(e),
        _ if retryable => Failure::Retry(ObjectError::Other(detail)),
        e => Failure::Final(e),
    }
}

#[cfg(test)]
mod tests;
