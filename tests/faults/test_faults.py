"""
Acceptance: faults during a move, on a real lab cluster driven with the real
flocker-deploy.  Daemons are SIGKILLed at each step of a move, the
destination's link goes down, its pool fills up, its ``zfs recv`` is killed,
two deploys race and a deploy meets a restarting daemon.

After every fault and one more deploy: the application runs on exactly one
node, every write a client saw acknowledged is there (and the 400 MiB
written once is intact), exactly one copy of the volume is writable (by our
property and by a real write attempt), and no zfs, ssh or stream process is
left behind.  flocker-deploy never prints a traceback and never outlives
its own timeouts.

One lab (prefix ``flflt-``) serves every test of this module: it is built
(after removing what a crashed run left) by the first test and taken down
when the test process exits.  Each test starts from the application running
with its volume on one node and the other node holding no copy, so every
move begins with a full push of the volume.
"""

from __future__ import annotations

import atexit
import errno
import hashlib
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

from flocker_async.lab import Lab

from . import take_turns
from tests.acceptance.test_move import HTTP_APP

PREFIX = "flflt-"
DIRECTORY = "/var/lib/flocker-faults-lab"
BIN = os.path.dirname(sys.executable)
APP = "web"
BULK_BYTES = 400 << 20
LATE_BYTES = 96 << 20
# flocker-deploy's own limit on a silent node, and ours on flocker-deploy.
DEPLOY_TIMEOUT = 30
DEPLOY_HARD_LIMIT = 240


# Two applications for the race: the second deployment also runs "cache".
RACE_APP = HTTP_APP + """\
  cache:
    image: flocker-lab/busybox
    environment: {HTTP_PORT: "81"}
    ports:
    - {internal: 81, external: 8081}
"""

# A CGI script in the volume: each request appends its id and answers "ok
# ID" only once the line is written.  The client counts only those answers.
APPEND_CGI = """#!/bin/sh
echo "$QUERY_STRING" >> /data/acked
echo Content-Type: text/plain
echo
echo "ok $QUERY_STRING"
"""


def deployment(placement):
    lines = ["version: 1", "nodes:"]
    for address, apps in placement:
        lines.append('  "%s": [%s]' % (address, ", ".join(apps)))
    return "\n".join(lines) + "\n"


_LAB = {}


def shared_lab() -> Lab:
    """The module's lab, built on first use and removed at exit."""
    if "lab" not in _LAB:
        lab = Lab(directory=DIRECTORY, prefix=PREFIX)
        lab.down()  # what a crashed earlier run left
        if not os.environ.get("FLOCKER_FAULTS_KEEP_LAB"):  # kept for a post-mortem
            atexit.register(lab.down)
        take_turns(__name__, lab, _LAB)
        lab.up(nodes=2)
        _LAB["lab"] = lab
        # Every write acknowledged in any test, and the bulk data's digest:
        # each test checks all of them.
        _LAB["acked"] = set()
        _LAB["files"] = {}
    return _LAB["lab"]


