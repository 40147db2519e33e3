"""Mounting from Python: `hoardfs.mount(...)` runs `hoardfs mount` (a background daemon that
returns once the mount is up) and unmounts on leaving a `with` block."""

import fcntl
import json
import os
import select
import subprocess
import time
from typing import Any, Dict, Iterable, List, Optional

from ._binary import binary as _binary
from .hints import hint as _hint


class MountError(RuntimeError):
    """hoardfs could not mount or unmount; the message carries hoardfs's own explanation."""


def _flags(options: Dict[str, Any]) -> List[str]:
    """`max_cache_size="500GiB"` -> `--max-cache-size 500GiB`; `True` -> the bare flag;
    `False`/`None` -> nothing; a list or tuple -> the flag once per item."""
    out: List[str] = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            out.append(flag)
        elif isinstance(value, (list, tuple)):
            for item in value:
                out += [flag, str(item)]
        else:
            out += [flag, str(value)]
    return out


class Mount:
    """One running mount. Use `hoardfs.mount(...)`, which starts it."""

    def __init__(self, source: str, mountpoint: str, cache_dir: str, *, timeout: float = 120.0, **options: Any) -> None:
        self.source = source
        self.root = os.path.abspath(mountpoint)
        self.cache_dir = os.path.abspath(cache_dir)
        self.timeout = timeout
        self.argv = [_binary(), "mount", source, self.root, "--cache-dir", self.cache_dir] + _flags(options)
        self.pid: Optional[int] = None

    def start(self) -> "Mount":
        """Mounts and returns once the file system answers (or raises MountError)."""
        os.makedirs(self.root, exist_ok=True)
        done = subprocess.run(self.argv, capture_output=True, text=True, timeout=self.timeout)
        if done.returncode != 0:
            why = done.stderr.strip() or done.stdout.strip() or "no message"
            raise MountError(f"hoardfs mount {self.source} {self.root} failed (exit {done.returncode}): {why}")
        with open(os.path.join(self.cache_dir, "lock")) as lock:
            self.pid = int(lock.read().strip() or 0) or None
        return self

    def hint(self, paths: Iterable[str]) -> bool:
        """Sends the coming read order to this mount (see `hoardfs.hint`)."""
        return _hint(self.root, paths)

    def stat(self) -> Dict[str, Any]:
        """`hoardfs cache stat --json` of this mount's cache: sizes, verification counts and the
        counters of the running mount (or, once unmounted, of the last one)."""
        out = subprocess.run(
            [_binary(), "cache", "stat", "--cache-dir", self.cache_dir, "--json"], capture_output=True, text=True, check=False
        )
        if out.returncode != 0:
            raise MountError(f"hoardfs cache stat failed (exit {out.returncode}): {out.stderr.strip()}")
        return json.loads(out.stdout)

    def counters(self) -> Dict[str, int]:
        """The mount's counters by Prometheus name, e.g. `hoardfs_s3_get_requests_total`."""
        mount = self.stat().get("mount") or {}
        return {name: value for name, value in mount.get("counters", [])}

    def unmount(self) -> None:
        """Unmounts, and waits until the daemon has exited and written its last-mount record."""
        if not os.path.ismount(self.root):
            return
        done = subprocess.run(["fusermount3", "-u", self.root], capture_output=True, text=True)
        if done.returncode != 0:
            raise MountError(f"fusermount3 -u {self.root} failed: {done.stderr.strip()} (is a file on it still open?)")
        self._wait_for_exit()

    def _wait_for_exit(self) -> None:
        deadline = time.monotonic() + self.timeout
        if self.pid is not None and hasattr(os, "pidfd_open"):
            try:
                fd = os.pidfd_open(self.pid)
            except ProcessLookupError:
                return
            try:
                if not select.select([fd], [], [], self.timeout)[0]:
                    raise MountError(f"the hoardfs daemon (pid {self.pid}) did not exit within {self.timeout} s")
            finally:
                os.close(fd)
            return
        # Without pidfds: the daemon holds the cache's lock until it exits.
        with open(os.path.join(self.cache_dir, "lock")) as lock:
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    return
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise MountError(f"the hoardfs daemon did not release {self.cache_dir} within {self.timeout} s")
                    time.sleep(0.05)

    def __enter__(self) -> "Mount":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.unmount()


def mount(source: str, mountpoint: str, cache_dir: str, *, timeout: float = 120.0, **options: Any) -> Mount:
    """Mounts `source` (`s3://bucket[/prefix]`) at `mountpoint` with its cache in `cache_dir`,
    and returns the running `Mount`; as a context manager it unmounts on exit.

    Keyword options become `hoardfs mount` flags: `max_cache_size="500GiB"`,
    `metadata_ttl="indefinite"`, `endpoint_url="http://127.0.0.1:9000"`, `force_path_style=True`
    (see `hoardfs mount --help` for all of them).
    """
    return Mount(source, mountpoint, cache_dir, timeout=timeout, **options).start()
