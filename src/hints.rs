//! Access-order hints: a training job writes the paths it will read next (its sampler's order)
//! to the control file [`CONTROL_NAME`] in the mount's root, and the mount fetches them ahead,
//! in that order, a bounded number of files at a time. A cold or partly cached epoch of small
//! files then runs at network throughput instead of one GET round trip per file.
//!
//! Protocol: one path per line, relative to the mount's root (a leading `/` or the mount point
//! itself is stripped). Opening the file with truncation (`open(path, "w")`) drops hints not yet
//! started, so each epoch's order replaces the last; appending (`"a"`) queues behind them. Writes
//! return at once; unknown paths are counted and logged, never an error to the writer.
//!
//! A hinted file the cache already holds needs no GET, only its bytes in the page cache before
//! the reader opens it. Workers take such a file up once the reader (counted by its opens since
//! the list began) is within [`LOOKAHEAD_FILES`] of it, so an epoch larger than memory does not
//! read ahead what would be evicted before use; files the cache lacks are fetched at once.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::fs::HoardFs;
use crate::metrics::Metrics;
use crate::progress::Progress;

/// Name of the control file in the mount's root. It is not listed by `readdir`, and it hides an
/// S3 object of the same name at the root.
pub const CONTROL_NAME: &str = ".hoardfs-prefetch";

/// Inode of the control file: far above any inode the metadata layer hands out.
pub const CONTROL_INO: u64 = u64::MAX - 1;

/// Most paths waiting at once (about 100 MB of paths at worst); writes beyond it fail with
/// ENOSPC so a runaway writer cannot grow the daemon without bound.
pub const MAX_QUEUED: usize = 1_000_000;

/// Files fetched ahead at once, by default (and objects at once by `cache warm`). A cold small
/// file costs one GET round trip, so read-ahead of small files is as fast as it has files in
/// flight, and it must have more than the job has readers to get ahead of them at all: with as
/// many, workers and readers move through the list in step. 4,000 × 16 KiB with every GET answered 20 ms late and 8 readers
/// (docs/DESIGN.md, "Hint workers ahead of the readers"): 8 direct GETs at a time 347 files/s;
/// hinted, 8 workers 353, 16 workers 692, 32 workers 1,327. A worker holds one small object
/// (one block) at a time; a large one's GETs share `--max-concurrent-gets`.
pub const DEFAULT_PARALLEL_FILES: usize = 32;

/// How many files ahead of the reader a cached file's bytes are read into the page cache.
/// Measured (3,000 x 128 KiB, `benches/epochs.py --systems hints`): enough to keep the reader
/// from waiting on the disk; with [`crate::fs::HINT_READAHEAD`] it bounds that read-ahead to
/// 256 MiB.
pub const LOOKAHEAD_FILES: u64 = 256;

/// One hinted path and where it stands in its list.
struct Hint {
    path: String,
    /// Its position in the list (0 for the first path written after the list was last replaced).
    seq: u64,
    /// The list it belongs to: replacing the list (a truncating open) starts a new one.
    list: u64,
}

/// The paths waiting, and how many were taken since the list began.
#[derive(Default)]
struct Pending {
    paths: VecDeque<String>,
    taken: u64,
    list: u64,
}

/// The queue of hinted paths and the writers filling it.
pub struct HintQueue {
    queue: Mutex<Pending>,
    wake: Notify,
    /// Files the job opened since the list began: where its reader is in the list. The FUSE
    /// threads' opens advance it without sharing a lock.
    opened: Progress,
    /// Partial last line of each open writer, completed by its next write or its close.
    writers: Mutex<HashMap<u64, Vec<u8>>>,
    next_fh: AtomicU64,
    /// Prefix stripped from absolute paths: the mount point, with a trailing `/`.
    mountpoint: String,
    metrics: Arc<Metrics>,
}

/// Why a write to the control file was refused.
#[derive(Debug, thiserror::Error)]
pub enum HintError {
    /// More than [`MAX_QUEUED`] paths waiting.
    #[error("the prefetch queue is full ({MAX_QUEUED} paths); wait for it to drain or truncate the control file")]
    Full,
    /// A write to a handle that was not opened.
    #[error("unknown control file handle")]
    BadHandle,
}