class Deploy:
    """A flocker-deploy run in the background whose output lines we follow."""

    def __init__(self, argv, env):
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.lines = []
        self.condition = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.process.stdout:
            with self.condition:
                self.lines.append(line)
                self.condition.notify_all()
        with self.condition:
            self.condition.notify_all()

    @property
    def output(self) -> str:
        with self.condition:
            return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 60.0) -> str:
        """The first output line matching ``pattern``; fails after timeout
        or when flocker-deploy ended without printing it."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self.condition:
            while True:
                for line in self.lines[seen:]:
                    if regex.search(line):
                        return line
                seen = len(self.lines)
                ended = self.process.poll() is not None and not self.reader.is_alive()
                if ended or time.monotonic() > deadline:
                    raise AssertionError(
                        "flocker-deploy %s without printing %r; its output:\n%s"
                        % ("ended" if ended else "went on", pattern,
                           "".join(self.lines)))
                self.condition.wait(0.1)

    def finish(self, limit: float = DEPLOY_HARD_LIMIT):
        """Wait for the exit status; a run past ``limit`` is killed and fails."""
        try:
            self.process.wait(max(0.0, self.started + limit - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            self.reader.join(10)
            raise AssertionError("flocker-deploy still ran after %d s; output:\n%s"
                                 % (limit, self.output))
        self.reader.join(10)
        self.seconds = time.monotonic() - self.started
        return self.process.returncode


class Writer:
    """
    A client appending numbered lines through the application's HTTP port
    (alternating between the nodes' addresses, so proxies are used too),
    recording every write it saw acknowledged.  Bounded: it stops when told
    or after ``limit`` requests.
    """

    def __init__(self, addresses, first_id, acked, limit=4000):
        self.addresses = addresses
        self.next_id = first_id
        self.acked = acked
        self.limit = limit
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        for i in range(self.limit):
            if self.stop_event.is_set():
                return
            write_id = self.next_id
            self.next_id += 1
            address = self.addresses[i % len(self.addresses)]
            try:
                with urllib.request.urlopen(
                        "http://%s:8080/cgi-bin/w?%d" % (address, write_id),
                        timeout=2) as response:
                    if response.read().decode().strip() == "ok %d" % (write_id,):
                        self.acked.add(write_id)
            except OSError:
                pass  # not acknowledged; it may or may not be there
            time.sleep(0.05)

    def stop(self):
        self.stop_event.set()
        self.thread.join(30)


def _all_pids():
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % (pid,), "rb") as f:
            return [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def stream_processes(pools):
    """zfs send/recv and ssh processes that concern the lab's pools."""
    found = []
    for pid in _all_pids():
        argv = _cmdline(pid)
        if not argv:
            continue
        name = os.path.basename(argv[0])
        text = " ".join(argv)
        if name in ("zfs", "ssh", "sshd", "socat", "pv", "mbuffer") and any(
                p in text for p in pools):
            found.append((pid, text))
    return found


class FaultTestCase(SynchronousTestCase):
    """A lab with ``web`` running on one node over 400 MiB of random data,
    the other node holding no copy of its volume."""

    # Whether the other node's replica is removed before each test, so the
    # move starts with a full push.
    full_push = True

    def setUp(self):
        if os.geteuid() != 0:
            raise SkipTest("acceptance tests need root")
        self.lab = shared_lab()
        self.acked = _LAB["acked"]
        self.files = _LAB["files"]
        self.nodes = {n.name: n for n in self.lab.nodes}
        self.address = {name: n.address for name, n in self.nodes.items()}
        self.name_of = {a: name for name, a in self.address.items()}
        self.workdir = tempfile.mkdtemp(prefix="flflt-")
        self.addCleanup(shutil.rmtree, self.workdir, True)
        self.heal()
        self.source = self.running_on()
        if self.source is None:
            self.create_application("n1")
            self.source = "n1"
        self.dest = "n2" if self.source == "n1" else "n1"
        if self.full_push:
            self.discard_copy(self.dest)

    # --- mending what a test (or a failed one) left --------------------------------

    def heal(self):
        """Links up, pools emptied of fillers, daemons running."""
        for name, node in self.nodes.items():
            self.lab.exec(name, ["ip", "link", "set", "eth0", "up"])
            filler = "%s/filler" % (node.pool,)
            if subprocess.run(["zfs", "list", filler], capture_output=True).returncode == 0:
                for attempt in range(20):  # zfs-fuse: "busy" for a moment
                    result = subprocess.run(["zfs", "destroy", filler],
                                            capture_output=True, text=True)
                    if result.returncode == 0:
                        break
                    time.sleep(0.5)
                self.assertEqual(result.returncode, 0, result.stderr)
            if not self.lab.daemon_running(name):
                self.lab.start_daemon(name)

    def discard_copy(self, name):
        dataset = "%s/%s" % (self.nodes[name].pool, APP)
        if subprocess.run(["zfs", "list", dataset], capture_output=True).returncode != 0:
            return
        self.assertEqual(self.zfs_props(name)["org.flocker-async:owner"],
                         self.address[self.source], "refusing to destroy a live copy")
        subprocess.run(["zfs", "unmount", dataset], capture_output=True)
        subprocess.run(["zfs", "destroy", "-r", dataset], capture_output=True, check=True)

    def create_application(self, name):
        self.flocker_deploy(self.placement(name, [APP]), HTTP_APP)
        mount = self.mountpoint(name)
        os.makedirs(os.path.join(mount, "cgi-bin"))
        script = os.path.join(mount, "cgi-bin", "w")
        with open(script, "w") as f:
            f.write(APPEND_CGI)
        os.chmod(script, 0o755)
        self.write_file(name, "bulk.bin", BULK_BYTES)
        self.assertIn(b"ok 0", self.http(self.address[name], "/cgi-bin/w?0"))
        self.acked.add(0)

    # --- helpers --------------------------------------------------------------------

    def placement(self, where, apps, others=()):
        return deployment([(self.address[n], apps if n == where else list(others))
                           for n in sorted(self.nodes)])

    def mountpoint(self, name):
        return os.path.join(self.nodes[name].mount_root, APP)

    def write_file(self, name, filename, size):
        """Random data written into ``name``'s live copy from the host;
        recorded (for later checks) only once written and synced."""
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

    def http(self, address, path, timeout=10.0):
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen("http://%s:8080%s" % (address, path),
                                            timeout=3) as r:
                    return r.read()
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def write_through(self, name, count=3):
        """A few writes through ``name``'s address, each acknowledged."""
        for _ in range(count):
            write_id = max(self.acked) + 1
            answer = self.http(self.address[name], "/cgi-bin/w?%d" % (write_id,))
            self.assertEqual(answer.strip(), b"ok %d" % (write_id,))
            self.acked.add(write_id)

    def writer(self):
        writer = Writer([self.address["n1"], self.address["n2"]],
                        max(self.acked) + 1000, self.acked)
        self.addCleanup(writer.stop)
        return writer

    def deploy_env(self):
        env = dict(os.environ)
        env.update(self.lab.env())
        return env

    def start_deploy(self, deployment_text, application_text=HTTP_APP, tag="d"):
        dep = os.path.join(self.workdir, "deployment-%s.yml" % (tag,))
        app = os.path.join(self.workdir, "application-%s.yml" % (tag,))
        with open(dep, "w") as f:
            f.write(deployment_text)
        with open(app, "w") as f:
            f.write(application_text)
        run = Deploy([os.path.join(BIN, "flocker-deploy"), "--timeout",
                      str(DEPLOY_TIMEOUT), dep, app], self.deploy_env())
        self.addCleanup(lambda: run.process.poll() is None and run.process.kill())
        return run

    def check_exit(self, run, expect=(0,)):
        status = run.finish()
        output = run.output
        if os.environ.get("FLOCKER_FAULTS_LOG"):  # a record of what each fault did
            with open(os.environ["FLOCKER_FAULTS_LOG"], "a") as f:
                f.write("=== %s: exit %s after %.1f s\n%s\n" % (
                    self.id(), status, run.seconds, output))
        self.assertIn(status, expect, output)
        self.assertNotIn("Traceback", output)
        return status, output

    def flocker_deploy(self, deployment_text, application_text=HTTP_APP, expect=(0,)):
        return self.check_exit(self.start_deploy(deployment_text, application_text),
                               expect)[1]

    def assert_failed_naming(self, output, node_names, causes=()):
        """flocker-deploy said which node failed, and why."""
        for name in node_names:
            self.assertRegex(output, r"flocker-deploy: node %s failed: \S"
                             % (re.escape(self.address[name]),))
        for cause in causes:
            self.assertRegex(output, cause)

    def move(self, tag="move"):
        return self.start_deploy(self.placement(self.dest, [APP]), tag=tag)

    def wait_in_log(self, name, pattern, since, timeout=60.0, interval=0.05):
        """Wait for a line matching ``pattern`` in ``name``'s daemon log
        after byte offset ``since``."""
        path = self.nodes[name].daemon_log
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        pending = b""
        with open(path, "rb") as f:
            f.seek(since)
            while time.monotonic() < deadline:
                pending += f.read()
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if regex.search(line.decode("utf-8", "replace")):
                        return line
                time.sleep(interval)
        self.fail("%s's log never said %r" % (name, pattern))

    def wait_for_stream(self, settle=0.3, timeout=30.0):
        """Until the source's zfs send runs, then ``settle`` seconds more:
        the middle of a transfer."""
        dataset = "%s/%s" % (self.nodes[self.source].pool, APP)
        deadline = time.monotonic() + timeout
        while not any(" send " in text for _, text in stream_processes([dataset])):
            self.assertLess(time.monotonic(), deadline, "no zfs send started")
            time.sleep(0.01)
        time.sleep(settle)

    def log_size(self, name):
        return os.path.getsize(self.nodes[name].daemon_log)

    def containers(self, name):
        result = self.lab.exec(name, ["docker", "ps", "--format", "{{.Names}}"])
        self.assertEqual(result.returncode, 0, result.stderr)
        return result.stdout.decode().split()

    def running_on(self):
        where = [n for n in self.nodes if "flocker-" + APP in self.containers(n)]
        self.assertLessEqual(len(where), 1, where)
        return where[0] if where else None

    def zfs_props(self, name):
        out = subprocess.run(
            ["zfs", "get", "-H", "-o", "property,value",
             "org.flocker-async:owner,org.flocker-async:read-only",
             "%s/%s" % (self.nodes[name].pool, APP)],
            capture_output=True, text=True)
        if out.returncode != 0:
            return None
        return dict(line.split("\t") for line in out.stdout.splitlines())

    # --- the promises -----------------------------------------------------------------

    def assert_serving_on(self, name):
        """The application runs on ``name`` only and takes writes there."""
        self.assertEqual(self.running_on(), name)
        self.write_through(name)

    def assert_no_leftovers(self, timeout=30.0):
        pools = [n.pool + "/" for n in self.nodes.values()]
        deadline = time.monotonic() + timeout
        while True:
            left = stream_processes(pools)
            if not left:
                break
            if time.monotonic() > deadline:
                self.fail("processes left behind: %s" % (left,))
            time.sleep(0.2)
        for name, node in self.nodes.items():
            listing = subprocess.run(["zfs", "list", "-H", "-t", "all", "-o", "name",
                                      "-r", node.pool], capture_output=True,
                                     text=True).stdout
            self.assertNotIn("%", listing, "a receive left a hidden clone on %s" % name)

    def assert_converged(self, target):
        """The promises after recovery: one node runs the application over
        one writable copy holding every acknowledged write."""
        self.assertEqual(self.running_on(), target)
        self.write_through(target)
        self.write_through("n1" if target == "n2" else "n2")
        mount = self.mountpoint(target)
        with open(os.path.join(mount, "acked")) as f:
            present = {int(line) for line in f if line.strip().isdigit()}
        missing = sorted(self.acked - present)
        self.assertEqual(missing, [], "acknowledged writes lost")
        for filename, digest in sorted(self.files.items()):
            h = hashlib.sha256()
            with open(os.path.join(mount, filename), "rb") as f:
                for chunk in iter(lambda: f.read(4 << 20), b""):
                    h.update(chunk)
            self.assertEqual(h.hexdigest(), digest, filename)
        writable = []
        for name in self.nodes:
            props = self.zfs_props(name)
            if props is None:
                continue
            self.assertEqual(props["org.flocker-async:owner"], self.address[target],
                             "owner as %s records it" % (name,))
            probe = os.path.join(self.mountpoint(name), ".probe")
            try:
                with open(probe, "w") as f:
                    f.write("x")
                os.unlink(probe)
                really_writable = True
            except OSError as e:
                self.assertEqual(e.errno, errno.EROFS)
                really_writable = False
            self.assertEqual(props["org.flocker-async:read-only"] == "off",
                             really_writable, name)
            if really_writable:
                writable.append(name)
        self.assertEqual(writable, [target])
        self.assert_no_leftovers()

    def kill_restart_and_recover(self, node, run, writer):
        """SIGKILL ``node``'s daemon, restart it a second later (as systemd
        would); the running deploy fails naming it; then recover."""
        self.assertTrue(self.lab.kill_daemon(node))
        time.sleep(1)
        self.lab.start_daemon(node)
        status, output = self.check_exit(run, expect=(2,))
        self.assert_failed_naming(output, [node])
        writer.stop()
        self.recover()

    def recover(self, target=None):
        """One more deploy of the move, then every promise."""
        target = target or self.dest
        self.heal()
        self.flocker_deploy(self.placement(target, [APP]))
        self.assert_converged(target)


# The points of a move where a daemon is killed: (the flocker-deploy output
# line that marks the point, seconds to wait after it).
# (The push's first progress line comes after a second, by when a fast
# push may be over: the line announcing it marks the start.)
BULK_PUSH = r"pushing volume web to .*\(full\)"
AFTER_BULK = r"sent [\d.]+ \w+ of volume web"
FINAL_PUSH = r"final push of volume web"
AFTER_ACQUIRE = r"took ownership of volume web"


class SourceDaemonKillTests(FaultTestCase):
    """SIGKILL the source's flocker-node at each step of a move; it is
    restarted a moment later (as systemd would), and the move completes."""

    def kill_source_at(self, pattern, after_stop=False, late_data=False):
        writer = self.writer()
        run = self.move()
        if late_data:
            # Written after the bulk snapshot: the final push carries it.
            run.wait_for(r"pushing volume web")
            self.write_file(self.source, "late.bin", LATE_BYTES)
        run.wait_for(pattern)
        if pattern == BULK_PUSH:
            self.wait_for_stream()
        if after_stop:
            deadline = time.monotonic() + 30
            while "flocker-web" in self.containers(self.source):
                self.assertLess(time.monotonic(), deadline)
                time.sleep(0.05)
        self.kill_restart_and_recover(self.source, run, writer)

    def test_during_bulk_push(self):
        self.kill_source_at(BULK_PUSH)

    def test_at_acquire(self):
        """Killed as it asks the destination to acquire (by its own log):
        before, during or just after the destination's acquire."""
        writer = self.writer()
        since = self.log_size(self.source)
        run = self.move()
        self.wait_in_log(self.source, r"\] %s acquire web" % (
            re.escape(self.address[self.source]),), since, interval=0.005)
        self.kill_restart_and_recover(self.source, run, writer)

    def test_after_bulk_push(self):
        self.kill_source_at(AFTER_BULK)

    def test_after_application_stopped(self):
        self.kill_source_at(r"stopping web", after_stop=True)

    def test_during_final_push(self):
        self.kill_source_at(FINAL_PUSH, late_data=True)

    def test_after_acquire(self):
        self.kill_source_at(AFTER_ACQUIRE)


class DestinationDaemonKillTests(FaultTestCase):
    """SIGKILL the destination's flocker-node at each step of a move."""

    def test_during_bulk_push_stays_on_source(self):
        """Killed during the bulk copy and left down: the move cannot
        happen, flocker-deploy says so naming the node, and the application
        keeps running (and taking writes) on the source."""
        writer = self.writer()
        run = self.move()
        run.wait_for(BULK_PUSH)
        self.wait_for_stream()
        self.assertTrue(self.lab.kill_daemon(self.dest))
        status, output = self.check_exit(run, expect=(2,))
        self.assert_failed_naming(output, [self.dest])
        writer.stop()
        self.assert_serving_on(self.source)
        self.assert_no_leftovers()
        self.recover()

    def kill_dest_at(self, pattern, late_data=False):
        writer = self.writer()
        run = self.move()
        if late_data:
            run.wait_for(r"pushing volume web")
            self.write_file(self.source, "late.bin", LATE_BYTES)
        run.wait_for(pattern)
        self.kill_restart_and_recover(self.dest, run, writer)

    def test_after_bulk_push(self):
        self.kill_dest_at(AFTER_BULK)

    def test_after_application_stopped(self):
        self.kill_dest_at(r"stopping web")

    def test_during_final_push(self):
        self.kill_dest_at(FINAL_PUSH, late_data=True)

    def test_after_acquire(self):
        self.kill_dest_at(AFTER_ACQUIRE)


class TransferFaultTests(FaultTestCase):
    """The destination's network, disk and zfs recv fail mid-transfer."""

    def test_link_down_for_10_seconds(self):
        writer = self.writer()
        run = self.move()
        run.wait_for(BULK_PUSH)
        self.wait_for_stream()
        self.lab.exec(self.dest, ["ip", "link", "set", "eth0", "down"], check=True)
        try:
            time.sleep(10)
        finally:
            self.lab.exec(self.dest, ["ip", "link", "set", "eth0", "up"], check=True)
        status, output = self.check_exit(run, expect=(0, 2))
        if status == 2:
            self.assert_failed_naming(output, [])
            self.assertRegex(output, r"flocker-deploy: node (%s|%s) failed: \S" % (
                re.escape(self.address["n1"]), re.escape(self.address["n2"])))
        writer.stop()
        self.recover()

    def test_destination_pool_full(self):
        """The receive fails for want of space: flocker-deploy names the
        source and says so; the application keeps running there; once
        space is freed the move completes."""
        pool = self.nodes[self.dest].pool
        available = int(subprocess.run(
            ["zfs", "get", "-H", "-p", "-o", "value", "available", pool],
            capture_output=True, text=True, check=True).stdout)
        # A reservation takes the space at once (writing gigabytes would
        # take minutes); the receive has about 64 MiB left.
        subprocess.run(["zfs", "create", "-o", "mountpoint=none", "-o",
                        "reservation=%d" % (available - (64 << 20),),
                        pool + "/filler"], check=True)
        writer = self.writer()
        status, output = self.check_exit(self.move(), expect=(2,))
        self.assert_failed_naming(output, [self.source])
        self.assertRegex(output, r"(?i)space|quota")
        writer.stop()
        self.assert_serving_on(self.source)
        self.assert_no_leftovers()
        self.recover()

    def test_zfs_recv_killed(self):
        writer = self.writer()
        run = self.move()
        run.wait_for(BULK_PUSH)
        dataset = "%s/%s" % (self.nodes[self.dest].pool, APP)
        victims = []
        deadline = time.monotonic() + 10
        while not victims and time.monotonic() < deadline:
            for pid in _all_pids():
                argv = _cmdline(pid)
                if (argv and os.path.basename(argv[0]) == "zfs" and "recv" in argv
                        and dataset in argv):
                    victims.append(pid)
            time.sleep(0.01)
        self.assertTrue(victims, "no zfs recv of %s found" % (dataset,))
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        status, output = self.check_exit(run, expect=(2,))
        self.assert_failed_naming(output, [self.source], [r"zfs recv"])
        writer.stop()
        # The source's daemon retries the move on its own (a second zfs
        # recv is not killed): the application is on one node or the other.
        self.assert_no_leftovers()
        self.assertIsNotNone(self.running_on())
        # zfs-fuse answers a receive in the seconds after a killed one with
        # EIO (seen on the final increment); the daemons' own retries get
        # past it.  Let them, so the deploy below meets a settled cluster.
        time.sleep(10)
        self.assert_no_leftovers()
        self.recover()


class RaceTests(FaultTestCase):
    full_push = False

    def test_two_deploys_at_once(self):
        """Two different deployments at once: the lease makes one wait for
        the other, then apply; both succeed and the cluster ends in the
        state of the one that waited, on every node."""
        moved = self.placement(self.dest, [APP])
        stay = self.placement(self.source, [APP, "cache"], others=())
        first = self.start_deploy(moved, RACE_APP, tag="a")
        second = self.start_deploy(stay, RACE_APP, tag="b")
        _, out_a = self.check_exit(first)
        _, out_b = self.check_exit(second)
        waited = [o for o in (out_a, out_b) if "waiting: " in o]
        self.assertEqual(len(waited), 1, (out_a, out_b))
        self.assertRegex(waited[0], r"waiting: busy: this node is held by deploy")
        if waited[0] is out_a:
            target, cache_on = self.dest, None
        else:
            target, cache_on = self.source, self.source
        self.assertEqual(self.running_on(), target)
        for name in self.nodes:
            self.assertEqual("flocker-cache" in self.containers(name), name == cache_on)
        self.flocker_deploy(self.placement(target, [APP]))
        self.assert_converged(target)

    def test_deploy_while_daemon_restarts(self):
        """A deploy started while the destination's daemon is down and
        coming back: it succeeds, or fails naming that node; a second
        deploy succeeds."""
        self.assertTrue(self.lab.kill_daemon(self.dest))
        run = self.move()
        time.sleep(0.5)
        self.lab.start_daemon(self.dest)
        status, output = self.check_exit(run, expect=(0, 2))
        if status == 2:
            self.assert_failed_naming(output, [self.dest])
        self.recover()
