"""
Fault tests of "survive a dead node", on a real 3-node lab driven with the
real flocker-deploy: standby replication and ``--down`` take-overs, with
nodes powered off (``Lab.power_off``: every process SIGKILLed, link down),
partitioned, and daemons and ``zfs send``/``zfs recv`` processes killed at
chosen moments.

The application is the busybox HTTP server with a volume (HTTP_APP of
tests/acceptance/test_move.py) replicated every 2 s to its standbys, and
the append CGI of tests/faults/test_faults.py, so every write a client saw
acknowledged is a line in the volume.  After every fault and one more
deploy (or convergence), the promises:

* the application runs on exactly one node;
* every write acknowledged before the last replication the take-over used
  is in the live copy (and every write acknowledged at any time when no
  take-over followed), and the data written once is intact;
* exactly one writable copy of the volume: by our property
  ``org.flocker-async:read-only``, by ZFS's ``readonly`` (zfs-fuse shows a
  copy mounted read-only as ``off`` with source ``temporary``, so that
  counts as read-only) and by a real write attempt;
* no set-aside copy was destroyed;
* no ``zfs``/``ssh`` process of the lab's pools is left behind;
* flocker-deploy never prints a traceback;
* every other node's nat rules forward the application's port to the node
  running it, which forwards it nowhere.

Cases: the take-over target dies mid take-over (it returns, or stays dead
and the operator declares both down, putting the application on the third
node, a standby too); the old owner returns mid take-over; replication cut
at every step (standby daemon SIGKILLed during a receive, its ``zfs recv``
killed, the owner's ``zfs send`` killed, the standby partitioned mid-push,
the owner's daemon SIGKILLed between two rounds), each resumed by the next
round from the last common snapshot; two ``--down`` deploys racing.

One lab (prefix ``flff-``, /var/lib/flocker-failover-faults-lab) serves the
module: built (after removing what a crashed run left) by the first test,
taken down when the test process exits.  Each test starts from the
application running on one node with both others as fresh standbys, every
node powered on and connected (``setUp`` mends what a test left).
``FLOCKER_FAILOVER_FAULTS_KEEP_LAB=1`` keeps the lab for a post-mortem,
``FLOCKER_FAILOVER_FAULTS_LOGS=DIR`` keeps the daemons' logs there, and
``FLOCKER_FAULTS_LOG=PATH`` appends each flocker-deploy's output there.
"""

from __future__ import annotations

import atexit
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from flocker_async.lab import Lab, LabError

from . import take_turns
from flocker_async.lab._lab import CONVERGENCE_INTERVAL
from flocker_async.volume._common import snapshot_time
from tests.acceptance.test_move import HTTP_APP
from tests.faults.test_faults import APPEND_CGI, Deploy, stream_processes

PREFIX = "flff-"
DIRECTORY = "/var/lib/flocker-failover-faults-lab"
BIN = os.path.dirname(sys.executable)
APP = "web"
PORT = 8080
REPLICATION_INTERVAL = 2
# Written once; big enough that a push of it, or of a quarter of it, can
# be caught in flight.
BULK_BYTES = 160 << 20
# Rewritten before each cut replication round: what that round carries.
INCREMENT_BYTES = 40 << 20
# flocker-deploy's own limit on a silent node (a node powered off mid-deploy
# is noticed after it), and ours on flocker-deploy.
DEPLOY_TIMEOUT = 15
DEPLOY_HARD_LIMIT = 180
# How long a node that came back may take to converge (it asks its peers
# at start, then every convergence interval).
SETTLE = 3 * CONVERGENCE_INTERVAL + 15

_VOLUME = "      mountpoint: /data\n"
assert HTTP_APP.endswith(_VOLUME)
APPLICATION = HTTP_APP + "      replication_interval: %ds\n" % (REPLICATION_INTERVAL,)


def deployment(placement, standby=()):
    """A deployment file: ``placement`` [(address, [apps])], the
    application's ``standby`` nodes."""
    lines = ["version: 1", "nodes:"]
    for address, apps in placement:
        lines.append('  "%s": [%s]' % (address, ", ".join(apps)))
    if standby:
        lines.append("standby:")
        lines.append("  %s: [%s]" % (APP, ", ".join('"%s"' % a for a in standby)))
    return "\n".join(lines) + "\n"


class StateClient:
    """The nodes' ``state`` reports by address (``Lab.state``)."""

    def __init__(self, lab: Lab):
        self.lab = lab

    def state(self, address: str) -> dict:
        """The node's state report; ``RuntimeError`` if it did not answer."""
        try:
            return self.lab.state(address)
        except LabError as e:
            raise RuntimeError(str(e))

    def close(self):
        pass


_LAB: dict = {}


