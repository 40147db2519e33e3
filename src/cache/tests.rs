//! Unit tests of the cache, fetcher and file-system logic over the in-memory client: no FUSE,
//! no network, exact request counts.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use std::path::Path;

use super::*;
use crate::io::{probe, EngineChoice};
use crate::meta::ROOT_INO;
use crate::object::memory::MemoryClient;
use crate::testing::{data_files, pattern, read_all, rig, small_blocks};

async fn persist_and_corrupt(engine: EngineChoice) {
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemoryClient::new("b"));
    let body = pattern(4096 * 5 + 100, 3);
    mem.put("obj", body.clone());
    {
        let r = rig(dir.path(), mem.clone(), engine, small_blocks());
        assert_eq!(read_all(&r.fs, "obj").await.unwrap(), body);
        // Verifying the MD5 ETag needs every block: the six come in one coalesced GET.
        assert_eq!(r.metrics.s3_get_requests.load(Ordering::Relaxed), 1);
    }
    // Remount: every block from disk.
    {
        let r = rig(dir.path(), mem.clone(), engine, small_blocks());
        assert_eq!(read_all(&r.fs, "obj").await.unwrap(), body);
        assert_eq!(r.metrics.s3_get_requests.load(Ordering::Relaxed), 0);
    }
    // Corrupt block 2 on disk: refetched, never served.
    let data = data_files(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[4096 * 2 + 10] ^= 0x55;
    std::fs::write(&data, bytes).unwrap();
    let r = rig(dir.path(), mem.clone(), engine, small_blocks());
    assert_eq!(read_all(&r.fs, "obj").await.unwrap(), body);
    assert_eq!(r.metrics.blake3_mismatches.load(Ordering::Relaxed), 1);
    assert_eq!(r.metrics.s3_get_requests.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn persist_and_corrupt_psync() {
    persist_and_corrupt(EngineChoice::Psync).await;
}

#[tokio::test]
async fn persist_and_corrupt_uring() {
    persist_and_corrupt(EngineChoice::Uring).await;
}

#[tokio::test]
async fn concurrent_readers_of_one_block_cause_one_get() {
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemoryClient::new("b"));
    mem.put("obj", pattern(4096, 1));
    let r = Arc::new(rig(dir.path(), mem, EngineChoice::Psync, small_blocks()));
    let ino = r.fs.lookup(ROOT_INO, "obj").await.unwrap().ino;
    let fh = r.fs.open(ino, false).await.unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let r = r.clone();
            tokio::spawn(async move { r.fs.read(fh, i * 100, 100).await.unwrap() })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().len(), 100);
    }
    assert_eq!(r.metrics.s3_get_requests.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn eviction_keeps_the_cache_under_its_limit_and_spares_open_objects() {
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemoryClient::new("b"));
    for i in 0..12 {
        mem.put(&format!("o{i:02}"), pattern(4096 * 4, i));
    }
    // Room for about three objects (4 data blocks + one index unit each).
    let limit = 3 * 5 * 4096;
    let config = CacheConfig { max_size: Some(limit), ..small_blocks() };
    let r = rig(dir.path(), mem.clone(), EngineChoice::Psync, config);
    let pinned = r.fs.open(r.fs.lookup(ROOT_INO, "o00").await.unwrap().ino, false).await.unwrap();
    for i in 0..12 {
        assert_eq!(read_all(&r.fs, &format!("o{i:02}")).await.unwrap(), pattern(4096 * 4, i));
        assert!(r.cache.total_bytes() <= limit + 4096, "accounted {} > limit", r.cache.total_bytes());
        assert!(disk_usage(dir.path()) <= limit + 4096 + 64 * 1024, "on disk {}", disk_usage(dir.path()));
    }
    assert!(r.metrics.evicted_objects.load(Ordering::Relaxed) >= 8);
    // The object held open since the start is still whole on disk.
    let before = r.metrics.s3_get_requests.load(Ordering::Relaxed);
    let got = r.fs.read(pinned, 0, 4096 * 4).await.unwrap();
    assert_eq!(&got[..], &pattern(4096 * 4, 0)[..]);
    assert_eq!(r.metrics.s3_get_requests.load(Ordering::Relaxed), before);
}

/// Bytes of the object files, as allocated on disk.
fn disk_usage(root: &Path) -> u64 {
    crate::inspect::disk_usage(&root.join(store::OBJECTS))
}

