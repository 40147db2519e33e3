//! FUSE passthrough: which cache data file the kernel reads directly for which inode.
//!
//! The kernel wants one backing id per inode shared by all its passthrough handles; ids stay
//! registered while idle (up to a bound sized from the open-file limit) so the next epoch's open
//! is a single round trip; and a backing of a file the cache deleted is let go, so its blocks are
//! freed. The adapter in [`crate::fuse`] asks this registry how to answer each open and release.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use fuser::{BackingId, FileHandle, FopenFlags, ReplyOpen};
use lru::LruCache;

use crate::fs::Offer;
use crate::metrics::Metrics;

/// One inode's backing file in the kernel: the kernel requires every passthrough handle of an
/// inode to use the same backing id, so it is shared and closed with the last handle.
struct Backing {
    /// The cache data file it maps (a new object version is a new file).
    path: PathBuf,
    /// `None` while the open that registers it waits for the kernel (outside the lock).
    id: Option<Arc<BackingId>>,
    handles: usize,
    /// The cache deleted the file: release the backing with its last handle, so the kernel lets
    /// go of the file and its blocks are freed.
    deleted: bool,
}

/// Open flags of a passthrough reply: none. Measured on Linux 6.18: adding FOPEN_KEEP_CACHE
/// makes the kernel fail the application's open(2) with EIO (the page cache is the backing
/// file's anyway).
const PASSTHROUGH_FLAGS: FopenFlags = FopenFlags::empty();

/// Passthrough state shared by the adapter and its spawned open tasks.
///
/// Kernel rule (fs/fuse/iomode.c): a passthrough open fails while the inode has a *cached*
/// (page-cache) open, and the kernel drops that open at close(2), while the daemon hears of it
/// (RELEASE) only later. So with passthrough on, opens that stay in the daemon use
/// FOPEN_DIRECT_IO, which neither blocks nor is blocked by passthrough; userspace never has to
/// guess the kernel's counts.
pub struct Passthrough {
    /// Set by `init` when the kernel accepted FUSE_PASSTHROUGH; cleared if it later refuses.
    pub enabled: AtomicBool,
    /// Backing files by inode. Kept registered after the last handle closes (up to `retained`
    /// idle ones), so the next epoch's open is one FUSE round trip with no file open and no
    /// ioctl.
    backings: Mutex<LruCache<u64, Backing>>,
    /// Idle backings kept registered: the mount sizes it like the cache's open entries.
    retained: usize,
    /// Handles answered with passthrough, and their inode.
    handles: Mutex<HashMap<u64, u64>>,
    metrics: Arc<Metrics>,
}

