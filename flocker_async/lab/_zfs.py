"""
The lab's ZFS pools: one file-backed zfs-fuse pool per node, ``flab-<node>``.

One zfs-fuse daemon serves the whole machine (other users' pools too): it
is started if it is not running and always left running.  Only pools named
with the lab prefix are ever touched.
"""

from __future__ import annotations

import os
import re
import time
from typing import Dict

from ._network import PREFIX
from ._system import LabError, run

__all__ = ["ensure_zfs_daemon", "pools", "ensure_pool", "destroy_pool",
           "DEFAULT_POOL_SIZE"]

DEFAULT_POOL_SIZE = 4 << 30  # sparse: costs only what is written


def _daemon_answers() -> bool:
    try:
        return run(["zpool", "list", "-H", "-o", "name"], check=False,
                   timeout=30).returncode == 0
    except LabError:
        return False


def ensure_zfs_daemon(timeout: float = 20.0) -> None:
    """Start zfs-fuse unless it serves requests already; leave it running."""
    if _daemon_answers():
        return
    run(["zfs-fuse"], check=False)  # daemonizes itself
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _daemon_answers():
            return
        time.sleep(0.2)
    raise LabError("zfs-fuse did not start within %d seconds (is /dev/fuse "
                   "there? try running zfs-fuse by hand)" % (timeout,))


_LAB_POOL = re.compile(r"[a-z][a-z0-9]*-n[1-9][0-9]*\Z")


def pools(prefix: str = PREFIX) -> Dict[str, str]:
    """The pools of the lab with ``prefix`` (name -> health): PREFIX + node."""
    mine = re.compile(re.escape(prefix) + r"n[1-9][0-9]*\Z")
    for attempt in range(5):
        # zfs-fuse now and then fails a listing while other pools change.
        result = run(["zpool", "list", "-H", "-o", "name,health"], check=False)
        if result.returncode == 0:
            break
        time.sleep(0.5)
    else:
        raise LabError("zpool list failed: %s" % (
            result.stderr.decode("utf-8", "replace").strip(),))
    found = {}
    for line in result.stdout.decode().splitlines():
        fields = line.split()
        if len(fields) >= 2 and mine.match(fields[0]):
            found[fields[0]] = fields[1]
    return found


def destroy_pool(name: str) -> None:
    """Destroy a lab pool; a faulted one (its file gone) can only be exported."""
    if not _LAB_POOL.match(name):
        raise ValueError("not a lab pool: %r" % (name,))
    if run(["zpool", "destroy", "-f", name], check=False).returncode != 0:
        run(["zpool", "export", "-f", name], check=False)


def ensure_pool(name: str, path: str, mountpoint: str,
                size: int = DEFAULT_POOL_SIZE) -> bool:
    """The pool ``name`` on file ``path``, healthy; True if it was made."""
    health = pools(name[:name.rindex("-") + 1]).get(name)
    if health == "ONLINE" and os.path.exists(path):
        return False
    if health is not None:
        destroy_pool(name)
    if os.path.exists(path):
        os.unlink(path)  # whatever it held belonged to a pool now gone
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)
    try:
        run(["zpool", "create", "-m", mountpoint, name, path])
    except Exception:
        os.unlink(path)
        raise
    return True


