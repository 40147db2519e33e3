//! Issue 8 end to end: reads through a real mount while a proxy in front of the S3 server
//! injects 503 bursts, mid-body resets, slow answers and corrupt bytes. No wrong byte, no
//! panic, every read finishes in bounded time.

mod common;

use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::proxy::{FaultProxy, Faults};
use common::*;
use rand::{Rng, SeedableRng};

const MIB: usize = 1 << 20;

struct Outcome {
    ok: usize,
    eio: usize,
    injected: u64,
    slowest: Duration,
}

/// 1000 random reads of `objects` through a mount whose S3 traffic crosses a proxy injecting
/// `faults`, with a cache far smaller than the data so blocks keep being fetched again; GETs go
/// through the SDK's pipeline with `sdk_gets`, else through hoardfs's own (`object::get`).
fn run(faults: Faults, seed: u64, sdk_gets: bool) -> Outcome {
    let server = S3Server::start();
    let objects: Vec<(String, Vec<u8>)> = (0..6).map(|i| (format!("shard-{i}"), bytes(60 + i, 3 * MIB / 2 + 777 * i as usize))).collect();
    let refs: Vec<(&str, &[u8])> = objects.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
    server.bucket("faulty", &refs);
    let proxy = FaultProxy::start(server.addr, faults);
    let tmp = tempfile::tempdir().unwrap();
    let mount = TestMount::with(&server, "faulty", &tmp.path().join("cache"), tmp.path(), |c| {
        c.s3.endpoint_url = Some(proxy.endpoint());
        c.s3.sdk_gets = sdk_gets;
        c.cache.max_size = Some(2 * MIB as u64);
    });
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = Outcome { ok: 0, eio: 0, injected: 0, slowest: Duration::ZERO };
    for i in 0..1000 {
        let (key, want) = &objects[rng.random_range(0..objects.len())];
        let off = rng.random_range(0..want.len());
        let len = rng.random_range(1..=(want.len() - off).min(200_000));
        let mut buf = vec![0u8; len];
        let t = Instant::now();
        let result = std::fs::File::open(mount.path(key)).and_then(|f| f.read_exact_at(&mut buf, off as u64));
        out.slowest = out.slowest.max(t.elapsed());
        match result {
            Ok(()) => {
                assert_same(&format!("read {i}: {key} @{off}+{len}"), &buf, &want[off..off + len]);
                out.ok += 1;
            }
            Err(e) if e.raw_os_error() == Some(libc::EIO) => out.eio += 1,
            Err(e) => panic!("read {i}: unexpected error {e}"),
        }
    }
    out.injected = proxy.faults.injected.load(Ordering::Relaxed);
    eprintln!(
        "{} reads right, {} EIO, {} faults injected in {} requests, slowest read {:?}",
        out.ok,
        out.eio,
        out.injected,
        proxy.faults.requests.load(Ordering::Relaxed),
        out.slowest
    );
    out
}

#[test]
fn transport_faults_are_absorbed_by_retries() {
    absorbs_transport_faults(false);
}

#[test]
fn transport_faults_are_absorbed_by_retries_with_sdk_gets() {
    absorbs_transport_faults(true);
}

fn absorbs_transport_faults(sdk_gets: bool) {
    let out = run(Faults { slowdown: 0.10, reset_mid_body: 0.05, slow: 0.05, ..Default::default() }, 8, sdk_gets);
    assert!(out.injected >= 50, "too few faults injected ({}) to prove anything", out.injected);
    assert_eq!(out.eio, 0, "503s, resets mid-body and slow answers are retried until they succeed");
    assert!(out.slowest < Duration::from_secs(60), "a read took {:?}", out.slowest);
}

#[test]
fn corrupt_bytes_under_faults_are_never_served() {
    let out = run(Faults { slowdown: 0.10, reset_mid_body: 0.05, slow: 0.05, corrupt: 0.05, ..Default::default() }, 9, false);
    assert!(out.injected >= 50, "too few faults injected ({}) to prove anything", out.injected);
    // Zero wrong bytes is asserted read by read above. A unit refused twice in a row answers
    // EIO (the issue-3 rule); with 5% of GETs corrupted and a cache too small to keep anything,
    // that stays a small share of reads.
    assert!(out.eio < 100, "{} of 1000 reads failed", out.eio);
    assert!(out.slowest < Duration::from_secs(60), "a read took {:?}", out.slowest);
}

/// The mount checks its bucket with HeadBucket (constant time on every server; a one-key LIST
/// is not on servers that walk a directory tree to answer it). Credentials allowed to list only
/// under a prefix are refused HeadBucket; then a one-key LIST of the mount's prefix decides, and
/// the mount works.
#[test]
fn a_mount_whose_head_bucket_is_refused_checks_its_prefix_with_a_list() {
    let server = S3Server::start();
    server.bucket("scoped", &[("train/a", b"alpha".as_slice()), ("other/b", b"beta".as_slice())]);
    let proxy = FaultProxy::start(server.addr, Faults { deny_head_bucket: true, ..Default::default() });
    let tmp = tempfile::tempdir().unwrap();
    let mount = TestMount::with(&server, "scoped", &tmp.path().join("cache"), tmp.path(), |c| {
        c.s3.endpoint_url = Some(proxy.endpoint());
        c.prefix = "train/".into();
    });
    assert_eq!(proxy.faults.injected.load(Ordering::Relaxed), 1, "the mount asks HeadBucket first, once");
    assert_eq!(mount.metric(|m| &m.s3_bucket_checks), 1);
    assert_eq!(std::fs::read(mount.path("a")).unwrap(), b"alpha");
    mount.unmount();
}
