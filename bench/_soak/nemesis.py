"""
The soak's nemesis: each fault done to the lab, and mended after its
planned time as the machine's own supervisors would (systemd restarting a
daemon or dockerd, a cable plugged back, a filler file removed).  Each
returns one line saying what it did.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import List, Tuple

from .observe import processes, zfs

FILLER = "soak.filler"  # a name no volume can have: the node ignores it
# Space a filled pool keeps: a replica receive or a database write soon
# runs out of it.
LEFT_FREE = 16 << 20
ZFS_WAIT = 10.0


def _sleep(seconds: float, stop: threading.Event) -> None:
    """Sleep, but wake early when the run is being torn down."""
    stop.wait(seconds)


def kill_daemon(lab, node: str, seconds: float, stop: threading.Event) -> str:
    killed = lab.kill_daemon(node)
    _sleep(seconds, stop)
    lab.start_daemon(node)
    return "flocker-node %s; started again after %.1f s" % (
        "SIGKILLed" if killed else "was not running", seconds)


def kill_dockerd(lab, node: str, seconds: float, stop: threading.Event) -> str:
    killed = lab.kill_dockerd(node)
    _sleep(seconds, stop)
    started = lab.start_dockerd(node)
    return "dockerd %s; %s after %.1f s" % (
        "SIGKILLed" if killed else "was not running",
        "started again" if started else "it was running again", seconds)


def _zfs_of_pool(verb: str, pool: str) -> List[Tuple[int, str]]:
    found = []
    for p in processes():
        if p.name == "zfs" and len(p.argv) > 1 and p.argv[1] == verb and any(
                a == pool or a.startswith(pool + "/") or a.startswith(pool + "@")
                for a in p.argv[2:]):
            found.append((p.pid, " ".join(p.argv)))
    return found


def kill_zfs(lab, node: str, verb: str, stop: threading.Event) -> str:
    """SIGKILL the first ``zfs VERB`` of ``node``'s pool to start within
    ``ZFS_WAIT`` seconds (a replication round runs every few seconds)."""
    pool = lab.node(node).pool
    deadline = time.monotonic() + ZFS_WAIT
    while not stop.is_set():
        victims = _zfs_of_pool(verb, pool)
        if victims:
            for pid, _ in victims:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            return "SIGKILLed %s" % ("; ".join(text for _, text in victims),)
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    return "no zfs %s of %s ran within %.0f s" % (verb, pool, ZFS_WAIT)


def partition(lab, node: str, seconds: float, stop: threading.Event) -> str:
    lab.partition(node)
    _sleep(seconds, stop)
    lab.heal(node)
    return "link down for %.1f s" % (seconds,)


def fill_pool(lab, node: str, seconds: float, stop: threading.Event) -> str:
    """A reservation takes all but ``LEFT_FREE`` of the pool at once."""
    pool = lab.node(node).pool
    result = zfs("get", "-H", "-p", "-o", "value", "available", pool)
    available = int(result.stdout.strip())
    reservation = max(0, available - LEFT_FREE)
    made = zfs("create", "-o", "mountpoint=none", "-o",
               "reservation=%d" % (reservation,), "%s/%s" % (pool, FILLER))
    if made.returncode != 0:
        return "could not fill %s: %s" % (pool, made.stderr.strip())
    _sleep(seconds, stop)
    removed = empty_pool(pool)
    return "%s filled (%d MiB reserved) for %.1f s%s" % (
        pool, reservation >> 20, seconds, "" if removed else "; the filler stayed")


def empty_pool(pool: str) -> bool:
    """Destroy the filler of ``pool`` if there is one; True when it is gone."""
    filler = "%s/%s" % (pool, FILLER)
    for attempt in range(40):  # zfs-fuse: "busy" for a moment
        if zfs("list", filler).returncode != 0:
            return True
        if zfs("destroy", filler).returncode == 0:
            return True
        time.sleep(0.5)
    return False


def restart_zfs_fuse(lab, stop: threading.Event) -> str:
    started = time.monotonic()
    lab.restart_zfs()
    return "zfs-fuse restarted in %.1f s" % (time.monotonic() - started,)


def power_off(lab, node: str) -> str:
    return "; ".join(lab.power_off(node)) or "it was off"


def power_on(lab, node: str) -> str:
    return "; ".join(lab.power_on(node)) or "it was on"


def run_fault(lab, op, stop: threading.Event) -> str:
    """Do ``op`` (a fault of the schedule); what it did."""
    if op.kind == "kill-daemon":
        return kill_daemon(lab, op.node, op.seconds, stop)
    if op.kind == "kill-dockerd":
        return kill_dockerd(lab, op.node, op.seconds, stop)
    if op.kind == "kill-zfs-recv":
        return kill_zfs(lab, op.node, "recv", stop)
    if op.kind == "kill-zfs-send":
        return kill_zfs(lab, op.node, "send", stop)
    if op.kind == "partition":
        return partition(lab, op.node, op.seconds, stop)
    if op.kind == "fill-pool":
        return fill_pool(lab, op.node, op.seconds, stop)
    if op.kind == "restart-zfs-fuse":
        return restart_zfs_fuse(lab, stop)
    raise ValueError("not a fault: %r" % (op.kind,))


__all__ = ["run_fault", "power_off", "power_on", "empty_pool", "FILLER"]
