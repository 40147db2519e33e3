//! How bytes move between memory and the cache's data files.
//!
//! The cache decides *where* bytes live; an [`IoEngine`] decides *how* the I/O is issued. Two
//! engines sit behind one trait and pass the same tests: [`uring::UringEngine`] (io_uring through
//! tokio-uring on a dedicated ring thread) and [`psync::PsyncEngine`] (plain `pread`/`pwrite`).
//! [`probe`] picks uring when the kernel and seccomp profile allow it, and says so when not.
//!
//! Both engines hand a read that must wait for the disk to a blocking thread ([`read_from_disk`]).

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

/// Reads smaller than this stay with their engine even when they will wait for the disk.
///
/// The hop to a blocking thread and back costs CPU that a small read's disk wait does not
/// hide: after a remount, 5,000 × 128 KiB files, 8 readers, CPU-bound on two cores
/// (`benches/ab.py`-style rounds), the epoch went from 0.79x raw to 0.77x with every cold read
/// moved off the ring (medians of 6 rounds), while 2,000 × 2 MiB files (two 1 MiB blocks each)
/// went from 0.77x to 0.84x.
pub const READ_FROM_DISK_MIN: usize = 256 << 10;

/// A read of at least [`READ_FROM_DISK_MIN`] bytes that will wait for the disk, made by a
/// `pread` on the runtime's blocking pool; `None` for a smaller read, a read whose bytes are all
/// in the page cache, or when the kernel cannot say, which the engine makes its own way.
///
/// Why not on the ring: io_uring first tries a buffered read without waiting, and on a miss
/// retries it from the ring thread each time part of it arrives, so cold reads of a block are
/// slower there than blocking `pread`s, and more so the more are in flight. Cold 1 MiB blocks
/// of cache data files, page cache dropped, this machine's disk (a throwaway bench, DESIGN "Cold
/// reads off the ring"): 8 in flight, tokio-uring 1,308 MB/s against 1,801 for 8 threads of
/// `pread`; 16 in flight, 1,374-1,602 against 1,850-2,011; a bare ring with no flags 1,090-1,114;
/// 128 KiB reads, 580 against 707. The psync engine's inline `pread` would block one of the
/// runtime's few workers for the whole disk wait, which delays every task queued behind it.
/// Reads whose bytes are in memory, the common case in a warm epoch, keep their engine.
pub fn read_from_disk(file: &Arc<File>, offset: u64, len: usize) -> Option<BoxFuture<'static, io::Result<Bytes>>> {
    if len < READ_FROM_DISK_MIN || resident::range_resident(&**file, offset, len) != Some(false) {
        return None;
    }
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    let file = Arc::clone(file);
    let read = runtime.spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset).map(|()| Bytes::from(buf))
    });
    Some(Box::pin(async move { read.await.map_err(io::Error::other)? }))
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
        // A block that must come off the disk (a blocking thread's `pread`) reads the same.
        file.sync_all().unwrap();
        evict(&file);
        assert_eq!(engine.read_at(&file, 1 << 20, 1 << 20).await.unwrap(), data);
    }

    fn evict(file: &File) {
        use std::os::fd::AsRawFd;
        // SAFETY: advice on a descriptor the caller holds open.
        assert_eq!(unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) }, 0);
    }

    /// Which reads go to a blocking thread: those of at least [`READ_FROM_DISK_MIN`] bytes not
    /// all in memory; and the thread's buffered `pread` leaves the bytes in memory, where the
    /// kernel's passthrough read of the file finds them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_a_large_read_from_disk_leaves_its_engine() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..(2 << 20)).map(|i| (i % 253) as u8).collect();
        std::fs::write(dir.path().join("f"), &data).unwrap();
        let file = Arc::new(File::open(dir.path().join("f")).unwrap());
        file.sync_all().unwrap();
        assert!(read_from_disk(&file, 0, 1 << 20).is_none(), "bytes just written are in memory");
        evict(&file);
        if resident::range_resident(&*file, 0, 2 << 20) != Some(false) {
            eprintln!("SKIPPED: cachestat(2) unavailable, or the file stayed in memory after DONTNEED; nothing to check");
            return;
        }
        assert!(read_from_disk(&file, 0, READ_FROM_DISK_MIN - 1).is_none(), "a small read stays with its engine");
        let read = read_from_disk(&file, 1 << 20, 1 << 20).expect("a 1 MiB read from disk goes to a blocking thread");
        assert_eq!(read.await.unwrap(), &data[1 << 20..]);
        assert_eq!(resident::range_resident(&*file, 1 << 20, 1 << 20), Some(true), "the read left its bytes in memory");
        assert_eq!(resident::range_resident(&*file, 0, 1 << 20), Some(false), "and no others");
        assert!(read_from_disk(&file, 1 << 20, 1 << 20).is_none(), "a second read finds them there");
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
