"""
Unit tests of flocker-lab's pure parts: subnet choice against a route
list, the apt mirror, the env output, node.yml, the lab state and the
command line.  Nothing here needs root or touches the machine.
"""

from __future__ import annotations

import io
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from twisted.trial.unittest import SynchronousTestCase

import flocker_async.lab as lab_package
from flocker_async.cli.lab import LabOptions, main
from flocker_async.lab import (
    Lab, LabError, LabNames, NodePoweredOff, NodeStatus, choose_subnet,
    env_for, export_lines, parse_node_name, parse_routes)
from flocker_async.lab import _lab, _network, _system
from flocker_async.lab.images import (
    MARIADB_ENTRYPOINT_SCRIPT, cache_key, find_mirror)
from flocker_async.node._config import node_configuration_from_document

ROUTES = """\
default via 192.0.2.1 dev eth0
192.0.2.0/24 dev eth0 proto kernel scope link src 192.0.2.2
10.237.0.0/24 dev eth1 proto kernel scope link src 10.237.0.5
local 127.0.0.0/8 dev lo table local proto kernel scope host src 127.0.0.1
broadcast 127.255.255.255 dev lo table local proto kernel scope link src 127.0.0.1
unreachable 10.237.2.0/24
10.237.3.7 via 192.0.2.1 dev eth0
"""


def net(text):
    return ipaddress.ip_network(text)


class RouteTests(SynchronousTestCase):

    def test_parse(self):
        self.assertEqual(parse_routes(ROUTES), [
            (net("192.0.2.0/24"), "eth0"),
            (net("10.237.0.0/24"), "eth1"),
            (net("127.0.0.0/8"), "lo"),
            (net("127.255.255.255/32"), "lo"),
            (net("10.237.2.0/24"), None),
            (net("10.237.3.7/32"), "eth0"),
        ])

    def test_first_free_subnet(self):
        """Subnets any route overlaps, even a host route, are skipped."""
        self.assertEqual(choose_subnet(parse_routes(ROUTES)), net("10.237.1.0/24"))
        routes = parse_routes(ROUTES) + [(net("10.237.1.0/25"), "eth2")]
        self.assertEqual(choose_subnet(routes), net("10.237.4.0/24"))

    def test_no_routes(self):
        self.assertEqual(choose_subnet([]), net("10.237.0.0/24"))

    def test_default_route_ignored(self):
        self.assertEqual(choose_subnet(parse_routes("default via 10.237.0.1 dev eth0\n")),
                         net("10.237.0.0/24"))

    def test_own_veth_does_not_clash(self):
        routes = [(net("10.237.0.0/24"), "flab-host")]
        self.assertEqual(choose_subnet(routes, "10.237.0.0/24"), net("10.237.0.0/24"))
        self.assertEqual(choose_subnet(routes), net("10.237.0.0/24"))
        # Another lab's veth is somebody else's route.
        self.assertEqual(choose_subnet(routes, own_device="flabt-host"),
                         net("10.237.1.0/24"))

    def test_recorded_subnet_clash(self):
        routes = [(net("10.237.0.0/16"), "eth1")]
        e = self.assertRaises(LabError, choose_subnet, routes, "10.237.0.0/24")
        self.assertIn("10.237.0.0/16", str(e))
        self.assertIn("flocker-lab down", str(e))

    def test_everything_taken(self):
        e = self.assertRaises(LabError, choose_subnet, [(net("10.0.0.0/8"), "eth1")])
        self.assertIn("no lab subnet is free", str(e))

    def test_bridge_subnets(self):
        routes = [(net("10.238.2.0/24"), "eth1")]
        self.assertEqual(
            _network.choose_bridge_subnets(routes, 3, net("10.237.0.0/24")),
            [net("10.238.1.0/24"), net("10.238.3.0/24"), net("10.238.4.0/24")])

    def test_addresses(self):
        subnet = net("10.237.5.0/24")
        self.assertEqual(str(_network.host_address(subnet)), "10.237.5.1")
        self.assertEqual(str(_network.node_address(subnet, 1)), "10.237.5.11")
        self.assertEqual(str(_network.node_address(subnet, 2)), "10.237.5.12")

    def test_nsenter(self):
        self.assertEqual(_network.nsenter_prefix("flab-n1"),
                         ["nsenter", "--net=/var/run/netns/flab-n1"])


