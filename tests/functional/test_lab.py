"""
Functional tests of flocker-lab (root only): real namespaces, dockerds,
zfs-fuse pools, images and flocker-node daemons.

The tests use a lab of their own (prefix ``flabt-``, directory
/var/lib/flabt-lab), so a lab someone is using on this machine (``flab-``)
is never touched; both labs share only the image cache.  Every test takes
its lab down in cleanup, also when it fails, and checks that nothing is
left.  The first run builds the MariaDB image (about a minute); later runs
find it in the cache.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from flocker_async.cli.lab import main
from flocker_async.lab import Lab, LabError
from flocker_async.lab._network import namespaces
from flocker_async.lab._system import (
    cgroup_dirs, mounts_under, pids_mentioning, run)
from flocker_async.lab._zfs import pools
from flocker_async.lab.images import BUSYBOX_IMAGE, MARIADB_IMAGE
from flocker_async.ssh._keys import HOST_KEY_FILE, check_known_host, load_or_create_key

PREFIX = "flabt-"
DIRECTORY = "/var/lib/flabt-lab"

# Serves one connection: sends its node's name, then exits.
LISTENER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(1)
s.settimeout(30)
c, _ = s.accept()
c.sendall(sys.argv[2].encode())
c.close()
"""


def require_root():
    if os.geteuid() != 0:
        raise SkipTest("flocker-lab tests need root")


def make_lab(test) -> Lab:
    """A test lab, taken down (and checked to be gone) when the test ends."""
    require_root()
    lab = Lab(directory=DIRECTORY, prefix=PREFIX)
    lab.down()  # a crashed earlier run's lab
    test.addCleanup(lambda: assert_nothing_left(test, lab))
    test.addCleanup(lab.down)
    return lab


def assert_nothing_left(test, lab: Lab):
    test.assertEqual(
        [n for n in namespaces() if n.startswith(PREFIX)], [], "namespaces left")
    test.assertEqual(pools(PREFIX), {}, "pools left")
    test.assertNotEqual(
        run(["ip", "link", "show", "dev", lab.names.host_veth], check=False)
        .returncode, 0, "host veth left")
    test.assertEqual(mounts_under(DIRECTORY), [], "mounts left")
    test.assertEqual(pids_mentioning(DIRECTORY), [], "processes left")
    test.assertFalse(os.path.exists(DIRECTORY), "lab directory left")
    for node in ("n1", "n2"):
        test.assertEqual(cgroup_dirs(PREFIX + node), [], "cgroups left")
    routes = run(["ip", "route"]).stdout.decode()
    test.assertNotIn(lab.names.host_veth, routes)


