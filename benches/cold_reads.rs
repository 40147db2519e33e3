//! Cold block reads of cache data files: hoardfs's I/O engines against plain `pread` threads,
//! with the same number of reads in flight, the page cache dropped before each run.
//!
//!     cargo run --release --example cold_reads -- DIR [ROUNDS]
//!
//! `DIR` is a tree of files of at least two blocks (a filled cache dir's `objects/`, from
//! `benches/scale.py --size 2097152`, is what DESIGN's table used). Every block (1 MiB) of up to
//! 1,500 files is read once per run, in file order, at 2, 8 and 16 in flight: by that many
//! threads of `pread` (the baseline), by the io_uring engine (`--io-engine uring`, tokio-uring on
//! one ring thread) and by the psync engine (inline `pread` on the runtime's two workers). Prints
//! MB/s and the ratio to the baseline, medians of `ROUNDS` (3) interleaved rounds. Not part of CI.
//!
//! Why it exists: io_uring tries a buffered read without waiting and, on a miss, retries it from
//! the ring thread as its pages arrive, which falls behind as the queue deepens (docs/DESIGN.md,
//! "Cold reads and the ring"). This is the measurement to repeat before changing how cold reads
//! are made.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use hoardfs::io::{probe, EngineChoice, IoEngine};

const BLOCK: usize = 1 << 20;
const FILES_MAX: usize = 1500;

/// Files of at least two blocks under `dir`, at most [`FILES_MAX`], opened.
fn files(dir: &std::path::Path) -> std::io::Result<Vec<Arc<File>>> {
    let (mut out, mut stack) = (Vec::new(), vec![dir.to_path_buf()]);
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d)? {
            let e = e?;
            let meta = e.metadata()?;
            if meta.is_dir() {
                stack.push(e.path());
            } else if meta.len() >= 2 * BLOCK as u64 && out.len() < FILES_MAX {
                out.push(Arc::new(File::open(e.path())?));
            }
        }
    }
    Ok(out)
}

/// Drops every file's pages from the page cache.
fn evict(files: &[Arc<File>]) {
    for f in files {
        // SAFETY: advice on a descriptor held open for the call.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
}

/// Every whole block of every file: (file, offset).
fn blocks(files: &[Arc<File>]) -> Vec<(usize, u64)> {
    let mut out = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        out.extend((0..len / BLOCK as u64).map(|b| (i, b * BLOCK as u64)));
    }
    out
}

/// MB/s of `in_flight` threads each making `pread`s of the next block.
fn preads(files: &[Arc<File>], jobs: &[(usize, u64)], in_flight: usize) -> f64 {
    let next = AtomicUsize::new(0);
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..in_flight {
            s.spawn(|| {
                let mut buf = vec![0u8; BLOCK];
                while let Some(&(f, off)) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) {
                    files[f].read_exact_at(&mut buf, off).expect("pread of a block");
                }
            });
        }
    });
    (jobs.len() * BLOCK) as f64 / 1e6 / t.elapsed().as_secs_f64()
}

/// MB/s of `engine` with `in_flight` block reads outstanding.
fn engine_reads(
    rt: &tokio::runtime::Runtime,
    engine: &Arc<dyn IoEngine>,
    files: &[Arc<File>],
    jobs: &[(usize, u64)],
    in_flight: usize,
) -> f64 {
    let t = Instant::now();
    rt.block_on(async {
        let mut running = tokio::task::JoinSet::<std::io::Result<usize>>::new();
        for &(f, off) in jobs {
            if running.len() >= in_flight {
                running.join_next().await.expect("a read in flight").expect("read task").expect("engine read of a block");
            }
            // Called inside the task, as the cache calls it: the psync engine reads there, on a
            // runtime worker, so it has at most as many reads in flight as the runtime has workers.
            let (engine, file) = (Arc::clone(engine), Arc::clone(&files[f]));
            running.spawn(async move { engine.read_at(&file, off, BLOCK).await.map(|b| b.len()) });
        }
        while let Some(r) = running.join_next().await {
            r.expect("read task").expect("engine read of a block");
        }
    });
    (jobs.len() * BLOCK) as f64 / 1e6 / t.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or("usage: cold_reads DIR [ROUNDS]")?;
    let rounds: usize = args.next().map_or(Ok(3), |r| r.parse().map_err(|e| format!("ROUNDS {r:?}: {e}")))?;
    let files = files(std::path::Path::new(&dir)).map_err(|e| format!("{dir}: {e}"))?;
    let jobs = blocks(&files);
    if jobs.is_empty() {
        return Err(format!("{dir} holds no file of two blocks (2 MiB) or more"));
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(|e| e.to_string())?;
    let engines: Vec<(&str, Arc<dyn IoEngine>)> = vec![
        ("uring engine", rt.block_on(async { probe(EngineChoice::Uring) }).map_err(|e| format!("io_uring: {e}"))?),
        ("psync engine", probe(EngineChoice::Psync).map_err(|e| e.to_string())?),
    ];
    println!("{} files, {} blocks of 1 MiB, page cache dropped before each run; medians of {rounds} rounds", files.len(), jobs.len());
    for in_flight in [2, 8, 16] {
        let mut base = Vec::new();
        let mut by_engine = vec![Vec::new(); engines.len()];
        for _ in 0..rounds {
            evict(&files);
            base.push(preads(&files, &jobs, in_flight));
            for ((_, engine), out) in engines.iter().zip(&mut by_engine) {
                evict(&files);
                out.push(engine_reads(&rt, engine, &files, &jobs, in_flight));
            }
        }
        let base = median(base);
        let rows: Vec<String> = engines
            .iter()
            .zip(by_engine)
            .map(|((name, _), v)| (name, median(v)))
            .map(|(name, m)| format!("{name} {m:.0} MB/s ({:.2}x)", m / base))
            .collect();
        println!("{in_flight:>2} in flight: pread threads {base:.0} MB/s (baseline); {}", rows.join("; "));
    }
    Ok(())
}
