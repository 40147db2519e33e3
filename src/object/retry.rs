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

/// Retries a GET whose *body* failed (truncated, wrong length): both GET paths (the SDK's and
/// [`super::get`]) retry failures up to the response headers, but a body cut off mid-stream
/// surfaces after the headers arrived, outside that loop. Exponential backoff with jitter, [`MAX_ATTEMPTS`] attempts in all.
pub(super) async fn retry_bodies<T, F, Fut>(mut attempt: F) -> Result<T, ObjectError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ObjectError>>,
{
    let mut backoff = Duration::from_millis(50);
    for n in 1.. {
        match attempt().await {
            Err(e @ (ObjectError::Truncated(_) | ObjectError::WrongLength { .. })) if n < MAX_ATTEMPTS => {
                tracing::debug!("retrying after {e}");
                tokio::time::sleep(backoff.mul_f64(jitter())).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
    unreachable!("the loop returns on the last attempt")
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
pub(super) fn jitter() -> f64 {
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    0.5 + (nanos % 1000) as f64 / 1000.0
}
