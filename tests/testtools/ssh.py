"""
SSH test tools: an in-memory TCP network on a fake clock (``MemoryTCPNetwork``)
that conch servers and clients, and the library code above them, use as
their reactor; an SSH command server with a small test command set; and
the producers and consumers the flow-control tests drive.

In-memory use (unit tests: no sockets, no wall clock)::

    net = MemoryTCPNetwork()
    server = SSHServerFixture(self, directory, reactor=net).listen()
    result = net.run(server.run(["version"]))       # bytes pumped, time simulated

Several nodes, each with its own address::

    net.listen("10.0.0.1", 4522, factory_of_node_1)
    net.listen("10.0.0.2", 4522, factory_of_node_2)
    client = SSHClient(net.host("10.0.0.9"), operator_key, known_hosts)
    net.run(client.run("10.0.0.1", 4522, ["state"]))
    net.stall("10.0.0.2")      # partitioned: bytes held, connects time out
    net.cut("10.0.0.2")        # its connections drop, both ends told
"""

from __future__ import annotations

import json
import os
from inspect import iscoroutine

from twisted.internet import reactor as global_reactor
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import (
    ConnectionAborted, ConnectionDone, ConnectionLost, ConnectionRefusedError,
    DNSLookupError, NoProtocol, TimeoutError, UserError)
from twisted.internet.interfaces import (
    IConnector, IHostnameResolver, IHostResolution, IListeningPort,
    IPushProducer, IReactorCore, IReactorPluggableNameResolver, IReactorTCP,
    IReactorTime, ITCPTransport)
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport
from zope.interface import implementer

from flocker_async import ssh
from flocker_async.ssh import OPERATOR, PEER, Command, CommandError

VERSION = b"0.1.0-test\n"
CHUNK = 64 * 1024


# The in-memory network.

class NetworkHung(AssertionError):
    """``run`` gave up: the Deferred did not fire within the simulated time
    allowed, or nothing was left that could make it fire."""


def _address(host: str, port: int):
    if isIPv6Address(host):
        return IPv6Address("TCP", host, port)
    return IPv4Address("TCP", host, port)


@implementer(ITCPTransport)
class _MemoryTransport(FakeTransport):
    """
    One end of an in-memory connection (iosim's ``FakeTransport``), plus
    what a TCP transport does that ``FakeTransport`` does not: an abort
    that drops unsent bytes, and reading paused by ``pauseProducing``.
    """

    aborted = False
    reading_paused = False
    tcp_keepalive = False

    def setTcpKeepAlive(self, enabled):
        self.tcp_keepalive = bool(enabled)

    def getTcpKeepAlive(self):
        return self.tcp_keepalive

    def abortConnection(self):
        self.stream = []
        self.disconnecting = True
        self.aborted = True

    def pauseProducing(self):
        self.reading_paused = True

    def resumeProducing(self):
        self.reading_paused = False

    def logPrefix(self):
        return "memory-tcp"


class _Link:
    """An established connection between a client and a server protocol."""

    def __init__(self, network, connector, client_protocol, server_protocol,
                 client_address, server_address):
        self.network = network
        self.connector = connector
        self.client_address = client_address
        self.server_address = server_address
        self.client_io = _MemoryTransport(client_protocol, isServer=False,
                                          hostAddress=client_address,
                                          peerAddress=server_address)
        self.server_io = _MemoryTransport(server_protocol, isServer=True,
                                          hostAddress=server_address,
                                          peerAddress=client_address)
        self.closed = False

    @property
    def hosts(self):
        return {self.client_address.host, self.server_address.host}

    def start(self):
        self.server_io.protocol.makeConnection(self.server_io)
        self.client_io.protocol.makeConnection(self.client_io)

    def pump(self) -> bool:
        """Move what each side has written to the other; True if anything happened."""
        if self.closed:
            return False
        if self.client_io.aborted or self.server_io.aborted:
            self.close(
                ConnectionAborted() if self.client_io.aborted else ConnectionLost(),
                ConnectionAborted() if self.server_io.aborted else ConnectionLost())
            return True
        if self.network.is_stalled(self.hosts):
            return False
        moved = False
        for source, target in ((self.client_io, self.server_io),
                               (self.server_io, self.client_io)):
            # A registered pull producer is asked for more at every turn.
            source._checkProducer()
            if target.reading_paused or not source.stream:
                continue
            data = source.getOutBuffer()
            if data and not self.closed:
                target.bufferReceived(data)
                moved = True
        if moved or self.closed:
            return True
        if self.client_io.disconnecting or self.server_io.disconnecting:
            # Everything written before the close has been delivered.
            self.close(ConnectionDone(), ConnectionDone())
            return True
        return False

    def close(self, client_reason, server_reason):
        if self.closed:
            return
        self.closed = True
        self.network._links.remove(self)
        for io, reason in ((self.server_io, server_reason),
                           (self.client_io, client_reason)):
            io.stream = []
            io.disconnecting = io.disconnected = True
            io.protocol.connectionLost(Failure(reason))
        self.connector._connection_lost(Failure(client_reason))


