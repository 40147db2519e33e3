//! LocalStack's S3, the one local server found that lists part checksums (GetObjectAttributes
//! `ObjectParts`), run from the virtualenv `scripts/deps.sh` makes, without Docker, inside a
//! network namespace that has nothing but a loopback interface.

use std::io::BufRead;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{set_test_env, S3Server};

/// Moves the calling thread, and every thread and process it starts from now on, into a new
/// network namespace whose only interface is loopback. Whatever a test then runs can reach
/// 127.0.0.1 and nothing else, by construction. FUSE mounts are unaffected (another namespace).
pub fn isolate_network() {
    // SAFETY: unshare(2) with CLONE_NEWNET changes only this thread's network namespace; no
    // memory is involved. Threads and children created afterwards inherit it.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "CANNOT RUN: unshare(CLONE_NEWNET) failed ({}); the test must run as root", std::io::Error::last_os_error());
    let up = Command::new("ip").args(["link", "set", "lo", "up"]).status().expect("CANNOT RUN: `ip` (iproute2) is missing");
    assert!(up.success(), "ip link set lo up failed in the new namespace");
}

fn venv() -> PathBuf {
    std::env::var_os("HOARDFS_LOCALSTACK_VENV").map(PathBuf::from).unwrap_or_else(|| "/var/tmp/hoardfs-localstack".into())
}

impl S3Server {
    /// LocalStack's S3 on a free loopback port. Call [`isolate_network`] first.
    pub fn start_localstack() -> Self {
        set_test_env();
        let python = venv().join("bin/python");
        assert!(python.exists(), "CANNOT RUN: no LocalStack at {}; scripts/deps.sh installs it", python.display());
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let state = std::env::temp_dir().join(format!("hoardfs-localstack-{port}"));
        std::fs::create_dir_all(&state).unwrap();
        let log = state.join("localstack.log");
        let mut child = Command::new(python)
            .args(["-m", "localstack.runtime.main"])
            .env("GATEWAY_LISTEN", format!("127.0.0.1:{port}"))
            .env("LOCALSTACK_VOLUME_DIR", &state)
            .envs([("SERVICES", "s3"), ("EAGER_SERVICE_LOADING", "1"), ("DISABLE_EVENTS", "1"), ("DNS_ADDRESS", "0")])
            .envs([("USE_SSL", "0"), ("PERSISTENCE", "0"), ("SKIP_SSL_CERT_DOWNLOAD", "1")])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting LocalStack");
        // LocalStack prints "Ready." once its services are loaded: wait for that line.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = std::io::BufReader::new(stdout).lines();
            let ready = lines.by_ref().map_while(Result::ok).any(|l| l.trim() == "Ready.");
            let _ = tx.send(ready);
            lines.for_each(drop); // keep draining so LocalStack never blocks on a full pipe
        });
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(true) => {}
            Ok(false) => {
                let why = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("LocalStack exited before it was ready ({:?}):\n{why}", child.wait())
            }
            Err(_) => panic!("LocalStack did not print Ready. within 120 s"),
        }
        Self { child, addr: format!("127.0.0.1:{port}").parse().unwrap() }
    }
}
