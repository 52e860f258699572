"""
Changes to an application's container: start, stop, wait until it listens.
"""

from __future__ import annotations

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Protocol
from zope.interface import implementer

from .._async import deferred, sleep
from ..docker import DockerError, ensure_image
from ..model import Application
from ._interfaces import IStateChange

__all__ = ["StartApplication", "StopApplication", "WaitForPort",
           "stop_container"]


async def stop_container(deployer, name: str) -> None:
    """Stop and remove ``name``'s container; a missing one is fine."""
    try:
        await deployer.docker.stop(name)
    except DockerError as e:
        if e.status != 404:
            raise
        return
    try:
        await deployer.docker.remove(name)
    except DockerError as e:
        if e.status != 404:
            raise


@implementer(IStateChange)
@frozen
class StartApplication:
    """Create and start the container (removing a stale one first)."""

    application: Application

    @property
    def summary(self) -> str:
        return "start %s" % (self.application.name,)

    @deferred
    async def run(self, deployer, context):
        app = self.application
        if app.name in {u.name for u in await deployer.docker.list()}:
            await stop_container(deployer, app.name)
        context.emit("pull-image", app.name, image=app.image.full_name)
        await ensure_image(deployer.docker, app.image)
        path = deployer.volume_path(app.name) if app.volume is not None else None
        context.emit("start", app.name)
        await deployer.docker.add(app, path)


@implementer(IStateChange)
@frozen
class StopApplication:
    """Stop and remove the container; its volume is kept."""

    name: str

    @property
    def summary(self) -> str:
        return "stop %s" % (self.name,)

    @deferred
    async def run(self, deployer, context):
        context.emit("stop", self.name)
        await stop_container(deployer, self.name)


@implementer(IStateChange)
@frozen
class WaitForPort:
    """Wait until the application accepts connections on its first port."""

    application: Application

    @property
    def summary(self) -> str:
        return "wait for %s to listen" % (self.application.name,)

    @deferred
    async def run(self, deployer, context):
        app = self.application
        ports = sorted(app.ports)
        if not ports or deployer.container_address is None:
            return
        address = await deployer.container_address(app.name)
        port = ports[0].internal_port
        clock = deployer.reactor
        deadline = clock.seconds() + deployer.port_timeout
        while True:
            if await _can_connect(clock, address, port):
                context.emit("listening", app.name, port=ports[0].external_port)
                return
            if clock.seconds() >= deadline:
                context.emit("warning", app.name, message=(
                    "did not accept connections on port %d within %d s; "
                    "opening its ports anyway" % (port, deployer.port_timeout)))
                return
            await sleep(clock, 0.1)


class _Probe(Protocol):
    def connectionMade(self):
        self.factory.result(True)
        self.transport.abortConnection()


class _ProbeFactory(ClientFactory):
    protocol = _Probe

    def __init__(self):
        self.done = Deferred()

    def result(self, ok):
        if not self.done.called:
            self.done.callback(ok)

    def clientConnectionFailed(self, connector, reason):
        self.result(False)


def _can_connect(reactor, address: str, port: int) -> Deferred:
    factory = _ProbeFactory()
    reactor.connectTCP(address, port, factory, timeout=2)
    return factory.done
