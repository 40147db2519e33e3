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
before it. Every binary must read the cache dir's format. Not part of CI. `--list-first` lists
the dataset's directories before each epoch, as a dataset class does when it is built;
`--reader-processes` reads with worker processes, as a PyTorch DataLoader does; `--ceiling` also
reads each round's files through benches/fuse_ceiling.rs, a passthrough FUSE mount that does
nothing else, so each binary is also reported against the most any FUSE mount gets here.

Each epoch also says where its time went, to tell a disk-bound round from a CPU-bound one: the
cache disk's read requests per file and the share of the epoch it was busy (/proc/diskstats), the
machine's idle CPU (/proc/stat), and for hoardfs the daemon's CPU per file (/proc/PID/stat).
"""
import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cachegen  # noqa: E402  (the dataset's keys)
import scale  # noqa: E402  (server, mount, environment)
import epochs  # noqa: E402
from epochs import S3sFs, drop_page_cache  # noqa: E402


class Costs:
    """Counters read before and after an epoch: the cache disk's reads, its busy time, the
    machine's idle CPU and, given a pid, that process's CPU."""

    def __init__(self, path, pid=None):
        st = os.stat(path)
        self.dev, self.pid = (os.major(st.st_dev), os.minor(st.st_dev)), pid
        self.start = self.sample()

    def sample(self):
        disk = (0, 0)
        with open("/proc/diskstats") as f:
            for line in f:
                x = line.split()
                if (int(x[0]), int(x[1])) == self.dev:
                    disk = (int(x[3]), int(x[12]))  # reads completed, ms spent doing I/O
        with open("/proc/stat") as f:
            cpu = f.readline().split()[1:]
        idle = (int(cpu[3]) + int(cpu[4])) / os.sysconf("SC_CLK_TCK")
        proc = epochs.proc_stats(self.pid)[0] if self.pid else float("nan")
        return time.perf_counter(), disk, idle, proc

    def report(self, files):
        (t0, d0, i0, p0), (t1, d1, i1, p1) = self.start, self.sample()
        dt = t1 - t0
        out = f"{(d1[0] - d0[0]) / files:.2f} disk reads/file, disk busy {(d1[1] - d0[1]) / 10 / dt:.0f}%, " \
              f"CPU idle {100 * (i1 - i0) / dt / os.cpu_count():.0f}%"
        if self.pid:
            out += f", daemon {1e6 * (p1 - p0) / files:.0f} us/file"
        return out


def read_buffered(path):
    """A reader as torchvision's default loader opens an image: `open(path, "rb")`."""
    with open(path, "rb") as f:
        return len(f.read())