impl HintQueue {
    /// An empty queue for the mount at `mountpoint`.
    pub fn new(mountpoint: &std::path::Path, metrics: Arc<Metrics>) -> Arc<Self> {
        let mut mountpoint = mountpoint.to_string_lossy().into_owned();
        if !mountpoint.ends_with('/') {
            mountpoint.push('/');
        }
        Arc::new(Self {
            queue: Mutex::default(),
            wake: Notify::new(),
            opened: Progress::default(),
            writers: Mutex::default(),
            next_fh: AtomicU64::new(1),
            mountpoint,
            metrics,
        })
    }

    /// Opens a writer; `truncate` (O_TRUNC) drops every hint not yet started.
    pub fn open(&self, truncate: bool) -> u64 {
        if truncate {
            self.clear();
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.writers.lock().unwrap().insert(fh, Vec::new());
        fh
    }

    /// Drops every hint not yet started (a truncating open or `truncate` of the control file).
    pub fn clear(&self) {
        let mut q = self.queue.lock().unwrap();
        *q = Pending { list: q.list + 1, ..Pending::default() };
        self.opened.reset(); // workers waiting on the old list let go of its paths
        drop(q);
    }

    /// A file of the mount was opened (by the job's reader, as far as the queue can tell).
    pub fn opened(&self) {
        self.opened.add(1);
    }

    /// Waits until the reader is within [`LOOKAHEAD_FILES`] of `hint`; `false` if its list was
    /// replaced meanwhile (the hint is then dropped).
    async fn reader_near(&self, hint: &Hint) -> bool {
        self.opened
            .wait_for(|opened| {
                if self.queue.lock().unwrap().list != hint.list {
                    Some(false)
                } else {
                    (hint.seq < opened + LOOKAHEAD_FILES).then_some(true)
                }
            })
            .await
    }

    /// Takes `data` from writer `fh`: complete lines are queued, a partial one kept.
    pub fn write(&self, fh: u64, data: &[u8]) -> Result<(), HintError> {
        let lines = {
            let mut writers = self.writers.lock().unwrap();
            let buf = writers.get_mut(&fh).ok_or(HintError::BadHandle)?;
            buf.extend_from_slice(data);
            let Some(end) = buf.iter().rposition(|&c| c == b'\n') else { return Ok(()) };
            let rest = buf.split_off(end + 1);
            std::mem::replace(buf, rest)
        };
        self.push(&lines)
    }

    /// Closes writer `fh`, queueing its unterminated last line.
    pub fn release(&self, fh: u64) {
        if let Some(rest) = self.writers.lock().unwrap().remove(&fh) {
            let _ = self.push(&rest);
        }
    }

    fn push(&self, lines: &[u8]) -> Result<(), HintError> {
        let text = String::from_utf8_lossy(lines);
        let paths: Vec<String> = text.lines().filter_map(|l| self.relative(l)).collect();
        let mut queue = self.queue.lock().unwrap();
        if queue.paths.len() + paths.len() > MAX_QUEUED {
            return Err(HintError::Full);
        }
        Metrics::add(&self.metrics.hint_files_queued, paths.len() as u64);
        queue.paths.extend(paths);
        drop(queue);
        self.wake.notify_waiters();
        Ok(())
    }

    /// The path relative to the mount's root, or `None` for a blank line.
    fn relative(&self, line: &str) -> Option<String> {
        let line = line.trim_end_matches('\r');
        let path = line.strip_prefix(self.mountpoint.as_str()).unwrap_or(line).trim_start_matches('/');
        (!path.is_empty()).then(|| path.to_string())
    }

    async fn next(&self) -> Hint {
        loop {
            let notified = self.wake.notified();
            {
                let mut q = self.queue.lock().unwrap();
                if let Some(path) = q.paths.pop_front() {
                    q.taken += 1;
                    return Hint { path, seq: q.taken - 1, list: q.list };
                }
            }
            notified.await;
        }
    }

    /// Starts `parallel` workers that fetch hinted files into the cache through `fs`, each one
    /// whole and verified, and read cached ones into the page cache ahead of the reader, for as
    /// long as the runtime lives.
    pub fn spawn_workers(self: &Arc<Self>, fs: Arc<HoardFs>, parallel: usize) {
        for _ in 0..parallel.max(1) {
            let (queue, fs) = (Arc::clone(self), Arc::clone(&fs));
            tokio::spawn(async move {
                loop {
                    let hint = queue.next().await;
                    let done = async {
                        let (info, held) = fs.hinted(&hint.path).await?;
                        if fs.opening(&info) {
                            // A reader got there first, and its open fetches the file. Waiting for
                            // it would keep this worker in step with the readers instead of ahead.
                            Metrics::add(&queue.metrics.hint_files_passed, 1);
                            return Ok(false);
                        }
                        if held && !queue.reader_near(&hint).await {
                            return Ok(false);
                        }
                        fs.warm_hinted(info).await.map(|()| true)
                    };
                    match done.await {
                        Ok(true) => Metrics::add(&queue.metrics.hint_files_done, 1),
                        Ok(false) => {}
                        Err(e) => {
                            Metrics::add(&queue.metrics.hint_files_failed, 1);
                            tracing::debug!("prefetch hint {}: {e}", hint.path);
                        }
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> Arc<HintQueue> {
        HintQueue::new(std::path::Path::new("/mnt/data"), Arc::new(Metrics::default()))
    }

    fn drain(q: &HintQueue) -> Vec<String> {
        q.queue.lock().unwrap().paths.drain(..).collect()
    }

    #[test]
    fn lines_split_across_writes_are_joined_and_paths_made_relative() {
        let q = queue();
        let fh = q.open(false);
        q.write(fh, b"a/b.jpg\n/mnt/data/c").unwrap();
        q.write(fh, b".jpg\n\n/d.jpg\r\ne").unwrap();
        assert_eq!(drain(&q), ["a/b.jpg", "c.jpg", "d.jpg"]);
        q.release(fh);
        assert_eq!(drain(&q), ["e"]);
        assert!(matches!(q.write(fh, b"x\n"), Err(HintError::BadHandle)));
    }

    /// `n` hints written and taken by a worker, in order.
    async fn taken(q: &HintQueue, n: u64) -> Vec<Hint> {
        let fh = q.open(true);
        q.write(fh, (0..n).map(|i| format!("f{i}\n")).collect::<String>().as_bytes()).unwrap();
        let mut hints = Vec::new();
        for _ in 0..n {
            hints.push(q.next().await);
        }
        hints
    }

    /// Whether `task` is still waiting once every other task has run as far as it can.
    async fn still_waiting<T>(task: &tokio::task::JoinHandle<T>) -> bool {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        !task.is_finished()
    }

    #[tokio::test]
    async fn a_cached_file_is_taken_up_when_the_reader_comes_within_the_window() {
        let q = queue();
        let mut hints = taken(&q, LOOKAHEAD_FILES + 2).await;
        let far = hints.pop().unwrap(); // position LOOKAHEAD_FILES + 1
        assert!(q.reader_near(&hints[LOOKAHEAD_FILES as usize - 1]).await, "the first LOOKAHEAD_FILES go at once");
        let waiting = tokio::spawn({
            let q = q.clone();
            async move { q.reader_near(&far).await }
        });
        assert!(still_waiting(&waiting).await, "{} files ahead of a reader that opened none", LOOKAHEAD_FILES + 1);
        q.opened();
        assert!(still_waiting(&waiting).await, "still one file too far");
        q.opened();
        assert!(waiting.await.unwrap(), "the reader's second open brings it within the window");
    }

    #[tokio::test]
    async fn replacing_the_list_lets_go_of_hints_waiting_for_the_reader() {
        let q = queue();
        let far = taken(&q, LOOKAHEAD_FILES + 1).await.pop().unwrap();
        let waiting = tokio::spawn({
            let q = q.clone();
            async move { q.reader_near(&far).await }
        });
        assert!(still_waiting(&waiting).await);
        q.open(true); // the next epoch's order replaces this one
        assert!(!waiting.await.unwrap(), "a hint of a replaced list is dropped, not taken up");
        let again = taken(&q, 1).await;
        assert_eq!((again[0].seq, q.opened.get()), (0, 0), "the new list counts from its start");
    }

    #[test]
    fn a_truncating_open_drops_hints_not_yet_started() {
        let q = queue();
        let fh = q.open(false);
        q.write(fh, b"old1\nold2\n").unwrap();
        q.release(fh);
        let fh = q.open(true);
        q.write(fh, b"new\n").unwrap();
        assert_eq!(drain(&q), ["new"]);
    }
}
