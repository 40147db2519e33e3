//! An [`ObjectClient`] double in front of a real client that flips one byte of chosen GET
//! bodies: the way tests put a wrong byte on the wire without touching the server's copy.

use std::ops::Range;

use bytes::Bytes;
use hoardfs::checksum::ObjectChecksum;
use hoardfs::object::{BoxFuture, ListPage, ObjectClient, ObjectError, ObjectInfo};

/// Says, for a body of `key` holding `range` of the object, which byte (an object offset
/// inside `range`) to flip, if any. Called once per GET, so it may count.
pub type Rule = Box<dyn Fn(&str, Range<u64>) -> Option<u64> + Send + Sync>;

pub struct Corrupting<C> {
    pub inner: C,
    pub rule: Rule,
}

impl<C> Corrupting<C> {
    pub fn new(inner: C, rule: impl Fn(&str, Range<u64>) -> Option<u64> + Send + Sync + 'static) -> Self {
        Self { inner, rule: Box::new(rule) }
    }

    fn apply(&self, key: &str, start: u64, body: Bytes) -> Bytes {
        let range = start..start + body.len() as u64;
        match (self.rule)(key, range.clone()) {
            Some(at) if range.contains(&at) => {
                let mut v = body.to_vec();
                v[(at - start) as usize] ^= 0x01;
                Bytes::from(v)
            }
            _ => body,
        }
    }
}

impl<C: ObjectClient> ObjectClient for Corrupting<C> {
    metadata_from_inner!();
    fn get_range(&self, key: &str, etag: &str, range: Range<u64>) -> BoxFuture<'_, Result<Bytes, ObjectError>> {
        let (key, start) = (key.to_string(), range.start);
        let fut = self.inner.get_range(&key, etag, range);
        Box::pin(async move { Ok(self.apply(&key, start, fut.await?)) })
    }
    fn get_whole(&self, key: &str, etag: &str) -> BoxFuture<'_, Result<(Bytes, ObjectChecksum), ObjectError>> {
        let key = key.to_string();
        let fut = self.inner.get_whole(&key, etag);
        Box::pin(async move { fut.await.map(|(b, c)| (self.apply(&key, 0, b), c)) })
    }
}
