"""
Run state changes against one node's backends.

A ``Deployer`` holds the node's Docker client, storage pool and network,
and a way to reach its peers (``IPeers``).  The change values of
``flocker_async.changes`` call back into it; each action emits a progress
event (a dict with ``node``, ``action``, ``application`` and, for transfers,
``bytes``) that the ``apply`` command streams to flocker-deploy and the
daemon logs.
"""

from __future__ import annotations

import ipaddress
from typing import Callable, Dict, List, Optional, Tuple

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import Interface

from ..changes import HELD, LOCAL, Route, proxy_to
from ..docker import DockerError, configuration_digest, ensure_image
from ..model import (
    Application,
    ApplicationState,
    NodeState,
    VolumeState,
)
from ..route import HeldPort, OpenPort, Proxy, desired_state
from ..volume import Snapshot, VolumeName, VolumeNotFound

__all__ = ["IPeers", "Deployer", "ChangeFailed", "newest_common"]

log = Logger()


class IPeers(Interface):
    """The other nodes, as this node reaches them for volume moves."""

    def snapshots(node, volume):
        """Fire with the snapshot names ``node`` holds of ``volume``."""

    def push(node, volume, start_send, replace=False):
        """
        Stream a volume into ``node``'s ``receive``: ``start_send(consumer)``
        starts the send stream writing into ``consumer`` and returns it (an
        ``ISendStream``).  Fires when ``node`` has received it all.
        ``replace``: the stream is a full one and ``node`` holds an older,
        unrelated replica, to be discarded first.
        """

    def acquire(node, volume):
        """Ask ``node`` to become the owner of ``volume``."""


class ChangeFailed(Exception):
    """A change could not be made; the message names what and why."""


class HandoffNotStarted(ChangeFailed):
    """A handoff failed before ``acquire`` was sent: nothing changed owner."""


def newest_common(ours: List[str], theirs: List[str]) -> Optional[str]:
    """The newest of our snapshots (oldest first) the peer also holds."""
    have = set(theirs)
    for name in reversed(ours):
        if name in have:
            return name
    return None