class MirrorTests(SynchronousTestCase):

    def test_deb822(self):
        sources = [("/etc/apt/sources.list.d/debian.sources", """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.example/debian
Suites: bookworm bookworm-updates
Components: main

Types: deb
URIs: http://security.example/debian-security
Suites: bookworm-security
Components: main
""")]
        self.assertEqual(find_mirror(sources), "http://deb.example/debian")

    def test_one_line_with_options(self):
        sources = [
            ("/etc/apt/sources.list", "# deb http://old.example/ bookworm main\n"
             "deb-src http://src.example/ bookworm main\n"
             "deb http://sec.example/ bookworm-security main\n"),
            ("/etc/apt/sources.list.d/x.list",
             "deb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main\n"),
        ]
        self.assertEqual(find_mirror(sources), "http://m.example/debian")

    def test_disabled_stanza(self):
        sources = [("a.sources", "Enabled: no\nTypes: deb\nURIs: http://a/\n"
                    "Suites: bookworm\n\nTypes: deb\nURIs: http://b/\nSuites: bookworm\n")]
        self.assertEqual(find_mirror(sources), "http://b/")

    def test_none(self):
        e = self.assertRaises(ValueError, find_mirror,
                              [("/etc/apt/sources.list", "deb http://x/ bullseye main\n")])
        self.assertIn("bookworm", str(e))


class ImageTests(SynchronousTestCase):

    def test_entrypoint_is_valid_bash(self):
        bash = shutil.which("bash")
        if bash is None:
            self.skipTest("no bash")
        result = subprocess.run([bash, "-n"], input=MARIADB_ENTRYPOINT_SCRIPT,
                                capture_output=True)
        self.assertEqual(result.returncode, 0, result.stderr)

    def test_password_never_on_a_command_line(self):
        """The password reaches the client on stdin, through echo (a builtin)."""
        for line in MARIADB_ENTRYPOINT_SCRIPT.decode().splitlines():
            if "$password" in line:
                self.assertTrue(line.strip().startswith(("echo", "password=")), line)

    def test_cache_key(self):
        self.assertEqual(cache_key({"a": 1, "b": 2}), cache_key({"b": 2, "a": 1}))
        self.assertNotEqual(cache_key({"a": 1}), cache_key({"a": 2}))


class EnvTests(SynchronousTestCase):

    def test_default_port(self):
        self.assertEqual(env_for("/l/id", "/l/kh"),
                         {"FLOCKER_IDENTITY": "/l/id", "FLOCKER_KNOWN_HOSTS": "/l/kh"})

    def test_other_port(self):
        self.assertEqual(env_for("/l/id", "/l/kh", 2222)["FLOCKER_PORT"], "2222")

    def test_export_lines_quoted(self):
        self.assertEqual(
            export_lines({"FLOCKER_IDENTITY": "/a b/id", "FLOCKER_PORT": "22"}),
            ["export FLOCKER_IDENTITY='/a b/id'", "export FLOCKER_PORT=22"])


class NamesTests(SynchronousTestCase):

    def test_node_names(self):
        self.assertEqual(parse_node_name("n1"), 1)
        self.assertEqual(parse_node_name("n12"), 12)
        for bad in ("n0", "n01", "x1", "n", "n1;rm", "", "N1", "n-1"):
            self.assertRaises(LabError, parse_node_name, bad)

    def test_lab_names(self):
        names = LabNames()
        self.assertEqual((names.switch, names.host_veth, names.namespace("n1")),
                         ("flab-sw", "flab-host", "flab-n1"))
        self.assertEqual(names.node_of("flab-n2"), "n2")
        self.assertIsNone(names.node_of("flab-sw"))
        self.assertIsNone(names.node_of("flabt-n1"))  # another lab's
        self.assertIsNone(names.node_of("fat-n1"))
        self.assertIsNone(LabNames("flabt-").node_of("flab-n1"))

    def test_bad_prefix(self):
        for bad in ("", "flab", "Flab-", "toolongprefix-", "a b-"):
            self.assertRaises(LabError, LabNames, bad)
        self.assertLessEqual(len(LabNames("abcdef-").host_veth), 15)  # IFNAMSIZ

    def test_public_names(self):
        self.assertIs(lab_package.Lab, _lab.Lab)


