//! `pread`/`pwrite` in the calling task.
//!
//! The I/O runs inline on the async worker rather than on a blocking pool: a page-cache hit costs
//! well under a microsecond, far less than any thread hand-off (see docs/DESIGN.md),
//! and a cold NVMe read blocks one of the runtime's workers for about 100 µs.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;

use super::IoEngine;
use crate::object::BoxFuture;

/// The fallback engine, used where io_uring is unavailable or with `--io-engine psync`.
pub struct PsyncEngine;

impl IoEngine for PsyncEngine {
    fn read_at(&self, file: &Arc<File>, offset: u64, len: usize) -> BoxFuture<'static, io::Result<Bytes>> {
        let mut buf = vec![0u8; len];
        let result = file.read_exact_at(&mut buf, offset).map(|_| Bytes::from(buf));
        Box::pin(async move { result })
    }

    fn write_at(&self, file: &Arc<File>, offset: u64, data: Bytes) -> BoxFuture<'static, io::Result<()>> {
        let result = file.write_all_at(&data, offset);
        Box::pin(async move { result })
    }

    fn name(&self) -> &'static str {
        "psync"
    }
}
