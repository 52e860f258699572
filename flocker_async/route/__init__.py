"""
Routing of application ports on a node: proxies to the node running an
application, open ports for applications running here, held ports while an
application moves.  ``IPTablesNetwork`` is the real thing, ``MemoryNetwork``
the fake; both pass tests/testtools/route.py.
"""

from ._interfaces import (
    HeldPort,
    INetwork,
    NetworkState,
    OpenPort,
    Proxy,
    RouteConflict,
    desired_state,
)
from ._iptables import IPTablesNetwork, IPTablesRestoreFailed
from ._memory import MemoryNetwork

__all__ = [
    "INetwork",
    "Proxy",
    "OpenPort",
    "HeldPort",
    "NetworkState",
    "RouteConflict",
    "desired_state",
    "IPTablesNetwork",
    "IPTablesRestoreFailed",
    "MemoryNetwork",
]