@implementer(IConnector)
class _MemoryConnector:
    """A ``connectTCP`` attempt: connects on the next turn, or fails as TCP would."""

    def __init__(self, network, source, host, port, factory, timeout):
        self._network = network
        self._source = source
        self._host = host
        self._port = port
        self.factory = factory
        self._timeout = timeout
        self.state = "disconnected"
        self.link = None
        self._attempt_call = None
        self._timeout_call = None

    def getDestination(self):
        return _address(self._host, self._port)

    def connect(self):
        if self.state != "disconnected":
            raise RuntimeError("already connecting or connected")
        self.state = "connecting"
        self.factory.doStart()
        self.factory.startedConnecting(self)
        self._attempt_call = self._network.callLater(0, self._attempt)
        if self._timeout:
            self._timeout_call = self._network.callLater(self._timeout, self._timed_out)

    def _attempt(self):
        self._attempt_call = None
        if self.state != "connecting":
            return
        network = self._network
        if network.is_stalled({self._source, self._host}):
            network._waiting.append(self)  # SYNs dropped: retried on heal
            return
        listener = network._listener_for(self._host, self._port)
        if listener is None:
            return self._failed(ConnectionRefusedError(
                "nothing listens at %s:%d" % (self._host, self._port)))
        client_address = _address(self._source, network._ephemeral_port())
        server_address = _address(self._host, self._port)
        server_protocol = listener.factory.buildProtocol(client_address)
        if server_protocol is None:
            return self._failed(ConnectionRefusedError("the server refused"))
        client_protocol = self.factory.buildProtocol(server_address)
        if client_protocol is None:
            return self._failed(NoProtocol())
        self._stop_timer()
        self.state = "connected"
        self.link = _Link(network, self, client_protocol, server_protocol,
                          client_address, server_address)
        network._links.append(self.link)
        self.link.start()

    def _timed_out(self):
        self._timeout_call = None
        if self.state == "connecting":
            self._failed(TimeoutError("connecting to %s:%d" % (self._host, self._port)))

    def _stop_timer(self):
        for call in (self._attempt_call, self._timeout_call):
            if call is not None and call.active():
                call.cancel()
        self._attempt_call = self._timeout_call = None
        if self in self._network._waiting:
            self._network._waiting.remove(self)

    def _failed(self, reason):
        self._stop_timer()
        self.state = "disconnected"
        self.factory.clientConnectionFailed(self, Failure(reason))
        self.factory.doStop()

    def _connection_lost(self, reason):
        self.state = "disconnected"
        self.link = None
        lost = getattr(self.factory, "clientConnectionLost", None)
        if lost is not None:
            lost(self, reason)
        self.factory.doStop()

    def stopConnecting(self):
        if self.state != "connecting":
            raise RuntimeError("not connecting")
        self._failed(UserError())

    def disconnect(self):
        if self.state == "connecting":
            self.stopConnecting()
        elif self.link is not None:
            self.link.client_io.loseConnection()


@implementer(IListeningPort)
class _MemoryPort:
    def __init__(self, network, host, port, factory):
        self._network = network
        self.host = host
        self.port = port
        self.factory = factory
        self.listening = False

    def startListening(self):
        key = (self.host, self.port)
        if key in self._network._listeners:
            raise RuntimeError("address in use: %s:%d" % key)
        self._network._listeners[key] = self
        self.listening = True
        self.factory.doStart()

    def stopListening(self):
        if self.listening:
            self.listening = False
            del self._network._listeners[(self.host, self.port)]
            self.factory.doStop()
        return succeed(None)

    def getHost(self):
        return _address(self.host, self.port)


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name):
        self.name = name

    def cancel(self):
        pass


