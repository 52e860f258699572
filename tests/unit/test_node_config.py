"""
Tests for flocker_async.node._config: node.yml, every rule with the key
path its error names, and the operator keys file.
"""

import os
import textwrap

import attrs
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.conch.ssh import keys
from twisted.trial.unittest import SkipTest, TestCase

from flocker_async.config import ConfigurationError, Problem
from flocker_async.node._config import (
    DEFAULT_CONFIG_PATH,
    NodeConfiguration,
    ZFSConfiguration,
    check_pool_name,
    load_node_configuration,
    load_operator_keys,
    node_configuration_from_document,
    operator_keys_from_text,
)

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "config", "node.yml")


def parse(text, filename="node.yml"):
    return node_configuration_from_document(
        textwrap.dedent(text).encode("utf-8"), filename)


class ProblemsMixin:
    def problems(self, text, filename="node.yml"):
        """The ``(key path, message)`` of every problem in ``text``."""
        with self.assertRaises(ConfigurationError) as caught:
            parse(text, filename)
        for problem in caught.exception.problems:
            self.assertEqual(problem.file, filename)
        return [(p.path, p.message) for p in caught.exception.problems]

    def assertOneProblem(self, text, path, *fragments):
        """``text`` has exactly one problem, at ``path``, saying ``fragments``."""
        found = self.problems(text)
        self.assertEqual([p for p, _ in found], [path], found)
        for fragment in fragments:
            self.assertIn(fragment, found[0][1])
        return found[0][1]


class DefaultsTests(TestCase):
    def test_only_address(self):
        """Only the address is required; everything else has its default."""
        self.assertEqual(
            parse("address: 10.0.0.1\n"),
            NodeConfiguration(
                address="10.0.0.1",
                ssh_port=4522,
                state_directory="/var/lib/flocker-async",
                zfs=ZFSConfiguration(pool="flocker", mount_root="/flocker"),
                docker_socket="/var/run/docker.sock",
                operator_keys="/var/lib/flocker-async/operator_keys",
                convergence_interval=10.0,
                listen_address="0.0.0.0",
            ))

    def test_operator_keys_follow_state_directory(self):
        """Without operator_keys, the keys file is in the state directory."""
        config = parse("address: 10.0.0.1\nstate_directory: /srv/flocker\n")
        self.assertEqual(config.operator_keys, "/srv/flocker/operator_keys")
        self.assertEqual(NodeConfiguration(address="10.0.0.1", state_directory="/x")
                         .operator_keys, "/x/operator_keys")

    def test_zfs_defaults_per_key(self):
        """A zfs mapping with one key keeps the other's default."""
        self.assertEqual(parse("address: 10.0.0.1\nzfs: {pool: tank}\n").zfs,
                         ZFSConfiguration("tank", "/flocker"))
        self.assertEqual(parse("address: 10.0.0.1\nzfs: {mount_root: /data}\n").zfs,
                         ZFSConfiguration("flocker", "/data"))
        self.assertEqual(parse("address: 10.0.0.1\nzfs: {}\n").zfs, ZFSConfiguration())

    def test_every_key(self):
        config = parse("""\
            address: 192.168.1.5
            ssh_port: 2222
            state_directory: /srv/state/
            zfs:
              pool: "tank.1:x_y-z"
              mount_root: /mnt/volumes
            docker_socket: /run/docker.sock
            operator_keys: /etc/flocker-async/operators
            convergence_interval: 0.5
            listen_address: "::"
            """)
        self.assertEqual(config, NodeConfiguration(
            address="192.168.1.5", ssh_port=2222, state_directory="/srv/state",
            zfs=ZFSConfiguration("tank.1:x_y-z", "/mnt/volumes"),
            docker_socket="/run/docker.sock",
            operator_keys="/etc/flocker-async/operators",
            convergence_interval=0.5, listen_address="::"))

    def test_frozen(self):
        config = parse("address: 10.0.0.1\n")
        self.assertRaises(attrs.exceptions.FrozenInstanceError,
                          setattr, config, "ssh_port", 22)

    def test_example_is_the_defaults(self):
        """config/node.yml parses, and every value it shows is the default."""
        self.assertEqual(load_node_configuration(EXAMPLE),
                         NodeConfiguration(address="172.16.255.250"))

    def test_default_path(self):
        self.assertEqual(DEFAULT_CONFIG_PATH, "/etc/flocker/node.yml")


