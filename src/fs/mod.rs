//! The file system's logic as plain async functions returning `Result<_, FsError>`.
//!
//! Nothing here knows about FUSE: [`crate::fuse`] is a thin adapter that calls these and turns
//! the result into a reply. That keeps every rule (what a read returns, which errno when) testable
//! without a kernel, and keeps the adapter too small to hide bugs.

use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};

use crate::cache::{BlockCache, CachedObject};
use crate::fetch::{FetchError, Fetcher};
use crate::meta::{DirListing, Meta, MetaError, Node, NodeKind};
use crate::metrics::Metrics;
use crate::object::ObjectInfo;
use crate::prefetch::{PrefetchConfig, Prefetcher};
use crate::uncached::UncachedReads;
use crate::verify::{Verifier, VerifyError};

mod ahead;
mod open;

use ahead::DirReadAhead;
pub use ahead::{DEFAULT_DIR_READ_AHEAD, DIR_READ_AHEAD_FILE_MAX};

/// An error with the errno the kernel should see.
#[derive(Debug, thiserror::Error)]
#[error("{message} (errno {errno})")]
pub struct FsError {
    /// The errno.
    pub errno: i32,
    /// What went wrong, for the log.
    pub message: String,
}

impl FsError {
    fn new(errno: i32, message: impl Into<String>) -> Self {
        Self { errno, message: message.into() }
    }
}

impl From<MetaError> for FsError {
    fn from(e: MetaError) -> Self {
        match e {
            MetaError::NotFound => Self::new(libc::ENOENT, "not found"),
            MetaError::Stale => Self::new(libc::ESTALE, "unknown inode"),
            MetaError::S3(e) => Self::new(libc::EIO, e.to_string()),
        }
    }
}

impl From<VerifyError> for FsError {
    fn from(e: VerifyError) -> Self {
        match e {
            VerifyError::Fetch(f) => f.into(),
            other => Self::new(libc::EIO, other.to_string()),
        }
    }
}

impl From<FetchError> for FsError {
    fn from(e: FetchError) -> Self {
        match e {
            FetchError::Changed(m) => Self::new(libc::ESTALE, m),
            FetchError::NotFound(m) => Self::new(libc::ENOENT, m),
            FetchError::Failed(m) => Self::new(libc::EIO, m),
        }
    }
}

/// Attributes of a node, independent of FUSE's struct.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    /// Inode.
    pub ino: u64,
    /// Size in bytes (0 for directories).
    pub size: u64,
    /// Modification time.
    pub mtime: SystemTime,
    /// Directory or file.
    pub is_dir: bool,
}

impl Attr {
    fn of(node: &Node) -> Self {
        match &node.kind {
            NodeKind::Dir { .. } => Attr { ino: node.ino, size: 0, mtime: SystemTime::UNIX_EPOCH, is_dir: true },
            NodeKind::File { info } => Attr { ino: node.ino, size: info.size, mtime: info.last_modified, is_dir: false },
        }
    }
}

/// Largest object whose blocks are all checked at open (many reads in flight), so that even its
/// first open after a remount is passthrough: that is cheaper than the daemon serving the same
/// bytes, which it would have to read and hash anyway. Larger complete objects are checked by a
/// background pass started at their first open, so the opens after it are passthrough. Default:
/// 1 GiB (about a second of disk reading on a training node's NVMe).
pub const DEFAULT_CHECK_AT_OPEN_MAX: u64 = 1 << 30;
/// Block reads in flight while checking one object's blocks at open (a quarter of it for the
/// background pass), under the cache's bound over all objects. 64: the first epoch after a
/// remount of 4 × 256 MiB shards ran at 0.77-0.88x of the disk with 16 and 0.92-1.13x with 64
/// (four alternated runs each, `benches/epochs.py --datasets large`); the disk wants the depth.
const CHECK_IN_FLIGHT: usize = 64;

