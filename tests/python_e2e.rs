//! The wheel (issue 16): `scripts/test.sh` builds it with maturin, installs it into a fresh
//! virtualenv and names that virtualenv's Python in HOARDFS_WHEEL_PYTHON. This test drives the
//! installed package's API (`hoardfs.mount`, `Dataset`, `HintingSampler`, `counters`) against a
//! real mount on the local server: hints sent, bytes right, zero GETs after a remount.

mod common;

use common::*;
use sha2::Digest;

#[test]
fn the_wheels_python_api_mounts_hints_reads_and_remounts_with_zero_gets() {
    require_fuse();
    let python = std::env::var_os("HOARDFS_WHEEL_PYTHON").expect(
        "CANNOT RUN: HOARDFS_WHEEL_PYTHON is unset. scripts/test.sh builds the wheel, installs it into a virtualenv and sets it \
         (or: scripts/wheel.sh, then HOARDFS_WHEEL_PYTHON=target/py-venv/bin/python)",
    );
    let server = S3Server::start();
    let objects: Vec<(String, Vec<u8>)> =
        (0..40).map(|i| (format!("train/class{}/img{i:03}.jpg", i % 3), bytes(i, 1000 + 97 * i as usize))).collect();
    upload_many(&server, "wheel", &objects);
    let tmp = tempfile::tempdir().unwrap();
    let expected: serde_json::Map<String, serde_json::Value> =
        objects.iter().map(|(k, v)| (k.strip_prefix("train/").unwrap().to_string(), hex(&sha2::Sha256::digest(v)).into())).collect();
    let expected_path = tmp.path().join("expected.json");
    std::fs::write(&expected_path, serde_json::to_vec(&expected).unwrap()).unwrap();
    let mp = tmp.path().join("mnt");
    let _guard = LazyUnmount(mp.clone());
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/api_check.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .args([&server.endpoint(), "wheel"])
        .args([&mp, &tmp.path().join("cache"), &expected_path])
        .env_remove("HOARDFS_BIN")
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("api_check: ok, 40 files"), "{stdout}");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
