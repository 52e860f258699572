"""
Acceptance: a node dies, on a real 3-node lab (network namespaces, one
dockerd, zfs-fuse pool and flocker-node per node), with MariaDB and the real
flocker-deploy.

* Standby replication by the daemons on their own; the owner powered off
  (``flocker-lab power-off``: daemon, containers and dockerd killed, link
  down); ``flocker-deploy --down`` takes MariaDB over on the standby: every
  row written before the last replication is there, read through every
  surviving node's address, and what the deploy says may be lost is what
  was lost.  The old owner powered on again runs no container, keeps its
  copy aside read-only, and forwards its address to the new owner within a
  convergence interval.
* A partitioned owner keeps accepting writes from clients inside its own
  namespace while the rest of the cluster takes its database over; when the
  partition heals it yields: one writable copy, its diverged writes kept in
  a set-aside copy.

One lab (prefix ``flfo-``) serves the module: built by the first test,
taken down when the test process exits.  Each test uses an application of
its own, so tests do not depend on each other's leftovers.
"""

from __future__ import annotations

import atexit
import errno
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from flocker_async.lab import Lab
from flocker_async.lab._lab import CONVERGENCE_INTERVAL

PREFIX = "flfo-"
DIRECTORY = "/var/lib/flocker-failover-lab"
BIN = os.path.dirname(sys.executable)
MARIADB = shutil.which("mariadb") or "mysql"

APP = """\
version: 1
applications:
  {name}:
    image: flocker-lab/mariadb
    environment: {{MYSQL_ROOT_PASSWORD: clusterhq}}
    ports:
    - {{internal: 3306, external: {port}}}
    volume:
      mountpoint: /var/lib/mysql
      replication_interval: 3s
"""

_LAB = {}


def shared_lab() -> Lab:
    if "lab" not in _LAB:
        lab = Lab(directory=DIRECTORY, prefix=PREFIX)
        lab.down()  # what a crashed earlier run left
        if not os.environ.get("FLOCKER_FAILOVER_KEEP_LAB"):
            atexit.register(lab.down)
        lab.up(nodes=3)
        _LAB["lab"] = lab
    return _LAB["lab"]


def deployment(placement, standby=None):
    lines = ["version: 1", "nodes:"]
    for address, apps in placement:
        lines.append('  "%s": [%s]' % (address, ", ".join(apps)))
    if standby:
        lines.append("standby:")
        for app, nodes in standby.items():
            lines.append('  %s: [%s]' % (app, ", ".join('"%s"' % n for n in nodes)))
    return "\n".join(lines) + "\n"


