"""
Convergence with fakes: calculate_changes and the change values running
whole deploys and moves between in-memory nodes (every fake here passes its
backend's contract suite), on a fake clock: no test here waits on the wall
clock.
"""

import json
import os

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from flocker_async.changes import (
    HELD,
    LOCAL,
    CreateVolume,
    FinalPush,
    HandOver,
    InParallel,
    MakeWritable,
    PushVolume,
    RunContext,
    Sequentially,
    SetRoute,
    SetRoutes,
    StartApplication,
    StopApplication,
    UndoOnFailure,
    WaitForHandoff,
    WaitForPort,
    ReportProblem,
    calculate_changes,
    container_application,
    in_parallel,
    leaves,
    proxy_to,
    sequentially,
)
from flocker_async.docker import MemoryDockerClient
from flocker_async.model import (
    Application,
    ApplicationState,
    AttachedVolume,
    ClusterState,
    Deployment,
    DockerImage,
    Link,
    Node,
    NodeState,
    Port,
    VolumeState,
)
from flocker_async._async import deferred
from flocker_async.node._deployer import Deployer
from flocker_async.node._memory_peers import MemoryPeers
from flocker_async.route import HeldPort, MemoryNetwork, OpenPort, Proxy
from flocker_async.volume import MemoryStoragePool, VolumeName

IMAGE = DockerImage("flocker-lab/busybox")
N1, N2, N3 = "10.1.0.1", "10.1.0.2", "10.1.0.3"

WEB = Application(name="web", image=IMAGE, ports=[Port(80, 8080)],
                  volume=AttachedVolume("/data"))
CACHE = Application(name="cache", image=IMAGE, ports=[Port(11211, 11211)])


def deployment(**placement):
    """deployment(n1=[apps], n2=[apps])"""
    hosts = {"n1": N1, "n2": N2, "n3": N3}
    return Deployment(nodes=[Node(hosts[k], v) for k, v in placement.items()])


def fixed_digest(app):
    return "digest-of-" + repr(app)


flatten = leaves


def drive(clock, d, step=0.05, limit=3600.0):
    """
    Run ``d`` to completion on the fake ``clock``: advance simulated time in
    small steps until it fires (at most ``limit`` simulated seconds, so a
    hung change fails the test instead of looping).  Returns its result or
    raises its failure.
    """
    outcome = []
    d.addBoth(outcome.append)
    elapsed = 0.0
    clock.advance(0)
    while not outcome:
        if elapsed > limit:
            raise AssertionError("not done after %d simulated seconds" % (limit,))
        clock.advance(step)
        elapsed += step
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


class CompositionTests(SynchronousTestCase):
    def test_flattening(self):
        a, b, c = StopApplication("a"), StopApplication("b"), StopApplication("c")
        self.assertEqual(sequentially([a]), a)
        self.assertEqual(sequentially([sequentially([a, b]), c]), Sequentially([a, b, c]))
        self.assertEqual(in_parallel([in_parallel([a, b]), sequentially([])]),
                         InParallel([a, b]))
        self.assertEqual(sequentially([]), Sequentially([]))


