//! The `hoardfs` binary as a user runs it: background daemon, foreground with Ctrl-C, and clear
//! errors for bad input.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;

fn hoardfs() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hoardfs"))
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn mount_args(server: &S3Server, bucket: &str, mp: &Path, cache: &Path) -> Vec<String> {
    vec![
        "mount".into(),
        format!("s3://{bucket}"),
        mp.display().to_string(),
        "--cache-dir".into(),
        cache.display().to_string(),
        "--endpoint-url".into(),
        server.endpoint(),
        "--force-path-style".into(),
    ]
}

#[test]
fn background_mount_returns_when_ready_and_fusermount_stops_it() {
    require_fuse();
    let server = S3Server::start();
    server.bucket("daemon", &[("hello.txt", b"hello daemon")]);
    let tmp = tempfile::tempdir().unwrap();
    let (mp, cache) = (tmp.path().join("mnt"), tmp.path().join("cache"));
    std::fs::create_dir(&mp).unwrap();
    let _guard = LazyUnmount(mp.clone());

    // output() waits for stdout/stderr to close: it returns only if the daemon detached.
    let out = hoardfs().args(mount_args(&server, "daemon", &mp, &cache)).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(is_mounted(&mp), "mounted when the command returns");
    assert_eq!(std::fs::read(mp.join("hello.txt")).unwrap(), b"hello daemon");

    let pid: i32 = std::fs::read_to_string(cache.join("lock")).unwrap().trim().parse().unwrap();
    assert!(Command::new("fusermount3").arg("-u").arg(&mp).status().unwrap().success());
    wait_until("the daemon to exit", Duration::from_secs(10), || !Path::new(&format!("/proc/{pid}")).exists());
    assert!(!is_mounted(&mp));
}

#[test]
fn foreground_mount_unmounts_cleanly_on_ctrl_c() {
    require_fuse();
    let server = S3Server::start();
    server.bucket("foreground", &[("a.bin", &bytes(1, 3 << 20))]);
    let tmp = tempfile::tempdir().unwrap();
    let (mp, cache) = (tmp.path().join("mnt"), tmp.path().join("cache"));
    std::fs::create_dir(&mp).unwrap();
    let _guard = LazyUnmount(mp.clone());

    let mut child = hoardfs().args(mount_args(&server, "foreground", &mp, &cache)).arg("--foreground").spawn().unwrap();
    wait_until("the mount", Duration::from_secs(20), || is_mounted(&mp));
    assert_same("a.bin", &std::fs::read(mp.join("a.bin")).unwrap(), &bytes(1, 3 << 20));
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "hoardfs did not exit after SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status after Ctrl-C: {status}");
    assert!(!is_mounted(&mp));
    // The cache survived the exit and the lock was released.
    assert!(hoardfs::cache::CacheDir::is_locked(&cache).is_none());
}

fn run_err(args: &[String]) -> (i32, String) {
    let Output { status, stderr, .. } = hoardfs().args(args).output().unwrap();
    assert!(!status.success(), "expected failure for {args:?}");
    (status.code().unwrap_or(-1), String::from_utf8_lossy(&stderr).into_owned())
}

#[test]
fn bad_input_gets_a_clear_error() {
    let server = S3Server::start();
    server.bucket("exists", &[("a", b"a")]);
    let tmp = tempfile::tempdir().unwrap();
    let (mp, cache) = (tmp.path().join("mnt"), tmp.path().join("cache"));
    std::fs::create_dir(&mp).unwrap();
    let _guard = LazyUnmount(mp.clone());
    let base = mount_args(&server, "exists", &mp, &cache);
    let with = |f: &dyn Fn(&mut Vec<String>)| {
        let mut a = base.clone();
        f(&mut a);
        a
    };

    // Exit status by whose problem it is: 2 command line, 3 S3, 4 this machine.
    let (code, msg) = run_err(&with(&|a| a[1] = "exists".into()));
    assert!(msg.contains("s3://BUCKET"), "{msg}");
    assert_eq!(code, 2);

    let (code, msg) = run_err(&with(&|a| a[2] = tmp.path().join("missing").display().to_string()));
    assert!(msg.contains("does not exist") && msg.contains("mkdir"), "{msg}");
    assert_eq!(code, 4);

    let (code, msg) = run_err(&with(&|a| a[4] = "/proc/hoardfs-cache".into()));
    assert!(msg.contains("cache dir /proc/hoardfs-cache"), "{msg}");
    assert_eq!(code, 4);

    let full = tmp.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("x"), b"x").unwrap();
    let (code, msg) = run_err(&with(&|a| a[2] = full.display().to_string()));
    assert!(msg.contains("not empty"), "{msg}");
    assert_eq!(code, 4);

    let (code, msg) = run_err(&with(&|a| a.extend(["--max-cache-size".into(), "lots".into()])));
    assert_eq!(code, 2, "usage errors exit 2");
    assert!(msg.contains("20MiB"), "{msg}");

    let (code, msg) = run_err(&with(&|a| a.extend(["--shared-cache".into(), "http://cache".into()])));
    assert_eq!(code, 2, "usage errors exit 2");
    assert!(msg.contains("--shared-cache") && msg.contains("s3://BUCKET"), "{msg}");

    let (code, msg) = run_err(&with(&|a| a[1] = "s3://no-such-bucket".into()));
    assert!(msg.contains("does not exist"), "{msg}");
    assert_eq!(code, 3);

    let (code, msg) = run_err(&with(&|a| a[6] = "http://127.0.0.1:9".into()));
    assert!(msg.contains("cannot reach S3"), "{msg}");
    assert_eq!(code, 3);

    let foreign = tmp.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("thesis.tex"), b"precious").unwrap();
    let (code, msg) = run_err(&with(&|a| a[4] = foreign.display().to_string()));
    assert!(msg.contains("not a hoardfs cache"), "{msg}");
    assert_eq!(code, 4);
    assert_eq!(std::fs::read(foreign.join("thesis.tex")).unwrap(), b"precious");
    assert!(!is_mounted(&mp));
}