def shared_lab() -> Lab:
    """The module's lab, built on first use and removed at exit."""
    if "lab" not in _LAB:
        lab = Lab(directory=DIRECTORY, prefix=PREFIX, progress=_lab_progress)
        lab.down()  # what a crashed earlier run left
        if not os.environ.get("FLOCKER_FAILOVER_FAULTS_KEEP_LAB"):
            atexit.register(lab.down)
        if os.environ.get("FLOCKER_FAILOVER_FAULTS_LOGS"):
            # Registered after, so run before, the lab's removal.
            atexit.register(_keep_logs, lab, os.environ["FLOCKER_FAILOVER_FAULTS_LOGS"])
        take_turns(__name__, lab, _LAB)
        lab.up(nodes=3)
        _LAB["lab"] = lab
        _LAB["states"] = StateClient(lab)
        atexit.register(_LAB["states"].close)
        # Every write acknowledged (id -> when), those a take-over may have
        # lost (acknowledged by an owner after the snapshot the take-over
        # used), the files written into the volume (name -> sha256), and
        # every set-aside copy seen (dataset names): each test checks them.
        _LAB["acked"] = {}
        _LAB["may_lose"] = set()
        _LAB["files"] = {}
        _LAB["set_aside"] = set()
        _LAB["next_id"] = [1]
    return _LAB["lab"]


def _lab_progress(line: str) -> None:
    """The lab's own account (a zfs-fuse restart, say) in $FLOCKER_FAULTS_LOG."""
    if os.environ.get("FLOCKER_FAULTS_LOG"):
        with open(os.environ["FLOCKER_FAULTS_LOG"], "a") as f:
            f.write("--- %s lab: %s\n" % (time.strftime("%H:%M:%S"), line))


def _keep_logs(lab: Lab, directory: str) -> None:
    """Copy every node's daemon log into ``directory``."""
    os.makedirs(directory, exist_ok=True)
    for node in lab.nodes:
        logs = os.path.dirname(node.daemon_log)
        for name in os.listdir(logs) if os.path.isdir(logs) else []:
            if name.startswith(os.path.basename(node.daemon_log)):  # rotated ones too
                shutil.copy(os.path.join(logs, name),
                            os.path.join(directory, "%s-%s" % (node.name, name)))


def _take_ids(count: int) -> int:
    """The first of ``count`` write ids never used before (a write that
    was not acknowledged may still be in the volume)."""
    first = _LAB["next_id"][0]
    _LAB["next_id"][0] += count
    return first


class Writer:
    """
    A client appending numbered lines through the application's port,
    alternating between ``addresses``, recording when each write was
    acknowledged.  Bounded: it stops when told or after ``limit`` requests.
    """

    def __init__(self, addresses, acked, limit=3000):
        self.addresses = list(addresses)
        self.first_id = _take_ids(limit)
        self.acked = acked
        self.limit = limit
        self.count = 0
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        for i in range(self.limit):
            if self.stop_event.is_set():
                return
            write_id = self.first_id + i
            address = self.addresses[i % len(self.addresses)]
            try:
                with urllib.request.urlopen(
                        "http://%s:%d/cgi-bin/w?%d" % (address, PORT, write_id),
                        timeout=2) as response:
                    if response.read().decode().strip() == "ok %d" % (write_id,):
                        self.acked[write_id] = time.time()
                        self.count += 1
            except OSError:
                pass  # not acknowledged; it may or may not be there
            self.stop_event.wait(0.05)

    def stop(self):
        self.stop_event.set()
        self.thread.join(30)