class CalculateChangesTests(SynchronousTestCase):
    """The pure function, on hand-made states."""

    def test_fresh_deploy(self):
        change = calculate_changes(N1, deployment(n1=[WEB], n2=[]),
                                   ClusterState([NodeState(N1), NodeState(N2)]),
                                   fixed_digest)
        steps = flatten(change)
        self.assertEqual(steps[0], SetRoutes([("web", (8080,), HELD)]))
        self.assertEqual(steps[1:], [
            CreateVolume("web", None), SetRoute("web", (8080,), HELD),
            StartApplication(WEB), steps[4], SetRoute("web", (8080,), LOCAL)])

    def test_other_node_proxies(self):
        change = calculate_changes(N2, deployment(n1=[WEB], n2=[]),
                                   ClusterState([NodeState(N1), NodeState(N2)]),
                                   fixed_digest)
        self.assertEqual(flatten(change), [SetRoutes([("web", (8080,), proxy_to(N1))])])

    def test_unchanged_never_restarted(self):
        state = NodeState(N1, [ApplicationState("web", True, fixed_digest(WEB))],
                          [VolumeState("web", N1, True)])
        change = calculate_changes(N1, deployment(n1=[WEB]), ClusterState([state]),
                                   fixed_digest)
        self.assertEqual(flatten(change), [SetRoutes([("web", (8080,), LOCAL)])])

    def test_changed_environment_restarts_that_one_only(self):
        web2 = Application(name="web", image=IMAGE, ports=[Port(80, 8080)],
                           volume=AttachedVolume("/data"), environment={"A": "b"})
        state = NodeState(N1, [ApplicationState("web", True, fixed_digest(WEB)),
                               ApplicationState("cache", True, fixed_digest(CACHE))],
                          [VolumeState("web", N1, True)])
        steps = flatten(calculate_changes(
            N1, deployment(n1=[web2, CACHE]), ClusterState([state]), fixed_digest))
        self.assertIn(StopApplication("web"), steps)
        self.assertIn(StartApplication(web2), steps)
        self.assertNotIn(StopApplication("cache"), steps)
        self.assertFalse([s for s in steps if isinstance(s, StartApplication)
                          and s.application.name == "cache"])
        self.assertNotIn(CreateVolume("web", None), steps)

    def test_move_source(self):
        """The source's plan shows every step of the move, in order, with
        the undo of the final push."""
        state = NodeState(N1, [ApplicationState("web", True, fixed_digest(WEB))],
                          [VolumeState("web", N1, True, epoch=3)])
        steps = flatten(calculate_changes(
            N1, deployment(n1=[], n2=[WEB]), ClusterState([state, NodeState(N2)]),
            fixed_digest))
        self.assertEqual(steps, [
            SetRoutes([("web", (8080,), LOCAL)]),
            PushVolume("web", N2),
            SetRoute("web", (8080,), HELD),
            StopApplication("web"),
            UndoOnFailure(
                FinalPush("web", N2),
                Sequentially([MakeWritable("web"), StartApplication(WEB),
                              WaitForPort(WEB), SetRoute("web", (8080,), LOCAL)]),
                "web", N2),
            HandOver("web", N2, 4),
            SetRoute("web", (8080,), proxy_to(N2))])
        self.assertEqual(
            [step.summary for step in steps[1:4] + steps[5:]],
            ["push volume web to %s (bulk copy, while it runs)" % (N2,),
             "route web held", "stop web",
             "hand volume web over to %s (epoch 4)" % (N2,),
             "route web proxy to %s" % (N2,)])
        self.assertIn("if that fails, undo: make volume web writable", steps[4].summary)

    def test_move_destination(self):
        source = NodeState(N1, [ApplicationState("web", True, "x")],
                           [VolumeState("web", N1, True)])
        steps = flatten(calculate_changes(
            N2, deployment(n1=[], n2=[WEB]), ClusterState([source, NodeState(N2)]),
            fixed_digest))
        self.assertEqual(steps[:2], [SetRoutes([("web", (8080,), proxy_to(N1))]),
                                     WaitForHandoff("web", N1)])
        self.assertIn(StartApplication(WEB), steps)
        self.assertNotIn(CreateVolume("web", None), steps)

    def test_removed_application_stopped_volume_kept(self):
        state = NodeState(N1, [ApplicationState("web", True, "x")],
                          [VolumeState("web", N1, True)])
        steps = flatten(calculate_changes(N1, deployment(n1=[]), ClusterState([state]),
                                          fixed_digest))
        self.assertEqual(steps, [SetRoutes([]), StopApplication("web")])

    def test_readded_reuses_volume(self):
        state = NodeState(N1, [], [VolumeState("web", N1, True)])
        steps = flatten(calculate_changes(N1, deployment(n1=[WEB]), ClusterState([state]),
                                          fixed_digest))
        self.assertNotIn(CreateVolume("web", None), steps)
        self.assertIn(StartApplication(WEB), steps)

    def test_orphan_replica_is_not_made_live(self):
        """A replica whose owner no node reports is never promoted."""
        state = NodeState(N2, [], [VolumeState("web", N1, False)])
        steps = flatten(calculate_changes(N2, deployment(n2=[WEB]), ClusterState([state]),
                                          fixed_digest))
        self.assertTrue(any(isinstance(s, ReportProblem) for s in steps))
        self.assertFalse(any(isinstance(s, (CreateVolume, StartApplication))
                             for s in steps))

    def test_links_environment(self):
        app = Application(name="wp", image=IMAGE,
                          links=[Link(local_port=3306, remote_port=13306, alias="my-db")])
        env = container_application(app, N2).environment_dict
        self.assertEqual(env, {
            "MY_DB_PORT_3306_TCP": "tcp://%s:13306" % N2,
            "MY_DB_PORT_3306_TCP_ADDR": N2,
            "MY_DB_PORT_3306_TCP_PORT": "13306",
            "MY_DB_PORT_3306_TCP_PROTO": "tcp"})



