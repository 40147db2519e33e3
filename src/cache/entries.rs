//! The table of every entry on disk, as a writer holds it in memory: one record per entry (its
//! id, catalog slot, accounted bytes, a hash of its `bucket\0key`, and whether this mount checked
//! all its blocks), chained in eviction order, with two indexes of 4-byte positions: by id, and
//! by key for the newest version of each key.
//!
//! What it replaces held every entry in a boxed `lru::LruCache` node, the key string twice (a
//! `BTreeMap` of versions and its reverse map) and a map from id to slot: about 450 bytes an
//! entry, 0.5 GB for ImageNet's 1.28 M files, all rebuilt at every mount. A record here is 72
//! bytes and the two indexes about 10 more. Keys are not kept at all: they are in the entries'
//! slots, which the checkpoint and the offline lookups read when they need them.

use hashbrown::HashTable;
use std::hash::{BuildHasher, Hasher};

use super::catalog::SlotAt;
use super::ObjectId;

/// The end of a chain.
const NONE: u32 = u32::MAX;

/// One entry on disk.
#[derive(Clone, Copy, Debug)]
pub(super) struct Record {
    id: ObjectId,
    key_hash: u64,
    /// Where its index lives.
    pub at: SlotAt,
    /// What it is charged (see "Size accounting" in cache-format/README.md).
    pub bytes: u64,
    /// Every block had its blake3 checked in this mount when the entry last left memory (see
    /// `BlockCache::activate`). Never persisted: a new mount starts with every flag clear.
    pub checked: bool,
    /// The next more recently used entry.
    newer: u32,
    /// The next less recently used entry.
    older: u32,
}

impl Record {
    /// The entry's id.
    pub fn id(&self) -> ObjectId {
        self.id
    }
}

/// Every entry on disk, least to most recently used.
pub(super) struct Entries {
    /// Records by position; positions in `free` hold nothing.
    records: Vec<Record>,
    free: Vec<u32>,
    /// Positions, hashed by id (ids are blake3 digests: their first 8 bytes are the hash).
    by_id: HashTable<u32>,
    /// Positions of the newest version of each key, hashed by key hash.
    by_key: HashTable<u32>,
    newest: u32,
    oldest: u32,
    hasher: hashbrown::DefaultHashBuilder,
    /// Bumped by every insertion and removal, so a view built from the entries knows it is old.
    generation: u64,
}

fn id_hash(id: &ObjectId) -> u64 {
    u64::from_le_bytes(id.0[..8].try_into().expect("8 bytes"))
}

