//! io_uring through tokio-uring, on a dedicated ring thread.
//!
//! tokio-uring's runtime, files and futures are `!Send`, so one thread owns the ring and the rest
//! of hoardfs talks to it through a bounded channel plus a oneshot reply per operation. The
//! bounded channel is the backpressure: when the ring is saturated, callers wait.
//!
//! Writes of at most [`INLINE_WRITE_MAX`] bytes skip the ring: they are a `pwrite` in the calling
//! task (see that constant for why).
//!
//! Each operation carries a `dup` of the caller's file descriptor, which the ring thread wraps and
//! closes when the operation ends. That costs one `fcntl` and one `close` (about a microsecond)
//! and means the ring holds no descriptor of an evicted file after its last operation, so deleted
//! cache files free their space at once.

use std::fs::File;
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::IoEngine;
use crate::object::BoxFuture;

/// Operations in flight on the ring at most; beyond this, submitters wait. Default: 256.
pub const QUEUE_DEPTH: usize = 256;

enum Op {
    Read { file: File, offset: u64, len: usize, reply: oneshot::Sender<io::Result<Bytes>> },
    Write { file: File, offset: u64, data: Bytes, reply: oneshot::Sender<io::Result<()>> },
}

/// Writes up to this size are made in the calling task with `pwrite`, not on the ring.
///
/// A write of fetched bytes is a buffered write: a copy into the page cache, which ext4 cannot
/// do without blocking and so io_uring hands to one of its io-wq kernel threads. On the ring it
/// costs a wake-up of the ring thread, one of an io-wq worker and one back, which for a small
/// file's one block is more CPU than the copy: a cold epoch of 20,000 × 16 KiB objects spent
/// 255-270 µs of daemon CPU per file with every write on the ring and 204-214 µs with plain
/// `pwrite` (docs/DESIGN.md, "Small writes skip the ring"). Larger writes (the blocks of a big
/// object's coalesced GET) stay on the ring, where the copy overlaps the next GET's hashing.
pub const INLINE_WRITE_MAX: usize = 128 << 10;

/// Handle to the ring thread; cloning the sender is all a caller needs.
pub struct UringEngine {
    tx: mpsc::Sender<Op>,
}

impl UringEngine {
    /// Starts the ring thread and proves it works with one read before returning.
    pub fn start() -> io::Result<Self> {
        let (tx, mut rx) = mpsc::channel::<Op>(QUEUE_DEPTH);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<()>>();
        std::thread::Builder::new().name("hoardfs-uring".into()).spawn(move || {
            let runtime = match tokio_uring::Runtime::new(tokio_uring::builder().entries(QUEUE_DEPTH as u32)) {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            runtime.block_on(async move {
                let _ = ready_tx.send(self_test().await);
                while let Some(op) = rx.recv().await {
                    tokio_uring::spawn(run(op));
                }
            });
        })?;
        ready_rx.recv().map_err(|_| io::Error::other("io_uring thread exited during start-up"))??;
        Ok(Self { tx })
    }

    async fn submit<T>(tx: mpsc::Sender<Op>, op: Op, rx: oneshot::Receiver<io::Result<T>>) -> io::Result<T> {
        tx.send(op).await.map_err(|_| io::Error::other("io_uring thread is gone"))?;
        rx.await.map_err(|_| io::Error::other("io_uring thread dropped the operation"))?
    }
}

async fn self_test() -> io::Result<()> {
    let probe = tempfile_in_tmp()?;
    let file = tokio_uring::fs::File::from_std(probe);
    let (res, _) = file.read_at(Vec::with_capacity(16), 0).await;
    res.map(|_| ())
}

fn tempfile_in_tmp() -> io::Result<File> {
    let path = std::env::temp_dir().join(format!("hoardfs-uring-probe-{}", std::process::id()));
    let file = File::options().read(true).write(true).create(true).truncate(true).open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}

async fn run(op: Op) {
    match op {
        Op::Read { file, offset, len, reply } => {
            let file = tokio_uring::fs::File::from_std(file);
            let (res, buf) = file.read_exact_at(Vec::with_capacity(len), offset).await;
            let _ = reply.send(res.map(|_| Bytes::from(buf)));
        }
        Op::Write { file, offset, data, reply } => {
            let file = tokio_uring::fs::File::from_std(file);
            let (res, _) = file.write_all_at(data, offset).await;
            let _ = reply.send(res);
        }
    }
}

impl IoEngine for UringEngine {
    fn read_at(&self, file: &Arc<File>, offset: u64, len: usize) -> BoxFuture<'static, io::Result<Bytes>> {
        let tx = self.tx.clone();
        let file = file.try_clone();
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            Self::submit(tx, Op::Read { file: file?, offset, len, reply }, rx).await
        })
    }

    fn write_at(&self, file: &Arc<File>, offset: u64, data: Bytes) -> BoxFuture<'static, io::Result<()>> {
        if data.len() <= INLINE_WRITE_MAX {
            return super::psync::PsyncEngine.write_at(file, offset, data);
        }
        let tx = self.tx.clone();
        let file = file.try_clone();
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            Self::submit(tx, Op::Write { file: file?, offset, data, reply }, rx).await
        })
    }

    fn name(&self) -> &'static str {
        "uring"
    }
}
