"""
The operator's side of a deploy: gather every node's state over SSH, then
send each node its ``apply`` at once and follow the progress they stream.

Nothing is applied anywhere unless every node answered ``state``: a deploy
that cannot see the whole cluster would decide moves on a partial picture.
"""

from __future__ import annotations

import json
import uuid
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, cast

from attrs import frozen
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import DNSLookupError
from twisted.internet.interfaces import IConsumer
from twisted.python.failure import Failure
from zope.interface import implementer

from ._async import sleep
from .changes import IStateChange, calculate_changes, plan_takeovers
from .config import ConfigurationError
from .docker import configuration_digest
from .model import ClusterState, Deployment, Node, NodeState
from .wire import MAX_REQUEST_BYTES, Peer, decode_node_state, encode_apply, resolve_ipv4
from .ssh import RemoteCommandFailed, SSHClient, SSHError

__all__ = ["NodeFailure", "DeployFailed", "NodeInfo", "gather", "apply_all",
           "deploy", "dry_run", "check_down", "resolve_down", "DownNodeAnswers",
           "TakeOverRefused", "takeover_report", "live_part", "RequestTooLarge",
           "check_request_size", "check_deployment_size", "MAX_EVENT_LINE"]


@frozen
class NodeFailure:
    node: str
    cause: str

    def __str__(self):
        return "%s: %s" % (self.node, self.cause)


class DeployFailed(Exception):
    def __init__(self, failures: List[NodeFailure]):
        self.failures = failures
        super().__init__("\n".join(str(f) for f in failures))


@frozen
class NodeInfo:
    """What ``state`` told us about a node."""

    name: str          # as the deployment file names it
    address: str       # its configured address: its identity in the cluster
    state: NodeState
    peer: Peer
    mount_root: Optional[str]
    routes: dict
    generation: int = 0
    # When it last heard from each peer (its clock), and the owner of each
    # volume as its last deployment knew it.
    heard: Dict[str, float] = {}
    known_owners: Dict[str, str] = {}
    known_epochs: Dict[str, int] = {}
    # The peers its last deployment named (keys of nodes now down, too).
    peers: Tuple[Peer, ...] = ()


class RequestTooLarge(Exception):
    """
    An ``apply`` request is larger than a node accepts, so none was sent.
    ``part`` is the request's largest part: ``applications`` (the
    application file), ``deployment`` (the deployment file), ``cluster`` or
    ``peers`` (what the nodes reported); ``largest`` is its biggest
    application, (name, bytes), if that part is the applications.
    """

    def __init__(self, node: Optional[str], size: int, limit: int, part: str,
                 part_size: int, largest: Optional[Tuple[str, int]]):
        self.node = node
        self.size = size
        self.limit = limit
        self.part = part
        self.part_size = part_size
        self.largest = largest
        super().__init__("the apply request%s would be %d bytes, more than "
                         "the %d bytes a node accepts (%s: %d bytes)"
                         % (" to %s" % (node,) if node else "", size, limit, part,
                            part_size))


def _encoded_size(value) -> int:
    return len(json.dumps(value, sort_keys=True).encode("utf-8"))


def check_request_size(node: Optional[str], request: bytes) -> None:
    """``RequestTooLarge`` if a node would refuse ``request`` (an encoded
    ``apply`` to ``node``; None: to any) for its size, saying which part of
    it is the largest."""
    if len(request) <= MAX_REQUEST_BYTES:
        return
    document = json.loads(request.decode("utf-8"))
    sizes = {part: _encoded_size(document[part])
             for part in ("applications", "deployment", "cluster", "peers")}
    part = max(sizes, key=lambda p: sizes[p])
    largest = None
    if part == "applications":
        apps = document["applications"]["applications"]
        if apps:
            name = max(apps, key=lambda a: _encoded_size(apps[a]))
            largest = (name, _encoded_size(apps[name]))
    raise RequestTooLarge(node, len(request), MAX_REQUEST_BYTES, part,
                          sizes[part], largest)


