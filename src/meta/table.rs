//! The inode table: every node once, packed, found by inode number or by path.
//!
//! At a million listed objects the table *is* the daemon's memory, so each object costs one
//! packed node (its key boxed to its length, its ETag as 16 bytes when it is an MD5, its mtime
//! in milliseconds), one slot in the by-path index (an inode number; the path is compared
//! through the node) and one inode number in its directory's listing (the name is the node's
//! path after the directory's prefix). [`Node`], what callers get, is unpacked on the way out.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::time::{Duration, Instant, SystemTime};

use hashbrown::HashTable;

use super::{Listing, Node, NodeKind, ROOT_INO};
use crate::object::ObjectInfo;

/// A directory's entries: inode numbers, sorted by name. Names are not stored: an entry's name is
/// its node's path after the directory's prefix, so each key string lives once, in the inode
/// table (a listing used to hold a copy of every entry's node, and then of every name).
#[derive(Debug, Default)]
pub struct DirListing {
    /// Length of the directory's prefix.
    prefix_len: usize,
    inos: Vec<u64>,
}

impl DirListing {
    pub(super) fn new(prefix_len: usize, inos: Vec<u64>) -> Self {
        Self { prefix_len, inos }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.inos.len()
    }

    /// Whether the directory is empty.
    pub fn is_empty(&self) -> bool {
        self.inos.is_empty()
    }

    /// The inode numbers, in name order.
    pub fn inos(&self) -> &[u64] {
        &self.inos
    }
}

/// A node as the table holds it.
struct Packed {
    what: What,
    learned: Instant,
}

enum What {
    Dir { prefix: Box<str> },
    File { key: Box<str>, size: u64, etag: Etag, mtime_ms: i64 },
}

/// An ETag: 16 bytes when it is a quoted MD5 in lower-case hex (a plain upload's), else as sent.
enum Etag {
    Md5([u8; 16]),
    Other(Box<str>),
}

impl Etag {
    fn pack(etag: &str) -> Self {
        let hex = etag.strip_prefix('"').and_then(|e| e.strip_suffix('"')).filter(|h| h.len() == 32);
        let digest = hex.and_then(|h| {
            let mut out = [0u8; 16];
            for (i, pair) in h.as_bytes().chunks(2).enumerate() {
                let nibble = |c: u8| match c {
                    b'0'..=b'9' => Some(c - b'0'),
                    b'a'..=b'f' => Some(c - b'a' + 10),
                    _ => None, // upper case would not round-trip
                };
                out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
            }
            Some(out)
        });
        match digest {
            Some(d) => Self::Md5(d),
            None => Self::Other(etag.into()),
        }
    }

    fn unpack(&self) -> String {
        match self {
            Self::Md5(d) => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let mut s = String::with_capacity(34);
                s.push('"');
                for b in d {
                    s.push(HEX[(b >> 4) as usize] as char);
                    s.push(HEX[(b & 15) as usize] as char);
                }
                s.push('"');
                s
            }
            Self::Other(s) => s.to_string(),
        }
    }
}

impl Packed {
    fn pack(kind: &NodeKind, learned: Instant) -> Self {
        let what = match kind {
            NodeKind::Dir { prefix } => What::Dir { prefix: prefix.as_str().into() },
            NodeKind::File { info } => What::File {
                key: info.key.as_str().into(),
                size: info.size,
                etag: Etag::pack(&info.etag),
                mtime_ms: info.last_modified.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0),
            },
        };
        Self { what, learned }
    }

    fn unpack(&self, ino: u64) -> Node {
        let kind = match &self.what {
            What::Dir { prefix } => NodeKind::Dir { prefix: prefix.to_string() },
            What::File { key, size, etag, mtime_ms } => NodeKind::File {
                info: ObjectInfo {
                    key: key.to_string(),
                    size: *size,
                    etag: etag.unpack(),
                    last_modified: SystemTime::UNIX_EPOCH + Duration::from_millis((*mtime_ms).max(0) as u64),
                },
            },
        };
        Node { ino, kind, learned: self.learned }
    }

    /// Whether it is a directory, and its full path (prefix with `/`, or key).
    fn path(&self) -> (bool, &str) {
        match &self.what {
            What::Dir { prefix } => (true, prefix),
            What::File { key, .. } => (false, key),
        }
    }

    /// Its name in a directory whose prefix is `prefix_len` bytes long.
    fn name(&self, prefix_len: usize) -> &str {
        let (is_dir, path) = self.path();
        let end = if is_dir { path.len().saturating_sub(1) } else { path.len() };
        path.get(prefix_len..end).unwrap_or("")
    }
}

