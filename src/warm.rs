//! `hoardfs cache warm`: fill the cache for a prefix (or an ordered list of keys) before a job
//! starts, at network speed, verified exactly like a mount's fills.
//!
//! Objects are taken `parallel_objects` at a time; within each, every missing block is loaded at
//! once and the fetcher's GET limit bounds the total. Blocks are claimed only after they are
//! written, so an interrupted warm leaves a consistent cache and running it again resumes: present
//! blocks are not fetched again.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::checksum::Algorithm;
use crate::fetch::Fetcher;
use crate::metrics::Metrics;
use crate::object::{ObjectClient, ObjectError, ObjectInfo};
use crate::verify::{Verifier, VerifyPolicy};

/// What `cache warm` did.
#[derive(Debug, Default, Serialize)]
pub struct WarmReport {
    /// Objects found.
    pub objects: usize,
    /// Of those, already complete before this run.
    pub already_cached: usize,
    /// Bytes of all objects found.
    pub bytes_total: u64,
    /// Bytes fetched by this run.
    pub bytes_fetched: u64,
    /// Objects that could not be warmed, with why.
    pub failed: Vec<(String, String)>,
}

/// Every object under `prefix`, walking sub-prefixes breadth first.
pub async fn list_all(client: &dyn ObjectClient, prefix: &str) -> Result<Vec<ObjectInfo>, ObjectError> {
    let mut out = Vec::new();
    let mut queue = VecDeque::from([prefix.to_string()]);
    while let Some(p) = queue.pop_front() {
        let mut token = None;
        loop {
            let page = client.list(&p, token, None).await?;
            out.extend(page.objects.into_iter().filter(|o| !o.key.ends_with('/')));
            queue.extend(page.prefixes);
            token = page.next_token;
            if token.is_none() {
                break;
            }
        }
    }
    Ok(out)
}

/// Orders `objects` by an access-order hint: keys listed in `order` first, in that order (a
/// training sampler's order), the rest after in listing order. Keys in `order` that do not exist
/// are reported back.
pub fn apply_order(objects: Vec<ObjectInfo>, order: &[String]) -> (Vec<ObjectInfo>, Vec<String>) {
    let mut by_key: std::collections::HashMap<String, ObjectInfo> = objects.iter().map(|o| (o.key.clone(), o.clone())).collect();
    let mut out = Vec::with_capacity(objects.len());
    let mut missing = Vec::new();
    for key in order {
        match by_key.remove(key) {
            Some(o) => out.push(o),
            None => missing.push(key.clone()),
        }
    }
    out.extend(objects.into_iter().filter(|o| by_key.contains_key(&o.key)));
    (out, missing)
}

/// Warms `objects` through `fetcher` (into its cache); `progress` is updated with bytes done.
pub async fn warm(
    fetcher: Arc<Fetcher>,
    metrics: Arc<Metrics>,
    policy: VerifyPolicy,
    objects: Vec<ObjectInfo>,
    parallel_objects: usize,
    progress: indicatif::ProgressBar,
) -> WarmReport {
    let verifier = Verifier::new(fetcher.clone(), metrics.clone(), policy);
    let mut report = WarmReport { objects: objects.len(), bytes_total: objects.iter().map(|o| o.size).sum(), ..Default::default() };
    progress.set_length(report.bytes_total);
    let fetched_before = metrics.s3_get_bytes.load(Ordering::Relaxed);
    let ticker = {
        let (metrics, progress) = (metrics.clone(), progress.clone());
        tokio::spawn(async move {
            loop {
                progress.set_position(
                    metrics.s3_get_bytes.load(Ordering::Relaxed) - fetched_before + metrics.cache_bytes_read.load(Ordering::Relaxed),
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let mut tasks = tokio::task::JoinSet::new();
    let mut queue = objects.into_iter();
    loop {
        while tasks.len() < parallel_objects.max(1) {
            let Some(info) = queue.next() else { break };
            let (fetcher, verifier) = (fetcher.clone(), verifier.clone());
            tasks.spawn(async move {
                let key = info.key.clone();
                (key, warm_one(&fetcher, &verifier, info).await)
            });
        }
        let Some(done) = tasks.join_next().await else { break };
        match done {
            Ok((_, Ok(true))) => report.already_cached += 1,
            Ok((_, Ok(false))) => {}
            Ok((key, Err(e))) => report.failed.push((key, e)),
            Err(e) => report.failed.push(("?".into(), e.to_string())),
        }
        progress.set_message(format!("{} objects left", queue.len() + tasks.len()));
    }
    fetcher.drain().await;
    if let Some(tier) = fetcher.shared_tier() {
        tier.drain(Duration::from_secs(60)).await;
    }
    ticker.abort();
    report.bytes_fetched = metrics.s3_get_bytes.load(Ordering::Relaxed) - fetched_before;
    progress.finish_and_clear();
    report
}

/// Fills one object, verified as a mount would; `Ok(true)` if it was already complete. Also
/// used by a mount's prefetch hints.
pub(crate) async fn warm_one(fetcher: &Arc<Fetcher>, verifier: &Arc<Verifier>, info: ObjectInfo) -> Result<bool, String> {
    let entry = verifier.entry(&info).await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
    let obj = entry.obj;
    if obj.is_complete() && verifier.servable(&obj) {
        return Ok(entry.fresh.is_none());
    }
    let h = obj.header();
    if h.checksum.algorithm != Algorithm::None {
        // Verification loads every block of each unit, in parallel, and checks it.
        for u in 0..h.checksum.units(h.object_size).len() {
            verifier.ensure(&obj, u).await.map_err(|e| e.to_string())?;
        }
        return Ok(false);
    }
    let missing: Vec<u64> = (0..obj.block_count()).filter(|&b| !obj.is_present(b)).collect();
    for pending in fetcher.load_each(&obj, &missing) {
        pending.wait().await.map_err(|e| e.to_string())?;
    }
    Ok(false)
}
