"""
What a node must do to reach the desired deployment, as values.

``calculate_changes`` is a pure function: given this node's name, the
desired ``Deployment`` and the ``ClusterState`` (with this node's own state
freshly discovered), it returns one ``IStateChange`` built from the small
change values below with ``sequentially`` and ``in_parallel``.  Running a
change is the business of a deployer (``flocker_async.node``) that holds the
backends; nothing here touches the machine, so the whole deploy logic is
tested without a reactor.

The move of an application A with volume V from S to D, as each node sees
it (DESIGN.md, "Moving an application"):

* S: push V to D while A runs; hold A's ports; stop A; hand V off (make it
  read-only, final snapshot, push the increment, ``acquire`` on D); proxy
  A's ports to D.
* D: proxy A's ports to S meanwhile; wait until S hands V over (``acquire``
  also holds A's ports on D); start A; wait for its port; open it.
* every other node: proxy A's ports to D (which forwards to S until then).
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Tuple

from attrs import field, frozen
from zope.interface import Attribute, Interface, implementer

from .config import link_env_prefix
from .model import (
    Application,
    ClusterState,
    Deployment,
    NodeState,
)

__all__ = [
    "IStateChange",
    "sequentially",
    "in_parallel",
    "Sequentially",
    "InParallel",
    "Route",
    "LOCAL",
    "HELD",
    "proxy_to",
    "SetRoutes",
    "SetRoute",
    "CreateVolume",
    "MakeWritable",
    "StartApplication",
    "StopApplication",
    "WaitForPort",
    "MoveOut",
    "RecordOwner",
    "WaitForHandoff",
    "ReportProblem",
    "container_application",
    "calculate_changes",
    "NO_CHANGE",
]


class IStateChange(Interface):
    """One step towards the desired state."""

    def run(deployer):
        """Do it with ``deployer``'s backends; return a Deferred."""

    summary = Attribute("One line saying what this change does, for people.")


# --- composition ------------------------------------------------------------------

@implementer(IStateChange)
@frozen
class Sequentially:
    changes: Tuple = field(converter=tuple)

    @property
    def summary(self) -> str:
        return "; then ".join(c.summary for c in self.changes)

    def run(self, deployer):
        return deployer.run_sequentially(self.changes)


@implementer(IStateChange)
@frozen
class InParallel:
    changes: Tuple = field(converter=tuple)

    @property
    def summary(self) -> str:
        return " | ".join(c.summary for c in self.changes)

    def run(self, deployer):
        return deployer.run_in_parallel(self.changes)


NO_CHANGE = Sequentially(())


def _flatten(kind, changes: Iterable) -> List:
    flat = []
    for change in changes:
        if isinstance(change, kind):
            flat.extend(change.changes)
        elif change == NO_CHANGE or (isinstance(change, (Sequentially, InParallel))
                                     and not change.changes):
            continue
        else:
            flat.append(change)
    return flat


def sequentially(changes: Iterable) -> IStateChange:
    """Run ``changes`` one after the other; stop at the first failure."""
    flat = _flatten(Sequentially, changes)
    return flat[0] if len(flat) == 1 else Sequentially(flat)


def in_parallel(changes: Iterable) -> IStateChange:
    """Run ``changes`` at once; all run to the end, failures are collected."""
    flat = _flatten(InParallel, changes)
    return flat[0] if len(flat) == 1 else InParallel(flat)


# --- routes ----------------------------------------------------------------------

@frozen(order=True)
class Route:
    """
    How this node routes an application's external ports: ``local`` (open,
    the container here serves them), ``held`` (new connections wait: SYNs
    dropped) or ``proxy`` to ``target`` (a node's host name or address).
    """

    kind: str
    target: Optional[str] = None

    def __str__(self) -> str:
        return self.kind if self.target is None else "%s to %s" % (self.kind, self.target)


LOCAL = Route("local")
HELD = Route("held")


def proxy_to(hostname: str) -> Route:
    return Route("proxy", hostname)


@implementer(IStateChange)
@frozen
class SetRoutes:
    """Replace the whole routing table: ``routes`` maps application name to
    (ports, Route); applications not named lose their rules."""

    routes: Tuple = field(converter=lambda r: tuple(sorted(r)))

    @property
    def summary(self) -> str:
        return "route %s" % (", ".join(
            "%s %s" % (name, route) for name, _, route in self.routes) or "nothing",)

    def run(self, deployer):
        return deployer.set_routes(self.routes)


@implementer(IStateChange)
@frozen
class SetRoute:
    """Change one application's entry in the routing table."""

    application: str
    ports: Tuple = field(converter=lambda p: tuple(sorted(p)))
    route: Route

    @property
    def summary(self) -> str:
        return "route %s %s" % (self.application, self.route)

    def run(self, deployer):
        return deployer.set_route(self.application, self.ports, self.route)


