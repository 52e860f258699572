"""
Unit tests for flocker_async.route: the contract suite against
MemoryNetwork, the values' validation, and the iptables text we read and
write (no iptables needed; tests/functional/test_route.py runs it for real).
"""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from flocker_async import route
from flocker_async._process import ProcessResult
from flocker_async.route import (
    HeldPort,
    MemoryNetwork,
    NetworkState,
    OpenPort,
    Proxy,
    RouteConflict,
    desired_state,
)
from flocker_async.route import _interfaces, _iptables, _memory
from flocker_async.route._iptables import (
    IPTablesNetwork,
    IPTablesRestoreFailed,
    parse_save,
    parse_state,
    removal_script,
    restore_script,
)
from tests.testtools.route import make_inetwork_tests


class MemoryNetworkTests(make_inetwork_tests(lambda test: MemoryNetwork())):
    """MemoryNetwork keeps the INetwork contract."""


class MemoryNetworkExtrasTests(SynchronousTestCase):
    def test_initial_state(self):
        network = MemoryNetwork([Proxy("a", 1, "10.0.0.1")], [], [])
        self.assertEqual(
            self.successResultOf(network.enumerate_proxies()),
            frozenset([Proxy("a", 1, "10.0.0.1")]))

    def test_transactions_counted(self):
        network = MemoryNetwork()
        network.set_state([], [], [])
        self.failureResultOf(
            network.set_state([], [], [HeldPort("a", 1), HeldPort("b", 1)]),
            RouteConflict)
        network.remove_all()
        self.assertEqual(network.transactions, 2)


class PublicNamesTests(SynchronousTestCase):
    def test_public_names_are_the_private_ones(self):
        expected = {
            "INetwork": _interfaces.INetwork,
            "Proxy": _interfaces.Proxy,
            "OpenPort": _interfaces.OpenPort,
            "HeldPort": _interfaces.HeldPort,
            "NetworkState": _interfaces.NetworkState,
            "RouteConflict": _interfaces.RouteConflict,
            "desired_state": _interfaces.desired_state,
            "IPTablesNetwork": _iptables.IPTablesNetwork,
            "IPTablesRestoreFailed": _iptables.IPTablesRestoreFailed,
            "MemoryNetwork": _memory.MemoryNetwork,
        }
        self.assertEqual(sorted(route.__all__), sorted(expected))
        for name, value in expected.items():
            self.assertIs(getattr(route, name), value, name)


class ValueValidationTests(SynchronousTestCase):
    BAD_NAMES = ["", "-mysql", "_x", "my sql", 'a"b', "a\nb", "a;b", "x" * 64,
                 "ä", None, 7, b"mysql"]
    BAD_PORTS = [0, -1, 65536, True, "80", 80.0, None]
    BAD_ADDRESSES = ["node1.example.com", "10.0.0", "010.0.0.1", " 10.0.0.1",
                     "10.0.0.1\n", "10.0.0.1/32", "10.0.0.1:80", "0.0.0.0",
                     "127.0.0.1", "224.0.0.1", "255.255.255.255", "::1",
                     b"10.0.0.1", None]

    def test_good_values(self):
        Proxy("a", 1, "10.0.0.1")
        Proxy("A" * 63, 65535, "192.168.1.254")
        OpenPort("my_app-2", 80)
        HeldPort("9lives", 443)

    def test_address_object_becomes_text(self):
        proxy = Proxy("a", 1, ipaddress.IPv4Address("10.0.0.1"))
        self.assertEqual(proxy, Proxy("a", 1, "10.0.0.1"))

    def test_bad_application_names(self):
        for name in self.BAD_NAMES:
            for make in (lambda: Proxy(name, 80, "10.0.0.1"),
                         lambda: OpenPort(name, 80),
                         lambda: HeldPort(name, 80)):
                error = self.assertRaises(ValueError, make)
                self.assertIn("application name", str(error))

    def test_bad_ports(self):
        for port in self.BAD_PORTS:
            for make in (lambda: Proxy("a", port, "10.0.0.1"),
                         lambda: OpenPort("a", port),
                         lambda: HeldPort("a", port)):
                error = self.assertRaises(ValueError, make)
                self.assertIn("1..65535", str(error))

    def test_bad_addresses(self):
        for address in self.BAD_ADDRESSES:
            error = self.assertRaises(ValueError, Proxy, "a", 80, address)
            self.assertIn("IPv4 address", str(error))

    def test_host_name_error_says_to_resolve(self):
        error = self.assertRaises(ValueError, Proxy, "a", 80, "node1")
        self.assertIn("resolve host names", str(error))


