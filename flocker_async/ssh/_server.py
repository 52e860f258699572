"""
The SSH command server: public-key authentication mapped to a role, one
fixed command set, nothing else (no shell, pty, environment, subsystems or
forwarding).

What an unauthenticated or hostile client can hold is bounded (see
``ServerLimits``): a login deadline from the TCP connection, so many
unauthenticated connections in all and per address, so many sessions per
connection and connections per key, a small receive window for commands
that read little, and a rate-limited log of refusals.
"""

from __future__ import annotations

import math
import shlex
import socket
import struct
from typing import (
    Any, Callable, Collection, Dict, FrozenSet, Iterable, Mapping, Optional, cast)

from attrs import field, frozen, validators
from twisted.conch import error as conch_error
from twisted.conch.avatar import ConchUser
from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh import connection, keys, transport as conch_transport
from twisted.conch.ssh.channel import SSHChannel
from twisted.conch.ssh.common import NS, getNS
from twisted.conch.ssh.factory import SSHFactory
from twisted.conch.ssh.transport import SSHServerTransport
from twisted.conch.ssh.userauth import SSHUserAuthServer
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ISSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import CancelledError, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime, ITCPTransport
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ._algorithms import (
    CIPHERS, COMPRESSIONS, SERVER_KEY_EXCHANGES, SERVER_MACS, USER_AUTH_SIGNATURES)
from ._flow import (
    DEFAULT_MAX_PACKET, DEFAULT_WINDOW_SIZE, BytesCollector,
    FlowControlledConnection, InboundStream, OutboundStream)
from ._interfaces import ICommand, ICommandSession
from ._keys import fingerprint

__all__ = [
    "Command",
    "CommandError",
    "CommandSession",
    "ServerLimits",
    "StdinTooLarge",
    "make_ssh_factory",
    "EXIT_USAGE",
    "EXIT_NOT_PERMITTED",
    "EXIT_UNKNOWN_COMMAND",
    "KeyAuthorizer",
]

# Shell conventions, so a caller can tell "you may not" from "no such thing".
EXIT_USAGE = 2
EXIT_NOT_PERMITTED = 126
EXIT_UNKNOWN_COMMAND = 127

_log = Logger(namespace="flocker_async.ssh")

_FORWARDING_CHANNELS = {b"direct-tcpip", b"forwarded-tcpip", b"x11",
                        b"auth-agent@openssh.com", b"direct-streamlocal@openssh.com",
                        b"forwarded-streamlocal@openssh.com"}

Authorizer = Callable[[keys.Key], Optional[str]]

# Longer than any real user name (Linux allows 32 characters): refused
# before conch's own code logs or keeps it.
MAX_USER_NAME = 256
# How much of a client-chosen string (a user name) a log line shows.
_SHOWN_BYTES = 64
# A connection told to go at its login deadline that has not gone this
# much later (it does not read what we send) is aborted.
_CLOSE_GRACE = 5.0
# TCP keepalive on accepted connections: a peer gone without a FIN (crashed,
# partitioned) is noticed after about 60 + 6 x 10 s, not the kernel's 2 h.
_KEEPALIVE = (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 6))


def _positive(instance, attribute, value):
    if isinstance(value, bool) or not value > 0:
        raise ValueError("%s must be positive, not %r" % (attribute.name, value))


@frozen
class ServerLimits:
    """
    What the server lets clients hold (defaults after OpenSSH's where it
    has one).

    ``login_timeout``: seconds from the TCP connection to authentication
    (OpenSSH's LoginGraceTime is 120 s; our clients are programs).
    ``max_unauthenticated`` / ``max_unauthenticated_per_address``:
    connections not yet authenticated, in all and from one address; more
    are closed as soon as they are accepted (OpenSSH's MaxStartups,
    PerSourceMaxStartups).  ``max_sessions``: sessions open at once on one
    connection (MaxSessions).  ``max_connections_per_key``: authenticated
    connections at once with one key.  ``initial_window_size``: the receive
    window of a session, widened to the factory's full window only for a
    command flagged ``large_input`` once it streams its stdin.
    ``refusals_logged_per_minute``: refusal log lines a minute; the rest
    are counted in one line.
    """

    login_timeout: float = field(default=30.0, validator=_positive)
    max_unauthenticated: int = field(default=64, validator=_positive)
    max_unauthenticated_per_address: int = field(default=10, validator=_positive)
    max_sessions: int = field(default=10, validator=_positive)
    max_connections_per_key: int = field(default=32, validator=_positive)
    initial_window_size: int = field(default=64 * 1024, validator=_positive)
    refusals_logged_per_minute: int = field(default=20, validator=_positive)


