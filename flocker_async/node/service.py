"""
The flocker-node service: an SSH listener serving the fixed command set,
and the convergence loop keeping the node as the last ``apply`` asked.

    FlockerNodeService (MultiService)
      ├─ SSHListener (conch) ................. version state lease apply
      │                                       snapshots receive acquire sync
      ├─ NodeConvergence ..................... on start, on apply, every
      │                                       convergence_interval seconds
      │                                       (first asking its peers for a
      │                                       newer deployment: anti-entropy)
      └─ Replicator .......................... pushes owned volumes to their
                                               standbys every
                                               replication_interval seconds

What ``apply`` receives is persisted (atomically) before the node acts; on
every start the daemon reloads it, rediscovers Docker, ZFS and iptables and
converges, so a crashed container, wiped iptables rules or a restart of the
daemon are mended without anyone running flocker-deploy.
"""

from __future__ import annotations

import ipaddress
import json
import os
from typing import Callable, Dict, List, Optional

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import quoteStringArgument, serverFromString
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .. import __version__
from .._async import deferred
from ..changes import (
    MOVING_STEPS, ChangeFailed, RunContext, calculate_changes, leaves)
from ..config import NAME_PATTERN, ConfigurationError, Problem
from ..ssh import (
    OPERATOR,
    PEER,
    Command,
    StdinTooLarge,
    CommandError,
    KeyAuthorizer,
    ServerLimits,
    make_ssh_factory,
    public_key_line,
)
from ..volume import VolumeError, VolumeName, VolumeNotFound
from ..volume._interfaces import SET_ASIDE_LABEL
from ._config import NodeConfiguration, load_operator_keys
from ..wire import (
    DEPLOY_ID, MAX_REQUEST_BYTES, PeerSync, decode_apply, encode_node_state, encode_sync,
    resolve_ipv4, retarget_apply)
from ._deployer import Deployer
from ._keys import load_node_keys
from ._persist import DesiredStateStore, write_atomically
from ._replication import Replicator
from ._sdnotify import SystemdNotifier

__all__ = ["make_node_service", "NodeConvergence", "NodeEvents",
           "node_commands", "FlockerNodeService"]

log = Logger()

PEERS_KNOWN_HOSTS = "peers_known_hosts"
KNOWN_OWNERS = "known_owners.json"


class KnownOwners:
    """
    The owner (and its epoch) of every volume this node has seen claimed,
    kept in a small file so a restart does not forget it: a node that dies
    with the only copy of a volume is still known to have owned it, and a
    take-over then refuses rather than starting the application empty.
    """

    def __init__(self, path: str):
        self.path = path
        self._owners: Dict[str, list] = {}
        try:
            with open(path, "rb") as f:
                loaded = json.loads(f.read())
            self._owners = {k: [str(v[0]), int(v[1])] for k, v in loaded.items()
                            if NAME_PATTERN.match(k)}
        except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError):
            self._owners = {}

    def learn(self, states) -> None:
        changed = False
        for state in states:
            for volume in state.volumes:
                if not state.claims(volume.name):
                    continue
                known = self._owners.get(volume.name)
                if known is None or volume.epoch >= known[1]:
                    if known != [state.hostname, volume.epoch]:
                        self._owners[volume.name] = [state.hostname, volume.epoch]
                        changed = True
        if changed:
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
            write_atomically(self.path, json.dumps(
                self._owners, sort_keys=True).encode("utf-8"), 0o600)

    def owners(self) -> Dict[str, str]:
        return {name: owner for name, (owner, _) in sorted(self._owners.items())}

    def epochs(self) -> Dict[str, int]:
        return {name: epoch for name, (_, epoch) in sorted(self._owners.items())}


