"""
Volumes arriving at this node from its peers: receiving a pushed stream,
taking ownership (``acquire``), and a move's target waiting for both.

These run on behalf of the peer commands (``receive``, ``acquire``,
``snapshots``) as well as of the target's ``WaitForHandoff`` step, so they
live with the node, not in one run of changes.
"""

from __future__ import annotations

from typing import Dict, FrozenSet, Iterable, List, Optional, Tuple

from twisted.internet.defer import Deferred, DeferredLock, maybeDeferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from .._async import deferred, sleep
from ..changes import ChangeFailed
from ..volume import VolumeName, VolumeNotFound

__all__ = ["Handoffs"]

log = Logger()

_Waiter = Tuple[Deferred, IDelayedCall, float]

# Snapshots a replica keeps after each receive (only generated ones count).
REPLICA_SNAPSHOTS = 3
# "Not read yet" for ``Handoffs._check_caller``'s copy (None means none).
_UNREAD = object()

# How long a push from a newer owner waits for this node to set aside its
# own stale copy of the volume before it is refused.
YIELD_WAIT = 60.0
# How long a receive waits for bytes from its sender before it is cut: a
# sender that crashed or was partitioned without a FIN would otherwise
# leave zfs recv running, and every later push of the volume busy.
RECEIVE_IDLE_TIMEOUT = 120.0
# How long a peer command refused for naming the wrong owner waits for
# this node to learn a deployment that declares the recorded owner down
# (a take-over's push can reach us before its apply does).
DOWN_WAIT = 10.0


def ownership_refusal(hostname: str, current, caller: Optional[str],
                      down: FrozenSet[str], what: str,
                      owner: Optional[str] = None,
                      epoch: Optional[int] = None) -> Optional[str]:
    """
    Why the peer ``caller`` may not ``what`` (acquire, or push an increment
    into) this node's copy ``current`` of a volume, or None if it may:
    only the owner the copy records may, or anyone when that owner is
    declared down (a take-over from the freshest surviving copy), or a
    pusher whose own copy names itself owner with a higher epoch (the
    node that took over, replicating to a copy that still names the old
    owner).  ``caller`` None is an in-process caller (no peer key).
    """
    if caller is None or current is None:
        return None
    recorded = current.owner
    if recorded is None or recorded in (caller, hostname) or recorded in down:
        return None
    if owner == caller and epoch is not None and epoch > current.epoch:
        return None
    return ("refusing to let %s %s volume %s: this node's copy records %s as "
            "its owner (epoch %d), and only the owner may" % (
                caller, what, current.name, recorded, current.epoch))