def shown(value: bytes) -> str:
    """A client-chosen string as a log shows it: a short repr, escapes escaped."""
    text = repr(value[:_SHOWN_BYTES].decode("utf-8", "replace"))
    if len(value) > _SHOWN_BYTES:
        text += "... (%d bytes)" % (len(value),)
    return text


class _RefusalLog:
    """
    Logs refusals, at most ``per_minute`` lines a minute (on ``clock``); the
    refusals past that are counted in one line when the minute ends.
    """

    def __init__(self, clock: IReactorTime, per_minute: int):
        self._clock = clock
        self._per_minute = per_minute
        self._window_started: Optional[float] = None
        self._logged = 0
        self.suppressed = 0
        self._summary: Optional[Any] = None

    def log(self, format: str, **fields) -> None:
        now = self._clock.seconds()
        if self._window_started is not None and now >= self._window_started + 60:
            self.flush()
        if self._window_started is None:
            self._window_started = now
        if self._logged < self._per_minute:
            self._logged += 1
            _log.info(format, **fields)
            return
        self.suppressed += 1
        if self._summary is None:
            self._summary = self._clock.callLater(
                self._window_started + 60 - now, self.flush)

    def flush(self) -> None:
        """End the minute: say how many refusals went unlogged, if any."""
        summary, self._summary = self._summary, None
        if summary is not None and summary.active():
            summary.cancel()
        if self.suppressed:
            _log.info("ssh refusals not logged in the last minute: {count} "
                      "(at most {limit} are logged a minute)",
                      count=self.suppressed, limit=self._per_minute)
        self._window_started = None
        self._logged = self.suppressed = 0


class CommandError(Exception):
    """Raised by a command: ``message`` goes to stderr, ``status`` is the exit status."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message, status)
        self.message = message
        self.status = status

    def __str__(self):
        return self.message


class StdinTooLarge(Exception):
    """A command's stdin was larger than it agreed to read into memory."""


def _roles(value: Iterable[str]) -> FrozenSet[str]:
    return frozenset(value)


@implementer(ICommand)
@frozen
class Command:
    """
    An ``ICommand`` from a function ``run(role, args, session)`` returning
    the exit status (or a Deferred of it).  ``large_input``: the command
    streams a large stdin (a volume, a deployment), so its session's
    receive window is widened to the full window once it reads stdin.
    """
    roles: FrozenSet[str] = field(converter=_roles)
    function: Callable = field()
    description: str = ""
    large_input: bool = field(default=False, validator=validators.instance_of(bool))

    def run(self, role, args, session):
        return self.function(role, args, session)


@frozen
class _Identity:
    """Who authenticated: the role their key maps to, and the key."""
    role: str
    fingerprint: str
    username: str


class _KeyRefused(UnauthorizedLogin):
    """A key was refused; the auth service logs it with the client's address."""

    def __init__(self, key_fingerprint: str, why: str):
        super().__init__(why)
        self.fingerprint = key_fingerprint
        self.why = why


