#!/usr/bin/env python3
"""Writes a hoardfs cache directory (format 2) that holds every object of a directory served by
the bench server, complete and verified, as a mount that had read them all would leave it, but
without a checkpoint (so the first mount over it reads the catalog, like a mount after a crash).

A 1.28 M-object cache filled through a mount takes half an hour at cold-epoch speed; this takes a
few minutes, so scale.py can measure a remount, `cache stat` and `cache ls` of a cache of
ImageNet's size. The encoding comes from cache-format/gen_vectors.py, the independent
implementation of the spec, so this is also a large test vector: `hoardfs cache verify` over a
generated dir must find every entry good (scale.py checks a small one before it trusts a big one).

    python3 benches/cachegen.py --root S3ROOT --bucket scale --cache DIR --keys-from-dirs 500 --objects 1281167
"""
import argparse
import hashlib
import multiprocessing as mp
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "cache-format"))
from gen_vectors import header, index, object_id, slot  # noqa: E402

BLOCK = 1 << 20
MD5_ETAG, FULL_OBJECT, VERIFIED = 6, 1, 1


def entry(args):
    """Writes one object's data file; returns (slot size, slot bytes)."""
    root, cache, bucket, key, access = args
    path = os.path.join(root, bucket, key)
    with open(path, "rb") as f:
        body = f.read()
    md5 = hashlib.md5(body).hexdigest()
    etag = f'"{md5}"'
    mtime_ms = int(os.stat(path).st_mtime * 1000)
    hdr, count = header(BLOCK, len(body), mtime_ms, MD5_ETAG, FULL_OBJECT, [], bucket, key, etag, md5)
    blocks = {b: (body[b * BLOCK:(b + 1) * BLOCK], 0) for b in range(count)}
    oid = object_id(bucket, key, etag)
    data = os.path.join(cache, "objects", oid[:2], oid + ".data")
    fd = os.open(data, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, body)
    finally:
        os.close(fd)
    used = slot(oid, index(hdr, count, access, VERIFIED, blocks))
    return len(used), used


def generate(root, bucket, keys, cache, workers=None):
    os.makedirs(cache, mode=0o700)
    os.chmod(cache, 0o700)
    with open(os.path.join(cache, "hoardfs-cache"), "w") as f:
        f.write("hoardfs cache directory: do not edit; `hoardfs cache` inspects and manages it.\nformat-version = 2\n")
    for d in ("objects", "catalog"):
        os.makedirs(os.path.join(cache, d), mode=0o700)
    for b in range(256):
        os.makedirs(os.path.join(cache, "objects", f"{b:02x}"), mode=0o700)
    slabs = {}
    base = int(time.time()) - len(keys)
    jobs = ((root, cache, bucket, k, base + i) for i, k in enumerate(keys))
    try:
        with mp.Pool(workers) as pool:
            for size, used in pool.imap(entry, jobs, chunksize=512):
                if size not in slabs:
                    path = os.path.join(cache, "catalog", f"{size}.slab")
                    slabs[size] = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")
                slabs[size].write(used)
    finally:
        for f in slabs.values():
            f.close()


def keys(n, dirs):
    """The keys scale.py writes: ImageNet's shape, `dirs` directories."""
    return [f"dir-{i % dirs:04d}/img-{i:07d}.jpg" for i in range(n)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, help="the server's root: objects are ROOT/BUCKET/KEY")
    ap.add_argument("--bucket", required=True)
    ap.add_argument("--cache", required=True, help="the cache dir to create (must not exist)")
    ap.add_argument("--objects", type=int, required=True)
    ap.add_argument("--dirs", type=int, default=500, help="keys as scale.py names them")
    args = ap.parse_args()
    names = keys(args.objects, args.dirs)
    t = time.perf_counter()
    generate(args.root, args.bucket, names, args.cache)
    print(f"cache dir of {len(names)} entries written in {time.perf_counter() - t:.0f} s")


if __name__ == "__main__":
    main()
