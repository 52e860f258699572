"""
How a node reaches the other nodes.
"""

from __future__ import annotations

from zope.interface import Interface

__all__ = ["IPeers"]


class IPeers(Interface):
    """The other nodes, as this node reaches them for volume moves.  Every
    method but ``set_peers`` returns a Deferred."""

    def set_peers(peers):
        """
        The nodes this node may reach from now on: ``Peer`` values (address,
        SSH port, keys) as the last deploy named them.  A node not named
        cannot be reached (its calls fail with ``ChangeFailed``).
        """

    def snapshots(node, volume, epoch=None):
        """Fire with the snapshot names ``node`` holds of ``volume``
        (oldest first; none when it holds no copy).  ``epoch``: the asking
        copy's ownership epoch; a node whose own copy still claims the
        volume with a lower one answers once it has set that copy aside."""

    def push(node, volume, start_send, replace=False, owner=None, epoch=None):
        """
        Stream a volume into ``node``'s ``receive``: ``start_send(consumer)``
        starts the send stream writing into ``consumer`` and returns it (an
        ``ISendStream``).  Fires with the bytes sent when ``node`` has
        received it all; fails with what ``node`` said otherwise.
        ``replace``: the stream is a full one and ``node`` holds an older,
        unrelated replica, to be discarded first.  ``owner`` and ``epoch``:
        what the sender's copy records, for ``node`` to record on its
        replica; ``node`` refuses a push whose epoch is lower than its own
        copy's (a former owner's).
        """

    def acquire(node, volume, epoch=None):
        """Ask ``node`` to become the owner of ``volume`` (the handoff),
        with ownership ``epoch`` (else one more than its copy's)."""

    def sync(node, generation):
        """
        Anti-entropy: tell ``node`` our deployment's ``generation`` and
        fire with its ``PeerSync`` (its generation, its persisted request,
        its state).  ``node`` converges soon if ours is newer than its own.
        """
