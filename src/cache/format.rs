//! An index (a catalog slot's contents; format 1's index file), byte by byte: encoding,
//! decoding and the layout arithmetic.
//!
//! `cache-format/README.md` is the prose specification of what is here; the golden-bytes test
//! below fails whenever the encoding changes, which is the signal to bump [`INDEX_VERSION`].
//! All integers are little-endian.

use crate::checksum::{Algorithm, ChecksumType, ObjectChecksum, Part};

/// First eight bytes of every index.
pub const INDEX_MAGIC: [u8; 8] = *b"HOARDIDX";
/// Version of the index encoding (the cache directory's is `store::DIR_VERSION`): format 2 moved
/// indexes into the catalog without changing a byte of them.
pub const INDEX_VERSION: u32 = 1;
/// Bytes of fixed fields before the variable-length strings.
pub const FIXED_HEADER_LEN: usize = 72;
/// Bytes of the mutable state section.
pub const STATE_LEN: usize = 16;
/// Bytes per block record: blake3 (32) + CRC (8).
pub const RECORD_LEN: usize = 40;
/// Smallest and largest block sizes accepted (4 KiB .. 64 MiB), so a corrupt header cannot ask
/// for absurd allocations.
pub const BLOCK_SIZE_RANGE: std::ops::RangeInclusive<u32> = 4096..=(64 << 20);

/// Why an index could not be decoded. Every variant names the file's problem, never a panic.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    /// Not a hoardfs index at all.
    #[error("not a hoardfs index (bad magic)")]
    BadMagic,
    /// Written by a newer hoardfs.
    #[error("index format version {found} is newer than this hoardfs understands ({INDEX_VERSION}); upgrade hoardfs")]
    NewerVersion {
        /// Version in the file.
        found: u32,
    },
    /// Torn, truncated or altered.
    #[error("corrupt index: {0}")]
    Corrupt(&'static str),
}

/// Verification of an object against S3's own checksum; stored in the state section.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyState {
    /// Not (yet) checked against S3's checksum.
    Pending = 0,
    /// All bytes matched S3's checksum.
    Verified = 1,
    /// S3 offers nothing to check against.
    Unverifiable = 2,
    /// The bytes did not match; the object's blocks were dropped.
    Failed = 3,
}

impl VerifyState {
    /// Decodes the state byte; unknown values read as `Pending` (re-verify rather than trust).
    pub fn from_code(code: u8) -> Self {
        match code {
            1 => Self::Verified,
            2 => Self::Unverifiable,
            3 => Self::Failed,
            _ => Self::Pending,
        }
    }
}

/// The immutable part of an index: which object version this is and how it is cut into blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexHeader {
    /// Block size in bytes, fixed for the life of the entry.
    pub block_size: u32,
    /// Object size in bytes.
    pub object_size: u64,
    /// Object Last-Modified, milliseconds since the Unix epoch.
    pub mtime_ms: i64,
    /// What S3 offers to verify this object version against (algorithm, type, value, parts).
    pub checksum: ObjectChecksum,
    /// Bucket name.
    pub bucket: String,
    /// Full object key.
    pub key: String,
    /// ETag as S3 sent it, quotes included.
    pub etag: String,
}

/// Byte offsets of each section, derived from the header length and block count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Where the state section starts.
    pub state_off: usize,
    /// Where the presence bitmap starts.
    pub bitmap_off: usize,
    /// Bitmap length in bytes (padded to 8).
    pub bitmap_len: usize,
    /// Where the block records start.
    pub records_off: usize,
    /// Exact file length.
    pub file_len: usize,
}

fn align8(n: usize) -> usize {
    (n + 7) & !7
}

impl Layout {
    /// Sections follow the header, each starting on an 8-byte boundary.
    pub fn new(header_len: usize, block_count: u64) -> Self {
        let state_off = align8(header_len);
        let bitmap_off = state_off + STATE_LEN;
        let bitmap_len = align8(block_count.div_ceil(8) as usize);
        let records_off = bitmap_off + bitmap_len;
        Self { state_off, bitmap_off, bitmap_len, records_off, file_len: records_off + RECORD_LEN * block_count as usize }
    }
}

impl IndexHeader {
    /// The object version this header describes, as a listing would.
    pub fn object_info(&self) -> crate::object::ObjectInfo {
        crate::object::ObjectInfo {
            key: self.key.clone(),
            size: self.object_size,
            etag: self.etag.clone(),
            last_modified: std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(self.mtime_ms.max(0) as u64),
        }
    }

