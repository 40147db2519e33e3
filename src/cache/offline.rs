//! What the cache can answer without S3: whether it holds anything under a prefix, and the
//! newest version it holds of a key. An offline mount (S3 unreachable) comes up and looks up
//! paths from these.

use std::sync::Arc;

use super::{recovery, version_key, BlockCache};
use crate::object::ObjectInfo;

impl BlockCache {
    /// Whether the cache holds any object version of `bucket` whose key starts with `prefix`:
    /// what an offline mount needs to come up without S3.
    pub fn holds_prefix(&self, bucket: &str, prefix: &str) -> bool {
        let start = version_key(bucket, prefix);
        let keys = self.offline_keys();
        keys.get(keys.partition_point(|k| **k < *start)).is_some_and(|k| k.starts_with(&start))
    }

    /// Every cached `bucket\0key`, sorted: read from the catalog at the first offline lookup of a
    /// directory (S3 unreachable) and again after entries came or went, so a mount that never
    /// goes offline holds no key strings.
    fn offline_keys(&self) -> Arc<Vec<Box<str>>> {
        let generation = {
            let state = self.state.lock().unwrap();
            match &state.offline_keys {
                Some((g, keys)) if *g == state.entries.generation() => return keys.clone(),
                _ => state.entries.generation(),
            }
        };
        let mut keys: Vec<Box<str>> = match recovery::read_keys(&self.dir) {
            Ok(keys) => keys.into_iter().map(|(_, vkey)| vkey.into_boxed_str()).collect(),
            Err(e) => {
                tracing::warn!("reading the cache's keys for an offline lookup: {e}");
                Vec::new()
            }
        };
        keys.sort_unstable();
        keys.dedup();
        let keys = Arc::new(keys);
        self.state.lock().unwrap().offline_keys = Some((generation, keys.clone()));
        keys
    }

    /// What the cache knows of `key` without S3: the newest version it holds (from that entry's
    /// index header), for lookups by path while S3 cannot be reached.
    pub fn cached_info(&self, bucket: &str, key: &str) -> Option<ObjectInfo> {
        let id = {
            let state = self.state.lock().unwrap();
            state.entries.newest_of_key(state.entries.key_hash(version_key(bucket, key).as_bytes()))?.id()
        };
        let snap = self.snapshot(&id).ok()?;
        (snap.header.bucket == bucket && snap.header.key == key).then(|| snap.header.object_info())
    }
}
