"""
Tests for flocker_async.node._keys: the node's host key and node key,
created on first start with safe permissions and refused when unsafe.
"""

import os
import stat

from twisted.conch.ssh import keys
from twisted.trial.unittest import SkipTest, TestCase

from flocker_async.node._keys import (
    HOST_KEY_FILE,
    NODE_KEY_FILE,
    KeyFileError,
    check_private_directory,
    load_node_keys,
)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


class FirstStartTests(TestCase):
    def setUp(self):
        self.state = os.path.join(self.mktemp(), "var", "lib", "flocker-async")

    def test_creates_directory_and_keys(self):
        old = os.umask(0)  # the modes must not depend on the umask
        self.addCleanup(os.umask, old)
        node_keys = load_node_keys(self.state)
        self.assertEqual(mode(self.state), 0o700)
        for name, key in ((HOST_KEY_FILE, node_keys.host_key),
                          (NODE_KEY_FILE, node_keys.node_key)):
            path = os.path.join(self.state, name)
            self.assertEqual(mode(path), 0o600, name)
            self.assertEqual(key.type(), "Ed25519")
            self.assertFalse(key.isPublic())
            with open(path, "rb") as f:
                self.assertEqual(keys.Key.fromString(f.read()), key)

    def test_two_different_keys(self):
        node_keys = load_node_keys(self.state)
        self.assertNotEqual(node_keys.host_key.public().blob(),
                            node_keys.node_key.public().blob())

    def test_later_start_loads_the_same_keys(self):
        first = load_node_keys(self.state)
        second = load_node_keys(self.state)
        self.assertEqual(first, second)

    def test_missing_key_created_other_kept(self):
        first = load_node_keys(self.state)
        os.unlink(os.path.join(self.state, NODE_KEY_FILE))
        second = load_node_keys(self.state)
        self.assertEqual(second.host_key, first.host_key)
        self.assertNotEqual(second.node_key.public().blob(),
                            first.node_key.public().blob())


class RefusalTests(TestCase):
    def setUp(self):
        self.state = os.path.abspath(self.mktemp())
        self.first = load_node_keys(self.state)
        self.host_key_path = os.path.join(self.state, HOST_KEY_FILE)

    def refused(self):
        return str(self.assertRaises(KeyFileError, load_node_keys, self.state))

    def test_readable_key(self):
        for unsafe in (0o644, 0o640, 0o604, 0o660, 0o606):
            os.chmod(self.host_key_path, unsafe)
            message = self.refused()
            self.assertIn(self.host_key_path, message)
            self.assertIn("unsafe permissions %03o" % (unsafe,), message)
            self.assertIn("chmod 600 " + self.host_key_path, message)
            # Refused, not quietly repaired.
            self.assertEqual(mode(self.host_key_path), unsafe)

    def test_stricter_key_is_fine(self):
        os.chmod(self.host_key_path, 0o400)
        self.assertEqual(load_node_keys(self.state), self.first)

    def test_open_directory(self):
        os.chmod(self.state, 0o755)
        message = self.refused()
        self.assertIn("mode 755", message)
        self.assertIn("chmod 700 " + self.state, message)
        self.assertEqual(mode(self.state), 0o755)

    def test_existing_directory_not_chmodded(self):
        """A state_directory pointed at a shared directory is left alone."""
        shared = self.mktemp()
        os.mkdir(shared)
        os.chmod(shared, 0o1777)
        self.assertRaises(KeyFileError, check_private_directory, shared)
        self.assertEqual(mode(shared), 0o1777)

    def test_not_a_directory(self):
        path = self.mktemp()
        open(path, "wb").close()
        message = str(self.assertRaises(KeyFileError, load_node_keys, path))
        self.assertIn("not a directory", message)

    def test_corrupt_key(self):
        with open(self.host_key_path, "wb") as f:
            f.write(b"-----BEGIN OPENSSH PRIVATE KEY-----\ngarbage\n")
        message = self.refused()
        self.assertIn(self.host_key_path, message)
        self.assertIn("move the file aside", message)
        with open(self.host_key_path, "rb") as f:
            self.assertIn(b"garbage", f.read())

    def test_empty_key(self):
        open(self.host_key_path, "wb").close()
        self.assertIn(self.host_key_path, self.refused())

    def test_public_key_in_place_of_private(self):
        with open(self.host_key_path, "wb") as f:
            f.write(self.first.host_key.public().toString("openssh"))
        self.assertIn(self.host_key_path, self.refused())

    def test_key_is_a_directory(self):
        os.unlink(self.host_key_path)
        os.mkdir(self.host_key_path, 0o700)
        self.assertIn("expected a private key file", self.refused())

    def test_dangling_symlink(self):
        os.unlink(self.host_key_path)
        os.symlink(os.path.join(self.state, "gone"), self.host_key_path)
        self.assertIn("does not exist", self.refused())

    def test_owned_by_someone_else(self):
        if os.geteuid() != 0:
            raise SkipTest("only root can give a file away")
        os.chown(self.host_key_path, 12345, -1)
        message = self.refused()
        self.assertIn("owned by uid 12345", message)
        self.assertIn("chown 0 " + self.host_key_path, message)
