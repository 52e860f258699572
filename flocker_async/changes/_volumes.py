"""
Changes to a node's copy of a volume, and the steps of moving one: the
bulk push while the application runs, the final push of a read-only copy,
the handover (the target's ``acquire``), and the target's wait for it.
"""

from __future__ import annotations

from typing import List, Optional

from attrs import frozen
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from zope.interface import implementer

from .._async import deferred
from ..volume import Snapshot, VolumeName
from ._interfaces import ChangeFailed, IStateChange, NotOwner

__all__ = ["CreateVolume", "MakeWritable", "PushVolume", "FinalPush",
           "HandOver", "RecordOwner", "WaitForHandoff", "newest_common",
           "push_snapshot", "push_newest_snapshot"]


def newest_common(ours: List[str], theirs: List[str]) -> Optional[str]:
    """The newest of our snapshots (oldest first) the peer also holds."""
    have = set(theirs)
    for name in reversed(ours):
        if name in have:
            return name
    return None


async def push_snapshot(deployer, context, name: str, to: str, phase: str,
                        new_snapshot: bool = True) -> Snapshot:
    """
    Push volume ``name`` to node ``to``: a new snapshot of it (or, with
    ``new_snapshot=False``, its newest existing one: a replica's), in full
    or incrementally from the newest snapshot both hold, replacing an
    unrelated old replica there.  The receiver records the owner and epoch
    our copy names.  Verified: fires only once ``to`` lists the snapshot.
    ``phase`` names the push in progress events.
    """
    try:
        return await _push(deployer, context, name, to, phase, new_snapshot)
    except (ChangeFailed, defer.CancelledError):
        raise
    except Exception as e:
        # Say which transfer failed: the peer's words alone ("cannot
        # connect", "out of space") do not.
        raise ChangeFailed("%s volume %s to %s failed: %s" % (
            "the final push of" if phase == "final-push" else "pushing",
            name, to, e)) from e


async def push_newest_snapshot(deployer, context, name: str, to: str,
                               phase: str) -> Snapshot:
    """Snapshot volume ``name`` now and push it to ``to`` (see push_snapshot)."""
    return await push_snapshot(deployer, context, name, to, phase)


async def _push(deployer, context, name: str, to: str, phase: str,
                new_snapshot: bool) -> Snapshot:
    volume = VolumeName(name)
    pool, peers = deployer.pool, deployer.peers
    ours_now = await pool.get(volume)
    # A move's final increment goes to the copy its bulk push just made:
    # no stale copy there to wait for, no extra zfs command on the way.
    theirs = await peers.snapshots(to, name,
                                   None if phase == "final-push" else ours_now.epoch)
    if new_snapshot:
        snapshot = await pool.snapshot(volume)
    ours = [s.name for s in await pool.snapshots(volume)]
    if not new_snapshot:
        if not ours:
            raise ChangeFailed("this node's copy of volume %s has no snapshot "
                               "to push" % (name,))
        snapshot = Snapshot(volume, ours[-1])
    base_name = newest_common([s for s in ours if s != snapshot.name], theirs)
    base = Snapshot(volume, base_name) if base_name else None
    if snapshot.name in theirs:
        context.emit("transferred", name, to=to, phase=phase, bytes=0,
                     incremental=True)
        return snapshot
    # The peer holds snapshots none of which we have: an old replica of an
    # earlier lineage, replaced by a full copy of the live one.
    replace = base is None and bool(theirs)
    context.emit(phase, name, to=to, snapshot=snapshot.name,
                 base=base_name, incremental=base is not None, replace=replace)
    streams = []

    def start_send(consumer):
        stream = pool.send(snapshot, consumer, base=base)
        streams.append(stream)
        return stream

    def sent_so_far() -> int:
        return streams[0].bytes_sent if streams else 0

    poll = LoopingCall(lambda: context.emit(
        "transfer", name, to=to, phase=phase, bytes=sent_so_far()))
    poll.clock = deployer.reactor
    poll.start(1.0, now=False)
    try:
        await peers.push(to, name, start_send, replace=replace,
                         owner=ours_now.owner, epoch=ours_now.epoch)
    finally:
        if poll.running:
            poll.stop()
    # Verify before anything depends on it: the peer must list it.
    if snapshot.name not in await peers.snapshots(to, name):
        raise ChangeFailed("%s did not keep snapshot %s of volume %s after "
                           "receiving it" % (to, snapshot.name, name))
    context.emit("transferred", name, to=to, phase=phase, bytes=sent_so_far(),
                 incremental=base is not None)
    return snapshot