class Deployer:
    """
    One node's side of convergence.  ``hostname`` is the node's name in the
    deployment; ``resolve(hostname)`` fires with an IPv4 address.
    """

    def __init__(self, hostname: str, docker, pool, network, peers, reactor,
                 resolve: Callable[[str], Deferred],
                 emit: Callable[[dict], None] = lambda event: None,
                 port_timeout: float = 300.0, handoff_timeout: float = 120.0,
                 container_address: Optional[Callable[[str], Deferred]] = None):
        self.hostname = hostname
        self.docker = docker
        self.pool = pool
        self.network = network
        self.peers = peers
        self.reactor = reactor
        self.resolve = resolve
        self.emit_event = emit
        self.port_timeout = port_timeout
        self.handoff_timeout = handoff_timeout
        self.container_address = container_address
        self.routes: Dict[str, Tuple[Tuple[int, ...], Route]] = {}
        self._handoff_waiters: Dict[str, List[Deferred]] = {}
        self._route_lock = defer.DeferredLock()
        # When a peer last pushed to or acquired each volume here: a handoff
        # wait times out only after that long without such activity.
        self._activity: Dict[str, float] = {}
        self.problems: List[str] = []

    # --- events ---------------------------------------------------------------

    def emit(self, action: str, application: Optional[str] = None, **fields):
        event = dict(node=self.hostname, action=action, **fields)
        if application is not None:
            event["application"] = application
        log.info("{node} {action} {application}", node=self.hostname,
                 action=action, application=application or "", **fields)
        self.emit_event(event)

    # --- discovery ------------------------------------------------------------

    async def _discover(self) -> NodeState:
        units = await self.docker.list()
        volumes = await self.pool.enumerate()
        return NodeState(
            hostname=self.hostname,
            applications=[ApplicationState(u.name, u.running, u.config_digest)
                          for u in units],
            volumes=[VolumeState(v.name.value, v.owner, not v.read_only)
                     for v in volumes])

    def discover(self) -> Deferred:
        """Fire with this node's ``NodeState``, read from the backends."""
        return Deferred.fromCoroutine(self._discover())

    def digest(self, application: Application) -> str:
        path = (self.volume_path(application.name)
                if application.volume is not None else None)
        return configuration_digest(application, path)

    def volume_path(self, name: str) -> str:
        return "%s/%s" % (self.pool.mount_root.rstrip("/"), name)

    # --- composition ------------------------------------------------------------

    def run_sequentially(self, changes) -> Deferred:
        async def run():
            for change in changes:
                await change.run(self)
        return Deferred.fromCoroutine(run())

    def run_in_parallel(self, changes) -> Deferred:
        ds = [defer.maybeDeferred(change.run, self) for change in changes]

        def collect(results):
            failures = [f for ok, f in results if not ok]
            if failures:
                if len(failures) == 1:
                    return failures[0]
                raise ChangeFailed("; ".join(
                    str(f.value) for f in failures))
            return None
        return defer.DeferredList(ds, consumeErrors=True).addCallback(collect)

    # --- routes -----------------------------------------------------------------

    def set_routes(self, routes) -> Deferred:
        return self._apply_routes(
            lambda table: {name: (tuple(ports), route) for name, ports, route in routes})

    def set_route(self, application: str, ports, route: Route) -> Deferred:
        def change(table):
            new = dict(table)
            new[application] = (tuple(ports), route)
            return new
        return self._apply_routes(change)

    def hold(self, application: str) -> Deferred:
        """Hold an application's ports (used by ``acquire``)."""
        entry = self.routes.get(application)
        if entry is None or not entry[0]:
            return defer.succeed(None)
        return self.set_route(application, entry[0], HELD)

    def _apply_routes(self, change) -> Deferred:
        async def apply():
            table = change(self.routes)
            proxies, open_ports, held = [], [], []
            for name, (ports, route) in sorted(table.items()):
                if route.kind == "proxy":
                    address = await self.resolve(route.target)
                    proxies.extend(Proxy(name, p, address) for p in ports)
                elif route.kind == "local":
                    open_ports.extend(OpenPort(name, p) for p in ports)
                elif route.kind == "held":
                    held.extend(HeldPort(name, p) for p in ports)
            state = desired_state(proxies, open_ports, held)
            await self.network.set_state(state.proxies, state.open_ports,
                                         state.held_ports)
            changed = sorted(n for n in set(table) | set(self.routes)
                             if table.get(n) != self.routes.get(n))
            self.routes = table
            for name in changed:
                if name in table:
                    self.emit("route", name, route=str(table[name][1]))
                else:
                    self.emit("unroute", name)
        return self._route_lock.run(lambda: Deferred.fromCoroutine(apply()))

    # --- volumes ------------------------------------------------------------------

    def create_volume(self, name: str, maximum_size: Optional[int]) -> Deferred:
        self.emit("create-volume", name)
        return self.pool.create(VolumeName(name), maximum_size)

    def make_writable(self, name: str) -> Deferred:
        self.emit("make-writable", name)
        return self.pool.set_read_only(VolumeName(name), False)

    async def _send_newest(self, name: str, to: str, phase: str) -> Snapshot:
        try:
            return await self._send_newest_snapshot(name, to, phase)
        except (ChangeFailed, defer.CancelledError):
            raise
        except Exception as e:
            # Say which transfer failed: the peer's words alone ("cannot
            # connect", "out of space") do not.
            raise ChangeFailed("%s volume %s to %s failed: %s" % (
                "pushing" if phase == "push" else "the final push of",
                name, to, e)) from e

    async def _send_newest_snapshot(self, name: str, to: str, phase: str) -> Snapshot:
        volume = VolumeName(name)
        theirs = await self.peers.snapshots(to, name)
        snapshot = await self.pool.snapshot(volume)
        ours = [s.name for s in await self.pool.snapshots(volume)]
        base_name = newest_common([s for s in ours if s != snapshot.name], theirs)
        base = Snapshot(volume, base_name) if base_name else None
        # The peer holds snapshots none of which we have: an old replica of
        # an earlier lineage, replaced by a full copy of the live one.
        replace = base is None and bool(theirs)
        self.emit(phase, name, to=to, snapshot=snapshot.name,
                  base=base_name, incremental=base is not None, replace=replace)
        progress = {"bytes": 0}

        def start_send(consumer):
            stream = self.pool.send(snapshot, consumer, base=base)
            progress["stream"] = stream
            return stream

        poll = LoopingCall(lambda: self.emit(
            "transfer", name, to=to, phase=phase,
            bytes=getattr(progress.get("stream"), "bytes_sent", 0)))
        poll.clock = self.reactor
        poll.start(1.0, now=False)
        try:
            sent = await self.peers.push(to, name, start_send, replace=replace)
        finally:
            if poll.running:
                poll.stop()
        stream = progress.get("stream")
        done_bytes = getattr(stream, "bytes_sent", sent if isinstance(sent, int) else 0)
        # Verify before anything depends on it: the peer must list it.
        theirs = await self.peers.snapshots(to, name)
        if snapshot.name not in theirs:
            raise ChangeFailed("%s did not keep snapshot %s of volume %s after "
                               "receiving it" % (to, snapshot.name, name))
        self.emit("transferred", name, to=to, phase=phase, bytes=done_bytes,
                  incremental=base is not None)
        return snapshot

    def push_volume(self, name: str, to: str) -> Deferred:
        """The bulk copy, while the application keeps running."""
        return Deferred.fromCoroutine(self._send_newest(name, to, "push"))

    async def _handoff(self, name: str, to: str):
        volume = VolumeName(name)
        current = await self.pool.get(volume)
        if not current.owned_by(self.hostname):
            raise ChangeFailed("volume %s is not owned by %s (owner %s); "
                               "refusing to hand it over"
                               % (name, self.hostname, current.owner))
        # From here no writes: the copy we send is the last word.
        try:
            await self.pool.set_read_only(volume, True)
            await self._send_newest(name, to, "final-push")
        except Exception as e:
            # ``acquire`` was never sent: our copy is still the only live
            # one, and the move can be undone here.
            raise HandoffNotStarted("hand volume %s over to %s: %s"
                                    % (name, to, e)) from e
        self.emit("acquire", name, to=to)
        await self.peers.acquire(to, name)
        await self.pool.set_owner(volume, to)
        theirs = await self.peers.snapshots(to, name)
        pruned = await self.pool.prune_snapshots(
            volume, [Snapshot(volume, s) for s in theirs])
        self.emit("handed-over", name, to=to, pruned=len(pruned))

    def handoff_volume(self, name: str, to: str) -> Deferred:
        return Deferred.fromCoroutine(self._handoff(name, to))

    async def _move_out(self, application: Application, to: str, ports, running: bool):
        name = application.name
        await self.push_volume(name, to)
        if ports:
            await self.set_route(name, ports, HELD)
        if running:
            await self.stop_application(name)
        try:
            await self.handoff_volume(name, to)
        except HandoffNotStarted as e:
            # The target cannot take the volume now (gone, full, ...):
            # serve here again rather than leave the application down until
            # the target returns.  The next convergence retries the move,
            # and a bulk push that cannot start stops nothing.
            self.emit("rollback", name, to=to, reason=str(e))
            await self.pool.set_read_only(VolumeName(name), False)
            if running:
                await self.start_application(application)
                if ports:
                    await self.wait_for_port(application)
            if ports:
                await self.set_route(name, ports, LOCAL if running else HELD)
            raise ChangeFailed("the move of %s to %s was undone, it runs here "
                               "again: %s" % (name, to, e))
        if ports:
            await self.set_route(name, ports, proxy_to(to))

    def move_out(self, application: Application, to: str, ports,
                 running: bool) -> Deferred:
        """The source's side of a move, undone if the volume could not be
        handed over (see ``MoveOut``)."""
        return Deferred.fromCoroutine(self._move_out(application, to, ports, running))

    def record_owner(self, name: str, owner: str) -> Deferred:
        """Our read-only copy of ``name`` now belongs to ``owner``."""
        self.emit("record-owner", name, owner=owner)
        return self.pool.set_owner(VolumeName(name), owner)

    def note_activity(self, name: str):
        """A peer is pushing or handing ``name`` over: keep waiting."""
        self._activity[name] = self.reactor.seconds()

    async def receiver(self, name: str, replace: bool = False):
        """An ``IReceiveStream`` for a peer's push of ``name``."""
        volume = VolumeName(name)
        self.note_activity(name)
        if replace:
            try:
                current = await self.pool.get(volume)
            except VolumeNotFound:
                current = None
            if current is not None and not current.owned_by(self.hostname):
                self.emit("discard-replica", name)
                await self.pool.discard_replica(volume)
        stream = self.pool.receive(volume)

        def failed(failure):
            # Whoever waits for this volume's handoff learns now, with the
            # reason, instead of when the source's next retry stops coming.
            for waiter in list(self._handoff_waiters.get(name, [])):
                if not waiter.called:
                    waiter.callback(failure.getErrorMessage())
            return failure
        stream.done.addErrback(failed)
        return _ActivityReceiver(stream, lambda: self.note_activity(name))

    async def _wait_for_handoff(self, name: str, source: str):
        try:
            volume = await self.pool.get(VolumeName(name))
            if volume.owned_by(self.hostname) and not volume.read_only:
                return
        except VolumeNotFound:
            pass
        self.emit("wait-handoff", name, source=source)
        # Fires with None once acquired, or with why a push from the source
        # failed here.
        waiter = Deferred()
        outcome = []
        waiter.addCallback(outcome.append)
        self._handoff_waiters.setdefault(name, []).append(waiter)
        started = self.reactor.seconds()
        try:
            while not waiter.called:
                idle_since = max(started, self._activity.get(name, 0.0))
                remaining = self.handoff_timeout - (self.reactor.seconds() - idle_since)
                if remaining <= 0:
                    raise ChangeFailed(
                        "%s did not hand volume %s over: nothing arrived from it "
                        "for %d s" % (source, name, self.handoff_timeout))
                await _first(self.reactor, waiter, min(remaining, 5.0))
            if outcome and outcome[0] is not None:
                raise ChangeFailed("%s could not push volume %s here: %s"
                                   % (source, name, outcome[0]))
        finally:
            waiters = self._handoff_waiters.get(name, [])
            if waiter in waiters:
                waiters.remove(waiter)

    def wait_for_handoff(self, name: str, source: str) -> Deferred:
        return Deferred.fromCoroutine(self._wait_for_handoff(name, source))

    async def _acquire(self, name: str):
        self.note_activity(name)
        volume = VolumeName(name)
        current = await self.pool.get(volume)
        if current.owned_by(self.hostname) and not current.read_only:
            return  # Already ours: acquire is idempotent.
        # New connections wait until the application runs here.
        await self.hold(name)
        await self.pool.set_owner(volume, self.hostname)
        await self.pool.set_read_only(volume, False)
        self.emit("acquired", name)
        for waiter in list(self._handoff_waiters.get(name, [])):
            if not waiter.called:
                waiter.callback(None)

    def acquire(self, name: str) -> Deferred:
        """Become the owner of a volume a peer has pushed (``acquire``)."""
        return Deferred.fromCoroutine(self._acquire(name))

    # --- containers -------------------------------------------------------------

    async def _start(self, application: Application):
        units = {u.name: u for u in await self.docker.list()}
        if application.name in units:
            await self._stop(application.name, quiet=True)
        self.emit("pull-image", application.name, image=application.image.full_name)
        await ensure_image(self.docker, application.image)
        path = (self.volume_path(application.name)
                if application.volume is not None else None)
        self.emit("start", application.name)
        await self.docker.add(application, path)

    def start_application(self, application: Application) -> Deferred:
        return Deferred.fromCoroutine(self._start(application))

    async def _stop(self, name: str, quiet: bool = False):
        if not quiet:
            self.emit("stop", name)
        try:
            await self.docker.stop(name)
        except DockerError as e:
            if e.status != 404:
                raise
            return
        try:
            await self.docker.remove(name)
        except DockerError as e:
            if e.status != 404:
                raise

    def stop_application(self, name: str) -> Deferred:
        return Deferred.fromCoroutine(self._stop(name))

    async def _wait_for_port(self, application: Application):
        ports = sorted(application.ports)
        if not ports or self.container_address is None:
            return
        address = await self.container_address(application.name)
        port = ports[0].internal_port
        deadline = self.reactor.seconds() + self.port_timeout
        while True:
            if await _can_connect(self.reactor, address, port):
                self.emit("listening", application.name, port=ports[0].external_port)
                return
            if self.reactor.seconds() >= deadline:
                self.emit("warning", application.name, message=(
                    "did not accept connections on port %d within %d s; "
                    "opening its ports anyway" % (port, self.port_timeout)))
                return
            await _sleep(self.reactor, 0.1)

    def wait_for_port(self, application: Application) -> Deferred:
        return Deferred.fromCoroutine(self._wait_for_port(application))

    def report_problem(self, application: str, message: str) -> Deferred:
        self.emit("problem", application, message=message)
        return defer.fail(ChangeFailed(message))


