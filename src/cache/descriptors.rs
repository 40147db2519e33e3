//! Running out of file descriptors (`ulimit -n`): every open of a cache file goes through
//! [`BlockCache::retrying_on_emfile`] or [`BlockCache::shedding_on_emfile`], which close idle
//! entries and try once more, so an epoch over more files than the limit keeps its cache.

use std::sync::Arc;

use super::index::IndexError;
use super::{BlockCache, ObjectId, State, SHED_ON_EMFILE};

/// Errors that may mean "out of descriptors".
pub(super) trait ExhaustsFds {
    fn exhausts_fds(&self) -> bool;
}

impl ExhaustsFds for std::io::Error {
    fn exhausts_fds(&self) -> bool {
        crate::limits::is_fd_exhaustion(self)
    }
}

impl ExhaustsFds for IndexError {
    fn exhausts_fds(&self) -> bool {
        matches!(self, IndexError::Io { source, .. } if crate::limits::is_fd_exhaustion(source))
    }
}

impl BlockCache {
    /// Runs `open` without the lock; if the process is out of descriptors, sheds idle entries
    /// under the lock and tries again there (see [`Self::shedding_on_emfile`]).
    pub(super) fn retrying_on_emfile<T, E: ExhaustsFds>(&self, mut open: impl FnMut() -> Result<T, E>) -> Result<T, E> {
        match open() {
            Err(e) if e.exhausts_fds() => Self::shedding_on_emfile(&mut self.state.lock().unwrap(), open),
            other => other,
        }
    }

    /// Runs `open`; if the process is out of descriptors, closes up to [`SHED_ON_EMFILE`] idle
    /// open entries (least recently used first) and tries once more. The error, if it stays, is
    /// the caller's to report: running out of descriptors never deletes anything.
    pub(super) fn shedding_on_emfile<T, E: ExhaustsFds>(state: &mut State, mut open: impl FnMut() -> Result<T, E>) -> Result<T, E> {
        match open() {
            Err(e) if e.exhausts_fds() => {
                let idle: Vec<ObjectId> = state
                    .warm
                    .iter()
                    .rev()
                    .filter(|(id, obj)| Arc::strong_count(obj) == 1 && !Self::in_use(state, id))
                    .map(|(id, _)| *id)
                    .take(SHED_ON_EMFILE)
                    .collect();
                tracing::warn!("out of file descriptors; closing {} idle cache entries and retrying", idle.len());
                for id in idle {
                    if let Some(obj) = state.warm.pop(&id) {
                        state.leaving_memory(&obj);
                    }
                }
                open()
            }
            other => other,
        }
    }
}
