//! End-to-end harness: a real S3-compatible server (moto) on 127.0.0.1, a real FUSE mount in
//! a temp dir, and helpers to upload and compare bytes. Everything is torn down on drop, also
//! when a test fails.
#![allow(dead_code)]

/// The [`hoardfs::object::ObjectClient`] methods a test double passes straight to its `inner`
/// client: everything but the GETs it exists to change. Defined before the doubles' modules, so
/// they see it.
macro_rules! metadata_from_inner {
    () => {
        fn head(&self, key: &str) -> BoxFuture<'_, Result<ObjectInfo, ObjectError>> {
            self.inner.head(key)
        }
        fn object_checksum(&self, key: &str, etag: &str) -> BoxFuture<'_, Result<ObjectChecksum, ObjectError>> {
            self.inner.object_checksum(key, etag)
        }
        fn list(&self, prefix: &str, token: Option<String>, max: Option<i32>) -> BoxFuture<'_, Result<ListPage, ObjectError>> {
            self.inner.list(prefix, token, max)
        }
        fn bucket(&self) -> &str {
            self.inner.bucket()
        }
    };
}

pub mod cachefiles;
pub mod cli;
pub mod corrupting;
pub mod holding;
pub mod localstack;
pub mod proxy;

#[allow(unused_imports)]
pub use cachefiles::{data_file_of_each, data_files, evict, find_files, resident_pages};
#[allow(unused_imports)]
pub use cli::{is_mounted, last_mount_counter, mount_that_fails, CliMount, LazyUnmount, Limits};
#[allow(unused_imports)]
pub use corrupting::Corrupting;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hoardfs::mount::{MountConfig, MountHandle};
use hoardfs::object::s3::{S3Client, S3Config};
use rand::{Rng, RngCore, SeedableRng};

/// Fails loudly (never skips) when this machine cannot run FUSE tests.
pub fn require_fuse() {
    assert!(Path::new("/dev/fuse").exists(), "CANNOT RUN: /dev/fuse is missing, so no FUSE mount is possible on this machine");
    assert!(which("fusermount3"), "CANNOT RUN: fusermount3 is not installed (apt-get install fuse3)");
}

fn which(bin: &str) -> bool {
    std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(bin).exists())).unwrap_or(false)
}

/// Static test credentials; set before any SDK client exists so the default chain finds them
/// in the environment and never asks EC2 instance metadata.
pub fn set_test_env() {
    // SAFETY (edition 2021: safe): called at the start of each test process before threads
    // that read the environment exist.
    std::env::set_var("AWS_ACCESS_KEY_ID", "hoardfs-test");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "hoardfs-test-secret");
    std::env::set_var("AWS_REGION", "us-east-1");
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    // hoardfs's own warnings show up in a failing test's output.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("hoardfs=info,warn")),
        )
        .with_test_writer()
        .try_init();
}

/// A moto server on a free loopback port, killed on drop.
pub struct S3Server {
    child: Child,
    pub addr: SocketAddr,
}

impl S3Server {
    pub fn start() -> Self {
        Self::start_with_env(&[])
    }

    /// A server with extra environment, e.g. `INITIAL_NO_AUTH_ACTION_COUNT=0` to make moto check
    /// credentials.
    pub fn start_with_env(env: &[(&str, &str)]) -> Self {
        set_test_env();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(moto_bin())
            .envs(env.iter().copied())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("CANNOT RUN: moto_server not found; pip install 'moto[server]' (.ci/run does this)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "moto did not start on {addr} within 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { child, addr }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn config(&self, bucket: &str) -> S3Config {
        S3Config {
            bucket: bucket.into(),
            endpoint_url: Some(self.endpoint()),
            region: Some("us-east-1".into()),
            force_path_style: true,
            sdk_gets: false,
        }
    }

    /// A bucket with the given objects uploaded (single-part PUTs).
    pub fn bucket(&self, bucket: &str, objects: &[(&str, &[u8])]) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let client = S3Client::new(&self.config(bucket)).await;
            client.sdk().create_bucket().bucket(bucket).send().await.unwrap();
            for (key, body) in objects {
                client
                    .sdk()
                    .put_object()
                    .bucket(bucket)
                    .key(*key)
                    .body(body.to_vec().into())
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("upload {key}: {e:?}"));
            }
        });
    }
}

impl S3Server {
    /// Uploads (or overwrites) one object in an existing bucket.
    pub fn put(&self, bucket: &str, key: &str, body: &[u8]) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let client = S3Client::new(&self.config(bucket)).await;
            client.sdk().put_object().bucket(bucket).key(key).body(body.to_vec().into()).send().await.unwrap();
        });
    }
}

