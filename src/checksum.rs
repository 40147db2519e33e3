//! Hashes and checksums: blake3 for integrity at rest, and S3's additional checksums (CRC32,
//! CRC32C, CRC64NVME, SHA1, SHA256, and the MD5 ETag of single-part objects) for proving that
//! cached bytes are the bytes S3 stores.
//!
//! CRCs of blocks are computed once, when a block arrives, and combined (O(log n) per block with
//! `crc-fast`) into part or object CRCs, so blocks fetched in any order verify without reading
//! the data again. SHA and MD5 cannot be combined; they are computed by streaming the finished
//! part or object from the cache file.

use base64::Engine as _;
use crc_fast::CrcAlgorithm;
use sha1::Digest as _;

/// blake3 of one cache block: the at-rest integrity check. A block whose bytes no longer hash to
/// this value is treated as missing and fetched again; it is never served.
pub fn block_hash(data: &[u8]) -> [u8; 32] {
    *blake3::hash(data).as_bytes()
}

/// S3 checksum algorithm that protects an object, as stored in the index (one byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// No additional checksum is known.
    None = 0,
    /// CRC32 (ISO-HDLC).
    Crc32 = 1,
    /// CRC32C (Castagnoli).
    Crc32c = 2,
    /// CRC64NVME.
    Crc64nvme = 3,
    /// SHA-1.
    Sha1 = 4,
    /// SHA-256.
    Sha256 = 5,
    /// MD5 of the content, taken from a single-part object's ETag.
    Md5Etag = 6,
}

impl Algorithm {
    /// Decodes the index byte; `None` for codes this build does not know.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Self::None,
            1 => Self::Crc32,
            2 => Self::Crc32c,
            3 => Self::Crc64nvme,
            4 => Self::Sha1,
            5 => Self::Sha256,
            6 => Self::Md5Etag,
            _ => return None,
        })
    }

    /// The CRC this algorithm is, if it is one (CRCs combine; hashes do not).
    pub fn crc(self) -> Option<CrcAlgorithm> {
        match self {
            Self::Crc32 => Some(CrcAlgorithm::Crc32IsoHdlc),
            Self::Crc32c => Some(CrcAlgorithm::Crc32Iscsi),
            Self::Crc64nvme => Some(CrcAlgorithm::Crc64Nvme),
            _ => None,
        }
    }

    /// Bytes of the raw checksum S3 base64-encodes.
    fn width(self) -> usize {
        match self {
            Self::Crc32 | Self::Crc32c => 4,
            Self::Crc64nvme => 8,
            Self::Sha1 => 20,
            Self::Sha256 => 32,
            Self::Md5Etag => 16,
            Self::None => 0,
        }
    }
}

/// Whether the S3 checksum covers the whole object or is a checksum of part checksums.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChecksumType {
    /// No checksum.
    None = 0,
    /// A checksum of the whole object's bytes.
    FullObject = 1,
    /// `checksum(part checksums)-N` of a multipart upload.
    Composite = 2,
}

impl ChecksumType {
    /// Decodes the index byte; `None` for codes this build does not know.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Self::None,
            1 => Self::FullObject,
            2 => Self::Composite,
            _ => return None,
        })
    }
}

/// One part of a multipart object and S3's checksum of its bytes (base64).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    /// Part size in bytes.
    pub size: u64,
    /// S3's checksum of the part, base64 as S3 sends it.
    pub checksum: String,
}

/// Everything S3 offers to verify an object version against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectChecksum {
    /// Algorithm (`None` when S3 offers nothing we can check).
    pub algorithm: Algorithm,
    /// Full-object or composite.
    pub kind: ChecksumType,
    /// The value as S3 sends it: base64, with `-N` for composite; hex for `Md5Etag`.
    pub value: String,
    /// Parts with their checksums, for composite checksums.
    pub parts: Vec<Part>,
}

impl ObjectChecksum {
    /// Nothing to verify against.
    pub fn none() -> Self {
        Self { algorithm: Algorithm::None, kind: ChecksumType::None, value: String::new(), parts: vec![] }
    }

