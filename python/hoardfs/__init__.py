"""hoardfs from Python: mount an S3 bucket with a persistent, verified local cache, and tell the
mount the order a training epoch will read its files in.

    import hoardfs

    with hoardfs.mount("s3://my-bucket/train", "/mnt/train", cache_dir="/nvme/hoardfs") as m:
        data = hoardfs.Dataset(m.root)
        sampler = hoardfs.HintingSampler(hoardfs.EpochShuffle(len(data), seed=0), data.files, m.root)
        for i in sampler:        # each epoch's order reaches the mount before the first read
            sample = data[i]

The `hoardfs` command itself ships in this wheel (`hoardfs --help`). Nothing here needs
PyTorch; with it installed, `Dataset` and the samplers are torch Datasets and Samplers.
"""

from ._binary import binary
from .data import Dataset
from .hints import CONTROL_FILE, EpochShuffle, HintingSampler, hint
from .mount import Mount, MountError, mount

try:
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("hoardfs")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+source"

__all__ = [
    "CONTROL_FILE",
    "Dataset",
    "EpochShuffle",
    "HintingSampler",
    "Mount",
    "MountError",
    "binary",
    "hint",
    "mount",
    "__version__",
]
