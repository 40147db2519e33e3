//! Inodes and listings: how S3's flat keys become a directory tree, and how long what we learned
//! about it stays true (`--metadata-ttl`).
//!
//! Rules, chosen to be predictable:
//! - A prefix `p/` is a directory; objects under it are its files.
//! - A directory marker object (`dir/`, the directory's own key) is not shown as a file.
//! - A name that is both an object and a prefix (`a` and `a/b`) is shown as the directory; the
//!   object is hidden, with a warning.
//! - Keys whose path segment cannot be a file name (empty, `.`, `..`, over 255 bytes, containing
//!   NUL) are skipped with a warning.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::listing::{ListingStore, StoredListing};
pub use table::DirListing;
use table::Tables;

mod table;
use crate::object::{ObjectClient, ObjectError, ObjectInfo};

/// Inode number of the mount's root directory.
pub const ROOT_INO: u64 = 1;
/// Longest file name Linux accepts.
const NAME_MAX: usize = 255;

/// What an inode is.
#[derive(Clone, Debug)]
pub enum NodeKind {
    /// A prefix, with the trailing `/` (the root of an unprefixed mount is "").
    Dir {
        /// Full S3 prefix.
        prefix: String,
    },
    /// An object version.
    File {
        /// What S3 last told us.
        info: ObjectInfo,
    },
}

/// An inode and when its facts were learned.
#[derive(Clone, Debug)]
pub struct Node {
    /// Inode number.
    pub ino: u64,
    /// What it is.
    pub kind: NodeKind,
    /// When S3 last confirmed it.
    pub learned: Instant,
}

/// Metadata errors, mapped to errno by the `fs` layer.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// No such name.
    #[error("no such file or directory")]
    NotFound,
    /// Unknown inode (forgotten or never issued).
    #[error("stale inode")]
    Stale,
    /// S3 failed.
    #[error(transparent)]
    S3(ObjectError),
}

/// A directory's listing as it stands, and when it was learned.
struct Listing {
    entries: Arc<DirListing>,
    learned: Instant,
}

/// What the local cache knows of the bucket without S3: consulted only when S3 cannot be
/// reached, so an offline mount answers lookups of cached objects by path (a training job that
/// opens files from a list never lists their directories).
pub trait OfflineCatalog: Send + Sync {
    /// The cached version of `key`, if any.
    fn object(&self, key: &str) -> Option<ObjectInfo>;
    /// Whether any cached key starts with `prefix` (which ends in `/`): a directory.
    fn holds_prefix(&self, prefix: &str) -> bool;
}

/// The inode table and listing cache of one mount.
pub struct Meta {
    client: Arc<dyn ObjectClient>,
    ttl: Option<Duration>,
    tables: Mutex<Tables>,
    store: Option<ListingStore>,
    catalog: Option<Arc<dyn OfflineCatalog>>,
    offline_warned: std::sync::atomic::AtomicBool,
}

/// Whether `name` can be a file name on Linux.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && name.len() <= NAME_MAX && !name.contains('\0')
}

impl Meta {
    /// A table whose root is `prefix` ("" or ending in `/`). `ttl` of `None` means facts never
    /// expire (immutable datasets).
    pub fn new(client: Arc<dyn ObjectClient>, prefix: &str, ttl: Option<Duration>, store: Option<ListingStore>) -> Self {
        let tables = Tables::new(prefix);
        Self { client, ttl, tables: Mutex::new(tables), store, catalog: None, offline_warned: Default::default() }
    }

    /// Answers lookups from `catalog` when S3 cannot be reached.
    pub fn with_offline_catalog(mut self, catalog: Arc<dyn OfflineCatalog>) -> Self {
        self.catalog = Some(catalog);
        self
    }

    fn fresh(&self, learned: Instant) -> bool {
        self.ttl.is_none_or(|ttl| learned.elapsed() < ttl)
    }

    /// The node of `ino`.
    pub fn node(&self, ino: u64) -> Result<Node, MetaError> {
        self.tables.lock().unwrap().node(ino).ok_or(MetaError::Stale)
    }

