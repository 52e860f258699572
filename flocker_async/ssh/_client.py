"""
The SSH client: run one command of a node's command set, with the node's
host key checked against a known_hosts file, timeouts, and streams that
honour backpressure in both directions.

Built on conch's transport, user-auth and connection services rather than
``SSHCommandClientEndpoint``, because that endpoint's connection reopens
the receive window before the protocol has consumed anything and offers no
producer for stdin; here stdout is a push stream whose window follows the
consumer and stdin is written only as fast as the server's window allows.
"""

from __future__ import annotations

import os
import shlex
import signal as signal_module
import struct
from typing import Dict, List, Optional, Sequence, Tuple, cast

from attrs import frozen
from twisted.conch.ssh import connection, keys
from twisted.conch.ssh.channel import SSHChannel
from twisted.conch.ssh.common import NS, getNS
from twisted.conch.ssh.transport import SSHClientTransport
from twisted.conch.ssh.userauth import SSHUserAuthClient
from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import (
    IReactorTCP, IReactorTime, ITCPTransport, ITransport)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath

from ._algorithms import (
    CIPHERS, CLIENT_KEY_EXCHANGES, CLIENT_MACS, COMPRESSIONS, HOST_KEY_ALGORITHMS)
from ._flow import (
    DEFAULT_MAX_PACKET, DEFAULT_WINDOW_SIZE, BytesCollector,
    FlowControlledConnection, InboundStream, OutboundStream, OutputTooLarge)
from ._keys import check_known_host, fingerprint, known_hosts_line

__all__ = [
    "SSHClient",
    "SSHClientConnection",
    "CommandResult",
    "run_command",
    "SSHError",
    "ConnectFailed",
    "SSHTimeout",
    "UnknownHostKey",
    "HostKeyMismatch",
    "AuthenticationRefused",
    "RemoteCommandFailed",
    "OutputTooLarge",
]

_log = Logger(namespace="flocker_async.ssh")

DEFAULT_CONNECT_TIMEOUT = 30.0
DEFAULT_IDLE_TIMEOUT = 300.0
# Output collected in memory when the caller gives no consumer.
DEFAULT_MAX_OUTPUT = 64 * 1024 * 1024
MAX_STDERR = 1024 * 1024
# Under the server's limits (ServerLimits: 10 unauthenticated connections
# per address, 32 connections per key), so that many pushes at once queue
# here rather than being refused there.
DEFAULT_MAX_HANDSHAKES_PER_HOST = 4
DEFAULT_MAX_CONNECTIONS_PER_HOST = 16
_DEFAULT = object()


# Errors: each names the host and says what to do next.

class SSHError(Exception):
    """Something went wrong talking to ``host``:``port``."""

    def __init__(self, host: str, port: int, message: str):
        super().__init__(host, port, message)
        self.host = host
        self.port = port
        self.message = message

    def __str__(self):
        return "%s:%d: %s" % (self.host, self.port, self.message)


class ConnectFailed(SSHError):
    """The TCP connection or the SSH handshake failed."""


class SSHTimeout(SSHError):
    """Nothing happened for ``seconds`` while ``phase`` ("connect"/"idle")."""

    def __init__(self, host, port, phase, seconds, command=None):
        what = ("connecting (TCP, key exchange, authentication)" if phase == "connect"
                else "waiting for %s" % (_show(command),))
        super().__init__(host, port, "timed out after %gs %s" % (seconds, what))
        self.phase = phase
        self.seconds = seconds


class UnknownHostKey(SSHError):
    """The host offered a key the known_hosts file does not mention."""

    def __init__(self, host, port, key, known_hosts_path):
        self.key = key
        self.fingerprint = fingerprint(key)
        self.known_hosts_path = known_hosts_path
        self.line = known_hosts_line(host, port, key)
        super().__init__(host, port, (
            "unknown host key %s %s; if that is the node's key (check with "
            "`ssh-keygen -lf <state dir>/ssh_host_ed25519_key.pub` on the node), "
            "trust it by adding this line to %s:\n%s")
            % (key.sshType().decode("ascii"), self.fingerprint, known_hosts_path,
               self.line))


