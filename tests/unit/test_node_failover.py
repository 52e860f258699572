"""
A dead node, end to end over conch on an in-memory network with a fake
clock: its volume replicated to a standby by the daemons on their own; the
operator's ``--down`` deploy taking it over with the stated loss window;
the node coming back, learning the newer deployment from a peer
(anti-entropy) and yielding, its late writes kept aside.
"""

import os

from twisted.trial.unittest import SynchronousTestCase

from flocker_async import deploy as deploy_lib
from flocker_async.model import Application, AttachedVolume, Deployment, Node, Port
from flocker_async.route import Proxy
from flocker_async.volume import VolumeName
from flocker_async.wire import decode_apply

from .test_node_service import A, B, C, IMAGE, PORT, InMemoryNodes

DB = Application(name="db", image=IMAGE, ports=[Port(3306, 3306)],
                 volume=AttachedVolume("/var/lib/mysql", replication_interval=10))


class DeadNodeTests(InMemoryNodes, SynchronousTestCase):
    ADDRESSES = (A, B, C)

    def setUp(self):
        InMemoryNodes.setUp(self)
        self.deploy({A: [DB], B: [], C: []}, standby=[("db", (B,))])
        replicator = self.nodes[A].replicator
        replicator.startService()
        self.addCleanup(replicator.stopService)
        self.nodes[A].pool.write_file(VolumeName("db"), "rows", b"before\n")
        self.net.wait(11)
        self.replicated = self.nodes[A].replicator.status[("db", B)]
        self.assertIsNone(self.replicated.last_error)
        # Heard from by the others (anti-entropy) right up to its death.
        for node in (B, C):
            self.drive(self.nodes[node].convergence.converge_now())
        self.nodes[A].pool.write_file(VolumeName("db"), "rows", b"before\nlate\n")
        self.net.wait(2)
        self.net.stall(A)  # powered off: nothing from it, nothing to it
        self.reports = []

    def take_over(self, placement, **kwargs):
        down = self.drive(deploy_lib.resolve_down(self.net, [A]))
        self.drive(deploy_lib.check_down(self.net, self.client, down, PORT))
        return self.deploy(placement, down=down, on_takeover=self.reports.extend, **kwargs)

    def read(self, node, name="rows"):
        with open(os.path.join(self.nodes[node].deployer.volume_path("db"), name),
                  "rb") as f:
            return f.read()

    def test_plain_deploy_still_fails_naming_the_dead_node(self):
        error = self.assertFails(deploy_lib.deploy(
            self.net, self.client, Deployment(nodes=[Node(A, []), Node(B, [DB]),
                                                     Node(C, [])]),
            PORT, lambda n, e: None), deploy_lib.DeployFailed)
        self.assertEqual([f.node for f in error.failures], [A])

    def test_down_node_that_answers_is_refused(self):
        self.net.heal(A)
        error = self.assertFails(deploy_lib.check_down(
            self.net, self.client, {A: A}, PORT), deploy_lib.DownNodeAnswers)
        self.assertIn(A, str(error))
        self.assertIn("flocker-node", str(error))

    def test_take_over_states_the_window_then_serves_replicated_data(self):
        self.take_over({A: [], B: [DB], C: []}, standby=[("db", (C,))])
        self.assertEqual(self.units(B), ["db"])
        self.assertEqual(self.read(B), b"before\n")
        volume = self.drive(self.nodes[B].pool.get(VolumeName("db")))
        self.assertEqual((volume.owner, volume.read_only, volume.epoch), (B, False, 2))
        [first, window] = self.reports
        self.assertIn("db: %s is down; %s takes it over from its copy there" % (A, B),
                      first)
        self.assertIn("db: last replica on %s is from" % (B,), window)
        self.assertRegex(window, r"before %s was last heard from" % (A,))
        seconds = int(window.split(", ")[1].split(" s before")[0])
        # Replicated at ~10 s, last heard at ~13 s (the others' sync).
        self.assertTrue(0 <= seconds <= 5, window)
        for node in (B, C):
            saved = decode_apply(self.nodes[node].store.load())
            self.assertEqual((saved.generation, saved.down), (2, (A,)))
        c_routes = self.drive(self.nodes[C].network.get_state())
        self.assertEqual(c_routes.proxies, frozenset([Proxy("db", 3306, B)]))

    def test_returning_node_yields_and_keeps_its_late_writes(self):
        self.take_over({A: [], B: [DB], C: []})
        self.nodes[A].docker  # its container still "runs": the node was cut off
        self.assertEqual(self.units(A), ["db"])
        self.net.heal(A)
        # Its next convergence learns generation 2 from a peer, then yields.
        self.drive(self.nodes[A].convergence.converge_now())
        self.assertEqual(decode_apply(self.nodes[A].store.load()).generation, 2)
        self.assertEqual(self.units(A), [])
        kept = self.drive(self.nodes[A].pool.set_asides())
        self.assertEqual([str(k.volume) for k in kept], ["db"])
        with open(os.path.join(kept[0].mountpoint, "rows"), "rb") as f:
            self.assertEqual(f.read(), b"before\nlate\n")
        a_routes = self.drive(self.nodes[A].network.get_state())
        self.assertEqual(a_routes.proxies, frozenset([Proxy("db", 3306, B)]))
        writable = [n for n in (A, B, C)
                    if "db" in {v.name.value for v in self.drive(self.nodes[n].pool.enumerate())}
                    and not self.drive(self.nodes[n].pool.get(VolumeName("db"))).read_only]
        self.assertEqual(writable, [B])
        # Replication to it resumes from the new owner's lineage once the
        # operator deploys it as a standby again.
        self.deploy({A: [], B: [DB], C: []}, standby=[("db", (A,))])
        replicator = self.nodes[B].replicator
        replicator.startService()
        self.addCleanup(replicator.stopService)
        self.net.wait(2)
        self.assertEqual(self.read(A), b"before\n")
        replica = self.drive(self.nodes[A].pool.get(VolumeName("db")))
        self.assertEqual((replica.owner, replica.epoch, replica.read_only), (B, 2, True))
        self.assertEqual(len(self.drive(self.nodes[A].pool.set_asides())), 1)

    def test_no_surviving_copy_refuses(self):
        """An application whose only copy was on the dead node: refused,
        nothing changed."""
        other = Application(name="lonely", image=IMAGE,
                            volume=AttachedVolume("/data"))
        self.net.heal(A)
        self.deploy({A: [DB, other], B: [], C: []}, standby=[("db", (B,))])
        # The others see it claimed (anti-entropy) before A dies.
        for node in (B, C):
            self.drive(self.nodes[node].convergence.converge_now())
        self.net.stall(A)
        error = self.assertFails(
            self.take_over_deferred({A: [], B: [DB, other], C: []}),
            deploy_lib.TakeOverRefused)
        self.assertIn("lonely: no reachable node holds a copy of its volume", str(error))
        self.assertEqual(self.units(B), [])

    def take_over_deferred(self, placement):
        from twisted.internet.defer import Deferred
        deployment = Deployment(nodes=[Node(h, apps) for h, apps in placement.items()])
        return Deferred.fromCoroutine(deploy_lib.deploy(
            self.net, self.client, deployment, PORT, lambda n, e: None,
            down={A: A}, on_takeover=self.reports.extend))


