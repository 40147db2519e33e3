//! The cache directory on disk: its marker, its lock, and where each object's files live.
//!
//! ```text
//! CACHE_DIR/
//!   hoardfs-cache          marker: identifies the directory and its format version
//!   lock                   flock()ed by the one process that writes (a mount or `cache warm`)
//!   catalog/<size>.slab    every entry's index, in slots (see [`super::catalog`])
//!   objects/<aa>/<id>.data sparse data file: byte i of the object at offset i
//! ```
//! A format 1 directory kept each index beside its data file as `objects/<aa>/<id>.idx`; the
//! first writer of format 2 moves them into the catalog.
//! `<id>` is the hex blake3 of bucket, key and ETag (see [`ObjectId`]); `<aa>` its first byte.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

pub use crate::private::{create_private, create_private_dir_all, create_private_rw, write_private, FILE_MODE};

/// The directory format this hoardfs writes: 2, indexes in the catalog (1 had an index file
/// per object, and is upgraded in place by the first writer).
pub const DIR_VERSION: u32 = 2;

/// Name of the marker file.
pub const MARKER: &str = "hoardfs-cache";
/// Name of the lock file.
pub const LOCK: &str = "lock";
/// Directory holding the object files.
pub const OBJECTS: &str = "objects";
/// Entries a fresh file system may already have, which do not make a directory "foreign".
const HARMLESS: &[&str] = &["lost+found"];

/// Errors about the cache directory as a whole; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum CacheDirError {
    /// The OS refused an operation on the directory.
    #[error("cache dir {path}: {source} (check that it exists, is writable and is on a local file system)")]
    Io {
        /// Path involved.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The directory holds other files: refuse rather than mix our files into someone's data.
    #[error("cache dir {0} is not empty and is not a hoardfs cache; pass an empty or new directory")]
    Foreign(PathBuf),
    /// The directory was written by a newer hoardfs; nothing is touched.
    #[error("cache dir {path} has format version {found}, newer than this hoardfs understands ({DIR_VERSION}); upgrade hoardfs or use another --cache-dir (nothing was changed)")]
    NewerVersion {
        /// The directory.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
    /// The marker is unreadable.
    #[error("cache dir {0}: marker file {MARKER} is damaged; if this is a hoardfs cache, delete the directory to start afresh")]
    BadMarker(PathBuf),
    /// Every user may write the directory: anyone could plant or swap cache files.
    #[error("cache dir {0} is writable by every user, so anyone could plant cache files in it; run `chmod 700 {0}` (or pass another --cache-dir)")]
    WorldWritable(PathBuf),
    /// Another process owns the directory.
    #[error("cache dir {path} is in use by another hoardfs process (pid {pid}); unmount it first or use another --cache-dir")]
    Locked {
        /// The directory.
        path: PathBuf,
        /// The owner's pid, as written in the lock file.
        pid: String,
    },
}

/// Identity of one object version in the cache: blake3 of `bucket \0 key \0 etag`, so a new
/// ETag is a new entry and old bytes can never be served for new content.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId(pub [u8; 32]);

impl ObjectId {
    /// Derives the id of an object version.
    pub fn new(bucket: &str, key: &str, etag: &str) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(b"hoardfs-object-v1\0");
        for part in [bucket, key, etag] {
            h.update(part.as_bytes());
            h.update(b"\0");
        }
        Self(*h.finalize().as_bytes())
    }

    /// Lower-case hex, the file stem on disk.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses a file stem back into an id.
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
            out[i] = u8::from_str_radix(std::str::from_utf8(chunk).ok()?, 16).ok()?;
        }
        Some(Self(out))
    }
}

/// The state of the lock file that a checkpoint is valid for: every writer rewrites the lock
/// file with its pid when it takes it, which changes the pid and the mtime and ctime (and, if
/// the file was recreated, its inode). The pid tells apart two writers whose writes fall in one
/// tick of a coarse file-system clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockStamp {
    /// Device of the lock file.
    pub dev: u64,
    /// Inode of the lock file.
    pub ino: u64,
    /// Last modification, ns since the epoch.
    pub mtime_ns: i64,
    /// Last status change, ns since the epoch.
    pub ctime_ns: i64,
    /// The pid written in it (0 if it held none).
    pub pid: u32,
}

