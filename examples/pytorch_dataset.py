#!/usr/bin/env python3
"""A PyTorch-style Dataset over a hoardfs mount that tells the mount its read order.

A training job knows which files it will read next: the sampler's order for the epoch. Writing
that order to the mount's control file, MOUNT/.hoardfs-prefetch, one path per line, makes hoardfs
fetch the files ahead, in order, several at a time, so a cold epoch of small files runs at network
throughput rather than at one S3 round trip per file. Writing with "w" (truncation) replaces any
order not yet fetched, so each epoch's order supersedes the last.

Works with or without PyTorch installed: with it, HoardfsDataset is a torch.utils.data.Dataset and
EpochOrderSampler a Sampler; without it (the demo below, and hoardfs's tests), plain classes.

    python3 examples/pytorch_dataset.py /mnt/data [--epochs 2] [--seed 1]
"""

import argparse
import os
import random
import sys
import time

try:  # PyTorch is optional: the protocol is just a file write.
    from torch.utils.data import Dataset, Sampler
except ImportError:  # pragma: no cover - exercised where torch is absent
    Dataset, Sampler = object, object

CONTROL_FILE = ".hoardfs-prefetch"


def send_order(mount_root, paths):
    """Tells hoardfs the order of the coming reads (paths relative to the mount root).

    Returns False if the mount has no control file (mounted with --prefetch-hints 0, or not a
    hoardfs mount): hints are an optimisation, so training goes on without them.
    """
    try:
        with open(os.path.join(mount_root, CONTROL_FILE), "w") as control:
            control.write("".join(p + "\n" for p in paths))
        return True
    except OSError as e:
        print(f"hoardfs prefetch hints unavailable ({e}); reading without them", file=sys.stderr)
        return False


class HoardfsDataset(Dataset):
    """Every file under `root` on a hoardfs mount, as raw bytes (decode them in `transform`)."""

    def __init__(self, root, transform=None):
        self.root = root
        self.transform = transform
        self.files = sorted(
            os.path.relpath(os.path.join(d, f), root)
            for d, _, names in os.walk(root)
            for f in names
        )

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        with open(os.path.join(self.root, self.files[index]), "rb") as f:
            data = f.read()
        return self.transform(data) if self.transform else data


class EpochOrderSampler(Sampler):
    """A shuffling sampler that sends each epoch's order to hoardfs before yielding it."""

    def __init__(self, dataset, seed=0):
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.dataset)

    def __iter__(self):
        order = list(range(len(self.dataset)))
        random.Random(self.seed + self.epoch).shuffle(order)
        send_order(self.dataset.root, [self.dataset.files[i] for i in order])
        return iter(order)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mount_root", help="a hoardfs mount point (or a directory under one)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    dataset = HoardfsDataset(args.mount_root)
    sampler = EpochOrderSampler(dataset, seed=args.seed)
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        start, nbytes = time.monotonic(), 0
        for i in sampler:
            nbytes += len(dataset[i])
        secs = time.monotonic() - start
        print(f"epoch {epoch + 1}: {len(dataset)} files, {nbytes} bytes in {secs:.2f} s")


if __name__ == "__main__":
    main()