class Cluster:
    """In-memory nodes joined by MemoryPeers, on one fake clock."""

    def __init__(self, testcase, hosts, handoff_timeout=5.0):
        self.clock = Clock()
        self.deployers = {}
        self.events = []
        self.peers = MemoryPeers(self.deployers,
                                 {host: self.events.append for host in hosts})
        self.handoff_timeout = handoff_timeout
        root = testcase.mktemp()
        for host in hosts:
            docker = MemoryDockerClient(images=[IMAGE])
            pool = MemoryStoragePool(self.clock, os.path.join(root, host), host)
            self.deployers[host] = Deployer(
                host, docker, pool, MemoryNetwork(), self.peers, self.clock,
                resolve=defer.succeed)

    def run(self, d):
        return drive(self.clock, d)

    def context(self, host, sink=None):
        return RunContext(host, sink or self.events.append, self.handoff_timeout)

    def states(self):
        return self.run(defer.gatherResults(
            [d.discover() for d in self.deployers.values()]))

    def deploy(self, desired, down=()):
        """What flocker-deploy does: gather states, then converge all nodes
        (but those declared down)."""
        cluster = ClusterState([s for s in self.states() if s.hostname not in down])
        results = self.run(defer.DeferredList(
            [self.converge(d, desired, cluster, down=down)
             for h, d in self.deployers.items() if h not in down],
            consumeErrors=True))
        failures = [f for ok, f in results if not ok]
        if failures:
            failures[0].raiseException()

    def converge_all(self, desired, cluster, hosts):
        """Converge ``hosts`` against ``cluster``; [(ok, result)] in order."""
        return self.run(defer.DeferredList(
            [self.converge(self.node(h), desired, cluster) for h in hosts],
            consumeErrors=True))

    def plan(self, deployer, desired, cluster):
        local = self.run(deployer.discover())
        return calculate_changes(deployer.hostname, desired,
                                 cluster.with_node(local), deployer.digest)

    @deferred
    async def converge(self, deployer, desired, cluster, context=None, down=()):
        local = await deployer.discover()
        change = calculate_changes(deployer.hostname, desired,
                                   cluster.with_node(local), deployer.digest, down)
        await change.run(deployer, context or self.context(deployer.hostname))

    def node(self, host):
        return self.deployers[host]

    def units(self, host):
        return {u.name: u for u in self.run(self.node(host).docker.list())}

    def routes(self, host):
        return self.run(self.node(host).network.get_state())

    def volume(self, host, name="web"):
        return self.run(self.node(host).pool.get(VolumeName(name)))

    def snapshots(self, host, name="web"):
        return [s.name for s in self.run(self.node(host).pool.snapshots(VolumeName(name)))]

    def write(self, host, app, path, data):
        self.node(host).pool.write_file(VolumeName(app), path, data)

    def read(self, host, app, path):
        with open(os.path.join(self.node(host).volume_path(app), path), "rb") as f:
            return f.read()

    def writable(self, name="web"):
        return [host for host in self.deployers
                if name in {v.name.value for v in self.run(self.node(host).pool.enumerate())}
                and not self.volume(host, name).read_only]


