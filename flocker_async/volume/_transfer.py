"""Copying a snapshot from one pool to another in one process."""

from __future__ import annotations

from typing import Optional

from twisted.python.failure import Failure

from .._async import deferred
from ._interfaces import IStoragePool, Snapshot, VolumeName

__all__ = ["copy_snapshot"]


@deferred
async def copy_snapshot(source: IStoragePool, snapshot: Snapshot,
                        target: IStoragePool, base: Optional[Snapshot] = None,
                        name: Optional[VolumeName] = None,
                        replace: bool = False):
    """
    Send ``snapshot`` (incremental from ``base`` if given) from ``source``
    straight into a receive on ``target`` (into ``name``, by default the
    same volume name; ``replace``: a full stream replacing a read-only replica
    there), with backpressure end to end.  Fires with the
    target's newest ``Snapshot``, or fails with the receive's
    ``ReceiveFailed`` (which names the send failure that caused it, if any).
    """
    receiver = (target.receive(name or snapshot.volume, replace=True) if replace
                else target.receive(name or snapshot.volume))
    try:
        stream = source.send(snapshot, receiver, base)
    except Exception:
        # Nothing will ever feed the receive: cut it, and report its end.
        receiver.abort(Failure())
        return await receiver.done
    # The end of the send is the end of the stream; a failed send cuts it.
    stream.done.addCallbacks(lambda _: receiver.finish(), receiver.abort)
    # Settle the send side before reporting; its failure is in the receive's.
    await stream.done
    return await receiver.done
