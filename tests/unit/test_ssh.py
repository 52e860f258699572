"""
Tests for flocker_async.ssh: a real conch server and client talking over
an in-memory network (tests/testtools/ssh.py's MemoryTCPNetwork) on a fake
clock, so nothing waits on the wall clock.  OpenSSH against the server, over
real loopback TCP, is in tests/functional/test_ssh_openssh.py.
"""

from __future__ import annotations

import json
import os
import stat
import struct

from twisted.conch.error import ConchError
from twisted.conch.ssh import connection as conch_connection
from twisted.conch.ssh.channel import SSHChannel
from twisted.conch.ssh.common import NS
from twisted.cred.credentials import ISSHPrivateKey
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint
from twisted.internet.error import (
    ConnectionAborted, ConnectionDone, ConnectionLost, ConnectionRefusedError,
    DNSLookupError, TimeoutError)
from twisted.internet.interfaces import (
    IReactorPluggableNameResolver, IReactorTCP, IReactorTime)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from flocker_async import ssh
from flocker_async._async import sleep
from flocker_async.ssh import _client, _flow, _keys, _server
from flocker_async.ssh import (
    EXIT_NOT_PERMITTED, EXIT_UNKNOWN_COMMAND, EXIT_USAGE, OPERATOR, PEER)

from ..testtools.ssh import (
    VERSION, MemoryTCPNetwork, NetworkHung, SlowConsumer, SSHServerFixture,
    ZeroProducer, forbid_global_reactor, pattern)


class PublicNamesTests(SynchronousTestCase):
    def test_reexports(self):
        """The package's public names are the private modules' objects."""
        self.assertIs(ssh.make_ssh_factory, _server.make_ssh_factory)
        self.assertIs(ssh.SSHClient, _client.SSHClient)
        self.assertIs(ssh.fingerprint, _keys.fingerprint)
        for name in ssh.__all__:
            self.assertTrue(hasattr(ssh, name), name)


class KeyFileTests(SynchronousTestCase):
    def setUp(self):
        self.directory = os.path.join(self.mktemp(), "state")

    def test_node_keys_created_private(self):
        """
        First start creates both ed25519 keys, 0600 in a 0700 directory, with
        .pub files; the second start loads the same keys.
        """
        keys = ssh.load_or_create_node_keys(self.directory)
        self.assertEqual(stat.S_IMODE(os.stat(self.directory).st_mode), 0o700)
        for name in (ssh.HOST_KEY_FILE, ssh.NODE_KEY_FILE):
            path = os.path.join(self.directory, name)
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
            with open(path + ".pub") as f:
                self.assertTrue(f.read().startswith("ssh-ed25519 AAAA"))
        self.assertEqual(keys.host_key.type(), "Ed25519")
        self.assertNotEqual(keys.host_key.public().blob(), keys.node_key.public().blob())
        again = ssh.load_or_create_node_keys(self.directory)
        self.assertEqual(again, keys)

    def test_loose_permissions_tightened(self):
        """A key file readable by others, in a loose directory, is tightened."""
        keys = ssh.load_or_create_node_keys(self.directory)
        path = os.path.join(self.directory, ssh.HOST_KEY_FILE)
        os.chmod(path, 0o644)
        os.chmod(self.directory, 0o755)
        again = ssh.load_or_create_node_keys(self.directory)
        self.assertEqual(again.host_key, keys.host_key)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(self.directory).st_mode), 0o700)

    def test_garbage_key_file(self):
        """A key file that is not a key is an error naming the file."""
        os.makedirs(self.directory)
        path = os.path.join(self.directory, ssh.HOST_KEY_FILE)
        with open(path, "w") as f:
            f.write("not a key\n")
        os.chmod(path, 0o600)
        e = self.assertRaises(ssh.KeyFileError, ssh.load_or_create_node_keys,
                              self.directory)
        self.assertIn(path, str(e))

    def test_fingerprint_format(self):
        """Fingerprints look like OpenSSH's: SHA256: and unpadded base64."""
        key = ssh.generate_key()
        self.assertRegex(ssh.fingerprint(key), r"^SHA256:[A-Za-z0-9+/]{43}$")
        self.assertEqual(ssh.fingerprint(key), ssh.fingerprint(key.public()))

    def test_parse_public_keys(self):
        """authorized_keys text parses; a bad line is named by number."""
        one, two = ssh.generate_key(), ssh.generate_key()
        text = "# operators\n\n%s alice\n%s\n" % (
            ssh.public_key_line(one), ssh.public_key_line(two))
        parsed = ssh.parse_public_keys(text, "keys.txt")
        self.assertEqual([k.blob() for k in parsed],
                         [one.public().blob(), two.public().blob()])
        e = self.assertRaises(ssh.KeyFileError, ssh.parse_public_keys,
                              text + "ssh-ed25519 garbage\n", "keys.txt")
        self.assertIn("keys.txt line 5", str(e))

    def test_known_hosts_lines(self):
        """
        add_known_host writes OpenSSH's [host]:port form once; plain host
        entries are honoured too; a different key is reported with its line.
        """
        path = os.path.join(self.mktemp())
        key, other = ssh.generate_key(), ssh.generate_key()
        self.assertFalse(ssh.check_known_host(path, "10.0.0.1", 4522, key).trusted)
        ssh.add_known_host(path, "10.0.0.1", 4522, key)
        ssh.add_known_host(path, "10.0.0.1", 4522, key)
        with open(path) as f:
            lines = f.read().splitlines()
        self.assertEqual(lines, [ssh.known_hosts_line("10.0.0.1", 4522, key)])
        self.assertTrue(lines[0].startswith("[10.0.0.1]:4522 ssh-ed25519 "))
        self.assertTrue(ssh.check_known_host(path, "10.0.0.1", 4522, key).trusted)
        status = ssh.check_known_host(path, "10.0.0.1", 4522, other)
        self.assertEqual((status.trusted, status.conflicting_lines), (False, (1,)))
        self.assertFalse(ssh.check_known_host(path, "10.0.0.2", 4522, key).trusted)
        with open(path, "a") as f:
            f.write("10.0.0.3 " + ssh.public_key_line(key) + "\n")
        self.assertTrue(ssh.check_known_host(path, "10.0.0.3", 4522, key).trusted)
        self.assertEqual(ssh.known_hosts_line("h", 22, key).split()[0], "h")

    def test_plain_entry_is_port_22s(self):
        """
        A plain ``host`` entry is the key of the host's port 22 (its sshd):
        a different key on 4522 is unknown there, not a changed key; on
        port 22 it is a conflict.
        """
        path = self.mktemp()
        sshd, node = ssh.generate_key(), ssh.generate_key()
        with open(path, "w") as f:
            f.write("10.0.0.1 " + ssh.public_key_line(sshd) + "\n")
        status = ssh.check_known_host(path, "10.0.0.1", 4522, node)
        self.assertEqual((status.trusted, status.conflicting_lines), (False, ()))
        status = ssh.check_known_host(path, "10.0.0.1", 22, node)
        self.assertEqual((status.trusted, status.conflicting_lines), (False, (1,)))
        # A [host]:port entry still conflicts on its own port.
        ssh.add_known_host(path, "10.0.0.1", 4522, sshd)
        status = ssh.check_known_host(path, "10.0.0.1", 4522, node)
        self.assertEqual((status.trusted, status.conflicting_lines), (False, (2,)))

    def test_key_authorizer(self):
        """KeyAuthorizer maps keys to roles and follows set_keys at run time."""
        operator, peer, stranger = (ssh.generate_key() for _ in range(3))
        authorizer = ssh.KeyAuthorizer({OPERATOR: [operator.public()]})
        self.assertEqual(authorizer(operator.public()), OPERATOR)
        self.assertIsNone(authorizer(peer.public()))
        authorizer.set_keys(PEER, [peer])
        self.assertEqual(authorizer(peer.public()), PEER)
        self.assertIsNone(authorizer(stranger.public()))