class DeployTests(SynchronousTestCase):
    def test_fresh_deploy(self):
        c = Cluster(self, [N1, N2])
        c.deploy(deployment(n1=[WEB], n2=[CACHE]))
        self.assertEqual(sorted(c.units(N1)), ["web"])
        self.assertEqual(sorted(c.units(N2)), ["cache"])
        self.assertTrue(c.units(N1)["web"].running)
        n1_routes = c.routes(N1)
        self.assertEqual(n1_routes.open_ports, frozenset([OpenPort("web", 8080)]))
        self.assertEqual(n1_routes.proxies, frozenset([Proxy("cache", 11211, N2)]))
        self.assertEqual(n1_routes.held_ports, frozenset())
        self.assertTrue(c.volume(N1).owned_by(N1))

    def container_ids(self, c):
        return {(host, name): unit.container_id
                for host in c.deployers for name, unit in c.units(host).items()}

    def test_redeploy_restarts_nothing(self):
        c = Cluster(self, [N1, N2])
        c.deploy(deployment(n1=[WEB], n2=[CACHE]))
        before = self.container_ids(c)
        c.deploy(deployment(n1=[WEB], n2=[CACHE]))
        after = self.container_ids(c)
        self.assertEqual(before, after)
        self.assertEqual(len(after), 2)

    def test_environment_change_restarts_only_that(self):
        c = Cluster(self, [N1])
        c.deploy(deployment(n1=[WEB, CACHE]))
        before = {n: u.container_id for n, u in c.units(N1).items()}
        web2 = Application(name="web", image=IMAGE, ports=[Port(80, 8080)],
                           volume=AttachedVolume("/data"), environment={"X": "1"})
        c.deploy(deployment(n1=[web2, CACHE]))
        after = c.units(N1)
        self.assertEqual(after["cache"].container_id, before["cache"])
        self.assertNotEqual(after["web"].container_id, before["web"])
        self.assertEqual(after["web"].environment, (("X", "1"),))

    def test_move_keeps_data_and_routes(self):
        c = Cluster(self, [N1, N2, N3])
        c.deploy(deployment(n1=[WEB], n2=[], n3=[]))
        c.write(N1, "web", "rows.txt", b"row 1\n")
        c.deploy(deployment(n1=[], n2=[WEB], n3=[]))
        self.assertEqual(c.units(N1), {})
        self.assertTrue(c.units(N2)["web"].running)
        self.assertEqual(c.read(N2, "web", "rows.txt"), b"row 1\n")
        for host in (N1, N3):
            routes = c.routes(host)
            self.assertEqual(routes.proxies, frozenset([Proxy("web", 8080, N2)]), host)
            self.assertEqual(routes.held_ports, frozenset(), host)
        n2 = c.routes(N2)
        self.assertEqual(n2.open_ports, frozenset([OpenPort("web", 8080)]))
        self.assertEqual(n2.held_ports, frozenset())
        # Exactly one live copy; the source keeps a read-only replica.
        v1, v2 = c.volume(N1), c.volume(N2)
        self.assertEqual((v1.owner, v1.read_only), (N2, True))
        self.assertEqual((v2.owner, v2.read_only), (N2, False))

    def test_move_runs_the_planned_steps_in_order(self):
        """What the source does is what its plan said, step by step (the
        dry run prints the same plan)."""
        c = Cluster(self, [N1, N2])
        c.deploy(deployment(n1=[WEB], n2=[]))
        del c.events[:]
        c.deploy(deployment(n1=[], n2=[WEB]))
        n1 = [e["action"] for e in c.events if e["node"] == N1]
        order = ["push", "transferred", "route", "stop", "final-push",
                 "transferred", "acquire", "handed-over", "route"]
        positions = []
        start = 0
        for action in order:
            start = n1.index(action, start)
            positions.append(start)
            start += 1
        self.assertEqual(positions, sorted(positions))
        # The destination's own events, and what the source's push made
        # happen there, reach the destination's sink.
        n2 = [e["action"] for e in c.events if e["node"] == N2]
        for action in ("wait-handoff", "received", "acquired", "start"):
            self.assertIn(action, n2)

    def test_move_back_is_incremental(self):
        c = Cluster(self, [N1, N2])
        c.deploy(deployment(n1=[WEB], n2=[]))
        c.write(N1, "web", "big.bin", os.urandom(200000))
        c.deploy(deployment(n1=[], n2=[WEB]))
        first = sum(b for _, _, b in c.peers.bytes_pushed)
        c.peers.bytes_pushed[:] = []
        c.write(N2, "web", "small.txt", b"more\n")
        c.deploy(deployment(n1=[WEB], n2=[]))
        back = sum(b for _, _, b in c.peers.bytes_pushed)
        self.assertGreater(first, 200000)
        self.assertLess(back, 50000)
        self.assertEqual(c.read(N1, "web", "small.txt"), b"more\n")
        self.assertEqual(len(c.read(N1, "web", "big.bin")), 200000)

    def test_swap(self):
        other = Application(name="db", image=IMAGE, ports=[Port(5432, 5432)],
                            volume=AttachedVolume("/var/lib/db"))
        c = Cluster(self, [N1, N2])
        c.deploy(deployment(n1=[WEB], n2=[other]))
        c.write(N1, "web", "w", b"web data")
        c.write(N2, "db", "d", b"db data")
        c.deploy(deployment(n1=[other], n2=[WEB]))
        self.assertEqual(c.read(N1, "db", "d"), b"db data")
        self.assertEqual(c.read(N2, "web", "w"), b"web data")
        self.assertEqual(sorted(c.units(N1)), ["db"])
        self.assertEqual(sorted(c.units(N2)), ["web"])

    def test_remove_then_readd(self):
        c = Cluster(self, [N1])
        c.deploy(deployment(n1=[WEB]))
        c.write(N1, "web", "keep", b"precious")
        c.deploy(deployment(n1=[]))
        self.assertEqual(c.units(N1), {})
        self.assertEqual(c.routes(N1).open_ports, frozenset())
        c.deploy(deployment(n1=[WEB]))
        self.assertEqual(c.read(N1, "web", "keep"), b"precious")

    def test_add_volume_to_existing_application(self):
        c = Cluster(self, [N1])
        c.deploy(deployment(n1=[CACHE]))
        with_volume = Application(name="cache", image=IMAGE, ports=[Port(11211, 11211)],
                                  volume=AttachedVolume("/var/cache"))
        c.deploy(deployment(n1=[with_volume]))
        self.assertEqual(c.units(N1)["cache"].volume.mountpoint, "/var/cache")
        self.assertTrue(c.volume(N1, "cache").owned_by(N1))

    def test_links_reach_target_through_local_proxy(self):
        wp = Application(name="wp", image=IMAGE, ports=[Port(80, 8000)],
                         links=[Link(3306, 3306, "db")])
        db = Application(name="db", image=IMAGE, ports=[Port(3306, 3306)])
        c = Cluster(self, [N1, N2])
        c.deploy(deployment(n1=[wp], n2=[db]))
        unit = c.units(N1)["wp"]
        self.assertEqual(dict(unit.environment)["DB_PORT_3306_TCP"], "tcp://%s:3306" % N1)
        self.assertIn(Proxy("db", 3306, N2), c.routes(N1).proxies)

    def test_unreachable_destination_keeps_application_on_source(self):
        c = Cluster(self, [N1, N2])
        c.deploy(deployment(n1=[WEB], n2=[]))
        n2 = c.deployers.pop(N2)
        cluster = ClusterState([c.run(c.node(N1).discover()), c.run(n2.discover())])
        with self.assertRaises(Exception) as caught:
            c.run(c.converge(c.node(N1), deployment(n1=[], n2=[WEB]), cluster))
        self.assertIn("cannot reach node %s" % N2, str(caught.exception))
        self.assertTrue(c.units(N1)["web"].running)
        volume = c.volume(N1)
        self.assertEqual((volume.owner, volume.read_only), (N1, False))

    def test_runs_keep_their_own_context(self):
        """Two runs at once on one node, each with its own context: each
        run's events reach its own sink only, and the deployer is left
        without per-run attributes."""
        c = Cluster(self, [N1])
        first, second = [], []
        attributes = set(vars(c.node(N1)))
        c.run(defer.gatherResults([
            CreateVolume("a").run(c.node(N1), c.context(N1, first.append)),
            CreateVolume("b").run(c.node(N1), c.context(N1, second.append))]))
        self.assertEqual([e["application"] for e in first], ["a"])
        self.assertEqual([e["application"] for e in second], ["b"])
        self.assertEqual(set(vars(c.node(N1))), attributes)