def _pids():
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _argv(pid):
    try:
        with open("/proc/%d/cmdline" % (pid,), "rb") as f:
            return [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def zfs_processes(verb: str, dataset: str):
    """Pids of ``zfs VERB ...`` processes naming ``dataset`` (or one of its
    snapshots)."""
    found = []
    for pid in _pids():
        argv = _argv(pid)
        if (len(argv) > 1 and os.path.basename(argv[0]) == "zfs" and verb in argv
                and any(a == dataset or a.startswith(dataset + "@") for a in argv)):
            found.append(pid)
    return found


def _mounted(directory: str) -> bool:
    """Whether a file system is mounted at ``directory``."""
    try:
        return os.stat(directory).st_dev != os.stat(os.path.dirname(directory)).st_dev
    except OSError:
        return False


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(4 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class FailoverFaultTestCase(SynchronousTestCase):
    """A lab with ``web`` running on one node (``self.owner``) and the two
    others (``self.standbys``) holding fresh replicas."""

    def setUp(self):
        if os.geteuid() != 0:
            raise SkipTest("fault tests need root")
        self.lab = shared_lab()
        self.states = _LAB["states"]
        self.acked = _LAB["acked"]
        self.may_lose = _LAB["may_lose"]
        self.files = _LAB["files"]
        self.set_asides = _LAB["set_aside"]
        self.nodes = {n.name: n for n in self.lab.nodes}
        self.address = {name: n.address for name, n in self.nodes.items()}
        self.workdir = tempfile.mkdtemp(prefix="flff-")
        self.addCleanup(shutil.rmtree, self.workdir, True)
        self.restore()

    # --- the starting point -----------------------------------------------------

    def restore(self):
        """Every node on, connected and running its daemon; the application
        on one node with both others as its standbys, replicated since."""
        for name in sorted(self.nodes):
            if not self.lab.is_powered_on(name):
                self.lab.power_on(name)
            if self.lab.is_partitioned(name):
                self.lab.heal(name)
            if not self.lab.daemon_running(name):
                self.lab.start_daemon(name)
        if not any(self.copy_props(n) for n in self.nodes):
            self.create_application("n1")
        # A node that came back gives up what it claimed within a
        # convergence or two; until then two nodes may say they run it.
        self.wait_until(lambda: len(self.writable_copies(strict=False)) == 1
                        and len(self.running()) == 1, SETTLE,
                        "one node runs %s over the one writable copy" % (APP,))
        self.owner = self.running()[0]
        self.standbys = sorted(n for n in self.nodes if n != self.owner)
        self.flocker_deploy(self.placement(self.owner), tag="restore")
        self.wait_replicated(self.owner, self.standbys, since=time.time())
        for name in self.live():
            self.write_through(name, count=1)
        self.note_set_asides()

    def create_application(self, name):
        self.flocker_deploy(self.placement(name), tag="create")
        mount = self.mountpoint(name)
        os.makedirs(os.path.join(mount, "cgi-bin"))
        script = os.path.join(mount, "cgi-bin", "w")
        with open(script, "w") as f:
            f.write(APPEND_CGI)
        os.chmod(script, 0o755)
        self.write_file(name, "bulk.bin", BULK_BYTES)
        write_id = _take_ids(1)
        answer = self.http(self.address[name], "/cgi-bin/w?%d" % (write_id,))
        self.assertEqual(answer.strip(), b"ok %d" % (write_id,))
        self.acked[write_id] = time.time()

    # --- helpers --------------------------------------------------------------------

    def placement(self, where, standby=None):
        """The deployment (every node) with the application on ``where``;
        its standbys are ``standby`` (node names; default: every other
        node)."""
        nodes = sorted(self.nodes)
        if standby is None:
            standby = [n for n in nodes if n != where]
        return deployment([(self.address[n], [APP] if n == where else [])
                           for n in nodes], [self.address[n] for n in standby])

    def dataset(self, name):
        return "%s/%s" % (self.nodes[name].pool, APP)

    def mountpoint(self, name):
        return os.path.join(self.nodes[name].mount_root, APP)

    def write_file(self, name, filename, size):
        """Random data written into ``name``'s live copy from the host;
        recorded (for later checks) once written and synced."""
        digest = hashlib.sha256()
        path = os.path.join(self.mountpoint(name), filename)
        with open(path, "wb") as f:
            left = size
            while left:
                chunk = os.urandom(min(left, 4 << 20))
                f.write(chunk)
                digest.update(chunk)
                left -= len(chunk)
            f.flush()
            os.fsync(f.fileno())
        self.files[filename] = digest.hexdigest()

    def http(self, address, path, timeout=15.0):
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen("http://%s:%d%s" % (address, PORT, path),
                                            timeout=3) as r:
                    return r.read()
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def write_through(self, name, count=2):
        """A few writes through ``name``'s address, each acknowledged."""
        for _ in range(count):
            write_id = _take_ids(1)
            try:
                answer = self.http(self.address[name], "/cgi-bin/w?%d" % (write_id,))
            except OSError as e:
                self.fail("a write through %s failed: %s\n%s"
                          % (name, e, self.describe_cluster()))
            self.assertEqual(answer.strip(), b"ok %d" % (write_id,))
            self.acked[write_id] = time.time()

    def describe_cluster(self):
        """What each node runs and holds, for a failure's message."""
        lines = []
        for name in sorted(self.nodes):
            if not self.lab.is_powered_on(name):
                lines.append("%s: powered off" % (name,))
                continue
            try:
                seen = ""
                if "flocker-" + APP in self.containers(name):
                    listing = self.lab.exec(name, ["docker", "exec", "flocker-" + APP,
                                                   "ls", "-a", "/data"], timeout=10)
                    seen = "; its container's /data: %s" % (
                        listing.stdout.decode().split(),)
                lines.append("%s: containers %s, copy %s, mounted %s, nat %s%s" % (
                    name, self.containers(name), self.copy_props(name),
                    _mounted(self.mountpoint(name)), self.nat_targets(name), seen))
            except Exception as e:  # a diagnosis must not hide the failure
                lines.append("%s: %s: %s" % (name, type(e).__name__, e))
        return "\n".join(lines)

    def writer(self, names):
        writer = Writer([self.address[n] for n in names], self.acked)
        self.addCleanup(writer.stop)
        return writer

    def wait_until(self, predicate, timeout, what, interval=0.3):
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                self.fail("%s: not within %d s" % (what, timeout))
            time.sleep(interval)

    def deploy_env(self):
        env = dict(os.environ)
        env.update(self.lab.env())
        return env

    def start_deploy(self, deployment_text, down=(), tag="d", timeout=DEPLOY_TIMEOUT):
        dep = os.path.join(self.workdir, "deployment-%s.yml" % (tag,))
        app = os.path.join(self.workdir, "application-%s.yml" % (tag,))
        with open(dep, "w") as f:
            f.write(deployment_text)
        with open(app, "w") as f:
            f.write(APPLICATION)
        options = ["--down", ",".join(self.address[n] for n in down)] if down else []
        run = Deploy([os.path.join(BIN, "flocker-deploy"), "--timeout",
                      str(timeout)] + options + [dep, app], self.deploy_env())
        self.addCleanup(lambda: run.process.poll() is None and run.process.kill())
        return run

    def check_exit(self, run, expect=(0,)):
        status = run.finish(DEPLOY_HARD_LIMIT)
        output = run.output
        if os.environ.get("FLOCKER_FAULTS_LOG"):  # a record of what each fault did
            with open(os.environ["FLOCKER_FAULTS_LOG"], "a") as f:
                f.write("=== %s: exit %s after %.1f s\n%s\n" % (
                    self.id(), status, run.seconds, output))
        if status not in expect:
            self.fail("flocker-deploy exited %s:\n%s\n%s"
                      % (status, output, self.describe_cluster()))
        self.assertNotIn("Traceback", output)
        return status, output

    def record(self, what, value):
        """A line in $FLOCKER_FAULTS_LOG, if set: what a fault did."""
        if os.environ.get("FLOCKER_FAULTS_LOG"):
            with open(os.environ["FLOCKER_FAULTS_LOG"], "a") as f:
                f.write("=== %s: %s: %s\n" % (self.id(), what, json.dumps(value)))

    def flocker_deploy(self, deployment_text, down=(), expect=(0,), tag="d"):
        return self.check_exit(self.start_deploy(deployment_text, down, tag), expect)[1]

    def assert_failed_naming(self, output, name):
        """flocker-deploy said that node ``name`` failed, and why."""
        self.assertRegex(output, r"flocker-deploy: node %s failed: \S"
                         % (re.escape(self.address[name]),))

    def state(self, name) -> dict:
        return self.states.state(self.address[name])

    def replication(self, name) -> dict:
        """standby address -> its replication status, as ``name`` reports."""
        return {s["standby"]: s for s in self.state(name)["replication"].get(APP, [])}

    def wait_replicated(self, owner, standbys, since, timeout=90.0):
        """Until ``owner`` reports a round to each of ``standbys`` that
        succeeded after ``since``; the statuses."""
        found = {}

        def done():
            statuses = self.replication(owner)
            for name in standbys:
                status = statuses.get(self.address[name])
                if (status is None or status["last_error"] is not None
                        or (status["last_success"] or 0) <= since):
                    return False
                found[name] = status
            return True
        self.wait_until(done, timeout, "%s replicated to %s" % (owner, standbys))
        return found

    def containers(self, name):
        if not self.lab.is_powered_on(name):
            return []
        result = self.lab.exec(name, ["docker", "ps", "--format", "{{.Names}}"], timeout=30)
        self.assertEqual(result.returncode, 0, result.stderr)
        return result.stdout.decode().split()

    def running(self):
        return [n for n in sorted(self.nodes) if "flocker-" + APP in self.containers(n)]

    def live(self):
        return [n for n in sorted(self.nodes) if self.lab.is_powered_on(n)]

    def copy_props(self, name):
        out = subprocess.run(
            ["zfs", "get", "-H", "-o", "property,value,source",
             "org.flocker-async:owner,org.flocker-async:epoch,"
             "org.flocker-async:read-only,readonly", self.dataset(name)],
            capture_output=True, text=True)
        if out.returncode != 0:
            return None
        return {p: (v, s) for p, v, s in (l.split("\t") for l in out.stdout.splitlines())}

    def snapshots(self, name):
        out = subprocess.run(["zfs", "list", "-H", "-t", "snapshot", "-o", "name",
                              "-s", "creation", "-r", self.dataset(name)],
                             capture_output=True, text=True)
        return [l.split("@", 1)[1] for l in out.stdout.splitlines() if "@" in l]

    def newest_snapshot_time(self, name):
        times = [t for t in map(snapshot_time, self.snapshots(name)) if t is not None]
        return max(times) if times else None

    def can_write(self, directory, timeout=5.0):
        """Whether a file can be written into the file system mounted at
        ``directory``.  Never probes the bare directory of a copy that is
        not mounted (a replica is unmounted while it receives), which would
        write beside the file system and keep it from being mounted again:
        waits for it to be mounted, and counts it as not writable if it is
        not."""
        deadline = time.monotonic() + timeout
        while not _mounted(directory):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        probe = os.path.join(directory, ".flff-write-probe")
        try:
            with open(probe, "w") as f:
                f.write("probe")
        except OSError as e:
            self.assertEqual(e.errno, errno.EROFS, directory)
            return False
        os.unlink(probe)
        return True

    def writable_copies(self, strict=True, names=None):
        """The nodes (of ``names``, default the powered-on ones) holding a
        writable copy, by a real write attempt.  ``strict``: our property
        and ZFS's ``readonly`` must say the same."""
        found = []
        for name in names or self.live():
            props = self.copy_props(name)
            if props is None:
                continue
            by_write = self.can_write(self.mountpoint(name))
            if strict:
                by_property = props["org.flocker-async:read-only"][0] == "off"
                value, source = props["readonly"]
                by_zfs = value == "off" and source != "temporary"
                self.assertEqual((by_property, by_zfs), (by_write, by_write),
                                 (name, props))
            if by_write:
                found.append(name)
        return found

    def note_set_asides(self):
        """Check that no set-aside copy seen so far is gone; remember new ones."""
        present = set()
        for node in self.nodes.values():
            out = subprocess.run(["zfs", "list", "-H", "-o", "name", "-t", "all",
                                  "-r", node.pool], capture_output=True, text=True)
            present.update(l for l in out.stdout.splitlines()
                           if ("/%s.set-aside." % (APP,)) in l)
        missing = sorted(self.set_asides - present)
        self.assertEqual(missing, [], "set-aside copies (or their snapshots) destroyed")
        self.set_asides.update(present)

    def assert_no_leftovers(self, timeout=30.0):
        """Every zfs or ssh process of the lab's pools running now ends
        soon (replication starts new ones every few seconds)."""
        pools = [n.pool + "/" for n in self.nodes.values()]
        seen = {pid: text for pid, text in stream_processes(pools)}
        deadline = time.monotonic() + timeout
        while True:
            left = {pid: text for pid, text in stream_processes(pools) if pid in seen}
            if not left:
                break
            if time.monotonic() > deadline:
                self.fail("processes left behind: %s" % (left,))
            time.sleep(0.2)
        for node in self.nodes.values():
            listing = subprocess.run(["zfs", "list", "-H", "-t", "all", "-o", "name",
                                      "-r", node.pool], capture_output=True,
                                     text=True).stdout
            self.assertNotIn("%", listing, "a receive left a hidden clone on %s"
                             % (node.name,))

    def nat_targets(self, name):
        """Where ``name``'s nat rules send the application's port."""
        result = self.lab.exec(name, ["iptables", "-t", "nat", "-S", "FLOCKER-PREROUTING"])
        self.assertEqual(result.returncode, 0, result.stderr)
        return re.findall(r"--dport %d .*-j DNAT --to-destination (\S+)" % (PORT,),
                          result.stdout.decode())

    def routes_right(self, target):
        return all(self.nat_targets(n) == ([] if n == target else [self.address[target]])
                   for n in self.live())

    # --- the promises ---------------------------------------------------------------------

    def assert_converged(self, target, digests=True):
        """The promises once things settled: ``target`` alone runs the
        application over the one writable copy (of the powered-on nodes),
        holding every write it must; routes point at it; nothing was left
        behind or destroyed."""
        try:
            self.wait_until(lambda: self.running() == [target]
                            and self.writable_copies(strict=False) == [target]
                            and self.routes_right(target), SETTLE,
                            "%s alone runs %s, routed to from every node" % (target, APP))
        except self.failureException as e:
            self.fail("%s\n%s" % (e, self.describe_cluster()))
        self.assertTrue(_mounted(self.mountpoint(target)))
        for name in self.live():
            self.write_through(name)
        mount = self.mountpoint(target)
        with open(os.path.join(mount, "acked")) as f:
            present = {int(line) for line in f if line.strip().isdigit()}
        missing = sorted(set(self.acked) - self.may_lose - present)
        self.assertEqual(missing, [], "acknowledged writes lost")
        if digests:
            for filename, digest in sorted(self.files.items()):
                self.assertEqual(_sha256(os.path.join(mount, filename)), digest, filename)
        self.assertEqual(self.writable_copies(), [target])
        # One copy claims the volume, with the highest epoch (a replica of
        # a node that is no standby may still name an old owner).
        epochs = {}
        for name in self.live():
            props = self.copy_props(name)
            if props is not None:
                epochs[name] = int(props["org.flocker-async:epoch"][0])
                if props["org.flocker-async:owner"][0] == self.address[name]:
                    self.assertEqual(name, target, "%s claims %s" % (name, APP))
        self.assertEqual(max(epochs.values()), epochs[target], epochs)
        self.note_set_asides()
        self.assert_no_leftovers()

    # --- take-over ----------------------------------------------------------------------

    def power_off_owner(self, standbys=None):
        """Writes through every node, replicated to ``standbys`` (default:
        all of them) by a round, and more; then the owner's plug pulled and
        the writes stopped.  Returns when the owner could acknowledge no
        more writes."""
        writer = self.writer(sorted(self.nodes))
        self.wait_until(lambda: writer.count >= 3, 30, "writes acknowledged")
        first = min(t for i, t in self.acked.items() if i >= writer.first_id)

        def replicated():
            statuses = self.replication(self.owner)
            times = [(statuses.get(self.address[n]) or {}).get("snapshot_time") or 0
                     for n in standbys or self.standbys]
            return min(times) > first
        self.wait_until(replicated, 30, "the writes replicated")
        time.sleep(1)
        self.lab.power_off(self.owner)
        writer.stop()
        self.assertGreater(writer.count, 5)
        return time.time()

    def wait_in_log(self, name, pattern, since, timeout=60.0):
        """A line matching ``pattern`` in ``name``'s daemon log after
        ``since`` (``log_size``), following the log across a rotation."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        path = self.nodes[name].daemon_log
        inode, offset = since
        # twistd renames a full log to .1 and starts a new one.
        current = path if os.stat(path).st_ino == inode else path + ".1"
        f = open(current, "rb")
        try:
            f.seek(offset)
            pending = b""
            while time.monotonic() < deadline:
                pending += f.read()
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if regex.search(line.decode("utf-8", "replace")):
                        return
                if os.fstat(f.fileno()).st_ino != os.stat(path).st_ino:
                    pending += f.read()  # the rest of the rotated one first
                    f.close()
                    f = open(path, "rb")
                    continue
                time.sleep(0.02)
        finally:
            f.close()
        self.fail("%s's log never said %r" % (name, pattern))

    def log_size(self, name):
        """Where ``name``'s daemon log ends now: (inode, size)."""
        status = os.stat(self.nodes[name].daemon_log)
        return status.st_ino, status.st_size

    def freshest(self, survivors, prefer):
        """(node, snapshot time) of the freshest copy among ``survivors``,
        ``prefer`` on a tie (as flocker-deploy chooses)."""
        times = {n: self.newest_snapshot_time(n) for n in survivors}
        best = max(times, key=lambda n: (times[n] or -1, n == prefer))
        return best, times[best]

    def lost_window(self, used: float, until: float):
        """Writes acknowledged between the snapshot a take-over used and
        ``until`` (the old owner's power-off) may be lost: stated before
        the take-over, and kept aside on the old owner."""
        self.assertGreater(len([1 for t in self.acked.values() if t < used]), 0)
        self.may_lose.update(i for i, t in self.acked.items() if used <= t <= until)

    def assert_takeover_lines(self, output, old, target, source):
        self.assertIn("take-over: %s: %s is down; %s takes it over from " % (
            APP, self.address[old], self.address[target]), output)
        self.assertIn("take-over: %s: last replica on %s is from" % (
            APP, self.address[source]), output)

    def wait_yielded(self, name, target, since):
        """``name`` came back and gave up its claim: no container, its copy
        set aside after ``since`` (reported in its ``state``, read-only),
        the owner ``target``."""
        kept = []

        def yielded():
            kept[:] = [c for c in self.state(name)["set_aside"]
                       if c["volume"] == APP and c["created"] > since]
            return (kept and "flocker-" + APP not in self.containers(name)
                    and self.writable_copies(strict=False) == [target])
        self.wait_until(yielded, SETTLE, "%s yields to %s, setting its copy aside"
                        % (name, target))
        for copy in kept:
            self.assertTrue(_mounted(copy["mountpoint"]), copy)
            self.assertFalse(self.can_write(copy["mountpoint"]))
        return kept


class TakeOverTargetDiesTests(FailoverFaultTestCase):
    """The node taking over dies mid take-over."""

    def test_target_dies_and_returns(self):
        """Powered off once it took the volume over: the deploy fails
        naming it; back on, the same --down deploy converges with the data."""
        old, (target, third) = self.owner, self.standbys
        off = self.power_off_owner()
        source, used = self.freshest([target, third], prefer=target)
        self.lost_window(used, off)
        moved = self.placement(target, [third])
        since = self.log_size(target)
        run = self.start_deploy(moved, down=[old])
        # Its own log, not flocker-deploy's output: when a periodic
        # convergence was running as the apply came, that one acts on the
        # new deployment and its progress is not forwarded.
        self.wait_in_log(target, r"\] %s (take-over|acquired) %s$" % (
            re.escape(self.address[target]), APP), since)
        self.lab.power_off(target)
        status, output = self.check_exit(run, expect=(2,))
        self.assert_failed_naming(output, target)
        self.assert_takeover_lines(output, old, target, source)

        self.lab.power_on(target)
        self.flocker_deploy(moved, down=[old], tag="again")
        self.assert_converged(target)
        self.lab.power_on(old)
        self.wait_yielded(old, target, off)
        self.assert_converged(target, digests=False)

    def test_target_stays_dead_both_declared_down(self):
        """Powered off as the take-over starts and left off: the operator
        declares it down too and puts the application on the third node,
        a standby as well; both come back and yield."""
        old, (target, third) = self.owner, self.standbys
        off = self.power_off_owner()
        # What the third node's copy holds at least (the target, had it
        # taken over, may have replicated the same data to it since).
        used = self.newest_snapshot_time(third)
        self.lost_window(used, off)
        run = self.start_deploy(self.placement(target, [third]), down=[old])
        run.wait_for(r"^take-over: .*last replica on")
        self.lab.power_off(target)
        status, output = self.check_exit(run, expect=(2,))
        self.assert_failed_naming(output, target)

        output = self.flocker_deploy(self.placement(third, []),
                                     down=[old, target], tag="third")
        self.assert_takeover_lines(output, old, third, third)
        self.assert_converged(third)
        for name in (old, target):
            self.lab.power_on(name)
        for name in (old, target):
            self.wait_until(lambda: "flocker-" + APP not in self.containers(name),
                            SETTLE, "%s runs no %s" % (name, APP))
        self.assert_converged(third, digests=False)
        # The old owner's copy was writable: it is kept aside.
        self.wait_yielded(old, third, off)


class OldOwnerReturnsTests(FailoverFaultTestCase):
    def test_old_owner_returns_mid_takeover(self):
        """
        The old owner is powered on while the node taking over receives the
        freshest copy from the standby that holds it (held mid-push: the
        standby's daemon is stopped until the old owner is back): it learns
        the new deployment from the target and yields, keeping its copy
        aside; then the take-over completes.
        """
        old, (target, third) = self.owner, self.standbys
        # The target holds no copy, so the take-over pushes the whole
        # volume to it first.
        self.flocker_deploy(self.placement(old, [third]), tag="one-standby")
        self.discard_replica(target)
        off = self.power_off_owner([third])
        source, used = self.freshest([third], prefer=third)
        self.lost_window(used, off)
        since = self.log_size(third)
        # The push waits for the old owner's return; its sync to the held
        # standby times out (5 s) before it acts.
        run = self.start_deploy(self.placement(target, [third]), down=[old], timeout=60)
        self.wait_in_log(third, r"\] %s push %s$" % (re.escape(self.address[third]), APP),
                         since)
        held = self.daemon_pid(third)
        os.kill(held, signal.SIGSTOP)
        self.addCleanup(os.kill, held, signal.SIGCONT)
        self.lab.power_on(old)
        self.wait_until(lambda: "flocker-" + APP not in self.containers(old)
                        and not self.copy_props(old)
                        and any(c["volume"] == APP and c["created"] > off
                                for c in self.state(old)["set_aside"]),
                        SETTLE, "%s yields while the take-over waits" % (old,))
        self.assertIsNone(run.process.poll(), "the take-over ended while held")
        os.kill(held, signal.SIGCONT)
        status, output = self.check_exit(run)
        self.assert_takeover_lines(output, old, target, third)
        self.wait_yielded(old, target, off)
        self.assert_converged(target)

    def daemon_pid(self, name):
        """The pid of ``name``'s flocker-node."""
        config = self.nodes[name].config_path
        pids = [pid for pid in _pids() if config in _argv(pid)
                and "flocker-node" in _argv(pid)]
        self.assertEqual(len(pids), 1, pids)
        return pids[0]

    def discard_replica(self, name):
        """Destroy ``name``'s replica (never a live or writable copy)."""
        props = self.copy_props(name)
        self.assertNotEqual(props["org.flocker-async:owner"][0], self.address[name])
        self.assertEqual(props["org.flocker-async:read-only"][0], "on")
        self.assertFalse(self.can_write(self.mountpoint(name)))
        subprocess.run(["zfs", "unmount", self.dataset(name)], capture_output=True)
        for attempt in range(20):  # zfs-fuse: "busy" for a moment
            result = subprocess.run(["zfs", "destroy", "-r", self.dataset(name)],
                                    capture_output=True, text=True)
            if result.returncode == 0:
                break
            time.sleep(0.5)
        self.assertEqual(result.returncode, 0, result.stderr)


class RacingTakeOverTests(FailoverFaultTestCase):
    def test_two_down_deploys_at_once(self):
        """Both succeed: the second waits for the first's leases, then
        applies the same state; the generation rose twice."""
        old, (target, third) = self.owner, self.standbys
        before = max(self.state(n)["generation"] for n in (target, third))
        off = self.power_off_owner()
        source, used = self.freshest([target, third], prefer=target)
        self.lost_window(used, off)
        moved = self.placement(target, [third])
        runs = [self.start_deploy(moved, down=[old], tag=tag) for tag in ("a", "b")]
        outputs = [self.check_exit(run)[1] for run in runs]
        waited = [o for o in outputs if "waiting: " in o]
        self.assertEqual(len(waited), 1, outputs)
        self.assertRegex(waited[0], r"waiting: busy: this node is held by deploy")
        self.assertEqual(len([o for o in outputs if "take-over: %s: " % (APP,) in o]), 1,
                         outputs)
        for name in (target, third):
            self.assertEqual(self.state(name)["generation"], before + 2, name)
        self.assert_converged(target)
        self.lab.power_on(old)
        self.wait_yielded(old, target, off)


class ReplicationFaultTests(FailoverFaultTestCase):
    """A replication round cut at each step; the next one resumes from the
    last common snapshot, sending only the increment."""

    def setUp(self):
        FailoverFaultTestCase.setUp(self)
        self.writes = self.writer(sorted(self.nodes))

    def write_increment(self):
        """
        Rewrite the increment file in the live copy so that one round
        carries all of it: written again if the owner took a snapshot
        meanwhile (a round that began during the write carried part of
        it).  Fires once written; the owner's replication statuses then.
        """
        for attempt in range(5):
            started = time.time()
            self.write_file(self.owner, "increment.bin", INCREMENT_BYTES)
            self.written = time.time()
            statuses = self.replication(self.owner)
            times = [snapshot_time(s) for s in self.snapshots(self.owner)]
            if not any(t is not None and started - 0.01 <= t <= self.written + 0.01
                       for t in times):
                return statuses
        self.fail("every write of the increment overlapped a replication round")

    def wait_for_process(self, verb, dataset, timeout=20.0):
        """The pids of the first ``zfs VERB`` of ``dataset`` that starts now."""
        old = set(zfs_processes(verb, dataset))
        deadline = time.monotonic() + timeout
        while True:
            pids = [pid for pid in zfs_processes(verb, dataset) if pid not in old]
            if pids:
                return pids
            self.assertLess(time.monotonic(), deadline, "no zfs %s of %s" % (verb, dataset))
            time.sleep(0.005)

    def replication_errors(self, timeout=30.0):
        """standby name -> the error of the first failed round the owner
        reports for it (waiting for one to fail)."""
        errors = {}

        def failed():
            for address, status in self.replication(self.owner).items():
                if status["last_error"] is not None:
                    errors[self.name_of(address)] = status["last_error"]
            return bool(errors)
        self.wait_until(failed, timeout, "a replication round fails", interval=0.1)
        self.record("errors", errors)
        return errors

    def name_of(self, address):
        return next(n for n, a in self.address.items() if a == address)

    def volume_bytes(self):
        return int(subprocess.run(
            ["zfs", "get", "-H", "-p", "-o", "value", "referenced",
             self.dataset(self.owner)], capture_output=True, text=True,
            check=True).stdout)

    def assert_resumed(self, before, cut, victims, whole_increment=True, timeout=60.0):
        """
        A later round to each of ``victims`` (standby names) succeeded
        (``last_error`` cleared) with a newer snapshot than ``before`` (the
        owner's statuses before the increment), sending an increment far
        smaller than the volume: with ``whole_increment``, at least the
        increment file (a cut receive leaves the standby at the snapshot
        it had).  The replicas hold the increment intact.
        """
        resumed, errors = {}, {}

        def settled():
            statuses = self.replication(self.owner)
            for name in victims:
                status = statuses.get(self.address[name])
                if status is not None and status["last_error"] is not None:
                    errors.setdefault(name, status["last_error"])
                if (status is not None and status["last_error"] is None
                        and (status["last_success"] or 0) > cut):
                    resumed[name] = status
            return len(resumed) == len(victims)
        self.wait_until(settled, timeout, "replication to %s resumed" % (victims,),
                        interval=0.2)
        self.record("resumed", {"resumed": resumed, "errors seen": errors})
        volume = self.volume_bytes()
        self.assertGreater(volume, BULK_BYTES)
        for name, status in resumed.items():
            old = before[self.address[name]]
            self.assertGreater(status["snapshot_time"], old["snapshot_time"], name)
            self.assertNotEqual(status["snapshot"], old["snapshot"])
            self.assertLess(status["last_bytes"], volume / 3, (name, status))
            if whole_increment:
                self.assertGreaterEqual(status["last_bytes"], INCREMENT_BYTES,
                                        (name, status))
            self.assertEqual(
                _sha256(os.path.join(self.mountpoint(name), "increment.bin")),
                self.files["increment.bin"], name)
        return resumed

    def finish(self):
        self.writes.stop()
        self.assert_converged(self.owner, digests=False)
        self.wait_replicated(self.owner, self.standbys, since=time.time())

    def test_standby_daemon_killed_during_receive(self):
        victim = self.standbys[0]
        before = self.write_increment()
        self.wait_for_process("recv", self.dataset(victim))
        cut = time.time()
        self.assertTrue(self.lab.kill_daemon(victim))
        time.sleep(1)  # systemd would restart it
        self.lab.start_daemon(victim)
        self.assertIn(victim, self.replication_errors())
        self.assert_resumed(before, cut, [victim])
        self.finish()

    def test_standby_zfs_recv_killed(self):
        victim = self.standbys[0]
        before = self.write_increment()
        pids = self.wait_for_process("recv", self.dataset(victim))
        cut = time.time()
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        errors = self.replication_errors()
        self.assertRegex(errors.get(victim, ""), r"zfs recv", errors)
        self.assert_resumed(before, cut, [victim])
        self.finish()

    def test_owner_zfs_send_killed(self):
        before = self.write_increment()
        pids = self.wait_for_process("send", self.dataset(self.owner))
        cut = time.time()
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        # Each standby gets a send of its own, one after the other: the
        # one this send was for failed.
        errors = self.replication_errors()
        self.assertEqual(len(errors), 1, errors)
        self.assert_resumed(before, cut, sorted(errors))
        self.finish()

    def test_standby_partitioned_mid_push(self):
        """Cut off for a few seconds while it receives: the push fails, or
        (TCP retransmits; nothing times out that soon) stalls and goes on
        when the link is back; either way the standby ends with every byte
        of the increment, and the round after is an increment from the
        snapshot both hold then."""
        victim = self.standbys[0]
        before = self.write_increment()
        self.wait_for_process("recv", self.dataset(victim))
        cut = time.time()
        self.lab.partition(victim)
        time.sleep(4)
        self.lab.heal(victim)
        healed = time.time()
        resumed = self.assert_resumed(before, cut, [victim], whole_increment=False)
        after = self.wait_replicated(self.owner, [victim], since=max(
            healed, resumed[victim]["last_success"]))[victim]
        self.record("the round after", after)
        self.assertGreater(after["snapshot_time"], resumed[victim]["snapshot_time"])
        self.assertLess(after["last_bytes"], INCREMENT_BYTES / 4, after)
        self.finish()

    def test_owner_daemon_killed_between_rounds(self):
        """Killed right after the round that carried the increment, and
        restarted: the restarted daemon's rounds go on from the snapshots
        the standbys hold, sending only what changed since."""
        self.write_increment()
        carried = {}

        def carried_everywhere():
            statuses = self.replication(self.owner)
            for name in self.standbys:
                status = statuses.get(self.address[name])
                if status and (status["snapshot_time"] or 0) > self.written:
                    carried[name] = status
            return len(carried) == len(self.standbys)
        self.wait_until(carried_everywhere, 30, "the increment replicated", interval=0.1)
        self.assertTrue(self.lab.kill_daemon(self.owner))
        cut = time.time()
        time.sleep(1)  # systemd would restart it
        self.lab.start_daemon(self.owner)
        self.assertEqual(self.running(), [self.owner])
        resumed = self.wait_replicated(self.owner, self.standbys, since=cut)
        self.record("carried, then resumed", [carried, resumed])
        volume = self.volume_bytes()
        for name, status in resumed.items():
            self.assertGreater(status["snapshot_time"], carried[name]["snapshot_time"])
            self.assertLess(status["last_bytes"], INCREMENT_BYTES / 4, (name, status))
        self.assertGreater(volume, BULK_BYTES)
        self.finish()