    /// The MD5 ETag fallback: a plain 32-hex-digit ETag (no `-N` multipart suffix) is the MD5
    /// of the content unless the object is encrypted with SSE-KMS or SSE-C.
    pub fn from_md5_etag(etag: &str, encrypted_with_kms_or_c: bool) -> Self {
        let hex = etag.trim_matches('"');
        if !encrypted_with_kms_or_c && hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            Self { algorithm: Algorithm::Md5Etag, kind: ChecksumType::FullObject, value: hex.to_ascii_lowercase(), parts: vec![] }
        } else {
            Self::none()
        }
    }

    /// Whether every value has the width its algorithm produces (a 4-byte "CRC64NVME" is a
    /// server bug, not something to verify against).
    pub fn well_formed(&self) -> bool {
        let units = self.units(u64::MAX).len();
        (0..units).all(|u| self.expected(u).is_some_and(|v| v.len() == self.algorithm.width()))
    }

    /// Byte ranges that are verified as units: the parts of a composite checksum, otherwise the
    /// whole object.
    pub fn units(&self, object_size: u64) -> Vec<std::ops::Range<u64>> {
        if self.kind == ChecksumType::Composite && !self.parts.is_empty() {
            let mut start = 0;
            self.parts
                .iter()
                .map(|p| {
                    let r = start..start + p.size;
                    start += p.size;
                    r
                })
                .collect()
        } else {
            std::iter::once(0..object_size).collect() // one unit: the whole object
        }
    }

    /// The expected raw checksum of unit `i`.
    pub fn expected(&self, unit: usize) -> Option<Vec<u8>> {
        match (self.algorithm, self.kind) {
            (Algorithm::None, _) => None,
            (Algorithm::Md5Etag, _) => decode_hex(&self.value),
            (_, ChecksumType::Composite) => decode_b64(&self.parts.get(unit)?.checksum),
            _ => decode_b64(&self.value),
        }
    }

    /// For composite checksums: whether S3's `checksum(part checksums)-N` agrees with the part
    /// checksums (S3's documented rule). `None` when it does not apply.
    pub fn composite_consistent(&self) -> Option<bool> {
        if self.kind != ChecksumType::Composite {
            return None;
        }
        let (b64, n) = self.value.rsplit_once('-')?;
        let mut concat = Vec::new();
        for p in &self.parts {
            concat.extend(decode_b64(&p.checksum)?);
        }
        let mut h = UnitHasher::new(self.algorithm);
        h.update(&concat);
        Some(n.parse::<usize>().ok() == Some(self.parts.len()) && Some(h.finish()) == decode_b64(b64))
    }
}

fn decode_b64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// S3's base64 encoding of a raw checksum.
pub fn to_base64(raw: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// CRC of one block in the object's CRC algorithm (0 when the algorithm is not a CRC); stored in
/// the block's index record so units verify by combination.
pub fn block_crc(algorithm: Algorithm, data: &[u8]) -> u64 {
    algorithm.crc().map(|a| crc_fast::checksum(a, data)).unwrap_or(0)
}

/// Combines the CRCs of consecutive pieces `(crc, len)` into the CRC of their concatenation,
/// as S3 would compute over the whole range. Order matters; arrival order does not.
pub fn combine_crcs(algorithm: Algorithm, pieces: impl IntoIterator<Item = (u64, u64)>) -> Option<Vec<u8>> {
    let crc = algorithm.crc()?;
    let mut acc: Option<u64> = None;
    for (c, len) in pieces {
        acc = Some(match acc {
            None => c,
            Some(a) => crc_fast::checksum_combine(crc, a, c, len),
        });
    }
    let value = acc.unwrap_or_else(|| crc_fast::checksum(crc, b""));
    Some(crc_bytes(algorithm, value))
}

fn crc_bytes(algorithm: Algorithm, value: u64) -> Vec<u8> {
    let be = value.to_be_bytes();
    be[8 - algorithm.width()..].to_vec()
}

/// Streaming hasher for one verification unit, in any of S3's algorithms.
pub enum UnitHasher {
    /// A CRC.
    Crc(Algorithm, crc_fast::Digest),
    /// SHA-1.
    Sha1(sha1::Sha1),
    /// SHA-256.
    Sha256(sha2::Sha256),
    /// MD5.
    Md5(md5::Md5),
    /// Nothing.
    None,
}

impl UnitHasher {
    /// A fresh hasher for `algorithm`.
    pub fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha1 => Self::Sha1(sha1::Sha1::new()),
            Algorithm::Sha256 => Self::Sha256(sha2::Sha256::new()),
            Algorithm::Md5Etag => Self::Md5(md5::Md5::new()),
            Algorithm::None => Self::None,
            crc => Self::Crc(crc, crc_fast::Digest::new(crc.crc().expect("CRC algorithm"))),
        }
    }

    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Self::Crc(_, d) => d.update(data),
            Self::Sha1(h) => h.update(data),
            Self::Sha256(h) => h.update(data),
            Self::Md5(h) => h.update(data),
            Self::None => {}
        }
    }

    /// The raw checksum (big-endian for CRCs, as S3 encodes them).
    pub fn finish(self) -> Vec<u8> {
        match self {
            Self::Crc(a, d) => crc_bytes(a, d.finalize()),
            Self::Sha1(h) => h.finalize().to_vec(),
            Self::Sha256(h) => h.finalize().to_vec(),
            Self::Md5(h) => h.finalize().to_vec(),
            Self::None => vec![],
        }
    }
}

