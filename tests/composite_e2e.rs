//! Composite (per-part) multipart checksums verified end to end through a real mount, against
//! LocalStack's S3: moto lists no part checksums, LocalStack does (GetObjectAttributes with
//! `ObjectParts`), which is what hoardfs needs to check each part on its own.
//!
//! The whole test runs in a network namespace with only a loopback interface
//! ([`isolate_network`]), so LocalStack can reach nothing but 127.0.0.1.

mod common;

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use aws_sdk_s3::types::{ChecksumAlgorithm as A, ChecksumType as T};
use common::localstack::isolate_network;
use common::*;
use hoardfs::cache::format::VerifyState;
use hoardfs::object::s3::S3Client;

const MIB: usize = 1 << 20;

#[test]
fn composite_multipart_objects_are_verified_part_by_part() {
    require_fuse();
    isolate_network();
    let server = S3Server::start_localstack();
    let (rt, with) = uploader(&server, true);
    let three = vec![bytes(1, 5 * MIB), bytes(2, 5 * MIB), bytes(3, 1234)];
    let two = vec![bytes(4, 5 * MIB), bytes(5, 777)];
    rt.block_on(async {
        with.create_bucket().bucket("composite").send().await.unwrap();
        multipart(&with, "composite", "crc32c.bin", &three, Some(A::Crc32C), Some(T::Composite)).await;
        multipart(&with, "composite", "sha256.bin", &two, Some(A::Sha256), Some(T::Composite)).await;
        multipart(&with, "composite", "bad-part-2.bin", &three, Some(A::Crc32C), Some(T::Composite)).await;
    });

    // Every GET body of bad-part-2.bin that holds byte 7 MiB (inside part 2) has it flipped.
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let mp = tmp.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let runtime = hoardfs::mount::build_runtime().unwrap();
    let inner = runtime.block_on(S3Client::new(&server.config("composite")));
    let bad_at = 7 * MIB as u64;
    let client = Arc::new(Corrupting::new(inner, move |key, range| (key == "bad-part-2.bin" && range.contains(&bad_at)).then_some(bad_at)));
    let config = hoardfs::mount::MountConfig::new(server.config("composite"), "", &mp, &cache);
    let handle = hoardfs::mount::mount_with_client(config, client, runtime).unwrap();

    assert_same("crc32c.bin", &std::fs::read(mp.join("crc32c.bin")).unwrap(), &three.concat());
    assert_same("sha256.bin", &std::fs::read(mp.join("sha256.bin")).unwrap(), &two.concat());
    // Parts 1 and 3 of the damaged object check out on their own and are served; part 2 never.
    let bad = std::fs::File::open(mp.join("bad-part-2.bin")).unwrap();
    let mut part = vec![0u8; 5 * MIB];
    bad.read_exact_at(&mut part, 0).unwrap();
    assert_same("bad-part-2.bin part 1", &part, &three[0]);
    let mut tail = vec![0u8; 1234];
    bad.read_exact_at(&mut tail, 10 * MIB as u64).unwrap();
    assert_same("bad-part-2.bin part 3", &tail, &three[2]);
    let err = bad.read_exact_at(&mut part, 5 * MIB as u64).expect_err("part 2 is corrupt on every GET: the read must fail");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    drop(bad);
    assert!(handle.metrics.verify_failures.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    handle.unmount().unwrap();

    let states = verify_states(&cache);
    assert_eq!(states.get("crc32c.bin"), Some(&VerifyState::Verified), "{states:?}");
    assert_eq!(states.get("sha256.bin"), Some(&VerifyState::Verified), "{states:?}");
    assert_ne!(states.get("bad-part-2.bin"), Some(&VerifyState::Verified), "{states:?}");

    // Verified is kept: a remount with a plain client reads both objects with no GET.
    let again = TestMount::new(&server, "composite", &cache, tmp.path());
    assert_same("crc32c.bin again", &std::fs::read(again.path("crc32c.bin")).unwrap(), &three.concat());
    assert_same("sha256.bin again", &std::fs::read(again.path("sha256.bin")).unwrap(), &two.concat());
    assert_eq!(again.gets(), 0);
    again.unmount();
}
