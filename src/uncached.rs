//! Reads of an object the cache cannot hold an entry for (out of descriptors, no space for its
//! index, a cache dir that cannot be written): the path of last resort, held to the same policy.
//!
//! In `--verify strict` a byte is served only after its verification unit (a part of a
//! composite checksum, otherwise the whole object) matched S3's checksum. Without a cache entry
//! the unit is fetched whole into memory, checked, and kept for the handle's next read (one unit
//! per handle at most). A unit larger than [`MAX_UNIT_IN_MEMORY`] is refused with EIO naming the
//! reason rather than served unchecked. `--require-checksum` refuses objects S3 offers nothing
//! for, as on the cached path. `--verify best-effort` serves the range as S3 sent it: that mode
//! promises verification only once bytes are cached.

use std::ops::Range;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::OnceCell;

use crate::checksum::{Algorithm, ObjectChecksum, UnitHasher};
use crate::fetch::Fetcher;
use crate::metrics::Metrics;
use crate::object::ObjectInfo;
use crate::verify::{VerifyError, VerifyMode, VerifyPolicy};

/// Largest verification unit checked in memory for one handle. Default: 64 MiB (a multipart
/// part is at most this in most uploaders' defaults; a whole-object checksum of a larger object
/// cannot be checked without storing it).
pub const MAX_UNIT_IN_MEMORY: u64 = 64 << 20;

/// What an uncached handle remembers between reads.
#[derive(Default)]
pub struct UncachedReads {
    checksum: OnceCell<ObjectChecksum>,
    /// The last unit verified: its byte range in the object and its bytes.
    last: Mutex<Option<(Range<u64>, Bytes)>>,
}

impl UncachedReads {
    /// Bytes `range` of `info`, checked as `policy` requires. `why` says why the object is not
    /// cached, for the error message.
    pub async fn read(
        &self,
        fetcher: &Fetcher,
        metrics: &Metrics,
        policy: VerifyPolicy,
        info: &ObjectInfo,
        range: Range<u64>,
        why: &str,
    ) -> Result<Bytes, VerifyError> {
        let checksum = self.checksum.get_or_try_init(|| fetcher.object_checksum(&info.key, &info.etag)).await?;
        if checksum.algorithm == Algorithm::None && policy.require_checksum {
            return Err(VerifyError::Unverifiable(format!(
                "s3://{}/{} has no checksum to verify against and --require-checksum is set",
                fetcher.bucket(),
                info.key
            )));
        }
        if policy.mode == VerifyMode::BestEffort || checksum.algorithm == Algorithm::None {
            return Ok(fetcher.fetch_uncached(&info.key, &info.etag, range).await?);
        }
        let units = checksum.units(info.size);
        let mut out = Vec::new();
        for (u, unit) in units.iter().enumerate().filter(|(_, unit)| unit.start < range.end && range.start < unit.end) {
            let bytes = self.unit(fetcher, metrics, info, checksum, u, unit.clone(), why).await?;
            let lo = (range.start.max(unit.start) - unit.start) as usize;
            let hi = (range.end.min(unit.end) - unit.start) as usize;
            out.push(bytes.slice(lo..hi));
        }
        Ok(match out.len() {
            1 => out.pop().expect("one piece"),
            _ => out.concat().into(),
        })
    }