    /// Whether this is the index of `info` in `bucket`: same bucket, key, ETag and size.
    pub fn describes(&self, bucket: &str, info: &crate::object::ObjectInfo) -> bool {
        self.bucket == bucket && self.key == info.key && self.etag == info.etag && self.object_size == info.size
    }

    /// Number of blocks; the last one may be short. A zero-byte object has no blocks.
    pub fn block_count(&self) -> u64 {
        self.object_size.div_ceil(self.block_size as u64)
    }

    /// Length in bytes of block `block` (the last one is short).
    pub fn block_len(&self, block: u64) -> usize {
        let start = block * self.block_size as u64;
        (self.object_size - start).min(self.block_size as u64) as usize
    }

    /// Serialises the header, ending with the blake3 of everything before it.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED_HEADER_LEN + 256);
        out.extend_from_slice(&INDEX_MAGIC);
        out.extend_from_slice(&INDEX_VERSION.to_le_bytes());
        out.extend_from_slice(&(self.encoded_len() as u32).to_le_bytes());
        out.extend_from_slice(&self.block_size.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes()); // flags, reserved
        out.extend_from_slice(&self.object_size.to_le_bytes());
        out.extend_from_slice(&self.block_count().to_le_bytes());
        out.extend_from_slice(&self.mtime_ms.to_le_bytes());
        let c = &self.checksum;
        out.push(c.algorithm as u8);
        out.push(c.kind as u8);
        out.extend_from_slice(&[0u8; 2]); // reserved
        out.extend_from_slice(&(c.parts.len() as u32).to_le_bytes());
        for s in [&self.bucket, &self.key, &self.etag, &c.value] {
            out.extend_from_slice(&(s.len() as u16).to_le_bytes());
        }
        out.extend_from_slice(&[0u8; 8]); // reserved, pads the fixed part to 72
        debug_assert_eq!(out.len(), FIXED_HEADER_LEN);
        for s in [&self.bucket, &self.key, &self.etag, &c.value] {
            out.extend_from_slice(s.as_bytes());
        }
        for p in &c.parts {
            out.extend_from_slice(&p.size.to_le_bytes());
        }
        for p in &c.parts {
            out.push(p.checksum.len() as u8);
            out.extend_from_slice(p.checksum.as_bytes());
        }
        let hash = blake3::hash(&out);
        out.extend_from_slice(hash.as_bytes());
        debug_assert_eq!(out.len(), self.encoded_len());
        out
    }

    /// Length of [`IndexHeader::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        FIXED_HEADER_LEN
            + self.bucket.len()
            + self.key.len()
            + self.etag.len()
            + self.checksum.value.len()
            + self.checksum.parts.iter().map(|p| 9 + p.checksum.len()).sum::<usize>()
            + 32
    }

    /// Parses and checks a header from the start of an index file. Returns the header and its
    /// encoded length. Never panics, whatever the bytes.
    pub fn decode(bytes: &[u8]) -> Result<(Self, usize), FormatError> {
        let mut r = Reader { bytes, pos: 0 };
        if r.take(8)? != INDEX_MAGIC {
            return Err(FormatError::BadMagic);
        }
        let version = r.u32()?;
        if version > INDEX_VERSION {
            return Err(FormatError::NewerVersion { found: version });
        }
        if version != INDEX_VERSION {
            return Err(FormatError::Corrupt("unknown older format version"));
        }
        let header_len = r.u32()? as usize;
        let block_size = r.u32()?;
        let _flags = r.u32()?;
        let object_size = r.u64()?;
        let block_count = r.u64()?;
        let mtime_ms = r.u64()? as i64;
        let checksum_algorithm = Algorithm::from_code(r.u8()?).ok_or(FormatError::Corrupt("unknown checksum algorithm"))?;
        let checksum_type = ChecksumType::from_code(r.u8()?).ok_or(FormatError::Corrupt("unknown checksum type"))?;
        r.take(2)?;
        let part_count = r.u32()? as usize;
        let lens = [r.u16()?, r.u16()?, r.u16()?, r.u16()?];
        r.take(8)?;
        if header_len > bytes.len() || header_len < FIXED_HEADER_LEN + 32 {
            return Err(FormatError::Corrupt("header length out of range"));
        }
        let expected = blake3::hash(&bytes[..header_len - 32]);
        if expected.as_bytes() != &bytes[header_len - 32..header_len] {
            return Err(FormatError::Corrupt("header checksum mismatch"));
        }
        if !BLOCK_SIZE_RANGE.contains(&block_size) {
            return Err(FormatError::Corrupt("block size out of range"));
        }
        if object_size.div_ceil(block_size as u64) != block_count {
            return Err(FormatError::Corrupt("block count does not match object size"));
        }
        let mut strings = lens.iter().map(|&n| {
            let raw = r.take(n as usize)?;
            String::from_utf8(raw.to_vec()).map_err(|_| FormatError::Corrupt("string is not UTF-8"))
        });
        let (bucket, key, etag, checksum_value) =
            (strings.next().unwrap()?, strings.next().unwrap()?, strings.next().unwrap()?, strings.next().unwrap()?);
        drop(strings);
        let mut sizes = Vec::with_capacity(part_count.min(10_000));
        for _ in 0..part_count {
            sizes.push(r.u64()?);
        }
        let mut parts = Vec::with_capacity(sizes.len());
        for size in sizes {
            let n = r.u8()? as usize;
            let checksum = String::from_utf8(r.take(n)?.to_vec()).map_err(|_| FormatError::Corrupt("string is not UTF-8"))?;
            parts.push(Part { size, checksum });
        }
        if r.pos + 32 != header_len {
            return Err(FormatError::Corrupt("header length does not match its fields"));
        }
        let header = Self {
            block_size,
            object_size,
            mtime_ms,
            checksum: ObjectChecksum { algorithm: checksum_algorithm, kind: checksum_type, value: checksum_value, parts },
            bucket,
            key,
            etag,
        };
        Ok((header, header_len))
    }
}

