#!/usr/bin/env python3
"""The cold small-file epoch, against direct GETs, with and without S3's latency.

    benches/cold.sh                                  # 20,000 x 16 KiB at 0 ms, 4,000 at 20 ms
    benches/cold.sh --delays 0,20 --rounds 3 --cache-root /mnt/nvme/bench
    HOARDFS_BIN=/path/to/hoardfs benches/cold.sh --variants "plain;hints:--prefetch-hints 8"
    benches/cold.sh --delays 0 --rounds 3 --variants "old:/tmp/hoardfs-old;new:/tmp/hoardfs-new"

Each round, per delay (the bench server answers every GET that many ms late,
HOARDFS_BENCH_GET_DELAY_MS), with the page cache dropped before each run: `curl --parallel` with
as many GETs in flight as there are readers (the baseline: what the readers would get from S3
directly), then one cold epoch per variant, each on a fresh mount and an empty cache. A variant
is `name` or `name:extra mount flags`, the flags optionally led by the path of another hoardfs
binary (for an A/B of two builds in the same rounds); a name starting with `hints` also writes the epoch's order
to the mount's prefetch control file first (inside the timing), as `hoardfs.HintingSampler` does.
Reported per variant: medians of files/s, of the ratio to the round's own `curl`, and of CPU per
file of the daemon, the server and the readers (`/proc/PID/stat`, this process's own threads).

Why two delays: with no delay the bench server and hoardfs share two cores, so the epoch is a
ratio of CPU per file (docs/DESIGN.md, "The co-located bound"); with 20 ms the epoch is a matter
of GETs in flight, as it is against S3.

The caches go under --cache-root (default: the work dir). Put it on the file system a user's cache
would be on: on ext4 without a journal (this bench machine's root), creating files soon after
deleting many scans the inode table for recently freed inodes, which a journaled ext4 or XFS does
not; each variant's cache is deleted before its run. The objects are written straight into the
bench server's directory (benches/s3-server, s3s-fs), as in scale.py; what that server lacks is
said there. Not part of CI.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import epochs  # noqa: E402  (server, curl baseline, page-cache drop, epoch runner)
import scale  # noqa: E402  (environment, object generation, mount wrapper)
from epochs import S3sFs, drop_page_cache, epoch  # noqa: E402


def cpu_seconds(pid):
    return epochs.proc_stats(pid)[0]


def own_cpu():
    t = os.times()
    return t.user + t.system, t.children_user + t.children_system


def variants(spec, default_binary):
    """(name, binary, mount flags) of each variant in `spec`."""
    out = []
    for v in filter(None, spec.split(";")):
        name, _, flags = v.partition(":")
        flags = flags.split()
        binary = flags.pop(0) if flags and os.path.isabs(flags[0]) else default_binary
        out.append((name.strip(), binary, flags))
    return out


def run_curl(server, bucket, keys, readers):
    s0, (_, c0) = cpu_seconds(server.proc.pid), own_cpu()
    dt = epochs.curl_gets(server, bucket, [(k, 0, None) for k in keys], readers)
    n = len(keys)
    return {"files/s": n / dt, "server us": 1e6 * (cpu_seconds(server.proc.pid) - s0) / n,
            "client us": 1e6 * (own_cpu()[1] - c0) / n}


def run_hoardfs(server, bucket, keys, name, binary, flags, work, cache_root, seed):
    cache = os.path.join(cache_root, "cache-cold")
    shutil.rmtree(cache, ignore_errors=True)
    mnt = os.path.join(work, "mnt-cold")
    os.makedirs(mnt, exist_ok=True)
    scale.HOARDFS = binary  # read by scale.Hoardfs when it mounts
    h = scale.Hoardfs(server, bucket, mnt, cache, flags)
    h.mount()
    try:
        # The listing is not part of the epoch: every file is stat'ed first, as a DataLoader's
        # dataset does when it builds its index.
        subprocess.run(["find", mnt, "-type", "f", "-size", "+0", "-printf", ""], check=True)
        drop_page_cache()
        hint = None
        if name.startswith("hints"):
            def hint(order):
                with open(os.path.join(mnt, ".hoardfs-prefetch"), "w") as f:
                    f.write("".join(os.path.relpath(p, mnt) + "\n" for p in order))
        s0, h0, (r0, _) = cpu_seconds(server.proc.pid), cpu_seconds(h.pid), own_cpu()
        r = epoch([os.path.join(mnt, k) for k in keys], seed, hint)
        n = len(keys)
        return {"files/s": r["files_per_s"], "server us": 1e6 * (cpu_seconds(server.proc.pid) - s0) / n,
                "daemon us": 1e6 * (cpu_seconds(h.pid) - h0) / n, "readers us": 1e6 * (own_cpu()[0] - r0) / n}
    finally:
        h.unmount()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=int, default=20000, help="objects generated (and read at 0 ms)")
    ap.add_argument("--delayed-objects", type=int, default=4000, help="objects read per epoch when GETs are delayed")
    ap.add_argument("--size-kib", type=int, default=16)
    ap.add_argument("--readers", type=int, default=epochs.READERS)
    ap.add_argument("--delays", default="0,20", help="comma-separated ms each GET is answered late")
    ap.add_argument("--variants", default="plain;hints", help="';'-separated name[:mount flags]")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--work", default=None, help="default: /var/tmp/hoardfs-scale-<objects>")
    ap.add_argument("--cache-root", default=None, help="where the mounts' caches go (default: the work dir)")
    args = ap.parse_args()
    epochs.READERS = args.readers  # read by epochs.epoch
    work = args.work or f"/var/tmp/hoardfs-scale-{args.objects // 1000}k"
    scale.bench_env(work)
    root, bucket = os.path.join(work, "s3root"), "scale"
    keys = scale.generate(root, bucket, args.objects, 100, args.size_kib << 10)
    cache_root = args.cache_root or work
    runs = variants(args.variants, scale.HOARDFS)
    table = {}
    for delay in [int(d) for d in args.delays.split(",")]:
        os.environ["HOARDFS_BENCH_GET_DELAY_MS"] = str(delay)
        some = keys if delay == 0 else keys[: args.delayed_objects]
        server = S3sFs(root, work)
        try:
            for rnd in range(args.rounds):
                drop_page_cache()
                base = run_curl(server, bucket, some, args.readers)
                table.setdefault((delay, "curl"), []).append(dict(base, ratio=1.0, files=len(some)))
                print(f"{delay} ms round {rnd + 1}: curl {base['files/s']:.0f} files/s", flush=True)
                for name, binary, flags in runs:
                    r = run_hoardfs(server, bucket, some, name, binary, flags, work, cache_root, 100 + rnd)
                    r["ratio"], r["files"] = r["files/s"] / base["files/s"], len(some)
                    table.setdefault((delay, name), []).append(r)
                    print(f"{delay} ms round {rnd + 1}: {name} {r['files/s']:.0f} files/s ({r['ratio']:.2f}x)", flush=True)
        finally:
            server.stop()
    print(f"\nmachine: {os.cpu_count()} vCPU; server: {S3sFs.name} on 127.0.0.1; {args.readers} readers; "
          f"{args.size_kib} KiB objects; caches under {cache_root}; medians of {args.rounds} rounds")
    print(f"{'delay':>6} {'run':10} {'files':>6} {'files/s':>8} {'x curl':>7} {'daemon':>8} {'server':>8} {'readers':>8}  (CPU µs per file)")
    med = statistics.median
    for (delay, name), rows in table.items():
        n = rows[0]["files"]
        client = med(r["client us"] for r in rows) if name == "curl" else med(r["readers us"] for r in rows)
        daemon = "" if name == "curl" else f"{med(r['daemon us'] for r in rows):.0f}"
        print(f"{delay:>4}ms {name:10} {n:>6} {med(r['files/s'] for r in rows):>8.0f} {med(r['ratio'] for r in rows):>6.2f}x "
              f"{daemon:>8} {med(r['server us'] for r in rows):>8.0f} {client:>8.0f}")


if __name__ == "__main__":
    main()