class FlowTests(SynchronousTestCase):
    """InboundStream/OutboundStream without a network."""

    class FakeConnection:
        def __init__(self):
            self.adjusted = []

        def adjustWindow(self, channel, size):
            self.adjusted.append(size)
            channel.localWindowLeft += size

    def make_channel(self, window=1000):
        channel = SSHChannel(localWindow=window, localMaxPacket=100,
                             conn=self.FakeConnection())
        return channel

    def test_window_reopens_only_for_consumed_bytes(self):
        """
        While the consumer is paused nothing is released; resuming delivers
        the buffer and reopens the window by what was taken.
        """
        channel = self.make_channel()
        stream = _flow.InboundStream(channel)
        consumer = SlowConsumer(auto_resume=False)
        stream.attach(consumer)
        for offset in range(0, 800, 100):
            channel.localWindowLeft -= 100
            stream.data_received(pattern(offset, 100))
        self.assertEqual(consumer.received, 100)
        self.assertEqual(stream.buffered, 700)
        self.assertEqual(channel.conn.adjusted, [])
        while stream.buffered:
            consumer.resume()
        self.assertEqual(consumer.received, 800)
        # Released in steps of at least a quarter window; never more than taken.
        self.assertEqual(channel.conn.adjusted, [300, 300])
        self.assertEqual(consumer.offset_errors, 0)

    def test_eof_after_buffer_drained(self):
        """End of input is reported after the buffered bytes are delivered."""
        channel = self.make_channel()
        stream = _flow.InboundStream(channel)
        consumer = SlowConsumer(auto_resume=False)
        done = stream.attach(consumer)
        channel.localWindowLeft -= 20
        stream.data_received(pattern(0, 10))
        stream.data_received(pattern(10, 10))
        stream.eof_received()
        self.assertNoResult(done)
        consumer.resume()
        self.assertEqual(self.successResultOf(done), 20)
        self.assertIsNone(consumer.producer)

    def test_outbound_refuses_pull_producers(self):
        """A pull producer cannot be paced by a window: refused loudly."""
        stream = _flow.OutboundStream(self.make_channel())
        self.assertRaises(TypeError, stream.registerProducer, object(), False)


class SSHTestCase(SynchronousTestCase):
    """
    A conch server and client on an in-memory network with a fake clock:
    bytes move when the network is pumped, time when it is advanced.
    """

    window_size = ssh.DEFAULT_WINDOW_SIZE
    max_packet = ssh.DEFAULT_MAX_PACKET

    def setUp(self):
        forbid_global_reactor(self)
        self.net = MemoryTCPNetwork()

    def start_server(self, **kwargs):
        kwargs.setdefault("window_size", self.window_size)
        kwargs.setdefault("max_packet", self.max_packet)
        self.server = SSHServerFixture(self, self.mktemp_dir(), reactor=self.net,
                                       **kwargs).listen()
        return self.server

    def mktemp_dir(self):
        path = self.mktemp()
        os.makedirs(path)
        return path

    def assert_fails(self, d, exception_type, limit=600.0):
        try:
            self.net.run(d, limit=limit)
        except exception_type as e:
            return e
        self.fail("expected %s" % (exception_type.__name__,))


class CommandTests(SSHTestCase):
    def test_version_for_both_roles(self):
        """version runs for an operator and for a peer, with their roles."""
        server = self.start_server()
        result = self.net.run(server.run(["version"]))
        self.assertEqual((result.status, result.stdout, result.stderr), (0, VERSION, b""))
        self.net.run(server.run(["version"], key=server.peer_key))
        self.assertEqual([(name, role) for name, role, _ in server.log.calls],
                         [("version", OPERATOR), ("version", PEER)])
        verifyObject(ssh.ICommandSession, server.log.sessions[0])
        self.assertEqual(server.log.sessions[0].key_fingerprint,
                         ssh.fingerprint(server.operator_key))

    def test_arguments_survive_quoting(self):
        """Arguments with spaces and quotes arrive exactly as given."""
        server = self.start_server()
        args = ["a b", "it's", '"x"', "$HOME", ""]
        result = self.net.run(server.run(["echo"] + args))
        self.assertEqual(json.loads(result.stdout), {"role": OPERATOR, "args": args})

    def test_none_is_exit_zero(self):
        """A command returning None exits 0."""
        server = self.start_server()
        result = self.net.run(server.run(["state"]))
        self.assertEqual((result.status, json.loads(result.stdout)),
                         (0, {"role": OPERATOR}))

    def test_exit_statuses_propagate(self):
        """Non-zero statuses reach the client with stderr and the host."""
        server = self.start_server()
        for status in (1, 3, 255):
            e = self.assert_fails(server.run(["exit", str(status)]),
                                  ssh.RemoteCommandFailed)
            self.assertEqual(e.status, status)
            self.assertEqual(e.result.stderr, b"exiting %d\n" % (status,))
            self.assertIn("127.0.0.1:%d" % (server.port,), str(e))
            self.assertIn("exit status %d" % (status,), str(e))

    def test_command_error(self):
        """CommandError's message goes to stderr and its status is the exit status."""
        server = self.start_server()
        e = self.assert_fails(server.run(["fail", "vol1"]), ssh.RemoteCommandFailed)
        self.assertEqual((e.status, e.result.stderr_text), (3, "no such volume: vol1"))

    def test_internal_error(self):
        """An unexpected exception exits 1 with a message, and is logged."""
        server = self.start_server()
        e = self.assert_fails(server.run(["crash"]), ssh.RemoteCommandFailed)
        self.assertEqual(e.status, 1)
        self.assertIn("crash: internal error: divided by zero", e.result.stderr_text)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_unknown_command(self):
        """An unknown command: message naming it and the allowed ones, status 127."""
        server = self.start_server()
        e = self.assert_fails(server.run(["rm", "-rf", "/"]), ssh.RemoteCommandFailed)
        self.assertEqual(e.status, EXIT_UNKNOWN_COMMAND)
        self.assertIn("unknown command 'rm'", e.result.stderr_text)
        self.assertIn("commands you may run: crash, echo, exit, fail, hang, produce, "
                      "state, upper, version", e.result.stderr_text)
        self.assertEqual(server.log.calls, [])

    def test_wrong_role(self):
        """A peer may not run state; an operator may not run receive: status 126."""
        server = self.start_server()
        e = self.assert_fails(server.run(["state"], key=server.peer_key),
                              ssh.RemoteCommandFailed)
        self.assertEqual(e.status, EXIT_NOT_PERMITTED)
        self.assertIn("state: not permitted for the peer role", e.result.stderr_text)
        e = self.assert_fails(server.run(["receive", "v"]), ssh.RemoteCommandFailed)
        self.assertEqual(e.status, EXIT_NOT_PERMITTED)
        self.assertEqual(server.log.calls, [])

    def test_empty_command(self):
        """exec of an empty (or blank) command line is refused with status 2."""
        server = self.start_server()
        e = self.assert_fails(server.run([]), ssh.RemoteCommandFailed)
        self.assertEqual(e.status, EXIT_USAGE)
        self.assertIn("no command given", e.result.stderr_text)
        raw = self.net.run(RawSession.open(self, server))
        status, stderr = self.net.run(raw.exec(b"   "))
        self.assertEqual((status, b"no command given" in stderr), (EXIT_USAGE, True))

    def test_unparseable_command_line(self):
        """Unbalanced quotes or invalid UTF-8 are refused with status 2."""
        server = self.start_server()
        for line in (b"echo 'unbalanced", b"echo \xff"):
            raw = self.net.run(RawSession.open(self, server))
            status, stderr = self.net.run(raw.exec(line))
            self.assertEqual(status, EXIT_USAGE)
            self.assertIn(b"cannot parse the command line", stderr)
        self.assertEqual(server.log.calls, [])

    def test_stdin_bytes(self):
        """Small stdin given as bytes reaches read_stdin."""
        server = self.start_server()
        result = self.net.run(server.run(["upper"], stdin=b"desired state"))
        self.assertEqual(result.stdout, b"DESIRED STATE")

    def test_stdin_too_large(self):
        """read_stdin refuses more than its limit."""
        server = self.start_server()
        e = self.assert_fails(server.run(["upper", "10"], stdin=b"x" * 100),
                              ssh.RemoteCommandFailed)
        self.assertEqual(e.status, 1)
        self.assertIn("stdin is larger than 10 bytes", e.result.stderr_text)
        self.flushLoggedErrors(ssh.StdinTooLarge)

    def test_concurrent_connections(self):
        """Twenty connections of one client, each running commands at the same time."""
        server = self.start_server()
        client = server.client()

        async def one(n):
            connection = await client.connect(server.host, server.port)
            results = await gatherResults([
                connection.run(["echo", str(n), str(i)]) for i in range(3)])
            await connection.close()
            return [json.loads(r.stdout)["args"] for r in results]
        outputs = self.net.run(gatherResults(
            [Deferred.fromCoroutine(one(n)) for n in range(20)]))
        self.assertEqual(outputs, [[[str(n), str(i)] for i in range(3)]
                                   for n in range(20)])
        self.assertEqual(len(server.log.calls), 60)
        # Every connection was closed after use.
        self.assertEqual(self.net.connections, [])

    def test_connection_reuse(self):
        """One connection runs several commands in turn."""
        server = self.start_server()
        connection = self.net.run(server.connect())
        first = self.net.run(connection.run(["version"]))
        second = self.net.run(connection.run(["echo", "x"]))
        self.assert_fails(connection.run(["exit", "4"]), ssh.RemoteCommandFailed)
        third = self.net.run(connection.run(["version"]))
        self.assertEqual((first.stdout, json.loads(second.stdout)["args"], third.stdout),
                         (VERSION, ["x"], VERSION))
        self.net.run(connection.close())
        e = self.assert_fails(connection.run(["version"]), ssh.SSHError)
        self.assertIn("closed", str(e))

    def test_peer_address(self):
        """The session sees the client's address: the node it connects from."""
        server = self.start_server()
        client = ssh.SSHClient(self.net.host("10.0.0.7"), server.operator_key,
                               server.known_hosts)
        self.net.run(client.run(server.host, server.port, ["version"]))
        peer = server.log.sessions[0].peer.address
        self.assertEqual((peer.type, peer.host), ("TCP", "10.0.0.7"))

    def test_command_duration_on_the_injected_clock(self):
        """The "exited" log line measures the command on the server's reactor."""
        server = self.start_server()
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        connection = self.net.run(server.connect())
        running = connection.run(["hang"])
        session = self.net.run(server.log.wait_started("hang"))
        self.net.advance(7)
        session.exit(0)
        self.net.run(running)
        [exited] = [event for event in events if event.get("log_format", "")
                    .startswith("ssh command {command} exited")]
        self.assertEqual((exited["command"], exited["status"], exited["seconds"]),
                         ("hang", 0, 7))