class _ActivityReceiver:
    """An ``IReceiveStream`` that notes each write as handoff activity."""

    def __init__(self, receiver, touch):
        self._receiver = receiver
        self._touch = touch
        self._last = 0

    def write(self, data):
        self._receiver.write(data)
        if self._receiver.bytes_received - self._last > (8 << 20):
            self._last = self._receiver.bytes_received
            self._touch()

    def __getattr__(self, name):
        return getattr(self._receiver, name)


def _first(reactor, waiter: Deferred, seconds: float) -> Deferred:
    """Fires when ``waiter`` has fired or ``seconds`` passed, whichever is
    first (``waiter`` itself is left untouched)."""
    done = Deferred()

    def fired(result):
        if not done.called:
            call.cancel()
            done.callback(None)
        return result
    call = reactor.callLater(seconds, lambda: done.called or done.callback(None))
    waiter.addBoth(fired)
    return done


def _sleep(reactor, seconds) -> Deferred:
    d = Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


class _Probe(Protocol):
    def connectionMade(self):
        self.factory.result(True)
        self.transport.abortConnection()


class _ProbeFactory(ClientFactory):
    protocol = _Probe

    def __init__(self):
        self.done = Deferred()

    def result(self, ok):
        if not self.done.called:
            self.done.callback(ok)

    def clientConnectionFailed(self, connector, reason):
        self.result(False)


def _can_connect(reactor, address: str, port: int) -> Deferred:
    factory = _ProbeFactory()
    reactor.connectTCP(address, port, factory, timeout=2)
    return factory.done


def resolve_ipv4(reactor, hostname: str) -> Deferred:
    """An IPv4 address for a node's host name (IP addresses as they are)."""
    try:
        return defer.succeed(str(ipaddress.IPv4Address(hostname)))
    except ValueError:
        return reactor.resolve(hostname)
