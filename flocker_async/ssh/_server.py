"""
The SSH command server: public-key authentication mapped to a role, one
fixed command set, nothing else (no shell, pty, environment, subsystems or
forwarding).
"""

from __future__ import annotations

import shlex
import struct
from typing import Callable, Collection, Dict, FrozenSet, Iterable, Mapping, Optional, cast

from attrs import frozen, field
from twisted.conch import error as conch_error
from twisted.conch.avatar import ConchUser
from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh import connection, keys
from twisted.conch.ssh.channel import SSHChannel
from twisted.conch.ssh.common import NS, getNS
from twisted.conch.ssh.factory import SSHFactory
from twisted.conch.ssh.userauth import SSHUserAuthServer
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ISSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import CancelledError, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ._flow import (
    DEFAULT_MAX_PACKET, DEFAULT_WINDOW_SIZE, BytesCollector,
    FlowControlledConnection, InboundStream, OutboundStream)
from ._interfaces import ICommand, ICommandSession
from ._keys import fingerprint

__all__ = [
    "Command",
    "CommandError",
    "CommandSession",
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
    the exit status (or a Deferred of it).
    """
    roles: FrozenSet[str] = field(converter=_roles)
    function: Callable = field()
    description: str = ""

    def run(self, role, args, session):
        return self.function(role, args, session)


@frozen
class _Identity:
    """Who authenticated: the role their key maps to, and the key."""
    role: str
    fingerprint: str
    username: str


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
        username = credentials.username.decode("utf-8", "replace")
        try:
            role = self._authorizer(key)
        except Exception:
            _log.failure("authorizer failed for key {fingerprint}",
                         fingerprint=key_fingerprint)
            role = None
        if role is None:
            if credentials.signature is not None:
                _log.info("ssh auth refused: key {fingerprint} (user {username}) "
                          "is not authorized", fingerprint=key_fingerprint,
                          username=username)
            return fail(UnauthorizedLogin("key not authorized"))
        if credentials.signature is None:
            # The client asks whether this key would do; it signs next.
            return fail(conch_error.ValidPublicKey())
        if not key.verify(credentials.signature, credentials.sigData):
            _log.warn("ssh auth refused: bad signature for key {fingerprint}",
                      fingerprint=key_fingerprint)
            return fail(UnauthorizedLogin("bad signature"))
        _log.info("ssh auth accepted: key {fingerprint} as {role} (user {username})",
                  fingerprint=key_fingerprint, role=role, username=username)
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
            localWindow=self.server.window_size,
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
        return self._stdin.attach(consumer)

    def read_stdin(self, max_bytes: int = 16 * 1024 * 1024):
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
    # The daemon's clients are programs; nobody needs ten hours to log in.
    loginTimeout = 120
    attemptsBeforeDisconnect = 6

    def serviceStarted(self):
        # conch's login timer runs on the global reactor unless told otherwise.
        assert self.transport is not None
        self.clock = self.transport.factory.settings.reactor
        SSHUserAuthServer.serviceStarted(self)


@frozen
class _ServerSettings:
    reactor: IReactorTime
    commands: Mapping[str, ICommand]
    window_size: int
    max_packet: int


class _ServerConnection(FlowControlledConnection):
    def ssh_CHANNEL_OPEN(self, packet):
        # Refuse here, quietly: conch logs a refusal raised from
        # lookupChannel as an unexpected failure with a traceback.
        channel_type, rest = getNS(packet)
        assert self.transport is not None
        refusal = cast(_CommandUser, self.transport.avatar).refusal(channel_type)
        if refusal is None:
            return FlowControlledConnection.ssh_CHANNEL_OPEN(self, packet)
        text, code = refusal
        sender_channel = struct.unpack(">L", rest[:4])[0]
        self.transport.sendPacket(
            connection.MSG_CHANNEL_OPEN_FAILURE,
            struct.pack(">2L", sender_channel, code) + NS(text.encode("utf-8")) + NS(b""))


class _CommandServerFactory(SSHFactory):
    settings: _ServerSettings
    portal: Portal
    services = {
        b"ssh-userauth": _UserAuthServer,
        b"ssh-connection": _ServerConnection,
    }


def make_ssh_factory(
    reactor: IReactorTime,
    host_key: keys.Key,
    authorizer: Authorizer,
    commands: Mapping[str, ICommand],
    window_size: int = DEFAULT_WINDOW_SIZE,
    max_packet: int = DEFAULT_MAX_PACKET,
) -> SSHFactory:
    """
    An ``SSHFactory`` serving ``commands`` (name -> ``ICommand``).

    ``authorizer(public_key)`` returns the key's role (``"operator"``,
    ``"peer"``) or None to refuse it; it is asked on every login, so the set
    of peer keys may change while the server runs.  Listen with e.g.
    ``TCP4ServerEndpoint(reactor, 4522).listen(factory)`` or
    ``twisted.application.internet.TCPServer(4522, factory)``.
    """
    if host_key.isPublic():
        raise ValueError("the host key must be a private key")
    for name, command in commands.items():
        if not ICommand.providedBy(command):
            raise TypeError("command %r does not provide ICommand" % (name,))
    settings = _ServerSettings(reactor=reactor, commands=dict(commands),
                               window_size=window_size, max_packet=max_packet)
    factory = _CommandServerFactory()
    factory.settings = settings
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
