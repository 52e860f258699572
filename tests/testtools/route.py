"""
The contract every ``INetwork`` keeps, run against ``MemoryNetwork`` in
tests/unit and against ``IPTablesNetwork`` (in a namespace) in
tests/functional.
"""

from __future__ import annotations

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from flocker_async.route import (
    HeldPort,
    INetwork,
    NetworkState,
    OpenPort,
    Proxy,
    RouteConflict,
)

MYSQL = Proxy("mysql", 3306, "10.213.0.2")
WEB = Proxy("web", 8080, "10.213.0.3")
POSTGRES = OpenPort("postgres", 5432)
REDIS = OpenPort("redis", 6379)
HELD_MYSQL = HeldPort("mysql", 3306)
HELD_POSTGRES = HeldPort("postgres", 5432)


def make_inetwork_tests(fixture):
    """
    A TestCase class checking ``INetwork`` behaviour.  ``fixture(test)``
    returns a fresh, empty network and registers its own cleanup.
    """

    class INetworkTests(TestCase):
        def setUp(self):
            super().setUp()
            self.network = fixture(self)

        @inlineCallbacks
        def assert_state(self, proxies=(), open_ports=(), held_ports=()):
            expected = NetworkState(proxies, open_ports, held_ports)
            state = yield self.network.get_state()
            self.assertEqual(state, expected)
            self.assertEqual((yield self.network.enumerate_proxies()),
                             expected.proxies)
            self.assertEqual((yield self.network.enumerate_open_ports()),
                             expected.open_ports)
            self.assertEqual((yield self.network.enumerate_held_ports()),
                             expected.held_ports)

        def test_interface(self):
            self.assertTrue(verifyObject(INetwork, self.network))

        def test_starts_empty(self):
            return self.assert_state()

        @inlineCallbacks
        def test_set_state_round_trip(self):
            yield self.network.set_state(
                [MYSQL, WEB], [POSTGRES, REDIS], [HELD_MYSQL])
            yield self.assert_state([MYSQL, WEB], [POSTGRES, REDIS],
                                    [HELD_MYSQL])

        @inlineCallbacks
        def test_set_state_replaces_everything(self):
            yield self.network.set_state([MYSQL], [POSTGRES], [HELD_MYSQL])
            yield self.network.set_state([WEB], [REDIS], [HELD_POSTGRES])
            yield self.assert_state([WEB], [REDIS], [HELD_POSTGRES])

        @inlineCallbacks
        def test_set_state_is_idempotent(self):
            for _ in range(3):
                yield self.network.set_state([MYSQL, WEB], [POSTGRES],
                                             [HELD_MYSQL])
            yield self.assert_state([MYSQL, WEB], [POSTGRES], [HELD_MYSQL])

        @inlineCallbacks
        def test_release_hold(self):
            """The last step of a move: the proxy stays, the hold goes."""
            yield self.network.set_state([MYSQL], [], [HELD_MYSQL])
            yield self.network.set_state([MYSQL], [], [])
            yield self.assert_state([MYSQL], [], [])

        @inlineCallbacks
        def test_change_proxy_target(self):
            yield self.network.set_state([MYSQL, WEB], [], [])
            moved = Proxy("mysql", 3306, "10.213.0.9")
            yield self.network.set_state([moved, WEB], [], [])
            yield self.assert_state([moved, WEB])

        @inlineCallbacks
        def test_proxied_application_comes_here(self):
            yield self.network.set_state([MYSQL], [], [])
            yield self.network.set_state([], [OpenPort("mysql", 3306)], [])
            yield self.assert_state([], [OpenPort("mysql", 3306)])

        @inlineCallbacks
        def test_set_empty_state(self):
            yield self.network.set_state([MYSQL], [POSTGRES], [HELD_MYSQL])
            yield self.network.set_state([], [], [])
            yield self.assert_state()

        @inlineCallbacks
        def test_accepts_any_iterables(self):
            yield self.network.set_state(
                (p for p in [MYSQL]), frozenset([POSTGRES]), (HELD_MYSQL,))
            yield self.assert_state([MYSQL], [POSTGRES], [HELD_MYSQL])

        @inlineCallbacks
        def test_many_proxies(self):
            proxies = [Proxy("app-%d" % i, 20000 + i, "10.213.1.%d" % (i + 1))
                       for i in range(60)]
            yield self.network.set_state(proxies, [], [])
            yield self.assert_state(proxies)

        @inlineCallbacks
        def test_remove_all(self):
            yield self.network.set_state([MYSQL], [POSTGRES], [HELD_MYSQL])
            yield self.network.remove_all()
            yield self.assert_state()

        @inlineCallbacks
        def test_remove_all_when_empty(self):
            yield self.network.remove_all()
            yield self.network.remove_all()
            yield self.assert_state()

        @inlineCallbacks
        def test_set_state_after_remove_all(self):
            yield self.network.set_state([MYSQL], [], [])
            yield self.network.remove_all()
            yield self.network.set_state([WEB], [REDIS], [])
            yield self.assert_state([WEB], [REDIS])

        @inlineCallbacks
        def assert_refused(self, exception, proxies, open_ports, held_ports):
            """The call fails and the previous state is untouched."""
            yield self.network.set_state([MYSQL], [POSTGRES], [HELD_MYSQL])
            failure = yield self.assertFailure(
                self.network.set_state(proxies, open_ports, held_ports),
                exception)
            yield self.assert_state([MYSQL], [POSTGRES], [HELD_MYSQL])
            return failure

        @inlineCallbacks
        def test_two_proxies_for_one_port_refused(self):
            error = yield self.assert_refused(
                RouteConflict,
                [MYSQL, Proxy("mysql", 3306, "10.213.0.7")], [], [])
            self.assertIn("port 3306", str(error))

        @inlineCallbacks
        def test_two_applications_on_one_port_refused(self):
            error = yield self.assert_refused(
                RouteConflict, [], [POSTGRES, OpenPort("other", 5432)], [])
            self.assertIn("other", str(error))
            self.assertIn("postgres", str(error))

        def test_proxy_and_open_port_on_one_port_refused(self):
            return self.assert_refused(
                RouteConflict, [MYSQL], [OpenPort("mysql", 3306)], [])

        def test_hold_for_another_application_refused(self):
            return self.assert_refused(
                RouteConflict, [MYSQL], [], [HeldPort("web", 3306)])

        def test_wrong_kind_of_value_refused(self):
            return self.assert_refused(TypeError, [POSTGRES], [], [])

        def test_string_instead_of_collection_refused(self):
            return self.assert_refused(TypeError, [], [], "mysql")

    return INetworkTests
