//! The `fuser::Filesystem` adapter: decode, hand to [`HoardFs`] on the async runtime, reply.
//!
//! No callback blocks its FUSE thread on the network: each one that may need S3 takes its
//! `Reply*`, spawns the work, and the task replies when done, so parallel readers are served in
//! parallel. What needs no request is answered here: lookups of known names, and opens of cached
//! entries, which may wait for the disk reads of reopening one (see `HoardFs::try_open`): on two
//! cores the hand-offs to the runtime and back cost more than those reads.

use std::ffi::OsStr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags,
    ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEntry, ReplyOpen, ReplyStatfs, Request,
};

use crate::fs::{Attr, HoardFs};
use crate::hints::{HintError, HintQueue, CONTROL_INO, CONTROL_NAME};
use crate::meta::ROOT_INO;
use crate::metrics::Metrics;
use crate::passthrough::Passthrough;

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
            perm: if a.is_dir {
                0o555
            } else if a.ino == CONTROL_INO {
                0o222
            } else {
                0o444
            },
            nlink: if a.is_dir { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 1 << 20,
            flags: 0,
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
    /// The prefetch control file's queue; `None` when hints are off (the mount is then `ro`).
    hints: Option<Arc<HintQueue>>,
    metrics: Arc<Metrics>,
}

/// Attributes of the prefetch control file: write-only, always empty.
const CONTROL_ATTR: Attr = Attr { ino: CONTROL_INO, size: 0, mtime: std::time::SystemTime::UNIX_EPOCH, is_dir: false };

