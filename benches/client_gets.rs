//! What one GET costs the client: hoardfs's S3 client sending GETs itself (`object::get`, hyper
//! and AWS's SigV4 crate) against the same client sending them through the AWS SDK's request
//! pipeline (`--sdk-gets`), each fetching a list of objects N at a time. Driven by
//! `benches/client.sh`, which starts the bench server, runs `curl` as the baseline in the same
//! round and prints the ratios; this program prints one JSON line per run.
//!
//!     client_gets ENDPOINT BUCKET KEYS_FILE CONCURRENCY hoardfs|sdk
//!
//! `KEYS_FILE` holds `key<TAB>etag` lines. Both send what a mount sends for a cold one-block
//! object, `S3Client::get_whole`: `If-Match`, checksum mode, the checksum headers read back and
//! the body's length checked.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use hoardfs::object::s3::{S3Client, S3Config};
use hoardfs::object::ObjectClient;

/// CPU seconds (user + system) this process has used.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given and reads nothing else.
    let ru = unsafe {
        let mut r: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut r);
        r
    };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [endpoint, bucket, keys, concurrency, which] =
        <[String; 5]>::try_from(args).map_err(|_| "usage: client_gets ENDPOINT BUCKET KEYS_FILE CONCURRENCY hoardfs|sdk".to_string())?;
    let concurrency: usize = concurrency.parse().map_err(|e| format!("CONCURRENCY {concurrency:?}: {e}"))?;
    let sdk_gets = match which.as_str() {
        "hoardfs" => false,
        "sdk" => true,
        other => return Err(format!("unknown client {other:?}: give hoardfs or sdk")),
    };
    let text = std::fs::read_to_string(&keys).map_err(|e| format!("{keys}: {e}"))?;
    let objects: Arc<Vec<(String, String)>> =
        Arc::new(text.lines().filter_map(|l| l.split_once('\t')).map(|(k, e)| (k.to_string(), e.to_string())).collect());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let config = S3Config { bucket, endpoint_url: Some(endpoint), region: None, force_path_style: true, sdk_gets };
        let client = Arc::new(S3Client::new(&config).await);
        let (next, bytes) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (cpu0, t0) = (cpu_seconds(), Instant::now());
        let workers: Vec<_> = (0..concurrency.max(1))
            .map(|_| {
                let (client, objects, next, bytes) = (client.clone(), objects.clone(), next.clone(), bytes.clone());
                tokio::spawn(async move {
                    while let Some((key, etag)) = objects.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let (body, _checksum) = client.get_whole(key, etag).await.map_err(|e| e.to_string())?;
                        bytes.fetch_add(body.len(), Ordering::Relaxed);
                    }
                    Ok::<(), String>(())
                })
            })
            .collect();
        for w in workers {
            w.await.map_err(|e| e.to_string())??;
        }
        let (seconds, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
        let n = objects.len() as f64;
        println!(
            "{{\"client\": \"{which}\", \"gets\": {n}, \"bytes\": {}, \"seconds\": {seconds:.3}, \"gets_per_s\": {:.1}, \"cpu_us_per_get\": {:.1}}}",
            bytes.load(Ordering::Relaxed),
            n / seconds,
            cpu * 1e6 / n
        );
        Ok(())
    })
}
