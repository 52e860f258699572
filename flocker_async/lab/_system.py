"""
Blocking helpers for the lab: commands, processes, mounts and cgroups.

The lab is a command-line tool, not the daemon, so it may block; every
command is still an argument list (never a shell) and a failure carries
the command's own words.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

__all__ = [
    "LabError", "CommandError", "run", "require_commands", "process_start_time",
    "alive", "threads_alive", "mount_table", "pids_in_netns", "pids_mentioning", "kill_all", "mounts_under",
    "unmount_all", "cgroup_dirs", "pids_in_cgroups", "remove_cgroups",
    "ancestors", "descendants", "command_name", "kill_at_once", "log_tail",
]

_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CGROUP_ROOT = "/sys/fs/cgroup"


class LabError(Exception):
    """Something the operator can act on; the message says what and how."""


class CommandError(LabError):
    """A command failed; the message holds the command and what it said."""

    def __init__(self, argv: Sequence[str], status: int, output: str):
        self.argv = list(argv)
        self.status = status
        self.output = output
        text = "%s failed (exit status %s)" % (" ".join(self.argv), status)
        if output.strip():
            text += ": " + output.strip()
        super().__init__(text)


def system_env(extra: Optional[dict] = None) -> dict:
    env = dict(os.environ)
    env["PATH"] = env.get("PATH", _SYSTEM_PATH) + ":" + _SYSTEM_PATH
    if extra:
        env.update(extra)
    return env


def run(argv: Sequence[str], check: bool = True, timeout: float = 120,
        input: Optional[bytes] = None, env: Optional[dict] = None
        ) -> subprocess.CompletedProcess:
    """Run ``argv`` to completion, capturing its output."""
    argv = [str(a) for a in argv]
    try:
        result = subprocess.run(argv, capture_output=True, timeout=timeout,
                                input=input, env=env or system_env())
    except FileNotFoundError:
        raise LabError("%s: command not found" % (argv[0],))
    except subprocess.TimeoutExpired:
        raise LabError("%s did not finish within %d seconds"
                       % (" ".join(argv), timeout))
    if check and result.returncode != 0:
        raise CommandError(argv, result.returncode,
                           result.stderr.decode("utf-8", "replace")
                           or result.stdout.decode("utf-8", "replace"))
    return result


# Which Debian package brings each command the lab runs.
PACKAGES = {
    "ip": "iproute2", "nsenter": "util-linux", "dockerd": "docker.io",
    "docker": "docker.io", "zpool": "zfs-fuse", "zfs": "zfs-fuse",
    "zfs-fuse": "zfs-fuse", "debootstrap": "debootstrap", "tar": "tar",
    "iptables": "iptables",
}


def require_commands(names: Iterable[str]) -> None:
    """``LabError`` naming every missing command and its package."""
    path = system_env()["PATH"]
    missing = [n for n in names if shutil.which(n, path=path) is None]
    if missing:
        packages = sorted({PACKAGES.get(n, n) for n in missing})
        raise LabError("missing command%s %s; install with: apt-get install %s"
                       % ("s" if len(missing) > 1 else "", ", ".join(missing),
                          " ".join(packages)))


def process_start_time(pid: int) -> Optional[str]:
    """The kernel's start time of ``pid`` (tells a reused pid), or None."""
    try:
        with open("/proc/%d/stat" % (pid,)) as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _running(stat_path: str) -> bool:
    """Whether the task of a /proc .../stat file runs (a zombie does not)."""
    try:
        with open(stat_path) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    return _running("/proc/%d/stat" % (pid,))


def threads_alive(pid: int) -> bool:
    """
    Whether a thread of ``pid`` still runs.  A leader shows as a zombie
    while its other threads are still exiting, and the process's open
    files (a lock, say) go only with the last of them.
    """
    try:
        tasks = os.listdir("/proc/%d/task" % (pid,))
    except OSError:
        return False
    return any(_running("/proc/%d/task/%s/stat" % (pid, task))
               for task in tasks)