@implementer(IStateChange)
@frozen
class CreateVolume:
    name: str
    maximum_size: Optional[int] = None

    @property
    def summary(self) -> str:
        return "create volume %s" % (self.name,)

    def run(self, deployer, context):
        context.emit("create-volume", self.name)
        return deployer.pool.create(VolumeName(self.name), self.maximum_size)


@implementer(IStateChange)
@frozen
class MakeWritable:
    """This node owns the volume but its copy is read-only (a handoff that
    was interrupted before ``acquire``, or undone): make it the live copy
    again."""

    name: str

    @property
    def summary(self) -> str:
        return "make volume %s writable" % (self.name,)

    def run(self, deployer, context):
        context.emit("make-writable", self.name)
        return deployer.pool.set_read_only(VolumeName(self.name), False)


@implementer(IStateChange)
@frozen
class PushVolume:
    """The bulk copy of a move: push the volume to ``to`` while the
    application keeps running here."""

    name: str
    to: str

    @property
    def summary(self) -> str:
        return "push volume %s to %s (bulk copy, while it runs)" % (self.name, self.to)

    @deferred
    async def run(self, deployer, context):
        await push_newest_snapshot(deployer, context, self.name, self.to, "push")


@implementer(IStateChange)
@frozen
class FinalPush:
    """The last increment of a move: make this node's copy read-only (no
    write can follow), snapshot it and push what changed since the bulk
    copy.  The copy stays this node's until ``HandOver``."""

    name: str
    to: str

    @property
    def summary(self) -> str:
        return ("make volume %s read-only and push the final increment to %s"
                % (self.name, self.to))

    @deferred
    async def run(self, deployer, context):
        volume = VolumeName(self.name)
        current = await deployer.pool.get(volume)
        if not current.owned_by(deployer.hostname):
            raise NotOwner("volume %s is not owned by %s (owner %s); refusing "
                           "to hand it over" % (self.name, deployer.hostname,
                                                current.owner))
        await deployer.pool.set_read_only(volume, True)
        await push_newest_snapshot(deployer, context, self.name, self.to,
                                   "final-push")


@implementer(IStateChange)
@frozen
class HandOver:
    """
    Ask ``to`` to take the volume (its ``acquire``), raising the ownership
    epoch (to ``epoch`` if given, else one more than this copy's): from
    then on its copy is the live one; record it as the owner here and prune
    what neither side needs any more.
    """

    name: str
    to: str
    epoch: Optional[int] = None

    @property
    def summary(self) -> str:
        return "hand volume %s over to %s" % (self.name, self.to) + (
            " (epoch %d)" % (self.epoch,) if self.epoch is not None else "")

    @deferred
    async def run(self, deployer, context):
        volume = VolumeName(self.name)
        epoch = self.epoch
        if epoch is None:
            epoch = (await deployer.pool.get(volume)).epoch + 1
        context.emit("acquire", self.name, to=self.to, epoch=epoch)
        await deployer.peers.acquire(self.to, self.name, epoch)
        await deployer.pool.set_owner(volume, self.to, epoch)
        theirs = await deployer.peers.snapshots(self.to, self.name)
        pruned = await deployer.pool.prune_snapshots(
            volume, [Snapshot(volume, s) for s in theirs])
        context.emit("handed-over", self.name, to=self.to, pruned=len(pruned))


@implementer(IStateChange)
@frozen
class RecordOwner:
    """This node's read-only copy still names itself owner, but ``owner``
    has acquired the volume (the handoff was cut between the peer's
    ``acquire`` and recording it here): record the new owner (and its
    ``epoch``, when known)."""

    name: str
    owner: str
    epoch: Optional[int] = None

    @property
    def summary(self) -> str:
        return "record %s as the owner of volume %s" % (self.owner, self.name)

    def run(self, deployer, context):
        context.emit("record-owner", self.name, owner=self.owner)
        return deployer.pool.set_owner(VolumeName(self.name), self.owner,
                                       self.epoch or None)


@implementer(IStateChange)
@frozen
class WaitForHandoff:
    """Wait until ``source`` has handed the volume over to this node."""

    name: str
    source: str

    @property
    def summary(self) -> str:
        return "wait for %s to hand volume %s over" % (self.source, self.name)

    def run(self, deployer, context):
        return deployer.handoffs.wait_for(self.name, self.source, context)