def check_deployment_size(deployment: Deployment) -> None:
    """Before any node is contacted: ``RequestTooLarge`` if the apply
    request of ``deployment`` alone (no node states or keys yet) is larger
    than a node accepts."""
    check_request_size(None, encode_apply(
        "0.0.0.0", uuid.uuid4().hex, deployment, ClusterState([]), []))


class NodeReported(Exception):
    """A node's own account of why its ``apply`` failed."""


def _explain(error) -> str:
    if isinstance(error, NodeReported):
        return str(error)
    if isinstance(error, RemoteCommandFailed) and error.result.stderr_text:
        return error.result.stderr_text
    if isinstance(error, SSHError):
        return str(error)
    if isinstance(error, DNSLookupError):
        return "cannot resolve the host name (%s)" % (error,)
    return "%s: %s" % (type(error).__name__, error)


async def _gather_one(client: SSHClient, reactor, name: str, port: int) -> NodeInfo:
    address = await resolve_ipv4(reactor, name)
    result = await client.run(address, port, ["state"])
    try:
        document = json.loads(result.stdout.decode("utf-8"))
        state = decode_node_state(document, source="%s state" % (name,))
        peer = Peer(state.hostname, int(document["ssh_port"]),
                    document["node_key"], document["host_key"])
    except (ValueError, KeyError, TypeError, ConfigurationError) as e:
        raise ValueError("its state report is not valid: %s" % (e,))
    return NodeInfo(name, state.hostname, state, peer,
                    document.get("mount_root"), document.get("routes") or {},
                    **_failover_fields(document, name))


def _failover_fields(document: dict, name: str) -> dict:
    """What a state report says for take-overs, checked (a node's word is
    data, never trusted blindly)."""
    generation = document.get("generation", 0)
    if not isinstance(generation, int) or isinstance(generation, bool) or generation < 0:
        raise ValueError("%s state: generation: expected a whole number" % (name,))
    heard = {k: float(v) for k, v in (document.get("heard") or {}).items()
             if isinstance(k, str) and isinstance(v, (int, float))
             and not isinstance(v, bool)}
    owners = {k: v for k, v in (document.get("known_owners") or {}).items()
              if isinstance(k, str) and isinstance(v, str)}
    epochs = {k: v for k, v in (document.get("known_epochs") or {}).items()
              if isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)}
    peers = []
    for entry in document.get("peers") or []:
        try:
            peers.append(Peer(str(entry["address"]), int(entry["ssh_port"]),
                              str(entry["node_key"]), str(entry["host_key"])))
        except (KeyError, TypeError, ValueError):
            raise ValueError("%s state: peers: expected {address, ssh_port, "
                             "node_key, host_key}" % (name,))
    return dict(generation=generation, heard=heard, known_owners=owners,
                known_epochs=epochs, peers=tuple(peers))


async def gather(reactor, client: SSHClient, deployment: Deployment,
                 port: int) -> Dict[str, NodeInfo]:
    """Every node's state, concurrently; ``DeployFailed`` names each node
    that could not be asked."""
    names = sorted(n.hostname for n in deployment.nodes)
    results = await defer.DeferredList(
        [Deferred.fromCoroutine(_gather_one(client, reactor, n, port)) for n in names],
        consumeErrors=True)
    infos: Dict[str, NodeInfo] = {}
    failures: List[NodeFailure] = []
    for name, (ok, value) in zip(names, results):
        if ok:
            infos[name] = value
        else:
            failures.append(NodeFailure(name, _explain(cast(Failure, value).value)))
    addresses: Dict[str, str] = {}
    for name, info in infos.items():
        if info.address in addresses:
            failures.append(NodeFailure(name, "is the same node as %s (address %s)"
                                        % (addresses[info.address], info.address)))
        addresses[info.address] = name
    if failures:
        raise DeployFailed(failures)
    return infos


