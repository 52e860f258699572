"""
Tests for ``twistd flocker-node``: the dropin, its options, tap.makeService,
and the systemd unit that runs it.
"""

import os
import shlex
import subprocess
import sys
import textwrap

from twisted.application.service import IServiceMaker, Service
from twisted.plugin import IPlugin
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from flocker_async.config import ConfigurationError, Problem
from flocker_async.node import service, tap
from flocker_async.node._config import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_STATE_DIRECTORY,
    NodeConfiguration,
)
from flocker_async.node._options import NodeOptions
from flocker_async.ssh._keys import KeyFileError

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DROPIN = os.path.join(ROOT, "twisted", "plugins", "flocker_node.py")
UNIT = os.path.join(ROOT, "config", "flocker-node.service")
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def load_dropin():
    namespace = {}
    with open(DROPIN) as f:
        exec(compile(f.read(), DROPIN, "exec"), namespace)
    return namespace["flockerNode"]


class DropinTests(TestCase):
    def test_service_maker(self):
        maker = load_dropin()
        verifyObject(IServiceMaker, maker)
        verifyObject(IPlugin, maker)
        self.assertEqual((maker.tapname, maker.module),
                         ("flocker-node", "flocker_async.node.tap"))
        self.assertTrue(maker.description)

    def test_lazy_options_and_service(self):
        """The dropin's module is tap, whose Options and makeService we test."""
        maker = load_dropin()
        self.assertIs(maker.options, NodeOptions)
        self.assertIs(tap.Options, NodeOptions)

    def test_no_package_files(self):
        """twisted/ and twisted/plugins/ must not shadow Twisted's packages."""
        self.assertFalse(os.path.exists(os.path.join(ROOT, "twisted", "__init__.py")))
        self.assertFalse(os.path.exists(
            os.path.join(ROOT, "twisted", "plugins", "__init__.py")))

    def run_python(self, code):
        result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                                cwd=self.mktemp_dir(), capture_output=True,
                                text=True, timeout=120)
        self.assertEqual(result.returncode, 0, result.stderr)
        return result.stdout

    def mktemp_dir(self):
        path = self.mktemp()
        os.mkdir(path)
        return path

    def test_found_on_sys_path(self):
        """The editable install puts the checkout on sys.path, so Twisted's
        plugin search finds twisted/plugins/flocker_node.py in it, from any
        directory."""
        output = self.run_python("""\
            import twisted.plugins
            from twisted.application.service import IServiceMaker
            from twisted.plugin import getPlugins
            print([p.__path__ for p in [twisted.plugins]][0])
            print([m.tapname for m in getPlugins(IServiceMaker)])
            """)
        paths, names = output.splitlines()
        self.assertIn(os.path.join(ROOT, "twisted", "plugins"), paths)
        self.assertIn("'flocker-node'", names)

    def test_dropin_imports_nothing_heavy(self):
        output = self.run_python("""\
            import sys
            import twisted.plugins.flocker_node as dropin
            print(dropin.flockerNode.tapname)
            print(sorted(m for m in sys.modules
                         if m == "twisted.internet.reactor"
                         or m.split(".")[0] == "flocker_async"))
            """)
        self.assertEqual(output.splitlines(), ["flocker-node", "[]"])


