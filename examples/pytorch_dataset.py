#!/usr/bin/env python3
"""Epochs over a hoardfs mount with the mount told each epoch's read order.

A training job knows which files it will read next: the sampler's order for the epoch. Sending
that order to the mount (the `hoardfs` Python package writes it to MOUNT/.hoardfs-prefetch, one
path per line) makes hoardfs fetch the files ahead, in order, several at a time, so a cold epoch
of small files runs at network throughput rather than at one S3 round trip per file.

With PyTorch installed, hoardfs.Dataset is a torch Dataset and the samplers are torch Samplers;
use them with a DataLoader (`DataLoader(data, sampler=sampler, num_workers=8)`). Without it (the
demo below, and hoardfs's tests), they are plain classes.

    pip install hoardfs      # or, in this repository: PYTHONPATH=python
    python3 examples/pytorch_dataset.py /mnt/data [--epochs 2] [--seed 1]
"""

import argparse
import os
import sys
import time

try:
    import hoardfs
except ImportError:  # running from a checkout without the wheel installed
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
    import hoardfs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mount_root", help="a hoardfs mount point")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    dataset = hoardfs.Dataset(args.mount_root)
    sampler = hoardfs.HintingSampler(hoardfs.EpochShuffle(len(dataset), seed=args.seed), dataset.files, args.mount_root)
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        start, nbytes = time.monotonic(), 0
        for i in sampler:
            nbytes += len(dataset[i])
        secs = time.monotonic() - start
        print(f"epoch {epoch + 1}: {len(dataset)} files, {nbytes} bytes in {secs:.2f} s")


if __name__ == "__main__":
    main()
