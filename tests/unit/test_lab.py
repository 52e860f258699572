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
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

import flocker_async.lab as lab_package
from flocker_async.cli.lab import LabOptions, main
from flocker_async.lab import (
    Lab, LabError, LabNames, choose_subnet, env_for, export_lines,
    parse_node_name, parse_routes)
from flocker_async.lab import _lab, _network
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
