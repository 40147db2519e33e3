//! The retry rule and timeouts every S3 request of hoardfs follows, whichever path sends it.

use std::time::{Duration, SystemTime};

use super::ObjectError;

/// How long one S3 attempt may take before it is abandoned and retried: a stalled GET must not
/// hang a training step. Default: 20 s.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a request may take in all, retries included: the bound on how long a read that
/// cannot be served waits before EIO. Default: 60 s.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts per request (the first plus retries). Default: 5.
pub const MAX_ATTEMPTS: u32 = 5;
/// How long a TCP connect may take. Default: 5 s.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The wait before each retry: doubling from its first value up to 5 s, each wait spread by
/// [`jitter`].
pub(super) struct Backoff(Duration);

impl Backoff {
    /// Waits starting at `first`.
    pub(super) fn from(first: Duration) -> Self {
        Self(first)
    }

    /// Sleeps the current wait, and doubles the next.
    pub(super) async fn wait(&mut self) {
        tokio::time::sleep(self.0.mul_f64(jitter())).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
    }
}

/// Retries a GET whose *body* failed (truncated, wrong length): both GET paths (the SDK's and
/// [`super::get`]) retry failures up to the response headers, but a body cut off mid-stream
/// surfaces after the headers arrived, outside that loop. [`Backoff`] from 50 ms,
/// [`MAX_ATTEMPTS`] attempts in all.
pub(super) async fn retry_bodies<T, F, Fut>(mut attempt: F) -> Result<T, ObjectError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ObjectError>>,
{
    let mut backoff = Backoff::from(Duration::from_millis(50));
    for n in 1.. {
        match attempt().await {
            Err(e @ (ObjectError::Truncated(_) | ObjectError::WrongLength { .. })) if n < MAX_ATTEMPTS => {
                tracing::debug!("retrying after {e}");
                backoff.wait().await;
            }
            other => return other,
        }
    }
    unreachable!("the loop returns on the last attempt")
}

/// Sorts an S3 error answer into the variants callers act on, by its error code, else its HTTP
/// status (HeadObject errors carry no body, so no code): the one rule for both GET paths and
/// every SDK request.
pub(super) fn sort_answer(code: Option<&str>, status: Option<u16>, detail: String) -> ObjectError {
    match (code, status) {
        (Some("NoSuchKey" | "NoSuchBucket" | "NotFound"), _) | (_, Some(404)) => ObjectError::NotFound(detail),
        (Some("PreconditionFailed"), _) | (_, Some(412)) => ObjectError::PreconditionFailed(detail),
        (Some("AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "ExpiredToken"), _) | (_, Some(403)) => {
            ObjectError::AccessDenied(detail)
        }
        _ => ObjectError::Other(detail),
    }
}

/// The Display of an error and each of its sources, deduplicated: the SDK nests the useful part
/// ("Connection refused") several levels down, and its Debug output is unreadable to a user.
pub(super) fn source_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// 0.5 to 1.5: the spread that keeps the retries of many readers from arriving together.
fn jitter() -> f64 {
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    0.5 + (nanos % 1000) as f64 / 1000.0
}
