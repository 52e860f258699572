"""
Failover with fakes on a fake clock: standby replication, take-over of a
dead owner's volume from the freshest surviving copy, and a returning owner
yielding (its copy set aside, never destroyed).
"""

import os

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from flocker_async.changes import (
    PushReplica, TakeOver, WaitForHandoff, YieldVolume, HandOver, StopApplication,
    calculate_changes, leaves, plan_takeovers)
from flocker_async.model import (
    Application, AttachedVolume, ClusterState, Deployment, Node, NodeState, Port,
    VolumeState)
from flocker_async.node._replication import Replicator
from flocker_async.route import Proxy
from flocker_async.volume import VolumeName
from flocker_async.volume._common import generate_snapshot_name
from flocker_async.wire import ApplyRequest

from .test_convergence import IMAGE, N1, N2, N3, Cluster

DB = Application(name="db", image=IMAGE, ports=[Port(3306, 3306)],
                 volume=AttachedVolume("/var/lib/mysql", replication_interval=10))


def placed(standby=(), **placement):
    hosts = {"n1": N1, "n2": N2, "n3": N3}
    return Deployment(nodes=[Node(hosts[k], v) for k, v in placement.items()],
                      standby=[("db", tuple(standby))] if standby else [])


class Replicating:
    """A cluster whose owner replicates ``db`` to its standbys."""

    def __init__(self, testcase, hosts, desired):
        self.c = Cluster(testcase, hosts)
        self.desired = desired
        self.c.deploy(desired)
        owner = desired.node_for("db").hostname
        self.request = ApplyRequest(owner, "d1", desired,
                                    ClusterState(self.c.states()), (), 1, ())
        self.replicator = Replicator(self.c.node(owner), lambda: self.request,
                                     self.c.clock)

    def round(self, seconds=10.0):
        """Let ``seconds`` pass and every round started meanwhile finish."""
        c, replicator = self.c, self.replicator
        for _ in range(int(seconds)):
            c.clock.advance(1)
            replicator.tick()
            for round_ in list(replicator._rounds.values()):
                c.run(round_)


class ReplicationTests(SynchronousTestCase):
    def test_standby_receives_increments_on_schedule(self):
        r = Replicating(self, [N1, N2], placed(n1=[DB], n2=[], standby=[N2]))
        c = r.c
        c.write(N1, "db", "rows", b"1\n")
        r.round(1)
        replica = c.volume(N2, "db")
        self.assertEqual((replica.owner, replica.read_only, replica.epoch), (N1, True, 1))
        self.assertEqual(c.read(N2, "db", "rows"), b"1\n")
        first = c.peers.bytes_pushed[-1][2]
        # Nothing more until the interval has passed.
        c.write(N1, "db", "rows", b"1\n2\n")
        r.round(5)
        self.assertEqual(c.read(N2, "db", "rows"), b"1\n")
        r.round(5)
        self.assertEqual(c.read(N2, "db", "rows"), b"1\n2\n")
        status = r.replicator.status[("db", N2)]
        self.assertIsNone(status.last_error)
        self.assertEqual(status.snapshot, c.snapshots(N2, "db")[-1])
        self.assertLess(c.peers.bytes_pushed[-1][2], first + 5000)

    def test_pruning_keeps_what_each_standby_needs(self):
        r = Replicating(self, [N1, N2, N3], placed(n1=[DB], n2=[], n3=[],
                                                   standby=[N2, N3]))
        c = r.c
        for i in range(6):
            c.write(N1, "db", "f%d" % i, b"x" * (i + 1))
            r.round(10)
        ours = set(c.snapshots(N1, "db"))
        for standby in (N2, N3):
            self.assertTrue(ours & set(c.snapshots(standby, "db")), standby)
            self.assertLessEqual(len(c.snapshots(standby, "db")), 3)
        self.assertLessEqual(len(ours), 3)

    def test_cut_round_resumes_from_last_common_snapshot(self):
        """A round cut mid-push (the standby's receive fails) is resumed by
        the next from the last snapshot both hold: an increment, not a
        full copy."""
        r = Replicating(self, [N1, N2], placed(n1=[DB], n2=[], standby=[N2]))
        c = r.c
        c.write(N1, "db", "big", os.urandom(100000))
        r.round(1)
        full = c.peers.bytes_pushed[-1][2]
        pool = c.node(N2).pool
        original = pool.receive

        def failing(name, **kwargs):
            stream = original(name, **kwargs)
            write = stream.write

            def write_then_fail(data):
                write(data)
                stream.abort("link cut")
            stream.write = write_then_fail
            return stream
        pool.receive = failing
        c.write(N1, "db", "small", b"more")
        r.round(10)
        status = r.replicator.status[("db", N2)]
        self.assertIn("link cut", status.last_error)
        pool.receive = original
        r.round(10)
        self.assertIsNone(r.replicator.status[("db", N2)].last_error)
        self.assertEqual(c.read(N2, "db", "small"), b"more")
        self.assertLess(c.peers.bytes_pushed[-1][2], full / 2)

    def test_paused_while_moving(self):
        r = Replicating(self, [N1, N2], placed(n1=[DB], n2=[], standby=[N2]))
        resume = r.replicator.pause(["db"])
        r.round(30)
        self.assertEqual(r.c.peers.bytes_pushed, [])
        resume()
        r.round(1)
        self.assertEqual(len(r.c.peers.bytes_pushed), 1)


