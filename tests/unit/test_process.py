"""
run_process: output, failures carrying stderr, and the timeout that keeps a
stuck command (a zfs on a hung zfs-fuse) from holding a change for ever.

The processes are real; the timeouts run on a fake clock, so no test waits
for time to pass, only for a process to exit.
"""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
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


class _Spawner:
    """The real reactor's spawnProcess, with a Deferred per process that
    fires (with the reason's exception) once it has exited and been reaped."""

    def __init__(self):
        self.ended = []

    def spawnProcess(self, protocol, executable, args, env=None, **kwargs):
        ended = Deferred()
        self.ended.append(ended)
        original = protocol.processEnded

        def process_ended(reason):
            original(reason)
            ended.callback(reason.value)
        protocol.processEnded = process_ended
        return reactor.spawnProcess(protocol, executable, args, env=env, **kwargs)


class RunProcessTests(TestCase):
    async def test_output(self):
        result = await run_process(reactor, ["sh", "-c", "echo out; echo err >&2"])
        self.assertEqual((result.status, result.stdout, result.stderr),
                         (0, b"out\n", b"err\n"))

    async def test_failure_carries_stderr(self):
        error = await self.assertFailure(
            run_process(reactor, ["sh", "-c", "echo nope >&2; exit 3"]),
            CommandFailed)
        self.assertEqual(error.result.status, 3)
        self.assertIn("exit status 3", str(error))
        self.assertIn("nope", str(error))

    async def test_timeout_kills_and_names_the_command(self):
        """
        A command still running when its timeout (on the injected clock)
        expires fails with CommandTimedOut at once, and is killed.
        """
        marker = "%d.25" % (os.getpid() % 1000 + 100,)  # a unique sleep time
        clock = Clock()
        spawner = _Spawner()
        d = run_process(spawner, ["sleep", marker], timeout=0.3, clock=clock)
        clock.advance(0.2)
        self.assertNoResult(d)
        clock.advance(0.1)
        error = self.failureResultOf(d, CommandTimedOut).value
        self.assertIsInstance(error, CommandFailed)
        self.assertEqual(str(error), "sleep %s did not finish within 0.3 s and "
                                     "was killed" % (marker,))
        reason = await spawner.ended[0]
        self.assertEqual(reason.signal, 9)
        self.assertFalse(_running("sleep\0" + marker))

    async def test_in_time(self):
        """A command that finishes in time succeeds and leaves no timer behind."""
        clock = Clock()
        result = await run_process(reactor, ["true"], timeout=30, clock=clock)
        self.assertEqual(result.status, 0)
        self.assertEqual(clock.getDelayedCalls(), [])
