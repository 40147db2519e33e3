#!/usr/bin/env python3
"""Scale benchmark: hoardfs at the size of a real training set, in one run.

    benches/scale.sh --objects 250000            # ImageNet's shape: 16 KiB objects in 500 dirs
    benches/scale.sh --objects 1281167 --size 1 --metadata-only   # ImageNet-1k's file count
    benches/scale.sh --objects 1281167 --dirs 1000 --size 1 --metadata-only --prefilled
        # ImageNet-1k's count, all cached: hoardfs's cache dir written directly by cachegen.py,
        # then the mount that reads its catalog, the remount from its checkpoint, RSS, cache
        # stat and cache ls (and, with --sample N, an epoch over N files after the remount)

The objects are written straight into a directory served on 127.0.0.1 by benches/s3-server
(s3s-fs's directory backend from crates.io behind a listener with TCP_NODELAY; uploading 10^5
objects through moto takes 13 minutes). One run prints, beside the raw-disk epoch over the same files with the
same readers: the first listing (`find` with a `-size` test: LIST + a stat of every file), the
cold, warm and after-remount epochs (files/s and x raw), the remount time with the page cache
dropped, the daemon's RSS after each phase and its peak, the cache dir's bytes and files, and the
time of `hoardfs cache stat` and `cache ls`. `--systems hoardfs,rclone,s3fs` adds the peers.

What that server lacks (so what this benchmark cannot show): it streams bodies in 4 KiB chunks,
which caps large GETs (the direct-GET row says how fast it is for these objects); it ignores If-Match, has no GetObjectAttributes, lists no ETags (benches/s3-server adds them), and stores no
additional checksums for objects written to its directory directly, so every object is verified
by its MD5 ETag. Cold rows measure s3s-fs as much as hoardfs; warm, remount, listing-after-remount,
memory and cache-dir rows do not touch the server.
"""
import argparse
import concurrent.futures as cf
import os
import random
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cachegen  # noqa: E402  (writes a cache dir directly, for --prefilled)
import epochs  # noqa: E402  (shares the epoch runner, page-cache drop, peers and /proc readers)
from epochs import S3sFs, drop_page_cache, epoch, proc_stats  # noqa: E402

ROOT = epochs.ROOT
HOARDFS = os.environ.get("HOARDFS_BIN", os.path.join(ROOT, "target/release/hoardfs"))


def bench_env(work):
    """The bench server's credentials for every client, no instance metadata, and the work dir."""
    for k, v in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench"), ("AWS_REGION", "us-east-1")):
        os.environ[k] = v
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    os.makedirs(work, exist_ok=True)


def generate(root, bucket, n, dirs, size):
    """Writes n objects of `size` bytes into `root/bucket/dir-XXXX/`; returns their keys. Reuses a
    complete earlier generation of the same shape (it takes minutes at 10^6)."""
    stamp = os.path.join(root, f".generated-{bucket}-{n}-{dirs}-{size}")
    keys = cachegen.keys(n, dirs)
    if os.path.exists(stamp):
        return keys
    shutil.rmtree(root, ignore_errors=True)
    for d in range(dirs):
        os.makedirs(os.path.join(root, bucket, f"dir-{d:04d}"))
    block = os.urandom(max(size, 1) + 4096)

    def write(i):
        with open(os.path.join(root, bucket, keys[i]), "wb") as f:
            f.write(block[i % 4096:i % 4096 + size])  # distinct bytes per object, no RNG per file

    with cf.ThreadPoolExecutor(8) as ex:
        list(ex.map(write, range(n), chunksize=1024))
    open(stamp, "w").close()
    return keys


def direct_gets(server, bucket, keys, readers):
    """The network limit: each object fetched whole, `readers` at a time (epochs.curl_gets)."""
    dt = epochs.curl_gets(server, bucket, [(k, 0, None) for k in keys], readers)
    total = sum(os.path.getsize(os.path.join(server.root, bucket, k)) for k in keys)
    return {"files_per_s": len(keys) / dt, "mbps": total / 1e6 / dt}


def rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024
    except (OSError, StopIteration):
        return float("nan")


def tree_stats(path):
    files, used = 0, 0
    for d, _, fs in os.walk(path):
        for f in fs:
            try:
                st = os.lstat(os.path.join(d, f))
            except OSError:
                continue
            files += 1
            used += st.st_blocks * 512
    return files, used


def timed(cmd):
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def find_size(mnt):
    """The issue's metadata walk: LIST every directory and stat every file."""
    return timed(["find", mnt, "-type", "f", "-size", "+0", "-printf", ""])