class NodeEvents:
    """
    Where this node's progress events go: the daemon's log always, and the
    ``apply`` being served, if any, so flocker-deploy also sees what peers
    make happen here meanwhile (a volume received, taken over).
    """

    def __init__(self):
        self._listeners = []

    def emit(self, event: dict) -> None:
        log.info("{node} {action} {application}", **dict(
            {"node": "", "action": "", "application": ""}, **event))
        for listener in list(self._listeners):
            listener(event)

    def listening(self, listener: Callable[[dict], None]):
        """Forward events to ``listener`` until the returned callable is called."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)


class NodeConvergence(Service):
    """
    Converges the node towards the persisted desired state: once at start,
    after every ``apply``, and every ``interval`` seconds.  One convergence
    runs at a time; a periodic one is skipped while another runs.
    """

    def __init__(self, deployer: Deployer, store: DesiredStateStore, reactor,
                 interval: float, authorizer: KeyAuthorizer, peers,
                 known_hosts_path: str, periodic_handoff_timeout: float = 5.0,
                 apply_handoff_timeout: float = 120.0, ssh_port: int = 4522):
        self.deployer = deployer
        self.store = store
        self.reactor = reactor
        self.interval = interval
        self.authorizer = authorizer
        self.peers = peers
        self.known_hosts_path = known_hosts_path
        self.periodic_handoff_timeout = periodic_handoff_timeout
        self.apply_handoff_timeout = apply_handoff_timeout
        self.ssh_port = ssh_port
        self.events = NodeEvents()
        self.request = None
        # The persisted request's bytes: what a peer's ``sync`` is given.
        self.request_bytes: Optional[bytes] = None
        self.lock = defer.DeferredLock()
        # When each peer was last heard from (reactor time): an incoming
        # peer command, or an answered ``sync``.
        self.heard: Dict[str, float] = {}
        self._peer_fingerprints: Dict[str, str] = {}
        # Who owns each volume as far as this node has seen (the last
        # deployment's cluster state, then every peer's answers): what a
        # take-over must account for even when no copy survives.
        self.known_owners = KnownOwners(os.path.join(store.directory, KNOWN_OWNERS))
        # The standby replication, paused for volumes a run moves.
        self.replicator: Optional[Replicator] = None
        # How many applies this node took: a periodic run that sees it
        # change while it asked its peers leaves the work to the apply's run.
        self._applies = 0
        self.sync_timeout = 5.0
        self._loop = None
        self.last_error: Optional[str] = None
        # The deploy holding this node (see the ``lease`` command): its id,
        # who, and since when.
        self.lease: Optional[dict] = None

    # --- the desired state ----------------------------------------------------

    @property
    def generation(self) -> int:
        """The generation of the deployment this node converges to."""
        return self.request.generation if self.request is not None else 0

    def load(self):
        data = self.store.load()
        if data is None:
            log.info("no desired state yet; waiting for flocker-deploy")
            return
        try:
            self._adopt(decode_apply(data, source=self.store.path), data)
        except ConfigurationError as e:
            # Never act on a file we cannot fully read.
            log.error("ignoring unreadable desired state {path}: {problems}",
                      path=self.store.path, problems=str(e))

    def _adopt(self, request, data: bytes):
        self.request = request
        self.request_bytes = data
        peers = [p for p in request.peers if p.address != self.deployer.hostname]
        self.set_peer_keys(peers)
        self.deployer.handoffs.set_down(request.down)
        self.known_owners.learn(request.cluster.nodes)
        lines = "".join("[%s]:%d %s\n" % (p.address, p.ssh_port, p.host_key)
                        for p in peers)
        write_atomically(self.known_hosts_path, lines.encode("ascii"))
        self.peers.set_peers(peers)

    def set_peer_keys(self, peers) -> None:
        """Let exactly these peers' node keys run peer commands, each
        known as its node's address."""
        from twisted.conch.ssh import keys
        from ..ssh import fingerprint
        peer_keys = [keys.Key.fromString(p.node_key.encode()) for p in peers]
        self.authorizer.set_keys(PEER, peer_keys)
        self._peer_fingerprints = {fingerprint(k): p.address
                                   for k, p in zip(peer_keys, peers)}

    def context(self, handoff_timeout: Optional[float] = None) -> RunContext:
        """A run context whose events go to this node's ``events``."""
        return RunContext(self.deployer.hostname, self.events.emit,
                          self.apply_handoff_timeout if handoff_timeout is None
                          else handoff_timeout)

    # --- convergence ------------------------------------------------------------

    def apply(self, data: bytes, emit: Callable[[dict], None]) -> Deferred:
        """Validate, persist, then converge; fires when converged."""
        request = decode_apply(data)
        if self.lease is not None and self.lease["deploy_id"] != request.deploy_id:
            raise ConfigurationError([_problem(
                "deploy_id", "this node is held by another deploy (%s); "
                "nothing was changed" % (self.describe_lease(),))])
        taken = sorted(app.name for _, app in request.deployment.applications()
                       if any(p.external_port == self.ssh_port for p in app.ports))
        if taken:
            raise ConfigurationError([_problem(
                "applications", "external port %d is this node's flocker-node "
                "SSH port (applications %s); nothing was changed"
                % (self.ssh_port, ", ".join(taken)))])
        if request.node != self.deployer.hostname:
            raise ConfigurationError([_problem(
                "node", "this node is %s; the request is for %s"
                % (self.deployer.hostname, request.node))])
        if request.generation < self.generation:
            raise ConfigurationError([_problem(
                "generation", "this node already converges to a newer deployment "
                "(generation %d, this one is %d): another deploy came after the "
                "one that sent this; nothing was changed, run flocker-deploy again"
                % (self.generation, request.generation))])
        self.store.save(data)
        self._adopt(request, data)
        self._applies += 1
        log.info("apply {deploy_id}: desired state saved (generation {generation})",
                 deploy_id=request.deploy_id, generation=request.generation)
        return self.lock.run(self._converge, emit, self.apply_handoff_timeout, False)

    def describe_lease(self) -> str:
        lease = self.lease or {}
        return "deploy %s by key %s from %s, for %d s" % (
            lease["deploy_id"], lease["key"], lease["peer"],
            self.reactor.seconds() - lease["since"])

    def converge_now(self) -> Deferred:
        if self.lock.locked:
            return defer.succeed(None)
        d = self.lock.run(self._converge, None, self.periodic_handoff_timeout, True)

        def report(failure):
            message = failure.getErrorMessage()
            if message != self.last_error:
                log.failure("convergence failed: {message}", failure, message=message)
            self.last_error = message
        return d.addErrback(report)

    def _converge(self, emit, handoff_timeout, sync: bool) -> Deferred:
        stop_listening = self.events.listening(emit) if emit else lambda: None
        d = self._converge_once(self.context(handoff_timeout), sync)
        return d.addBoth(lambda result: (stop_listening(), result)[1])

    @deferred
    async def _converge_once(self, context: RunContext, sync: bool) -> None:
        applies = self._applies
        fresh = await self.anti_entropy() if sync else []
        if self.request is None or self._applies != applies:
            # An apply came while we asked our peers: its own run, queued
            # behind this one, converges to it with its progress streamed
            # and its handoff timeout.
            return
        request = self.request
        cluster = request.cluster
        for state in fresh:
            cluster = cluster.with_node(state)
        local = await self.deployer.discover()
        cluster = cluster.with_node(local)
        self.known_owners.learn(fresh + [local])
        change = calculate_changes(self.deployer.hostname, request.deployment,
                                   cluster, self.deployer.digest, down=request.down,
                                   epoch_floor=dict(request.epoch_floor))
        resume = (self.replicator.pause(_volumes_moved(change))
                  if self.replicator is not None else lambda: None)
        try:
            await change.run(self.deployer, context)
        finally:
            resume()
        self.last_error = None

    # --- anti-entropy -------------------------------------------------------------

    def heard_from(self, session) -> None:
        """Note a peer command's caller as heard from now."""
        address = self.peer_address(session)
        if address is not None:
            self.heard[address] = self.reactor.seconds()

    def peer_address(self, session) -> Optional[str]:
        """The node whose key runs this peer command, None if no peer the
        deployment names has that key."""
        return self._peer_fingerprints.get(getattr(session, "key_fingerprint", ""))

    def calling_node(self, session) -> str:
        """The node running this peer command (CommandError if none)."""
        address = self.peer_address(session)
        if address is None:
            raise CommandError("this key belongs to no node of this node's "
                               "deployment", 1)
        return address

    @deferred
    async def answer_sync(self, theirs: int):
        """What this node's ``sync`` answers a peer at generation ``theirs``:
        (PeerSync, snapshots).  A newer generation there means this node
        is behind: it converges soon, learning the newer deployment."""
        if theirs > self.generation:
            log.info("a peer has deployment generation {theirs}, newer than "
                     "ours ({ours}): converging", theirs=theirs, ours=self.generation)
            self.reactor.callLater(0, self.converge_now)
        local = await self.deployer.discover()
        return (PeerSync(self.generation, self.request_bytes, local),
                {v.name: list(v.snapshots) for v in local.volumes})

    @deferred
    async def anti_entropy(self):
        """
        Ask every peer the deployment names (except those declared down) for
        its generation and state, at once, each within ``sync_timeout``.
        Adopt the newest deployment any of them has if it is newer than
        ours, so a node that was away never acts on an outdated one once it
        can reach one peer.  Fires with the states of the peers that
        answered (fresher than what the last deploy gathered).
        """
        if self.request is None:
            return []
        me = self.deployer.hostname
        peers = sorted(p.address for p in self.request.peers
                       if p.address != me and p.address not in self.request.down)
        asked = [self.peers.sync(peer, self.generation).addTimeout(
                     self.sync_timeout, self.reactor) for peer in peers]
        answers = await defer.DeferredList(asked, consumeErrors=True)
        fresh, newest = [], None
        for peer, (ok, answer) in zip(peers, answers):
            if not ok:
                continue
            self.heard[peer] = self.reactor.seconds()
            if answer.state.hostname == peer:
                fresh.append(answer.state)
            if answer.request is not None and answer.generation > self.generation and (
                    newest is None or answer.generation > newest[1].generation):
                newest = (peer, answer)
        if newest is not None:
            self._adopt_from_peer(*newest)
        return fresh

    def _adopt_from_peer(self, peer: str, answer: PeerSync) -> None:
        if answer.request is None:
            return
        try:
            data = retarget_apply(answer.request, self.deployer.hostname)
            request = decode_apply(data, source="%s's deployment" % (peer,))
        except (ConfigurationError, ValueError) as e:
            log.error("not adopting the deployment of {peer} (generation "
                      "{generation}): {problems}", peer=peer,
                      generation=answer.generation, problems=str(e))
            return
        self.store.save(data)
        self._adopt(request, data)
        log.info("adopted deployment generation {generation} from {peer}",
                 generation=request.generation, peer=peer)

    # --- service ------------------------------------------------------------------

    def startService(self):
        Service.startService(self)
        self.load()
        self._loop = LoopingCall(self.converge_now)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=True)

    def stopService(self):
        Service.stopService(self)
        if self._loop is not None and self._loop.running:
            self._loop.stop()


