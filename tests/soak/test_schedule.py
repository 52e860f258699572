"""
The soak's schedule (bench/_soak/schedule.py): drawn from the seed alone,
every deployment it carries valid, faults never stacked on one node.
"""

from collections import Counter

from twisted.trial.unittest import SynchronousTestCase

from . import BENCH  # noqa: F401  (puts bench/ on the path)
from _soak.schedule import (  # noqa: E402
    APPS, FAULTS, NODES, POWER_ON, Placement, plan)
from _soak.cluster import deployment_text, stated_windows, clock_time  # noqa: E402

import json
import time


def _placements(schedule):
    yield schedule.initial
    for op in schedule.operations:
        if op.placement is not None:
            yield op.placement


class ScheduleTests(SynchronousTestCase):
    def test_same_seed_same_schedule(self):
        """The same seed and duration replay the same schedule."""
        self.assertEqual(plan(15, 180), plan(15, 180))
        self.assertEqual(plan(15, 180).to_document(), plan(15, 180).to_document())

    def test_other_seed_other_schedule(self):
        self.assertNotEqual(plan(15, 180).lines(), plan(16, 180).lines())

    def test_exclude(self):
        """Fault kinds left out never come; the rest all do."""
        schedule = plan(15, 180, exclude=["restart-zfs-fuse", "power-cycle"])
        kinds = Counter(op.kind for op in schedule.operations)
        self.assertEqual(kinds["restart-zfs-fuse"] + kinds["power-cycle"]
                         + kinds["take-over"], 0)
        self.assertEqual(sorted(k for k in FAULTS if not kinds[k]),
                         ["power-cycle", "restart-zfs-fuse"])
        self.assertIn("without restart-zfs-fuse, power-cycle", schedule.lines()[0])
        self.assertRaises(ValueError, plan, 15, 180, ["no-such-fault"])

    def test_ordered_and_within_the_run(self):
        for seed in range(20):
            schedule = plan(seed, 180)
            times = [op.at for op in schedule.operations]
            self.assertEqual(times, sorted(times))
            self.assertTrue(all(0 < t < 180 for t in times), times)
            self.assertEqual([op.index for op in schedule.operations],
                             list(range(1, len(times) + 1)))

    def test_every_fault_kind_in_three_minutes(self):
        """The first round of faults has every kind once, so the 3-minute
        soak in make test meets each (seeds 1-40)."""
        for seed in range(1, 41):
            kinds = Counter(op.kind for op in plan(seed, 180).operations)
            self.assertEqual(sorted(k for k in FAULTS if not kinds[k]), [], seed)

    def test_deployments_valid(self):
        """Every application on a live node, its one standby another live
        node; a node declared down runs nothing and is nobody's standby."""
        for seed in range(40):
            for placement in _placements(plan(seed, 300)):
                for app in APPS:
                    node, standby = placement.node_of(app), placement.standby_of(app)
                    self.assertIn(node, NODES)
                    self.assertIn(standby, NODES)
                    self.assertNotEqual(node, standby, (seed, placement))
                    self.assertNotIn(node, placement.down, (seed, placement))
                    self.assertNotIn(standby, placement.down, (seed, placement))

    def test_power_cycles(self):
        """Power-off, take-over (--down that node, its applications gone
        from it), power-on, rejoin (nothing down), in that order; one
        cycle at a time; no fault on the node meanwhile."""
        seen = 0
        for seed in range(40):
            schedule = plan(seed, 400)
            cycles = {}
            for op in schedule.operations:
                if op.cycle is not None:
                    cycles.setdefault(op.cycle, []).append(op)
            spans = []
            for cycle, steps in sorted(cycles.items()):
                self.assertEqual([s.kind for s in steps],
                                 ["power-cycle", "take-over", POWER_ON, "rejoin"])
                node = steps[0].node
                self.assertEqual({s.node for s in steps}, {node})
                self.assertEqual(steps[1].placement.down, (node,))
                self.assertNotIn(node, dict(steps[1].placement.nodes).values())
                self.assertEqual(steps[3].placement.down, ())
                spans.append(steps)
                for op in schedule.operations:
                    if op.is_fault and op.cycle is None and op.node == node:
                        self.assertFalse(steps[0].at <= op.at <= steps[3].at, (seed, op))
            for op in schedule.operations:
                if op.kind != "move":
                    continue
                inside = [s for s in spans if s[0].at <= op.at <= s[3].at]
                if inside:
                    # Only between the take-over and the power-on, with
                    # the node down.
                    steps = inside[0]
                    self.assertTrue(steps[1].at < op.at < steps[2].at, (seed, op))
                    self.assertEqual(op.placement.down, (steps[0].node,))
                else:
                    self.assertEqual(op.placement.down, (), (seed, op))
            for a, b in zip(spans, spans[1:]):
                self.assertLess(a[3].at, b[0].at)
            seen += len(spans)
        self.assertGreater(seen, 40)

    def test_node_faults_do_not_overlap(self):
        """A fault with a duration keeps its node to itself until it is
        mended."""
        for seed in range(40):
            busy = {}
            for op in plan(seed, 400).operations:
                if op.is_fault and op.node is not None and op.kind != "power-cycle":
                    self.assertGreaterEqual(op.at, busy.get(op.node, 0), (seed, op))
                    if op.seconds:
                        busy[op.node] = op.at + op.seconds


class DeploymentFileTests(SynchronousTestCase):
    def test_deployment_text(self):
        placement = Placement((("db", "n1"), ("web", "n1")),
                              (("db", "n2"), ("web", "n3")), ("n3",))
        document = json.loads(deployment_text(
            placement, {"n1": "10.0.0.1", "n2": "10.0.0.2", "n3": "10.0.0.3"}))
        self.assertEqual(document, {
            "version": 1,
            "nodes": {"10.0.0.1": ["db", "web"], "10.0.0.2": [], "10.0.0.3": []},
            "standby": {"db": ["10.0.0.2"], "web": ["10.0.0.3"]}})

    def test_stated_windows(self):
        """The start of each application's stated window, from
        flocker-deploy's take-over lines."""
        near = time.mktime((2026, 12, 3, 14, 30, 0, 0, 0, -1))
        output = (
            "take-over: db: 10.0.0.1 is down; 10.0.0.2 takes it over from its copy there\n"
            "take-over: db: last replica on 10.0.0.2 is from 14:22:10, 1 s before "
            "10.0.0.1 was last heard from (14:22:11): writes after 14:22:10 may be lost\n"
            "take-over: web: the surviving copy on 10.0.0.3 has no dated snapshot: how "
            "much may be lost is unknown\n"
            "10.0.0.2: took over volume db\n")
        self.assertEqual(stated_windows(output, near), {
            "db": time.mktime((2026, 12, 3, 14, 22, 10, 0, 0, -1)), "web": None})

    def test_clock_time_across_midnight(self):
        near = time.mktime((2026, 12, 3, 0, 0, 5, 0, 0, -1))
        self.assertEqual(clock_time("23:59:58", near), near - 7)
