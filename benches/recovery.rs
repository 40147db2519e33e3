//! Mount-time recovery: how long `BlockCache::open` takes to rebuild the eviction order and size
//! accounting of a cache dir with many objects (issue 4's target: 100,000 objects / 10 GiB well
//! under 2 s). Indexes are real; data files are sparse, since recovery reads only indexes.
//!
//!     cargo bench --bench recovery [-- OBJECTS]

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use hoardfs::cache::{BlockCache, CacheConfig, CacheDir};
use hoardfs::checksum::ObjectChecksum;
use hoardfs::io::{probe, EngineChoice};
use hoardfs::metrics::Metrics;
use hoardfs::object::ObjectInfo;

fn main() {
    let n: usize = std::env::args().filter_map(|a| a.parse().ok()).next().unwrap_or(100_000);
    let size = 10u64 << 30;
    let per = size / n as u64;
    let root = std::env::var("BENCH_WORK").unwrap_or_else(|_| "/var/tmp/hoardfs-recovery".into());
    let root = std::path::PathBuf::from(root);
    let _ = std::fs::remove_dir_all(&root);
    let t = Instant::now();
    {
        let cache = open(&root);
        for i in 0..n {
            let info = ObjectInfo {
                key: format!("train/{:03}/img-{i:07}.jpg", i % 1000),
                size: per,
                etag: format!("\"{i:032x}\""),
                last_modified: SystemTime::now(),
            };
            cache.create("bench", &info, ObjectChecksum::none()).unwrap().mark_all_present_for_bench();
        }
    }
    println!("built a cache dir of {n} objects / {} GiB in {:.1} s", size >> 30, t.elapsed().as_secs_f64());
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for _ in 0..3 {
        let _ = std::process::Command::new("sync").status();
        let dropped = std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok();
        let t = Instant::now();
        let cache = open(&root);
        if dropped {
            cold.push(t.elapsed().as_secs_f64());
        }
        assert_eq!(cache.entry_count(), n);
        drop(cache);
        let t = Instant::now();
        let _cache = open(&root);
        warm.push(t.elapsed().as_secs_f64());
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    println!(
        "mount-time recovery of {n} objects: {:.2} s with the page cache dropped, {:.2} s warm (medians of 3; target < 2 s)",
        median(&mut cold),
        median(&mut warm)
    );
    let _ = std::fs::remove_dir_all(&root);
}

fn open(root: &std::path::Path) -> BlockCache {
    let dir = CacheDir::open_exclusive(root).unwrap();
    BlockCache::open(dir, probe(EngineChoice::Psync).unwrap(), Arc::new(Metrics::default()), CacheConfig::default()).unwrap()
}