# An invalid request's problems sent back at most: one result line stays
# far below flocker-deploy's line limit however bad the request.
MAX_PROBLEMS_SENT = 100


def _problem_lines(problems) -> List[str]:
    lines = [str(p) for p in problems[:MAX_PROBLEMS_SENT]]
    if len(problems) > MAX_PROBLEMS_SENT:
        lines.append("... and %d more problems" % (len(problems) - MAX_PROBLEMS_SENT,))
    return lines


def _problem(path, message):
    return Problem("apply", path, message)


def _volumes_moved(change) -> List[str]:
    """The volumes a plan pushes, hands over, takes over or waits for."""
    return sorted({step.name for step in leaves(change)
                   if isinstance(step, MOVING_STEPS)})


def _positive_int(text: str, usage: str, zero: bool = False) -> int:
    if not text.isdigit() or len(text) > 15 or (int(text) == 0 and not zero):
        raise CommandError(usage, 2)
    return int(text)


def _receive_arguments(args):
    """receive [--replace] [--owner NODE --epoch N] VOLUME"""
    usage = "usage: receive [--replace] [--owner NODE --epoch N] VOLUME"
    args = list(args)
    replace = owner = epoch = None
    while len(args) > 1:
        if args[0] == "--replace" and replace is None:
            replace = True
            args = args[1:]
        elif args[0] == "--owner" and owner is None and len(args) > 2:
            try:
                owner = str(ipaddress.IPv4Address(args[1]))
            except ValueError:
                raise CommandError(usage + " (NODE: an IPv4 address)", 2)
            args = args[2:]
        elif args[0] == "--epoch" and epoch is None and len(args) > 2:
            epoch = _positive_int(args[1], usage, zero=True)
            args = args[2:]
        else:
            raise CommandError(usage, 2)
    if (owner is None) != (epoch is None):
        raise CommandError(usage, 2)
    return bool(replace), owner, epoch, _volume_argument(args)


