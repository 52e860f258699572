"""
The node's routing table: for each application, its external ports and how
they are routed here (``Route``).  Every change is applied to the network
backend as one whole new state, one at a time.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Tuple

from twisted.internet import defer
from twisted.internet.defer import Deferred

from .._async import deferred
from ..changes import HELD, Route
from ..route import HeldPort, OpenPort, Proxy, desired_state

__all__ = ["RouteTable"]

Table = Dict[str, Tuple[Tuple[int, ...], Route]]


class RouteTable:
    """
    ``network`` is the node's ``INetwork``; ``resolve(host)`` fires with a
    node's IPv4 address.  ``table`` is what was applied last.
    """

    def __init__(self, network, resolve: Callable[[str], Deferred]):
        self.network = network
        self.resolve = resolve
        self.table: Table = {}
        self._lock = defer.DeferredLock()

    def replace(self, table: Table, context) -> Deferred:
        """Route exactly ``table``; applications not in it lose their rules."""
        return self._apply(lambda current: dict(table), context)

    def set(self, application: str, ports, route: Route, context) -> Deferred:
        """Change one application's entry."""
        def change(current: Table) -> Table:
            new = dict(current)
            new[application] = (tuple(ports), route)
            return new
        return self._apply(change, context)

    def hold(self, application: str, context) -> Deferred:
        """Hold an application's ports, if it has any here (``acquire``)."""
        entry = self.table.get(application)
        if entry is None or not entry[0]:
            return defer.succeed(None)
        return self.set(application, entry[0], HELD, context)

    def _apply(self, change: Callable[[Table], Table], context) -> Deferred:
        return self._lock.run(self._apply_now, change, context)

    @deferred
    async def _apply_now(self, change: Callable[[Table], Table], context):
        table = change(self.table)
        proxies: List[Proxy] = []
        open_ports: List[OpenPort] = []
        held: List[HeldPort] = []
        for name, (ports, route) in sorted(table.items()):
            if route.kind == "proxy" and route.target is not None:
                address = await self.resolve(route.target)
                proxies.extend(Proxy(name, p, address) for p in ports)
            elif route.kind == "local":
                open_ports.extend(OpenPort(name, p) for p in ports)
            elif route.kind == "held":
                held.extend(HeldPort(name, p) for p in ports)
        state = desired_state(proxies, open_ports, held)
        await self.network.set_state(state.proxies, state.open_ports,
                                     state.held_ports)
        changed = sorted(n for n in set(table) | set(self.table)
                         if table.get(n) != self.table.get(n))
        self.table = table
        for name in changed:
            if name in table:
                context.emit("route", name, route=str(table[name][1]))
            else:
                context.emit("unroute", name)