@implementer(IHostnameResolver)
class _NetworkResolver:
    """Addresses resolve to themselves; names through ``add_name``."""

    def __init__(self, network):
        self._network = network

    def resolveHostName(self, resolutionReceiver, hostName, portNumber=0,
                        addressTypes=None, transportSemantics="TCP"):
        resolution = _Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        address = self._network.address_of(hostName)
        if address is not None:
            resolutionReceiver.addressResolved(_address(address, portNumber))
        resolutionReceiver.resolutionComplete()
        return resolution


@implementer(IReactorTime, IReactorTCP, IReactorCore, IReactorPluggableNameResolver)
class MemoryTCPNetwork(MemoryReactorClock):
    """
    A fake clock and reactor whose TCP connections are made in memory
    between the factories that ``listen`` (or ``listenTCP``) at an address.

    ``connectTCP`` to an address nobody listens on is refused; connections
    complete on the next turn, like real ones.  Bytes move only when
    ``pump`` (or ``run``/``wait``) is called, and time moves only with
    ``advance``/``run``/``wait``, so a test is deterministic.

    Connections made through the network itself come from
    ``default_source``; ``host(address)`` gives a reactor for one node,
    whose connections come from, and whose ``listenTCP`` binds to, that
    address.
    """

    def __init__(self, default_source: str = "127.0.0.1"):
        MemoryReactorClock.__init__(self)
        self.default_source = default_source
        self.nameResolver = _NetworkResolver(self)
        self._names = {}
        self._listeners = {}
        self._links = []
        self._waiting = []
        self._stalled = set()
        self._next_port = 40000

    # Addresses.

    def add_name(self, name: str, address: str) -> None:
        """Make ``name`` resolve to ``address``."""
        self._names[name] = address

    def address_of(self, name: str):
        if isIPAddress(name) or isIPv6Address(name):
            return name
        return self._names.get(name)

    def resolve(self, name, timeout=(1, 3, 11, 45)):
        address = self.address_of(name)
        if address is None:
            return fail(DNSLookupError(name))
        return succeed(address)

    def host(self, address: str) -> "HostReactor":
        """The reactor for a node at ``address`` (same clock, same network)."""
        return HostReactor(self, address)

    def _ephemeral_port(self):
        self._next_port += 1
        return self._next_port

    # Listening and connecting.

    def listen(self, host: str, port: int, factory) -> _MemoryPort:
        """Serve ``factory`` at ``host``:``port`` ("0.0.0.0": every address)."""
        if port == 0:
            port = self._ephemeral_port()
        listening = _MemoryPort(self, host, port, factory)
        listening.startListening()
        return listening

    def listenTCP(self, port, factory, backlog=50, interface=""):
        return self.listen(interface or "0.0.0.0", port, factory)

    def connectTCP(self, host, port, factory, timeout=30, bindAddress=None):
        return self._connect(bindAddress[0] if bindAddress else self.default_source,
                             host, port, factory, timeout)

    def _connect(self, source, host, port, factory, timeout):
        connector = _MemoryConnector(self, source, host, port, factory, timeout)
        connector.connect()
        return connector

    def _listener_for(self, host, port):
        return self._listeners.get((host, port)) or self._listeners.get(("0.0.0.0", port))

    @property
    def listeners(self):
        """The addresses listened on, as sorted ``(host, port)`` pairs."""
        return sorted(self._listeners)

    @property
    def connections(self):
        """The open connections as ``(client address, server address)`` pairs."""
        return [(link.client_address, link.server_address) for link in self._links]

    def server_protocols(self, host=None, port=None):
        """The server-side protocols of the open connections (to ``host``:``port``
        if given), e.g. an SSH server's transports, to inspect what they hold."""
        return [link.server_io.protocol for link in self._links
                if host in (None, link.server_address.host)
                and port in (None, link.server_address.port)]

    # Faults.

    def is_stalled(self, hosts) -> bool:
        return bool(self._stalled.intersection(hosts))

    def stall(self, host: str) -> None:
        """
        ``host`` stops answering (powered off, or partitioned away): bytes
        to and from it are held, and connections to or from it time out.
        """
        self._stalled.add(host)

    def heal(self, host: str) -> None:
        """``host`` answers again; held bytes and connection attempts go through."""
        self._stalled.discard(host)
        waiting, self._waiting = self._waiting, []
        for connector in waiting:
            connector._attempt_call = self.callLater(0, connector._attempt)

    def cut(self, host: str) -> None:
        """Every connection to or from ``host`` drops now; both ends see it lost."""
        for link in list(self._links):
            if host in link.hosts:
                link.close(ConnectionLost("cut"), ConnectionLost("cut"))

    # Driving.

    def pump(self, timings=()) -> bool:
        """
        Move bytes and run what is due until nothing more happens; True if
        anything moved.  (``timings``, as ``Clock.pump``, advances first.)
        """
        for amount in timings:
            self.advance(amount)
        moved = False
        for _ in range(1000000):
            self.advance(0)
            if not any([link.pump() for link in list(self._links)]):
                if not any(call.getTime() <= self.seconds()
                           for call in self.getDelayedCalls()):
                    return moved
            moved = True
        raise NetworkHung("the network is still busy after a million rounds")

    def _step_towards(self, target: float) -> None:
        """Advance to the next delayed call, or to ``target`` if sooner."""
        upcoming = [call.getTime() for call in self.getDelayedCalls()]
        when = min(upcoming + [target])
        self.advance(max(0.0, when - self.seconds()))

    def wait(self, seconds: float) -> None:
        """Let ``seconds`` of simulated time pass, bytes flowing throughout."""
        target = self.seconds() + seconds
        self.pump()
        while self.seconds() < target:
            self._step_towards(target)
            self.pump()

    def run(self, d, limit: float = 600.0):
        """
        Drive ``d`` (a Deferred or a coroutine) to completion: pump bytes,
        then advance the clock to the next scheduled call, and again.  Only
        calls scheduled in between can change anything, so this is what
        small steps would give, without the steps.  Returns the result or
        raises the failure; raises ``NetworkHung`` (after cancelling ``d``)
        if ``limit`` simulated seconds pass, or nothing is left to happen.
        """
        if iscoroutine(d):
            d = Deferred.fromCoroutine(d)
        outcome = []
        d.addBoth(outcome.append)
        deadline = self.seconds() + limit
        self.pump()
        while not outcome:
            if self.seconds() >= deadline or not self.getDelayedCalls():
                why = ("after %g s of simulated time" % (limit,)
                       if self.getDelayedCalls() else "and nothing is scheduled")
                d.cancel()
                self.pump()
                raise NetworkHung("the Deferred has not fired " + why)
            self._step_towards(deadline)
            self.pump()
        result = outcome[0]
        if isinstance(result, Failure):
            result.raiseException()
        return result


