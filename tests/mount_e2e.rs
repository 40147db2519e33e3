//! The foundation, end to end: real FUSE mount, real S3-compatible server, real bytes.

mod common;

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use common::*;
use rand::{Rng, SeedableRng};

const MIB: usize = 1 << 20;

fn sized_objects() -> Vec<(String, Vec<u8>)> {
    [("empty", 0), ("one-byte", 1), ("one-block", MIB), ("block-plus-one", MIB + 1), ("fifty-mib", 50 * MIB)]
        .iter()
        .enumerate()
        .map(|(i, (k, n))| (k.to_string(), bytes(i as u64, *n)))
        .collect()
}

fn upload(server: &S3Server, bucket: &str, objects: &[(String, Vec<u8>)]) {
    let refs: Vec<(&str, &[u8])> = objects.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
    server.bucket(bucket, &refs);
}

#[test]
fn whole_and_random_reads_of_every_size() {
    let server = S3Server::start();
    let objects = sized_objects();
    upload(&server, "sizes", &objects);
    let tmp = tempfile::tempdir().unwrap();
    let mount = TestMount::new(&server, "sizes", &tmp.path().join("cache"), tmp.path());

    for (key, want) in &objects {
        let meta = std::fs::metadata(mount.path(key)).unwrap();
        assert_eq!(meta.len(), want.len() as u64, "{key}: size");
        let got = std::fs::read(mount.path(key)).unwrap_or_else(|e| panic!("{key}: {e}"));
        assert_same(key, &got, want);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for (key, want) in objects.iter().filter(|(_, v)| !v.is_empty()) {
        let f = std::fs::File::open(mount.path(key)).unwrap();
        for _ in 0..60 {
            let off = rng.random_range(0..want.len());
            let len = rng.random_range(1..=(want.len() - off).min(3 * MIB));
            let mut buf = vec![0u8; len];
            f.read_exact_at(&mut buf, off as u64).unwrap();
            assert_same(&format!("{key} @{off}+{len}"), &buf, &want[off..off + len]);
        }
        // Reads at and past the end return nothing.
        let mut buf = [0u8; 16];
        assert_eq!(f.read_at(&mut buf, want.len() as u64).unwrap(), 0);
    }
}

#[test]
fn tree_of_small_objects_with_awkward_names() {
    let server = S3Server::start();
    let mut objects: Vec<(String, Vec<u8>)> =
        (0..200).map(|i| (format!("set-{}/class {}/item-{i:03}.bin", i % 4, i % 7), bytes(100 + i, 1000 + i as usize * 37))).collect();
    objects.push(("unicode/naïve café/日本語 ファイル.txt".into(), b"non-ascii".to_vec()));
    objects.push(("with spaces/a b  c.txt".into(), b"spaces".to_vec()));
    objects.push(("marker/".into(), Vec::new())); // a directory marker object
    objects.push(("marker/inside.txt".into(), b"inside".to_vec()));
    // Keys that cannot be file names: skipped, never a crash.
    let bad = ["bad//empty-segment", "bad/./dot", "bad/../dotdot", &format!("bad/{}", "x".repeat(256))];
    for k in bad {
        objects.push((k.to_string(), b"bad".to_vec()));
    }
    objects.push(("bad/ok.txt".into(), b"ok".to_vec()));
    upload(&server, "tree", &objects);
    let tmp = tempfile::tempdir().unwrap();
    let mount = TestMount::new(&server, "tree", &tmp.path().join("cache"), tmp.path());

    let mut seen = Vec::new();
    walk(&mount.mountpoint, &mount.mountpoint, &mut seen);
    seen.sort();
    let mut expected: Vec<String> =
        objects.iter().map(|(k, _)| k.clone()).filter(|k| !k.ends_with('/') && !bad.contains(&k.as_str())).collect();
    expected.sort();
    assert_eq!(seen, expected);
    for (key, want) in objects.iter().filter(|(k, _)| expected.contains(k)) {
        assert_same(key, &std::fs::read(mount.path(key)).unwrap(), want);
    }
    assert!(std::fs::metadata(mount.path("marker")).unwrap().is_dir());
    assert!(std::fs::metadata(mount.path("no-such-file")).is_err());
}

fn walk(root: &std::path::Path, dir: &std::path::Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            walk(root, &entry.path(), out);
        } else {
            out.push(entry.path().strip_prefix(root).unwrap().to_string_lossy().into_owned());
        }
    }
}

