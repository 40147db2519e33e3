//! The checkpoint: round trip, the reopen that uses it, and every way it must be refused.

use std::sync::Arc;
use std::time::SystemTime;

use super::*;
use crate::cache::{BlockCache, CacheConfig, CacheDir};
use crate::io::{probe, EngineChoice};
use crate::metrics::Metrics;

fn open(dir: &Path) -> BlockCache {
    let config = CacheConfig { block_size: 4096, ..CacheConfig::default() };
    BlockCache::open(CacheDir::open_exclusive(dir).unwrap(), probe(EngineChoice::Psync).unwrap(), Arc::new(Metrics::default()), config)
        .unwrap()
}

/// Fills a cache with `n` objects of one to three blocks (two keys with two versions each).
async fn fill(cache: &BlockCache, n: usize) {
    for i in 0..n {
        let key = format!("train/class{}/img{i}.jpg", i % 3);
        for etag in if i < 2 { vec!["\"a\"", "\"b\""] } else { vec!["\"a\""] } {
            let info = crate::object::ObjectInfo {
                key: key.clone(),
                size: 4096 * (1 + i as u64 % 3),
                etag: etag.into(),
                last_modified: SystemTime::now(),
            };
            let obj = cache.create("bucket", &info, crate::checksum::ObjectChecksum::none()).unwrap();
            for b in 0..obj.block_count() {
                let data = bytes::Bytes::from(vec![i as u8; 4096]);
                let hash = crate::checksum::block_hash(&data);
                cache.write_block(&obj, b, data, hash, 0).await;
            }
        }
    }
}

/// A cache dir holding `n` filled objects, closed cleanly (so it holds a checkpoint).
async fn closed_cleanly(n: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path());
    fill(&cache, n).await;
    cache.checkpoint();
    assert!(dir.path().join(CHECKPOINT).exists());
    dir
}

/// What a reopened cache believes: eviction order with bytes, total, versions.
fn state_of(cache: &BlockCache) -> (Vec<(ObjectId, u64)>, u64, BTreeMap<String, Vec<ObjectId>>) {
    let s = cache.state.lock().unwrap();
    (s.lru.iter().map(|(id, b)| (*id, *b)).collect(), s.total, s.versions.clone())
}

/// The state a full scan finds (the checkpoint set aside).
fn scanned(dir: &Path) -> (Vec<(ObjectId, u64)>, u64, BTreeMap<String, Vec<ObjectId>>) {
    let held = CacheDir::open_exclusive(dir).unwrap();
    let r = crate::cache::recovery::scan_for_tests(&held).unwrap();
    (r.lru.iter().map(|(id, b)| (*id, *b)).collect(), r.total, r.versions)
}

#[test]
fn encoding_round_trips_and_any_flipped_byte_is_refused() {
    let stamp = LockStamp { dev: 1, ino: 2, mtime_ns: 3, ctime_ns: 4, pid: 5 };
    let mut lru = LruCache::unbounded();
    let mut versions: BTreeMap<String, Vec<ObjectId>> = BTreeMap::new();
    for i in 0..50u8 {
        let vkey = format!("b\0dir/{}/file{}", i % 4, i / 2);
        let id = ObjectId::new("b", &vkey, &i.to_string());
        lru.put(id, 4096 * (i as u64 + 1));
        versions.entry(vkey).or_default().push(id);
    }
    let image = |id: &ObjectId| Some(id.0[..1 + id.0[0] as usize % 7].to_vec());
    let bytes = encode(&stamp, &lru, &versions, image).unwrap();
    let (back, at) = decode(&bytes, &stamp).unwrap();
    for (id, _) in lru.iter() {
        let at = at[id];
        assert_eq!(Some(&bytes[at.offset..at.offset + at.len]), image(id).as_deref(), "image of {}", id.hex());
    }
    assert_eq!(back.lru.iter().collect::<Vec<_>>(), lru.iter().collect::<Vec<_>>(), "eviction order and bytes");
    assert_eq!(back.versions, versions);
    assert_eq!(back.total, lru.iter().map(|(_, b)| b).sum::<u64>());
    assert!(matches!(decode(&bytes, &LockStamp { pid: 6, ..stamp }), Err(CheckpointError::Stale)));
    for at in [0, 9, 20, 70, bytes.len() / 2, bytes.len() - 1] {
        let mut bad = bytes.clone();
        bad[at] ^= 1;
        assert!(decode(&bad, &stamp).is_err(), "flipped byte {at} accepted");
    }
    assert!(decode(&bytes[..bytes.len() - 7], &stamp).is_err(), "torn file accepted");
}