def by_address(deployment: Deployment, infos: Dict[str, NodeInfo],
               down: Optional[Dict[str, str]] = None) -> Deployment:
    """
    The deployment with each node named by its address (nodes' identity),
    standbys too.  ``down`` maps the names of nodes declared down (which
    were not asked) to their addresses.
    """
    names = {name: info.address for name, info in infos.items()}
    names.update(down or {})
    return Deployment(
        nodes=[Node(names[n.hostname], n.applications) for n in deployment.nodes],
        standby=[(app, tuple(names.get(node, node) for node in nodes))
                 for app, nodes in deployment.standby])


def live_part(deployment: Deployment, down: Iterable[str]) -> Deployment:
    """The nodes of ``deployment`` that are not declared down."""
    down = set(down)
    return Deployment(nodes=[n for n in deployment.nodes if n.hostname not in down],
                      standby=deployment.standby)


def epoch_floor(infos: Dict[str, NodeInfo]) -> Dict[str, int]:
    """The highest ownership epoch any live node saw claimed, per volume."""
    floor: Dict[str, int] = {}
    for info in infos.values():
        for name, epoch in info.known_epochs.items():
            floor[name] = max(epoch, floor.get(name, 0))
    return floor


def next_generation(infos: Dict[str, NodeInfo]) -> int:
    """One more than the newest deployment any node converges to."""
    return 1 + max((info.generation for info in infos.values()), default=0)


def _peers(infos: Dict[str, NodeInfo], down: Dict[str, str]) -> List[Peer]:
    """Every reachable node's keys, and those of the nodes declared down as
    the reachable nodes last knew them, so a node that returns can still
    reach its peers and learn what happened while it was away."""
    peers = {info.address: info.peer for info in infos.values()}
    for info in sorted(infos.values(), key=lambda i: -i.generation):
        for peer in info.peers:
            if peer.address in down.values() and peer.address not in peers:
                peers[peer.address] = peer
    return [peers[a] for a in sorted(peers)]


class TakeOverRefused(Exception):
    """A take-over cannot be done: the lines say which applications and why."""

    def __init__(self, lines: List[str]):
        self.lines = lines
        super().__init__("\n".join(lines))


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))


def takeover_report(deployment: Deployment, infos: Dict[str, NodeInfo],
                    down: Dict[str, str]) -> List[str]:
    """
    Per application whose owner is declared down, what a take-over does and
    how much may be lost: the time of the freshest surviving copy against
    the last time any reachable node heard from the old owner.  Raises
    ``TakeOverRefused`` when an application's volume survives on no
    reachable node.
    """
    desired = by_address(deployment, infos, down)
    cluster = ClusterState([info.state for info in infos.values()])
    plans = plan_takeovers(desired, cluster, down.values(), epoch_floor(infos))
    lines, refused = [], []
    newest_first = sorted(infos.values(), key=lambda i: -i.generation)
    for node, app in desired.applications():
        if app.volume is None or app.name in plans or cluster.owner_of(
                app.name, down.values()):
            continue
        owner = next((i.known_owners[app.name] for i in newest_first
                      if app.name in i.known_owners), None)
        if owner in down.values():
            refused.append(
                "%s: no reachable node holds a copy of its volume; its only copy "
                "is on %s, declared down.  Nothing was changed: bring %s back, or "
                "take %s out of the deployment file" % (app.name, owner, owner, app.name))
    if refused:
        raise TakeOverRefused(refused)
    for name, plan in sorted(plans.items()):
        heard = max((i.heard[plan.old_owner] for i in infos.values()
                     if plan.old_owner in i.heard), default=None)
        where = ("its copy there" if plan.source == plan.target
                 else "the copy on %s, pushed there first" % (plan.source,))
        lines.append("%s: %s is down; %s takes it over from %s"
                     % (name, plan.old_owner, plan.target, where))
        if plan.snapshot_time is None:
            lines.append("%s: the surviving copy on %s has no dated snapshot: how "
                         "much may be lost is unknown" % (name, plan.source))
        elif heard is None:
            lines.append("%s: last replica on %s is from %s; no reachable node has "
                         "heard from %s since its daemon started, so writes after "
                         "%s may be lost" % (name, plan.source, _clock(plan.snapshot_time),
                                              plan.old_owner, _clock(plan.snapshot_time)))
        else:
            lines.append("%s: last replica on %s is from %s, %d s before %s was "
                         "last heard from (%s): writes after %s may be lost, those "
                         "it took after it was last heard from too"
                         % (name, plan.source, _clock(plan.snapshot_time),
                            max(0, round(heard - plan.snapshot_time)),
                            plan.old_owner, _clock(heard), _clock(plan.snapshot_time)))
    return lines


