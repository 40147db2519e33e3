//! `hoardfs cache …`: inspect and manage a cache directory.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use bytesize::ByteSize;
use clap::{Args, Subcommand};

use super::{parse_s3_uri, S3Args, SharedArgs};
use crate::cache::{CacheConfig, CacheDir};
use crate::fetch::{FetchLimits, Fetcher};
use crate::inspect::{self, EntryReport, EvictWhat, Filter};
use crate::metrics::Metrics;
use crate::object::counting::CountingClient;
use crate::object::s3::S3Client;
use crate::object::ObjectClient;
use crate::shared::attach_s3;
use crate::units::{parse_duration, parse_size};
use crate::verify::{VerifyMode, VerifyPolicy};

/// `hoardfs cache` and its subcommands.
#[derive(Args, Debug)]
pub struct CacheArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: CacheCommand,
}

/// Cache subcommands.
#[derive(Subcommand, Debug)]
pub enum CacheCommand {
    /// Totals, verification counts, and the hit/miss counters of the running or last mount.
    /// Runs beside a mount.
    Stat(Common),
    /// One line per cached object: key, ETag, size, % cached, verification, last access.
    /// Runs beside a mount.
    Ls(LsArgs),
    /// Re-hash every cached block, drop the corrupt ones, and report; exits 1 if any were.
    /// Needs the cache dir to itself (unmount first).
    Verify(FilterArgs),
    /// Remove cached objects: all, those under a prefix, or those not read for a while.
    /// Needs the cache dir to itself (unmount first).
    Evict(EvictArgs),
    /// Fill the cache for s3://BUCKET/PREFIX before a job, with many parallel ranged GETs,
    /// verified like any fill; Ctrl-C is safe and running it again resumes.
    /// Needs the cache dir to itself: warm before mounting.
    Warm(WarmArgs),
    /// Upgrade a cache dir written by an older hoardfs to the current format, in place (format
    /// 1 kept one index file per object; format 2 keeps them in the catalog). Any writer (a
    /// mount, warm, verify, evict) upgrades on its own; this does it ahead of time and reports.
    /// Nothing cached is lost. Needs the cache dir to itself (unmount first).
    Upgrade(Common),
}

/// Flags every cache subcommand has.
#[derive(Args, Debug)]
pub struct Common {
    /// The cache directory.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: PathBuf,
    /// Print JSON instead of a table, for scripts.
    #[arg(long)]
    pub json: bool,
}

/// `cache verify` flags.
#[derive(Args, Debug)]
pub struct FilterArgs {
    #[command(flatten)]
    common: Common,
    /// Only objects under s3://BUCKET[/PREFIX].
    pub source: Option<String>,
}

/// `cache ls` flags.
#[derive(Args, Debug)]
pub struct LsArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// Sort by this column.
    #[arg(long, value_enum, default_value_t = SortBy::Key)]
    pub sort: SortBy,
}

/// `cache ls --sort` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SortBy {
    /// Bucket and key.
    Key,
    /// Object size, largest first.
    Size,
    /// Percent cached, least first.
    Cached,
    /// Last access, most recent first.
    Access,
}

/// `cache evict` flags.
#[derive(Args, Debug)]
pub struct EvictArgs {
    #[command(flatten)]
    common: Common,
    /// Remove everything.
    #[arg(long, conflicts_with_all = ["source", "older_than"])]
    pub all: bool,
    /// Remove objects under s3://BUCKET[/PREFIX].
    pub source: Option<String>,
    /// Remove objects not read for this long (such as 7d, 12h, 30m).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, conflicts_with = "source")]
    pub older_than: Option<std::time::Duration>,
}