    fn dir_prefix(&self, ino: u64) -> Result<String, MetaError> {
        match self.node(ino)?.kind {
            NodeKind::Dir { prefix } => Ok(prefix),
            NodeKind::File { .. } => Err(MetaError::NotFound),
        }
    }

    fn intern(tables: &mut Tables, kind: NodeKind, learned: Instant) -> Node {
        tables.intern(kind, learned)
    }

    /// Looks `name` up in directory `parent`: from a fresh listing or cached answer if there is
    /// one, else with one HEAD and one single-key LIST sent together.
    pub async fn lookup(&self, parent: u64, name: &str) -> Result<Node, MetaError> {
        if let Some(answer) = self.lookup_cached(parent, name) {
            return answer;
        }
        let prefix = self.dir_prefix(parent)?;
        // A stored listing of the parent (fresh, or any age if S3 fails) answers without requests.
        if self.store.as_ref().is_some_and(|s| s.exists(&prefix)) {
            let entries = self.readdir(parent).await?;
            return self.tables.lock().unwrap().entry(&entries, name).ok_or(MetaError::NotFound);
        }
        let key = format!("{prefix}{name}");
        let dir_prefix = format!("{key}/");
        // A fresh stored listing of the child itself proves a directory (a name opened by path,
        // as `ls big/` does, is looked up without its parent ever being listed).
        if let Some(age) = self.store.as_ref().and_then(|s| s.age(&dir_prefix)).filter(|age| self.ttl.is_none_or(|ttl| *age < ttl)) {
            let learned = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
            return Ok(Self::intern(&mut self.tables.lock().unwrap(), NodeKind::Dir { prefix: dir_prefix }, learned));
        }
        let (head, list) = tokio::join!(self.client.head(&key), self.client.list(&dir_prefix, None, Some(1)));
        let list = match list {
            Ok(list) => list,
            Err(e) => return self.lookup_offline(&key, e),
        };
        let mut tables = self.tables.lock().unwrap();
        if !list.objects.is_empty() || !list.prefixes.is_empty() {
            return Ok(Self::intern(&mut tables, NodeKind::Dir { prefix: dir_prefix }, Instant::now()));
        }
        match head {
            Ok(info) => Ok(Self::intern(&mut tables, NodeKind::File { info }, Instant::now())),
            Err(ObjectError::NotFound(_)) => {
                tables.negative.insert((parent, name.to_string()), Instant::now());
                Err(MetaError::NotFound)
            }
            Err(e) => Err(MetaError::S3(e)),
        }
    }

    /// The answer to a lookup if it is known without asking S3 (a fresh listing of the parent,
    /// a fresh node, or a fresh negative entry); `None` if S3 must be asked. Never blocks.
    pub fn lookup_cached(&self, parent: u64, name: &str) -> Option<Result<Node, MetaError>> {
        if !valid_name(name) {
            return Some(Err(MetaError::NotFound));
        }
        let prefix = match self.dir_prefix(parent) {
            Ok(p) => p,
            Err(e) => return Some(Err(e)),
        };
        let tables = self.tables.lock().unwrap();
        if let Some(listing) = tables.listings.get(&parent).filter(|l| self.fresh(l.learned)) {
            return Some(tables.entry(&listing.entries, name).ok_or(MetaError::NotFound));
        }
        if tables.negative.get(&(parent, name.to_string())).is_some_and(|t| self.fresh(*t)) {
            return Some(Err(MetaError::NotFound));
        }
        let key = format!("{prefix}{name}");
        for is_dir in [true, false] {
            let path = if is_dir { format!("{key}/") } else { key.clone() };
            if let Some(node) = tables.find(is_dir, &path).ok().and_then(|i| tables.node(i)) {
                if self.fresh(node.learned) {
                    return Some(Ok(node.clone()));
                }
            }
        }
        None
    }