class AddressTests(ProblemsMixin, TestCase):
    def test_missing(self):
        self.assertOneProblem("ssh_port: 22\n", "", "missing required key 'address'")

    def test_ipv4(self):
        self.assertEqual(parse("address: 172.16.255.250\n").address, "172.16.255.250")

    def test_ipv6_refused(self):
        """Proxies are IPv4 iptables rules, so a node's address is IPv4."""
        e = self.assertRaises(ConfigurationError, parse, "address: '2001:DB8:0::1'\n")
        self.assertEqual(e.path, "address")
        self.assertIn("IPv4 only", e.message)

    def test_loopback_allowed(self):
        """A lab cluster on one machine uses loopback addresses."""
        self.assertEqual(parse("address: 127.0.0.2\n").address, "127.0.0.2")

    def test_host_name(self):
        self.assertOneProblem("address: node1.example.com\n", "address",
                              "expected the IP address", '"node1.example.com"')

    def test_not_a_string(self):
        self.assertOneProblem("address: 12\n", "address", "got a number (12)")
        self.assertOneProblem("address: [10.0.0.1]\n", "address", "got a list")
        self.assertOneProblem("address:\n", "address", "got nothing (null)")

    def test_unspecified(self):
        """0.0.0.0 and :: are for listening; nobody can reach a node there."""
        for value in ("0.0.0.0", "'::'"):
            self.assertOneProblem("address: %s\n" % (value,), "address",
                                  "not an address other machines can reach")

    def test_multicast(self):
        self.assertOneProblem("address: 224.0.0.1\n", "address", "multicast")

    def test_bad_octet(self):
        self.assertOneProblem("address: 10.0.0.256\n", "address", '"10.0.0.256"')


class PortTests(ProblemsMixin, TestCase):
    def test_bounds(self):
        self.assertEqual(parse("address: 10.0.0.1\nssh_port: 1\n").ssh_port, 1)
        self.assertEqual(parse("address: 10.0.0.1\nssh_port: 65535\n").ssh_port, 65535)
        for value in ("0", "65536", "-1"):
            self.assertOneProblem("address: 10.0.0.1\nssh_port: %s\n" % (value,),
                                  "ssh_port", "from 1 to 65535")

    def test_not_an_integer(self):
        for value, shown in (("'22'", 'a string ("22")'), ("true", "a boolean"),
                             ("22.5", "a number (22.5)")):
            self.assertOneProblem("address: 10.0.0.1\nssh_port: %s\n" % (value,),
                                  "ssh_port", shown)


class PathTests(ProblemsMixin, TestCase):
    KEYS = ("state_directory", "docker_socket", "operator_keys")

    def test_relative(self):
        for key in self.KEYS:
            self.assertOneProblem("address: 10.0.0.1\n%s: var/lib/x\n" % (key,),
                                  key, "expected an absolute path", '"var/lib/x"')
        self.assertOneProblem("address: 10.0.0.1\nzfs: {mount_root: flocker}\n",
                              "zfs.mount_root", "expected an absolute path")

    def test_dot_components(self):
        for key in self.KEYS:
            self.assertOneProblem("address: 10.0.0.1\n%s: /var/../etc\n" % (key,),
                                  key, "'.' or '..'")

    def test_not_a_string(self):
        for key in self.KEYS:
            self.assertOneProblem("address: 10.0.0.1\n%s: 5\n" % (key,),
                                  key, "expected an absolute path, got a number")

    def test_nul(self):
        self.assertOneProblem('address: 10.0.0.1\ndocker_socket: "/run/\\0x"\n',
                              "docker_socket", "NUL")

    def test_control_characters(self):
        self.assertOneProblem('address: 10.0.0.1\noperator_keys: "/etc/a\\nb"\n',
                              "operator_keys", "control characters")

    def test_normalised(self):
        config = parse("address: 10.0.0.1\nstate_directory: /srv//state/\n"
                       "zfs: {mount_root: /mnt/v/}\n")
        self.assertEqual((config.state_directory, config.zfs.mount_root),
                         ("/srv/state", "/mnt/v"))

    def test_root_is_not_a_directory_of_its_own(self):
        self.assertOneProblem("address: 10.0.0.1\nstate_directory: /\n",
                              "state_directory", "not /")
        self.assertOneProblem("address: 10.0.0.1\nzfs: {mount_root: /}\n",
                              "zfs.mount_root", "not /")
        self.assertOneProblem("address: 10.0.0.1\nstate_directory: //\n",
                              "state_directory", "not /")

    def test_mount_root_characters(self):
        """The mount root obeys the rule ZFSStoragePool checks."""
        self.assertOneProblem("address: 10.0.0.1\nzfs: {mount_root: '/my volumes'}\n",
                              "zfs.mount_root", "may only contain")
        self.assertOneProblem("address: 10.0.0.1\nzfs: {mount_root: '/a,b'}\n",
                              "zfs.mount_root", "may only contain")


