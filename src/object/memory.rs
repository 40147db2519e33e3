//! An in-memory [`ObjectClient`]: the reference model for unit tests of the cache, fetcher and
//! file system logic, with no network and exact control over content and ETags.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Mutex;
use std::time::SystemTime;

use bytes::Bytes;

use crate::checksum::{s3_checksum, Algorithm, ChecksumType, ObjectChecksum, Part};

use super::{check_body_len, BoxFuture, ListPage, ObjectClient, ObjectError, ObjectInfo};

/// A test's hook that alters a body before it is served: called with the key and the bytes.
type Corrupter = Box<dyn Fn(&str, &mut Vec<u8>) + Send>;

/// Objects kept in a sorted map so listings come out in S3's (byte-wise) order.
#[derive(Default)]
pub struct MemoryClient {
    bucket: String,
    objects: Mutex<BTreeMap<String, (Bytes, ObjectInfo)>>,
    checksums: Mutex<BTreeMap<String, ObjectChecksum>>,
    corrupt: Mutex<Option<Corrupter>>,
    /// Listings leave out ETags, as some S3-compatible servers do (s3s-fs).
    pub lists_without_etags: std::sync::atomic::AtomicBool,
}

impl MemoryClient {
    /// An empty bucket.
    pub fn new(bucket: &str) -> Self {
        Self { bucket: bucket.to_string(), ..Self::default() }
    }

    /// Stores `body` under `key` with an MD5 ETag, as S3 does for single-part uploads.
    pub fn put(&self, key: &str, body: impl Into<Bytes>) -> ObjectInfo {
        use md5::Digest;
        let body: Bytes = body.into();
        let etag = format!("\"{:x}\"", md5::Md5::digest(&body));
        let info = ObjectInfo { key: key.to_string(), size: body.len() as u64, etag, last_modified: SystemTime::now() };
        self.objects.lock().unwrap().insert(key.to_string(), (body, info.clone()));
        self.checksums.lock().unwrap().remove(key);
        info
    }

    /// Stores `body` with an additional checksum as S3 would compute it: full-object, or
    /// composite over parts of `part_size` bytes when given.
    pub fn put_with_checksum(&self, key: &str, body: impl Into<Bytes>, algorithm: Algorithm, part_size: Option<usize>) -> ObjectInfo {
        let body: Bytes = body.into();
        let info = self.put(key, body.clone());
        let checksum = match part_size {
            None => ObjectChecksum { algorithm, kind: ChecksumType::FullObject, value: s3_checksum(algorithm, &body), parts: vec![] },
            Some(n) => {
                let parts: Vec<Part> = body.chunks(n).map(|c| Part { size: c.len() as u64, checksum: s3_checksum(algorithm, c) }).collect();
                let mut concat = Vec::new();
                for p in &parts {
                    concat.extend(base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &p.checksum).unwrap());
                }
                let value = format!("{}-{}", s3_checksum(algorithm, &concat), parts.len());
                ObjectChecksum { algorithm, kind: ChecksumType::Composite, value, parts }
            }
        };
        self.checksums.lock().unwrap().insert(key.to_string(), checksum);
        info
    }

    /// Replaces an object's ETag (to model multipart or encrypted objects).
    pub fn set_etag(&self, key: &str, etag: &str) {
        if let Some((_, info)) = self.objects.lock().unwrap().get_mut(key) {
            info.etag = etag.to_string();
        }
    }

    /// Installs a hook that may alter GET bodies (key, body): fault injection for tests.
    pub fn corrupt_gets(&self, f: impl Fn(&str, &mut Vec<u8>) + Send + 'static) {
        *self.corrupt.lock().unwrap() = Some(Box::new(f));
    }
}