@implementer(IReactorTime, IReactorTCP, IReactorCore, IReactorPluggableNameResolver)
class HostReactor:
    """
    One node's view of a ``MemoryTCPNetwork``: the same clock and network,
    with connections made from ``address`` and ``listenTCP`` bound to it.
    """

    def __init__(self, network: MemoryTCPNetwork, address: str):
        self.network = network
        self.address = address

    @property
    def nameResolver(self):
        return self.network.nameResolver

    def installNameResolver(self, resolver):
        return self.network.installNameResolver(resolver)

    def connectTCP(self, host, port, factory, timeout=30, bindAddress=None):
        source = bindAddress[0] if bindAddress else self.address
        return self.network._connect(source, host, port, factory, timeout)

    def listenTCP(self, port, factory, backlog=50, interface=""):
        return self.network.listen(interface or self.address, port, factory)

    def __getattr__(self, name):
        # callLater, seconds, getDelayedCalls, resolve, ... are the network's.
        return getattr(self.network, name)


def forbid_global_reactor(testcase) -> None:
    """Fail ``testcase`` if it leaves anything scheduled on the global reactor."""
    before = set(global_reactor.getDelayedCalls())

    def check():
        added = [call for call in global_reactor.getDelayedCalls()
                 if call not in before and call.active()]
        for call in added:
            call.cancel()
        testcase.assertEqual(added, [], "scheduled on the global reactor")
    testcase.addCleanup(check)