/// Largest object whose block is read at every open ([`HoardFs`]'s `read_at_open`). Measured
/// at 16 KiB only. Larger files are left as they were: at 128 KiB, the check at open after a
/// remount was no faster than a warm epoch without it (0.68x vs 0.71-0.73x disk).
pub const READ_AT_OPEN_MAX: u64 = 64 << 10;

/// Bytes of a hinted, cached object the kernel is asked to read ahead of its reader: all of a
/// small file, the start of a large one (whose later blocks the kernel's own read-ahead takes,
/// through passthrough). With [`crate::hints::LOOKAHEAD_FILES`] this bounds the page cache a
/// hinted epoch fills ahead of its reader to 256 MiB.
pub const HINT_READAHEAD: u64 = 1 << 20;

/// Where an open file's bytes come from.
enum Source {
    /// The cache entry of the object version.
    Cached(Arc<CachedObject>),
    /// No entry could be made (the reason is kept for errors): bytes come from S3, verified in
    /// memory ([`crate::uncached`]).
    Uncached { reads: UncachedReads, why: String },
}

/// An open the kernel may serve by itself (FUSE passthrough): the cache data file, by path (its
/// identity: a new object version is a new file) and open (the entry's own descriptor, which
/// the adapter registers with the kernel, so the hand-off opens nothing).
pub struct Offer {
    /// The data file's path.
    pub path: PathBuf,
    /// The data file, as the cache entry holds it open.
    pub file: Arc<std::fs::File>,
}

/// One open file handle: the object version it pinned at open, and its access pattern.
pub struct OpenFile {
    ino: u64,
    info: ObjectInfo,
    source: Source,
    /// Read-ahead for this handle's reads.
    prefetcher: Prefetcher,
}

/// The mounted file system.
pub struct HoardFs {
    meta: Meta,
    cache: Arc<BlockCache>,
    fetcher: Arc<Fetcher>,
    verifier: Arc<Verifier>,
    bucket: String,
    prefetch: PrefetchConfig,
    handles: Mutex<HashMap<u64, Arc<OpenFile>>>,
    /// Listings held by open directory handles.
    dirs: Mutex<HashMap<u64, Arc<DirListing>>>,
    next_fh: AtomicU64,
    passthrough: bool,
    check_at_open_max: u64,
    /// Directories read into memory ahead of their readers.
    ahead: DirReadAhead,
}

impl HoardFs {
    /// Assembles the file system from its parts.
    pub fn new(
        meta: Meta,
        cache: Arc<BlockCache>,
        fetcher: Arc<Fetcher>,
        verifier: Arc<Verifier>,
        bucket: String,
        prefetch: PrefetchConfig,
    ) -> Self {
        Self {
            meta,
            cache,
            fetcher,
            verifier,
            bucket,
            prefetch,
            handles: Mutex::default(),
            dirs: Mutex::default(),
            next_fh: AtomicU64::new(1),
            passthrough: true,
            check_at_open_max: DEFAULT_CHECK_AT_OPEN_MAX,
            ahead: DirReadAhead::new(DEFAULT_DIR_READ_AHEAD),
        }
    }

    /// Whether the mount hands complete objects to the kernel (FUSE passthrough; without it,
    /// checking every block at open would buy nothing), and the largest object checked at open
    /// rather than in the background. Defaults: true, [`DEFAULT_CHECK_AT_OPEN_MAX`].
    pub fn with_passthrough(mut self, enabled: bool, check_at_open_max: u64) -> Self {
        self.passthrough = enabled;
        self.check_at_open_max = check_at_open_max;
        self
    }

    /// How many bytes of a directory's files may be read into memory ahead of their readers'
    /// opens ([`ahead`]); 0 turns it off. Default: [`DEFAULT_DIR_READ_AHEAD`].
    pub fn with_dir_read_ahead(mut self, budget: u64) -> Self {
        self.ahead = DirReadAhead::new(budget);
        self
    }

    /// The block cache underneath.
    pub fn cache(&self) -> &BlockCache {
        &self.cache
    }

