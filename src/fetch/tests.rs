//! The fetcher over the in-memory client: coalescing, single-flight, prefetch, failures.
use std::sync::atomic::Ordering;

use super::*;
use crate::cache::{CacheConfig, CacheDir};
use crate::io::{probe, EngineChoice};
use crate::object::counting::CountingClient;
use crate::object::memory::MemoryClient;
use crate::object::ObjectInfo;
use crate::testing::{pattern, small_blocks};

const BS: usize = 4096;

/// A fetcher over one 10-block object, allowing GETs of `get_blocks` blocks.
async fn setup(dir: &std::path::Path, get_blocks: u64) -> (Arc<Fetcher>, Arc<CachedObject>, Arc<Metrics>, Vec<u8>, Arc<MemoryClient>) {
    let mem = Arc::new(MemoryClient::new("b"));
    let body = pattern(BS * 10 - 7, 5);
    let info = mem.put("obj", body.clone());
    let metrics = Arc::new(Metrics::default());
    let client: Arc<dyn ObjectClient> = Arc::new(CountingClient::new(mem.clone(), metrics.clone()));
    let config: CacheConfig = small_blocks();
    let cache = Arc::new(
        BlockCache::open(CacheDir::open_exclusive(dir).unwrap(), probe(EngineChoice::Psync).unwrap(), metrics.clone(), config).unwrap(),
    );
    let limits = FetchLimits { max_concurrent_gets: 4, max_get_size: get_blocks * BS as u64 };
    let fetcher = Fetcher::new(client, cache, metrics.clone(), limits);
    let obj = fetcher.entry(&info).await.unwrap().unwrap().obj;
    (fetcher, obj, metrics, body, mem)
}

fn gets(m: &Metrics) -> u64 {
    m.s3_get_requests.load(Ordering::Relaxed)
}

async fn check(pending: Vec<PendingBlock>, blocks: &[u64], body: &[u8]) {
    for (&b, p) in blocks.iter().zip(pending) {
        let start = b as usize * BS;
        assert_eq!(p.wait().await.unwrap(), body[start..(start + BS).min(body.len())], "block {b}");
    }
}

#[tokio::test]
async fn neighbouring_blocks_share_a_get_up_to_the_size_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (f, obj, m, body, _) = setup(dir.path(), 4).await;
    let blocks = [0, 1, 2, 3, 4, 5, 7, 8, 9];
    check(f.load_each(&obj, &blocks), &blocks, &body).await;
    // 0-3 (the limit), 4-5, 7-9 (the last block is short).
    assert_eq!(gets(&m), 3);
    f.drain().await;
    assert!(blocks.iter().all(|&b| obj.is_present(b)) && !obj.is_present(6));
}

#[tokio::test]
async fn blocks_already_cached_are_read_from_disk_and_split_the_get() {
    let dir = tempfile::tempdir().unwrap();
    let (f, obj, m, body, _) = setup(dir.path(), 8).await;
    check(f.load_each(&obj, &[2]), &[2], &body).await;
    f.drain().await;
    let blocks = [0, 1, 2, 3, 4];
    check(f.load_each(&obj, &blocks), &blocks, &body).await;
    // Block 2 from disk; 0-1 and 3-4 in one GET each.
    assert_eq!(gets(&m), 3);
}

#[tokio::test]
async fn prefetch_skips_present_blocks_and_a_load_joins_a_prefetch_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let (f, obj, m, body, _) = setup(dir.path(), 4).await;
    check(f.load_each(&obj, &[5]), &[5], &body).await;
    f.drain().await;
    f.prefetch(&obj, 0..20); // clipped to the object's 10 blocks
    check(f.load_each(&obj, &[1, 6]), &[1, 6], &body).await;
    f.drain().await;
    // 1 for block 5, then 0-3, 4, 6-9.
    assert_eq!(gets(&m), 4);
    assert_eq!(m.prefetch_blocks.load(Ordering::Relaxed), 9);
    assert!(obj.is_complete());
}

#[tokio::test]
async fn a_failed_get_fails_every_block_it_carried() {
    let dir = tempfile::tempdir().unwrap();
    let (f, obj, m, _, mem) = setup(dir.path(), 8).await;
    mem.put("obj", pattern(BS * 10 - 7, 6)); // a new version: If-Match fails
    for p in f.load_each(&obj, &[0, 1, 2]) {
        assert!(matches!(p.wait().await, Err(FetchError::Changed(_))));
    }
    assert_eq!(gets(&m), 1);
    f.drain().await; // returns: no block is left claimed
    assert!((0..3).all(|b| !obj.is_present(b)));
}

#[tokio::test]
async fn two_opens_of_one_small_object_cause_one_get() {
    let dir = tempfile::tempdir().unwrap();
    let (f, _, m, _, mem) = setup(dir.path(), 8).await;
    let info = mem.put("small", pattern(1000, 9));
    let before = gets(&m);
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (f, info) = (f.clone(), info.clone());
            tokio::spawn(async move { f.entry(&info).await.unwrap().unwrap().obj })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap().is_present(0));
    }
    assert_eq!(gets(&m) - before, 1);
    assert!(f.creating.lock().unwrap().is_empty());
}

