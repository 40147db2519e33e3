//! The inode table: every node once, packed, found by inode number or by path.
//!
//! At a million listed objects the table *is* the daemon's memory, so each object costs one
//! 48-byte packed node (its ETag as 16 bytes when it is an MD5, times in milliseconds, flags in
//! the size's top bits), its key's bytes once in an arena (no allocation per key), one slot in
//! the by-path index (an inode number; the path is compared through the node) and one inode
//! number in its directory's listing (the name is the node's path after the directory's
//! prefix). [`Node`], what callers get, is unpacked on the way out.

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

/// A node as the table holds it: 48 bytes, plus its path's bytes in the table's arena.
struct Packed {
    /// Where the path (a directory's prefix, or a file's key) lies in the arena: offset << 16 |
    /// length (an S3 key is at most 1,024 bytes).
    span: u64,
    /// The object's size, with [`DIR`] and [`ODD_ETAG`] in the top bits.
    size_flags: u64,
    mtime_ms: i64,
    /// When S3 last confirmed it: ms after (or before, negative) the table's epoch.
    learned_ms: i64,
    /// The ETag when it is a quoted lower-case MD5 (a plain upload's); else it is in the table's
    /// side map of odd ETags.
    md5: [u8; 16],
}

/// In `size_flags`: the node is a directory.
const DIR: u64 = 1 << 63;
/// In `size_flags`: the ETag is not an MD5 (it is in `Tables::odd_etags`).
const ODD_ETAG: u64 = 1 << 62;
const FLAGS: u64 = DIR | ODD_ETAG;

/// Packs an ETag to 16 bytes when it is a quoted MD5 in lower-case hex (the only form that
/// unpacks to the same string).
fn pack_md5(etag: &str) -> Option<[u8; 16]> {
    let hex = etag.strip_prefix('"').and_then(|e| e.strip_suffix('"')).filter(|h| h.len() == 32)?;
    let mut out = [0u8; 16];
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        let nibble = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None, // upper case would not round-trip
        };
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

fn unpack_md5(d: &[u8; 16]) -> String {
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

impl Packed {
    fn is_dir(&self) -> bool {
        self.size_flags & DIR != 0
    }

    /// Its full path (a directory's prefix with `/`, or a file's key) in `arena`.
    fn path<'a>(&self, arena: &'a [u8]) -> &'a str {
        let (at, len) = ((self.span >> 16) as usize, (self.span & 0xffff) as usize);
        // The arena holds only whole `str`s, each at the span recorded for it.
        std::str::from_utf8(&arena[at..at + len]).unwrap_or("")
    }

    /// Its name in a directory whose prefix is `prefix_len` bytes long.
    fn name<'a>(&self, arena: &'a [u8], prefix_len: usize) -> &'a str {
        let path = self.path(arena);
        let end = if self.is_dir() { path.len().saturating_sub(1) } else { path.len() };
        path.get(prefix_len..end).unwrap_or("")
    }
}

/// Inodes, paths, listings and negative answers of one mount.
pub(super) struct Tables {
    /// The node of inode `i` at `nodes[i - ROOT_INO]`: inode numbers are handed out densely and
    /// never reused, so a name keeps its inode across refreshes.
    nodes: Vec<Packed>,
    /// Every node's path, once, back to back (nodes are never removed, and a node's path never
    /// changes, so the arena only grows).
    arena: Vec<u8>,
    /// ETags that are not a plain MD5 (multipart uploads' `"…-N"`, other stores'), by inode.
    odd_etags: HashMap<u64, Box<str>>,
    /// What `learned_ms` counts from.
    epoch: Instant,
    /// Every inode number, hashed by (is_dir, full path); the path itself lives in the arena.
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
            arena: Vec::new(),
            odd_etags: HashMap::new(),
            epoch: Instant::now(),
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

    fn ms_of(&self, t: Instant) -> i64 {
        match t.checked_duration_since(self.epoch) {
            Some(after) => after.as_millis() as i64,
            None => -((self.epoch - t).as_millis() as i64),
        }
    }

    fn instant_of(&self, ms: i64) -> Instant {
        let d = Duration::from_millis(ms.unsigned_abs());
        if ms >= 0 {
            self.epoch + d
        } else {
            self.epoch.checked_sub(d).unwrap_or(self.epoch)
        }
    }

    /// The node of `ino`.
    pub fn node(&self, ino: u64) -> Option<Node> {
        let p = self.packed(ino)?;
        let path = p.path(&self.arena).to_string();
        let kind = if p.is_dir() {
            NodeKind::Dir { prefix: path }
        } else {
            let etag = match self.odd_etags.get(&ino) {
                Some(odd) if p.size_flags & ODD_ETAG != 0 => odd.to_string(),
                _ => unpack_md5(&p.md5),
            };
            NodeKind::File {
                info: ObjectInfo {
                    key: path,
                    size: p.size_flags & !FLAGS,
                    etag,
                    last_modified: SystemTime::UNIX_EPOCH + Duration::from_millis(p.mtime_ms.max(0) as u64),
                },
            }
        };
        Some(Node { ino, kind, learned: self.instant_of(p.learned_ms) })
    }