def write_state(directory, nodes=2, port=4522):
    os.makedirs(directory, exist_ok=True)
    state = {
        "version": 1, "subnet": "10.237.0.0/24", "host_address": "10.237.0.1",
        "ssh_port": port, "containerd_run_existed": True,
        "nodes": [{"name": "n%d" % i, "index": i, "address": "10.237.0.%d" % (10 + i),
                   "bridge": "10.238.%d.0/24" % i, "daemon": None}
                  for i in range(1, nodes + 1)],
    }
    with open(os.path.join(directory, "lab.json"), "w") as f:
        json.dump(state, f)


class LabStateTests(SynchronousTestCase):

    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        self.lab = Lab(directory=self.directory)

    def test_no_lab(self):
        self.assertEqual(self.lab.nodes, [])
        self.assertFalse(self.lab.exists)
        e = self.assertRaises(LabError, self.lab.node, "n1")
        self.assertIn("flocker-lab up", str(e))
        self.assertRaises(LabError, self.lab.env)

    def test_nodes(self):
        write_state(self.directory)
        n1, n2 = self.lab.nodes
        self.assertEqual((n1.name, n1.address, n1.namespace, n1.pool),
                         ("n1", "10.237.0.11", "flab-n1", "flab-n1"))
        self.assertEqual(n2.docker_socket, os.path.join(self.directory, "n2", "docker.sock"))
        self.assertEqual(n2.docker_host, "unix://" + n2.docker_socket)
        self.assertEqual(n2.state_directory, os.path.join(self.directory, "n2", "state"))
        self.assertEqual(self.lab.node("n2"), n2)
        e = self.assertRaises(LabError, self.lab.node, "n3")
        self.assertIn("n1, n2", str(e))

    def test_env(self):
        write_state(self.directory, port=2222)
        self.assertEqual(self.lab.env(), {
            "FLOCKER_IDENTITY": os.path.join(self.directory, "operator", "id_ed25519"),
            "FLOCKER_KNOWN_HOSTS": os.path.join(self.directory, "known_hosts"),
            "FLOCKER_PORT": "2222"})

    def test_corrupt_state(self):
        os.makedirs(self.directory)
        with open(os.path.join(self.directory, "lab.json"), "w") as f:
            f.write("{not json")
        e = self.assertRaises(LabError, lambda: self.lab.nodes)
        self.assertIn("flocker-lab down", str(e))

    def test_node_yml_is_what_the_daemon_reads(self):
        write_state(self.directory)
        node = self.lab.node("n2")
        text = self.lab._node_yml(node, "/x/operator_keys")
        configuration = node_configuration_from_document(text.encode(), "node.yml")
        self.assertEqual(configuration.address, "10.237.0.12")
        self.assertEqual(configuration.ssh_port, 4522)
        self.assertEqual(configuration.zfs.pool, "flab-n2")
        self.assertEqual(configuration.zfs.mount_root, node.mount_root)
        self.assertEqual(configuration.docker_socket, node.docker_socket)
        self.assertEqual(configuration.state_directory, node.state_directory)
        self.assertEqual(configuration.operator_keys, "/x/operator_keys")

    def test_exec_argv(self):
        write_state(self.directory)
        self.patch(os.path, "exists", lambda path: True)
        argv, env = self.lab.exec_argv("n1", ["docker", "ps"])
        self.assertEqual(argv, ["nsenter", "--net=/var/run/netns/flab-n1",
                                "docker", "ps"])
        self.assertEqual(env["DOCKER_HOST"],
                         "unix://" + os.path.join(self.directory, "n1", "docker.sock"))
        self.assertRaises(LabError, self.lab.exec_argv, "n1", [])


