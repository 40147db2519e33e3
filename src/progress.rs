//! A count the readers advance and background work waits on.
//!
//! Work done ahead of a job's readers (hinted files read into memory, a directory checked after
//! a remount) must not run arbitrarily far ahead of them, or what it read is evicted before
//! use. Such work waits on a [`Progress`] the readers' opens advance. Opens are the hot path of
//! a small-file epoch, so an advance costs one atomic add, and a wake-up only while someone
//! waits.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::Notify;

/// A monotonic count (resettable) with waiters.
#[derive(Default)]
pub struct Progress {
    count: AtomicU64,
    advanced: Notify,
    /// Tasks inside [`Self::wait_for`]: an advance wakes them only if there are any.
    waiting: AtomicUsize,
}

impl Progress {
    /// The count now.
    pub fn get(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// Adds `n` and wakes the waiters, if any, to look again.
    pub fn add(&self, n: u64) {
        // SeqCst here and in `wait_for`: either the waiter sees this advance, or this advance
        // sees the waiter (which registered for the wake-up before looking).
        self.count.fetch_add(n, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.advanced.notify_waiters();
        }
    }

    /// Sets the count back to 0 and wakes every waiter (whose condition may now be void).
    pub fn reset(&self) {
        self.count.store(0, Ordering::SeqCst);
        self.advanced.notify_waiters();
    }

    /// Waits until `check` (given the count) returns `Some`, and returns that. `check` runs
    /// again after every advance or reset, and must be cheap.
    pub async fn wait_for<T>(&self, mut check: impl FnMut(u64) -> Option<T>) -> T {
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        loop {
            let notified = self.advanced.notified();
            tokio::pin!(notified);
            notified.as_mut().enable(); // registered before the check: no advance is missed
            if let Some(done) = check(self.get()) {
                return done;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn a_waiter_returns_at_the_advance_that_satisfies_it() {
        let p = Arc::new(Progress::default());
        let waiter = tokio::spawn({
            let p = p.clone();
            async move { p.wait_for(|n| (n >= 3).then_some(n)).await }
        });
        // The waiter is registered before it looks, so advances made at any point reach it.
        for _ in 0..3 {
            tokio::task::yield_now().await;
            p.add(1);
        }
        assert_eq!(waiter.await.unwrap(), 3);
        assert_eq!(p.waiting.load(Ordering::SeqCst), 0, "a waiter that returned is no longer counted");
    }

    #[tokio::test]
    async fn a_reset_wakes_a_waiter_whose_condition_depends_on_it() {
        let p = Arc::new(Progress::default());
        p.add(5);
        let waiter = tokio::spawn({
            let p = p.clone();
            async move { p.wait_for(|n| (n == 0).then_some("reset")).await }
        });
        while p.waiting.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        p.reset();
        assert_eq!(waiter.await.unwrap(), "reset");
    }

    #[tokio::test]
    async fn an_advance_without_waiters_wakes_nobody_and_counts() {
        let p = Progress::default();
        p.add(2);
        p.add(3);
        assert_eq!(p.get(), 5);
        assert_eq!(p.wait_for(|n| (n == 5).then_some(())).await, ());
    }
}