class RawSession(SSHChannel):
    """A session channel driven by hand, to send what our client never would."""

    name = b"session"

    def __init__(self, **kwargs):
        SSHChannel.__init__(self, **kwargs)
        self.opened = Deferred()
        self.ended = Deferred()
        self.status = None
        self.stderr = b""
        self.stdout = b""

    @classmethod
    async def open(cls, testcase, server, name=b"session", extra=b""):
        connection = await server.connect()
        channel = cls(conn=connection._conn)
        channel.name = name
        connection._conn.openChannel(channel, extra)
        await channel.opened
        return channel

    @classmethod
    def open_on(cls, connection):
        """Open a session on an existing ``SSHClientConnection``."""
        channel = cls(conn=connection._conn)
        connection._conn.openChannel(channel)
        return channel.opened

    def channelOpen(self, data):
        self.opened.callback(self)

    def openFailed(self, reason):
        self.opened.errback(reason)

    def request(self, kind, data=b""):
        return self.conn.sendRequest(self, kind, data, wantReply=True)

    async def exec(self, line):
        await self.request(b"exec", NS(line))
        self.conn.sendEOF(self)
        await self.ended
        return self.status, self.stderr

    def dataReceived(self, data):
        self.stdout += data

    def extReceived(self, kind, data):
        self.stderr += data

    def request_exit_status(self, data):
        self.status = struct.unpack(">L", data)[0]
        return 1

    def closed(self):
        if not self.ended.called:
            self.ended.callback(None)


class RefusalTests(SSHTestCase):
    """Everything but exec of a known command is refused."""

    def assert_request_refused(self, kind, data=b""):
        server = self.start_server()
        channel = self.net.run(RawSession.open(self, server))
        self.assert_fails(channel.request(kind, data), ConchError)
        # The session still works afterwards: refusal is per request.
        status, _ = self.net.run(channel.exec(b"version"))
        self.assertEqual((status, channel.stdout), (0, VERSION))
        return server

    def test_shell(self):
        self.assert_request_refused(b"shell")

    def test_pty(self):
        self.assert_request_refused(
            b"pty-req", NS(b"xterm") + struct.pack(">4L", 80, 24, 0, 0) + NS(b""))

    def test_env(self):
        self.assert_request_refused(b"env", NS(b"LD_PRELOAD") + NS(b"/tmp/x.so"))

    def test_subsystem(self):
        self.assert_request_refused(b"subsystem", NS(b"sftp"))

    def test_x11_and_agent(self):
        server = self.assert_request_refused(b"auth-agent-req@openssh.com")
        channel = self.net.run(RawSession.open(self, server))
        self.assert_fails(channel.request(
            b"x11-req", b"\x00" + NS(b"MIT-MAGIC-COOKIE-1") + NS(b"00") + b"\0\0\0\0"),
            ConchError)

    def test_second_exec(self):
        """A session runs one command; a second exec is refused."""
        server = self.start_server()
        channel = self.net.run(RawSession.open(self, server))
        self.net.run(channel.request(b"exec", NS(b"hang")))
        self.assert_fails(channel.request(b"exec", NS(b"version")), ConchError)
        self.assertEqual([name for name, _, _ in server.log.calls], ["hang"])

    def forwarding_target(self, port=5555):
        """A listener that records any connection the server might make to it."""
        accepted = []

        class Recorder(Protocol):
            def connectionMade(self):
                accepted.append(self)
        self.net.listen("127.0.0.1", port, Factory.forProtocol(Recorder))
        return port, accepted

    def test_direct_tcpip(self):
        """Local forwarding (-L): the channel open is prohibited, nothing connects."""
        server = self.start_server()
        port, accepted = self.forwarding_target()
        extra = NS(b"127.0.0.1") + struct.pack(">L", port) + NS(b"127.0.0.1") + \
            struct.pack(">L", 5555)
        e = self.assert_fails(
            RawSession.open(self, server, name=b"direct-tcpip", extra=extra), ConchError)
        self.assertEqual(e.data, conch_connection.OPEN_ADMINISTRATIVELY_PROHIBITED)
        self.net.wait(1)
        self.assertEqual(accepted, [])
        self.assertEqual([server_address.port for _, server_address
                          in self.net.connections], [server.port])

    def test_tcpip_forward(self):
        """Remote forwarding (-R): the global request is refused, nothing listens."""
        server = self.start_server()
        connection = self.net.run(server.connect())
        d = connection._conn.sendGlobalRequest(
            b"tcpip-forward", NS(b"127.0.0.1") + struct.pack(">L", 0), wantReply=True)
        self.assert_fails(d, ConchError)
        result = self.net.run(connection.run(["version"]))
        self.assertEqual(result.stdout, VERSION)
        self.assertEqual(self.net.listeners, [(server.host, server.port)])

    def test_unknown_channel_type(self):
        server = self.start_server()
        e = self.assert_fails(
            RawSession.open(self, server, name=b"bogus@example.com"), ConchError)
        self.assertEqual(e.data, conch_connection.OPEN_UNKNOWN_CHANNEL_TYPE)


class PasswordOnlyAuth(_client._UserAuth):
    """Tries a password (and keyboard-interactive) even though not offered."""

    offered = []

    def serviceStarted(self):
        _client._UserAuth.serviceStarted(self)
        self.askForAuth(b"password", b"\x00" + NS(b"hunter2"))
        self.askForAuth(b"keyboard-interactive", NS(b"") + NS(b""))

    def ssh_USERAUTH_FAILURE(self, packet):
        self.offered.append(packet)
        return _client._UserAuth.ssh_USERAUTH_FAILURE(self, packet)

    def getPublicKey(self):
        return None


class SilentAuth(_client._UserAuth):
    """Starts authentication and then never tries a method."""

    def serviceStarted(self):
        pass