def run_cli(argv, lab=None):
    out, err = io.StringIO(), io.StringIO()
    status = main(argv, out=out, err=err, lab=lab)
    return status, out.getvalue(), err.getvalue()


class CommandLineTests(SynchronousTestCase):

    def parse(self, argv):
        options = LabOptions()
        options.parseOptions(argv)
        return options.subCommand, options.subOptions

    def test_up(self):
        command, sub = self.parse(["up", "--nodes", "3", "--no-daemons"])
        self.assertEqual((command, sub["nodes"], sub["no-daemons"]), ("up", 3, True))
        command, sub = self.parse(["up"])
        self.assertEqual((sub["nodes"], sub["no-daemons"]), (None, False))

    def test_exec(self):
        command, sub = self.parse(["exec", "n2", "--", "docker", "ps", "-a"])
        self.assertEqual((sub["node"], sub["command"]), ("n2", ["docker", "ps", "-a"]))
        command, sub = self.parse(["exec", "n1", "iptables", "-t", "nat", "-S"])
        self.assertEqual(sub["command"], ["iptables", "-t", "nat", "-S"])

    def test_usage_errors(self):
        for argv in (["up", "--nodes", "0"], ["up", "--nodes", "x"],
                     ["up", "--nodes", "21"], ["exec", "n1"], ["exec", "n1", "--"],
                     ["exec", "bad", "--", "ls"], ["kill-daemon"],
                     ["start-daemon", "n1", "extra"], ["frobnicate"], []):
            status, out, err = run_cli(argv)
            self.assertEqual(status, 64, argv)
            self.assertIn("--help", err)
            self.assertNotIn("Traceback", err)

    def test_help_for_every_command(self):
        self.patch(sys, "stdout", io.StringIO())
        for name, _, _, _ in LabOptions.subCommands:
            options = LabOptions()
            self.assertRaises(SystemExit, options.parseOptions, [name, "--help"])

    def test_nodes_and_env(self):
        directory = os.path.abspath(self.mktemp())
        write_state(directory)
        lab = Lab(directory=directory)
        self.assertEqual(run_cli(["nodes"], lab),
                         (0, "n1 10.237.0.11\nn2 10.237.0.12\n", ""))
        status, out, err = run_cli(["env"], lab)
        self.assertEqual(status, 0)
        self.assertEqual(out, "export FLOCKER_IDENTITY=%s/operator/id_ed25519\n"
                              "export FLOCKER_KNOWN_HOSTS=%s/known_hosts\n"
                         % (directory, directory))

    def test_no_lab(self):
        lab = Lab(directory=os.path.abspath(self.mktemp()))
        for command in (["nodes"], ["env"], ["exec", "n1", "--", "ls"]):
            status, out, err = run_cli(command, lab)
            self.assertEqual(status, 1, command)
            self.assertIn("there is no lab", err)
            self.assertNotIn("Traceback", err)

    def test_not_root(self):
        if os.geteuid() == 0:
            self.patch(os, "geteuid", lambda: 1000)
        lab = Lab(directory=os.path.abspath(self.mktemp()))
        for command in (["up"], ["down"], ["kill-daemon", "n1"]):
            status, out, err = run_cli(command, lab)
            self.assertEqual(status, 1)
            self.assertIn("must run as root", err)

    def test_missing_command(self):
        self.patch(_lab, "require_root", lambda: None)
        self.patch(os, "environ", {"PATH": "/nonexistent"})
        from flocker_async.lab import _system
        self.patch(_system, "_SYSTEM_PATH", "/nonexistent")
        status, out, err = run_cli(["up"], Lab(directory=os.path.abspath(self.mktemp())))
        self.assertEqual(status, 1)
        self.assertIn("apt-get install", err)
        self.assertIn("docker.io", err)