class DesiredStateTests(SynchronousTestCase):
    def test_valid(self):
        state = desired_state([Proxy("a", 80, "10.0.0.1")], [OpenPort("b", 81)],
                              [HeldPort("a", 80), HeldPort("b", 81)])
        self.assertEqual(len(state.held_ports), 2)

    def test_every_conflict_named(self):
        error = self.assertRaises(
            RouteConflict, desired_state,
            [Proxy("a", 80, "10.0.0.1"), Proxy("a", 80, "10.0.0.2")],
            [OpenPort("b", 81), OpenPort("c", 81)], [])
        self.assertIn("port 80 is routed more than one way", str(error))
        self.assertIn("port 81 is used by applications b, c", str(error))

    def test_wrong_types(self):
        self.assertRaises(TypeError, desired_state, [OpenPort("a", 1)], [], [])
        self.assertRaises(TypeError, desired_state, [], [], "abc")
        self.assertRaises(TypeError, desired_state, None, [], [])


# iptables-save output of a namespace with flocker's rules, a Docker-like
# chain, a duplicated jump, a rule without our comment in a flocker chain and
# a foreign rule with awkward quoting (captured from iptables 1.8.9 nft).
SAMPLE_SAVE = r"""# Generated by iptables-save v1.8.9 (nf_tables) on Sun Nov 29 17:01:50 2026
*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:FLOCKER-HOLD-OUTPUT - [0:0]
:FLOCKER-HOLD-PREROUTING - [0:0]
-A PREROUTING -j FLOCKER-HOLD-PREROUTING
-A OUTPUT -j FLOCKER-HOLD-OUTPUT
-A FLOCKER-HOLD-OUTPUT -p tcp -m tcp --dport 3306 --tcp-flags FIN,SYN,RST,ACK SYN -m addrtype --dst-type LOCAL -m comment --comment "flocker mysql" -j DROP
-A FLOCKER-HOLD-PREROUTING -p tcp -m tcp --dport 3306 --tcp-flags FIN,SYN,RST,ACK SYN -m addrtype --dst-type LOCAL -m comment --comment "flocker mysql" -j DROP
COMMIT
# Completed on Sun Nov 29 17:01:50 2026
# Generated by iptables-save v1.8.9 (nf_tables) on Sun Nov 29 17:01:50 2026
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:FLOCKER-FORWARD - [0:0]
:FLOCKER-INPUT - [0:0]
-A INPUT -j FLOCKER-INPUT
-A INPUT -m comment --comment "a \"quoted\" comment" -j ACCEPT
-A FORWARD -j FLOCKER-FORWARD
-A FLOCKER-FORWARD -d 10.0.0.2/32 -p tcp -m tcp --dport 3306 -m conntrack --ctstate DNAT -m comment --comment "flocker mysql" -j ACCEPT
-A FLOCKER-FORWARD -s 10.0.0.2/32 -p tcp -m tcp --sport 3306 -m conntrack --ctstate DNAT -m comment --comment "flocker mysql" -j ACCEPT
-A FLOCKER-INPUT -p tcp -m tcp --dport 5432 -m comment --comment "flocker pg" -j ACCEPT
COMMIT
# Completed on Sun Nov 29 17:01:50 2026
# Generated by iptables-save v1.8.9 (nf_tables) on Sun Nov 29 17:01:50 2026
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
:FLOCKER-OUTPUT - [0:0]
:FLOCKER-POSTROUTING - [0:0]
:FLOCKER-PREROUTING - [0:0]
-A PREROUTING -j FLOCKER-PREROUTING
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A PREROUTING -j FLOCKER-PREROUTING
-A OUTPUT -j FLOCKER-OUTPUT
-A POSTROUTING -j FLOCKER-POSTROUTING
-A DOCKER -p tcp -m tcp --dport 8000 -j DNAT --to-destination 172.17.0.2:80
-A FLOCKER-OUTPUT -p tcp -m addrtype --dst-type LOCAL -m tcp --dport 3306 -m comment --comment "flocker mysql" -j DNAT --to-destination 10.0.0.2
-A FLOCKER-POSTROUTING -d 10.0.0.2/32 -p tcp -m tcp --dport 3306 -m conntrack --ctstate DNAT -m comment --comment "flocker mysql" -j MASQUERADE
-A FLOCKER-PREROUTING -p tcp -m addrtype --dst-type LOCAL -m tcp --dport 3306 -m comment --comment "flocker mysql" -j DNAT --to-destination 10.0.0.2
-A FLOCKER-PREROUTING -p tcp -m tcp --dport 9 -j DNAT --to-destination 10.0.0.5
COMMIT
# Completed on Sun Nov 29 17:01:50 2026
"""