impl LockStamp {
    /// The stamp of a lock file as it stands, with the pid written in it (0 if none or unreadable).
    fn read(file: &mut File) -> std::io::Result<Self> {
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        Self::of(file, pid.trim().parse().unwrap_or(0))
    }

    fn of(file: &File, pid: u32) -> std::io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = file.metadata()?;
        let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
        Ok(Self { dev: m.dev(), ino: m.ino(), mtime_ns: ns(m.mtime(), m.mtime_nsec()), ctime_ns: ns(m.ctime(), m.ctime_nsec()), pid })
    }
}

/// The lock a writer holds, and the lock file's state before and after it took it.
struct Held {
    _file: File,
    /// As the previous writer left it: a checkpoint made for this stamp is current.
    before: LockStamp,
    /// As this writer left it: the stamp a checkpoint written by this process carries.
    after: LockStamp,
}

/// An opened cache directory. Holding the exclusive form keeps the lock.
pub struct CacheDir {
    root: PathBuf,
    lock: Option<Held>,
    /// The format its marker gave when it was opened (a writer has upgraded it to
    /// [`DIR_VERSION`] since).
    found_version: u32,
}

impl CacheDir {
    /// Opens (creating if needed) `root` for writing and takes its lock: one writer per
    /// directory, so two mounts can never interleave index updates.
    pub fn open_exclusive(root: &Path) -> Result<Self, CacheDirError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CacheDirError::Io { path, source }
        };
        create_private_dir_all(root).map_err(io(root))?;
        check_private(root)?;
        let found_version = Self::check_marker(root, true)?;
        create_private_dir_all(&root.join(OBJECTS)).map_err(io(root))?;
        let lock_path = root.join(LOCK);
        let mut lock = {
            use std::os::unix::fs::OpenOptionsExt;
            OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(FILE_MODE).open(&lock_path)
        }
        .map_err(io(&lock_path))?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut pid = String::new();
            let _ = lock.read_to_string(&mut pid);
            return Err(CacheDirError::Locked { path: root.to_path_buf(), pid: pid.trim().to_string() });
        }
        let before = LockStamp::read(&mut lock).map_err(io(&lock_path))?;
        lock.set_len(0).map_err(io(&lock_path))?;
        std::io::Seek::rewind(&mut lock).map_err(io(&lock_path))?;
        write!(lock, "{}", std::process::id()).map_err(io(&lock_path))?;
        let after = LockStamp::of(&lock, std::process::id()).map_err(io(&lock_path))?;
        if found_version < DIR_VERSION {
            // The marker goes first: from here on a hoardfs that knows only format 1 refuses
            // the directory instead of taking catalog entries' data files for orphans, and the
            // index files still to move are moved by whichever writer of format 2 comes next.
            tracing::info!("upgrading cache dir {} from format {found_version} to {DIR_VERSION}", root.display());
            let marker = root.join(MARKER);
            write_private(&marker, marker_text().as_bytes()).map_err(io(&marker))?;
        }
        Ok(Self { root: root.to_path_buf(), lock: Some(Held { _file: lock, before, after }), found_version })
    }

    /// Opens an existing cache directory for reading only (inspection beside a mount).
    pub fn open_read_only(root: &Path) -> Result<Self, CacheDirError> {
        if !root.join(MARKER).exists() {
            return Err(if root.exists() {
                CacheDirError::Foreign(root.to_path_buf())
            } else {
                CacheDirError::Io {
                    path: root.to_path_buf(),
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
                }
            });
        }
        let found_version = Self::check_marker(root, false)?;
        Ok(Self { root: root.to_path_buf(), lock: None, found_version })
    }

    /// Whether another process holds the lock right now (a mount is running).
    pub fn is_locked(root: &Path) -> Option<String> {
        let file = File::open(root.join(LOCK)).ok()?;
        // SAFETY: as above.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
            // SAFETY: as above.
            unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
            return None;
        }
        Some(std::fs::read_to_string(root.join(LOCK)).unwrap_or_default().trim().to_string())
    }

    /// The directory's format version (creating the marker of a new one).
    fn check_marker(root: &Path, create: bool) -> Result<u32, CacheDirError> {
        let marker = root.join(MARKER);
        match std::fs::read_to_string(&marker) {
            Ok(text) => {
                let version = text
                    .lines()
                    .find_map(|l| l.strip_prefix("format-version = "))
                    .and_then(|v| v.trim().parse::<u32>().ok())
                    .ok_or_else(|| CacheDirError::BadMarker(root.to_path_buf()))?;
                if version > DIR_VERSION {
                    return Err(CacheDirError::NewerVersion { path: root.to_path_buf(), found: version });
                }
                if version < 1 {
                    return Err(CacheDirError::BadMarker(root.to_path_buf()));
                }
                Ok(version)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let foreign = std::fs::read_dir(root)
                    .map_err(|source| CacheDirError::Io { path: root.to_path_buf(), source })?
                    .flatten()
                    .any(|e| !HARMLESS.contains(&e.file_name().to_string_lossy().as_ref()));
                if foreign {
                    return Err(CacheDirError::Foreign(root.to_path_buf()));
                }
                write_private(&marker, marker_text().as_bytes()).map_err(|source| CacheDirError::Io { path: marker, source })?;
                Ok(DIR_VERSION)
            }
            Err(source) => Err(CacheDirError::Io { path: marker, source }),
        }
    }

    /// The lock file's state as the previous writer left it, and as this one left it (`None`
    /// for a read-only handle).
    pub fn lock_stamps(&self) -> Option<(LockStamp, LockStamp)> {
        self.lock.as_ref().map(|h| (h.before, h.after))
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The format version the marker gave when the directory was opened.
    pub fn found_version(&self) -> u32 {
        self.found_version
    }

    /// Data file of an object version.
    pub fn data_path(&self, id: &ObjectId) -> PathBuf {
        self.shard(id).join(format!("{}.data", id.hex()))
    }

    /// Where format 1 kept an object version's index.
    pub fn v1_index_path(&self, id: &ObjectId) -> PathBuf {
        self.shard(id).join(format!("{}.idx", id.hex()))
    }

    fn shard(&self, id: &ObjectId) -> PathBuf {
        self.root.join(OBJECTS).join(format!("{:02x}", id.0[0]))
    }

    /// What the object shards hold: the ids with a data file, those with a format 1 index
    /// file, and stray files (temp files left by a crash, names not of this format) that a
    /// writer should delete.
    pub fn scan(&self) -> std::io::Result<ShardScan> {
        let objects = self.root.join(OBJECTS);
        let Ok(entries) = std::fs::read_dir(&objects) else { return Ok(ShardScan::default()) };
        let mut shards = Vec::new();
        for e in entries {
            let e = e?;
            if e.file_type()?.is_dir() {
                shards.push(e.path());
            }
        }
        // Shards are independent directories: walk them from several threads (a cold walk of
        // 100,000 entries is many small reads).
        const THREADS: usize = 16;
        let per = shards.len().div_ceil(THREADS).max(1);
        let results: Vec<std::io::Result<ShardScan>> = std::thread::scope(|s| {
            let handles: Vec<_> =
                shards.chunks(per).map(|part| s.spawn(move || part.iter().map(|p| scan_shard(p)).collect::<Vec<_>>())).collect();
            handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
        });
        let mut all = ShardScan::default();
        for r in results {
            let r = r?;
            all.data.extend(r.data);
            all.v1_indexes.extend(r.v1_indexes);
            all.strays.extend(r.strays);
        }
        Ok(all)
    }
}