class FakeMachine:
    """
    The effects of power_off/power_on/partition/heal on one lab, recorded
    instead of made: link states, the processes each node runs, calls.
    """

    def __init__(self, test, lab, nodes=("n1", "n2")):
        self.calls = []
        self.links = {name: True for name in nodes}
        self.processes = {name: {101: "dockerd", 102: "httpd", 103: "httpd"}
                          for name in nodes}
        test.patch(_lab, "require_root", lambda: None)
        test.patch(lab, "_link_up", lambda node: self.links[node.name])
        test.patch(lab, "_set_link", self.set_link)
        test.patch(lab, "_kill_node", self.kill_node)
        test.patch(lab, "_clear_runtime",
                   lambda node: self.calls.append(("clear", node.name)))
        test.patch(lab, "_boot", self.boot)
        test.patch(_lab, "dockerd_running", lambda layout: True)
        test.patch(os.path, "exists", lambda path: True)  # the namespaces

    def set_link(self, node, up):
        self.calls.append(("link", node.name, up))
        self.links[node.name] = up

    def kill_node(self, node):
        self.calls.append(("kill", node.name))
        return self.processes.pop(node.name, {})

    def boot(self, node):
        self.calls.append(("boot", node.name))
        self.processes[node.name] = {201: "dockerd"}
        return ["dockerd started", "flocker-node started"]


