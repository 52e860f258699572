"""
The flocker-node service: an SSH listener serving the fixed command set,
and the convergence loop keeping the node as the last ``apply`` asked.

    FlockerNodeService (MultiService)
      ├─ the SSH server (TCP, conch) ........ version state apply
      │                                       snapshots receive acquire
      └─ NodeConvergence ..................... on start, on apply, every
                                               convergence_interval seconds

What ``apply`` receives is persisted (atomically) before the node acts; on
every start the daemon reloads it, rediscovers Docker, ZFS and iptables and
converges, so a crashed container, wiped iptables rules or a restart of the
daemon are mended without anyone running flocker-deploy.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Optional

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
from ..changes import RunContext, calculate_changes
from ..config import NAME_PATTERN, ConfigurationError, Problem
from ..ssh import (
    OPERATOR,
    PEER,
    Command,
    StdinTooLarge,
    CommandError,
    KeyAuthorizer,
    make_ssh_factory,
    public_key_line,
)
from ..volume import VolumeName, VolumeNotFound
from ._config import NodeConfiguration, load_operator_keys
from ..wire import MAX_REQUEST_BYTES, decode_apply, encode_node_state, resolve_ipv4
from ._deployer import Deployer
from ._keys import load_node_keys
from ._persist import DesiredStateStore, write_atomically
from ._sdnotify import SystemdNotifier

__all__ = ["make_node_service", "NodeConvergence", "NodeEvents",
           "node_commands", "FlockerNodeService"]

log = Logger()

PEERS_KNOWN_HOSTS = "peers_known_hosts"


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
        self.lock = defer.DeferredLock()
        self._loop = None
        self.last_error: Optional[str] = None
        # The deploy holding this node (see the ``lease`` command): its id,
        # who, and since when.
        self.lease: Optional[dict] = None

    # --- the desired state ----------------------------------------------------

    def load(self):
        data = self.store.load()
        if data is None:
            log.info("no desired state yet; waiting for flocker-deploy")
            return
        try:
            self._adopt(decode_apply(data, source=self.store.path))
        except ConfigurationError as e:
            # Never act on a file we cannot fully read.
            log.error("ignoring unreadable desired state {path}: {problems}",
                      path=self.store.path, problems=str(e))

    def _adopt(self, request):
        self.request = request
        from twisted.conch.ssh import keys
        peers = [p for p in request.peers if p.address != self.deployer.hostname]
        self.authorizer.set_keys(PEER, [keys.Key.fromString(p.node_key.encode())
                                        for p in peers])
        lines = "".join("[%s]:%d %s\n" % (p.address, p.ssh_port, p.host_key)
                        for p in peers)
        write_atomically(self.known_hosts_path, lines.encode("ascii"))
        self.peers.set_peers(peers)

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
        self.store.save(data)
        self._adopt(request)
        log.info("apply {deploy_id}: desired state saved", deploy_id=request.deploy_id)
        return self.lock.run(self._converge, emit, self.apply_handoff_timeout)

    def describe_lease(self) -> str:
        lease = self.lease
        return "deploy %s by key %s from %s, for %d s" % (
            lease["deploy_id"], lease["key"], lease["peer"],
            self.reactor.seconds() - lease["since"])

    def converge_now(self) -> Deferred:
        if self.lock.locked:
            return defer.succeed(None)
        d = self.lock.run(self._converge, None, self.periodic_handoff_timeout)

        def report(failure):
            message = failure.getErrorMessage()
            if message != self.last_error:
                log.failure("convergence failed: {message}", failure, message=message)
            self.last_error = message
        return d.addErrback(report)

    def _converge(self, emit, handoff_timeout) -> Deferred:
        stop_listening = self.events.listening(emit) if emit else lambda: None
        d = self._converge_once(self.context(handoff_timeout))
        return d.addBoth(lambda result: (stop_listening(), result)[1])

    @deferred
    async def _converge_once(self, context: RunContext) -> None:
        if self.request is None:
            return
        local = await self.deployer.discover()
        cluster = self.request.cluster.with_node(local)
        change = calculate_changes(self.deployer.hostname,
                                   self.request.deployment, cluster,
                                   self.deployer.digest)
        await change.run(self.deployer, context)
        self.last_error = None

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


def _problem(path, message):
    return Problem("apply", path, message)


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
        snapshots = {}
        for volume in local.volumes:
            snapshots[volume.name] = [
                s.name for s in await deployer.pool.snapshots(VolumeName(volume.name))]
        routes = {name: {"ports": list(ports), "route": str(route)}
                  for name, (ports, route) in sorted(deployer.routes.table.items())}
        document = encode_node_state(local, snapshots, extra={
            "ssh_port": ssh_port,
            "mount_root": deployer.pool.mount_root,
            "node_key": public_key_line(keys.node_key),
            "host_key": public_key_line(keys.host_key),
            "routes": routes,
            "flocker_async": __version__,
            "last_error": convergence.last_error,
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
                  "errors": [str(p) for p in e.problems]})
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
                  "errors": [str(p) for p in e.problems]})
            return 1
        except Exception as e:
            emit({"result": "failed", "node": deployer.hostname, "errors": [str(e)]})
            return 1
        emit({"result": "ok", "node": deployer.hostname})
        return 0

    def lease(role, args, session):
        if len(args) != 1 or not 0 < len(args[0]) <= 64 or not all(
                c.isalnum() or c in "-_" for c in args[0]):
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
        name = _volume_argument(args)
        if role == PEER:
            deployer.handoffs.note_activity(name)
        try:
            found = await deployer.pool.snapshots(VolumeName(name))
        except VolumeNotFound:
            found = []
        session.write("".join(s.name + "\n" for s in found).encode("ascii"))
        return 0

    def receive(role, args, session):
        replace = bool(args) and args[0] == "--replace"
        name = _volume_argument(args[1:] if replace else args)
        receiver = None
        gone = []

        async def run():
            nonlocal receiver
            receiver = await deployer.handoffs.receiver(
                name, replace, convergence.context())
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
            if not command.called:
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
        name = _volume_argument(args)
        try:
            await deployer.handoffs.acquire(name, convergence.context())
        except VolumeNotFound:
            raise CommandError("this node holds no copy of volume %s to acquire"
                               % (name,), 1)
        session.write(("acquired %s\n" % (name,)).encode())
        return 0

    return {
        "version": Command({OPERATOR, PEER}, version, "print the version"),
        "state": Command({OPERATOR}, _coroutine(state), "this node's state as JSON"),
        "apply": Command({OPERATOR}, _coroutine(apply),
                         "converge to the request on stdin, streaming progress"),
        "lease": Command({OPERATOR}, lease,
                         "hold this node for DEPLOY_ID while the channel is open"),
        "snapshots": Command({OPERATOR, PEER}, _coroutine(snapshots),
                             "the snapshots this node holds of VOLUME"),
        "receive": Command({PEER}, receive, "receive a send stream into VOLUME"),
        "acquire": Command({PEER}, _coroutine(acquire), "become the owner of VOLUME"),
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
    return serverFromString(reactor, "%s:port=%d:interface=%s" % (
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
    factory = make_ssh_factory(reactor, keys.host_key, authorizer,
                               node_commands(convergence, keys, configuration.ssh_port))
    listen = configuration.listen_address
    root = FlockerNodeService()
    SSHListener(listen_endpoint(reactor, listen, configuration.ssh_port), factory,
                SystemdNotifier(), "%s:%d" % (listen, configuration.ssh_port),
                reactor).setServiceParent(root)
    convergence.setServiceParent(root)
    return root
