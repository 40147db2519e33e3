"""Access-order hints: telling a mount which files the next epoch reads, in order.

A mount with hints on (the default, `--prefetch-hints 32`) has a write-only control file at its
root. Writing paths to it, one per line, makes hoardfs fetch those files ahead, in order,
several at a time, so a cold epoch of small files runs at network speed instead of at one S3
round trip per file. Opening it with truncation (what `hint` does) replaces any order not yet
fetched, so each epoch's order supersedes the last.
"""

import os
import random
import sys
from typing import Iterable, Iterator, List, Optional, Sequence

try:  # PyTorch is optional: with it, the samplers are real torch Samplers.
    from torch.utils.data import Sampler as _Base
except ImportError:  # pragma: no cover - exercised where torch is absent
    _Base = object

CONTROL_FILE = ".hoardfs-prefetch"


def hint(mount_root: str, paths: Iterable[str]) -> bool:
    """Sends the order of the coming reads (paths relative to the mount root) to the mount.

    Returns False, with a note on stderr, when the mount has no control file (mounted with
    `--prefetch-hints 0`, or not a hoardfs mount): hints only make reads faster, so training
    goes on without them.
    """
    body = "".join(p.lstrip("/") + "\n" for p in paths)
    try:
        with open(os.path.join(mount_root, CONTROL_FILE), "w") as control:
            control.write(body)
        return True
    except OSError as e:
        print(f"hoardfs: prefetch hints unavailable ({e}); reading without them", file=sys.stderr)
        return False


class EpochShuffle(_Base):
    """A seeded shuffle of `range(n)`, different each epoch (`set_epoch`), the same on every
    rank for the same seed and epoch. A stand-in for torch's RandomSampler where torch is
    absent; any sampler works with `HintingSampler`."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n = n
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        order = list(range(self.n))
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return iter(order)


class HintingSampler(_Base):
    """Wraps any sampler of indices: at the start of each epoch it draws the whole order, sends
    the matching paths to the mount with `hint`, then yields the indices.

    `paths[i]` is the path (relative to `mount_root`) of sample `i`, e.g. `Dataset.files`.
    `set_epoch` is passed on to the wrapped sampler when it has one (DistributedSampler does).
    """

    def __init__(self, sampler: Iterable[int], paths: Sequence[str], mount_root: str) -> None:
        self.sampler = sampler
        self.paths = paths
        self.mount_root = mount_root
        self.last_hinted: Optional[int] = None

    def set_epoch(self, epoch: int) -> None:
        set_epoch = getattr(self.sampler, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        order: List[int] = list(self.sampler)
        self.last_hinted = len(order) if hint(self.mount_root, (self.paths[i] for i in order)) else 0
        return iter(order)
