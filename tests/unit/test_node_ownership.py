"""
Peer commands bound to the volume's owner (issue 17, point 2 and 3): who
may ``acquire`` a copy or push an increment into it, a ``--replace`` that
keeps the old replica until the new stream arrived whole, one operation
per volume at a time, and a receive whose sender went silent.  Driven
through the node's commands with a fake session and a fake clock.
"""

import os

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from flocker_async.node._handoffs import DOWN_WAIT, RECEIVE_IDLE_TIMEOUT
from flocker_async.ssh import PEER, CommandError, generate_key
from flocker_async.volume import MemoryStoragePool, VolumeName
from flocker_async.volume._transfer import copy_snapshot

from ..testtools.volume import CollectingConsumer
from .test_node_commands import N2, FakeSession, make_node

N3 = "10.1.0.3"
DB = VolumeName("db")


class OwnershipTests(SynchronousTestCase):
    def setUp(self):
        self.clock, self.deployer, self.convergence, self.commands = make_node(self)
        self.pool = self.deployer.pool
        # The owner's pool (on "N2"), with the volume's lineage.
        self.source = MemoryStoragePool(self.clock, os.path.join(self.mktemp(), "src"), N2)
        self.successResultOf(self.source.create(DB))
        self.source.write_file(DB, "rows", b"1\n")
        self.s1 = self.successResultOf(self.source.snapshot(DB, "s1"))

    def settle(self, d):
        """``d``'s result once the memory streams' zero-delay calls ran
        (no simulated time passes)."""
        for _ in range(10000):
            self.clock.advance(0)
            if d.called:
                break
        return self.successResultOf(d)

    def replica(self, owner, epoch):
        """A read-only replica of db here, at s1, recording ``owner``."""
        self.settle(copy_snapshot(self.source, self.s1, self.pool))
        self.successResultOf(self.pool.set_owner(DB, owner, epoch))
        return self.successResultOf(self.pool.get(DB))

    def command(self, command, args, session=None):
        session = session or FakeSession()
        running = self.commands[command].run(PEER, args, session)
        self.clock.advance(0)
        return running, session

    def increment(self):
        """The owner's next snapshot as an incremental stream from s1."""
        self.source.write_file(DB, "rows", b"1\n2\n")
        s2 = self.successResultOf(self.source.snapshot(DB, "s2"))
        consumer = CollectingConsumer()
        self.settle(self.source.send(s2, consumer, base=self.s1).done)
        return consumer.data

    def feed(self, session, data):
        session.consumer.write(data)
        session.stdin_done.callback(None)
        for _ in range(100):
            self.clock.advance(0)

    def assert_unchanged(self, owner, epoch):
        volume = self.successResultOf(self.pool.get(DB))
        self.assertEqual((volume.owner, volume.epoch, volume.read_only),
                         (owner, epoch, True))
        self.assertEqual([s.name for s in self.successResultOf(self.pool.snapshots(DB))],
                         ["s1"])

    # acquire ---------------------------------------------------------------

    def test_acquire_by_a_peer_that_is_not_the_owner_is_refused(self):
        """A replica whose recorded owner is N3 does not become writable
        because N2 asks: that would make two writable copies."""
        self.replica(N3, 2)
        running, _ = self.command("acquire", ["db", "5"])
        self.clock.advance(DOWN_WAIT + 1)
        error = self.failureResultOf(running, CommandError).value
        self.assertIn(N2, str(error))
        self.assertIn("records %s as its owner" % (N3,), str(error))
        self.assert_unchanged(N3, 2)

    def test_acquire_by_the_recorded_owner(self):
        self.replica(N2, 2)
        running, _ = self.command("acquire", ["db", "3"])
        self.assertEqual(self.successResultOf(running), 0)
        volume = self.successResultOf(self.pool.get(DB))
        self.assertEqual((volume.owner, volume.epoch, volume.read_only),
                         (self.deployer.hostname, 3, False))

    def test_acquire_when_the_recorded_owner_is_declared_down(self):
        """A take-over: the freshest copy's holder hands the volume over
        although the copy here names the dead owner."""
        self.replica(N3, 2)
        self.deployer.handoffs.set_down([N3])
        running, _ = self.command("acquire", ["db", "3"])
        self.assertEqual(self.successResultOf(running), 0)

    def test_refusal_waits_for_the_deployment_declaring_the_owner_down(self):
        """A take-over's hand-over can arrive before this node adopted the
        deployment that declares the owner down: it waits for it."""
        self.replica(N3, 2)
        running, _ = self.command("acquire", ["db", "3"])
        self.clock.advance(DOWN_WAIT / 2)
        self.assertNoResult(running)
        self.deployer.handoffs.set_down([N3])
        self.clock.advance(1)
        self.assertEqual(self.successResultOf(running), 0)

    def test_a_key_of_no_node_is_refused(self):
        self.replica(N2, 2)
        session = FakeSession(key=generate_key())
        running = self.commands["acquire"].run(PEER, ["db", "3"], session)
        self.assertIn("no node", str(self.failureResultOf(running, CommandError).value))
        self.assert_unchanged(N2, 2)

    # receive -----------------------------------------------------------------

    def test_increment_from_a_peer_that_is_not_the_owner_is_refused(self):
        self.replica(N3, 2)
        data = self.increment()
        running, session = self.command("receive", ["--owner", N3, "--epoch", "2", "db"])
        self.clock.advance(DOWN_WAIT + 1)
        error = self.failureResultOf(running, CommandError).value
        self.assertIn("records %s as its owner" % (N3,), str(error))
        self.assertIsNone(session.consumer)
        self.assertTrue(data)
        self.assert_unchanged(N3, 2)

    def test_increment_from_the_recorded_owner(self):
        self.replica(N2, 2)
        running, session = self.command("receive", ["--owner", N2, "--epoch", "2", "db"])
        self.feed(session, self.increment())
        self.assertEqual(self.successResultOf(running), 0)
        self.assertEqual([s.name for s in self.successResultOf(self.pool.snapshots(DB))],
                         ["s1", "s2"])

    def test_increment_from_a_newer_owner(self):
        """The node that took over (a higher epoch, naming itself owner)
        replicates to a copy that still names the old owner."""
        self.replica(N3, 2)
        running, session = self.command("receive", ["--owner", N2, "--epoch", "3", "db"])
        self.feed(session, self.increment())
        self.assertEqual(self.successResultOf(running), 0)
        volume = self.successResultOf(self.pool.get(DB))
        self.assertEqual((volume.owner, volume.epoch), (N2, 3))

    def test_claiming_a_higher_epoch_for_another_node_is_refused(self):
        self.replica(N3, 2)
        running, _ = self.command("receive", ["--owner", N3, "--epoch", "9", "db"])
        self.clock.advance(DOWN_WAIT + 1)
        self.failureResultOf(running, CommandError)
        self.assert_unchanged(N3, 2)

    def test_replace_with_junk_keeps_the_replica(self):
        """``receive --replace`` followed by five junk bytes: the replica
        is not destroyed before a byte was checked."""
        self.replica(N3, 2)
        running, session = self.command("receive", ["--replace", "db"])
        self.feed(session, b"junk!")
        self.failureResultOf(running, CommandError)
        self.assert_unchanged(N3, 2)

    def test_silent_sender_is_cut(self):
        """A sender that stops sending (crashed, partitioned without a FIN)
        has its receive cut after RECEIVE_IDLE_TIMEOUT seconds, and the
        volume can be pushed to again."""
        self.replica(N2, 2)
        data = self.increment()
        running, session = self.command("receive", ["--owner", N2, "--epoch", "2", "db"])
        session.consumer.write(data[:10])
        self.clock.advance(RECEIVE_IDLE_TIMEOUT - 1)
        self.assertNoResult(running)
        session.consumer.write(data[10:20])
        self.clock.advance(RECEIVE_IDLE_TIMEOUT - 1)
        self.assertNoResult(running)
        self.clock.advance(2)
        error = self.failureResultOf(running, CommandError).value
        self.assertIn("nothing arrived from the sender for %d s"
                      % (RECEIVE_IDLE_TIMEOUT,), str(error))
        self.assert_unchanged(N2, 2)
        again, session = self.command("receive", ["--owner", N2, "--epoch", "2", "db"])
        self.feed(session, data)
        self.assertEqual(self.successResultOf(again), 0)

    # one at a time -------------------------------------------------------------

    def test_acquire_waits_for_a_receive_in_progress(self):
        self.replica(N2, 2)
        receiving, session = self.command("receive", ["--owner", N2, "--epoch", "2", "db"])
        acquiring, _ = self.command("acquire", ["db", "3"])
        self.assertNoResult(acquiring)
        self.assertTrue(self.successResultOf(self.pool.get(DB)).read_only)
        self.feed(session, self.increment())
        self.assertEqual(self.successResultOf(receiving), 0)
        self.assertEqual(self.successResultOf(acquiring), 0)
        self.assertFalse(self.successResultOf(self.pool.get(DB)).read_only)

    def test_discard_set_aside_waits_for_a_receive_in_progress(self):
        self.replica(N2, 2)
        handoffs = self.deployer.handoffs
        receiving, session = self.command("receive", ["--owner", N2, "--epoch", "2", "db"])
        blocked = Deferred()
        order = []
        locked = handoffs.locked("db", lambda: order.append("discard") or blocked)
        self.assertEqual(order, [])
        self.feed(session, self.increment())
        self.assertEqual(order, ["discard"])
        blocked.callback(None)
        self.successResultOf(locked)
        self.successResultOf(receiving)
        # Nothing is left holding locks.
        self.assertEqual(handoffs._locks, {})
