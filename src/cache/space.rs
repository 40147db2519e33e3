//! The cache's space: the size limit, what eviction picks, and deleting an entry (its slot,
//! then its data file, then whoever holds that file beyond the cache).

use super::{BlockCache, Metrics, ObjectId, State};
use std::time::Instant;

impl BlockCache {
    /// Deletes entry `id` unless it is in use; returns the bytes freed.
    pub fn remove(&self, id: ObjectId) -> Option<u64> {
        let mut state = self.state.lock().unwrap();
        if Self::in_use(&state, &id) {
            return None;
        }
        let bytes = state.entries.get(&id).map_or(0, |r| r.bytes);
        self.forget(&mut state, id);
        Some(bytes)
    }

    /// Whether anyone but the warm set holds entry `id` (an open handle, a fetch).
    pub(super) fn in_use(state: &State, id: &ObjectId) -> bool {
        let warm = usize::from(state.warm.contains(id));
        state.open.get(id).is_some_and(|w| w.strong_count() > warm)
    }

    /// Deletes an entry's files and accounting (it must not be in use).
    pub(super) fn forget(&self, state: &mut State, id: ObjectId) {
        self.spoil_checkpoint(state);
        state.warm.pop(&id); // drops the entry and its slot handle...
        state.open.remove(&id);
        if let Some(record) = state.entries.remove(&id) {
            state.total -= record.bytes;
            self.catalog.free(record.at); // ...before the slot is freed
        }
        // The slot went first: without it the data file is an orphan that the next scan deletes.
        let data = self.dir.data_path(&id);
        let _ = std::fs::remove_file(&data);
        if let Some(listener) = self.on_delete.get() {
            listener(&data);
        }
    }

    pub(super) fn reserve(&self, id: ObjectId, cost: u64) -> bool {
        let mut state = self.state.lock().unwrap();
        if let Some(until) = state.full_until {
            if Instant::now() < until {
                return false;
            }
            state.full_until = None;
        }
        if let Some(limit) = self.config.max_size {
            while state.total + cost > limit {
                let victim = state.entries.oldest_first().map(|r| r.id()).find(|v| *v != id && !Self::in_use(&state, v));
                let Some(victim) = victim else { return false };
                let bytes = state.entries.get(&victim).map_or(0, |r| r.bytes);
                self.forget(&mut state, victim);
                Metrics::add(&self.metrics.evicted_objects, 1);
                Metrics::add(&self.metrics.evicted_bytes, bytes);
            }
        }
        self.spoil_checkpoint(&mut state);
        state.total += cost;
        if let Some(record) = state.entries.get_mut(&id) {
            record.bytes += cost;
        }
        true
    }

    pub(super) fn release(&self, id: ObjectId, cost: u64) {
        let mut state = self.state.lock().unwrap();
        self.spoil_checkpoint(&mut state);
        state.total -= cost;
        if let Some(record) = state.entries.get_mut(&id) {
            record.bytes -= cost;
        }
    }
}
