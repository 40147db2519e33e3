//! A complete file system over the in-memory client, for unit tests of the layers together
//! without FUSE or a network.

use std::path::Path;
use std::sync::Arc;

use crate::cache::{BlockCache, CacheConfig, CacheDir};
use crate::fetch::Fetcher;
use crate::fs::{HoardFs, PrefetchConfig};
use crate::io::{probe, EngineChoice};
use crate::meta::{Meta, ROOT_INO};
use crate::metrics::Metrics;
use crate::object::counting::CountingClient;
use crate::object::memory::MemoryClient;
use crate::object::ObjectClient;
use crate::verify::{Verifier, VerifyPolicy};

/// The assembled layers and their counters.
pub struct Rig {
    /// The file system.
    pub fs: HoardFs,
    /// Its counters.
    pub metrics: Arc<Metrics>,
    /// Its cache.
    pub cache: Arc<BlockCache>,
}

/// A rig with the default verification policy.
pub fn rig(dir: &Path, mem: Arc<MemoryClient>, engine: EngineChoice, config: CacheConfig) -> Rig {
    rig_with(dir, mem, engine, config, VerifyPolicy::default())
}

/// A rig with a chosen verification policy.
pub fn rig_with(dir: &Path, mem: Arc<MemoryClient>, engine: EngineChoice, config: CacheConfig, policy: VerifyPolicy) -> Rig {
    let metrics = Arc::new(Metrics::default());
    let client: Arc<dyn ObjectClient> = Arc::new(CountingClient::new(mem, metrics.clone()));
    let cache = Arc::new(
        BlockCache::open(CacheDir::open_exclusive(dir).unwrap(), probe(engine).unwrap(), metrics.clone(), config).unwrap(),
    );
    let fetcher = Fetcher::new(client.clone(), cache.clone(), metrics.clone(), crate::fetch::FetchLimits { max_concurrent_gets: 4, ..Default::default() });
    let verifier = Verifier::new(fetcher.clone(), metrics.clone(), policy);
    let meta = Meta::new(client, "", None, None);
    let fs = HoardFs::new(meta, cache.clone(), fetcher, verifier, "b".into(), PrefetchConfig::default());
    Rig { fs, metrics, cache }
}

/// 4 KiB blocks, so small test objects span several blocks.
pub fn small_blocks() -> CacheConfig {
    CacheConfig { block_size: 4096, ..CacheConfig::default() }
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