class Writer:
    """
    Inserts a row every ``pause`` seconds through one client connection to
    ``address``:``port`` and records when each was acknowledged (the
    client read back its id after the INSERT committed).
    """

    def __init__(self, argv, pause=0.1):
        self.process = subprocess.Popen(
            argv + ["-N", "-B", "--unbuffered"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        self.acked = {}
        self.pause = pause
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._write, daemon=True)
        self.thread.start()

    def _write(self):
        n = 0
        while not self.stopped.is_set() and n < 100000:
            n += 1
            try:
                self.process.stdin.write(
                    "INSERT INTO example.rows VALUES (%d, 'row %d'); SELECT %d;\n"
                    % (n, n, n))
                self.process.stdin.flush()
                line = self.process.stdout.readline()
            except (OSError, ValueError):
                return
            if line.strip() != str(n):
                return  # the connection died: nothing more is acknowledged
            self.acked[n] = time.time()
            time.sleep(self.pause)

    def stop(self):
        self.stopped.set()
        self.process.kill()
        self.thread.join(30)


class FailoverTestCase(SynchronousTestCase):
    def setUp(self):
        if os.geteuid() != 0:
            raise SkipTest("acceptance tests need root")
        self.lab = shared_lab()
        self.n1, self.n2, self.n3 = [n.address for n in self.lab.nodes]
        for node in ("n1", "n2", "n3"):
            # Whatever an earlier test did, every node is up and connected.
            self.addCleanup(self._restore, node)
        self.workdir = tempfile.mkdtemp(prefix="flfo-")
        self.addCleanup(shutil.rmtree, self.workdir, True)

    def _restore(self, node):
        if not self.lab.is_powered_on(node):
            self.lab.power_on(node)
        if self.lab.is_partitioned(node):
            self.lab.heal(node)

    def write(self, name, text):
        path = os.path.join(self.workdir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def flocker_deploy(self, deployment_text, application_text, *options, expect=0):
        dep = self.write("deployment.yml", deployment_text)
        app = self.write("application.yml", application_text)
        env = dict(os.environ)
        env.update(self.lab.env())
        result = subprocess.run(
            [os.path.join(BIN, "flocker-deploy")] + list(options) + [dep, app],
            env=env, capture_output=True, text=True, timeout=600)
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, expect, output)
        self.assertNotIn("Traceback", output)
        return output

    def mysql_argv(self, address, port):
        return [MARIADB, "-h", address, "-P", str(port), "-uroot", "-pclusterhq",
                "--connect-timeout=5"]

    def mysql(self, address, port, sql, timeout=120.0):
        deadline = time.monotonic() + timeout
        while True:
            result = subprocess.run(self.mysql_argv(address, port) + ["-N", "-B", "-e", sql],
                                    capture_output=True, text=True, timeout=60)
            if result.returncode == 0:
                return result.stdout
            if time.monotonic() > deadline:
                self.fail("mysql on %s:%d failed: %s" % (address, port, result.stderr))
            time.sleep(1)

    def rows(self, address, port):
        return {int(line.split("\t")[0]) for line in self.mysql(
            address, port, "SELECT id FROM example.rows;").splitlines() if line}

    def node_state(self, node):
        """The node's own ``state`` report, asked over SSH as the operator."""
        return self.lab.state(node)

    def zfs(self, *argv):
        return subprocess.run(["zfs"] + list(argv), capture_output=True, text=True,
                              check=True).stdout

    def writable_copies(self, volume, settled=True):
        """The nodes holding a writable copy of ``volume``, by a real write
        attempt (zfs-fuse shows a mounted read-only dataset's ``readonly``
        as off).  Once ``settled``, our property must agree (while a node
        is making its copy read-only, the two differ for a moment)."""
        found = []
        for node in ("n1", "n2", "n3"):
            lab_node = self.lab.node(node)
            out = subprocess.run(["zfs", "get", "-H", "-o", "value",
                                  "org.flocker-async:read-only",
                                  "%s/%s" % (lab_node.pool, volume)],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                continue
            by_property = out.stdout.strip() == "off"
            mountpoint = os.path.join(lab_node.mount_root, volume)
            if not os.path.ismount(mountpoint):
                # Unmounted for a receive: a replica.  Never write into the
                # bare directory (the next mount would find it busy).
                self.assertFalse(by_property and settled, (node, volume))
                continue
            by_write = self.can_write(mountpoint)
            if settled:
                self.assertEqual(by_property, by_write, (node, volume))
            if by_write:
                found.append(node)
        return found

    def can_write(self, directory):
        probe = os.path.join(directory, ".flocker-write-probe")
        try:
            with open(probe, "w") as f:
                f.write("probe")
        except OSError as e:
            self.assertEqual(e.errno, errno.EROFS, directory)
            return False
        os.unlink(probe)
        return True

    def containers(self, node):
        return self.lab.exec(node, ["docker", "ps", "--format", "{{.Names}}"]
                             ).stdout.decode().split()

    def set_aside_copy(self, node, volume, timeout=30):
        """The one set-aside copy of ``volume`` on ``node`` once its
        set-aside has finished (listed, and mounted at its mountpoint):
        a copy that has just stopped being writable is still being
        renamed and mounted for a moment."""
        found = []

        def settled():
            state = self.node_state(node)
            kept = [c for c in state["set_aside"] if c["volume"] == volume]
            found[:] = kept
            return len(kept) == 1 and os.path.ismount(kept[0]["mountpoint"])
        self.wait_until(settled, timeout, "%s sets its copy of %s aside" % (node, volume))
        return found[0]

    def wait_until(self, predicate, timeout, what):
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                self.fail("%s: not within %d s" % (what, timeout))
            time.sleep(0.5)


def _clock(line: str) -> float:
    """Today's unix time of the first HH:MM:SS in ``line`` (local time)."""
    hms = re.search(r"(\d\d):(\d\d):(\d\d)", line).groups()
    now = time.localtime()
    return time.mktime(time.struct_time((now.tm_year, now.tm_mon, now.tm_mday,
                                         int(hms[0]), int(hms[1]), int(hms[2]),
                                         0, 0, -1)))


class TakeOverTests(FailoverTestCase):
    def test_power_off_take_over_and_return(self):
        name, port = "db", 3306
        app = APP.format(name=name, port=port)
        self.flocker_deploy(deployment(
            [(self.n1, [name]), (self.n2, []), (self.n3, [])], {name: [self.n2]}), app)
        self.mysql(self.n1, port, "CREATE DATABASE example; CREATE TABLE example.rows "
                                  "(id INT PRIMARY KEY, note VARCHAR(64));")
        writer = Writer(self.mysql_argv(self.n1, port))
        self.addCleanup(writer.stop)
        # Several replications happen meanwhile (every 3 s), on their own.
        time.sleep(10)
        self.assertGreater(len(writer.acked), 20)
        power_off = time.time()
        self.lab.power_off("n1")
        writer.stop()
        acked = dict(writer.acked)

        # Without --down, the dead node fails the deploy as before.
        moved = deployment([(self.n1, []), (self.n2, [name]), (self.n3, [])],
                           {name: [self.n3]})
        refused = self.flocker_deploy(moved, app, expect=2)
        self.assertIn("node %s failed" % (self.n1,), refused)

        dry = self.flocker_deploy(moved, app, "--down", self.n1, "--dry-run")
        self.assertIn("take volume %s over" % (name,), dry)
        output = self.flocker_deploy(moved, app, "--down", self.n1)
        takeover = [line for line in output.splitlines() if line.startswith("take-over:")]
        window = next(line for line in takeover if "last replica on" in line)
        self.assertIn("take-over: %s: last replica on %s is from" % (name, self.n2), window)
        snapshot_at = _clock(window.split("is from ")[1])
        heard_at = _clock(window.split("last heard from (")[1])
        stated = int(re.search(r", (\d+) s before", window).group(1))
        self.assertLessEqual(abs((heard_at - snapshot_at) - stated), 1)
        self.assertLessEqual(heard_at, power_off + 1)
        self.assertGreaterEqual(heard_at, power_off - CONVERGENCE_INTERVAL - 3)

        # Every row acknowledged before the last replication is there, read
        # through every surviving node's address; what is missing was
        # acknowledged after it: the stated window is what was lost.
        present = self.rows(self.n2, port)
        self.assertEqual(self.rows(self.n3, port), present)
        before = {n for n, t in acked.items() if t < snapshot_at - 1}
        self.assertTrue(before)
        self.assertLessEqual(before, present)
        lost = set(acked) - present
        self.assertTrue(all(acked[n] >= snapshot_at - 1 for n in lost), lost)
        self.assertTrue(all(acked[n] <= snapshot_at + 3 for n in present if n in acked))

        # The new owner serves; a row written now is seen everywhere.
        self.mysql(self.n2, port, "INSERT INTO example.rows VALUES (0, 'after');")

        # The old owner comes back: within a convergence interval it runs no
        # container, its old copy is kept aside read-only, and its address
        # forwards to the new owner.
        self.lab.power_on("n1")
        started = time.monotonic()
        self.wait_until(lambda: "flocker-%s" % (name,) not in self.containers("n1")
                        and self.writable_copies(name, settled=False) == ["n2"]
                        and 0 in self.rows_quietly(self.n1, port),
                        CONVERGENCE_INTERVAL * 3 + 10, "the old owner yields")
        # Within one convergence interval (and the time a stop and a
        # set-aside take on this shared machine).
        self.assertLess(time.monotonic() - started, CONVERGENCE_INTERVAL + 5)
        kept = [self.set_aside_copy("n1", name)]
        pool = self.lab.node("n1").pool
        listing = self.zfs("list", "-H", "-o", "name,org.flocker-async:read-only",
                           "-r", pool)
        self.assertRegex(listing, r"%s/%s\.set-aside\.%s\ton" % (
            re.escape(pool), name, re.escape(kept[0]["label"])))
        self.assertFalse(self.can_write(kept[0]["mountpoint"]))
        self.assertEqual(self.writable_copies(name), ["n2"])

    def rows_quietly(self, address, port):
        result = subprocess.run(self.mysql_argv(address, port) + [
            "-N", "-B", "-e", "SELECT id FROM example.rows;"],
            capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            return set()
        return {int(line) for line in result.stdout.split()}


class PartitionTests(FailoverTestCase):
    def test_partitioned_owner_yields_keeping_diverged_writes(self):
        name, port = "dbp", 13306
        app = APP.format(name=name, port=port)
        self.flocker_deploy(deployment(
            [(self.n1, []), (self.n2, [name]), (self.n3, [])], {name: [self.n3]}), app)
        self.mysql(self.n2, port, "CREATE DATABASE example; CREATE TABLE example.rows "
                                  "(id INT PRIMARY KEY, note VARCHAR(64));")
        self.mysql(self.n2, port, "INSERT INTO example.rows VALUES (1, 'before');")
        time.sleep(8)  # replicated to n3 meanwhile
        self.lab.partition("n2")
        # Clients inside n2's own namespace still reach it, and it still
        # accepts writes: the cluster cannot tell it from a dead node.
        inside = self.lab.exec("n2", self.mysql_argv(self.n2, port) + [
            "-e", "INSERT INTO example.rows VALUES (2, 'during the partition');"])
        self.assertEqual(inside.returncode, 0, inside.stderr)
        marker = self.lab.exec("n2", ["docker", "exec", "flocker-%s" % (name,), "sh",
                                      "-c", "echo diverged > /var/lib/mysql/diverged"])
        self.assertEqual(marker.returncode, 0, marker.stderr)

        output = self.flocker_deploy(deployment(
            [(self.n1, []), (self.n2, []), (self.n3, [name])]), app, "--down", self.n2)
        self.assertIn("take-over: %s: %s is down; %s takes it over" % (
            name, self.n2, self.n3), output)
        self.assertEqual(self.rows(self.n3, port), {1})
        self.mysql(self.n3, port, "INSERT INTO example.rows VALUES (3, 'after');")

        self.lab.heal("n2")
        self.wait_until(lambda: self.writable_copies(name, settled=False) == ["n3"]
                        and "flocker-%s" % (name,) not in self.containers("n2"),
                        CONVERGENCE_INTERVAL * 3 + 10, "the partitioned owner yields")
        for address in (self.n1, self.n2, self.n3):
            self.wait_until(lambda: self.rows_quietly(address, port) == {1, 3},
                            30, "%s forwards to the new owner" % (address,))
        self.assertEqual(self.writable_copies(name), ["n3"])
        kept = [self.set_aside_copy("n2", name)]
        with open(os.path.join(kept[0]["mountpoint"], "diverged")) as f:
            self.assertEqual(f.read(), "diverged\n")
        self.assertFalse(self.can_write(kept[0]["mountpoint"]))
        snapshots = self.zfs("list", "-H", "-t", "snapshot", "-o", "name", "-r",
                             self.lab.node("n2").pool)
        self.assertIn("%s.set-aside.%s@set-aside-%s" % (name, kept[0]["label"],
                                                        kept[0]["label"]), snapshots)

    rows_quietly = TakeOverTests.rows_quietly
