"""
An SSH command server on loopback with a small test command set, plus the
producers and consumers the flow-control tests drive.
"""

from __future__ import annotations

import json
import os

from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from flocker_async import ssh
from flocker_async.ssh import OPERATOR, PEER, Command, CommandError

VERSION = b"0.1.0-test\n"
CHUNK = 64 * 1024


@implementer(IPushProducer)
class ZeroProducer:
    """
    Writes ``total`` bytes (a repeating pattern) whenever not paused; an
    ``IBodyProducer`` for the client and an ``IPushProducer`` for the server.
    ``on_write`` is called after each write so tests can check invariants
    while the stream is in flight.
    """

    def __init__(self, total, chunk=CHUNK, on_write=None):
        self.total = total
        self.chunk = chunk
        self.sent = 0
        self.paused = False
        self.pauses = 0
        self.stopped = False
        self.consumer = None
        self.on_write = on_write
        self.done = Deferred()

    def startProducing(self, consumer):
        self.consumer = consumer
        self._produce()
        return self.done

    def _produce(self):
        while not self.paused and not self.stopped and self.sent < self.total:
            size = min(self.chunk, self.total - self.sent)
            data = pattern(self.sent, size)
            self.sent += size
            self.consumer.write(data)
            if self.on_write is not None:
                self.on_write()
        if self.sent >= self.total and not self.done.called:
            self.done.callback(None)

    def pauseProducing(self):
        if not self.paused:
            self.pauses += 1
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        self._produce()

    def stopProducing(self):
        self.stopped = True


