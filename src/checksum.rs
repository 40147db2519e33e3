//! Hashes and checksums: blake3 for integrity at rest, and the names of S3's additional
//! checksum algorithms as they are recorded in the index.

/// blake3 of one cache block: the at-rest integrity check. A block whose bytes no longer hash to
/// this value is treated as missing and fetched again; it is never served.
pub fn block_hash(data: &[u8]) -> [u8; 32] {
    *blake3::hash(data).as_bytes()
}

/// S3 checksum algorithm that protects an object, as stored in the index (one byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
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
