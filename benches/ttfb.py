#!/usr/bin/env python3
"""Time to first byte of a cold large object, against a direct GET of its first 8 MiB.

    benches/ttfb.sh                       # 2 GiB objects, 3 rounds
    benches/ttfb.sh --size-mib 512 --rounds 5

Puts two objects of --size-mib into a local S3 server on 127.0.0.1: one uploaded in a single PUT with a CRC32
of the whole object (one verification unit: the whole object), one uploaded in 8 MiB parts with
CRC32 (a composite checksum: one unit per part). For each, with an empty cache dir every round:
the time from open(2) to the first 64 KiB read of a fresh mount, in `--verify strict` (the
default) and `--verify best-effort`. The baseline, measured in the same run between rounds:
`curl` fetching bytes 0-8 MiB of the same object from the same server (the issue's yardstick).
Prints medians and the ratio to the baseline.

The server is LocalStack's S3 (the venv scripts/deps.sh installs for tests/composite_e2e.rs), run
in a network namespace of this process with only a loopback interface: it lists part checksums,
so the composite object is verified part by part as on S3. Without that venv, moto (which lists
no part checksums: its composite object is then unverifiable and served blake3-checked only, so
its strict row says nothing about per-part verification). Not benches/s3-server: s3s-fs derives
an object's ETag by reading the whole file with MD5 on every GET, ranged or not, so a ranged GET
of a 2 GiB object costs seconds for any client and would hide what this measures.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import epochs  # noqa: E402  (servers, page-cache drop, unmount)
import scale  # noqa: E402  (credentials and environment of the bench servers)
from epochs import ROOT, Moto, drop_page_cache  # noqa: E402

HOARDFS = os.environ.get("HOARDFS_BIN", os.path.join(ROOT, "target/release/hoardfs"))
PART = 8 << 20
FIRST = 64 << 10


LOCALSTACK = os.environ.get("HOARDFS_LOCALSTACK_VENV", "/var/tmp/hoardfs-localstack")


def isolate_network():
    """Re-runs this script in a new network namespace whose only interface is loopback."""
    if os.environ.get("HOARDFS_TTFB_ISOLATED"):
        return
    os.environ["HOARDFS_TTFB_ISOLATED"] = "1"
    script = "ip link set lo up && exec \"$0\" \"$@\""
    os.execvp("unshare", ["unshare", "--net", "sh", "-c", script, sys.executable, os.path.abspath(__file__)] + sys.argv[1:])


class LocalStack(epochs.ServerProcess):
    name = "LocalStack S3"

    def __init__(self, workdir):
        state = os.path.join(workdir, "localstack")
        os.makedirs(state, exist_ok=True)
        env = dict(os.environ, LOCALSTACK_VOLUME_DIR=state, SERVICES="s3", EAGER_SERVICE_LOADING="1", DISABLE_EVENTS="1",
                   DNS_ADDRESS="0", USE_SSL="0", PERSISTENCE="0", SKIP_SSL_CERT_DOWNLOAD="1")
        self.port = epochs.free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        env["GATEWAY_LISTEN"] = f"127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([os.path.join(LOCALSTACK, "bin/python"), "-m", "localstack.runtime.main"], env=env,
                                     stdout=subprocess.DEVNULL, stderr=open(os.path.join(state, "localstack.log"), "w"))
        self.s3 = epochs.client_when_up(self.endpoint, "LocalStack")


def put_objects(s3, bucket, size):
    """The two shapes: one PUT (whole-object CRC32) and 8 MiB parts (composite CRC32)."""
    body = os.urandom(size)
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="single-put", Body=body, ChecksumAlgorithm="CRC32")
    up = s3.create_multipart_upload(Bucket=bucket, Key="parts", ChecksumAlgorithm="CRC32")
    parts = []
    for n, start in enumerate(range(0, size, PART), start=1):
        r = s3.upload_part(Bucket=bucket, Key="parts", UploadId=up["UploadId"], PartNumber=n,
                           Body=body[start:start + PART], ChecksumAlgorithm="CRC32")
        parts.append({"PartNumber": n, "ETag": r["ETag"], "ChecksumCRC32": r["ChecksumCRC32"]})
    s3.complete_multipart_upload(Bucket=bucket, Key="parts", UploadId=up["UploadId"], MultipartUpload={"Parts": parts})
    return body[:FIRST]


def direct_get(server, bucket, key):
    """Seconds for `curl` to fetch bytes 0-8 MiB of `key` (SigV4-signed)."""
    t = time.perf_counter()
    subprocess.run(["curl", "-sSf", "-o", "/dev/null", "-r", f"0-{PART - 1}", "--aws-sigv4", "aws:amz:us-east-1:s3",
                    "--user", "bench:bench", "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD",
                    f"{server.endpoint}/{bucket}/{key}"], check=True)
    return time.perf_counter() - t


def first_read(server, bucket, key, mode, work, expect):
    """Seconds from open(2) to the first 64 KiB of `key` through a fresh mount with an empty cache."""
    mnt, cache = os.path.join(work, "mnt"), os.path.join(work, "cache")
    shutil.rmtree(cache, ignore_errors=True)
    os.makedirs(mnt, exist_ok=True)
    subprocess.run([HOARDFS, "mount", f"s3://{bucket}", mnt, "--cache-dir", cache, "--endpoint-url", server.endpoint,
                    "--force-path-style", "--verify", mode], check=True, stderr=subprocess.DEVNULL)
    pid = int(open(os.path.join(cache, "lock")).read())
    try:
        drop_page_cache()
        t = time.perf_counter()
        with open(os.path.join(mnt, key), "rb", buffering=0) as f:
            got = f.read(FIRST)
        dt = time.perf_counter() - t
        if got != expect:
            raise SystemExit(f"{key} ({mode}): the first {FIRST} bytes differ from what was uploaded")
        return dt
    finally:
        epochs.unmount(mnt, pid, seconds=30)  # the daemon may still be fetching the rest


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", default=os.environ.get("BENCH_WORK", "/var/tmp/hoardfs-ttfb"))
    args = ap.parse_args()
    scale.bench_env(args.work)
    isolate_network()
    server = LocalStack(args.work) if os.path.exists(os.path.join(LOCALSTACK, "bin/python")) else Moto(args.work)
    bucket = "ttfb"
    try:
        t = time.perf_counter()
        expect = put_objects(server.s3, bucket, args.size_mib << 20)
        print(f"uploaded 2 x {args.size_mib} MiB to {type(server).__name__} in {time.perf_counter() - t:.0f} s", flush=True)
        rows = {}
        for r in range(args.rounds):
            for key in ("single-put", "parts"):
                rows.setdefault((key, "direct GET of 0-8 MiB"), []).append(direct_get(server, bucket, key))
                for mode in ("strict", "best-effort"):
                    dt = first_read(server, bucket, key, mode, args.work, expect)
                    rows.setdefault((key, f"hoardfs --verify {mode}"), []).append(dt)
                    print(f"round {r}: {key} {mode}: {dt * 1000:.0f} ms", flush=True)
    finally:
        server.stop()
    print(f"\n{args.size_mib} MiB objects on {type(server).__name__} (127.0.0.1, own network namespace), {os.cpu_count()} vCPU; medians of {args.rounds} rounds; "
          f"first {FIRST >> 10} KiB after open(2), page cache dropped, empty cache dir")
    print(f"{'object':<12} {'reader':<28} {'ms':>8} {'x direct GET':>13}")
    for key, upload in (("single-put", "one PUT, whole-object CRC32"), ("parts", "8 MiB parts, composite CRC32")):
        base = statistics.median(rows[(key, "direct GET of 0-8 MiB")])
        print(f"-- {key}: {upload}")
        for reader in ("direct GET of 0-8 MiB", "hoardfs --verify strict", "hoardfs --verify best-effort"):
            m = statistics.median(rows[(key, reader)])
            print(f"{'':<12} {reader:<28} {m * 1000:>8.0f} {m / base:>12.1f}x")


if __name__ == "__main__":
    main()
