//! The `hoardfs` binary mounted as a user runs it: in the foreground, under the limits a test
//! sets, stopped with `fusermount3 -u`; and what such a mount leaves behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{require_fuse, S3Server};

/// `hoardfs mount --foreground` of `bucket` at `mountpoint` with its cache at `cache`, against
/// `server`.
fn mount_command(server: &S3Server, bucket: &str, mountpoint: &Path, cache: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hoardfs"));
    cmd.args(["mount", &format!("s3://{bucket}")]).arg(mountpoint).arg("--cache-dir").arg(cache).args([
        "--endpoint-url",
        &server.endpoint(),
        "--force-path-style",
        "--foreground",
    ]);
    cmd
}

/// Whether `mp` is a mount point now (from /proc/mounts).
pub fn is_mounted(mp: &Path) -> bool {
    let mp = mp.canonicalize().unwrap_or(mp.to_path_buf());
    std::fs::read_to_string("/proc/mounts").unwrap().lines().any(|l| l.split(' ').nth(1) == Some(mp.to_str().unwrap()))
}

/// Unmounts (lazily, so a wedged mount cannot block) whatever a failed test left behind.
pub struct LazyUnmount(pub PathBuf);

impl Drop for LazyUnmount {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = Command::new("fusermount3").args(["-u", "-z"]).arg(&self.0).status();
        }
    }
}

/// The `hoardfs` binary mounted in the foreground as a user runs it, optionally under an
/// open-file limit (soft and hard, as `ulimit -n` sets both) and a umask. [`CliMount::stop`]
/// unmounts it as a user would (`fusermount3 -u`) and says how the process ended.
pub struct CliMount {
    child: Child,
    stderr: Option<std::thread::JoinHandle<String>>,
    pub mountpoint: PathBuf,
    _guard: LazyUnmount,
}

/// Process settings for [`CliMount`].
#[derive(Default, Clone, Copy)]
pub struct Limits {
    pub nofile: Option<u64>,
    pub umask: Option<u32>,
    pub env: &'static [(&'static str, &'static str)],
}

impl CliMount {
    pub fn start(server: &S3Server, bucket: &str, mountpoint: &Path, cache: &Path, extra: &[&str], limits: Limits) -> Self {
        use std::os::unix::process::CommandExt;
        require_fuse();
        std::fs::create_dir_all(mountpoint).unwrap();
        let mut cmd = mount_command(server, bucket, mountpoint, cache);
        cmd.args(extra).envs(limits.env.iter().copied()).stdout(Stdio::null()).stderr(Stdio::piped());
        // SAFETY: setrlimit and umask are async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(n) = limits.nofile {
                    let lim = libc::rlimit { rlim_cur: n, rlim_max: n };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if let Some(mask) = limits.umask {
                    libc::umask(mask);
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("starting hoardfs");
        let mut pipe = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut pipe, &mut s);
            s
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        while !is_mounted(mountpoint) {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("hoardfs exited before mounting ({status}): {}", stderr.join().unwrap());
            }
            assert!(Instant::now() < deadline, "mount did not come up within 60 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, stderr: Some(stderr), mountpoint: mountpoint.to_path_buf(), _guard: LazyUnmount(mountpoint.to_path_buf()) }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mountpoint.join(rel)
    }

    /// `fusermount3 -u`, then the process's exit status and everything it wrote to stderr.
    pub fn stop(mut self) -> (std::process::ExitStatus, String) {
        let status = Command::new("fusermount3").arg("-u").arg(&self.mountpoint).status().unwrap();
        assert!(status.success(), "fusermount3 -u failed");
        let status = self.child.wait().unwrap();
        (status, self.stderr.take().unwrap().join().unwrap())
    }
}

impl Drop for CliMount {
    fn drop(&mut self) {
        if self.stderr.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `hoardfs mount --foreground` of `bucket` when it is expected to fail at start: its exit
/// status and stderr.
pub fn mount_that_fails(server: &S3Server, bucket: &str, mountpoint: &Path, cache: &Path) -> (std::process::ExitStatus, String) {
    let out = mount_command(server, bucket, mountpoint, cache).output().unwrap();
    (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A counter of the last finished mount of `cache` (from its `last-mount.json`).
pub fn last_mount_counter(cache: &Path, name: &str) -> u64 {
    let record = hoardfs::cache::store::MountRecord::read(&cache.join(hoardfs::cache::store::LAST_MOUNT_RECORD)).expect("last-mount.json");
    record.counters.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no counter {name}")).1
}
