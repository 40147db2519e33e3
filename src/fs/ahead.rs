//! Reading a directory's files into memory ahead of their opens.
//!
//! A small file's open that finds its bytes on disk makes its reader wait for the disk: after a
//! remount the open reads and hashes the block before it answers (`fs/open.rs`), and otherwise
//! the reader's first read through passthrough goes to the disk. A training job
//! reads its dataset in an order the mount is not told (unless it writes hints,
//! [`crate::hints`]), but it reads whole directories. So such an open starts a pass over the
//! directory's other cached files: each is read into the page cache and its blocks' blake3
//! checked on the way (as the open would have), a few files at a time so that the readers' own
//! disk reads do not queue behind the pass's; the opens that follow find their files checked
//! and in memory, and answer at once.
//!
//! The passes read what the epoch is about to read, in their own order. For those bytes to still
//! be in memory when their readers come, the passes together stay within a budget of bytes read
//! ahead and not yet opened; an open of a file a pass read gives its bytes back, so a pass over
//! files nobody opens stops at the budget. One pass per directory runs at a time; another may
//! start after it ends, when an open finds its bytes on disk again.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::{HoardFs, READ_AT_OPEN_MAX};
use crate::meta::DirListing;
use crate::metrics::Metrics;
use crate::object::ObjectInfo;
use crate::progress::Progress;

/// Bytes read ahead of the readers' opens, by default: the page cache the passes may fill with
/// bytes not yet opened. 1 GiB: a few seconds of an epoch's reading, and a small part of a
/// training node's memory.
pub const DEFAULT_DIR_READ_AHEAD: u64 = 1 << 30;

/// Largest file a pass reads ahead (and whose open can start one): for larger files the wait
/// for the first bytes is a small part of reading them, and the kernel's own read-ahead follows
/// a sequential reader.
pub const DIR_READ_AHEAD_FILE_MAX: u64 = 8 << 20;

/// Whether a file of `size` bytes is one a pass reads ahead (and whose open can start one).
/// Files up to [`READ_AT_OPEN_MAX`] are read and checked by their own open on the FUSE thread
/// with one `pread`, and at that size a pass's own work per file (an entry open, a task, a hop to
/// the ring) costs more than the disk wait it saves on a busy machine: 250,000 × 16 KiB in 500
/// directories, `benches/ab.py`, first epoch after a remount 0.75x raw with passes against
/// 0.86-0.95x without, warm 0.77x against 0.85-0.87x.
pub(super) fn sized_for(size: u64) -> bool {
    size > READ_AT_OPEN_MAX && size <= DIR_READ_AHEAD_FILE_MAX
}

/// Files read ahead at once, over all passes: enough to keep ahead of a job's readers, few
/// enough that a reader's own disk read does not queue behind many of the pass's. (Asking the
/// kernel to read a whole directory at once, `POSIX_FADV_WILLNEED`, put up to a second of
/// queued reads in front of every reader's open: 3,000 × 128 KiB after a remount, p99 open
/// 30 ms, and slower than no pass.)
const FILES_IN_FLIGHT: usize = 8;

/// A pass asked for: the directory, and the file whose open asked (which reads itself).
struct Pass {
    dir: u64,
    opened: u64,
}

/// Listing entries a pass takes up at a time.
const LISTING_CHUNK: usize = 1024;

/// The passes' bookkeeping: which directories are being passed, and how far ahead they are.
pub struct DirReadAhead {
    budget: u64,
    running: Mutex<HashSet<u64>>,
    /// Files a pass read ahead and no reader has opened since, by inode, with their sizes.
    unopened: Mutex<HashMap<u64, u64>>,
    /// Whether `unopened` has any: every open asks, and most find none (no pass, or files
    /// under 64 KiB), so they need not share its lock.
    any_unopened: AtomicBool,
    /// Bytes the passes took up.
    taken: AtomicU64,
    /// Bytes given back: read ahead and then opened, or taken and not read.
    given_back: Progress,
    /// Files being read, over all passes.
    in_flight: Arc<Semaphore>,
    requests: mpsc::UnboundedSender<Pass>,
    /// Passes asked for before the worker started, taken by [`HoardFs::spawn_dir_read_ahead`].
    queued: Mutex<Option<mpsc::UnboundedReceiver<Pass>>>,
}

