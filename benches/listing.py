#!/usr/bin/env python3
"""Listing benchmark: one directory of many objects, listed through hoardfs vs a direct walk.

    benches/listing.sh [--objects 100000] [--repeat 3]

Starts the local S3 server (moto) on 127.0.0.1 and puts N small objects under one prefix. Then,
each measured in the same run and reported as a median:
  - direct: a ListObjectsV2 walk of the prefix (delimiter "/", 1000 keys per page) with boto3;
  - hoardfs cold: a fresh mount's first `ls` of the directory (its LIST pages, plus FUSE);
  - hoardfs warm: `ls` again within the metadata TTL (no LIST: the listing is held);
  - hoardfs stat: `ls -l`-style scandir + stat of every entry within the TTL;
  - hoardfs remount: first `ls` after a remount (the listing persisted in the cache dir);
with the LIST requests each made and the daemon's peak RSS.
"""
import argparse
import concurrent.futures as cf
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import epochs  # noqa: E402
from epochs import ROOT, Moto, free_port, proc_stats, wait_mounted  # noqa: E402

PREFIX = "big/"


def metric(addr, name):
    text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=30).read().decode()
    return next(int(l.split()[1]) for l in text.splitlines() if l.startswith(name + " "))


def timed(f):
    t = time.perf_counter()
    n = f()
    return time.perf_counter() - t, n


def direct_walk(s3, bucket):
    n = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=PREFIX, Delimiter="/"):
        n += len(page.get("Contents", []))
    return n


class Mount:
    def __init__(self, moto, bucket, mnt, cache, ttl):
        self.args = [os.path.join(ROOT, "target/release/hoardfs"), "mount", f"s3://{bucket}", mnt, "--cache-dir", cache,
                     "--endpoint-url", moto.endpoint, "--force-path-style", "--metadata-ttl", ttl]
        self.mnt, self.cache = mnt, cache

    def __enter__(self):
        self.addr = f"127.0.0.1:{free_port()}"
        subprocess.run(self.args + ["--metrics-addr", self.addr], check=True)
        wait_mounted(self.mnt)
        self.pid = int(open(os.path.join(self.cache, "lock")).read())
        return self

    def lists(self):
        return metric(self.addr, "hoardfs_s3_list_requests_total")

    def __exit__(self, *exc):
        epochs.unmount(self.mnt, self.pid, seconds=10)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--work", default="/var/tmp/hoardfs-listing-bench")
    args = ap.parse_args()
    for k, v in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench"), ("AWS_REGION", "us-east-1")):
        os.environ.setdefault(k, v)
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    os.makedirs(args.work, exist_ok=True)
    moto = Moto(args.work)
    try:
        bucket = "listing-bench"
        moto.s3.create_bucket(Bucket=bucket)
        t = time.perf_counter()
        with cf.ThreadPoolExecutor(32) as ex:
            list(ex.map(lambda i: moto.s3.put_object(Bucket=bucket, Key=f"{PREFIX}obj-{i:07d}", Body=b"x" * 16), range(args.objects)))
        print(f"uploaded {args.objects} objects in {time.perf_counter() - t:.0f} s", file=sys.stderr)

        rows = {"direct ListObjectsV2 walk": [], "hoardfs cold ls": [], "hoardfs warm ls": [],
                "hoardfs stat every entry": [], "hoardfs ls after remount": []}
        lists = {k: [] for k in rows}
        rss = 0.0
        directory = lambda mnt: os.path.join(mnt, PREFIX.rstrip("/"))
        for r in range(args.repeat):
            dt, n = timed(lambda: direct_walk(moto.s3, bucket))
            assert n == args.objects, n
            rows["direct ListObjectsV2 walk"].append(dt)
            lists["direct ListObjectsV2 walk"].append(-(-args.objects // 1000))
            mnt, cache = os.path.join(args.work, "mnt"), os.path.join(args.work, f"cache-{r}")
            shutil.rmtree(cache, ignore_errors=True)
            os.makedirs(mnt, exist_ok=True)
            with Mount(moto, bucket, mnt, cache, "indefinite") as m:
                for row, f in (("hoardfs cold ls", lambda: len(os.listdir(directory(mnt)))),
                               ("hoardfs warm ls", lambda: len(os.listdir(directory(mnt)))),
                               ("hoardfs stat every entry", lambda: sum(1 for e in os.scandir(directory(mnt)) if e.stat().st_size == 16))):
                    l0 = m.lists()
                    dt, n = timed(f)
                    assert n == args.objects, (row, n)
                    rows[row].append(dt)
                    lists[row].append(m.lists() - l0)
                rss = max(rss, proc_stats(m.pid)[1])
            with Mount(moto, bucket, mnt, cache, "indefinite") as m:
                l0 = m.lists()
                dt, n = timed(lambda: len(os.listdir(directory(mnt))))
                assert n == args.objects, n
                rows["hoardfs ls after remount"].append(dt)
                lists["hoardfs ls after remount"].append(m.lists() - l0)
                rss = max(rss, proc_stats(m.pid)[1])
        base = statistics.median(rows["direct ListObjectsV2 walk"])
        print(f"\n{args.objects} objects in one directory; server: moto on 127.0.0.1; median of {args.repeat}")
        print(f"  {'':28} {'seconds':>8} {'x direct':>9} {'LISTs':>6}")
        for row, times in rows.items():
            med = statistics.median(times)
            print(f"  {row:28} {med:8.2f} {med / base:9.2f} {statistics.median(lists[row]):6.0f}")
        print(f"  daemon peak RSS {rss:.0f} MiB")
    finally:
        moto.stop()


if __name__ == "__main__":
    main()