EMPTY_SAVE = """*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
COMMIT
"""

MYSQL = Proxy("mysql", 3306, "10.0.0.2")


class ParseTests(SynchronousTestCase):
    def test_parse_sample(self):
        self.assertEqual(
            parse_state(parse_save(SAMPLE_SAVE)),
            NetworkState([MYSQL], [OpenPort("pg", 5432)],
                         [HeldPort("mysql", 3306)]))

    def test_parse_empty(self):
        self.assertEqual(parse_state(parse_save("")), NetworkState())
        self.assertEqual(parse_state(parse_save(EMPTY_SAVE)), NetworkState())

    def test_rules_with_invalid_values_ignored(self):
        text = "\n".join([
            "*nat",
            ":FLOCKER-PREROUTING - [0:0]",
            '-A FLOCKER-PREROUTING -p tcp -m tcp --dport 70000 -m comment '
            '--comment "flocker a" -j DNAT --to-destination 10.0.0.1',
            '-A FLOCKER-PREROUTING -p tcp -m tcp --dport 80 -m comment '
            '--comment "flocker a" -j DNAT --to-destination 10.0.0.1:8080',
            '-A FLOCKER-PREROUTING -p udp -m udp --dport 80 -m comment '
            '--comment "flocker a" -j DNAT --to-destination 10.0.0.1',
            '-A FLOCKER-PREROUTING -p tcp -m tcp --dport 80 -m comment '
            '--comment "flocker-a" -j DNAT --to-destination 10.0.0.1',
            '-A FLOCKER-PREROUTING -p tcp -m tcp --dport 80 -m comment '
            '--comment "flocker a b" -j DNAT --to-destination 10.0.0.1',
            "COMMIT", ""])
        self.assertEqual(parse_state(parse_save(text)), NetworkState())

    def test_jumps_found(self):
        nat = parse_save(SAMPLE_SAVE).table("nat")
        self.assertEqual(len(nat.jumps_to("FLOCKER-PREROUTING")), 2)
        self.assertEqual(len(nat.jumps_to("FLOCKER-OUTPUT")), 1)


EXPECTED_FRESH_SCRIPT = """\
*raw
:FLOCKER-HOLD-PREROUTING - [0:0]
:FLOCKER-HOLD-OUTPUT - [0:0]
-I PREROUTING -j FLOCKER-HOLD-PREROUTING
-I OUTPUT -j FLOCKER-HOLD-OUTPUT
-A FLOCKER-HOLD-PREROUTING -p tcp -m tcp --dport 80 --syn -m addrtype --dst-type LOCAL -m comment --comment "flocker web" -j DROP
-A FLOCKER-HOLD-OUTPUT -p tcp -m tcp --dport 80 --syn -m addrtype --dst-type LOCAL -m comment --comment "flocker web" -j DROP
COMMIT
*filter
:FLOCKER-FORWARD - [0:0]
:FLOCKER-INPUT - [0:0]
-I FORWARD -j FLOCKER-FORWARD
-I INPUT -j FLOCKER-INPUT
-A FLOCKER-FORWARD -p tcp -d 10.0.0.2/32 -m tcp --dport 3306 -m conntrack --ctstate DNAT -m comment --comment "flocker mysql" -j ACCEPT
-A FLOCKER-FORWARD -p tcp -s 10.0.0.2/32 -m tcp --sport 3306 -m conntrack --ctstate DNAT -m comment --comment "flocker mysql" -j ACCEPT
-A FLOCKER-INPUT -p tcp -m tcp --dport 5432 -m comment --comment "flocker pg" -j ACCEPT
COMMIT
*nat
:FLOCKER-PREROUTING - [0:0]
:FLOCKER-OUTPUT - [0:0]
:FLOCKER-POSTROUTING - [0:0]
-I PREROUTING -j FLOCKER-PREROUTING
-I OUTPUT -j FLOCKER-OUTPUT
-I POSTROUTING -j FLOCKER-POSTROUTING
-A FLOCKER-PREROUTING -p tcp -m addrtype --dst-type LOCAL -m tcp --dport 3306 -m comment --comment "flocker mysql" -j DNAT --to-destination 10.0.0.2
-A FLOCKER-OUTPUT -p tcp -m addrtype --dst-type LOCAL -m tcp --dport 3306 -m comment --comment "flocker mysql" -j DNAT --to-destination 10.0.0.2
-A FLOCKER-POSTROUTING -p tcp -d 10.0.0.2/32 -m tcp --dport 3306 -m conntrack --ctstate DNAT -m comment --comment "flocker mysql" -j MASQUERADE
COMMIT
"""


