//! Issue 4 end to end: the cache as a durable artifact. A kill -9 mid-fill, a size limit far
//! below the data read, a full disk, and an overwrite in S3 never produce a wrong byte.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const MIB: usize = 1 << 20;

#[test]
fn kill_9_during_a_fill_then_remount_serves_only_correct_bytes() {
    kill_9_during_a_fill(&["--verify", "best-effort"]);
}

/// The default mode: the 40 MiB object's one unit is fetched in parallel before any byte is
/// served, so the kill lands among many writes in flight.
#[test]
fn kill_9_during_a_fill_in_strict_mode_then_remount_serves_only_correct_bytes() {
    kill_9_during_a_fill(&["--verify", "strict"]);
}

fn kill_9_during_a_fill(mode: &[&str]) {
    require_fuse();
    let server = S3Server::start();
    let big = bytes(9, 40 * MIB + 123);
    server.bucket("crash", &[("big.bin", &big)]);
    let tmp = tempfile::tempdir().unwrap();
    let (mp, cache) = (tmp.path().join("mnt"), tmp.path().join("cache"));
    std::fs::create_dir(&mp).unwrap();
    let _guard = LazyUnmount(mp.clone());
    let mut child = Command::new(env!("CARGO_BIN_EXE_hoardfs"))
        .args(["mount", "s3://crash"])
        .arg(&mp)
        .arg("--cache-dir")
        .arg(&cache)
        .args(["--endpoint-url", &server.endpoint(), "--force-path-style", "--foreground"])
        .args(mode)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !is_mounted(&mp) {
        assert!(Instant::now() < deadline, "mount did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Read until a part of the object is cached, then kill the daemon while fetches and writes
    // are in flight.
    let reader = {
        let path = mp.join("big.bin");
        std::thread::spawn(move || {
            let f = std::fs::File::open(path).unwrap();
            let mut buf = vec![0u8; MIB];
            let mut off = 0u64;
            while f.read_at(&mut buf, off).map(|n| n > 0).unwrap_or(false) {
                off += MIB as u64;
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while cached_data_bytes(&cache) < 8 * MIB as u64 {
        assert!(Instant::now() < deadline, "nothing was cached");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let _ = Command::new("fusermount3").args(["-u", "-z"]).arg(&mp).status();
    let _ = reader.join();

    // A new mount takes over the directory (the kernel released the dead process's lock),
    // recovers, and serves exactly the object's bytes.
    let mount = TestMount::new(&server, "crash", &cache, tmp.path());
    assert_same("after kill -9", &std::fs::read(mount.path("big.bin")).unwrap(), &big);
    let fetched = mount.metric(|m| &m.s3_get_bytes);
    assert!(fetched < big.len() as u64, "blocks written before the crash were not reused: {fetched} bytes fetched again");
    assert_eq!(mount.metric(|m| &m.verify_failures), 0);
}

fn cached_data_bytes(cache: &Path) -> u64 {
    hoardfs::inspect::disk_usage(&cache.join("objects"))
}

#[test]
fn cache_stays_under_its_limit_while_reading_three_times_as_much() {
    let server = S3Server::start();
    let objects: Vec<(String, Vec<u8>)> = (0..12).map(|i| (format!("f{i:02}"), bytes(i, 2 * MIB + 1000 * i as usize))).collect();
    let refs: Vec<(&str, &[u8])> = objects.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
    server.bucket("bounded", &refs);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let limit = 9 * MIB as u64; // the objects total ~24 MiB
    let mount = TestMount::with(&server, "bounded", &cache, tmp.path(), |c| c.cache.max_size = Some(limit));
    for round in 0..2 {
        for (key, want) in &objects {
            assert_same(key, &std::fs::read(mount.path(key)).unwrap(), want);
            let used = cached_data_bytes(&cache);
            assert!(used <= limit + MIB as u64, "round {round}, after {key}: {used} bytes on disk > limit + one block");
        }
    }
    assert!(mount.metric(|m| &m.evicted_objects) >= 12);
}

#[test]
fn a_full_disk_keeps_reads_working_and_corrupts_nothing() {
    require_fuse();
    let server = S3Server::start();
    let objects: Vec<(String, Vec<u8>)> = (0..6).map(|i| (format!("f{i}"), bytes(20 + i, 3 * MIB + 7))).collect();
    let refs: Vec<(&str, &[u8])> = objects.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
    server.bucket("disk-full", &refs);
    let tmp = tempfile::tempdir().unwrap();
    // A 6 MiB tmpfs as the cache's file system: far less than the 18 MiB read.
    let small = tmp.path().join("small-fs");
    let _tmpfs = Tmpfs::mount(&small, "6m");
    let cache = small.join("cache");
    {
        let mount = TestMount::new(&server, "disk-full", &cache, tmp.path());
        for (key, want) in &objects {
            assert_same(key, &std::fs::read(mount.path(key)).unwrap(), want);
        }
        assert!(mount.metric(|m| &m.cache_write_errors) > 0, "the disk never filled");
        // Read again while full: still right.
        for (key, want) in &objects {
            assert_same(key, &std::fs::read(mount.path(key)).unwrap(), want);
        }
    }
    // After a remount on the same (full) file system, every byte is still right.
    let mount = TestMount::new(&server, "disk-full", &cache, tmp.path());
    for (key, want) in &objects {
        assert_same(key, &std::fs::read(mount.path(key)).unwrap(), want);
    }
    assert_eq!(mount.metric(|m| &m.blake3_mismatches), 0);
}

#[test]
fn an_overwrite_in_s3_never_mixes_two_versions() {
    let server = S3Server::start();
    let v1 = bytes(31, 4 * MIB);
    let v2 = bytes(32, 3 * MIB + 5);
    server.bucket("overwrite", &[("model.bin", &v1)]);
    let tmp = tempfile::tempdir().unwrap();
    let mount = TestMount::with(&server, "overwrite", &tmp.path().join("cache"), tmp.path(), |c| {
        c.metadata_ttl = Some(Duration::from_secs(1));
        c.verify.mode = hoardfs::verify::VerifyMode::BestEffort;
        c.prefetch.max_blocks = Some(0);
    });
    let old = std::fs::File::open(mount.path("model.bin")).unwrap();
    let mut head = vec![0u8; MIB];
    old.read_exact_at(&mut head, 0).unwrap();
    assert_same("v1 head", &head, &v1[..MIB]);

    server.put("overwrite", "model.bin", &v2);
    std::thread::sleep(Duration::from_millis(1100));

    // The handle opened on v1 never returns v2's bytes: a block not cached yet fails (ESTALE),
    // a cached one is still v1.
    let mut tail = vec![0u8; MIB];
    let err = old.read_exact_at(&mut tail, 3 * MIB as u64).expect_err("v1's uncached block must not come from v2");
    assert_eq!(err.raw_os_error(), Some(libc::ESTALE), "{err}");
    old.read_exact_at(&mut head, 0).unwrap();
    assert_same("cached v1 block", &head, &v1[..MIB]);
    drop(old);

    // A new open after the TTL sees v2, whole and alone.
    assert_same("v2", &std::fs::read(mount.path("model.bin")).unwrap(), &v2);
}

/// A clean unmount leaves a checkpoint of the cache's state, and the next mount starts from that
/// one file instead of the catalog and serves every byte with no GET; the checkpoint is gone
/// while a mount runs, so a mount killed with -9 leaves none, and the next one scans. One file
/// per object: the data (the indexes are in the catalog).
#[test]
fn a_clean_unmount_leaves_a_checkpoint_and_a_kill_9_leaves_none() {
    let server = S3Server::start();
    let objects: Vec<(String, Vec<u8>)> =
        (0..20).map(|i| (format!("d{}/f{i:02}", i % 3), bytes(100 + i, 5000 + 777 * i as usize))).collect();
    let refs: Vec<(&str, &[u8])> = objects.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
    server.bucket("ckpt", &refs);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let checkpoint = cache.join("checkpoint");
    let mount = |name: &str| CliMount::start(&server, "ckpt", &tmp.path().join(name), &cache, &[], Limits::default());
    let gets = || last_mount_counter(&cache, "hoardfs_s3_get_requests_total");
    let object_files = || {
        let names: Vec<String> = std::fs::read_dir(cache.join("objects"))
            .unwrap()
            .flat_map(|shard| std::fs::read_dir(shard.unwrap().path()).unwrap())
            .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| n.ends_with(".data")), "{names:?}");
        names.len()
    };

    let m = mount("fill");
    read_all_parallel(&m.mountpoint, &objects, 4);
    let (status, _) = m.stop();
    assert!(status.success());
    assert!(checkpoint.exists(), "a clean unmount wrote no checkpoint");

    let m = mount("from-checkpoint");
    assert!(!checkpoint.exists(), "a running mount left the checkpoint in place");
    read_all_parallel(&m.mountpoint, &objects, 4);
    let (status, log) = m.stop();
    assert!(status.success());
    assert!(log.contains("cache state read from its checkpoint: 20 entries"), "{log}");
    assert_eq!(gets(), 0);
    assert_eq!(object_files(), 20);
    assert!(checkpoint.exists());

    drop(mount("killed")); // SIGKILL: no clean unmount
    assert!(!checkpoint.exists(), "a killed mount left a checkpoint behind");

    let m = mount("after-kill");
    read_all_parallel(&m.mountpoint, &objects, 4);
    let (status, log) = m.stop();
    assert!(status.success());
    assert!(!log.contains("read from its checkpoint"), "{log}");
    assert_eq!(gets(), 0, "entries were lost across the kill");
    assert_eq!(object_files(), 20);
}
