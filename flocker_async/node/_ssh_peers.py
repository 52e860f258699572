"""
``IPeers`` over SSH: the peer commands ``snapshots``, ``receive`` and
``acquire`` of other nodes, run with this node's key and checked against the
host keys ``apply`` distributed.
"""

from __future__ import annotations

from typing import Dict, Iterable

from twisted.internet import defer
from twisted.web.iweb import UNKNOWN_LENGTH
from zope.interface import implementer

from .._async import deferred
from ..changes import ChangeFailed
from ..ssh import SSHClient
from ..wire import Peer, decode_sync
from ._interfaces import IPeers

__all__ = ["SSHPeers"]


class _WriteOnly:
    """The channel registers the body producer itself; the send stream must
    not register a second time on it."""

    def __init__(self, consumer):
        self._consumer = consumer

    def write(self, data):
        self._consumer.write(data)

    def writeSequence(self, data):
        self._consumer.writeSequence(data)

    def registerProducer(self, producer, streaming):
        pass

    def unregisterProducer(self):
        pass


class _SendBody:
    """A volume send stream as the ``IBodyProducer`` the SSH client paces."""

    length = UNKNOWN_LENGTH

    def __init__(self, start_send):
        self._start_send = start_send
        self.stream = None
        self._paused = False

    def startProducing(self, consumer):
        self.stream = self._start_send(_WriteOnly(consumer))
        if self._paused:
            self.stream.pauseProducing()
        return self.stream.done

    def pauseProducing(self):
        self._paused = True
        if self.stream is not None:
            self.stream.pauseProducing()

    def resumeProducing(self):
        self._paused = False
        if self.stream is not None:
            self.stream.resumeProducing()

    def stopProducing(self):
        if self.stream is not None:
            self.stream.stopProducing()


@implementer(IPeers)
class SSHPeers:
    def __init__(self, reactor, node_key, known_hosts_path: str,
                 connect_timeout: float = 15, idle_timeout: float = 120):
        self.client = SSHClient(reactor, node_key, known_hosts_path,
                                connect_timeout=connect_timeout,
                                idle_timeout=idle_timeout)
        self.ports: Dict[str, int] = {}

    def set_peers(self, peers: Iterable[Peer]) -> None:
        self.ports = {p.address: p.ssh_port for p in peers}

    def _run(self, node, argv, **kwargs):
        port = self.ports.get(node)
        if port is None:
            return defer.fail(ChangeFailed(
                "node %s is not among the peers the last deploy named" % (node,)))
        return self.client.run(node, port, argv, **kwargs)

    @deferred
    async def snapshots(self, node, volume, epoch=None):
        result = await self._run(node, ["snapshots", volume] + (
            ["--epoch", str(int(epoch))] if epoch is not None else []))
        return [line for line in result.stdout.decode("ascii", "replace").splitlines()
                if line]

    @deferred
    async def push(self, node, volume, start_send, replace=False, owner=None,
                   epoch=None):
        body = _SendBody(start_send)
        argv = ["receive"] + (["--replace"] if replace else [])
        if owner is not None:
            argv += ["--owner", owner, "--epoch", str(int(epoch or 0))]
        await self._run(node, argv + [volume], stdin_producer=body)
        return body.stream.bytes_sent if body.stream is not None else 0

    @deferred
    async def acquire(self, node, volume, epoch=None):
        await self._run(node, ["acquire", volume] + (
            [str(int(epoch))] if epoch is not None else []))

    @deferred
    async def sync(self, node, generation):
        result = await self._run(node, ["sync", str(int(generation))])
        return decode_sync(result.stdout, source="%s sync" % (node,))
