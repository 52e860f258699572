"""
Shared pieces of the lab benchmarks (transfer, downtime, converge): the
bench's own lab, deploys whose progress events carry timestamps, daemon
memory, configuration files, tables and JSON.

Every benchmark uses its own lab (prefix ``flabb-``, directory
/var/lib/flocker-bench-lab), never the default ``flab-`` one, and removes
it when it ends, also after a failure.

``python bench/_common.py deploy DEPLOYMENT APPLICATION`` is the deploy
child: it runs the deploy library (what flocker-deploy runs) against the
lab named by FLOCKER_IDENTITY/FLOCKER_KNOWN_HOSTS/FLOCKER_PORT and prints
each progress event as a JSON line with ``t``, the CLOCK_MONOTONIC time it
arrived (comparable with ``time.monotonic()`` in the benchmark itself).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

BENCH_PREFIX = "flabb-"
BENCH_DIRECTORY = "/var/lib/flocker-bench-lab"
MIB = 1024 * 1024
MB = 1000 * 1000
IMAGE = "flocker-lab/busybox:latest"


def require_root(script: str) -> None:
    if os.geteuid() != 0:
        sys.stderr.write(
            "%s: must run as root: it builds a lab of network namespaces, "
            "docker daemons and zfs-fuse pools (try sudo)\n" % (script,))
        raise SystemExit(2)


def say(line: str) -> None:
    print(line, flush=True)


@contextlib.contextmanager
def bench_lab(nodes: int, directory: str = BENCH_DIRECTORY,
              prefix: str = BENCH_PREFIX):
    """A lab of ``nodes`` nodes, removed afterwards whatever happens."""
    from flocker_async.lab import Lab
    lab = Lab(directory=directory, prefix=prefix,
              progress=lambda line: say("  lab: " + line))
    try:
        lab.down()  # a stale bench lab of an interrupted run
        started = time.monotonic()
        lab.up(nodes=nodes, daemons=True)
        say("lab up: %d nodes in %.0f s" % (nodes, time.monotonic() - started))
        yield lab
    finally:
        say("removing the bench lab")
        lab.down()


def daemon_pid(lab, node_name: str) -> Optional[int]:
    """The flocker-node pid the lab recorded for ``node_name``."""
    with open(lab.state_path) as f:
        state = json.load(f)
    for entry in state.get("nodes", []):
        if entry["name"] == node_name and entry.get("daemon"):
            return entry["daemon"].get("pid")
    return None


def rss_mib(pid: int) -> float:
    with open("/proc/%d/status" % (pid,)) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far."""
    with open("/proc/%d/stat" % (pid,)) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pids_named(name: str) -> List[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/comm" % (entry,)) as f:
                    if f.read().strip() == name:
                        found.append(int(entry))
            except OSError:
                pass
    return found


class RSSSampler:
    """Samples processes' RSS every ``interval`` s in a thread."""

    def __init__(self, pids: Sequence[int], interval: float = 0.05):
        self.pids = list(pids)
        self.interval = interval
        self.baseline = {pid: rss_mib(pid) for pid in self.pids}
        self.peak = dict(self.baseline)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for pid in self.pids:
                try:
                    self.peak[pid] = max(self.peak[pid], rss_mib(pid))
                except OSError:
                    pass
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def growth(self) -> Dict[int, float]:
        return {pid: self.peak[pid] - self.baseline[pid] for pid in self.pids}


# --- configuration files ------------------------------------------------------

def application_yaml(apps: Dict[str, dict]) -> str:
    return json.dumps({"version": 1, "applications": apps}, indent=1)


def deployment_yaml(nodes: Dict[str, List[str]]) -> str:
    return json.dumps({"version": 1, "nodes": nodes}, indent=1)


def write_configuration(directory: str, name: str, deployment: Dict[str, List[str]],
                        applications: Dict[str, dict]):
    """(deployment path, application path); JSON is YAML."""
    os.makedirs(directory, exist_ok=True)
    dep = os.path.join(directory, name + "-deployment.yml")
    app = os.path.join(directory, name + "-application.yml")
    with open(dep, "w") as f:
        f.write(deployment_yaml(deployment))
    with open(app, "w") as f:
        f.write(application_yaml(applications))
    return dep, app


# --- deploys --------------------------------------------------------------------

class DeployFailedError(RuntimeError):
    pass


class Deploy:
    """
    A deploy run by the deploy child; ``events`` fills as they arrive
    (each with ``t``), ``on_event`` is called for each in a reader thread.
    """

    def __init__(self, lab, deployment_path: str, application_path: str,
                 on_event: Optional[Callable[[dict], None]] = None,
                 timeout: float = 600.0):
        env = dict(os.environ)
        env.update(lab.env())
        self.events: List[dict] = []
        self.on_event = on_event
        self.started = time.monotonic()
        self.timeout = timeout
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "deploy",
             deployment_path, application_path],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=env)
        self._stderr = b""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._err_reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._err_reader.start()

    def _read(self):
        for line in self.process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            self.events.append(event)
            if self.on_event is not None:
                try:
                    self.on_event(event)
                except Exception as e:  # a benchmark bug: show it, go on
                    say("event handler failed: %r" % (e,))

    def _read_stderr(self):
        self._stderr = self.process.stderr.read()

    def wait(self) -> List[dict]:
        try:
            status = self.process.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise DeployFailedError("the deploy took longer than %d s" % (self.timeout,))
        self._reader.join()
        self._err_reader.join()
        self.ended = time.monotonic()
        if status != 0:
            raise DeployFailedError("deploy failed (exit %d): %s" % (
                status, self._stderr.decode("utf-8", "replace").strip()))
        return self.events

    @property
    def seconds(self) -> float:
        """The deploy library's time (the child's start-up not counted)."""
        start = first(self.events, action="bench-deploy-start")
        end = first(self.events, action="bench-deploy-end")
        if start is not None and end is not None:
            return end["t"] - start["t"]
        return self.ended - self.started


