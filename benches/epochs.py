#!/usr/bin/env python3
"""Epoch benchmark: hoardfs against the physical limits and its peers, on one machine, in one run.

    benches/run.sh                    # defaults below; HOARDFS_BENCH_DEPS=1 also installs rclone, s3fs, fio
    benches/run.sh --server moto      # the slow Python server the first tables used

Starts a local S3 server on 127.0.0.1 (by default benches/s3-server, s3s-fs's directory backend,
whose objects are written straight into its directory; it serves a GET several times faster than
moto, so the cold rows show the mounts' own costs), puts two datasets there, and for each system
runs epoch 1 (cold), epoch 2 (warm, page cache dropped) and, after a remount, epoch 3; each epoch
reads every file once with 8 parallel readers in a fresh shuffled order. Baselines measured in the
same run: raw reads of the same bytes from the cache's file system (the disk limit) and direct
8 MiB ranged GETs from the same server with `curl --parallel` (the network limit). "hoardfs +
hints" also writes each epoch's order to the mount's prefetch control file first, as a training job
would. Warm and remount epochs are repeated; before each of them a raw-disk round runs, and "x disk"
is the median of the per-round ratios (single rounds on these VMs swing by 2x, and the disk with
them). Prints MB/s, files/s, data GETs, daemon CPU seconds and peak RSS, and ratios.
"""
import argparse
import concurrent.futures as cf
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

import boto3
from botocore.config import Config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
READERS = 8
CHUNK = 1 << 20
# Request size of the network-limit baseline: hoardfs's default --max-get-size.
NET_CHUNK = 8 << 20
# Extra `hoardfs mount` flags (--hoardfs-args), for trying settings.
HOARDFS_ARGS = []
# benches/s3-server: s3s-fs's directory backend with TCP_NODELAY (see its main.rs for why).
SERVER = os.path.join(ROOT, "benches/s3-server/target/release/hoardfs-bench-s3")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def drop_page_cache():
    subprocess.run(["sync"])
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3")
    except OSError:
        print("warning: cannot drop the page cache (not root); warm numbers include it", file=sys.stderr)


def unmount(mnt, pid, seconds=5):
    """Unmounts `mnt` and waits up to `seconds` for the daemon `pid` to exit (it writes its
    checkpoint, or finishes a fetch, after the unmount returns)."""
    subprocess.run(["fusermount3", "-u", mnt], check=True)
    deadline = time.monotonic() + seconds
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)


def read_file(path):
    n = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            b = f.read(CHUNK)
            if not b:
                return n
            n += len(b)


def read_many(paths):
    """A reader process's share of an epoch (`epoch`'s `pool`)."""
    return sum(read_file(p) for p in paths)


def epoch(paths, seed, hint=None, pool=None):
    """Reads every path once in a seeded shuffled order; `hint(order)` first, inside the timing.
    The readers are READERS threads, or the worker processes of `pool` (a `multiprocessing`
    pool, as a PyTorch DataLoader's workers are), which take 16 files of the order at a time."""
    order = list(paths)
    random.Random(seed).shuffle(order)
    t = time.perf_counter()
    if hint:
        hint(order)
    if pool:
        total = sum(pool.imap_unordered(read_many, (order[i:i + 16] for i in range(0, len(order), 16))))
    else:
        with cf.ThreadPoolExecutor(READERS) as ex:
            total = sum(ex.map(read_file, order))
    dt = time.perf_counter() - t
    return {"seconds": dt, "bytes": total, "files": len(order), "mbps": total / 1e6 / dt, "files_per_s": len(order) / dt}