/// `cache warm` flags.
#[derive(Args, Debug)]
pub struct WarmArgs {
    /// What to fetch: s3://BUCKET[/PREFIX].
    pub source: String,
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    s3: S3Args,
    #[command(flatten)]
    shared: SharedArgs,
    /// Fetch these keys first, in this order (one full key per line): a training sampler's
    /// order, so the first steps of a job find their files cached.
    #[arg(long, value_name = "FILE")]
    pub list: Option<PathBuf>,
    /// Only the keys in --list, not the rest of the prefix.
    #[arg(long, requires = "list")]
    pub only_list: bool,
    /// Objects fetched at once. A small object is one GET round trip, so against S3 this, not
    /// the bandwidth, sets how fast a prefix of small objects warms.
    #[arg(long, value_name = "N", default_value_t = crate::hints::DEFAULT_PARALLEL_FILES)]
    pub parallel_objects: usize,
    /// Ranged GETs in flight at most.
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub max_concurrent_gets: usize,
    /// Largest single GET (see `mount --help`).
    #[arg(long, value_name = "SIZE", default_value = "8MiB", value_parser = parse_size)]
    pub max_get_size: u64,
    /// Size limit for the cache (as for `mount`); least recently used objects are evicted.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_cache_size: Option<u64>,
    /// When bytes are checked against S3's checksum (see `mount --help`).
    #[arg(long, value_enum, default_value_t = VerifyMode::Strict)]
    pub verify: VerifyMode,
}

fn filter_of(source: Option<&str>) -> Result<Filter> {
    Ok(match source {
        None => Filter::default(),
        Some(uri) => {
            let (bucket, prefix) = parse_s3_uri(uri)?;
            Filter { bucket: Some(bucket), prefix }
        }
    })
}

fn open_read_only(common: &Common) -> Result<CacheDir> {
    Ok(CacheDir::open_read_only(&common.cache_dir)?)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Runs a cache subcommand; `Ok(false)` when it found a problem worth a non-zero exit.
pub fn run(args: CacheArgs) -> Result<bool> {
    match args.command {
        CacheCommand::Stat(common) => stat(&common),
        CacheCommand::Ls(a) => ls(&a),
        CacheCommand::Verify(a) => verify(&a),
        CacheCommand::Evict(a) => evict(&a),
        CacheCommand::Warm(a) => warm(a),
        CacheCommand::Upgrade(common) => upgrade(&common),
    }
}

fn stat(common: &Common) -> Result<bool> {
    let r = inspect::stat(&open_read_only(common)?)?;
    if common.json {
        print_json(&r)?;
        return Ok(true);
    }
    println!("cache dir      {} (format {})", r.cache_dir, r.format_version);
    println!("objects        {}", r.objects);
    println!("blocks         {}", r.blocks);
    println!("bytes cached   {} ({} on disk)", ByteSize(r.bytes_cached), ByteSize(r.bytes_on_disk));
    println!("size limit     {}", r.max_cache_size.map(|b| ByteSize(b).to_string()).unwrap_or_else(|| "none".into()));
    println!(
        "verification   {} verified, {} unverifiable, {} pending, {} failed{}",
        r.verified,
        r.unverifiable,
        r.pending,
        r.failed,
        if r.unreadable > 0 { format!(", {} unreadable indexes", r.unreadable) } else { String::new() }
    );
    match &r.mount {
        None => println!("mount          none recorded"),
        Some(m) => {
            let state = if m.running { format!("running (pid {})", m.record.pid) } else { "last mount".into() };
            println!("mount          {state}: {} at {}", m.record.source, m.record.mountpoint);
            if m.counters.is_empty() && m.running {
                println!("               (live counters need the mount's --metrics-addr)");
            }
            for (name, value) in m.counters.iter().filter(|(_, v)| *v > 0) {
                println!("  {:<48} {value}", name.trim_start_matches("hoardfs_"));
            }
        }
    }
    Ok(true)
}

fn ls(a: &LsArgs) -> Result<bool> {
    let dir = open_read_only(&a.filter.common)?;
    let (mut rows, unreadable) = inspect::entries(&dir, &filter_of(a.filter.source.as_deref())?)?;
    // Unstable sorts: ties keep no particular order anyway (the catalog's), and they move less.
    match a.sort {
        SortBy::Key => rows.sort_unstable_by(|x, y| (&x.bucket, &x.key).cmp(&(&y.bucket, &y.key))),
        SortBy::Size => rows.sort_unstable_by_key(|r| std::cmp::Reverse(r.size)),
        SortBy::Cached => rows.sort_unstable_by(|x, y| x.percent_cached.total_cmp(&y.percent_cached)),
        SortBy::Access => rows.sort_unstable_by_key(|r| std::cmp::Reverse(r.last_access)),
    }
    if a.filter.common.json {
        print_json(&rows)?;
        return Ok(true);
    }
    if let Err(e) = print_rows(&rows) {
        // `hoardfs cache ls | head` closes the pipe early: that is the reader's choice.
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(e).context("writing the listing");
        }
        return Ok(true);
    }
    if unreadable > 0 {
        eprintln!("{unreadable} indexes could not be read (a mount frees them and refetches the objects)");
    }
    Ok(true)
}

