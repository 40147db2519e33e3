#!/usr/bin/env python3
"""Interleaved A/B of hoardfs binaries on a cache that scale.py already filled.

    python3 benches/ab.py --objects 100000 --work /var/tmp/hoardfs-scale-100k \\
        --rounds 3 /tmp/hoardfs-before /tmp/hoardfs-after

A variant is a binary, optionally followed by mount flags in the same argument, to compare flags
of one binary the same way: `'target/release/hoardfs --fuse-threads 4'`.

Run `benches/scale.sh --objects N --work DIR` once first: it writes the dataset and leaves a full
cache dir behind. Then each round runs, for each binary in turn: a raw-disk epoch over the same
files, a remount with the page cache dropped, the first epoch after it and a warm epoch (page
cache dropped before each). Binaries alternate inside every round, so a slow minute of the VM
hits both; the summary is the median of each binary's per-round ratios to the raw epoch run just
before it. Every binary must read the cache dir's format. Not part of CI.
"""
import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cachegen  # noqa: E402  (the dataset's keys)
import scale  # noqa: E402  (server, mount, environment)
import epochs  # noqa: E402
from epochs import S3sFs, drop_page_cache, epoch  # noqa: E402


def read_buffered(path):
    """A reader as torchvision's default loader opens an image: `open(path, "rb")`."""
    with open(path, "rb") as f:
        return len(f.read())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("binaries", nargs="+", help="hoardfs binaries to compare, each optionally with mount flags")
    ap.add_argument("--objects", type=int, required=True, help="as given to scale.py")
    ap.add_argument("--dirs", type=int, default=500, help="as given to scale.py")
    ap.add_argument("--work", required=True, help="scale.py's --work dir, with its filled cache")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--readers", type=int, default=epochs.READERS,
                    help="parallel readers per epoch (fewer than the cores' worth shows latency, more shows CPU)")
    ap.add_argument("--open", choices=("unbuffered", "buffered"), default="unbuffered",
                    help="how readers open files: open(p, 'rb', buffering=0), or Python's default "
                    "buffered open as PIL and torchvision's loader do, which also sends the file system an "
                    "ioctl (isatty) per file")
    args = ap.parse_args()
    epochs.READERS = args.readers
    if args.open == "buffered":
        epochs.read_file = read_buffered
    scale.bench_env(args.work)
    root, bucket = os.path.join(args.work, "s3root"), "scale"
    mnt, cache = os.path.join(args.work, "mnt-hoardfs"), os.path.join(args.work, "cache-hoardfs")
    if not os.path.isdir(cache):
        raise SystemExit(f"{cache} missing: run benches/scale.sh --objects {args.objects} --work {args.work} first")
    keys = cachegen.keys(args.objects, args.dirs)
    raw_paths = [os.path.join(root, bucket, k) for k in keys]
    paths = [os.path.join(mnt, k) for k in keys]
    rows = {b: {"remount (s)": [], "after remount (x raw)": [], "warm (x raw)": []} for b in args.binaries}
    server = S3sFs(root, args.work)
    try:
        for r in range(args.rounds):
            for b in args.binaries:
                scale.HOARDFS, *flags = b.split()
                drop_page_cache()
                raw = epoch(raw_paths, 7 + r)["files_per_s"]
                fs = scale.Hoardfs(server, bucket, mnt, cache, flags)
                drop_page_cache()
                remount = fs.mount()
                try:
                    drop_page_cache()
                    after = epoch(paths, 3 + r)["files_per_s"]
                    drop_page_cache()
                    warm = epoch(paths, 11 + r)["files_per_s"]
                finally:
                    fs.unmount()
                for k, v in zip(rows[b], (remount, after / raw, warm / raw)):
                    rows[b][k].append(v)
                print(f"round {r} {b}: raw {raw:.0f} files/s, remount {remount:.2f} s, after remount {after:.0f} "
                      f"({after / raw:.2f}x), warm {warm:.0f} ({warm / raw:.2f}x)", flush=True)
    finally:
        server.stop()
    print(f"\n{args.objects} objects, {args.rounds} interleaved rounds, medians")
    for b, r in rows.items():
        print(f"{b}: " + ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in r.items()))


if __name__ == "__main__":
    main()