/// Computes S3's checksum of `data` in `algorithm`, base64-encoded (hex for `Md5Etag`); used by
/// the in-memory client and tests to play S3's part.
pub fn s3_checksum(algorithm: Algorithm, data: &[u8]) -> String {
    let mut h = UnitHasher::new(algorithm);
    h.update(data);
    let raw = h.finish();
    if algorithm == Algorithm::Md5Etag {
        raw.iter().map(|b| format!("{b:02x}")).collect()
    } else {
        to_base64(&raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Published check values of each CRC over "123456789".
    #[test]
    fn crc_check_values() {
        assert_eq!(block_crc(Algorithm::Crc32, b"123456789"), 0xCBF4_3926);
        assert_eq!(block_crc(Algorithm::Crc32c, b"123456789"), 0xE306_9283);
        assert_eq!(block_crc(Algorithm::Crc64nvme, b"123456789"), 0xAE8B_1486_0A79_9888);
    }

    // S3's documented examples: the checksums of "Hello, World!"... we use values computed by
    // AWS's own CLI for the empty object, which S3 returns for zero-byte uploads.
    #[test]
    fn s3_values_of_empty_object() {
        assert_eq!(s3_checksum(Algorithm::Crc32, b""), "AAAAAA==");
        assert_eq!(s3_checksum(Algorithm::Crc32c, b""), "AAAAAA==");
        assert_eq!(s3_checksum(Algorithm::Crc64nvme, b""), "AAAAAAAAAAA=");
        assert_eq!(s3_checksum(Algorithm::Sha256, b""), "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");
        assert_eq!(s3_checksum(Algorithm::Sha1, b""), "2jmj7l5rSw0yVb/vlWAYkK/YBwk=");
    }

    #[test]
    fn combined_block_crcs_equal_the_whole_crc_in_any_arrival_order() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        for alg in [Algorithm::Crc32, Algorithm::Crc32c, Algorithm::Crc64nvme] {
            let blocks: Vec<&[u8]> = data.chunks(1024).collect();
            // Blocks "arrive" in reverse order; their CRCs land in per-block slots...
            let mut slots = vec![0u64; blocks.len()];
            for (i, b) in blocks.iter().enumerate().rev() {
                slots[i] = block_crc(alg, b);
            }
            // ...and are combined in object order.
            let combined = combine_crcs(alg, slots.iter().zip(&blocks).map(|(c, b)| (*c, b.len() as u64))).unwrap();
            let mut whole = UnitHasher::new(alg);
            whole.update(&data);
            assert_eq!(combined, whole.finish(), "{alg:?}");
        }
    }

    #[test]
    fn composite_rule_is_checksum_of_part_checksums() {
        let parts: Vec<Vec<u8>> = vec![vec![1u8; 5000], vec![2u8; 3000]];
        for alg in [Algorithm::Crc32, Algorithm::Crc32c, Algorithm::Sha1, Algorithm::Sha256] {
            let part_sums: Vec<String> = parts.iter().map(|p| s3_checksum(alg, p)).collect();
            let mut concat = Vec::new();
            for s in &part_sums {
                concat.extend(decode_b64(s).unwrap());
            }
            let value = format!("{}-2", s3_checksum(alg, &concat));
            let mut c = ObjectChecksum {
                algorithm: alg,
                kind: ChecksumType::Composite,
                value,
                parts: parts.iter().zip(&part_sums).map(|(p, s)| Part { size: p.len() as u64, checksum: s.clone() }).collect(),
            };
            assert_eq!(c.composite_consistent(), Some(true));
            assert_eq!(c.units(8000), vec![0..5000, 5000..8000]);
            c.parts[0].checksum = s3_checksum(alg, b"other");
            assert_eq!(c.composite_consistent(), Some(false));
        }
    }

    #[test]
    fn md5_etag_only_for_plain_unencrypted_etags() {
        assert_eq!(ObjectChecksum::from_md5_etag("\"5d41402abc4b2a76b9719d911017c592\"", false).algorithm, Algorithm::Md5Etag);
        assert_eq!(ObjectChecksum::from_md5_etag("\"5d41402abc4b2a76b9719d911017c592-3\"", false).algorithm, Algorithm::None);
        assert_eq!(ObjectChecksum::from_md5_etag("\"5d41402abc4b2a76b9719d911017c592\"", true).algorithm, Algorithm::None);
    }

    #[test]
    fn malformed_values_are_recognised() {
        let full =
            |algorithm, value: &str| ObjectChecksum { algorithm, kind: ChecksumType::FullObject, value: value.into(), parts: vec![] };
        assert!(full(Algorithm::Crc64nvme, "SFqI1gSpgjY=").well_formed());
        assert!(!full(Algorithm::Crc64nvme, "819CAw==").well_formed(), "4 bytes cannot be a CRC64");
        assert!(!full(Algorithm::Sha256, "not base64!").well_formed());
    }
}
