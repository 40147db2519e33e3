//! Issue 3 end to end: objects uploaded with each checksum S3 offers, read through a real mount
//! against the local S3 server, end up verified; corrupt GET bodies are never served.

mod common;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use aws_sdk_s3::types::{ChecksumAlgorithm as A, ChecksumType as T};
use common::*;
use hoardfs::cache::format::VerifyState;
use hoardfs::object::s3::S3Client;

const MIB: usize = 1 << 20;

#[test]
fn every_checksum_kind_is_verified_through_the_mount() {
    let server = S3Server::start();
    let (rt, with) = uploader(&server, true);
    let (_, without) = uploader(&server, false);
    let mut expect: Vec<(String, Vec<u8>, VerifyState)> = Vec::new();
    rt.block_on(async {
        with.create_bucket().bucket("sums").send().await.unwrap();
        for (i, alg) in [A::Crc32, A::Crc32C, A::Crc64Nvme, A::Sha1, A::Sha256].into_iter().enumerate() {
            let key = format!("single/{}", alg.as_str());
            let body = bytes(i as u64, 3 * MIB + 5);
            with.put_object().bucket("sums").key(&key).checksum_algorithm(alg).body(body.clone().into()).send().await.unwrap();
            expect.push((key, body, VerifyState::Verified));
        }
        // Multipart, full-object CRCs, verified by combining block CRCs. moto 5.2.5 stores the
        // object's CRC32 whatever algorithm was asked: right for CRC32; a 4-byte "CRC64NVME"
        // that hoardfs recognises as malformed (recorded unverified); and a "CRC32C" that the
        // bytes do not match, which hoardfs must refuse (EIO, Failed), as it would on real S3.
        for (i, (alg, state)) in
            [(A::Crc32, VerifyState::Verified), (A::Crc64Nvme, VerifyState::Unverifiable), (A::Crc32C, VerifyState::Failed)]
                .into_iter()
                .enumerate()
        {
            let key = format!("multipart-full/{}", alg.as_str());
            let parts = vec![bytes(10 + i as u64, 5 * MIB), bytes(20 + i as u64, 5 * MIB), bytes(30 + i as u64, 1234)];
            multipart(&with, "sums", &key, &parts, Some(alg), Some(T::FullObject)).await;
            expect.push((key, parts.concat(), state));
        }
        // Multipart, composite: moto lists no part checksums (neither GetObjectAttributes nor
        // HEAD ?partNumber return them), so these cannot be verified there and must be recorded
        // as unverified, not failed. tests/composite_e2e.rs proves the composite path end to end
        // against LocalStack, which lists them.
        let key = "multipart-composite/CRC32".to_string();
        let parts = vec![bytes(40, 5 * MIB), bytes(41, 777)];
        multipart(&with, "sums", &key, &parts, Some(A::Crc32), Some(T::Composite)).await;
        expect.push((key, parts.concat(), VerifyState::Unverifiable));
        // The same upload without a checksum type (S3's default for a multipart CRC is
        // composite): moto then stores the composite value with neither its `-N` suffix nor a
        // type header on HEAD, so it looks like a full-object CRC32 the bytes cannot match. Its
        // GetObjectAttributes says COMPOSITE; hoardfs must ask, not fail every read of it.
        let key = "multipart-untyped/CRC32".to_string();
        let parts = vec![bytes(42, 5 * MIB), bytes(43, 999)];
        multipart(&with, "sums", &key, &parts, Some(A::Crc32), None).await;
        expect.push((key, parts.concat(), VerifyState::Unverifiable));
        // No additional checksum: single-part falls back to the MD5 ETag; multipart has nothing.
        let body = bytes(50, 2 * MIB + 9);
        without.put_object().bucket("sums").key("plain/single").body(body.clone().into()).send().await.unwrap();
        expect.push(("plain/single".into(), body, VerifyState::Verified));
        let parts = vec![bytes(51, 5 * MIB), bytes(52, 10)];
        multipart(&without, "sums", "plain/multipart", &parts, None, None).await;
        expect.push(("plain/multipart".into(), parts.concat(), VerifyState::Unverifiable));
    });

    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let mount = TestMount::new(&server, "sums", &cache, tmp.path());
    for (key, body, state) in &expect {
        match std::fs::read(mount.path(key)) {
            Ok(got) => assert_same(key, &got, body),
            Err(e) => assert!(*state == VerifyState::Failed && e.raw_os_error() == Some(libc::EIO), "{key}: {e}"),
        }
    }
    assert_eq!(mount.metric(|m| &m.verify_failures), 2, "one object mismatched, twice");
    mount.unmount();
    let states = verify_states(&cache);
    for (key, _, state) in &expect {
        assert_eq!(states.get(key), Some(state), "{key}");
    }
    // Verified is persistent: a remount reads every verified object without a GET.
    let again = TestMount::new(&server, "sums", &cache, tmp.path());
    for (key, body, _) in expect.iter().filter(|(_, _, s)| *s == VerifyState::Verified) {
        assert_same(key, &std::fs::read(again.path(key)).unwrap(), body);
    }
    assert_eq!(again.gets(), 0);
}

