//! An [`ObjectClient`] double in front of a real client that holds every whole-object GET of one
//! key until the test lets it go: the way a test keeps an open's GET in flight for as long as it
//! needs to look at what the rest of the mount does meanwhile.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use hoardfs::checksum::ObjectChecksum;
use hoardfs::object::{BoxFuture, ListPage, ObjectClient, ObjectError, ObjectInfo};

pub struct Holding<C> {
    pub inner: C,
    key: String,
    /// Set once a GET of the key has started (and is being held).
    pub started: AtomicBool,
    open: tokio::sync::watch::Sender<bool>,
}

impl<C> Holding<C> {
    pub fn new(inner: C, key: &str) -> Self {
        Self { inner, key: key.to_string(), started: AtomicBool::new(false), open: tokio::sync::watch::Sender::new(false) }
    }

    /// Lets the held GETs (and every later one) go on.
    pub fn release(&self) {
        self.open.send_replace(true);
    }
}

impl<C: ObjectClient> ObjectClient for Holding<C> {
    metadata_from_inner!();
    fn get_range(&self, key: &str, etag: &str, range: Range<u64>) -> BoxFuture<'_, Result<Bytes, ObjectError>> {
        self.inner.get_range(key, etag, range)
    }
    fn get_whole(&self, key: &str, etag: &str) -> BoxFuture<'_, Result<(Bytes, ObjectChecksum), ObjectError>> {
        let held = (key == self.key).then(|| self.open.subscribe());
        let fut = self.inner.get_whole(key, etag);
        Box::pin(async move {
            if let Some(mut open) = held {
                self.started.store(true, Ordering::SeqCst);
                let _ = open.wait_for(|o| *o).await;
            }
            fut.await
        })
    }
}