class PoolTests(ProblemsMixin, TestCase):
    def test_valid(self):
        for name in ("flocker", "tank", "Pool2", "a.b", "a:b", "a_b-c", "logs",
                     "mx", "c", "cx0", "tank-mirror"):
            self.assertIsNone(check_pool_name(name), name)
            self.assertEqual(parse("address: 10.0.0.1\nzfs: {pool: '%s'}\n" % (name,))
                             .zfs.pool, name)

    def test_characters(self):
        for name in ("1pool", "-pool", "_pool", ".pool", "po ol", "po/ol", "po@l",
                     "po%l", "pööl"):
            self.assertOneProblem("address: 10.0.0.1\nzfs: {pool: '%s'}\n" % (name,),
                                  "zfs.pool", "invalid ZFS pool name",
                                  "starting with a letter")

    def test_empty(self):
        self.assertOneProblem("address: 10.0.0.1\nzfs: {pool: ''}\n",
                              "zfs.pool", "empty")

    def test_reserved(self):
        for name in ("mirror", "mirror1", "raidz", "raidz2", "draid", "spare",
                     "spares", "log"):
            self.assertOneProblem("address: 10.0.0.1\nzfs: {pool: %s}\n" % (name,),
                                  "zfs.pool", "reserved", '"%s"' % (name,))

    def test_disk_like(self):
        self.assertOneProblem("address: 10.0.0.1\nzfs: {pool: c0t0d0}\n",
                              "zfs.pool", "looks like a disk name")

    def test_too_long(self):
        self.assertIsNone(check_pool_name("p" * 100))
        self.assertOneProblem("address: 10.0.0.1\nzfs: {pool: %s}\n" % ("p" * 101,),
                              "zfs.pool", "101 characters")

    def test_not_a_string(self):
        self.assertOneProblem("address: 10.0.0.1\nzfs: {pool: 7}\n",
                              "zfs.pool", "got a number (7)")

    def test_zfs_not_a_mapping(self):
        self.assertOneProblem("address: 10.0.0.1\nzfs: flocker\n", "zfs",
                              "expected a mapping with 'pool' and 'mount_root'")

    def test_zfs_unknown_key(self):
        self.assertOneProblem("address: 10.0.0.1\nzfs: {pool: a, poool: b}\n",
                              "zfs.poool", "did you mean 'pool'?")


class IntervalTests(ProblemsMixin, TestCase):
    def test_numbers(self):
        self.assertEqual(parse("address: 10.0.0.1\nconvergence_interval: 30\n")
                         .convergence_interval, 30.0)
        self.assertIsInstance(parse("address: 10.0.0.1\nconvergence_interval: 30\n")
                              .convergence_interval, float)
        self.assertEqual(parse("address: 10.0.0.1\nconvergence_interval: 0.25\n")
                         .convergence_interval, 0.25)

    def test_not_positive(self):
        for value in ("0", "-1", "-0.5"):
            self.assertOneProblem(
                "address: 10.0.0.1\nconvergence_interval: %s\n" % (value,),
                "convergence_interval", "positive number of seconds")

    def test_not_a_number(self):
        for value in ("'10'", "true", ".inf", ".nan", "[1]"):
            self.assertOneProblem(
                "address: 10.0.0.1\nconvergence_interval: %s\n" % (value,),
                "convergence_interval", "expected a number of seconds")


