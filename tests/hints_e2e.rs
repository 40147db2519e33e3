//! Access-order hints through a real mount: paths written to the control file are fetched ahead,
//! so the reads that follow issue no GET.

mod common;

use std::time::{Duration, Instant};

use common::*;
use hoardfs::hints::CONTROL_NAME;

const KIB: usize = 1024;

/// 40 small files in two directories and one 3 MiB file (several blocks, coalesced GETs).
fn dataset() -> Vec<(String, Vec<u8>)> {
    let mut objects: Vec<(String, Vec<u8>)> =
        (0..40).map(|i| (format!("train/{}/img-{i:02}.jpg", i % 2), bytes(i, 20 * KIB + i as usize))).collect();
    objects.push(("shard.tar".into(), bytes(99, 3 * KIB * KIB + 5)));
    objects
}

/// Waits until the mount has finished (done or failed) `n` hints.
fn wait_for_hints(mount: &TestMount, n: u64) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = mount.metric(|m| &m.hint_files_done);
        let failed = mount.metric(|m| &m.hint_files_failed);
        if done + failed >= n || Instant::now() > deadline {
            return (done, failed);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The dataset in `bucket` on a fresh server, mounted with an empty cache. Bound in this order,
/// the mount is dropped (unmounted) before its temp dir and server.
fn mounted_dataset(bucket: &str) -> (S3Server, tempfile::TempDir, TestMount, Vec<(String, Vec<u8>)>) {
    let server = S3Server::start();
    let objects = dataset();
    let refs: Vec<(&str, &[u8])> = objects.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
    server.bucket(bucket, &refs);
    let tmp = tempfile::tempdir().unwrap();
    let mount = TestMount::new(&server, bucket, &tmp.path().join("cache"), tmp.path());
    (server, tmp, mount, objects)
}

#[test]
fn hinted_files_are_fetched_ahead_and_then_read_with_no_get() {
    let (_server, _tmp, mount, objects) = mounted_dataset("hints");

    // Hint 30 of the files (one by absolute path) and the shard, plus a path that does not exist.
    let hinted: Vec<&str> = objects.iter().take(30).map(|(k, _)| k.as_str()).chain(["shard.tar"]).collect();
    let mut list: Vec<String> = hinted.iter().map(|k| k.to_string()).collect();
    list[3] = mount.path(hinted[3]).display().to_string();
    list.push("train/no-such-file.jpg".into());
    std::fs::write(mount.path(CONTROL_NAME), list.join("\n")).unwrap();
    let (done, failed) = wait_for_hints(&mount, hinted.len() as u64 + 1);
    assert_eq!((done, failed), (hinted.len() as u64, 1), "hints done / failed");
    // The 3 MiB shard came in one coalesced GET, not one per 1 MiB block: 30 + 1.
    assert_eq!(mount.gets(), 31);

    let gets = mount.gets();
    for (key, want) in objects.iter().filter(|(k, _)| hinted.contains(&k.as_str())) {
        assert_same(key, &std::fs::read(mount.path(key)).unwrap(), want);
    }
    assert_eq!(mount.gets(), gets, "hinted files must be read from the cache");
    // A file not hinted does cost a GET (the assertion above can fail).
    let (key, want) = &objects[35];
    assert_same(key, &std::fs::read(mount.path(key)).unwrap(), want);
    assert_eq!(mount.gets(), gets + 1);

    // The control file is write-only and not listed.
    let err = std::fs::File::open(mount.path(CONTROL_NAME)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EACCES));
    let names: Vec<String> = std::fs::read_dir(mount.path("")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(!names.iter().any(|n| n == CONTROL_NAME), "{names:?}");
    // Everything else stays read-only.
    let err = std::fs::write(mount.path("train/new.jpg"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    mount.unmount();
}

#[test]
fn the_python_dataset_example_sends_its_order_and_reads_every_file() {
    let (_server, _tmp, mount, objects) = mounted_dataset("pyhints");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/pytorch_dataset.py");
    let out = std::process::Command::new("python3").arg(&script).arg(&mount.mountpoint).args(["--epochs", "2"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let total: usize = objects.iter().map(|(_, v)| v.len()).sum();
    assert!(stdout.contains(&format!("epoch 2: {} files, {total} bytes", objects.len())), "{stdout}");
    // Both epochs' orders arrived; the second found everything cached (done counts both).
    assert_eq!(mount.metric(|m| &m.hint_files_queued), 2 * objects.len() as u64);
    assert_eq!(mount.metric(|m| &m.hint_files_failed), 0);
    mount.unmount();
}

#[test]
fn with_hints_off_the_mount_is_read_only_in_the_kernel() {
    let server = S3Server::start();
    server.bucket("nohints", &[("a.txt", b"a")]);
    let tmp = tempfile::tempdir().unwrap();
    let mount = TestMount::with(&server, "nohints", &tmp.path().join("cache"), tmp.path(), |c| c.hint_parallel = 0);
    let err = std::fs::write(mount.path(CONTROL_NAME), b"a.txt\n").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let line = mounts.lines().find(|l| l.contains(mount.mountpoint.to_str().unwrap())).unwrap();
    assert!(line.split(' ').nth(3).unwrap().split(',').any(|o| o == "ro"), "{line}");
    mount.unmount();
}

#[test]
fn cached_hinted_files_are_read_into_memory_before_the_reader_opens_them() {
    let (server, tmp, mount, objects) = mounted_dataset("hints-cached");
    for (key, want) in &objects {
        assert_same(key, &std::fs::read(mount.path(key)).unwrap(), want);
    }
    mount.unmount();
    let cache = tmp.path().join("cache");
    let files = data_files(&cache);
    assert_eq!(files.len(), objects.len());
    files.iter().for_each(|f| evict(f));

    // After a remount, hint 30 of the 40 small files: they are cached, so no GET, and their
    // bytes are read into memory before anything opens them.
    let mount = TestMount::new(&server, "hints-cached", &cache, tmp.path());
    let hinted: Vec<&(String, Vec<u8>)> = objects.iter().take(30).collect();
    let list: Vec<&str> = hinted.iter().map(|(k, _)| k.as_str()).collect();
    std::fs::write(mount.path(CONTROL_NAME), list.join("\n")).unwrap();
    assert_eq!(wait_for_hints(&mount, 30), (30, 0));
    assert_eq!(mount.metric(|m| &m.hint_files_readahead), 30);
    assert_eq!(mount.gets(), 0);
    // The kernel's reads were only queued by the advice: wait for them to land.
    let deadline = Instant::now() + Duration::from_secs(30);
    let whole = loop {
        let whole = files.iter().filter(|f| matches!(resident_pages(f), (r, n) if r == n)).count();
        if whole >= 30 || Instant::now() > deadline {
            break whole;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(whole, 30, "the 30 hinted files, and only they, are in memory");
    assert_eq!(files.iter().filter(|f| resident_pages(f).0 == 0).count(), objects.len() - 30, "files not hinted were not read");

    for (key, want) in &hinted {
        assert_same(key, &std::fs::read(mount.path(key)).unwrap(), want);
    }
    assert_eq!(mount.metric(|m| &m.passthrough_opens), 30, "checked at open from memory, then read by the kernel");
    assert_eq!(mount.gets(), 0);
    mount.unmount();
}

#[test]
fn a_hint_worker_moves_past_a_file_a_reader_is_already_opening() {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use common::holding::Holding;
    use hoardfs::object::s3::S3Client;

    require_fuse();
    let server = S3Server::start();
    let (a, b) = (bytes(1, 20 * KIB), bytes(2, 20 * KIB));
    server.bucket("passed", &[("a.bin", a.as_slice()), ("b.bin", b.as_slice())]);
    let tmp = tempfile::tempdir().unwrap();
    let mp = tmp.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let runtime = hoardfs::mount::build_runtime().unwrap();
    let inner = runtime.block_on(S3Client::new(&server.config("passed")));
    let client = Arc::new(Holding::new(inner, "a.bin"));
    let mut config = hoardfs::mount::MountConfig::new(server.config("passed"), "", &mp, &tmp.path().join("cache"));
    // One worker: if it waited behind the reader's open of a.bin, b.bin would wait too.
    config.hint_parallel = 1;
    let handle = hoardfs::mount::mount_with_client(config, client.clone(), runtime).unwrap();
    let metric = |m: fn(&hoardfs::metrics::Metrics) -> &std::sync::atomic::AtomicU64| m(&handle.metrics).load(Ordering::Relaxed);

    let reader = std::thread::spawn({
        let path = mp.join("a.bin");
        move || std::fs::read(path)
    });
    assert!(eventually(|| client.started.load(Ordering::SeqCst)), "the reader's open never sent its GET");
    std::fs::write(mp.join(CONTROL_NAME), "a.bin\nb.bin\n").unwrap();
    let moved_on = eventually(|| metric(|m| &m.hint_files_done) == 1);
    let (passed, still_held) = (metric(|m| &m.hint_files_passed), !reader.is_finished());
    client.release(); // before any assertion, so a failure does not leave the reader hanging
    assert_same("a.bin", &reader.join().unwrap().unwrap(), &a);
    assert!(moved_on, "b.bin was not fetched while the reader's GET of a.bin was held");
    assert!(still_held, "a.bin's GET was released only now");
    assert_eq!(passed, 1, "a.bin was being opened: its hint is left to that open");
    assert_same("b.bin", &std::fs::read(mp.join("b.bin")).unwrap(), &b);
    assert_eq!(handle.metrics.s3_get_requests.load(Ordering::Relaxed), 2, "one GET per file");
    drop(handle);
}