def _blocks(script):
    """The table names of a script's blocks, in order."""
    return [line[1:] for line in script.splitlines() if line.startswith("*")]


class RestoreScriptTests(SynchronousTestCase):
    def test_fresh_node(self):
        state = NetworkState([MYSQL], [OpenPort("pg", 5432)],
                             [HeldPort("web", 80)])
        self.assertEqual(restore_script(parse_save(EMPTY_SAVE), state),
                         EXPECTED_FRESH_SCRIPT)

    def test_existing_jumps_not_repeated(self):
        script = restore_script(parse_save(SAMPLE_SAVE), NetworkState([MYSQL]))
        self.assertNotIn("-I ", script)

    def test_duplicate_jump_removed(self):
        script = restore_script(parse_save(SAMPLE_SAVE), NetworkState())
        self.assertEqual(
            [line for line in script.splitlines() if line.startswith("-D")],
            ["-D PREROUTING -j FLOCKER-PREROUTING"])

    def test_only_flocker_chains_touched(self):
        script = restore_script(parse_save(SAMPLE_SAVE), NetworkState([MYSQL]))
        for line in script.splitlines():
            if line.startswith(":"):
                self.assertTrue(line.startswith(":FLOCKER-"), line)
            elif line.startswith("-A "):
                self.assertTrue(line.startswith("-A FLOCKER-"), line)
            elif line.startswith(("-I ", "-D ")):
                # Only the jumps from built-in chains to ours.
                self.assertRegex(line, r"^-[ID] [A-Z]+ -j FLOCKER-[A-Z-]+$")
            else:
                self.assertRegex(line, r"^(\*(raw|filter|nat)|COMMIT)$")
        self.assertNotIn("DOCKER", script)
        self.assertNotIn("quoted", script)
        self.assertNotIn("--dport 9 ", script)

    def test_table_order(self):
        """Holds first, FORWARD accepts before DNAT."""
        script = restore_script(parse_save(EMPTY_SAVE), NetworkState([MYSQL]))
        self.assertEqual(_blocks(script), ["raw", "filter", "nat"])

    def test_added_hold_before_proxy_change(self):
        """Phase 2 of a move: the new hold is in place before nat changes."""
        saved = parse_save(SAMPLE_SAVE)
        moved = Proxy("mysql", 3306, "10.0.0.9")
        script = restore_script(
            saved, NetworkState([moved], [], [HeldPort("mysql", 3306),
                                              HeldPort("pg", 5432)]))
        self.assertEqual(_blocks(script), ["raw", "filter", "nat"])
        raw = script.split("COMMIT")[0]
        self.assertIn('--dport 5432 --syn', raw)

    def test_released_hold_after_proxy_change(self):
        """Phase 5 of a move: the hold goes only after nat points at D."""
        saved = parse_save(SAMPLE_SAVE)
        moved = Proxy("mysql", 3306, "10.0.0.9")
        script = restore_script(saved, NetworkState([moved]))
        self.assertEqual(_blocks(script), ["raw", "filter", "nat", "raw"])
        first_raw, last_raw = script.split("*raw")[1], script.split("*raw")[2]
        self.assertIn("--dport 3306 --syn", first_raw)
        self.assertNotIn("--dport 3306", last_raw)
        self.assertLess(script.index("--to-destination 10.0.0.9"),
                        script.rindex("*raw"))

    @settings(max_examples=60, deadline=None)
    @given(st.data())
    def test_round_trip(self, data):
        """Whatever the state, the rules we write read back as that state."""
        names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,10}",
                              fullmatch=True)
        ports = st.lists(st.integers(1, 65535), unique=True, max_size=12)
        chosen = data.draw(ports)
        proxies, open_ports, held = [], [], []
        for port in chosen:
            name = data.draw(names)
            kind = data.draw(st.sampled_from(["proxy", "open", "none"]))
            if kind == "proxy":
                address = "10.%d.%d.%d" % tuple(
                    data.draw(st.integers(0, 254)) for _ in range(3))
                proxies.append(Proxy(name, port, address))
            elif kind == "open":
                open_ports.append(OpenPort(name, port))
            if data.draw(st.booleans()):
                held.append(HeldPort(name, port))
        state = desired_state(proxies, open_ports, held)
        script = restore_script(parse_save(""), state)
        self.assertEqual(parse_state(parse_save(script)), state)


