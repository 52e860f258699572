"""
Acceptance: the user's journey on a real lab cluster (network namespaces,
one dockerd, zfs-fuse pool and flocker-node daemon per node, the host as
the operator's workstation), driven with the real flocker-deploy command.

Each test makes a lab of its own (prefix ``flacc-``), so a lab in use on
this machine is never touched, and takes it down afterwards, also on
failure.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from flocker_async.lab import Lab

PREFIX = "flacc-"
DIRECTORY = "/var/lib/flocker-acceptance-lab"
BIN = os.path.dirname(sys.executable)

HTTP_APP = """\
version: 1
applications:
  web:
    image: flocker-lab/busybox
    ports:
    - {internal: 80, external: 8080}
    volume:
      mountpoint: /data
"""

MYSQL_APP = """\
"version": 1
"applications":
  "mysql-volume-example":
    "image": "flocker-lab/mariadb"
    "environment":
      "MYSQL_ROOT_PASSWORD": "clusterhq"
    "ports":
    - "internal": 3306
      "external": 3306
    "volume":
      "mountpoint": "/var/lib/mysql"
"""


def deployment(placement):
    lines = ["version: 1", "nodes:"]
    for address, apps in placement:
        lines.append('  "%s": [%s]' % (address, ", ".join(apps)))
    return "\n".join(lines) + "\n"


_SIZES = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


def bytes_sent(output: str, volume: str):
    """The sizes flocker-deploy reported as sent, in bytes, in order."""
    return [int(float(n) * _SIZES[u]) for n, u in re.findall(
        r"sent ([\d.]+) (B|KiB|MiB|GiB) of volume %s" % (re.escape(volume),), output)]


class LabTestCase(SynchronousTestCase):
    def setUp(self):
        if os.geteuid() != 0:
            raise SkipTest("acceptance tests need root")
        self.lab = Lab(directory=DIRECTORY, prefix=PREFIX)
        self.lab.down()  # what a crashed earlier run left
        self.addCleanup(self.lab.down)
        self.lab.up(nodes=2)
        self.n1, self.n2 = [n.address for n in self.lab.nodes]
        self.workdir = tempfile.mkdtemp(prefix="flacc-")
        self.addCleanup(shutil.rmtree, self.workdir, True)

    def write(self, name, text):
        path = os.path.join(self.workdir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def flocker_deploy(self, deployment_text, application_text, expect=0):
        dep = self.write("deployment.yml", deployment_text)
        app = self.write("application.yml", application_text)
        env = dict(os.environ)
        env.update(self.lab.env())
        started = time.monotonic()
        result = subprocess.run(
            [os.path.join(BIN, "flocker-deploy"), dep, app], env=env,
            capture_output=True, text=True, timeout=600)
        self.last_deploy_seconds = time.monotonic() - started
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, expect, output)
        self.assertNotIn("Traceback", output)
        return output

    def node_exec(self, node, argv, check=True):
        result = self.lab.exec(node, argv)
        if check:
            self.assertEqual(result.returncode, 0, result.stderr)
        return result.stdout.decode("utf-8", "replace")

    def http_get(self, address, path="/index.html", port=8080, timeout=10.0):
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(
                        "http://%s:%d%s" % (address, port, path), timeout=3) as r:
                    return r.read().decode()
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def mysql(self, address, sql, database=None, timeout=90.0):
        argv = [shutil.which("mariadb") or "mysql", "-h", address, "-uroot",
                "-pclusterhq", "--connect-timeout=5", "-N", "-B"]
        if database:
            argv.append(database)
        argv += ["-e", sql]
        deadline = time.monotonic() + timeout
        while True:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
            if result.returncode == 0:
                return result.stdout
            if time.monotonic() > deadline:
                self.fail("mysql on %s failed: %s" % (address, result.stderr))
            time.sleep(1)

    def zfs_props(self, node, volume):
        pool = self.lab.node(node).pool
        out = subprocess.run(
            ["zfs", "get", "-H", "-o", "property,value",
             "readonly,org.flocker-async:owner,org.flocker-async:read-only",
             "%s/%s" % (pool, volume)], capture_output=True, text=True, check=True)
        return dict(line.split("\t") for line in out.stdout.splitlines())


class HTTPMoveTests(LabTestCase):
    def test_move_keeps_data_container_and_proxies(self):
        """Deploy on n1, write, move to n2: the data, the container and
        every node's proxy follow; the old copy stays as a read-only
        replica."""
        self.flocker_deploy(deployment([(self.n1, ["web"]), (self.n2, [])]), HTTP_APP)
        self.node_exec("n1", ["docker", "exec", "flocker-web", "sh", "-c",
                              "echo written-on-n1 > /data/index.html"])
        for address in (self.n1, self.n2):
            self.assertEqual(self.http_get(address), "written-on-n1\n")

        self.flocker_deploy(deployment([(self.n1, []), (self.n2, ["web"])]), HTTP_APP)
        for address in (self.n1, self.n2):
            self.assertEqual(self.http_get(address), "written-on-n1\n")
        self.assertNotIn("flocker-web", self.node_exec("n1", ["docker", "ps"]))
        self.assertIn("flocker-web", self.node_exec("n2", ["docker", "ps"]))
        nat = self.node_exec("n1", ["iptables", "-t", "nat", "-S"])
        self.assertRegex(nat, r"--dport 8080 .*-j DNAT --to-destination %s\b"
                         % re.escape(self.n2))
        self.assertEqual(self.zfs_props("n1", "web")["org.flocker-async:owner"], self.n2)
        self.assertEqual(self.zfs_props("n1", "web")["org.flocker-async:read-only"], "on")
        self.assertEqual(self.zfs_props("n2", "web")["org.flocker-async:owner"], self.n2)
        self.assertEqual(self.zfs_props("n2", "web")["org.flocker-async:read-only"], "off")
        # The old copy is read-only for real, not only by its property.
        replica = os.path.join(self.lab.node("n1").mount_root, "web", "probe")
        error = self.assertRaises(OSError, open, replica, "w")
        self.assertEqual(error.errno, errno.EROFS)

    def test_moves_back_and_forth_send_only_increments(self):
        """n1 -> n2 -> n1 -> n2 with data appended each time: all of it is
        there at the end, and the moves after the first send increments."""
        self.flocker_deploy(deployment([(self.n1, ["web"]), (self.n2, [])]), HTTP_APP)
        self.node_exec("n1", ["docker", "exec", "flocker-web", "sh", "-c",
                              "head -c 8388608 /dev/urandom > /data/bulk.bin"])
        lines, sent = [], []
        moves = [(self.n1, self.n2), (self.n2, self.n1), (self.n1, self.n2)]
        for i, (source, target) in enumerate(moves):
            line = "written on %s before move %d" % (source, i + 1)
            lines.append(line)
            self.node_exec("n1" if source == self.n1 else "n2", [
                "docker", "exec", "flocker-web", "sh", "-c",
                "echo '%s' >> /data/index.html" % (line,)])
            output = self.flocker_deploy(
                deployment([(source, []), (target, ["web"])]), HTTP_APP)
            sent.append(sum(bytes_sent(output, "web")))
            for address in (self.n1, self.n2):
                self.assertEqual(self.http_get(address), "\n".join(lines) + "\n")
        self.assertGreater(sent[0], 8 << 20)
        for later in sent[1:]:
            self.assertLess(later, 1 << 20, sent)


class MySQLMoveTests(LabTestCase):
    def test_mysql_move(self):
        """Flocker's tutorial: MySQL on n1, rows written, moved to n2, rows
        read back through both nodes' addresses."""
        self.flocker_deploy(deployment([(self.n1, ["mysql-volume-example"]),
                                        (self.n2, [])]), MYSQL_APP)
        self.mysql(self.n1, "CREATE DATABASE example; CREATE TABLE example.rows "
                            "(id INT PRIMARY KEY, note VARCHAR(64));")
        rows = [(i, "row %d" % i) for i in range(1, 21)]
        self.mysql(self.n1, "INSERT INTO example.rows VALUES %s;" % ", ".join(
            "(%d, '%s')" % r for r in rows))
        self.flocker_deploy(deployment([(self.n1, []),
                                        (self.n2, ["mysql-volume-example"])]), MYSQL_APP)
        expected = "".join("%d\t%s\n" % r for r in rows)
        for address in (self.n1, self.n2):
            self.assertEqual(self.mysql(address, "SELECT id, note FROM example.rows "
                                                 "ORDER BY id;"), expected)
        self.assertIn("flocker-mysql-volume-example",
                      self.node_exec("n2", ["docker", "ps"]))
        self.assertNotIn("flocker-mysql-volume-example",
                         self.node_exec("n1", ["docker", "ps"]))


