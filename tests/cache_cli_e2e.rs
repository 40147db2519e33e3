//! Issue 6 end to end: `hoardfs cache stat|ls|verify|evict|warm` against a cache filled through
//! a real mount and the local S3 server.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use hoardfs::verify::{VerifyMode, VerifyPolicy};
use serde_json::Value;

const MIB: usize = 1 << 20;

fn cache_cmd(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hoardfs")).arg("cache").args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn json(args: &[&str]) -> Value {
    let (ok, out, err) = cache_cmd(args);
    assert!(ok, "hoardfs cache {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn counter(stat: &Value, name: &str) -> u64 {
    stat["mount"]["counters"].as_array().unwrap().iter().find(|c| c[0] == name).map(|c| c[1].as_u64().unwrap()).unwrap_or(0)
}

#[test]
fn inspection_verification_and_eviction_match_what_was_read() {
    let server = S3Server::start();
    let (a, b, c) = (bytes(1, 3 * MIB), bytes(2, 2 * MIB), bytes(3, 5 * MIB));
    server.bucket("inspect", &[("data/a.bin", &a), ("data/b.bin", &b), ("other/c.bin", &c)]);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let dir = cache.to_str().unwrap();

    // Best-effort verification so that a partial read of c leaves c partly cached.
    let mount = TestMount::with(&server, "inspect", &cache, tmp.path(), |c| {
        c.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
        c.verify = VerifyPolicy { mode: VerifyMode::BestEffort, require_checksum: false };
        c.prefetch.max_blocks = Some(0);
        c.read_ahead_kb = Some(128);
    });
    assert_same("a", &std::fs::read(mount.path("data/a.bin")).unwrap(), &a);
    assert_same("b", &std::fs::read(mount.path("data/b.bin")).unwrap(), &b);
    let mut head = vec![0u8; 4096];
    std::os::unix::fs::FileExt::read_exact_at(&std::fs::File::open(mount.path("other/c.bin")).unwrap(), &mut head, 0).unwrap();

    // Blocks are written just after readers are answered (by design); let the cache settle:
    // all of a and b and part of c claimed on disk, and two equal stats in a row.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut last = Value::Null;
    loop {
        let now = json(&["stat", "--cache-dir", dir, "--json"]);
        let cached = now["bytes_cached"].as_u64().unwrap_or(0);
        if cached > 5 * MIB as u64 && now["bytes_cached"] == last["bytes_cached"] {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the cache never settled: {now}");
        last = now;
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    // Beside the running mount: stat sees it and its live counters; ls sees the objects.
    let stat = json(&["stat", "--cache-dir", dir, "--json"]);
    assert_eq!(stat["mount"]["running"], true);
    assert_eq!(counter(&stat, "hoardfs_s3_get_requests_total"), mount.gets());
    let ls = json(&["ls", "--cache-dir", dir, "--json"]);
    let rows = ls.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    let row = |key: &str| rows.iter().find(|r| r["key"] == key).unwrap().clone();
    assert_eq!(row("data/a.bin")["percent_cached"], 100.0);
    assert_eq!(row("data/b.bin")["cached_bytes"], 2 * MIB as u64);
    let c_cached = row("other/c.bin")["cached_bytes"].as_u64().unwrap();
    assert!(c_cached > 0 && c_cached < 5 * MIB as u64, "c partly cached: {c_cached}");
    assert_eq!(stat["bytes_cached"], 5 * MIB as u64 + c_cached);
    let filtered = json(&["ls", "--cache-dir", dir, "--json", "s3://inspect/data"]);
    assert_eq!(filtered.as_array().unwrap().len(), 2);

    // verify and evict change the directory: refused while the mount owns it.
    let (ok, _, err) = cache_cmd(&["verify", "--cache-dir", dir]);
    assert!(!ok && err.contains("in use by another hoardfs process"), "{err}");
    let gets = mount.gets();
    mount.unmount();

    let stat = json(&["stat", "--cache-dir", dir, "--json"]);
    assert_eq!(stat["mount"]["running"], false);
    assert_eq!(counter(&stat, "hoardfs_s3_get_requests_total"), gets);

    // A flipped byte is found by verify (exit 1), dropped, and a second verify is clean.
    corrupt_first_byte_of(&cache, "data/a.bin");
    let (ok, out, _) = cache_cmd(&["verify", "--cache-dir", dir]);
    assert!(!ok, "verify must exit non-zero after finding corruption: {out}");
    assert!(out.contains("corrupt: block 0 of data/a.bin"), "{out}");
    let (ok, out, _) = cache_cmd(&["verify", "--cache-dir", dir]);
    assert!(ok && out.contains("no corruption found"), "{out}");

    // evict by prefix frees exactly that; --all empties.
    let before = json(&["stat", "--cache-dir", dir, "--json"])["bytes_on_disk"].as_u64().unwrap();
    let freed = json(&["evict", "--cache-dir", dir, "--json", "s3://inspect/data/b"]);
    assert_eq!(freed["objects"], 1);
    let after = json(&["stat", "--cache-dir", dir, "--json"]);
    assert_eq!(after["objects"], 2);
    assert!(before - after["bytes_on_disk"].as_u64().unwrap() >= 2 * MIB as u64);
    assert_eq!(json(&["evict", "--cache-dir", dir, "--json", "--all"])["objects"], 2);
    assert_eq!(json(&["stat", "--cache-dir", dir, "--json"])["objects"], 0);
}

fn corrupt_first_byte_of(cache: &Path, key: &str) {
    let dir = hoardfs::cache::CacheDir::open_read_only(cache).unwrap();
    for (id, snap) in hoardfs::cache::read_indexes(&dir).unwrap() {
        let data = dir.data_path(&id);
        if snap.unwrap().header.key == key {
            let mut bytes = std::fs::read(&data).unwrap();
            bytes[0] ^= 0xff;
            std::fs::write(&data, bytes).unwrap();
            return;
        }
    }
    panic!("{key} not cached");
}

#[test]
fn warm_then_mount_reads_with_zero_gets() {
    let server = S3Server::start();
    let objects: Vec<(String, Vec<u8>)> = (0..12).map(|i| (format!("ds/part-{i:02}"), bytes(i, 100_000 + i as usize * 300_000))).collect();
    let refs: Vec<(&str, &[u8])> = objects.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
    server.bucket("warm", &refs);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let dir = cache.to_str().unwrap();
    let list = tmp.path().join("order.txt");
    std::fs::write(&list, "ds/part-07\nds/part-03\nds/missing\n").unwrap();
    let endpoint = server.endpoint();
    let warm = |extra: &[&str]| {
        let mut args = vec!["warm", "s3://warm/ds", "--cache-dir", dir, "--endpoint-url", &endpoint, "--force-path-style", "--json"];
        args.extend_from_slice(extra);
        json(&args)
    };
    // The ordered hint alone first: exactly those two.
    let only = warm(&["--list", list.to_str().unwrap(), "--only-list"]);
    assert_eq!(only["objects"], 2);
    let ls = json(&["ls", "--cache-dir", dir, "--json"]);
    let keys: Vec<&str> = ls.as_array().unwrap().iter().map(|r| r["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["ds/part-03", "ds/part-07"]);
    // Then the whole prefix; the two already there are not fetched again.
    let all = warm(&[]);
    assert_eq!(all["objects"], 12);
    assert_eq!(all["already_cached"], 2);
    assert!(all["failed"].as_array().unwrap().is_empty());
    let total: u64 = objects.iter().map(|(_, v)| v.len() as u64).sum();
    assert_eq!(all["bytes_total"], total);

    let mount = TestMount::new(&server, "warm", &cache, tmp.path());
    for (key, want) in &objects {
        assert_same(key, &std::fs::read(mount.path(key)).unwrap(), want);
    }
    assert_eq!(mount.gets(), 0, "a warmed cache serves the mount without GetObject");
}

/// Rewrites a format 2 cache dir as format 1 wrote it: each index in its own file beside its
/// data file, no catalog, marker version 1 (the index bytes are the same in both formats).
fn as_format_1(cache: &Path) {
    let dir = hoardfs::cache::CacheDir::open_read_only(cache).unwrap();
    for (id, snap) in hoardfs::cache::read_indexes(&dir).unwrap() {
        std::fs::write(dir.v1_index_path(&id), snap.unwrap().bytes()).unwrap();
    }
    std::fs::remove_dir_all(cache.join("catalog")).unwrap();
    let _ = std::fs::remove_file(cache.join("checkpoint"));
    let marker = cache.join("hoardfs-cache");
    let text = std::fs::read_to_string(&marker).unwrap().replace("format-version = 2", "format-version = 1");
    std::fs::write(marker, text).unwrap();
}

/// A cache dir of format 1 (one index file per object) is reported as such by `cache stat`,
/// upgraded in place by `cache upgrade` with nothing lost, and a mount then serves every byte
/// with no GET; a second format 1 dir is upgraded by the mount itself.
#[test]
fn a_format_1_cache_dir_is_upgraded_in_place_by_the_cli_or_the_mount() {
    let server = S3Server::start();
    let objects: Vec<(String, Vec<u8>)> = (0..6).map(|i| (format!("up/f{i}"), bytes(40 + i, 3000 + 70_000 * i as usize))).collect();
    let refs: Vec<(&str, &[u8])> = objects.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
    server.bucket("upgrade", &refs);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let dir = cache.to_str().unwrap();
    let m = CliMount::start(&server, "upgrade", &tmp.path().join("fill"), &cache, &[], Limits::default());
    read_all_parallel(&m.mountpoint, &objects, 2);
    assert!(m.stop().0.success());
    let filled = json(&["stat", "--cache-dir", dir, "--json"]);
    assert_eq!((filled["format_version"].as_u64(), filled["objects"].as_u64()), (Some(2), Some(6)));
    let mounted_copy = tmp.path().join("cache-2");
    copy_dir(&cache, &mounted_copy);

    as_format_1(&cache);
    let old = json(&["stat", "--cache-dir", dir, "--json"]);
    assert_eq!((old["format_version"].as_u64(), old["objects"].as_u64()), (Some(1), Some(6)), "{old}");
    assert_eq!(old["bytes_cached"], filled["bytes_cached"]);
    let (ok, out, err) = cache_cmd(&["upgrade", "--cache-dir", dir]);
    assert!(ok && out.contains("from format 1 to 2 (6 objects kept)"), "{out}{err}");
    let new = json(&["stat", "--cache-dir", dir, "--json"]);
    assert_eq!((new["format_version"].as_u64(), new["objects"].as_u64()), (Some(2), Some(6)), "{new}");
    assert_eq!(new["bytes_cached"], filled["bytes_cached"]);
    let (ok, out, _) = cache_cmd(&["upgrade", "--cache-dir", dir]);
    assert!(ok && out.contains("already format 2"), "{out}");

    for (cache, name) in [(cache.clone(), "after-cli"), (mounted_copy.clone(), "upgraded-by-mount")] {
        if name == "upgraded-by-mount" {
            as_format_1(&cache);
        }
        let m = CliMount::start(&server, "upgrade", &tmp.path().join(name), &cache, &[], Limits::default());
        read_all_parallel(&m.mountpoint, &objects, 2);
        let (status, log) = m.stop();
        assert!(status.success(), "{log}");
        assert_eq!(last_mount_counter(&cache, "hoardfs_s3_get_requests_total"), 0, "{name}: an upgrade lost cached bytes\n{log}");
        let idx_files = find_files(&cache.join("objects"), "idx").len();
        assert_eq!(idx_files, 0, "{name}: index files left behind");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}