class RemovalScriptTests(SynchronousTestCase):
    def test_removes_jumps_and_chains(self):
        script = removal_script(parse_save(SAMPLE_SAVE))
        lines = script.splitlines()
        for jump in ["-D PREROUTING -j FLOCKER-HOLD-PREROUTING",
                     "-D OUTPUT -j FLOCKER-HOLD-OUTPUT",
                     "-D INPUT -j FLOCKER-INPUT",
                     "-D FORWARD -j FLOCKER-FORWARD",
                     "-D OUTPUT -j FLOCKER-OUTPUT",
                     "-D POSTROUTING -j FLOCKER-POSTROUTING"]:
            self.assertIn(jump, lines)
        self.assertEqual(
            lines.count("-D PREROUTING -j FLOCKER-PREROUTING"), 2)
        for chain in ["FLOCKER-HOLD-PREROUTING", "FLOCKER-HOLD-OUTPUT",
                      "FLOCKER-FORWARD", "FLOCKER-INPUT",
                      "FLOCKER-PREROUTING", "FLOCKER-OUTPUT",
                      "FLOCKER-POSTROUTING"]:
            self.assertIn("-F " + chain, lines)
            self.assertIn("-X " + chain, lines)
            # A chain can only be deleted once nothing jumps to it.
            self.assertLess(max(i for i, line in enumerate(lines)
                                if line.startswith("-D") and chain in line
                                and line.endswith("-j " + chain)),
                            lines.index("-X " + chain))
        self.assertNotIn("DOCKER", script)

    def test_nothing_to_remove(self):
        self.assertIsNone(removal_script(parse_save(EMPTY_SAVE)))
        self.assertIsNone(removal_script(parse_save("")))


class _NoProcessReactor:
    """A reactor that fails the test if anything is spawned."""

    def spawnProcess(self, *args, **kwargs):
        raise AssertionError("no command may run: %r" % (args,))


class IPTablesNetworkUnitTests(SynchronousTestCase):
    def test_invalid_state_runs_nothing(self):
        network = IPTablesNetwork(_NoProcessReactor(), run_in=["ip", "x"])
        self.failureResultOf(
            network.set_state([MYSQL, Proxy("b", 3306, "10.0.0.3")], [], []),
            RouteConflict)
        self.failureResultOf(network.set_state([], [], [MYSQL]), TypeError)

    def test_run_in_must_be_words(self):
        self.assertRaises(TypeError, IPTablesNetwork, _NoProcessReactor(),
                          run_in="ip netns exec x")

    def test_restore_failure_names_the_input_line(self):
        result = ProcessResult(
            argv=("iptables-restore", "--noflush"), status=1, signal=None,
            stdout=b"",
            stderr=b"iptables-restore: line 2 failed: No chain/target/match "
                   b"by that name.\n")
        error = IPTablesRestoreFailed(result, "*nat\n-A NOPE -j ACCEPT\n")
        self.assertEqual(error.failed_line, "-A NOPE -j ACCEPT")
        self.assertIn("line 2 failed", str(error))
        self.assertIn("(input: -A NOPE -j ACCEPT)", str(error))