/// A bounds-checked little-endian cursor: every read of untrusted bytes goes through here.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let end = self.pos.checked_add(n).ok_or(FormatError::Corrupt("length overflow"))?;
        let out = self.bytes.get(self.pos..end).ok_or(FormatError::Corrupt("truncated"))?;
        self.pos = end;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, FormatError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The header the committed test vector was made from.
    pub(crate) fn vector_header() -> IndexHeader {
        IndexHeader {
            block_size: 1 << 20,
            object_size: (2 << 20) + 1,
            mtime_ms: 1_700_000_000_123,
            checksum: ObjectChecksum {
                algorithm: Algorithm::Crc32c,
                kind: ChecksumType::FullObject,
                value: "yZRlqg==".into(),
                parts: vec![],
            },
            bucket: "bucket".into(),
            key: "dir/file.bin".into(),
            etag: "\"5d41402abc4b2a76b9719d911017c592\"".into(),
        }
    }

    #[test]
    fn roundtrip() {
        let mut h = vector_header();
        h.checksum.kind = ChecksumType::Composite;
        h.checksum.parts = vec![Part { size: 5 << 20, checksum: "AAAAAA==".into() }, Part { size: 3, checksum: "yZRlqg==".into() }];
        let bytes = h.encode();
        assert_eq!(IndexHeader::decode(&bytes).unwrap(), (h.clone(), bytes.len()));
    }

    #[test]
    fn golden_header_bytes() {
        // If this fails, the encoding changed: bump INDEX_VERSION and write new vectors.
        let expected = include_bytes!("../../cache-format/vectors/header-v1.bin");
        assert_eq!(vector_header().encode(), expected.as_slice());
    }

    #[test]
    fn rejects_damage() {
        let bytes = vector_header().encode();
        for i in [0usize, 9, 20, 40, 80, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert!(IndexHeader::decode(&bad).is_err(), "flip at {i} accepted");
        }
        for n in 0..bytes.len() {
            assert!(IndexHeader::decode(&bytes[..n]).is_err());
        }
    }

    #[test]
    fn newer_version_named() {
        let mut bytes = vector_header().encode();
        bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(IndexHeader::decode(&bytes), Err(FormatError::NewerVersion { found: 2 }));
    }

    #[test]
    fn layout_is_aligned() {
        let l = Layout::new(137, 17);
        assert_eq!(l.state_off, 144);
        assert_eq!(l.bitmap_off, 160);
        assert_eq!(l.bitmap_len, 8);
        assert_eq!(l.records_off, 168);
        assert_eq!(l.file_len, 168 + 17 * 40);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// Whatever the bytes, decoding returns Ok or Err and never panics.
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let _ = IndexHeader::decode(&bytes);
        }

        /// Mutating a valid header at any byte is detected.
        #[test]
        fn any_single_byte_change_detected(pos in 0usize..150, val in 1u8..=255) {
            let mut bytes = vector_header().encode();
            let pos = pos % bytes.len();
            bytes[pos] ^= val;
            proptest::prop_assert!(IndexHeader::decode(&bytes).is_err());
        }
    }
}
