"""
The soak's schedule: every operation it will run, with its planned moment,
computed from the seed alone (``plan``), so the same seed replays the same
schedule.

Operations are deploys (``move``: the scheduler puts applications on other
nodes and picks their standbys; ``take-over``: a ``--down`` deploy after a
power-off; ``rejoin``: the plain deploy after the node came back) and
faults of the nemesis.  The plan keeps a model of the deployment as each
deploy intends it (which node runs each application, its standby, which
nodes are declared down), so every deploy carries a whole, valid
deployment; a deploy that fails at run time leaves the next one to bring
the cluster there.

Rules the plan keeps, so a fault never lands on a node another fault is
still holding: one fault per node at a time (a fault's node is busy until
it is mended), one power cycle at a time, no fault on a powered-off node,
no move during a power-off before its take-over.
"""

from __future__ import annotations

import random
from typing import List, Optional, Sequence, Tuple

from attrs import field, frozen

NODES = ("n1", "n2", "n3")
APPS = ("db", "web")

# Faults and how often each is drawn, after the first round in which every
# kind comes once (in an order drawn from the seed).
FAULT_WEIGHTS = (
    ("kill-daemon", 3),
    ("kill-dockerd", 2),
    ("kill-zfs-recv", 2),
    ("kill-zfs-send", 2),
    ("partition", 2),
    ("fill-pool", 1),
    ("restart-zfs-fuse", 1),
    ("power-cycle", 1),
)
FAULTS = tuple(kind for kind, _ in FAULT_WEIGHTS)
DEPLOYS = ("move", "take-over", "rejoin")
# The steps a power cycle adds besides its power-off (a fault) and its
# two deploys; operations, not faults.
POWER_ON = "power-on"

# Seconds between the scheduler's moves, and between faults.
MOVE_GAP = (7.0, 16.0)
FAULT_GAP = (4.0, 10.0)
# How long each fault lasts before it is mended (a daemon or dockerd is
# started again as systemd would, a link comes back, a filler goes).
DURATIONS = {
    "kill-daemon": (0.5, 3.0),
    "kill-dockerd": (1.0, 4.0),
    "partition": (2.0, 8.0),
    "fill-pool": (5.0, 15.0),
}
# A power cycle: the take-over this long after the power-off, the power-on
# this long after the take-over, the rejoin this long after the power-on.
TAKEOVER_AFTER = (2.0, 5.0)
POWER_ON_AFTER = (12.0, 25.0)
REJOIN_AFTER = (6.0, 10.0)
# Nothing is planned in the last seconds of the run, and a power cycle
# must fit in before them.
TAIL = 8.0
FIRST = 6.0


@frozen
class Placement:
    """A whole deployment as one deploy intends it: where each application
    runs, its standby, and the nodes declared down."""

    nodes: Tuple[Tuple[str, str], ...]      # (app, node), in APPS order
    standby: Tuple[Tuple[str, str], ...]    # (app, node)
    down: Tuple[str, ...] = ()

    def node_of(self, app: str) -> str:
        return dict(self.nodes)[app]

    def standby_of(self, app: str) -> str:
        return dict(self.standby)[app]

    def to_document(self) -> dict:
        return {"nodes": dict(self.nodes), "standby": dict(self.standby),
                "down": list(self.down)}

    def describe(self) -> str:
        return ", ".join("%s on %s (standby %s)" % (app, node, self.standby_of(app))
                         for app, node in self.nodes) + (
            "; down %s" % (",".join(self.down),) if self.down else "")


@frozen
class Operation:
    """One planned operation: ``at`` seconds after the chaos begins."""

    index: int
    at: float
    kind: str
    node: Optional[str] = None
    seconds: float = 0.0                   # how long a fault lasts
    placement: Optional[Placement] = None  # what a deploy deploys
    app: Optional[str] = None              # the application a zfs kill aims at
    cycle: Optional[int] = None            # the power cycle a step belongs to

    @property
    def is_fault(self) -> bool:
        return self.kind in FAULTS

    @property
    def is_deploy(self) -> bool:
        return self.kind in DEPLOYS

    def describe(self) -> str:
        text = "%7.1f s  #%-3d %-16s" % (self.at, self.index, self.kind)
        if self.node is not None:
            text += " %s" % (self.node,)
        if self.app is not None:
            text += " (%s)" % (self.app,)
        if self.seconds:
            text += " for %.1f s" % (self.seconds,)
        if self.placement is not None:
            text += ": " + self.placement.describe()
        return text.rstrip()

    def to_document(self) -> dict:
        document = {"index": self.index, "at": round(self.at, 3), "kind": self.kind}
        for key in ("node", "app", "cycle"):
            if getattr(self, key) is not None:
                document[key] = getattr(self, key)
        if self.seconds:
            document["seconds"] = round(self.seconds, 3)
        if self.placement is not None:
            document["placement"] = self.placement.to_document()
        return document