class InvariantTests(SynchronousTestCase):
    """DESIGN.md's move invariants, each checked while moves run."""

    def watch_writable_copies(self, c):
        """After every ownership or read-only change anywhere, at most one
        node holds a writable copy that names itself owner."""
        violations = []

        def check(_=None):
            live = []
            for host, d in c.deployers.items():
                meta = os.path.join(d.pool._meta_dir(VolumeName("web")), "meta.json")
                if os.path.exists(meta):
                    with open(meta) as f:
                        data = json.load(f)
                    if not data.get("read_only") and data.get("owner") == host:
                        live.append(host)
            if len(live) > 1:
                violations.append(live)
            return _

        for d in c.deployers.values():
            for method in ("set_owner", "set_read_only", "create"):
                original = getattr(d.pool, method)

                def wrapped(*args, original=original, **kwargs):
                    return original(*args, **kwargs).addCallback(check)
                setattr(d.pool, method, wrapped)
        return violations

    def test_one_writable_copy_throughout_moves(self):
        c = Cluster(self, [N1, N2, N3])
        violations = self.watch_writable_copies(c)
        c.deploy(deployment(n1=[WEB], n2=[], n3=[]))
        for target in ("n2", "n3", "n1", "n2"):
            placement = {"n1": [], "n2": [], "n3": []}
            placement[target] = [WEB]
            c.deploy(deployment(**placement))
        self.assertEqual(violations, [])
        self.assertEqual(c.writable(), [N2])

    def test_stopped_only_after_bulk_copy_verified(self):
        c = Cluster(self, [N1, N2])
        c.deploy(deployment(n1=[WEB], n2=[]))
        del c.events[:]
        c.deploy(deployment(n1=[], n2=[WEB]))
        n1 = [e["action"] for e in c.events if e["node"] == N1]
        self.assertLess(n1.index("transferred"), n1.index("stop"))

    def test_failed_bulk_copy_keeps_application_running(self):
        c = Cluster(self, [N1, N2])
        c.deploy(deployment(n1=[WEB], n2=[]))
        original = c.peers.snapshots

        def forgetful(node, volume, epoch=None):
            # The destination "loses" what it received: verification fails.
            return defer.succeed([])
        c.peers.snapshots = forgetful
        with self.assertRaises(Exception) as caught:
            c.deploy(deployment(n1=[], n2=[WEB]))
        c.peers.snapshots = original
        self.assertIn("did not keep snapshot", str(caught.exception))
        self.assertTrue(c.units(N1)["web"].running)
        v = c.volume(N1)
        self.assertEqual((v.owner, v.read_only), (N1, False))

    def fail_receives(self, c, host, reason, after=0):
        """Pushes into ``host`` fail with ``reason`` (from the ``after``+1th
        on); returns the streams, which failed as intended."""
        pool = c.node(host).pool
        original = pool.receive
        streams = []

        def failing(name, **kwargs):
            stream = original(name, **kwargs)
            streams.append(stream)
            if len(streams) <= after:
                return stream
            write = stream.write

            def write_then_fail(data):
                write(data)
                stream.abort(reason)
            stream.write = write_then_fail
            return stream
        pool.receive = failing
        return streams

    def test_failed_receive_ends_destination_wait(self):
        """A push the destination fails to receive (its disk is full, say)
        ends the destination's wait at once with the reason, not after its
        handoff timeout; the application keeps running on the source."""
        c = Cluster(self, [N1, N2], handoff_timeout=600)
        c.deploy(deployment(n1=[WEB], n2=[]))
        self.fail_receives(c, N2, "out of space")
        cluster = ClusterState(c.states())
        started = c.clock.seconds()
        (ok1, source), (ok2, destination) = c.converge_all(
            deployment(n1=[], n2=[WEB]), cluster, [N1, N2])
        self.assertLess(c.clock.seconds() - started, 30)
        self.assertFalse(ok1)
        self.assertIn("pushing volume web to %s failed" % (N2,), str(source.value))
        self.assertFalse(ok2)
        self.assertIn("%s could not push volume web here" % (N1,),
                      str(destination.value))
        self.assertIn("out of space", str(destination.value))
        self.assertTrue(c.units(N1)["web"].running)

    def test_silent_source_ends_destination_wait_after_timeout(self):
        """A source that never pushes: the destination gives up after the
        handoff timeout of silence (simulated time), naming the source."""
        c = Cluster(self, [N1, N2], handoff_timeout=120)
        c.deploy(deployment(n1=[WEB], n2=[]))
        cluster = ClusterState(c.states())
        started = c.clock.seconds()
        [(ok, failure)] = c.converge_all(deployment(n1=[], n2=[WEB]), cluster, [N2])
        self.assertFalse(ok)
        self.assertIn("%s did not hand volume web over: nothing arrived from it "
                      "for 120 s" % (N1,), str(failure.value))
        self.assertGreaterEqual(c.clock.seconds() - started, 120)
        self.assertLess(c.clock.seconds() - started, 121)

    def test_failed_final_push_undoes_the_move(self):
        """If the volume cannot be handed over (the target died or is full
        after the application stopped), the source serves again instead of
        leaving the application down until the target returns."""
        c = Cluster(self, [N1, N2])
        c.deploy(deployment(n1=[WEB], n2=[]))
        c.write(N1, "web", "acked", b"kept")
        original = c.node(N2).pool.receive
        self.fail_receives(c, N2, "no space left on device", after=1)
        with self.assertRaises(Exception) as caught:
            c.deploy(deployment(n1=[], n2=[WEB]))
        self.assertIn("was undone, it runs here again", str(caught.exception))
        self.assertIn("no space left", str(caught.exception))
        self.assertTrue(c.units(N1)["web"].running)
        volume = c.volume(N1)
        self.assertEqual((volume.owner, volume.read_only), (N1, False))
        routes = c.routes(N1)
        self.assertEqual(routes.open_ports, frozenset([OpenPort("web", 8080)]))
        self.assertEqual(routes.held_ports, frozenset())
        self.assertIn("rollback", [e["action"] for e in c.events if e["node"] == N1])
        # Once the target can take it, the move goes through.
        c.node(N2).pool.receive = original
        c.deploy(deployment(n1=[], n2=[WEB]))
        self.assertEqual(c.read(N2, "web", "acked"), b"kept")

    def test_unchanged_application_rules_never_disappear(self):
        """Every routing transaction during a move keeps the other
        application's rules, so its open connections survive."""
        c = Cluster(self, [N1, N2])
        c.deploy(deployment(n1=[WEB, CACHE], n2=[]))
        seen = []
        for host, d in c.deployers.items():
            original = d.network.set_state

            def recording(proxies, open_ports, held, host=host, original=original):
                seen.append((host, set(proxies), set(open_ports), set(held)))
                return original(proxies, open_ports, held)
            d.network.set_state = recording
        c.deploy(deployment(n1=[CACHE], n2=[WEB]))
        self.assertTrue(seen)
        for host, proxies, open_ports, held in seen:
            if host == N1:
                self.assertIn(OpenPort("cache", 11211), open_ports)
            else:
                self.assertIn(Proxy("cache", 11211, N1), proxies)
            self.assertNotIn(HeldPort("cache", 11211), held)

    def test_prunes_keep_common_snapshot(self):
        c = Cluster(self, [N1, N2])
        c.deploy(deployment(n1=[WEB], n2=[]))
        for i, target in enumerate(["n2", "n1", "n2", "n1"]):
            c.write(N1 if target == "n2" else N2, "web", "f%d" % i, b"x" * i)
            c.deploy(deployment(**{target: [WEB],
                                   ("n1" if target == "n2" else "n2"): []}))
        s1, s2 = c.snapshots(N1), c.snapshots(N2)
        self.assertTrue(set(s1) & set(s2))
        # Old snapshots were pruned: not one per move accumulating forever.
        self.assertLessEqual(len(s1), 3)


