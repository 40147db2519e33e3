//! The verifier over the in-memory client: every algorithm and layout, corrupt bodies and disks.
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use super::*;
use crate::cache::format::VerifyState;
use crate::io::EngineChoice;
use crate::object::memory::MemoryClient;
use crate::testing::{data_files, pattern, read_all, rig_with, small_blocks};

const ALGS: [Algorithm; 5] = [Algorithm::Crc32, Algorithm::Crc32c, Algorithm::Crc64nvme, Algorithm::Sha1, Algorithm::Sha256];

fn strict() -> VerifyPolicy {
    VerifyPolicy::default()
}

/// Every algorithm, full-object and composite, with parts on and off block edges: the bytes
/// come back right and the object ends Verified, persistently.
#[tokio::test]
async fn every_algorithm_and_layout_verifies_and_stays_verified() {
    let mem = Arc::new(MemoryClient::new("b"));
    let mut names = Vec::new();
    for (i, alg) in ALGS.iter().enumerate() {
        let body = pattern(4096 * 7 + 123, i as u8);
        for (layout, part) in [("full", None), ("parts-aligned", Some(8192)), ("parts-unaligned", Some(5000))] {
            if *alg >= Algorithm::Sha1 || part.is_some() || layout == "full" {
                let name = format!("{alg:?}-{layout}");
                mem.put_with_checksum(&name, body.clone(), *alg, part);
                names.push((name, body.clone()));
            }
        }
    }
    mem.put("md5-etag", pattern(9000, 99));
    names.push(("md5-etag".into(), pattern(9000, 99)));
    let dir = tempfile::tempdir().unwrap();
    {
        let r = rig_with(dir.path(), mem.clone(), EngineChoice::Psync, small_blocks(), strict());
        for (name, body) in &names {
            assert_eq!(&read_all(&r.fs, name).await.unwrap(), body, "{name}");
        }
        assert_eq!(r.metrics.verify_failures.load(Ordering::Relaxed), 0);
    }
    let states = states(dir.path());
    assert_eq!(states.len(), names.len());
    assert!(states.iter().all(|s| *s == VerifyState::Verified), "{states:?}");
}

fn states(dir: &std::path::Path) -> Vec<VerifyState> {
    let cache = crate::cache::CacheDir::open_read_only(dir).unwrap();
    crate::cache::read_indexes(&cache).unwrap().into_iter().map(|(_, snap)| snap.unwrap().verify_state()).collect()
}