#[tokio::test]
async fn recovery_removes_crash_leftovers_and_keeps_good_entries() {
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemoryClient::new("b"));
    mem.put("obj", pattern(9000, 9));
    {
        let r = rig(dir.path(), mem.clone(), EngineChoice::Psync, small_blocks());
        read_all(&r.fs, "obj").await.unwrap();
    }
    let shard = dir.path().join(store::OBJECTS).join("ab");
    std::fs::create_dir_all(&shard).unwrap();
    let orphan = shard.join(format!("{}.data", "ab".repeat(32)));
    let torn = shard.join(format!("{}.idx.tmp", "ab".repeat(32)));
    std::fs::write(&orphan, b"orphan").unwrap();
    std::fs::write(&torn, b"torn").unwrap();
    let r = rig(dir.path(), mem, EngineChoice::Psync, small_blocks());
    assert!(!orphan.exists() && !torn.exists());
    assert_eq!(r.cache.entry_count(), 1);
    assert_eq!(read_all(&r.fs, "obj").await.unwrap(), pattern(9000, 9));
    assert_eq!(r.metrics.s3_get_requests.load(Ordering::Relaxed), 0);
}

/// The format 2 vector directory, written by `cache-format/gen_vectors.py` from the spec alone,
/// serves its object from the cache.
#[tokio::test]
async fn the_format_2_cache_dir_fixture_serves_its_object() {
    let (dir, cache) = serve_fixture("cache-dir-v2").await;
    let reader = CacheDir::open_read_only(dir.path()).unwrap();
    assert_eq!(crate::cache::read_indexes(&reader).unwrap().len(), 1);
    drop(cache);
}

/// The format 1 vector directory (an index file beside its data file) is upgraded in place by
/// the first writer: the index moves into the catalog, the marker says 2, and the object is
/// served from the cache.
#[tokio::test]
async fn a_format_1_cache_dir_is_upgraded_in_place_and_serves_its_object() {
    let (dir, cache) = serve_fixture("cache-dir-v1").await;
    let marker = std::fs::read_to_string(dir.path().join(store::MARKER)).unwrap();
    assert!(marker.contains(&format!("format-version = {}", store::DIR_VERSION)), "{marker}");
    let found = cache.dir().scan().unwrap();
    assert_eq!((found.data.len(), found.v1_indexes.len()), (1, 0), "the index file was not moved");
    assert_eq!(crate::cache::read_indexes(cache.dir()).unwrap().len(), 1);
}

/// Copies a vector cache dir and serves its one object (5000 bytes in two 4 KiB blocks,
/// complete, unverifiable) from it with no S3 behind.
async fn serve_fixture(name: &str) -> (tempfile::TempDir, BlockCache) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("cache-format/vectors").join(name);
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&fixture, dir.path());
    let content: Vec<u8> = (0..5000).map(|i| ((i * 7) % 256) as u8).collect();
    let metrics = Arc::new(Metrics::default());
    let cache = BlockCache::open(
        CacheDir::open_exclusive(dir.path()).unwrap(),
        probe(EngineChoice::Psync).unwrap(),
        metrics.clone(),
        small_blocks(),
    )
    .unwrap();
    let info = crate::object::ObjectInfo {
        key: "hello/world.bin".into(),
        size: 5000,
        etag: "\"0123456789abcdef0123456789abcdef\"".into(),
        last_modified: SystemTime::UNIX_EPOCH,
    };
    let obj = cache.open_existing("demo", &info).unwrap().expect("the fixture's entry");
    assert!(obj.is_complete());
    assert_eq!(obj.verify_state(), VerifyState::Unverifiable);
    let b0 = cache.read_verified(&obj, 0).await.unwrap();
    let b1 = cache.read_verified(&obj, 1).await.unwrap();
    assert_eq!([&b0[..], &b1[..]].concat(), content);
    assert_eq!(metrics.blake3_mismatches.load(Ordering::Relaxed), 0);
    drop(obj);
    (dir, cache)
}

fn copy_tree(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[tokio::test]
async fn an_old_version_of_a_key_is_evicted_before_older_entries_of_other_keys() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::default());
    // Room for two 4-block entries and their indexes, not three.
    let config = CacheConfig { max_size: Some(11 * 4096), ..small_blocks() };
    let cache =
        BlockCache::open(CacheDir::open_exclusive(dir.path()).unwrap(), probe(EngineChoice::Psync).unwrap(), metrics.clone(), config)
            .unwrap();
    let info = |key: &str, etag: &str| crate::object::ObjectInfo {
        key: key.into(),
        size: 4 * 4096,
        etag: etag.into(),
        last_modified: SystemTime::now(),
    };
    let none = crate::checksum::ObjectChecksum::none;
    // Oldest: another key. Then version 1 of "model", then version 2 of "model".
    for (key, etag) in [("other", "\"o\""), ("model", "\"v1\""), ("model", "\"v2\"")] {
        let obj = cache.create("b", &info(key, etag), none()).unwrap();
        for b in 0..4 {
            let data = bytes::Bytes::from(vec![b as u8; 4096]);
            let hash = crate::checksum::block_hash(&data);
            cache.write_block(&obj, b, data, hash, 0).await;
        }
    }
    let left: Vec<String> = cache.entry_ids().iter().map(|id| cache.snapshot(id).unwrap().header.etag).collect();
    assert!(left.contains(&"\"o\"".to_string()), "the other key's older entry stays: {left:?}");
    assert!(!left.contains(&"\"v1\"".to_string()), "the superseded version went first: {left:?}");
}