class AuthenticationTests(SSHTestCase):
    def test_unknown_key(self):
        """A key the authorizer does not know is refused; the error names our key."""
        server = self.start_server()
        e = self.assert_fails(server.run(["version"], key=server.stranger_key),
                              ssh.AuthenticationRefused)
        self.assertIn(ssh.fingerprint(server.stranger_key), str(e))
        self.assertEqual(server.log.calls, [])

    def test_peer_keys_change_at_run_time(self):
        """A key becomes a peer when the authorizer is told, and stops being one."""
        server = self.start_server()
        server.authorizer.set_keys(PEER, [server.stranger_key])
        result = self.net.run(server.run(["version"], key=server.stranger_key))
        self.assertEqual(result.stdout, VERSION)
        self.assert_fails(server.run(["version"], key=server.peer_key),
                          ssh.AuthenticationRefused)

    def test_failing_authorizer_refuses(self):
        """An authorizer that raises refuses the key (and the error is logged)."""
        server = self.start_server()

        def broken(key):
            raise RuntimeError("keys file unreadable")
        checker = server.factory.portal.checkers[ISSHPrivateKey]
        checker._authorizer = broken
        self.assert_fails(server.run(["version"]), ssh.AuthenticationRefused)
        self.assertTrue(self.flushLoggedErrors(RuntimeError))

    def connect_with(self, server, userauth_class):
        """A client transport connected to ``server``, authenticating with
        ``userauth_class``."""
        class Transport(_client._ClientTransport):
            pass
        Transport.userauth_class = userauth_class
        factory = _client._ClientFactory(server.client()._settings, server.host,
                                         server.port)
        factory.transport_class = Transport
        return self.net.run(TCP4ClientEndpoint(self.net, server.host, server.port)
                            .connect(factory))

    def test_password_refused(self):
        """
        The server offers publickey only; password and keyboard-interactive
        attempts fail and the client ends up refused.
        """
        server = self.start_server()
        PasswordOnlyAuth.offered = []
        transport = self.connect_with(server, PasswordOnlyAuth)
        self.assert_fails(transport.ready, ssh.AuthenticationRefused)
        self.assertTrue(PasswordOnlyAuth.offered)
        for packet in PasswordOnlyAuth.offered:
            self.assertEqual(packet, NS(b"publickey") + b"\x00")
        self.assertEqual(server.log.calls, [])

    def test_login_timeout_on_the_injected_clock(self):
        """
        A client that asks for ssh-userauth and never tries a method is
        disconnected at the login deadline (counted from the TCP connection,
        on the server's reactor), and conch's own login timer, started at
        ssh-userauth, runs on that reactor too.
        """
        server = self.start_server()
        deadline = ssh.ServerLimits().login_timeout
        transport = self.connect_with(server, SilentAuth)
        [server_transport] = self.net.server_protocols()
        userauth = server_transport.service
        self.assertIsInstance(userauth, _server._UserAuthServer)
        self.assertIs(userauth.clock, self.net)
        self.assertLessEqual(userauth.loginTimeout, deadline)
        self.net.wait(deadline - 1)
        self.assertNoResult(transport.ready)
        self.assertEqual(len(self.net.connections), 1)
        self.net.wait(1)
        self.assert_fails(transport.ready, ssh.AuthenticationRefused)
        self.assertEqual(self.net.connections, [])


class HostKeyTests(SSHTestCase):
    def test_unknown_host_key(self):
        """
        A host missing from known_hosts is refused; the error shows the
        fingerprint and the exact line that, once added, makes it work.
        """
        server = self.start_server()
        os.remove(server.known_hosts)
        e = self.assert_fails(server.run(["version"]), ssh.UnknownHostKey)
        self.assertEqual(e.fingerprint, ssh.fingerprint(server.host_key))
        self.assertIn(e.fingerprint, str(e))
        self.assertIn(e.line, str(e))
        self.assertIn(server.known_hosts, str(e))
        self.assertEqual(server.log.calls, [])
        self.assertFalse(os.path.exists(server.known_hosts), "never trusted silently")
        with open(server.known_hosts, "w") as f:
            f.write(e.line + "\n")
        result = self.net.run(server.run(["version"]))
        self.assertEqual(result.stdout, VERSION)

    def test_changed_host_key(self):
        """A host whose key differs from known_hosts is refused, naming the line."""
        server = self.start_server()
        impostor = ssh.generate_key()
        with open(server.known_hosts, "w") as f:
            f.write("# trusted nodes\n" + ssh.known_hosts_line("127.0.0.1", server.port,
                                                              impostor) + "\n")
        e = self.assert_fails(server.run(["version"]), ssh.HostKeyMismatch)
        self.assertEqual(e.lines, (2,))
        self.assertIn("HOST KEY CHANGED", str(e))
        self.assertIn(ssh.fingerprint(server.host_key), str(e))
        self.assertIn("line 2", str(e))
        self.assertEqual(server.log.calls, [])

    def test_plain_sshd_entry_is_not_a_changed_key(self):
        """
        The node's sshd key under its plain address (port 22) does not make
        the first contact on our port say "HOST KEY CHANGED": the key is
        unknown, with the line to add.
        """
        server = self.start_server()
        sshd = ssh.generate_key()
        with open(server.known_hosts, "w") as f:
            f.write("127.0.0.1 " + ssh.public_key_line(sshd) + "\n")
        e = self.assert_fails(server.run(["version"]), ssh.UnknownHostKey)
        self.assertNotIsInstance(e, ssh.HostKeyMismatch)
        self.assertNotIn("HOST KEY CHANGED", str(e))
        self.assertIn(e.line, str(e))
        self.assertTrue(e.line.startswith("[127.0.0.1]:%d " % (server.port,)))


class StreamingTests(SSHTestCase):
    """
    Backpressure in both directions with a small window so a few MiB make
    many windows: the sender is paused, and the bytes in flight between
    producer and consumer never exceed one window plus one write.
    """

    window_size = 64 * 1024
    max_packet = 16 * 1024
    total = 3 * 1024 * 1024

    def in_flight_limit(self, producer):
        return self.window_size + producer.chunk + self.max_packet

    def test_stdin_backpressure(self):
        """
        A slow consumer of stdin on the server holds back the client's
        producer; the server buffers at most one window.
        """
        server = self.start_server()
        producer = ZeroProducer(self.total)
        excess = []

        def check():
            consumer = server.log.consumers[0]
            in_flight = producer.sent - consumer.received
            if in_flight > self.in_flight_limit(producer):
                excess.append(in_flight)
        # Much slower than the network, so an unbounded window would show.
        server.log.stdin_consumer_factory = lambda: SlowConsumer(
            clock=self.net, check=check, resume_delay=0.002)
        connection = self.net.run(server.connect(key=server.peer_key))
        result = self.net.run(connection.run(["receive", "vol"], stdin_producer=producer))
        self.assertEqual(result.stdout, b"%d\n" % (self.total,))
        consumer = server.log.consumers[0]
        self.assertEqual((consumer.received, consumer.offset_errors), (self.total, 0))
        self.assertGreater(consumer.writes, 10)
        self.assertGreater(producer.pauses, 10)
        self.assertEqual(excess, [])
        session = server.log.sessions[0]
        self.assertLessEqual(session.stdin_max_buffered, self.window_size)

    def test_stdin_stalled_consumer(self):
        """
        A consumer that stops taking bytes stops the client: the sender
        sends one window and waits, and sends nothing more while it waits.
        """
        server = self.start_server()
        server.log.stdin_consumer_factory = lambda: SlowConsumer(
            clock=self.net, auto_resume=False)
        producer = ZeroProducer(self.total)
        connection = self.net.run(server.connect(key=server.peer_key))
        running = connection.run(["receive", "vol"], stdin_producer=producer)
        self.net.pump()
        consumer = server.log.consumers[0]
        self.assertTrue(producer.paused)
        self.assertLessEqual(producer.sent - consumer.received,
                             self.in_flight_limit(producer))
        self.assertLessEqual(server.log.sessions[0].stdin_buffered, self.window_size)
        sent = producer.sent
        self.net.wait(60)
        self.assertEqual(producer.sent, sent)
        self.assertNoResult(running)
        consumer.auto_resume = True
        consumer.resume()
        result = self.net.run(running)
        self.assertEqual(result.stdout, b"%d\n" % (self.total,))

    def test_server_closes_while_stdin_waits(self):
        """
        The server ends the command without reading stdin (a receive that
        failed) while the client holds more than a window of it: the run
        fails at once with the command's status and the producer is
        stopped, rather than waiting for a window that never opens.
        """
        server = self.start_server()
        producer = ZeroProducer(self.total)
        connection = self.net.run(server.connect(key=server.peer_key, idle_timeout=60))
        running = connection.run(["exit", "3"], stdin_producer=producer)
        e = self.assert_fails(running, ssh.RemoteCommandFailed, limit=10)
        self.assertEqual(e.status, 3)
        self.assertTrue(producer.stopped)
        self.assertLess(producer.sent, self.total)

    def test_stdout_backpressure(self):
        """
        A slow stdout consumer on the client pauses the server's producer;
        the server's channel buffer stays at one write.
        """
        server = self.start_server()
        consumer = SlowConsumer(clock=self.net, resume_delay=0.002)
        excess = []

        def check():
            producer = server.log.producers[0]
            in_flight = producer.sent - consumer.received
            if in_flight > self.in_flight_limit(producer):
                excess.append(in_flight)
        server.log.stdout_check = check
        result = self.net.run(server.run(["produce", str(self.total)],
                                         stdout_consumer=consumer))
        self.assertIsNone(result.stdout)
        self.assertEqual((consumer.received, consumer.offset_errors), (self.total, 0))
        producer = server.log.producers[0]
        self.assertGreater(producer.pauses, 10)
        self.assertEqual(excess, [])
        session = server.log.sessions[0]
        self.assertGreater(session.stdout_pauses, 10)
        self.assertLessEqual(session.stdout_max_buffered, producer.chunk)

    def test_stdout_stalled_consumer_is_not_idle(self):
        """
        While our consumer holds the stream paused, silence is not idleness:
        the idle timeout does not fire, and the stream completes on resume.
        """
        server = self.start_server()
        consumer = SlowConsumer(clock=self.net, auto_resume=False)
        connection = self.net.run(server.connect(idle_timeout=5))
        running = connection.run(["produce", str(self.total)], stdout_consumer=consumer)
        self.net.pump()
        producer = server.log.producers[0]
        self.assertTrue(producer.paused)
        self.assertLessEqual(producer.sent - consumer.received,
                             self.in_flight_limit(producer))
        self.net.wait(60)
        self.assertNoResult(running)
        consumer.auto_resume = True
        consumer.resume()
        self.net.run(running)
        self.assertEqual(consumer.received, self.total)

    def test_stdout_collected(self):
        """Without a consumer, stdout is collected in full, or refused if too big."""
        server = self.start_server()
        result = self.net.run(server.run(["produce", "1000000"]))
        self.assertEqual(len(result.stdout), 1000000)
        self.assert_fails(
            server.run(["produce", "1000000"], client_kwargs={"max_output": 1000}),
            ssh.OutputTooLarge)