impl FuseAdapter {
    /// Wraps `fs`; work runs on `rt`. With `passthrough` (the number of idle backings to keep
    /// registered), complete verified objects are handed to the kernel if it supports FUSE
    /// passthrough (Linux 6.9+); `cache_dir` decides the stack depth to ask for.
    pub fn new(
        fs: Arc<HoardFs>,
        rt: tokio::runtime::Handle,
        attr_ttl: Duration,
        metrics: Arc<Metrics>,
        passthrough: Option<usize>,
        cache_dir: &std::path::Path,
        hints: Option<Arc<HintQueue>>,
    ) -> Self {
        // SAFETY: getuid/getgid cannot fail and touch no memory.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Self {
            fs,
            rt,
            owner: Owner { uid, gid, ttl: attr_ttl },
            want_passthrough: passthrough.is_some(),
            stack_depth: if on_overlayfs(cache_dir) { 2 } else { 1 },
            passthrough: Arc::new(Passthrough::new(passthrough.unwrap_or(0), metrics.clone())),
            hints,
            metrics,
        }
        .releasing_deleted_backings()
    }

    fn releasing_deleted_backings(self) -> Self {
        let passthrough = Arc::downgrade(&self.passthrough);
        self.fs.cache().on_delete(move |path| {
            if let Some(p) = passthrough.upgrade() {
                p.deleted(path);
            }
        });
        self
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

/// Feeds `add` the entries of directory handle `fh` from `offset` on (`.` and `..` first) until
/// it says the reply is full. Reads only the handle's in-memory listing, so it runs on the FUSE
/// thread.
fn for_each_dir_entry(
    fs: &HoardFs,
    ino: u64,
    fh: u64,
    offset: u64,
    mut add: impl FnMut(u64, &str, &Attr) -> bool,
) -> Result<(), crate::fs::FsError> {
    const PAGE: usize = 256;
    let me = fs.getattr(ino)?;
    let mut i = offset;
    for name in [".", ".."].iter().skip(offset as usize) {
        if add(i, name, &me) {
            return Ok(());
        }
        i += 1;
    }
    loop {
        let page = fs.readdir_from(fh, (i - 2) as usize, PAGE)?;
        for (name, attr) in &page {
            if add(i, name, attr) {
                return Ok(());
            }
            i += 1;
        }
        if page.len() < PAGE {
            return Ok(());
        }
    }
}

fn errno(e: i32) -> Errno {
    Errno::from_i32(e)
}

impl fuser::Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Every directory read carries each entry's attributes (READDIRPLUS; fuser does not ask
        // for it by default), so `ls -l`, `find -size` and a dataset's scan of its files get them
        // with the listing instead of one LOOKUP round trip per entry. Always, not the kernel's
        // adaptive mode: hoardfs has every listed entry's attributes in memory anyway.
        if config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS).is_err() {
            tracing::info!("this kernel does not offer READDIRPLUS; each listed entry is looked up on its own");
        }
        if self.want_passthrough {
            let accepted =
                config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok() && config.set_max_stack_depth(self.stack_depth).is_ok();
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
        Metrics::add(&self.metrics.fuse_lookups, 1);
        let Some(name) = name.to_str().map(str::to_owned) else { return reply.error(Errno::ENOENT) };
        let owner = self.owner;
        if parent.0 == ROOT_INO && name == CONTROL_NAME && self.hints.is_some() {
            return reply.entry(&owner.ttl, &owner.attr(&CONTROL_ATTR), Generation(0));
        }
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
        if ino.0 == CONTROL_INO {
            return reply.attr(&self.owner.ttl, &self.owner.attr(&CONTROL_ATTR));
        }
        match self.fs.getattr(ino.0) {
            Ok(a) => reply.attr(&self.owner.ttl, &self.owner.attr(&a)),
            Err(e) => reply.error(errno(e.errno)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY;
        if let (CONTROL_INO, Some(hints)) = (ino.0, &self.hints) {
            if !write {
                return reply.error(Errno::EACCES); // write-only: there is nothing to read
            }
            let fh = hints.open(flags.0 & libc::O_TRUNC != 0);
            return reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO);
        }
        if let Some(hints) = &self.hints {
            hints.opened();
        }
        match self.fs.try_open(ino.0, write) {
            Some(Ok((fh, backing))) => {
                Metrics::add(&self.metrics.fuse_opens_inline, 1);
                return self.passthrough.reply(ino.0, fh, backing, reply);
            }
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
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: fuser::ReplyEmpty,
    ) {
        match (ino.0, &self.hints) {
            (CONTROL_INO, Some(hints)) => hints.release(fh.0),
            _ => {
                self.fs.release(fh.0);
                self.passthrough.release(fh.0);
            }
        }
        reply.ok();
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _offset: u64,
        data: &[u8],
        _write_flags: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: fuser::ReplyWrite,
    ) {
        let Some(hints) = self.hints.as_ref().filter(|_| ino.0 == CONTROL_INO) else { return reply.error(Errno::EBADF) };
        match hints.write(fh.0, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e @ HintError::Full) => {
                tracing::warn!("{e}");
                reply.error(Errno::ENOSPC)
            }
            Err(HintError::BadHandle) => reply.error(Errno::EBADF),
        }
    }

    /// Nothing to flush in a read-only mount (a hint file's last line is taken at release). The
    /// kernel sends FLUSH at every close(2) and waits for the answer; ENOSYS tells it once and
    /// for all that none is needed, which saves a synchronous round trip per file (two thread
    /// wake-ups on each side) on every small-file epoch.
    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: fuser::ReplyEmpty) {
        Metrics::add(&self.metrics.fuse_flushes, 1);
        reply.error(Errno::ENOSYS);
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // Only the control file changes, and only by truncation (open(path, "w")): it drops
        // hints not yet started.
        match (ino.0, &self.hints) {
            (CONTROL_INO, Some(hints)) => {
                if size == Some(0) {
                    hints.clear();
                }
                reply.attr(&self.owner.ttl, &self.owner.attr(&CONTROL_ATTR))
            }
            _ => reply.error(Errno::EROFS),
        }
    }

    fn mknod(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, _mode: u32, _umask: u32, _rdev: u32, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, _mode: u32, _umask: u32, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: fuser::ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: fuser::ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn symlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, _target: &std::path::Path, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: fuser::RenameFlags,
        reply: fuser::ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn link(&self, _req: &Request, _ino: INodeNo, _newparent: INodeNo, _newname: &OsStr, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn create(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, _mode: u32, _umask: u32, _flags: i32, reply: fuser::ReplyCreate) {
        reply.error(Errno::EROFS);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.opendir(ino.0).await {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(errno(e.errno)),
            }
        });
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: fuser::ReplyEmpty) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        // Offsets: 1 = ".", 2 = "..", 3.. = entries; the kernel passes back the last one seen.
        let result = for_each_dir_entry(&self.fs, ino.0, fh.0, offset, |i, name, attr| {
            let kind = if attr.is_dir { FileType::Directory } else { FileType::RegularFile };
            reply.add(INodeNo(attr.ino), i + 1, kind, name)
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e.errno)),
        }
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let owner = self.owner;
        let result = for_each_dir_entry(&self.fs, ino.0, fh.0, offset, |i, name, attr| {
            reply.add(INodeNo(attr.ino), i + 1, name, &owner.ttl, &owner.attr(attr), Generation(0))
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e.errno)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // S3 has no capacity; report an empty, read-only volume with 1 MiB blocks.
        reply.statfs(0, 0, 0, 0, 0, 1 << 20, 255, 1 << 20);
    }
}