/// Running out of descriptors proves nothing about an entry: opening it fails (the caller reads
/// verified from S3 meanwhile) and both files stay, to be served once descriptors are back.
#[tokio::test]
async fn an_entry_that_cannot_be_opened_for_lack_of_descriptors_stays_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemoryClient::new("b"));
    let body = pattern(4096 * 3, 4);
    let info = mem.put("obj", body.clone());
    {
        let r = rig(dir.path(), mem.clone(), EngineChoice::Psync, small_blocks());
        assert_eq!(read_all(&r.fs, "obj").await.unwrap(), body);
    }
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let cache =
        BlockCache::open(CacheDir::open_exclusive(dir.path()).unwrap(), probe(EngineChoice::Psync).unwrap(), metrics, small_blocks())
            .unwrap();
    let data = cache.dir().data_path(&ObjectId::new("b", "obj", &info.etag));
    {
        let _starved = crate::testing::FdsExhausted::now();
        let err = cache.open_existing("b", &info).err().expect("no descriptor: the open must fail");
        assert!(err.to_string().contains("Too many open files"), "{err}");
    }
    assert!(data.exists() && cache.entry_count() == 1, "EMFILE deleted the entry");
    let obj = cache.open_existing("b", &info).unwrap().expect("the entry is still there");
    assert!(obj.is_complete());
}

/// Objects checked at open together want more block reads in flight than the cache allows over
/// all of them (`CHECK_READS_MAX`): the checks wait for each other's reads, every block is
/// checked (so each open is offered passthrough), and every permit comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_of_many_objects_at_once_share_one_bound_on_reads() {
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemoryClient::new("b"));
    let (objects, blocks) = (4, 100); // 4 × min(100, CHECK_IN_FLIGHT) reads wanted > 128
    for i in 0..objects {
        mem.put(&format!("o{i}"), pattern(4096 * blocks, i as u8));
    }
    let r = rig(dir.path(), mem.clone(), EngineChoice::Psync, small_blocks());
    for i in 0..objects {
        read_all(&r.fs, &format!("o{i}")).await.unwrap();
    }
    r.close().await;
    let r = Arc::new(rig(dir.path(), mem, EngineChoice::Psync, small_blocks()));
    let opens: Vec<_> = (0..objects)
        .map(|i| {
            let r = r.clone();
            tokio::spawn(async move {
                let ino = r.fs.lookup(ROOT_INO, &format!("o{i}")).await.unwrap().ino;
                r.fs.open_with_passthrough(ino, false).await.unwrap().1.is_some()
            })
        })
        .collect();
    for open in opens {
        let checked = tokio::time::timeout(std::time::Duration::from_secs(60), open).await;
        assert!(
            checked.expect("the checks stalled: read permits were not returned").unwrap(),
            "an object checked at open is offered to the kernel"
        );
    }
    assert_eq!(r.metrics.cache_hit_blocks.load(Ordering::Relaxed), (objects * blocks) as u64);
    assert_eq!(blocks::check_reads_available(), blocks::CHECK_READS_MAX, "a permit was not returned");
}

/// The checks an open of a one-block object makes on its own thread, after a remount: each block
/// read back and hashed over its own bytes, so good ones are offered to the kernel and a damaged
/// one is caught (and not offered), whatever was checked before it on that thread.
#[tokio::test]
async fn checks_at_open_on_one_thread_hash_each_block_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemoryClient::new("b"));
    let objects = [("long", 4096, 1), ("short", 1000, 2), ("damaged", 999, 3)];
    for (name, len, seed) in objects {
        mem.put(name, pattern(len, seed));
    }
    let r = rig(dir.path(), mem.clone(), EngineChoice::Psync, small_blocks());
    for (name, ..) in objects {
        read_all(&r.fs, name).await.unwrap();
    }
    r.close().await;
    let damaged = data_files(dir.path()).into_iter().find(|p| p.metadata().unwrap().len() == 999).unwrap();
    let mut bytes = std::fs::read(&damaged).unwrap();
    bytes[500] ^= 0x01;
    std::fs::write(&damaged, bytes).unwrap();

    let r = rig(dir.path(), mem, EngineChoice::Psync, small_blocks());
    let mut offered = Vec::new();
    for (name, ..) in objects {
        let ino = r.fs.lookup(ROOT_INO, name).await.unwrap().ino;
        let (_, offer) = r.fs.try_open(ino, false).expect("a one-block cached object opens on the calling thread").unwrap();
        offered.push(offer.is_some());
    }
    assert_eq!(offered, [true, true, false], "long and short checked, the damaged block caught");
    assert_eq!(r.metrics.cache_hit_blocks.load(Ordering::Relaxed), 2);
    assert_eq!(r.metrics.blake3_mismatches.load(Ordering::Relaxed), 1);
}