class CrashRecoveryTests(SynchronousTestCase):
    """
    A daemon killed at any step of a move and restarted converges with no
    data lost: every step of the source's and of the destination's plan
    fails once in turn (as if the daemon died there), then everything
    converges again.
    """

    def crash_at_step(self, host, index):
        """Fail the ``index``th step of ``host``'s plan for the move."""
        c = Cluster(self, [N1, N2], handoff_timeout=2)
        c.deploy(deployment(n1=[WEB], n2=[]))
        c.write(N1, "web", "acked", b"every acknowledged write")
        desired = deployment(n1=[], n2=[WEB])
        cluster = ClusterState(c.states())
        plans = {h: c.plan(c.node(h), desired, cluster) for h in (N1, N2)}
        steps = leaves(plans[host])
        doomed = steps[index]
        crashed = []

        def crashing(change):
            def run(deployer, context):
                if change is doomed and not crashed:
                    crashed.append(change)
                    return defer.fail(RuntimeError("daemon killed during %s"
                                                   % (change.summary,)))
                return change.run(deployer, context)
            return run

        @deferred
        async def run_plan(h):
            for step in leaves(plans[h]):
                await crashing(step)(c.node(h), c.context(h))
        c.run(defer.DeferredList([run_plan(h) for h in (N1, N2)], consumeErrors=True))
        self.assertEqual(crashed, [doomed])
        # "Restart": converge again (twice, as flocker-deploy would be re-run).
        c.deploy(desired)
        c.deploy(desired)
        self.assertEqual(c.units(N1), {})
        self.assertTrue(c.units(N2)["web"].running)
        self.assertEqual(c.read(N2, "web", "acked"), b"every acknowledged write")
        self.assertEqual(c.writable(), [N2])
        return steps

    def crash_at_every_step(self, host):
        """Crash each step of ``host``'s plan in turn; the number of steps."""
        count, index = None, 0
        while count is None or index < count:
            count = len(self.crash_at_step(host, index))
            index += 1
        return count

    def test_crash_at_every_step_of_the_source(self):
        self.assertGreaterEqual(self.crash_at_every_step(N1), 7)

    def test_crash_at_every_step_of_the_destination(self):
        self.assertGreaterEqual(self.crash_at_every_step(N2), 5)

    def test_crash_at_acquire(self):
        """The destination's ``acquire`` (a peer command, not a step of its
        own plan) fails once."""
        c = Cluster(self, [N1, N2], handoff_timeout=2)
        c.deploy(deployment(n1=[WEB], n2=[]))
        c.write(N1, "web", "acked", b"every acknowledged write")
        handoffs = c.node(N2).handoffs
        original = handoffs.acquire

        def crashing(*args, **kwargs):
            handoffs.acquire = original
            return defer.fail(RuntimeError("daemon killed during acquire"))
        handoffs.acquire = crashing
        with self.assertRaises(Exception):
            c.deploy(deployment(n1=[], n2=[WEB]))
        c.deploy(deployment(n1=[], n2=[WEB]))
        c.deploy(deployment(n1=[], n2=[WEB]))
        self.assertEqual(c.units(N1), {})
        self.assertTrue(c.units(N2)["web"].running)
        self.assertEqual(c.read(N2, "web", "acked"), b"every acknowledged write")
        self.assertEqual(c.writable(), [N2])

    def test_crash_after_acquire_before_owner_recorded(self):
        """The source dies after the destination acquired the volume but
        before recording the new owner on its own copy: that copy, read-only,
        still names the source.  The next deploy must not push into the
        destination's live copy (refused forever): the source records the
        owner the cluster reports and the move completes."""
        c = Cluster(self, [N1, N2])
        c.deploy(deployment(n1=[WEB], n2=[]))
        c.write(N1, "web", "acked", b"every acknowledged write")
        pool = c.node(N1).pool
        original = pool.set_owner

        def crashing(*args, **kwargs):
            pool.set_owner = original
            return defer.fail(RuntimeError("daemon killed after acquire"))
        pool.set_owner = crashing
        with self.assertRaises(Exception):
            c.deploy(deployment(n1=[], n2=[WEB]))
        v1 = c.volume(N1)
        self.assertEqual((v1.owner, v1.read_only), (N1, True))
        c.deploy(deployment(n1=[], n2=[WEB]))
        c.deploy(deployment(n1=[], n2=[WEB]))
        self.assertEqual(c.units(N1), {})
        self.assertTrue(c.units(N2)["web"].running)
        self.assertEqual(c.read(N2, "web", "acked"), b"every acknowledged write")
        for host in (N1, N2):
            v = c.volume(host)
            self.assertEqual((v.owner, v.read_only), (N2, host != N2))
        # And back: the old source takes the volume again, incrementally.
        c.write(N2, "web", "later", b"written on n2")
        c.deploy(deployment(n1=[WEB], n2=[]))
        self.assertEqual(c.read(N1, "web", "later"), b"written on n2")
