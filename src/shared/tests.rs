//! The shared tier between rigs that share one origin and one in-memory tier: what node A
//! verified, node B reads with no origin GET; damaged, foreign or unreachable copies are never
//! served and the origin answers instead.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::memory::MemoryStore;
use super::*;
use crate::checksum::Algorithm;
use crate::io::EngineChoice;
use crate::object::memory::MemoryClient;
use crate::testing::{pattern, read_all, rig_with, small_blocks, Rig};
use crate::verify::{VerifyMode, VerifyPolicy};

const SIZE: usize = 4096 * 5 + 321;

fn origin() -> (Arc<MemoryClient>, Vec<u8>) {
    let mem = Arc::new(MemoryClient::new("origin"));
    let body = pattern(SIZE, 9);
    mem.put_with_checksum("obj", body.clone(), Algorithm::Crc32c, None);
    mem.put("plain", pattern(5000, 3)); // MD5 ETag only: still verifiable
    (mem, body)
}

fn node(dir: &std::path::Path, mem: &Arc<MemoryClient>, store: &Arc<MemoryStore>, read_only: bool, mode: VerifyMode) -> Rig {
    let r = rig_with(dir, mem.clone(), EngineChoice::Psync, small_blocks(), VerifyPolicy { mode, require_checksum: false });
    let config = SharedConfig::new("shared", "cache", read_only);
    let tier = SharedTier::new(store.clone(), &config, mode == VerifyMode::Strict, &r.fetcher, r.cache.clone(), r.metrics.clone());
    r.fetcher.set_shared_tier(tier);
    r
}

fn count(r: &Rig, f: impl Fn(&Metrics) -> &std::sync::atomic::AtomicU64) -> u64 {
    f(&r.metrics).load(Ordering::Relaxed)
}

/// Node A reads (and verifies) the object and drains its puts into the tier.
async fn fill(mem: &Arc<MemoryClient>, store: &Arc<MemoryStore>, body: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let a = node(dir.path(), mem, store, false, VerifyMode::Strict);
    assert_eq!(read_all(&a.fs, "obj").await.unwrap(), body);
    a.fetcher.shared_tier().unwrap().drain(Duration::from_secs(10)).await;
    assert_eq!(count(&a, |m| &m.shared_puts), 6, "6 blocks of 4 KiB");
    assert_eq!(store.objects.lock().unwrap().len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_reads_what_the_first_verified_with_no_origin_get() {
    let (mem, body) = origin();
    let store = Arc::new(MemoryStore::default());
    fill(&mem, &store, &body).await;
    let dir = tempfile::tempdir().unwrap();
    let b = node(dir.path(), &mem, &store, true, VerifyMode::Strict);
    assert_eq!(read_all(&b.fs, "obj").await.unwrap(), body);
    assert_eq!(count(&b, |m| &m.s3_get_requests), 0);
    assert_eq!(count(&b, |m| &m.shared_hits), 6);
    assert_eq!(count(&b, |m| &m.shared_rejects), 0);
    // Read-only: nothing written back, and blocks taken from the tier are never put again.
    assert_eq!(count(&b, |m| &m.shared_puts), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_copy_is_rejected_and_the_origin_serves() {
    let (mem, body) = origin();
    let store = Arc::new(MemoryStore::default());
    fill(&mem, &store, &body).await;
    // One byte flipped, the stored blake3 left as it was.
    {
        let mut objects = store.objects.lock().unwrap();
        let (_, victim) = objects.iter_mut().next().unwrap();
        let mut v = victim.body.to_vec();
        v[10] ^= 1;
        victim.body = v.into();
    }
    let dir = tempfile::tempdir().unwrap();
    let c = node(dir.path(), &mem, &store, true, VerifyMode::Strict);
    assert_eq!(read_all(&c.fs, "obj").await.unwrap(), body);
    assert!(count(&c, |m| &m.shared_rejects) >= 1);
    assert!(count(&c, |m| &m.s3_get_requests) >= 1, "the origin must have served the damaged block");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_copy_with_a_consistent_digest_fails_the_origin_checksum_and_is_never_served() {
    let (mem, body) = origin();
    let store = Arc::new(MemoryStore::default());
    fill(&mem, &store, &body).await;
    // A block replaced by other bytes, with their own blake3 and the right identity: only the
    // origin's checksum can tell.
    {
        let mut objects = store.objects.lock().unwrap();
        let (_, victim) = objects.iter_mut().next().unwrap();
        let other: Bytes = pattern(victim.body.len(), 77).into();
        victim.meta.insert(META_BLAKE3.into(), blake3::hash(&other).to_hex().to_string());
        victim.body = other;
    }
    let dir = tempfile::tempdir().unwrap();
    let c = node(dir.path(), &mem, &store, true, VerifyMode::Strict);
    assert_eq!(read_all(&c.fs, "obj").await.unwrap(), body);
    assert_eq!(count(&c, |m| &m.shared_rejects), 1);
    assert_eq!(count(&c, |m| &m.verify_failures), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tier_that_is_down_costs_one_request_and_never_a_read() {
    let (mem, body) = origin();
    let store = Arc::new(MemoryStore::default());
    store.down.store(true, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let a = node(dir.path(), &mem, &store, false, VerifyMode::Strict);
    assert_eq!(read_all(&a.fs, "obj").await.unwrap(), body);
    assert_eq!(read_all(&a.fs, "plain").await.unwrap(), pattern(5000, 3));
    assert!(count(&a, |m| &m.shared_errors) >= 1);
    // After the first failure the tier is paused: one stretch's GETs, not one per block.
    assert!(store.gets.load(Ordering::SeqCst) <= 6, "{} tier GETs", store.gets.load(Ordering::SeqCst));
    a.fetcher.shared_tier().unwrap().drain(Duration::from_secs(10)).await;
    assert!(count(&a, |m| &m.shared_put_failures) >= 1, "puts to a tier that is down fail and are dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn best_effort_mounts_never_take_blocks_from_the_tier() {
    let (mem, body) = origin();
    let store = Arc::new(MemoryStore::default());
    fill(&mem, &store, &body).await;
    store.gets.store(0, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let b = node(dir.path(), &mem, &store, true, VerifyMode::BestEffort);
    assert_eq!(read_all(&b.fs, "obj").await.unwrap(), body);
    assert_eq!(count(&b, |m| &m.shared_hits), 0);
    assert_eq!(store.gets.load(Ordering::SeqCst), 0);
}

#[test]
fn keys_separate_versions_block_sizes_and_prefixes() {
    let h = |key: &str, etag: &str, bs: u32| IndexHeader {
        block_size: bs,
        object_size: 10,
        mtime_ms: 0,
        checksum: crate::checksum::ObjectChecksum::none(),
        bucket: "b".into(),
        key: key.into(),
        etag: etag.into(),
    };
    assert_eq!(SharedConfig::new("shared", "/team", false).prefix, "team/");
    assert_eq!(SharedConfig::new("shared", "", false).prefix, "");
    let k = |prefix: &str, hh: &IndexHeader| format!("{prefix}{}", super::key_suffix(hh, 3));
    let base = k("team/", &h("a", "\"e\"", 4096));
    assert!(base.starts_with("team/hoardfs-v1/") && base.ends_with("/4096/3"), "{base}");
    for other in [h("b", "\"e\"", 4096), h("a", "\"f\"", 4096), h("a", "\"e\"", 8192)] {
        assert_ne!(k("team/", &other), base);
    }
    // Fields are length-prefixed, so ("ab", "c") and ("a", "bc") differ.
    assert_ne!(k("", &h("ab", "c", 1)), k("", &h("a", "bc", 1)));
}