@implementer(ICredentialsChecker)
class _RoleKeyChecker:
    credentialInterfaces = (ISSHPrivateKey,)

    def __init__(self, authorizer: Authorizer):
        self._authorizer = authorizer

    def requestAvatarId(self, credentials):
        try:
            key = keys.Key.fromString(credentials.blob)
        except (keys.BadKeyError, ValueError) as e:
            return fail(UnauthorizedLogin("unusable public key: %s" % (e,)))
        key_fingerprint = fingerprint(key)
        username = shown(credentials.username)
        try:
            role = self._authorizer(key)
        except Exception:
            _log.failure("authorizer failed for key {fingerprint}",
                         fingerprint=key_fingerprint)
            role = None
        if role is None:
            return fail(_KeyRefused(key_fingerprint, "the key is not authorized"))
        if credentials.signature is None:
            # The client asks whether this key would do; it signs next.
            return fail(conch_error.ValidPublicKey())
        if not key.verify(credentials.signature, credentials.sigData):
            return fail(_KeyRefused(key_fingerprint, "bad signature"))
        return succeed(_Identity(role=role, fingerprint=key_fingerprint,
                                 username=username))


@implementer(IRealm)
class _CommandRealm:
    def __init__(self, server):
        self._server = server

    def requestAvatar(self, identity, mind, *interfaces):
        if IConchUser not in interfaces:
            raise NotImplementedError("only SSH logins are served")
        user = _CommandUser(identity, self._server)
        return IConchUser, user, user.logout


class _CommandUser(ConchUser):
    def __init__(self, identity: _Identity, server: "_ServerSettings"):
        ConchUser.__init__(self)
        self.identity = identity
        self.server = server

    def lookupChannel(self, channelType, windowSize, maxPacket, data):
        if channelType != b"session":
            raise conch_error.ConchError(*self.refusal(channelType))
        return _CommandChannel(
            self.server, self.identity,
            localWindow=self.server.initial_window_size,
            localMaxPacket=self.server.max_packet,
            remoteWindow=windowSize, remoteMaxPacket=maxPacket,
            data=data, avatar=self)

    def refusal(self, channel_type):
        """Why a channel of ``channel_type`` is refused, or None if it is not."""
        if channel_type == b"session":
            return None
        _log.info("ssh refused channel {type} for {role} key {fingerprint}",
                  type=channel_type.decode("ascii", "replace"),
                  role=self.identity.role, fingerprint=self.identity.fingerprint)
        if channel_type in _FORWARDING_CHANNELS:
            return ("forwarding is not permitted on this server",
                    connection.OPEN_ADMINISTRATIVELY_PROHIBITED)
        return "unknown channel type", connection.OPEN_UNKNOWN_CHANNEL_TYPE

    def gotGlobalRequest(self, requestType, data):
        if requestType != b"keepalive@openssh.com":
            _log.info("ssh refused global request {type} for {role} key {fingerprint}",
                      type=requestType.decode("ascii", "replace"),
                      role=self.identity.role, fingerprint=self.identity.fingerprint)
        return 0

    def logout(self):
        pass


@implementer(ICommandSession)
class CommandSession:
    """
    A running command's stdin, stdout, stderr and exit status (see
    ``ICommandSession``).  Also exposes flow-control figures that tests and
    logs use: ``stdin_max_buffered``, ``stdout_max_buffered``,
    ``stdout_pauses``.
    """

    def __init__(self, channel: "_CommandChannel", role, args):
        self._channel = channel
        self.role = role
        self.args = args
        self.key_fingerprint = channel.identity.fingerprint
        self.peer = channel.getPeer()
        self._stdin = channel.stdin
        self._stdout = channel.stdout
        self.exit_status: Optional[int] = None

    # stdout: IConsumer

    def write(self, data):
        if self.exit_status is None and not self._channel.closing:
            self._stdout.write(data)

    def writeSequence(self, data):
        self.write(b"".join(data))

    def registerProducer(self, producer, streaming):
        self._stdout.registerProducer(producer, streaming)

    def unregisterProducer(self):
        self._stdout.unregisterProducer()

    def write_stderr(self, data):
        if isinstance(data, str):
            data = data.encode("utf-8")
        if self.exit_status is None and not self._channel.closing:
            self._stdout.write_extended(connection.EXTENDED_DATA_STDERR, data)

    # stdin

    def stream_stdin(self, consumer):
        self._channel.reading_stdin()
        return self._stdin.attach(consumer)

    def read_stdin(self, max_bytes: int = 16 * 1024 * 1024):
        self._channel.reading_stdin()
        collector = BytesCollector(max_bytes)

        def collected(result):
            if collector.overflowed:
                raise StdinTooLarge("stdin is larger than %d bytes" % (max_bytes,))
            if isinstance(result, Failure):
                return result
            return collector.value()
        return self._stdin.attach(collector).addBoth(collected)

    # exit

    def exit(self, status):
        if self.exit_status is not None:
            return
        self.exit_status = int(status)
        self._stdout.unregisterProducer()
        self._channel.finish(self.exit_status)

    # figures

    @property
    def stdin_buffered(self):
        return self._stdin.buffered

    @property
    def stdin_max_buffered(self):
        return self._stdin.max_buffered

    @property
    def stdout_max_buffered(self):
        return self._stdout.max_buffered

    @property
    def stdout_pauses(self):
        return self._stdout.pauses