@frozen
class Schedule:
    seed: int
    duration: float
    initial: Placement
    operations: Tuple[Operation, ...] = field(converter=tuple)
    excluded: Tuple[str, ...] = field(default=(), converter=tuple)

    @property
    def faults(self) -> List[Operation]:
        return [op for op in self.operations if op.is_fault]

    def lines(self) -> List[str]:
        return (["schedule of seed %d, %.0f s%s: start with %s"
                 % (self.seed, self.duration, "" if not self.excluded else
                    " without %s" % (", ".join(self.excluded),),
                    self.initial.describe())]
                + ["  " + op.describe() for op in self.operations])

    def to_document(self) -> dict:
        return {"seed": self.seed, "duration": self.duration,
                "excluded": list(self.excluded),
                "initial": self.initial.to_document(),
                "operations": [op.to_document() for op in self.operations]}


class _Model:
    """The deployment the plan intends at each moment, and which nodes are
    busy with a fault until when."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        first = rng.sample(NODES, len(APPS))
        self.where = dict(zip(APPS, first))
        self.standby = {app: rng.choice([n for n in NODES if n != self.where[app]])
                        for app in APPS}
        self.down: Tuple[str, ...] = ()
        self.busy_until = {n: 0.0 for n in NODES}
        # (node, power-off, take-over, power-on, rejoin) times of each cycle.
        self.cycles: List[Tuple[str, float, float, float, float]] = []

    def placement(self) -> Placement:
        return Placement(tuple((a, self.where[a]) for a in APPS),
                         tuple((a, self.standby[a]) for a in APPS), self.down)

    def off_at(self, t: float) -> Optional[Tuple[str, float, float, float, float]]:
        """The power cycle in progress at ``t`` (power-off to rejoin)."""
        for cycle in self.cycles:
            if cycle[1] <= t <= cycle[4]:
                return cycle
        return None

    def live(self, t: float) -> List[str]:
        cycle = self.off_at(t)
        return [n for n in NODES if cycle is None or n != cycle[0]]

    def pick_standby(self, app: str, live: Sequence[str]) -> None:
        choices = [n for n in live if n != self.where[app]]
        if self.standby[app] not in choices:
            self.standby[app] = self.rng.choice(choices)


def plan(seed: int, duration: float, exclude: Sequence[str] = ()) -> Schedule:
    """Every operation of a soak of ``duration`` seconds with ``seed``,
    without the fault kinds in ``exclude``."""
    if duration < 30:
        raise ValueError("a soak lasts at least 30 s, not %r" % (duration,))
    unknown = sorted(set(exclude) - set(FAULTS))
    if unknown:
        raise ValueError("no such fault: %s (faults: %s)" % (
            ", ".join(unknown), ", ".join(FAULTS)))
    weights = tuple((k, w) for k, w in FAULT_WEIGHTS if k not in exclude)
    if not weights:
        raise ValueError("every fault excluded")
    rng = random.Random(seed)
    model = _Model(rng)
    initial = model.placement()
    operations: List[dict] = []
    # A power cycle's later steps, planned when their moment comes (the
    # take-over and the rejoin deploy the model as it is then).
    pending: List[dict] = []
    cover = [k for k, _ in weights]
    rng.shuffle(cover)
    if "power-cycle" in cover:
        # The power cycle needs the most time: in the first round it comes
        # early enough to fit in a short run.
        cover.remove("power-cycle")
        cover.insert(min(2, len(cover)), "power-cycle")
    next_move = FIRST + rng.uniform(*MOVE_GAP) / 2
    next_fault = FIRST + rng.uniform(*FAULT_GAP) / 2
    end = duration - TAIL
    while pending or min(next_move, next_fault) < end:
        if pending and pending[0]["at"] <= min(next_move, next_fault, end):
            operations.append(_cycle_step(model, rng, pending.pop(0)))
        elif next_move <= next_fault:
            t = next_move
            next_move += rng.uniform(*MOVE_GAP)
            cycle = model.off_at(t)
            if cycle is not None and (t < cycle[2] + 1 or t > cycle[3] - 1):
                # Between a power-off and its take-over nothing can move;
                # from the power-on to the rejoin a --down deploy would be
                # refused (the node answers).
                continue
            operations.append(_move(model, rng, t))
        else:
            t = next_fault
            next_fault += rng.uniform(*FAULT_GAP)
            from_cover = bool(cover)
            kind = cover.pop(0) if from_cover else _weighted(rng, weights)
            planned = _fault(model, rng, kind, t, end)
            if planned is None:
                if from_cover:
                    cover.insert(0, kind)  # its turn again at the next fault
                # No room for it now: another fault instead.
                others = tuple((k, w) for k, w in weights if k != kind)
                planned = _fault(model, rng, _weighted(rng, others), t, end) \
                    if others else None
            if planned is None:
                continue
            operations.append(planned[0])
            pending.extend(planned[1:])
    operations.sort(key=lambda op: op["at"])
    return Schedule(seed, duration, initial, [
        Operation(index=i + 1, **op) for i, op in enumerate(operations)],
        tuple(k for k in FAULTS if k in exclude))


def _weighted(rng: random.Random, kinds: Sequence[Tuple[str, int]]) -> str:
    total = sum(w for _, w in kinds)
    pick = rng.uniform(0, total)
    for kind, weight in kinds:
        pick -= weight
        if pick <= 0:
            return kind
    return kinds[-1][0]


def _move(model: _Model, rng: random.Random, t: float) -> dict:
    live = model.live(t)
    apps = list(APPS) if rng.random() < 0.35 else [rng.choice(APPS)]
    for app in apps:
        choices = [n for n in live if n != model.where[app]]
        model.where[app] = rng.choice(choices)
    for app in APPS:
        if app in apps or rng.random() < 0.3:
            model.standby[app] = rng.choice(
                [n for n in live if n != model.where[app]])
        model.pick_standby(app, live)
    return {"at": t, "kind": "move", "placement": model.placement()}


def _free_nodes(model: _Model, t: float) -> List[str]:
    return [n for n in model.live(t) if model.busy_until[n] <= t]


def _fault(model: _Model, rng: random.Random, kind: str, t: float,
           end: float) -> Optional[List[dict]]:
    if kind == "restart-zfs-fuse":
        return [{"at": t, "kind": kind}]
    if kind in ("kill-zfs-recv", "kill-zfs-send"):
        # A replication round's receive on the standby, its send on the
        # owner (a move's push is caught too when one runs then).
        app = rng.choice(APPS)
        node = model.standby[app] if kind == "kill-zfs-recv" else model.where[app]
        if node not in _free_nodes(model, t):
            return None
        return [{"at": t, "kind": kind, "node": node, "app": app}]
    if kind == "power-cycle":
        return _power_cycle(model, rng, t, end)
    free = _free_nodes(model, t)
    if not free:
        return None
    node = rng.choice(free)
    seconds = rng.uniform(*DURATIONS[kind])
    model.busy_until[node] = t + seconds + 1
    return [{"at": t, "kind": kind, "node": node, "seconds": seconds}]


def _power_cycle(model: _Model, rng: random.Random, t: float,
                 end: float) -> Optional[List[dict]]:
    takeover = t + rng.uniform(*TAKEOVER_AFTER)
    power_on = takeover + rng.uniform(*POWER_ON_AFTER)
    rejoin = power_on + rng.uniform(*REJOIN_AFTER)
    if rejoin > end or any(c[4] + 5 > t for c in model.cycles):
        return None
    free = _free_nodes(model, t)
    if len(free) < len(NODES):
        return None  # every other node must answer the take-over
    # The owner of an application most of the time: that is the case with
    # something to take over.
    owners = sorted({model.where[a] for a in APPS})
    node = rng.choice(owners) if rng.random() < 0.8 else rng.choice(free)
    cycle = len(model.cycles) + 1
    model.cycles.append((node, t, takeover, power_on, rejoin))
    for n in NODES:
        model.busy_until[n] = max(model.busy_until[n], takeover + 1)
    model.busy_until[node] = rejoin + 1
    return [{"at": t, "kind": "power-cycle", "node": node,
             "seconds": power_on - t, "cycle": cycle},
            {"at": takeover, "kind": "take-over", "node": node, "cycle": cycle},
            {"at": power_on, "kind": POWER_ON, "node": node, "cycle": cycle},
            {"at": rejoin, "kind": "rejoin", "node": node, "cycle": cycle}]


def _cycle_step(model: _Model, rng: random.Random, step: dict) -> dict:
    """A power cycle's later step, with the deployment it deploys."""
    node = step["node"]
    if step["kind"] == "take-over":
        # Its applications go to their standbys, each of which gets a new
        # standby among the live nodes.
        live = [n for n in NODES if n != node]
        model.down = (node,)
        for app in APPS:
            if model.where[app] == node:
                model.where[app] = model.standby[app]
            model.pick_standby(app, live)
        return dict(step, placement=model.placement())
    if step["kind"] == "rejoin":
        # A member again: a standby again, some of the time.
        model.down = ()
        for app in APPS:
            if model.where[app] != node and rng.random() < 0.5:
                model.standby[app] = node
        return dict(step, placement=model.placement())
    return step