/// A cleanly closed cache reopens from its checkpoint to exactly the state a full scan finds,
/// and the checkpoint is gone from the directory as soon as the new writer holds it.
#[tokio::test]
async fn a_clean_close_reopens_to_the_scanned_state_from_one_file() {
    let dir = closed_cleanly(20).await;
    let expected = scanned(dir.path()); // takes and rewrites the lock: the checkpoint is stale now
    let (lru, total, versions) = expected.clone();
    assert_eq!(lru.len(), 22);
    {
        let cache = open(dir.path());
        assert!(!dir.path().join(CHECKPOINT).exists(), "stale checkpoint left behind");
        assert_eq!(state_of(&cache), (lru.clone(), total, versions.clone()), "scan after a stale checkpoint");
        cache.checkpoint();
    }
    // Prove the checkpoint, not a scan, rebuilt the state: delete an index behind its back. A
    // scan would not find that entry; the checkpoint still lists it (its next open misses and
    // refetches, as for any entry whose files vanished).
    let gone = lru[0].0;
    std::fs::remove_file(CacheDir::open_read_only(dir.path()).unwrap().paths(&gone).1).unwrap();
    let cache = open(dir.path());
    assert!(!dir.path().join(CHECKPOINT).exists(), "the checkpoint must go before anything changes");
    assert_eq!(state_of(&cache), (lru, total, versions));
}

/// A writer that does not write a checkpoint (a crash, an older hoardfs) leaves the previous
/// one unusable; so does a change after the checkpoint was written.
#[tokio::test]
async fn a_checkpoint_is_refused_after_any_other_writer_or_change() {
    let dir = closed_cleanly(5).await;
    let lock = dir.path().join(crate::cache::store::LOCK);
    // An older hoardfs takes the lock, writes its pid and changes the cache without knowing of
    // checkpoints.
    let saved = std::fs::read(dir.path().join(CHECKPOINT)).unwrap();
    std::fs::write(&lock, "1").unwrap();
    let stamp = CacheDir::open_exclusive(dir.path()).unwrap().lock_stamps().unwrap().0;
    assert!(matches!(decode(&saved, &stamp), Err(CheckpointError::Stale)), "another writer's pid must spoil the checkpoint");

    // A change after the checkpoint removes it.
    let cache = open(dir.path());
    cache.checkpoint();
    assert!(dir.path().join(CHECKPOINT).exists());
    fill(&cache, 6).await;
    assert!(!dir.path().join(CHECKPOINT).exists(), "a change left the checkpoint in place");
    drop(cache);
    // A crash: the writer never checkpoints, and the next one scans.
    let before = scanned(dir.path());
    let cache = open(dir.path());
    assert_eq!(state_of(&cache), before);
}

