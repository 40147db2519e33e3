//! Puts to the shared tier: a bounded queue of (object, block) and a few tasks that read each
//! block back from the cache (blake3-checked) and upload it once. Memory is bounded by the
//! queue (references, not bytes) and the tasks (one block each); a full queue drops the offer,
//! a failed put is dropped, and nothing is retried.

use std::ops::Range;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, Mutex as AsyncMutex};

use super::SharedTier;
use crate::cache::{BlockCache, CachedObject};
use crate::fetch::Fetcher;
use crate::metrics::Metrics;

/// Blocks waiting to be put, at most.
const QUEUE: usize = 4096;
/// Puts in flight, at most (each holds one block in memory).
const UPLOADERS: usize = 4;

type Job = (Arc<CachedObject>, u64);

/// The put queue of one shared tier.
pub struct Uploads {
    queue: std::sync::Mutex<Option<mpsc::Sender<Job>>>,
    workers: AsyncMutex<tokio::task::JoinSet<()>>,
    tier: Weak<SharedTier>,
}

impl Uploads {
    /// Starts the upload tasks on the current runtime.
    pub(super) fn start(tier: Weak<SharedTier>, fetcher: Weak<Fetcher>, cache: Arc<BlockCache>) -> Self {
        let (tx, rx) = mpsc::channel::<Job>(QUEUE);
        let rx = Arc::new(AsyncMutex::new(rx));
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..UPLOADERS {
            let (rx, cache, tier, fetcher) = (rx.clone(), cache.clone(), tier.clone(), fetcher.clone());
            workers.spawn(async move {
                loop {
                    let job = rx.lock().await.recv().await;
                    let Some((obj, b)) = job else { return };
                    let (Some(tier), Some(fetcher)) = (tier.upgrade(), fetcher.upgrade()) else { return };
                    // A load answers its readers before it writes: wait for the write.
                    fetcher.settle(&obj, b..b + 1).await;
                    put(&tier, &cache, &obj, b).await;
                }
            });
        }
        Self { queue: std::sync::Mutex::new(Some(tx)), workers: AsyncMutex::new(workers), tier }
    }

    /// Queues blocks `blocks` of `obj`; those that do not fit are dropped (counted).
    pub(super) fn offer(&self, obj: &Arc<CachedObject>, blocks: Range<u64>) {
        let Some(tier) = self.tier.upgrade() else { return };
        let queue = self.queue.lock().unwrap();
        for b in blocks {
            let queued = queue.as_ref().is_some_and(|q| q.try_send((obj.clone(), b)).is_ok());
            if !queued {
                Metrics::add(&tier.metrics.shared_put_failures, 1);
            }
        }
    }

    /// Closes the queue and waits up to `limit` for the puts already queued.
    pub(super) async fn drain(&self, limit: Duration) {
        drop(self.queue.lock().unwrap().take());
        let mut workers = self.workers.lock().await;
        let all_done = async { while workers.join_next().await.is_some() {} };
        if tokio::time::timeout(limit, all_done).await.is_err() {
            tracing::warn!("shared tier: puts still queued after {limit:?} were dropped at unmount");
        }
    }
}

async fn put(tier: &SharedTier, cache: &BlockCache, obj: &Arc<CachedObject>, b: u64) {
    let h = obj.header();
    // The block was verified with its unit; reading it back re-checks its blake3 on the way.
    let Some(bytes) = cache.read_verified(obj, b).await else {
        Metrics::add(&tier.metrics.shared_put_failures, 1);
        return;
    };
    let (key, object) = tier.object(h, b, bytes);
    match tier.store.put(&key, object).await {
        Ok(()) => Metrics::add(&tier.metrics.shared_puts, 1),
        Err(e) => {
            Metrics::add(&tier.metrics.shared_put_failures, 1);
            tracing::debug!(error = %e, key, "shared tier put failed; dropped");
        }
    }
}
