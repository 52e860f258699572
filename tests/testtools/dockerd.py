"""
A real ``dockerd`` for functional tests (root only), isolated from the host.

Each daemon runs in a network namespace of its own (``nsenter --net``; ``ip
netns exec`` remounts /sys and dockerd then fails), with its own data root,
exec root, pidfile, socket, configuration file, key file and cgroup parent,
all under ``BASE_DIR/NAME``.  The namespace has no route out, so the
daemon's bridge and iptables rules stay inside it.

Starting a daemon takes a couple of seconds, so tests share one per process
(``shared_dockerd()``), stopped at exit; trial has no per-class hooks to
count users with.  A crashed run's leftovers (marked by an owner file whose
process is gone) are removed before a new daemon starts.
"""

from __future__ import annotations

import atexit
import hashlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import time
import uuid

from flocker_async.lab._dockerd import ping
from tests.testtools.netns import PREFIX, host_routes, run

BASE_DIR = "/var/tmp/fat-dockerd"
_CGROUP_ROOT = "/sys/fs/cgroup"
_CONTAINERD_RUN = "/run/containerd"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


def _process_start_time(pid: int):
    """The kernel's start time of ``pid``, or None if it is gone."""
    try:
        with open("/proc/%d/stat" % (pid,)) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[19]


def _alive(pid: int) -> bool:
    try:
        with open("/proc/%d/stat" % (pid,)) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _free_bridge_subnet():
    """A /24 for docker0 that overlaps nothing the host routes."""
    used = [n for n in host_routes() if n.version == 4]
    for third in range(1, 255):
        candidate = ipaddress.ip_network("10.214.%d.0/24" % (third,))
        if not any(candidate.overlaps(n) for n in used):
            return candidate
    raise RuntimeError("no free bridge subnet under 10.214.0.0/16")


class Dockerd:
    """One dockerd in its own network namespace; ``stop()`` removes it all."""

    def __init__(self, name=None):
        self.name = name or "%sdk-%s" % (PREFIX, uuid.uuid4().hex[:6])
        self.directory = os.path.join(BASE_DIR, self.name)
        self.socket_path = os.path.join(self.directory, "docker.sock")
        self.log_path = os.path.join(self.directory, "dockerd.log")
        self.netns_path = "/var/run/netns/" + self.name
        self.process = None
        self.bridge = None
        # Extra per-daemon state tests may keep (e.g. images imported).
        self.images_loaded = False

    def start(self):
        remove_stale()
        self._made_containerd_run_dir = not os.path.exists(_CONTAINERD_RUN)
        os.makedirs(self.directory)
        # Claim the directory first: if this process dies from here on, the
        # next run sees a dead owner and cleans up.
        with open(os.path.join(self.directory, "owner"), "w") as f:
            json.dump({"pid": os.getpid(),
                       "start": _process_start_time(os.getpid())}, f)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self):
        run(["ip", "netns", "add", self.name])
        run(["nsenter", "--net=" + self.netns_path,
             "ip", "link", "set", "lo", "up"])
        self.bridge = _free_bridge_subnet()
        config = os.path.join(self.directory, "daemon.json")
        with open(config, "w") as f:
            # The identity key would otherwise go to /etc/docker/key.json.
            json.dump({"deprecated-key-path":
                       os.path.join(self.directory, "key.json")}, f)
        argv = [
            "nsenter", "--net=" + self.netns_path,
            "dockerd",
            "--data-root", os.path.join(self.directory, "data"),
            "--exec-root", os.path.join(self.directory, "exec"),
            "--pidfile", os.path.join(self.directory, "dockerd.pid"),
            "--config-file", config,
            "--cgroup-parent", "/" + self.name,
            "-H", "unix://" + self.socket_path,
            "--bip", "%s/%d" % (self.bridge.network_address + 1,
                                self.bridge.prefixlen),
            "--shutdown-timeout", "2",
        ]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while not ping(self.socket_path):
            if self.process.poll() is not None:
                raise RuntimeError("dockerd exited with status %s:\n%s" % (
                    self.process.returncode, self.log_tail()))
            if time.monotonic() > deadline:
                raise RuntimeError("dockerd did not answer /_ping within %ds:"
                                   "\n%s" % (START_TIMEOUT, self.log_tail()))
            time.sleep(0.1)

    def log_tail(self, lines=30) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            # SIGTERM lets dockerd stop its containers, containerd and
            # docker-proxy processes itself; the sweep below is the backstop.
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        _remove_daemon(self.name)
        if getattr(self, "_made_containerd_run_dir", False):
            # containerd puts shim sockets in a fixed directory; remove it
            # if we brought it and nobody else is using it (rmdir of a
            # non-empty directory fails harmlessly).
            for directory in (_CONTAINERD_RUN + "/s", _CONTAINERD_RUN):
                try:
                    os.rmdir(directory)
                except OSError:
                    break