fn moto_bin() -> PathBuf {
    std::env::var_os("HOARDFS_MOTO").map(PathBuf::from).unwrap_or_else(|| "moto_server".into())
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A mount plus the temp dirs it lives in; unmounts on drop.
pub struct TestMount {
    pub handle: Option<MountHandle>,
    pub mountpoint: PathBuf,
}

impl TestMount {
    pub fn new(server: &S3Server, bucket: &str, cache_dir: &Path, tmp: &Path) -> Self {
        Self::with(server, bucket, cache_dir, tmp, |_| {})
    }

    pub fn with(server: &S3Server, bucket: &str, cache_dir: &Path, tmp: &Path, tweak: impl FnOnce(&mut MountConfig)) -> Self {
        require_fuse();
        let mountpoint = tmp.join(format!("mnt-{}", rand::rng().random::<u32>()));
        std::fs::create_dir_all(&mountpoint).unwrap();
        let mut config = MountConfig::new(server.config(bucket), "", &mountpoint, cache_dir);
        tweak(&mut config);
        let handle = hoardfs::mount::mount(config).expect("mount");
        Self { handle: Some(handle), mountpoint }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mountpoint.join(rel)
    }

    pub fn gets(&self) -> u64 {
        self.handle.as_ref().unwrap().metrics.s3_get_requests.load(Ordering::Relaxed)
    }

    pub fn metric(&self, f: impl Fn(&hoardfs::metrics::Metrics) -> &std::sync::atomic::AtomicU64) -> u64 {
        f(&self.handle.as_ref().unwrap().metrics).load(Ordering::Relaxed)
    }

    /// Runs `f` on the mount, then unmounts.
    pub fn unmount_after(self, f: impl FnOnce(&Self)) {
        f(&self);
        self.unmount();
    }

    pub fn unmount(mut self) {
        self.handle.take().unwrap().unmount().expect("unmount");
    }
}

impl Drop for TestMount {
    fn drop(&mut self) {
        drop(self.handle.take());
    }
}

/// Polls `done` until it holds or 60 s pass; says whether it held.
pub fn eventually(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Deterministic pseudo-random bytes.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut out);
    out
}

/// Asserts equality without dumping megabytes on failure.
pub fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "{what}: length differs");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{what}: first difference at byte {i}");
    }
}

/// An SDK client for uploads; `checksums: false` uploads with no additional checksum at all
/// (the SDK otherwise adds CRC32 by default).
pub fn uploader(server: &S3Server, checksums: bool) -> (tokio::runtime::Runtime, aws_sdk_s3::Client) {
    use aws_sdk_s3::config::RequestChecksumCalculation;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt.block_on(async {
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(server.endpoint())
            .region(aws_config::Region::new("us-east-1"))
            .load()
            .await;
        let calc = if checksums { RequestChecksumCalculation::WhenSupported } else { RequestChecksumCalculation::WhenRequired };
        let conf = aws_sdk_s3::config::Builder::from(&shared).force_path_style(true).request_checksum_calculation(calc).build();
        aws_sdk_s3::Client::from_conf(conf)
    });
    (rt, client)
}