    /// Resolves `name` in `parent`.
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn lookup(&self, parent: u64, name: &str) -> Result<Attr, FsError> {
        Ok(Attr::of(&self.meta.lookup(parent, name).await?))
    }

    /// The lookup's answer if it needs no request to S3 (the FUSE thread answers it at once).
    pub fn try_lookup(&self, parent: u64, name: &str) -> Option<Result<Attr, FsError>> {
        self.meta.lookup_cached(parent, name).map(|r| r.map(|n| Attr::of(&n)).map_err(FsError::from))
    }

    /// Attributes of `ino`.
    pub fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        Ok(Attr::of(&self.meta.node(ino)?))
    }

    /// Opens directory `ino`: takes its listing now and keeps it for the handle, so one `ls`
    /// sees one listing however many calls the kernel splits it into, and each call costs only
    /// the entries it returns (copying the listing per call made a 100,000-entry `ls` quadratic).
    pub async fn opendir(&self, ino: u64) -> Result<u64, FsError> {
        let entries = self.meta.readdir(ino).await?;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dirs.lock().unwrap().insert(fh, entries);
        Ok(fh)
    }

    /// Entries of directory handle `fh` from index `from` on (`.` and `..` not included), with
    /// attributes, at most `max`.
    pub fn readdir_from(&self, fh: u64, from: usize, max: usize) -> Result<Vec<(String, Attr)>, FsError> {
        let entries = self.dirs.lock().unwrap().get(&fh).cloned().ok_or_else(|| FsError::new(libc::EBADF, "unknown directory handle"))?;
        Ok(self.meta.map_entries(&entries, from, max, |name, node| (name.to_string(), Attr::of(node))))
    }

    /// Forgets directory handle `fh`.
    pub fn releasedir(&self, fh: u64) {
        self.dirs.lock().unwrap().remove(&fh);
    }

    /// Forgets handle `fh`.
    pub fn release(&self, fh: u64) {
        self.handles.lock().unwrap().remove(&fh);
    }

    /// Reads up to `size` bytes at `offset` through the cache. Its span (`read`, with the
    /// handle's inode and key) is the parent of the fetches and verifications it starts.
    #[tracing::instrument(level = "debug", name = "read", skip(self), fields(ino = tracing::field::Empty, key = tracing::field::Empty))]
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Bytes, FsError> {
        let handle = self.handles.lock().unwrap().get(&fh).cloned().ok_or_else(|| FsError::new(libc::EBADF, "unknown file handle"))?;
        let span = tracing::Span::current();
        span.record("ino", handle.ino);
        span.record("key", handle.info.key.as_str());
        let end = (offset + size as u64).min(handle.info.size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        let result = match &handle.source {
            Source::Cached(obj) => self.read_cached(&handle, obj, offset..end).await,
            Source::Uncached { reads, why } => reads
                .read(&self.fetcher, self.verifier.metrics(), self.verifier.policy(), &handle.info, offset..end, why)
                .await
                .map_err(FsError::from),
        };
        match &result {
            Ok(bytes) => tracing::debug!(bytes = bytes.len(), "read served"),
            Err(e) => {
                if e.errno == libc::ESTALE {
                    self.meta.invalidate(handle.ino);
                }
                tracing::warn!(
                    errno = e.errno,
                    "read of s3://{}/{} at {offset}+{size} failed: {}",
                    self.bucket,
                    handle.info.key,
                    e.message
                );
            }
        }
        result
    }

    async fn read_cached(&self, handle: &OpenFile, obj: &Arc<CachedObject>, range: Range<u64>) -> Result<Bytes, FsError> {
        self.prefetch_after(handle, obj, range.clone());
        // A block found corrupt while reading is refetched, which un-verifies its unit; in
        // strict mode such a read is redone so that only verified bytes leave.
        for _ in 0..3 {
            self.verifier.before_serve(obj, range.clone()).await?;
            let bytes = self.read_blocks(obj, range.clone()).await?;
            if self.verifier.covers(obj, range.clone()) {
                self.verifier.after_serve(obj, range).await;
                return Ok(bytes);
            }
        }
        Err(FsError::new(libc::EIO, "bytes kept failing verification during the read"))
    }

    async fn read_blocks(&self, obj: &Arc<CachedObject>, range: Range<u64>) -> Result<Bytes, FsError> {
        let bs = obj.header().block_size as u64;
        let (first, last) = (range.start / bs, (range.end - 1) / bs);
        let within = |b: u64| {
            let block_start = b * bs;
            (range.start.max(block_start) - block_start) as usize..(range.end.min(block_start + bs) - block_start) as usize
        };
        let mut parts = Vec::with_capacity((last - first + 1) as usize);
        for b in first..=last {
            match self.cache.read_checked(obj, b, within(b)).await {
                Some(bytes) => parts.push(bytes),
                None => {
                    // A miss: load it and the rest of the read together (one GET for neighbours).
                    let rest: Vec<u64> = (b..=last).collect();
                    for (b, pending) in rest.iter().zip(self.fetcher.load_each(obj, &rest)) {
                        parts.push(pending.wait().await?.slice(within(*b)));
                    }
                    break;
                }
            }
        }
        Ok(match parts.len() {
            1 => parts.pop().unwrap(),
            _ => {
                let mut out = BytesMut::with_capacity((range.end - range.start) as usize);
                parts.iter().for_each(|p| out.extend_from_slice(p));
                out.freeze()
            }
        })
    }

    /// Starts the read-ahead the handle's [`Prefetcher`] asks for after this read.
    fn prefetch_after(&self, handle: &OpenFile, obj: &Arc<CachedObject>, range: Range<u64>) {
        let max = self.prefetch.max_blocks.unwrap_or_else(|| self.fetcher.prefetch_capacity(obj));
        let block_size = obj.header().block_size as u64;
        if let Some(ahead) = handle.prefetcher.after_read(range, block_size, max, self.fetcher.blocks_per_get(obj)) {
            self.fetcher.prefetch(obj, ahead);
        }
    }

    /// The object version a prefetch hint names (`path`, relative to the root), and whether the
    /// cache already holds any of it.
    pub async fn hinted(&self, path: &str) -> Result<(ObjectInfo, bool), FsError> {
        let mut ino = crate::meta::ROOT_INO;
        for name in path.split('/').filter(|c| !c.is_empty()) {
            ino = self.meta.lookup(ino, name).await?.ino;
        }
        let info = self.meta.open_file(ino).await?;
        let held = self.cache.holds(&self.bucket, &info);
        Ok((info, held))
    }

    /// Whether an open (a reader's, or another hint's) is making this object's cache entry now.
    pub fn opening(&self, info: &ObjectInfo) -> bool {
        self.fetcher.creating(info)
    }

    /// Fetches a hinted object whole into the cache, verified, and has the kernel read the first
    /// [`HINT_READAHEAD`] bytes of its data file into the page cache: its reader's open (and,
    /// after a remount, the check of its blocks at open) then waits for no disk read.
    pub async fn warm_hinted(&self, info: ObjectInfo) -> Result<(), FsError> {
        crate::warm::warm_one(&self.fetcher, &self.verifier, info.clone()).await.map_err(|e| FsError::new(libc::EIO, e))?;
        if let Some(obj) = self.cache.open_in_memory(&self.bucket, &info).filter(|o| o.is_complete()) {
            obj.will_need(HINT_READAHEAD);
            Metrics::add(&self.verifier.metrics().hint_files_readahead, 1);
        }
        Ok(())
    }

    /// Lets in-flight fetches finish writing (bounded by `timeout`) and flushes cache state;
    /// called at unmount.
    pub async fn drain(&self, timeout: std::time::Duration) {
        let _ = tokio::time::timeout(timeout, self.fetcher.drain()).await;
        if let Some(tier) = self.fetcher.shared_tier() {
            tier.drain(timeout).await;
        }
        self.cache.flush();
    }

    /// Flushes cache state; called when FUSE says the session is over.
    pub fn shutdown(&self) {
        self.cache.flush();
    }
}
