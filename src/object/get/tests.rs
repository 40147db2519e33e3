//! Unit tests of the GET path: endpoints, encoding, errors, credentials, retries and bodies,
//! against servers on loopback.

use super::*;

#[tokio::test]
async fn a_custom_endpoint_with_path_style_puts_the_bucket_in_the_path() {
    let r = resolve("data", "us-east-1", Some("http://127.0.0.1:9000"), true, false, false).await.unwrap();
    assert_eq!(r, Resolved { base: "http://127.0.0.1:9000/data".into(), region: "us-east-1".into() });
}

#[tokio::test]
async fn aws_is_addressed_by_virtual_host_in_the_bucket_s_region() {
    let r = resolve("data", "eu-west-1", None, false, false, false).await.unwrap();
    assert_eq!(r, Resolved { base: "https://data.s3.eu-west-1.amazonaws.com".into(), region: "eu-west-1".into() });
    let fips = resolve("data", "us-east-1", None, false, true, false).await.unwrap();
    assert_eq!(fips.base, "https://data.s3-fips.us-east-1.amazonaws.com");
}

#[tokio::test]
async fn an_s3_express_bucket_is_left_to_the_sdk() {
    let r = resolve("data--use1-az4--x-s3", "us-east-1", None, false, false, false).await;
    assert!(matches!(&r, Err(Declined::Signing { scheme, .. }) if scheme == "sigv4-s3express"), "{r:?}");
}

#[test]
fn an_endpoint_the_environment_proxies_is_left_to_the_sdk() {
    let proxies = Matcher::builder().https("http://proxy.internal:3128").no("127.0.0.1,.local.example").build();
    assert!(matches!(proxy_free(&proxies, "https://data.s3.eu-west-1.amazonaws.com"), Err(Declined::Proxied(_))));
    assert!(proxy_free(&proxies, "https://s3.local.example/data").is_ok(), "NO_PROXY covers it");
    assert!(proxy_free(&proxies, "http://127.0.0.1:9000/data").is_ok(), "no HTTP proxy named");
    assert!(proxy_free(&Matcher::builder().build(), "https://data.s3.eu-west-1.amazonaws.com").is_ok());
}

#[test]
fn keys_are_percent_encoded_once_keeping_their_slashes() {
    let enc = |k: &str| utf8_percent_encode(k, KEY_ENCODE).to_string();
    assert_eq!(enc("train/a b+c=d&e~f_g-h.i"), "train/a%20b%2Bc%3Dd%26e~f_g-h.i");
    assert_eq!(enc("ünï/%41"), "%C3%BCn%C3%AF/%2541");
}

fn counting_provider(lifetime: Option<Duration>) -> (SharedCredentialsProvider, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = calls.clone();
    let f = aws_credential_types::credential_fn::provide_credentials_fn(move || {
        let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let expiry = lifetime.map(|l| SystemTime::now() + l);
        async move {
            tokio::task::yield_now().await; // a refresh takes time: other requests arrive during it
            Ok(aws_credential_types::Credentials::new(format!("AKID{n}"), "secret", None, expiry, "test"))
        }
    });
    (SharedCredentialsProvider::new(f), calls)
}

fn cache(provider: SharedCredentialsProvider) -> Credentials {
    Credentials { provider, current: Mutex::default(), refresh: tokio::sync::Mutex::default() }
}

#[tokio::test]
async fn credentials_are_asked_for_once_until_they_near_expiry() {
    let (provider, calls) = counting_provider(Some(Duration::from_secs(3600)));
    let c = cache(provider);
    let (a, b, d) = tokio::join!(c.get(), c.get(), c.get());
    assert!(a.is_ok() && b.is_ok() && d.is_ok());
    c.get().await.unwrap();
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1, "one refresh, shared by every request");

    // Credentials within REFRESH_BEFORE_EXPIRY of their end are replaced at every request.
    let (provider, calls) = counting_provider(Some(REFRESH_BEFORE_EXPIRY / 2));
    let c = cache(provider);
    c.get().await.unwrap();
    c.get().await.unwrap();
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);

    // Credentials without an expiry (static keys) are kept.
    let (provider, calls) = counting_provider(None);
    let c = cache(provider);
    c.get().await.unwrap();
    c.get().await.unwrap();
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// A server on loopback that answers its first `failures` requests with 503 SlowDown and
/// the rest with `body`; returns its base URL and the count of requests it saw.
async fn flaky_server(failures: usize, body: &'static [u8]) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/bucket", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut head = Vec::new();
                loop {
                    let Ok(n) = conn.read(&mut buf).await else { return };
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&buf[..n]);
                    if !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        continue;
                    }
                    head.clear();
                    let answer = if counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < failures {
                        let xml = "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
                        format!("HTTP/1.1 503 Slow Down\r\nContent-Length: {}\r\n\r\n{xml}", xml.len()).into_bytes()
                    } else {
                        let mut ok = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
                        ok.extend_from_slice(body);
                        ok
                    };
                    if conn.write_all(&answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (base, seen)
}

