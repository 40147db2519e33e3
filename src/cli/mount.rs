//! `hoardfs mount`: flags, the background daemon, and foreground Ctrl-C handling.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use clap::Args;

use super::{parse_s3_uri, OnOff, S3Args, SharedArgs, VerifyReads};
use crate::cache::CacheConfig;
use crate::fetch::FetchLimits;
use crate::io::EngineChoice;
use crate::mount::{mount, MountConfig};
use crate::prefetch::PrefetchConfig;
use crate::units::{parse_size, parse_ttl, Ttl};
use crate::verify::{VerifyMode, VerifyPolicy};

/// Line the daemon writes on its stdout once the mount is up, for the launching parent.
const READY_LINE: &str = "hoardfs: mounted";
/// Environment variable telling a re-executed child that a parent waits for [`READY_LINE`].
const DAEMON_ENV: &str = "HOARDFS_DAEMON_CHILD";

/// Flags of `hoardfs mount`.
#[derive(Args, Debug)]
pub struct MountArgs {
    /// What to mount: s3://BUCKET or s3://BUCKET/PREFIX (the prefix becomes the mount's root).
    pub source: String,
    /// Empty directory to mount on.
    pub mountpoint: PathBuf,
    /// Directory for the persistent block cache (created if missing). Reused across mounts: data
    /// cached by an earlier mount is served without contacting S3 again.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: PathBuf,
    /// Where S3 is.
    #[command(flatten)]
    pub s3: S3Args,
    /// The shared cache tier.
    #[command(flatten)]
    pub shared: SharedArgs,
    /// Stay in the foreground; Ctrl-C unmounts. Without it, hoardfs returns once the mount is
    /// ready and keeps serving in the background (unmount with `fusermount3 -u MOUNTPOINT`).
    #[arg(long, short = 'f')]
    pub foreground: bool,
    /// Let users other than the one mounting read the files.
    #[arg(long)]
    pub allow_other: bool,
    /// Largest size the cache may take on disk, such as 20MiB or 500GiB; least recently used
    /// objects are evicted beyond it. Default: unlimited.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_cache_size: Option<u64>,
    /// How long listings and object metadata are trusted before S3 is asked again: seconds, or
    /// `indefinite` for datasets that never change.
    #[arg(long, value_name = "SECONDS|indefinite", default_value = "60", value_parser = parse_ttl)]
    pub metadata_ttl: Ttl,
    /// Block size of newly cached objects (4KiB..64MiB). Existing entries keep theirs.
    #[arg(long, value_name = "SIZE", default_value = "1MiB", value_parser = parse_size)]
    pub block_size: u64,
    /// How cache files are read and written: io_uring when the kernel allows it (auto), io_uring
    /// or fail (uring), or plain pread/pwrite (psync).
    #[arg(long, value_enum, default_value_t = EngineChoice::Auto)]
    pub io_engine: EngineChoice,
    /// When cached bytes are checked against S3's own checksum (CRC32, CRC32C, CRC64NVME, SHA1,
    /// SHA256, or the MD5 ETag): strict serves a byte only after its part or object matched;
    /// best-effort serves bytes as they arrive and verifies each part or object once complete.
    #[arg(long, value_enum, default_value_t = VerifyMode::Strict)]
    pub verify: VerifyMode,
    /// Refuse (EIO) objects for which S3 offers no checksum at all, instead of serving them
    /// marked unverified.
    #[arg(long)]
    pub require_checksum: bool,
    /// When a cached block's blake3 is re-checked as it is read from disk: the first time in
    /// each mount, or on every read.
    #[arg(long, value_enum, default_value_t = VerifyReads::First)]
    pub verify_reads: VerifyReads,
    /// Serve Prometheus metrics on this address, such as 127.0.0.1:9100.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Most ranged GETs in flight at once. (A small object, of one block, is fetched whole by
    /// its open; those GETs are bounded by the opens in flight: --fuse-threads and
    /// --prefetch-hints.)
    #[arg(long, value_name = "N", default_value_t = crate::fetch::DEFAULT_MAX_CONCURRENT_GETS)]
    pub max_concurrent_gets: usize,
    /// Largest single GET: runs of missing neighbouring blocks are fetched together up to this
    /// size (at least one block). Memory held by fetches is at most this times
    /// --max-concurrent-gets.
    #[arg(long, value_name = "SIZE", default_value = "8MiB", value_parser = parse_size)]
    pub max_get_size: u64,
    /// Most blocks fetched ahead of a sequential reader. The read-ahead grows with the reader:
    /// it runs as far ahead as the reader has read in sequence, so a reader that stops early
    /// caused about as many extra bytes as it read at most (give or take a GET), and one that
    /// keeps going gets this many blocks of GETs in flight. Default: as many as the GETs
    /// read-ahead may hold at once carry (three quarters of --max-concurrent-gets, times
    /// --max-get-size: 96 MiB by default; the rest stay free for other readers' misses). 0 turns
    /// read-ahead off.
    #[arg(long, value_name = "N")]
    pub prefetch_blocks: Option<u64>,
    /// Let the kernel read complete, verified objects straight from the cache file (FUSE
    /// passthrough, Linux 6.9+), so later epochs never enter the daemon. Falls back by itself.
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    pub passthrough: OnOff,
    /// Kernel read-ahead of the mount in KiB (the kernel's FUSE default is 128).
    #[arg(long, value_name = "KIB", default_value_t = 1024)]
    pub read_ahead_kb: u32,
    /// Threads reading FUSE requests from the kernel. An open of a cached file is answered on
    /// the thread that read it, including the disk read of a small file's one block after a
    /// remount, so this is also how many such reads are in flight at once.
    #[arg(long, value_name = "N", default_value_t = crate::mount::DEFAULT_FUSE_THREADS)]
    pub fuse_threads: usize,
    /// Files fetched ahead at once from the prefetch control file: write the paths a job will
    /// read next, one per line, to MOUNTPOINT/.hoardfs-prefetch and they are fetched in that
    /// order (opening it with truncation replaces the pending list). Each cold small file is one
    /// GET round trip, so this should be well above the job's readers (DataLoader workers) for
    /// hints to get ahead of them. 0 turns the control file off and mounts with the kernel's
    /// read-only flag.
    #[arg(long, value_name = "N", default_value_t = crate::hints::DEFAULT_PARALLEL_FILES)]
    pub prefetch_hints: usize,
    /// An open of a cached file of 64 KiB to 8 MiB whose bytes are on disk only starts reading
    /// the rest of its directory's such files into memory, checked, in the background, so their
    /// opens and reads wait for no disk (an epoch reads whole directories, in an order the mount
    /// is not told; smaller files are read by their own open). This bounds, in MiB, what is read
    /// ahead of the readers' opens: the page cache it may fill with bytes not yet read. 0 turns
    /// it off.
    #[arg(long, value_name = "MIB", default_value_t = crate::fs::DEFAULT_DIR_READ_AHEAD >> 20)]
    pub dir_read_ahead_mib: u64,
    /// Log file of the background daemon. Default: DIR/hoardfs.log next to the cache.
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
}

