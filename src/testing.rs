//! A complete file system over the in-memory client, for unit tests of the layers together
//! without FUSE or a network.

use std::path::Path;
use std::sync::Arc;

use crate::cache::{BlockCache, CacheConfig, CacheDir};
use crate::fetch::Fetcher;
use crate::fs::HoardFs;
use crate::io::{probe, EngineChoice, IoEngine};
use crate::meta::{Meta, ROOT_INO};
use crate::metrics::Metrics;
use crate::object::counting::CountingClient;
use crate::object::memory::MemoryClient;
use crate::object::ObjectClient;
use crate::prefetch::PrefetchConfig;
use crate::verify::{Verifier, VerifyPolicy};

/// The assembled layers and their counters.
pub struct Rig {
    /// The file system.
    pub fs: HoardFs,
    /// Its counters.
    pub metrics: Arc<Metrics>,
    /// Its cache.
    pub cache: Arc<BlockCache>,
    /// Its fetcher.
    pub fetcher: Arc<Fetcher>,
}

/// A rig with the default verification policy.
pub fn rig(dir: &Path, mem: Arc<MemoryClient>, engine: EngineChoice, config: CacheConfig) -> Rig {
    rig_with(dir, mem, engine, config, VerifyPolicy::default())
}

impl Rig {
    /// Closes the rig as an unmount would: waits for every load in flight to land, then for the
    /// last reference to the cache (a fetch task that answered its readers and is finishing) to
    /// go, which releases the cache dir's lock for the next rig. On a multi-threaded runtime
    /// those tasks may outlive the read that started them.
    pub async fn close(self) {
        self.fetcher.drain().await;
        let cache = Arc::downgrade(&self.cache);
        drop(self);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while cache.strong_count() > 0 {
            assert!(std::time::Instant::now() < deadline, "a task kept the cache open 30 s after its loads ended");
            tokio::task::yield_now().await;
        }
    }
}

/// A rig with a chosen verification policy.
pub fn rig_with(dir: &Path, mem: Arc<MemoryClient>, engine: EngineChoice, config: CacheConfig, policy: VerifyPolicy) -> Rig {
    rig_on(dir, mem, probe(engine).unwrap(), config, policy)
}

/// A rig over a given I/O engine (a test double, such as [`SlowWrites`]).
pub fn rig_on(dir: &Path, mem: Arc<MemoryClient>, io: Arc<dyn IoEngine>, config: CacheConfig, policy: VerifyPolicy) -> Rig {
    let metrics = Arc::new(Metrics::default());
    let client: Arc<dyn ObjectClient> = Arc::new(CountingClient::new(mem, metrics.clone()));
    let cache = Arc::new(BlockCache::open(CacheDir::open_exclusive(dir).unwrap(), io, metrics.clone(), config).unwrap());
    let fetcher = Fetcher::new(
        client.clone(),
        cache.clone(),
        metrics.clone(),
        crate::fetch::FetchLimits { max_concurrent_gets: 4, ..Default::default() },
    );
    let verifier = Verifier::new(fetcher.clone(), metrics.clone(), policy);
    let meta = Meta::new(client, "", None, None);
    let fs = HoardFs::new(meta, cache.clone(), fetcher.clone(), verifier, "b".into(), PrefetchConfig::default());
    Rig { fs, metrics, cache, fetcher }
}

/// 4 KiB blocks, so small test objects span several blocks.
pub fn small_blocks() -> CacheConfig {
    CacheConfig { block_size: 4096, ..CacheConfig::default() }
}

/// Every data file of the cache dir at `root` (in its shards under `objects/`).
pub fn data_files(root: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(root.join(crate::cache::store::OBJECTS))
        .unwrap()
        .flat_map(|shard| std::fs::read_dir(shard.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "data"))
        .collect()
}

/// Deterministic test bytes.
pub fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed).wrapping_add((i >> 8) as u8)).collect()
}

/// Reads a whole file of the root directory in 5000-byte reads.
pub async fn read_all(fs: &HoardFs, name: &str) -> Result<Vec<u8>, crate::fs::FsError> {
    let attr = fs.lookup(ROOT_INO, name).await?;
    let fh = fs.open(attr.ino, false).await?;
    let mut out = Vec::new();
    let result = loop {
        match fs.read(fh, out.len() as u64, 5000).await {
            Ok(chunk) if chunk.is_empty() => break Ok(out),
            Ok(chunk) => out.extend_from_slice(&chunk),
            Err(e) => break Err(e),
        }
    };
    fs.release(fh);
    result
}

/// An I/O engine whose writes land `delay` late: widens the window between a load answering
/// its readers and its block being claimed, where races between fetches and drops live.
pub struct SlowWrites(pub Arc<dyn IoEngine>, pub std::time::Duration);

impl IoEngine for SlowWrites {
    fn read_at(
        &self,
        file: &Arc<std::fs::File>,
        offset: u64,
        len: usize,
    ) -> crate::object::BoxFuture<'static, std::io::Result<bytes::Bytes>> {
        self.0.read_at(file, offset, len)
    }

    fn write_at(
        &self,
        file: &Arc<std::fs::File>,
        offset: u64,
        data: bytes::Bytes,
    ) -> crate::object::BoxFuture<'static, std::io::Result<()>> {
        let (inner, delay) = (self.0.write_at(file, offset, data), self.1);
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            inner.await
        })
    }

    fn name(&self) -> &'static str {
        "slow-writes"
    }
}

/// While alive, this process has no free file descriptor (its soft limit lowered and filled);
/// dropping it restores both. Tests run one per process under nextest, so nothing else in the
/// process is starved by it.
pub struct FdsExhausted {
    _files: Vec<std::fs::File>,
    old: libc::rlimit,
}

impl FdsExhausted {
    /// Lowers the soft limit to 256 and opens `/dev/null` until EMFILE.
    pub fn now() -> Self {
        let mut old = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit/setrlimit read or write structs we own.
        unsafe {
            assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut old), 0);
            let low = libc::rlimit { rlim_cur: 256.min(old.rlim_max), rlim_max: old.rlim_max };
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &low), 0);
        }
        let mut files = Vec::new();
        loop {
            match std::fs::File::open("/dev/null") {
                Ok(f) => files.push(f),
                Err(e) if crate::limits::is_fd_exhaustion(&e) => break,
                Err(e) => panic!("opening /dev/null: {e}"),
            }
        }
        Self { _files: files, old }
    }
}

impl Drop for FdsExhausted {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &self.old) };
    }
}