/// A multipart upload of `parts`, with `algorithm` and `kind` when given.
pub async fn multipart(
    c: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    parts: &[Vec<u8>],
    algorithm: Option<aws_sdk_s3::types::ChecksumAlgorithm>,
    kind: Option<aws_sdk_s3::types::ChecksumType>,
) {
    use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
    let up = c
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .set_checksum_algorithm(algorithm.clone())
        .set_checksum_type(kind.clone())
        .send()
        .await
        .unwrap();
    let id = up.upload_id().unwrap();
    let mut done = Vec::new();
    for (i, body) in parts.iter().enumerate() {
        let n = i as i32 + 1;
        let r = c
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(id)
            .part_number(n)
            .set_checksum_algorithm(algorithm.clone())
            .body(body.clone().into())
            .send()
            .await
            .unwrap_or_else(|e| panic!("upload part {n} of {key}: {e:?}"));
        done.push(
            CompletedPart::builder()
                .part_number(n)
                .set_e_tag(r.e_tag().map(str::to_owned))
                .set_checksum_crc32(r.checksum_crc32().map(str::to_owned))
                .set_checksum_crc32_c(r.checksum_crc32_c().map(str::to_owned))
                .set_checksum_crc64_nvme(r.checksum_crc64_nvme().map(str::to_owned))
                .set_checksum_sha1(r.checksum_sha1().map(str::to_owned))
                .set_checksum_sha256(r.checksum_sha256().map(str::to_owned))
                .build(),
        );
    }
    // Like the AWS CLI, state the full-object checksum at completion (moto 5.2.5 otherwise
    // records the CRC32 of the object as its CRC64NVME). Single-part CRC64NVME uploads, checked
    // by the SDK itself, prove `s3_checksum` agrees with AWS's implementation.
    let whole = parts.concat();
    let full = |a: hoardfs::checksum::Algorithm| {
        (kind == Some(aws_sdk_s3::types::ChecksumType::FullObject)).then(|| hoardfs::checksum::s3_checksum(a, &whole))
    };
    use aws_sdk_s3::types::ChecksumAlgorithm as CA;
    use hoardfs::checksum::Algorithm as HA;
    let (c32, c32c, c64) = match algorithm {
        Some(CA::Crc32) => (full(HA::Crc32), None, None),
        Some(CA::Crc32C) => (None, full(HA::Crc32c), None),
        Some(CA::Crc64Nvme) => (None, None, full(HA::Crc64nvme)),
        _ => (None, None, None),
    };
    let result = c
        .complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(id)
        .set_checksum_crc32(c32)
        .set_checksum_crc32_c(c32c)
        .set_checksum_crc64_nvme(c64)
        .set_checksum_type(kind)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(done)).build())
        .send()
        .await;
    match result {
        Ok(_) => {}
        // moto 5.2.1 answers some completions with a misnamed XML root; the upload is done.
        Err(aws_sdk_s3::error::SdkError::ServiceError(e)) if e.raw().status().as_u16() == 200 => {}
        Err(e) => panic!("complete {key}: {e:?}"),
    }
}

/// The verification state recorded in the cache for every entry, by key.
pub fn verify_states(cache: &Path) -> std::collections::BTreeMap<String, hoardfs::cache::format::VerifyState> {
    let dir = hoardfs::cache::CacheDir::open_read_only(cache).unwrap();
    hoardfs::cache::read_indexes(&dir)
        .unwrap()
        .into_iter()
        .map(|(_, snap)| {
            let snap = snap.unwrap();
            (snap.header.key.clone(), snap.verify_state())
        })
        .collect()
}

/// Uploads many objects in parallel (moto takes several ms per PUT).
pub fn upload_many(server: &S3Server, bucket: &str, objects: &[(String, Vec<u8>)]) {
    let (rt, client) = uploader(server, true);
    rt.block_on(async {
        client.create_bucket().bucket(bucket).send().await.unwrap();
        let objects = std::sync::Arc::new(objects.to_vec());
        let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..32 {
            let (client, objects, next, bucket) = (client.clone(), objects.clone(), next.clone(), bucket.to_string());
            tasks.spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((key, body)) = objects.get(i) else { return };
                    client
                        .put_object()
                        .bucket(&bucket)
                        .key(key)
                        .body(body.clone().into())
                        .send()
                        .await
                        .unwrap_or_else(|e| panic!("upload {key}: {e:?}"));
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
    });
}

/// Every file under `root` with its mode bits, directories included.
pub fn modes_under(root: &Path) -> Vec<(PathBuf, bool, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = vec![];
    for e in std::fs::read_dir(root).unwrap().flatten() {
        let meta = e.metadata().unwrap();
        out.push((e.path(), meta.is_dir(), meta.permissions().mode() & 0o7777));
        if meta.is_dir() {
            out.extend(modes_under(&e.path()));
        }
    }
    out
}

/// Reads every `(key, bytes)` through `mount_root` with `readers` threads and checks each byte.
pub fn read_all_parallel(mount_root: &Path, objects: &[(String, Vec<u8>)], readers: usize) {
    std::thread::scope(|s| {
        for r in 0..readers {
            s.spawn(move || {
                for (key, want) in objects.iter().skip(r).step_by(readers) {
                    let got = std::fs::read(mount_root.join(key)).unwrap_or_else(|e| panic!("{key}: {e}"));
                    assert_same(key, &got, want);
                }
            });
        }
    });
}

/// A tmpfs of `size` (as mount(8) takes it, e.g. "6m") mounted at `path` (created), unmounted
/// lazily on drop: a cache file system whose size a test controls.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    pub fn mount(path: &Path, size: &str) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "hoardfs-test"]).arg(path).status().unwrap();
        assert!(status.success(), "CANNOT RUN: mounting a tmpfs needs root");
        Self(path.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
