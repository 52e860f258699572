"""
IPTablesNetwork for real, as root, inside network namespaces this module
creates (named ``fat-...``, removed after each test, failures included).
Nothing here touches the host's own network: every iptables and sysctl
command runs through ``ip netns exec`` in a test namespace, and traffic only
goes between lab addresses on a bridge that lives in a namespace of its own.
"""

from __future__ import annotations

import sys

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from flocker_async._process import CommandFailed
from flocker_async.route import HeldPort, IPTablesNetwork, OpenPort, Proxy
from tests.testtools.netns import (
    Lan,
    NamespaceProcess,
    add_namespace,
    delete_namespace,
    netns_exec,
    netns_prefix,
    require_root,
)
from tests.testtools.route import make_inetwork_tests


def namespace_network(test, **kwargs):
    """A fresh namespace and an IPTablesNetwork running inside it."""
    require_root(test)
    name = add_namespace("rt")
    test.addCleanup(delete_namespace, name)
    test.namespace = name
    return IPTablesNetwork(reactor, run_in=netns_prefix(name), **kwargs)


class IPTablesNetworkContractTests(make_inetwork_tests(namespace_network)):
    """IPTablesNetwork keeps the INetwork contract."""

    timeout = 60


def iptables_save(namespace):
    return netns_exec(namespace, ["iptables-save"]).stdout.decode()


def rule_lines(namespace):
    return [line for line in iptables_save(namespace).splitlines()
            if line.startswith("-A ")]


def forwarding(namespace):
    return netns_exec(namespace, ["sysctl", "-n", "net.ipv4.ip_forward"]
                      ).stdout.strip()


def host_forwarding():
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        return f.read().strip()


WEB = Proxy("web", 8080, "10.213.0.2")
API = OpenPort("api", 9000)
JUMPS = ["-A PREROUTING -j FLOCKER-HOLD-PREROUTING",
         "-A OUTPUT -j FLOCKER-HOLD-OUTPUT",
         "-A INPUT -j FLOCKER-INPUT",
         "-A FORWARD -j FLOCKER-FORWARD",
         "-A PREROUTING -j FLOCKER-PREROUTING",
         "-A OUTPUT -j FLOCKER-OUTPUT",
         "-A POSTROUTING -j FLOCKER-POSTROUTING"]
FOREIGN = [
    ["iptables", "-t", "nat", "-N", "DOCKER"],
    ["iptables", "-t", "nat", "-A", "PREROUTING", "-m", "addrtype",
     "--dst-type", "LOCAL", "-j", "DOCKER"],
    ["iptables", "-t", "nat", "-A", "DOCKER", "-p", "tcp", "--dport", "8000",
     "-j", "DNAT", "--to-destination", "172.17.0.2:80"],
    ["iptables", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-m", "comment",
     "--comment", "flocker's neighbour", "-j", "ACCEPT"],
    ["iptables", "-t", "raw", "-A", "OUTPUT", "-p", "udp", "-j", "NOTRACK"],
]