/// The table, through one buffer: `println!` flushes stdout at every line, a write per entry.
fn print_rows(rows: &[EntryReport]) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    writeln!(out, "{:>10} {:>7} {:<12} {:<9} {:<20} {:<36} KEY", "SIZE", "CACHED", "VERIFY", "CHECKSUM", "LAST ACCESS", "ETAG")?;
    for r in rows {
        print_row(&mut out, r)?;
    }
    out.flush()
}

fn print_row(out: &mut impl std::io::Write, r: &EntryReport) -> std::io::Result<()> {
    let when = chrono_like(r.last_access);
    writeln!(
        out,
        "{:>10} {:>6.1}% {:<12} {:<9} {:<20} {:<36} s3://{}/{}",
        ByteSize(r.size).to_string(),
        r.percent_cached,
        format!("{:?}", r.verify).to_lowercase(),
        format!("{:?}", r.checksum).to_lowercase(),
        when,
        r.etag,
        r.bucket,
        r.key
    )
}

/// UTC `YYYY-MM-DD HH:MM:SS` from epoch seconds (civil-from-days, no date crate needed).
fn chrono_like(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let (h, m, s) = (secs % 86400 / 3600, secs % 3600 / 60, secs % 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02}:{s:02}")
}

fn verify(a: &FilterArgs) -> Result<bool> {
    let filter = filter_of(a.source.as_deref())?;
    let rt = runtime()?;
    let cache =
        rt.block_on(async { inspect::open_for_writing(&a.common.cache_dir, CacheConfig::default(), Arc::new(Metrics::default())) })?;
    let cache = Arc::new(cache);
    let report = rt.block_on(inspect::verify(cache.clone(), &filter, 8));
    cache.checkpoint();
    if a.common.json {
        print_json(&report)?;
    } else {
        println!("checked {} blocks of {} objects", report.blocks_checked, report.objects);
        for (key, b) in &report.corrupt_blocks {
            println!("corrupt: block {b} of {key} (dropped; the next read fetches it again)");
        }
        if report.unreadable > 0 {
            println!("{} unreadable indexes were dropped", report.unreadable);
        }
        if report.corrupt_blocks.is_empty() && report.unreadable == 0 {
            println!("no corruption found");
        }
    }
    Ok(report.corrupt_blocks.is_empty() && report.unreadable == 0)
}

fn upgrade(common: &Common) -> Result<bool> {
    let found = open_read_only(common)?.found_version();
    let rt = runtime()?;
    let cache =
        rt.block_on(async { inspect::open_for_writing(&common.cache_dir, CacheConfig::default(), Arc::new(Metrics::default())) })?;
    cache.checkpoint();
    let report = serde_json::json!({
        "cache_dir": common.cache_dir.display().to_string(),
        "from_version": found,
        "to_version": crate::cache::store::DIR_VERSION,
        "objects": cache.entry_count(),
    });
    if common.json {
        print_json(&report)?;
    } else if found == crate::cache::store::DIR_VERSION {
        println!("{} is already format {found} ({} objects); nothing to do", common.cache_dir.display(), cache.entry_count());
    } else {
        println!(
            "upgraded {} from format {found} to {} ({} objects kept)",
            common.cache_dir.display(),
            crate::cache::store::DIR_VERSION,
            cache.entry_count()
        );
    }
    Ok(true)
}

