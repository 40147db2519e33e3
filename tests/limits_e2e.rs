//! Issue 13 end to end: the limits users have. A stock `ulimit -n 1024`, a cache dir under
//! umask 022, S3 going away after files were opened by path, an evicted object the kernel still
//! holds through passthrough, `--verify-reads always`, and an unmount from outside.

mod common;

use std::path::Path;

use common::*;

const KIB: usize = 1024;
const MIB: usize = 1 << 20;

fn dataset(n: usize, size: usize) -> Vec<(String, Vec<u8>)> {
    (0..n).map(|i| (format!("d{:02}/f{i:05}.bin", i % 30), bytes(i as u64, size))).collect()
}

/// The failing case: 3,000 objects of 4 KiB, 8 readers, `ulimit -n 1024` (soft and hard,
/// so hoardfs cannot raise it). Every byte right; then a remount under the same limit reads them
/// all with zero GETs: nothing was lost to EMFILE.
#[test]
fn an_epoch_of_3000_files_under_ulimit_1024_then_a_remount_with_zero_gets() {
    let server = S3Server::start();
    let objects = dataset(3000, 4 * KIB);
    upload_many(&server, "many", &objects);
    let tmp = tempfile::tempdir().unwrap();
    let (mp, cache) = (tmp.path().join("mnt"), tmp.path().join("cache"));
    let limits = Limits { nofile: Some(1024), ..Limits::default() };
    for epoch in 0..2 {
        let mount = CliMount::start(&server, "many", &mp, &cache, &["--metadata-ttl", "indefinite"], limits);
        read_all_parallel(&mount.mountpoint, &objects, 8);
        let (status, stderr) = mount.stop();
        assert!(status.success(), "epoch {epoch}: {status}\n{stderr}");
        assert!(!stderr.contains("Too many open files"), "epoch {epoch} ran out of descriptors:\n{stderr}");
        let gets = last_mount_counter(&cache, "hoardfs_s3_get_requests_total");
        match epoch {
            0 => assert!(gets >= 3000, "{gets} GETs for 3000 objects"),
            _ => assert_eq!(gets, 0, "the remount fetched again: entries were lost"),
        }
    }
}

/// `fusermount3 -u` of a foreground mount is how users stop it: exit 0, and no error printed.
#[test]
fn a_foreground_mount_unmounted_from_outside_exits_0_without_an_error() {
    let server = S3Server::start();
    server.bucket("quiet", &[("a", b"hello")]);
    let tmp = tempfile::tempdir().unwrap();
    let mount = CliMount::start(&server, "quiet", &tmp.path().join("mnt"), &tmp.path().join("cache"), &[], Limits::default());
    assert_eq!(std::fs::read(mount.path("a")).unwrap(), b"hello");
    let (status, stderr) = mount.stop();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("error"), "stderr: {stderr}");
}

/// Under umask 022 every directory hoardfs creates in the cache dir is 0700 and every file
/// 0600 (objects, indexes, listings, records, the background daemon's log); a world-writable
/// cache dir is refused with the fix.
#[test]
fn the_cache_dir_is_private_to_the_mounting_user() {
    let server = S3Server::start();
    server.bucket("private", &[("dir/a.bin", &bytes(1, 3 * MIB)), ("b.bin", &bytes(2, 10 * KIB))]);
    let tmp = tempfile::tempdir().unwrap();
    let (mp, cache) = (tmp.path().join("mnt"), tmp.path().join("cache"));
    let limits = Limits { umask: Some(0o022), ..Limits::default() };
    let mount = CliMount::start(&server, "private", &mp, &cache, &[], limits);
    assert_eq!(std::fs::read_dir(&mp).unwrap().count(), 2); // a stored listing
    assert_eq!(std::fs::read(mount.path("dir/a.bin")).unwrap().len(), 3 * MIB);
    assert_eq!(std::fs::read(mount.path("b.bin")).unwrap().len(), 10 * KIB);
    let (status, stderr) = mount.stop();
    assert!(status.success(), "{stderr}");
    let modes = modes_under(&cache);
    assert!(modes.iter().any(|(p, _, _)| p.extension().is_some_and(|e| e == "data")), "nothing was cached");
    assert!(modes.iter().any(|(p, _, _)| p.to_string_lossy().contains("listings")), "no listing was stored");
    for (path, is_dir, mode) in modes.iter().chain([&(cache.clone(), true, mode_of(&cache))]) {
        let want = if *is_dir { 0o700 } else { 0o600 };
        assert_eq!(*mode, want, "{} has mode {mode:o}", path.display());
    }

    std::fs::set_permissions(&cache, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let (status, stderr) = mount_that_fails(&server, "private", &mp, &cache);
    assert_eq!(status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("writable by every user") && stderr.contains("chmod 700"), "{stderr}");
}

fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// A training job that opens files from a list never lists a directory. After such a mount, S3
/// goes away: the next mount still comes up and serves those files by path from the cache.
#[test]
fn an_offline_mount_serves_files_that_were_only_ever_opened_by_path() {
    require_fuse();
    let server = S3Server::start();
    let (a, b) = (bytes(3, 3 * MIB + 17), bytes(4, 20 * KIB));
    server.bucket("offline", &[("train/a.bin", &a), ("train/b.bin", &b), ("other/c.bin", b"c")]);
    let config = server.config("offline");
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    TestMount::new(&server, "offline", &cache, tmp.path()).unmount_after(|m| {
        assert_same("a", &std::fs::read(m.path("train/a.bin")).unwrap(), &a);
        assert_same("b", &std::fs::read(m.path("train/b.bin")).unwrap(), &b);
    });
    assert!(!cache.join("listings").exists() || std::fs::read_dir(cache.join("listings")).unwrap().count() == 0, "a directory was listed");
    drop(server); // S3 is gone

    let mp = tmp.path().join("offline-mnt");
    std::fs::create_dir(&mp).unwrap();
    let mut mc = hoardfs::mount::MountConfig::new(config, "", &mp, &cache);
    mc.metadata_ttl = None;
    let handle = hoardfs::mount::mount(mc).expect("an offline mount with cached objects must come up");
    assert_same("a offline", &std::fs::read(mp.join("train/a.bin")).unwrap(), &a);
    assert_same("b offline", &std::fs::read(mp.join("train/b.bin")).unwrap(), &b);
    let err = std::fs::read(mp.join("other/c.bin")).expect_err("never cached: cannot be served offline");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert_eq!(handle.metrics.s3_get_requests.load(std::sync::atomic::Ordering::Relaxed), 0);
    handle.unmount().unwrap();
}

/// Bytes used on the cache's file system, from the file system itself (`statfs`): what a
/// directory walk cannot see, such as evicted files the kernel still holds open.
fn fs_used(path: &Path) -> u64 {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statfs writes into the zeroed struct we own.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        assert_eq!(libc::statfs(c.as_ptr(), &mut st), 0);
        (st.f_blocks - st.f_bfree) * st.f_bsize as u64
    }
}