    /// The inode of `path`, or the hash to insert it with.
    pub fn find(&self, is_dir: bool, path: &str) -> Result<u64, u64> {
        let hash = self.hasher.hash_one((is_dir, path));
        let (nodes, arena) = (&self.nodes, &self.arena);
        let matches = |&ino: &u64| {
            let p = &nodes[(ino - ROOT_INO) as usize];
            p.is_dir() == is_dir && p.path(arena) == path
        };
        self.by_path.find(hash, matches).copied().ok_or(hash)
    }

    /// Records what S3 said about a path: the inode it had, or the next one.
    pub fn intern(&mut self, kind: NodeKind, learned: Instant) -> Node {
        let (is_dir, path) = match &kind {
            NodeKind::Dir { prefix } => (true, prefix.as_str()),
            NodeKind::File { info } => (false, info.key.as_str()),
        };
        let found = self.find(is_dir, path);
        let ino = match found {
            Ok(ino) => ino,
            Err(_) => ROOT_INO + self.nodes.len() as u64,
        };
        let (mut size_flags, mut mtime_ms, mut md5) = (if is_dir { DIR } else { 0 }, 0, [0u8; 16]);
        self.odd_etags.remove(&ino);
        if let NodeKind::File { info } = &kind {
            size_flags |= info.size & !FLAGS;
            mtime_ms = info.last_modified.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
            match pack_md5(&info.etag) {
                Some(d) => md5 = d,
                None => {
                    size_flags |= ODD_ETAG;
                    self.odd_etags.insert(ino, info.etag.as_str().into());
                }
            }
        }
        let learned_ms = self.ms_of(learned);
        match found {
            Ok(ino) => {
                let p = &mut self.nodes[(ino - ROOT_INO) as usize];
                (p.size_flags, p.mtime_ms, p.learned_ms, p.md5) = (size_flags, mtime_ms, learned_ms, md5);
            }
            Err(hash) => {
                let span = ((self.arena.len() as u64) << 16) | path.len().min(0xffff) as u64;
                self.arena.extend_from_slice(&path.as_bytes()[..path.len().min(0xffff)]);
                self.nodes.push(Packed { span, size_flags, mtime_ms, learned_ms, md5 });
                let Self { nodes, by_path, hasher, arena, .. } = self;
                by_path.insert_unique(hash, ino, |&i| {
                    let p = &nodes[(i - ROOT_INO) as usize];
                    hasher.hash_one((p.is_dir(), p.path(arena)))
                });
            }
        }
        Node { ino, kind, learned }
    }

    /// The node named `name` in `listing`.
    pub fn entry(&self, listing: &DirListing, name: &str) -> Option<Node> {
        let name_of = |ino: u64| self.packed(ino).map(|p| p.name(&self.arena, listing.prefix_len)).unwrap_or("");
        let i = listing.inos.binary_search_by(|&ino| name_of(ino).cmp(name)).ok()?;
        self.node(listing.inos[i])
    }

    /// `f` of the name and node of at most `max` of `listing`'s entries from index `from` on.
    pub fn map<T>(&self, listing: &DirListing, from: usize, max: usize, f: impl Fn(&str, &Node) -> T) -> Vec<T> {
        let inos = listing.inos.get(from..).unwrap_or_default().iter().take(max);
        inos.filter_map(|&ino| Some(f(self.packed(ino)?.name(&self.arena, listing.prefix_len), &self.node(ino)?))).collect()
    }

    /// Makes `ino`'s facts `age` old (so the next use asks S3 again).
    pub fn age(&mut self, ino: u64, age: Duration) {
        let then = Instant::now().checked_sub(age);
        let ms = then.map(|t| self.ms_of(t));
        if let (Some(p), Some(ms)) = (ino.checked_sub(ROOT_INO).and_then(|i| self.nodes.get_mut(i as usize)), ms) {
            p.learned_ms = ms;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_48_bytes() {
        assert_eq!(std::mem::size_of::<Packed>(), 48);
    }

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
            let mut t = Tables::new("");
            let info = ObjectInfo { key: "k".into(), size: 1, etag: etag.into(), last_modified: SystemTime::UNIX_EPOCH };
            let ino = t.intern(NodeKind::File { info: info.clone() }, Instant::now()).ino;
            let NodeKind::File { info: back } = t.node(ino).unwrap().kind else { panic!("not a file") };
            assert_eq!(back, info);
            assert_eq!(pack_md5(etag).is_some(), etag == "\"d41d8cd98f00b204e9800998ecf8427e\"", "{etag}");
            assert_eq!(t.odd_etags.contains_key(&ino), pack_md5(etag).is_none());
        }
    }
}
