"""
Standby replication: the owner of a volume pushes an increment to each of
its standby nodes every ``replication_interval`` seconds, on its own, with
no flocker-deploy running.

Each round takes one snapshot and pushes it to every standby that is due
(incrementally from the newest snapshot both hold, so a round cut at any
point is resumed by the next from the last common snapshot), then prunes
the snapshots no standby still needs.  A
volume being moved is never replicated: the convergence pauses it (and
cancels a round in flight) for the duration of the move.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Set, Tuple

from attrs import evolve, frozen
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from .._async import deferred
from ..changes import RunContext, push_snapshot
from ..volume import Snapshot, VolumeName, VolumeNotFound
from ..volume._common import snapshot_time
from ..wire import ApplyRequest

__all__ = ["Replicator", "ReplicaStatus"]

log = Logger()


@frozen
class ReplicaStatus:
    """How one volume's replication to one standby stands."""

    volume: str
    standby: str
    interval: float
    last_attempt: Optional[float] = None
    last_success: Optional[float] = None
    snapshot: Optional[str] = None         # the newest snapshot the standby holds
    snapshot_time: Optional[float] = None  # when that snapshot was taken
    last_bytes: int = 0
    last_seconds: Optional[float] = None
    last_error: Optional[str] = None

    def lag(self, now: float) -> Optional[float]:
        """Seconds of writes the standby may lack: now - its newest snapshot."""
        return None if self.snapshot_time is None else max(0.0, now - self.snapshot_time)

    def to_document(self, now: float) -> dict:
        return {"standby": self.standby, "interval": self.interval,
                "last_attempt": self.last_attempt, "last_success": self.last_success,
                "snapshot": self.snapshot, "snapshot_time": self.snapshot_time,
                "lag": self.lag(now), "last_bytes": self.last_bytes,
                "last_seconds": self.last_seconds, "last_error": self.last_error}