def connect(address, port, timeout=15.0) -> bytes:
    """What a server at address:port sends, retrying while it starts."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((address, port), timeout=2) as s:
                return s.recv(100)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def cli(lab, *argv):
    """Run flocker-lab through main(); (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    status = main(list(argv), out=out, err=err, lab=lab)
    return status, out.getvalue(), err.getvalue()


class LabLifecycleTests(SynchronousTestCase):
    """up, exec, images, up again, down: the lab's whole life."""

    def test_lifecycle(self):
        lab = make_lab(self)
        with open("/proc/sys/net/ipv4/ip_forward") as f:
            host_forwarding = f.read()
        routes_before = run(["ip", "route"]).stdout.decode()

        status, out, err = cli(lab, "up", "--nodes", "2", "--no-daemons")
        self.assertEqual(status, 0, err)
        nodes = lab.nodes
        self.assertEqual([n.name for n in nodes], ["n1", "n2"])
        self.assertEqual(cli(lab, "nodes")[1], "".join(
            "%s %s\n" % (n.name, n.address) for n in nodes))

        # The host: one new device and its connected route, nothing else.
        with open("/proc/sys/net/ipv4/ip_forward") as f:
            self.assertEqual(f.read(), host_forwarding)
        routes_after = run(["ip", "route"]).stdout.decode().splitlines()
        # Other labs (the acceptance tests', a user's) may come and go
        # meanwhile; the host's own routes must be exactly as they were.
        import re
        other_lab = re.compile(r"\bdev fl[a-z]*-host\b")
        self.assertEqual(
            sorted(r for r in routes_after if not other_lab.search(r)),
            sorted(r for r in routes_before.splitlines() if not other_lab.search(r)))
        self.assertEqual(
            len([r for r in routes_after
                 if re.search(r"\bdev %s\b" % re.escape(lab.names.host_veth), r)]), 1)

        for node in nodes:
            self.assertIn(node.namespace, namespaces())
            # No way out of the machine from a node.
            routes = lab.exec(node.name, ["ip", "route"]).stdout.decode()
            self.assertNotIn("default", routes)
            forwarding = lab.exec(node.name, ["sysctl", "-n", "net.ipv4.ip_forward"])
            self.assertEqual(forwarding.stdout.strip(), b"1")
            # exec runs in the node's namespace, with its docker.
            addresses = lab.exec(node.name, ["ip", "-o", "-4", "addr"]).stdout.decode()
            self.assertIn(node.address + "/24", addresses)
            root = lab.exec(node.name, ["docker", "info", "--format",
                                        "{{.DockerRootDir}}"], check=True)
            self.assertEqual(root.stdout.decode().strip(), node.dockerd.data_root)
            nat = lab.exec(node.name, ["iptables", "-t", "nat", "-S"], check=True)
            self.assertIn("-s %s ! -o docker0 -j MASQUERADE" % (node.bridge,),
                          nat.stdout.decode())
            images = lab.exec(node.name, ["docker", "image", "ls", "--format",
                                          "{{.Repository}}:{{.Tag}}"]).stdout.decode()
            self.assertIn(BUSYBOX_IMAGE.full_name, images.split())
            self.assertIn(MARIADB_IMAGE.full_name, images.split())
            self.assertEqual(pools(PREFIX).get(node.pool), "ONLINE")

        # The host reaches each node's address; n1 reaches n2.
        for node in nodes:
            argv, env = lab.exec_argv(node.name, [sys.executable, "-c", LISTENER,
                                                  "7777", node.name])
            listener = subprocess.Popen(argv, env=env)
            self.addCleanup(listener.wait)
            self.addCleanup(listener.kill)
            self.assertEqual(connect(node.address, 7777), node.name.encode())
        argv, env = lab.exec_argv("n2", [sys.executable, "-c", LISTENER, "7778", "n2"])
        listener = subprocess.Popen(argv, env=env)
        self.addCleanup(listener.wait)
        self.addCleanup(listener.kill)
        client = lab.exec("n1", [sys.executable, "-c",
                                 "import socket,time\n"
                                 "for _ in range(100):\n"
                                 "  try: s = socket.create_connection(('%s', 7778), 2); break\n"
                                 "  except OSError: time.sleep(0.1)\n"
                                 "print(s.recv(10).decode())" % (nodes[1].address,)])
        self.assertEqual(client.stdout.strip(), b"n2")

        # The CLI passes the command's exit status through.
        self.assertEqual(cli(lab, "exec", "n1", "--", "sh", "-c", "exit 3")[0], 3)
        self.assertEqual(cli(lab, "exec", "n3", "--", "true")[0], 1)

        status, out, err = cli(lab, "env")
        self.assertEqual(out, "export FLOCKER_IDENTITY=%s\nexport "
                              "FLOCKER_KNOWN_HOSTS=%s\n"
                         % (lab.identity, lab.known_hosts))
        for node in nodes:  # the known_hosts file has every node's host key
            key = load_or_create_key(os.path.join(node.state_directory, HOST_KEY_FILE))
            self.assertTrue(check_known_host(lab.known_hosts, node.address, 4522,
                                             key).trusted)

        # up again changes nothing and is quick.
        dockerd_pids = [open(n.dockerd.pidfile).read() for n in nodes]
        started = time.monotonic()
        status, out, err = cli(lab, "up", "--no-daemons")
        self.assertEqual(status, 0, err)
        self.assertLess(time.monotonic() - started, 15)
        self.assertEqual(lab.nodes, nodes)
        self.assertEqual([open(n.dockerd.pidfile).read() for n in nodes],
                         dockerd_pids)
        self.assertNotIn("importing", out)

        # A container left running does not keep down from removing all.
        lab.exec("n1", ["docker", "run", "-d", "-p", "8080:80",
                        BUSYBOX_IMAGE.full_name], check=True)
        status, out, err = cli(lab, "down")
        self.assertEqual(status, 0, err)
        assert_nothing_left(self, lab)
        self.assertEqual(cli(lab, "down")[0], 0)  # idempotent


class LabRecoveryTests(SynchronousTestCase):
    """up mends a broken lab; down works without the lab's state."""

    def test_up_mends_a_crashed_dockerd(self):
        lab = make_lab(self)
        lab.up(nodes=1, daemons=False)
        node = lab.node("n1")
        lab.exec("n1", ["docker", "run", "-d", BUSYBOX_IMAGE.full_name], check=True)
        os.kill(int(open(node.dockerd.pidfile).read()), 9)
        lab.up(daemons=False)
        result = lab.exec("n1", ["docker", "ps", "-a", "-q"], check=True)
        self.assertEqual(len(result.stdout.split()), 1)

    def test_down_without_state(self):
        lab = make_lab(self)
        lab.up(nodes=2, daemons=False)
        os.unlink(lab.state_path)  # as if up had crashed before writing it
        lab.down()
        assert_nothing_left(self, lab)


class LabDaemonTests(SynchronousTestCase):
    """flocker-node runs on each node, and can be killed and started."""

    def test_kill_and_start(self):
        lab = make_lab(self)
        try:
            lab.up(nodes=1)
        except LabError as e:
            self.fail("flocker-node did not start: %s" % (e,))
        [status] = lab.status()
        self.assertTrue(status.daemon and status.ssh, status)
        self.assertEqual(cli(lab, "kill-daemon", "n1"),
                         (0, "killed flocker-node on n1\n", ""))
        [status] = lab.status()
        self.assertFalse(status.daemon)
        self.assertEqual(cli(lab, "status")[0], 1)
        self.assertEqual(cli(lab, "start-daemon", "n1"),
                         (0, "flocker-node on n1 is up\n", ""))
        [status] = lab.status()
        self.assertTrue(status.daemon and status.ssh, status)
        self.assertEqual(cli(lab, "status")[0], 0)


class MariaDBImageTests(SynchronousTestCase):
    """flocker-lab/mariadb behaves like the official mysql image."""

    def test_root_password_and_clean_stop(self):
        lab = make_lab(self)
        lab.up(nodes=1, daemons=False)
        node = lab.node("n1")
        password = "it's a \\secret"
        lab.exec("n1", ["docker", "run", "-d", "--name", "db", "-p", "3306:3306",
                        "-e", "MYSQL_ROOT_PASSWORD=" + password,
                        MARIADB_IMAGE.full_name], check=True)
        deadline = time.monotonic() + 60
        while True:
            result = subprocess.run(
                ["mariadb", "-h", node.address, "-uroot", "-p" + password,
                 "--connect-timeout=2", "-N", "-e", "select 40 + 2"],
                capture_output=True)
            if result.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        self.assertEqual(result.stdout.strip(), b"42", result.stderr)
        wrong = subprocess.run(["mariadb", "-h", node.address, "-uroot",
                                "-pwrong", "-e", "select 1"], capture_output=True)
        self.assertNotEqual(wrong.returncode, 0)
        started = time.monotonic()
        lab.exec("n1", ["docker", "stop", "db"], check=True)
        self.assertLess(time.monotonic() - started, 8)  # SIGTERM, not the timeout
        code = lab.exec("n1", ["docker", "inspect", "-f", "{{.State.ExitCode}}",
                               "db"], check=True)
        self.assertEqual(code.stdout.strip(), b"0")