class TimeoutTests(SSHTestCase):
    def test_connect_timeout(self):
        """A server that accepts TCP but never speaks SSH times out; TCP is closed."""
        lost = Deferred()
        connected = Deferred()

        class Silent(Protocol):
            def connectionMade(self):
                connected.callback(None)

            def connectionLost(self, reason):
                lost.callback(None)
        self.net.listen("127.0.0.1", 2222, Factory.forProtocol(Silent))
        client = ssh.SSHClient(self.net, ssh.generate_key(), self.mktemp(),
                               connect_timeout=5)
        d = client.connect("127.0.0.1", 2222)
        self.net.pump()
        self.successResultOf(connected)
        self.net.wait(4)
        self.assertNoResult(d)
        self.net.wait(1)
        e = self.failureResultOf(d, ssh.SSHTimeout).value
        self.assertEqual((e.phase, e.seconds), ("connect", 5))
        self.assertIn("timed out after 5s connecting", str(e))
        self.net.pump()
        self.successResultOf(lost)

    def test_connection_refused(self):
        """Nothing listening: ConnectFailed naming the host and port."""
        client = ssh.SSHClient(self.net, ssh.generate_key(), self.mktemp())
        e = self.assert_fails(client.connect("127.0.0.1", 2222), ssh.ConnectFailed)
        self.assertIn("127.0.0.1:2222", str(e))
        self.assertIn("refused", str(e))

    def test_idle_timeout(self):
        """
        A command that goes silent is abandoned after the idle timeout, and
        the server's command is cancelled when the channel closes.
        """
        server = self.start_server()
        connection = self.net.run(server.connect(idle_timeout=10))
        running = connection.run(["hang"])
        self.net.pump()
        self.successResultOf(server.log.wait_started("hang"))
        self.net.wait(9)
        self.assertNoResult(running)
        self.net.wait(1)
        e = self.failureResultOf(running, ssh.SSHTimeout).value
        self.assertEqual(e.phase, "idle")
        self.assertIn("`hang`", str(e))
        self.net.pump()
        self.assertEqual(server.log.cancelled, ["hang"])

    def test_activity_defers_idle_timeout(self):
        """Traffic resets the idle clock; only silence counts."""
        server = self.start_server()
        connection = self.net.run(server.connect(idle_timeout=10))
        running = connection.run(["hang"])
        session = self.net.run(server.log.wait_started("hang"))
        for _ in range(3):
            self.net.wait(6)
            session.write(b"tick\n")
            self.net.pump()
        self.assertNoResult(running)
        session.exit(0)
        result = self.net.run(running)
        self.assertEqual(result.stdout, b"tick\n" * 3)

    def test_cancel(self):
        """Cancelling a running command closes its channel; the server cancels it."""
        server = self.start_server()
        connection = self.net.run(server.connect())
        running = connection.run(["hang"])
        self.net.run(server.log.wait_started("hang"))
        running.cancel()
        self.failureResultOf(running, CancelledError)
        self.net.pump()
        self.assertEqual(server.log.cancelled, ["hang"])
        result = self.net.run(connection.run(["version"]))
        self.assertEqual(result.stdout, VERSION)

    def test_server_goes_away(self):
        """A connection lost mid-command fails it, with the host named."""
        server = self.start_server()
        connection = self.net.run(server.connect())
        running = connection.run(["hang"])
        session = self.net.run(server.log.wait_started("hang"))
        session.write_stderr("partial progress\n")
        self.net.pump()
        session._channel.conn.transport.transport.abortConnection()
        e = self.assert_fails(running, ssh.RemoteCommandFailed)
        self.assertIsNone(e.status)
        self.assertIn("closed before the command finished", str(e))
        self.assertIn("partial progress", str(e))
        self.assertIn("127.0.0.1:%d" % (server.port,), str(e))

    def test_node_cut_off(self):
        """A node whose connections drop mid-command (it went away): the run
        fails at once, and the server's command is cancelled."""
        server = self.start_server()
        connection = self.net.run(server.connect())
        running = connection.run(["hang"])
        self.net.run(server.log.wait_started("hang"))
        self.net.cut(server.host)
        e = self.failureResultOf(running, ssh.RemoteCommandFailed).value
        self.assertIn("closed before the command finished", str(e))
        self.assertEqual(server.log.cancelled, ["hang"])
        self.assertFalse(connection.connected)

    def test_node_stops_answering(self):
        """
        A node that stops answering mid-command (powered off, partitioned)
        is given up on after the idle timeout; a new connection to it times
        out.
        """
        server = self.start_server()
        connection = self.net.run(server.connect(idle_timeout=30, connect_timeout=10))
        running = connection.run(["hang"])
        session = self.net.run(server.log.wait_started("hang"))
        self.net.stall(server.host)
        session.write(b"never arrives\n")
        self.net.wait(29)
        self.assertNoResult(running)
        self.net.wait(1)
        e = self.failureResultOf(running, ssh.SSHTimeout).value
        self.assertEqual(e.phase, "idle")
        started = self.net.seconds()
        e = self.assert_fails(server.connect(connect_timeout=10), ssh.SSHError)
        self.assertEqual(self.net.seconds(), started + 10)
        self.assertIn("127.0.0.1:%d" % (server.port,), str(e))


class Stalling(Protocol):
    """
    A client that sends ``greeting`` (perhaps nothing) and then nothing
    more: it never finishes key exchange, let alone authentication.
    """

    def __init__(self, greeting=b""):
        self.greeting = greeting
        self.received = b""
        self.lost = None

    def connectionMade(self):
        if self.greeting:
            self.transport.write(self.greeting)

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.lost = reason