class Replicator(Service):
    """
    ``deployer`` is the node's; ``desired()`` returns the current
    ``ApplyRequest`` (or None); ``tick`` is how often it looks for work.
    """

    def __init__(self, deployer, desired: "Callable[[], Optional[ApplyRequest]]", clock,
                 emit: Callable[[dict], None] = lambda event: None,
                 tick: float = 1.0):
        self.deployer = deployer
        self.desired = desired
        self.clock = clock
        self.emit = emit
        self.tick_interval = tick
        self.status: Dict[Tuple[str, str], ReplicaStatus] = {}
        self._rounds: Dict[str, Deferred] = {}
        self._paused: Dict[str, int] = {}
        self._loop: Optional[LoopingCall] = None

    # --- pausing for moves -------------------------------------------------

    def pause(self, volumes: Iterable[str]) -> Callable[[], None]:
        """Replicate none of ``volumes`` (and cut a round in flight) until
        the returned callable is called."""
        names = sorted(set(volumes))
        for name in names:
            self._paused[name] = self._paused.get(name, 0) + 1
            round_ = self._rounds.get(name)
            if round_ is not None:
                log.info("replication of {volume} cut: the volume is moving",
                         volume=name)
                round_.cancel()

        def resume():
            for name in names:
                self._paused[name] -= 1
                if not self._paused[name]:
                    del self._paused[name]
        return resume

    # --- scheduling ----------------------------------------------------------

    def due(self, now: float) -> List[Tuple[str, List[str], float]]:
        """(volume, standbys due, interval) for each volume of an
        application this node runs that has standbys."""
        request = self.desired()
        if request is None:
            return []
        me = self.deployer.hostname
        work = []
        here = {app.name for node, app in request.deployment.applications()
                if node.hostname == me and app.volume is not None}
        for key in [k for k in self.status if k[0] not in here]:
            del self.status[key]  # moved away: its new owner replicates it
        for node, app in request.deployment.applications():
            if node.hostname != me or app.volume is None:
                continue
            interval = app.volume.effective_replication_interval
            standbys = [s for s in request.deployment.standbys_of(app.name)
                        if s != me and s not in request.down]
            self._forget_others(app.name, standbys)
            due = []
            for standby in standbys:
                status = self.status.get((app.name, standby))
                if status is None or status.interval != interval:
                    status = ReplicaStatus(app.name, standby, interval) if status is None \
                        else evolve(status, interval=interval)
                    self.status[(app.name, standby)] = status
                if status.last_attempt is None or now - status.last_attempt >= interval:
                    due.append(standby)
            if due:
                work.append((app.name, due, interval))
        return work

    def _forget_others(self, name: str, standbys: List[str]) -> None:
        for key in [k for k in self.status if k[0] == name and k[1] not in standbys]:
            del self.status[key]

    def tick(self) -> None:
        now = self.clock.seconds()
        for name, standbys, _ in self.due(now):
            if name in self._rounds or name in self._paused:
                continue
            d = self.replicate(name, standbys, now)
            self._rounds[name] = d

            def done(result, name=name, d=d):
                if self._rounds.get(name) is d:
                    del self._rounds[name]
                if isinstance(result, Failure) and not result.check(defer.CancelledError):
                    log.failure("replication round of {volume} failed", result,
                                volume=name)
                return None
            d.addBoth(done)

    # --- one round --------------------------------------------------------------

    @deferred
    async def replicate(self, name: str, standbys: List[str],
                        now: Optional[float] = None) -> None:
        """One round: a snapshot of ``name`` pushed to each of ``standbys``,
        then pruning.  Fires when done; never fails (errors are recorded)."""
        deployer = self.deployer
        volume = VolumeName(name)
        # The tick's time, not a moment later: rounds start every interval,
        # not every interval plus a tick.
        now = self.clock.seconds() if now is None else now
        for standby in standbys:
            self._record(name, standby, last_attempt=now)
        try:
            current = await deployer.pool.get(volume)
        except VolumeNotFound:
            return
        if not current.owned_by(deployer.hostname) or current.read_only:
            return  # not the live copy (any more): its owner replicates
        try:
            await deployer.pool.snapshot(volume)
        except Exception as e:
            for standby in standbys:
                self._record(name, standby, last_error="snapshot failed: %s" % (e,))
            return
        context = RunContext(deployer.hostname, self.emit)
        for standby in standbys:
            started = self.clock.seconds()
            events: List[dict] = []
            try:
                snapshot = await push_snapshot(
                    deployer, RunContext(deployer.hostname, events.append),
                    name, standby, "replicate", new_snapshot=False)
            except defer.CancelledError:
                self._record(name, standby, last_error="cut: the volume started moving")
                raise
            except Exception as e:
                log.warn("replicating {volume} to {standby} failed: {error}",
                         volume=name, standby=standby, error=str(e))
                self._record(name, standby, last_error=str(e))
                context.emit("replication-failed", name, to=standby, error=str(e))
                continue
            sent = sum(e.get("bytes", 0) for e in events if e.get("action") == "transferred")
            self._record(name, standby, last_success=self.clock.seconds(),
                         snapshot=snapshot.name,
                         snapshot_time=snapshot_time(snapshot.name),
                         last_bytes=sent,
                         last_seconds=self.clock.seconds() - started,
                         last_error=None)
            context.emit("replicated", name, to=standby, snapshot=snapshot.name,
                         bytes=sent)
        await self._prune(name)

    async def _prune(self, name: str) -> None:
        """Prune what no standby still needs; if one cannot say, prune
        nothing this time.  Other holders of an old copy (the old owner
        after a move) do not count: they never receive again, so waiting
        for them kept one snapshot more every round, for ever; a later
        push to them is a full one if nothing is left in common."""
        deployer = self.deployer
        request = self.desired()
        if request is None:
            return
        holders: Set[str] = set(request.deployment.standbys_of(name))
        holders -= {deployer.hostname} | set(request.down)
        volume = VolumeName(name)
        commons = []
        for holder in sorted(holders):
            try:
                theirs = await deployer.peers.snapshots(holder, name)
            except Exception:
                return
            commons.append([Snapshot(volume, s) for s in theirs])
        if commons:
            await deployer.pool.prune_snapshots(volume, *commons)

    def _record(self, name: str, standby: str, **changes) -> None:
        key = (name, standby)
        if key in self.status:
            self.status[key] = evolve(self.status[key], **changes)

    # --- service ------------------------------------------------------------------

    def startService(self):
        Service.startService(self)
        self._loop = LoopingCall(self.tick)
        self._loop.clock = self.clock
        self._loop.start(self.tick_interval, now=False)

    def stopService(self):
        Service.stopService(self)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        for round_ in list(self._rounds.values()):
            round_.cancel()