def _volume_argument(args) -> str:
    if len(args) != 1 or not NAME_PATTERN.match(args[0]):
        raise CommandError("usage: COMMAND VOLUME (a volume name: letters, digits, "
                           "'-' and '_')", 2)
    return args[0]


def node_commands(convergence: NodeConvergence, keys, ssh_port: int):
    """The fixed command set (DESIGN.md) for this node."""
    deployer = convergence.deployer

    def version(role, args, session):
        session.write(("flocker-node %s\n" % (__version__,)).encode())
        return 0

    async def state(role, args, session):
        local = await deployer.discover()
        routes = {name: {"ports": list(ports), "route": str(route)}
                  for name, (ports, route) in sorted(deployer.routes.table.items())}
        set_aside = await deployer.pool.set_asides()
        request = convergence.request
        now = convergence.reactor.seconds()
        replication = {}
        if convergence.replicator is not None:
            for (volume, _), status in sorted(convergence.replicator.status.items()):
                replication.setdefault(volume, []).append(status.to_document(now))
        document = encode_node_state(local, extra={
            "ssh_port": ssh_port,
            "mount_root": deployer.pool.mount_root,
            "node_key": public_key_line(keys.node_key),
            "host_key": public_key_line(keys.host_key),
            "routes": routes,
            "flocker_async": __version__,
            "last_error": convergence.last_error,
            "generation": convergence.generation,
            "down": list(request.down) if request is not None else [],
            "time": now,
            "heard": dict(sorted(convergence.heard.items())),
            # The owner of each volume as this node last knew it (its last
            # deployment's cluster state): what a take-over must account for.
            "known_owners": convergence.known_owners.owners(),
            "known_epochs": convergence.known_owners.epochs(),
            "peers": ([{"address": p.address, "ssh_port": p.ssh_port,
                        "node_key": p.node_key, "host_key": p.host_key}
                       for p in request.peers] if request is not None else []),
            "set_aside": [{"volume": str(c.volume), "label": c.label,
                           "created": c.created, "referenced": c.referenced,
                           "owner": c.owner, "epoch": c.epoch,
                           "mountpoint": c.mountpoint} for c in set_aside],
            "replication": replication,
        })
        session.write((json.dumps(document, sort_keys=True) + "\n").encode())
        return 0

    async def apply(role, args, session):
        if args:
            raise CommandError("usage: apply (the request on stdin)", 2)

        gone = []

        def emit(event):
            if not gone:
                session.write((json.dumps(event, sort_keys=True) + "\n").encode())
        try:
            data = await session.read_stdin(MAX_REQUEST_BYTES)
        except StdinTooLarge:
            # Refused like any other invalid request: the client reads the
            # result line, not only an exit status.
            emit({"result": "invalid", "node": deployer.hostname,
                  "errors": ["apply: request larger than %d bytes; nothing was "
                             "changed" % (MAX_REQUEST_BYTES,)]})
            return 1
        try:
            converging = convergence.apply(data, emit)
        except ConfigurationError as e:
            emit({"result": "invalid", "node": deployer.hostname,
                  "errors": _problem_lines(e.problems)})
            return 1
        # If flocker-deploy goes away (Ctrl-C, a lost connection), the node
        # finishes what it started rather than stopping half way through a
        # move: only our wait is cancelled, never the convergence.
        waiting = Deferred(lambda _: gone.append(True))

        def finished(result):
            if not waiting.called:
                waiting.callback(result)
            elif isinstance(result, Failure):
                log.failure("apply (flocker-deploy gone) failed: {message}",
                            result, message=result.getErrorMessage())
            return None
        converging.addBoth(finished)
        try:
            result = await waiting
            if isinstance(result, Failure):
                result.raiseException()
        except ConfigurationError as e:
            emit({"result": "invalid", "node": deployer.hostname,
                  "errors": _problem_lines(e.problems)})
            return 1
        except Exception as e:
            emit({"result": "failed", "node": deployer.hostname, "errors": [str(e)]})
            return 1
        emit({"result": "ok", "node": deployer.hostname})
        return 0

    def lease(role, args, session):
        if len(args) != 1 or not DEPLOY_ID.match(args[0]):
            raise CommandError("usage: lease DEPLOY_ID", 2)
        deploy_id = args[0]
        current = convergence.lease
        if current is not None and current["deploy_id"] != deploy_id:
            raise CommandError("busy: this node is held by %s"
                               % (convergence.describe_lease(),), 75)
        peer = getattr(session.peer, "host", None) or str(session.peer)
        mine = {"deploy_id": deploy_id, "key": session.key_fingerprint,
                "peer": peer, "since": convergence.reactor.seconds()}
        convergence.lease = mine
        log.info("deploy {deploy_id} holds this node (key {key}, from {peer})",
                 deploy_id=deploy_id, key=mine["key"], peer=peer)
        session.write(b'{"lease": "granted"}\n')
        # Held while the channel is open; a keepalive line keeps the
        # client's idle timeout from firing on a long deploy.
        keepalive = LoopingCall(session.write, b'{"lease": "held"}\n')
        keepalive.clock = convergence.reactor
        keepalive.start(10, now=False)

        def release(_):
            if keepalive.running:
                keepalive.stop()
            if convergence.lease is mine:
                convergence.lease = None
                log.info("deploy {deploy_id} released this node", deploy_id=deploy_id)
        return Deferred(release)

    async def snapshots(role, args, session):
        epoch = None
        if len(args) == 3 and args[1] == "--epoch":
            epoch = _positive_int(args[2], "usage: snapshots VOLUME [--epoch N]",
                                  zero=True)
            args = args[:1]
        name = _volume_argument(args)
        found = []
        if role == PEER:
            deployer.handoffs.note_activity(name)
            convergence.heard_from(session)
        # A peer asking as a newer owner sees our copy once we have set a
        # stale one aside.
        if epoch is None or await deployer.handoffs.settled_copy(
                VolumeName(name), epoch) is not None:
            try:
                found = await deployer.pool.snapshots(VolumeName(name))
            except VolumeNotFound:
                pass
        session.write("".join(s.name + "\n" for s in found).encode("ascii"))
        return 0

    def receive(role, args, session):
        replace, owner, epoch, name = _receive_arguments(args)
        caller = convergence.calling_node(session)
        convergence.heard_from(session)
        receiver = None
        gone = []

        async def run():
            nonlocal receiver
            try:
                receiver = await deployer.handoffs.receiver(
                    name, replace, convergence.context(), owner=owner, epoch=epoch,
                    caller=caller)
            except ChangeFailed as e:
                raise CommandError(str(e), 1)
            if gone:
                receiver.abort("the sending node went away")
            try:
                await session.stream_stdin(receiver)
            except Exception as e:
                # zfs recv may close its input as soon as it has read the
                # stream's end record, before the channel's EOF arrives.
                # Whether the stream was whole is zfs recv's to say: a cut
                # one fails below and leaves the previous snapshot.
                log.info("receive {volume}: input ended early ({why}); "
                         "letting zfs recv judge the stream",
                         volume=name, why=str(e))
            receiver.finish()
            snapshot = await receiver.done
            convergence.events.emit({
                "node": deployer.hostname, "action": "received",
                "application": name, "snapshot": snapshot.name,
                "bytes": receiver.bytes_received})
            session.write(("received %s\n" % (snapshot,)).encode())
            return 0

        def cancel(_):
            # The sender went away: cut the receive (zfs recv discards the
            # partial stream); the receive itself still ends in its own time.
            gone.append(True)
            if receiver is not None:
                receiver.abort("the sending node went away")
        command = Deferred(cancel)

        def ended(result):
            # Once the sender went away the command ends cancelled, even
            # when the receive it cut ends first (inside the cancel).
            if not command.called and not gone:
                command.callback(result)
            elif isinstance(result, Failure):
                # Nobody waits for the command any more; the outcome is
                # still worth a line in the log, never an unhandled error.
                log.info("receive {volume} ended after its sender went away: "
                         "{why}", volume=name, why=result.getErrorMessage())
            return None
        Deferred.fromCoroutine(run()).addBoth(ended)
        return command.addErrback(_command_error)

    async def acquire(role, args, session):
        epoch = None
        if len(args) == 2:
            epoch = _positive_int(args[1], "usage: acquire VOLUME [EPOCH]")
            args = args[:1]
        name = _volume_argument(args)
        caller = convergence.calling_node(session)
        convergence.heard_from(session)
        try:
            await deployer.handoffs.acquire(name, convergence.context(), epoch,
                                            caller=caller)
        except VolumeNotFound:
            raise CommandError("this node holds no copy of volume %s to acquire"
                               % (name,), 1)
        except ChangeFailed as e:
            raise CommandError(str(e), 1)
        session.write(("acquired %s\n" % (name,)).encode())
        return 0

    async def discard_set_aside(role, args, session):
        usage = ("usage: discard-set-aside VOLUME LABEL (the volume and label "
                 "`state` lists under set_aside)")
        if len(args) != 2 or not SET_ASIDE_LABEL.match(args[1]):
            raise CommandError(usage, 2)
        name = _volume_argument(args[:1])
        try:
            await deployer.handoffs.locked(
                name, deployer.pool.discard_set_aside, VolumeName(name), args[1])
        except VolumeError as e:
            raise CommandError(str(e), 1)
        log.info("operator key {key} discarded the set-aside copy {label} of "
                 "volume {volume}", key=session.key_fingerprint, label=args[1],
                 volume=name)
        session.write(("discarded the set-aside copy %s of volume %s\n"
                       % (args[1], name)).encode())
        return 0

    async def sync(role, args, session):
        if len(args) != 1:
            raise CommandError("usage: sync GENERATION", 2)
        theirs = _positive_int(args[0], "usage: sync GENERATION", zero=True)
        convergence.heard_from(session)
        answer, snapshots = await convergence.answer_sync(theirs)
        session.write(encode_sync(answer, snapshots) + b"\n")
        return 0

    return {
        "version": Command({OPERATOR, PEER}, version, "print the version"),
        "state": Command({OPERATOR}, _coroutine(state), "this node's state as JSON"),
        "apply": Command({OPERATOR}, _coroutine(apply),
                         "converge to the request on stdin, streaming progress",
                         large_input=True),
        "lease": Command({OPERATOR}, lease,
                         "hold this node for DEPLOY_ID while the channel is open"),
        "snapshots": Command({OPERATOR, PEER}, _coroutine(snapshots),
                             "the snapshots this node holds of VOLUME"),
        "receive": Command({PEER}, receive, "receive a send stream into VOLUME",
                           large_input=True),
        "acquire": Command({PEER}, _coroutine(acquire), "become the owner of VOLUME"),
        "discard-set-aside": Command(
            {OPERATOR}, _coroutine(discard_set_aside),
            "destroy a set-aside copy of VOLUME (kept when this node lost "
            "ownership while away); the only way it is ever destroyed"),
        "sync": Command({PEER}, _coroutine(sync),
                        "anti-entropy: this node's generation, desired state and "
                        "state, for a peer at GENERATION"),
    }