class LoginTimeoutTests(ProblemsMixin, TestCase):
    """login_timeout: seconds an SSH client has to authenticate (issue 17)."""

    def test_default(self):
        self.assertEqual(parse("address: 10.0.0.1\n").login_timeout, 30.0)

    def test_numbers(self):
        config = parse("address: 10.0.0.1\nlogin_timeout: 10\n")
        self.assertEqual(config.login_timeout, 10.0)
        self.assertIsInstance(config.login_timeout, float)
        self.assertEqual(parse("address: 10.0.0.1\nlogin_timeout: 2.5\n")
                         .login_timeout, 2.5)

    def test_not_positive(self):
        for value in ("0", "-1"):
            self.assertOneProblem("address: 10.0.0.1\nlogin_timeout: %s\n" % (value,),
                                  "login_timeout", "positive number of seconds")

    def test_not_a_number(self):
        for value in ("'10'", "true", ".inf", "[1]"):
            self.assertOneProblem("address: 10.0.0.1\nlogin_timeout: %s\n" % (value,),
                                  "login_timeout", "expected a number of seconds")

    def test_too_long(self):
        self.assertOneProblem("address: 10.0.0.1\nlogin_timeout: 3601\n",
                              "login_timeout", "at most 3600 seconds")


class ListenAddressTests(ProblemsMixin, TestCase):
    def test_any(self):
        self.assertEqual(parse("address: 10.0.0.1\nlisten_address: '::'\n")
                         .listen_address, "::")
        self.assertEqual(parse("address: 10.0.0.1\nlisten_address: 10.0.0.1\n")
                         .listen_address, "10.0.0.1")

    def test_invalid(self):
        self.assertOneProblem("address: 10.0.0.1\nlisten_address: localhost\n",
                              "listen_address", "expected an IP address to listen on")
        self.assertOneProblem("address: 10.0.0.1\nlisten_address: 0\n",
                              "listen_address", "got a number (0)")


class DocumentTests(ProblemsMixin, TestCase):
    def test_unknown_key_did_you_mean(self):
        message = self.assertOneProblem("address: 10.0.0.1\nssh-port: 22\n",
                                        "ssh-port", "unknown key",
                                        "did you mean 'ssh_port'?")
        self.assertIn("listen_address", message)

    def test_unknown_key_no_hint(self):
        message = self.assertOneProblem("address: 10.0.0.1\nxyzzy: 1\n", "xyzzy",
                                        "unknown key")
        self.assertNotIn("did you mean", message)

    def test_duplicate_key(self):
        """The first value is not silently replaced by a second."""
        self.assertOneProblem("address: 10.0.0.1\nssh_port: 22\nssh_port: 23\n",
                              "ssh_port", "duplicate key", "line 3")

    def test_not_a_mapping(self):
        self.assertOneProblem("- 10.0.0.1\n", "", "expected a mapping", "got a list")
        self.assertOneProblem("10.0.0.1\n", "", "expected a mapping")

    def test_empty(self):
        self.assertOneProblem("# nothing\n", "", "file is empty")

    def test_syntax_error(self):
        self.assertOneProblem("address: [10.0.0.1\n", "line 2, column 1",
                              "YAML syntax error")

    def test_every_problem_at_once(self):
        """Each problem is reported, in file order, with its key path."""
        found = self.problems("""\
            adress: 10.0.0.1
            ssh_port: 0
            state_directory: relative
            zfs:
              pool: mirror
              mount_root: /ok
            convergence_interval: 0
            listen_address: nowhere
            """)
        self.assertEqual([p for p, _ in found], [
            "adress", "", "ssh_port", "state_directory", "zfs.pool",
            "convergence_interval", "listen_address"])
        self.assertIn("did you mean 'address'?", found[0][1])
        self.assertIn("missing required key 'address'", found[1][1])

    def test_message_format(self):
        """``FILE: KEY.PATH: message``, one line per problem."""
        with self.assertRaises(ConfigurationError) as caught:
            node_configuration_from_document(
                b"address: 10.0.0.1\nzfs: {pool: log}\nssh_port: x\n", "/etc/n.yml")
        lines = str(caught.exception).splitlines()
        self.assertEqual(len(lines), 2)
        self.assertTrue(lines[0].startswith("/etc/n.yml: zfs.pool: "), lines[0])
        self.assertTrue(lines[1].startswith("/etc/n.yml: ssh_port: "), lines[1])


