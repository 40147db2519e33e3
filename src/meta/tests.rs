//! The inode table and listings without a mount: names derived from the one stored path, inode
//! numbers stable across refreshes, and the lookups a directory read answers.

use std::sync::Arc;

use super::*;
use crate::object::memory::MemoryClient;

fn names(meta: &Meta, listing: &DirListing) -> Vec<(String, bool)> {
    meta.map_entries(listing, 0, usize::MAX, |name, node| (name.to_string(), matches!(node.kind, NodeKind::Dir { .. })))
}

#[tokio::test]
async fn listings_name_entries_from_their_nodes_and_keep_inodes_across_refreshes() {
    let client = Arc::new(MemoryClient::new("b"));
    for key in ["data/b.bin", "data/a/x", "data/a", "data/c/", "data/c/y", "data/é z", "other/q"] {
        client.put(key, &b"12345"[..]);
    }
    let meta = Meta::new(client.clone(), "data/", Some(Duration::ZERO), None);
    let root = meta.readdir(ROOT_INO).await.unwrap();
    // `a` is both an object and a prefix: the directory wins; the marker `c/` is not a file.
    assert_eq!(names(&meta, &root), vec![("a".into(), true), ("b.bin".into(), false), ("c".into(), true), ("é z".into(), false)]);
    assert_eq!(meta.map_entries(&root, 1, 2, |name, _| name.to_string()), vec!["b.bin", "c"], "a page of a directory read");
    let inos: Vec<u64> = root.inos().to_vec();

    // A refresh (TTL 0) lists again and hands every name the inode it had.
    client.put("data/d", &b"1"[..]);
    let again = meta.readdir(ROOT_INO).await.unwrap();
    assert_eq!(again.len(), 5);
    for ino in &inos {
        assert!(again.inos().contains(ino), "inode {ino} changed on refresh");
    }
    let a = meta.lookup(ROOT_INO, "a").await.unwrap();
    assert_eq!(a.ino, inos[0]);
    let sub = meta.readdir(a.ino).await.unwrap();
    assert_eq!(names(&meta, &sub), vec![("x".into(), false)]);
    let NodeKind::File { info } = meta.lookup(a.ino, "x").await.unwrap().kind else { panic!("x is a file") };
    assert_eq!((info.key.as_str(), info.size), ("data/a/x", 5));
    assert!(matches!(meta.lookup(ROOT_INO, "missing").await, Err(MetaError::NotFound)));
}

#[tokio::test]
async fn a_fresh_listing_answers_lookups_without_requests() {
    let client = Arc::new(MemoryClient::new("b"));
    for i in 0..300 {
        client.put(&format!("d/f{i:03}"), &b"x"[..]);
    }
    let meta = Meta::new(client.clone(), "", None, None);
    let d = meta.lookup(ROOT_INO, "d").await.unwrap();
    let listing = meta.readdir(d.ino).await.unwrap();
    assert_eq!(listing.len(), 300);
    for i in [0, 137, 299] {
        let node = meta.lookup_cached(d.ino, &format!("f{i:03}")).expect("answered from the listing").unwrap();
        assert_eq!(node.ino, listing.inos()[i]);
        assert_eq!(meta.node(node.ino).unwrap().ino, node.ino);
    }
    assert!(matches!(meta.lookup_cached(d.ino, "f300"), Some(Err(MetaError::NotFound))));
    assert!(matches!(meta.node(1 << 40), Err(MetaError::Stale)));
}
