"""
The soak's checker: what must hold once every fault is healed and a final
deploy converged, as pure functions of what was observed (the writers'
histories, the rows and lines found, each node's state report, containers,
iptables, snapshots and processes).  Each returns its violations, one
line each; none means the promise held.
"""

from __future__ import annotations

import re
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from attrs import frozen

from flocker_async.volume import Snapshot, VolumeName, snapshots_to_prune

# A replica keeps its newest few snapshots after each receive
# (flocker_async.node._handoffs.REPLICA_SNAPSHOTS).
REPLICA_SNAPSHOTS = 3
GENERATED = "flocker-"


@frozen
class Window:
    """A take-over's stated loss window for one application: writes
    acknowledged from ``start`` (None: the deploy said it could not tell)
    until ``end`` (the old owner's power-off) may be lost."""

    app: str
    start: Optional[float]
    end: float
    cycle: int
    node: str

    def holds(self, t: float) -> bool:
        return (self.start is None or self.start <= t) and t <= self.end


@frozen
class WriteCheck:
    """How the acknowledged writes of one application fared."""

    app: str
    acknowledged: int
    lost: Tuple[int, ...]             # outside every stated window
    lost_in_window: Tuple[int, ...]   # inside one: reported, allowed
    duplicated: Tuple[Tuple[int, int], ...]   # (id, times present)
    unknown: Tuple[int, ...]          # present, never sent

    def violations(self) -> List[str]:
        problems = []
        if self.lost:
            problems.append("%s: %d acknowledged write(s) lost outside any stated "
                            "window: %s" % (self.app, len(self.lost), _ids(self.lost)))
        if self.duplicated:
            problems.append("%s: write(s) present more than once: %s" % (
                self.app, ", ".join("%d x%d" % d for d in self.duplicated[:20])))
        if self.unknown:
            problems.append("%s: write(s) present that no client sent: %s"
                            % (self.app, _ids(self.unknown)))
        return problems


def _ids(ids: Sequence[int], limit: int = 30) -> str:
    text = ", ".join(str(i) for i in ids[:limit])
    return text + (" ... (%d in all)" % (len(ids),) if len(ids) > limit else "")


def check_writes(app: str, acked: Mapping[int, Tuple[float, str]],
                 present: Mapping[int, int], windows: Iterable[Window],
                 highest_sent: int) -> WriteCheck:
    """
    ``acked``: id -> (time acknowledged, via); ``present``: id -> how many
    times it is in the final copy; ``windows``: the take-overs' stated
    windows of ``app``; ``highest_sent``: the highest id any client sent.
    """
    mine = [w for w in windows if w.app == app]
    lost, in_window = [], []
    for write_id, (when, _) in sorted(acked.items()):
        if present.get(write_id, 0):
            continue
        if any(w.holds(when) for w in mine):
            in_window.append(write_id)
        else:
            lost.append(write_id)
    duplicated = tuple(sorted((i, n) for i, n in present.items() if n > 1))
    unknown = tuple(sorted(i for i in present if i > highest_sent or i < 1))
    return WriteCheck(app, len(acked), tuple(lost), tuple(in_window),
                      duplicated, unknown)


def parse_acked_lines(text: str) -> Dict[int, int]:
    """The web application's ``acked`` file: id -> times it is there."""
    counts: Dict[int, int] = {}
    for line in text.splitlines():
        line = line.strip()
        if line.isdigit():
            counts[int(line)] = counts.get(int(line), 0) + 1
    return counts


def parse_row_counts(text: str) -> Dict[int, int]:
    """``SELECT id, COUNT(*) ... GROUP BY id`` output: id -> count."""
    counts: Dict[int, int] = {}
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) == 2 and fields[0].isdigit() and fields[1].isdigit():
            counts[int(fields[0])] = int(fields[1])
    return counts


# --- where things run ------------------------------------------------------------

def check_containers(containers: Mapping[str, Sequence[str]],
                     placement: Mapping[str, str]) -> List[str]:
    """``containers``: node -> names of its running containers;
    ``placement``: app -> the node it is deployed to."""
    problems = []
    for app, where in sorted(placement.items()):
        name = "flocker-" + app
        running = sorted(n for n, names in containers.items() if name in names)
        if where not in running:
            problems.append("%s is deployed to %s but does not run there" % (app, where))
        for node in running:
            if node != where:
                problems.append("%s runs on %s, which it is not deployed to"
                                % (app, node))
    known = {"flocker-" + app for app in placement}
    for node, names in sorted(containers.items()):
        for name in sorted(names):
            if name.startswith("flocker-") and name not in known:
                problems.append("%s runs container %s of no deployed application"
                                % (node, name))
    return problems


