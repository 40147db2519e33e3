//! Putting a mount together: checks that fail early with a clear message, then the parts wired
//! up and handed to the kernel. The CLI and the end-to-end tests both mount through here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fuser::{BackgroundSession, MountOption, SessionACL};

use crate::cache::store::{MountRecord, LAST_MOUNT_RECORD, MOUNT_RECORD};
use crate::cache::{BlockCache, CacheConfig, CacheDir, CacheDirError};
use crate::fetch::{FetchLimits, Fetcher};
use crate::fs::HoardFs;
use crate::fuse::FuseAdapter;
use crate::hints::HintQueue;
use crate::io::EngineChoice;
use crate::listing::ListingStore;
use crate::meta::{Meta, OfflineCatalog};
use crate::metrics::Metrics;
use crate::object::counting::CountingClient;
use crate::object::s3::{S3Client, S3Config};
use crate::object::{ObjectClient, ObjectError};
use crate::prefetch::PrefetchConfig;
use crate::verify::{Verifier, VerifyPolicy};

/// Kernel attribute/entry cache time used with `--metadata-ttl indefinite`.
const INDEFINITE_KERNEL_TTL: Duration = Duration::from_secs(24 * 3600);

/// FUSE request threads: an open of a cached file is answered on the thread that read it, with
/// the disk read of a small object's block after a remount, so this many of those reads are in
/// flight. 3,000 × 128 KiB after a remount on 2 cores: 0.52x raw disk with 2 threads, 0.65x with
/// 8; at 16 KiB the two are level.
pub const DEFAULT_FUSE_THREADS: usize = 8;

/// Everything a mount needs; the CLI fills it from flags, tests build it directly.
#[derive(Clone, Debug)]
pub struct MountConfig {
    /// S3 connection.
    pub s3: S3Config,
    /// Key prefix shown as the mount's root ("" or ending in `/`).
    pub prefix: String,
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// Cache directory.
    pub cache_dir: PathBuf,
    /// Cache behaviour.
    pub cache: CacheConfig,
    /// Metadata TTL; `None` for indefinite. Default: 60 s.
    pub metadata_ttl: Option<Duration>,
    /// Let other users read the mount (FUSE `allow_other`).
    pub allow_other: bool,
    /// Cache I/O engine.
    pub io_engine: EngineChoice,
    /// Serve Prometheus metrics here.
    pub metrics_addr: Option<SocketAddr>,
    /// GETs in flight and bytes per GET at most.
    pub fetch: FetchLimits,
    /// Read-ahead for sequential readers.
    pub prefetch: PrefetchConfig,
    /// FUSE request threads. Default: [`DEFAULT_FUSE_THREADS`].
    pub fuse_threads: usize,
    /// Files fetched at once from the prefetch control file ([`crate::hints`]); 0 turns the
    /// control file off and mounts with the kernel's read-only flag. Default: 8.
    pub hint_parallel: usize,
    /// Checking against S3's checksums.
    pub verify: VerifyPolicy,
    /// Hand complete, verified objects to the kernel (FUSE passthrough) when it supports it.
    /// Default: true.
    pub passthrough: bool,
    /// Largest complete object whose blocks are all re-hashed at its first open in a mount (so
    /// that open is already passthrough); larger ones are checked in the background from their
    /// first open. Default: [`crate::fs::DEFAULT_CHECK_AT_OPEN_MAX`] (1 GiB).
    pub check_at_open_max: u64,
    /// Bytes of a directory's cached small files read into memory ahead of their readers' opens,
    /// by passes that an open finding its bytes on disk starts ([`crate::fs`]'s `ahead`); 0 turns
    /// them off. Default: [`crate::fs::DEFAULT_DIR_READ_AHEAD`] (1 GiB).
    pub dir_read_ahead: u64,
    /// Kernel read-ahead for the mount, in KiB, set after mounting (the kernel's FUSE default is
    /// 128 KiB, which caps daemon-path reads at about 1.2 GB/s here). Default: 1024.
    pub read_ahead_kb: Option<u32>,
    /// A shared cache tier between the local cache and the origin ([`crate::shared`]).
    pub shared: Option<crate::shared::SharedConfig>,
}

impl MountConfig {
    /// Defaults for everything but the four things only the user knows.
    pub fn new(s3: S3Config, prefix: &str, mountpoint: &Path, cache_dir: &Path) -> Self {
        Self {
            s3,
            prefix: normalize_prefix(prefix),
            mountpoint: mountpoint.to_path_buf(),
            cache_dir: cache_dir.to_path_buf(),
            cache: CacheConfig::default(),
            metadata_ttl: Some(Duration::from_secs(60)),
            allow_other: false,
            io_engine: EngineChoice::Auto,
            metrics_addr: None,
            fetch: FetchLimits::default(),
            prefetch: PrefetchConfig::default(),
            fuse_threads: DEFAULT_FUSE_THREADS,
            hint_parallel: crate::hints::DEFAULT_PARALLEL_FILES,
            verify: VerifyPolicy::default(),
            passthrough: true,
            check_at_open_max: crate::fs::DEFAULT_CHECK_AT_OPEN_MAX,
            dir_read_ahead: crate::fs::DEFAULT_DIR_READ_AHEAD,
            read_ahead_kb: Some(1024),
            shared: None,
        }
    }
}