/// `flaky.bin` (its first GET body corrupt), `bad.bin` and `small-bad.bin` (every body corrupt,
/// the small one a single block fetched whole at open), all with CRC32C; and a mount through
/// [`Corrupting`] client with its cache in `cache`.
fn mount_faulty(server: &S3Server, tmp: &std::path::Path, cache: &std::path::Path) -> (Vec<u8>, hoardfs::mount::MountHandle) {
    let (rt, with) = uploader(server, true);
    let flaky = bytes(1, 4 * MIB + 3);
    rt.block_on(async {
        with.create_bucket().bucket("faults").send().await.unwrap();
        for (k, b) in [("flaky.bin", flaky.clone()), ("bad.bin", bytes(2, 2 * MIB)), ("small-bad.bin", bytes(3, 1000))] {
            with.put_object().bucket("faults").key(k).checksum_algorithm(A::Crc32C).body(b.into()).send().await.unwrap();
        }
    });
    let mp = tmp.join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let runtime = hoardfs::mount::build_runtime().unwrap();
    let inner = runtime.block_on(S3Client::new(&server.config("faults")));
    let flaky_left = AtomicI64::new(1);
    let client = Arc::new(Corrupting::new(inner, move |key, range| {
        let corrupt = matches!(key, "bad.bin" | "small-bad.bin") || (key == "flaky.bin" && flaky_left.fetch_sub(1, Ordering::SeqCst) > 0);
        corrupt.then_some(range.start + (range.end - range.start) / 2)
    }));
    let config = hoardfs::mount::MountConfig::new(server.config("faults"), "", &mp, cache);
    (flaky, hoardfs::mount::mount_with_client(config, client, runtime).unwrap())
}

/// One corrupt body is survived by a refetch; corrupt bodies every time end in EIO; no wrong
/// byte either way.
fn assert_faults_handled(mp: &std::path::Path, flaky: &[u8], handle: &hoardfs::mount::MountHandle) {
    assert_same("flaky.bin after a clean refetch", &std::fs::read(mp.join("flaky.bin")).unwrap(), flaky);
    for bad in ["bad.bin", "small-bad.bin"] {
        let err = std::fs::read(mp.join(bad)).expect_err("every body corrupt: the read must fail");
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{bad}");
    }
    assert!(handle.metrics.verify_failures.load(Ordering::Relaxed) >= 3);
}

#[test]
fn corrupted_get_bodies_never_reach_a_reader() {
    require_fuse();
    let server = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let (flaky, handle) = mount_faulty(&server, tmp.path(), &tmp.path().join("cache"));
    assert_faults_handled(handle.mountpoint(), &flaky, &handle);
    handle.unmount().unwrap();
}

/// A cache disk without a free byte: no entry can be created, every read takes the uncached
/// path, and strict mode still serves no wrong byte (issue 13: that path served raw S3 bytes).
#[test]
fn a_full_cache_disk_with_corrupted_bodies_serves_no_wrong_byte() {
    require_fuse();
    let server = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let full = tmp.path().join("full");
    let _tmpfs = Tmpfs::mount(&full, "1m");
    let cache = full.join("cache");
    drop(hoardfs::cache::CacheDir::open_exclusive(&cache).unwrap());
    let mut filler = std::fs::File::create(full.join("filler")).unwrap();
    while std::io::Write::write_all(&mut filler, &[7u8; 4096]).is_ok() {}
    drop(filler);
    let (flaky, handle) = mount_faulty(&server, tmp.path(), &cache);
    assert_faults_handled(handle.mountpoint(), &flaky, &handle);
    let entries = hoardfs::cache::CacheDir::open_read_only(&cache).unwrap().scan().unwrap().data;
    assert!(entries.is_empty(), "the disk was not full: {} entries were created", entries.len());
    handle.unmount().unwrap();
}

/// A cache dir on a file system mounted read-only (a stale image, a mistaken `ro` in fstab): the
/// mount cannot take the cache's lock, so it refuses with an error that names the file, the
/// cause and the fix, rather than coming up with a cache it can neither fill nor lock. No byte
/// is served, so no wrong one; the cache on it is left as it was.
#[test]
fn a_read_only_cache_dir_is_refused_with_the_cause_and_the_fix() {
    require_fuse();
    let server = S3Server::start();
    server.bucket("readonly", &[("a.bin", &bytes(1, 1000))]);
    let tmp = tempfile::tempdir().unwrap();
    let ro = tmp.path().join("ro");
    let _tmpfs = Tmpfs::mount(&ro, "16m");
    let cache = ro.join("cache");
    drop(hoardfs::cache::CacheDir::open_exclusive(&cache).unwrap());
    let before = modes_under(&cache);
    let status = std::process::Command::new("mount").args(["-o", "remount,ro"]).arg(&ro).status().unwrap();
    assert!(status.success(), "remounting the cache's tmpfs read-only");
    let mp = tmp.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let _guard = LazyUnmount(mp.clone());
    let (status, stderr) = mount_that_fails(&server, "readonly", &mp, &cache);
    assert!(!status.success() && !is_mounted(&mp), "a read-only cache dir must not mount: {stderr}");
    assert!(stderr.contains("Read-only file system") && stderr.contains("writable"), "{stderr}");
    assert_eq!(modes_under(&cache), before);
}
