"""
The lab's ZFS pools: one file-backed zfs-fuse pool per node, ``flab-<node>``.

One zfs-fuse daemon serves the whole machine (other users' pools too): it
is started if it is not running and always left running.  Only pools named
with the lab prefix are ever touched.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import time
from contextlib import contextmanager
from typing import Dict, List

from ..volume._zfs import MOUNT_LOCK, open_lock_file

from ._network import PREFIX
from ._system import (
    LabError, kill_all, mount_table, run, system_env, threads_alive)

__all__ = ["ensure_zfs_daemon", "pools", "ensure_pool", "destroy_pool",
           "zfs_fuse_mounts", "unanswered", "restart_if_wedged", "mount_lock",
           "restart_zfs_daemon",
           "DEFAULT_POOL_SIZE"]

DEFAULT_POOL_SIZE = 4 << 30  # sparse: costs only what is written


def _daemon_answers() -> bool:
    try:
        return run(["zpool", "list", "-H", "-o", "name"], check=False,
                   timeout=30).returncode == 0
    except LabError:
        return False


def ensure_zfs_daemon(timeout: float = 20.0, progress=None) -> None:
    """
    Start zfs-fuse unless it serves requests already, and make sure it
    serves file requests too (see ``restart_if_wedged``); leave it running.
    """
    if _daemon_answers():
        restart_if_wedged(progress=progress)
        return
    _start_daemon(timeout)


@contextmanager
def mount_lock():
    """
    Hold the machine-wide lock of commands that make zfs-fuse mount a file
    system (``MOUNT_LOCK``; see there why), blocking until it is free.
    """
    fd = open_lock_file(MOUNT_LOCK)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _start_daemon(timeout: float) -> None:
    # It mounts its pools' file systems as it starts.
    with mount_lock():
        subprocess.run(["zfs-fuse"], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       start_new_session=True, timeout=60, env=system_env())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _daemon_answers():
                return
            time.sleep(0.2)
    raise LabError("zfs-fuse did not start within %d seconds (is /dev/fuse "
                   "there? try running zfs-fuse by hand)" % (timeout,))


# zfs-fuse's own statistics file system.
KSTAT_MOUNT = "/zfs-kstat"


def zfs_fuse_mounts() -> Dict[str, str]:
    """The file systems zfs-fuse serves now: mount point -> dataset."""
    return {point: source for point, kind, source in mount_table()
            if kind == "fuse.zfs"}


def unanswered(mountpoints, timeout: float = 20.0) -> List[str]:
    """
    The mount points whose file system did not answer a ``statfs`` within
    ``timeout`` seconds.  A statfs is never answered from the kernel's
    cache: it always reaches zfs-fuse.  All are asked at once, each by a
    process of its own (a stuck one cannot hold the others up).
    """
    probes = {m: subprocess.Popen(["stat", "-f", "--", m],
                                  stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, env=system_env())
              for m in mountpoints}
    deadline = time.monotonic() + timeout
    silent = []
    for mountpoint, probe in sorted(probes.items()):
        try:
            probe.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            probe.kill()
            probe.wait()
            silent.append(mountpoint)
    return silent


def restart_if_wedged(timeout: float = 20.0, progress=None,
                      start_timeout: float = 60.0) -> bool:
    """
    Restart zfs-fuse if it has stopped serving file requests, or start it
    if it is not running at all; True if it did.

    zfs-fuse serves every pool's file requests from one shared set of
    threads.  Seen on these machines, after containers were killed in the
    middle of their I/O: its zfs commands still answer, but no file system
    of any pool does, new ones included, for good.  Every process touching
    one (dockerd binding a volume, a database) then waits for ever.  The
    daemon is already useless to everyone then; restarting it aborts its
    stuck requests (their callers get an error), and it imports its pools
    and mounts their file systems again.
    """
    say = progress or (lambda message: None)
    if not _zfs_fuse_pids() and shutil.which("zfs-fuse", path=system_env()["PATH"]):
        # Dead rather than wedged (it has segfaulted under load here): its
        # mounts fail at once instead of hanging, so ask no file system.
        say("zfs-fuse is not running (did it crash?); starting it")
        restart_zfs_daemon(progress=progress, start_timeout=start_timeout)
        return True
    mounts = zfs_fuse_mounts()
    silent = unanswered(mounts, timeout)
    if not silent:
        return False
    say("zfs-fuse does not answer file requests on %s; restarting it"
        % (", ".join(silent),))
    restart_zfs_daemon(progress=progress, start_timeout=start_timeout)
    return True


def restart_zfs_daemon(progress=None, start_timeout: float = 60.0) -> None:
    """
    Restart zfs-fuse now, answering or not (``restart_if_wedged`` does it
    when it stopped answering; the soak does it as a fault): SIGKILL it,
    unmount its dead mounts, start it and mount every file system again.
    Whatever used one of them meanwhile gets an error.
    """
    say = progress or (lambda message: None)
    pids = _zfs_fuse_pids()
    kill_all(pids, timeout=start_timeout)
    # It holds its single-instance lock until its last thread is gone,
    # which takes a while with hundreds of them and its mounts to tear down.
    deadline = time.monotonic() + start_timeout
    while any(threads_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            raise LabError("zfs-fuse (pid %s) did not exit within %d seconds "
                           "of SIGKILL" % (", ".join(map(str, pids)),
                                           start_timeout))
        time.sleep(0.1)
    # Its mounts are dead now (their connection went with the process);
    # they would hide the ones the new daemon makes at the same places.
    dead = sorted(zfs_fuse_mounts(), key=len, reverse=True)
    if any(point == KSTAT_MOUNT for point, _, _ in mount_table()):
        dead.append(KSTAT_MOUNT)
    for mountpoint in dead:
        run(["umount", "-l", mountpoint], check=False)
    _start_daemon(start_timeout)
    # It imports its pools as it starts but mounts nothing: mount what was.
    with mount_lock():
        run(["zfs", "mount", "-a"], check=False, timeout=start_timeout)
    still = unanswered(zfs_fuse_mounts(), start_timeout)
    if still:
        raise LabError("zfs-fuse was restarted and still does not answer "
                       "file requests on %s" % (", ".join(still),))
    say("zfs-fuse restarted; it serves %d file systems again"
        % (len(zfs_fuse_mounts()),))


def _zfs_fuse_pids() -> List[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/comm" % (entry,), "rb") as f:
                if (f.read().strip() == b"zfs-fuse"
                        and threads_alive(int(entry))):
                    pids.append(int(entry))  # zombies left out
        except OSError:
            continue
    return pids


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
        with mount_lock():
            run(["zpool", "create", "-m", mountpoint, name, path])
    except Exception:
        os.unlink(path)
        raise
    return True