class PowerAndPartitionStateTests(SynchronousTestCase):
    """The bookkeeping of power_off, power_on, partition and heal."""

    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        write_state(self.directory)
        self.lab = Lab(directory=self.directory)
        self.machine = FakeMachine(self, self.lab)

    def entry(self, name):
        with open(self.lab.state_path) as f:
            return next(e for e in json.load(f)["nodes"] if e["name"] == name)

    def test_power_off(self):
        """The link goes down before anything is killed, then what a reboot
        clears goes; it is recorded; the other node is untouched."""
        done = self.lab.power_off("n1")
        self.assertEqual(self.machine.calls, [
            ("link", "n1", False), ("kill", "n1"), ("clear", "n1")])
        self.assertEqual(done[:2], ["link down", "killed 3 processes (dockerd, httpd x2)"])
        self.assertIn("pool flab-n1 kept", done[2])
        self.assertEqual(self.entry("n1")["power"], "off")
        self.assertFalse(self.lab.is_powered_on("n1"))
        self.assertTrue(self.lab.is_powered_on("n2"))
        self.assertEqual(self.machine.links, {"n1": False, "n2": True})

    def test_power_off_twice(self):
        self.lab.power_off("n1")
        del self.machine.calls[:]
        self.assertEqual(self.lab.power_off("n1"), [])
        self.assertEqual(self.machine.calls, [("kill", "n1")])  # finds nothing
        self.assertFalse(self.lab.is_powered_on("n1"))

    def test_interrupted_power_off_is_finished(self):
        """Recorded before acting: a power-off that died half-way leaves the
        node off, and the next one kills what still runs."""
        def broken(node):
            raise KeyboardInterrupt()
        self.patch(self.lab, "_kill_node", broken)
        self.assertRaises(KeyboardInterrupt, self.lab.power_off, "n1")
        self.assertFalse(self.lab.is_powered_on("n1"))
        self.patch(self.lab, "_kill_node", self.machine.kill_node)
        done = self.lab.power_off("n1")
        self.assertEqual(done[0], "killed 3 processes (dockerd, httpd x2)")
        self.assertIn(("clear", "n1"), self.machine.calls)

    def test_power_on(self):
        self.lab.power_off("n1")
        del self.machine.calls[:]
        self.assertEqual(self.lab.power_on("n1"),
                         ["link up", "dockerd started", "flocker-node started"])
        self.assertEqual(self.machine.calls, [("link", "n1", True), ("boot", "n1")])
        self.assertTrue(self.lab.is_powered_on("n1"))
        self.assertEqual(self.entry("n1")["power"], "on")

    def test_power_on_when_on(self):
        """Only what does not run is started; nothing to do says nothing."""
        self.patch(self.lab, "_boot", lambda node: [])
        self.assertEqual(self.lab.power_on("n1"), [])
        self.assertEqual(self.machine.calls, [])

    def test_partition_and_heal(self):
        done = self.lab.partition("n2")
        self.assertEqual(done, ["link down; everything on n2 keeps running"])
        self.assertEqual(self.machine.calls, [("link", "n2", False)])  # no kill
        self.assertTrue(self.lab.is_partitioned("n2"))
        self.assertTrue(self.lab.is_powered_on("n2"))
        self.assertEqual(self.lab.partition("n2"), [])
        self.assertEqual(self.lab.heal("n2"), ["link up"])
        self.assertFalse(self.lab.is_partitioned("n2"))
        self.assertEqual(self.machine.links["n2"], True)
        self.assertEqual(self.lab.heal("n2"), [])
        self.assertEqual(len(self.machine.calls), 2)

    def test_partitioned_node_powered_off_and_on(self):
        """Power and partition are separate facts: the link is up only when
        the node is on and not partitioned."""
        self.lab.partition("n1")
        self.lab.power_off("n1")
        self.assertTrue(self.lab.is_partitioned("n1"))
        done = self.lab.power_on("n1")
        self.assertIn("link left down: n1 is partitioned", done[0])
        self.assertFalse(self.machine.links["n1"])
        self.assertEqual(self.lab.heal("n1"), ["link up"])
        self.assertTrue(self.machine.links["n1"])

    def test_heal_while_powered_off(self):
        self.lab.partition("n1")
        self.lab.power_off("n1")
        done = self.lab.heal("n1")
        self.assertIn("stays down while it is powered off", done[0])
        self.assertFalse(self.machine.links["n1"])
        self.assertFalse(self.lab.is_partitioned("n1"))
        self.assertEqual(self.lab.power_on("n1")[0], "link up")

    def test_partition_while_powered_off(self):
        self.lab.power_off("n1")
        del self.machine.calls[:]
        self.assertIn("powered off", self.lab.partition("n1")[0])
        self.assertEqual(self.machine.calls, [])
        self.assertEqual(self.lab.power_on("n1")[0],
                         "link left down: n1 is partitioned ('flocker-lab heal "
                         "n1' brings it up)")

    def test_daemon_commands_refused_when_powered_off(self):
        self.lab.power_off("n1")
        for method in (self.lab.kill_daemon, self.lab.start_daemon):
            e = self.assertRaises(NodePoweredOff, method, "n1")
            self.assertIn("node n1 is powered off", str(e))
        self.assertIn("power-on n1", str(self.assertRaises(
            NodePoweredOff, self.lab.start_daemon, "n1")))
        # exec still runs in its namespace
        argv, env = self.lab.exec_argv("n1", ["zfs", "list"])
        self.assertEqual(argv[-2:], ["zfs", "list"])

    def test_up_leaves_power_and_partitions(self):
        """up keeps both facts, starts nothing on a powered-off node, and
        plugs each node in with its link as they say."""
        write_state(self.directory, nodes=3)
        self.lab.power_off("n1")
        self.lab.partition("n2")
        lines = []
        self.lab.progress = lines.append
        self.patch(_network, "host_routes", lambda: [])
        planned = self.lab._plan(None)
        self.assertEqual((self.entry("n1")["power"], self.entry("n2")["partitioned"],
                          self.entry("n3")["power"], self.entry("n3")["partitioned"]),
                         ("off", True, "on", False))
        running = self.lab._running_nodes(planned)
        self.assertEqual([n.name for n in running], ["n2", "n3"])
        self.assertEqual(lines, [
            "n1 is powered off: left it off ('flocker-lab power-on n1' starts it)",
            "n2 is partitioned: left its link down ('flocker-lab heal n2' brings it up)"])
        links = {}
        for name in ("ensure_switch", "ensure_host_link", "ensure_namespace"):
            self.patch(_network, name, lambda *a, **kw: None)
        self.patch(_network, "namespaces", lambda: [])
        self.patch(_network, "ensure_node_link",
                   lambda namespace, port, *a, link_up: links.update({port: link_up}))
        self.lab._up_network(planned)
        self.assertEqual(links, {"p1": False, "p2": False, "p3": True})