/// Corrupt GET bodies: one bad answer is survived by a refetch; bad answers every time end in
/// EIO; wrong bytes are never returned.
#[tokio::test]
async fn corrupt_bodies_are_never_served() {
    for alg in ALGS.into_iter().chain([Algorithm::Md5Etag]) {
        let mem = Arc::new(MemoryClient::new("b"));
        let body = pattern(4096 * 3 + 7, 5);
        if alg == Algorithm::Md5Etag {
            mem.put("o", body.clone());
        } else {
            mem.put_with_checksum("o", body.clone(), alg, None);
        }
        let bad = Arc::new(AtomicU32::new(1));
        let b2 = bad.clone();
        mem.corrupt_gets(move |_, v| {
            if b2.load(Ordering::SeqCst) > 0 && v.len() > 100 {
                b2.fetch_sub(1, Ordering::SeqCst);
                v[100] ^= 0x40;
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let r = rig_with(dir.path(), mem.clone(), EngineChoice::Psync, small_blocks(), strict());
        assert_eq!(read_all(&r.fs, "o").await.unwrap(), body, "{alg:?}: one corrupt GET");
        assert_eq!(r.metrics.verify_failures.load(Ordering::Relaxed), 1, "{alg:?}");

        let dir = tempfile::tempdir().unwrap();
        bad.store(u32::MAX, Ordering::SeqCst);
        let r = rig_with(dir.path(), mem.clone(), EngineChoice::Psync, small_blocks(), strict());
        let err = read_all(&r.fs, "o").await.expect_err("every GET corrupt must fail");
        assert_eq!(err.errno, libc::EIO, "{alg:?}");
        assert!(err.message.contains("failed verification"), "{}", err.message);
        assert_eq!(states(dir.path()), vec![VerifyState::Failed]);
    }
}

/// A verified object whose block rots on disk is refetched, and the refetched bytes are
/// checked against S3's checksum again: a corrupt refetch is refused, not trusted.
#[tokio::test]
async fn refetch_after_disk_corruption_is_verified_again() {
    let mem = Arc::new(MemoryClient::new("b"));
    let body = pattern(4096 * 3, 6);
    mem.put_with_checksum("o", body.clone(), Algorithm::Crc32c, None);
    let dir = tempfile::tempdir().unwrap();
    {
        let r = rig_with(dir.path(), mem.clone(), EngineChoice::Psync, small_blocks(), strict());
        assert_eq!(read_all(&r.fs, "o").await.unwrap(), body);
    }
    assert_eq!(states(dir.path()), vec![VerifyState::Verified]);
    let data = data_files(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[5000] ^= 1;
    std::fs::write(&data, bytes).unwrap();
    mem.corrupt_gets(|_, v| v[0] ^= 1);
    let r = rig_with(dir.path(), mem.clone(), EngineChoice::Psync, small_blocks(), strict());
    let err = read_all(&r.fs, "o").await.expect_err("a corrupt refetch must not be served");
    assert_eq!(r.metrics.blake3_mismatches.load(Ordering::Relaxed), 1);
    assert_eq!(err.errno, libc::EIO);
}

/// One corrupt GET, whose blocks are written to disk late (after the unit rejected them): the
/// retry must fetch afresh, not take the rejected bytes for a new copy (the CI flake of
/// `corrupted_get_bodies_never_reach_a_reader`, made deterministic by slow writes).
#[tokio::test]
async fn a_rejected_body_written_late_does_not_poison_the_retry() {
    for alg in [Algorithm::Crc32c, Algorithm::Sha256] {
        let mem = Arc::new(MemoryClient::new("b"));
        let body = pattern(4096 * 6 + 3, 9);
        mem.put_with_checksum("o", body.clone(), alg, None);
        let bad = Arc::new(AtomicU32::new(1));
        let b2 = bad.clone();
        mem.corrupt_gets(move |_, v| {
            if b2.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
                v[10] ^= 1;
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let io = Arc::new(crate::testing::SlowWrites(crate::io::probe(EngineChoice::Psync).unwrap(), std::time::Duration::from_millis(50)));
        let r = crate::testing::rig_on(dir.path(), mem, io, small_blocks(), strict());
        assert_eq!(read_all(&r.fs, "o").await.unwrap(), body, "{alg:?}");
        assert_eq!(r.metrics.verify_failures.load(Ordering::Relaxed), 1, "{alg:?}");
    }
}

/// A server whose listings carry no ETags (s3s-fs): the open HEADs the object, so the entry
/// is keyed by the real ETag and verified against it, not recorded unverifiable under "".
#[tokio::test]
async fn a_listing_without_etags_is_pinned_by_a_head_at_open() {
    let mem = Arc::new(MemoryClient::new("b"));
    mem.lists_without_etags.store(true, Ordering::SeqCst);
    mem.put("o", pattern(9000, 4));
    let dir = tempfile::tempdir().unwrap();
    let r = rig_with(dir.path(), mem.clone(), EngineChoice::Psync, small_blocks(), strict());
    let dh = r.fs.opendir(crate::meta::ROOT_INO).await.unwrap(); // the listing, ETag-less
    r.fs.releasedir(dh);
    assert_eq!(read_all(&r.fs, "o").await.unwrap(), pattern(9000, 4));
    assert!(r.metrics.s3_head_requests.load(Ordering::Relaxed) >= 1);
    assert_eq!(states(dir.path()), vec![VerifyState::Verified]);
}

#[tokio::test]
async fn unverifiable_objects_follow_the_policy() {
    let mem = Arc::new(MemoryClient::new("b"));
    let info = mem.put("multipart-etag", pattern(5000, 1));
    // An ETag with a part count is no MD5 of the content, and there is no checksum.
    mem.set_etag("multipart-etag", &format!("\"{}-3\"", info.etag.trim_matches('"')));
    let dir = tempfile::tempdir().unwrap();
    let r = rig_with(dir.path(), mem.clone(), EngineChoice::Psync, small_blocks(), strict());
    assert_eq!(read_all(&r.fs, "multipart-etag").await.unwrap(), pattern(5000, 1));
    drop(r);
    assert_eq!(states(dir.path()), vec![VerifyState::Unverifiable]);
    let dir = tempfile::tempdir().unwrap();
    let policy = VerifyPolicy { require_checksum: true, ..strict() };
    let r = rig_with(dir.path(), mem, EngineChoice::Psync, small_blocks(), policy);
    assert_eq!(read_all(&r.fs, "multipart-etag").await.unwrap_err().errno, libc::EIO);
}

#[tokio::test]
async fn best_effort_serves_then_verifies_in_background() {
    let mem = Arc::new(MemoryClient::new("b"));
    let body = pattern(4096 * 4, 8);
    mem.put_with_checksum("o", body.clone(), Algorithm::Crc64nvme, None);
    let dir = tempfile::tempdir().unwrap();
    let policy = VerifyPolicy { mode: VerifyMode::BestEffort, ..strict() };
    let r = rig_with(dir.path(), mem, EngineChoice::Psync, small_blocks(), policy);
    assert_eq!(read_all(&r.fs, "o").await.unwrap(), body);
    for _ in 0..100 {
        if states(dir.path()) == vec![VerifyState::Verified] {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("object never verified in the background: {:?}", states(dir.path()));
}

/// An object of one block is fetched whole at open and checked there, in memory: it is verified
/// before the open returns (so that very open is passthrough) and is never read back from disk
/// to be hashed. A corrupt whole GET is not accepted: the first read verifies from disk the
/// usual way, drops the bad bytes and serves S3's.
#[tokio::test]
async fn a_one_block_object_is_verified_from_the_bytes_fetched_at_open() {
    for alg in ALGS.into_iter().chain([Algorithm::Md5Etag]) {
        for corrupt in [false, true] {
            let mem = Arc::new(MemoryClient::new("b"));
            let body = pattern(9000, 3);
            if alg == Algorithm::Md5Etag {
                mem.put("o", body.clone());
            } else {
                mem.put_with_checksum("o", body.clone(), alg, None);
            }
            let bad = Arc::new(AtomicU32::new(corrupt as u32));
            mem.corrupt_gets(move |_, v| {
                if bad.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
                    v[100] ^= 0x40;
                }
            });
            let dir = tempfile::tempdir().unwrap();
            let r = rig_with(dir.path(), mem, EngineChoice::Psync, crate::cache::CacheConfig::default(), strict());
            let ino = r.fs.lookup(crate::meta::ROOT_INO, "o").await.unwrap().ino;
            let (fh, backing) = r.fs.open_with_passthrough(ino, false).await.unwrap();
            let hits = r.metrics.cache_hit_blocks.load(Ordering::Relaxed);
            let what = format!("{alg:?}, corrupt GET: {corrupt}");
            assert_eq!(backing.is_some(), !corrupt, "{what}: passthrough at the first open");
            assert_eq!(hits, 0, "{what}: nothing read back from disk by the open");
            assert_eq!(r.fs.read(fh, 0, 20_000).await.unwrap(), body, "{what}");
            r.fs.release(fh);
            assert_eq!(r.metrics.verify_failures.load(Ordering::Relaxed), corrupt as u64, "{what}");
            assert_eq!(r.metrics.s3_get_requests.load(Ordering::Relaxed), 1 + corrupt as u64, "{what}");
            drop(r);
            assert_eq!(states(dir.path()), vec![VerifyState::Verified], "{what}");
        }
    }
}