def pattern(offset, size):
    """Bytes whose content depends on their position, so reordering shows."""
    block = bytes(range(251)) * (size // 251 + 2)
    start = offset % 251
    return block[start:start + size]


class SlowConsumer:
    """
    Takes one write, then pauses its producer until ``resume`` (or, with
    ``auto_resume``, ``resume_delay`` seconds later).  ``check`` runs on every write.
    """

    def __init__(self, clock=global_reactor, auto_resume=True, check=None,
                 resume_delay=0):
        self.clock = clock
        self.resume_delay = resume_delay
        self.auto_resume = auto_resume
        self.check = check
        self.producer = None
        self.received = 0
        self.writes = 0
        self.offset_errors = 0
        self._pending_resume = None

    def registerProducer(self, producer, streaming):
        assert streaming
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None
        if self._pending_resume is not None and self._pending_resume.active():
            self._pending_resume.cancel()

    def write(self, data):
        if data != pattern(self.received, len(data)):
            self.offset_errors += 1
        self.received += len(data)
        self.writes += 1
        if self.check is not None:
            self.check()
        if self.producer is not None:
            self.producer.pauseProducing()
            if self.auto_resume:
                self._pending_resume = self.clock.callLater(
                    self.resume_delay, self.resume)

    def resume(self):
        if self.producer is not None:
            self.producer.resumeProducing()


class CommandLog:
    """What the test commands saw, for assertions."""

    def __init__(self):
        self.calls = []
        self.sessions = []
        self.started = {}
        self.cancelled = []
        self.consumers = []
        self.producers = []
        self.stdin_consumer_factory = SlowConsumer
        self.stdout_check = None

    def wait_started(self, name):
        d = self.started.get(name)
        if d is None:
            d = self.started[name] = Deferred()
        return d

    def note(self, name, role, args, session):
        self.calls.append((name, role, list(args)))
        self.sessions.append(session)
        d = self.started.get(name)
        if d is None:
            self.started[name] = succeed(session)
        elif not d.called:
            d.callback(session)


def make_commands(log: CommandLog):
    """The test command set: names, roles and behaviour the tests rely on."""

    def version(role, args, session):
        log.note("version", role, args, session)
        session.write(VERSION)
        return 0

    def state(role, args, session):
        log.note("state", role, args, session)
        session.write(json.dumps({"role": role}).encode("ascii") + b"\n")

    def echo(role, args, session):
        log.note("echo", role, args, session)
        session.write(json.dumps({"role": role, "args": args}).encode("utf-8"))
        return 0

    def exit_with(role, args, session):
        log.note("exit", role, args, session)
        session.write_stderr("exiting %s\n" % (args[0],))
        return int(args[0])

    def fail(role, args, session):
        log.note("fail", role, args, session)
        raise CommandError("no such volume: %s" % (args[0],), 3)

    def crash(role, args, session):
        log.note("crash", role, args, session)
        raise ZeroDivisionError("divided by zero")

    def hang(role, args, session):
        log.note("hang", role, args, session)
        d = Deferred(lambda d: log.cancelled.append("hang"))
        return d

    def receive(role, args, session):
        log.note("receive", role, args, session)
        consumer = log.stdin_consumer_factory()
        log.consumers.append(consumer)

        def received(count):
            session.write(b"%d\n" % (count,))
            return 0
        return session.stream_stdin(consumer).addCallback(received)

    def upper(role, args, session):
        log.note("upper", role, args, session)
        return session.read_stdin(int(args[0]) if args else 1024 * 1024).addCallback(
            lambda data: session.write(data.upper()))

    def produce(role, args, session):
        log.note("produce", role, args, session)
        producer = ZeroProducer(int(args[0]), on_write=log.stdout_check)
        log.producers.append(producer)
        session.registerProducer(producer, True)

        def produced(_):
            session.unregisterProducer()
            return 0
        return producer.startProducing(session).addCallback(produced)

    both = {OPERATOR, PEER}
    return {
        "version": Command(both, version),
        "state": Command({OPERATOR}, state),
        "echo": Command(both, echo),
        "exit": Command(both, exit_with),
        "fail": Command(both, fail),
        "crash": Command(both, crash),
        "hang": Command(both, hang),
        "receive": Command({PEER}, receive),
        "upper": Command({OPERATOR}, upper),
        "produce": Command({OPERATOR}, produce),
    }


class SSHServerFixture:
    """
    Keys, a listening command server and a trusting known_hosts file in
    ``directory``; ``client(...)`` makes a client with the operator key.
    """

    def __init__(self, testcase, directory, window_size=ssh.DEFAULT_WINDOW_SIZE,
                 max_packet=ssh.DEFAULT_MAX_PACKET, reactor=global_reactor):
        self.testcase = testcase
        self.reactor = reactor
        self.directory = directory
        self.window_size = window_size
        self.max_packet = max_packet
        self.host_key = ssh.load_or_create_key(os.path.join(directory, "host_key"))
        self.operator_key = ssh.load_or_create_key(os.path.join(directory, "operator"))
        self.peer_key = ssh.load_or_create_key(os.path.join(directory, "peer"))
        self.stranger_key = ssh.load_or_create_key(os.path.join(directory, "stranger"))
        self.known_hosts = os.path.join(directory, "known_hosts")
        self.authorizer = ssh.KeyAuthorizer({OPERATOR: [self.operator_key],
                                             PEER: [self.peer_key]})
        self.log = CommandLog()
        self.factory = ssh.make_ssh_factory(
            reactor, self.host_key, self.authorizer, make_commands(self.log),
            window_size=window_size, max_packet=max_packet)
        self.port = None

    async def start(self):
        listening = await TCP4ServerEndpoint(
            self.reactor, 0, interface="127.0.0.1").listen(self.factory)
        self.testcase.addCleanup(listening.stopListening)
        self.port = listening.getHost().port
        ssh.add_known_host(self.known_hosts, "127.0.0.1", self.port, self.host_key)
        return self

    def client(self, key=None, **kwargs):
        kwargs.setdefault("window_size", self.window_size)
        kwargs.setdefault("max_packet", self.max_packet)
        return ssh.SSHClient(self.reactor, key or self.operator_key, self.known_hosts,
                             **kwargs)

    async def connect(self, key=None, **kwargs):
        connection = await self.client(key, **kwargs).connect("127.0.0.1", self.port)
        self.testcase.addCleanup(lambda: connection.close(abort=True))
        return connection

    async def run(self, argv, key=None, client_kwargs=None, **kwargs):
        connection = await self.connect(key, **(client_kwargs or {}))
        try:
            return await connection.run(argv, **kwargs)
        finally:
            await connection.close()