class ApplyDuringAntiEntropyTests(InMemoryNodes, SynchronousTestCase):
    ADDRESSES = (A, B, C)

    def test_apply_arriving_during_a_periodic_run_is_run_by_the_apply(self):
        """A periodic convergence waiting on a silent peer when an apply
        arrives leaves the new deployment to the apply's own run: its
        progress reaches flocker-deploy, with the apply's handoff timeout."""
        self.deploy({A: [], B: [], C: []})
        self.net.stall(C)
        periodic = self.nodes[B].convergence.converge_now()
        done = []
        periodic.addBoth(done.append)
        self.net.wait(0.5)
        self.assertEqual(done, [])  # still asking C, which does not answer
        self.deploy({A: [], B: [DB]})
        self.net.wait(10)
        self.assertEqual(done, [None])
        on_b = [e.get("action") for n, e in self.events if n == B]
        self.assertIn("start", on_b)
        self.assertEqual(self.units(B), ["db"])


class SecondTakeOverTests(InMemoryNodes, SynchronousTestCase):
    ADDRESSES = (A, B, C)

    def test_the_node_that_took_over_dies_before_replicating(self):
        """B takes over from A, then dies before replicating: declared down
        too, C takes over with an epoch above B's (the others saw B claim
        it), so when B returns it yields to C, never the other way."""
        self.deploy({A: [DB], B: [], C: []}, standby=[("db", (B, C))])
        replicator = self.nodes[A].replicator
        replicator.startService()
        self.addCleanup(replicator.stopService)
        self.net.wait(2)
        self.net.stall(A)
        self.deploy({A: [], B: [DB], C: []}, down={A: A})
        self.assertEqual(self.drive(self.nodes[B].pool.get(VolumeName("db"))).epoch, 2)
        # C hears of B's claim (anti-entropy), then B dies unreplicated.
        self.drive(self.nodes[C].convergence.converge_now())
        self.net.stall(B)
        self.deploy({A: [], B: [], C: [DB]}, down={A: A, B: B})
        theirs = self.drive(self.nodes[C].pool.get(VolumeName("db")))
        self.assertEqual((theirs.owner, theirs.epoch, theirs.read_only), (C, 3, False))
        self.assertEqual(self.units(C), ["db"])
        # B returns: it yields; C keeps the one writable copy.
        self.net.heal(B)
        self.drive(self.nodes[B].convergence.converge_now())
        self.drive(self.nodes[C].convergence.converge_now())
        self.assertEqual(self.units(B), [])
        self.assertEqual(self.units(C), ["db"])
        self.assertEqual(len(self.drive(self.nodes[B].pool.set_asides())), 1)
        self.assertFalse(self.drive(self.nodes[C].pool.get(VolumeName("db"))).read_only)