STALLS = {
    "silent": b"",
    "half a version line": b"SSH-2.0-x",
    "in key exchange": b"SSH-2.0-stall\r\n",
}


class LimitsTestCase(SSHTestCase):
    def stall(self, source="10.0.0.5", greeting=b""):
        """A connection from ``source`` that stalls; fires with its ``Stalling``."""
        endpoint = TCP4ClientEndpoint(self.net.host(source), self.server.host,
                                      self.server.port)
        return endpoint.connect(Factory.forProtocol(lambda: Stalling(greeting)))

    def stall_many(self, sources, greeting=b""):
        return [self.net.run(self.stall(source, greeting)) for source in sources]

    def assert_refused(self, source="10.0.0.5"):
        self.assertRaises(ConnectionRefusedError, self.net.run, self.stall(source))


class ServerLimitsTests(SynchronousTestCase):
    def test_defaults(self):
        """The documented defaults (README, Security)."""
        limits = ssh.ServerLimits()
        self.assertEqual(
            (limits.login_timeout, limits.max_unauthenticated,
             limits.max_unauthenticated_per_address, limits.max_sessions,
             limits.max_connections_per_key, limits.initial_window_size,
             limits.refusals_logged_per_minute),
            (30, 64, 10, 10, 32, 64 * 1024, 20))

    def test_invalid(self):
        """Limits are positive numbers."""
        for name in ("login_timeout", "max_unauthenticated", "max_sessions",
                     "max_unauthenticated_per_address", "max_connections_per_key",
                     "initial_window_size"):
            self.assertRaises(ValueError, ssh.ServerLimits, **{name: 0})


class LoginDeadlineTests(LimitsTestCase):
    """Issue 17, point 1: unauthenticated connections end at a deadline."""

    def test_stalled_connections_closed_at_the_deadline(self):
        """
        Silent, half a version line, stalled in key exchange: each is closed
        30 s after it connected, not a moment before.
        """
        self.start_server()
        stalled = {}
        for number, (what, greeting) in enumerate(sorted(STALLS.items()), 5):
            stalled[what] = self.net.run(self.stall("10.0.0.%d" % (number,), greeting))
        self.assertTrue(stalled["in key exchange"].received.startswith(b"SSH-2.0-"))
        self.net.wait(29.5)
        for what, client in stalled.items():
            self.assertIsNone(client.lost, what)
        self.net.wait(0.5)
        for what, client in stalled.items():
            self.assertIsNotNone(client.lost, what)
        self.assertEqual(self.net.connections, [])

    def test_deadline_configurable(self):
        """The deadline is the factory's, on the injected clock."""
        self.start_server(limits=ssh.ServerLimits(login_timeout=5))
        client = self.net.run(self.stall())
        self.net.wait(4.9)
        self.assertIsNone(client.lost)
        self.net.wait(0.1)
        self.assertIsNotNone(client.lost)

    def test_authentication_cancels_the_deadline(self):
        """An authenticated connection outlives the deadline, idle or not."""
        server = self.start_server()
        connection = self.net.run(server.connect())
        self.net.wait(3 * ssh.ServerLimits().login_timeout)
        result = self.net.run(connection.run(["version"]))
        self.assertEqual(result.stdout, VERSION)
        self.assertTrue(connection.connected)

    def test_deadline_logged(self):
        """A closed connection is logged with its address and the deadline."""
        self.start_server(limits=ssh.ServerLimits(login_timeout=5))
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.net.run(self.stall("10.0.0.8"))
        self.net.wait(5)
        [event] = [e for e in events if e.get("log_format", "").startswith(
            "ssh login deadline")]
        self.assertEqual((event["address"], event["seconds"]), ("10.0.0.8", 5))


class UnauthenticatedLimitTests(LimitsTestCase):
    """Issue 17, point 1: at most so many unauthenticated connections."""

    def test_per_address(self):
        """
        The 11th unauthenticated connection from one address is refused;
        another address is served meanwhile, and a slot that frees is
        usable again.
        """
        server = self.start_server()
        held = self.stall_many(["10.0.0.5"] * 10)
        self.assert_refused("10.0.0.5")
        self.assertEqual(self.net.run(server.run(["version"])).stdout, VERSION)
        held[0].transport.loseConnection()
        self.net.pump()
        self.net.run(self.stall("10.0.0.5"))
        self.assert_refused("10.0.0.5")

    def test_in_total(self):
        """
        64 unauthenticated connections in all, whatever their addresses; the
        deadline frees the slots.
        """
        server = self.start_server()
        self.stall_many(["10.0.1.%d" % (n,) for n in range(1, 65)])
        self.assert_refused("10.0.2.1")
        self.assert_fails(server.connect(), ssh.ConnectFailed)
        self.net.wait(ssh.ServerLimits().login_timeout)
        self.assertEqual(self.net.connections, [])
        self.assertEqual(self.net.run(server.run(["version"])).stdout, VERSION)

    def test_authenticated_connections_do_not_count(self):
        """Once authenticated, a connection leaves the unauthenticated count."""
        server = self.start_server(limits=ssh.ServerLimits(
            max_unauthenticated_per_address=2))
        connections = [self.net.run(server.connect()) for _ in range(4)]
        self.stall_many(["127.0.0.1"] * 2)
        self.assert_refused("127.0.0.1")
        for connection in connections:
            self.assertEqual(self.net.run(connection.run(["version"])).stdout,
                             VERSION)

    def test_refusals_logged(self):
        """A refused connection is logged (rate-limited) with its address."""
        self.start_server(limits=ssh.ServerLimits(max_unauthenticated_per_address=1))
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.net.run(self.stall("10.0.0.5"))
        self.assert_refused("10.0.0.5")
        [event] = [e for e in events if e.get("log_format", "").startswith(
            "ssh connection refused")]
        self.assertEqual(event["address"], "10.0.0.5")

    def test_tcp_keepalive(self):
        """Issue 17, point 3: accepted connections have TCP keepalive on."""
        self.start_server()
        self.net.run(self.stall())
        [transport] = self.net.server_protocols()
        self.assertTrue(transport.transport.tcp_keepalive)


class ChannelLimitTests(LimitsTestCase):
    """Issue 17, point 4: sessions, connections per key, window sizes."""

    def test_sessions_per_connection(self):
        """
        Ten sessions on one connection; the eleventh is refused as a
        resource shortage, saying why; a closed one frees its slot.
        """
        server = self.start_server()
        connection = self.net.run(server.connect())
        sessions = [self.net.run(RawSession.open_on(connection)) for _ in range(10)]
        e = self.assert_fails(RawSession.open_on(connection), ConchError)
        self.assertEqual(e.data, conch_connection.OPEN_RESOURCE_SHORTAGE)
        self.assertIn(b"at most 10 sessions", e.args[0])
        sessions[0].loseConnection()
        self.net.pump()
        self.net.run(RawSession.open_on(connection))
        self.assertEqual(self.net.run(server.run(["version"])).stdout, VERSION)

    def test_connections_per_key(self):
        """
        A key may hold so many authenticated connections at once; one more
        is refused, saying why; other keys are not affected; a closed
        connection frees its slot.
        """
        server = self.start_server(limits=ssh.ServerLimits(max_connections_per_key=3))
        connections = [self.net.run(server.connect()) for _ in range(3)]
        e = self.assert_fails(server.connect(), ssh.AuthenticationRefused)
        self.assertIn("too many connections for this key (at most 3)", str(e))
        self.assertEqual(self.net.run(server.run(["version"], key=server.peer_key))
                         .stdout, VERSION)
        self.net.run(connections[0].close())
        self.net.run(server.connect())
        for connection in connections[1:]:
            self.assertEqual(self.net.run(connection.run(["version"])).stdout,
                             VERSION)

    def server_channels(self):
        return [channel for transport in self.net.server_protocols()
                for channel in transport.service.channels.values()]

    def test_small_window_for_commands_that_read_little(self):
        """
        Stdin sent to a command that never reads it is held to the small
        initial window, whatever the connection's full window.
        """
        server = self.start_server(window_size=8 * 1024 * 1024)
        connection = self.net.run(server.connect())
        running = connection.run(["hang"], stdin=b"x" * (1024 * 1024))
        self.net.run(server.log.wait_started("hang"))
        self.net.pump()
        self.assertEqual(server.log.sessions[0].stdin_buffered, 64 * 1024)
        running.cancel()
        self.failureResultOf(running, CancelledError)

    def test_window_widened_for_large_input(self):
        """
        A command flagged large_input (receive) gets the full window once it
        streams stdin: a stalled consumer then holds up to that window.
        """
        server = self.start_server(window_size=1024 * 1024)
        self.assertTrue(server.factory.settings.commands["receive"].large_input)
        self.assertFalse(server.factory.settings.commands["upper"].large_input)
        server.log.stdin_consumer_factory = lambda: SlowConsumer(
            clock=self.net, auto_resume=False)
        connection = self.net.run(server.connect(key=server.peer_key))
        running = connection.run(["receive", "v"], stdin=b"x" * (4 * 1024 * 1024))
        self.net.run(server.log.wait_started("receive"))
        self.net.pump()
        session = server.log.sessions[0]
        [channel] = self.server_channels()
        self.assertEqual(channel.localWindowSize, 1024 * 1024)
        self.assertGreater(session.stdin_buffered, 64 * 1024)
        self.assertLessEqual(session.stdin_buffered, 1024 * 1024)
        running.cancel()
        self.failureResultOf(running, CancelledError)

    def test_command_flag(self):
        """Command(roles, run, help, large_input=False)."""
        command = ssh.Command({OPERATOR}, lambda *a: 0, "help")
        self.assertFalse(command.large_input)
        self.assertTrue(ssh.Command({PEER}, lambda *a: 0, "h", large_input=True)
                        .large_input)


