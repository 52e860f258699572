"""
One soak: set the applications up, write continuously while the schedule
runs (moves, take-overs, faults, each at its planned moment), heal
everything, deploy once more, and check the final state against the
history.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
import traceback
from collections import Counter
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from flocker_async.lab import LabError

from . import checker, nemesis, observe
from .checker import Copy, Window
from .clients import DbWriter, History, WebWriter, mysql, write_once
from .cluster import (
    APPEND_CGI, DB_SCHEMA, INTERVALS, PORTS, Deploy, stated_windows)
from .schedule import APPS, POWER_ON, Operation, Placement, Schedule

# A move that could not start within this long of its moment (deploys
# run one at a time) is skipped: the next deploy carries the whole state.
LATE = 30.0
SETTLE = 120.0
ORPHAN_WINDOW = 20.0
FINAL_DEPLOYS = 4


class Soak:
    def __init__(self, lab, schedule: Schedule, workdir: str,
                 say: Callable[[str], None] = print, tolerate: Sequence[str] = ()):
        self.lab = lab
        self.schedule = schedule
        self.workdir = workdir
        self.say = say
        self.nodes = {n.name: n for n in lab.nodes}
        self.addresses = {name: n.address for name, n in self.nodes.items()}
        self.histories = {app: History(app) for app in APPS}
        self.writers: List = []
        self.records: Dict[int, dict] = {}
        self.violations: List[Tuple[Optional[int], str]] = []
        self.deploy_lock = threading.Lock()
        self.node_locks = {name: threading.Lock() for name in self.nodes}
        self.stop = threading.Event()
        self.chaos_over = threading.Event()
        self.power_offs: Dict[int, Tuple[str, float]] = {}
        self.takeovers_done: Dict[int, threading.Event] = {
            op.cycle: threading.Event() for op in schedule.operations
            if op.cycle is not None}
        self.cycle_of: Dict[str, int] = {}
        # (cycle, app, window start, deploy tag, it said it took over)
        self.statements: List[Tuple[int, str, Optional[float], str, bool]] = []
        self.t0 = 0.0
        self.chaos_end = 0.0
        self.lock = threading.Lock()
        self.deploys = 0
        self.ids = {app: itertools.count(10_000_000) for app in APPS}
        self.summary: List[str] = []
        self.restarting_zfs = threading.Event()
        self.zfs_crashes: List[Tuple[float, str]] = []
        # Checks whose violations are known bugs, reported but not failed.
        self.tolerate = set(tolerate)
        self.tolerated: List[str] = []
        self.ownership: Optional[observe.OwnershipLog] = None

    # --- reporting ---------------------------------------------------------------

    def violation(self, message: str, op: Optional[Operation] = None,
                  check: str = "") -> None:
        if check and check in self.tolerate:
            with self.lock:
                self.tolerated.append(message)
            self.say("KNOWN (%s tolerated): %s" % (check, message))
            return
        with self.lock:
            self.violations.append((op.index if op else None, message))
            first = op is not None and sum(1 for i, _ in self.violations if i) <= 3
        self.say("VIOLATION%s: %s" % (" at #%d" % (op.index,) if op else "", message))
        if first:
            # Mid-run: the seed, the schedule so far and each node's state now.
            self.say("  seed %d; the schedule up to #%d:" % (self.schedule.seed, op.index))
            for line in self.executed_lines(op.index):
                self.say(line)
            self.say("  each node's state now:")
            for line in self.node_report():
                self.say(line)

    def elapsed(self) -> float:
        return time.time() - self.t0

    def record(self, op: Operation, **fields) -> None:
        with self.lock:
            self.records.setdefault(op.index, {"op": op.to_document()}).update(fields)

    def executed_lines(self, upto: Optional[int] = None) -> List[str]:
        """The schedule with what each operation did, up to ``upto``."""
        lines = []
        for op in self.schedule.operations:
            if upto is not None and op.index > upto:
                break
            rec = self.records.get(op.index, {})
            when = ("started %+.1f s" % (rec["started"] - self.t0,)
                    if "started" in rec else "not started")
            lines.append("  %s\n      %s: %s" % (op.describe(), when,
                                                 rec.get("outcome", "-")))
        return lines

    def node_report(self) -> List[str]:
        lines = []
        for name in sorted(self.nodes):
            document, why = observe.state(self.lab, name)
            lines.append("  %s (%s)%s" % (name, self.addresses[name], "" if
                                          self.lab.is_powered_on(name) else " powered off"))
            lines.append(observe.summarise_state(document, why))
            try:
                names, _ = observe.running_containers(self.lab, name)
                lines.append("    containers: %s" % (", ".join(names) or "none",))
            except Exception as e:
                lines.append("    containers: %s" % (e,))
        return lines

    # --- setting up ------------------------------------------------------------------

    def deploy(self, placement: Placement, tag: str, op: Optional[Operation] = None) -> Deploy:
        """Run one flocker-deploy to its end; checks what every deploy
        must keep (no traceback, within its own timeouts)."""
        with self.lock:
            self.deploys += 1
            tag = "%03d-%s" % (self.deploys, tag)
        run = Deploy(self.lab, self.workdir, tag, placement, self.addresses)
        status = run.wait()
        output = run.output
        if run.outlived:
            self.violation("flocker-deploy %s still ran after %d s (its own timeout is "
                           "%d s); killed.  Its output: %s" % (
                               tag, int(run.ended - run.started), 15, run.log), op)
        elif status not in (0, 1, 2):
            self.violation("flocker-deploy %s exited %s (see %s)" % (tag, status, run.log), op)
        if "Traceback" in output:
            self.violation("flocker-deploy %s printed a traceback (see %s)" % (tag, run.log), op)
        if placement.down:
            cycle = self.cycle_of.get(placement.down[0])
            for app, start in stated_windows(output, run.started).items():
                took = ("took over volume %s" % (app,)) in output
                with self.lock:
                    self.statements.append((cycle or 0, app, start, tag, took))
        return run

    def setup(self) -> None:
        initial = self.schedule.initial
        for attempt in range(3):
            run = self.deploy(initial, "initial")
            if run.status == 0:
                break
            self.say("initial deploy failed (exit %s), again:\n%s" % (run.status, run.output))
        else:
            raise SoakError("the initial deploy failed:\n%s" % (run.output,))
        db = self.addresses[initial.node_of("db")]
        deadline = time.monotonic() + 240
        while True:
            result = mysql(db, DB_SCHEMA)
            if result.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise SoakError("MariaDB on %s never took the schema: %s"
                                % (db, result.stderr))
            time.sleep(1)
        web = self.nodes[initial.node_of("web")]
        mount = os.path.join(web.mount_root, "web")
        os.makedirs(os.path.join(mount, "cgi-bin"), exist_ok=True)
        script = os.path.join(mount, "cgi-bin", "w")
        with open(script, "w") as f:
            f.write(APPEND_CGI)
        os.chmod(script, 0o755)
        for app in APPS:
            error = write_once(app, self.addresses[initial.node_of(app)],
                               self.ids[app], self.histories[app], timeout=120)
            if error is not None:
                raise SoakError("%s took no write after the initial deploy: %s"
                                % (app, error))
        # The first replication rounds, so the first take-over has a copy.
        self.wait_replicated(initial, timeout=90)

    def wait_replicated(self, placement: Placement, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        since = time.time()
        while time.monotonic() < deadline:
            done = True
            for app in APPS:
                owner = placement.node_of(app)
                document, _ = observe.state(self.lab, owner)
                statuses = (document or {}).get("replication", {}).get(app, [])
                standby = self.addresses[placement.standby_of(app)]
                if not any(s.get("standby") == standby and (s.get("last_success") or 0) > since
                           for s in statuses):
                    done = False
            if done:
                return
            time.sleep(1)
        self.say("  (replication to the standbys not seen within %d s)" % (timeout,))

    # --- the chaos ------------------------------------------------------------------------

    def watch_zfs_fuse(self) -> None:
        """
        zfs-fuse is the machine's, not the system under test: when it dies
        (it has segfaulted here under the soak's load) it is started again
        as its supervisor would, and the report says so.  Not while the
        nemesis restarts it on purpose.
        """
        from flocker_async.lab._zfs import _zfs_fuse_pids, restart_if_wedged
        missing = 0
        while not self.stop.wait(1.0):
            if self.restarting_zfs.is_set() or _zfs_fuse_pids():
                missing = 0
                continue
            missing += 1
            if missing < 3:
                continue
            when = time.time()
            kernel = observe.kernel_lines("zfs-fuse")
            self.say("%+7.1f s  zfs-fuse is not running (the kernel's log: %s); "
                     "starting it, as its supervisor would" % (
                         when - self.t0, kernel[-1] if kernel else "nothing"))
            try:
                restart_if_wedged(progress=lambda line: self.say("  lab: " + line))
            except Exception as e:
                self.say("  starting zfs-fuse failed: %s" % (e,))
            with self.lock:
                self.zfs_crashes.append((when, kernel[-1] if kernel else ""))
            missing = 0

    def run_schedule(self) -> None:
        addresses = [self.addresses[n] for n in sorted(self.nodes)]
        seed = self.schedule.seed
        self.writers = [
            DbWriter(self.histories["db"], addresses, seed * 7 + 1).start(),
            WebWriter(self.histories["web"], addresses, seed * 7 + 2).start()]
        self.t0 = time.time()
        watchdog = threading.Thread(target=self.watch_zfs_fuse, daemon=True,
                                    name="zfs-fuse watchdog")
        watchdog.start()
        threads = []
        for op in self.schedule.operations:
            self.stop.wait(max(0.0, self.t0 + op.at - time.time()))
            if self.stop.is_set():
                break
            thread = threading.Thread(target=self.execute, args=(op,), daemon=True,
                                      name="op-%d" % (op.index,))
            thread.start()
            threads.append(thread)
        self.stop.wait(max(0.0, self.t0 + self.schedule.duration - time.time()))
        self.chaos_over.set()
        for thread in threads:
            thread.join()
        self.chaos_end = time.time()
        for writer in self.writers:
            writer.stop()
        self.stop.set()
        watchdog.join(60)

    def execute(self, op: Operation) -> None:
        started = time.time()
        self.record(op, started=started)
        try:
            outcome = self._execute(op)
        except Exception as e:
            outcome = "failed: %s: %s" % (type(e).__name__, e)
            self.violation("%s on %s failed: %s: %s\n%s" % (
                op.kind, op.node, type(e).__name__, e, traceback.format_exc()), op)
        self.record(op, outcome=outcome, ended=time.time())
        self.say("%+7.1f s  #%-3d %-16s %s%s" % (
            started - self.t0, op.index, op.kind, op.node or "",
            ": " + outcome))

    def _execute(self, op: Operation) -> str:
        if op.is_deploy:
            return self._deploy_op(op)
        if op.kind == "power-cycle":
            with self.node_locks[op.node]:
                self.cycle_of[op.node] = op.cycle
                did = nemesis.power_off(self.lab, op.node)
                self.power_offs[op.cycle] = (op.node, time.time())
            return did
        if op.kind == POWER_ON:
            # Not before its take-over ran: a node back before the --down
            # deploy applied could serve writes it then sets aside, which
            # no stated window covers (the soak cannot tell who served).
            waited = time.time()
            self.takeovers_done[op.cycle].wait(600)
            waited = time.time() - waited
            with self.node_locks[op.node]:
                did = nemesis.power_on(self.lab, op.node)
            return did + ("; after waiting %.1f s for the take-over" % (waited,)
                          if waited > 1 else "")
        if op.node is None:
            self.restarting_zfs.set()
            try:
                return nemesis.run_fault(self.lab, op, self.stop)
            finally:
                self.restarting_zfs.clear()
        with self.node_locks[op.node]:
            if not self.lab.is_powered_on(op.node):
                return "skipped: %s is powered off" % (op.node,)
            return nemesis.run_fault(self.lab, op, self.stop)

    def _deploy_op(self, op: Operation) -> str:
        try:
            return self._deploy_op_locked(op)
        finally:
            if op.kind == "take-over":
                self.takeovers_done[op.cycle].set()

    def _deploy_op_locked(self, op: Operation) -> str:
        with self.deploy_lock:
            late = time.time() - (self.t0 + op.at)
            if op.kind == "move" and (self.chaos_over.is_set() or late > LATE):
                return "skipped: started %.0f s late, after the deploy before it" % (late,)
            if self.chaos_over.is_set():
                return "skipped: the chaos was over"
            run = self.deploy(op.placement, op.kind, op)
        took = [line.split("take-over: ", 1)[1] for line in run.output.splitlines()
                if line.startswith("take-over: ")]
        failed = [line for line in run.output.splitlines()
                  if line.startswith("flocker-deploy:")]
        return "exit %d after %.1f s%s%s (%s)" % (
            run.status, run.ended - run.started,
            "; " + " | ".join(took) if took else "",
            "; " + " | ".join(failed)[:400] if failed else "", os.path.basename(run.log))

    # --- healing and the final state ------------------------------------------------

    def heal(self) -> None:
        """zfs-fuse running, every node on and connected, pools emptied,
        everything running."""
        from flocker_async.lab._zfs import restart_if_wedged
        restart_if_wedged(progress=lambda line: self.say("  heal: " + line))
        for name in sorted(self.nodes):
            if self.lab.is_partitioned(name):
                self.lab.heal(name)
            nemesis.empty_pool(self.nodes[name].pool)
            did = self.lab.power_on(name)
            if did:
                self.say("  heal %s: %s" % (name, "; ".join(did)))

    def final_placement(self) -> Placement:
        deploys = [op for op in self.schedule.operations if op.is_deploy]
        last = deploys[-1].placement if deploys else self.schedule.initial
        return Placement(last.nodes, last.standby, ())

    def converge(self, placement: Placement) -> bool:
        for attempt in range(FINAL_DEPLOYS):
            run = self.deploy(placement, "final")
            self.say("  final deploy %d: exit %d after %.1f s" % (
                attempt + 1, run.status, run.ended - run.started))
            if run.status == 0:
                return True
            self.say("    " + "\n    ".join(run.output.splitlines()[-8:]))
            time.sleep(10)
        self.violation("the final deploy never converged (%d attempts; see the "
                       "deploy-*-final logs in %s)" % (FINAL_DEPLOYS, self.workdir))
        return False

    def settled_problems(self, placement: Placement) -> Tuple[List[str], Dict[str, dict]]:
        """What the placement checks find now, and the states asked."""
        where = dict(placement.nodes)
        problems: List[str] = []
        states = {}
        containers = {}
        for name in sorted(self.nodes):
            document, why = observe.state(self.lab, name)
            if document is None:
                problems.append("%s does not answer state: %s" % (name, why))
            else:
                states[name] = document
            try:
                containers[name] = observe.running_containers(self.lab, name)[0]
                problems.extend(checker.check_routes(
                    name, observe.iptables(self.lab, name), where, self.addresses, PORTS))
            except (LabError, OSError) as e:
                problems.append("%s: %s" % (name, e))
        problems.extend(checker.check_containers(containers, where))
        problems.extend(checker.check_writable(states, self.addresses, where))
        problems.extend(checker.check_epochs(states, where))
        return problems, states

    def check(self, placement: Placement) -> Dict[str, checker.WriteCheck]:
        where = dict(placement.nodes)
        deadline = time.monotonic() + SETTLE
        started = time.monotonic()
        while True:
            problems, states = self.settled_problems(placement)
            if not problems or time.monotonic() > deadline:
                break
            time.sleep(2)
        for problem in problems:
            self.violation("after healing and a final deploy (%.0f s later): %s"
                           % (time.monotonic() - started, problem))
        before = observe.processes()
        orphans_since = time.monotonic()
        # Every application takes a write through every node.
        for app in APPS:
            for name in sorted(self.nodes):
                error = write_once(app, self.addresses[name], self.ids[app],
                                   self.histories[app], timeout=30)
                if error is not None:
                    self.violation("%s takes no write through %s after healing: %s"
                                   % (app, name, error))
        results = {app: self.check_writes(app, where[app]) for app in APPS}
        self.check_retention(where)
        time.sleep(max(0.0, orphans_since + ORPHAN_WINDOW - time.monotonic()))
        after = observe.processes()
        pools = [n.pool for n in self.nodes.values()]
        for problem in checker.check_orphans(before, after, pools,
                                             list(self.addresses.values()),
                                             ORPHAN_WINDOW):
            self.violation(problem)
        for name, node in sorted(self.nodes.items()):
            try:
                _, ids = observe.running_containers(self.lab, name)
            except (LabError, OSError) as e:
                self.violation("%s: %s" % (name, e))
                continue
            lingering_clients = checker.lingering(
                observe.docker_clients(node, before), observe.docker_clients(node, after))
            for problem in checker.check_docker_processes(
                    name, set(ids), observe.shims(node, after),
                    observe.cgroup_containers(node), observe.dockerds(node, after),
                    lingering_clients):
                self.violation(problem)
        return results

    def windows(self) -> List[Window]:
        """The stated window of each forced take-over: the one of the deploy
        that said it took the volume over, else the widest stated."""
        found = []
        by_key: Dict[Tuple[int, str], List[Tuple[Optional[float], bool]]] = {}
        for cycle, app, start, _, took in self.statements:
            by_key.setdefault((cycle, app), []).append((start, took))
        for (cycle, app), stated in sorted(by_key.items(), key=lambda kv: kv[0]):
            if cycle not in self.power_offs:
                continue
            node, off = self.power_offs[cycle]
            took = [s for s, t in stated if t]
            if took:
                start = took[0]
            else:
                starts = [s for s, _ in stated]
                start = None if None in starts else min(s for s in starts if s is not None)
            found.append(Window(app, start, off, cycle, node))
        return found

    def check_writes(self, app: str, where: str) -> checker.WriteCheck:
        history = self.histories[app]
        address = self.addresses[where]
        present: Dict[int, int] = {}
        if app == "db":
            result = mysql(address, "SELECT id, COUNT(*) FROM soak.rows GROUP BY id;",
                           timeout=120)
            if result.returncode != 0:
                self.violation("db: the rows cannot be read through %s: %s"
                               % (address, result.stderr.strip()))
            present = checker.parse_row_counts(result.stdout)
            total = sum(present.values())
            for name in sorted(self.nodes):
                other = mysql(self.addresses[name], "SELECT COUNT(*) FROM soak.rows;",
                              timeout=60)
                if other.returncode != 0 or other.stdout.strip() != str(total):
                    self.violation("db: %s counts %s rows, %s counts %d" % (
                        name, other.stdout.strip() or other.stderr.strip(), where, total))
        else:
            path = os.path.join(self.nodes[where].mount_root, "web", "acked")
            try:
                with open(path) as f:
                    present = checker.parse_acked_lines(f.read())
            except OSError as e:
                self.violation("web: %s cannot be read: %s" % (path, e))
        result = checker.check_writes(app, dict(history.acked), present,
                                      self.windows(), history.highest_sent)
        for problem in result.violations():
            self.violation(problem)
        return result

    def lost_details(self, app: str, lost) -> List[str]:
        """Each write lost outside a window: when, through which node; who
        held the volume around then; where else the write is (web)."""
        name_of = {a: n for n, a in self.addresses.items()}
        acked = self.histories[app].acked
        lines = ["%s: the writes lost outside any stated window:" % (app,)]
        for write_id in lost:
            when, via = acked[write_id]
            lines.append("  %d acknowledged at %s (%+.1f s) through %s" % (
                write_id, _clock(when), when - self.t0, name_of.get(via, via)))
        if app == "web":
            for line in self.find_web_writes(lost):
                lines.append("  " + line)
        if self.ownership is not None:
            first = min(acked[i][0] for i in lost)
            last = max(acked[i][0] for i in lost)
            lines.append("  the copies of %s from 30 s before the first to 60 s after "
                         "the last (each change, sampled every second):" % (app,))
            for t, dataset, value in self.ownership.changes:
                if first - 30 <= t <= last + 60 and \
                        dataset.split("/", 1)[1].split(".", 1)[0] == app:
                    lines.append("    %s (%+.1f s) %s: %s" % (
                        _clock(t), t - self.t0, dataset, value))
        return lines

    def find_web_writes(self, lost) -> List[str]:
        """Which copies of web (live, replicas, set aside) hold ``lost``."""
        lines = []
        for name, node in sorted(self.nodes.items()):
            document, _ = observe.state(self.lab, name)
            places = [("copy", os.path.join(node.mount_root, "web"))]
            places += [("set-aside " + c["label"], c["mountpoint"])
                       for c in (document or {}).get("set_aside", [])
                       if c.get("volume") == "web"]
            for what, mountpoint in places:
                try:
                    with open(os.path.join(mountpoint, "acked")) as f:
                        present = checker.parse_acked_lines(f.read())
                except OSError as e:
                    lines.append("%s %s: %s" % (name, what, e))
                    continue
                found = [i for i in lost if i in present]
                lines.append("%s %s holds %d of them%s" % (
                    name, what, len(found), ": %s" % (found[:10],) if found else ""))
        return lines

    def copies(self, app: str, where: Dict[str, str]) -> List[Copy]:
        found = []
        for name, node in sorted(self.nodes.items()):
            dataset = "%s/%s" % (node.pool, app)
            if observe.copy_properties(dataset) is not None:
                found.append(Copy(name, name == where[app],
                                  tuple(observe.snapshots(dataset))))
        return found

    def check_retention(self, where: Dict[str, str]) -> None:
        """Polled for a while: a replication round may be between its
        snapshot and its pruning when looked at.  Then whether the live
        copies keep adding snapshots, over several rounds."""
        started = time.monotonic()
        first = {app: self.copies(app, where) for app in APPS}
        deadline = started + 3 * max(INTERVALS.values()) + 10
        while True:
            latest = {app: self.copies(app, where) for app in APPS}
            problems = [p for app in APPS for p in checker.check_retention(app, latest[app])]
            if not problems or time.monotonic() > deadline:
                break
            time.sleep(2)
        # Several rounds of each volume since the first look.
        time.sleep(max(0.0, started + 4 * max(INTERVALS.values()) + 1 - time.monotonic()))
        latest = {app: self.copies(app, where) for app in APPS}
        self.say("snapshots: " + "; ".join("%s: %s" % (app, ", ".join(
            "%s %d%s" % (c.node, len(c.snapshots), " (live)" if c.live else "")
            for c in latest[app])) for app in APPS))
        for problem in problems:
            self.violation(problem)
        for app in APPS:
            for problem in checker.check_growth(app, first[app], latest[app],
                                                time.monotonic() - started):
                self.violation(problem, check="snapshot-growth")

    # --- the whole run --------------------------------------------------------------------

    def run(self) -> int:
        self.say("\n".join(self.schedule.lines()))
        with open(os.path.join(self.workdir, "schedule.json"), "w") as f:
            json.dump(self.schedule.to_document(), f, indent=1)
        self.ownership = observe.OwnershipLog([n.pool for n in self.nodes.values()]).start()
        try:
            return self._run()
        finally:
            self.ownership.stop()

    def _run(self) -> int:
        self.say("setting up: %s" % (self.schedule.initial.describe(),))
        self.setup()
        self.say("chaos for %.0f s" % (self.schedule.duration,))
        self.run_schedule()
        self.say("healing every node")
        self.heal()
        placement = self.final_placement()
        self.say("final deploy: %s" % (placement.describe(),))
        results: Dict[str, checker.WriteCheck] = {}
        if self.converge(placement):
            results = self.check(placement)
        return self.report(results)

    def report(self, results: Dict[str, checker.WriteCheck]) -> int:
        executed = [op for op in self.schedule.operations
                    if "started" in self.records.get(op.index, {})
                    and not str(self.records[op.index].get("outcome", "")).startswith(
                        "skipped")]
        faults = Counter(op.kind for op in executed if op.is_fault)
        acked = sum(len(h.acked) for h in self.histories.values())
        lost = sum(len(r.lost) for r in results.values())
        in_window = sum(len(r.lost_in_window) for r in results.values())
        gaps = {app: h.longest_gap(self.t0, self.chaos_end or time.time())
                for app, h in self.histories.items()}
        longest = max(g for g, _ in gaps.values()) if gaps else 0.0
        self.say("")
        self.say("writes: " + "; ".join(
            "%s %d acknowledged of %d sent, longest without one %.1f s (from %+.1f s)" % (
                app, len(h.acked), h.attempts, gaps[app][0], gaps[app][1] - self.t0)
            for app, h in sorted(self.histories.items())))
        for window in self.windows():
            lost_here = [i for app, r in results.items() if app == window.app
                         for i in r.lost_in_window
                         if window.holds(self.histories[app].acked[i][0])]
            self.say("take-over of %s (power cycle %d of %s): stated window %s to %s, "
                     "%d acknowledged write(s) lost in it" % (
                         window.app, window.cycle, window.node,
                         time.strftime("%H:%M:%S", time.localtime(window.start))
                         if window.start else "unknown",
                         time.strftime("%H:%M:%S", time.localtime(window.end)),
                         len(lost_here)))
        if in_window:
            self.say("lost inside stated take-over windows (allowed): %d" % (in_window,))
        for when, kernel in self.zfs_crashes:
            self.say("zfs-fuse died at %+.1f s (%s) and was started again; its mounts "
                     "died with it, as when it is restarted" % (
                         when - self.t0, kernel or "no kernel log line"))
        for app, result in sorted(results.items()):
            if result.lost:
                for line in self.lost_details(app, result.lost):
                    self.say(line)
        if not results:
            self.violation("the final state was not checked (no converged deploy)")
        report = {
            "seed": self.schedule.seed, "duration": self.schedule.duration,
            "schedule": self.schedule.to_document(),
            "executed": {str(k): v for k, v in self.records.items()},
            "violations": [{"at": i, "message": m} for i, m in self.violations],
            "tolerated": list(self.tolerated),
            "zfs_fuse_crashes": [list(c) for c in self.zfs_crashes],
            "writes": {app: {"acknowledged": len(h.acked), "sent": h.attempts,
                             "lost": list(results[app].lost) if app in results else None,
                             "lost_in_window": list(results[app].lost_in_window)
                             if app in results else None,
                             "longest_unavailability_s": round(gaps[app][0], 2)}
                       for app, h in self.histories.items()},
            "windows": [{"app": w.app, "start": w.start, "end": w.end, "cycle": w.cycle,
                         "node": w.node} for w in self.windows()],
            "acked": {app: {str(i): list(v) for i, v in sorted(h.acked.items())}
                      for app, h in self.histories.items()},
            "ownership": [list(c) for c in (self.ownership.changes if self.ownership else [])],
        }
        with open(os.path.join(self.workdir, "report.json"), "w") as f:
            json.dump(report, f, indent=1, sort_keys=True)
        if self.tolerated:
            self.say("")
            self.say("%d known problem(s) tolerated (--tolerate %s):" % (
                len(self.tolerated), ",".join(sorted(self.tolerate))))
            for message in self.tolerated:
                self.say("  - " + message)
        if self.violations:
            self.say("")
            self.say("%d VIOLATION(S), seed %d:" % (len(self.violations),
                                                    self.schedule.seed))
            for index, message in self.violations:
                self.say("  - %s%s" % ("(during #%d) " % index if index else "", message))
            self.say("the schedule as run (seed %d):" % (self.schedule.seed,))
            for line in self.executed_lines():
                self.say(line)
            self.say("each node's state now:")
            for line in self.node_report():
                self.say(line)
            self.say("logs, deploy outputs and report.json: %s" % (self.workdir,))
        # Printed last of all, by the caller, after the lab is down.
        self.summary = checker.summary_lines(self.schedule.seed, len(executed),
                                             dict(faults), acked, lost, longest)
        return 1 if self.violations or lost else 0


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) + ".%03d" % (int(t * 1000) % 1000,)


class SoakError(Exception):
    """The soak could not set its applications up: no verdict."""


# Checks whose violations --tolerate can report without failing the run.
TOLERABLE = ("snapshot-growth",)

__all__ = ["Soak", "SoakError", "TOLERABLE"]