class HostKeyMismatch(SSHError):
    """The host offered a key that differs from the one known_hosts trusts."""

    def __init__(self, host, port, key, known_hosts_path, lines):
        self.key = key
        self.fingerprint = fingerprint(key)
        self.known_hosts_path = known_hosts_path
        self.lines = tuple(lines)
        self.line = known_hosts_line(host, port, key)
        super().__init__(host, port, (
            "HOST KEY CHANGED: the host offered %s %s, which differs from the key "
            "trusted at %s line %s.  Someone may be intercepting the connection.  "
            "If the node was reinstalled, replace that line with:\n%s")
            % (key.sshType().decode("ascii"), self.fingerprint, known_hosts_path,
               ", ".join(str(n) for n in self.lines), self.line))


class AuthenticationRefused(SSHError):
    """The server accepted none of our keys."""

    def __init__(self, host, port, identity_fingerprint, detail=""):
        self.identity_fingerprint = identity_fingerprint
        super().__init__(host, port, (
            "the server refused our key %s%s; authorize it on the node "
            "(operator keys file, or distribute it as a peer key)")
            % (identity_fingerprint, (" (%s)" % detail) if detail else ""))


@frozen
class CommandResult:
    host: str
    port: int
    argv: tuple
    status: Optional[int]
    signal: Optional[str]
    stdout: Optional[bytes]  # None when a stdout consumer was given
    stderr: bytes

    @property
    def stderr_text(self) -> str:
        return self.stderr.decode("utf-8", "replace").strip()


class RemoteCommandFailed(SSHError):
    """The command exited non-zero, was killed, or never reported its end."""

    def __init__(self, result: CommandResult, reason: Optional[str] = None):
        self.result = result
        self.status = result.status
        self.stderr = result.stderr
        if reason is None:
            if result.signal is not None:
                reason = "killed by signal %s" % (result.signal,)
            else:
                reason = "exit status %s" % (result.status,)
        text = "%s failed (%s)" % (_show(result.argv), reason)
        detail = result.stderr_text
        if detail:
            if len(detail) > 4000:
                detail = "..." + detail[-4000:]
            text += ": " + detail
        super().__init__(result.host, result.port, text)


def _show(argv):
    if not argv:
        return "the command"
    return "`%s`" % (" ".join(shlex.quote(a) for a in argv),)


# Client plumbing.

@frozen
class _Settings:
    reactor: IReactorTCP
    clock: IReactorTime
    identity: keys.Key
    known_hosts_path: str
    username: str
    connect_timeout: Optional[float]
    idle_timeout: Optional[float]
    window_size: int
    max_packet: int
    max_output: int


class _UserAuth(SSHUserAuthClient):
    preferredOrder = [b"publickey"]

    def __init__(self, user, instance, identity):
        SSHUserAuthClient.__init__(self, user, instance)
        self._keys = [identity]

    def getPublicKey(self):
        if not self._keys:
            return None
        self._key = self._keys.pop(0)
        return self._key.public()

    def getPrivateKey(self):
        return succeed(self._key)

    def getPassword(self, prompt=None):
        return None

    def getGenericAnswers(self, name, instruction, prompts):
        return None


class _Connection(FlowControlledConnection):
    def __init__(self, on_started):
        FlowControlledConnection.__init__(self)
        self._on_started = on_started

    def serviceStarted(self):
        FlowControlledConnection.serviceStarted(self)
        self._on_started(self)


