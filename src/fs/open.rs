//! The open path: which source an open file reads from, and whether the kernel may read it
//! directly (FUSE passthrough) — the decision every small-file epoch makes once per file.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{FsError, HoardFs, Offer, OpenFile, Source, CHECK_IN_FLIGHT, READ_AT_OPEN_MAX};
use crate::cache::CachedObject;
use crate::object::ObjectInfo;
use crate::prefetch::Prefetcher;
use crate::uncached::UncachedReads;

impl HoardFs {
    /// Opens file `ino` read-only; returns the handle number.
    pub async fn open(&self, ino: u64, write: bool) -> Result<u64, FsError> {
        Ok(self.open_with_passthrough(ino, write).await?.0)
    }

    /// Opens file `ino` and says whether the kernel may read the cache data file directly
    /// (FUSE passthrough): the object is complete, verified against S3 (or S3 has no checksum and
    /// the policy serves such objects), and every block's blake3 was checked in this mount, so
    /// nothing the daemon would check is skipped.
    ///
    /// The FUSE adapter asks [`Self::try_open`] first; this is the path that may need S3.
    pub async fn open_with_passthrough(&self, ino: u64, write: bool) -> Result<(u64, Option<Offer>), FsError> {
        if write {
            return Err(FsError::new(libc::EROFS, "hoardfs is read-only"));
        }
        let info = self.meta.open_file(ino).await?;
        let obj = self.verifier.entry(&info).await.inspect_err(|e| {
            tracing::warn!("open of s3://{}/{}: {e}", self.bucket, info.key);
        })?;
        let obj = obj.map(|entry| entry.obj);
        if let Ok(obj) = &obj {
            if self.starts_cold(obj) {
                self.read_ahead_of(ino, &info);
            }
            // A mismatch clears the block; the object is then not complete and is served (and
            // repaired) through the daemon.
            if self.check_at_open(obj) {
                self.cache.check_all(obj, CHECK_IN_FLIGHT).await;
            } else if self.checkable(obj) && obj.begin_check_pass() {
                let (cache, obj) = (self.cache.clone(), obj.clone());
                tokio::spawn(async move { cache.check_pass(&obj, CHECK_IN_FLIGHT / 4).await });
            }
        }
        Ok(self.register(ino, info, obj))
    }

    /// Whether to check a small, complete, verified object's blocks at open instead of on first
    /// read: the same disk read, after which the kernel can read the file directly (this is what
    /// makes the first epoch after a remount fast for small files).
    fn check_at_open(&self, obj: &CachedObject) -> bool {
        obj.header().object_size <= self.check_at_open_max && self.checkable(obj)
    }

    /// Whether to read (and hash again) a small object's one block at this open, although it was
    /// checked in this mount: when its bytes are not in memory. The reader is about to read them
    /// through passthrough. Read here, on the FUSE thread, they are in memory when the open
    /// returns, so the reader sleeps once per file (for its open) instead of twice (its open, then
    /// the disk), and a CPU-bound small-file epoch is made of those sleeps. Bytes that come
    /// off the disk are hashed again on the way as a side effect. 250,000 × 16 KiB,
    /// `benches/ab.py`: warm 0.75x → 0.83x raw. When the bytes are already in memory (a dataset
    /// that fits in RAM), re-reading them at every open cost 0.65x → 0.53x of a raw epoch from the
    /// page cache, so a one-byte read that may not wait (`RWF_NOWAIT`) decides, and on a miss
    /// it begins the read ([`crate::io::resident`]).
    /// `cold` is [`Self::starts_cold`]'s answer.
    fn read_at_open(&self, obj: &CachedObject, cold: bool) -> bool {
        cold && obj.header().object_size <= READ_AT_OPEN_MAX && obj.block_count() == 1
    }

