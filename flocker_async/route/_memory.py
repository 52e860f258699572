"""
An in-memory ``INetwork`` for tests of the convergence logic.

It passes the same contract suite as ``IPTablesNetwork``
(tests/testtools/route.py), so code tested against it behaves the same on a
real node.
"""

from __future__ import annotations

from twisted.internet.defer import fail, succeed
from zope.interface import implementer

from ._interfaces import INetwork, NetworkState, desired_state

__all__ = ["MemoryNetwork"]


@implementer(INetwork)
class MemoryNetwork:
    """
    Routing held in memory.  ``transactions`` counts successful
    ``set_state``/``remove_all`` calls, so tests can tell whether a
    convergence changed the routing at all.
    """

    def __init__(self, proxies=(), open_ports=(), held_ports=()):
        self._state = desired_state(proxies, open_ports, held_ports)
        self.transactions = 0

    def get_state(self):
        return succeed(self._state)

    def enumerate_proxies(self):
        return succeed(self._state.proxies)

    def enumerate_open_ports(self):
        return succeed(self._state.open_ports)

    def enumerate_held_ports(self):
        return succeed(self._state.held_ports)

    def set_state(self, proxies, open_ports, held_ports):
        try:
            self._state = desired_state(proxies, open_ports, held_ports)
        except (TypeError, ValueError):
            return fail()
        self.transactions += 1
        return succeed(None)

    def remove_all(self):
        self._state = NetworkState()
        self.transactions += 1
        return succeed(None)