class Ceiling:
    """benches/fuse_ceiling.rs over the raw files: what any passthrough FUSE mount pays per file
    (LOOKUP, OPEN, RELEASE) and nothing else. Mounted once: the page-cache drop before each epoch
    drops its entries in the kernel too, as a remount would."""

    BINARY = os.path.join(epochs.ROOT, "target/release/examples/fuse_ceiling")

    def __init__(self, tree, mnt):
        if not os.path.exists(self.BINARY):
            raise SystemExit(f"{self.BINARY} missing: cargo build --release --example fuse_ceiling")
        os.makedirs(mnt, exist_ok=True)
        self.proc = subprocess.Popen([self.BINARY, tree, mnt], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "mounted":
            raise SystemExit("fuse_ceiling did not mount")

    def close(self):
        self.proc.stdin.close()  # it unmounts and exits
        self.proc.wait(timeout=60)


def list_dirs(paths):
    """Lists every directory holding one of `paths`, as a dataset class does when it is built."""
    for d in sorted({os.path.dirname(p) for p in paths}):
        os.listdir(d)


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
    ap.add_argument("--list-first", action="store_true",
                    help="before each timed epoch (untimed, after the page-cache drop) list every directory the "
                    "epoch reads, as hoardfs.Dataset and torchvision's ImageFolder do when they are built; "
                    "through a mount the listing's READDIRPLUS leaves each file's entry in the kernel, so "
                    "the epoch's opens need no LOOKUP (within --metadata-ttl)")
    ap.add_argument("--reader-processes", action="store_true",
                    help="readers are processes, as a PyTorch DataLoader's workers are, not threads of one "
                    "Python process (whose interpreter lock the raw epoch's readers wait for)")
    ap.add_argument("--ceiling", action="store_true",
                    help="also read each round's files through benches/fuse_ceiling.rs (a passthrough FUSE mount "
                    "that does nothing else; build it with `cargo build --release --example fuse_ceiling`), and "
                    "report each binary against it as well as against raw disk")
    args = ap.parse_args()
    epochs.READERS = args.readers
    if args.open == "buffered":
        epochs.read_file = read_buffered
    # Forked once, before any timing (and after read_file is chosen, which the workers inherit).
    pool = multiprocessing.get_context("fork").Pool(args.readers) if args.reader_processes else None
    scale.bench_env(args.work)
    root, bucket = os.path.join(args.work, "s3root"), "scale"
    mnt, cache = os.path.join(args.work, "mnt-hoardfs"), os.path.join(args.work, "cache-hoardfs")
    if not os.path.isdir(cache):
        raise SystemExit(f"{cache} missing: run benches/scale.sh --objects {args.objects} --work {args.work} first")
    keys = cachegen.keys(args.objects, args.dirs)
    raw_paths = [os.path.join(root, bucket, k) for k in keys]
    paths = [os.path.join(mnt, k) for k in keys]
    rows = {b: {"remount (s)": [], "after remount (x raw)": [], "warm (x raw)": []} for b in args.binaries}
    if args.ceiling:
        for r in rows.values():
            r.update({"after remount (x ceiling)": [], "warm (x ceiling)": []})
    listed = list_dirs if args.list_first else (lambda paths: None)
    server = S3sFs(root, args.work)
    ceiling = Ceiling(os.path.join(root, bucket), os.path.join(args.work, "mnt-ceiling")) if args.ceiling else None
    ceiling_paths = [os.path.join(args.work, "mnt-ceiling", k) for k in keys]

    def measured(paths, seed, where, pid=None):
        """One timed epoch over `paths` after a page-cache drop (and the listing, if asked): its
        files/s, and where its time went (the disk holding `where`, and process `pid`)."""
        drop_page_cache()
        listed(paths)
        costs = Costs(where, pid)
        files_per_s = epochs.epoch(paths, seed, pool=pool)["files_per_s"]
        return files_per_s, costs.report(len(keys))

    try:
        for r in range(args.rounds):
            for b in args.binaries:
                scale.HOARDFS, *flags = b.split()
                raw, raw_costs = measured(raw_paths, 7 + r, root)
                ceil = measured(ceiling_paths, 7 + r, root)[0] if ceiling else None
                fs = scale.Hoardfs(server, bucket, mnt, cache, flags)
                drop_page_cache()
                remount = fs.mount()
                try:
                    after, after_costs = measured(paths, 3 + r, cache, fs.pid)
                    warm, warm_costs = measured(paths, 11 + r, cache, fs.pid)
                finally:
                    fs.unmount()
                values = (remount, after / raw, warm / raw) + ((after / ceil, warm / ceil) if ceil else ())
                for k, v in zip(rows[b], values):
                    rows[b][k].append(v)
                through = f", through fuse_ceiling {ceil:.0f} ({ceil / raw:.2f}x)" if ceil else ""
                print(f"round {r} {b}: raw {raw:.0f} files/s{through}, remount {remount:.2f} s, after remount {after:.0f} "
                      f"({after / raw:.2f}x), warm {warm:.0f} ({warm / raw:.2f}x)\n"
                      f"    raw: {raw_costs}\n    after remount: {after_costs}\n    warm: {warm_costs}", flush=True)
    finally:
        server.stop()
        if ceiling:
            ceiling.close()
    print(f"\n{args.objects} objects, {args.rounds} interleaved rounds, medians")
    for b, r in rows.items():
        print(f"{b}: " + ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in r.items()))


if __name__ == "__main__":
    main()