    /// Whether a small object the kernel could read directly (now, or once checked) has its
    /// bytes on disk only: then its reader is about to wait for the disk, and so, probably, are
    /// the readers of its directory's other files ([`super::ahead`]). Asking begins the read of
    /// a cold file's start, which its caller (this open, or a pass) is about to make anyway.
    pub(super) fn starts_cold(&self, obj: &CachedObject) -> bool {
        let size = obj.header().object_size;
        let small = size <= READ_AT_OPEN_MAX || (self.ahead.enabled() && super::ahead::sized_for(size));
        self.passthrough && small && obj.is_complete() && self.verifier.servable(obj) && !obj.starts_in_memory_or_begin_reading()
    }

    /// Whether checking every block would let the kernel read the object directly.
    fn checkable(&self, obj: &CachedObject) -> bool {
        self.passthrough && obj.is_complete() && !obj.all_checked() && self.verifier.servable(obj)
    }

    /// The open's answer if it needs no S3 request: fresh metadata and an entry in the cache.
    /// The FUSE thread answers it: from memory, or with the disk reads of reopening the entry
    /// (its data file's open, its slot's page) and, for a one-block object not yet checked in
    /// this mount, that block's read and hash. Each of those is what the async path would wait
    /// for anyway, and the hand-offs to the runtime, a blocking thread and back cost more than
    /// a small file's read on a busy machine. Anything else (a miss, an error, many blocks to
    /// check) goes the async way.
    pub fn try_open(&self, ino: u64, write: bool) -> Option<Result<(u64, Option<Offer>), FsError>> {
        if write {
            return Some(Err(FsError::new(libc::EROFS, "hoardfs is read-only")));
        }
        let info = match self.meta.open_file_cached(ino)? {
            Ok(info) => info,
            Err(e) => return Some(Err(e.into())),
        };
        let obj = match self.cache.open_in_memory(&self.bucket, &info) {
            Some(obj) => obj,
            None => self.cache.open_existing(&self.bucket, &info).ok().flatten()?,
        };
        // The hand-offs come before the probe: the async path probes (and starts the read)
        // itself, and a second probe would be one more system call per open.
        let check_now = self.check_at_open(&obj);
        if check_now && obj.block_count() > 1 {
            return None; // many blocks to check: with reads in flight, on the runtime
        }
        if !check_now && self.checkable(&obj) && !obj.check_pass_begun() {
            return None; // the async path starts the background pass that makes it passthrough
        }
        let cold = self.starts_cold(&obj);
        if cold {
            self.read_ahead_of(ino, &info);
        }
        if check_now {
            self.cache.check_all_now(&obj);
        } else if self.read_at_open(&obj, cold) {
            self.cache.recheck_all_now(&obj);
        }
        Some(Ok(self.register(ino, info, Ok(obj))))
    }

    /// Creates the handle and says whether its object may be read by the kernel directly.
    fn register(&self, ino: u64, info: ObjectInfo, obj: Result<Arc<CachedObject>, crate::cache::CacheError>) -> (u64, Option<Offer>) {
        let source = match obj {
            Ok(obj) => {
                self.ahead.opened(ino);
                Source::Cached(obj)
            }
            Err(e) => {
                tracing::warn!("cannot cache s3://{}/{}: {e}; reading it from S3, verified in memory", self.bucket, info.key);
                Source::Uncached { reads: UncachedReads::default(), why: e.to_string() }
            }
        };
        let backing = match &source {
            Source::Cached(obj) if obj.block_count() > 0 && obj.is_complete() && obj.all_checked() && self.verifier.servable(obj) => {
                Some(Offer { path: obj.data_path().to_path_buf(), file: obj.data_file().clone() })
            }
            _ => None,
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(ino, fh, key = %info.key, cached = matches!(source, Source::Cached(_)), passthrough = backing.is_some(), "open");
        let handle = Arc::new(OpenFile { ino, info, source, prefetcher: Prefetcher::default() });
        self.handles.lock().unwrap().insert(fh, handle);
        (fh, backing)
    }
}