fn evict(a: &EvictArgs) -> Result<bool> {
    let what = match (a.all, &a.source, a.older_than) {
        (true, _, _) => EvictWhat::All,
        (_, Some(uri), _) => EvictWhat::Matching(filter_of(Some(uri))?),
        (_, _, Some(age)) => EvictWhat::OlderThan(age),
        _ => bail!("say what to evict: --all, s3://BUCKET/PREFIX, or --older-than DURATION"),
    };
    let rt = runtime()?;
    let cache =
        rt.block_on(async { inspect::open_for_writing(&a.common.cache_dir, CacheConfig::default(), Arc::new(Metrics::default())) })?;
    let report = inspect::evict(&cache, &what);
    cache.checkpoint();
    if a.common.json {
        print_json(&report)?;
    } else {
        println!("evicted {} objects, {} freed", report.objects, ByteSize(report.bytes));
    }
    Ok(true)
}

fn warm(a: WarmArgs) -> Result<bool> {
    let (bucket, prefix) = parse_s3_uri(&a.source)?;
    let order = match &a.list {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading --list {}", path.display()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
        None => vec![],
    };
    let rt = runtime()?;
    let metrics = Arc::new(Metrics::default());
    let open_entries = crate::limits::open_entries_for(crate::limits::raise_nofile_limit());
    let config = CacheConfig { max_size: a.max_cache_size, open_entries, ..CacheConfig::default() };
    let cache = rt.block_on(async { inspect::open_for_writing(&a.common.cache_dir, config, metrics.clone()) })?;
    let client: Arc<dyn ObjectClient> =
        Arc::new(CountingClient::new(Arc::new(rt.block_on(S3Client::new(&a.s3.config(bucket.clone())))), metrics.clone()));
    let prefix = crate::mount::normalize_prefix(&prefix);
    let listed = rt.block_on(crate::warm::list_all(client.as_ref(), &prefix)).with_context(|| format!("listing {}", a.source))?;
    let (mut objects, missing) = crate::warm::apply_order(listed, &order);
    for key in &missing {
        eprintln!("warning: {key} from --list is not under {}", a.source);
    }
    if a.only_list {
        objects.truncate(order.len() - missing.len());
    }
    let total: u64 = objects.iter().map(|o| o.size).sum();
    if let Some(limit) = a.max_cache_size.filter(|l| total > *l) {
        eprintln!(
            "warning: {} to warm is more than --max-cache-size {}; earlier objects will be evicted",
            ByteSize(total),
            ByteSize(limit)
        );
    }
    let bar = if a.common.json { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(total) };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}")
            .expect("static template"),
    );
    let policy = VerifyPolicy { mode: a.verify, require_checksum: false };
    let cache = Arc::new(cache);
    let limits = FetchLimits { max_concurrent_gets: a.max_concurrent_gets, max_get_size: a.max_get_size };
    let fetcher = {
        let _guard = rt.enter();
        Fetcher::new(client, cache.clone(), metrics.clone(), limits)
    };
    if let Some(shared) = a.shared.config()? {
        rt.block_on(attach_s3(&fetcher, shared, &a.s3.config(bucket.clone()), cache.clone(), metrics.clone(), policy.mode));
    }
    let report = rt.block_on(crate::warm::warm(fetcher, metrics, policy, objects, a.parallel_objects, bar));
    cache.flush();
    cache.checkpoint();
    if a.common.json {
        print_json(&report)?;
    } else {
        println!(
            "warmed {} objects ({} were already cached), {} fetched of {}",
            report.objects,
            report.already_cached,
            ByteSize(report.bytes_fetched),
            ByteSize(report.bytes_total)
        );
        for (key, why) in &report.failed {
            println!("failed: {key}: {why}");
        }
    }
    Ok(report.failed.is_empty())
}
