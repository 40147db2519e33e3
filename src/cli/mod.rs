//! The command line: flags, help text, and turning errors into messages and exit codes.
//! `anyhow` lives only here; the library's errors are typed.

mod cache;
mod helper;
mod mount;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

pub use cache::CacheArgs;
pub use helper::rewrite as rewrite_mount_helper_args;
pub use mount::MountArgs;

use crate::object::s3::S3Config;

/// `hoardfs --version`: the release and the cache format it reads and writes, which is what
/// decides whether two builds can share a cache dir.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (cache format ", "2", ")");

/// hoardfs: mount an S3 bucket read-only, with a persistent, verified block cache on local disk.
///
/// Epoch 1 of a training job streams from S3; later epochs, and later mounts of the same cache
/// directory, read from local disk. Every cached block is checked with blake3 before use.
#[derive(Parser, Debug)]
#[command(name = "hoardfs", version = VERSION, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Commands,
    /// Log lines as text, or as one JSON object per line for log shippers (each carries the
    /// spans it happened in: FUSE operation, fetch, verification unit, with key and byte range).
    /// Verbosity follows RUST_LOG, per module: for example `hoardfs=info,hoardfs::fetch=debug`.
    #[arg(long, value_enum, global = true, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Commands {
    /// Mount s3://BUCKET[/PREFIX] at MOUNTPOINT (read-only).
    Mount(MountArgs),
    /// Inspect and manage a cache directory: stat, ls, verify, evict, warm.
    Cache(CacheArgs),
}

/// How to reach S3; shared by `mount` and `cache warm`.
#[derive(Args, Debug, Clone)]
pub struct S3Args {
    /// S3-compatible endpoint, for example http://127.0.0.1:9000. Default: AWS.
    #[arg(long, value_name = "URL", env = "AWS_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,
    /// AWS region. Default: from AWS_REGION or the profile (us-east-1 with --endpoint-url).
    #[arg(long)]
    pub region: Option<String>,
    /// Address buckets as http://host/bucket/key (most local S3 servers need this).
    #[arg(long)]
    pub force_path_style: bool,
    /// Send GETs through the AWS SDK's request pipeline. By default hoardfs sends them itself
    /// (same endpoint, credentials, signing and retry rule, a third of the CPU per request);
    /// this is for comparison, or for a server that accepts the SDK's requests and not these.
    #[arg(long)]
    pub sdk_gets: bool,
}

impl S3Args {
    /// The client configuration for `bucket`.
    pub fn config(&self, bucket: String) -> S3Config {
        S3Config {
            bucket,
            endpoint_url: self.endpoint_url.clone(),
            region: self.region.clone(),
            force_path_style: self.force_path_style,
            sdk_gets: self.sdk_gets,
        }
    }
}

/// The shared cache tier; shared by `mount` and `cache warm`.
#[derive(Args, Debug, Clone)]
pub struct SharedArgs {
    /// A bucket that holds verified blocks for every node (in production an S3 Express One Zone
    /// directory bucket in the nodes' zone), reached with the origin's endpoint and credentials.
    /// Reads go local cache, then this, then the origin. Its blocks are checked like the
    /// origin's and never trusted (strict mode only); it being slow, down or denied never fails
    /// a read. Verified blocks are written to it in the background. Expire them with a lifecycle
    /// rule on the bucket (see README).
    #[arg(long, value_name = "s3://BUCKET[/PREFIX]")]
    pub shared_cache: Option<String>,
    /// Read from --shared-cache but never write to it (short-lived jobs).
    #[arg(long, requires = "shared_cache")]
    pub shared_cache_read_only: bool,
}

impl SharedArgs {
    /// The tier's configuration, if one was given.
    pub fn config(&self) -> Result<Option<crate::shared::SharedConfig>> {
        let Some(uri) = &self.shared_cache else { return Ok(None) };
        let (bucket, prefix) = parse_s3_uri(uri).context("--shared-cache")?;
        Ok(Some(crate::shared::SharedConfig::new(&bucket, &prefix, self.shared_cache_read_only)))
    }
}

/// Runs a parsed command line; the error is printed by `main`. `Ok(false)` means the command
/// ran but found a problem (for example `cache verify` found corrupt blocks): exit status 1.
pub fn run(cli: Cli) -> Result<bool> {
    match cli.command {
        Commands::Mount(args) => mount::run_mount(args).map(|_| true),
        Commands::Cache(args) => cache::run(args),
    }
}

/// A switch with an explicit value, so scripts can say either.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

/// `--verify-reads` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum VerifyReads {
    /// The first read of each block in a mount.
    First,
    /// Every read.
    Always,
}

/// A command line that parses but says something impossible (exit status 2, like clap's own).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Splits `s3://bucket/prefix` into bucket and prefix.
pub fn parse_s3_uri(uri: &str) -> Result<(String, String)> {
    let Some(rest) = uri.strip_prefix("s3://") else {
        bail!(UsageError(format!("{uri:?} is not an S3 URI: write it as s3://BUCKET or s3://BUCKET/PREFIX")));
    };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let valid =
        (3..=63).contains(&bucket.len()) && bucket.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if !valid {
        bail!(UsageError(format!("{bucket:?} in {uri:?} is not a valid bucket name: 3-63 characters of a-z, 0-9, '-' and '.'")));
    }
    Ok((bucket.to_string(), prefix.to_string()))
}

/// Exit status for an error, by whose problem it is: 2 the command line, 3 S3 (bucket,
/// credentials, endpoint), 4 this machine (mount point, cache dir, FUSE), 1 anything else.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    use crate::cache::CacheDirError;
    use crate::mount::MountError;
    for cause in err.chain() {
        if cause.is::<UsageError>() {
            return 2;
        }
        if let Some(e) = cause.downcast_ref::<MountError>() {
            return match e {
                MountError::NoSuchBucket { .. } | MountError::AccessDenied(_) | MountError::Unreachable(_) => 3,
                MountError::MountPoint { .. } | MountError::CacheDir(_) | MountError::Io { .. } => 4,
            };
        }
        if cause.is::<CacheDirError>() {
            return 4;
        }
    }
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_names_the_cache_format_this_build_reads() {
        assert!(VERSION.ends_with(&format!("(cache format {})", crate::cache::store::DIR_VERSION)), "{VERSION}");
    }

    #[test]
    fn s3_uris() {
        assert_eq!(parse_s3_uri("s3://my-bucket").unwrap(), ("my-bucket".into(), "".into()));
        assert_eq!(parse_s3_uri("s3://my-bucket/a/b/").unwrap(), ("my-bucket".into(), "a/b/".into()));
        assert!(parse_s3_uri("my-bucket").unwrap_err().to_string().contains("s3://BUCKET"));
        assert!(parse_s3_uri("s3://Bad_Bucket").unwrap_err().to_string().contains("valid bucket name"));
    }
}
