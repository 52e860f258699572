"""
Regression tests for bugs the chaos soak (bench/soak.py) found, each made
deterministic: the fault the soak met by chance, done at a chosen moment
on a small lab of its own (prefix ``flsr-``, one lab of the fault modules
at a time).  Each names the seed that found it; README "Reliability" lists
them.

A test whose bug is not fixed yet is marked ``todo`` (an expected failure
in trial's count): once the fix lands it passes, trial reports an
unexpected success, and the mark must go.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from flocker_async.lab import Lab
from flocker_async.lab._lab import CONVERGENCE_INTERVAL

from . import take_turns
from tests.acceptance.test_failover import deployment
from tests.acceptance.test_move import HTTP_APP

PREFIX = "flsr-"
DIRECTORY = "/var/lib/flocker-soak-regressions-lab"
BIN = os.path.dirname(sys.executable)
APP = "web"
PORT = 8080
# A node mends what it finds broken at its next convergence.
SETTLE = 3 * CONVERGENCE_INTERVAL + 15

_LAB: dict = {}


def shared_lab() -> Lab:
    """The module's lab, built on first use and removed at exit."""
    if "lab" not in _LAB:
        lab = Lab(directory=DIRECTORY, prefix=PREFIX)
        lab.down()  # what a crashed earlier run left
        atexit.register(lab.down)
        take_turns(__name__, lab, _LAB)
        lab.up(nodes=3)
        _LAB["lab"] = lab
    return _LAB["lab"]


# A second application, replicated every second.
REPLICATED_APP = """\
version: 1
applications:
  rep:
    image: flocker-lab/busybox
    environment: {HTTP_PORT: "81"}
    ports:
    - {internal: 81, external: 8081}
    volume:
      mountpoint: /data
      replication_interval: 1s
"""