class UnrelatedConnectionTests(LabTestCase):
    def test_proxied_connection_survives_another_move(self):
        """A client connected through node 1's proxy to MySQL on node 2
        keeps its connection and its answers while another application
        moves from node 1 to node 2 (its rules are replaced around it)."""
        both = MYSQL_APP + HTTP_APP.split("applications:\n", 1)[1]
        self.flocker_deploy(deployment([(self.n1, ["web"]),
                                        (self.n2, ["mysql-volume-example"])]), both)
        self.mysql(self.n1, "SELECT 1")  # MySQL answers through n1's proxy
        client = subprocess.Popen(
            [shutil.which("mariadb") or "mysql", "-h", self.n1, "-uroot",
             "-pclusterhq", "-N", "-B", "--unbuffered"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, bufsize=1)
        self.addCleanup(client.kill)

        def ask(n):
            client.stdin.write("SELECT %d, CONNECTION_ID();\n" % (n,))
            client.stdin.flush()
            return client.stdout.readline().split()

        first = ask(0)
        self.assertEqual(first[0], "0")
        answers = []
        stop = threading.Event()

        def keep_asking():
            n = 1
            while not stop.is_set() and n < 2000:
                answers.append((n, ask(n)))
                n += 1
                time.sleep(0.05)
        asker = threading.Thread(target=keep_asking, daemon=True)
        asker.start()
        self.flocker_deploy(deployment([(self.n1, []), (self.n2, [
            "web", "mysql-volume-example"])]), both)
        time.sleep(0.5)
        stop.set()
        asker.join(30)
        self.assertGreater(len(answers), 5)
        for n, answer in answers:
            self.assertEqual(answer, [str(n), first[1]])  # same connection
        client.stdin.close()
        self.assertEqual(client.wait(30), 0, client.stderr.read())


class CommandLineTests(LabTestCase):
    def test_dry_run_changes_nothing(self):
        self.flocker_deploy(deployment([(self.n1, ["web"]), (self.n2, [])]), HTTP_APP)
        before = (self.node_exec("n1", ["docker", "ps", "-q"]),
                  self.node_exec("n2", ["docker", "ps", "-q"]),
                  self.node_exec("n1", ["iptables-save"]).count("flocker"),
                  self.node_exec("n2", ["iptables-save"]).count("flocker"))
        dep = self.write("moved.yml", deployment([(self.n1, []), (self.n2, ["web"])]))
        app = self.write("app.yml", HTTP_APP)
        env = dict(os.environ)
        env.update(self.lab.env())
        result = subprocess.run([os.path.join(BIN, "flocker-deploy"), "--dry-run",
                                 dep, app], env=env, capture_output=True, text=True,
                                timeout=120)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("push volume web to %s" % (self.n2,), result.stdout)
        self.assertIn("wait for %s to hand volume web over" % (self.n1,), result.stdout)
        # Every step of the source's move, in order, under its node.
        source = result.stdout.split("%s (%s):" % (self.n1, self.n1))[1].split(
            "%s (%s):" % (self.n2, self.n2))[0]
        steps = [line.strip() for line in source.splitlines() if line.strip()]
        expected = ["push volume web to", "route web held", "stop web",
                    "make volume web read-only and push the final increment",
                    "if that fails, undo: make volume web writable",
                    "hand volume web over to", "route web proxy to"]
        found = [next(i for i, line in enumerate(steps) if line.startswith(e))
                 for e in expected]
        self.assertEqual(found, sorted(found), steps)
        after = (self.node_exec("n1", ["docker", "ps", "-q"]),
                 self.node_exec("n2", ["docker", "ps", "-q"]),
                 self.node_exec("n1", ["iptables-save"]).count("flocker"),
                 self.node_exec("n2", ["iptables-save"]).count("flocker"))
        self.assertEqual(before, after)
        pool = self.lab.node("n2").pool
        listing = subprocess.run(["zfs", "list", "-H", "-r", "-o", "name", pool],
                                 capture_output=True, text=True).stdout
        self.assertNotIn("%s/web" % (pool,), listing)

    def test_unreachable_node_exits_2_naming_it(self):
        missing = self.n1.rsplit(".", 1)[0] + ".99"  # on the lab subnet, no node
        output = self.flocker_deploy(
            deployment([(self.n1, ["web"]), (missing, [])]), HTTP_APP, expect=2)
        self.assertIn("node %s failed" % (missing,), output)
        self.assertEqual(self.node_exec("n1", ["docker", "ps", "-q"]), "")