class LoadTests(TestCase):
    def test_file(self):
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"address: 10.1.2.3\nssh_port: 2200\n")
        self.assertEqual(load_node_configuration(path),
                         NodeConfiguration(address="10.1.2.3", ssh_port=2200))

    def test_problems_name_the_file(self):
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"address: nowhere\n")
        with self.assertRaises(ConfigurationError) as caught:
            load_node_configuration(path)
        self.assertEqual(caught.exception.problems[0].file, path)
        self.assertEqual(caught.exception.path, "address")

    def test_missing(self):
        path = self.mktemp()
        with self.assertRaises(ConfigurationError) as caught:
            load_node_configuration(path)
        self.assertEqual(len(caught.exception.problems), 1)
        problem = caught.exception.problems[0]
        self.assertEqual((problem.file, problem.path), (path, ""))
        self.assertIn("No such file", problem.message)
        self.assertIn("--config", problem.message)

    def test_directory(self):
        path = self.mktemp()
        os.mkdir(path)
        with self.assertRaises(ConfigurationError) as caught:
            load_node_configuration(path)
        self.assertIn("is a directory", caught.exception.message)


# --- operator keys ------------------------------------------------------------------

def _public(private):
    return keys.Key(private).public()


ED25519 = _public(Ed25519PrivateKey.generate())
ECDSA = _public(ec.generate_private_key(ec.SECP256R1()))
RSA = _public(rsa.generate_private_key(public_exponent=65537, key_size=2048))


def line(key, comment=""):
    text = key.toString("openssh").decode("ascii")
    return text + (" " + comment if comment else "")


