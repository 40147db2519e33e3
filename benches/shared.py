#!/usr/bin/env python3
"""The shared cache tier (issue 15), two nodes in one run: node A's cold epoch fills the tier from
the origin, node B's cold epoch (a new, empty cache) reads it from the tier; both beside a cold
epoch with no tier at all and direct GETs from the server, measured in the same run. Each node
lists the dataset first (as a Dataset does), so the epochs time the data path.

Both buckets live on the benchmark S3 server (benches/s3-server, s3s-fs) on 127.0.0.1, so this
measures hoardfs's own cost per request, not a network: on AWS the tier is an S3 Express bucket in
the nodes' zone and the origin a regional bucket, and the gap between them is larger.

    benches/shared.sh [--objects 20000] [--size 16384] [--readers 8]
"""

import argparse
import json
import os
import shutil
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scale  # noqa: E402  (dataset generation, the server, the mount wrapper)
from epochs import drop_page_cache, epoch, free_port  # noqa: E402


def counters(addr):
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {n: int(v) for n, v in (l.split(" ", 1) for l in text.splitlines() if l and not l.startswith("#"))}


def wait_for_puts(addr, blocks, limit=300):
    """Until every verified block was put (or dropped), or no progress for 10 s."""
    last, still = -1, time.monotonic()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        c = counters(addr)
        done = c["hoardfs_shared_puts_total"] + c["hoardfs_shared_put_failures_total"]
        if done >= blocks:
            return c
        if done != last:
            last, still = done, time.monotonic()
        elif time.monotonic() - still > 10:
            return c
        time.sleep(0.2)
    return counters(addr)


def last_counters(cache):
    with open(os.path.join(cache, "last-mount.json")) as f:
        return dict(json.load(f)["counters"])


def node(server, work, name, keys, bucket, extra, seed):
    mnt, cache = os.path.join(work, f"mnt-{name}"), os.path.join(work, f"cache-{name}")
    os.makedirs(mnt, exist_ok=True)
    shutil.rmtree(cache, ignore_errors=True)
    metrics = f"127.0.0.1:{free_port()}"
    sys_ = scale.Hoardfs(server, bucket, mnt, cache, ["--metrics-addr", metrics] + extra)
    sys_.mount()
    scale.find_size(mnt)  # list first, as a Dataset does: the epoch then times the data path
    drop_page_cache()
    e = epoch([os.path.join(mnt, k) for k in keys], seed)
    puts = wait_for_puts(metrics, len(keys)) if "--shared-cache" in extra and "--shared-cache-read-only" not in extra else None
    sys_.unmount()
    return e["files_per_s"], last_counters(cache), puts


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=int, default=20_000)
    ap.add_argument("--dirs", type=int, default=100)
    ap.add_argument("--size", type=int, default=16 << 10, help="bytes per object (one block up to 1 MiB)")
    ap.add_argument("--readers", type=int, default=8)
    ap.add_argument("--work", default=os.environ.get("BENCH_WORK", "/var/tmp/hoardfs-shared"))
    args = ap.parse_args()
    scale.bench_env(args.work)
    root, bucket = os.path.join(args.work, "s3root"), "origin"
    keys = scale.generate(root, bucket, args.objects, args.dirs, args.size)
    shutil.rmtree(os.path.join(root, "tier"), ignore_errors=True)
    os.makedirs(os.path.join(root, "tier"))
    server = scale.S3sFs(root, args.work)
    try:
        net = scale.direct_gets(server, bucket, keys, args.readers)
        alone, c0, _ = node(server, args.work, "alone", keys, bucket, [], 1)
        a, ca, puts = node(server, args.work, "a", keys, bucket, ["--shared-cache", "s3://tier/bench"], 2)
        b, cb, _ = node(server, args.work, "b", keys, bucket, ["--shared-cache", "s3://tier/bench", "--shared-cache-read-only"], 3)
    finally:
        server.stop()
    g = "hoardfs_s3_get_requests_total"
    print(f"\n{args.objects} x {args.size} B, {args.readers} readers, {os.cpu_count()} vCPU, benches/s3-server on 127.0.0.1; single runs")
    print(f"direct GETs (curl, {args.readers} parallel)       {net['files_per_s']:8.0f} files/s")
    print(f"cold epoch, no shared tier             {alone:8.0f} files/s  {alone / net['files_per_s']:5.2f}x net  origin GETs {c0[g]}")
    print(f"node A: cold, filling the tier         {a:8.0f} files/s  {a / alone:5.2f}x no-tier  origin GETs {ca[g]}, "
          f"puts {puts['hoardfs_shared_puts_total']} (dropped {puts['hoardfs_shared_put_failures_total']})")
    print(f"node B: cold, from the tier            {b:8.0f} files/s  {b / alone:5.2f}x no-tier  {b / a:5.2f}x node A  "
          f"origin GETs {cb[g]}, tier hits {cb['hoardfs_shared_hit_blocks_total']}, rejects {cb['hoardfs_shared_rejects_total']}")


if __name__ == "__main__":
    main()