#[test]
fn parallel_readers_same_and_different_files() {
    let server = S3Server::start();
    let objects: Vec<(String, Vec<u8>)> = (0..9).map(|i| (format!("f{i}"), bytes(i, 6 * MIB + 333 * i as usize))).collect();
    upload(&server, "par", &objects);
    let tmp = tempfile::tempdir().unwrap();
    let mount = TestMount::new(&server, "par", &tmp.path().join("cache"), tmp.path());
    let objects = Arc::new(objects);

    std::thread::scope(|s| {
        // 8 threads on one file, random ranges...
        for t in 0..8u64 {
            let (objects, path) = (objects.clone(), mount.path("f0"));
            s.spawn(move || {
                let want = &objects[0].1;
                let f = std::fs::File::open(path).unwrap();
                let mut rng = rand::rngs::StdRng::seed_from_u64(t);
                for _ in 0..40 {
                    let off = rng.random_range(0..want.len());
                    let len = rng.random_range(1..=(want.len() - off).min(2 * MIB));
                    let mut buf = vec![0u8; len];
                    f.read_exact_at(&mut buf, off as u64).unwrap();
                    assert_same("f0", &buf, &want[off..off + len]);
                }
            });
        }
        // ...and 8 threads each reading a different file whole.
        for i in 1..9usize {
            let (objects, path) = (objects.clone(), mount.path(&format!("f{i}")));
            s.spawn(move || assert_same(&objects[i].0, &std::fs::read(path).unwrap(), &objects[i].1));
        }
    });
    // Single-flight: every block was fetched at most once despite 8 concurrent readers.
    let blocks: u64 = objects.iter().map(|(_, v)| v.len().div_ceil(MIB) as u64).sum();
    assert!(mount.gets() <= blocks, "{} GETs for {blocks} blocks", mount.gets());
}

#[test]
fn remount_reads_issue_zero_gets() {
    let server = S3Server::start();
    let objects = sized_objects();
    upload(&server, "persist", &objects);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");

    let first = TestMount::new(&server, "persist", &cache, tmp.path());
    for (key, want) in &objects {
        assert_same(key, &std::fs::read(first.path(key)).unwrap(), want);
    }
    assert!(first.gets() > 0);
    first.unmount();

    let second = TestMount::new(&server, "persist", &cache, tmp.path());
    for (key, want) in &objects {
        assert_same(key, &std::fs::read(second.path(key)).unwrap(), want);
    }
    assert_eq!(second.gets(), 0, "a remount must serve cached bytes without GetObject");
    assert!(second.metric(|m| &m.cache_hit_blocks) >= 52);
}

#[test]
fn flipped_byte_on_disk_is_never_served() {
    let server = S3Server::start();
    let want = bytes(42, 3 * MIB + 17);
    server.bucket("flip", &[("data.bin", &want)]);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");

    let first = TestMount::new(&server, "flip", &cache, tmp.path());
    assert_same("first read", &std::fs::read(first.path("data.bin")).unwrap(), &want);
    first.unmount();

    // Corrupt one byte in the middle of block 1 of the cached data file.
    let data_file = find_files(&cache, "data");
    assert_eq!(data_file.len(), 1);
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&data_file[0]).unwrap();
    let mut b = [0u8; 1];
    let pos = (MIB + MIB / 2) as u64;
    f.read_exact_at(&mut b, pos).unwrap();
    f.write_all_at(&[b[0] ^ 0xFF], pos).unwrap();
    drop(f);

    let second = TestMount::new(&server, "flip", &cache, tmp.path());
    assert_same("after corruption", &std::fs::read(second.path("data.bin")).unwrap(), &want);
    assert_eq!(second.metric(|m| &m.blake3_mismatches), 1);
    assert_eq!(second.gets(), 1, "exactly the corrupt block is fetched again");
    second.unmount();

    // And the refetched block was repaired on disk.
    let third = TestMount::new(&server, "flip", &cache, tmp.path());
    assert_same("after repair", &std::fs::read(third.path("data.bin")).unwrap(), &want);
    assert_eq!(third.gets(), 0);
}