impl Entries {
    /// An empty table with room for `n` entries.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            records: Vec::with_capacity(n),
            free: Vec::new(),
            by_id: HashTable::with_capacity(n),
            by_key: HashTable::with_capacity(n),
            newest: NONE,
            oldest: NONE,
            hasher: Default::default(),
            generation: 0,
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Changes with every insertion and removal.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The hash of a `bucket\0key` (see [`super::version_key`]) that this table files versions by.
    pub fn key_hash(&self, vkey: &[u8]) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write(vkey);
        h.finish()
    }

    fn position(&self, id: &ObjectId) -> Option<u32> {
        self.by_id.find(id_hash(id), |&p| self.records[p as usize].id == *id).copied()
    }

    /// Entry `id`.
    pub fn get(&self, id: &ObjectId) -> Option<&Record> {
        self.position(id).map(|p| &self.records[p as usize])
    }

    /// Entry `id`, to change its slot, bytes or flag.
    pub fn get_mut(&mut self, id: &ObjectId) -> Option<&mut Record> {
        self.position(id).map(|p| &mut self.records[p as usize])
    }

    /// The newest version of the key with hash `key_hash` (another key with the same hash is
    /// possible: callers that need the exact key check the entry's header).
    pub fn newest_of_key(&self, key_hash: u64) -> Option<&Record> {
        self.by_key.find(key_hash, |&p| self.records[p as usize].key_hash == key_hash).map(|&p| &self.records[p as usize])
    }

    /// Adds entry `id` (which must not be in the table) as the most recently used, and as the
    /// newest version of its key. With `supersede`, the version it replaces goes to the back of
    /// the eviction order: new opens of that key will not read it again. Loading a table in
    /// eviction order passes `false`, so that the last version loaded is the key's newest.
    pub fn insert(&mut self, id: ObjectId, at: SlotAt, bytes: u64, key_hash: u64, supersede: bool) {
        debug_assert!(self.position(&id).is_none(), "entry inserted twice");
        let record = Record { id, key_hash, at, bytes, checked: false, newer: NONE, older: NONE };
        let p = match self.free.pop() {
            Some(p) => {
                self.records[p as usize] = record;
                p
            }
            None => {
                self.records.push(record);
                u32::try_from(self.records.len() - 1).expect("fewer than 2^32 entries")
            }
        };
        let Self { records, by_id, by_key, .. } = self;
        by_id.insert_unique(id_hash(&id), p, |&q| id_hash(&records[q as usize].id));
        let replaced = match by_key.find_mut(key_hash, |&q| records[q as usize].key_hash == key_hash) {
            Some(newest) => Some(std::mem::replace(newest, p)),
            None => {
                by_key.insert_unique(key_hash, p, |&q| records[q as usize].key_hash);
                None
            }
        };
        self.link_newest(p);
        if let (Some(old), true) = (replaced, supersede) {
            self.unlink(old);
            self.link_oldest(old);
        }
        self.generation += 1;
    }

    /// Makes entry `id` the most recently used.
    pub fn promote(&mut self, id: &ObjectId) {
        if let Some(p) = self.position(id) {
            if p != self.newest {
                self.unlink(p);
                self.link_newest(p);
            }
        }
    }

    /// Removes entry `id`.
    pub fn remove(&mut self, id: &ObjectId) -> Option<Record> {
        let p = self.position(id)?;
        let Self { records, by_id, by_key, .. } = self;
        let record = records[p as usize];
        if let Ok(found) = by_id.find_entry(id_hash(id), |&q| q == p) {
            found.remove();
        }
        if let Ok(found) = by_key.find_entry(record.key_hash, |&q| q == p) {
            found.remove();
        }
        self.unlink(p);
        self.free.push(p);
        self.generation += 1;
        Some(record)
    }

    /// Every entry, least recently used first.
    pub fn oldest_first(&self) -> impl Iterator<Item = &Record> + '_ {
        let mut p = self.oldest;
        std::iter::from_fn(move || {
            let record = self.records.get(p as usize)?;
            p = record.newer;
            Some(record)
        })
    }

    fn unlink(&mut self, p: u32) {
        let Record { newer, older, .. } = self.records[p as usize];
        match newer {
            NONE => self.newest = older,
            n => self.records[n as usize].older = older,
        }
        match older {
            NONE => self.oldest = newer,
            o => self.records[o as usize].newer = newer,
        }
        let r = &mut self.records[p as usize];
        (r.newer, r.older) = (NONE, NONE);
    }

    fn link_newest(&mut self, p: u32) {
        self.records[p as usize].older = self.newest;
        match self.newest {
            NONE => self.oldest = p,
            n => self.records[n as usize].newer = p,
        }
        self.newest = p;
    }

    fn link_oldest(&mut self, p: u32) {
        self.records[p as usize].newer = self.oldest;
        match self.oldest {
            NONE => self.newest = p,
            o => self.records[o as usize].older = p,
        }
        self.oldest = p;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(n: u8) -> ObjectId {
        ObjectId::new("b", &format!("k{n}"), "e")
    }

    fn order(e: &Entries) -> Vec<ObjectId> {
        e.oldest_first().map(Record::id).collect()
    }

    #[test]
    fn a_new_version_sends_the_one_it_replaces_to_the_back() {
        let mut e = Entries::with_capacity(0);
        let (k1, k2) = (e.key_hash(b"b\0one"), e.key_hash(b"b\0two"));
        let at = SlotAt { size: 256, slot: 0 };
        e.insert(id(1), at, 10, k1, true);
        e.insert(id(2), at, 20, k2, true);
        e.insert(id(3), at, 30, k1, true); // a new version of key one
        assert_eq!(order(&e), vec![id(1), id(2), id(3)]);
        e.promote(&id(1));
        e.insert(id(4), at, 40, k1, true);
        assert_eq!(order(&e), vec![id(3), id(2), id(1), id(4)], "only the newest version was superseded");
        assert_eq!(e.newest_of_key(k1).map(Record::id), Some(id(4)));
        e.remove(&id(4));
        assert!(e.newest_of_key(k1).is_none());
        assert_eq!(e.get(&id(2)).map(|r| r.bytes), Some(20));
        assert_eq!(e.len(), 3);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u8, u8, bool),
        Promote(u8),
        Remove(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..24u8, 0..6u8, any::<bool>()).prop_map(|(i, k, s)| Op::Insert(i, k, s)),
            (0..24u8).prop_map(Op::Promote),
            (0..24u8).prop_map(Op::Remove),
        ]
    }

    proptest! {
        /// The table behaves like a list in eviction order with a map of each key's newest
        /// version, whatever the sequence of changes (positions are reused after removals).
        #[test]
        fn matches_a_plain_list(ops in proptest::collection::vec(op(), 0..200)) {
            let mut e = Entries::with_capacity(0);
            let mut model: Vec<(ObjectId, u64)> = Vec::new(); // oldest first, with key hash
            let mut newest: std::collections::HashMap<u64, ObjectId> = Default::default();
            for op in ops {
                match op {
                    Op::Insert(i, k, supersede) if e.get(&id(i)).is_none() => {
                        let kh = e.key_hash(&[k]);
                        e.insert(id(i), SlotAt { size: 256, slot: i as u32 }, i as u64, kh, supersede);
                        if let Some(old) = newest.insert(kh, id(i)) {
                            if supersede {
                                let at = model.iter().position(|(m, _)| *m == old).unwrap();
                                let moved = model.remove(at);
                                model.insert(0, moved);
                            }
                        }
                        model.push((id(i), kh));
                    }
                    Op::Insert(..) => {}
                    Op::Promote(i) => {
                        e.promote(&id(i));
                        if let Some(at) = model.iter().position(|(m, _)| *m == id(i)) {
                            let moved = model.remove(at);
                            model.push(moved);
                        }
                    }
                    Op::Remove(i) => {
                        let gone = e.remove(&id(i));
                        prop_assert_eq!(gone.is_some(), model.iter().any(|(m, _)| *m == id(i)));
                        if let Some(r) = gone {
                            model.retain(|(m, _)| *m != id(i));
                            if newest.get(&r.key_hash) == Some(&id(i)) {
                                newest.remove(&r.key_hash);
                            }
                        }
                    }
                }
                prop_assert_eq!(order(&e), model.iter().map(|(m, _)| *m).collect::<Vec<_>>());
                prop_assert_eq!(e.len(), model.len());
                for (kh, want) in &newest {
                    prop_assert_eq!(e.newest_of_key(*kh).map(Record::id), Some(*want));
                }
            }
        }
    }
}