class RefusalLogTests(LimitsTestCase):
    """Issue 17, point 5: what a refused client can put in the log."""

    def setUp(self):
        LimitsTestCase.setUp(self)
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def logged(self, prefix):
        return [e for e in self.events if e.get("log_format", "").startswith(prefix)]

    def test_user_name_truncated_repr(self):
        """
        The refused key's user name is logged as a short repr: no terminal
        escapes, not the whole name.
        """
        server = self.start_server()
        name = "\x1b[2J\x1b]0;pwned\x07" + "A" * 186
        self.assert_fails(server.run(["version"], key=server.stranger_key,
                                     client_kwargs={"username": name}),
                          ssh.AuthenticationRefused)
        [event] = self.logged("ssh auth refused")
        shown = event["username"]
        self.assertLess(len(shown), 120)
        self.assertNotIn("\x1b", shown)
        self.assertIn("\\x1b[2J", shown)
        self.assertIn("200 bytes", shown)
        self.assertNotIn("\x1b", formatEvent(event))

    def test_huge_user_name_disconnected(self):
        """
        A user name longer than any real one (here 100 KiB) is refused before
        conch's own code sees it, logged truncated.
        """
        server = self.start_server()
        self.assert_fails(server.run(["version"], key=server.stranger_key,
                                     client_kwargs={"username": "B" * 100000}),
                          ssh.AuthenticationRefused)
        [event] = self.logged("ssh auth refused")
        self.assertLess(len(event["username"]), 120)
        for event in self.events:
            self.assertLess(len(formatEvent(event)), 2000)

    def test_refusals_rate_limited(self):
        """
        At most 20 refusal lines a minute; the rest are counted in one line
        when the minute ends; the next minute logs again.
        """
        server = self.start_server()
        for _ in range(30):
            self.assert_fails(server.run(["version"], key=server.stranger_key),
                              ssh.AuthenticationRefused)
        self.assertEqual(len(self.logged("ssh auth refused")), 20)
        self.assertEqual(self.logged("ssh refusals not logged"), [])
        self.net.wait(60)
        [summary] = self.logged("ssh refusals not logged")
        self.assertEqual(summary["count"], 10)
        self.assert_fails(server.run(["version"], key=server.stranger_key),
                          ssh.AuthenticationRefused)
        self.assertEqual(len(self.logged("ssh auth refused")), 21)


REMOVED_CIPHERS = {b"3des-cbc", b"aes128-cbc", b"aes192-cbc", b"aes256-cbc",
                   b"blowfish-cbc", b"cast128-cbc", b"arcfour", b"arcfour128",
                   b"arcfour256"}
REMOVED_MACS = {b"hmac-md5", b"hmac-sha1", b"hmac-md5-96", b"hmac-sha1-96"}
REMOVED_KEX = {b"diffie-hellman-group1-sha1", b"diffie-hellman-group14-sha1",
               b"diffie-hellman-group-exchange-sha1"}


class AlgorithmTests(SSHTestCase):
    """Issue 17, point 11: only modern algorithms, offered by both ends."""

    def offered(self, transport):
        return {"ciphers": set(transport.supportedCiphers),
                "macs": set(transport.supportedMACs),
                "kex": set(transport.supportedKeyExchanges),
                "compressions": set(transport.supportedCompressions)}

    def assert_modern(self, transport):
        offered = self.offered(transport)
        self.assertEqual(offered["ciphers"] & REMOVED_CIPHERS, set())
        self.assertFalse([c for c in offered["ciphers"] if c.endswith(b"-cbc")])
        self.assertEqual(offered["macs"] & REMOVED_MACS, set())
        self.assertFalse([m for m in offered["macs"] if b"sha1" in m or b"md5" in m])
        self.assertEqual(offered["kex"] & REMOVED_KEX, set())
        self.assertFalse([k for k in offered["kex"] if k.endswith(b"sha1")])
        self.assertEqual(offered["compressions"], {b"none"})
        self.assertTrue({b"aes128-ctr", b"aes256-ctr"} <= offered["ciphers"])
        self.assertTrue({b"hmac-sha2-256", b"hmac-sha2-512"} <= offered["macs"])
        self.assertIn(b"curve25519-sha256", offered["kex"])

    def test_server_offers(self):
        server = self.start_server()
        self.assert_modern(server.factory.buildProtocol(
            IPv4Address("TCP", "10.0.0.5", 40000)))

    def test_client_offers(self):
        server = self.start_server()
        transport = _client._ClientTransport(server.client()._settings,
                                             server.host, server.port)
        self.assert_modern(transport)
        self.assertNotIn(b"ssh-dss", transport.supportedPublicKeys)
        self.assertNotIn(b"ssh-rsa", transport.supportedPublicKeys)
        self.assertIn(b"ssh-ed25519", transport.supportedPublicKeys)

    def test_user_key_signatures_advertised(self):
        """
        server-sig-algs names the user key signatures the server verifies
        (rsa-sha2 and the rest), not only its host key's algorithm.
        """
        server = self.start_server()
        connection = self.net.run(server.connect())
        advertised = connection._transport.peerExtensions[b"server-sig-algs"].split(b",")
        self.assertTrue({b"ssh-ed25519", b"rsa-sha2-512", b"rsa-sha2-256",
                         b"ecdsa-sha2-nistp256"} <= set(advertised))
        self.assertNotIn(b"ssh-rsa", advertised)
        self.assertNotIn(b"ssh-dss", advertised)

    def test_old_client_refused(self):
        """A client offering only removed algorithms cannot connect."""
        server = self.start_server()
        for name, value in [("supportedCiphers", [b"aes128-cbc", b"3des-cbc"]),
                            ("supportedMACs", [b"hmac-sha1", b"hmac-md5"]),
                            ("supportedKeyExchanges",
                             [b"diffie-hellman-group14-sha1",
                              b"diffie-hellman-group-exchange-sha1"])]:
            class Old(_client._ClientTransport):
                pass
            setattr(Old, name, value)
            factory = _client._ClientFactory(server.client()._settings, server.host,
                                             server.port)
            factory.transport_class = Old
            transport = self.net.run(
                TCP4ClientEndpoint(self.net, server.host, server.port).connect(factory))
            self.assert_fails(transport.ready, ssh.ConnectFailed)
        self.assertEqual(self.net.run(server.run(["version"])).stdout, VERSION)