class IPTablesLayoutTests(TestCase):
    """What IPTablesNetwork leaves in iptables, beyond the contract."""

    timeout = 60

    def setUp(self):
        self.network = namespace_network(self)

    def test_jumps_created_once(self):
        d = self.network.set_state([WEB], [API], [HeldPort("web", 8080)])
        d.addCallback(lambda _: self.network.set_state([WEB], [], []))
        d.addCallback(lambda _: self.network.set_state([], [API], []))

        def check(_):
            lines = rule_lines(self.namespace)
            for jump in JUMPS:
                self.assertEqual(lines.count(jump), 1, jump)
        return d.addCallback(check)

    @inlineCallbacks
    def test_duplicate_jumps_collapsed(self):
        yield self.network.set_state([WEB], [], [])
        netns_exec(self.namespace, ["iptables", "-t", "nat", "-A",
                                    "PREROUTING", "-j", "FLOCKER-PREROUTING"])
        self.assertEqual(rule_lines(self.namespace).count(JUMPS[4]), 2)
        yield self.network.set_state([WEB], [], [])
        self.assertEqual(rule_lines(self.namespace).count(JUMPS[4]), 1)

    @inlineCallbacks
    def test_foreign_rules_untouched(self):
        for argv in FOREIGN:
            netns_exec(self.namespace, argv)
        before = rule_lines(self.namespace)
        self.assertEqual(len(before), 4)
        yield self.network.set_state([WEB], [API], [HeldPort("api", 9000)])
        during = rule_lines(self.namespace)
        self.assertEqual([line for line in during if "FLOCKER" not in line],
                         before)
        yield self.network.remove_all()
        self.assertEqual(rule_lines(self.namespace), before)
        self.assertIn(":DOCKER - [0:0]", iptables_save(self.namespace))

    @inlineCallbacks
    def test_remove_all_leaves_no_trace(self):
        yield self.network.set_state([WEB], [API], [HeldPort("web", 8080)])
        self.assertIn("FLOCKER-HOLD-OUTPUT", iptables_save(self.namespace))
        yield self.network.remove_all()
        self.assertNotIn("FLOCKER", iptables_save(self.namespace))

    @inlineCallbacks
    def test_rules_without_our_comment_ignored_and_replaced(self):
        yield self.network.set_state([], [API], [])
        netns_exec(self.namespace, ["iptables", "-A", "FLOCKER-INPUT", "-p",
                                    "tcp", "--dport", "23", "-j", "ACCEPT"])
        self.assertEqual((yield self.network.enumerate_open_ports()),
                         frozenset([API]))
        yield self.network.set_state([], [API], [])
        self.assertNotIn("--dport 23", iptables_save(self.namespace))

    @inlineCallbacks
    def test_forwarding_enabled_in_the_namespace_only(self):
        host_before = host_forwarding()
        yield self.network.set_state([], [API], [])
        self.assertEqual(forwarding(self.namespace), b"0")
        yield self.network.set_state([WEB], [], [])
        self.assertEqual(forwarding(self.namespace), b"1")
        self.assertEqual(host_forwarding(), host_before)
        self.assertFalse((yield self.network.ensure_forwarding()))

    @inlineCallbacks
    def test_forwarding_left_alone_when_not_managed(self):
        network = IPTablesNetwork(reactor, run_in=netns_prefix(self.namespace),
                                  manage_forwarding=False)
        yield network.set_state([WEB], [], [])
        self.assertEqual(forwarding(self.namespace), b"0")

    @inlineCallbacks
    def test_command_errors_carry_stderr(self):
        missing = IPTablesNetwork(
            reactor, run_in=netns_prefix(self.namespace + "-missing"))
        error = yield self.assertFailure(missing.set_state([], [API], []),
                                         CommandFailed)
        self.assertIn("-missing", error.stderr_text)
        self.assertIn("iptables-save", str(error))


# Small programs run inside the namespaces; each ends itself after LIFETIME
# seconds even if the test's cleanup never runs.
LIFETIME = "60"

ECHO_SERVER = r"""
import signal, socket, sys, threading
signal.alarm(int(sys.argv[3]))
name, port = sys.argv[1], int(sys.argv[2])
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", port))
server.listen(16)
print("listening", flush=True)

def serve(connection):
    stream = connection.makefile("rwb")
    for line in stream:
        stream.write(name.encode() + b" " + line)
        stream.flush()

while True:
    connection, peer = server.accept()
    print("accepted", peer[0], flush=True)
    threading.Thread(target=serve, args=(connection,), daemon=True).start()
"""

LINE_CLIENT = r"""
import signal, socket, sys, time
signal.alarm(int(sys.argv[3]))
start = time.monotonic()
try:
    connection = socket.create_connection((sys.argv[1], int(sys.argv[2])),
                                          timeout=8)
except OSError as e:
    print("error", type(e).__name__, flush=True)
    sys.exit(1)
print("connected %.3f" % (time.monotonic() - start), flush=True)
stream = connection.makefile("rwb")
while True:
    line = sys.stdin.readline()
    if not line:
        break
    stream.write(line.encode())
    stream.flush()
    print("reply", stream.readline().decode().strip(), flush=True)
"""

# How long a test keeps a port held; the client's first SYN retransmission
# comes about 1 s after its first attempt.
HOLD_SECONDS = 0.6