async fn path_to(base: String, attempts: u32) -> GetPath {
    let (provider, _) = counting_provider(None);
    GetPath::new(Resolved { base, region: "us-east-1".into() }, provider, attempts).unwrap()
}

#[tokio::test]
async fn a_get_is_retried_until_its_last_attempt_and_no_further() {
    let (base, seen) = flaky_server(4, b"payload").await;
    let got = path_to(base, 5).await.get("k", "\"e\"", None, true).await.unwrap();
    assert_eq!(&got.body[..], b"payload");
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 5, "four 503s, then the answer");

    let (base, seen) = flaky_server(5, b"payload").await;
    let err = path_to(base, 5).await.get("k", "\"e\"", Some(0..3), false).await.err().unwrap();
    assert!(matches!(&err, ObjectError::Other(m) if m.contains("reduce your request rate")), "{err}");
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 5, "five attempts in all");
}

/// A server on loopback that answers every request with `chunks` as one body, `pause` apart.
async fn trickling_server(chunks: &'static [&'static [u8]], pause: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/bucket", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = conn.read(&mut buf).await; // one small request
                let len: usize = chunks.iter().map(|c| c.len()).sum();
                let _ = conn.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n").as_bytes()).await;
                for chunk in chunks {
                    tokio::time::sleep(pause).await;
                    let _ = conn.write_all(chunk).await;
                }
            });
        }
    });
    base
}

#[tokio::test]
async fn a_slow_body_is_not_cut_by_the_attempt_timeout_but_a_stalled_one_is() {
    let chunks: &[&[u8]] = &[b"abc", b"def", b"ghi"];
    let mut path = path_to(trickling_server(chunks, Duration::from_millis(80)).await, 1).await;
    (path.attempt_timeout, path.stall_timeout) = (Duration::from_millis(60), Duration::from_secs(2));
    let got = path.get("k", "\"e\"", None, false).await.unwrap();
    assert_eq!(&got.body[..], b"abcdefghi", "240 ms of body under a 60 ms attempt timeout");

    let mut path = path_to(trickling_server(chunks, Duration::from_millis(400)).await, 1).await;
    (path.attempt_timeout, path.stall_timeout) = (Duration::from_secs(2), Duration::from_millis(100));
    let err = path.get("k", "\"e\"", None, false).await.err().unwrap();
    assert!(matches!(&err, ObjectError::Truncated(m) if m.contains("no byte")), "{err}");
}

#[test]
fn errors_are_sorted_by_what_a_retry_would_change() {
    let body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
    assert!(matches!(refused("u", StatusCode::SERVICE_UNAVAILABLE, body), Failure::Retry(ObjectError::Other(m)) if m.contains("reduce")));
    assert!(matches!(refused("u", StatusCode::NOT_FOUND, b""), Failure::Final(ObjectError::NotFound(_))));
    assert!(matches!(refused("u", StatusCode::PRECONDITION_FAILED, b""), Failure::Final(ObjectError::PreconditionFailed(_))));
    assert!(matches!(refused("u", StatusCode::FORBIDDEN, b"<Code>AccessDenied</Code>"), Failure::Final(ObjectError::AccessDenied(_))));
    assert!(matches!(refused("u", StatusCode::BAD_REQUEST, b"<Code>InvalidArgument</Code>"), Failure::Final(ObjectError::Other(_))));
    assert!(matches!(refused("u", StatusCode::TOO_MANY_REQUESTS, b""), Failure::Retry(_)));
}