class ClientPacingTests(SSHTestCase):
    """Our client keeps under the server's limits instead of being refused."""

    def test_handshakes_per_host(self):
        """
        Sixteen connections at once to a server taking 4 unauthenticated
        ones per address: the client runs at most 4 handshakes at a time,
        and every connection succeeds.
        """
        server = self.start_server(limits=ssh.ServerLimits(
            max_unauthenticated_per_address=4))
        client = server.client()
        connections = self.net.run(gatherResults(
            [client.connect(server.host, server.port) for _ in range(16)]))
        self.assertEqual(len(connections), 16)
        self.assertEqual(self.net.run(connections[-1].run(["version"])).stdout,
                         VERSION)

    def test_connections_per_host(self):
        """
        Beyond max_connections_per_host open connections to one host, a
        connect waits for one to close (its connect timeout not yet running).
        """
        server = self.start_server()
        client = server.client(max_connections_per_host=2, connect_timeout=5)
        first, second = [self.net.run(client.connect(server.host, server.port))
                         for _ in range(2)]
        waiting = client.connect(server.host, server.port)
        self.net.wait(60)
        self.assertNoResult(waiting)
        self.net.run(first.close())
        third = self.net.run(waiting)
        self.assertEqual(self.net.run(third.run(["version"])).stdout, VERSION)
        self.assertEqual(self.net.run(second.run(["version"])).stdout, VERSION)

    def test_waiting_connect_cancelled(self):
        """A connect waiting for a slot can be cancelled; the slot queue moves on."""
        server = self.start_server()
        client = server.client(max_connections_per_host=1)
        first = self.net.run(client.connect(server.host, server.port))
        waiting = client.connect(server.host, server.port)
        waiting.cancel()
        self.failureResultOf(waiting, CancelledError)
        self.net.run(first.close())
        self.net.run(client.connect(server.host, server.port))

    def test_default_under_the_servers_limits(self):
        """The client's defaults stay under the server's."""
        limits = ssh.ServerLimits()
        self.assertLess(_client.DEFAULT_MAX_HANDSHAKES_PER_HOST,
                        limits.max_unauthenticated_per_address)
        self.assertLess(_client.DEFAULT_MAX_CONNECTIONS_PER_HOST,
                        limits.max_connections_per_key)


class MemoryTCPNetworkTests(SynchronousTestCase):
    """The in-memory network the SSH tests (and the node tests) run on."""

    def setUp(self):
        forbid_global_reactor(self)
        self.net = MemoryTCPNetwork()

    def echo_server(self, host="10.0.0.1", port=7):
        received = []

        class Echo(Protocol):
            def dataReceived(self, data):
                received.append(data)
                self.transport.write(data)
        self.net.listen(host, port, Factory.forProtocol(Echo))
        return received

    def connect(self, host="10.0.0.1", port=7, reactor=None):
        return TCP4ClientEndpoint(reactor or self.net, host, port, timeout=5).connect(
            Factory.forProtocol(Collect))

    def test_provides_reactor_interfaces(self):
        """The network and a node's view of it are reactors for library code."""
        for reactor in (self.net, self.net.host("10.0.0.2")):
            for interface in (IReactorTime, IReactorTCP,
                              IReactorPluggableNameResolver):
                self.assertTrue(interface.providedBy(reactor), interface)
        verifyObject(IReactorTime, self.net)
        verifyObject(IReactorTCP, self.net)

    def test_bytes_move_when_pumped(self):
        """A connection completes on the next turn; bytes move on pump."""
        received = self.echo_server()
        d = self.connect()
        self.assertNoResult(d)
        self.net.pump()
        client = self.successResultOf(d)
        client.transport.write(b"ping")
        self.assertEqual(received, [])
        self.net.pump()
        self.assertEqual((received, client.data), ([b"ping"], [b"ping"]))
        self.assertEqual(client.transport.getPeer(), IPv4Address("TCP", "10.0.0.1", 7))

    def test_refused_and_names(self):
        """No listener: refused; names resolve through add_name, else fail."""
        self.echo_server()
        self.failureResultOf_run(self.connect(port=8), ConnectionRefusedError)
        self.net.add_name("node1", "10.0.0.1")
        self.assertEqual(self.successResultOf(self.net.resolve("node1")), "10.0.0.1")
        self.failureResultOf(self.net.resolve("nowhere"), DNSLookupError)
        client = self.net.run(HostnameEndpoint(self.net, "node1", 7).connect(
            Factory.forProtocol(Collect)))
        self.assertEqual(client.transport.getPeer().host, "10.0.0.1")

    def failureResultOf_run(self, d, exception_type):
        self.assertRaises(exception_type, self.net.run, d)

    def test_host_view(self):
        """A node's reactor connects from its address and listens on it."""
        node = self.net.host("10.0.0.2")
        node.listenTCP(7, Factory.forProtocol(Collect))
        self.assertIn(("10.0.0.2", 7), self.net.listeners)
        self.echo_server()
        client = self.net.run(self.connect(reactor=node))
        self.assertEqual(client.transport.getHost().host, "10.0.0.2")
        call = node.callLater(3, lambda: None)
        self.assertEqual(self.net.getDelayedCalls(), [call])

    def test_stall_and_heal(self):
        """A stalled host holds bytes and connection attempts; heal releases them."""
        received = self.echo_server()
        client = self.net.run(self.connect())
        self.net.stall("10.0.0.1")
        client.transport.write(b"held")
        pending = self.connect()
        self.net.wait(4)
        self.assertEqual(received, [])
        self.assertNoResult(pending)
        self.net.heal("10.0.0.1")
        self.net.pump()
        self.assertEqual(received, [b"held"])
        self.successResultOf(pending)
        self.net.stall("10.0.0.1")
        timing_out = self.connect()
        self.net.wait(5)
        self.failureResultOf(timing_out, TimeoutError)

    def test_cut(self):
        """A cut host's connections are lost at both ends; it still accepts."""
        server_lost = []

        class Server(Protocol):
            def connectionLost(self, reason):
                server_lost.append(reason.type)
        self.net.listen("10.0.0.1", 7, Factory.forProtocol(Server))
        client = self.net.run(self.connect())
        self.net.cut("10.0.0.1")
        self.assertEqual((client.lost, server_lost), ([ConnectionLost], [ConnectionLost]))
        self.assertEqual(self.net.connections, [])
        self.net.run(self.connect())

    def test_close_and_abort(self):
        """loseConnection delivers what was written first; abort drops it."""
        received = self.echo_server()
        client = self.net.run(self.connect())
        client.transport.write(b"last words")
        client.transport.loseConnection()
        self.net.pump()
        self.assertEqual((received, client.lost), ([b"last words"], [ConnectionDone]))
        client = self.net.run(self.connect())
        client.transport.write(b"dropped")
        client.transport.abortConnection()
        self.net.pump()
        self.assertEqual((received, client.lost),
                         ([b"last words"], [ConnectionAborted]))

    def test_pull_producer(self):
        """A pull producer on a transport is asked for more at each turn."""
        received = self.echo_server()
        client = self.net.run(self.connect())
        chunks = [b"one", b"two", b"three"]

        class Chunks:
            def resumeProducing(self):
                if chunks:
                    client.transport.write(chunks.pop(0))
                else:
                    client.transport.unregisterProducer()

            def stopProducing(self):
                pass
        client.transport.registerProducer(Chunks(), False)
        self.net.pump()
        self.assertEqual(b"".join(received), b"onetwothree")

    def test_run_gives_up(self):
        """run fails, rather than loops, on a Deferred that never fires."""
        cancelled = []
        never = Deferred(lambda d: cancelled.append(True))
        e = self.assertRaises(NetworkHung, self.net.run, never)
        self.assertIn("nothing is scheduled", str(e))
        ticking = LoopingCall(lambda: None)
        ticking.clock = self.net
        ticking.start(1)
        self.addCleanup(ticking.stop)
        e = self.assertRaises(NetworkHung, self.net.run, Deferred(), limit=30)
        self.assertIn("after 30 s of simulated time", str(e))
        self.assertEqual((cancelled, self.net.seconds()), ([True], 30))

    def test_run_follows_the_clock(self):
        """run advances the clock only as far as the next scheduled call."""
        woken = sleep(self.net, 42).addCallback(lambda _: "done")
        self.assertEqual(self.net.run(woken), "done")
        self.assertEqual(self.net.seconds(), 42)


class Collect(Protocol):
    """A client protocol that keeps what it receives and how it was lost."""

    def __init__(self):
        self.data = []
        self.lost = []

    def dataReceived(self, data):
        self.data.append(data)

    def connectionLost(self, reason):
        self.lost.append(reason.type)
