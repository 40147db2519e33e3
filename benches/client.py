#!/usr/bin/env python3
"""What one GET costs the client: hoardfs's own GET path against the AWS SDK's request pipeline
(`--sdk-gets`), with `curl` as the baseline in the same round.

    benches/client.sh                       # 20,000 x 16 KiB, 8 in flight, 3 rounds
    benches/client.sh --objects 100000 --concurrency 32 --rounds 5

Why: a cold epoch of small files is a ratio of CPU per file when the server shares the client's
cores (docs/DESIGN.md, "Where a cold small file's time goes"). This isolates the request path:
no FUSE, no cache, only GETs of whole objects. Each round, page cache dropped before each run:
`curl --parallel` (epochs.curl_gets), then `client_gets hoardfs` and `client_gets sdk`: the
request a cold one-block object costs a mount (`S3Client::get_whole`), sent by hoardfs's own
GET path (src/object/get/) and by the SDK's. Reported:
medians of GETs/s, of each run's ratio to its round's `curl`, and of client and server CPU per GET
(`/proc/PID/stat`; curl's from this process's children). Not part of CI.

The objects are written straight into the bench server's directory (benches/s3-server, s3s-fs),
as in scale.py; what that server lacks is said there.
"""
import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import epochs  # noqa: E402  (server, curl baseline, page-cache drop)
import scale  # noqa: E402  (environment, object generation)
from epochs import S3sFs, drop_page_cache  # noqa: E402

CLIENT = os.path.join(epochs.ROOT, "target/release/examples/client_gets")


def cpu_seconds(pid):
    return epochs.proc_stats(pid)[0]


def children_cpu():
    t = os.times()
    return t.children_user + t.children_system


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=int, default=20000)
    ap.add_argument("--size-kib", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=8, help="GETs in flight, for every client")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", default=None, help="default: /var/tmp/hoardfs-client-<objects>")
    args = ap.parse_args()
    work = args.work or f"/var/tmp/hoardfs-client-{args.objects}"
    scale.bench_env(work)
    root, bucket = os.path.join(work, "s3root"), "scale"
    keys = scale.generate(root, bucket, args.objects, 100, args.size_kib << 10)
    listing = os.path.join(work, "keys.tsv")
    with open(listing, "w") as f:
        for k in keys:
            with open(os.path.join(root, bucket, k), "rb") as body:
                f.write(f'{k}\t"{hashlib.md5(body.read()).hexdigest()}"\n')
    server = S3sFs(root, work)
    rows = {}
    try:
        for r in range(args.rounds):
            for name in ("curl", "hoardfs", "sdk"):
                drop_page_cache()
                s0, c0, t0 = cpu_seconds(server.proc.pid), children_cpu(), time.perf_counter()
                if name == "curl":
                    epochs.curl_gets(server, bucket, [(k, 0, None) for k in keys], args.concurrency)
                else:
                    out = subprocess.run([CLIENT, server.endpoint, bucket, listing, str(args.concurrency), name],
                                         check=True, capture_output=True, text=True).stdout
                    json.loads(out)  # the client's own line; a malformed one means it failed
                dt = time.perf_counter() - t0
                row = {"gets_per_s": len(keys) / dt, "client_us": 1e6 * (children_cpu() - c0) / len(keys),
                       "server_us": 1e6 * (cpu_seconds(server.proc.pid) - s0) / len(keys)}
                if name != "curl":
                    row["x_curl"] = row["gets_per_s"] / rows["curl"][-1]["gets_per_s"]
                rows.setdefault(name, []).append(row)
                print(f"round {r + 1} {name:7s} {row['gets_per_s']:7.0f} GETs/s, client {row['client_us']:4.0f} µs/GET, "
                      f"server {row['server_us']:4.0f} µs/GET", flush=True)
    finally:
        server.stop()
    med = lambda name, k: statistics.median(x[k] for x in rows[name])  # noqa: E731
    print(f"\n{args.objects} x {args.size_kib} KiB, {args.concurrency} in flight, medians of {args.rounds} rounds "
          f"(server: {S3sFs.name})")
    print(f"{'client':44s} {'GETs/s':>8s} {'x curl':>7s} {'client µs/GET':>14s} {'server µs/GET':>14s}")
    labels = {"curl": "curl --parallel (baseline)", "hoardfs": "hoardfs get_whole, own GET path",
              "sdk": "hoardfs get_whole, --sdk-gets (AWS SDK)"}
    for name in ("curl", "hoardfs", "sdk"):
        x = "1.00" if name == "curl" else f"{med(name, 'x_curl'):.2f}"
        print(f"{labels[name]:44s} {med(name, 'gets_per_s'):8.0f} {x:>7s} {med(name, 'client_us'):14.0f} "
              f"{med(name, 'server_us'):14.0f}")


if __name__ == "__main__":
    main()