/// The vector written by `cache-format/gen_vectors.py` from the spec alone: parsed to what the
/// spec says it holds, and encoded back to the same bytes.
#[test]
fn fixture_checkpoint_parses_and_encodes_to_the_same_bytes() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("cache-format/vectors/checkpoint-v2.bin");
    let bytes = std::fs::read(path).unwrap();
    let stamp = LockStamp { dev: 7, ino: 11, mtime_ns: 1_700_000_000_123_456_789, ctime_ns: 1_700_000_000_987_654_321, pid: 4242 };
    let (back, at) = decode(&bytes, &stamp).unwrap();
    let id = |key: &str, etag: &str| ObjectId::new("b", key, etag);
    let (e1, e2, e3) = (id("data/a.bin", "\"e1\""), id("data/a.bin", "\"e2\""), id("data/ab.bin", "\"e3\""));
    // Least recently used first: ranks 0, 1, 2.
    let order: Vec<(ObjectId, u64)> = back.lru.iter().rev().map(|(id, b)| (*id, *b)).collect();
    assert_eq!(order, vec![(e2, 4096), (e3, 12288), (e1, 8192)]);
    assert_eq!(back.total, 24576);
    let versions: BTreeMap<String, Vec<ObjectId>> =
        [("b\0data/a.bin".to_string(), vec![e1, e2]), ("b\0data/ab.bin".to_string(), vec![e3])].into();
    assert_eq!(back.versions, versions);
    assert_eq!(back.version_of[&e3], "b\0data/ab.bin");
    // Each image is the index of its entry, and accounts for its bytes.
    let image = |id: &ObjectId| bytes[at[id].offset..at[id].offset + at[id].len].to_vec();
    for (id, present, accounted) in [(e1, 1, 8192), (e2, 0, 4096), (e3, 2, 12288)] {
        let snap = crate::cache::index::IndexSnapshot::parse(image(&id)).unwrap();
        assert_eq!(ObjectId::new(&snap.header.bucket, &snap.header.key, &snap.header.etag), id);
        assert_eq!(snap.present_count(), present);
        assert_eq!(4096 * (1 + present), accounted);
        assert_eq!(back.lru.peek(&id), Some(&accounted));
    }
    assert_eq!(encode(&stamp, &back.lru, &back.versions, |id| Some(image(id))).unwrap(), bytes);
}

/// An image stands for its index file until the entry changes: opens after a clean close read
/// no index file and serve the bytes the blake3 in the image vouches for; the first change maps
/// the file and lands in it, so a crash right after it loses nothing.
#[tokio::test]
async fn images_stand_for_index_files_until_the_first_change() {
    let dir = closed_cleanly(6).await;
    let cache = open(dir.path());
    let mut objs = Vec::new();
    for id in cache.entry_ids() {
        let obj = cache.open_id(id).unwrap().unwrap();
        assert!(obj.index.lock().unwrap().is_image(), "entry {} was not opened from its image", id.hex());
        let i: u8 = obj.header().key.rsplit("img").next().unwrap().trim_end_matches(".jpg").parse().unwrap();
        for b in 0..obj.block_count() {
            let got = cache.read_verified(&obj, b).await.expect("a present block whose blake3 matches its image");
            assert!(got.iter().all(|&x| x == i), "wrong bytes in block {b} of {}", obj.header().key);
        }
        objs.push(obj);
    }
    assert_eq!(cache.metrics.index_file_reads.load(std::sync::atomic::Ordering::Relaxed), 0);

    let changed = objs[0].clone();
    changed.drop_block(0);
    assert!(!changed.index.lock().unwrap().is_image(), "a change left the entry on its image");
    let on_disk = crate::cache::index::ObjectIndex::read_snapshot(&cache.dir.paths(&changed.id).1).unwrap();
    assert!(!on_disk.is_present(0), "the change did not reach the index file");
    assert!(!cache.images.has(&changed.id), "the changed entry's image still stands for its file");
    drop((objs, cache)); // a crash: no checkpoint

    let cache = open(dir.path());
    let again = cache.open_id(changed.id).unwrap().unwrap();
    assert!(!again.is_present(0), "the change was lost by the crash");
    assert!(!again.index.lock().unwrap().is_image());
}