/// Runs `hoardfs mount`.
pub fn run_mount(args: MountArgs) -> Result<()> {
    let (bucket, prefix) = parse_s3_uri(&args.source)?;
    let block_size = u32::try_from(args.block_size)
        .ok()
        .filter(|b| crate::cache::format::BLOCK_SIZE_RANGE.contains(b))
        .ok_or_else(|| super::UsageError(format!("--block-size {} is outside 4KiB..64MiB", args.block_size)))?;
    let shared = args.shared.config()?;
    if !args.foreground && std::env::var_os(DAEMON_ENV).is_none() {
        return launch_daemon(&args);
    }
    let s3 = args.s3.config(bucket);
    let mut config = MountConfig::new(s3, &prefix, &args.mountpoint, &args.cache_dir);
    config.cache = CacheConfig {
        block_size,
        max_size: args.max_cache_size,
        verify_every_read: args.verify_reads == VerifyReads::Always,
        ..CacheConfig::default()
    };
    config.verify = VerifyPolicy { mode: args.verify, require_checksum: args.require_checksum };
    config.metadata_ttl = args.metadata_ttl;
    config.allow_other = args.allow_other;
    config.io_engine = args.io_engine;
    config.metrics_addr = args.metrics_addr;
    config.fetch = FetchLimits { max_concurrent_gets: args.max_concurrent_gets, max_get_size: args.max_get_size };
    config.prefetch = PrefetchConfig { max_blocks: args.prefetch_blocks };
    config.fuse_threads = args.fuse_threads;
    config.hint_parallel = args.prefetch_hints;
    config.passthrough = args.passthrough == OnOff::On;
    config.dir_read_ahead = args.dir_read_ahead_mib.saturating_mul(1 << 20);
    config.read_ahead_kb = Some(args.read_ahead_kb);
    config.shared = shared;
    let handle = mount(config)?;
    if std::env::var_os(DAEMON_ENV).is_some() {
        announce_ready_and_detach(&args)?;
    } else {
        eprintln!("hoardfs: mounted {} at {}; Ctrl-C unmounts", args.source, args.mountpoint.display());
    }
    handle.run_until_signal().context("unmounting")?;
    Ok(())
}

/// Re-runs this command as a detached child in its own session and waits until it reports the
/// mount ready (exit 0) or fails (its error is already on our stderr; exit with its status).
fn launch_daemon(args: &MountArgs) -> Result<()> {
    let exe = std::env::current_exe().context("finding the hoardfs executable")?;
    let mut cmd = Command::new(exe);
    cmd.args(std::env::args_os().skip(1)).env(DAEMON_ENV, "1").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
    // SAFETY: setsid is async-signal-safe and is the only call made between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the hoardfs daemon")?;
    let stdout = child.stdout.take().expect("piped stdout");
    for line in BufReader::new(stdout).lines() {
        if line.map(|l| l == READY_LINE).unwrap_or(false) {
            eprintln!("hoardfs: mounted {} at {} (pid {})", args.source, args.mountpoint.display(), child.id());
            return Ok(());
        }
    }
    let status = child.wait().context("waiting for the hoardfs daemon")?;
    std::process::exit(status.code().unwrap_or(1).max(1));
}

/// In the daemon child: tell the parent we are up, then move stdout and stderr to the log file
/// so the parent's pipes close and the terminal is free.
fn announce_ready_and_detach(args: &MountArgs) -> Result<()> {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let log_path = args.log_file.clone().unwrap_or_else(|| args.cache_dir.join("hoardfs.log"));
    let log = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new().create(true).append(true).mode(crate::cache::store::FILE_MODE).open(&log_path)
    }
    .with_context(|| format!("opening log file {}", log_path.display()))?;
    println!("{READY_LINE}");
    std::io::stdout().flush()?;
    // SAFETY: dup2 onto the standard descriptors of this process; `log` outlives the calls.
    unsafe {
        libc::dup2(log.as_raw_fd(), 1);
        libc::dup2(log.as_raw_fd(), 2);
    }
    Ok(())
}
