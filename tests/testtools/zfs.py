"""
Real ZFS pools for functional tests (root only), on zfs-fuse.

One ``zfs-fuse`` daemon serves the whole machine: it is started if it is
not running and left running.  Each pool lives in a sparse file in
/var/tmp and is named ``fatpool-<pid>-<hex>``: the creating process's pid
tells a pool left behind by a crashed run (its process is gone) from one a
concurrent run is still using.  Stale pools of the prefix, their files and
mount directories are removed before the first pool is made.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid

from flocker_async.lab._zfs import ensure_zfs_daemon, mount_lock

PREFIX = "fatpool"
POOL_DIR = "/var/tmp"
_POOL_NAME = re.compile(r"\A%s-(\d+)-[0-9a-f]+\Z" % (PREFIX,))

_prepared = False


def _run(argv, check=True, timeout=60):
    """Run a set-up command (blocking is fine in fixtures)."""
    result = subprocess.run(argv, capture_output=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError("%s failed (exit status %s): %s" % (
            " ".join(argv), result.returncode,
            result.stderr.decode("utf-8", "replace").strip()))
    return result


def ensure_daemon():
    """
    zfs-fuse runs and serves file requests (restarted if it stopped
    serving them); it is left running.  The lab's own check, shared.
    """
    ensure_zfs_daemon(progress=lambda message: print(message, file=sys.stderr))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_stale(name: str) -> bool:
    match = _POOL_NAME.match(name)
    if match is None:
        return name.startswith(PREFIX + "-")
    pid = int(match.group(1))
    return pid != os.getpid() and not _alive(pid)


def _remove_pool(name: str):
    """Destroy a pool; a faulted one (its file gone) can only be exported."""
    if _run(["zpool", "destroy", "-f", name], check=False).returncode != 0:
        _run(["zpool", "export", "-f", name], check=False)


def remove_stale_pools():
    """Remove pools, files and mount directories left by dead runs."""
    listing = _run(["zpool", "list", "-H", "-o", "name"]).stdout.decode()
    for name in listing.split():
        if name.startswith(PREFIX + "-") and _is_stale(name):
            _remove_pool(name)
    live = set(_run(["zpool", "list", "-H", "-o", "name"]).stdout.decode()
               .split())
    for entry in os.listdir(POOL_DIR):
        base = entry[:-len(".img")] if entry.endswith(".img") else entry
        if not base.startswith(PREFIX + "-") or base in live:
            continue
        if not _is_stale(base):
            continue
        path = os.path.join(POOL_DIR, entry)
        if os.path.isdir(path) and not os.path.ismount(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.isfile(path):
            os.unlink(path)


def prepare():
    """Once per process: the daemon runs and serves file requests (it is
    restarted if it does not), and stale pools are gone."""
    global _prepared
    if not _prepared:
        ensure_daemon()
        remove_stale_pools()
        _prepared = True


class ZFSPool:
    """A file-backed zpool, mounted at ``/var/tmp/<name>``."""

    def __init__(self, size: int):
        self.name = "%s-%d-%s" % (PREFIX, os.getpid(), uuid.uuid4().hex[:8])
        self.file = os.path.join(POOL_DIR, self.name + ".img")
        self.mountpoint = os.path.join(POOL_DIR, self.name)
        with open(self.file, "wb") as f:
            f.truncate(size)
        try:
            with mount_lock():
                _run(["zpool", "create", "-m", self.mountpoint, self.name,
                      self.file])
        except Exception:
            os.unlink(self.file)
            raise

    def destroy(self):
        try:
            _remove_pool(self.name)
        finally:
            if os.path.exists(self.file):
                os.unlink(self.file)
            if os.path.isdir(self.mountpoint) and not os.path.ismount(
                    self.mountpoint):
                shutil.rmtree(self.mountpoint, ignore_errors=True)


def make_zfs_pool(test_case, size: int = 512 << 20) -> ZFSPool:
    """A new pool, destroyed (and its file removed) when the test ends."""
    prepare()
    pool = ZFSPool(size)
    test_case.addCleanup(pool.destroy)
    return pool