def _command_error(failure):
    # A cancelled command (its client went away) stays cancelled: it is not
    # a failure to report on a channel nobody reads.
    if failure.check(CommandError, defer.CancelledError):
        return failure
    raise CommandError(failure.getErrorMessage(), 1)


def _coroutine(f):
    def run(role, args, session):
        return Deferred.fromCoroutine(f(role, args, session)).addErrback(_command_error)
    return run


@implementer(IStreamServerEndpoint)
class _ReadyWhenListening:
    """
    An endpoint that tells systemd the daemon is ready once it listens, and
    stops the daemon, saying why, when it cannot listen (the address is not
    this machine's, the port is taken).
    """

    def __init__(self, endpoint, notifier: SystemdNotifier, address: str, reactor):
        self.endpoint = endpoint
        self.notifier = notifier
        self.address = address
        self.reactor = reactor

    def listen(self, factory) -> Deferred:
        def listening(port):
            log.info("listening for SSH on {address}", address=self.address)
            self.notifier.ready("listening on %s" % (self.address,))
            return port

        def failed(failure):
            if failure.check(defer.CancelledError):
                return None
            log.failure("cannot listen on {address}", failure, address=self.address)
            self.reactor.stop()
            return None
        return self.endpoint.listen(factory).addCallbacks(listening, failed)