impl DirReadAhead {
    /// Bookkeeping for passes at most `budget` bytes ahead; 0 turns them off.
    pub fn new(budget: u64) -> Self {
        let (requests, queued) = mpsc::unbounded_channel();
        Self {
            budget,
            running: Mutex::default(),
            unopened: Mutex::default(),
            any_unopened: AtomicBool::new(false),
            taken: AtomicU64::new(0),
            given_back: Progress::default(),
            in_flight: Arc::new(Semaphore::new(FILES_IN_FLIGHT)),
            requests,
            queued: Mutex::new(Some(queued)),
        }
    }

    /// Whether passes run at all.
    pub(super) fn enabled(&self) -> bool {
        self.budget > 0
    }

    /// Asks for a pass over directory `dir` for the open of its file `opened`; `true` if none
    /// was running.
    fn request(&self, dir: u64, opened: u64) -> bool {
        self.enabled() && self.running.lock().unwrap().insert(dir) && self.requests.send(Pass { dir, opened }).is_ok()
    }

    /// A reader opened file `ino`: if a pass read it, its bytes leave the budget.
    pub(super) fn opened(&self, ino: u64) {
        if !self.any_unopened.load(Ordering::Acquire) {
            return;
        }
        let mut unopened = self.unopened.lock().unwrap();
        if let Some(bytes) = unopened.remove(&ino) {
            self.any_unopened.store(!unopened.is_empty(), Ordering::Release);
            self.given_back.add(bytes);
        }
    }

    /// Waits until `bytes` more keep the passes within the budget, and takes them.
    async fn take(&self, bytes: u64) {
        let budget = self.budget;
        self.given_back.wait_for(|back| (self.taken.load(Ordering::SeqCst) < back + budget).then_some(())).await;
        self.taken.fetch_add(bytes, Ordering::SeqCst);
    }

    /// The bytes of file `ino` are in memory, read by a pass, until a reader opens it.
    fn read(&self, ino: u64, bytes: u64) {
        let mut unopened = self.unopened.lock().unwrap();
        self.any_unopened.store(true, Ordering::Release);
        if let Some(replaced) = unopened.insert(ino, bytes) {
            self.given_back.add(replaced); // read by an earlier pass too, and not opened since
        }
    }
}

impl HoardFs {
    /// Starts the task that runs the passes asked for. Without it (unit tests of the file
    /// system), requests wait unanswered.
    pub fn spawn_dir_read_ahead(self: &Arc<Self>) {
        let Some(mut requests) = self.ahead.queued.lock().unwrap().take() else { return };
        let fs = Arc::clone(self);
        tokio::spawn(async move {
            while let Some(pass) = requests.recv().await {
                tokio::spawn(Arc::clone(&fs).read_directory_ahead(pass.dir, pass.opened));
            }
        });
    }

    /// Asks for a pass over the directory of file `ino`, whose open found its bytes on disk.
    pub(super) fn read_ahead_of(&self, ino: u64, info: &ObjectInfo) {
        if !sized_for(info.size) {
            return;
        }
        if let Some(dir) = self.meta.parent_of(&info.key) {
            if self.ahead.request(dir, ino) {
                tracing::debug!(dir, key = %info.key, "reading the directory ahead of its readers");
            }
        }
    }

    /// Reads every cached, complete file of directory `dir` that a pass is for and whose bytes
    /// are not in memory into the page cache, checking it on the way; all but file `opened`,
    /// whose open does.
    #[tracing::instrument(level = "debug", skip(self))]
    async fn read_directory_ahead(self: Arc<Self>, dir: u64, opened: u64) {
        match self.meta.readdir(dir).await {
            Ok(listing) => self.pass(&listing, opened).await,
            Err(e) => tracing::debug!("no read-ahead of directory {dir}: {e}"),
        }
        self.ahead.running.lock().unwrap().remove(&dir);
    }