def proc_stats(pid):
    """CPU seconds and peak RSS (MiB) of a process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        with open(f"/proc/{pid}/status") as f:
            hwm = next(int(l.split()[1]) for l in f if l.startswith("VmHWM"))
        return cpu, hwm / 1024
    except (OSError, StopIteration):
        return float("nan"), float("nan")


def client_when_up(endpoint, name):
    """A boto3 client of the S3 server at `endpoint`, once it answers (30 s at most)."""
    s3 = boto3.client("s3", endpoint_url=endpoint, config=Config(max_pool_connections=32))
    for _ in range(300):
        try:
            s3.list_buckets()
            return s3
        except Exception:
            time.sleep(0.1)
    raise SystemExit(f"{name} did not start")


class ServerProcess:
    """A local S3 server process; `s3` is a boto3 client of it once it answers."""

    def start(self, argv, log, name):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([a.format(port=self.port) for a in argv], stdout=subprocess.DEVNULL, stderr=open(log, "w"))
        self.s3 = client_when_up(self.endpoint, name)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


class Moto(ServerProcess):
    def __init__(self, workdir):
        self.start(["moto_server", "-H", "127.0.0.1", "-p", "{port}"], os.path.join(workdir, "moto.log"), "moto")

    def put(self, bucket, files):
        upload(self.s3, bucket, files)


class S3sFs(ServerProcess):
    """The bench server serving `root` on a free loopback port."""
    name = "benches/s3-server (s3s-fs 0.14.1 backend, TCP_NODELAY)"

    def __init__(self, root, workdir):
        if not os.path.exists(SERVER):
            raise SystemExit(f"{SERVER} missing: benches/prepare.sh builds it")
        self.root = root
        self.start([SERVER, "127.0.0.1:{port}", root], os.path.join(workdir, "s3s-fs.log"), "the benchmark S3 server")

    def put(self, bucket, files):
        """Writes the objects straight into the server's directory (a bucket is a directory)."""
        for key, body in files.items():
            path = os.path.join(self.root, bucket, key)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(body)


def upload(s3, bucket, files):
    s3.create_bucket(Bucket=bucket)
    with cf.ThreadPoolExecutor(8) as ex:
        list(ex.map(lambda kv: s3.put_object(Bucket=bucket, Key=kv[0], Body=kv[1]), files.items()))


def curl_gets(server, bucket, requests, readers):
    """GETs `requests` ((key, first byte, last byte or None for the whole object)) with `curl
    --parallel` (SigV4-signed, keep-alive), `readers` at a time; the network limit. boto3 is no
    baseline against a fast server: under the GIL it manages about 200 GETs/s."""
    cfg = os.path.join(os.path.dirname(SERVER), "curl-urls.txt")
    os.makedirs(os.path.dirname(cfg), exist_ok=True)
    with open(cfg, "w") as f:
        for key, first, last in requests:
            f.write(f'url = "{server.endpoint}/{bucket}/{key}"\noutput = "/dev/null"\n')
            if last is not None:
                f.write(f'range = "{first}-{last}"\n')
    t = time.perf_counter()
    subprocess.run(["curl", "-sSf", "--parallel", "--parallel-max", str(readers), "--aws-sigv4", "aws:amz:us-east-1:s3",
                    "--user", "bench:bench", "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD", "-K", cfg],
                   check=True, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def hoardfs_gets(addr):
    text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=5).read().decode()
    return next(int(l.split()[1]) for l in text.splitlines() if l.startswith("hoardfs_s3_get_requests_total"))


class Hoardfs:
    name = "hoardfs"

    def __init__(self, moto, bucket, mnt, cache):
        self.moto, self.bucket, self.mnt, self.cache = moto, bucket, mnt, cache
        self.metrics = f"127.0.0.1:{free_port()}"

    def mount(self):
        subprocess.run([os.environ.get("HOARDFS_BIN", os.path.join(ROOT, "target/release/hoardfs")), "mount", f"s3://{self.bucket}", self.mnt,
                        "--cache-dir", self.cache, "--endpoint-url", self.moto.endpoint, "--force-path-style",
                        "--metrics-addr", self.metrics] + HOARDFS_ARGS, check=True, stderr=subprocess.DEVNULL)
        self.pid = int(open(os.path.join(self.cache, "lock")).read())

    def gets(self):
        return hoardfs_gets(self.metrics)

    def unmount(self):
        unmount(self.mnt, self.pid)