impl ObjectClient for MemoryClient {
    fn head(&self, key: &str) -> BoxFuture<'_, Result<ObjectInfo, ObjectError>> {
        let found = self.objects.lock().unwrap().get(key).map(|(_, i)| i.clone());
        let key = key.to_string();
        Box::pin(async move { found.ok_or(ObjectError::NotFound(key)) })
    }

    fn get_range(&self, key: &str, etag: &str, range: Range<u64>) -> BoxFuture<'_, Result<Bytes, ObjectError>> {
        let result = match self.objects.lock().unwrap().get(key) {
            None => Err(ObjectError::NotFound(key.to_string())),
            Some((_, info)) if info.etag != etag => Err(ObjectError::PreconditionFailed(key.into())),
            Some((body, _)) => {
                let end = range.end.min(body.len() as u64);
                let start = range.start.min(end);
                let mut slice = body.slice(start as usize..end as usize);
                if let Some(f) = self.corrupt.lock().unwrap().as_ref() {
                    let mut v = slice.to_vec();
                    f(key, &mut v);
                    slice = Bytes::from(v);
                }
                check_body_len(&range, &slice).map(|_| slice)
            }
        };
        Box::pin(async move { result })
    }

    fn object_checksum(&self, key: &str, etag: &str) -> BoxFuture<'_, Result<ObjectChecksum, ObjectError>> {
        let result = match self.objects.lock().unwrap().get(key) {
            None => Err(ObjectError::NotFound(key.to_string())),
            Some((_, info)) if info.etag != etag => Err(ObjectError::PreconditionFailed(key.into())),
            Some((_, info)) => {
                Ok(self.checksums.lock().unwrap().get(key).cloned().unwrap_or_else(|| ObjectChecksum::from_md5_etag(&info.etag, false)))
            }
        };
        Box::pin(async move { result })
    }

    fn get_whole(&self, key: &str, etag: &str) -> BoxFuture<'_, Result<(Bytes, ObjectChecksum), ObjectError>> {
        let size = self.objects.lock().unwrap().get(key).map(|(b, _)| b.len() as u64).unwrap_or(0);
        let body = self.get_range(key, etag, 0..size);
        let checksum = self.object_checksum(key, etag);
        Box::pin(async move { Ok((body.await?, checksum.await?)) })
    }

    fn list(&self, prefix: &str, token: Option<String>, max_keys: Option<i32>) -> BoxFuture<'_, Result<ListPage, ObjectError>> {
        let max = max_keys.unwrap_or(1000).max(1) as usize;
        let objects = self.objects.lock().unwrap();
        let mut page = ListPage::default();
        let mut count = 0;
        let mut last = String::new();
        let start = token.unwrap_or_default();
        for (key, (_, info)) in objects.range(prefix.to_string()..) {
            if !key.starts_with(prefix) {
                break;
            }
            let rest = &key[prefix.len()..];
            let (entry, is_prefix) = match rest.find('/') {
                Some(i) => (format!("{prefix}{}", &rest[..=i]), true),
                None => (key.clone(), false),
            };
            if (!start.is_empty() && entry <= start) || entry == last {
                continue;
            }
            if count == max {
                page.next_token = Some(last);
                break;
            }
            if is_prefix {
                page.prefixes.push(entry.clone());
            } else {
                let mut info = info.clone();
                if self.lists_without_etags.load(std::sync::atomic::Ordering::Relaxed) {
                    info.etag.clear();
                }
                page.objects.push(info);
            }
            count += 1;
            last = entry;
        }
        Box::pin(async move { Ok(page) })
    }

    fn bucket(&self) -> &str {
        &self.bucket
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn list_groups_prefixes_and_pages() {
        let c = MemoryClient::new("b");
        for k in ["a/1", "a/2", "b", "c/d/e", "c/f"] {
            c.put(k, vec![1u8]);
        }
        let p = c.list("", None, None).await.unwrap();
        assert_eq!(p.prefixes, vec!["a/", "c/"]);
        assert_eq!(p.objects.len(), 1);
        let p1 = c.list("", None, Some(2)).await.unwrap();
        assert_eq!(p1.prefixes, vec!["a/"]);
        let p2 = c.list("", p1.next_token, Some(2)).await.unwrap();
        assert_eq!(p2.prefixes, vec!["c/"]);
        assert!(p2.next_token.is_none());
    }

    #[tokio::test]
    async fn get_range_checks_etag() {
        let c = MemoryClient::new("b");
        let info = c.put("k", vec![7u8; 10]);
        assert_eq!(c.get_range("k", &info.etag, 2..5).await.unwrap().len(), 3);
        assert!(matches!(c.get_range("k", "\"x\"", 0..1).await, Err(ObjectError::PreconditionFailed(_))));
    }
}
