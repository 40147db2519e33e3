//! The `fuser::Filesystem` adapter: decode, hand to [`HoardFs`] on the async runtime, reply.
//!
//! No callback blocks its FUSE thread on disk or network: each one takes its `Reply*`, spawns the
//! work, and the task replies when done, so parallel readers are served in parallel.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lru::LruCache;
use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEntry, ReplyOpen,
    ReplyStatfs, Request,
};

use crate::fs::{Attr, HoardFs};
use crate::metrics::Metrics;

/// Owner shown for every file: the user who mounted.
#[derive(Clone, Copy)]
struct Owner {
    uid: u32,
    gid: u32,
    ttl: Duration,
}

impl Owner {
    fn attr(&self, a: &Attr) -> FileAttr {
        FileAttr {
            ino: INodeNo(a.ino),
            size: a.size,
            blocks: a.size.div_ceil(512),
            atime: a.mtime,
            mtime: a.mtime,
            ctime: a.mtime,
            crtime: a.mtime,
            kind: if a.is_dir { FileType::Directory } else { FileType::RegularFile },
            perm: if a.is_dir { 0o555 } else { 0o444 },
            nlink: if a.is_dir { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 1 << 20,
            flags: 0,
        }
    }
}

/// One inode's backing file in the kernel: the kernel requires every passthrough handle of an
/// inode to use the same backing id, so it is shared and closed with the last handle.
struct Backing {
    /// The cache data file it maps (a new object version is a new file).
    path: PathBuf,
    id: BackingId,
    handles: usize,
}

/// Idle backing files kept registered with the kernel. Default: 4096.
const RETAINED_BACKINGS: usize = 4096;

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
struct Passthrough {
    /// Set by `init` when the kernel accepted FUSE_PASSTHROUGH; cleared if it later refuses.
    enabled: AtomicBool,
    /// Backing files by inode. Kept registered after the last handle closes (up to
    /// [`RETAINED_BACKINGS`] idle ones), so the next epoch's open is one FUSE round trip with no
    /// file open and no ioctl.
    backings: Mutex<LruCache<u64, Backing>>,
    /// Handles answered with passthrough, and their inode.
    handles: Mutex<HashMap<u64, u64>>,
    metrics: Arc<Metrics>,
}

impl Passthrough {
    /// Replies to an open: passthrough when the file system offers the cache file and the kernel
    /// takes it, otherwise a daemon-served open.
    fn reply(&self, ino: u64, fh: u64, offer: Option<PathBuf>, reply: ReplyOpen) {
        if !self.enabled.load(Ordering::Relaxed) {
            return reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
        }
        let daemon = FopenFlags::FOPEN_DIRECT_IO;
        let Some(path) = offer else { return reply.opened(FileHandle(fh), daemon) };
        let mut backings = self.backings.lock().unwrap();
        match backings.get_mut(&ino) {
            Some(b) if b.path == path => {
                b.handles += 1;
                reply.opened_passthrough(FileHandle(fh), PASSTHROUGH_FLAGS, &b.id);
            }
            // A retained backing of an older version with no open handle: replace it below.
            Some(b) if b.handles == 0 => {
                backings.pop(&ino);
                drop(backings);
                return self.reply(ino, fh, Some(path), reply);
            }
            // Another version of the object is still open through passthrough: serve this one
            // from the daemon until those handles close.
            Some(_) => return reply.opened(FileHandle(fh), daemon),
            None => match std::fs::File::open(&path).and_then(|file| reply.open_backing(&file)) {
                Ok(id) => {
                    reply.opened_passthrough(FileHandle(fh), PASSTHROUGH_FLAGS, &id);
                    if backings.len() >= RETAINED_BACKINGS {
                        let idle = backings.iter().rev().find(|(_, b)| b.handles == 0).map(|(i, _)| *i);
                        if let Some(idle) = idle {
                            backings.pop(&idle);
                        }
                    }
                    backings.push(ino, Backing { path, id, handles: 1 });
                }
                Err(e) => {
                    tracing::warn!("the kernel refused FUSE passthrough ({e}); reads stay in the daemon");
                    self.enabled.store(false, Ordering::Relaxed);
                    return reply.opened(FileHandle(fh), daemon);
                }
            },
        }
        Metrics::add(&self.metrics.passthrough_opens, 1);
        self.handles.lock().unwrap().insert(fh, ino);
    }

    fn release(&self, fh: u64) {
        let Some(ino) = self.handles.lock().unwrap().remove(&fh) else { return };
        if let Some(b) = self.backings.lock().unwrap().peek_mut(&ino) {
            b.handles -= 1; // kept registered while idle; evicted from the LRU when space is needed
        }
    }
}

/// The adapter; the TTL is how long the kernel may cache entries and attributes.
pub struct FuseAdapter {
    fs: Arc<HoardFs>,
    rt: tokio::runtime::Handle,
    owner: Owner,
    want_passthrough: bool,
    /// FUSE stack depth of the cache file system (1, or 2 on overlayfs).
    stack_depth: u32,
    passthrough: Arc<Passthrough>,
}

impl FuseAdapter {
    /// Wraps `fs`; work runs on `rt`. With `passthrough`, complete verified objects are handed
    /// to the kernel if it supports FUSE passthrough (Linux 6.9+); `cache_dir` decides the stack
    /// depth to ask for.
    pub fn new(fs: Arc<HoardFs>, rt: tokio::runtime::Handle, attr_ttl: Duration, metrics: Arc<Metrics>, passthrough: bool, cache_dir: &std::path::Path) -> Self {
        // SAFETY: getuid/getgid cannot fail and touch no memory.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Self {
            fs,
            rt,
            owner: Owner { uid, gid, ttl: attr_ttl },
            want_passthrough: passthrough,
            stack_depth: if on_overlayfs(cache_dir) { 2 } else { 1 },
            passthrough: Arc::new(Passthrough {
                enabled: AtomicBool::new(false),
                backings: Mutex::new(LruCache::unbounded()),
                handles: Mutex::default(),
                metrics,
            }),
        }
    }
}