class TwistdTests(TestCase):
    def twistd(self, *args):
        self.assertTrue(os.access(TWISTD, os.X_OK), TWISTD)
        directory = self.mktemp()
        os.mkdir(directory)
        return subprocess.run([TWISTD] + list(args), cwd=directory,
                              capture_output=True, text=True, timeout=120)

    def test_help(self):
        result = self.twistd("flocker-node", "--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        for text in ("--config", DEFAULT_CONFIG_PATH, DEFAULT_STATE_DIRECTORY,
                     "state directory", "host key", "desired state", "4522"):
            self.assertIn(text, " ".join(result.stdout.split()))

    def test_listed(self):
        result = self.twistd("--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("flocker-node", result.stdout)

    def test_bad_option(self):
        result = self.twistd("flocker-node", "--no-such-option")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("no-such-option", result.stdout + result.stderr)

    def write(self, text):
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_invalid_configuration(self):
        """Every problem printed, exit status 1, no traceback."""
        path = self.write("address: nowhere\nssh_port: 0\n")
        result = self.twistd("--nodaemon", "--pidfile=", "flocker-node",
                             "--config", path)
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertIn("%s: address: expected the IP address" % (path,), result.stderr)
        self.assertIn("%s: ssh_port: expected a port number" % (path,), result.stderr)
        self.assertNotIn("Traceback", result.stdout + result.stderr)

    def test_missing_configuration(self):
        path = os.path.abspath(self.mktemp())
        result = self.twistd("--nodaemon", "--pidfile=", "flocker-node",
                             "--config", path)
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertIn("%s: cannot read" % (path,), result.stderr)
        self.assertNotIn("Traceback", result.stdout + result.stderr)


class OptionsTests(TestCase):
    def test_default(self):
        options = NodeOptions()
        options.parseOptions([])
        self.assertEqual(options["config"], "/etc/flocker/node.yml")

    def test_config(self):
        for argv in (["--config", "/x.yml"], ["--config=/x.yml"], ["-c", "/x.yml"]):
            options = NodeOptions()
            options.parseOptions(argv)
            self.assertEqual(options["config"], "/x.yml")

    def test_empty_config(self):
        self.assertRaises(usage.UsageError, NodeOptions().parseOptions,
                          ["--config", ""])

    def test_no_arguments(self):
        self.assertRaises(usage.UsageError, NodeOptions().parseOptions, ["extra"])


class MakeServiceTests(TestCase):
    def options(self, text):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        options = NodeOptions()
        options.parseOptions(["--config", path])
        return options

    def test_seam(self):
        """makeService hands the loaded configuration to make_node_service."""
        made = []
        root = Service()

        def make_node_service(configuration):
            made.append(configuration)
            return root

        self.patch(service, "make_node_service", make_node_service)
        result = tap.makeService(self.options("address: 10.0.0.7\nssh_port: 2022\n"))
        self.assertIs(result, root)
        self.assertEqual(made, [NodeConfiguration(address="10.0.0.7", ssh_port=2022)])

    def refused(self, options):
        stderr = []
        self.patch(sys, "stderr", type("Err", (), {
            "write": lambda _, s: stderr.append(s), "flush": lambda _: None})())
        error = self.assertRaises(SystemExit, tap.makeService, options)
        self.assertEqual(error.code, 1)
        return "".join(stderr)

    def test_configuration_error(self):
        options = self.options("address: 10.0.0.1\nzfs: {pool: log}\nxyz: 1\n")
        output = self.refused(options)
        self.assertIn("%s: xyz: unknown key" % (options["config"],), output)
        self.assertIn("%s: zfs.pool: " % (options["config"],), output)
        self.assertIn("not started", output)

    def test_service_configuration_error(self):
        """Errors make_node_service finds in other files are reported alike."""
        def make_node_service(configuration):
            raise ConfigurationError([Problem("/keys", "line 2", "bad key")])

        self.patch(service, "make_node_service", make_node_service)
        output = self.refused(self.options("address: 10.0.0.1\n"))
        self.assertIn("/keys: line 2: bad key\n", output)

    def test_key_file_error(self):
        def make_node_service(configuration):
            raise KeyFileError("/state/key: unsafe permissions")

        self.patch(service, "make_node_service", make_node_service)
        output = self.refused(self.options("address: 10.0.0.1\n"))
        self.assertIn("/state/key: unsafe permissions\n", output)


# --- the systemd unit ------------------------------------------------------------

def parse_unit(path):
    """{section: [(key, value), ...]} as systemd reads a unit file."""
    sections, current, pending = {}, None, ""
    with open(path) as f:
        for raw in f:
            line = pending + raw.strip()
            pending = ""
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            if not line or line[0] in "#;":
                continue
            if line.startswith("["):
                current = sections.setdefault(line.strip("[]"), [])
                continue
            key, _, value = line.partition("=")
            current.append((key.strip(), value.strip()))
    return sections


class SystemdUnitTests(TestCase):
    def setUp(self):
        self.unit = parse_unit(UNIT)
        self.service = dict(self.unit["Service"])

    def values(self, key):
        return [v for k, v in self.unit["Service"] if k == key]

    def test_notify_and_restart(self):
        self.assertEqual(self.service["Type"], "notify")
        self.assertEqual(self.service["Restart"], "on-failure")
        self.assertTrue(self.service["RestartSec"])
        self.assertEqual(dict(self.unit["Install"])["WantedBy"], "multi-user.target")

    def test_exec_start_runs_the_plugin(self):
        argv = shlex.split(self.service["ExecStart"])
        self.assertTrue(os.path.isabs(argv[0]) and argv[0].endswith("/twistd"), argv)
        plugin = load_dropin().tapname
        self.assertIn(plugin, argv)
        at = argv.index(plugin)
        self.assertIn("--nodaemon", argv[1:at])
        self.assertIn("--pidfile=", argv[1:at])
        options = NodeOptions()
        options.parseOptions(argv[at + 1:])
        self.assertEqual(options["config"], DEFAULT_CONFIG_PATH)

    def test_state_directory(self):
        """systemd creates the default state directory, private."""
        self.assertEqual("/var/lib/" + self.service["StateDirectory"],
                         DEFAULT_STATE_DIRECTORY)
        self.assertEqual(self.service["StateDirectoryMode"], "0700")

    def test_hardening_that_keeps_zfs_docker_iptables(self):
        self.assertEqual(self.service["NoNewPrivileges"], "yes")
        families = self.service["RestrictAddressFamilies"].split()
        for family in ("AF_UNIX", "AF_NETLINK", "AF_INET", "AF_INET6"):
            self.assertIn(family, families)
        self.assertFalse(families[0].startswith("~"))

    def test_no_private_mount_namespace(self):
        """
        A mount namespace would keep the volumes zfs mounts from dockerd, and
        these settings would hide /dev/zfs, make sysctls read-only, block
        iptables' module loading or cut the network.
        """
        for key in ("ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices",
                    "PrivateMounts", "PrivateNetwork", "ProtectKernelTunables",
                    "ProtectKernelModules", "ProtectKernelLogs",
                    "ProtectControlGroups", "ProtectClock", "MountFlags",
                    "ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths",
                    "TemporaryFileSystem", "DevicePolicy", "DeviceAllow",
                    "CapabilityBoundingSet", "IPAddressDeny"):
            self.assertEqual(self.values(key), [], key)


class VagrantProvisioningTests(SynchronousTestCase):
    """The Vagrant cluster's provisioning script (VMs cannot run here, so
    this checks what can be checked without them)."""

    ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

    def script(self):
        with open(os.path.join(self.ROOT, "config", "vagrant-provision.sh")) as f:
            return f.read()

    def test_shell_syntax(self):
        result = subprocess.run(["bash", "-n", os.path.join(
            self.ROOT, "config", "vagrant-provision.sh")], capture_output=True)
        self.assertEqual(result.returncode, 0, result.stderr)

    def test_node_yml_it_writes_is_valid(self):
        from flocker_async.node._config import node_configuration_from_document
        text = self.script()
        body = text.split("<<NODE\n", 1)[1].split("\nNODE\n", 1)[0]
        body = body.replace("${address}", "172.16.255.250")
        configuration = node_configuration_from_document(body.encode(), "node.yml")
        self.assertEqual(configuration.address, "172.16.255.250")
        self.assertEqual(configuration.zfs.pool, "flocker")

    def test_vagrantfile_uses_the_script_and_tutorial_addresses(self):
        with open(os.path.join(self.ROOT, "Vagrantfile")) as f:
            vagrantfile = f.read()
        self.assertIn('path: "config/vagrant-provision.sh"', vagrantfile)
        with open(os.path.join(self.ROOT, "config", "examples",
                               "mysql-deployment.yml")) as f:
            deployment = f.read()
        for address in ("172.16.255.250", "172.16.255.251"):
            self.assertIn(address, vagrantfile)
            self.assertIn(address, deployment)
        self.assertIn("/vagrant/config/flocker-node.service", self.script())

    def test_vagrantfile_ruby_syntax(self):
        result = subprocess.run(["ruby", "-c", os.path.join(self.ROOT, "Vagrantfile")],
                                capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("Syntax OK", result.stdout)

    def test_provisioning_script_shellcheck(self):
        result = subprocess.run(["shellcheck", os.path.join(
            self.ROOT, "config", "vagrant-provision.sh")], capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
