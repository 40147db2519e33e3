#!/usr/bin/env python3
"""Soak: random reads for a long time over a dataset larger than --max-cache-size (constant
eviction). Reports errors, wrong bytes and the daemon's RSS over time (it should stay flat).

    benches/soak.sh [--minutes 10]
"""
import argparse
import concurrent.futures as cf
import hashlib
import os
import random
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from epochs import Moto, upload, free_port, hoardfs_gets, ROOT  # noqa: E402


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--objects", type=int, default=48)
    ap.add_argument("--object-mib", type=int, default=4)
    ap.add_argument("--cache-mib", type=int, default=64)
    ap.add_argument("--work", default="/var/tmp/hoardfs-soak")
    args = ap.parse_args()
    os.environ.update(AWS_ACCESS_KEY_ID="soak", AWS_SECRET_ACCESS_KEY="soak", AWS_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
    os.makedirs(args.work, exist_ok=True)
    moto = Moto(args.work)
    mnt, cache = os.path.join(args.work, "mnt"), os.path.join(args.work, "cache")
    subprocess.run(["fusermount3", "-u", mnt], stderr=subprocess.DEVNULL)
    subprocess.run(["rm", "-rf", cache])
    os.makedirs(mnt, exist_ok=True)
    try:
        data = {f"soak/obj-{i:03d}": os.urandom(args.object_mib << 20) for i in range(args.objects)}
        digests = {k: v for k, v in data.items()}
        upload(moto.s3, "soak", data)
        metrics = f"127.0.0.1:{free_port()}"
        subprocess.run([os.path.join(ROOT, "target/release/hoardfs"), "mount", "s3://soak", mnt, "--cache-dir", cache,
                        "--endpoint-url", moto.endpoint, "--force-path-style", "--metrics-addr", metrics,
                        "--max-cache-size", f"{args.cache_mib}MiB"], check=True)
        pid = int(open(os.path.join(cache, "lock")).read())
        deadline = time.time() + args.minutes * 60
        stats = {"reads": 0, "errors": 0, "wrong": 0, "bytes": 0}
        rss = []

        def worker(seed):
            rng = random.Random(seed)
            while time.time() < deadline:
                key = rng.choice(list(digests))
                want = digests[key]
                off = rng.randrange(len(want))
                n = rng.randint(1, min(len(want) - off, 1 << 20))
                try:
                    with open(os.path.join(mnt, key), "rb") as f:
                        f.seek(off)
                        got = f.read(n)
                    stats["reads"] += 1
                    stats["bytes"] += len(got)
                    if got != want[off:off + n]:
                        stats["wrong"] += 1
                except OSError:
                    stats["errors"] += 1

        with cf.ThreadPoolExecutor(8) as ex:
            futs = [ex.submit(worker, s) for s in range(8)]
            start = time.time()
            while time.time() < deadline:
                rss.append((round(time.time() - start), round(rss_mib(pid), 1)))
                time.sleep(min(30, max(1, deadline - time.time())))
            for f in futs:
                f.result()
        rss.append((round(time.time() - start), round(rss_mib(pid), 1)))
        du = subprocess.run(["du", "-sm", os.path.join(cache, "objects")], capture_output=True, text=True).stdout.split()[0]
        print(f"soak: {args.minutes} min, {args.objects} x {args.object_mib} MiB over a {args.cache_mib} MiB cache")
        print(f"  reads {stats['reads']}, {stats['bytes'] / 1e9:.1f} GB, errors {stats['errors']}, wrong bytes {stats['wrong']}")
        print(f"  GETs {hoardfs_gets(metrics)}, cache objects dir {du} MiB")
        print(f"  daemon RSS MiB over time (s, MiB): {rss}")
        subprocess.run(["fusermount3", "-u", mnt], check=True)
    finally:
        moto.stop()


if __name__ == "__main__":
    main()
