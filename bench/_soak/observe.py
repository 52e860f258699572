"""
What the soak observes of the lab for its checks: each node's ``state``,
containers, iptables, copies and snapshots, and the machine's processes.
Blocking; run from the soak's own threads.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from typing import Dict, List, Optional, Sequence, Tuple

from flocker_async.lab import LabError
from flocker_async.lab._system import pids_in_cgroups

from .checker import Process

_CONTAINER_ID = re.compile(r"\A[0-9a-f]{64}\Z")


def state(lab, node: str) -> Tuple[Optional[dict], Optional[str]]:
    """(the node's state report, None) or (None, why it did not answer)."""
    if not lab.is_powered_on(node):
        return None, "powered off"
    try:
        return lab.state(node, timeout=30), None
    except (LabError, OSError, subprocess.SubprocessError) as e:
        return None, str(e)


def running_containers(lab, node: str) -> Tuple[List[str], List[str]]:
    """(names, full ids) of the containers running on ``node``."""
    if not lab.is_powered_on(node):
        return [], []
    result = lab.exec(node, ["docker", "ps", "--no-trunc", "--format",
                             "{{.ID}} {{.Names}}"], timeout=60)
    if result.returncode != 0:
        raise LabError("docker ps on %s failed: %s" % (
            node, result.stderr.decode("utf-8", "replace").strip()))
    names, ids = [], []
    for line in result.stdout.decode().splitlines():
        if " " in line:
            cid, name = line.split(" ", 1)
            ids.append(cid)
            names.append(name.strip())
    return names, ids


def iptables(lab, node: str) -> str:
    """``iptables-save`` of ``node``'s nat and raw tables."""
    out = []
    for table in ("nat", "raw"):
        result = lab.exec(node, ["iptables-save", "-t", table], timeout=60)
        if result.returncode != 0:
            raise LabError("iptables-save -t %s on %s failed: %s" % (
                table, node, result.stderr.decode("utf-8", "replace").strip()))
        out.append(result.stdout.decode())
    return "".join(out)


def zfs(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["zfs"] + list(argv), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def copy_properties(dataset: str) -> Optional[Dict[str, str]]:
    """Our properties of ``dataset`` (None if it does not exist)."""
    result = zfs("get", "-H", "-o", "property,value",
                 "org.flocker-async:owner,org.flocker-async:epoch,"
                 "org.flocker-async:read-only,mounted,mountpoint", dataset)
    if result.returncode != 0:
        return None
    return dict(line.split("\t", 1) for line in result.stdout.splitlines()
                if "\t" in line)


def snapshots(dataset: str) -> List[str]:
    """``dataset``'s snapshots, oldest first (names after the @)."""
    result = zfs("list", "-H", "-t", "snapshot", "-o", "name", "-s", "createtxg",
                 "-d", "1", dataset)
    if result.returncode != 0:
        return []
    return [line.split("@", 1)[1] for line in result.stdout.splitlines() if "@" in line]


def pool_datasets(pool: str) -> List[str]:
    result = zfs("list", "-H", "-o", "name", "-t", "filesystem", "-r", pool)
    return result.stdout.split() if result.returncode == 0 else []


def _read(path: str) -> Optional[bytes]:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def processes() -> List[Process]:
    """Every process on the machine now."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _read("/proc/%s/stat" % (entry,))
        argv = _read("/proc/%s/cmdline" % (entry,))
        if stat is None or argv is None:
            continue
        fields = stat.decode("utf-8", "replace").rsplit(")", 1)[1].split()
        try:
            parent, start = int(fields[1]), fields[19]
        except (IndexError, ValueError):
            continue
        found.append(Process(int(entry), start, parent, tuple(
            a.decode("utf-8", "replace") for a in argv.split(b"\0") if a)))
    return found


def shims(node, procs: Sequence[Process]) -> Dict[int, str]:
    """containerd shims of ``node``'s dockerd: pid -> container id."""
    found = {}
    address = node.dockerd.exec_root
    for p in procs:
        if not p.name.startswith("containerd-shim"):
            continue
        argv = list(p.argv)
        if "-address" in argv and "-id" in argv:
            index = argv.index("-address")
            if index + 1 < len(argv) and argv[index + 1].startswith(address):
                found[p.pid] = argv[argv.index("-id") + 1]
    return found


def cgroup_containers(node) -> Dict[int, Optional[str]]:
    """Processes in ``node``'s docker cgroups: pid -> container id (None when
    the cgroup is not a container's)."""
    parent = "/" + node.dockerd.cgroup_parent + "/"
    found: Dict[int, Optional[str]] = {}
    for pid in pids_in_cgroups(node.dockerd.cgroup_parent):
        text = _read("/proc/%d/cgroup" % (pid,))
        if text is None:
            continue
        container = None
        for line in text.decode("utf-8", "replace").splitlines():
            path = line.split(":", 2)[-1]
            if path.startswith(parent):
                leaf = path[len(parent):].split("/")[0]
                if _CONTAINER_ID.match(leaf):
                    container = leaf
        found[pid] = container
    return found


def dockerds(node, procs: Sequence[Process]) -> List[int]:
    return [p.pid for p in procs if p.name == "dockerd"
            and node.dockerd.pidfile in p.argv]


def docker_clients(node, procs: Sequence[Process]) -> List[Process]:
    return [p for p in procs if p.name == "docker"
            and any(node.docker_socket in a for a in p.argv)]


def kernel_lines(word: str, limit: int = 5) -> List[str]:
    """The kernel log's last lines naming ``word`` (a segfault, say)."""
    try:
        result = subprocess.run(["dmesg", "-T"], capture_output=True, text=True,
                                timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line for line in result.stdout.splitlines() if word in line][-limit:]


def summarise_state(document: Optional[dict], why: Optional[str]) -> str:
    """A node's state report in a few lines, for a violation's report."""
    if document is None:
        return "    no state: %s" % (why,)
    volumes = ["%s owner %s epoch %s %s, %d snapshots" % (
        v.get("name"), v.get("owner"), v.get("epoch"),
        "writable" if v.get("writable") else "read-only", len(v.get("snapshots", [])))
        for v in document.get("volumes", [])]
    lines = [
        "    generation %s, down %s, last error %s" % (
            document.get("generation"), document.get("down"), document.get("last_error")),
        "    applications: %s" % (", ".join(
            "%s (%s)" % (a.get("name"), "running" if a.get("running") else "stopped")
            for a in document.get("applications", [])) or "none",),
        "    volumes: %s" % ("; ".join(volumes) or "none",),
        "    routes: %s" % (json.dumps(document.get("routes", {}), sort_keys=True),),
        "    set aside: %s" % (", ".join("%s.%s (epoch %s)" % (
            c.get("volume"), c.get("label"), c.get("epoch"))
            for c in document.get("set_aside", [])) or "none",),
        "    replication: %s" % ("; ".join(
            "%s -> %s: %s" % (volume, s.get("standby"), s.get("last_error") or "ok")
            for volume, statuses in sorted(document.get("replication", {}).items())
            for s in statuses) or "none",),
    ]
    return "\n".join(lines)


class OwnershipLog:
    """
    Every copy of every volume of the lab's pools (its owner, epoch and
    whether it is read-only, and set-aside copies), read with one ``zfs
    list`` every ``interval`` seconds in a thread; keeps the changes, with
    when they were seen.  For the report of a lost write: who held what
    around it.
    """

    def __init__(self, pools, interval: float = 1.0):
        import threading
        self.pools = list(pools)
        self.interval = interval
        self.changes: List[Tuple[float, str, str]] = []  # (time, dataset, "owner epoch ro")
        self._last: Dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="ownership")

    def start(self) -> "OwnershipLog":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        import time
        while not self._stop.is_set():
            try:
                result = zfs("list", "-H", "-t", "filesystem", "-o",
                             "name,org.flocker-async:owner,org.flocker-async:epoch,"
                             "org.flocker-async:read-only", timeout=20)
            except subprocess.TimeoutExpired:
                result = None
            now = time.time()
            if result is not None and result.returncode == 0:
                seen = {}
                for line in result.stdout.splitlines():
                    fields = line.split("\t")
                    if len(fields) == 4 and "/" in fields[0] and \
                            fields[0].split("/", 1)[0] in self.pools:
                        seen[fields[0]] = "owner %s epoch %s read-only %s" % tuple(fields[1:])
                for dataset in sorted(set(seen) | set(self._last)):
                    value = seen.get(dataset, "gone")
                    if self._last.get(dataset) != value:
                        self.changes.append((now, dataset, value))
                self._last = {d: v for d, v in seen.items()}
            self._stop.wait(self.interval)

    def around(self, t: float, before: float = 30.0, after: float = 10.0,
               app: Optional[str] = None) -> List[Tuple[float, str, str]]:
        return [c for c in self.changes if t - before <= c[0] <= t + after
                and (app is None or c[1].split("/", 1)[1].split(".", 1)[0] == app)]