# --- volumes and containers --------------------------------------------------------

@implementer(IStateChange)
@frozen
class CreateVolume:
    name: str
    maximum_size: Optional[int] = None

    @property
    def summary(self) -> str:
        return "create volume %s" % (self.name,)

    def run(self, deployer):
        return deployer.create_volume(self.name, self.maximum_size)


@implementer(IStateChange)
@frozen
class MakeWritable:
    """This node owns the volume but its copy is read-only (a handoff that
    was interrupted before ``acquire``): make it the live copy again."""

    name: str

    @property
    def summary(self) -> str:
        return "make volume %s writable" % (self.name,)

    def run(self, deployer):
        return deployer.make_writable(self.name)


@implementer(IStateChange)
@frozen
class StartApplication:
    """Create and start the container (removing a stale one first)."""

    application: Application

    @property
    def summary(self) -> str:
        return "start %s" % (self.application.name,)

    def run(self, deployer):
        return deployer.start_application(self.application)


@implementer(IStateChange)
@frozen
class StopApplication:
    """Stop and remove the container; its volume is kept."""

    name: str

    @property
    def summary(self) -> str:
        return "stop %s" % (self.name,)

    def run(self, deployer):
        return deployer.stop_application(self.name)


@implementer(IStateChange)
@frozen
class WaitForPort:
    """Wait until the application accepts connections on its first port."""

    application: Application

    @property
    def summary(self) -> str:
        return "wait for %s to listen" % (self.application.name,)

    def run(self, deployer):
        return deployer.wait_for_port(self.application)


@implementer(IStateChange)
@frozen
class MoveOut:
    """
    The source's side of a move: push the volume while the application
    runs, hold its ports, stop it, hand the volume over (final increment,
    ``acquire``), proxy to the target.  If the handoff fails before
    ``acquire`` was sent, the move is undone: the volume is made writable
    again and the application started here again.
    """

    application: Application
    to: str
    ports: Tuple = field(converter=lambda p: tuple(sorted(p)))
    running: bool

    @property
    def summary(self) -> str:
        return ("move %s to %s: push volume %s to %s, hold, stop, hand volume "
                "%s over to %s, proxy to %s" % (
                    self.application.name, self.to, self.application.name,
                    self.to, self.application.name, self.to, self.to))

    def run(self, deployer):
        return deployer.move_out(self.application, self.to, self.ports, self.running)


@implementer(IStateChange)
@frozen
class RecordOwner:
    """This node's read-only copy still names itself owner, but ``owner``
    has acquired the volume (the handoff was cut between the peer's
    ``acquire`` and recording it here): record the new owner."""

    name: str
    owner: str

    @property
    def summary(self) -> str:
        return "record %s as the owner of volume %s" % (self.owner, self.name)

    def run(self, deployer):
        return deployer.record_owner(self.name, self.owner)


@implementer(IStateChange)
@frozen
class WaitForHandoff:
    """Wait until ``source`` has handed the volume over to this node."""

    name: str
    source: str

    @property
    def summary(self) -> str:
        return "wait for %s to hand volume %s over" % (self.source, self.name)

    def run(self, deployer):
        return deployer.wait_for_handoff(self.name, self.source)


@implementer(IStateChange)
@frozen
class ReportProblem:
    """Something the node must not decide alone; nothing is changed."""

    application: str
    message: str

    @property
    def summary(self) -> str:
        return "cannot converge %s: %s" % (self.application, self.message)

    def run(self, deployer):
        return deployer.report_problem(self.application, self.message)


# --- the calculation -------------------------------------------------------------

def container_application(application: Application, node_address: str) -> Application:
    """
    The application as its container is configured on a node: links become
    Docker-style variables pointing at the node's own address, where the
    proxy forwards ``remote_port`` to wherever the target runs.
    """
    if not application.links:
        return application
    environment = dict(application.environment)
    for link in sorted(application.links):
        prefix = "%s_PORT_%d_TCP" % (link_env_prefix(link.alias), link.local_port)
        environment[prefix] = "tcp://%s:%d" % (node_address, link.remote_port)
        environment[prefix + "_ADDR"] = node_address
        environment[prefix + "_PORT"] = str(link.remote_port)
        environment[prefix + "_PROTO"] = "tcp"
    return Application(
        name=application.name, image=application.image, ports=application.ports,
        links=application.links, environment=environment, volume=application.volume,
        mem_limit=application.mem_limit, cpu_shares=application.cpu_shares,
        restart_policy=application.restart_policy)


def _ports(app: Application) -> Tuple[int, ...]:
    return tuple(sorted(p.external_port for p in app.ports))