/// Inodes, paths, listings and negative answers of one mount.
pub(super) struct Tables {
    /// The node of inode `i` at `nodes[i - ROOT_INO]`: inode numbers are handed out densely and
    /// never reused, so a name keeps its inode across refreshes.
    nodes: Vec<Packed>,
    /// Every inode number, hashed by (is_dir, full path); the path itself lives in the node.
    by_path: HashTable<u64>,
    hasher: RandomState,
    pub listings: HashMap<u64, Listing>,
    pub negative: HashMap<(u64, String), Instant>,
}

impl Tables {
    /// A table holding the root, a directory with `prefix`.
    pub fn new(prefix: &str) -> Self {
        let mut t = Self {
            nodes: Vec::new(),
            by_path: HashTable::new(),
            hasher: RandomState::new(),
            listings: HashMap::new(),
            negative: HashMap::new(),
        };
        let root = t.intern(NodeKind::Dir { prefix: prefix.to_string() }, Instant::now());
        debug_assert_eq!(root.ino, ROOT_INO);
        t
    }

    fn packed(&self, ino: u64) -> Option<&Packed> {
        self.nodes.get(ino.checked_sub(ROOT_INO)? as usize)
    }

    /// The node of `ino`.
    pub fn node(&self, ino: u64) -> Option<Node> {
        self.packed(ino).map(|p| p.unpack(ino))
    }

    /// The inode of `path`, or the hash to insert it with.
    pub fn find(&self, is_dir: bool, path: &str) -> Result<u64, u64> {
        let hash = self.hasher.hash_one((is_dir, path));
        let nodes = &self.nodes;
        self.by_path.find(hash, |&ino| nodes[(ino - ROOT_INO) as usize].path() == (is_dir, path)).copied().ok_or(hash)
    }

    /// Records what S3 said about a path: the inode it had, or the next one.
    pub fn intern(&mut self, kind: NodeKind, learned: Instant) -> Node {
        let packed = Packed::pack(&kind, learned);
        let (is_dir, path) = packed.path();
        match self.find(is_dir, path) {
            Ok(ino) => {
                self.nodes[(ino - ROOT_INO) as usize] = packed;
                Node { ino, kind, learned }
            }
            Err(hash) => {
                let ino = ROOT_INO + self.nodes.len() as u64;
                let Self { nodes, by_path, hasher, .. } = self;
                by_path.insert_unique(hash, ino, |&i| hasher.hash_one(nodes[(i - ROOT_INO) as usize].path()));
                nodes.push(packed);
                Node { ino, kind, learned }
            }
        }
    }

    /// The node named `name` in `listing`.
    pub fn entry(&self, listing: &DirListing, name: &str) -> Option<Node> {
        let name_of = |ino: u64| self.packed(ino).map(|p| p.name(listing.prefix_len)).unwrap_or("");
        let i = listing.inos.binary_search_by(|&ino| name_of(ino).cmp(name)).ok()?;
        self.node(listing.inos[i])
    }

    /// `f` of the name and node of at most `max` of `listing`'s entries from index `from` on.
    pub fn map<T>(&self, listing: &DirListing, from: usize, max: usize, f: impl Fn(&str, &Node) -> T) -> Vec<T> {
        let inos = listing.inos.get(from..).unwrap_or_default().iter().take(max);
        inos.filter_map(|&ino| self.packed(ino).map(|p| f(p.name(listing.prefix_len), &p.unpack(ino)))).collect()
    }

    /// Makes `ino`'s facts `age` old (so the next use asks S3 again).
    pub fn age(&mut self, ino: u64, age: Duration) {
        if let Some(p) = ino.checked_sub(ROOT_INO).and_then(|i| self.nodes.get_mut(i as usize)) {
            p.learned = Instant::now().checked_sub(age).unwrap_or(p.learned);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Etag;

    #[test]
    fn etags_pack_to_sixteen_bytes_only_when_they_round_trip() {
        for etag in [
            "\"d41d8cd98f00b204e9800998ecf8427e\"",
            "\"D41D8CD98F00B204E9800998ECF8427E\"",
            "\"abc-3\"",
            "",
            "\"\"",
            "d41d8cd98f00b204e9800998ecf8427e",
        ] {
            let packed = Etag::pack(etag);
            assert_eq!(packed.unpack(), etag);
            assert_eq!(matches!(packed, Etag::Md5(_)), etag == "\"d41d8cd98f00b204e9800998ecf8427e\"", "{etag}");
        }
    }
}
