"""
The ``IPeers`` contract: one suite run against ``MemoryPeers`` (the fake
the convergence tests trust) and ``SSHPeers`` (the real thing: conch, over
an in-memory network), so the fake is only trusted where it behaves like
the real one.

A fixture makes two nodes, ``CALLER`` and ``TARGET``, each with a
``Deployer`` on a memory pool, and returns (peers as CALLER reaches them,
the deployers by address, a ``run(d)`` that drives a Deferred to its end).
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from flocker_async.changes import ChangeFailed
from flocker_async.node._interfaces import IPeers
from flocker_async.volume import Snapshot, VolumeName
from flocker_async.volume._common import snapshots_to_prune  # noqa: F401  (the pool's own rule)

CALLER, TARGET, STRANGER = "10.8.0.1", "10.8.0.2", "10.8.0.9"
NAME = "db"


class CollectingSender:
    """``start_send`` for ``push``: a real send stream of ``snapshot``."""

    def __init__(self, pool, snapshot, base=None):
        self.pool = pool
        self.snapshot = snapshot
        self.base = base

    def __call__(self, consumer):
        return self.pool.send(self.snapshot, consumer, base=self.base)


def make_ipeers_tests(make_fixture):
    """A TestCase class checking an ``IPeers`` implementation;
    ``make_fixture(testcase)`` returns (peers, deployers, run)."""

    class IPeersTests(SynchronousTestCase):
        def setUp(self):
            self.peers, self.deployers, self.run = make_fixture(self)
            self.caller = self.deployers[CALLER]
            self.target = self.deployers[TARGET]
            self.volume = VolumeName(NAME)

        def push_new(self, **kwargs):
            """Snapshot the caller's volume and push it to the target
            (incrementally if the target has the previous snapshot)."""
            pool = self.caller.pool
            theirs = self.run(self.peers.snapshots(TARGET, NAME))
            snapshot = self.run(pool.snapshot(self.volume))
            base = None
            ours = [s.name for s in self.run(pool.snapshots(self.volume))]
            common = [s for s in ours[:-1] if s in theirs]
            if common:
                base = Snapshot(self.volume, common[-1])
            current = self.run(pool.get(self.volume))
            kwargs.setdefault("owner", current.owner)
            kwargs.setdefault("epoch", current.epoch)
            self.run(self.peers.push(TARGET, NAME, CollectingSender(pool, snapshot, base),
                                     **kwargs))
            return snapshot

        def test_interface(self):
            self.assertTrue(verifyObject(IPeers, self.peers))

        def test_snapshots_of_nothing(self):
            self.assertEqual(self.run(self.peers.snapshots(TARGET, NAME)), [])

        def test_push_full_then_incremental(self):
            pool = self.caller.pool
            self.run(pool.create(self.volume))
            pool.write_file(self.volume, "rows", b"1\n")
            first = self.push_new()
            self.assertEqual(self.run(self.peers.snapshots(TARGET, NAME)), [first.name])
            pool.write_file(self.volume, "rows", b"1\n2\n")
            second = self.push_new()
            self.assertEqual(self.run(self.peers.snapshots(TARGET, NAME))[-1], second.name)
            replica = self.run(self.target.pool.get(self.volume))
            # The replica records what the sender's copy says.
            self.assertEqual((replica.owner, replica.epoch, replica.read_only),
                             (CALLER, 1, True))
            with open(os.path.join(self.target.volume_path(NAME), "rows"), "rb") as f:
                self.assertEqual(f.read(), b"1\n2\n")

        def test_push_from_an_older_epoch_refused(self):
            pool = self.caller.pool
            self.run(pool.create(self.volume))
            self.push_new()
            self.run(self.target.pool.set_owner(self.volume, TARGET, 5))
            self.run(self.target.pool.set_read_only(self.volume, True))
            pool.write_file(self.volume, "late", b"x")
            error = self.assertRaises(Exception, self.push_new)
            self.assertIn("no longer owns it", str(error))

        def test_acquire_with_epoch(self):
            self.run(self.caller.pool.create(self.volume))
            self.push_new()
            self.run(self.peers.acquire(TARGET, NAME, 7))
            volume = self.run(self.target.pool.get(self.volume))
            self.assertEqual((volume.owner, volume.epoch, volume.read_only),
                             (TARGET, 7, False))
            # Idempotent once acquired.
            self.run(self.peers.acquire(TARGET, NAME, 7))

        def test_acquire_raises_epoch_by_default(self):
            self.run(self.caller.pool.create(self.volume))
            self.push_new()
            self.run(self.peers.acquire(TARGET, NAME))
            self.assertEqual(self.run(self.target.pool.get(self.volume)).epoch, 2)

        def test_acquire_with_stale_epoch_refused(self):
            self.run(self.caller.pool.create(self.volume))
            self.push_new(epoch=4)
            self.assertRaises(Exception, self.run, self.peers.acquire(TARGET, NAME, 3))
            volume = self.run(self.target.pool.get(self.volume))
            self.assertEqual((volume.owner, volume.read_only), (CALLER, True))

        def test_acquire_without_a_copy_fails(self):
            self.assertRaises(Exception, self.run, self.peers.acquire(TARGET, NAME))

        def test_unnamed_node_cannot_be_reached(self):
            error = self.assertRaises(Exception, self.run,
                                      self.peers.snapshots(STRANGER, NAME))
            self.assertIsInstance(error, ChangeFailed)
            self.assertIn(STRANGER, str(error))

        def test_sync(self):
            self.run(self.target.pool.create(self.volume))
            answer = self.run(self.peers.sync(TARGET, 0))
            self.assertEqual(answer.state.hostname, TARGET)
            [volume] = answer.state.volumes
            self.assertEqual((volume.name, volume.owner, volume.epoch), (NAME, TARGET, 1))
            self.assertIsInstance(answer.generation, int)

    return IPeersTests