class SoakRegressionTestCase(SynchronousTestCase):
    def setUp(self):
        if os.geteuid() != 0:
            raise SkipTest("fault tests need root")
        self.lab = shared_lab()
        self.nodes = {n.name: n for n in self.lab.nodes}
        self.address = {name: n.address for name, n in self.nodes.items()}
        self.workdir = tempfile.mkdtemp(prefix="flsr-")
        self.addCleanup(shutil.rmtree, self.workdir, True)

    def start_deploy(self, deployment_text, application_text=HTTP_APP, options=(),
                     tag="d"):
        """flocker-deploy in the background: its Popen (output to a file)."""
        dep = os.path.join(self.workdir, "deployment-%s.yml" % (tag,))
        app = os.path.join(self.workdir, "application-%s.yml" % (tag,))
        with open(dep, "w") as f:
            f.write(deployment_text)
        with open(app, "w") as f:
            f.write(application_text)
        env = dict(os.environ)
        env.update(self.lab.env())
        out = open(os.path.join(self.workdir, "deploy-%s.log" % (tag,)), "w+")
        self.addCleanup(out.close)
        process = subprocess.Popen(
            [os.path.join(BIN, "flocker-deploy")] + list(options) + [dep, app],
            env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        process.log = out
        self.addCleanup(lambda: process.poll() is None and process.kill())
        return process

    def finish(self, process, timeout=300):
        """(exit status, output) of a background flocker-deploy."""
        status = process.wait(timeout)
        process.log.seek(0)
        return status, process.log.read()

    def flocker_deploy(self, deployment_text, application_text=HTTP_APP, options=()):
        status, output = self.finish(self.start_deploy(
            deployment_text, application_text, options))
        self.assertEqual(status, 0, output)
        return output

    def wait_in_log(self, name, pattern, since, timeout=60.0):
        """A line matching ``pattern`` in ``name``'s daemon log after byte
        ``since``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        pending = b""
        with open(self.nodes[name].daemon_log, "rb") as f:
            f.seek(since)
            while time.monotonic() < deadline:
                pending += f.read()
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if regex.search(line.decode("utf-8", "replace")):
                        return
                time.sleep(0.005)
        self.fail("%s's log never said %r" % (name, pattern))

    def containers(self, name):
        result = self.lab.exec(name, ["docker", "ps", "--format", "{{.Names}}"],
                               timeout=30)
        return result.stdout.decode().split()

    def daemon_pid(self, name):
        config = self.nodes[name].config_path
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open("/proc/%s/cmdline" % (entry,), "rb") as f:
                        argv = f.read().split(b"\0")
                except OSError:
                    continue
                if config.encode() in argv and any(b"twistd" in a for a in argv):
                    return int(entry)
        self.fail("no flocker-node runs on %s" % (name,))

    def restore(self):
        """Every node on and running a daemon that is not stuck."""
        for name in sorted(self.nodes):
            if not self.lab.is_powered_on(name):
                self.lab.power_on(name)
            self.lab.kill_daemon(name)
            self.lab.start_daemon(name)

    def state(self, name):
        return self.lab.state(name)

    def copy_epoch(self, name, app):
        """The ownership epoch of ``name``'s copy of ``app`` (None: no copy)."""
        out = subprocess.run(["zfs", "get", "-H", "-o", "value", "org.flocker-async:epoch",
                              "%s/%s" % (self.nodes[name].pool, app)],
                             capture_output=True, text=True)
        value = out.stdout.strip()
        return int(value) if out.returncode == 0 and value.isdigit() else None

    def generated_snapshots(self, name, app):
        out = subprocess.run(["zfs", "list", "-H", "-t", "snapshot", "-o", "name",
                              "-d", "1", "%s/%s" % (self.nodes[name].pool, app)],
                             capture_output=True, text=True)
        return [line.split("@", 1)[1] for line in out.stdout.split()
                if "@flocker-" in line]

    def wait_replicated(self, owner, standby, app, since, timeout=60):
        deadline = time.monotonic() + timeout
        while True:
            statuses = self.state(owner)["replication"].get(app, [])
            if any(s["standby"] == self.address[standby] and s["last_error"] is None
                   and (s["last_success"] or 0) > since for s in statuses):
                return
            if time.monotonic() > deadline:
                self.fail("%s did not replicate %s to %s within %d s: %s" % (
                    owner, app, standby, timeout, json.dumps(statuses)))
            time.sleep(0.5)

    def get(self, address, path, port=PORT):
        """The body of ``path`` through ``address``, or the error."""
        try:
            with urllib.request.urlopen("http://%s:%d%s" % (address, port, path),
                                        timeout=3) as response:
                return response.read()
        except OSError as e:
            return e

    def wait_for(self, address, path, body, timeout):
        deadline = time.monotonic() + timeout
        while True:
            got = self.get(address, path)
            if got == body:
                return
            if time.monotonic() > deadline:
                listing = self.lab.exec("n1", ["docker", "exec", "flocker-" + APP,
                                               "ls", "/data"], timeout=30)
                self.fail("%s through %s gave %r, not %r, for %d s; inside the "
                          "container, ls /data: %s" % (
                              path, address, got, body, timeout,
                              (listing.stdout + listing.stderr).decode(
                                  "utf-8", "replace").strip()))
            time.sleep(0.5)


TWO_APPS = """\
version: 1
applications:
  moving:
    image: flocker-lab/busybox
    environment: {HTTP_PORT: "82"}
    ports:
    - {internal: 82, external: 8082}
    volume:
      mountpoint: /data
  other:
    image: flocker-lab/busybox
    environment: {HTTP_PORT: "83"}
    ports:
    - {internal: 83, external: 8083}
    volume:
      mountpoint: /data
"""

OTHER_APP = """\
version: 1
applications:
  other:
    image: flocker-lab/busybox
    environment: {HTTP_PORT: "83"}
    ports:
    - {internal: 83, external: 8083}
    volume:
      mountpoint: /data
"""


class StaleHandoffWaitTests(SoakRegressionTestCase):
    def test_newer_deploy_is_not_held_up_by_a_stale_handoff_wait(self):
        """
        Found by the soak with seed 6 (180 s, without restart-zfs-fuse):
        n1 began waiting for n3 to hand volume web over (a move n3 -> n1),
        and n3 was powered off a second later.  The wait holds n1's
        convergence: every later apply queued behind it (four final
        deploys timed out, silent for 15 s), and db, which n2 handed over
        to n1 meanwhile (acquired, writable), was never started: db was
        down for over two minutes.  The wait only ends after 120 s with no
        push of that volume to n1 from any peer (replication rounds and
        other pushes of it keep it going).

        Here: "moving" runs on n3, "other" on n2.  A move of "moving" to
        n1 starts; as soon as n1 waits for the handoff, n3's daemon is
        frozen and n3 powered off.  Then the operator declares n3 down and
        deploys "other" to n1 (leaving "moving", whose only copy is on n3,
        out).  n1 must run "other" within 30 s: a newer deployment must
        not wait for a handoff the older one expected.
        """
        self.addCleanup(self.restore)
        a = self.address
        self.flocker_deploy(deployment([(a["n1"], []), (a["n2"], ["other"]),
                                        (a["n3"], ["moving"])]), TWO_APPS)
        since = os.path.getsize(self.nodes["n1"].daemon_log)
        move = self.start_deploy(deployment([(a["n1"], ["moving"]), (a["n2"], ["other"]),
                                             (a["n3"], [])]), TWO_APPS,
                                 ["--timeout", "10"], tag="move")
        self.wait_in_log("n1", r"\] %s wait-handoff moving$" % (re.escape(a["n1"]),),
                         since)
        os.kill(self.daemon_pid("n3"), signal.SIGSTOP)
        self.lab.power_off("n3")
        status, output = self.finish(move, 120)
        self.assertEqual(status, 2, output)
        started = time.monotonic()
        takeover = self.start_deploy(
            deployment([(a["n1"], ["other"]), (a["n2"], []), (a["n3"], [])]),
            OTHER_APP, ["--down", a["n3"], "--timeout", "20"], tag="other")
        deadline = started + 30
        while "flocker-other" not in self.containers("n1"):
            if time.monotonic() > deadline:
                status = takeover.poll()
                takeover.log.seek(0)
                self.fail("'other' does not run on n1 %d s after the deploy that "
                          "moves it there began (that deploy: %s):\n%s" % (
                              deadline - started, "still running" if status is None
                              else "exit %d" % (status,), takeover.log.read()))
            time.sleep(0.5)
        status, output = self.finish(takeover, 120)
        self.assertEqual(status, 0, output)

    test_newer_deploy_is_not_held_up_by_a_stale_handoff_wait.todo = (  # type: ignore
        "a convergence run waiting for a handoff holds the node: newer applies "
        "queue behind it (see README, Reliability)")


KEPT_APP = """\
version: 1
applications:
  kept:
    image: flocker-lab/busybox
    environment: {HTTP_PORT: "84"}
    ports:
    - {internal: 84, external: 8084}
    volume:
      mountpoint: /data
      replication_interval: 1s
"""


class UnfinishedTakeOverTests(SoakRegressionTestCase):
    def test_returning_owner_keeps_its_data_when_nobody_took_over(self):
        """
        Found by the soak with seed 2 (600 s, without restart-zfs-fuse,
        snapshot growth tolerated): every acknowledged row of db was lost.
        n3 owned db (epoch 5) and was powered off; the --down deploy that
        put db on its standby n2 reached n1 but failed on n2 (its dockerd
        was down), so nobody took db over.  n3 came back, adopted that
        deployment from a peer and set its copy aside although no copy had
        a higher epoch; the next deploy put db on n3 again, and n3 created
        a new, empty volume for it: MariaDB started empty, and the replica
        on n2 was later replaced by the empty lineage.

        Here: "kept" runs on n3 with standby n2, holding a marker file;
        n3 is powered off; the --down deploy reaches n1 and fails on n2,
        whose dockerd is killed as its apply arrives; n3 is powered on
        while n2 still cannot act.  n3 must not set its copy aside while no
        copy has a higher epoch; once n2's dockerd is back, "kept" must
        serve its marker.
        (Today n3 sets it aside at once; a deploy putting "kept" on n3
        then creates a new, empty volume there.)
        """
        self.addCleanup(self.restore)
        a = self.address
        nodes = lambda where: [(a[n], ["kept"] if n == where else [])  # noqa: E731
                               for n in ("n1", "n2", "n3")]
        self.flocker_deploy(deployment(nodes("n3"), {"kept": [a["n2"]]}), KEPT_APP)
        with open(os.path.join(self.nodes["n3"].mount_root, "kept", "marker"), "wb") as f:
            f.write(b"kept\n")
        self.wait_replicated("n3", "n2", "kept", since=time.time())
        self.lab.power_off("n3")
        # The take-over reaches n1, and fails on n2: its dockerd dies as
        # the apply arrives (after n2 answered the deploy's state).
        since = os.path.getsize(self.nodes["n2"].daemon_log)
        takeover = self.start_deploy(
            deployment(nodes("n2"), {"kept": [a["n1"]]}), KEPT_APP,
            ["--down", a["n3"], "--timeout", "20"], tag="takeover")
        self.wait_in_log("n2", r"ssh command apply started", since)
        self.lab.kill_dockerd("n2")
        self.addCleanup(self.lab.start_dockerd, "n2")
        status, output = self.finish(takeover)
        if status != 2 or "%s: failed: cannot connect to the Docker engine" % (
                a["n2"],) not in output:
            raise SkipTest("the take-over was not cut as planned (dockerd killed "
                           "too late?): exit %s\n%s" % (status, output))
        # n3 comes back while n2 still cannot act (its dockerd is down), and
        # learns the --down deployment from n1.  It may give its copy up
        # only to a copy with a higher epoch (a take-over that happened);
        # there is none: it holds the only live lineage.
        self.lab.power_on("n3")
        deadline = time.monotonic() + 3 * CONVERGENCE_INTERVAL + 10
        while time.monotonic() < deadline:
            kept = [c for c in self.state("n3")["set_aside"] if c["volume"] == "kept"]
            if kept:
                others = {n: self.copy_epoch(n, "kept") for n in ("n1", "n2")}
                self.fail("n3 set its copy (epoch %d) aside though no copy has a "
                          "higher epoch (%s): nobody took it over" % (
                              kept[0]["epoch"], others))
            time.sleep(0.5)
        # Then n2 can act again: "kept" runs where it is deployed, with its data.
        self.lab.start_dockerd("n2")
        deadline = time.monotonic() + SETTLE
        while self.get(a["n1"], "/marker", port=8084) != b"kept\n":
            self.assertLess(time.monotonic(), deadline, "kept does not serve its marker")
            time.sleep(0.5)

    test_returning_owner_keeps_its_data_when_nobody_took_over.todo = (  # type: ignore
        "a node declared down sets its copy aside on return although nobody took "
        "over, then starts the application on a new, empty volume (see README, "
        "Reliability)")


class ZFSFuseRestartTests(SoakRegressionTestCase):
    def test_application_serves_its_volume_after_zfs_fuse_restart(self):
        """
        Found by the soak with seed 3 (its fault #3, restart-zfs-fuse):
        zfs-fuse restarted under a running application (as the lab does
        when it stops answering) kills the FUSE mount bound into its
        container; the file system is mounted again at the same place, but
        the container keeps the dead one, answers every request for its
        volume with an error, and nothing restarts it.  Within a few
        convergences the node must notice and restart the container on the
        live mount.
        """
        self.flocker_deploy(deployment([(self.address["n1"], [APP]),
                                        (self.address["n2"], [])]))
        with open(os.path.join(self.nodes["n1"].mount_root, APP, "hello"), "wb") as f:
            f.write(b"hello\n")
        self.wait_for(self.address["n1"], "/hello", b"hello\n", 30)
        self.lab.restart_zfs()
        self.wait_for(self.address["n1"], "/hello", b"hello\n", SETTLE)
        self.wait_for(self.address["n2"], "/hello", b"hello\n", 10)

    test_application_serves_its_volume_after_zfs_fuse_restart.todo = (  # type: ignore
        "a container keeps the dead FUSE mount of its volume after a zfs-fuse "
        "restart; the node daemon does not restart it (see README, Reliability)")


class SnapshotRetentionTests(SoakRegressionTestCase):
    def test_stale_replica_does_not_pin_every_snapshot(self):
        """
        Found by the soak with seed 2 (600 s; its checker's snapshot line
        after the final deploy: db's live copy on n2 kept 14 snapshots and
        one more every round; fixed in 613edea, replication prunes for
        standbys only): a node that keeps an old read-only replica
        but is no standby (the old owner after a move) is one of the
        "holders" the owner's pruning waits for, and it never receives
        again, so its newest snapshot stays the base that everything
        since is kept for: one snapshot more per replication round, for
        ever.  After a move from n1 to n2 (standby n3), n2's snapshots must
        stay bounded while it replicates every second.
        """
        a = self.address
        self.flocker_deploy(deployment([(a["n1"], ["rep"]), (a["n2"], []), (a["n3"], [])],
                                       {"rep": [a["n2"]]}), REPLICATED_APP)
        self.wait_replicated("n1", "n2", "rep", since=time.time())
        self.flocker_deploy(deployment([(a["n1"], []), (a["n2"], ["rep"]), (a["n3"], [])],
                                       {"rep": [a["n3"]]}), REPLICATED_APP)
        self.wait_replicated("n2", "n3", "rep", since=time.time())
        before = self.generated_snapshots("n2", "rep")
        # Eight rounds to n3 (each a new newest snapshot there).
        seen = set()
        deadline = time.monotonic() + 120
        while len(seen) < 8:
            self.assertLess(time.monotonic(), deadline, "n2 replicated to n3 %d times "
                            "in 120 s" % (len(seen),))
            newest = self.generated_snapshots("n3", "rep")[-1:]
            seen.update(newest)
            time.sleep(0.2)
        after = self.generated_snapshots("n2", "rep")
        self.assertLessEqual(len(after), max(len(before), 3) + 1, (
            "n2 kept %d snapshots, then %d eight rounds later; n1's replica has %s"
            % (len(before), len(after), self.generated_snapshots("n1", "rep"))))



class ZFSFuseCrashTests(SynchronousTestCase):
    def test_dead_daemon_started_again(self):
        """
        Found by the soak with seed 15 (make test's, 180 s): zfs-fuse
        segfaulted mid-run ("segfault at 0 ... in zfs-fuse" in the kernel's
        log) and the lab never started it again: a dead daemon's mounts
        fail at once, so the check for a wedged one (a statfs that hangs)
        found nothing wrong, and every node's zfs commands failed until
        the lab was taken down.  The lab's check starts a daemon that is
        not running; the pool is mounted again with its data.
        """
        if os.geteuid() != 0:
            raise SkipTest("needs root")
        from flocker_async.lab import _zfs
        from tests.testtools.zfs import make_zfs_pool
        pool = make_zfs_pool(self)
        path = os.path.join(pool.mountpoint, "kept")
        with open(path, "w") as f:
            f.write("written before the daemon died\n")
            f.flush()
            os.fsync(f.fileno())
        for pid in _zfs._zfs_fuse_pids():
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while _zfs._zfs_fuse_pids():
            self.assertLess(time.monotonic(), deadline, "zfs-fuse outlived SIGKILL")
            time.sleep(0.1)
        said = []
        self.assertTrue(_zfs.restart_if_wedged(timeout=5, progress=said.append))
        self.assertIn("not running", said[0])
        self.assertEqual(len(_zfs._zfs_fuse_pids()), 1)
        self.assertEqual(_zfs.unanswered(_zfs.zfs_fuse_mounts(), 10), [])
        with open(path) as f:
            self.assertEqual(f.read(), "written before the daemon died\n")
