"""
How a node routes each application's external ports, and the changes that
set it.  The table itself (what is applied now) is the node's
``RouteTable``; these values say what it should become.
"""

from __future__ import annotations

from typing import Optional, Tuple

from attrs import field, frozen
from zope.interface import implementer

from ._interfaces import IStateChange

__all__ = ["Route", "LOCAL", "HELD", "proxy_to", "SetRoutes", "SetRoute"]


@frozen(order=True)
class Route:
    """
    How this node routes an application's external ports: ``local`` (open,
    the container here serves them), ``held`` (new connections wait: SYNs
    dropped) or ``proxy`` to ``target`` (a node's host name or address).
    """

    kind: str
    target: Optional[str] = None

    def __str__(self) -> str:
        return self.kind if self.target is None else "%s to %s" % (self.kind, self.target)


LOCAL = Route("local")
HELD = Route("held")


def proxy_to(hostname: str) -> Route:
    return Route("proxy", hostname)


def _sorted_ports(ports) -> Tuple[int, ...]:
    return tuple(sorted(ports))


@implementer(IStateChange)
@frozen
class SetRoutes:
    """Replace the whole routing table: ``routes`` are (application, ports,
    Route) triples; applications not named lose their rules."""

    routes: Tuple = field(converter=lambda r: tuple(sorted(r)))

    @property
    def summary(self) -> str:
        return "route %s" % (", ".join(
            "%s %s" % (name, route) for name, _, route in self.routes) or "nothing",)

    def run(self, deployer, context):
        table = {name: (tuple(ports), route) for name, ports, route in self.routes}
        return deployer.routes.replace(table, context)


@implementer(IStateChange)
@frozen
class SetRoute:
    """Change one application's entry in the routing table."""

    application: str
    ports: Tuple = field(converter=_sorted_ports)
    route: Route

    @property
    def summary(self) -> str:
        return "route %s %s" % (self.application, self.route)

    def run(self, deployer, context):
        return deployer.routes.set(self.application, self.ports, self.route, context)