class _ClientTransport(SSHClientTransport):
    userauth_class = _UserAuth
    # Modern algorithms only (see _algorithms); the server takes the first
    # of ours it supports.
    supportedCiphers = CIPHERS
    supportedMACs = CLIENT_MACS
    supportedKeyExchanges = CLIENT_KEY_EXCHANGES
    supportedCompressions = COMPRESSIONS
    supportedPublicKeys = HOST_KEY_ALGORITHMS

    def __init__(self, settings: _Settings, host: str, port: int):
        self.settings = settings
        self.host = host
        self.port = port
        self._phase = "key exchange"
        self._failure: Optional[Failure] = None
        self._remote_error: Optional[str] = None
        self.handle: Optional[SSHClientConnection] = None

        def cancel(d):
            _abort(self.transport)
        self.ready: "Deferred[SSHClientConnection]" = Deferred(cancel)

    def verifyHostKey(self, hostKey, fingerprint_md5):
        key = keys.Key.fromString(hostKey)
        path = self.settings.known_hosts_path
        error: SSHError
        try:
            status = check_known_host(path, self.host, self.port, key)
        except Exception as e:
            error = ConnectFailed(self.host, self.port,
                                  "cannot read known hosts file %s: %s" % (path, e))
        else:
            if status.trusted:
                self.host_key = key
                return succeed(True)
            if status.conflicting_lines:
                error = HostKeyMismatch(self.host, self.port, key, path,
                                        status.conflicting_lines)
            else:
                error = UnknownHostKey(self.host, self.port, key, path)
        _log.warn("ssh host key of {host}:{port} refused: {error}", host=self.host,
                  port=self.port, error=error.message.splitlines()[0])
        self._failure = Failure(error)
        return _failed(error)

    def connectionSecure(self):
        self._phase = "authentication"
        conn = _Connection(self._authenticated)
        self.requestService(self.userauth_class(
            self.settings.username.encode("utf-8"), conn, self.settings.identity))

    def _authenticated(self, conn):
        self._phase = "connected"
        self.handle = SSHClientConnection(self, conn)
        if not self.ready.called:
            self.ready.callback(self.handle)

    def receiveError(self, reasonCode, description):
        self._remote_error = description.decode("utf-8", "replace")

    def connectionLost(self, reason=None):
        SSHClientTransport.connectionLost(self, reason)
        if self.handle is not None:
            self.handle._lost(reason)
        if self.ready.called:
            return
        if self._failure is not None:
            failure = self._failure
        elif self._phase == "authentication":
            failure = Failure(AuthenticationRefused(
                self.host, self.port, fingerprint(self.settings.identity),
                self._remote_error or ""))
        else:
            detail = self._remote_error or (reason.getErrorMessage() if reason else "")
            failure = Failure(ConnectFailed(
                self.host, self.port, "connection lost during %s: %s"
                % (self._phase, detail)))
        self.ready.errback(failure)


def _failed(error: Exception) -> "Deferred[bool]":
    d: "Deferred[bool]" = Deferred()
    d.errback(error)
    return d


def _abort(transport: Optional[ITransport]) -> None:
    """Drop a connection at once, unsent bytes and all."""
    if transport is not None:
        # Our transports are TCP ones (or in-memory stand-ins): they abort.
        cast(ITCPTransport, transport).abortConnection()


class _ClientFactory(Factory):
    transport_class = _ClientTransport

    def __init__(self, settings, host, port):
        self.settings = settings
        self.host = host
        self.port = port

    def buildProtocol(self, addr):
        protocol = self.transport_class(self.settings, self.host, self.port)
        protocol.factory = self
        return protocol


class _IdleWatch:
    """Calls ``on_idle`` after ``seconds`` without ``touch``, unless ``waiting_on_us()``."""

    def __init__(self, clock, seconds, on_idle, waiting_on_us):
        self._clock = clock
        self._seconds = seconds
        self._on_idle = on_idle
        self._waiting_on_us = waiting_on_us
        self._last = clock.seconds()
        self._call = clock.callLater(seconds, self._check)

    def touch(self):
        self._last = self._clock.seconds()

    def _check(self):
        now = self._clock.seconds()
        if self._waiting_on_us():
            self._last = now
        remaining = self._last + self._seconds - now
        if remaining > 0:
            self._call = self._clock.callLater(remaining, self._check)
        else:
            self._call = None
            self._on_idle()

    def stop(self):
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