class NodeStatusTests(SynchronousTestCase):

    def status(self, **changes):
        fields = dict(name="n1", address="10.237.0.11", namespace=True,
                      dockerd=True, pool="ONLINE", daemon=True, ssh=True)
        fields.update(changes)
        return NodeStatus(**fields)

    def test_line(self):
        self.assertEqual(
            self.status().line(),
            "n1   10.237.0.11     power on  link up   namespace up   dockerd up   "
            "pool online   daemon up")
        self.assertEqual(
            self.status(power=False, link=False, dockerd=False, daemon=False,
                        ssh=False, partitioned=True).line(),
            "n1   10.237.0.11     power off link down namespace up   dockerd down "
            "pool online   daemon down  (partitioned)")

    def test_healthy(self):
        self.assertTrue(self.status().healthy)
        for change in (dict(power=False), dict(link=False), dict(partitioned=True),
                       dict(ssh=False), dict(pool="DEGRADED"), dict(dockerd=False)):
            self.assertFalse(self.status(**change).healthy, change)


class LinkAndProcessHelperTests(SynchronousTestCase):

    def test_link_flags(self):
        self.assertTrue(_network._link_flags_up(
            "5: p1@if4: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 master br0"))
        self.assertFalse(_network._link_flags_up(
            "5: p1@if4: <BROADCAST,MULTICAST> mtu 1500 master br0 state DOWN"))
        # Carrier lost (its peer is down) but itself administratively up.
        self.assertTrue(_network._link_flags_up(
            "7: eth0@if8: <NO-CARRIER,BROADCAST,MULTICAST,UP> mtu 1500"))
        self.assertFalse(_network._link_flags_up(""))

    def test_describe_killed(self):
        self.assertEqual(_lab._describe_killed({1: "dockerd"}), "1 process (dockerd)")
        self.assertEqual(_lab._describe_killed({1: "sh", 2: "sleep", 3: "sh"}),
                         "3 processes (sh x2, sleep)")

    def test_kill_at_once_takes_the_whole_tree(self):
        """A parent that would react to its child's death (here: print and
        start another) never gets the chance: all are stopped, then killed."""
        process = subprocess.Popen(
            ["sh", "-c", "sleep 60 & echo $!; wait; echo reacted; sleep 60"],
            stdout=subprocess.PIPE)
        self.addCleanup(process.wait)
        self.addCleanup(process.kill)
        # The shell names its child once it has started it: no polling.
        child = int(process.stdout.readline())
        self.assertEqual(_system.descendants([process.pid]), {child})
        self.assertEqual(_system.command_name(child), "sleep")
        killed = _system.kill_at_once(
            lambda: {process.pid} | _system.descendants([process.pid]))
        self.assertEqual(killed, {process.pid: "sh", child: "sleep"})
        self.assertEqual(process.wait(10), -signal.SIGKILL)
        self.assertEqual(process.stdout.read(), b"")
        self.assertFalse(_system.alive(child))

    def test_kill_at_once_spares_this_process(self):
        self.assertEqual(_system.kill_at_once(lambda: [os.getpid()]), {})