def _pids_in_netns(netns_path: str):
    try:
        target = os.stat(netns_path)
    except OSError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat("/proc/%s/ns/net" % (entry,))
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            pids.append(int(entry))
    return pids


def _pids_mentioning(directory: str):
    needle = directory.encode() + b"/"
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open("/proc/%s/cmdline" % (entry,), "rb") as f:
                if needle in f.read():
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def _cgroup_dirs(name: str):
    """This daemon's cgroup directories, deepest first."""
    found = []
    try:
        controllers = os.listdir(_CGROUP_ROOT)
    except OSError:
        return found
    for controller in controllers:
        top = os.path.join(_CGROUP_ROOT, controller, name)
        if os.path.isdir(top):
            for dirpath, _, _ in os.walk(top, topdown=False):
                found.append(dirpath)
    return found


def _pids_in_cgroups(name: str):
    pids = set()
    for directory in _cgroup_dirs(name):
        try:
            with open(os.path.join(directory, "cgroup.procs")) as f:
                pids.update(int(line) for line in f if line.strip())
        except OSError:
            continue
    return pids


def _kill_all(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


def _mounts_under(directory: str):
    prefix = directory + "/"
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == directory or point.startswith(prefix):
                points.append(point)
    return points


def _remove_shim_sockets(directory: str):
    """
    containerd's shims listen in a fixed directory, on a socket named by a
    hash of containerd's address and the container; a killed shim leaves it.
    """
    address = os.path.join(directory, "exec", "containerd", "containerd.sock")
    try:
        containers = os.listdir(os.path.join(directory, "data", "containers"))
    except OSError:
        return
    for container in containers:
        digest = hashlib.sha256(
            ("%s/moby/%s" % (address, container)).encode()).hexdigest()
        try:
            os.unlink(os.path.join(_CONTAINERD_RUN, "s", digest))
        except OSError:
            pass


def _remove_daemon(name: str):
    """
    Remove everything of daemon ``name``: its processes (the daemon's
    namespace, its containers' cgroups, anything naming its directory),
    mounts, cgroups, directory and namespace.  Safe to call repeatedly.
    """
    directory = os.path.join(BASE_DIR, name)
    netns_path = "/var/run/netns/" + name
    for _ in range(3):
        pids = (set(_pids_in_netns(netns_path)) | _pids_in_cgroups(name)
                | set(_pids_mentioning(directory)))
        pids.discard(os.getpid())
        if not pids:
            break
        _kill_all(pids)
    for point in sorted(_mounts_under(directory), key=len, reverse=True):
        if run(["umount", point], check=False).returncode != 0:
            run(["umount", "-l", point], check=False)
    _remove_shim_sockets(directory)
    for cgroup in _cgroup_dirs(name):
        try:
            os.rmdir(cgroup)
        except OSError:
            pass
    shutil.rmtree(directory, ignore_errors=True)
    try:
        os.rmdir(BASE_DIR)  # only when no other daemon is left in it
    except OSError:
        pass
    if os.path.exists(netns_path):
        run(["ip", "netns", "del", name], check=False)


def remove_stale():
    """Remove daemons of earlier runs whose owning process is gone."""
    try:
        names = os.listdir(BASE_DIR)
    except FileNotFoundError:
        return
    for name in names:
        if not name.startswith(PREFIX):
            continue
        try:
            with open(os.path.join(BASE_DIR, name, "owner")) as f:
                owner = json.load(f)
        except (OSError, ValueError):
            owner = None
        if owner is not None and _process_start_time(owner["pid"]) == owner["start"]:
            continue  # another live test run's daemon
        _remove_daemon(name)


_shared = None
_shared_error = None


def shared_dockerd() -> Dockerd:
    """
    The process-wide test daemon, started on first use, stopped at exit.
    A daemon that failed to start fails every later caller at once with the
    same error instead of being retried by each test.
    """
    global _shared, _shared_error
    if _shared_error is not None:
        raise _shared_error
    if _shared is None:
        daemon = Dockerd()
        try:
            daemon.start()
        except Exception as e:
            _shared_error = e
            raise
        atexit.register(daemon.stop)
        _shared = daemon
    return _shared