# The longest line of a node's output kept: far above any event a node
# writes, and all a node that never ends its line can make us hold.
MAX_EVENT_LINE = 1024 * 1024


@implementer(IConsumer)
class _Lines:
    """
    Splits a node's ``apply`` output into JSON events.  A line longer than
    ``limit`` bytes is dropped, and an event ``{"action": "line-cut",
    "limit": limit}`` says so in its place.
    """

    def __init__(self, on_event: Callable[[dict], None], limit: int = MAX_EVENT_LINE):
        self.on_event = on_event
        self.limit = limit
        self.buffer = bytearray()
        self.skipping = False  # inside a line longer than the limit
        self.result: Optional[dict] = None
        self.producer = None

    def registerProducer(self, producer, streaming):
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None

    def write(self, data):
        start = 0
        while True:
            end = data.find(b"\n", start)
            piece = data[start:] if end < 0 else data[start:end]
            if not self.skipping:
                if len(self.buffer) + len(piece) > self.limit:
                    self.skipping = True
                    self.buffer.clear()
                    self.on_event({"action": "line-cut", "limit": self.limit})
                else:
                    self.buffer += piece
            if end < 0:
                return
            if not self.skipping:
                line = bytes(self.buffer)
                self.buffer.clear()
                self._line(line)
            self.skipping = False
            start = end + 1

    def _line(self, line: bytes):
        if not line.strip():
            return
        try:
            event = json.loads(line.decode("utf-8"))
        except ValueError:
            event = {"action": "output", "message": line.decode("utf-8", "replace")}
        if not isinstance(event, dict):
            return
        if "result" in event:
            self.result = event
        self.on_event(event)


async def _apply_one(client: SSHClient, info: NodeInfo, port: int, request: bytes,
                     on_event) -> dict:
    lines = _Lines(lambda event: on_event(info.name, event))
    try:
        await client.run(info.address, port, ["apply"], stdin=request,
                         stdout_consumer=lines)
    except SSHError:
        if lines.result is not None and lines.result.get("errors"):
            raise NodeReported("; ".join(lines.result["errors"]))
        raise
    return lines.result or {"result": "ok"}


async def apply_all(client: SSHClient, deployment: Deployment,
                    infos: Dict[str, NodeInfo], port: int,
                    on_event: Callable[[str, dict], None],
                    deploy_id: Optional[str] = None,
                    down: Optional[Dict[str, str]] = None) -> str:
    """Send every node its ``apply`` at once; fires with the deploy id when
    every node converged, or fails with ``DeployFailed``.  ``down`` maps
    the nodes declared down (not sent anything) to their addresses."""
    deploy_id = deploy_id or uuid.uuid4().hex
    down = down or {}
    desired = by_address(deployment, infos, down)
    cluster = ClusterState([info.state for info in infos.values()])
    peers = _peers(infos, down)
    generation = next_generation(infos)
    names = sorted(infos)
    requests = [encode_apply(infos[n].address, deploy_id, desired, cluster, peers,
                             generation=generation, down=sorted(down.values()),
                             epoch_floor=epoch_floor(infos)) for n in names]
    # All checked before any is sent: no node acts on a deploy others refuse.
    for name, request in zip(names, requests):
        check_request_size(name, request)
    results = await defer.DeferredList([
        Deferred.fromCoroutine(_apply_one(client, infos[n], port, request, on_event))
        for n, request in zip(names, requests)], consumeErrors=True)
    failures = [NodeFailure(n, _explain(cast(Failure, v).value))
                for n, (ok, v) in zip(names, results) if not ok]
    if failures:
        raise DeployFailed(failures)
    return deploy_id