/// With `--max-cache-size 40MiB`, reading 12 objects of 8 MiB twice each (the second read of
/// each is a passthrough open, whose backing the kernel keeps after close) never holds much more
/// than the limit on the file system: evicted files' backings are released.
#[test]
fn evicted_passthrough_objects_free_their_space() {
    require_fuse();
    let server = S3Server::start();
    let objects: Vec<(String, Vec<u8>)> = (0..12).map(|i| (format!("o{i:02}"), bytes(60 + i, 8 * MIB))).collect();
    upload_many(&server, "evict", &objects);
    let tmp = tempfile::tempdir().unwrap();
    let fs = tmp.path().join("tmpfs");
    let _tmpfs = Tmpfs::mount(&fs, "256m");
    let limit = 40 * MIB as u64;
    let mount = TestMount::with(&server, "evict", &fs.join("cache"), tmp.path(), |c| c.cache.max_size = Some(limit));
    let mut peak = 0;
    for (key, want) in &objects {
        for _ in 0..2 {
            assert_same(key, &std::fs::read(mount.path(key)).unwrap(), want);
        }
        peak = peak.max(fs_used(&fs));
    }
    assert!(mount.metric(|m| &m.passthrough_opens) >= 6, "passthrough was not used: the test proves nothing");
    assert!(mount.metric(|m| &m.evicted_objects) >= 6);
    // The limit, plus one object being filled and the file system's own overhead.
    assert!(peak <= limit + 10 * MIB as u64, "the file system held {} MiB with a {} MiB limit", peak >> 20, limit >> 20);
}

/// `--verify-reads always` promises a re-hash on every read: a byte changed on disk after two
/// reads is never returned by the third, because passthrough (which hashes nothing) is off.
#[test]
fn verify_reads_always_catches_a_byte_changed_on_disk_after_it_was_read() {
    require_fuse();
    let server = S3Server::start();
    let body = bytes(7, 3 * MIB);
    server.bucket("always", &[("o.bin", &body)]);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let mount = TestMount::with(&server, "always", &cache, tmp.path(), |c| c.cache.verify_every_read = true);
    for _ in 0..2 {
        assert_same("o.bin", &std::fs::read(mount.path("o.bin")).unwrap(), &body);
    }
    assert_eq!(mount.metric(|m| &m.passthrough_opens), 0);
    let data = modes_under(&cache).into_iter().map(|(p, _, _)| p).find(|p| p.extension().is_some_and(|e| e == "data")).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&data).unwrap();
    std::os::unix::fs::FileExt::write_at(&f, &[body[MIB + 5] ^ 0xff], MIB as u64 + 5).unwrap();
    drop(f);
    std::fs::write("/proc/sys/vm/drop_caches", "3").expect("CANNOT RUN: dropping the page cache needs root");
    assert_same("o.bin after the change", &std::fs::read(mount.path("o.bin")).unwrap(), &body);
    assert!(mount.metric(|m| &m.blake3_mismatches) >= 1);
}