class TakeOverPlanTests(SynchronousTestCase):
    def snapshot(self, t):
        return generate_snapshot_name(t)

    def test_freshest_copy_and_next_epoch(self):
        old, new = self.snapshot(1000.0), self.snapshot(1010.0)
        cluster = ClusterState([
            NodeState(N2, volumes=[VolumeState("db", N1, False, (old,), 3)]),
            NodeState(N3, volumes=[VolumeState("db", N1, False, (old, new), 3)])])
        plans = plan_takeovers(placed(n2=[DB], n3=[]), cluster, [N1])
        plan = plans["db"]
        self.assertEqual((plan.old_owner, plan.target, plan.source, plan.snapshot,
                          plan.epoch), (N1, N2, N3, new, 4))
        self.assertAlmostEqual(plan.snapshot_time, 1010.0, places=2)

    def test_tie_prefers_the_target(self):
        same = self.snapshot(1000.0)
        cluster = ClusterState([
            NodeState(N2, volumes=[VolumeState("db", N1, False, (same,), 1)]),
            NodeState(N3, volumes=[VolumeState("db", N1, False, (same,), 1)])])
        self.assertEqual(plan_takeovers(placed(n2=[], n3=[DB]), cluster, [N1])["db"].source,
                         N3)

    def test_no_takeover_unless_owner_declared_down(self):
        cluster = ClusterState([
            NodeState(N2, volumes=[VolumeState("db", N1, False, (self.snapshot(1),), 1)])])
        self.assertEqual(plan_takeovers(placed(n2=[DB]), cluster, []), {})
        self.assertEqual(plan_takeovers(placed(n2=[DB]), cluster, [N3]), {})

    def test_plans_on_each_node(self):
        s = self.snapshot(1000.0)
        cluster = ClusterState([
            NodeState(N2, volumes=[VolumeState("db", N1, False, (), 1)]),
            NodeState(N3, volumes=[VolumeState("db", N1, False, (s,), 1)])])
        desired = placed(n2=[DB], n3=[])
        on_n2 = leaves(calculate_changes(N2, desired, cluster, repr, [N1]))
        on_n3 = leaves(calculate_changes(N3, desired, cluster, repr, [N1]))
        self.assertIn(WaitForHandoff("db", N3), on_n2)
        self.assertEqual([s for s in on_n3 if not hasattr(s, "routes")],
                         [PushReplica("db", N2), HandOver("db", N2, 2)])
        here = ClusterState([NodeState(N2, volumes=[VolumeState("db", N1, False, (s,), 1)])])
        self.assertIn(TakeOver("db", 2), leaves(calculate_changes(N2, desired, here,
                                                                  repr, [N1])))