/// What [`CacheDir::scan`] found.
#[derive(Debug, Default)]
pub struct ShardScan {
    /// Ids with a data file.
    pub data: Vec<ObjectId>,
    /// Ids with a format 1 index file.
    pub v1_indexes: Vec<ObjectId>,
    /// Files that are not part of any entry.
    pub strays: Vec<PathBuf>,
}

/// Refuses a world-writable cache dir and warns about one others can read: hoardfs keeps what it
/// creates private ([`DIR_MODE`], [`FILE_MODE`]), but a directory that existed before keeps its
/// mode, and other users could read through it.
fn check_private(root: &Path) -> Result<(), CacheDirError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(root).map_err(|source| CacheDirError::Io { path: root.to_path_buf(), source })?.permissions().mode();
    if mode & 0o002 != 0 {
        return Err(CacheDirError::WorldWritable(root.to_path_buf()));
    }
    if mode & 0o077 != 0 {
        tracing::warn!(
            "cache dir {} has mode {:o}: other users can read cached objects and key names; run `chmod 700 {}`",
            root.display(),
            mode & 0o777,
            root.display()
        );
    }
    Ok(())
}

/// One shard directory.
fn scan_shard(shard: &Path) -> std::io::Result<ShardScan> {
    let mut found = ShardScan::default();
    for entry in std::fs::read_dir(shard)? {
        let entry = entry?;
        let name = entry.file_name();
        let parsed = name.to_str().and_then(|n| n.rsplit_once('.')).and_then(|(stem, ext)| Some((ObjectId::from_hex(stem)?, ext)));
        match parsed {
            Some((id, "data")) => found.data.push(id),
            Some((id, "idx")) => found.v1_indexes.push(id),
            _ => found.strays.push(entry.path()),
        }
    }
    Ok(found)
}