def check_writable(states: Mapping[str, dict], addresses: Mapping[str, str],
                   placement: Mapping[str, str]) -> List[str]:
    """Exactly one writable copy of each volume, on the node its
    application is deployed to, as every node's ``state`` reports; only
    that node names itself the owner."""
    problems = []
    for app, where in sorted(placement.items()):
        writable, claims = [], []
        for node, state in sorted(states.items()):
            for volume in state.get("volumes", []):
                if volume.get("name") != app:
                    continue
                if volume.get("writable"):
                    writable.append(node)
                if volume.get("owner") == addresses[node]:
                    claims.append(node)
        if writable != [where]:
            problems.append("volume %s: writable on %s, expected on %s only" % (
                app, ", ".join(writable) or "no node", where))
        if claims != [where]:
            problems.append("volume %s: %s name themselves its owner, expected %s "
                            "only" % (app, ", ".join(claims) or "no nodes", where))
    return problems


def check_epochs(states: Mapping[str, dict], placement: Mapping[str, str]) -> List[str]:
    """The live copy has the highest ownership epoch of every copy."""
    problems = []
    for app, where in sorted(placement.items()):
        epochs = {node: v.get("epoch") for node, state in states.items()
                  for v in state.get("volumes", []) if v.get("name") == app}
        if where in epochs and epochs[where] is not None:
            higher = {n: e for n, e in epochs.items()
                      if e is not None and e > epochs[where]}
            if higher:
                problems.append("volume %s: the live copy on %s has epoch %s, lower "
                                "than %s" % (app, where, epochs[where], higher))
    return problems


# --- routing ------------------------------------------------------------------------

_RULE = re.compile(r'^-A (?P<chain>\S+) .*--dport (?P<port>\d+) .*--comment '
                   r'"?flocker (?P<app>[^"\s]+)"? .*-j (?P<target>\S+)'
                   r'(?: --to-destination (?P<to>\S+))?')


def routing_rules(saved: str) -> List[Tuple[str, str, int, str, Optional[str]]]:
    """(chain, app, port, target, destination) of every flocker rule in
    ``iptables-save`` output (any tables)."""
    rules = []
    for line in saved.splitlines():
        match = _RULE.match(line)
        if match:
            rules.append((match.group("chain"), match.group("app"),
                          int(match.group("port")), match.group("target"),
                          match.group("to")))
    return rules


def check_routes(node: str, saved: str, placement: Mapping[str, str],
                 addresses: Mapping[str, str], ports: Mapping[str, int]) -> List[str]:
    """``node``'s nat rules forward each application's port to the node
    running it (none on that node itself); nothing is held any more."""
    problems = []
    rules = routing_rules(saved)
    for app, where in sorted(placement.items()):
        for chain in ("FLOCKER-PREROUTING", "FLOCKER-OUTPUT"):
            targets = sorted(to or "" for c, a, port, target, to in rules
                             if c == chain and a == app and target == "DNAT"
                             and port == ports[app])
            expected = [] if node == where else [addresses[where]]
            if targets != expected:
                problems.append("%s: %s forwards %s (port %d) to %s, expected %s"
                                % (node, chain, app, ports[app],
                                   ", ".join(targets) or "nowhere",
                                   ", ".join(expected) or "nowhere"))
    for chain, app, port, target, _ in rules:
        if chain.startswith("FLOCKER-HOLD") and target == "DROP":
            problems.append("%s: port %d of %s is still held (%s)" % (
                node, port, app, chain))
        if app not in placement:
            problems.append("%s: a %s rule for %s, which is deployed nowhere"
                            % (node, chain, app))
    return problems


# --- snapshots -----------------------------------------------------------------------

@frozen
class Copy:
    """One node's copy of a volume: its snapshots oldest first (names after
    the @), whether it is the live (owner's, writable) copy."""

    node: str
    live: bool
    snapshots: Tuple[str, ...]


def check_retention(app: str, copies: Sequence[Copy]) -> List[str]:
    """
    No copy keeps snapshots retention would have removed: a replica keeps
    its newest ``REPLICA_SNAPSHOTS`` generated ones; the live copy keeps
    only what some other copy still needs as the base of its next
    increment (``snapshots_to_prune`` of every other copy's snapshots:
    what it would prune must be gone).
    """
    problems = []
    live = [c for c in copies if c.live]
    for copy in copies:
        generated = [s for s in copy.snapshots if s.startswith(GENERATED)]
        if not copy.live and len(generated) > REPLICA_SNAPSHOTS:
            problems.append("volume %s: the replica on %s keeps %d generated "
                            "snapshots, retention keeps %d" % (
                                app, copy.node, len(generated), REPLICA_SNAPSHOTS))
    for copy in live:
        others = [c for c in copies if c is not copy]
        if not others:
            continue
        volume = VolumeName(app)
        local = [Snapshot(volume, s) for s in copy.snapshots]
        doomed = snapshots_to_prune(
            local, *[[Snapshot(volume, s) for s in other.snapshots] for other in others])
        if doomed:
            problems.append("volume %s: the live copy on %s keeps %d snapshot(s) "
                            "no other copy needs: %s" % (
                                app, copy.node, len(doomed),
                                ", ".join(s.name for s in doomed[:5])))
    return problems