/// A client whose GETs are counted as they start (by key) but answered only while `open` is
/// true: GETs in flight held still, to see which ones the fetcher lets start.
struct HeldGets {
    inner: Arc<MemoryClient>,
    started: tokio::sync::watch::Sender<Vec<String>>,
    open: tokio::sync::watch::Sender<bool>,
}

impl HeldGets {
    /// `get`, counted as started for `key` now and answered once `open` is true.
    fn held<'a, T: 'a>(&self, key: &str, get: crate::object::BoxFuture<'a, T>) -> crate::object::BoxFuture<'a, T> {
        self.started.send_modify(|s| s.push(key.to_string()));
        let mut open = self.open.subscribe();
        Box::pin(async move {
            let _ = open.wait_for(|o| *o).await;
            get.await
        })
    }
}

impl ObjectClient for HeldGets {
    fn head(&self, key: &str) -> crate::object::BoxFuture<'_, Result<ObjectInfo, ObjectError>> {
        self.inner.head(key)
    }

    fn get_range(&self, key: &str, etag: &str, range: Range<u64>) -> crate::object::BoxFuture<'_, Result<Bytes, ObjectError>> {
        self.held(key, self.inner.get_range(key, etag, range))
    }

    fn object_checksum(&self, key: &str, etag: &str) -> crate::object::BoxFuture<'_, Result<crate::checksum::ObjectChecksum, ObjectError>> {
        self.inner.object_checksum(key, etag)
    }

    fn get_whole(
        &self,
        key: &str,
        etag: &str,
    ) -> crate::object::BoxFuture<'_, Result<(Bytes, crate::checksum::ObjectChecksum), ObjectError>> {
        self.held(key, self.inner.get_whole(key, etag))
    }

    fn list(
        &self,
        prefix: &str,
        token: Option<String>,
        max_keys: Option<i32>,
    ) -> crate::object::BoxFuture<'_, Result<crate::object::ListPage, ObjectError>> {
        self.inner.list(prefix, token, max_keys)
    }

    fn bucket(&self) -> &str {
        self.inner.bucket()
    }
}

/// A fetcher of four GET slots and one-block GETs over `mem`, whose GETs answer while
/// `HeldGets::open` is true (as it is at first).
fn held_fetcher(dir: &std::path::Path, mem: Arc<MemoryClient>) -> (Arc<Fetcher>, Arc<HeldGets>) {
    let held = Arc::new(HeldGets {
        inner: mem,
        started: tokio::sync::watch::Sender::new(Vec::new()),
        open: tokio::sync::watch::Sender::new(true),
    });
    let metrics = Arc::new(Metrics::default());
    let cache = Arc::new(
        BlockCache::open(CacheDir::open_exclusive(dir).unwrap(), probe(EngineChoice::Psync).unwrap(), metrics.clone(), small_blocks())
            .unwrap(),
    );
    let f = Fetcher::new(held.clone(), cache, metrics, FetchLimits { max_concurrent_gets: 4, max_get_size: BS as u64 });
    (f, held)
}

#[tokio::test]
async fn an_open_fetching_a_small_object_whole_is_seen_until_it_ends() {
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemoryClient::new("b"));
    let body = pattern(1000, 3);
    let info = mem.put("small", body.clone());
    let (f, held) = held_fetcher(dir.path(), mem);
    held.open.send_replace(false);
    assert!(!f.creating(&info));
    let opening = tokio::spawn({
        let (f, info) = (f.clone(), info.clone());
        async move { f.entry(&info).await.unwrap().unwrap() }
    });
    held.started.subscribe().wait_for(|s| s.iter().any(|k| k == "small")).await.unwrap();
    assert!(f.creating(&info), "a hint worker would wait behind this open instead of moving on");
    held.open.send_replace(true);
    let entry = opening.await.unwrap();
    assert_eq!(entry.fresh.as_deref(), Some(&body[..]));
    assert!(!f.creating(&info));
}

#[tokio::test]
async fn a_reader_s_miss_finds_a_get_slot_while_read_ahead_holds_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemoryClient::new("b"));
    let ahead_info = mem.put("ahead", pattern(BS * 10, 1));
    let other_body = pattern(BS * 2, 2);
    let other_info = mem.put("other", other_body.clone());
    // Four GETs at once, of one block each: read-ahead may hold three.
    let (f, held) = held_fetcher(dir.path(), mem);
    assert_eq!(prefetch_slots(4), 3);
    let ahead = f.entry(&ahead_info).await.unwrap().unwrap().obj;
    let other = f.entry(&other_info).await.unwrap().unwrap().obj;
    held.open.send_replace(false);
    held.started.send_replace(Vec::new());

    f.prefetch(&ahead, 0..10); // ten GETs of one block
    let mut started = held.started.subscribe();
    started.wait_for(|s| s.len() >= 3).await.unwrap();
    let pending = f.load_each(&other, &[0]);
    let reader_started = started.wait_for(|s| s.iter().any(|k| k == "other"));
    tokio::time::timeout(std::time::Duration::from_secs(10), reader_started)
        .await
        .expect("the reader's GET waited behind read-ahead for a slot")
        .unwrap();
    let ahead_started = held.started.borrow().iter().filter(|k| *k == "ahead").count();
    assert_eq!(ahead_started, 3, "read-ahead holds three of the four slots, not more");

    held.open.send_replace(true);
    check(pending, &[0], &other_body).await;
    f.drain().await;
    assert!(ahead.is_complete());
}
