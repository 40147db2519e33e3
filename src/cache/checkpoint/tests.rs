//! The checkpoint: round trip, the reopen that uses it, and every way it must be refused.

use std::sync::Arc;
use std::time::SystemTime;

use super::*;
use crate::cache::catalog::SlotAt;
use crate::cache::entries::Entries;
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

/// Eviction order (least recently used first) with bytes and slots, the newest version of each
/// key (by the key, since key hashes differ between tables), and the total.
type State = (Vec<(ObjectId, u64, SlotAt)>, Vec<(String, ObjectId)>, u64);

fn view(entries: &Entries, keys: &HashMap<ObjectId, String>, total: u64) -> State {
    let order = entries.oldest_first().map(|r| (r.id(), r.bytes, r.at)).collect();
    let mut newest: Vec<(String, ObjectId)> =
        keys.values().filter_map(|k| Some((k.clone(), entries.newest_of_key(entries.key_hash(k.as_bytes()))?.id()))).collect();
    newest.sort();
    newest.dedup();
    (order, newest, total)
}

fn keys_of(dir: &Path) -> HashMap<ObjectId, String> {
    crate::cache::recovery::read_keys(&CacheDir::open_read_only(dir).unwrap()).unwrap().into_iter().collect()
}

/// What a reopened cache believes.
fn state_of(cache: &BlockCache) -> State {
    let keys = keys_of(cache.dir().root());
    let s = cache.state.lock().unwrap();
    view(&s.entries, &keys, s.total)
}

/// The state a full scan finds (the checkpoint set aside).
fn scanned(dir: &Path) -> State {
    let held = CacheDir::open_exclusive(dir).unwrap();
    let (r, _) = crate::cache::recovery::scan_for_tests(&held).unwrap();
    view(&r.entries, &keys_of(dir), r.total)
}

#[test]
fn encoding_round_trips_and_any_flipped_byte_is_refused() {
    let stamp = LockStamp { dev: 1, ino: 2, mtime_ns: 3, ctime_ns: 4, pid: 5 };
    let mut entries = Entries::with_capacity(0);
    let mut keys = HashMap::new();
    for i in 0..50u8 {
        let vkey = format!("b\0dir/{}/file{}", i % 4, i / 2);
        let id = ObjectId::new("b", &vkey, &i.to_string());
        let key_hash = entries.key_hash(vkey.as_bytes());
        entries.insert(id, SlotAt { size: if i % 3 == 0 { 384 } else { 256 }, slot: i as u32 * 7 }, 4096 * (i as u64 + 1), key_hash, false);
        if i % 5 == 0 {
            entries.promote(&ObjectId::new("b", "dir/0/file0", "0")); // an eviction order that is not the load order
        }
        keys.insert(id, vkey);
    }
    let total = entries.oldest_first().map(|r| r.bytes).sum();
    let bytes = encode(&stamp, &entries, &keys).unwrap();
    let back = decode(&bytes, &stamp).unwrap();
    assert_eq!(view(&back.entries, &keys, back.total), view(&entries, &keys, total), "order, bytes, slots, newest versions");
    keys.remove(&entries.oldest_first().next().unwrap().id());
    assert!(encode(&stamp, &entries, &keys).is_none(), "an entry without a key must not be left out");
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
    assert_eq!(expected.0.len(), 22);
    {
        let cache = open(dir.path());
        assert!(!dir.path().join(CHECKPOINT).exists(), "stale checkpoint left behind");
        assert_eq!(state_of(&cache), expected, "scan after a stale checkpoint");
        cache.checkpoint();
    }
    // Prove the checkpoint, not a scan, rebuilt the state: delete a data file behind its back.
    // A scan would drop that entry; the checkpoint still lists it (its next open finds no data
    // file and replaces the entry, as for any entry whose files vanished).
    let gone = expected.0[0].0;
    std::fs::remove_file(CacheDir::open_read_only(dir.path()).unwrap().data_path(&gone)).unwrap();
    let cache = open(dir.path());
    assert!(!dir.path().join(CHECKPOINT).exists(), "the checkpoint must go before anything changes");
    assert_eq!(state_of(&cache), expected);
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
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("cache-format/vectors/checkpoint-v3.bin");
    let bytes = std::fs::read(path).unwrap();
    let stamp = LockStamp { dev: 7, ino: 11, mtime_ns: 1_700_000_000_123_456_789, ctime_ns: 1_700_000_000_987_654_321, pid: 4242 };
    let back = decode(&bytes, &stamp).unwrap();
    let id = |key: &str, etag: &str| ObjectId::new("b", key, etag);
    let (e1, e2, e3) = (id("data/a.bin", "\"e1\""), id("data/a.bin", "\"e2\""), id("data/ab.bin", "\"e3\""));
    // Least recently used first: ranks 0, 1, 2.
    let keys: HashMap<ObjectId, String> =
        [(e1, "b\0data/a.bin".to_string()), (e2, "b\0data/a.bin".to_string()), (e3, "b\0data/ab.bin".to_string())].into();
    let (order, newest, total) = view(&back.entries, &keys, back.total);
    let (a, ab) = (SlotAt { size: 256, slot: 0 }, SlotAt { size: 384, slot: 0 });
    assert_eq!(order, vec![(e2, 256, SlotAt { size: 256, slot: 1 }), (e3, 8576, ab), (e1, 4352, a)]);
    assert_eq!(total, 13184);
    // The newest version of a key is its most recently used one.
    assert_eq!(newest, vec![("b\0data/a.bin".to_string(), e1), ("b\0data/ab.bin".to_string(), e3)]);
    assert_eq!(encode(&stamp, &back.entries, &keys).unwrap(), bytes);
}