class TakeOverTests(SynchronousTestCase):
    def replicated(self, hosts, desired):
        r = Replicating(self, hosts, desired)
        r.c.write(N1, "db", "rows", b"replicated\n")
        r.round(1)
        # Written after the last replication: what a take-over loses.
        r.c.write(N1, "db", "rows", b"replicated\nlate\n")
        return r.c

    def test_takeover_on_the_standby(self):
        c = self.replicated([N1, N2], placed(n1=[DB], n2=[], standby=[N2]))
        dead = c.deployers.pop(N1)
        c.deploy(placed(n1=[], n2=[DB]), down=[N1])
        self.assertTrue(c.units(N2)["db"].running)
        self.assertEqual(c.read(N2, "db", "rows"), b"replicated\n")
        volume = c.volume(N2, "db")
        self.assertEqual((volume.owner, volume.read_only, volume.epoch), (N2, False, 2))
        self.assertIn("take-over", [e["action"] for e in c.events if e["node"] == N2])
        return c, dead

    def test_takeover_from_a_copy_elsewhere(self):
        """The deployment puts the application on a node with no copy: the
        node holding the freshest copy pushes it there first."""
        c = self.replicated([N1, N2, N3], placed(n1=[DB], n2=[], n3=[], standby=[N3]))
        c.deployers.pop(N1)
        c.deploy(placed(n1=[], n2=[DB], n3=[]), down=[N1])
        self.assertTrue(c.units(N2)["db"].running)
        self.assertEqual(c.read(N2, "db", "rows"), b"replicated\n")
        v2, v3 = c.volume(N2, "db"), c.volume(N3, "db")
        self.assertEqual((v2.owner, v2.read_only, v2.epoch), (N2, False, 2))
        self.assertEqual((v3.owner, v3.read_only, v3.epoch), (N2, True, 2))

    def test_returning_owner_yields_and_keeps_its_writes_aside(self):
        c, dead = self.test_takeover_on_the_standby()
        self.assertTrue(c.run(dead.docker.list()))  # still "running" there
        c.deployers[N1] = dead
        desired = placed(n1=[], n2=[DB])
        # It learns the newer deployment (where it is declared down) and
        # sees the new owner.
        c.run(c.converge(dead, desired, ClusterState(c.states()), down=[N1]))
        self.assertEqual(c.units(N1), {})
        self.assertEqual(c.writable("db"), [N2])
        kept = c.run(dead.pool.set_asides())
        self.assertEqual([str(k.volume) for k in kept], ["db"])
        with open(os.path.join(kept[0].mountpoint, "rows"), "rb") as f:
            self.assertEqual(f.read(), b"replicated\nlate\n")
        self.assertEqual(c.routes(N1).proxies, frozenset([Proxy("db", 3306, N2)]))
        self.assertIn("set-aside", [e["action"] for e in c.events if e["node"] == N1])
        # And converging again changes nothing more.
        c.run(c.converge(dead, desired, ClusterState(c.states()), down=[N1]))
        self.assertEqual(len(c.run(dead.pool.set_asides())), 1)

    def test_returning_owner_yields_even_if_new_owner_unreachable(self):
        """Declared down, it yields on its own word: serving would make two
        live copies once the network heals."""
        c, dead = self.test_takeover_on_the_standby()
        plan = leaves(calculate_changes(
            N1, placed(n1=[], n2=[DB]), ClusterState([c.run(dead.discover())]),
            dead.digest, [N1]))
        self.assertIn(YieldVolume("db", N2), plan)
        self.assertIn(StopApplication("db"), plan)

    def test_stale_owner_placed_back_yields_then_receives(self):
        """After a take-over, the deployment puts the application back on the
        returned node: it sets its own old copy aside, then the new owner
        moves the volume to it."""
        c, dead = self.test_takeover_on_the_standby()
        c.write(N2, "db", "rows", b"replicated\nafter takeover\n")
        c.deployers[N1] = dead
        c.deploy(placed(n1=[DB], n2=[]))
        self.assertTrue(c.units(N1)["db"].running)
        self.assertEqual(c.read(N1, "db", "rows"), b"replicated\nafter takeover\n")
        self.assertEqual(c.writable("db"), [N1])
        self.assertEqual(c.volume(N1, "db").epoch, 3)
        self.assertEqual(len(c.run(dead.pool.set_asides())), 1)

    def test_stale_push_refused(self):
        """A former owner's push (lower epoch) into a copy that has since
        been taken over is refused: it never overwrites the new lineage."""
        c, dead = self.test_takeover_on_the_standby()
        c.deployers[N1] = dead
        failure = self.assertRaises(Exception, c.run, c.peers.push(
            N2, "db", lambda consumer: None, owner=N1, epoch=1))
        self.assertIn("no longer owns it", str(failure))