def calculate_changes(
    hostname: str,
    desired: Deployment,
    cluster: ClusterState,
    digest: Callable[[Application], str],
) -> IStateChange:
    """
    The changes that take node ``hostname`` from its state in ``cluster``
    (freshly discovered) to its part of ``desired``.

    ``digest(application)`` is the configuration digest a container for
    ``application`` on this node would carry; a running container with that
    digest is left alone.
    """
    local = cluster.node(hostname) or NodeState(hostname)
    initial_routes: Dict[str, Tuple[Tuple[int, ...], "Route"]] = {}
    per_application = []
    desired_names = set()

    for node, app in desired.applications():
        desired_names.add(app.name)
        ports = _ports(app)
        running = local.application(app.name)
        if node.hostname == hostname:
            steps, route = _converge_here(hostname, app, local, cluster, running, digest)
        else:
            steps, route = _converge_elsewhere(
                hostname, node.hostname, app, local, cluster, running)
        if ports or route is not None:
            if route is not None:
                initial_routes[app.name] = (ports, route)
        per_application.append(sequentially(steps))

    # Applications no longer deployed anywhere: stop them; keep the volume.
    for state in sorted(local.applications, key=lambda a: a.name):
        if state.name not in desired_names:
            per_application.append(StopApplication(state.name))

    routes = SetRoutes((name, ports, route)
                       for name, (ports, route) in initial_routes.items())
    return sequentially([routes, in_parallel(per_application)])


def _start(app: Application, ports) -> List:
    """Start ``app`` with its ports held until it listens, then open them."""
    if not ports:
        return [StartApplication(app)]
    return [SetRoute(app.name, ports, HELD), StartApplication(app),
            WaitForPort(app), SetRoute(app.name, ports, LOCAL)]


def _converge_here(hostname, app, local: NodeState, cluster: ClusterState,
                   running, digest) -> Tuple[List, Optional[Route]]:
    ports = _ports(app)
    container = container_application(app, hostname)
    unchanged = (running is not None and running.running
                 and running.digest == digest(container))
    steps: List = []
    if app.volume is not None:
        volume = local.volume(app.name)
        owner = cluster.owner_of(app.name)
        if volume is not None and volume.owner == hostname:
            if not volume.writable:
                steps.append(MakeWritable(app.name))
        elif owner is not None and owner != hostname:
            # The live copy is elsewhere: its owner pushes it here.
            return ([WaitForHandoff(app.name, owner)] + _start(container, ports),
                    proxy_to(owner) if ports else None)
        elif volume is not None:
            # A replica whose owner is not in the cluster state: making it
            # writable could leave two live copies.
            return ([ReportProblem(app.name, (
                "this node holds only a replica of volume %s (owner %s), and "
                "no node in the cluster reports the live copy; bring the "
                "owner back or deploy the application there"
                % (app.name, volume.owner or "unknown")))],
                    LOCAL if ports and running else None)
        else:
            steps.append(CreateVolume(app.name, app.volume.maximum_size))
    if unchanged:
        return steps, (LOCAL if ports else None)
    if running is not None:
        steps.append(StopApplication(app.name))
    # While the container (re)starts, new connections wait instead of failing.
    return steps + _start(container, ports), (HELD if ports else None)


def _acquired_elsewhere(hostname, name, local: NodeState,
                        cluster: ClusterState) -> Optional[str]:
    """
    The node that acquired ``name`` from us when our copy still names us
    but is read-only: another node's copy names itself owner, which only
    ``acquire`` does after our final push.  Pushing again would be refused
    (its copy is live), so the move would never finish.
    """
    ours = local.volume(name)
    if ours is None or ours.owner != hostname or ours.writable:
        return None
    others = sorted((not n.volume(name).writable, n.hostname)
                    for n in cluster.nodes
                    if n.hostname != hostname and n.claims(name))
    return others[0][1] if others else None


def _converge_elsewhere(hostname, target, app, local: NodeState,
                        cluster: ClusterState, running) -> Tuple[List, Optional[Route]]:
    ports = _ports(app)
    acquired_by = (_acquired_elsewhere(hostname, app.name, local, cluster)
                   if app.volume is not None else None)
    if acquired_by is not None:
        steps = [StopApplication(app.name)] if running is not None else []
        steps.append(RecordOwner(app.name, acquired_by))
        return steps, (proxy_to(target) if ports else None)
    if app.volume is not None and local.claims(app.name):
        # This node has the live copy: move it to the target.
        is_running = running is not None and running.running
        steps = [MoveOut(container_application(app, hostname), target, ports,
                         is_running)]
        if running is not None and not is_running:
            steps.insert(0, StopApplication(app.name))  # a crashed container
        # Not serving here yet: hold, not proxy, since the target forwards
        # to us until it acquires the volume (a proxy both ways would loop).
        return steps, (LOCAL if running is not None and running.running else
                       HELD) if ports else None
    steps = [StopApplication(app.name)] if running is not None else []
    return steps, (proxy_to(target) if ports else None)