class HoardfsHinted(Hoardfs):
    """hoardfs told each epoch's order through its prefetch control file, as
    hoardfs.HintingSampler does."""
    name = "hoardfs + hints"

    def hint(self, order):
        with open(os.path.join(self.mnt, ".hoardfs-prefetch"), "w") as f:
            f.write("".join(os.path.relpath(p, self.mnt) + "\n" for p in order))


class PeerMount:
    """A peer FUSE mounter run in the foreground; it counts no requests we can read."""

    def __init__(self, moto, bucket, mnt, cache):
        self.moto, self.bucket, self.mnt, self.cache = moto, bucket, mnt, cache

    def gets(self):
        return None

    def unmount(self):
        subprocess.run(["fusermount3", "-u", self.mnt])
        self.proc.wait()


class Rclone(PeerMount):
    name = "rclone vfs full"

    def mount(self):
        env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}  # rclone 1.60 rejects it
        env.update(RCLONE_CONFIG_BENCH_TYPE="s3", RCLONE_CONFIG_BENCH_PROVIDER="Other",
                   RCLONE_CONFIG_BENCH_ENDPOINT=self.moto.endpoint, RCLONE_CONFIG_BENCH_ACCESS_KEY_ID="bench",
                   RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY="bench", RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE="true")
        self.proc = subprocess.Popen(["rclone", "mount", f"bench:{self.bucket}", self.mnt, "--read-only",
                                      "--vfs-cache-mode", "full", "--cache-dir", self.cache],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.pid = self.proc.pid
        wait_mounted(self.mnt, self.proc)


class S3fs(PeerMount):
    name = "s3fs use_cache"

    def mount(self):
        pw = os.path.join(os.path.dirname(self.cache), "s3fs.passwd")
        with open(pw, "w") as f:
            f.write("bench:bench\n")
        os.chmod(pw, 0o600)
        self.proc = subprocess.Popen(["s3fs", self.bucket, self.mnt, "-f", "-o", f"url={self.moto.endpoint}",
                                      "-o", "use_path_request_style", "-o", f"passwd_file={pw}", "-o", "ro",
                                      "-o", f"use_cache={self.cache}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.pid = self.proc.pid
        wait_mounted(self.mnt, self.proc)


def wait_mounted(mnt, proc=None, seconds=600):
    """Waits for `mnt` to be a mount point: up to `seconds` (a peer's remount over a cache of
    10^5 files takes more than the few seconds a fresh mount does), or until `proc` exits."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if os.path.ismount(mnt):
            return
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"{mnt} did not mount: the mounter exited with status {proc.returncode}")
        time.sleep(0.05)
    raise SystemExit(f"{mnt} did not mount within {seconds} s")


def files_under(root):
    return [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]


def run_system(cls, moto, bucket, work, repeat, raw_round):
    """Cold, warm and after-remount epochs of one system; `raw_round()` runs one raw-disk epoch,
    run before each warm and remount round so that each ratio compares neighbours in time."""
    mnt = os.path.join(work, f"mnt-{cls.__name__}")
    cache = os.path.join(work, f"cache-{cls.__name__}-{bucket}")
    os.makedirs(mnt, exist_ok=True)
    shutil.rmtree(cache, ignore_errors=True)
    os.makedirs(cache)
    sys_ = cls(moto, bucket, mnt, cache)
    sys_.mount()
    paths = files_under(mnt)
    out = {}
    drop_page_cache()
    g0 = sys_.gets()
    hint = getattr(sys_, "hint", None)
    out["epoch 1 (cold)"] = epoch(paths, 1, hint)
    out["epoch 1 (cold)"]["gets"] = None if g0 is None else sys_.gets() - g0
    warm = []
    for r in range(repeat):
        raw = raw_round(r)
        drop_page_cache()
        g0 = sys_.gets()
        e = epoch(paths, 2 + r, hint)
        e["gets"] = None if g0 is None else sys_.gets() - g0
        e["x_disk"] = raw["seconds"] / e["seconds"]
        warm.append(e)
    out["epoch 2 (warm)"] = median_of(warm)
    cpu, rss = proc_stats(sys_.pid)
    sys_.unmount()
    # Epoch 3 is the first epoch of a new mount of the same cache: each repeat remounts.
    remount = []
    for r in range(repeat):
        raw = raw_round(r)
        sys_.mount()
        paths = files_under(mnt)
        drop_page_cache()
        g0 = sys_.gets()
        e = epoch(paths, 10 + r, hint)
        e["gets"] = None if g0 is None else sys_.gets() - g0
        e["x_disk"] = raw["seconds"] / e["seconds"]
        remount.append(e)
        c, m = proc_stats(sys_.pid)
        cpu, rss = cpu + c, max(rss, m)
        sys_.unmount()
    out["epoch 3 (remount)"] = median_of(remount)
    out["cpu_s"] = cpu
    out["peak_rss_mib"] = rss
    return out


def median_of(runs):
    m = sorted(runs, key=lambda e: e["mbps"])[len(runs) // 2]
    out = dict(m, runs=[round(e["mbps"], 1) for e in runs])
    if all("x_disk" in e for e in runs):
        out["x_disk"] = statistics.median(e["x_disk"] for e in runs)
    return out


class RawDisk:
    """The same bytes as plain files on the cache's file system: the disk limit. Every round is
    kept, so systems can be compared with the rounds next to theirs."""

    def __init__(self, files, where):
        self.dir = os.path.join(where, "raw-baseline")
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        self.paths = []
        for i, v in enumerate(files.values()):
            p = os.path.join(self.dir, f"{i:06d}")
            with open(p, "wb") as f:
                f.write(v)
            self.paths.append(p)
        self.rounds = []

    def round(self, seed):
        drop_page_cache()
        e = epoch(self.paths, 20 + seed)
        self.rounds.append(e)
        return e

    def summary(self):
        return median_of(self.rounds)

    def remove(self):
        shutil.rmtree(self.dir)


def direct_gets(server, bucket, files, repeat):
    """Every object in NET_CHUNK ranges, READERS requests at a time, in a shuffled order."""
    requests = [(k, start, min(len(v), start + NET_CHUNK) - 1) for k, v in files.items() for start in range(0, len(v), NET_CHUNK)]
    total = sum(len(v) for v in files.values())
    runs = []
    for r in range(repeat):
        random.Random(30 + r).shuffle(requests)
        dt = curl_gets(server, bucket, requests, READERS)
        runs.append({"seconds": dt, "bytes": total, "files": len(files), "mbps": total / 1e6 / dt, "files_per_s": len(files) / dt})
    return median_of(runs)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=int(os.environ.get("BENCH_SHARDS", 4)))
    ap.add_argument("--shard-mib", type=int, default=int(os.environ.get("BENCH_SHARD_MIB", 64)))
    ap.add_argument("--small-files", type=int, default=int(os.environ.get("BENCH_SMALL_FILES", 2000)))
    ap.add_argument("--small-kib", type=int, default=int(os.environ.get("BENCH_SMALL_KIB", 128)))
    ap.add_argument("--repeat", type=int, default=3, help="warm and baseline runs; the median is reported")
    ap.add_argument("--work", default=os.environ.get("BENCH_WORK", "/var/tmp/hoardfs-bench"))
    ap.add_argument("--json", help="also write results here")
    ap.add_argument("--readers", type=int, default=READERS, help="parallel readers per epoch")
    ap.add_argument("--hoardfs-args", default="", help="extra flags for `hoardfs mount`, as one string")
    ap.add_argument("--systems", default="all", help="comma-separated subset: hoardfs,hints,rclone,s3fs")
    ap.add_argument("--datasets", default="large,small", help="comma-separated subset: large,small")
    ap.add_argument("--server", default="bench", choices=["bench", "moto"],
                    help="bench: benches/s3-server, objects written into its directory (fast); moto: uploaded (slow)")
    args = ap.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_REGION", "us-east-1")
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    os.makedirs(args.work, exist_ok=True)
    if args.server == "bench":
        shutil.rmtree(os.path.join(args.work, "s3root"), ignore_errors=True)
        os.makedirs(os.path.join(args.work, "s3root"))
        server = S3sFs(os.path.join(args.work, "s3root"), args.work)
    else:
        server = Moto(args.work)
    try:
        datasets = {
            "large": {f"shard-{i:03d}.tar": os.urandom(args.shard_mib << 20) for i in range(args.shards)},
            "small": {f"class-{i % 100:03d}/img-{i:06d}.jpg": os.urandom(args.small_kib << 10) for i in range(args.small_files)},
        }
        HOARDFS_ARGS.extend(args.hoardfs_args.split())
        globals()["READERS"] = args.readers
        systems = [Hoardfs, HoardfsHinted] + [c for c, b in ((Rclone, "rclone"), (S3fs, "s3fs")) if shutil.which(b)]
        if args.systems != "all":
            wanted = args.systems.split(",")
            systems = [c for c in systems if c.__name__.lower().replace("hoardfshinted", "hints") in wanted]
        datasets = {k: v for k, v in datasets.items() if k in args.datasets.split(",")}
        results = {}
        for name, files in datasets.items():
            bucket = f"bench-{name}"
            server.put(bucket, files)
            raw = RawDisk(files, args.work)
            res = {"direct ranged GETs": direct_gets(server, bucket, files, args.repeat)}
            for cls in systems:
                try:
                    res[cls.name] = run_system(cls, server, bucket, args.work, args.repeat, raw.round)
                except (Exception, SystemExit) as e:  # a peer that fails is reported, not fatal
                    print(f"{cls.name} on {name}: failed: {e}", file=sys.stderr)
                    subprocess.run(["fusermount3", "-u", "-z", os.path.join(args.work, f"mnt-{cls.__name__}")], stderr=subprocess.DEVNULL)
            res["raw disk"] = raw.summary()
            raw.remove()
            results[name] = res
        report(results, args, systems, getattr(server, "name", "moto"))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
    finally:
        server.stop()


def report(results, args, systems, server):
    cpu = subprocess.run(["sh", "-c", "nproc; grep -m1 'model name' /proc/cpuinfo | cut -d: -f2; uname -r"],
                         capture_output=True, text=True).stdout.split("\n")
    print(f"\nmachine: {cpu[0]} vCPU,{cpu[1]}, kernel {cpu[2]}; server: {server} on 127.0.0.1; {READERS} readers; "
          f"median of {args.repeat} for warm, remount and baseline rows; x disk of warm and remount rows: "
          f"median of ratios to the raw-disk round run just before each")
    for name, res in results.items():
        unit = "files/s" if name == "small" else "MB/s"
        key = "files_per_s" if name == "small" else "mbps"
        disk, net = res["raw disk"][key], res["direct ranged GETs"][key]
        print(f"\n{name} dataset ({'%d x %d KiB' % (args.small_files, args.small_kib) if name == 'small' else '%d x %d MiB' % (args.shards, args.shard_mib)})")
        print(f"  {'system':18} {'epoch':18} {unit:>9} {'MB/s':>8} {'GETs':>6} {'x disk':>7} {'x net':>6}")
        print(f"  {'raw disk':18} {'-':18} {disk:9.0f} {res['raw disk']['mbps']:8.0f} {'':>6} {1:7.2f} {'':>6}")
        print(f"  {'direct GETs':18} {'-':18} {net:9.0f} {res['direct ranged GETs']['mbps']:8.0f} {'':>6} {'':>7} {1:6.2f}")
        for cls in (c for c in systems if c.name in res):
            r = res[cls.name]
            for ep in ("epoch 1 (cold)", "epoch 2 (warm)", "epoch 3 (remount)"):
                e = r[ep]
                gets = "-" if e.get("gets") is None else str(e["gets"])
                x_disk = e.get("x_disk", e[key] / disk)
                print(f"  {cls.name:18} {ep:18} {e[key]:9.0f} {e['mbps']:8.0f} {gets:>6} {x_disk:7.2f} {e[key] / net:6.2f}")
            print(f"  {cls.name:18} daemon CPU {r['cpu_s']:.1f} s, peak RSS {r['peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