class _CommandChannel(SSHChannel):
    name = b"session"
    manual_window = True

    def __init__(self, handle, argv, stdin, stdin_producer, stdout_consumer,
                 idle_timeout, **kwargs):
        SSHChannel.__init__(self, **kwargs)
        self.handle = handle
        self.argv = tuple(argv)
        self._stdin_bytes = stdin
        self._stdin_producer = stdin_producer
        self._producing = False
        self._eof_wanted = False
        self._eof_sent = False
        self.stdout = InboundStream(self)
        self.stdin = OutboundStream(self)
        self._collector = None
        if stdout_consumer is None:
            self._collector = stdout_consumer = BytesCollector(
                handle._settings.max_output)
        self._stdout_finished = False
        self.stdout.attach(stdout_consumer).addBoth(self._stdout_ended)
        self._stderr: List[bytes] = []
        self._stderr_size = 0
        self.status: Optional[int] = None
        self.signal: Optional[str] = None
        self._error: Optional[Exception] = None
        self._closed = False
        self.result: "Deferred[CommandResult]" = Deferred(
            lambda d: self._abort(CancelledError()))
        self._idle = None
        self._idle_timeout = idle_timeout

    # Setting up.

    def channelOpen(self, specificData):
        settings = self.handle._settings
        if self._idle_timeout:
            self._idle = _IdleWatch(settings.clock, self._idle_timeout, self._timed_out,
                                    lambda: self.stdout.paused)
        command_line = " ".join(shlex.quote(arg) for arg in self.argv)
        assert self.conn is not None
        d = self.conn.sendRequest(self, b"exec", NS(command_line.encode("utf-8")),
                                  wantReply=True)
        d.addCallbacks(self._exec_accepted, self._exec_refused)

    def openFailed(self, reason):
        self._error = SSHError(self.handle.host, self.handle.port,
                               "cannot open a session for %s: %s"
                               % (_show(self.argv), reason.getErrorMessage()
                                  if isinstance(reason, Failure) else reason))
        self._closed = True
        self._stdout_finished = True
        self._maybe_finish()

    def _exec_accepted(self, _):
        self._touch()
        if self._stdin_producer is not None:
            self._producing = True
            self.stdin.registerProducer(self._stdin_producer, True)
            d = self._stdin_producer.startProducing(self.stdin)
            d.addCallbacks(self._stdin_produced, self._stdin_failed)
        else:
            if self._stdin_bytes:
                self.stdin.write(self._stdin_bytes)
            self._eof_wanted = True
            self._maybe_send_eof()

    def _exec_refused(self, reason):
        if self._closed:
            return
        self._abort(SSHError(self.handle.host, self.handle.port,
                             "the server refused to run %s" % (_show(self.argv),)))

    def _stdin_produced(self, _):
        self._producing = False
        self.stdin.unregisterProducer()
        self._eof_wanted = True
        self._maybe_send_eof()

    def _stdin_failed(self, reason):
        self._producing = False
        self.stdin.unregisterProducer()
        if self._closed or self._error is not None:
            return
        self._abort(SSHError(self.handle.host, self.handle.port,
                             "reading stdin for %s failed: %s"
                             % (_show(self.argv), reason.getErrorMessage())))

    def _maybe_send_eof(self):
        if self._eof_wanted and not self._eof_sent and not self.buf and not self.localClosed:
            self._eof_sent = True
            assert self.conn is not None
            self.conn.sendEOF(self)

    # Events from the server.

    def _touch(self):
        if self._idle is not None:
            self._idle.touch()

    def dataReceived(self, data):
        self._touch()
        self.stdout.data_received(data)

    def extReceived(self, dataType, data):
        self._touch()
        if dataType == connection.EXTENDED_DATA_STDERR and self._stderr_size < MAX_STDERR:
            self._stderr.append(data[:MAX_STDERR - self._stderr_size])
            self._stderr_size += len(self._stderr[-1])
        self.stdout.release(len(data))

    def request_exit_status(self, data):
        self._touch()
        self.status = struct.unpack(">L", data[:4])[0]
        return 1

    def request_exit_signal(self, data):
        self._touch()
        raw_name, rest = getNS(data)
        name = raw_name.decode("ascii", "replace")
        signal = name if name.startswith("SIG") else "SIG" + name
        self.signal = signal if hasattr(signal_module, signal) else name
        return 1

    def eofReceived(self):
        self._touch()
        self.stdout.eof_received()

    def stopWriting(self):
        self.stdin.window_closed()

    def addWindowBytes(self, data):
        self._touch()
        SSHChannel.addWindowBytes(self, data)
        self.stdin.window_opened()
        self._maybe_send_eof()

    def closeReceived(self):
        # The server closed the channel (a receive that failed, say) while
        # we may still hold data its shut window will never take: conch's
        # loseConnection would wait for that to drain, forever, and never
        # stop our stdin producer.  Drop it and close now.
        self.buf = b""
        self.extBuf = []
        SSHChannel.closeReceived(self)

    def closed(self):
        self._closed = True
        if self._idle is not None:
            self._idle.stop()
        if self._producing:
            self._producing = False
            producer = self._stdin_producer
            self.stdin.unregisterProducer()
            producer.stopProducing()
        self.stdout.connection_lost()
        self._maybe_finish()

    # Ending.

    def _timed_out(self):
        self._abort(SSHTimeout(self.handle.host, self.handle.port, "idle",
                               self._idle_timeout, self.argv))

    def _abort(self, error):
        """Fail now and close the channel without waiting for the server."""
        if self._error is None:
            self._error = error
        if self._idle is not None:
            self._idle.stop()
        if not self.result.called:
            self.result.errback(self._error)
        if self.conn is not None and not self.localClosed and self.id is not None:
            self.conn.sendClose(self)

    def _stdout_ended(self, result):
        self._stdout_finished = True
        self._maybe_finish()

    def _maybe_finish(self):
        if not (self._closed and self._stdout_finished) or self.result.called:
            return
        if self._idle is not None:
            self._idle.stop()
        result = CommandResult(
            host=self.handle.host, port=self.handle.port, argv=self.argv,
            status=self.status, signal=self.signal,
            stdout=None if self._collector is None else (
                b"" if self._collector.overflowed else self._collector.value()),
            stderr=b"".join(self._stderr))
        if self._error is not None:
            self.result.errback(self._error)
        elif self._collector is not None and self._collector.overflowed:
            self.result.errback(OutputTooLarge(self._collector.limit))
        elif self.status is None and self.signal is None:
            self.result.errback(RemoteCommandFailed(
                result, "the connection closed before the command finished"))
        elif self.status != 0 or self.signal is not None:
            self.result.errback(RemoteCommandFailed(result))
        else:
            self.result.callback(result)