/// Whether `path` lives on overlayfs (container root file systems), which adds a stacking level.
fn on_overlayfs(path: &std::path::Path) -> bool {
    const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: statfs writes into the zeroed struct we own; the path is a valid C string.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == OVERLAYFS_SUPER_MAGIC
    }
}

fn errno(e: i32) -> Errno {
    Errno::from_i32(e)
}

impl fuser::Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if self.want_passthrough {
            let accepted = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(self.stack_depth).is_ok();
            self.passthrough.enabled.store(accepted, Ordering::Relaxed);
            if accepted && config.add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP).is_err() {
                tracing::warn!("this kernel cannot mmap direct-I/O FUSE files; mmap works only on passthrough opens");
            }
            if accepted {
                tracing::info!("FUSE passthrough enabled: complete, verified objects are read by the kernel directly");
            } else {
                tracing::warn!("this kernel does not offer FUSE passthrough (Linux 6.9+); every read goes through the daemon");
            }
        }
        Ok(())
    }

    fn destroy(&mut self) {
        self.fs.shutdown();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(name) = name.to_str().map(str::to_owned) else { return reply.error(Errno::ENOENT) };
        let owner = self.owner;
        // Known without S3: answer here, saving a hand-off per file on small-file epochs.
        match self.fs.try_lookup(parent.0, &name) {
            Some(Ok(a)) => return reply.entry(&owner.ttl, &owner.attr(&a), Generation(0)),
            Some(Err(e)) => return reply.error(errno(e.errno)),
            None => {}
        }
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.lookup(parent.0, &name).await {
                Ok(a) => reply.entry(&owner.ttl, &owner.attr(&a), Generation(0)),
                Err(e) => reply.error(errno(e.errno)),
            }
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok(a) => reply.attr(&self.owner.ttl, &self.owner.attr(&a)),
            Err(e) => reply.error(errno(e.errno)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY;
        match self.fs.try_open(ino.0, write) {
            Some(Ok((fh, backing))) => return self.passthrough.reply(ino.0, fh, backing, reply),
            Some(Err(e)) => return reply.error(errno(e.errno)),
            None => {}
        }
        let (fs, passthrough) = (self.fs.clone(), self.passthrough.clone());
        self.rt.spawn(async move {
            match fs.open_with_passthrough(ino.0, write).await {
                Ok((fh, backing)) => passthrough.reply(ino.0, fh, backing, reply),
                Err(e) => reply.error(errno(e.errno)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.read(fh.0, offset, size).await {
                Ok(bytes) => reply.data(&bytes),
                Err(e) => reply.error(errno(e.errno)),
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: fuser::ReplyEmpty,
    ) {
        self.fs.release(fh.0);
        self.passthrough.release(fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            let entries = match fs.readdir(ino.0).await {
                Ok(e) => e,
                Err(e) => return reply.error(errno(e.errno)),
            };
            // Offsets: 1 = ".", 2 = "..", 3.. = entries; the kernel passes back the last one seen.
            let dots = [(".".to_string(), ino.0, true), ("..".to_string(), ino.0, true)];
            let all = dots.into_iter().chain(entries.into_iter().map(|(n, a)| (n, a.ino, a.is_dir)));
            for (i, (name, child, is_dir)) in all.enumerate().skip(offset as usize) {
                let kind = if is_dir { FileType::Directory } else { FileType::RegularFile };
                if reply.add(INodeNo(child), i as u64 + 1, kind, name) {
                    break;
                }
            }
            reply.ok();
        });
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let (fs, owner) = (self.fs.clone(), self.owner);
        self.rt.spawn(async move {
            let entries = match fs.readdir(ino.0).await {
                Ok(e) => e,
                Err(e) => return reply.error(errno(e.errno)),
            };
            let me = match fs.getattr(ino.0) {
                Ok(a) => a,
                Err(e) => return reply.error(errno(e.errno)),
            };
            let dots = [(".".to_string(), me.clone()), ("..".to_string(), me)];
            for (i, (name, attr)) in dots.into_iter().chain(entries).enumerate().skip(offset as usize) {
                if reply.add(INodeNo(attr.ino), i as u64 + 1, name, &owner.ttl, &owner.attr(&attr), Generation(0)) {
                    break;
                }
            }
            reply.ok();
        });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // S3 has no capacity; report an empty, read-only volume with 1 MiB blocks.
        reply.statfs(0, 0, 0, 0, 0, 1 << 20, 255, 1 << 20);
    }
}
