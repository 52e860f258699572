"""
One dockerd per lab node, isolated from the host's own Docker (if any).

The daemon runs in the node's network namespace (``nsenter --net``; ``ip
netns exec`` remounts /sys and dockerd then fails with "Devices cgroup
isn't mounted") with its own data root, exec root, pidfile, socket,
configuration file (so it does not write /etc/docker/key.json) and cgroup
parent, all under the node's lab directory.  The node namespace has no
route out, so the daemon's bridge and iptables rules stay inside it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
from typing import Optional

from ._network import netns_path, nsenter_prefix
from ._system import (
    LabError, alive, kill_all, log_tail, mounts_under, pids_in_cgroups,
    pids_in_netns, pids_mentioning, remove_cgroups,
    terminate, unmount_all,
)

__all__ = ["DockerdLayout", "ping", "start_dockerd", "dockerd_running",
           "stop_dockerd", "CONTAINERD_RUN"]

CONTAINERD_RUN = "/run/containerd"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0


class DockerdLayout:
    """Where the dockerd of the node in ``directory`` keeps its things."""

    def __init__(self, directory: str, namespace: str):
        self.directory = directory
        self.namespace = namespace
        self.root = os.path.join(directory, "docker")
        self.socket = os.path.join(directory, "docker.sock")
        self.data_root = os.path.join(self.root, "data")
        self.exec_root = os.path.join(self.root, "exec")
        self.pidfile = os.path.join(self.root, "dockerd.pid")
        self.config = os.path.join(self.root, "daemon.json")
        self.key = os.path.join(self.root, "key.json")
        self.log = os.path.join(directory, "dockerd.log")
        self.cgroup_parent = namespace  # /flab-n1 in every hierarchy

    @property
    def docker_host(self) -> str:
        return "unix://" + self.socket


def ping(socket_path: str, timeout: float = 1.0) -> bool:
    """Whether the engine answers ``/_ping`` with 200."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(socket_path)
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            reply = s.recv(64)
    except OSError:
        return False
    return reply.startswith(b"HTTP/1.") and b" 200 " in reply[:16]


def _pid_from_file(path: str) -> Optional[int]:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def dockerd_running(layout: DockerdLayout) -> bool:
    pid = _pid_from_file(layout.pidfile)
    return pid is not None and alive(pid) and ping(layout.socket)


def start_dockerd(layout: DockerdLayout, bridge_cidr: str, spare=()) -> int:
    """
    Start the node's dockerd unless it is running and answering; returns
    its pid.  Leftovers of a crashed daemon are removed first (sparing the
    processes in ``spare``).
    """
    pid = _pid_from_file(layout.pidfile) if dockerd_running(layout) else None
    if pid is not None:
        return pid
    stop_dockerd(layout, spare)  # whatever a crashed one left
    for directory in (layout.root, layout.data_root, layout.exec_root):
        os.makedirs(directory, mode=0o700, exist_ok=True)
    with open(layout.config, "w") as f:
        json.dump({"deprecated-key-path": layout.key}, f)
    argv = nsenter_prefix(layout.namespace) + [
        "dockerd",
        "--data-root", layout.data_root,
        "--exec-root", layout.exec_root,
        "--pidfile", layout.pidfile,
        "--config-file", layout.config,
        "--cgroup-parent", "/" + layout.cgroup_parent,
        "-H", layout.docker_host,
        "--bip", bridge_cidr,
        "--shutdown-timeout", "5",
    ]
    with open(layout.log, "ab") as log:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            start_new_session=True, close_fds=True)
    deadline = time.monotonic() + START_TIMEOUT
    while not ping(layout.socket):
        if process.poll() is not None:
            raise LabError("dockerd of %s exited with status %s; the end of "
                           "%s:\n%s" % (layout.namespace, process.returncode,
                                        layout.log, log_tail(layout.log)))
        if time.monotonic() > deadline:
            raise LabError("dockerd of %s did not answer within %d s; the end "
                           "of %s:\n%s" % (layout.namespace, START_TIMEOUT,
                                           layout.log, log_tail(layout.log)))
        time.sleep(0.1)
    # nsenter execs dockerd, so the child is the daemon itself.
    return process.pid


def _shim_sockets(layout: DockerdLayout):
    """
    containerd's shims listen in a fixed directory, on sockets named by a
    hash of containerd's address and the container; a killed shim leaves
    its socket behind.
    """
    address = os.path.join(layout.exec_root, "containerd", "containerd.sock")
    try:
        containers = os.listdir(os.path.join(layout.data_root, "containers"))
    except OSError:
        return []
    return [os.path.join(CONTAINERD_RUN, "s", hashlib.sha256(
        ("%s/moby/%s" % (address, c)).encode()).hexdigest())
        for c in containers]


def stop_dockerd(layout: DockerdLayout, spare=()) -> None:
    """
    Stop the node's dockerd and everything it started: SIGTERM first (it
    stops its containers), then a sweep of the namespace's processes, the
    cgroups and anything naming the node's docker directory.  Mounts, shim
    sockets and cgroups go too; the data root stays (``down`` removes it).
    Processes in ``spare`` (the node's flocker-node) are left running.
    """
    pid = _pid_from_file(layout.pidfile)
    if pid is not None and alive(pid) and _is_dockerd(pid, layout):
        terminate(pid, STOP_TIMEOUT)
    for _ in range(3):
        pids = (set(pids_in_netns(netns_path(layout.namespace)))
                | pids_in_cgroups(layout.cgroup_parent)
                | set(pids_mentioning(layout.root)))
        pids.discard(os.getpid())
        pids.difference_update(spare)
        if not pids:
            break
        kill_all(pids)
    unmount_all(layout.root)
    # Runtime state only; a stale containerd.pid whose process is a zombie
    # not yet reaped would make the next dockerd wait for a dead containerd.
    if not mounts_under(layout.exec_root):
        shutil.rmtree(layout.exec_root, ignore_errors=True)
    for path in _shim_sockets(layout):
        try:
            os.unlink(path)
        except OSError:
            pass
    remove_cgroups(layout.cgroup_parent)
    for path in (layout.pidfile, layout.socket):
        try:
            os.unlink(path)
        except OSError:
            pass


def _is_dockerd(pid: int, layout: DockerdLayout) -> bool:
    try:
        with open("/proc/%d/cmdline" % (pid,), "rb") as f:
            return layout.pidfile.encode() in f.read()
    except OSError:
        return False
