"""
What a node must do to reach the desired deployment: a pure function from
(this node, desired ``Deployment``, ``ClusterState``) to one plan of change
values.  Nothing here touches the machine, so the whole deploy logic is
tested without a reactor, and ``flocker-deploy --dry-run`` prints exactly
the plan a node would run.

The move of an application A with volume V from S to D, as each node sees
it (DESIGN.md, "Moving an application"):

* S: push V to D while A runs (bulk); hold A's ports; stop A; make V
  read-only and push the final increment (if that fails, undo: V writable
  again, A started again here); hand V over to D (``acquire``); proxy A's
  ports to D.
* D: proxy A's ports to S meanwhile; wait until S hands V over (``acquire``
  also holds A's ports on D); start A; wait for its port; open it.
* every other node: proxy A's ports to D (which forwards to S until then).
"""

from __future__ import annotations

from typing import Callable, Dict, FrozenSet, Iterable, List, Optional, Tuple

from ..model import Application, ClusterState, Deployment, NodeState, link_env_prefix
from ._compose import ReportProblem, UndoOnFailure, in_parallel, sequentially
from ._containers import StartApplication, StopApplication, WaitForPort
from ._failover import (
    PushReplica, TakeOver, TakeOverPlan, YieldVolume, plan_takeovers, stale_claim)
from ._interfaces import IStateChange
from ._routes import HELD, LOCAL, Route, SetRoute, SetRoutes, proxy_to
from ._volumes import (
    CreateVolume, FinalPush, HandOver, MakeWritable, PushVolume, RecordOwner,
    WaitForHandoff)

__all__ = ["calculate_changes", "container_application", "move_out"]


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
    down: Iterable[str] = (),
    epoch_floor: Optional[Dict[str, int]] = None,
) -> IStateChange:
    """
    The changes that take node ``hostname`` from its state in ``cluster``
    (freshly discovered) to its part of ``desired``.

    ``digest(application)`` is the configuration digest a container for
    ``application`` on this node would carry; a running container with that
    digest is left alone.  ``down`` are the nodes the operator declared
    dead: their volumes are taken over from the freshest surviving copy,
    and a node that finds itself among them yields what it still claims.
    ``epoch_floor``: the highest ownership epoch seen per volume (see
    ``plan_takeovers``).
    """
    down = frozenset(down)
    takeovers = plan_takeovers(desired, cluster, down, epoch_floor)
    local = cluster.node(hostname) or NodeState(hostname)
    initial_routes: Dict[str, Tuple[Tuple[int, ...], Route]] = {}
    per_application = []
    desired_names = set()

    for node, app in desired.applications():
        desired_names.add(app.name)
        running = local.application(app.name)
        takeover = takeovers.get(app.name)
        if node.hostname == hostname:
            steps, route = _converge_here(hostname, app, local, cluster, running,
                                          digest, takeover, down)
        else:
            steps, route = _converge_elsewhere(
                hostname, node.hostname, app, local, cluster, running, takeover, down)
        if route is not None:
            initial_routes[app.name] = (_ports(app), route)
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
                   running, digest, takeover: Optional[TakeOverPlan],
                   down: FrozenSet[str]) -> Tuple[List, Optional[Route]]:
    ports = _ports(app)
    container = container_application(app, hostname)
    unchanged = (running is not None and running.running
                 and running.digest == digest(container))
    steps: List = []
    if app.volume is not None:
        volume = local.volume(app.name)
        owner = cluster.owner_of(app.name, down)
        if takeover is not None:
            # Its owner is down: take over from the freshest surviving copy,
            # here or pushed here first; nobody serves it meanwhile.
            steps = [StopApplication(app.name)] if running is not None else []
            steps.append(TakeOver(app.name, takeover.epoch) if takeover.source == hostname
                         else WaitForHandoff(app.name, takeover.source))
            return steps + _start(container, ports), (HELD if ports else None)
        if volume is not None and volume.owner == hostname and owner == hostname:
            if not volume.writable:
                steps.append(MakeWritable(app.name))
        elif owner is not None and owner != hostname:
            # The live copy is elsewhere: its owner pushes it here.  A copy
            # of ours that still claims ownership lost it while we were
            # away: never served again.
            if running is not None:
                steps.append(StopApplication(app.name))
            if volume is not None and volume.owner == hostname:
                steps.append(_give_up(app.name, volume.writable, owner, cluster))
            return (steps + [WaitForHandoff(app.name, owner)] + _start(container, ports),
                    proxy_to(owner) if ports else None)
        elif volume is not None:
            # A replica whose owner is not in the cluster state: making it
            # writable could leave two live copies.
            return ([ReportProblem(app.name, (
                "this node holds only a replica of volume %s (owner %s), and "
                "no node in the cluster reports the live copy; bring the "
                "owner back, or declare it down (flocker-deploy --down %s)"
                % (app.name, volume.owner or "unknown", volume.owner or "NODE")))],
                    LOCAL if ports and running else None)
        else:
            steps.append(CreateVolume(app.name, app.volume.maximum_size))
    if unchanged:
        return steps, (LOCAL if ports else None)
    if running is not None:
        steps.append(StopApplication(app.name))
    # While the container (re)starts, new connections wait instead of failing.
    return steps + _start(container, ports), (HELD if ports else None)


