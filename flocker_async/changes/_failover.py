"""
When an owner is gone: taking a volume over from the freshest surviving
copy (the operator declared the owner down), and a returning owner yielding
to the copy that took over.

Which copy is freshest, which epoch the new owner gets, and what a
take-over may have lost are pure functions of the cluster state, so every
node and flocker-deploy compute the same answer from the same state.
"""

from __future__ import annotations

import time
from typing import Dict, FrozenSet, Iterable, List, Optional, Tuple

from attrs import frozen
from zope.interface import implementer

from .._async import deferred
from ..model import ClusterState, Deployment, VolumeState
from ..volume import VolumeName
from ..volume._common import snapshot_time
from ._interfaces import IStateChange

__all__ = ["TakeOverPlan", "plan_takeovers", "freshness", "TakeOver",
           "PushReplica", "YieldVolume", "stale_claim"]


def freshness(volume: VolumeState) -> float:
    """When the newest snapshot of a copy was taken (unix time; -1 for a
    copy without one we can date)."""
    times = [t for t in (snapshot_time(s) for s in volume.snapshots) if t is not None]
    return max(times) if times else -1.0


@frozen
class TakeOverPlan:
    """
    Application ``application``'s volume was owned by ``old_owner``, which
    is declared down: ``target`` (where the deployment puts it) becomes the
    owner with ``epoch``, from the freshest surviving copy, on ``source``
    (its newest snapshot ``snapshot``, taken at ``snapshot_time``).  When
    ``source`` is not ``target`` it pushes that copy to ``target`` first.
    """

    application: str
    old_owner: str
    target: str
    source: str
    snapshot: Optional[str]
    snapshot_time: Optional[float]
    epoch: int


def plan_takeovers(desired: Deployment, cluster: ClusterState,
                   down: Iterable[str],
                   epoch_floor: Optional[Dict[str, int]] = None
                   ) -> Dict[str, TakeOverPlan]:
    """
    Every take-over ``desired`` needs: an application with a volume whose
    live copy no reachable node holds, and whose copies name an owner that
    is in ``down``.  The new epoch is one more than any surviving copy's
    and than ``epoch_floor`` (the highest epoch any node saw claimed: a
    node that took over and died before replicating raised it unseen by
    the copies).
    """
    epoch_floor = epoch_floor or {}
    down = frozenset(down)
    plans: Dict[str, TakeOverPlan] = {}
    for node, app in desired.applications():
        name = app.name
        if app.volume is None or node.hostname in down:
            continue
        owner = cluster.owner_of(name, down)
        if owner is not None and owner not in down:
            continue
        copies: List[Tuple[str, VolumeState]] = []
        for n in cluster.nodes:
            volume = n.volume(name)
            if n.hostname not in down and volume is not None:
                copies.append((n.hostname, volume))
        if not copies:
            continue
        # The owner the most recent copy names (highest epoch).
        last = max(copies, key=lambda c: (c[1].epoch, c[1].owner or ""))[1]
        if last.owner is None or last.owner not in down:
            continue
        source, volume = sorted(
            copies, key=lambda c: (-freshness(c[1]), c[0] != node.hostname, c[0]))[0]
        newest = volume.snapshots[-1] if volume.snapshots else None
        plans[name] = TakeOverPlan(
            application=name, old_owner=last.owner, target=node.hostname,
            source=source, snapshot=newest,
            snapshot_time=snapshot_time(newest) if newest else None,
            epoch=1 + max([v.epoch for _, v in copies] + [epoch_floor.get(name, 0)]))
    return plans


def stale_claim(hostname: str, name: str, cluster: ClusterState,
                down: FrozenSet[str]) -> bool:
    """
    This node's writable copy of ``name`` names itself owner, but it must
    not be served: another node holds the live copy with a higher epoch
    (it took over while we were away), or this node was declared down.
    """
    local = cluster.node(hostname)
    ours = local.volume(name) if local is not None else None
    if ours is None or ours.owner != hostname or not ours.writable:
        return False
    owner = cluster.owner_of(name, down)
    return hostname in down or (owner is not None and owner != hostname)


@implementer(IStateChange)
@frozen
class TakeOver:
    """This node's copy (the freshest surviving one) becomes the live copy
    with ownership ``epoch``: the operator declared its owner down."""

    name: str
    epoch: int

    @property
    def summary(self) -> str:
        return "take volume %s over (epoch %d)" % (self.name, self.epoch)

    def run(self, deployer, context):
        return deployer.handoffs.locked(self.name, self._run, deployer, context)

    async def _run(self, deployer, context):
        volume = VolumeName(self.name)
        await deployer.pool.set_owner(volume, deployer.hostname, self.epoch)
        await deployer.pool.set_read_only(volume, False)
        context.emit("take-over", self.name, epoch=self.epoch)


@implementer(IStateChange)
@frozen
class PushReplica:
    """This node holds the freshest surviving copy of a volume whose owner
    is down: push it (its newest snapshot, no new one: it is a replica) to
    ``to``, the node taking over."""

    name: str
    to: str

    @property
    def summary(self) -> str:
        return "push this node's copy of volume %s to %s (take-over)" % (
            self.name, self.to)

    @deferred
    async def run(self, deployer, context):
        from ._volumes import push_snapshot
        await push_snapshot(deployer, context, self.name, self.to, "push",
                            new_snapshot=False)


@implementer(IStateChange)
@frozen
class YieldVolume:
    """
    This node's writable copy lost its ownership while the node was away
    (another copy took over with a higher epoch, or the node was declared
    down): it may hold writes the new owner lacks, so it is set aside,
    read-only and kept with its data until an operator discards it, and
    never served again.  ``owner`` is the new owner, if known.
    """

    name: str
    owner: Optional[str]

    @property
    def summary(self) -> str:
        return "set this node's copy of volume %s aside (it lost ownership%s)" % (
            self.name, " to %s" % (self.owner,) if self.owner else "")

    def run(self, deployer, context):
        return deployer.handoffs.locked(self.name, self._run, deployer, context)

    async def _run(self, deployer, context):
        volume = VolumeName(self.name)
        await deployer.pool.set_read_only(volume, True)
        label = _label(deployer.reactor.seconds())
        kept = await deployer.pool.set_aside(volume, label)
        context.emit("set-aside", self.name, label=label, owner=self.owner,
                     referenced=kept.referenced, mountpoint=kept.mountpoint)


def _label(now: float) -> str:
    """A set-aside label from the time: 20261203T110207-123Z."""
    seconds, millis = divmod(round(now * 1000), 1000)
    return "%s-%03dZ" % (time.strftime("%Y%m%dT%H%M%S", time.gmtime(seconds)), millis)