class Hoardfs:
    name = "hoardfs"

    def __init__(self, server, bucket, mnt, cache, extra):
        self.server, self.bucket, self.mnt, self.cache, self.extra = server, bucket, mnt, cache, extra

    def mount(self):
        t = time.perf_counter()
        subprocess.run([HOARDFS, "mount", f"s3://{self.bucket}", self.mnt, "--cache-dir", self.cache,
                        "--endpoint-url", self.server.endpoint, "--force-path-style",
                        "--metadata-ttl", "indefinite"] + self.extra, check=True, stderr=subprocess.DEVNULL)
        self.pid = int(open(os.path.join(self.cache, "lock")).read())
        return time.perf_counter() - t

    def unmount(self):
        epochs.unmount(self.mnt, self.pid, seconds=20)


class Peer:
    """rclone or s3fs from epochs.py, mounted against s3s-fs."""

    def __init__(self, cls, server, bucket, mnt, cache):
        self.inner = cls(server, bucket, mnt, cache)
        self.name = cls.name

    def mount(self):
        t = time.perf_counter()
        self.inner.mount()
        self.pid = self.inner.pid
        return time.perf_counter() - t

    def unmount(self):
        self.inner.unmount()


def run_system(sys_, mnt, keys, readers, metadata_only, raw_fps, out):
    """Fills `out` phase by phase, so a system that fails later keeps the rows it finished."""
    paths = [os.path.join(mnt, k) for k in keys]
    drop_page_cache()
    out["mount (fresh)"] = sys_.mount()
    out["listing: find -size (first)"] = find_size(mnt)
    out["rss after listing"] = rss_mib(sys_.pid)
    if not metadata_only:
        for name, seed in (("epoch 1 (cold)", 1), ("epoch 2 (warm)", 2)):
            drop_page_cache()
            e = epoch(paths, seed)
            out[name] = e["files_per_s"]
            out[f"rss after {name}"] = rss_mib(sys_.pid)
    out["peak rss (first mount)"] = proc_stats(sys_.pid)[1]
    sys_.unmount()
    drop_page_cache()
    out["remount, page cache dropped (s)"] = sys_.mount()
    out["rss after remount"] = rss_mib(sys_.pid)
    if not metadata_only:
        drop_page_cache()
        out["epoch 3 (after remount)"] = epoch(paths, 3)["files_per_s"]
    drop_page_cache()
    out["find -size after remount (s)"] = find_size(mnt)
    out["peak rss (remount)"] = proc_stats(sys_.pid)[1]
    sys_.unmount()
    return out


