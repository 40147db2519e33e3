//! Micro-benchmarks of the per-block hot paths (criterion): `cargo bench --bench hot_paths`.
//!
//! - block hashing on arrival: blake3 + CRC64NVME of 1 MiB, against a plain memcpy of 1 MiB as
//!   the baseline measured in the same run;
//! - presence lookup and record update in a mapped index;
//! - one 1 MiB cache-block read through each I/O engine (page-cache warm).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hoardfs::cache::format::IndexHeader;
use hoardfs::cache::index::ObjectIndex;
use hoardfs::checksum::{block_crc, block_hash, Algorithm, ObjectChecksum};
use hoardfs::io::{probe, EngineChoice};

const MIB: usize = 1 << 20;

fn hashing(c: &mut Criterion) {
    let block = vec![0x5au8; MIB];
    let mut g = c.benchmark_group("per MiB block");
    g.throughput(Throughput::Bytes(MIB as u64));
    g.bench_function("memcpy (baseline)", |b| b.iter(|| black_box(block.clone())));
    g.bench_function("blake3", |b| b.iter(|| black_box(block_hash(black_box(&block)))));
    g.bench_function("crc64nvme", |b| b.iter(|| black_box(block_crc(Algorithm::Crc64nvme, black_box(&block)))));
    g.bench_function("blake3 + crc64nvme (a fill)", |b| {
        b.iter(|| black_box((block_hash(&block), block_crc(Algorithm::Crc64nvme, &block))))
    });
    g.finish();
}

fn index(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let header = IndexHeader {
        block_size: MIB as u32,
        object_size: 10 << 30,
        mtime_ms: 0,
        checksum: ObjectChecksum::none(),
        bucket: "b".into(),
        key: "k".into(),
        etag: "\"e\"".into(),
    };
    let catalog = hoardfs::cache::catalog::Catalog::new(dir.path(), []).unwrap();
    let mut idx = ObjectIndex::create(&catalog, &hoardfs::cache::ObjectId([1; 32]), header).unwrap();
    let mut g = c.benchmark_group("index (10 GiB object)");
    g.bench_function("is_present", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i = (i + 7919) % 10240;
            black_box(idx.is_present(i))
        })
    });
    g.bench_function("mark_present", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i = (i + 7919) % 10240;
            idx.mark_present(i, &[1u8; 32], 42)
        })
    });
    g.finish();
}

fn block_read(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    std::fs::write(&path, vec![1u8; 8 * MIB]).unwrap();
    let file = Arc::new(std::fs::File::open(&path).unwrap());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut g = c.benchmark_group("1 MiB cache block read (page cache)");
    g.throughput(Throughput::Bytes(MIB as u64));
    for engine in [EngineChoice::Psync, EngineChoice::Uring] {
        let io = probe(engine).unwrap();
        g.bench_function(io.name(), |b| b.iter(|| rt.block_on(io.read_at(&file, 3 * MIB as u64, MIB)).unwrap()));
    }
    g.finish();
}

criterion_group!(benches, hashing, index, block_read);
criterion_main!(benches);
