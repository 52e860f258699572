"""
The contract of a state change, what it runs against, and the per-run
context it is given.
"""

from __future__ import annotations

from typing import Callable, Optional

from attrs import field, frozen
from zope.interface import Attribute, Interface

__all__ = ["IStateChange", "IDeployer", "RunContext", "ChangeFailed",
           "NotOwner", "Event"]

Event = dict


class ChangeFailed(Exception):
    """A change could not be made; the message names what and why."""


class NotOwner(ChangeFailed):
    """This node does not own a volume it was about to hand over: nothing
    was attempted, so there is nothing to undo."""


class IStateChange(Interface):
    """One step towards the desired state, as a value."""

    summary = Attribute("One line saying what this change does, for people.")

    def run(deployer, context):
        """
        Do it with ``deployer``'s backends (an ``IDeployer``); ``context`` is
        this run's ``RunContext``.  Return a Deferred.
        """


class IDeployer(Interface):
    """
    The backends of one node, as changes use them.  It holds no behaviour
    of its own beyond discovery: each change owns what it does.
    """

    hostname = Attribute("The node's identity: its address in the deployment.")
    reactor = Attribute("IReactorTime and IReactorTCP.")
    docker = Attribute("An IDockerClient.")
    pool = Attribute("An IStoragePool.")
    peers = Attribute("An IPeers: the other nodes, for pushes and handoffs.")
    routes = Attribute("The node's RouteTable (applies INetwork states).")
    handoffs = Attribute("The node's Handoffs: volumes arriving from peers.")
    container_address = Attribute(
        "Callable: application name -> Deferred firing with the address its "
        "container listens on, or None when ports cannot be probed.")
    port_timeout = Attribute("Seconds to wait for an application to listen.")

    def volume_path(name):
        """Where volume ``name`` is mounted on this node."""


@frozen
class RunContext:
    """
    What one run of changes is given besides the backends: where its
    progress events go, and how long a handoff may stay silent.  A new one
    is made for every convergence; nothing per-run is kept on the deployer.
    """

    node: str
    sink: Callable[[Event], None] = field(default=lambda event: None)
    handoff_timeout: float = 120.0

    def emit(self, action: str, application: Optional[str] = None,
             **fields) -> None:
        """One progress event (node, action, application, fields)."""
        event = dict(node=self.node, action=action, **fields)
        if application is not None:
            event["application"] = application
        self.sink(event)