/// Written by a mount when it starts (`mount.json`), so inspection tools can find its live
/// counters; and with its final counters when it ends (`last-mount.json`). Not part of the
/// cache format: losing either loses only statistics.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct MountRecord {
    /// Process id of the mount.
    pub pid: u32,
    /// `s3://bucket/prefix` mounted.
    pub source: String,
    /// Where.
    pub mountpoint: String,
    /// `--metrics-addr`, if given.
    pub metrics_addr: Option<String>,
    /// `--max-cache-size`, if given.
    pub max_cache_size: Option<u64>,
    /// Seconds since the epoch when it started.
    pub started: u64,
    /// Counters at unmount (only in `last-mount.json`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub counters: Vec<(String, u64)>,
}

/// Name of the running mount's record.
pub const MOUNT_RECORD: &str = "mount.json";
/// Name of the last finished mount's record.
pub const LAST_MOUNT_RECORD: &str = "last-mount.json";

impl MountRecord {
    /// Reads a record; `None` if absent or unreadable.
    pub fn read(path: &Path) -> Option<Self> {
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
    }

    /// Writes a record atomically.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("json.tmp");
        write_private(&tmp, &serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
        std::fs::rename(tmp, path)
    }
}

fn marker_text() -> String {
    format!("hoardfs cache directory: do not edit; `hoardfs cache` inspects and manages it.\nformat-version = {DIR_VERSION}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let a = CacheDir::open_exclusive(dir.path()).unwrap();
        assert!(matches!(CacheDir::open_exclusive(dir.path()), Err(CacheDirError::Locked { .. })));
        assert!(CacheDir::is_locked(dir.path()).is_some());
        assert!(CacheDir::open_read_only(dir.path()).is_ok());
        drop(a);
        assert!(CacheDir::is_locked(dir.path()).is_none());
        CacheDir::open_exclusive(dir.path()).unwrap();
    }

    #[test]
    fn refuses_foreign_and_newer() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("thesis.tex"), "precious").unwrap();
        assert!(matches!(CacheDir::open_exclusive(dir.path()), Err(CacheDirError::Foreign(_))));
        assert_eq!(std::fs::read_to_string(dir.path().join("thesis.tex")).unwrap(), "precious");

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MARKER), "format-version = 99\n").unwrap();
        let err = CacheDir::open_exclusive(dir.path()).err().unwrap();
        assert!(err.to_string().contains("upgrade hoardfs"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "nothing may be created");
    }

    #[test]
    fn id_hex_roundtrip() {
        let id = ObjectId::new("b", "k", "\"e\"");
        assert_eq!(ObjectId::from_hex(&id.hex()), Some(id));
    }

    #[test]
    fn fixture_marker_is_accepted() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cache-format/vectors/cache-dir-v1");
        CacheDir::open_read_only(&root).unwrap();
        let dir = CacheDir::open_read_only(&root).unwrap();
        assert_eq!(dir.found_version(), 1);
        let found = dir.scan().unwrap();
        assert_eq!((found.data.len(), found.v1_indexes.len()), (1, 1));
        assert!(found.strays.is_empty());
    }
}