def cmdline(pid: int) -> List[str]:
    try:
        with open("/proc/%d/cmdline" % (pid,), "rb") as f:
            return [os.fsdecode(a) for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def ancestors() -> Set[int]:
    """This process and its ancestors: never killed by a sweep."""
    found: Set[int] = set()
    pid: Optional[int] = os.getpid()
    while pid is not None and pid > 1 and pid not in found:
        found.add(pid)
        pid = _parent(pid)
    return found


def _pids() -> List[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def _parent(pid: int) -> Optional[int]:
    try:
        with open("/proc/%d/stat" % (pid,)) as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def descendants(pids: Iterable[int]) -> Set[int]:
    """Every child, grandchild, ... of ``pids`` (not ``pids`` themselves)."""
    children: Dict[Optional[int], List[int]] = {}
    for pid in _pids():
        children.setdefault(_parent(pid), []).append(pid)
    found: Set[int] = set()
    todo = list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def command_name(pid: int) -> str:
    """The kernel's short name of ``pid`` (``comm``), or ``?``."""
    try:
        with open("/proc/%d/comm" % (pid,), "rb") as f:
            return f.read().strip().decode("utf-8", "replace") or "?"
    except OSError:
        return "?"


def pids_in_netns(netns_path: str) -> List[int]:
    try:
        target = os.stat(netns_path)
    except OSError:
        return []
    found = []
    for pid in _pids():
        try:
            st = os.stat("/proc/%d/ns/net" % (pid,))
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            found.append(pid)
    return found


def pids_mentioning(directory: str) -> List[int]:
    """Processes whose command line names something under ``directory``."""
    needle = directory.rstrip("/").encode() + b"/"
    found = []
    for pid in _pids():
        try:
            with open("/proc/%d/cmdline" % (pid,), "rb") as f:
                if needle in f.read():
                    found.append(pid)
        except OSError:
            continue
    return found


def kill_all(pids: Iterable[int], timeout: float = 10) -> None:
    """SIGKILL ``pids`` (never this process or its ancestors) and wait."""
    pids = set(pids) - ancestors()
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


def kill_at_once(find: Callable[[], Iterable[int]], timeout: float = 10,
                 rounds: int = 20) -> Dict[int, str]:
    """
    SIGKILL every process ``find()`` names as if at one instant: each is
    SIGSTOPped first, and ``find()`` is asked again until it names no new
    one, so none can notice another's death and react (restart a
    container, clean up) or fork a child that escapes.  Never this process
    or its ancestors.  Returns the pids killed and their command names.
    """
    spared = ancestors()
    stopped: Dict[int, str] = {}
    try:
        for _ in range(rounds):
            new = set(find()) - set(stopped) - spared
            if not new:
                break
            for pid in new:
                name = command_name(pid)
                try:
                    os.kill(pid, signal.SIGSTOP)
                except ProcessLookupError:
                    continue
                stopped[pid] = name
    finally:
        kill_all(stopped, timeout)
    return stopped


def terminate(pid: int, timeout: float) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive(pid):
        kill_all([pid])


def _unescape(field: str) -> str:
    return (field.replace("\\040", " ").replace("\\011", "\t")
            .replace("\\012", "\n").replace("\\134", "\\"))


def mount_table() -> List[Tuple[str, str, str]]:
    """This mount namespace's mounts: (mount point, type, source)."""
    table = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            try:
                tail = fields.index("-")
            except ValueError:
                continue
            table.append((_unescape(fields[4]), fields[tail + 1],
                          _unescape(fields[tail + 2])))
    return table


def mounts_under(directory: str) -> List[str]:
    directory = directory.rstrip("/")
    return [point for point, _, _ in mount_table()
            if point == directory or point.startswith(directory + "/")]


def unmount_all(directory: str) -> None:
    """Unmount everything at or under ``directory``, deepest first."""
    for _ in range(3):
        points = mounts_under(directory)
        if not points:
            return
        for point in sorted(set(points), key=len, reverse=True):
            if run(["umount", point], check=False).returncode != 0:
                run(["umount", "-l", point], check=False)


def cgroup_dirs(name: str) -> List[str]:
    """The cgroup directories ``/<name>`` in every hierarchy, deepest first."""
    found: List[str] = []
    try:
        controllers = os.listdir(CGROUP_ROOT)
    except OSError:
        return found
    candidates = [os.path.join(CGROUP_ROOT, name)]  # cgroup v2
    candidates += [os.path.join(CGROUP_ROOT, c, name) for c in controllers]
    for top in candidates:
        if os.path.isdir(top) and top not in found:
            for dirpath, _, _ in os.walk(top, topdown=False):
                if dirpath not in found:
                    found.append(dirpath)
    return found


def pids_in_cgroups(name: str) -> Set[int]:
    pids: Set[int] = set()
    for directory in cgroup_dirs(name):
        try:
            with open(os.path.join(directory, "cgroup.procs")) as f:
                pids.update(int(line) for line in f if line.strip())
        except (OSError, ValueError):
            continue
    return pids


def remove_cgroups(name: str) -> None:
    for directory in cgroup_dirs(name):
        try:
            os.rmdir(directory)
        except OSError:
            pass


def log_tail(path: str, lines: int = 20, offset: int = 0) -> str:
    """The last ``lines`` lines of ``path`` written after byte ``offset``."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(offset, size - 64 * 1024))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])
