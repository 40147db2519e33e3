//! io_uring through tokio-uring, on a dedicated ring thread.
//!
//! tokio-uring's runtime, files and futures are `!Send`, so one thread owns the ring and the rest
//! of hoardfs talks to it through a bounded channel plus a oneshot reply per operation. The
//! bounded channel is the backpressure: when the ring is saturated, callers wait.
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
