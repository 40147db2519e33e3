#!/usr/bin/env python3
"""Sequential readers of large objects, cold, from an endpoint that answers late.

    python3 benches/seqread.py --delay-ms 30 --size-mib 1024 --rounds 3 \\
        target/release/hoardfs 'target/release/hoardfs --prefetch-blocks 8'

What read-ahead is for: a GET to S3 waits tens of milliseconds for its first byte, so a single
reader (a training job's shard reader, `cp`, a checksum tool) is only as fast as the GETs it keeps
in flight. Loopback answers in microseconds and hides that, so the bench server
(benches/s3-server) is started with HOARDFS_BENCH_GET_DELAY_MS=`--delay-ms`: every GetObject
answers that much later.

The object is uploaded through the server in 8 MiB parts (a multipart object, as `aws s3 cp`
makes them; s3s-fs keeps its ETag, so its ranged GETs do not hash the whole file as they do for
objects written into its directory). Each round, page cache dropped before each: the baseline,
the same bytes as 16 parallel ranged GETs of 8 MiB (`curl --parallel`, the most this server and
these cores give), a single whole-object `curl` GET (one stream, one first-byte wait), then each
variant (a hoardfs binary, optionally with mount flags in the same argument): a fresh mount with
an empty cache dir, the file read once in 1 MiB reads. With `--objects K`, K objects are read at
once, one reader each (the baseline GETs all of them). Reported: MB/s per round, and medians of
MB/s and of each round's ratio to that round's baseline. Not part of CI.

What it does not show: the server's own single-stream speed is low (s3s-fs streams bodies in
4 KiB chunks), so the baseline is parallel GETs, not one; and the delay is a fixed wait per GET,
not a slow link (no bandwidth-delay product, no TCP slow start).
"""
import argparse
import concurrent.futures as cf
import os
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import epochs  # noqa: E402  (server, curl baseline, page-cache drop)
import scale  # noqa: E402  (environment, mount)
from epochs import S3sFs, drop_page_cache  # noqa: E402

BUCKET, PART = "seq", 8 << 20


def upload(server, root, key, size):
    """An object, as a multipart upload through the server (kept between runs of one size)."""
    path = os.path.join(root, BUCKET, key)
    if os.path.exists(path) and os.path.getsize(path) == size:
        return
    from boto3.s3.transfer import TransferConfig
    os.makedirs(os.path.join(root, BUCKET), exist_ok=True)
    src = os.path.join(os.path.dirname(root), "upload.tmp")
    with open(src, "wb") as f:
        for _ in range(size // PART):
            f.write(os.urandom(PART))
        f.write(os.urandom(size % PART))
    try:
        server.s3.upload_file(src, BUCKET, key, Config=TransferConfig(multipart_threshold=PART, multipart_chunksize=PART))
    finally:
        os.remove(src)


def read_sequentially(path):
    """Bytes read from `path`, start to end, in 1 MiB reads."""
    n = 0
    with open(path, "rb", buffering=0) as f:
        while b := f.read(1 << 20):
            n += len(b)
    return n


def read_all(paths):
    """MB/s of one reader per path, all at once."""
    t = time.perf_counter()
    with cf.ThreadPoolExecutor(len(paths)) as ex:
        n = sum(ex.map(read_sequentially, paths))
    return n / 1e6 / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="+", help="hoardfs binaries, each optionally followed by mount flags")
    ap.add_argument("--delay-ms", type=int, default=30, help="how late the server answers every GET (default 30)")
    ap.add_argument("--size-mib", type=int, default=1024, help="size of each object")
    ap.add_argument("--objects", type=int, default=1, help="objects read at once, one reader each")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", default="/var/tmp/hoardfs-seqread")
    args = ap.parse_args()
    scale.bench_env(args.work)
    root = os.path.join(args.work, "s3root")
    os.makedirs(root, exist_ok=True)
    size = args.size_mib << 20
    os.environ["HOARDFS_BENCH_GET_DELAY_MS"] = str(args.delay_ms)
    server = S3sFs(root, args.work)
    rows = {}
    try:
        keys = [f"shard-{i:03d}.tar" for i in range(args.objects)]
        for key in keys:
            upload(server, root, key, size)
        total = size * len(keys)
        cache, mnt = os.path.join(args.work, "cache"), os.path.join(args.work, "mnt")
        os.makedirs(mnt, exist_ok=True)
        for r in range(args.rounds):
            drop_page_cache()
            parts = [(k, o, min(o + PART, size) - 1) for o in range(0, size, PART) for k in keys]
            base = total / 1e6 / epochs.curl_gets(server, BUCKET, parts, 16)
            drop_page_cache()
            got = {"direct, one GET per object": total / 1e6 / epochs.curl_gets(server, BUCKET, [(k, 0, None) for k in keys], len(keys))}
            for v in args.variants:
                scale.HOARDFS, *flags = v.split()
                shutil.rmtree(cache, ignore_errors=True)
                fs = scale.Hoardfs(server, BUCKET, mnt, cache, flags)
                fs.mount()
                try:
                    drop_page_cache()
                    got[v] = read_all([os.path.join(mnt, k) for k in keys])
                finally:
                    fs.unmount()
            print(f"round {r}: direct, 16 GETs of 8 MiB {base:.0f} MB/s; "
                  + "; ".join(f"{k} {mbps:.0f} ({mbps / base:.2f}x)" for k, mbps in got.items()), flush=True)
            rows.setdefault("direct, 16 GETs of 8 MiB", []).append((base, 1.0))
            for k, mbps in got.items():
                rows.setdefault(k, []).append((mbps, mbps / base))
    finally:
        server.stop()
    print(f"\n{args.objects} x {args.size_mib} MiB, one reader each, every GET answered {args.delay_ms} ms late; medians of {args.rounds} rounds")
    for k, v in rows.items():
        print(f"{k:60s} {statistics.median(m for m, _ in v):7.0f} MB/s  {statistics.median(x for _, x in v):.2f}x direct")


if __name__ == "__main__":
    main()