class SSHClientConnection:
    """
    An authenticated connection to one server; ``run`` as many commands on
    it as you like (concurrently too), then ``close``.
    """

    def __init__(self, transport: _ClientTransport, conn: _Connection):
        self._transport = transport
        self._conn = conn
        self._settings = transport.settings
        self.host = transport.host
        self.port = transport.port
        self.host_key = transport.host_key
        self.host_key_fingerprint = fingerprint(transport.host_key)
        self._closed: "Deferred[None]" = Deferred()
        self.connected = True

    def run(self, argv: Sequence[str], stdin: Optional[bytes] = None,
            stdin_producer=None, stdout_consumer=None,
            idle_timeout=_DEFAULT) -> Deferred:
        """
        Run ``argv`` (a list of str, quoted for the server's shlex split).

        ``stdin``: bytes to send, or ``stdin_producer``: an ``IBodyProducer``
        (``startProducing(consumer) -> Deferred``, ``pauseProducing``,
        ``resumeProducing``, ``stopProducing``, e.g. ``FileBodyProducer``)
        paused while the server's window is closed.  Neither: empty stdin.

        ``stdout_consumer``: an ``IConsumer`` receiving stdout; it is given a
        streaming producer to pause, and the server may send only as much as
        the consumer has taken plus one window.  None: stdout is collected
        (up to ``max_output``) into the result.

        Fires with a ``CommandResult`` when the command exits 0; fails with
        ``RemoteCommandFailed`` (status, stderr), ``SSHTimeout`` (no traffic
        for ``idle_timeout`` seconds while not paused by our consumer) or
        another ``SSHError``.  Cancelling closes the channel.
        """
        if isinstance(argv, (str, bytes)):
            raise TypeError("argv must be a list of arguments, not a string")
        if stdin is not None and stdin_producer is not None:
            raise ValueError("give stdin or stdin_producer, not both")
        if idle_timeout is _DEFAULT:
            idle_timeout = self._settings.idle_timeout
        channel = _CommandChannel(
            self, [str(a) for a in argv], stdin, stdin_producer, stdout_consumer,
            idle_timeout, localWindow=self._settings.window_size,
            localMaxPacket=self._settings.max_packet, conn=self._conn)
        if not self.connected:
            channel.openFailed(Failure(ConnectFailed(self.host, self.port,
                                                     "the connection is closed")))
            return channel.result
        self._conn.openChannel(channel)
        return channel.result

    def close(self, abort: bool = False) -> Deferred:
        """Disconnect; the result fires when the TCP connection is gone."""
        if self.connected:
            if abort:
                _abort(self._transport.transport)
            else:
                self._transport.loseConnection()
        return self.when_closed()

    def when_closed(self) -> "Deferred[None]":
        d: "Deferred[None]" = Deferred()
        if self._closed.called:
            d.callback(None)
        else:
            def closed(result):
                d.callback(None)
                return result
            self._closed.addBoth(closed)
        return d

    def _lost(self, reason):
        self.connected = False
        if not self._closed.called:
            self._closed.callback(None)


