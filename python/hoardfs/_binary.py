"""Where the `hoardfs` executable is."""

import os
import shutil
import sysconfig


def binary() -> str:
    """The path of the `hoardfs` executable: `$HOARDFS_BIN` if set, else the one this wheel
    installed beside the interpreter's scripts, else the first on `PATH`."""
    explicit = os.environ.get("HOARDFS_BIN")
    if explicit:
        return explicit
    scripts = sysconfig.get_path("scripts")
    bundled = os.path.join(scripts, "hoardfs") if scripts else ""
    if bundled and os.access(bundled, os.X_OK):
        return bundled
    found = shutil.which("hoardfs")
    if found:
        return found
    raise FileNotFoundError(
        "no hoardfs executable: reinstall the wheel (pip install --force-reinstall hoardfs) "
        "or set HOARDFS_BIN to the binary's path"
    )
