"""
Convergence with fakes: calculate_changes and the Deployer running whole
deploys and moves between in-memory nodes (every fake here passes its
backend's contract suite).
"""

import os

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from flocker_async.changes import (
    HELD,
    LOCAL,
    CreateVolume,
    InParallel,
    MoveOut,
    Sequentially,
    SetRoute,
    SetRoutes,
    StartApplication,
    StopApplication,
    WaitForHandoff,
    ReportProblem,
    calculate_changes,
    container_application,
    in_parallel,
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


def flatten(change):
    if isinstance(change, (Sequentially, InParallel)):
        out = []
        for c in change.changes:
            out.extend(flatten(c))
        return out
    return [change]


class CompositionTests(TestCase):
    def test_flattening(self):
        a, b, c = StopApplication("a"), StopApplication("b"), StopApplication("c")
        self.assertEqual(sequentially([a]), a)
        self.assertEqual(sequentially([sequentially([a, b]), c]), Sequentially([a, b, c]))
        self.assertEqual(in_parallel([in_parallel([a, b]), sequentially([])]),
                         InParallel([a, b]))
        self.assertEqual(sequentially([]), Sequentially([]))


class CalculateChangesTests(TestCase):
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
        state = NodeState(N1, [ApplicationState("web", True, fixed_digest(WEB))],
                          [VolumeState("web", N1, True)])
        steps = flatten(calculate_changes(
            N1, deployment(n1=[], n2=[WEB]), ClusterState([state, NodeState(N2)]),
            fixed_digest))
        self.assertEqual(steps, [
            SetRoutes([("web", (8080,), LOCAL)]),
            MoveOut(WEB, N2, (8080,), True)])
        self.assertIn("push volume web to %s, hold, stop, hand volume web over"
                      % (N2,), steps[1].summary)

    def test_move_of_stopped_application_holds_instead_of_looping(self):
        """The source of a move whose application is not running holds the
        ports: proxying to the target, which proxies back until it owns the
        volume, would loop connections between the two."""
        state = NodeState(N1, [], [VolumeState("web", N1, True)])
        steps = flatten(calculate_changes(
            N1, deployment(n1=[], n2=[WEB]), ClusterState([state, NodeState(N2)]),
            fixed_digest))
        self.assertEqual(steps[0], SetRoutes([("web", (8080,), HELD)]))
        self.assertEqual(steps[-1], MoveOut(WEB, N2, (8080,), False))

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
    """In-memory nodes joined by MemoryPeers."""

    def __init__(self, testcase, hosts):
        self.deployers = {}
        self.peers = MemoryPeers(self.deployers)
        self.events = []
        root = testcase.mktemp()
        for host in hosts:
            docker = MemoryDockerClient(images=[IMAGE])
            pool = MemoryStoragePool(reactor, os.path.join(root, host), host)
            self.deployers[host] = Deployer(
                host, docker, pool, MemoryNetwork(), self.peers, reactor,
                resolve=defer.succeed, emit=self.events.append,
                handoff_timeout=5)
        self.desired = None

    @defer.inlineCallbacks
    def deploy(self, desired):
        """What flocker-deploy does: gather states, then converge all nodes."""
        states = yield defer.gatherResults(
            [d.discover() for d in self.deployers.values()])
        cluster = ClusterState(states)
        results = yield defer.DeferredList(
            [self.converge(d, desired, cluster) for d in self.deployers.values()],
            consumeErrors=True)
        failures = [f for ok, f in results if not ok]
        if failures:
            failures[0].raiseException()

    @defer.inlineCallbacks
    def converge(self, deployer, desired, cluster):
        local = yield deployer.discover()
        change = calculate_changes(deployer.hostname, desired,
                                   cluster.with_node(local), deployer.digest)
        yield change.run(deployer)

    def node(self, host):
        return self.deployers[host]

    @defer.inlineCallbacks
    def units(self, host):
        units = yield self.node(host).docker.list()
        return {u.name: u for u in units}

    def write(self, host, app, path, data):
        return self.node(host).pool.write_file(VolumeName(app), path, data)

    def read(self, host, app, path):
        with open(os.path.join(self.node(host).volume_path(app), path), "rb") as f:
            return f.read()


class DeployTests(TestCase):
    @defer.inlineCallbacks
    def test_fresh_deploy(self):
        c = Cluster(self, [N1, N2])
        yield c.deploy(deployment(n1=[WEB], n2=[CACHE]))
        self.assertEqual(sorted((yield c.units(N1))), ["web"])
        self.assertEqual(sorted((yield c.units(N2))), ["cache"])
        self.assertTrue((yield c.units(N1))["web"].running)
        n1_routes = yield c.node(N1).network.get_state()
        self.assertEqual(n1_routes.open_ports, frozenset([OpenPort("web", 8080)]))
        self.assertEqual(n1_routes.proxies, frozenset([Proxy("cache", 11211, N2)]))
        self.assertEqual(n1_routes.held_ports, frozenset())
        volume = yield c.node(N1).pool.get(VolumeName("web"))
        self.assertTrue(volume.owned_by(N1))

    @defer.inlineCallbacks
    def test_redeploy_restarts_nothing(self):
        c = Cluster(self, [N1, N2])
        yield c.deploy(deployment(n1=[WEB], n2=[CACHE]))
        before = yield self.container_ids(c)
        yield c.deploy(deployment(n1=[WEB], n2=[CACHE]))
        after = yield self.container_ids(c)
        self.assertEqual(before, after)
        self.assertEqual(len(after), 2)

    @defer.inlineCallbacks
    def container_ids(self, c):
        ids = {}
        for host in c.deployers:
            for name, unit in (yield c.units(host)).items():
                ids[(host, name)] = unit.container_id
        return ids

    @defer.inlineCallbacks
    def test_environment_change_restarts_only_that(self):
        c = Cluster(self, [N1])
        yield c.deploy(deployment(n1=[WEB, CACHE]))
        before = yield c.units(N1)
        before = {n: u.container_id for n, u in before.items()}
        web2 = Application(name="web", image=IMAGE, ports=[Port(80, 8080)],
                           volume=AttachedVolume("/data"), environment={"X": "1"})
        yield c.deploy(deployment(n1=[web2, CACHE]))
        after = yield c.units(N1)
        self.assertEqual(after["cache"].container_id, before["cache"])
        self.assertNotEqual(after["web"].container_id, before["web"])
        self.assertEqual(after["web"].environment, (("X", "1"),))

    @defer.inlineCallbacks
    def test_move_keeps_data_and_routes(self):
        c = Cluster(self, [N1, N2, N3])
        yield c.deploy(deployment(n1=[WEB], n2=[], n3=[]))
        yield c.write(N1, "web", "rows.txt", b"row 1\n")
        yield c.deploy(deployment(n1=[], n2=[WEB], n3=[]))
        self.assertEqual((yield c.units(N1)), {})
        self.assertTrue((yield c.units(N2))["web"].running)
        self.assertEqual(c.read(N2, "web", "rows.txt"), b"row 1\n")
        for host in (N1, N3):
            routes = yield c.node(host).network.get_state()
            self.assertEqual(routes.proxies, frozenset([Proxy("web", 8080, N2)]), host)
            self.assertEqual(routes.held_ports, frozenset(), host)
        n2 = yield c.node(N2).network.get_state()
        self.assertEqual(n2.open_ports, frozenset([OpenPort("web", 8080)]))
        self.assertEqual(n2.held_ports, frozenset())
        # Exactly one live copy; the source keeps a read-only replica.
        v1 = yield c.node(N1).pool.get(VolumeName("web"))
        v2 = yield c.node(N2).pool.get(VolumeName("web"))
        self.assertEqual((v1.owner, v1.read_only), (N2, True))
        self.assertEqual((v2.owner, v2.read_only), (N2, False))

    @defer.inlineCallbacks
    def test_move_back_is_incremental(self):
        c = Cluster(self, [N1, N2])
        yield c.deploy(deployment(n1=[WEB], n2=[]))
        yield c.write(N1, "web", "big.bin", os.urandom(200000))
        yield c.deploy(deployment(n1=[], n2=[WEB]))
        first = sum(b for _, _, b in c.peers.bytes_pushed)
        c.peers.bytes_pushed[:] = []
        yield c.write(N2, "web", "small.txt", b"more\n")
        yield c.deploy(deployment(n1=[WEB], n2=[]))
        back = sum(b for _, _, b in c.peers.bytes_pushed)
        self.assertGreater(first, 200000)
        self.assertLess(back, 50000)
        self.assertEqual(c.read(N1, "web", "small.txt"), b"more\n")
        self.assertEqual(len(c.read(N1, "web", "big.bin")), 200000)

    @defer.inlineCallbacks
    def test_swap(self):
        other = Application(name="db", image=IMAGE, ports=[Port(5432, 5432)],
                            volume=AttachedVolume("/var/lib/db"))
        c = Cluster(self, [N1, N2])
        yield c.deploy(deployment(n1=[WEB], n2=[other]))
        yield c.write(N1, "web", "w", b"web data")
        yield c.write(N2, "db", "d", b"db data")
        yield c.deploy(deployment(n1=[other], n2=[WEB]))
        self.assertEqual(c.read(N1, "db", "d"), b"db data")
        self.assertEqual(c.read(N2, "web", "w"), b"web data")
        self.assertEqual(sorted((yield c.units(N1))), ["db"])
        self.assertEqual(sorted((yield c.units(N2))), ["web"])

    @defer.inlineCallbacks
    def test_remove_then_readd(self):
        c = Cluster(self, [N1])
        yield c.deploy(deployment(n1=[WEB]))
        yield c.write(N1, "web", "keep", b"precious")
        yield c.deploy(deployment(n1=[]))
        self.assertEqual((yield c.units(N1)), {})
        routes = yield c.node(N1).network.get_state()
        self.assertEqual(routes.open_ports, frozenset())
        yield c.deploy(deployment(n1=[WEB]))
        self.assertEqual(c.read(N1, "web", "keep"), b"precious")

    @defer.inlineCallbacks
    def test_add_volume_to_existing_application(self):
        c = Cluster(self, [N1])
        yield c.deploy(deployment(n1=[CACHE]))
        with_volume = Application(name="cache", image=IMAGE, ports=[Port(11211, 11211)],
                                  volume=AttachedVolume("/var/cache"))
        yield c.deploy(deployment(n1=[with_volume]))
        unit = (yield c.units(N1))["cache"]
        self.assertEqual(unit.volume.mountpoint, "/var/cache")
        volume = yield c.node(N1).pool.get(VolumeName("cache"))
        self.assertTrue(volume.owned_by(N1))

    @defer.inlineCallbacks
    def test_links_reach_target_through_local_proxy(self):
        wp = Application(name="wp", image=IMAGE, ports=[Port(80, 8000)],
                         links=[Link(3306, 3306, "db")])
        db = Application(name="db", image=IMAGE, ports=[Port(3306, 3306)])
        c = Cluster(self, [N1, N2])
        yield c.deploy(deployment(n1=[wp], n2=[db]))
        unit = (yield c.units(N1))["wp"]
        self.assertEqual(dict(unit.environment)["DB_PORT_3306_TCP"], "tcp://%s:3306" % N1)
        routes = yield c.node(N1).network.get_state()
        self.assertIn(Proxy("db", 3306, N2), routes.proxies)

    @defer.inlineCallbacks
    def test_unreachable_destination_keeps_application_on_source(self):
        c = Cluster(self, [N1, N2])
        yield c.deploy(deployment(n1=[WEB], n2=[]))
        n2 = c.deployers.pop(N2)
        try:
            yield c.converge(c.node(N1), deployment(n1=[], n2=[WEB]),
                             ClusterState([(yield c.node(N1).discover()),
                                           (yield n2.discover())]))
        except Exception as e:
            self.assertIn("cannot reach node %s" % N2, str(e))
        else:
            self.fail("the move should have failed")
        self.assertTrue((yield c.units(N1))["web"].running)
        volume = yield c.node(N1).pool.get(VolumeName("web"))
        self.assertEqual((volume.owner, volume.read_only), (N1, False))


class InvariantTests(TestCase):
    """DESIGN.md's move invariants, each checked while moves run."""

    def watch_writable_copies(self, c):
        """After every ownership or read-only change anywhere, at most one
        node holds a writable copy that names itself owner."""
        violations = []

        def check(_=None):
            live = []
            for host, d in c.deployers.items():
                meta_dir = d.pool._meta_dir(VolumeName("web"))
                if os.path.exists(os.path.join(meta_dir, "meta.json")):
                    import json
                    with open(os.path.join(meta_dir, "meta.json")) as f:
                        meta = json.load(f)
                    if not meta.get("read_only") and meta.get("owner") == host:
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

    @defer.inlineCallbacks
    def test_one_writable_copy_throughout_moves(self):
        c = Cluster(self, [N1, N2, N3])
        violations = self.watch_writable_copies(c)
        yield c.deploy(deployment(n1=[WEB], n2=[], n3=[]))
        for target in ("n2", "n3", "n1", "n2"):
            placement = {"n1": [], "n2": [], "n3": []}
            placement[target] = [WEB]
            yield c.deploy(deployment(**placement))
        self.assertEqual(violations, [])
        owners = []
        for host, d in c.deployers.items():
            v = yield d.pool.get(VolumeName("web"))
            if not v.read_only:
                owners.append(host)
        self.assertEqual(owners, [N2])

    @defer.inlineCallbacks
    def test_stopped_only_after_bulk_copy_verified(self):
        c = Cluster(self, [N1, N2])
        yield c.deploy(deployment(n1=[WEB], n2=[]))
        del c.events[:]
        yield c.deploy(deployment(n1=[], n2=[WEB]))
        n1 = [e["action"] for e in c.events if e["node"] == N1]
        self.assertLess(n1.index("transferred"), n1.index("stop"))

    @defer.inlineCallbacks
    def test_failed_bulk_copy_keeps_application_running(self):
        c = Cluster(self, [N1, N2])
        yield c.deploy(deployment(n1=[WEB], n2=[]))
        original = c.peers.snapshots

        def forgetful(node, volume):
            # The destination "loses" what it received: verification fails.
            return defer.succeed([])
        c.peers.snapshots = forgetful
        try:
            yield c.deploy(deployment(n1=[], n2=[WEB]))
        except Exception as e:
            self.assertIn("did not keep snapshot", str(e))
        else:
            self.fail("the move should have failed verification")
        finally:
            c.peers.snapshots = original
        self.assertTrue((yield c.units(N1))["web"].running)
        v = yield c.node(N1).pool.get(VolumeName("web"))
        self.assertEqual((v.owner, v.read_only), (N1, False))

    @defer.inlineCallbacks
    def test_failed_receive_ends_destination_wait(self):
        """A push the destination fails to receive (its disk is full, say)
        ends the destination's wait at once with the reason, not after its
        handoff timeout; the application keeps running on the source."""
        c = Cluster(self, [N1, N2])
        yield c.deploy(deployment(n1=[WEB], n2=[]))
        c.node(N2).handoff_timeout = 600
        pool = c.node(N2).pool
        original = pool.receive

        streams = []

        def failing(name):
            stream = original(name)
            streams.append(stream)
            write = stream.write

            def write_then_fail(data):
                write(data)
                stream.abort("out of space")
            stream.write = write_then_fail
            return stream
        pool.receive = failing
        states = yield defer.gatherResults(
            [d.discover() for d in c.deployers.values()])
        started = reactor.seconds()
        results = yield defer.DeferredList(
            [c.converge(c.node(host), deployment(n1=[], n2=[WEB]), ClusterState(states))
             for host in (N1, N2)], consumeErrors=True)
        self.assertLess(reactor.seconds() - started, 30)
        (ok1, source), (ok2, destination) = results
        self.assertFalse(ok1)
        self.assertIn("pushing volume web to %s failed" % (N2,), str(source.value))
        self.assertFalse(ok2)
        self.assertIn("%s could not push volume web here" % (N1,),
                      str(destination.value))
        self.assertIn("out of space", str(destination.value))
        self.assertTrue((yield c.units(N1))["web"].running)
        for stream in streams:  # failed as intended; nobody else awaits them
            stream.done.addErrback(lambda failure: None)

    @defer.inlineCallbacks
    def test_failed_final_push_undoes_the_move(self):
        """If the volume cannot be handed over (the target died or is full
        after the application stopped), the source serves again instead of
        leaving the application down until the target returns."""
        c = Cluster(self, [N1, N2])
        yield c.deploy(deployment(n1=[WEB], n2=[]))
        yield c.write(N1, "web", "acked", b"kept")
        source = c.node(N1)
        original = source._send_newest

        def failing(name, to, phase):
            if phase == "final-push":
                return defer.fail(RuntimeError("no space left on %s" % (to,)))
            return original(name, to, phase)
        source._send_newest = failing
        try:
            yield c.deploy(deployment(n1=[], n2=[WEB]))
        except Exception as e:
            self.assertIn("was undone, it runs here again", str(e))
            self.assertIn("no space left", str(e))
        else:
            self.fail("the move should have failed")
        self.assertTrue((yield c.units(N1))["web"].running)
        volume = yield source.pool.get(VolumeName("web"))
        self.assertEqual((volume.owner, volume.read_only), (N1, False))
        routes = yield source.network.get_state()
        self.assertEqual(routes.open_ports, frozenset([OpenPort("web", 8080)]))
        self.assertEqual(routes.held_ports, frozenset())
        self.assertIn("rollback", [e["action"] for e in c.events if e["node"] == N1])
        # Once the target can take it, the move goes through.
        source._send_newest = original
        yield c.deploy(deployment(n1=[], n2=[WEB]))
        self.assertEqual(c.read(N2, "web", "acked"), b"kept")

    @defer.inlineCallbacks
    def test_unchanged_application_rules_never_disappear(self):
        """Every routing transaction during a move keeps the other
        application's rules, so its open connections survive."""
        c = Cluster(self, [N1, N2])
        yield c.deploy(deployment(n1=[WEB, CACHE], n2=[]))
        seen = []
        for host, d in c.deployers.items():
            original = d.network.set_state

            def recording(proxies, open_ports, held, host=host, original=original):
                seen.append((host, set(proxies), set(open_ports), set(held)))
                return original(proxies, open_ports, held)
            d.network.set_state = recording
        yield c.deploy(deployment(n1=[CACHE], n2=[WEB]))
        self.assertTrue(seen)
        for host, proxies, open_ports, held in seen:
            if host == N1:
                self.assertIn(OpenPort("cache", 11211), open_ports)
            else:
                self.assertIn(Proxy("cache", 11211, N1), proxies)
            self.assertNotIn(HeldPort("cache", 11211), held)

    @defer.inlineCallbacks
    def test_prunes_keep_common_snapshot(self):
        c = Cluster(self, [N1, N2])
        yield c.deploy(deployment(n1=[WEB], n2=[]))
        for i, target in enumerate(["n2", "n1", "n2", "n1"]):
            yield c.write(N1 if target == "n2" else N2, "web", "f%d" % i, b"x" * i)
            yield c.deploy(deployment(**{target: [WEB], ("n1" if target == "n2" else "n2"): []}))
        s1 = [s.name for s in (yield c.node(N1).pool.snapshots(VolumeName("web")))]
        s2 = [s.name for s in (yield c.node(N2).pool.snapshots(VolumeName("web")))]
        self.assertTrue(set(s1) & set(s2))
        # Old snapshots were pruned: not one per move accumulating forever.
        self.assertLessEqual(len(s1), 3)


class CrashRecoveryTests(TestCase):
    """
    A daemon killed at any step of a move and restarted converges with no
    data lost: each step of the source's move fails once in turn (as if the
    daemon died there), then everything converges again.
    """

    STEPS = ["push_volume", "set_route", "stop_application", "handoff_volume",
             "_send_newest", "acquire"]

    @defer.inlineCallbacks
    def crash_at(self, method, occurrence):
        c = Cluster(self, [N1, N2])
        yield c.deploy(deployment(n1=[WEB], n2=[]))
        yield c.write(N1, "web", "acked", b"every acknowledged write")
        target = c.node(N1) if method != "acquire" else c.node(N2)
        original = getattr(target, method)
        calls = {"n": 0}

        def crashing(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == occurrence:
                return defer.fail(RuntimeError("daemon killed during %s" % method))
            return original(*args, **kwargs)
        setattr(target, method, crashing)
        c.node(N2).handoff_timeout = 2
        try:
            yield c.deploy(deployment(n1=[], n2=[WEB]))
        except Exception:
            pass
        setattr(target, method, original)
        # "Restart": converge again (twice, as flocker-deploy would be re-run).
        yield c.deploy(deployment(n1=[], n2=[WEB]))
        self.assertEqual((yield c.units(N1)), {})
        self.assertTrue((yield c.units(N2))["web"].running)
        self.assertEqual(c.read(N2, "web", "acked"), b"every acknowledged write")
        writable = []
        for host in (N1, N2):
            v = yield c.node(host).pool.get(VolumeName("web"))
            if not v.read_only:
                writable.append(host)
        self.assertEqual(writable, [N2])

    def test_crash_during_bulk_push(self):
        return self.crash_at("push_volume", 1)

    def test_crash_holding_ports(self):
        return self.crash_at("set_route", 1)

    def test_crash_at_stop(self):
        return self.crash_at("stop_application", 1)

    def test_crash_at_handoff(self):
        return self.crash_at("handoff_volume", 1)

    def test_crash_during_final_push(self):
        return self.crash_at("_send_newest", 2)

    def test_crash_at_acquire(self):
        return self.crash_at("acquire", 1)

    @defer.inlineCallbacks
    def test_crash_after_acquire_before_owner_recorded(self):
        """The source dies after the destination acquired the volume but
        before recording the new owner on its own copy: that copy, read-only,
        still names the source.  The next deploy must not push into the
        destination's live copy (refused forever): the source records the
        owner the cluster reports and the move completes."""
        c = Cluster(self, [N1, N2])
        yield c.deploy(deployment(n1=[WEB], n2=[]))
        yield c.write(N1, "web", "acked", b"every acknowledged write")
        pool = c.node(N1).pool
        original = pool.set_owner

        def crashing(*args, **kwargs):
            pool.set_owner = original
            return defer.fail(RuntimeError("daemon killed after acquire"))
        pool.set_owner = crashing
        try:
            yield c.deploy(deployment(n1=[], n2=[WEB]))
        except Exception:
            pass
        v1 = yield pool.get(VolumeName("web"))
        self.assertEqual((v1.owner, v1.read_only), (N1, True))
        yield c.deploy(deployment(n1=[], n2=[WEB]))
        yield c.deploy(deployment(n1=[], n2=[WEB]))
        self.assertEqual((yield c.units(N1)), {})
        self.assertTrue((yield c.units(N2))["web"].running)
        self.assertEqual(c.read(N2, "web", "acked"), b"every acknowledged write")
        for host in (N1, N2):
            v = yield c.node(host).pool.get(VolumeName("web"))
            self.assertEqual((v.owner, v.read_only), (N2, host != N2))
        # And back: the old source takes the volume again, incrementally.
        yield c.write(N2, "web", "later", b"written on n2")
        yield c.deploy(deployment(n1=[WEB], n2=[]))
        self.assertEqual(c.read(N1, "web", "later"), b"written on n2")