/// `a/b` and `a/b/` both mean the prefix `a/b/`; "" and "/" mean the whole bucket.
pub fn normalize_prefix(prefix: &str) -> String {
    let p = prefix.trim_matches('/');
    if p.is_empty() {
        String::new()
    } else {
        format!("{p}/")
    }
}

/// Why a mount could not start; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// Mount point problems.
    #[error("mount point {path}: {problem}")]
    MountPoint {
        /// The path.
        path: PathBuf,
        /// What is wrong and what to do.
        problem: String,
    },
    /// Cache directory problems.
    #[error(transparent)]
    CacheDir(#[from] CacheDirError),
    /// The bucket does not exist.
    #[error("bucket {bucket:?} does not exist at this endpoint ({detail}); check the s3:// URI, --endpoint-url and --region")]
    NoSuchBucket {
        /// Bucket.
        bucket: String,
        /// Server's words.
        detail: String,
    },
    /// Credentials refused.
    #[error("S3 refused the credentials ({0}); check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE or the instance role")]
    AccessDenied(String),
    /// Endpoint unreachable or failing.
    #[error("cannot reach S3 ({0}); check --endpoint-url and the network")]
    Unreachable(String),
    /// Local I/O or FUSE failure.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A live mount. Dropping it unmounts.
pub struct MountHandle {
    session: Option<BackgroundSession>,
    fs: Arc<HoardFs>,
    /// Live counters.
    pub metrics: Arc<Metrics>,
    /// Where `/metrics` is served, if asked.
    pub metrics_addr: Option<SocketAddr>,
    mountpoint: PathBuf,
    cache_dir: PathBuf,
    record: MountRecord,
    runtime: Option<tokio::runtime::Runtime>,
}

fn check_mountpoint(path: &Path) -> Result<(), MountError> {
    let err = |problem: &str| MountError::MountPoint { path: path.to_path_buf(), problem: problem.to_string() };
    let meta = std::fs::metadata(path).map_err(|_| err("does not exist; create it with mkdir -p"))?;
    if !meta.is_dir() {
        return Err(err("is not a directory"));
    }
    let mut entries = std::fs::read_dir(path).map_err(|e| err(&format!("cannot be read ({e})")))?;
    if entries.next().is_some() {
        return Err(err("is not empty; mount on an empty directory (hoardfs would hide its contents)"));
    }
    Ok(())
}

/// Mounts with the real S3 client.
pub fn mount(config: MountConfig) -> Result<MountHandle, MountError> {
    let runtime = build_runtime()?;
    let client = runtime.block_on(S3Client::new(&config.s3));
    mount_with_client(config, Arc::new(client), runtime)
}

/// The multi-threaded runtime a mount runs its async work on.
pub fn build_runtime() -> Result<tokio::runtime::Runtime, MountError> {
    tokio::runtime::Builder::new_multi_thread()
        .thread_name("hoardfs-worker")
        .enable_all()
        .build()
        .map_err(|source| MountError::Io { what: "starting the async runtime".into(), source })
}

/// Mounts with any client (tests use fault-injecting ones). Counting is added here, so the
/// metrics see exactly what the client was asked.
pub fn mount_with_client(
    mut config: MountConfig,
    client: Arc<dyn ObjectClient>,
    runtime: tokio::runtime::Runtime,
) -> Result<MountHandle, MountError> {
    check_mountpoint(&config.mountpoint)?;
    // Pools of open files are sized from the limit in force (after raising it to the hard one),
    // so a stock `ulimit -n 1024` holds an epoch over any number of files.
    let nofile = crate::limits::raise_nofile_limit();
    let open_entries = crate::limits::open_entries_for(nofile);
    config.cache.open_entries = config.cache.open_entries.min(open_entries);
    tracing::info!("open-file limit {nofile}: up to {} cache entries and passthrough backings kept open", config.cache.open_entries);
    // A passthrough open hands every later read to the kernel, which hashes nothing: with
    // "re-hash on every read" the daemon must see every read, so passthrough is off.
    if config.cache.verify_every_read && config.passthrough {
        tracing::info!("--verify-reads always: FUSE passthrough is off, so every read from disk is re-hashed");
        config.passthrough = false;
    }
    let metrics = Arc::new(Metrics::default());
    let client: Arc<dyn ObjectClient> = Arc::new(CountingClient::new(client, metrics.clone()));
    let dir = CacheDir::open_exclusive(&config.cache_dir)?;
    // The bucket check (HeadBucket, or a one-key LIST) runs while the cache's state loads:
    // neither needs the other, and a remount of a large cache would otherwise wait for both.
    let bucket_check = {
        let (client, prefix) = (client.clone(), config.prefix.clone());
        runtime.spawn(async move { client.check_bucket(&prefix).await })
    };

    let io = crate::io::probe(config.io_engine)
        .map_err(|source| MountError::Io { what: "starting io_uring (try --io-engine psync)".into(), source })?;
    tracing::info!("cache I/O engine: {}", io.name());
    let cache = Arc::new(
        BlockCache::open(dir, io, metrics.clone(), config.cache.clone())
            .map_err(|source| MountError::Io { what: format!("reading cache dir {}", config.cache_dir.display()), source })?,
    );
    tracing::info!("cache holds {} object versions, {} bytes", cache.entry_count(), cache.total_bytes());

    let checked = runtime.block_on(bucket_check).unwrap_or_else(|e| Err(ObjectError::Other(format!("the bucket check failed: {e}"))));
    match checked {
        Ok(_) => {}
        Err(ObjectError::NotFound(d)) => return Err(MountError::NoSuchBucket { bucket: config.s3.bucket.clone(), detail: d }),
        Err(ObjectError::AccessDenied(d)) => return Err(MountError::AccessDenied(d)),
        // With any of the dataset in the cache dir (a stored listing, or cached objects opened by
        // path), a mount can serve it offline.
        Err(e)
            if ListingStore::new(&config.cache_dir, &config.s3.bucket).load(&config.prefix).is_some()
                || cache.holds_prefix(&config.s3.bucket, &config.prefix) =>
        {
            tracing::warn!("S3 is unreachable ({e}); mounting from the cache dir's stored listings and blocks (offline)");
        }
        Err(e) => return Err(MountError::Unreachable(e.to_string())),
    }
    let fetcher = {
        let _guard = runtime.enter();
        Fetcher::new(client.clone(), cache.clone(), metrics.clone(), config.fetch)
    };
    if let Some(shared) = config.shared.clone() {
        runtime.block_on(crate::shared::attach_s3(&fetcher, shared, &config.s3, cache.clone(), metrics.clone(), config.verify.mode));
    }
    let verifier = Verifier::new(fetcher.clone(), metrics.clone(), config.verify);
    let store = ListingStore::new(&config.cache_dir, &config.s3.bucket);
    let catalog = Arc::new(CacheCatalog { cache: cache.clone(), bucket: config.s3.bucket.clone() });
    let meta = Meta::new(client.clone(), &config.prefix, config.metadata_ttl, Some(store)).with_offline_catalog(catalog);
    let fs = Arc::new(
        HoardFs::new(meta, cache, fetcher, verifier, config.s3.bucket.clone(), config.prefetch)
            .with_passthrough(config.passthrough, config.check_at_open_max)
            .with_dir_read_ahead(config.dir_read_ahead),
    );
    {
        let _guard = runtime.enter();
        fs.spawn_dir_read_ahead();
    }

    let metrics_addr = match config.metrics_addr {
        Some(addr) => Some(
            crate::metrics::serve(metrics.clone(), addr)
                .map_err(|source| MountError::Io { what: format!("serving metrics on {addr}"), source })?,
        ),
        None => None,
    };

    let record = MountRecord {
        pid: std::process::id(),
        source: format!("s3://{}/{}", config.s3.bucket, config.prefix),
        mountpoint: config.mountpoint.display().to_string(),
        metrics_addr: metrics_addr.map(|a| a.to_string()),
        max_cache_size: config.cache.max_size,
        started: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        counters: vec![],
    };
    if let Err(e) = record.write(&config.cache_dir.join(MOUNT_RECORD)) {
        tracing::warn!("could not write {MOUNT_RECORD} in the cache dir ({e}); `hoardfs cache stat` will not see this mount");
    }

    let kernel_ttl = config.metadata_ttl.unwrap_or(INDEFINITE_KERNEL_TTL);
    let hints = (config.hint_parallel > 0).then(|| {
        // Absolute paths written to the control file are made relative to this, so it must be
        // the path the kernel resolves, not the one given.
        let mountpoint = std::fs::canonicalize(&config.mountpoint).unwrap_or_else(|_| config.mountpoint.clone());
        let hints = HintQueue::new(&mountpoint, metrics.clone());
        let _guard = runtime.enter();
        hints.spawn_workers(fs.clone(), config.hint_parallel);
        hints
    });
    let passthrough = config.passthrough.then_some(config.cache.open_entries);
    let adapter =
        FuseAdapter::new(fs.clone(), runtime.handle().clone(), kernel_ttl, metrics.clone(), passthrough, &config.cache_dir, hints.clone());
    let mut fuse_config = fuser::Config::default();
    fuse_config.mount_options = vec![
        // Without the kernel's ro flag the control file can be written; hoardfs itself refuses
        // every other change with EROFS.
        if hints.is_some() { MountOption::RW } else { MountOption::RO },
        MountOption::FSName(format!("hoardfs:{}", config.s3.bucket)),
        MountOption::Subtype("hoardfs".into()),
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::NoAtime,
        MountOption::DefaultPermissions,
    ];
    if config.allow_other {
        fuse_config.acl = SessionACL::All;
    }
    fuse_config.n_threads = Some(config.fuse_threads.max(1));
    fuse_config.clone_fd = config.fuse_threads > 1;
    let session = fuser::spawn_mount(adapter, &config.mountpoint, &fuse_config).map_err(|source| MountError::Io {
        what: format!("mounting FUSE at {} (is /dev/fuse present and are you root?)", config.mountpoint.display()),
        source,
    })?;
    if let Some(kb) = config.read_ahead_kb {
        if let Err(e) = set_read_ahead(&config.mountpoint, kb) {
            tracing::warn!("could not raise the mount's read-ahead to {kb} KiB ({e}); sequential reads may be slower");
        }
    }
    tracing::info!("mounted s3://{}/{} at {}", config.s3.bucket, config.prefix, config.mountpoint.display());
    Ok(MountHandle {
        session: Some(session),
        fs,
        metrics,
        metrics_addr,
        mountpoint: config.mountpoint,
        cache_dir: config.cache_dir,
        record,
        runtime: Some(runtime),
    })
}

/// The cache's records of one bucket, as the metadata layer asks for them when S3 is away.
struct CacheCatalog {
    cache: Arc<BlockCache>,
    bucket: String,
}

impl OfflineCatalog for CacheCatalog {
    fn object(&self, key: &str) -> Option<crate::object::ObjectInfo> {
        self.cache.cached_info(&self.bucket, key)
    }

    fn holds_prefix(&self, prefix: &str) -> bool {
        self.cache.holds_prefix(&self.bucket, prefix)
    }
}

/// Writes the mount's backing-device read-ahead (`/sys/class/bdi/MAJ:MIN/read_ahead_kb`). It
/// has to happen after the mount is up: the kernel resets it when the session initialises.
fn set_read_ahead(mountpoint: &Path, kb: u32) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(mountpoint)?.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    std::fs::write(format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb"), kb.to_string())
}

impl MountHandle {
    /// The mount point.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Whether the kernel still has the mount (false after `fusermount3 -u`).
    pub fn is_mounted(&self) -> bool {
        self.session.as_ref().is_some_and(|s| !s.guard.is_finished())
    }

    /// Blocks until SIGINT/SIGTERM or an external unmount, then unmounts.
    pub fn run_until_signal(mut self) -> std::io::Result<()> {
        let runtime = self.runtime.take().expect("runtime present until drop");
        let session_done = || self.session.as_ref().is_none_or(|s| s.guard.is_finished());
        runtime.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate())?;
            let mut int = signal(SignalKind::interrupt())?;
            loop {
                tokio::select! {
                    _ = term.recv() => break,
                    _ = int.recv() => break,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => if session_done() { break },
                }
            }
            Ok::<(), std::io::Error>(())
        })?;
        self.runtime = Some(runtime);
        self.unmount()
    }

    /// Unmounts and waits for the FUSE threads to finish.
    pub fn unmount(mut self) -> std::io::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> std::io::Result<()> {
        let result = match self.session.take() {
            Some(session) => {
                let unmounted_already = session.guard.is_finished();
                match session.umount_and_join() {
                    // `fusermount3 -u` or `umount` got there first: the kernel says EINVAL to a
                    // second unmount, and there is nothing left to do.
                    Err(e) if unmounted_already && e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
                    other => other,
                }
            }
            None => Ok(()),
        };
        if let Some(rt) = &self.runtime {
            rt.block_on(self.fs.drain(Duration::from_secs(10)));
            // The next mount reads this one file instead of every index.
            self.fs.cache().checkpoint();
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
            // Final counters for `hoardfs cache stat`; written once, when the session ends.
            let mut last = self.record.clone();
            last.counters = self.metrics.snapshot().into_iter().map(|(n, _, v)| (n.to_string(), v)).collect();
            let _ = last.write(&self.cache_dir.join(LAST_MOUNT_RECORD));
            let _ = std::fs::remove_file(self.cache_dir.join(MOUNT_RECORD));
            tracing::info!("unmounted {}", self.mountpoint.display());
        }
        result
    }
}

impl Drop for MountHandle {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!("unmounting {}: {e}", self.mountpoint.display());
        }
    }
}
