//! hoardfs: a read-only FUSE mount of S3 with a persistent, verified block cache on local disk,
//! built for training jobs that read the same dataset every epoch.
//!
//! Layers, top to bottom: [`cli`] → [`mount`] → [`fuse`] (adapter) → [`fs`] (logic) →
//! [`meta`] (inodes, listings) and [`cache`] (blocks on disk, via [`io`]) ← [`fetch`] (misses,
//! via [`object`]). [`passthrough`] keeps the kernel's backing files for [`fuse`]; [`uncached`]
//! serves, verified in memory, what the cache cannot hold; [`verify`] checks units against S3.
//! [`hints`] feeds the fetcher a training job's read order, [`prefetch`] a sequential reader's
//! next blocks. [`limits`] sizes the pools of open
//! files, [`private`] keeps the cache dir the user's own. [`metrics`] counts what crosses each
//! seam.

#![warn(missing_docs)]

pub mod cache;
pub mod checksum;
pub mod cli;
pub mod fetch;
pub mod fs;
pub mod fuse;
pub mod hints;
pub mod inspect;
pub mod io;
pub mod limits;
pub mod listing;
pub mod meta;
pub mod metrics;
pub mod mount;
pub mod object;
pub mod passthrough;
pub mod prefetch;
pub mod private;
pub mod progress;
pub mod shared;
#[cfg(test)]
pub(crate) mod testing;
pub mod uncached;
pub mod units;
pub mod verify;
pub mod warm;