def run_prefilled(sys_, mnt, keys, cache, sample):
    """A cache of every object written directly (cachegen.py): the mount that reads its catalog,
    the remount from the checkpoint that mount leaves, an epoch over a sample after it."""
    out = {}
    drop_page_cache()
    out["mount over the written cache (s)"] = sys_.mount()
    out["rss after mount"] = rss_mib(sys_.pid)
    sys_.unmount()
    drop_page_cache()
    out["remount, page cache dropped (s)"] = sys_.mount()
    out["rss after remount"] = rss_mib(sys_.pid)
    if sample:
        drop_page_cache()
        paths = [os.path.join(mnt, k) for k in random.Random(9).sample(keys, min(sample, len(keys)))]
        out["epoch over a sample (after remount)"] = epoch(paths, 3)["files_per_s"]
        out["rss after the sample"] = rss_mib(sys_.pid)
    out["peak rss (remount)"] = proc_stats(sys_.pid)[1]
    sys_.unmount()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=int, default=250_000)
    ap.add_argument("--dirs", type=int, default=500)
    ap.add_argument("--size", type=int, default=16 << 10, help="bytes per object")
    ap.add_argument("--readers", type=int, default=8)
    ap.add_argument("--metadata-only", action="store_true", help="list, stat, remount and cache stat only")
    ap.add_argument("--prefilled", action="store_true",
                    help="write hoardfs's cache dir directly (benches/cachegen.py) and measure mount, remount, RSS, "
                         "cache stat and cache ls over it, and an epoch over --sample files (hoardfs only)")
    ap.add_argument("--sample", type=int, default=0,
                    help="with --prefilled: files read after the remount (each directory they are in is listed "
                         "from the server first: the generated cache holds no stored listings)")
    ap.add_argument("--systems", default="hoardfs", help="comma-separated: hoardfs,rclone,s3fs")
    ap.add_argument("--hoardfs-args", default="", help="extra flags for `hoardfs mount`, as one string")
    ap.add_argument("--work", default=os.environ.get("BENCH_WORK", "/var/tmp/hoardfs-scale"))
    args = ap.parse_args()
    bench_env(args.work)
    root, bucket = os.path.join(args.work, "s3root"), "scale"
    t = time.perf_counter()
    keys = generate(root, bucket, args.objects, args.dirs, args.size)
    print(f"dataset: {args.objects} x {args.size} B in {args.dirs} dirs ({time.perf_counter() - t:.0f} s to generate)", flush=True)
    server = S3sFs(root, args.work)
    results = {}
    try:
        raw = [os.path.join(root, bucket, k) for k in keys]
        drop_page_cache()
        raw_fps = None if args.metadata_only else epoch(raw, 7)["files_per_s"]
        drop_page_cache()
        raw_find = find_size(os.path.join(root, bucket))
        sample = random.Random(5).sample(keys, min(len(keys), 20_000))
        net = direct_gets(server, bucket, sample, args.readers)
        for name in args.systems.split(","):
            mnt = os.path.join(args.work, f"mnt-{name}")
            cache = os.path.join(args.work, f"cache-{name}")
            os.makedirs(mnt, exist_ok=True)
            shutil.rmtree(cache, ignore_errors=True)
            if name == "hoardfs":
                sys_ = Hoardfs(server, bucket, mnt, cache, args.hoardfs_args.split())
            else:
                os.makedirs(cache)
                sys_ = Peer({"rclone": epochs.Rclone, "s3fs": epochs.S3fs}[name], server, bucket, mnt, cache)
            r = {}
            try:
                if args.prefilled and name == "hoardfs":
                    t = time.perf_counter()
                    cachegen.generate(root, bucket, keys, cache)
                    print(f"cache dir written in {time.perf_counter() - t:.0f} s", flush=True)
                    r = run_prefilled(sys_, mnt, keys, cache, args.sample)
                else:
                    run_system(sys_, mnt, keys, args.readers, args.metadata_only, raw_fps, r)
            except (Exception, SystemExit) as e:
                print(f"{name}: failed: {e}", file=sys.stderr)
                subprocess.run(["fusermount3", "-u", "-z", mnt], stderr=subprocess.DEVNULL)
                if r:  # the phases it finished, and where it stopped
                    r["failed"] = str(e)
                    results[name] = r
                continue
            r["cache dir files"], r["cache dir bytes"] = tree_stats(cache)
            if name == "hoardfs":
                for cmd in ("stat", "ls"):
                    drop_page_cache()
                    r[f"cache {cmd} (s)"] = timed([HOARDFS, "cache", cmd, "--cache-dir", cache])
            results[name] = r
    finally:
        server.stop()
    data_bytes = args.objects * args.size
    print(f"\nmachine: {os.cpu_count()} vCPU; server: benches/s3-server (s3s-fs 0.14.1 backend, TCP_NODELAY) on 127.0.0.1; {args.readers} readers; single runs")
    if raw_fps:
        print(f"raw disk epoch over the same files: {raw_fps:.0f} files/s")
    print(f"find -size over the same tree on local disk (page cache dropped): {raw_find:.2f} s")
    print(f"direct GETs from the server (curl, {len(sample)} objects, {args.readers} parallel): {net['files_per_s']:.0f} files/s, {net['mbps']:.0f} MB/s")
    for name, r in results.items():
        print(f"\n{name}")
        for k, v in r.items():
            if k.startswith("epoch") and raw_fps:
                print(f"  {k:36} {v:10.0f} files/s  {v / raw_fps:5.2f}x raw  {v / net['files_per_s']:5.2f}x net")
            elif k.startswith("epoch"):
                print(f"  {k:36} {v:10.0f} files/s")
            elif k.startswith("rss") or k.startswith("peak"):
                print(f"  {k:36} {v:10.0f} MiB  ({v * 2**20 / args.objects:.0f} B per object)")
            elif k == "cache dir bytes":
                print(f"  {k:36} {v / 2**20:10.0f} MiB  ({(v / max(data_bytes, 1) - 1) * 100:+.0f} % over the data)")
            elif k.startswith("find") or k.startswith("listing"):
                print(f"  {k:36} {v:10.2f} s  ({v / raw_find:.1f}x local disk)")
            elif isinstance(v, float):
                print(f"  {k:36} {v:10.2f} s")
            else:
                print(f"  {k:36} {v:10}")


if __name__ == "__main__":
    main()
