"""
One node's backends, as the change values of ``flocker_async.changes`` run
against them.

A ``Deployer`` holds the node's Docker client, storage pool, routing table,
peers and the volumes arriving from them; it discovers the node's state and
nothing more: what a change does is the change's own business (its
``run(deployer, context)``), and what one run needs (where its progress
goes, its handoff timeout) is in that run's ``RunContext``.
"""

from __future__ import annotations

from typing import Callable, Optional

from twisted.internet.defer import Deferred
from zope.interface import implementer

from .._async import deferred
from ..changes import IDeployer
from ..docker import configuration_digest
from ..model import Application, ApplicationState, NodeState, VolumeState
from ..volume import VolumeNotFound
from ._handoffs import Handoffs
from ._routes import RouteTable

__all__ = ["Deployer"]


@implementer(IDeployer)
class Deployer:
    """
    ``hostname`` is the node's name in the deployment (its address);
    ``resolve(hostname)`` fires with an IPv4 address;
    ``container_address(name)`` with the address a container listens on
    (None: ports are not probed).
    """

    def __init__(self, hostname: str, docker, pool, network, peers, reactor,
                 resolve: Callable[[str], Deferred],
                 port_timeout: float = 300.0,
                 container_address: Optional[Callable[[str], Deferred]] = None):
        self.hostname = hostname
        self.docker = docker
        self.pool = pool
        self.peers = peers
        self.reactor = reactor
        self.port_timeout = port_timeout
        self.container_address = container_address
        self.routes = RouteTable(network, resolve)
        self.handoffs = Handoffs(hostname, pool, self.routes, reactor)

    @property
    def network(self):
        return self.routes.network

    @deferred
    async def discover(self) -> NodeState:
        """This node's ``NodeState``, read from the backends: containers,
        and each copy of a volume with its owner, epoch and snapshots."""
        units = await self.docker.list()
        volumes = []
        for v in await self.pool.enumerate():
            try:
                snapshots = [s.name for s in await self.pool.snapshots(v.name)]
            except VolumeNotFound:
                continue  # gone since it was listed
            volumes.append(VolumeState(v.name.value, v.owner, not v.read_only,
                                       snapshots, v.epoch))
        return NodeState(
            hostname=self.hostname,
            applications=[ApplicationState(u.name, u.running, u.config_digest)
                          for u in units],
            volumes=volumes)

    def digest(self, application: Application) -> str:
        path = (self.volume_path(application.name)
                if application.volume is not None else None)
        return configuration_digest(application, path)

    def volume_path(self, name: str) -> str:
        return "%s/%s" % (self.pool.mount_root.rstrip("/"), name)
