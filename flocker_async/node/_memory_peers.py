"""
``IPeers`` between deployers in one process: what the SSH peer commands do,
without SSH.  The convergence tests run whole moves with it on in-memory
backends; the IPeers contract suite checks it against the SSH peers.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Tuple

from twisted.internet import defer
from zope.interface import implementer

from .._async import deferred
from ..changes import ChangeFailed, RunContext
from ..volume import VolumeName, VolumeNotFound
from ._interfaces import IPeers

__all__ = ["MemoryPeers"]


@implementer(IPeers)
class MemoryPeers:
    """
    ``deployers`` maps host name to ``Deployer``; a name missing from it is
    a node that cannot be reached.  ``sinks`` may map host name to where
    that node's peer-command events go (as its daemon's log would).
    """

    def __init__(self, deployers, sinks: Optional[Dict] = None):
        self.deployers = deployers
        self.sinks = sinks if sinks is not None else {}
        self.bytes_pushed: List[Tuple[str, str, int]] = []
        self.named: Optional[set] = None
        # Anti-entropy: host name -> callable(caller, generation) firing
        # with a PeerSync, as each node's ``sync`` command answers.
        self.syncs: Dict = {}
        self.caller: Optional[str] = None

    def set_peers(self, peers: Iterable) -> None:
        self.named = {p.address for p in peers}

    def _peer(self, node):
        if self.named is not None and node not in self.named:
            raise ChangeFailed(
                "node %s is not among the peers the last deploy named" % (node,))
        try:
            return self.deployers[node]
        except KeyError:
            raise ConnectionRefusedError("cannot reach node %s" % (node,))

    def _context(self, node) -> RunContext:
        return RunContext(node, self.sinks.get(node, lambda event: None))

    @deferred
    async def snapshots(self, node, volume, epoch=None):
        peer = self._peer(node)
        peer.handoffs.note_activity(volume)
        if epoch is not None and await peer.handoffs.settled_copy(
                VolumeName(volume), epoch) is None:
            return []
        try:
            snapshots = await peer.pool.snapshots(VolumeName(volume))
        except VolumeNotFound:
            return []
        return [s.name for s in snapshots]

    @deferred
    async def push(self, node, volume, start_send, replace=False, owner=None,
                   epoch=None):
        peer = self._peer(node)
        context = self._context(node)
        receiver = await peer.handoffs.receiver(volume, replace, context,
                                                owner=owner, epoch=epoch,
                                                caller=self.caller)
        stream = start_send(receiver)
        try:
            sent = await stream.done
        except Exception as e:
            # As over SSH, the receiving side's account of a failed push
            # (out of space, ...) is the one the sender reports.
            receiver.abort(str(e))
            await receiver.done
            raise
        receiver.finish()
        snapshot = await receiver.done
        context.emit("received", volume, snapshot=snapshot.name,
                     bytes=receiver.bytes_received)
        self.bytes_pushed.append((node, volume, stream.bytes_sent))
        return sent

    def acquire(self, node, volume, epoch=None):
        return defer.maybeDeferred(
            lambda: self._peer(node).handoffs.acquire(volume, self._context(node),
                                                      epoch, caller=self.caller))

    def sync(self, node, generation):
        """What ``node``'s ``sync`` command answers (its answering callable
        is registered in ``syncs``), asked by ``caller``."""
        def ask():
            self._peer(node)
            return self.syncs[node](self.caller, generation)
        return defer.maybeDeferred(ask)

    def as_node(self, host: str) -> "MemoryPeers":
        """The same peers, as node ``host`` reaches them."""
        view = MemoryPeers(self.deployers, self.sinks)
        view.bytes_pushed = self.bytes_pushed
        view.syncs = self.syncs
        view.caller = host
        return view