#[test]
fn writes_are_refused_read_only() {
    let server = S3Server::start();
    server.bucket("read-only", &[("a.txt", b"a")]);
    let tmp = tempfile::tempdir().unwrap();
    let mount = TestMount::new(&server, "read-only", &tmp.path().join("cache"), tmp.path());
    let err = std::fs::OpenOptions::new().write(true).open(mount.path("a.txt")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    let err = std::fs::write(mount.path("new.txt"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    assert_eq!(std::fs::create_dir(mount.path("d")).unwrap_err().raw_os_error(), Some(libc::EROFS));
}

#[test]
fn second_mount_of_one_cache_dir_is_refused() {
    let server = S3Server::start();
    server.bucket("lock", &[("a.txt", b"a")]);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let _first = TestMount::new(&server, "lock", &cache, tmp.path());
    let mp = tmp.path().join("second");
    std::fs::create_dir(&mp).unwrap();
    let config = hoardfs::mount::MountConfig::new(server.config("lock"), "", &mp, &cache);
    let err = hoardfs::mount::mount(config).err().expect("second mount must fail").to_string();
    assert!(err.contains("in use by another hoardfs process"), "{err}");
}

#[test]
fn a_cold_sequential_read_fetches_in_large_coalesced_gets() {
    let server = S3Server::start();
    let body = bytes(77, 40 * MIB + 3);
    server.bucket("coalesce", &[("shard.bin", &body)]);
    let tmp = tempfile::tempdir().unwrap();
    // Best-effort verification: bytes are served as they arrive, so the GETs are the reader's
    // own misses and its prefetch, not one whole-object verification load.
    let mount = TestMount::with(&server, "coalesce", &tmp.path().join("cache"), tmp.path(), |c| {
        c.verify.mode = hoardfs::verify::VerifyMode::BestEffort;
    });
    assert_same("sequential read", &std::fs::read(mount.path("shard.bin")).unwrap(), &body);
    let gets = mount.gets();
    // 41 blocks of 1 MiB; with 8 MiB GETs about 6-8 (the first reads miss before the prefetch
    // window has grown). One GET per block would be 41.
    eprintln!("{gets} GETs for 41 blocks");
    assert!(gets <= 12, "{gets} GETs for 41 blocks");
    mount.unmount();
}

/// Read-ahead grows with a sequential reader, so one reader keeps many GETs in flight against
/// an endpoint whose every answer comes late (as S3's first byte does), instead of the one or
/// two a fixed 8 MiB window allows.
#[test]
fn a_sequential_reader_keeps_more_gets_in_flight_the_further_it_reads() {
    let server = S3Server::start();
    let body = bytes(78, 96 * MIB + 5);
    server.bucket("window", &[("shard.bin", &body)]);
    let proxy = common::proxy::FaultProxy::start(
        server.addr,
        common::proxy::Faults { get_delay: std::time::Duration::from_millis(100), ..Default::default() },
    );
    let tmp = tempfile::tempdir().unwrap();
    // Best-effort verification: the GETs are the reader's own misses and its read-ahead.
    let mount = TestMount::with(&server, "window", &tmp.path().join("cache"), tmp.path(), |c| {
        c.s3.endpoint_url = Some(proxy.endpoint());
        c.verify.mode = hoardfs::verify::VerifyMode::BestEffort;
    });
    assert_same("sequential read", &std::fs::read(mount.path("shard.bin")).unwrap(), &body);
    let most = proxy.faults.most_gets_in_flight.load(std::sync::atomic::Ordering::SeqCst);
    let gets = mount.gets();
    eprintln!("{gets} GETs for 97 blocks, at most {most} in flight at once");
    // Halfway through, 48 blocks read in sequence, the window runs 48 blocks (six 8 MiB GETs)
    // ahead; a fixed 8-block window never has more than a GET ahead beside the reader's own.
    assert!(most >= 5, "at most {most} GETs in flight for one sequential reader");
    assert!(gets <= 20, "{gets} GETs for 97 blocks: read-ahead should come in 8 MiB GETs");
    mount.unmount();
}
