"""Drives the installed wheel's Python API against a real mount (run by tests/python_e2e.rs).

argv: endpoint bucket mountpoint cache_dir expected.json (relative path -> sha256 hex).
Exits non-zero with a message on the first thing that is not as it should be.
"""

import hashlib
import json
import os
import subprocess
import sys

import hoardfs

endpoint, bucket, mountpoint, cache_dir, expected_path = sys.argv[1:6]
with open(expected_path) as f:
    expected = json.load(f)
paths = sorted(expected)


def check(cond, what):
    if not cond:
        raise SystemExit(f"api_check: {what}")


# The wheel's own binary, not one found elsewhere on PATH.
exe = hoardfs.binary()
check(os.path.realpath(exe).startswith(os.path.realpath(sys.prefix)), f"binary {exe} is not inside the virtualenv {sys.prefix}")
version = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout
check("cache format" in version, f"--version says {version!r}")

options = dict(endpoint_url=endpoint, force_path_style=True, metadata_ttl="indefinite")


def epoch(m, seed, epoch_no):
    data = hoardfs.Dataset(m.root)
    check(data.files == paths, f"Dataset lists {data.files[:5]}..., expected {paths[:5]}...")
    sampler = hoardfs.HintingSampler(hoardfs.EpochShuffle(len(data), seed=seed), data.files, m.root)
    sampler.set_epoch(epoch_no)
    order = list(sampler)
    check(sorted(order) == list(range(len(paths))), "the sampler's order is not a permutation")
    check(sampler.last_hinted == len(paths), f"hinted {sampler.last_hinted} of {len(paths)} paths")
    for i in order:
        got = hashlib.sha256(data[i]).hexdigest()
        check(got == expected[data.files[i]], f"{data.files[i]}: wrong bytes")


with hoardfs.mount(f"s3://{bucket}/train", mountpoint, cache_dir, **options) as m:
    check(os.path.ismount(m.root), "not mounted inside the with block")
    epoch(m, seed=7, epoch_no=0)
check(not os.path.ismount(mountpoint), "still mounted after the with block")
first = m.counters()
check(first["hoardfs_hint_files_queued_total"] == len(paths), f"hints queued: {first['hoardfs_hint_files_queued_total']}")
check(first["hoardfs_s3_get_requests_total"] > 0, "the cold epoch made no GET")

# A remount reads everything from the cache: zero GETs.
with hoardfs.mount(f"s3://{bucket}/train", mountpoint, cache_dir, **options) as m:
    epoch(m, seed=7, epoch_no=1)
second = m.counters()
check(second["hoardfs_s3_get_requests_total"] == 0, f"remount made {second['hoardfs_s3_get_requests_total']} GETs")

# A bad flag is a MountError carrying hoardfs's own message.
try:
    hoardfs.mount(f"s3://{bucket}/train", mountpoint, cache_dir, endpoint_url=endpoint, no_such_flag=True)
    raise SystemExit("api_check: a bad flag mounted")
except hoardfs.MountError as e:
    check("--no-such-flag" in str(e), f"MountError does not name the flag: {e}")

print(f"api_check: ok, {len(paths)} files, {first['hoardfs_s3_get_requests_total']} GETs cold, 0 after remount")