class OperatorKeysTests(TestCase):
    def keys_problems(self, text):
        with self.assertRaises(ConfigurationError) as caught:
            operator_keys_from_text(text, "ops")
        for problem in caught.exception.problems:
            self.assertEqual(problem.file, "ops")
        return [(p.path, p.message) for p in caught.exception.problems]

    def test_keys_comments_blank_lines(self):
        text = "\n".join([
            "# operators",
            "",
            line(ED25519, "alice@laptop"),
            "   ",
            "  " + line(RSA, "bob with spaces in the comment"),
            line(ECDSA),
            "# the end",
        ])
        self.assertEqual(operator_keys_from_text(text), (ED25519, RSA, ECDSA))

    def test_bytes_and_duplicates(self):
        text = (line(ED25519, "a") + "\n" + line(ED25519, "b") + "\n").encode("ascii")
        self.assertEqual(operator_keys_from_text(text), (ED25519,))

    def test_empty(self):
        self.assertEqual(operator_keys_from_text("# nobody yet\n\n"), ())

    def test_options_refused(self):
        text = "# x\n" + 'no-pty,command="/bin/true" ' + line(ED25519, "c") + "\n"
        found = self.keys_problems(text)
        self.assertEqual([p for p, _ in found], ["line 2"])
        self.assertIn("options before the key type are not supported", found[0][1])
        self.assertIn('no-pty,command="/bin/true"', found[0][1])

    def test_not_a_key_line(self):
        found = self.keys_problems(line(ED25519) + "\nhello world\n")
        self.assertEqual([p for p, _ in found], ["line 2"])
        self.assertIn("not a public key line", found[0][1])
        self.assertIn('"hello world"', found[0][1])

    def test_bad_key_data(self):
        found = self.keys_problems("ssh-ed25519 AAAAnotbase64!!! x\n")
        self.assertEqual([p for p, _ in found], ["line 1"])
        self.assertIn("cannot parse the ssh-ed25519 key", found[0][1])

    def test_truncated_key_data(self):
        data = line(ED25519).split()[1]
        found = self.keys_problems("ssh-ed25519 %s\n" % (data[:20],))
        self.assertEqual([p for p, _ in found], ["line 1"])
        self.assertIn("cannot parse", found[0][1])

    def test_type_only(self):
        found = self.keys_problems("ssh-ed25519\n")
        self.assertEqual(found, [("line 1", "ssh-ed25519 key has no key data "
                                            "after the type")])

    def test_type_mismatch(self):
        data = line(ED25519).split()[1]
        found = self.keys_problems("ssh-rsa %s\n" % (data,))
        self.assertEqual([p for p, _ in found], ["line 1"])
        self.assertIn("the key data is a ssh-ed25519 key but the line says ssh-rsa",
                      found[0][1])

    def test_private_key(self):
        """A private key is one problem, however many lines it has."""
        private = keys.Key(Ed25519PrivateKey.generate()).toString("openssh")
        found = self.keys_problems(line(RSA) + "\n" + private.decode("ascii")
                                   + "\n" + line(ECDSA) + "\n")
        self.assertEqual([p for p, _ in found], ["line 2"])
        self.assertIn("private key", found[0][1])

    def test_every_bad_line_at_once(self):
        found = self.keys_problems("junk\n%s\nrestrict %s\nssh-ed25519 !!\n"
                                   % (line(ED25519), line(RSA)))
        self.assertEqual([p for p, _ in found], ["line 1", "line 3", "line 4"])

    def test_not_utf8(self):
        found = self.keys_problems(line(ED25519).encode("ascii") + b"\n\xff\xfe\n")
        self.assertEqual([p for p, _ in found], ["line 2"])
        self.assertIn("UTF-8", found[0][1])

    def test_load_file(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(line(ED25519, "alice") + "\n")
        self.assertEqual(load_operator_keys(path), (ED25519,))

    def test_load_names_file_and_line(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("\n\nfrom=\"10.0.0.0/8\" " + line(ED25519) + "\n")
        with self.assertRaises(ConfigurationError) as caught:
            load_operator_keys(path)
        self.assertTrue(str(caught.exception).startswith("%s: line 3: options" % (path,)),
                        str(caught.exception))

    def test_load_missing(self):
        path = self.mktemp()
        with self.assertRaises(ConfigurationError) as caught:
            load_operator_keys(path)
        self.assertEqual(caught.exception.problems[0].file, path)
        self.assertIn("does not exist", caught.exception.message)
        self.assertIn("authorized_keys", caught.exception.message)

    def test_load_directory(self):
        path = self.mktemp()
        os.mkdir(path)
        with self.assertRaises(ConfigurationError) as caught:
            load_operator_keys(path)
        self.assertEqual(caught.exception.problems,
                         (Problem(path, "", "is a directory, expected an "
                                            "authorized_keys-style file"),))


class OperatorKeysFileModeTests(TestCase):
    """
    Issue 17, point 10: an operator keys file others could write is
    refused, as OpenSSH refuses such an authorized_keys file.
    """

    def keys_file(self, mode):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(line(ED25519) + "\n")
        os.chmod(path, mode)
        return path

    def refusal(self, path):
        with self.assertRaises(ConfigurationError) as caught:
            load_operator_keys(path)
        [problem] = caught.exception.problems
        self.assertEqual(problem.file, path)
        return problem.message

    def test_private_and_readable_accepted(self):
        for mode in (0o600, 0o644, 0o400, 0o444):
            self.assertEqual(load_operator_keys(self.keys_file(mode)), (ED25519,))

    def test_group_writable(self):
        path = self.keys_file(0o664)
        message = self.refusal(path)
        self.assertIn("writable by its group", message)
        self.assertIn("chmod go-w %s" % (path,), message)

    def test_world_writable(self):
        path = self.keys_file(0o646)
        message = self.refusal(path)
        self.assertIn("writable by other users", message)
        self.assertIn("chmod go-w %s" % (path,), message)

    def test_owned_by_another_user(self):
        if os.geteuid() != 0:
            raise SkipTest("changing a file's owner needs root")
        path = self.keys_file(0o644)
        os.chown(path, 65534, -1)
        message = self.refusal(path)
        self.assertIn("owned by uid 65534", message)
        self.assertIn("chown root %s" % (path,), message)


class ToolkitTests(TestCase):
    """node.yml is checked with the public validation toolkit."""

    def test_no_private_imports(self):
        """No name with a leading underscore is imported from another module."""
        import ast
        from flocker_async.node import _config
        with open(_config.__file__) as f:
            tree = ast.parse(f.read())
        private = [(node.module, alias.name) for node in ast.walk(tree)
                   if isinstance(node, ast.ImportFrom)
                   for alias in node.names if alias.name.startswith("_")]
        self.assertEqual(private, [])

    def test_same_error_classes(self):
        from flocker_async import validation
        with self.assertRaises(validation.ConfigurationError) as caught:
            parse("ssh_port: 0\n")
        self.assertIsInstance(caught.exception, ConfigurationError)
        for problem in caught.exception.problems:
            self.assertIsInstance(problem, validation.Problem)