    /// Unit `u` of the object, verified: from the handle's memory, else fetched whole and checked
    /// (a mismatch is fetched once more; a second one is an error).
    #[allow(clippy::too_many_arguments)]
    async fn unit(
        &self,
        fetcher: &Fetcher,
        metrics: &Metrics,
        info: &ObjectInfo,
        checksum: &ObjectChecksum,
        u: usize,
        unit: Range<u64>,
        why: &str,
    ) -> Result<Bytes, VerifyError> {
        if let Some((r, bytes)) = self.last.lock().unwrap().as_ref() {
            if *r == unit {
                return Ok(bytes.clone());
            }
        }
        let what =
            || format!("s3://{}/{} (ETag {}) bytes {}-{}", fetcher.bucket(), info.key, info.etag, unit.start, unit.end.saturating_sub(1));
        if unit.end - unit.start > MAX_UNIT_IN_MEMORY {
            return Err(VerifyError::Unverifiable(format!(
                "{} cannot be cached ({why}) and its checksum unit is larger than the {} MiB hoardfs verifies in memory; \
                 free cache space or raise `ulimit -n`, or mount with --verify best-effort",
                what(),
                MAX_UNIT_IN_MEMORY >> 20
            )));
        }
        let expected = checksum.expected(u);
        for attempt in 1..=2 {
            let bytes = fetcher.fetch_uncached(&info.key, &info.etag, unit.clone()).await?;
            let mut hasher = UnitHasher::new(checksum.algorithm);
            hasher.update(&bytes);
            if Some(hasher.finish()) == expected {
                *self.last.lock().unwrap() = Some((unit, bytes.clone()));
                return Ok(bytes);
            }
            Metrics::add(&metrics.verify_failures, 1);
            tracing::warn!("{} do not match S3's {:?} checksum (uncached read, attempt {attempt} of 2)", what(), checksum.algorithm);
        }
        Err(VerifyError::Mismatch(format!("{} failed verification against S3's {:?} checksum twice", what(), checksum.algorithm)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use crate::checksum::Algorithm;
    use crate::io::EngineChoice;
    use crate::object::memory::MemoryClient;
    use crate::testing::{pattern, read_all, rig_with, small_blocks, FdsExhausted};
    use crate::verify::{VerifyMode, VerifyPolicy};

    /// With no descriptor to create a cache entry, strict mode still serves only bytes that
    /// matched S3's checksum: one corrupt GET is refetched, corrupt GETs every time end in EIO,
    /// and --require-checksum refuses an object with nothing to check.
    #[tokio::test]
    async fn reads_without_a_cache_entry_are_verified_in_memory() {
        let mem = Arc::new(MemoryClient::new("b"));
        let body = pattern(4096 * 5 + 11, 7);
        mem.put_with_checksum("crc", body.clone(), Algorithm::Crc32c, None);
        mem.put_with_checksum("parts", body.clone(), Algorithm::Sha256, Some(8192));
        let plain = mem.put("plain", body.clone());
        mem.set_etag("plain", &format!("\"{}-2\"", plain.etag.trim_matches('"')));
        let bad = Arc::new(AtomicU32::new(0));
        let b2 = bad.clone();
        mem.corrupt_gets(move |_, v| {
            if b2.load(Ordering::SeqCst) > 0 && v.len() > 100 {
                b2.fetch_sub(1, Ordering::SeqCst);
                v[100] ^= 0x40;
            }
        });
        let dirs = [(); 3].map(|_| tempfile::tempdir().unwrap());
        let r = rig_with(dirs[0].path(), mem.clone(), EngineChoice::Psync, small_blocks(), VerifyPolicy::default());
        let policy = VerifyPolicy { require_checksum: true, ..VerifyPolicy::default() };
        let strict = rig_with(dirs[1].path(), mem.clone(), EngineChoice::Psync, small_blocks(), policy);
        let best = VerifyPolicy { mode: VerifyMode::BestEffort, ..VerifyPolicy::default() };
        let best = rig_with(dirs[2].path(), mem.clone(), EngineChoice::Psync, small_blocks(), best);
        let _starved = FdsExhausted::now();
        for name in ["crc", "parts"] {
            bad.store(1, Ordering::SeqCst);
            assert_eq!(read_all(&r.fs, name).await.unwrap(), body, "{name}: one corrupt GET");
        }
        assert_eq!(r.metrics.verify_failures.load(Ordering::Relaxed), 2);
        assert_eq!(r.cache.entry_count(), 0, "nothing could be cached");
        bad.store(u32::MAX, Ordering::SeqCst);
        let err = read_all(&r.fs, "crc").await.expect_err("corrupt every time");
        assert_eq!(err.errno, libc::EIO);
        assert!(err.message.contains("failed verification"), "{}", err.message);
        bad.store(0, Ordering::SeqCst);
        assert_eq!(read_all(&r.fs, "plain").await.unwrap(), body, "no checksum, not required: served");
        assert_eq!(read_all(&strict.fs, "plain").await.unwrap_err().errno, libc::EIO, "--require-checksum");
        // Best-effort promises a check only once bytes are cached: served as S3 sent them.
        assert_eq!(read_all(&best.fs, "crc").await.unwrap(), body);
    }
}
