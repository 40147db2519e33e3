#!/usr/bin/env python3
"""Writes the test vectors (index v1, cache dirs of formats 1 and 2, checkpoint v3) from the prose
in README.md alone.

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
    """`lock` is (dev, ino, mtime_ns, ctime_ns, pid); `entries` (bucket, key, etag, bytes, rank, slot_size, slot)."""
    dev, ino, mtime_ns, ctime_ns, pid = lock
    out = bytearray(b"HOARDCKP")
    out += struct.pack("<II", 3, pid)
    out += struct.pack("<QQqqQQ", dev, ino, mtime_ns, ctime_ns, len(entries), sum(e[3] for e in entries))
    groups = {}
    for bucket, key, etag, size, rank, slot_size, slot in entries:
        oid = bytes.fromhex(object_id(bucket, key, etag))
        groups.setdefault((bucket + "\0" + key).encode(), []).append((oid, size, rank, slot_size, slot))
    previous = b""
    for vkey in sorted(groups):
        groups[vkey].sort(key=lambda e: e[2])  # a group's entries in rank order
        shared = 0
        while shared < min(len(vkey), len(previous)) and vkey[shared] == previous[shared]:
            shared += 1
        out += struct.pack("<HH", shared, len(vkey) - shared) + vkey[shared:]
        out += struct.pack("<I", len(groups[vkey]))
        for oid, size, rank, slot_size, slot in groups[vkey]:
            out += oid + struct.pack("<QIII", size, rank, slot_size, slot)
        previous = vkey
    return bytes(out) + blake3(bytes(out)).digest()


def slot_size(index_len):
    """The smallest 256 * 2**k or 384 * 2**k that holds the 40-byte slot header and the index."""
    k = 0
    while True:
        for size in (256 << k, 384 << k):
            if size >= 40 + index_len:
                return size
        k += 1


def slot(oid_hex, index_bytes):
    """A used catalog slot: index length, reserved word, object id, the index, zeros to the end."""
    out = struct.pack("<II", len(index_bytes), 0) + bytes.fromhex(oid_hex) + index_bytes
    return out + bytes(slot_size(len(index_bytes)) - len(out))


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
    # 3. A whole cache directory holding one complete 5000-byte object in 4 KiB blocks, in
    #    format 1 (an index file beside the data file) and in format 2 (the index in slot 0 of the
    #    catalog's slab of its size, a free slot after it).
    content = bytes((i * 7) % 256 for i in range(5000))
    bucket, key, etag = "demo", "hello/world.bin", '"0123456789abcdef0123456789abcdef"'
    hdr, count = header(4096, len(content), 1_700_000_000_000, 0, 0, [], bucket, key, etag, "")
    oid = object_id(bucket, key, etag)
    blocks = {b: (content[b * 4096:(b + 1) * 4096], 0) for b in range(count)}
    idx = index(hdr, count, 1_700_000_100, 2, blocks)
    for version in (1, 2):
        root = HERE / f"cache-dir-v{version}"
        shutil.rmtree(root, ignore_errors=True)
        (root / "objects").mkdir(parents=True)
        (root / "hoardfs-cache").write_text(
            f"hoardfs cache directory: do not edit; `hoardfs cache` inspects and manages it.\nformat-version = {version}\n")
        shard = root / "objects" / oid[:2]
        shard.mkdir()
        (shard / f"{oid}.data").write_bytes(content)
        if version == 1:
            (shard / f"{oid}.idx").write_bytes(idx)
        else:
            (root / "catalog").mkdir()
            used = slot(oid, idx)
            (root / "catalog" / f"{len(used)}.slab").write_bytes(used + bytes(len(used)))
    print("object id", oid)
    # 4. A checkpoint of three entries under two keys, for a lock file in the state below
    #    (accounted bytes: the entry's slot plus 4 KiB per present block).
    for old in ("checkpoint-v1.bin", "checkpoint-v2.bin"):
        (HERE / old).unlink(missing_ok=True)
    entries = []
    for (key, etag, size, present, rank, slot_no) in [("data/a.bin", '"e1"', 4096, [0], 2, 0),
                                                      ("data/a.bin", '"e2"', 4096, [], 0, 1),
                                                      ("data/ab.bin", '"e3"', 8000, [0, 1], 1, 0)]:
        size_of_slot = slot_size(len(small_index("b", key, etag, size, present, 0)))
        entries.append(("b", key, etag, size_of_slot + 4096 * len(present), rank, size_of_slot, slot_no))
        print("checkpoint entry", key, etag, "accounted", entries[-1][3], "slot", size_of_slot, slot_no)
    (HERE / "checkpoint-v3.bin").write_bytes(checkpoint((7, 11, 1_700_000_000_123_456_789, 1_700_000_000_987_654_321, 4242), entries))


if __name__ == "__main__":
    main()
