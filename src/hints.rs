//! Access-order hints: a training job writes the paths it will read next (its sampler's order)
//! to the control file [`CONTROL_NAME`] in the mount's root, and the mount fetches them ahead,
//! in that order, a bounded number of files at a time. A cold or partly cached epoch of small
//! files then runs at network throughput instead of one GET round trip per file.
//!
//! Protocol: one path per line, relative to the mount's root (a leading `/` or the mount point
//! itself is stripped). Opening the file with truncation (`open(path, "w")`) drops hints not yet
//! started, so each epoch's order replaces the last; appending (`"a"`) queues behind them. Writes
//! return at once; unknown paths are counted and logged, never an error to the writer.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::fs::HoardFs;
use crate::metrics::Metrics;

/// Name of the control file in the mount's root. It is not listed by `readdir`, and it hides an
/// S3 object of the same name at the root.
pub const CONTROL_NAME: &str = ".hoardfs-prefetch";

/// Inode of the control file: far above any inode the metadata layer hands out.
pub const CONTROL_INO: u64 = u64::MAX - 1;

/// Most paths waiting at once (about 100 MB of paths at worst); writes beyond it fail with
/// ENOSPC so a runaway writer cannot grow the daemon without bound.
pub const MAX_QUEUED: usize = 1_000_000;

/// Files fetched ahead at once, by default.
pub const DEFAULT_PARALLEL_FILES: usize = 8;

/// The queue of hinted paths and the writers filling it.
pub struct HintQueue {
    queue: Mutex<VecDeque<String>>,
    wake: Notify,
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
        self.queue.lock().unwrap().clear();
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
        if queue.len() + paths.len() > MAX_QUEUED {
            return Err(HintError::Full);
        }
        Metrics::add(&self.metrics.hint_files_queued, paths.len() as u64);
        queue.extend(paths);
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

    async fn next(&self) -> String {
        loop {
            let notified = self.wake.notified();
            if let Some(path) = self.queue.lock().unwrap().pop_front() {
                return path;
            }
            notified.await;
        }
    }

    /// Starts `parallel` workers that fetch hinted files into the cache through `fs`, each one
    /// whole and verified, for as long as the runtime lives.
    pub fn spawn_workers(self: &Arc<Self>, fs: Arc<HoardFs>, parallel: usize) {
        for _ in 0..parallel.max(1) {
            let (queue, fs) = (Arc::clone(self), Arc::clone(&fs));
            tokio::spawn(async move {
                loop {
                    let path = queue.next().await;
                    match fs.warm_path(&path).await {
                        Ok(()) => Metrics::add(&queue.metrics.hint_files_done, 1),
                        Err(e) => {
                            Metrics::add(&queue.metrics.hint_files_failed, 1);
                            tracing::debug!("prefetch hint {path}: {e}");
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
        q.queue.lock().unwrap().drain(..).collect()
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