class SSHListener(StreamServerEndpointService):
    """The daemon's SSH port: an endpoint service (as twisted.conch.tap's),
    telling systemd when it is ready and when it stops."""

    def __init__(self, endpoint, factory, notifier: SystemdNotifier,
                 address: str, reactor):
        StreamServerEndpointService.__init__(
            self, _ReadyWhenListening(endpoint, notifier, address, reactor), factory)
        self.notifier = notifier

    def stopService(self):
        self.notifier.stopping()
        return StreamServerEndpointService.stopService(self)


def listen_endpoint(reactor, address: str, port: int):
    """The server endpoint for ``address:port`` (IPv4 or IPv6)."""
    kind = "tcp6" if ":" in address else "tcp"
    # A deep accept queue: a flood of connections is closed by the server
    # (see ServerLimits) rather than dropped unseen by the kernel.
    return serverFromString(reactor, "%s:port=%d:interface=%s:backlog=1024" % (
        kind, port, quoteStringArgument(address)))


class FlockerNodeService(MultiService):
    pass


def make_node_service(configuration: NodeConfiguration, reactor=None) -> IService:
    """The daemon's root service for ``configuration``."""
    if reactor is None:
        from twisted.internet import reactor
    from ..docker import DockerClient
    from ..route import IPTablesNetwork
    from ..volume import ZFSStoragePool
    from ._ssh_peers import SSHPeers

    state_directory = configuration.state_directory
    keys = load_node_keys(state_directory)
    operator_keys = (load_operator_keys(configuration.operator_keys)
                     if os.path.exists(configuration.operator_keys) else ())
    if not operator_keys:
        log.warn("no operator keys in {path}: flocker-deploy cannot connect "
                 "until keys are added there (then restart)",
                 path=configuration.operator_keys)
    authorizer = KeyAuthorizer({OPERATOR: operator_keys})
    known_hosts = os.path.join(state_directory, PEERS_KNOWN_HOSTS)
    if not os.path.exists(known_hosts):
        write_atomically(known_hosts, b"")
    address = configuration.address
    docker = DockerClient(reactor, configuration.docker_socket)
    pool = ZFSStoragePool(reactor, configuration.zfs.pool,
                          configuration.zfs.mount_root, address)
    network = IPTablesNetwork(reactor)
    peers = SSHPeers(reactor, keys.node_key, known_hosts)
    deployer = Deployer(address, docker, pool, network, peers, reactor,
                        resolve=lambda host: resolve_ipv4(reactor, host),
                        container_address=docker.address)
    convergence = NodeConvergence(
        deployer, DesiredStateStore(state_directory), reactor,
        configuration.convergence_interval, authorizer, peers, known_hosts,
        ssh_port=configuration.ssh_port)
    replicator = Replicator(deployer, lambda: convergence.request, reactor,
                            convergence.events.emit)
    convergence.replicator = replicator
    factory = make_ssh_factory(reactor, keys.host_key, authorizer,
                               node_commands(convergence, keys, configuration.ssh_port),
                               limits=ServerLimits(login_timeout=configuration.login_timeout))
    listen = configuration.listen_address
    root = FlockerNodeService()
    SSHListener(listen_endpoint(reactor, listen, configuration.ssh_port), factory,
                SystemdNotifier(), "%s:%d" % (listen, configuration.ssh_port),
                reactor).setServiceParent(root)
    convergence.setServiceParent(root)
    replicator.setServiceParent(root)
    return root
