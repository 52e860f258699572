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
import re
import socket
import subprocess
import sys
import time

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from flocker_async.cli.lab import main
from flocker_async.lab import Lab, LabError
from flocker_async.lab._network import namespaces
from flocker_async.lab._system import (
    alive, cgroup_dirs, command_name, mounts_under, pids_in_cgroups,
    pids_in_netns, pids_mentioning, process_start_time, run)
from flocker_async.lab._zfs import mount_lock, pools
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


# Run inside a node: how HOST:PORT answers within TIMEOUT seconds.
# "answered" (a connection, or with "http" an HTTP status line), "refused"
# (something there said no), or "silent" (nothing came back: the packets
# went nowhere).
PROBE = """
import socket, sys
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
try:
    s = socket.create_connection((host, port), timeout)
    if sys.argv[4:] == ["http"]:
        s.settimeout(5)
        s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
        if not s.recv(12).startswith(b"HTTP/1."):
            raise OSError("no HTTP answer")
except ConnectionRefusedError:
    print("refused")
except OSError:
    print("silent")
else:
    print("answered")
"""


# Where silence is expected, a second is plenty on one machine; where an
# answer is, allow a lost SYN's retransmission (after 1 s): a node whose ARP
# query failed during a partition drops its first reply after it heals.
SILENCE = 1.0
ANSWER = 5.0


def probe(lab, node, address, port, http=False, timeout=ANSWER) -> str:
    """How ``address:port`` answers a client inside ``node``."""
    result = lab.exec(node, [sys.executable, "-c", PROBE, address, str(port),
                             str(timeout)] + (["http"] if http else []),
                      check=True)
    return result.stdout.decode().strip()


def host_probe(address, port, timeout=ANSWER) -> str:
    """How ``address:port`` answers this host: as ``probe``."""
    try:
        socket.create_connection((address, port), timeout).close()
    except ConnectionRefusedError:
        return "refused"
    except OSError:
        return "silent"
    return "answered"