/// Entries reopened after a clean close serve the bytes their slot's blake3 vouches for, and a
/// change lands in the slot at once: a crash right after it loses nothing.
#[tokio::test]
async fn a_change_reaches_the_catalog_and_survives_a_crash() {
    let dir = closed_cleanly(6).await;
    let cache = open(dir.path());
    let mut objs = Vec::new();
    for id in cache.entry_ids() {
        let obj = cache.open_id(id).unwrap().unwrap();
        let i: u8 = obj.header().key.rsplit("img").next().unwrap().trim_end_matches(".jpg").parse().unwrap();
        for b in 0..obj.block_count() {
            let got = cache.read_verified(&obj, b).await.expect("a present block whose blake3 matches its record");
            assert!(got.iter().all(|&x| x == i), "wrong bytes in block {b} of {}", obj.header().key);
        }
        objs.push(obj);
    }
    let changed = objs[0].clone();
    changed.drop_block(0);
    let reader = CacheDir::open_read_only(dir.path()).unwrap();
    let on_disk = crate::cache::read_indexes(&reader).unwrap().into_iter().find(|(id, _)| *id == changed.id).unwrap().1.unwrap();
    assert!(!on_disk.is_present(0), "the change did not reach the catalog");
    drop((objs, cache)); // a crash: no checkpoint

    let cache = open(dir.path());
    let again = cache.open_id(changed.id).unwrap().unwrap();
    assert!(!again.is_present(0), "the change was lost by the crash");
}

/// `cache stat` and `ls` take no lock and read the catalog: they see what the writer holds.
#[tokio::test]
async fn readers_see_the_writers_indexes() {
    let dir = closed_cleanly(8).await;
    let cache = open(dir.path());
    let reader = CacheDir::open_read_only(dir.path()).unwrap();
    let mut read: Vec<(ObjectId, Vec<u8>)> =
        crate::cache::read_indexes(&reader).unwrap().into_iter().map(|(id, s)| (id, s.unwrap().bytes().to_vec())).collect();
    let mut held: Vec<(ObjectId, Vec<u8>)> =
        cache.entry_ids().into_iter().map(|id| (id, cache.snapshot(&id).unwrap().bytes().to_vec())).collect();
    read.sort();
    held.sort();
    assert_eq!(read.len(), 10);
    assert!(read == held, "a reader's index differs from the writer's");
}

/// Past the entries kept open, entries leave memory and come back from their slots, over and
/// over; a change after such a reopen is what the next reopen sees.
#[tokio::test]
async fn entries_that_leave_memory_reopen_from_their_slots() {
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
    let ids = cache.entry_ids();
    for _epoch in 0..2 {
        for id in &ids {
            let obj = cache.open_id(*id).unwrap().unwrap();
            for b in 0..obj.block_count() {
                assert!(cache.read_verified(&obj, b).await.is_some(), "block {b} of {}", obj.header().key);
            }
        }
    }
    let changed = cache.open_id(ids[0]).unwrap().unwrap();
    changed.drop_block(0);
    drop(changed);
    for id in &ids[1..] {
        cache.open_id(*id).unwrap().unwrap(); // pushes the changed entry out of memory
    }
    let again = cache.open_id(ids[0]).unwrap().unwrap();
    assert!(!again.is_present(0), "a reopen used bytes from before the change");
}

/// An entry whose every block was checked in this mount stays checked when it leaves memory, so
/// a warm epoch past the entries kept open reads no block back; a new mount checks again, and a
/// block dropped meanwhile makes the entry unchecked when it next leaves.
#[tokio::test]
async fn entries_leave_memory_checked_and_come_back_checked() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::default());
    let config = CacheConfig { block_size: 4096, open_entries: 2, ..CacheConfig::default() };
    let open_with = |metrics: Arc<Metrics>| {
        BlockCache::open(CacheDir::open_exclusive(dir.path()).unwrap(), probe(EngineChoice::Psync).unwrap(), metrics, config.clone())
            .unwrap()
    };
    let cache = open_with(metrics.clone());
    fill(&cache, 6).await; // 8 entries, written (so checked) in this mount; 2 kept open
    let ids = cache.entry_ids();
    for _epoch in 0..2 {
        for id in &ids {
            assert!(cache.open_id(*id).unwrap().unwrap().all_checked(), "{} came back unchecked", id.hex());
        }
    }
    assert_eq!(metrics.cache_hit_blocks.load(std::sync::atomic::Ordering::Relaxed), 0, "no block was read back");

    // One block fails its check: the entry leaves memory unchecked and comes back unchecked.
    let damaged = cache.open_id(ids[0]).unwrap().unwrap();
    damaged.drop_block(0);
    drop(damaged);
    for id in &ids[1..] {
        cache.open_id(*id).unwrap().unwrap();
    }
    assert!(!cache.open_id(ids[0]).unwrap().unwrap().all_checked());
    drop(cache);

    // A new mount trusts nothing this one checked.
    let cache = open_with(Arc::new(Metrics::default()));
    assert!(ids.iter().all(|id| !cache.open_id(*id).unwrap().unwrap().all_checked()));
}