    /// The entries of directory `ino`: from memory or the cache dir's stored listing while
    /// fresh, else from a paginated LIST (then stored). If S3 cannot be reached, a stale listing
    /// is served rather than an error, with a warning (offline epochs).
    pub async fn readdir(&self, ino: u64) -> Result<Arc<DirListing>, MetaError> {
        let prefix = self.dir_prefix(ino)?;
        if let Some(l) = self.tables.lock().unwrap().listings.get(&ino).filter(|l| self.fresh(l.learned)) {
            return Ok(l.entries.clone());
        }
        let stored = self.store.as_ref().and_then(|s| s.load(&prefix));
        if let Some(stored) = stored.as_ref().filter(|l| self.ttl.is_none_or(|ttl| l.age() < ttl)) {
            return Ok(self.install_stored(ino, stored));
        }
        match self.list_from_s3(&prefix).await {
            Ok((dirs, files)) => {
                if let Some(store) = &self.store {
                    let files: Vec<(String, ObjectInfo)> = files.iter().map(|(n, o)| (n.clone(), o.clone())).collect();
                    store.save(&prefix, dirs.keys().cloned().collect(), &files);
                }
                Ok(self.install(ino, &prefix, dirs, files, Instant::now()))
            }
            Err(e) => {
                if let Some(l) = self.tables.lock().unwrap().listings.get(&ino) {
                    self.warn_offline(&e);
                    return Ok(l.entries.clone());
                }
                match stored {
                    Some(stored) => {
                        self.warn_offline(&e);
                        Ok(self.install_stored(ino, &stored))
                    }
                    None => Err(MetaError::S3(e)),
                }
            }
        }
    }

    /// A lookup S3 could not answer, answered from the cache's own records if they know the name
    /// (served as learned now: it is the best answer there is until S3 is back).
    fn lookup_offline(&self, key: &str, e: ObjectError) -> Result<Node, MetaError> {
        let Some(catalog) = &self.catalog else { return Err(MetaError::S3(e)) };
        let dir_prefix = format!("{key}/");
        let kind = if catalog.holds_prefix(&dir_prefix) {
            NodeKind::Dir { prefix: dir_prefix }
        } else if let Some(info) = catalog.object(key) {
            NodeKind::File { info }
        } else {
            return Err(MetaError::S3(e));
        };
        self.warn_offline(&e);
        Ok(Self::intern(&mut self.tables.lock().unwrap(), kind, Instant::now()))
    }