# Producers and consumers for the flow-control tests.

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
    ``auto_resume``, ``resume_delay`` seconds later on ``clock``).
    ``check`` runs on every write.
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


# The test command server.

class CommandLog:
    """What the test commands saw, for assertions."""

    def __init__(self, clock=global_reactor):
        self.calls = []
        self.sessions = []
        self.started = {}
        self.cancelled = []
        self.consumers = []
        self.producers = []
        self.stdin_consumer_factory = lambda: SlowConsumer(clock=clock)
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
        # As the node's receive: its window widens once it streams stdin.
        "receive": Command({PEER}, receive, large_input=True),
        "upper": Command({OPERATOR}, upper),
        "produce": Command({OPERATOR}, produce),
    }


class SSHServerFixture:
    """
    Keys, a command server and a trusting known_hosts file in ``directory``;
    ``client(...)`` makes a client with the operator key.

    With a ``MemoryTCPNetwork`` as ``reactor``, ``listen()`` serves at
    ``host``:``port`` in memory; with a real reactor, ``await start()``
    listens on loopback TCP (a free port).
    """

    def __init__(self, testcase, directory, window_size=ssh.DEFAULT_WINDOW_SIZE,
                 max_packet=ssh.DEFAULT_MAX_PACKET, reactor=global_reactor,
                 host="127.0.0.1", port=4522, limits=None):
        self.testcase = testcase
        self.reactor = reactor
        self.directory = directory
        self.window_size = window_size
        self.max_packet = max_packet
        self.host = host
        self.port = port
        self.host_key = ssh.load_or_create_key(os.path.join(directory, "host_key"))
        self.operator_key = ssh.load_or_create_key(os.path.join(directory, "operator"))
        self.peer_key = ssh.load_or_create_key(os.path.join(directory, "peer"))
        self.stranger_key = ssh.load_or_create_key(os.path.join(directory, "stranger"))
        self.known_hosts = os.path.join(directory, "known_hosts")
        self.authorizer = ssh.KeyAuthorizer({OPERATOR: [self.operator_key],
                                             PEER: [self.peer_key]})
        self.log = CommandLog(reactor)
        # ``limits``: an ssh.ServerLimits; None keeps the server's defaults.
        extra = {} if limits is None else {"limits": limits}
        self.factory = ssh.make_ssh_factory(
            reactor, self.host_key, self.authorizer, make_commands(self.log),
            window_size=window_size, max_packet=max_packet, **extra)

    def listen(self):
        """Serve in memory (the reactor is a ``MemoryTCPNetwork``)."""
        listening = self.reactor.listen(self.host, self.port, self.factory)
        self.testcase.addCleanup(listening.stopListening)
        ssh.add_known_host(self.known_hosts, self.host, self.port, self.host_key)
        return self

    async def start(self):
        """Listen on loopback TCP (a real reactor)."""
        listening = await TCP4ServerEndpoint(
            self.reactor, 0, interface=self.host).listen(self.factory)
        self.testcase.addCleanup(listening.stopListening)
        self.port = listening.getHost().port
        ssh.add_known_host(self.known_hosts, self.host, self.port, self.host_key)
        return self

    def client(self, key=None, **kwargs):
        kwargs.setdefault("window_size", self.window_size)
        kwargs.setdefault("max_packet", self.max_packet)
        return ssh.SSHClient(self.reactor, key or self.operator_key, self.known_hosts,
                             **kwargs)

    async def connect(self, key=None, **kwargs):
        connection = await self.client(key, **kwargs).connect(self.host, self.port)
        if isinstance(self.reactor, (MemoryTCPNetwork, HostReactor)):
            # Not waited for: an in-memory network moves nothing unless pumped.
            self.testcase.addCleanup(lambda: connection.close(abort=True) and None)
        else:
            self.testcase.addCleanup(lambda: connection.close(abort=True))
        return connection

    async def run(self, argv, key=None, client_kwargs=None, **kwargs):
        connection = await self.connect(key, **(client_kwargs or {}))
        try:
            return await connection.run(argv, **kwargs)
        finally:
            await connection.close()