class _HostSlots:
    """How many connections to one host may be open, and how many of them
    may be in their handshake, at once."""

    def __init__(self, connections: int, handshakes: int):
        self.connections = DeferredSemaphore(connections)
        self.handshakes = DeferredSemaphore(handshakes)


class SSHClient:
    """
    Connects to nodes with one identity key and one known_hosts file.

    ``clock`` (default: ``reactor``) drives the timeouts.  Each ``connect``
    is an independent TCP connection, so many may run at once; to keep
    under a server's limits, at most ``max_connections_per_host`` are open
    to one host and port at once, at most ``max_handshakes_per_host`` of
    them connecting and authenticating; more wait their turn.
    """

    def __init__(self, reactor: IReactorTCP, identity: keys.Key, known_hosts_path,
                 username: str = "root",
                 connect_timeout: Optional[float] = DEFAULT_CONNECT_TIMEOUT,
                 idle_timeout: Optional[float] = DEFAULT_IDLE_TIMEOUT,
                 window_size: int = DEFAULT_WINDOW_SIZE,
                 max_packet: int = DEFAULT_MAX_PACKET,
                 max_output: int = DEFAULT_MAX_OUTPUT,
                 clock: Optional[IReactorTime] = None,
                 max_connections_per_host: int = DEFAULT_MAX_CONNECTIONS_PER_HOST,
                 max_handshakes_per_host: int = DEFAULT_MAX_HANDSHAKES_PER_HOST):
        if identity.isPublic():
            raise ValueError("the identity must be a private key")
        if max_connections_per_host < 1 or max_handshakes_per_host < 1:
            raise ValueError("at least one connection and one handshake per host")
        self._max_connections_per_host = max_connections_per_host
        self._max_handshakes_per_host = max_handshakes_per_host
        self._slots: Dict[Tuple[str, int], _HostSlots] = {}
        self._settings = _Settings(
            # Without a clock of its own, the reactor is the clock.
            reactor=reactor,
            clock=clock if clock is not None else cast(IReactorTime, reactor),
            identity=identity, known_hosts_path=_fspath(known_hosts_path),
            username=username, connect_timeout=connect_timeout,
            idle_timeout=idle_timeout, window_size=window_size,
            max_packet=max_packet, max_output=max_output)

    @property
    def identity_fingerprint(self) -> str:
        return fingerprint(self._settings.identity)

    def _host_slots(self, host: str, port: int) -> _HostSlots:
        slots = self._slots.get((host, port))
        if slots is None:
            slots = self._slots[(host, port)] = _HostSlots(
                self._max_connections_per_host, self._max_handshakes_per_host)
        return slots

    def connect(self, host: str, port: int) -> Deferred:
        """
        Fire with an ``SSHClientConnection`` once authenticated.  The connect
        timeout runs from when this connection may be opened (it may wait
        for one of ours to the same host to close first).
        """
        slots = self._host_slots(host, port)

        async def connect():
            await slots.connections.acquire()
            try:
                connection = await self._handshake(host, port, slots)
            except BaseException:
                slots.connections.release()
                raise
            connection.when_closed().addCallback(
                lambda _: slots.connections.release())
            return connection
        return Deferred.fromCoroutine(connect())

    def _handshake(self, host: str, port: int, slots: _HostSlots) -> Deferred:
        """TCP, key exchange, authentication: an ``SSHClientConnection``."""
        settings = self._settings
        endpoint = HostnameEndpoint(settings.reactor, host.encode("idna"), port,
                                    timeout=max(1, int(settings.connect_timeout or 30)))

        async def handshake():
            await slots.handshakes.acquire()
            try:
                protocol = await endpoint.connect(_ClientFactory(settings, host, port))
                return await cast(_ClientTransport, protocol).ready
            except (CancelledError, ConnectingCancelledError):
                raise CancelledError()
            except SSHError:
                raise
            except Exception as e:
                raise ConnectFailed(host, port, "cannot connect: %s" % (e,))
            finally:
                slots.handshakes.release()

        d = Deferred.fromCoroutine(handshake())
        if settings.connect_timeout:
            timeout = settings.connect_timeout

            def timed_out(result, _):
                if isinstance(result, Failure) and result.check(CancelledError):
                    raise SSHTimeout(host, port, "connect", timeout)
                return result
            d.addTimeout(timeout, settings.clock, onTimeoutCancel=timed_out)
        return d

    def run(self, host: str, port: int, argv: Sequence[str], **kwargs) -> Deferred:
        """Connect, run one command (see ``SSHClientConnection.run``), disconnect."""
        async def run():
            connection = await self.connect(host, port)
            try:
                result = await connection.run(argv, **kwargs)
            except BaseException as e:
                connection.close(abort=isinstance(e, (SSHTimeout, CancelledError)))
                raise
            connection.close()
            return result
        return Deferred.fromCoroutine(run())


def run_command(reactor, host: str, port: int, identity_key: keys.Key,
                known_hosts_path, argv: Sequence[str], stdin: Optional[bytes] = None,
                stdin_producer=None, stdout_consumer=None,
                connect_timeout: Optional[float] = DEFAULT_CONNECT_TIMEOUT,
                idle_timeout: Optional[float] = DEFAULT_IDLE_TIMEOUT,
                username: str = "root", clock=None) -> Deferred:
    """One command on one node over a fresh connection; see ``SSHClient``."""
    client = SSHClient(reactor, identity_key, known_hosts_path, username=username,
                       connect_timeout=connect_timeout, idle_timeout=idle_timeout,
                       clock=clock)
    return client.run(host, port, argv, stdin=stdin, stdin_producer=stdin_producer,
                      stdout_consumer=stdout_consumer)


def _fspath(path) -> str:
    if isinstance(path, FilePath):
        return path.path
    return os.fsdecode(path)