def deploy(lab, deployment_path, application_path, on_event=None) -> Deploy:
    """Run a deploy to its end; the finished ``Deploy``."""
    d = Deploy(lab, deployment_path, application_path, on_event)
    d.wait()
    return d


def first(events: Iterable[dict], **match) -> Optional[dict]:
    for event in events:
        if all(event.get(k) == v for k, v in match.items()):
            return event
    return None


def _deploy_child(deployment_path: str, application_path: str) -> int:
    from twisted.conch.ssh import keys
    from twisted.internet import defer, task

    from flocker_async import deploy as deploy_lib
    from flocker_async.config import load_configuration
    from flocker_async.ssh import SSHClient

    deployment = load_configuration(deployment_path, application_path)
    identity = keys.Key.fromFile(os.environ["FLOCKER_IDENTITY"])
    port = int(os.environ.get("FLOCKER_PORT", "4522"))
    outcome = {"status": 0}

    def emit(node, event):
        line = dict(event, t=time.monotonic(), deploy_node=node)
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()

    async def main(reactor):
        client = SSHClient(reactor, identity, os.environ["FLOCKER_KNOWN_HOSTS"],
                           idle_timeout=600)
        try:
            emit(None, {"action": "bench-deploy-start"})
            await deploy_lib.deploy(reactor, client, deployment, port, emit)
            emit(None, {"action": "bench-deploy-end"})
        except Exception as e:
            sys.stderr.write("%s: %s\n" % (type(e).__name__, e))
            outcome["status"] = 2

    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor)))
    return outcome["status"]


# --- output ---------------------------------------------------------------------

def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence]) -> None:
    cells = [[str(c) for c in header]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    say("")
    say(title)
    for n, row in enumerate(cells):
        say("  ".join(c.rjust(w) if n and i else c.ljust(w)
                      for i, (c, w) in enumerate(zip(row, widths))))
        if n == 0:
            say("  ".join("-" * w for w in widths))


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "%.2f" % (value,)
    return str(value)


def write_json(path: Optional[str], document: dict) -> None:
    if not path:
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(document, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
    say("wrote %s" % (path,))


def machine() -> str:
    import platform
    return "%s, %d cores, Linux %s" % (platform.node(), os.cpu_count(),
                                       platform.release())


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "deploy":
        sys.exit(_deploy_child(sys.argv[2], sys.argv[3]))
    sys.stderr.write("usage: _common.py deploy DEPLOYMENT APPLICATION\n")
    sys.exit(64)
