"""
``IPeers`` between deployers in one process: what the SSH peer commands do,
without SSH.  The convergence tests run whole moves with it on in-memory
backends; tests/functional runs the same moves over real SSH.
"""

from __future__ import annotations

from twisted.internet import defer
from zope.interface import implementer

from ..volume import VolumeName, VolumeNotFound
from ._deployer import IPeers

__all__ = ["MemoryPeers"]


@implementer(IPeers)
class MemoryPeers:
    """``deployers`` maps host name to ``Deployer``; a name missing from it
    is a node that cannot be reached."""

    def __init__(self, deployers):
        self.deployers = deployers
        self.bytes_pushed = []

    def _peer(self, node):
        try:
            return self.deployers[node]
        except KeyError:
            raise ConnectionRefusedError("cannot reach node %s" % (node,))

    @defer.inlineCallbacks
    def snapshots(self, node, volume):
        peer = self._peer(node)
        peer.note_activity(volume)
        try:
            snapshots = yield peer.pool.snapshots(VolumeName(volume))
        except VolumeNotFound:
            return []
        return [s.name for s in snapshots]

    @defer.inlineCallbacks
    def push(self, node, volume, start_send, replace=False):
        peer = self._peer(node)
        receiver = yield defer.Deferred.fromCoroutine(peer.receiver(volume, replace))
        stream = start_send(receiver)
        sent = yield stream.done
        receiver.finish()
        yield receiver.done
        self.bytes_pushed.append((node, volume, stream.bytes_sent))
        return sent

    def acquire(self, node, volume):
        return defer.maybeDeferred(lambda: self._peer(node).acquire(volume))