def _give_up(name: str, writable: bool, owner: str, cluster: ClusterState):
    """What a node does with a copy that names itself owner when ``owner``
    holds the live one: a writable copy may hold writes nobody else has,
    so it is set aside; a read-only one only records the real owner."""
    if writable:
        return YieldVolume(name, owner)
    state = cluster.node(owner)
    theirs = state.volume(name) if state is not None else None
    return RecordOwner(name, owner, theirs.epoch if theirs is not None else None)


def _acquired_elsewhere(hostname, name, local: NodeState, cluster: ClusterState,
                        down: FrozenSet[str]) -> Optional[str]:
    """
    The node that acquired ``name`` from us when our copy still names us
    but is read-only: another node's copy names itself owner, which only
    ``acquire`` does after our final push.  Pushing again would be refused
    (its copy is live), so the move would never finish.
    """
    ours = local.volume(name)
    if ours is None or ours.owner != hostname or ours.writable:
        return None
    owner = cluster.owner_of(name, down)
    return owner if owner != hostname else None


def move_out(app: Application, to: str, ports, running: bool,
             epoch: Optional[int] = None) -> List:
    """
    The source's side of a move, step by step: the bulk push while the
    application runs, hold, stop, the final push (undone if it fails: the
    copy is still the only live one, so the application serves here again),
    the handover (raising the ownership epoch to ``epoch``, or one more
    than the copy's when it runs), and proxying to the target.
    """
    name = app.name
    steps: List = [PushVolume(name, to)]
    if ports:
        steps.append(SetRoute(name, ports, HELD))
    if running:
        steps.append(StopApplication(name))
    undo: List = [MakeWritable(name)]
    if running:
        undo += [StartApplication(app)] + ([WaitForPort(app)] if ports else [])
    if ports:
        undo.append(SetRoute(name, ports, LOCAL if running else HELD))
    steps.append(UndoOnFailure(FinalPush(name, to), sequentially(undo), name, to))
    steps.append(HandOver(name, to, epoch))
    if ports:
        steps.append(SetRoute(name, ports, proxy_to(to)))
    return steps


def _converge_elsewhere(hostname, target, app, local: NodeState,
                        cluster: ClusterState, running,
                        takeover: Optional[TakeOverPlan], down: FrozenSet[str]
                        ) -> Tuple[List, Optional[Route]]:
    ports = _ports(app)
    name = app.name
    steps: List = [StopApplication(name)] if running is not None else []
    if app.volume is not None:
        acquired_by = _acquired_elsewhere(hostname, name, local, cluster, down)
        if acquired_by is not None:
            steps.append(_give_up(name, False, acquired_by, cluster))
            return steps, (proxy_to(target) if ports else None)
        if stale_claim(hostname, name, cluster, down):
            # We were declared down, or another copy took over while we were
            # away: stop serving, keep our copy aside, proxy to the target.
            owner = cluster.owner_of(name, down)
            steps.append(YieldVolume(name, owner if owner != hostname else target))
            return steps, (proxy_to(target) if ports else None)
        if takeover is not None and takeover.source == hostname:
            # We hold the freshest surviving copy: push it to the node taking
            # over, then let it acquire it with the new epoch.
            steps += [PushReplica(name, target), HandOver(name, target, takeover.epoch)]
            return steps, (proxy_to(target) if ports else None)
        if local.claims(name):
            # This node has the live copy: move it to the target.
            is_running = running is not None and running.running
            steps = []
            if running is not None and not is_running:
                steps.append(StopApplication(name))  # a crashed container
            ours = local.volume(name)
            steps += move_out(container_application(app, hostname), target, ports,
                              is_running, ours.epoch + 1 if ours is not None else None)
            # Not serving here yet: hold, not proxy, since the target forwards
            # to us until it acquires the volume (a proxy both ways would loop).
            return steps, ((LOCAL if is_running else HELD) if ports else None)
    return steps, (proxy_to(target) if ports else None)
