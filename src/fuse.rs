//! The `fuser::Filesystem` adapter: decode, hand to [`HoardFs`] on the async runtime, reply.
//!
//! No callback blocks its FUSE thread on disk or network: each one takes its `Reply*`, spawns the
//! work, and the task replies when done, so parallel readers are served in parallel.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Duration;

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, LockOwner, OpenAccMode, OpenFlags,
    ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEntry, ReplyOpen, ReplyStatfs, Request,
};

use crate::fs::{Attr, HoardFs};

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

/// The adapter; the TTL is how long the kernel may cache entries and attributes.
pub struct FuseAdapter {
    fs: Arc<HoardFs>,
    rt: tokio::runtime::Handle,
    owner: Owner,
}

impl FuseAdapter {
    /// Wraps `fs`; work runs on `rt`.
    pub fn new(fs: Arc<HoardFs>, rt: tokio::runtime::Handle, attr_ttl: Duration) -> Self {
        // SAFETY: getuid/getgid cannot fail and touch no memory.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Self { fs, rt, owner: Owner { uid, gid, ttl: attr_ttl } }
    }
}

fn errno(e: i32) -> Errno {
    Errno::from_i32(e)
}

impl fuser::Filesystem for FuseAdapter {
    fn destroy(&mut self) {
        self.fs.shutdown();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(name) = name.to_str().map(str::to_owned) else { return reply.error(Errno::ENOENT) };
        let (fs, owner) = (self.fs.clone(), self.owner);
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
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.open(ino.0, write).await {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
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