#[test]
fn wrong_credentials_are_named_with_exit_status_3() {
    // moto checks credentials when told to; these keys do not exist there.
    let server = S3Server::start_with_env(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]);
    let tmp = tempfile::tempdir().unwrap();
    let (mp, cache) = (tmp.path().join("mnt"), tmp.path().join("cache"));
    std::fs::create_dir(&mp).unwrap();
    let out = hoardfs()
        .args(mount_args(&server, "any-bucket", &mp, &cache))
        .arg("--foreground")
        .env("AWS_ACCESS_KEY_ID", "not-a-key")
        .env("AWS_SECRET_ACCESS_KEY", "wrong")
        .output()
        .unwrap();
    let msg = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{msg}");
    assert!(msg.contains("refused the credentials") && msg.contains("AWS_ACCESS_KEY_ID"), "{msg}");
    assert!(!is_mounted(&mp));
}

/// One read logged with `RUST_LOG=hoardfs=debug --log-format json` can be followed: a JSON line
/// carries the `read` span with the file's key and byte range, and the GET it caused happened
/// inside a `fetch` span that is a child of that read.
#[test]
fn a_read_can_be_followed_through_json_logs() {
    let server = S3Server::start();
    server.bucket("logs", &[("k/obj.bin", &bytes(5, 3 << 20))]);
    let tmp = tempfile::tempdir().unwrap();
    let limits = Limits { env: &[("RUST_LOG", "hoardfs=debug")], ..Limits::default() };
    let mount = CliMount::start(&server, "logs", &tmp.path().join("mnt"), &tmp.path().join("cache"), &["--log-format", "json"], limits);
    assert_eq!(std::fs::read(mount.path("k/obj.bin")).unwrap().len(), 3 << 20);
    let (status, stderr) = mount.stop();
    assert!(status.success(), "{stderr}");
    // Log lines are JSON; the CLI's own words to the user ("hoardfs: mounted …") are not logs.
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| !l.starts_with("hoardfs: "))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let spans = |v: &serde_json::Value| v["spans"].as_array().cloned().unwrap_or_default();
    let read = |s: &serde_json::Value| s["name"] == "read" && s["key"] == "k/obj.bin" && s["offset"].is_u64() && s["size"].is_u64();
    assert!(lines.iter().any(|l| spans(l).iter().any(read) && l["fields"]["message"] == "read served"), "no served read in its span");
    let get_in_fetch_of_read = lines.iter().any(|l| {
        let s = spans(l);
        l["fields"]["message"] == "GET done" && s.iter().any(read) && s.iter().any(|s| s["name"] == "fetch" && s["key"] == "k/obj.bin")
    });
    assert!(get_in_fetch_of_read, "no GET inside a fetch span under the read:\n{stderr}");
}

/// `mount -t fuse.hoardfs SOURCE DIR -o …` and an `/etc/fstab` line (`mount -T FSTAB DIR`) mount,
/// serve the right bytes, and unmount. mount(8) finds `hoardfs` on the system PATH only, so the
/// test runs in a private mount namespace (unshare) where /usr/local/bin is a directory holding
/// the binary under test: nothing outside the test is changed.
#[test]
fn mount_t_fuse_hoardfs_and_an_fstab_line_work() {
    require_fuse();
    let server = S3Server::start();
    let body = bytes(9, 1 << 20);
    server.bucket("fstab", &[("data/a.bin", &body)]);
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let bin = t.join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_hoardfs"), bin.join("hoardfs")).unwrap();
    for d in ["m1", "m2"] {
        std::fs::create_dir(t.join(d)).unwrap();
    }
    let options = |cache: &str| {
        format!("cache-dir={},endpoint-url={},force-path-style,metadata-ttl=indefinite", t.join(cache).display(), server.endpoint())
    };
    std::fs::write(
        t.join("fstab"),
        format!("s3://fstab/data {} fuse.hoardfs {},_netdev,nofail 0 0\n", t.join("m2").display(), options("c2")),
    )
    .unwrap();
    let script = format!(
        "set -e
         mount --bind {bin} /usr/local/bin
         mount -t fuse.hoardfs s3://fstab/data {m1} -o {o1}
         cat {m1}/a.bin > {t}/out1
         umount {m1}
         mount -T {t}/fstab {m2}
         cat {m2}/a.bin > {t}/out2
         umount {m2}",
        bin = bin.display(),
        m1 = t.join("m1").display(),
        m2 = t.join("m2").display(),
        o1 = options("c1"),
        t = t.display(),
    );
    let out = std::process::Command::new("unshare").args(["--mount", "--propagation", "private", "sh", "-c", &script]).output().unwrap();
    assert!(
        out.status.success(),
        "CANNOT RUN or failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    for (name, cache) in [("out1", "c1"), ("out2", "c2")] {
        assert_same(name, &std::fs::read(t.join(name)).unwrap(), &body);
        assert!(t.join(cache).join("hoardfs-cache").exists(), "{cache}: the mount did not use its cache dir");
    }
}