def dry_run(deployment: Deployment, infos: Dict[str, NodeInfo],
            down: Optional[Dict[str, str]] = None) -> Dict[str, IStateChange]:
    """Per node, the change a deploy would make now."""
    down = down or {}
    desired = by_address(deployment, infos, down)
    cluster = ClusterState([info.state for info in infos.values()])
    changes = {}
    for name, info in sorted(infos.items()):
        root = (info.mount_root or "/flocker").rstrip("/")

        def digest(app, root=root):
            return configuration_digest(
                app, "%s/%s" % (root, app.name) if app.volume is not None else None)
        changes[name] = calculate_changes(info.address, desired, cluster, digest,
                                          down=down.values(),
                                          epoch_floor=epoch_floor(infos))
    return changes


class DownNodeAnswers(Exception):
    """A node declared down answered: it is not down."""

    def __init__(self, nodes: List[str]):
        self.nodes = nodes
        super().__init__(", ".join(nodes))


async def resolve_down(reactor, names: Sequence[str]) -> Dict[str, str]:
    """The nodes declared down, name -> IPv4 address."""
    results = await defer.DeferredList(
        [resolve_ipv4(reactor, n) for n in names], consumeErrors=True)
    failures = [NodeFailure(n, _explain(cast(Failure, v).value))
                for n, (ok, v) in zip(names, results) if not ok]
    if failures:
        raise DeployFailed(failures)
    return {n: v for n, (ok, v) in zip(names, results)}


async def check_down(reactor, client: SSHClient, down: Dict[str, str], port: int,
                     timeout: float = 5.0) -> None:
    """
    Refuse to treat as dead a node that answers: ``DownNodeAnswers`` names
    every node declared down whose flocker-node answers ``version`` within
    ``timeout`` seconds.  (A dead node and a partitioned one look the same
    from here; one that answers is neither.)
    """
    names = sorted(down)
    asked = [client.run(down[n], port, ["version"]).addTimeout(timeout, reactor)
             for n in names]
    results = await defer.DeferredList(asked, consumeErrors=True)
    answering = ["%s (%s)" % (n, v.stdout.decode("utf-8", "replace").strip())
                 for n, (ok, v) in zip(names, results) if ok]
    if answering:
        raise DownNodeAnswers(answering)


BUSY = 75  # the node's ``lease`` exit status while another deploy holds it


@frozen
class Lease:
    """One node held for a deploy: cancel ``running`` to release it;
    ``ended`` fires with why, if the lease ends for any reason."""

    node: str
    running: Deferred
    ended: Deferred


async def hold(reactor, run, name: str, deploy_id: str, on_event,
               wait: float) -> Lease:
    """
    Hold one node for this deploy (its ``lease`` command, run with
    ``run(argv, **kwargs)`` on a connection to it).  While another deploy
    holds the node, wait up to ``wait`` seconds.
    """
    deadline = reactor.seconds() + wait
    told = False
    while True:
        granted: Deferred = Deferred()
        ended: Deferred = Deferred()
        lines = _Lines(lambda event: granted.callback(None)
                       if event.get("lease") == "granted" and not granted.called
                       else None)
        running = run(["lease", deploy_id], stdout_consumer=lines)

        def finished(result, granted=granted, ended=ended):
            if not granted.called:
                granted.errback(result)
            else:
                ended.callback(_explain(result.value) if isinstance(result, Failure)
                               else "the node ended the lease")
            return None
        running.addBoth(finished)
        try:
            await granted
            return Lease(name, running, ended)
        except RemoteCommandFailed as e:
            if e.result.status != BUSY or reactor.seconds() >= deadline:
                if e.result.status == BUSY:
                    raise RuntimeError(
                        "still busy after %d s: %s" % (wait, e.result.stderr_text))
                raise
            if not told:
                on_event(name, {"action": "waiting", "message": e.result.stderr_text})
                told = True
            await sleep(reactor, 1.0)