class ReplicationStatusTests(SynchronousTestCase):
    def test_status_forgotten_once_the_volume_moves_away(self):
        r = Replicating(self, [N1, N2], placed(n1=[DB], n2=[], standby=[N2]))
        r.round(1)
        self.assertIn(("db", N2), r.replicator.status)
        r.request = ApplyRequest(N1, "d2", placed(n1=[], n2=[DB], standby=[N1]),
                                 ClusterState(r.c.states()), (), 2, ())
        r.round(1)
        self.assertEqual(r.replicator.status, {})


class ReplicationScheduleTests(SynchronousTestCase):
    def test_rounds_start_every_interval_not_interval_plus_a_tick(self):
        """With a 2 s interval and 1 s ticks, rounds start 2 s apart, even
        when starting a round takes a moment after the tick."""
        r = Replicating(self, [N1, N2], placed(n1=[DB], n2=[], standby=[N2]))
        r.request = ApplyRequest(N1, "d1", placed(n1=[Application(
            name="db", image=IMAGE, ports=[Port(3306, 3306)],
            volume=AttachedVolume("/var/lib/mysql", replication_interval=2))],
            n2=[], standby=[N2]), ClusterState(r.c.states()), (), 1, ())
        starts = []
        replicate = r.replicator.replicate

        def later(name, standbys, now=None):
            starts.append(r.c.clock.seconds())
            r.c.clock.advance(0.01)  # the round starts a moment after the tick
            return replicate(name, standbys, now)
        r.replicator.replicate = later
        r.round(9)
        # Nine 1 s ticks, a round every second tick (not every third).
        self.assertEqual(len(starts), 5, starts)


class EpochTieTests(SynchronousTestCase):
    def test_floor_raises_the_takeover_epoch(self):
        s = generate_snapshot_name(1000.0)
        cluster = ClusterState([NodeState(N3, volumes=[VolumeState("db", N1, False, (s,), 1)])])
        plan = plan_takeovers(placed(n3=[DB]), cluster, [N1, N2], {"db": 2})["db"]
        self.assertEqual(plan.epoch, 3)

    def test_down_claimant_loses_a_tie(self):
        cluster = ClusterState([
            NodeState(N2, volumes=[VolumeState("db", N2, True, (), 2)]),
            NodeState(N3, volumes=[VolumeState("db", N3, True, (), 2)])])
        self.assertEqual(cluster.owner_of("db"), N2)
        self.assertEqual(cluster.owner_of("db", [N2]), N3)
        # Even with a higher epoch: a node declared down never wins.
        cluster = cluster.with_node(NodeState(N2, volumes=[VolumeState("db", N2, True, (), 9)]))
        self.assertEqual(cluster.owner_of("db", [N2]), N3)
