//! The least any passthrough FUSE file system can do per file, as a baseline for hoardfs's own
//! per-file cost: it serves a directory tree read-only, answers LOOKUP and READDIRPLUS from
//! memory, and makes an OPEN an `open(2)` and a passthrough registration (BACKING_OPEN) and a
//! RELEASE a BACKING_CLOSE. It checks nothing and caches nothing. What a reader waits for beyond this is hoardfs's.
//!
//!     cargo run --release --example fuse_ceiling -- ROOT MOUNTPOINT
//!
//! Prints `mounted` once it serves, and unmounts when its standard input closes (or on a line).
//! `benches/ab.py --ceiling` runs it over the raw files of a `benches/scale.py` dataset in every
//! round. Same FUSE settings as a hoardfs mount: 8 request threads, each with its own cloned
//! descriptor, entries and attributes kept by the kernel (here for 10 minutes). Not part of CI.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    BackingId, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, Request,
};

const TTL: Duration = Duration::from_secs(600);

struct Node {
    path: PathBuf,
    attr: FileAttr,
    /// A directory's entries in name order (READDIRPLUS offsets index it), and by name.
    entries: Vec<(String, u64)>,
    children: HashMap<String, u64>,
}

/// The tree, read once at start (inode `i` is `nodes[i - 1]`), and each open handle's backing.
struct Ceiling {
    nodes: Vec<Node>,
    handles: Mutex<HashMap<u64, Arc<BackingId>>>,
    next_fh: AtomicU64,
}

fn attr(ino: u64, md: &Metadata) -> FileAttr {
    let mtime = UNIX_EPOCH + Duration::from_secs(md.mtime().max(0) as u64);
    FileAttr {
        ino: INodeNo(ino),
        size: md.len(),
        blocks: md.blocks(),
        atime: mtime,
        mtime,
        ctime: mtime,
        crtime: mtime,
        kind: if md.is_dir() { FileType::Directory } else { FileType::RegularFile },
        perm: if md.is_dir() { 0o555 } else { 0o444 },
        nlink: 1,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

/// Adds the tree below `nodes[dir]` (depth first).
fn walk(nodes: &mut Vec<Node>, dir: usize) -> std::io::Result<()> {
    let mut entries = std::fs::read_dir(&nodes[dir].path)?.collect::<std::io::Result<Vec<_>>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let md = e.metadata()?;
        let ino = nodes.len() as u64 + 1;
        nodes.push(Node { path: e.path(), attr: attr(ino, &md), entries: Vec::new(), children: HashMap::new() });
        let name = e.file_name().to_string_lossy().into_owned();
        nodes[dir].children.insert(name.clone(), ino);
        nodes[dir].entries.push((name, ino));
        if md.is_dir() {
            walk(nodes, ino as usize - 1)?;
        }
    }
    Ok(())
}

impl Ceiling {
    fn node(&self, ino: INodeNo) -> Option<&Node> {
        self.nodes.get((ino.0 as usize).wrapping_sub(1))
    }
}

impl Filesystem for Ceiling {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let refused = |_| std::io::Error::other("this kernel does not offer FUSE passthrough");
        config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).map_err(refused)?;
        // As hoardfs: a listing carries every entry's attributes and leaves it in the kernel.
        config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS).map_err(|_| std::io::Error::other("READDIRPLUS refused"))?;
        config.set_max_stack_depth(1).map_err(|_| std::io::Error::other("stack depth 1 refused"))?;
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let child = self.node(parent).and_then(|p| p.children.get(name.to_str()?)).and_then(|&ino| self.node(INodeNo(ino)));
        match child {
            Some(node) => reply.entry(&TTL, &node.attr, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino) {
            Some(node) => reply.attr(&TTL, &node.attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let Some(dir) = self.node(ino) else { return reply.error(Errno::ENOENT) };
        // Offset i + 1 follows entry i; the kernel passes back the last one it took.
        for (i, (name, child)) in dir.entries.iter().enumerate().skip(offset as usize) {
            let Some(node) = self.node(INodeNo(*child)) else { continue };
            if reply.add(INodeNo(*child), i as u64 + 1, name, &TTL, &node.attr, Generation(0)) {
                break; // the reply is full
            }
        }
        reply.ok();
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let Some(node) = self.node(ino) else { return reply.error(Errno::ENOENT) };
        let backing = File::open(&node.path).and_then(|file| reply.open_backing(&file));
        match backing {
            Ok(id) => {
                let (fh, id) = (self.next_fh.fetch_add(1, Ordering::Relaxed), Arc::new(id));
                self.handles.lock().unwrap().insert(fh, Arc::clone(&id));
                reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id);
            }
            Err(e) => reply.error(Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let backing = self.handles.lock().unwrap().remove(&fh.0);
        reply.ok();
        drop(backing); // BACKING_CLOSE, after the reply
    }
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, root, mountpoint] = &args[..] else {
        eprintln!("usage: fuse_ceiling ROOT MOUNTPOINT");
        std::process::exit(2);
    };
    let root = PathBuf::from(root);
    let mut nodes = vec![Node { attr: attr(1, &std::fs::metadata(&root)?), path: root, entries: Vec::new(), children: HashMap::new() }];
    walk(&mut nodes, 0)?;
    let mut config = Config::default();
    config.mount_options = vec![MountOption::RO, MountOption::FSName("fuse_ceiling".into())];
    config.n_threads = Some(8);
    config.clone_fd = true;
    let fs = Ceiling { nodes, handles: Mutex::default(), next_fh: AtomicU64::new(1) };
    let session = fuser::spawn_mount(fs, mountpoint, &config)?;
    println!("mounted");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    session.umount_and_join()
}
