//! Issue 7 end to end: listings and metadata cached within the TTL, persisted across remounts,
//! and an offline epoch with the S3 server stopped.

mod common;

use std::time::Duration;

use common::*;

fn walk(root: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let meta = std::fs::metadata(e.path()).unwrap(); // a stat of every entry, like `find -ls`
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

fn dataset() -> Vec<(String, Vec<u8>)> {
    (0..40).map(|i| (format!("train/c{}/s{i:03}.bin", i % 4), bytes(i, 20_000 + i as usize * 100))).collect()
}

#[test]
fn lookups_and_listings_cost_no_requests_within_the_ttl() {
    let server = S3Server::start();
    server.bucket("ttl", &[("dir/a.txt", b"a"), ("dir/b.txt", b"b")]);
    let tmp = tempfile::tempdir().unwrap();
    let mount = TestMount::with(&server, "ttl", &tmp.path().join("cache"), tmp.path(), |c| c.metadata_ttl = Some(Duration::from_secs(2)));
    let lists = |m: &TestMount| m.metric(|x| &x.s3_list_requests);
    let heads = |m: &TestMount| m.metric(|x| &x.s3_head_requests);

    let _ = std::fs::read_dir(mount.path("dir")).unwrap().count();
    let (l0, h0) = (lists(&mount), heads(&mount));
    for _ in 0..5 {
        let _ = std::fs::read_dir(mount.path("dir")).unwrap().count();
        std::fs::metadata(mount.path("dir/a.txt")).unwrap();
        assert!(std::fs::metadata(mount.path("dir/missing.txt")).is_err());
    }
    assert_eq!((lists(&mount), heads(&mount)), (l0, h0), "no LIST or HEAD within the TTL");
    std::thread::sleep(Duration::from_millis(2100));
    let _ = std::fs::read_dir(mount.path("dir")).unwrap().count();
    // Once the TTL has passed: `dir` itself is looked up again (HEAD + one-key LIST), then its
    // listing is fetched again (one LIST).
    assert_eq!(lists(&mount), l0 + 2);
    assert_eq!(heads(&mount), h0 + 1);
}

#[test]
fn remount_of_an_immutable_dataset_lists_and_reads_with_no_requests_then_offline() {
    let server = S3Server::start();
    let objects = dataset();
    let refs: Vec<(&str, &[u8])> = objects.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
    server.bucket("immutable", &refs);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let indefinite = |c: &mut hoardfs::mount::MountConfig| c.metadata_ttl = None;

    let first = TestMount::with(&server, "immutable", &cache, tmp.path(), indefinite);
    let listed = walk(&first.mountpoint);
    assert_eq!(listed.len(), 40);
    for (key, want) in &objects {
        assert_same(key, &std::fs::read(first.path(key)).unwrap(), want);
    }
    first.unmount();

    let second = TestMount::with(&server, "immutable", &cache, tmp.path(), indefinite);
    let (l0, h0) = (second.metric(|x| &x.s3_list_requests), second.metric(|x| &x.s3_head_requests));
    assert_eq!(walk(&second.mountpoint), listed);
    for (key, want) in &objects {
        assert_same(key, &std::fs::read(second.path(key)).unwrap(), want);
    }
    // The mount's one request is its bucket check, a HeadBucket: no LIST at all, and everything
    // after it is from the cache dir.
    assert_eq!((l0, second.metric(|x| &x.s3_bucket_checks)), (0, 1));
    assert_eq!(second.metric(|x| &x.s3_list_requests), l0);
    assert_eq!(second.metric(|x| &x.s3_head_requests), h0);
    assert_eq!(second.gets(), 0);
    second.unmount();

    // Offline epoch: the server is gone; the mount comes up and serves the whole dataset.
    drop(server);
    let stopped = S3Server::start(); // a different port: nothing answers at the old endpoint
    let mut config = hoardfs::mount::MountConfig::new(stopped.config("immutable"), "", &tmp.path().join("offline"), &cache);
    config.s3.endpoint_url = Some("http://127.0.0.1:9".into());
    config.metadata_ttl = None;
    std::fs::create_dir_all(&config.mountpoint).unwrap();
    let handle = hoardfs::mount::mount(config.clone()).expect("an offline mount of a complete cache");
    assert_eq!(walk(&config.mountpoint), listed);
    for (key, want) in &objects {
        assert_same(key, &std::fs::read(config.mountpoint.join(key)).unwrap(), want);
    }
    assert_eq!(handle.metrics.s3_get_requests.load(std::sync::atomic::Ordering::Relaxed), 0);
    handle.unmount().unwrap();
}

#[test]
fn markers_file_and_prefix_clashes_and_empty_prefixes() {
    let server = S3Server::start();
    server.bucket(
        "edges",
        &[
            ("marker/", b""), // directory marker with contents
            ("marker/inside.txt", b"inside"),
            ("empty/", b""),               // directory marker alone: an empty directory
            ("clash", b"file"),            // both an object...
            ("clash/child.txt", b"child"), // ...and a prefix: shown as the directory
        ],
    );
    let tmp = tempfile::tempdir().unwrap();
    let mount = TestMount::new(&server, "edges", &tmp.path().join("cache"), tmp.path());
    let mut root: Vec<String> =
        std::fs::read_dir(&mount.mountpoint).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    root.sort();
    assert_eq!(root, ["clash", "empty", "marker"]);
    assert!(std::fs::metadata(mount.path("clash")).unwrap().is_dir());
    assert_eq!(std::fs::read(mount.path("clash/child.txt")).unwrap(), b"child");
    assert!(std::fs::metadata(mount.path("empty")).unwrap().is_dir());
    assert_eq!(std::fs::read_dir(mount.path("empty")).unwrap().count(), 0);
    let marker: Vec<_> = std::fs::read_dir(mount.path("marker")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(marker, ["inside.txt"]);
}

#[test]
fn a_directory_opened_by_path_is_answered_from_its_stored_listing_after_remount() {
    let server = S3Server::start();
    server.bucket("deep", &[("big/a.bin", b"a"), ("big/b.bin", b"b"), ("other.bin", b"o")]);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let indefinite = |c: &mut hoardfs::mount::MountConfig| c.metadata_ttl = None;
    // `ls big` only: the root is never listed, `big` is found by lookup.
    let first = TestMount::with(&server, "deep", &cache, tmp.path(), indefinite);
    assert_eq!(std::fs::read_dir(first.path("big")).unwrap().count(), 2);
    first.unmount();
    let second = TestMount::with(&server, "deep", &cache, tmp.path(), indefinite);
    let (l0, h0) = (second.metric(|x| &x.s3_list_requests), second.metric(|x| &x.s3_head_requests));
    assert_eq!(std::fs::read_dir(second.path("big")).unwrap().count(), 2);
    assert_eq!(std::fs::read(second.path("big/b.bin")).unwrap(), b"b");
    assert_eq!((second.metric(|x| &x.s3_list_requests) - l0, second.metric(|x| &x.s3_head_requests) - h0), (0, 0));
    // A name with no stored listing still asks S3.
    assert_eq!(std::fs::read(second.path("other.bin")).unwrap(), b"o");
    assert!(second.metric(|x| &x.s3_head_requests) > h0);
    second.unmount();
}

/// A walk that stats every entry (`find -size`, `ls -l`, a dataset indexing its files) gets the
/// attributes with the directory reads (READDIRPLUS): the kernel sends no LOOKUP per file.
#[test]
fn a_walk_that_stats_every_file_costs_no_lookup_per_file() {
    let server = S3Server::start();
    let objects = dataset();
    let refs: Vec<(&str, &[u8])> = objects.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
    server.bucket("plus", &refs);
    let tmp = tempfile::tempdir().unwrap();
    let mount = TestMount::new(&server, "plus", &tmp.path().join("cache"), tmp.path());
    let mut names: Vec<String> = objects.iter().map(|(k, _)| k.clone()).collect();
    names.sort();
    assert_eq!(walk(&mount.mountpoint), names);
    // Five directories (train and its four classes) may be looked up on the way down; none of
    // the forty files.
    let lookups = mount.metric(|m| &m.fuse_lookups);
    assert!(lookups <= 5, "{lookups} LOOKUPs for a walk of 40 files in 5 directories");
}
