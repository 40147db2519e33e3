#!/usr/bin/env python3
"""Writes the format-v1 test vectors (and checkpoint v2) from the prose in README.md alone.

This is a second, independent implementation of the index encoding: the Rust tests parse what
this script writes, so the spec, not just the Rust code, is what the vectors pin down.
Run: pip install blake3 && python3 cache-format/gen_vectors.py
"""
import os
import shutil
import struct
from pathlib import Path

from blake3 import blake3

HERE = Path(__file__).resolve().parent / "vectors"
RECORD_LEN = 40
STATE_LEN = 16


def align8(n):
    return (n + 7) & ~7


def header(block_size, size, mtime_ms, algo, ctype, parts, bucket, key, etag, checksum):
    strings = [s.encode() for s in (bucket, key, etag, checksum)]
    block_count = (size + block_size - 1) // block_size
    header_len = 72 + sum(map(len, strings)) + 8 * len(parts) + 32
    out = b"HOARDIDX"
    out += struct.pack("<IIII", 1, header_len, block_size, 0)
    out += struct.pack("<QQq", size, block_count, mtime_ms)
    out += struct.pack("<BB2xI", algo, ctype, len(parts))
    out += struct.pack("<HHHH", *map(len, strings))
    out += b"\0" * 8
    assert len(out) == 72
    out += b"".join(strings)
    out += b"".join(struct.pack("<Q", p) for p in parts)
    out += blake3(out).digest()
    assert len(out) == header_len
    return out, block_count


def index(hdr, block_count, last_access, verify_state, present):
    """present: {block: (data bytes, crc)}"""
    state_off = align8(len(hdr))
    bitmap_off = state_off + STATE_LEN
    bitmap_len = align8((block_count + 7) // 8)
    records_off = bitmap_off + bitmap_len
    buf = bytearray(records_off + RECORD_LEN * block_count)
    buf[: len(hdr)] = hdr
    struct.pack_into("<QB", buf, state_off, last_access, verify_state)
    for b, (data, crc) in present.items():
        buf[bitmap_off + b // 8] |= 1 << (b % 8)
        off = records_off + RECORD_LEN * b
        buf[off : off + 32] = blake3(data).digest()
        struct.pack_into("<Q", buf, off + 32, crc)
    return bytes(buf)


def object_id(bucket, key, etag):
    h = blake3(b"hoardfs-object-v1\0")
    for part in (bucket, key, etag):
        h.update(part.encode() + b"\0")
    return h.hexdigest()


def checkpoint(lock, entries):
    """`lock` is (dev, ino, mtime_ns, ctime_ns, pid); `entries` (bucket, key, etag, bytes, rank, image)."""
    dev, ino, mtime_ns, ctime_ns, pid = lock
    out = bytearray(b"HOARDCKP")
    out += struct.pack("<II", 2, pid)
    out += struct.pack("<QQqqQQ", dev, ino, mtime_ns, ctime_ns, len(entries), sum(e[3] for e in entries))
    groups = {}
    for bucket, key, etag, size, rank, image in entries:
        oid = bytes.fromhex(object_id(bucket, key, etag))
        groups.setdefault((bucket + "\0" + key).encode(), []).append((oid, size, rank, image))
    previous = b""
    for vkey in sorted(groups):
        shared = 0
        while shared < min(len(vkey), len(previous)) and vkey[shared] == previous[shared]:
            shared += 1
        out += struct.pack("<HH", shared, len(vkey) - shared) + vkey[shared:]
        out += struct.pack("<I", len(groups[vkey]))
        for oid, size, rank, image in groups[vkey]:
            out += oid + struct.pack("<QII", size, rank, len(image)) + image
        previous = vkey
    return bytes(out) + blake3(bytes(out)).digest()


def small_index(bucket, key, etag, size, present, _unused):
    """The index of an object of `size` bytes in 4 KiB blocks with blocks `present` (of 0x5A)."""
    hdr, count = header(4096, size, 1_700_000_000_000, 0, 0, [], bucket, key, etag, "")
    blocks = {b: (b"\x5a" * min(4096, size - b * 4096), 0) for b in present}
    return index(hdr, count, 1_700_000_200 + len(present), 0, blocks)


def main():
    HERE.mkdir(exist_ok=True)
    # 1. The header of a 2 MiB + 1 byte object with a full-object CRC32C (algorithm 2, type 1).
    hdr, count = header(1 << 20, (2 << 20) + 1, 1_700_000_000_123, 2, 1, [],
                        "bucket", "dir/file.bin", '"5d41402abc4b2a76b9719d911017c592"', "yZRlqg==")
    (HERE / "header-v1.bin").write_bytes(hdr)
    # 2. Its index with block 1 (1 MiB of 0xAB) present, last access 1_700_000_500, state Pending.
    (HERE / "index-v1.idx").write_bytes(index(hdr, count, 1_700_000_500, 0, {1: (b"\xab" * (1 << 20), 0)}))
    # 3. A whole cache directory holding one complete 5000-byte object in 4 KiB blocks.
    root = HERE / "cache-dir"
    shutil.rmtree(root, ignore_errors=True)
    (root / "objects").mkdir(parents=True)
    (root / "hoardfs-cache").write_text(
        "hoardfs cache directory: do not edit; `hoardfs cache` inspects and manages it.\nformat-version = 1\n")
    content = bytes((i * 7) % 256 for i in range(5000))
    bucket, key, etag = "demo", "hello/world.bin", '"0123456789abcdef0123456789abcdef"'
    hdr, count = header(4096, len(content), 1_700_000_000_000, 0, 0, [], bucket, key, etag, "")
    oid = object_id(bucket, key, etag)
    shard = root / "objects" / oid[:2]
    shard.mkdir()
    (shard / f"{oid}.data").write_bytes(content)
    blocks = {b: (content[b * 4096:(b + 1) * 4096], 0) for b in range(count)}
    (shard / f"{oid}.idx").write_bytes(index(hdr, count, 1_700_000_100, 2, blocks))
    print("object id", oid)
    # 4. A checkpoint of three entries under two keys, for a lock file in the state below, each
    #    with its index image (accounted bytes: the index's 4 KiB plus 4 KiB per present block).
    (HERE / "checkpoint-v1.bin").unlink(missing_ok=True)
    entries = [("b", "data/a.bin", '"e1"', 8192, 2, small_index("b", "data/a.bin", '"e1"', 4096, [0], 0)),
               ("b", "data/a.bin", '"e2"', 4096, 0, small_index("b", "data/a.bin", '"e2"', 4096, [], 0)),
               ("b", "data/ab.bin", '"e3"', 12288, 1, small_index("b", "data/ab.bin", '"e3"', 8000, [0, 1], 0))]
    (HERE / "checkpoint-v2.bin").write_bytes(checkpoint((7, 11, 1_700_000_000_123_456_789, 1_700_000_000_987_654_321, 4242), entries))


if __name__ == "__main__":
    main()