class _CommandChannel(SSHChannel):
    """A session channel that accepts exactly one ``exec`` of a known command."""

    name = b"session"
    manual_window = True

    def __init__(self, server, identity, **kwargs):
        SSHChannel.__init__(self, **kwargs)
        self.server = server
        self.identity = identity
        self.stdin = InboundStream(self)
        self.stdout = OutboundStream(self)
        self.session: Optional[CommandSession] = None
        self._command_line = None
        self._running = None
        self._exit_status = None
        self._exit_sent = False
        self._started_at = None
        self._command_name = None
        self._large_input = False

    def reading_stdin(self):
        """The command reads its stdin now: a ``large_input`` one gets the
        full window (bytes sent before then wait in the small one)."""
        extra = self.server.window_size - self.localWindowSize
        if self._large_input and extra > 0 and not self.localClosed \
                and self.conn is not None:
            self.localWindowSize = self.server.window_size
            self.conn.adjustWindow(self, extra)

    # Requests: only one exec.

    def requestReceived(self, requestType, data):
        if requestType == b"exec" and self._command_line is None:
            command_line, _ = getNS(data)
            self._command_line = command_line
            # Start after the success reply has gone out.
            self.server.reactor.callLater(0, self._start, command_line)
            return 1
        _log.info("ssh refused request {type} on a session of {role} key {fingerprint}",
                  type=requestType.decode("ascii", "replace"),
                  role=self.identity.role, fingerprint=self.identity.fingerprint)
        return 0

    def _refuse(self, status, message, command_line):
        _log.info("ssh command refused for {role} key {fingerprint}: {message} "
                  "(command line {command_line!r})", role=self.identity.role,
                  fingerprint=self.identity.fingerprint, message=message,
                  command_line=command_line)
        self.writeExtended(connection.EXTENDED_DATA_STDERR,
                           (message + "\n").encode("utf-8"))
        self.finish(status)

    def _allowed_commands(self):
        return sorted(name for name, command in self.server.commands.items()
                      if self.identity.role in command.roles)

    def _start(self, command_line: bytes):
        if self.closing or self.localClosed:
            return
        try:
            argv = shlex.split(command_line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            return self._refuse(EXIT_USAGE, "cannot parse the command line: %s" % (e,),
                                command_line)
        allowed = ", ".join(self._allowed_commands()) or "none"
        if not argv:
            return self._refuse(EXIT_USAGE, "no command given; commands you may run: "
                                + allowed, command_line)
        name, args = argv[0], argv[1:]
        command = self.server.commands.get(name)
        if command is None:
            return self._refuse(
                EXIT_UNKNOWN_COMMAND,
                "unknown command %r; commands you may run: %s" % (name, allowed),
                command_line)
        if self.identity.role not in command.roles:
            return self._refuse(
                EXIT_NOT_PERMITTED,
                "%s: not permitted for the %s role; commands you may run: %s"
                % (name, self.identity.role, allowed), command_line)
        self._command_name = name
        self._large_input = bool(getattr(command, "large_input", False))
        self._started_at = self.server.reactor.seconds()
        _log.info("ssh command {command} started by {role} key {fingerprint}",
                  command=name, args=args, role=self.identity.role,
                  fingerprint=self.identity.fingerprint)
        session = self.session = CommandSession(self, self.identity.role, args)
        running = maybeDeferred(command.run, self.identity.role, list(args), session)
        self._running = running
        running.addCallbacks(self._command_returned, self._command_failed,
                             callbackArgs=(session,), errbackArgs=(session,))
        running.addErrback(lambda failure: _log.failure(
            "ssh command {command} result handling failed", failure, command=name))

    def _command_returned(self, status, session: CommandSession):
        self._running = None
        session.exit(0 if status is None else status)

    def _command_failed(self, failure, session: CommandSession):
        self._running = None
        if failure.check(CancelledError) and self.localClosed:
            return
        if failure.check(CommandError):
            session.write_stderr(failure.value.message.rstrip("\n") + "\n")
            session.exit(failure.value.status)
            return
        _log.failure("ssh command {command} failed", failure, command=self._command_name)
        session.write_stderr("%s: internal error: %s\n"
                             % (self._command_name, failure.getErrorMessage()))
        session.exit(1)

    # Data from the client.

    def dataReceived(self, data):
        self.stdin.data_received(data)

    def extReceived(self, dataType, data):
        self.stdin.release(len(data))

    def eofReceived(self):
        self.stdin.eof_received()

    # Window.

    def stopWriting(self):
        self.stdout.window_closed()

    def addWindowBytes(self, data):
        SSHChannel.addWindowBytes(self, data)
        self.stdout.window_opened()
        self._maybe_send_exit()

    # Ending.

    def finish(self, status):
        """Send ``status`` once everything written so far has been sent."""
        if self._exit_status is None:
            self._exit_status = status
            if self._command_name is not None:
                _log.info("ssh command {command} exited {status} after {seconds:.3f}s",
                          command=self._command_name, status=status,
                          role=self.identity.role,
                          seconds=self.server.reactor.seconds() - self._started_at)
        self._maybe_send_exit()

    def _maybe_send_exit(self):
        if (self._exit_status is None or self._exit_sent or self.buf or self.extBuf
                or self.localClosed):
            return
        self._exit_sent = True
        assert self.conn is not None
        self.conn.sendRequest(self, b"exit-status",
                              struct.pack(">L", self._exit_status & 0xFFFFFFFF))
        self.conn.sendEOF(self)
        self.loseConnection()

    def closeReceived(self):
        # The client went away from this channel: output it will never read
        # (its window stays shut) must not keep the channel, and the command
        # with it, waiting to drain.
        self.buf = b""
        self.extBuf = []
        SSHChannel.closeReceived(self)

    def closed(self):
        self.stdin.connection_lost()
        self.stdout.stop_producer()
        running, self._running = self._running, None
        if running is not None:
            _log.info("ssh command {command} cancelled: the client went away",
                      command=self._command_name)
            running.cancel()


class _UserAuthServer(SSHUserAuthServer):
    attemptsBeforeDisconnect = 6
    transport: "_ServerTransport"

    def serviceStarted(self):
        settings = self.transport.factory.settings
        # conch's login timer runs on the global reactor unless told otherwise.
        self.clock = settings.reactor
        # It starts only now; the transport's deadline, from the TCP
        # connection, comes first.  This one is a backstop.
        self.loginTimeout = math.ceil(settings.limits.login_timeout)
        SSHUserAuthServer.serviceStarted(self)

    def ssh_USERAUTH_REQUEST(self, packet):
        user = getNS(packet)[0]
        if len(user) > MAX_USER_NAME:
            self.transport.factory.refusals.log(
                "ssh auth refused from {address}: a user name of {size} bytes "
                "({username})", address=self.transport.peer_address,
                size=len(user), username=shown(user))
            self.transport.sendDisconnect(
                conch_transport.DISCONNECT_ILLEGAL_USER_NAME,
                b"user name longer than %d bytes" % (MAX_USER_NAME,))
            return None
        return SSHUserAuthServer.ssh_USERAUTH_REQUEST(self, packet)

    def _cbFinishedAuth(self, result):
        interface, avatar, logout = result
        refusal = self.transport.authenticated(avatar.identity)
        if refusal is not None:
            logout()
            self.transport.factory.refusals.log(
                "ssh auth refused: key {fingerprint} from {address}: {why}",
                fingerprint=avatar.identity.fingerprint,
                address=self.transport.peer_address, why=refusal,
                username=avatar.identity.username)
            self.transport.sendDisconnect(
                conch_transport.DISCONNECT_TOO_MANY_CONNECTIONS,
                refusal.encode("ascii"))
            return
        _log.info("ssh auth accepted: key {fingerprint} as {role} from {address} "
                  "(user {username})", fingerprint=avatar.identity.fingerprint,
                  role=avatar.identity.role, address=self.transport.peer_address,
                  username=avatar.identity.username)
        SSHUserAuthServer._cbFinishedAuth(self, result)

    def _ebBadAuth(self, reason):
        if reason.check(_KeyRefused):
            self.transport.factory.refusals.log(
                "ssh auth refused: key {fingerprint} from {address} (user "
                "{username}): {why}", fingerprint=reason.value.fingerprint,
                address=self.transport.peer_address, username=shown(self.user or b""),
                why=reason.value.why)
        return SSHUserAuthServer._ebBadAuth(self, reason)


@frozen
class _ServerSettings:
    reactor: IReactorTime
    commands: Mapping[str, ICommand]
    window_size: int
    max_packet: int
    limits: ServerLimits = ServerLimits()

    @property
    def initial_window_size(self) -> int:
        return min(self.limits.initial_window_size, self.window_size)


class _ConnectionTable:
    """
    The connections a server holds: unauthenticated ones per address, and
    authenticated ones per key fingerprint; each check says why it refuses.
    """

    def __init__(self, limits: ServerLimits):
        self._limits = limits
        self.unauthenticated: Dict[str, int] = {}
        self.per_key: Dict[str, int] = {}

    @property
    def total_unauthenticated(self) -> int:
        return sum(self.unauthenticated.values())

    def admit(self, address: str) -> Optional[str]:
        """Count a new connection from ``address``, or say why not."""
        limits = self._limits
        if self.total_unauthenticated >= limits.max_unauthenticated:
            return ("%d connections are not authenticated yet (at most %d)"
                    % (self.total_unauthenticated, limits.max_unauthenticated))
        if self.unauthenticated.get(address, 0) >= limits.max_unauthenticated_per_address:
            return ("%d connections from this address are not authenticated yet "
                    "(at most %d)" % (self.unauthenticated[address],
                                      limits.max_unauthenticated_per_address))
        self.unauthenticated[address] = self.unauthenticated.get(address, 0) + 1
        return None

    def authenticate(self, address: str, key_fingerprint: str) -> Optional[str]:
        """Move a connection from ``address`` to ``key_fingerprint``, or say why not."""
        maximum = self._limits.max_connections_per_key
        if self.per_key.get(key_fingerprint, 0) >= maximum:
            return "too many connections for this key (at most %d)" % (maximum,)
        self.release_unauthenticated(address)
        self.per_key[key_fingerprint] = self.per_key.get(key_fingerprint, 0) + 1
        return None

    def release_unauthenticated(self, address: str) -> None:
        _decrement(self.unauthenticated, address)

    def release_key(self, key_fingerprint: str) -> None:
        _decrement(self.per_key, key_fingerprint)


def _decrement(counts: Dict[str, int], name: str) -> None:
    left = counts.get(name, 0) - 1
    if left > 0:
        counts[name] = left
    else:
        counts.pop(name, None)


def _keep_alive(transport) -> None:
    """TCP keepalive on an accepted connection, where the transport has it."""
    set_keep_alive = getattr(transport, "setTcpKeepAlive", None)
    if set_keep_alive is None:
        return
    set_keep_alive(1)
    handle = getattr(transport, "getHandle", lambda: None)()
    if not isinstance(handle, socket.socket):
        return
    for option, value in _KEEPALIVE:
        number = getattr(socket, option, None)
        if number is not None:
            try:
                handle.setsockopt(socket.IPPROTO_TCP, number, value)
            except OSError:
                pass  # the kernel's defaults then; keepalive is still on


class _ServerTransport(SSHServerTransport):
    """
    The server's SSH transport: modern algorithms only, TCP keepalive, and
    a login deadline from the TCP connection (conch's own starts only when
    the client asks for ssh-userauth, so a client that never finishes its
    version line or key exchange would be held for ever).
    """

    supportedCiphers = CIPHERS
    supportedMACs = SERVER_MACS
    supportedKeyExchanges = SERVER_KEY_EXCHANGES
    supportedCompressions = COMPRESSIONS

    factory: "_CommandServerFactory"
    peer_address = ""
    _key_fingerprint: Optional[str] = None
    _counted = False
    _deadline: Optional[Any] = None
    _close_backstop: Optional[Any] = None

    def connectionMade(self):
        settings = self.factory.settings
        self._counted = True
        _keep_alive(self.transport)
        self._deadline = settings.reactor.callLater(
            settings.limits.login_timeout, self._login_deadline)
        SSHServerTransport.connectionMade(self)

    def _login_deadline(self):
        self._deadline = None
        seconds = self.factory.settings.limits.login_timeout
        self.factory.refusals.log(
            "ssh login deadline: {address} did not authenticate within {seconds:g} s; "
            "closing the connection", address=self.peer_address, seconds=seconds)
        self._close_backstop = self.factory.settings.reactor.callLater(
            _CLOSE_GRACE, self._abort)
        self.sendDisconnect(conch_transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE,
                            b"not authenticated within %d s" % (seconds,))

    def sendExtInfo(self, extensions):
        # The user key signatures we verify, not our host key's algorithms.
        SSHServerTransport.sendExtInfo(self, [
            (name, b",".join(USER_AUTH_SIGNATURES) if name == b"server-sig-algs"
             else value) for name, value in extensions])

    def _abort(self):
        self._close_backstop = None
        if self.transport is not None:
            # Accepted TCP connections (or in-memory stand-ins) abort.
            cast(ITCPTransport, self.transport).abortConnection()

    def authenticated(self, identity: _Identity) -> Optional[str]:
        """The connection authenticated as ``identity``: None if it may stay,
        else why it may not (its key holds too many connections)."""
        refusal = self.factory.table.authenticate(self.peer_address,
                                                  identity.fingerprint)
        if refusal is None:
            self._key_fingerprint = identity.fingerprint
            if self._deadline is not None and self._deadline.active():
                self._deadline.cancel()
            self._deadline = None
        return refusal

    def connectionLost(self, reason=None):
        for call in (self._deadline, self._close_backstop):
            if call is not None and call.active():
                call.cancel()
        self._deadline = self._close_backstop = None
        if self._key_fingerprint is not None:
            self.factory.table.release_key(self._key_fingerprint)
        elif self._counted:
            self.factory.table.release_unauthenticated(self.peer_address)
        self._counted = False
        # conch's own, without its "connection lost" line per connection.
        if self.service:
            self.service.serviceStopped()
        if hasattr(self, "avatar"):
            self.logoutFunction()


class _ServerConnection(FlowControlledConnection):
    transport: _ServerTransport

    def ssh_CHANNEL_OPEN(self, packet):
        # Refuse here, quietly: conch logs a refusal raised from
        # lookupChannel as an unexpected failure with a traceback.
        channel_type, rest = getNS(packet)
        assert self.transport is not None
        user = cast(_CommandUser, self.transport.avatar)
        refusal = user.refusal(channel_type)
        maximum = self.transport.factory.settings.limits.max_sessions
        if refusal is None and len(self.channels) >= maximum:
            self.transport.factory.refusals.log(
                "ssh refused a session for {role} key {fingerprint}: {count} are "
                "open on the connection", role=user.identity.role,
                fingerprint=user.identity.fingerprint, count=len(self.channels))
            refusal = ("at most %d sessions per connection; close one first"
                       % (maximum,), connection.OPEN_RESOURCE_SHORTAGE)
        if refusal is None:
            return FlowControlledConnection.ssh_CHANNEL_OPEN(self, packet)
        text, code = refusal
        sender_channel = struct.unpack(">L", rest[:4])[0]
        self.transport.sendPacket(
            connection.MSG_CHANNEL_OPEN_FAILURE,
            struct.pack(">2L", sender_channel, code) + NS(text.encode("utf-8")) + NS(b""))


class _CommandServerFactory(SSHFactory):
    protocol = _ServerTransport
    settings: _ServerSettings
    portal: Portal
    table: _ConnectionTable
    refusals: _RefusalLog
    services = {
        b"ssh-userauth": _UserAuthServer,
        b"ssh-connection": _ServerConnection,
    }

    def buildProtocol(self, addr):
        address = str(getattr(addr, "host", addr))
        refusal = self.table.admit(address)
        if refusal is not None:
            # Closed as soon as accepted: it holds no file for long.
            self.refusals.log("ssh connection refused from {address}: {why}",
                              address=address, why=refusal)
            return None
        # SSHFactory's own logs a line per connection about moduli we never use.
        transport = cast(_ServerTransport, Factory.buildProtocol(self, addr))
        transport.supportedPublicKeys = [
            algorithm for key in self.privateKeys.values()
            for algorithm in key.supportedSignatureAlgorithms()]
        transport.peer_address = address
        return transport

    def stopFactory(self):
        self.refusals.flush()
        SSHFactory.stopFactory(self)


def make_ssh_factory(
    reactor: IReactorTime,
    host_key: keys.Key,
    authorizer: Authorizer,
    commands: Mapping[str, ICommand],
    window_size: int = DEFAULT_WINDOW_SIZE,
    max_packet: int = DEFAULT_MAX_PACKET,
    limits: ServerLimits = ServerLimits(),
) -> SSHFactory:
    """
    An ``SSHFactory`` serving ``commands`` (name -> ``ICommand``).

    ``authorizer(public_key)`` returns the key's role (``"operator"``,
    ``"peer"``) or None to refuse it; it is asked on every login, so the set
    of peer keys may change while the server runs.  ``window_size`` is a
    session's full receive window (given to ``large_input`` commands);
    ``limits`` bounds what clients may hold (``ServerLimits``).  Listen
    with e.g. ``TCP4ServerEndpoint(reactor, 4522).listen(factory)`` or
    ``twisted.application.internet.TCPServer(4522, factory)``.
    """
    if host_key.isPublic():
        raise ValueError("the host key must be a private key")
    for name, command in commands.items():
        if not ICommand.providedBy(command):
            raise TypeError("command %r does not provide ICommand" % (name,))
    settings = _ServerSettings(reactor=reactor, commands=dict(commands),
                               window_size=window_size, max_packet=max_packet,
                               limits=limits)
    factory = _CommandServerFactory()
    factory.settings = settings
    factory.table = _ConnectionTable(limits)
    factory.refusals = _RefusalLog(reactor, limits.refusals_logged_per_minute)
    factory.publicKeys = {host_key.sshType(): host_key.public()}
    factory.privateKeys = {host_key.sshType(): host_key}
    factory.primes = None
    factory.portal = Portal(_CommandRealm(settings), [_RoleKeyChecker(authorizer)])
    return factory


class KeyAuthorizer:
    """
    An authorizer over sets of keys per role, replaceable at run time
    (``set_keys("peer", keys)`` when ``apply`` distributes new peers).  A
    key listed under several roles gets the first role it was listed under.
    """

    def __init__(self, roles: Optional[Mapping[str, Collection[keys.Key]]] = None):
        self._roles: Dict[str, FrozenSet[bytes]] = {}
        for role, role_keys in (roles or {}).items():
            self.set_keys(role, role_keys)

    def set_keys(self, role: str, role_keys: Collection[keys.Key]) -> None:
        self._roles[role] = frozenset(key.public().blob() for key in role_keys)

    def __call__(self, key: keys.Key) -> Optional[str]:
        blob = key.public().blob()
        for role, blobs in self._roles.items():
            if blob in blobs:
                return role
        return None