impl Passthrough {
    /// A registry keeping up to `retained` idle backings (at least 1), off until `init` enables it.
    pub fn new(retained: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            enabled: AtomicBool::new(false),
            backings: Mutex::new(LruCache::unbounded()),
            retained: retained.max(1),
            handles: Mutex::default(),
            metrics,
        }
    }

    /// Replies to an open: passthrough when the file system offers the cache file and the kernel
    /// takes it, otherwise a daemon-served open.
    ///
    /// No system call is made under the registry's lock: two FUSE threads answer opens and
    /// releases of different files at once, and a reply's write (or a registration's ioctl) held
    /// the lock long enough for the other thread to sleep on it at every open.
    pub fn reply(&self, ino: u64, fh: u64, offer: Option<Offer>, reply: ReplyOpen) {
        if !self.enabled.load(Ordering::Relaxed) {
            return reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
        }
        let daemon = FopenFlags::FOPEN_DIRECT_IO;
        let Some(offer) = offer else { return reply.opened(FileHandle(fh), daemon) };
        let registered = {
            let mut backings = self.backings.lock().unwrap();
            if backings.peek(&ino).is_some_and(|b| b.path != offer.path && b.handles == 0) {
                backings.pop(&ino); // a retained backing of an older version, idle: replaced below
            }
            match backings.get_mut(&ino) {
                Some(b) if b.path == offer.path => match &b.id {
                    Some(id) => {
                        b.handles += 1;
                        self.record(fh, ino);
                        Some(Arc::clone(id))
                    }
                    // Another open is registering this very file: serve this one from the daemon.
                    None => return reply.opened(FileHandle(fh), daemon),
                },
                // Another version of the object is still open through passthrough: serve this one
                // from the daemon until those handles close.
                Some(_) => return reply.opened(FileHandle(fh), daemon),
                None => {
                    // Claimed with this open's handle, so neither retired nor registered twice
                    // while the kernel is asked below.
                    backings.push(ino, Backing { path: offer.path.clone(), id: None, handles: 1, deleted: false });
                    None
                }
            }
        };
        if let Some(id) = registered {
            return reply.opened_passthrough(FileHandle(fh), PASSTHROUGH_FLAGS, &id);
        }
        // The entry's own descriptor: the kernel opens its backing file from it with this open's
        // flags, so registering it walks no path and opens nothing.
        match reply.open_backing(offer.file.as_ref()) {
            Ok(id) => {
                let id = Arc::new(id);
                let retired = {
                    let mut backings = self.backings.lock().unwrap();
                    if let Some(b) = backings.peek_mut(&ino) {
                        b.id = Some(Arc::clone(&id));
                    }
                    self.record(fh, ino);
                    match backings.len() > self.retained {
                        true => backings.iter().rev().find(|(_, b)| b.handles == 0).map(|(i, _)| *i).and_then(|i| backings.pop(&i)),
                        false => None,
                    }
                };
                drop(retired); // its id is closed in the kernel outside the lock
                reply.opened_passthrough(FileHandle(fh), PASSTHROUGH_FLAGS, &id);
            }
            Err(e) => {
                tracing::warn!("the kernel refused FUSE passthrough ({e}); reads stay in the daemon");
                self.enabled.store(false, Ordering::Relaxed);
                self.backings.lock().unwrap().pop(&ino);
                reply.opened(FileHandle(fh), daemon)
            }
        }
    }

    /// Records a passthrough handle *before* its reply goes to the kernel: once the reply is out,
    /// the application may read and close at once, and the RELEASE can reach another FUSE thread
    /// before this one runs again. Recorded after, that release found nothing, the backing's
    /// count never returned to zero, and the backing was pinned for the life of the mount (and
    /// scanned past on every later open: 84 % of the daemon's CPU in a 100,000-file epoch).
    fn record(&self, fh: u64, ino: u64) {
        Metrics::add(&self.metrics.passthrough_opens, 1);
        self.handles.lock().unwrap().insert(fh, ino);
    }

    /// Handle `fh` was released: its backing becomes idle with its last handle (and is let go
    /// then if the cache deleted its file).
    pub fn release(&self, fh: u64) {
        let Some(ino) = self.handles.lock().unwrap().remove(&fh) else { return };
        Metrics::add(&self.metrics.passthrough_releases, 1);
        let mut backings = self.backings.lock().unwrap();
        if let Some(b) = backings.peek_mut(&ino) {
            b.handles -= 1; // kept registered while idle; evicted from the LRU when space is needed
            if b.handles == 0 && b.deleted {
                backings.pop(&ino); // dropping the id closes it in the kernel
            }
        }
    }

    /// The cache deleted data file `path` (evicted, or damaged): an idle backing of it is
    /// released now, a busy one with its last handle. A retained backing would otherwise keep the
    /// unlinked file's blocks allocated until unmount, beyond `--max-cache-size`.
    pub fn deleted(&self, path: &std::path::Path) {
        let mut backings = self.backings.lock().unwrap();
        let inos: Vec<u64> = backings.iter().filter(|(_, b)| b.path == path).map(|(ino, _)| *ino).collect();
        for ino in inos {
            match backings.peek_mut(&ino) {
                Some(b) if b.handles > 0 => b.deleted = true,
                _ => {
                    backings.pop(&ino);
                }
            }
        }
    }
}