class FailureCommandLineTests(SynchronousTestCase):
    """power-off, power-on, partition and heal on the command line."""

    def setUp(self):
        directory = os.path.abspath(self.mktemp())
        write_state(directory)
        self.lab = Lab(directory=directory)

    def test_parse(self):
        for command in ("power-off", "power-on", "partition", "heal"):
            options = LabOptions()
            options.parseOptions([command, "n2"])
            self.assertEqual((options.subCommand, options.subOptions["node"]),
                             (command, "n2"))

    def test_usage_errors(self):
        for argv in (["power-off"], ["power-on", "n0"], ["partition", "n1", "n2"],
                     ["heal", "node1"], ["power-off", "--force", "n1"]):
            status, out, err = run_cli(argv, self.lab)
            self.assertEqual(status, 64, argv)
            self.assertIn("flocker-lab %s --help" % (argv[0],), err)
            self.assertNotIn("Traceback", err)
        status, out, err = run_cli(["heal", "node1"], self.lab)
        self.assertIn("'node1' is not a lab node name", err)

    def test_unknown_node(self):
        FakeMachine(self, self.lab)
        status, out, err = run_cli(["power-off", "n3"], self.lab)
        self.assertEqual((status, out), (1, ""))
        self.assertIn("the lab has no node n3; its nodes are n1, n2", err)

    def test_not_root(self):
        if os.geteuid() == 0:
            self.patch(os, "geteuid", lambda: 1000)
        for command in ("power-off", "power-on", "partition", "heal"):
            status, out, err = run_cli([command, "n1"], self.lab)
            self.assertEqual(status, 1, command)
            self.assertIn("must run as root", err)

    def test_power_off_and_on(self):
        FakeMachine(self, self.lab)
        self.assertEqual(run_cli(["power-off", "n1"], self.lab)[:2], (0, (
            "n1: link down\n"
            "n1: killed 3 processes (dockerd, httpd x2)\n"
            "n1: iptables and conntrack flushed, docker's runtime state "
            "cleared, as a reboot would; pool flab-n1 kept\n"
            "n1 is powered off\n")))
        self.assertEqual(run_cli(["power-off", "n1"], self.lab),
                         (0, "n1 was already powered off\n", ""))
        status, out, err = run_cli(["kill-daemon", "n1"], self.lab)
        self.assertEqual((status, out), (1, ""))
        self.assertIn("flocker-lab: node n1 is powered off", err)
        status, out, err = run_cli(["start-daemon", "n1"], self.lab)
        self.assertEqual(status, 1)
        self.assertIn("'flocker-lab power-on n1'", err)
        self.assertEqual(run_cli(["power-on", "n1"], self.lab), (0, (
            "n1: link up\nn1: dockerd started\nn1: flocker-node started\n"
            "n1 is powered on\n"), ""))

    def test_power_on_failure(self):
        FakeMachine(self, self.lab)

        def boot(node):
            raise _lab.DaemonStartError({"n1": "it exited with status 1"})
        self.patch(self.lab, "_boot", boot)
        status, out, err = run_cli(["power-on", "n1"], self.lab)
        self.assertEqual(status, 1)
        self.assertEqual(err, "flocker-lab: flocker-node on n1 did not start: "
                              "it exited with status 1\n")

    def test_partition_and_heal(self):
        FakeMachine(self, self.lab)
        self.assertEqual(run_cli(["partition", "n2"], self.lab), (0, (
            "n2: link down; everything on n2 keeps running\n"
            "n2 is partitioned\n"), ""))
        self.assertEqual(run_cli(["partition", "n2"], self.lab),
                         (0, "n2 was already partitioned\n", ""))
        self.assertEqual(run_cli(["heal", "n2"], self.lab),
                         (0, "n2: link up\nn2 is healed\n", ""))
        self.assertEqual(run_cli(["heal", "n2"], self.lab),
                         (0, "n2 was not partitioned\n", ""))


class DaemonIdentityTests(SynchronousTestCase):
    """
    The lab knows its daemons by pid, start time and command line.  While
    nsenter execs twistd (and the kernel execs its interpreter), the
    command line reads empty or torn for a moment: that is no reason to
    think the daemon exited.
    """

    def setUp(self):
        directory = os.path.abspath(self.mktemp())
        write_state(directory)
        self.lab = Lab(directory=directory)
        self.node = self.lab.node("n1")
        self.lab._record_daemon(self.node, {"pid": 4242, "start": "99"})
        self.patch(_lab, "alive", lambda pid: pid == 4242)
        self.patch(_lab, "process_start_time",
                   lambda pid: "99" if pid == 4242 else None)
        self.patch(time, "sleep", lambda seconds: None)

    def command_lines(self, *lines):
        lines = list(lines)
        self.patch(_lab, "cmdline", lambda pid: lines.pop(0) if len(lines) > 1
                   else lines[0])

    def test_command_line_read_during_exec(self):
        self.command_lines([], ["nsenter", "--net=x"], [
            "python3", "twistd", "flocker-node", "--config", self.node.config_path])
        self.assertEqual(self.lab._daemon_pid(self.node), 4242)

    def test_another_program(self):
        """The same pid and start time after a reboot, another program."""
        self.command_lines(["sshd", "-D"])
        self.assertIsNone(self.lab._daemon_pid(self.node))

    def test_exited(self):
        self.command_lines([])
        self.patch(_lab, "alive", lambda pid: False)
        self.assertIsNone(self.lab._daemon_pid(self.node))