def check_growth(app: str, before: Sequence[Copy], after: Sequence[Copy],
                 seconds: float) -> List[str]:
    """
    Once everything settled, the live copy's snapshots must not keep
    piling up: each replication round adds one and prunes what no other
    copy needs.  ``before`` and ``after``: the copies ``seconds`` apart
    (several rounds).  More than one snapshot more is growth without
    bound; the copy whose newest snapshot in common with the live copy is
    the oldest is what holds them back.
    """
    old = {c.node: c for c in before if c.live}
    problems = []
    for copy in after:
        if not copy.live or copy.node not in old:
            continue
        added = len(copy.snapshots) - len(old[copy.node].snapshots)
        if added <= 1 or len(copy.snapshots) <= REPLICA_SNAPSHOTS + 2:
            continue
        pinning = []
        for other in after:
            if other is copy:
                continue
            common = [s for s in other.snapshots if s in set(copy.snapshots)]
            position = copy.snapshots.index(common[-1]) if common else None
            if position is not None:
                pinning.append((position, other.node, len(copy.snapshots) - position))
        pinned = min(pinning) if pinning else None
        problems.append(
            "volume %s: the live copy on %s keeps ever more snapshots: %d, then %d "
            "%.0f s later%s" % (
                app, copy.node, len(old[copy.node].snapshots), len(copy.snapshots),
                seconds, "; the copy on %s shares only its %dth newest, so every "
                "snapshot since is kept" % (pinned[1], pinned[2]) if pinned else ""))
    return problems


# --- processes -------------------------------------------------------------------------

@frozen
class Process:
    pid: int
    start: str           # start time in clock ticks (with the pid: who it is)
    parent: int
    argv: Tuple[str, ...]

    @property
    def name(self) -> str:
        return self.argv[0].rsplit("/", 1)[-1] if self.argv else "?"

    def line(self) -> str:
        return "%d (parent %d): %s" % (self.pid, self.parent, " ".join(self.argv)[:200])


def lingering(before: Iterable[Process], after: Iterable[Process]) -> List[Process]:
    """The processes seen both times (the same pid and start time)."""
    seen = {(p.pid, p.start) for p in before}
    return [p for p in after if (p.pid, p.start) in seen]


def check_orphans(before: Sequence[Process], after: Sequence[Process],
                  pools: Sequence[str], addresses: Sequence[str],
                  seconds: float) -> List[str]:
    """``zfs`` processes of the lab's pools, and ``ssh`` (or ``docker``
    clients) naming a lab address or socket, that still run ``seconds``
    later: nothing the nodes start lives that long once they settled."""
    problems = []
    for process in lingering(before, after):
        text = " ".join(process.argv)
        if process.name == "zfs" and any(
                a == p or a.startswith(p + "/") or a.startswith(p + "@")
                for a in process.argv for p in pools):
            kind = "zfs"
        elif process.name in ("ssh", "sshd", "scp") and any(a in text for a in addresses):
            kind = "ssh"
        else:
            continue
        problems.append("orphan %s process, still running after %.0f s: %s"
                        % (kind, seconds, process.line()))
    return problems


def check_docker_processes(node: str, running: Set[str], shims: Mapping[int, str],
                           cgroup_pids: Mapping[int, Optional[str]],
                           dockerds: Sequence[int], clients: Sequence[Process]) -> List[str]:
    """
    ``node``: one dockerd (``dockerds``: its processes); every containerd
    shim (pid -> container id) and every process in the node's cgroups
    (pid -> container id) belongs to a running container (``running``:
    full ids); no docker client lingers (``clients``).
    """
    problems = []
    if len(dockerds) != 1:
        problems.append("%s: %d dockerd processes (%s), expected 1"
                        % (node, len(dockerds), ", ".join(map(str, dockerds))))
    for pid, container in sorted(shims.items()):
        if container not in running:
            problems.append("%s: orphan containerd shim %d of container %s, which "
                            "does not run" % (node, pid, container[:12]))
    for pid, container in sorted(cgroup_pids.items()):
        if container is not None and container not in running:
            problems.append("%s: process %d runs in the cgroup of container %s, "
                            "which does not run" % (node, pid, container[:12]))
    for process in clients:
        problems.append("%s: orphan docker client: %s" % (node, process.line()))
    return problems


# --- the summary ------------------------------------------------------------------------

def summary_lines(seed: int, operations: int, faults: Mapping[str, int],
                  acknowledged: int, lost: int, longest: float) -> List[str]:
    """The last two lines of a soak: faults by kind, then the figures."""
    kinds = ", ".join("%s %d" % (kind, n) for kind, n in sorted(faults.items()) if n)
    return ["soak: faults by kind: %s" % (kinds or "none",),
            "soak: %d seed, %d operations, %d faults, %d acknowledged writes, %d lost, "
            "longest unavailability %.1f s" % (
                seed, operations, sum(faults.values()), acknowledged, lost, longest)]