    fn warn_offline(&self, e: &ObjectError) {
        if !self.offline_warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!("S3 is unreachable ({e}); serving stored listings and cached data (offline)");
        }
    }

    async fn list_from_s3(&self, prefix: &str) -> Result<(BTreeMap<String, String>, BTreeMap<String, ObjectInfo>), ObjectError> {
        let mut dirs = BTreeMap::new();
        let mut files = BTreeMap::new();
        let mut token = None;
        loop {
            let page = self.client.list(prefix, token, None).await?;
            for p in page.prefixes {
                let name = p[prefix.len()..].trim_end_matches('/').to_string();
                if valid_name(&name) {
                    dirs.insert(name, p);
                } else {
                    tracing::warn!("skipping prefix {p:?}: {name:?} cannot be a directory name");
                }
            }
            for o in page.objects {
                let name = o.key[prefix.len()..].to_string();
                if name.is_empty() {
                    continue; // the directory marker object of this directory
                }
                if valid_name(&name) {
                    files.insert(name, o);
                } else {
                    tracing::warn!("skipping key {:?}: {name:?} cannot be a file name", o.key);
                }
            }
            token = page.next_token;
            if token.is_none() {
                return Ok((dirs, files));
            }
        }
    }

    fn install_stored(&self, ino: u64, stored: &StoredListing) -> Arc<DirListing> {
        let dirs = stored.dirs.iter().map(|d| (d.clone(), format!("{}{d}/", stored.prefix))).collect();
        let files = stored.objects().collect();
        let learned = Instant::now().checked_sub(stored.age()).unwrap_or_else(Instant::now);
        self.install(ino, &stored.prefix, dirs, files, learned)
    }

    /// Makes a listing current: nodes interned (a name that is both a prefix and an object is
    /// the directory), entries sorted by name for binary search.
    fn install(
        &self,
        ino: u64,
        prefix: &str,
        dirs: BTreeMap<String, String>,
        mut files: BTreeMap<String, ObjectInfo>,
        learned: Instant,
    ) -> Arc<DirListing> {
        let mut tables = self.tables.lock().unwrap();
        let mut named = Vec::with_capacity(dirs.len() + files.len());
        for (name, p) in dirs {
            if files.remove(&name).is_some() {
                tracing::warn!("s3 key {prefix}{name} is both an object and a prefix; showing the directory");
            }
            named.push((name, Self::intern(&mut tables, NodeKind::Dir { prefix: p }, learned).ino));
        }
        for (name, info) in files {
            named.push((name, Self::intern(&mut tables, NodeKind::File { info }, learned).ino));
        }
        named.sort_unstable();
        let entries = Arc::new(DirListing::new(prefix.len(), named.into_iter().map(|(_, ino)| ino).collect()));
        tables.listings.insert(ino, Listing { entries: entries.clone(), learned });
        tables.negative.retain(|(p, _), _| *p != ino);
        entries
    }

    /// `f` of the name and node of at most `max` of `listing`'s entries from index `from` on,
    /// under one lock (a page of a directory read). An entry whose inode is unknown (never:
    /// nodes are not removed) is skipped.
    pub fn map_entries<T>(&self, listing: &DirListing, from: usize, max: usize, f: impl Fn(&str, &Node) -> T) -> Vec<T> {
        self.tables.lock().unwrap().map(listing, from, max, f)
    }

    /// The directory that holds `key`, if this mount has met it (its inode is not made here).
    pub fn parent_of(&self, key: &str) -> Option<u64> {
        let dir = &key[..key.rfind('/').map_or(0, |slash| slash + 1)];
        self.tables.lock().unwrap().find(true, dir).ok()
    }

    /// The files among a listing's entries `from..from + max`, with their inodes (subdirectories
    /// left out).
    pub fn files_of(&self, listing: &DirListing, from: usize, max: usize) -> Vec<(u64, ObjectInfo)> {
        self.map_entries(listing, from, max, |_, node| match &node.kind {
            NodeKind::File { info } => Some((node.ino, info.clone())),
            NodeKind::Dir { .. } => None,
        })
        .into_iter()
        .flatten()
        .collect()
    }

    /// The object behind file `ino`, re-checked with HEAD when its facts are older than the TTL
    /// (so an overwrite in S3 is picked up at the next open).
    pub async fn open_file(&self, ino: u64) -> Result<ObjectInfo, MetaError> {
        if let Some(answer) = self.open_file_cached(ino) {
            return answer;
        }
        let NodeKind::File { info } = self.node(ino)?.kind else { return Err(MetaError::NotFound) };
        let fresh = match self.client.head(&info.key).await {
            Ok(fresh) => fresh,
            Err(ObjectError::NotFound(_)) => return Err(MetaError::NotFound),
            Err(ObjectError::PreconditionFailed(_) | ObjectError::AccessDenied(_)) | Err(ObjectError::WrongLength { .. }) => {
                return Err(MetaError::S3(ObjectError::Other(format!("HeadObject {} failed", info.key))))
            }
            Err(e) => {
                // Unreachable: the version we know is still the best answer (offline epochs).
                self.warn_offline(&e);
                return Ok(info);
            }
        };
        Self::intern(&mut self.tables.lock().unwrap(), NodeKind::File { info: fresh.clone() }, Instant::now());
        Ok(fresh)
    }

    /// The object behind file `ino` if its facts are fresh; `None` if S3 must be asked.
    pub fn open_file_cached(&self, ino: u64) -> Option<Result<ObjectInfo, MetaError>> {
        let node = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return Some(Err(e)),
        };
        match node.kind {
            // A listing without ETags (some S3-compatible servers omit them) pins no version:
            // HEAD at open, so the cache keys and verifies the version actually read.
            NodeKind::File { info } if self.fresh(node.learned) && !info.etag.is_empty() => Some(Ok(info)),
            NodeKind::File { .. } => None,
            NodeKind::Dir { .. } => Some(Err(MetaError::NotFound)),
        }
    }

    /// Marks a file's facts as stale, so the next open asks S3 again (after an If-Match failure).
    pub fn invalidate(&self, ino: u64) {
        let age = self.ttl.unwrap_or(Duration::ZERO) + Duration::from_secs(1);
        self.tables.lock().unwrap().age(ino, age);
    }
}

#[cfg(test)]
mod tests;