class TrafficTests(TestCase):
    """
    Real TCP through the rules.  Node A (the one whose routing is under
    test; FORWARD policy DROP, as Docker leaves it) proxies to node B, where
    the applications' servers run; clients run on C or on A itself.
    """

    timeout = 60

    def setUp(self):
        require_root(self)
        self.lan = Lan()
        self.addCleanup(self.lan.close)
        self.a = self.lan.add_host(11)
        self.b = self.lan.add_host(12)
        self.c = self.lan.add_host(13)
        self.a_address = self.lan.address(11)
        self.b_address = self.lan.address(12)
        netns_exec(self.a, ["iptables", "-P", "FORWARD", "DROP"])
        self.network_a = IPTablesNetwork(reactor, run_in=netns_prefix(self.a))
        self.network_b = IPTablesNetwork(reactor, run_in=netns_prefix(self.b))
        self.web = Proxy("web", 7001, self.b_address)
        self.web_server = self.start_server(self.b, "web", 7001)

    def start(self, namespace, script, *args):
        process = NamespaceProcess(
            namespace,
            [sys.executable, "-c", script] + list(args) + [LIFETIME])
        self.addCleanup(process.stop)
        return process

    def start_server(self, namespace, name, port):
        server = self.start(namespace, ECHO_SERVER, name, str(port))
        self.assertEqual(server.read_line(10), "listening")
        return server

    def start_client(self, namespace, address, port):
        return self.start(namespace, LINE_CLIENT, address, str(port))

    def assert_connected(self, client, timeout=5):
        """The client connected; return how long it took, in seconds."""
        line = client.read_line(timeout)
        self.assertTrue(line.startswith("connected "), line)
        return float(line.split()[1])

    def assert_echo(self, client, text, server_name="web"):
        client.send_line(text)
        self.assertEqual(client.read_line(5),
                         "reply %s %s" % (server_name, text))

    def sleep(self, seconds):
        return deferLater(reactor, seconds, lambda: None)

    @inlineCallbacks
    def test_proxy_from_another_host(self):
        yield self.network_a.set_state([self.web], [], [])
        client = self.start_client(self.c, self.a_address, 7001)
        self.assert_connected(client)
        self.assert_echo(client, "hello")
        # MASQUERADE: B sees the connection coming from A, and answers A.
        self.assertEqual(self.web_server.read_line(5),
                         "accepted %s" % (self.a_address,))

    @inlineCallbacks
    def test_proxy_from_the_node_itself(self):
        """A client on A connecting to A's own address goes via OUTPUT."""
        yield self.network_a.set_state([self.web], [], [])
        client = self.start_client(self.a, self.a_address, 7001)
        self.assert_connected(client)
        self.assert_echo(client, "from A")

    @inlineCallbacks
    def test_without_proxy_connection_is_refused(self):
        """The control: the route above comes from the proxy rules."""
        yield self.network_a.set_state([], [], [])
        client = self.start_client(self.c, self.a_address, 7001)
        self.assertEqual(client.read_line(5), "error ConnectionRefusedError")

    @inlineCallbacks
    def assert_hold_then_release(self, network, client_namespace, address,
                                 held_state, released_state):
        """
        While held, the client's connect is pending (no refusal, no reset,
        nothing reaches the server); once released it connects and works.
        """
        yield network.set_state(*held_state)
        client = self.start_client(client_namespace, address, 7001)
        yield self.sleep(HOLD_SECONDS)
        self.assertIsNone(client.poll_line(0),
                          "connect finished while the port was held")
        self.assertIsNone(self.web_server.poll_line(0))
        yield network.set_state(*released_state)
        elapsed = self.assert_connected(client, timeout=5)
        self.assertGreaterEqual(elapsed, HOLD_SECONDS)
        self.assertLess(elapsed, 4.0)
        self.assert_echo(client, "after the hold")

    def test_held_proxied_port_delays_then_connects(self):
        return self.assert_hold_then_release(
            self.network_a, self.c, self.a_address,
            ([self.web], [], [HeldPort("web", 7001)]),
            ([self.web], [], []))

    def test_held_proxied_port_from_the_node_itself(self):
        return self.assert_hold_then_release(
            self.network_a, self.a, self.a_address,
            ([self.web], [], [HeldPort("web", 7001)]),
            ([self.web], [], []))

    def test_held_open_port_where_the_application_runs(self):
        """No DNAT involved: B holds its own application's port."""
        return self.assert_hold_then_release(
            self.network_b, self.c, self.b_address,
            ([], [OpenPort("web", 7001)], [HeldPort("web", 7001)]),
            ([], [OpenPort("web", 7001)], []))

    @inlineCallbacks
    def test_established_connection_survives_other_changes(self):
        self.start_server(self.b, "api", 7002)
        yield self.network_a.set_state([self.web], [], [])
        client = self.start_client(self.c, self.a_address, 7001)
        self.assert_connected(client)
        self.assert_echo(client, "one")

        # Add another application's proxy, held as in a move.
        api = Proxy("api", 7002, self.lan.address(13))
        yield self.network_a.set_state([self.web, api], [],
                                       [HeldPort("api", 7002)])
        self.assert_echo(client, "two")

        # Change it: it moves to B, and the hold is released.
        api = Proxy("api", 7002, self.b_address)
        yield self.network_a.set_state([self.web, api], [], [])
        self.assert_echo(client, "three")

        # The change took effect: a new connection reaches api on B.
        api_client = self.start_client(self.c, self.a_address, 7002)
        self.assert_connected(api_client)
        self.assert_echo(api_client, "new", server_name="api")

        # And the same state again, a convergence pass with nothing to do.
        yield self.network_a.set_state([self.web, api], [], [])
        self.assert_echo(client, "four")
        self.assert_echo(api_client, "still", server_name="api")
