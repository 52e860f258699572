"""
Run a command asynchronously and collect its output.

Every external command (zfs, iptables-restore, ...) goes through here: an
argument list (never a shell), output gathered without blocking the
reactor, and a failure that carries the command's own stderr so the user
sees what the tool said.
"""

from __future__ import annotations

import os
from typing import List, Mapping, Optional, Sequence, cast

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone
from twisted.internet.interfaces import IReactorProcess, IReactorTime
from twisted.internet.protocol import ProcessProtocol

__all__ = ["ProcessResult", "CommandFailed", "CommandTimedOut", "run_process"]

# Bound what we keep of a command's output: enough for any listing we parse,
# never unbounded memory if a tool goes wild.
MAX_OUTPUT = 64 * 1024 * 1024


@frozen
class ProcessResult:
    argv: tuple
    status: Optional[int]
    signal: Optional[int]
    stdout: bytes
    stderr: bytes


class CommandFailed(Exception):
    """A command exited non-zero or was killed; ``stderr`` says why."""

    def __init__(self, result: ProcessResult):
        self.result = result
        super().__init__(result)

    @property
    def stderr_text(self) -> str:
        return self.result.stderr.decode("utf-8", "replace").strip()

    def __str__(self) -> str:
        how = (
            "exit status %s" % (self.result.status,)
            if self.result.signal is None
            else "signal %s" % (self.result.signal,)
        )
        detail = self.stderr_text or self.result.stdout.decode(
            "utf-8", "replace").strip()
        text = "%s failed (%s)" % (" ".join(self.result.argv), how)
        if detail:
            text += ": " + detail
        return text


class CommandTimedOut(CommandFailed):
    """A command did not finish in time and was killed."""

    def __init__(self, argv, timeout: float):
        self.timeout = timeout
        super().__init__(ProcessResult(
            argv=tuple(argv), status=None, signal=9, stdout=b"",
            stderr=b"did not finish within %g s and was killed" % (timeout,)))

    def __str__(self) -> str:
        return "%s did not finish within %g s and was killed" % (
            " ".join(self.result.argv), self.timeout)


class _Collector(ProcessProtocol):
    def __init__(self, argv, stdin: Optional[bytes],
                 done: "Deferred[ProcessResult]"):
        self.argv = tuple(argv)
        self.stdin = stdin
        self.done = done
        self.out: List[bytes] = []
        self.err: List[bytes] = []
        self.size = 0

    def connectionMade(self):
        transport = self.transport
        assert transport is not None
        if self.stdin is not None:
            transport.write(self.stdin)
        transport.closeStdin()

    def _keep(self, chunks: List[bytes], data: bytes) -> None:
        if self.size < MAX_OUTPUT:
            chunks.append(data)
            self.size += len(data)

    def outReceived(self, data):
        self._keep(self.out, data)

    def errReceived(self, data):
        self._keep(self.err, data)

    def processEnded(self, reason):
        value = reason.value
        result = ProcessResult(
            argv=self.argv,
            status=getattr(value, "exitCode", None),
            signal=getattr(value, "signal", None),
            stdout=b"".join(self.out),
            stderr=b"".join(self.err),
        )
        if self.done.called:
            return  # timed out or cancelled: the caller was told already
        if reason.check(ProcessDone):
            self.done.callback(result)
        else:
            self.done.errback(CommandFailed(result))


def run_process(
    reactor: IReactorProcess,
    argv: Sequence[str],
    stdin: Optional[bytes] = None,
    env: Optional[Mapping[str, str]] = None,
    timeout: Optional[float] = None,
    clock: Optional[IReactorTime] = None,
) -> "Deferred[ProcessResult]":
    """
    Run ``argv`` (looked up on PATH) and fire with its ``ProcessResult``, or
    fail with ``CommandFailed`` if it exits non-zero.  Cancelling the
    Deferred kills the process.  With ``timeout``, a command still running
    after that many seconds is killed and fails with ``CommandTimedOut``
    (also when the kill cannot take effect, as for a process stuck on a
    hung file system).  The timeout runs on ``clock`` (default: ``reactor``).
    """
    argv = [os.fsdecode(a) for a in argv]
    executable = _which(argv[0])
    if env is None:
        env = _default_env()
    protocol = None

    def cancel(d):
        if protocol is not None and protocol.transport is not None:
            try:
                protocol.transport.signalProcess("KILL")
            except Exception:
                pass

    done: "Deferred[ProcessResult]" = Deferred(cancel)
    protocol = _Collector(argv, stdin, done)
    reactor.spawnProcess(protocol, executable, argv, env=dict(env))
    if timeout is not None:
        def timed_out(result, seconds):
            raise CommandTimedOut(argv, seconds)
        # Without a clock of its own, the reactor is the clock.
        timer = clock if clock is not None else cast(IReactorTime, reactor)
        done.addTimeout(timeout, timer, onTimeoutCancel=timed_out)
    return done


_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _default_env():
    env = {"PATH": os.environ.get("PATH", _SYSTEM_PATH) + ":" + _SYSTEM_PATH,
           "LC_ALL": "C"}
    return env


def _which(name: str) -> str:
    if "/" in name:
        return name
    path = os.environ.get("PATH", "") + ":" + _SYSTEM_PATH
    for directory in path.split(":"):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    # Let spawnProcess fail with the name, reported as a failed command.
    return name
