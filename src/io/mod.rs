//! How bytes move between memory and the cache's data files.
//!
//! The cache decides *where* bytes live; an [`IoEngine`] decides *how* the I/O is issued. Two
//! engines sit behind one trait and pass the same tests: [`uring::UringEngine`] (io_uring through
//! tokio-uring on a dedicated ring thread) and [`psync::PsyncEngine`] (plain `pread`/`pwrite`).
//! [`probe`] picks uring when the kernel and seccomp profile allow it, and says so when not.

pub mod psync;
pub mod resident;
pub mod uring;

use std::fs::File;
use std::io;
use std::sync::Arc;

use bytes::Bytes;

use crate::object::BoxFuture;

/// Positional reads and writes on open cache files.
pub trait IoEngine: Send + Sync + 'static {
    /// Reads exactly `len` bytes at `offset` (holes in a sparse file read as zeros).
    fn read_at(&self, file: &Arc<File>, offset: u64, len: usize) -> BoxFuture<'static, io::Result<Bytes>>;
    /// Writes all of `data` at `offset`.
    fn write_at(&self, file: &Arc<File>, offset: u64, data: Bytes) -> BoxFuture<'static, io::Result<()>>;
    /// Name for logs and `--help` ("uring" or "psync").
    fn name(&self) -> &'static str;
}

/// Which engine the user asked for with `--io-engine`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineChoice {
    /// io_uring if a probe succeeds, else psync (with a warning).
    Auto,
    /// io_uring or fail.
    Uring,
    /// Plain pread/pwrite.
    Psync,
}

/// Builds the engine. `Auto` starts a ring and runs one real read through it: io_uring can be
/// compiled in yet refused at run time (old kernels, container seccomp profiles).
pub fn probe(choice: EngineChoice) -> io::Result<Arc<dyn IoEngine>> {
    match choice {
        EngineChoice::Psync => Ok(Arc::new(psync::PsyncEngine)),
        EngineChoice::Uring => Ok(Arc::new(uring::UringEngine::start()?)),
        EngineChoice::Auto => match uring::UringEngine::start() {
            Ok(engine) => Ok(Arc::new(engine)),
            Err(e) => {
                tracing::warn!("io_uring unavailable ({e}); cache I/O falls back to pread/pwrite");
                Ok(Arc::new(psync::PsyncEngine))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same contract, run against both engines.
    async fn contract(engine: Arc<dyn IoEngine>) {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(dir.path().join("f")).unwrap();
        file.set_len(3 << 20).unwrap();
        let file = Arc::new(file);
        let data = Bytes::from((0..(1 << 20)).map(|i| (i % 251) as u8).collect::<Vec<_>>());
        engine.write_at(&file, 1 << 20, data.clone()).await.unwrap();
        assert_eq!(engine.read_at(&file, 1 << 20, 1 << 20).await.unwrap(), data);
        assert_eq!(engine.read_at(&file, (1 << 20) + 7, 13).await.unwrap(), data.slice(7..20));
        // A small write (the uring engine makes it in place, not on the ring) lands too.
        let small = data.slice(100..4196);
        engine.write_at(&file, 2 << 20, small.clone()).await.unwrap();
        assert_eq!(engine.read_at(&file, 2 << 20, small.len()).await.unwrap(), small);
        // A hole reads as zeros.
        assert_eq!(engine.read_at(&file, 0, 4096).await.unwrap(), vec![0u8; 4096]);
        // Reading past the end is an error, not a short read passed off as data.
        assert!(engine.read_at(&file, (3 << 20) - 10, 20).await.is_err());
    }

    #[tokio::test]
    async fn psync_contract() {
        contract(probe(EngineChoice::Psync).unwrap()).await;
    }

    #[tokio::test]
    async fn uring_contract() {
        contract(probe(EngineChoice::Uring).expect("io_uring must work on the CI kernel")).await;
    }
}