async def hold_all(reactor, client: SSHClient, deployment: Deployment, port: int,
                   deploy_id: str, on_event, wait: float) -> List[Lease]:
    """Hold every node, one after the other in address order (so two
    deploys never each hold a node the other waits for)."""
    names = sorted(n.hostname for n in deployment.nodes)
    results = await defer.DeferredList(
        [resolve_ipv4(reactor, n) for n in names], consumeErrors=True)
    failures = [NodeFailure(n, _explain(v.value)) for n, (ok, v) in zip(names, results)
                if not ok]
    if failures:
        raise DeployFailed(failures)
    # Connect to every node at once (the slow part), then take the leases
    # one after the other in address order.
    order = sorted((v, n) for n, (ok, v) in zip(names, results))
    connected = await defer.DeferredList(
        [client.connect(address, port) for address, _ in order], consumeErrors=True)
    failures = [NodeFailure(name, _explain(v.value))
                for (_, name), (ok, v) in zip(order, connected) if not ok]
    connections = [v for ok, v in connected if ok]
    if failures:
        for connection in connections:
            connection.close()
        raise DeployFailed(failures)
    held = []
    try:
        for (address, name), connection in zip(order, connections):
            try:
                lease = await hold(reactor, connection.run, name, deploy_id,
                                   on_event, wait)
            except Exception as e:
                raise DeployFailed([NodeFailure(name, _explain(e))])
            lease.running.addBoth(_close, connection)
            held.append(lease)
    except BaseException:
        release(held)
        for connection in connections[len(held):]:
            connection.close()
        raise
    return held


def _close(_, connection):
    return connection.close()


def release(held: List[Lease]) -> None:
    for lease in held:
        if not lease.ended.called:
            lease.ended.cancel()
        lease.running.cancel()


async def deploy(reactor, client: SSHClient, deployment: Deployment, port: int,
                 on_event: Callable[[str, dict], None], wait: float = 300.0,
                 down: Optional[Dict[str, str]] = None,
                 on_takeover: Callable[[List[str]], None] = lambda lines: None) -> str:
    """
    Hold every node, gather their states, apply everywhere, release.  If a
    node's lease ends before that (its daemon restarted, the connection
    dropped), another deploy could now interleave with this one, so the
    deploy stops waiting and fails naming the node; nodes finish what they
    were already sent.

    ``down`` (name -> address) are nodes the operator declared dead (see
    ``check_down``, which the caller runs first): they are not contacted;
    before anything is applied, ``on_takeover`` is given the lines saying
    which applications are taken over and how much may be lost.
    """
    down = down or {}
    live = live_part(deployment, down)
    deploy_id = uuid.uuid4().hex
    held = await hold_all(reactor, client, live, port, deploy_id, on_event, wait)

    async def gather_and_apply():
        infos = await gather(reactor, client, live, port)
        if down:
            on_takeover(takeover_report(deployment, infos, down))
        return await apply_all(client, deployment, infos, port, on_event, deploy_id,
                               down)
    work = Deferred.fromCoroutine(gather_and_apply())
    try:
        index, outcome = await defer.race(
            [work.addBoth(lambda result: [result])] + [lease.ended for lease in held])
        if index > 0:
            raise DeployFailed([NodeFailure(held[index - 1].node, (
                "lost this deploy's lease (%s); another deploy may now change "
                "the node, so this one stopped waiting (the nodes finish what "
                "they were sent); run flocker-deploy again" % (outcome,)))])
        if isinstance(outcome[0], Failure):
            outcome[0].raiseException()
        return outcome[0]
    finally:
        release(held)