/// An open's access time reaches the next checkpoint's image without touching the index file.
#[test]
fn an_image_carries_the_access_time_an_open_stamped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.idx");
    crate::cache::index::ObjectIndex::create(&path, crate::cache::format::tests::vector_header()).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let id = ObjectId([1; 32]);
    let map = {
        let f = std::fs::File::open(&path).unwrap();
        // SAFETY: a private temp file nobody else writes.
        unsafe { memmap2::Mmap::map(&f) }.unwrap()
    };
    let images = Arc::new(Images::new(map, [(id, ImageAt { offset: 0, len: bytes.len(), touched: None })].into()));
    let mut index = crate::cache::index::ObjectIndex::from_image(&path, images.get(&id).unwrap(), images.clone(), id).unwrap();
    index.touch(1_800_000_000);
    let snap = crate::cache::index::IndexSnapshot::parse(images.get(&id).unwrap()).unwrap();
    assert_eq!(snap.last_access(), 1_800_000_000);
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "a touch wrote the index file");
    index.set_verify_state(crate::cache::format::VerifyState::Verified);
    assert!(!index.is_image() && !images.has(&id));
    let on_disk = crate::cache::index::ObjectIndex::read_snapshot(&path).unwrap();
    assert_eq!((on_disk.last_access(), on_disk.verify_state()), (1_800_000_000, crate::cache::format::VerifyState::Verified));
}

/// `cache stat` and `ls` take no lock: they read a checkpoint only while it describes the
/// directory (the same bytes the index files hold), and the index files once any writer has
/// taken the lock since.
#[tokio::test]
async fn readers_use_a_checkpoint_only_while_it_is_current() {
    let dir = closed_cleanly(8).await;
    let reader = CacheDir::open_read_only(dir.path()).unwrap();
    let from_checkpoint = crate::cache::read_indexes(&reader).unwrap();
    let (ids, _) = reader.scan().unwrap();
    let mut files: Vec<(ObjectId, Vec<u8>)> =
        crate::cache::read_snapshots(&reader, &ids).into_iter().map(|(id, s)| (id, s.unwrap().into_bytes())).collect();
    let mut images: Vec<(ObjectId, Vec<u8>)> = from_checkpoint.snapshots.into_iter().map(|(id, s)| (id, s.unwrap().into_bytes())).collect();
    files.sort();
    images.sort();
    assert_eq!(images.len(), 10);
    assert!(images == files, "a checkpoint image differs from its index file");
    let (lru, total, _) = scanned(dir.path()); // a writer takes the lock
    assert_eq!(from_checkpoint.accounted, Some(total));
    assert_eq!(lru.len(), 10);
    let after = crate::cache::read_indexes(&reader).unwrap();
    assert_eq!(after.accounted, None, "a checkpoint was read after another writer took the lock");
    assert_eq!(after.snapshots.len(), 10);
}

/// Past the entries kept open, an entry that left memory reopens from the index bytes it left
/// behind, so a warm epoch over more objects than are kept open reads no index file; a change
/// after such a reopen still reaches the file, and the stale bytes are not used again.
#[tokio::test]
async fn an_entry_that_left_memory_reopens_without_reading_its_index_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = CacheConfig { block_size: 4096, open_entries: 2, ..CacheConfig::default() };
    let cache = BlockCache::open(
        CacheDir::open_exclusive(dir.path()).unwrap(),
        probe(EngineChoice::Psync).unwrap(),
        Arc::new(Metrics::default()),
        config,
    )
    .unwrap();
    fill(&cache, 6).await; // 8 entries, 2 kept open
    let reads = || cache.metrics.index_file_reads.load(std::sync::atomic::Ordering::Relaxed);
    let ids = cache.entry_ids();
    for _epoch in 0..2 {
        for id in &ids {
            let obj = cache.open_id(*id).unwrap().unwrap();
            for b in 0..obj.block_count() {
                assert!(cache.read_verified(&obj, b).await.is_some(), "block {b} of {}", obj.header().key);
            }
        }
    }
    assert_eq!(reads(), 0, "an entry that left memory read its index file again");

    let changed = cache.open_id(ids[0]).unwrap().unwrap();
    assert!(changed.index.lock().unwrap().is_image());
    changed.drop_block(0);
    let on_disk = crate::cache::index::ObjectIndex::read_snapshot(&cache.dir.paths(&ids[0]).1).unwrap();
    assert!(!on_disk.is_present(0), "the change did not reach the index file");
    drop(changed);
    for id in &ids[1..] {
        cache.open_id(*id).unwrap().unwrap(); // pushes the changed entry out of memory
    }
    let again = cache.open_id(ids[0]).unwrap().unwrap();
    assert!(!again.is_present(0), "a reopen used bytes from before the change");
}
