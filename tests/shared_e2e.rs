//! The shared cache tier (issue 15) through real mounts of the `hoardfs` binary against the local
//! server, with an origin bucket and a shared bucket on it: what mount A verified, mount B reads
//! with zero GETs to the origin, and so does `cache warm`; a damaged shared block is never served; a missing shared bucket
//! costs nothing but a warning.

mod common;

use common::*;

const ORIGIN: &str = "origin-data";
const SHARED: &str = "shared-tier";
const MIB: usize = 1 << 20;

fn dataset() -> Vec<(String, Vec<u8>)> {
    let mut objects: Vec<(String, Vec<u8>)> =
        (0..30).map(|i| (format!("train/{:02}/img{i:03}.jpg", i % 4), bytes(i, 4096 + 1111 * i as usize))).collect();
    objects.push(("shards/shard-0.tar".into(), bytes(99, 3 * MIB + 5))); // 4 blocks of 1 MiB
    objects
}
const BLOCKS: u64 = 30 + 4;

fn epoch(
    server: &S3Server,
    tmp: &std::path::Path,
    name: &str,
    shared: &str,
    extra: &[&str],
    objects: &[(String, Vec<u8>)],
) -> std::path::PathBuf {
    let cache = tmp.join(format!("cache-{name}"));
    let mut args = vec!["--shared-cache", shared];
    args.extend_from_slice(extra);
    let mount = CliMount::start(server, ORIGIN, &tmp.join(format!("mnt-{name}")), &cache, &args, Limits::default());
    read_all_parallel(&mount.mountpoint, objects, 4);
    let (status, stderr) = mount.stop();
    assert!(status.success(), "mount {name}: {stderr}");
    cache
}

#[test]
fn a_second_node_reads_from_the_shared_tier_and_never_serves_a_damaged_block() {
    let server = S3Server::start();
    let objects = dataset();
    upload_many(&server, ORIGIN, &objects);
    let (rt, client) = uploader(&server, true);
    rt.block_on(async { client.create_bucket().bucket(SHARED).send().await.unwrap() });
    let tmp = tempfile::tempdir().unwrap();
    let shared = format!("s3://{SHARED}/team");

    // A: cold from the origin; every verified block is put to the shared tier by unmount.
    let a = epoch(&server, tmp.path(), "a", &shared, &[], &objects);
    assert!(last_mount_counter(&a, "hoardfs_s3_get_requests_total") > 0);
    assert_eq!(last_mount_counter(&a, "hoardfs_shared_puts_total"), BLOCKS);
    let keys: Vec<String> = rt.block_on(async {
        let out = client.list_objects_v2().bucket(SHARED).prefix("team/hoardfs-v1/").send().await.unwrap();
        out.contents().iter().filter_map(|o| o.key().map(str::to_owned)).collect()
    });
    assert_eq!(keys.len() as u64, BLOCKS, "{keys:?}");

    // B: a new node (empty cache), read-only on the tier: zero GETs to the origin.
    let b = epoch(&server, tmp.path(), "b", &shared, &["--shared-cache-read-only"], &objects);
    assert_eq!(last_mount_counter(&b, "hoardfs_s3_get_requests_total"), 0);
    assert_eq!(last_mount_counter(&b, "hoardfs_shared_hit_blocks_total"), BLOCKS);
    assert_eq!(last_mount_counter(&b, "hoardfs_shared_puts_total"), 0);
    assert_eq!(verify_states(&b).values().filter(|s| **s == hoardfs::cache::format::VerifyState::Verified).count(), objects.len());

    // `cache warm` through the tier: a third node filled before its job starts, no origin GET.
    let e = tmp.path().join("cache-e");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hoardfs"))
        .args(["cache", "warm", &format!("s3://{ORIGIN}"), "--json", "--shared-cache", &shared, "--shared-cache-read-only"])
        .arg("--cache-dir")
        .arg(&e)
        .args(["--endpoint-url", &server.endpoint(), "--force-path-style"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["objects"], objects.len());
    assert_eq!(report["bytes_fetched"], 0, "warm read the origin: {report}");
    assert!(report["failed"].as_array().unwrap().is_empty(), "{report}");
    assert!(verify_states(&e).values().all(|s| *s == hoardfs::cache::format::VerifyState::Verified));

    // A byte flipped in one shared block (its metadata kept): C serves the origin's bytes
    // (read_all_parallel compares every byte) and counts the reject.
    let victim = keys.iter().find(|k| k.ends_with("/0")).unwrap().clone();
    rt.block_on(async {
        let got = client.get_object().bucket(SHARED).key(&victim).send().await.unwrap();
        let meta = got.metadata().cloned();
        let mut body = got.body.collect().await.unwrap().into_bytes().to_vec();
        let mid = body.len() / 2;
        body[mid] ^= 0x04;
        client.put_object().bucket(SHARED).key(&victim).set_metadata(meta).body(body.into()).send().await.unwrap();
    });
    let c = epoch(&server, tmp.path(), "c", &shared, &["--shared-cache-read-only"], &objects);
    assert_eq!(last_mount_counter(&c, "hoardfs_shared_rejects_total"), 1);
    assert!(last_mount_counter(&c, "hoardfs_s3_get_requests_total") >= 1, "the damaged block must come from the origin");

    // A shared bucket that does not exist: every read still right, from the origin.
    let d = epoch(&server, tmp.path(), "d", "s3://no-such-shared-bucket", &[], &objects);
    assert!(last_mount_counter(&d, "hoardfs_shared_errors_total") >= 1);
    assert_eq!(last_mount_counter(&d, "hoardfs_shared_hit_blocks_total"), 0);
    assert!(last_mount_counter(&d, "hoardfs_s3_get_requests_total") > 0);
}