def wait_for(predicate, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("%s: not within %d s" % (what, timeout))
        time.sleep(0.1)


def ssh_version(lab, node) -> subprocess.CompletedProcess:
    """``version`` asked of ``node``'s flocker-node with OpenSSH, from the host."""
    return subprocess.run(
        ["ssh", "-p", str(lab.ssh_port), "-i", lab.identity,
         "-o", "UserKnownHostsFile=" + lab.known_hosts,
         "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
         "-o", "ConnectTimeout=5", "root@" + node.address, "version"],
        capture_output=True, timeout=30)


def node_processes(lab, node):
    """pid -> (command name, start time) of every process in ``node``'s
    namespace, and of its containers (they have namespaces of their own)."""
    pids = set(pids_in_netns(node.netns_path)) | pids_in_cgroups(
        node.dockerd.cgroup_parent)
    return {pid: (command_name(pid), process_start_time(pid)) for pid in pids
            if alive(pid)}


def still_running(processes):
    """Those of ``processes`` (as ``node_processes`` gives) that run: the
    same pid started at the same time."""
    return {pid: name for pid, (name, start) in processes.items()
            if alive(pid) and process_start_time(pid) == start}


def container_pid(lab, node, name) -> int:
    return int(lab.exec(node, ["docker", "inspect", "-f", "{{.State.Pid}}", name],
                        check=True).stdout)


def iptables_rules(lab, node):
    """Every rule and chain of ``node``'s four tables but the policies, and
    the policies that are not ACCEPT."""
    found = []
    for table in ("nat", "filter", "raw", "mangle"):
        for line in lab.exec(node, ["iptables", "-t", table, "-S"],
                             check=True).stdout.decode().splitlines():
            if not (line.startswith("-P ") and line.endswith(" ACCEPT")):
                found.append("%s: %s" % (table, line))
    return found


class PowerTests(SynchronousTestCase):
    """power-off pulls a node's plug; power-on boots it again."""

    def test_power_off_and_on(self):
        lab = make_lab(self)
        lab.up(nodes=2)
        n1, n2 = lab.nodes
        # A file system in n1's pool (a name the daemon leaves alone) with a
        # file, and a container appending to it until the plug is pulled.
        dataset = n1.pool + "/lab.survivor"
        with mount_lock():
            run(["zfs", "create", dataset])
        mountpoint = run(["zfs", "get", "-H", "-o", "value", "mountpoint",
                          dataset]).stdout.decode().strip()
        with open(os.path.join(mountpoint, "kept"), "wb") as f:
            f.write(b"written before the power cut\n")
            os.fsync(f.fileno())
        lab.exec("n1", ["docker", "run", "-d", "--name", "writer", "--restart",
                        "always", "-v", mountpoint + ":/data", BUSYBOX_IMAGE.full_name,
                        "sh", "-c", "trap 'exit 0' TERM; "
                        "while :; do date >> /data/log; sleep 0.05; done"],
                 check=True)
        writer = container_pid(lab, "n1", "writer")
        before = node_processes(lab, n1)
        names = {name for name, _ in before.values()}
        for name in ("twistd", "dockerd", "containerd", "sh"):
            self.assertIn(name, names)
        self.assertIn(writer, before)
        self.assertNotEqual(iptables_rules(lab, "n1"), [])  # docker's
        self.assertEqual(host_probe(n1.address, lab.ssh_port), "answered")

        status, out, err = cli(lab, "power-off", "n1")
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(out.splitlines()[0], "n1: link down")
        self.assertRegex(out.splitlines()[1], r"^n1: killed \d+ processes \(")
        self.assertEqual(out.splitlines()[-1], "n1 is powered off")

        # Nothing of n1 runs: no process in its namespace, no container.
        self.assertEqual(still_running(before), {})
        self.assertEqual(node_processes(lab, n1), {})
        self.assertFalse(lab.daemon_running("n1"))
        # Nobody reaches it; nothing even says no.
        self.assertEqual(host_probe(n1.address, lab.ssh_port, timeout=SILENCE), "silent")
        self.assertEqual(probe(lab, "n2", n1.address, lab.ssh_port, timeout=SILENCE), "silent")
        self.assertFalse(lab.link_up("n1"))
        # Its iptables are as after a reboot.
        self.assertEqual(iptables_rules(lab, "n1"), [])
        # Its pool and the volume's data stay; exec still runs there.
        self.assertEqual(pools(PREFIX).get(n1.pool), "ONLINE")
        kept = lab.exec("n1", ["cat", os.path.join(mountpoint, "kept")], check=True)
        self.assertEqual(kept.stdout, b"written before the power cut\n")
        status, out, err = cli(lab, "exec", "n1", "--", "true")
        self.assertEqual((status, out), (0, ""))
        self.assertIn("n1 is powered off; the command runs in its namespace", err)
        self.assertGreater(os.path.getsize(os.path.join(mountpoint, "log")), 0)
        # n2 lives on.
        self.assertEqual(ssh_version(lab, n2).returncode, 0)

        # Recorded: status shows it, the daemon commands refuse it, a second
        # power-off and up leave it off.
        self.assertFalse(lab.is_powered_on("n1"))
        status, out, err = cli(lab, "status")
        self.assertEqual(status, 1)
        self.assertRegex(out, r"\nn1 +%s +power off link down .* dockerd down .* "
                              r"daemon down\n" % (re.escape(n1.address),))
        for command in ("kill-daemon", "start-daemon"):
            status, out, err = cli(lab, command, "n1")
            self.assertEqual(status, 1)
            self.assertIn("node n1 is powered off", err)
        self.assertEqual(cli(lab, "power-off", "n1"),
                         (0, "n1 was already powered off\n", ""))
        progress = []
        lab.progress = progress.append
        status, out, err = cli(lab, "up")
        self.assertEqual(status, 0, err)
        self.assertIn("n1 %s (powered off)\n" % (n1.address,), out)
        self.assertIn("n1 is powered off: left it off ('flocker-lab power-on n1' "
                      "starts it)", progress)
        self.assertEqual(node_processes(lab, n1), {})
        self.assertEqual(host_probe(n1.address, lab.ssh_port, timeout=SILENCE), "silent")

        status, out, err = cli(lab, "power-on", "n1")
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(out.splitlines(), [
            "n1: link up",
            "n1: dockerd started (containers come back only per their restart "
            "policy)",
            "n1: flocker-node started; its SSH port %d answers" % (lab.ssh_port,),
            "n1 is powered on"])
        version = ssh_version(lab, n1)
        self.assertEqual(version.returncode, 0, version.stderr)
        self.assertIn(b"flocker-node", version.stdout)
        self.assertEqual(probe(lab, "n2", n1.address, lab.ssh_port), "answered")
        # docker works, and brought back the container that asked for it.
        wait_for(lambda: lab.exec("n1", ["docker", "inspect", "-f",
                                         "{{.State.Running}}", "writer"]
                                  ).stdout.strip() == b"true",
                 "the writer container restarted")
        self.assertNotEqual(container_pid(lab, "n1", "writer"), writer)
        echo = lab.exec("n1", ["docker", "run", "--rm", BUSYBOX_IMAGE.full_name,
                               "echo", "booted"], check=True)
        self.assertEqual(echo.stdout, b"booted\n")
        self.assertNotEqual(iptables_rules(lab, "n1"), [])  # docker's again
        with open(os.path.join(mountpoint, "kept"), "rb") as f:
            self.assertEqual(f.read(), b"written before the power cut\n")
        self.assertTrue(lab.is_powered_on("n1"))
        self.assertEqual(cli(lab, "status")[0], 0)
        self.assertEqual(cli(lab, "power-on", "n1"),
                         (0, "n1 was already powered on\n", ""))
        # down removes a lab with a powered-off node as any other (cleanup).
        lab.power_off("n2")


class PartitionTests(SynchronousTestCase):
    """partition cuts a node's link with everything on it running; heal
    mends it."""

    def test_partition_and_heal(self):
        lab = make_lab(self)
        lab.up(nodes=2)
        n1, n2 = lab.nodes
        lab.exec("n2", ["docker", "run", "-d", "--name", "web", "-p", "8080:80",
                        BUSYBOX_IMAGE.full_name], check=True)
        wait_for(lambda: probe(lab, "n1", n2.address, 8080, http=True) == "answered",
                 "the web container answers")
        web = container_pid(lab, "n2", "web")
        before = node_processes(lab, n2)
        self.assertIn(web, before)
        self.assertIn("twistd", {name for name, _ in before.values()})

        self.assertEqual(cli(lab, "partition", "n2"), (0, (
            "n2: link down; everything on n2 keeps running\n"
            "n2 is partitioned\n"), ""))
        # Neither the host nor n1 reaches n2, nor n2 them.
        self.assertEqual(host_probe(n2.address, lab.ssh_port, timeout=SILENCE), "silent")
        self.assertEqual(host_probe(n2.address, 8080, timeout=SILENCE), "silent")
        self.assertEqual(probe(lab, "n1", n2.address, lab.ssh_port, timeout=SILENCE), "silent")
        self.assertEqual(probe(lab, "n2", n1.address, lab.ssh_port, timeout=SILENCE), "silent")
        # Inside n2 all still works: its daemon, its container through its
        # own address, loopback and the container's.
        self.assertEqual(probe(lab, "n2", n2.address, lab.ssh_port), "answered")
        self.assertEqual(probe(lab, "n2", n2.address, 8080, http=True), "answered")
        self.assertEqual(probe(lab, "n2", "127.0.0.1", 8080, http=True), "answered")
        address = lab.exec("n2", ["docker", "inspect", "-f",
                                  "{{.NetworkSettings.IPAddress}}", "web"],
                           check=True).stdout.decode().strip()
        self.assertEqual(probe(lab, "n2", address, 80, http=True), "answered")
        self.assertEqual(still_running(before), {
            pid: name for pid, (name, _) in before.items()})

        self.assertTrue(lab.is_partitioned("n2"))
        self.assertFalse(lab.link_up("n2"))
        status, out, err = cli(lab, "status")
        self.assertEqual(status, 1)
        self.assertRegex(out, r"\nn2 +%s +power on  link down .* daemon up  "
                              r"\(partitioned\)\n" % (re.escape(n2.address),))
        self.assertEqual(cli(lab, "partition", "n2"),
                         (0, "n2 was already partitioned\n", ""))
        progress = []
        lab.progress = progress.append
        status, out, err = cli(lab, "up")
        self.assertEqual(status, 0, err)
        self.assertIn("n2 %s (partitioned)\n" % (n2.address,), out)
        self.assertIn("n2 is partitioned: left its link down ('flocker-lab heal "
                      "n2' brings it up)", progress)
        self.assertEqual(host_probe(n2.address, lab.ssh_port, timeout=SILENCE), "silent")

        self.assertEqual(cli(lab, "heal", "n2"),
                         (0, "n2: link up\nn2 is healed\n", ""))
        wait_for(lambda: host_probe(n2.address, lab.ssh_port) == "answered",
                 "the host reaches n2 again", 10)
        self.assertEqual(probe(lab, "n1", n2.address, 8080, http=True), "answered")
        self.assertEqual(probe(lab, "n2", n1.address, lab.ssh_port), "answered")
        self.assertEqual(ssh_version(lab, n2).returncode, 0)
        self.assertEqual(still_running(before), {
            pid: name for pid, (name, _) in before.items()})
        self.assertFalse(lab.is_partitioned("n2"))
        self.assertEqual(cli(lab, "status")[0], 0)
        self.assertEqual(cli(lab, "heal", "n2"), (0, "n2 was not partitioned\n", ""))