class Handoffs:
    """
    ``pool`` is the node's storage pool, ``routes`` its ``RouteTable``,
    ``clock`` an ``IReactorTime``.  A target waiting for a handoff gives up
    only after ``handoff_timeout`` seconds with no push or ``acquire``
    activity from the source, so a long bulk copy never times out and a
    dead source is noticed.
    """

    def __init__(self, hostname: str, pool, routes, clock):
        self.hostname = hostname
        self.pool = pool
        self.routes = routes
        self.clock = clock
        self._waiting: Dict[str, List[_Waiter]] = {}
        # The nodes this node's deployment declares down (``set_down``).
        self.down: FrozenSet[str] = frozenset()
        self._locks: Dict[str, Tuple[DeferredLock, List[int]]] = {}
        self.receive_idle_timeout = RECEIVE_IDLE_TIMEOUT

    def set_down(self, down: Iterable[str]) -> None:
        """The nodes the deployment this node converges to declares down."""
        self.down = frozenset(down)

    @deferred
    async def locked(self, name: str, f, *args, **kwargs):
        """
        Run ``f`` (returning a Deferred or a value) holding volume
        ``name``'s lock: receiving into a volume, acquiring it, setting it
        aside, taking it over and discarding a copy of it never interleave.
        """
        lock = await self._lock(name)
        try:
            return await maybeDeferred(f, *args, **kwargs)
        finally:
            self._unlock(name, lock)

    async def _lock(self, name: str) -> DeferredLock:
        lock, users = self._locks.setdefault(name, (DeferredLock(), [0]))
        users[0] += 1
        try:
            await lock.acquire()
        except BaseException:
            self._forget_lock(name, users)
            raise
        return lock

    def _unlock(self, name: str, lock: DeferredLock) -> None:
        lock.release()
        self._forget_lock(name, self._locks[name][1])

    def _forget_lock(self, name: str, users: List[int]) -> None:
        users[0] -= 1
        if users[0] == 0:
            del self._locks[name]

    async def _check_caller(self, volume: VolumeName, caller: Optional[str],
                            what: str, owner: Optional[str] = None,
                            epoch: Optional[int] = None, current=_UNREAD):
        """This node's copy of ``volume`` (None if none), once ``caller``
        may ``what`` it (see ``ownership_refusal``), else ChangeFailed.
        A refusal is kept up to ``DOWN_WAIT`` seconds, in case this node
        is about to learn a deployment that declares the owner down."""
        deadline = self.clock.seconds() + DOWN_WAIT
        while True:
            if current is _UNREAD:
                current = await self._current(volume)
            why = ownership_refusal(self.hostname, current, caller, self.down,
                                    what, owner, epoch)
            if why is None:
                return current
            if self.clock.seconds() >= deadline:
                log.warn("{why}", why=why)
                raise ChangeFailed(why)
            await sleep(self.clock, 0.2)
            current = _UNREAD

    def note_activity(self, name: str) -> None:
        """A peer is pushing or handing ``name`` over: keep waiting."""
        for _, timer, timeout in self._waiting.get(name, []):
            if timer.active():
                timer.reset(timeout)

    def _settle(self, name: str, outcome: Optional[str]) -> None:
        """Fire every wait for ``name``: None once acquired, else why a
        push from the source failed here."""
        for waiter, _, _ in list(self._waiting.get(name, [])):
            if not waiter.called:
                waiter.callback(outcome)

    @deferred
    async def wait_for(self, name: str, source: str, context) -> None:
        """Fire once ``name`` is this node's live copy (handed over by
        ``source``); fail if a push from it fails here, or if nothing
        arrives from it for ``context.handoff_timeout`` seconds."""
        try:
            volume = await self.pool.get(VolumeName(name))
            if volume.owned_by(self.hostname) and not volume.read_only:
                return
        except VolumeNotFound:
            pass
        context.emit("wait-handoff", name, source=source)
        timeout = context.handoff_timeout
        waiter: Deferred = Deferred()

        def idle():
            if not waiter.called:
                waiter.errback(ChangeFailed(
                    "%s did not hand volume %s over: nothing arrived from it "
                    "for %d s" % (source, name, timeout)))
        entry = (waiter, self.clock.callLater(timeout, idle), timeout)
        self._waiting.setdefault(name, []).append(entry)
        try:
            failed_because = await waiter
        finally:
            if entry[1].active():
                entry[1].cancel()
            self._waiting[name].remove(entry)
            if not self._waiting[name]:
                del self._waiting[name]
        if failed_because is not None:
            raise ChangeFailed("%s could not push volume %s here: %s"
                               % (source, name, failed_because))

    @deferred
    async def acquire(self, name: str, context, epoch: Optional[int] = None,
                      caller: Optional[str] = None) -> None:
        """Become the owner of a volume a peer has pushed here (its
        ``acquire``), with ownership ``epoch`` (else one more than our
        copy's); idempotent.  ``caller``: the peer asking, which must be
        the owner our copy records (see ``ownership_refusal``)."""
        self.note_activity(name)
        return await self.locked(name, self._acquire, name, context, epoch, caller)

    async def _acquire(self, name: str, context, epoch: Optional[int],
                       caller: Optional[str]) -> None:
        volume = VolumeName(name)
        current = await self._check_caller(volume, caller, "acquire")
        if current is None:
            raise VolumeNotFound(volume)
        if current.owned_by(self.hostname) and not current.read_only:
            return
        if epoch is None:
            epoch = current.epoch + 1
        elif epoch <= current.epoch:
            raise ChangeFailed(
                "refusing to acquire volume %s with epoch %d: this node's copy "
                "already has epoch %d" % (name, epoch, current.epoch))
        # New connections wait until the application runs here.
        await self.routes.hold(name, context)
        await self.pool.set_owner(volume, self.hostname, epoch)
        await self.pool.set_read_only(volume, False)
        context.emit("acquired", name, epoch=epoch)
        self._settle(name, None)

    @deferred
    async def receiver(self, name: str, replace: bool, context,
                       owner: Optional[str] = None, epoch: Optional[int] = None,
                       caller: Optional[str] = None):
        """
        An ``IReceiveStream`` for a peer's push of ``name`` that counts as
        handoff activity, holding the volume's lock until it ends, and cut
        after ``receive_idle_timeout`` seconds without a byte.  ``replace``
        receives a full stream that replaces an unrelated old replica once
        it has arrived whole (never the live copy).  ``owner``/``epoch``:
        what the sender's copy records; a push from a copy with a lower
        epoch than ours is refused (the sender is no longer the owner), and
        once received the replica records them.  ``caller``: the peer
        pushing; an increment is accepted only from the owner our copy
        records (see ``ownership_refusal``).
        """
        volume = VolumeName(name)
        self.note_activity(name)
        await self.settled_copy(volume, epoch)
        lock = await self._lock(name)
        try:
            current = await self._current(volume)
            if current is not None and epoch is not None and epoch < current.epoch:
                raise ChangeFailed(
                    "refusing a push of volume %s from a copy with epoch %d: "
                    "this node's copy has epoch %d (owner %s); the sender no "
                    "longer owns it" % (name, epoch, current.epoch, current.owner))
            if not replace:
                current = await self._check_caller(
                    volume, caller, "push an increment into", owner, epoch, current)
            elif current is not None:
                context.emit("replace-replica", name)
            stream = self.pool.receive(volume, replace=replace)
        except BaseException:
            self._unlock(name, lock)
            raise

        def failed(failure):
            # Whoever waits for this volume's handoff learns now, with the
            # reason, instead of when the source's next retry stops coming.
            self._settle(name, failure.getErrorMessage())
            return failure

        def received(snapshot):
            # Only what the replica does not record yet: on a move's final
            # increment, nothing (the bulk push recorded it), so the
            # handover waits on no extra zfs command.
            if owner is not None and current is not None and (
                    current.owner, current.epoch) == (owner, epoch):
                return self._trimmed_later(volume, snapshot)
            return self._after_receive(volume, owner, epoch).addCallback(
                lambda _: self._trimmed_later(volume, snapshot))
        stream.done.addCallbacks(received, failed)
        def unlock(result):
            # Released once the replica records its owner, whatever happened.
            self._unlock(name, lock)
            return result
        stream.done.addBoth(unlock)
        return _ActivityReceiver(stream, lambda: self.note_activity(name),
                                 self.clock, self.receive_idle_timeout)

    async def _current(self, volume: VolumeName):
        try:
            return await self.pool.get(volume)
        except VolumeNotFound:
            return None

    @deferred
    async def settled_copy(self, volume: VolumeName, epoch: Optional[int]):
        """
        This node's copy of ``volume`` (None if none) as a peer whose copy
        has ownership ``epoch`` should see it: while ours still claims the
        volume with a lower epoch, this node is setting it aside (its own
        plan yields it), so wait for that, up to ``YIELD_WAIT`` seconds.
        """
        current = await self._current(volume)
        deadline = self.clock.seconds() + YIELD_WAIT
        while (current is not None and epoch is not None and epoch > current.epoch
               and current.owned_by(self.hostname)
               and self.clock.seconds() < deadline):
            await sleep(self.clock, 0.2)
            current = await self._current(volume)
        return current

    @deferred
    async def _after_receive(self, volume: VolumeName, owner: Optional[str],
                             epoch: Optional[int]) -> None:
        if owner is not None:
            await self.pool.set_owner(volume, owner, epoch or None)

    def _trimmed_later(self, volume: VolumeName, snapshot):
        """
        A replica keeps its newest few snapshots (the owner's next
        increment starts from the newest, which it keeps too).  Trimmed
        after the receive is reported, off the handover's path; a trim
        that fails is logged and tried again after the next receive.
        """
        def trim():
            d = self.pool.trim_snapshots(volume, REPLICA_SNAPSHOTS)
            d.addErrback(lambda failure: log.failure(
                "trimming the snapshots of {volume} failed", failure,
                volume=str(volume)))
        self.clock.callLater(0, trim)
        return snapshot


class _ActivityReceiver:
    """An ``IReceiveStream`` that notes each 8 MiB written as activity,
    and is cut when nothing is written for ``idle_timeout`` seconds."""

    def __init__(self, receiver, touch, clock, idle_timeout: float):
        self._receiver = receiver
        self._touch = touch
        self._last = 0
        self._idle_timeout = idle_timeout
        self._idle = clock.callLater(idle_timeout, self._silent)
        receiver.done.addBoth(self._ended)

    def _silent(self):
        self._receiver.abort("nothing arrived from the sender for %d s"
                             % (self._idle_timeout,))

    def _ended(self, result):
        if self._idle.active():
            self._idle.cancel()
        return result

    def write(self, data):
        if self._idle.active():
            self._idle.reset(self._idle_timeout)
        self._receiver.write(data)
        if self._receiver.bytes_received - self._last > (8 << 20):
            self._last = self._receiver.bytes_received
            self._touch()

    def __getattr__(self, name):
        return getattr(self._receiver, name)
