//! Every counter hoardfs keeps, in one place, with its Prometheus name.
//!
//! Counters are plain atomics so the hot path pays one relaxed add. They are read by tests (to
//! prove "zero GETs after remount"), by the `--metrics-addr` endpoint, and by `hoardfs cache stat`.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

macro_rules! metrics {
    ($($field:ident => $name:literal, $help:literal;)*) => {
        /// The live counters of one mount (or one `cache warm` run).
        #[derive(Debug, Default)]
        pub struct Metrics {
            $(#[doc = $help] pub $field: AtomicU64,)*
        }

        impl Metrics {
            /// Name, help text and current value of every counter, in declaration order.
            pub fn snapshot(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![$(($name, $help, self.$field.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

metrics! {
    s3_get_requests => "hoardfs_s3_get_requests_total", "GetObject requests sent (data fetches).";
    s3_get_bytes => "hoardfs_s3_get_bytes_total", "Bytes received in GetObject bodies.";
    s3_head_requests => "hoardfs_s3_head_requests_total", "HeadObject requests sent.";
    s3_list_requests => "hoardfs_s3_list_requests_total", "ListObjectsV2 requests sent.";
    s3_bucket_checks => "hoardfs_s3_bucket_checks_total", "Bucket checks sent at mount (HeadBucket, or a one-key LIST).";
    s3_errors => "hoardfs_s3_errors_total", "S3 requests that failed.";
    cache_hit_blocks => "hoardfs_cache_hit_blocks_total", "Block reads served from the local cache.";
    cache_miss_blocks => "hoardfs_cache_miss_blocks_total", "Block reads that had to be fetched from S3.";
    cache_bytes_read => "hoardfs_cache_read_bytes_total", "Bytes read from the local cache (whole blocks when first verified).";
    blocks_written => "hoardfs_cache_blocks_written_total", "Blocks written into the cache.";
    blake3_mismatches => "hoardfs_cache_blake3_mismatches_total", "Cached blocks whose blake3 did not match; refetched.";
    verify_failures => "hoardfs_verify_failures_total", "Parts or objects whose bytes did not match S3's checksum (then refetched).";
    cache_read_errors => "hoardfs_cache_read_errors_total", "Cache reads that failed with an I/O error; served from S3 instead.";
    cache_write_errors => "hoardfs_cache_write_errors_total", "Cache writes that failed (disk full, I/O error); the cache stopped growing.";
    evicted_objects => "hoardfs_cache_evicted_objects_total", "Object versions evicted to stay under --max-cache-size.";
    evicted_bytes => "hoardfs_cache_evicted_bytes_total", "Bytes evicted to stay under --max-cache-size.";
    prefetch_blocks => "hoardfs_prefetch_blocks_total", "Blocks fetched ahead of a sequential reader.";
    hint_files_queued => "hoardfs_hint_files_queued_total", "Paths written to the prefetch control file.";
    hint_files_done => "hoardfs_hint_files_done_total", "Hinted files now complete in the cache (fetched or already there).";
    hint_files_readahead => "hoardfs_hint_files_readahead_total", "Hinted files already cached whose first MiB the kernel was asked to read into memory ahead of the reader.";
    hint_files_failed => "hoardfs_hint_files_failed_total", "Hinted files that could not be fetched (unknown path, S3 error).";
    hint_files_passed => "hoardfs_hint_files_passed_total", "Hinted files a reader was already opening when their hint came up (the hint moved on to the next).";
    passthrough_opens => "hoardfs_passthrough_opens_total", "Opens answered with FUSE passthrough to a complete cache file.";
    shared_hits => "hoardfs_shared_hit_blocks_total", "Blocks taken from the shared tier (then verified like the origin's).";
    shared_misses => "hoardfs_shared_miss_blocks_total", "Blocks the shared tier did not hold; read from the origin.";
    shared_errors => "hoardfs_shared_errors_total", "Shared tier reads that failed (down, denied, no bucket); read from the origin.";
    shared_rejects => "hoardfs_shared_rejects_total", "Shared tier copies that failed a check (blake3, identity or the origin's checksum); never served.";
    shared_puts => "hoardfs_shared_puts_total", "Verified blocks written to the shared tier.";
    shared_put_failures => "hoardfs_shared_put_failures_total", "Blocks not written to the shared tier (queue full, read-back or PUT failed); dropped.";
    fuse_lookups => "hoardfs_fuse_lookups_total", "LOOKUP requests from the kernel (names it did not get from a directory read).";
    passthrough_releases => "hoardfs_passthrough_releases_total", "Passthrough handles whose release was matched to their open (equal to opens once all are closed).";
    fuse_flushes => "hoardfs_fuse_flushes_total", "FLUSH requests; refused as unneeded, so the kernel sends one per mount, not one per close(2).";
    dir_read_ahead_passes => "hoardfs_dir_read_ahead_passes_total", "Passes over a directory's cached files of 64 KiB to 8 MiB that ran to the end (each started by an open that found its file's bytes on disk only).";
    dir_read_ahead_files => "hoardfs_dir_read_ahead_files_total", "Cached files a directory pass had the kernel read into memory ahead of their opens.";
    check_passes => "hoardfs_check_passes_total", "Background checks of every block of a large cached object that ran to the end (its next open is passthrough if all matched).";
    fuse_opens_inline => "hoardfs_fuse_opens_inline_total", "Opens answered on the FUSE thread (a cached entry, no S3 request, no hand-off).";
}

impl Metrics {
    /// Adds `n` to a counter; a helper so call sites read as one line.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Prometheus text exposition format (version 0.0.4).
    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        for (name, help, value) in self.snapshot() {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"));
        }
        out
    }

    /// Parses text produced by [`Metrics::render_prometheus`] back into (name, value) pairs;
    /// used by `hoardfs cache stat` to show a running mount's counters.
    pub fn parse_prometheus(text: &str) -> Vec<(String, u64)> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (name, value) = l.split_once(' ')?;
                Some((name.to_string(), value.trim().parse().ok()?))
            })
            .collect()
    }
}

/// Serves `GET /metrics` on `addr` from a plain thread: the endpoint is for a scraper once every
/// few seconds, so it needs no async runtime and cannot slow the data path.
pub fn serve(metrics: Arc<Metrics>, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new().name("hoardfs-metrics".into()).spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(&stream);
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            // Drain headers so the client sees a clean close.
            let mut line = String::new();
            while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
                line.clear();
            }
            let (status, body) = if request_line.starts_with("GET /metrics") {
                ("200 OK", metrics.render_prometheus())
            } else {
                ("404 Not Found", "try /metrics\n".to_string())
            };
            let _ = write!(
                &stream,
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    })?;
    Ok(bound)
}
