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

    def snapshots(node, volume):
        """Fire with the snapshot names ``node`` holds of ``volume``
        (oldest first; none when it holds no copy)."""

    def push(node, volume, start_send, replace=False):
        """
        Stream a volume into ``node``'s ``receive``: ``start_send(consumer)``
        starts the send stream writing into ``consumer`` and returns it (an
        ``ISendStream``).  Fires with the bytes sent when ``node`` has
        received it all; fails with what ``node`` said otherwise.
        ``replace``: the stream is a full one and ``node`` holds an older,
        unrelated replica, to be discarded first.
        """

    def acquire(node, volume):
        """Ask ``node`` to become the owner of ``volume`` (the handoff)."""
