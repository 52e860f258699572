"""
run_process: output, failures carrying stderr, and the timeout that keeps a
stuck command (a zfs on a hung zfs-fuse) from holding a change for ever.
"""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from flocker_async._process import CommandFailed, CommandTimedOut, run_process


def _running(marker: str) -> bool:
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % (pid,), "rb") as f:
                if marker.encode() in f.read():
                    return True
        except OSError:
            continue
    return False


class RunProcessTests(TestCase):
    @inlineCallbacks
    def test_output(self):
        result = yield run_process(reactor, ["sh", "-c", "echo out; echo err >&2"])
        self.assertEqual((result.status, result.stdout, result.stderr),
                         (0, b"out\n", b"err\n"))

    @inlineCallbacks
    def test_failure_carries_stderr(self):
        error = yield self.assertFailure(
            run_process(reactor, ["sh", "-c", "echo nope >&2; exit 3"]),
            CommandFailed)
        self.assertEqual(error.result.status, 3)
        self.assertIn("exit status 3", str(error))
        self.assertIn("nope", str(error))

    @inlineCallbacks
    def test_timeout_kills_and_names_the_command(self):
        marker = "%d.25" % (os.getpid() % 1000 + 100,)  # a unique sleep time
        started = reactor.seconds()
        error = yield self.assertFailure(
            run_process(reactor, ["sleep", marker], timeout=0.3),
            CommandTimedOut)
        self.assertLess(reactor.seconds() - started, 5)
        self.assertIsInstance(error, CommandFailed)
        self.assertEqual(str(error), "sleep %s did not finish within 0.3 s and "
                                     "was killed" % (marker,))
        yield deferLater(reactor, 0.3, lambda: None)
        self.assertFalse(_running("sleep\0" + marker))

    @inlineCallbacks
    def test_in_time(self):
        result = yield run_process(reactor, ["true"], timeout=30)
        self.assertEqual(result.status, 0)