    async fn pass(self: &Arc<Self>, listing: &DirListing, opened: u64) {
        let mut running = tokio::task::JoinSet::new();
        // A chunk of the listing at a time: a directory of a million files is a million
        // ObjectInfos, which the pass need not hold at once.
        for from in (0..listing.len()).step_by(LISTING_CHUNK) {
            for (ino, info) in self.meta.files_of(listing, from, LISTING_CHUNK) {
                if ino == opened || !sized_for(info.size) || !self.cache.holds(&self.bucket, &info) {
                    continue;
                }
                self.ahead.take(info.size).await;
                let Ok(permit) = Arc::clone(&self.ahead.in_flight).acquire_owned().await else { return }; // never closed
                running.spawn(Arc::clone(self).read_one_ahead(ino, info, permit));
                while running.try_join_next().is_some() {}
            }
        }
        while running.join_next().await.is_some() {}
        Metrics::add(&self.verifier.metrics().dir_read_ahead_passes, 1);
    }

    /// Reads file `ino` ahead, holding one of the passes' places in flight, and accounts for it.
    async fn read_one_ahead(self: Arc<Self>, ino: u64, info: ObjectInfo, _permit: OwnedSemaphorePermit) {
        if self.read_file_ahead(&info).await {
            self.ahead.read(ino, info.size);
            Metrics::add(&self.verifier.metrics().dir_read_ahead_files, 1);
        } else {
            self.ahead.given_back.add(info.size);
        }
    }

    /// Reads one cached file into memory and checks it, unless it is there or its open would
    /// not hand it to the kernel; whether it did. (The same on a blocking thread, with `pread`s
    /// and one hop per file, was no faster.)
    async fn read_file_ahead(&self, info: &ObjectInfo) -> bool {
        let Ok(Some(obj)) = self.fetcher.open_existing(&self.bucket, info).await else { return false };
        if !self.starts_cold(&obj) {
            return false;
        }
        self.cache.read_ahead(&obj).await;
        true
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    use super::*;

    fn pending(f: std::pin::Pin<&mut impl Future<Output = ()>>) -> bool {
        f.poll(&mut Context::from_waker(Waker::noop())) == Poll::Pending
    }

    #[tokio::test]
    async fn passes_stop_at_the_budget_until_readers_open_what_they_read() {
        let ahead = DirReadAhead::new(100);
        ahead.take(60).await;
        ahead.read(1, 60);
        ahead.take(60).await; // 60 taken, under 100: allowed, and now over
        ahead.read(2, 60);
        let third = ahead.take(10);
        tokio::pin!(third);
        assert!(pending(third.as_mut()), "120 bytes read ahead and none opened: over the budget");
        ahead.opened(3);
        assert!(pending(third.as_mut()), "a file no pass read gives nothing back");
        ahead.opened(1);
        third.await; // 120 taken, 60 given back: under the budget again
        assert_eq!(ahead.taken.load(Ordering::SeqCst), 130);
        ahead.opened(1);
        assert_eq!(ahead.given_back.get(), 60, "a file's bytes come back once");
    }

    #[test]
    fn one_pass_per_directory_at_a_time_and_none_when_off() {
        let ahead = DirReadAhead::new(1);
        assert!(ahead.request(7, 1));
        assert!(!ahead.request(7, 2), "a pass over 7 is running");
        assert!(ahead.request(8, 3));
        ahead.running.lock().unwrap().remove(&7); // its pass ended
        assert!(ahead.request(7, 4));
        let queued = ahead.queued.lock().unwrap().take().unwrap();
        assert_eq!(queued.len(), 3);
        assert!(!DirReadAhead::new(0).request(7, 1), "a budget of 0 turns passes off");
    }
}
