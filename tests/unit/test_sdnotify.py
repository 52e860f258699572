"""
Tests for flocker_async.node._sdnotify against real AF_UNIX datagram
sockets, in the filesystem and in the abstract namespace.
"""

import os
import shutil
import socket
import tempfile
import uuid

from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from flocker_async.node._sdnotify import SystemdNotifier, notify_socket_address


class FakeSystemd:
    """A listening notify socket, as systemd creates for a Type=notify unit."""

    def __init__(self, test, abstract=False):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        test.addCleanup(self.sock.close)
        if abstract:
            name = "flocker-test-%s" % (uuid.uuid4().hex,)
            self.sock.bind("\0" + name)
            self.environ = {"NOTIFY_SOCKET": "@" + name}
        else:
            # AF_UNIX paths are limited to 107 bytes; trial's may be longer.
            directory = tempfile.mkdtemp(prefix="sdn", dir="/tmp")
            test.addCleanup(shutil.rmtree, directory)
            path = os.path.join(directory, "notify")
            self.sock.bind(path)
            self.environ = {"NOTIFY_SOCKET": path}
        self.sock.settimeout(5)

    def received(self):
        return self.sock.recv(65536)

    def nothing_more(self):
        self.sock.setblocking(False)
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return True
        raise AssertionError("unexpected datagram %r" % (data,))


class CapturedLog:
    def __init__(self, test):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        test.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def formats(self):
        return [e.get("log_format", "") for e in self.events]


class NotifyTestsMixin:
    abstract = False

    def setUp(self):
        self.systemd = FakeSystemd(self, abstract=self.abstract)
        self.notifier = SystemdNotifier(self.systemd.environ)

    def test_ready(self):
        self.assertTrue(self.notifier.enabled)
        self.assertTrue(self.notifier.ready())
        self.assertEqual(self.systemd.received(), b"READY=1\n")
        self.assertTrue(self.systemd.nothing_more())

    def test_ready_with_status(self):
        self.assertTrue(self.notifier.ready("listening on port 4522"))
        self.assertEqual(self.systemd.received(),
                         b"READY=1\nSTATUS=listening on port 4522\n")

    def test_status(self):
        self.assertTrue(self.notifier.status("converging: 2 changes"))
        self.assertEqual(self.systemd.received(), b"STATUS=converging: 2 changes\n")

    def test_status_one_line(self):
        """A newline in a status cannot smuggle in another assignment."""
        self.assertTrue(self.notifier.status("bad\nREADY=1"))
        self.assertEqual(self.systemd.received(), b"STATUS=bad READY=1\n")

    def test_stopping(self):
        self.assertTrue(self.notifier.stopping())
        self.assertEqual(self.systemd.received(), b"STOPPING=1\n")
        self.assertTrue(self.notifier.stopping("shutting down"))
        self.assertEqual(self.systemd.received(), b"STOPPING=1\nSTATUS=shutting down\n")

    def test_one_datagram_per_notification(self):
        self.notifier.status("one")
        self.notifier.ready()
        self.assertEqual(self.systemd.received(), b"STATUS=one\n")
        self.assertEqual(self.systemd.received(), b"READY=1\n")

    def test_utf8(self):
        self.notifier.status("volume café")
        self.assertEqual(self.systemd.received(), "STATUS=volume café\n".encode("utf-8"))


class PathSocketTests(NotifyTestsMixin, TestCase):
    abstract = False

    def test_nobody_listening(self):
        """A socket gone away is logged, not raised."""
        log = CapturedLog(self)
        self.systemd.sock.close()
        os.unlink(self.systemd.environ["NOTIFY_SOCKET"])
        self.assertFalse(self.notifier.ready())
        self.assertTrue(any("could not notify systemd" in f for f in log.formats()),
                        log.formats())


class AbstractSocketTests(NotifyTestsMixin, TestCase):
    abstract = True


class DisabledTests(TestCase):
    def test_unset(self):
        notifier = SystemdNotifier({})
        self.assertFalse(notifier.enabled)
        self.assertFalse(notifier.ready())
        self.assertFalse(notifier.stopping())

    def test_empty(self):
        self.assertFalse(SystemdNotifier({"NOTIFY_SOCKET": ""}).ready())

    def test_relative_path_ignored(self):
        log = CapturedLog(self)
        notifier = SystemdNotifier({"NOTIFY_SOCKET": "notify"})
        self.assertFalse(notifier.enabled)
        self.assertFalse(notifier.ready())
        self.assertTrue(any("ignoring NOTIFY_SOCKET" in f for f in log.formats()))

    def test_environment_read_at_send(self):
        """By default the process environment is used, as systemd sets it."""
        systemd = FakeSystemd(self)
        environ = dict(os.environ)
        environ.pop("NOTIFY_SOCKET", None)
        self.patch(os, "environ", environ)
        notifier = SystemdNotifier()
        self.assertFalse(notifier.ready())
        environ["NOTIFY_SOCKET"] = systemd.environ["NOTIFY_SOCKET"]
        self.assertTrue(notifier.ready())
        self.assertEqual(systemd.received(), b"READY=1\n")


class AddressTests(TestCase):
    def test_forms(self):
        self.assertEqual(notify_socket_address("/run/systemd/notify"),
                         "/run/systemd/notify")
        self.assertEqual(notify_socket_address("@/org/systemd/x"), b"\0/org/systemd/x")
        self.assertIsNone(notify_socket_address(None))
        self.assertIsNone(notify_socket_address(""))
        self.assertIsNone(notify_socket_address("vsock:2:1234"))
