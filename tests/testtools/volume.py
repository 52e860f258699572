"""
The one contract suite for ``IStoragePool``: run against MemoryStoragePool
in tests/unit and against ZFSStoragePool on real zfs-fuse pools in
tests/functional.  A fake that passes this is trusted by the convergence
tests.
"""

from __future__ import annotations

import errno
import os
from typing import Callable

from attrs import frozen
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.interfaces import IConsumer
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from flocker_async.volume import (
    IReceiveStream,
    ISendStream,
    IStoragePool,
    IVolume,
    InvalidName,
    ReceiveFailed,
    SendFailed,
    SetAside,
    Snapshot,
    SnapshotExists,
    VolumeError,
    VolumeExists,
    VolumeName,
    VolumeNotFound,
    copy_snapshot,
)


@frozen
class StoragePoolFixture:
    """
    ``make_pool(test_case, node_id)`` returns a new, empty pool (cleaned up
    with the test); ``reopen(pool)`` a new pool object over the same
    storage, as after a restart; ``write_file(pool, name, path, data)``
    writes into a volume as an application would (raising ``OSError``).
    """

    make_pool: Callable
    reopen: Callable
    write_file: Callable


def read_tree(root: str) -> dict:
    """Relative path -> file bytes (or ``None`` for a directory)."""
    contents = {}

    def fail(error):
        raise error  # os.walk would skip a directory it cannot list
    for directory, dirnames, filenames in os.walk(root, onerror=fail):
        for name in dirnames:
            path = os.path.join(directory, name)
            contents[os.path.relpath(path, root)] = None
        for name in filenames:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                contents[os.path.relpath(path, root)] = f.read()
    return contents


@implementer(IConsumer)
class CollectingConsumer:
    """Keeps what it is given; records its producer's life cycle."""

    def __init__(self):
        self.chunks = []
        self.producer = None
        self.streaming = None
        self.registered = 0
        self.unregistered = 0

    def registerProducer(self, producer, streaming):
        self.producer = producer
        self.streaming = streaming
        self.registered += 1

    def unregisterProducer(self):
        self.producer = None
        self.unregistered += 1

    def write(self, data):
        self.chunks.append(data)

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


class PausingConsumer(CollectingConsumer):
    """Pauses its producer after every write and resumes it a bit later;
    counts any write that arrives while it is paused."""

    def __init__(self):
        super().__init__()
        self.paused = False
        self.writes_while_paused = 0
        self.pauses = 0

    def write(self, data):
        if self.paused:
            self.writes_while_paused += 1
        super().write(data)
        if self.producer is not None and not self.paused:
            self.paused = True
            self.pauses += 1
            self.producer.pauseProducing()
            reactor.callLater(0.001, self._resume)

    def _resume(self):
        self.paused = False
        if self.producer is not None:
            self.producer.resumeProducing()


class StoppingConsumer(CollectingConsumer):
    """Stops its producer after the first write."""

    def __init__(self):
        super().__init__()
        self.writes_after_stop = 0
        self.stopped = False

    def write(self, data):
        if self.stopped:
            self.writes_after_stop += 1
        super().write(data)
        if not self.stopped and self.producer is not None:
            self.stopped = True
            self.producer.stopProducing()


@implementer(IConsumer)
class DyingSender:
    """
    Passes a stream on to a receiver, but after the first write stops the
    producer: the sending side dies half way through the stream.
    """

    def __init__(self, receiver):
        self.receiver = receiver
        self.producer = None
        self.killed = False

    def registerProducer(self, producer, streaming):
        self.producer = producer
        self.receiver.registerProducer(producer, streaming)

    def unregisterProducer(self):
        self.producer = None
        self.receiver.unregisterProducer()

    def write(self, data):
        if self.killed:
            return
        # Half of the first chunk: never a complete stream, however big
        # the chunks are.
        self.receiver.write(data[:len(data) // 2])
        self.killed = True
        self.producer.stopProducing()


def make_istoragepool_tests(fixture: StoragePoolFixture):
    """A TestCase class checking an IStoragePool implementation."""

    class IStoragePoolTests(TestCase):
        def setUp(self):
            self.pool = fixture.make_pool(self, "node-a")
            self.name = VolumeName("mysql")

        def other_pool(self, node_id="node-b"):
            return fixture.make_pool(self, node_id)

        def write(self, pool, path, data, name=None):
            fixture.write_file(pool, name or self.name, path, data)

        @inlineCallbacks
        def volume_with_data(self, pool=None):
            pool = pool or self.pool
            volume = yield pool.create(self.name)
            self.write(pool, "data.bin", os.urandom(200 * 1024))
            self.write(pool, "sub/dir/note.txt", b"hello")
            self.write(pool, "gone.txt", b"to be deleted")
            return volume

        def stream_bytes(self, snapshot, base=None):
            return self.stream_bytes_of(self.pool, snapshot, base)

        @inlineCallbacks
        def stream_bytes_of(self, pool, snapshot, base=None):
            consumer = CollectingConsumer()
            stream = pool.send(snapshot, consumer, base)
            yield stream.done
            return consumer.data

        # Interfaces and values --------------------------------------------

        @inlineCallbacks
        def test_interfaces(self):
            """The pool and its volumes provide their interfaces."""
            self.assertTrue(verifyObject(IStoragePool, self.pool))
            volume = yield self.pool.create(self.name)
            self.assertTrue(verifyObject(IVolume, volume))
            receiver = self.other_pool().receive(self.name)
            self.assertTrue(verifyObject(IReceiveStream, receiver))
            receiver.abort("not used")
            yield self.assertFailure(receiver.done, ReceiveFailed)
            snapshot = yield self.pool.snapshot(self.name)
            stream = self.pool.send(snapshot, CollectingConsumer())
            self.assertTrue(verifyObject(ISendStream, stream))
            yield stream.done

        # Create, look up, enumerate ----------------------------------------

        @inlineCallbacks
        def test_create(self):
            """A new volume is owned here, writable, mounted under the mount
            root, and ``get`` returns it."""
            volume = yield self.pool.create(self.name)
            self.assertEqual(
                (volume.name, volume.owner, volume.read_only,
                 volume.mountpoint, volume.maximum_size),
                (self.name, "node-a", False,
                 os.path.join(self.pool.mount_root, "mysql"), None))
            self.assertTrue(volume.owned_by("node-a"))
            self.assertFalse(volume.owned_by("node-b"))
            self.assertTrue(os.path.isdir(volume.mountpoint))
            self.assertEqual(os.listdir(volume.mountpoint), [])
            again = yield self.pool.get(self.name)
            self.assertEqual(again, volume)

        @inlineCallbacks
        def test_create_maximum_size(self):
            """``maximum_size`` is recorded."""
            volume = yield self.pool.create(self.name, maximum_size=64 << 20)
            self.assertEqual(volume.maximum_size, 64 << 20)
            again = yield self.pool.get(self.name)
            self.assertEqual(again.maximum_size, 64 << 20)

        @inlineCallbacks
        def test_maximum_size_enforced(self):
            """Writing more than ``maximum_size`` fails with EDQUOT."""
            yield self.pool.create(self.name, maximum_size=4 << 20)
            self.write(self.pool, "small", b"x" * 1024)
            error = self.assertRaises(
                OSError, self.write, self.pool, "big", os.urandom(8 << 20))
            self.assertEqual(error.errno, errno.EDQUOT)

        @inlineCallbacks
        def test_create_exists(self):
            """Creating an existing volume fails with VolumeExists."""
            yield self.pool.create(self.name)
            yield self.assertFailure(self.pool.create(self.name), VolumeExists)

        @inlineCallbacks
        def test_get_missing(self):
            """Looking up a missing volume fails with VolumeNotFound."""
            yield self.assertFailure(self.pool.get(self.name), VolumeNotFound)

        @inlineCallbacks
        def test_enumerate(self):
            """Every volume, sorted by name, all owned here."""
            empty = yield self.pool.enumerate()
            self.assertEqual(empty, [])
            b = yield self.pool.create(VolumeName("web"))
            a = yield self.pool.create(VolumeName("db"))
            volumes = yield self.pool.enumerate()
            self.assertEqual(volumes, [a, b])
            owned = yield self.pool.owned_volumes()
            self.assertEqual(owned, [a, b])
            replicas = yield self.pool.replicas()
            self.assertEqual(replicas, [])

        # Read-only and owner ----------------------------------------------

        @inlineCallbacks
        def test_read_only(self):
            """A read-only volume refuses writes; made writable it takes
            them again."""
            yield self.pool.create(self.name)
            self.write(self.pool, "before", b"1")
            volume = yield self.pool.set_read_only(self.name, True)
            self.assertTrue(volume.read_only)
            again = yield self.pool.get(self.name)
            self.assertTrue(again.read_only)
            error = self.assertRaises(
                OSError, self.write, self.pool, "during", b"2")
            self.assertEqual(error.errno, errno.EROFS)
            volume = yield self.pool.set_read_only(self.name, False)
            self.assertFalse(volume.read_only)
            self.write(self.pool, "after", b"3")
            self.assertEqual(
                read_tree(volume.mountpoint), {"before": b"1", "after": b"3"})

        @inlineCallbacks
        def test_set_owner(self):
            """Changing the owner turns an owned volume into a replica and
            back."""
            yield self.pool.create(self.name)
            volume = yield self.pool.set_owner(self.name, "node-b")
            self.assertEqual(volume.owner, "node-b")
            owned = yield self.pool.owned_volumes()
            replicas = yield self.pool.replicas()
            self.assertEqual(([v.name for v in owned],
                              [v.name for v in replicas]), ([], [self.name]))
            volume = yield self.pool.set_owner(self.name, "node-a")
            self.assertTrue(volume.owned_by("node-a"))

        @inlineCallbacks
        def test_set_owner_invalid(self):
            """An owner that is not a node identity is refused."""
            yield self.pool.create(self.name)
            yield self.assertFailure(
                self.pool.set_owner(self.name, "node b;rm"), InvalidName)
            volume = yield self.pool.get(self.name)
            self.assertEqual(volume.owner, "node-a")

        @inlineCallbacks
        def test_set_missing(self):
            """Changing a missing volume fails with VolumeNotFound."""
            yield self.assertFailure(
                self.pool.set_owner(self.name, "node-b"), VolumeNotFound)
            yield self.assertFailure(
                self.pool.set_read_only(self.name, True), VolumeNotFound)

        @inlineCallbacks
        def test_recorded_on_disk(self):
            """Owner, epoch, read-only flag and snapshots survive a
            restart."""
            yield self.pool.create(self.name, maximum_size=32 << 20)
            yield self.pool.snapshot(self.name, "s1")
            yield self.pool.set_owner(self.name, "node-b", epoch=7)
            before = yield self.pool.set_read_only(self.name, True)
            self.assertEqual((before.owner, before.epoch), ("node-b", 7))
            reopened = fixture.reopen(self.pool)
            self.addCleanup(reopened.close)
            after = yield reopened.get(self.name)
            self.assertEqual(after, before)
            snapshots = yield reopened.snapshots(self.name)
            self.assertEqual(snapshots, [Snapshot(self.name, "s1")])

        # Ownership epochs ---------------------------------------------------

        async def test_create_records_epoch_one(self):
            """A new volume has epoch 1."""
            volume = await self.pool.create(self.name)
            self.assertEqual(volume.epoch, 1)
            self.assertEqual((await self.pool.get(self.name)).epoch, 1)
            [listed] = await self.pool.enumerate()
            self.assertEqual(listed.epoch, 1)

        async def test_set_owner_with_epoch(self):
            """``set_owner`` records the epoch when given one, and leaves
            it as it is when not."""
            await self.pool.create(self.name)
            volume = await self.pool.set_owner(self.name, "node-b", epoch=2)
            self.assertEqual((volume.owner, volume.epoch), ("node-b", 2))
            volume = await self.pool.set_owner(self.name, "node-a")
            self.assertEqual((volume.owner, volume.epoch), ("node-a", 2))
            volume = await self.pool.set_owner(self.name, "node-a", 3)
            self.assertEqual(await self.pool.get(self.name), volume)
            self.assertEqual(volume.epoch, 3)

        async def test_set_owner_invalid_epoch(self):
            """An epoch that is not a positive int is refused and nothing
            changes."""
            await self.pool.create(self.name)
            for bad in (0, -1, True, 1.5, "3", 2 ** 64 * 0.5):
                await self.assertFailure(
                    self.pool.set_owner(self.name, "node-b", epoch=bad),
                    ValueError)
            volume = await self.pool.get(self.name)
            self.assertEqual((volume.owner, volume.epoch), ("node-a", 1))
            await self.assertFailure(
                self.pool.set_owner(VolumeName("nope"), "node-b", epoch=2),
                VolumeNotFound)

        async def test_received_replica_has_no_owner_or_epoch(self):
            """A stream carries no owner or epoch: a new replica has owner
            None and epoch 0 until ``set_owner``; an existing copy keeps
            what was recorded on it."""
            await self.volume_with_data()
            await self.pool.set_owner(self.name, "node-a", epoch=5)
            s1 = await self.pool.snapshot(self.name, "s1")
            target = self.other_pool()
            await copy_snapshot(self.pool, s1, target)
            replica = await target.get(self.name)
            self.assertEqual((replica.owner, replica.epoch), (None, 0))
            await target.set_owner(self.name, "node-a", epoch=5)
            self.write(self.pool, "more", b"after s1")
            s2 = await self.pool.snapshot(self.name, "s2")
            await self.pool.set_owner(self.name, "node-a", epoch=6)
            await copy_snapshot(self.pool, s2, target, base=s1)
            replica = await target.get(self.name)
            self.assertEqual((replica.owner, replica.epoch), ("node-a", 5))

        # Set-aside copies ---------------------------------------------------

        async def set_aside_with_data(self, pool=None, label="diverged"):
            """A volume with data, set aside; returns (SetAside, files)."""
            pool = pool or self.pool
            volume = await self.volume_with_data(pool)
            files = read_tree(volume.mountpoint)
            before = reactor.seconds()
            aside = await pool.set_aside(self.name, label)
            self.assertTrue(before <= aside.created <= reactor.seconds())
            return aside, files

        async def test_set_aside(self):
            """The copy leaves the volume namespace with all its data, read
            at its own mountpoint, and is listed with owner, epoch, size and
            time."""
            await self.volume_with_data()
            await self.pool.set_owner(self.name, "node-a", epoch=3)
            files = read_tree((await self.pool.get(self.name)).mountpoint)
            before = reactor.seconds()
            aside = await self.pool.set_aside(self.name, "diverged-1_x")
            after = reactor.seconds()
            self.assertIsInstance(aside, SetAside)
            self.assertEqual(
                (aside.volume, aside.label, aside.owner, aside.epoch,
                 aside.mountpoint),
                (self.name, "diverged-1_x", "node-a", 3,
                 os.path.join(self.pool.mount_root,
                              "mysql.set-aside.diverged-1_x")))
            self.assertTrue(before <= aside.created <= after)
            self.assertGreaterEqual(aside.referenced, 200 * 1024)
            self.assertEqual(read_tree(aside.mountpoint), files)
            await self.assertFailure(self.pool.get(self.name), VolumeNotFound)
            await self.assertFailure(self.pool.snapshots(self.name),
                                     VolumeNotFound)
            self.assertEqual(await self.pool.enumerate(), [])
            self.assertEqual(await self.pool.owned_volumes(), [])
            self.assertEqual(await self.pool.replicas(), [])
            self.assertEqual(await self.pool.set_asides(), [aside])

        async def test_set_aside_then_new_copy(self):
            """After a set-aside a new copy is created under the name; the
            set-aside one keeps its data."""
            aside, files = await self.set_aside_with_data()
            volume = await self.pool.create(self.name)
            self.assertEqual(read_tree(volume.mountpoint), {})
            self.write(self.pool, "new.txt", b"the new copy")
            self.assertEqual(read_tree(aside.mountpoint), files)
            self.assertEqual(read_tree(volume.mountpoint),
                             {"new.txt": b"the new copy"})
            self.assertEqual([v.name for v in await self.pool.enumerate()],
                             [self.name])
            self.assertEqual(await self.pool.set_asides(), [aside])

        async def test_set_aside_then_receive(self):
            """A diverged replica set aside makes room for a full copy of
            the owner's lineage; set-aside data survives discarding that
            replica, pruning and trimming."""
            source = self.other_pool("node-b")
            await self.volume_with_data(source)
            self.write(source, "lineage", b"the owner's")
            s1 = await source.snapshot(self.name, "flocker-s1")
            await copy_snapshot(source, s1, self.pool)
            await self.pool.set_read_only(self.name, False)
            self.write(self.pool, "local-only", b"written here, diverged")
            files = read_tree((await self.pool.get(self.name)).mountpoint)
            aside = await self.pool.set_aside(self.name, "diverged")
            self.assertEqual((aside.owner, aside.epoch), (None, 0))
            s2 = await source.snapshot(self.name, "flocker-s2")
            received = await copy_snapshot(source, s2, self.pool)
            self.assertEqual(received, s2)
            replica = await self.pool.get(self.name)
            self.assertNotIn("local-only", read_tree(replica.mountpoint))
            s3 = await source.snapshot(self.name, "flocker-s3")
            await copy_snapshot(source, s3, self.pool, base=s2)
            await self.pool.trim_snapshots(self.name, 1)
            await self.pool.prune_snapshots(
                self.name, await source.snapshots(self.name))
            await self.pool.discard_replica(self.name)
            self.assertEqual(await self.pool.set_asides(), [aside])
            self.assertEqual(read_tree(aside.mountpoint), files)

        async def test_set_aside_invalid_label(self):
            """Labels are 1-64 of [A-Za-z0-9_-]; nothing else is taken and
            the volume stays."""
            await self.volume_with_data()
            for bad in ("", "a.b", "a/b", "a b", "x" * 65, "a@b", "é", None):
                await self.assertFailure(
                    self.pool.set_aside(self.name, bad), InvalidName)
            await self.pool.get(self.name)
            self.assertEqual(await self.pool.set_asides(), [])
            aside = await self.pool.set_aside(self.name, "x" * 64)
            self.assertEqual(aside.label, "x" * 64)

        async def test_set_aside_missing(self):
            await self.assertFailure(
                self.pool.set_aside(self.name, "label"), VolumeNotFound)

        async def test_set_aside_label_taken(self):
            """A label already set aside for this volume is refused; the
            new copy stays as it is."""
            aside, files = await self.set_aside_with_data()
            await self.pool.create(self.name)
            self.write(self.pool, "new.txt", b"new")
            error = await self.assertFailure(
                self.pool.set_aside(self.name, "diverged"), VolumeError)
            self.assertIn("diverged", str(error))
            volume = await self.pool.get(self.name)
            self.assertEqual(read_tree(volume.mountpoint),
                             {"new.txt": b"new"})
            self.assertEqual(await self.pool.set_asides(), [aside])
            self.assertEqual(read_tree(aside.mountpoint), files)

        async def test_set_asides_oldest_first(self):
            """Every set-aside copy of the pool, oldest first, also after a
            restart."""
            web = VolumeName("web")
            await self.pool.create(web)
            first = await self.pool.set_aside(web, "zz")
            await self.pool.create(self.name)
            second = await self.pool.set_aside(self.name, "aa")
            await self.pool.create(self.name)
            third = await self.pool.set_aside(self.name, "mm")
            self.assertEqual(await self.pool.set_asides(),
                             [first, second, third])
            reopened = fixture.reopen(self.pool)
            self.addCleanup(reopened.close)
            self.assertEqual(await reopened.set_asides(),
                             [first, second, third])

        async def test_discard_set_aside(self):
            """An operator's discard removes the set-aside copy; the volume
            of the same name is untouched; a second discard fails."""
            aside, files = await self.set_aside_with_data()
            await self.pool.create(self.name)
            self.write(self.pool, "new.txt", b"new")
            self.assertIsNone(
                await self.pool.discard_set_aside(self.name, "diverged"))
            self.assertEqual(await self.pool.set_asides(), [])
            volume = await self.pool.get(self.name)
            self.assertEqual(read_tree(volume.mountpoint),
                             {"new.txt": b"new"})
            error = await self.assertFailure(
                self.pool.discard_set_aside(self.name, "diverged"),
                VolumeError)
            self.assertIn("diverged", str(error))
            await self.assertFailure(
                self.pool.discard_set_aside(self.name, "a.b"), InvalidName)
            # The label is free again.
            again = await self.pool.set_aside(self.name, "diverged")
            self.assertEqual(read_tree(again.mountpoint),
                             {"new.txt": b"new"})

        async def test_close(self):
            """``close`` returns None; the pool works on afterwards."""
            await self.pool.create(self.name)
            self.assertIsNone(self.pool.close())
            await self.pool.snapshot(self.name, "s1")
            self.assertIsNone(self.pool.close())
            self.assertIsNone(self.pool.close())

        # Snapshots ----------------------------------------------------------

        @inlineCallbacks
        def test_snapshots_oldest_first(self):
            """Snapshots are listed in the order they were taken, not by
            name."""
            yield self.pool.create(self.name)
            for name in ("zz", "aa", "mm"):
                snapshot = yield self.pool.snapshot(self.name, name)
                self.assertEqual(snapshot, Snapshot(self.name, name))
            snapshots = yield self.pool.snapshots(self.name)
            self.assertEqual([s.name for s in snapshots], ["zz", "aa", "mm"])

        @inlineCallbacks
        def test_generated_snapshot_names(self):
            """Without a name, each snapshot gets a new unique one."""
            yield self.pool.create(self.name)
            first = yield self.pool.snapshot(self.name)
            second = yield self.pool.snapshot(self.name)
            self.assertNotEqual(first, second)
            snapshots = yield self.pool.snapshots(self.name)
            self.assertEqual(snapshots, [first, second])

        @inlineCallbacks
        def test_snapshot_exists(self):
            """Taking a snapshot twice under one name fails."""
            yield self.pool.create(self.name)
            yield self.pool.snapshot(self.name, "s1")
            yield self.assertFailure(
                self.pool.snapshot(self.name, "s1"), SnapshotExists)

        @inlineCallbacks
        def test_snapshot_missing_volume(self):
            """Snapshots of a missing volume: VolumeNotFound."""
            yield self.assertFailure(
                self.pool.snapshot(self.name, "s1"), VolumeNotFound)
            yield self.assertFailure(
                self.pool.snapshots(self.name), VolumeNotFound)

        # Pruning and trimming: only generated snapshots (``flocker-...``,
        # as ``snapshot`` names them) ever go.

        def snaps(self, *names):
            return [Snapshot(self.name, n) for n in names]

        async def take(self, *names):
            for name in names:
                await self.pool.snapshot(self.name, name)

        async def snapshot_names(self, pool=None):
            return [s.name for s in
                    await (pool or self.pool).snapshots(self.name)]

        async def test_prune_keeps_newest_common(self):
            """Snapshots older than the newest common one go; it and the
            newer ones stay, and so does the data."""
            await self.volume_with_data()
            await self.take("flocker-s1", "flocker-s2", "flocker-s3",
                            "flocker-s4")
            peer = self.snaps("flocker-s0", "flocker-s1", "flocker-s2",
                              "flocker-s9")
            destroyed = await self.pool.prune_snapshots(self.name, peer)
            self.assertEqual(destroyed, self.snaps("flocker-s1"))
            self.assertEqual(await self.snapshot_names(),
                             ["flocker-s2", "flocker-s3", "flocker-s4"])
            volume = await self.pool.get(self.name)
            self.assertEqual(read_tree(volume.mountpoint)["sub/dir/note.txt"],
                             b"hello")

        async def test_prune_nothing_common(self):
            """With no snapshot in common nothing is destroyed."""
            await self.pool.create(self.name)
            await self.take("flocker-s1", "flocker-s2")
            destroyed = await self.pool.prune_snapshots(
                self.name, self.snaps("flocker-other"))
            self.assertEqual(destroyed, [])
            self.assertEqual(await self.snapshot_names(),
                             ["flocker-s1", "flocker-s2"])

        async def test_prune_newest_is_common(self):
            """When the newest snapshot is the common one, it alone stays."""
            await self.pool.create(self.name)
            await self.take("flocker-s1", "flocker-s2", "flocker-s3")
            destroyed = await self.pool.prune_snapshots(
                self.name, self.snaps("flocker-s3"))
            self.assertEqual(destroyed,
                             self.snaps("flocker-s1", "flocker-s2"))
            self.assertEqual(await self.snapshot_names(), ["flocker-s3"])

        async def test_prune_generated_names(self):
            """Snapshots taken without a name are generated: they are
            pruned."""
            await self.pool.create(self.name)
            first = await self.pool.snapshot(self.name)
            second = await self.pool.snapshot(self.name)
            destroyed = await self.pool.prune_snapshots(self.name, [second])
            self.assertEqual(destroyed, [first])

        async def test_prune_never_other_snapshots(self):
            """Snapshots we did not generate (a user's own) are never
            pruned, though they count as common."""
            await self.pool.create(self.name)
            await self.take("flocker-s1", "users-own", "flocker-s2",
                            "before-upgrade", "flocker-s3")
            destroyed = await self.pool.prune_snapshots(
                self.name, self.snaps("before-upgrade", "flocker-s3"))
            self.assertEqual(destroyed,
                             self.snaps("flocker-s1", "flocker-s2"))
            self.assertEqual(await self.snapshot_names(),
                             ["users-own", "before-upgrade", "flocker-s3"])

        async def test_prune_several_peers(self):
            """With several peers, what stays starts at the oldest of their
            newest common snapshots; a peer sharing nothing does not
            count."""
            await self.pool.create(self.name)
            await self.take("flocker-s1", "flocker-s2", "flocker-s3",
                            "flocker-s4", "flocker-s5")
            destroyed = await self.pool.prune_snapshots(
                self.name, self.snaps("flocker-s1", "flocker-s4"),
                self.snaps("flocker-s3"), self.snaps("flocker-s9"),
                self.snaps("flocker-s2", "flocker-s5"))
            self.assertEqual(destroyed,
                             self.snaps("flocker-s1", "flocker-s2"))
            self.assertEqual(await self.snapshot_names(),
                             ["flocker-s3", "flocker-s4", "flocker-s5"])

        async def test_trim_snapshots(self):
            """All but the newest ``keep`` generated snapshots go; others
            neither go nor count."""
            await self.volume_with_data()
            await self.take("flocker-s1", "users-own", "flocker-s2",
                            "flocker-s3", "flocker-s4")
            destroyed = await self.pool.trim_snapshots(self.name, 2)
            self.assertEqual(destroyed,
                             self.snaps("flocker-s1", "flocker-s2"))
            self.assertEqual(await self.snapshot_names(),
                             ["users-own", "flocker-s3", "flocker-s4"])
            destroyed = await self.pool.trim_snapshots(self.name, 1)
            self.assertEqual(destroyed, self.snaps("flocker-s3"))
            self.assertEqual(await self.pool.trim_snapshots(self.name, 5), [])
            volume = await self.pool.get(self.name)
            self.assertEqual(read_tree(volume.mountpoint)["sub/dir/note.txt"],
                             b"hello")

        async def test_trim_snapshots_invalid(self):
            """``keep`` is at least 1; a missing volume is VolumeNotFound."""
            await self.pool.create(self.name)
            await self.take("flocker-s1")
            for bad in (0, -1, None, 1.5):
                await self.assertFailure(
                    self.pool.trim_snapshots(self.name, bad), ValueError)
            self.assertEqual(await self.snapshot_names(), ["flocker-s1"])
            await self.assertFailure(
                self.pool.trim_snapshots(VolumeName("nope"), 1),
                VolumeNotFound)

        async def test_trim_keeps_replica_receiving(self):
            """A standby trimmed to its newest snapshot after each receive
            still takes the next increment."""
            await self.volume_with_data()
            target = self.other_pool()
            previous = None
            for i in range(3):
                self.write(self.pool, "round", b"%d" % (i,))
                snapshot = await self.pool.snapshot(self.name)
                await copy_snapshot(self.pool, snapshot, target,
                                    base=previous)
                await target.trim_snapshots(self.name, 1)
                await self.pool.prune_snapshots(
                    self.name, await target.snapshots(self.name))
                previous = snapshot
            self.assertEqual(await target.snapshots(self.name), [previous])
            self.assertEqual(await self.pool.snapshots(self.name), [previous])
            replica = await target.get(self.name)
            self.assertEqual(read_tree(replica.mountpoint)["round"], b"2")

        # Send and receive ---------------------------------------------------

        @inlineCallbacks
        def test_full_copy(self):
            """A full stream creates a read-only replica with the same
            files and the snapshot."""
            source = yield self.volume_with_data()
            s1 = yield self.pool.snapshot(self.name, "s1")
            target = self.other_pool()
            received = yield copy_snapshot(self.pool, s1, target)
            self.assertEqual(received, s1)
            replica = yield target.get(self.name)
            self.assertTrue(replica.read_only)
            self.assertFalse(replica.owned_by("node-b"))
            self.assertEqual(replica.mountpoint,
                             os.path.join(target.mount_root, "mysql"))
            self.assertEqual(read_tree(replica.mountpoint),
                             read_tree(source.mountpoint))
            snapshots = yield target.snapshots(self.name)
            self.assertEqual(snapshots, [s1])
            replicas = yield target.replicas()
            owned = yield target.owned_volumes()
            self.assertEqual((replicas, owned), ([replica], []))

        @inlineCallbacks
        def test_snapshot_is_frozen(self):
            """What is sent is the snapshot, not what was written since."""
            yield self.pool.create(self.name)
            self.write(self.pool, "f", b"at snapshot")
            s1 = yield self.pool.snapshot(self.name, "s1")
            self.write(self.pool, "f", b"after snapshot")
            self.write(self.pool, "new", b"after snapshot")
            target = self.other_pool()
            yield copy_snapshot(self.pool, s1, target)
            replica = yield target.get(self.name)
            self.assertEqual(read_tree(replica.mountpoint),
                             {"f": b"at snapshot"})

        @inlineCallbacks
        def test_incremental_copy(self):
            """An incremental stream brings changes, additions and deletions
            onto a copy at its base."""
            source = yield self.volume_with_data()
            s1 = yield self.pool.snapshot(self.name, "s1")
            target = self.other_pool()
            yield copy_snapshot(self.pool, s1, target)
            self.write(self.pool, "sub/dir/note.txt", b"changed")
            self.write(self.pool, "added/file", b"new")
            os.unlink(os.path.join(source.mountpoint, "gone.txt"))
            s2 = yield self.pool.snapshot(self.name, "s2")
            received = yield copy_snapshot(self.pool, s2, target, base=s1)
            self.assertEqual(received, s2)
            replica = yield target.get(self.name)
            self.assertEqual(read_tree(replica.mountpoint),
                             read_tree(source.mountpoint))
            self.assertNotIn("gone.txt", read_tree(replica.mountpoint))
            self.assertTrue(replica.read_only)
            snapshots = yield target.snapshots(self.name)
            self.assertEqual(snapshots, [s1, s2])

        @inlineCallbacks
        def test_replica_shows_received_contents(self):
            """After an incremental receive, reading the replica shows the
            new contents, not what was cached from before (same size, so a
            size check would not notice)."""
            yield self.pool.create(self.name)
            self.write(self.pool, "row", b"version-1")
            s1 = yield self.pool.snapshot(self.name, "s1")
            target = self.other_pool()
            yield copy_snapshot(self.pool, s1, target)
            replica = yield target.get(self.name)
            for _ in range(3):
                with open(os.path.join(replica.mountpoint, "row"), "rb") as f:
                    self.assertEqual(f.read(), b"version-1")
            self.write(self.pool, "row", b"version-2")
            s2 = yield self.pool.snapshot(self.name, "s2")
            yield copy_snapshot(self.pool, s2, target, base=s1)
            replica = yield target.get(self.name)
            with open(os.path.join(replica.mountpoint, "row"), "rb") as f:
                self.assertEqual(f.read(), b"version-2")

        @inlineCallbacks
        def test_snapshot_holds_every_completed_write(self):
            """Writes closed just before ``snapshot`` are in it."""
            volume = yield self.pool.create(self.name)
            for i in range(5):
                with open(os.path.join(volume.mountpoint, "log"), "ab") as f:
                    f.write(b"line %d\n" % (i,))
                snapshot = yield self.pool.snapshot(self.name, "s%d" % (i,))
            target = self.other_pool()
            yield copy_snapshot(self.pool, snapshot, target)
            replica = yield target.get(self.name)
            with open(os.path.join(replica.mountpoint, "log"), "rb") as f:
                self.assertEqual(f.read().count(b"\n"), 5)

        @inlineCallbacks
        def test_incremental_is_smaller(self):
            """An incremental stream carries the change, not the volume."""
            yield self.pool.create(self.name)
            self.write(self.pool, "big", os.urandom(1 << 20))
            s1 = yield self.pool.snapshot(self.name, "s1")
            self.write(self.pool, "small", b"x")
            s2 = yield self.pool.snapshot(self.name, "s2")
            full = yield self.stream_bytes(s2)
            increment = yield self.stream_bytes(s2, base=s1)
            self.assertGreater(len(full), 1 << 20)
            self.assertLess(len(increment), 256 * 1024)

        @inlineCallbacks
        def assert_unchanged_after(self, target, failing, previous,
                                   exists=True, before=None):
            """``failing`` (a Deferred, or a function starting the receive
            and returning one) fails with ReceiveFailed saying the copy is
            at ``previous``, and the target's copy is indeed unchanged.
            What is there is read before the receive starts: a replica is
            unmounted while it receives.  So with a Deferred (the receive
            already started) ``before`` (from ``contents``) is required."""
            if exists:
                if before is None:
                    if not callable(failing):
                        raise TypeError("the receive started before its "
                                        "target was read: give before")
                    before = yield self.contents(target)
                before, snapshots_before = before
            if callable(failing):
                failing = failing()
            error = yield self.assertFailure(failing, ReceiveFailed)
            self.assertEqual((error.previous, error.exists),
                             (previous, exists))
            self.assertIn(str(self.name), str(error))
            if exists:
                self.assertIn(repr(previous.name), str(error))
                volume = yield target.get(self.name)
                self.assertEqual(read_tree(volume.mountpoint), before)
                snapshots = yield target.snapshots(self.name)
                self.assertEqual(snapshots, snapshots_before)
            else:
                self.assertIn("no copy", str(error))
                yield self.assertFailure(target.get(self.name),
                                         VolumeNotFound)
            return error

        @inlineCallbacks
        def test_incremental_missing_base(self):
            """An increment from a base the receiver does not have fails
            and leaves the receiver at its previous snapshot."""
            yield self.volume_with_data()
            s1 = yield self.pool.snapshot(self.name, "s1")
            target = self.other_pool()
            yield copy_snapshot(self.pool, s1, target)
            self.write(self.pool, "x", b"1")
            s2 = yield self.pool.snapshot(self.name, "s2")
            self.write(self.pool, "x", b"2")
            s3 = yield self.pool.snapshot(self.name, "s3")
            yield self.assert_unchanged_after(
                target,
                lambda: copy_snapshot(self.pool, s3, target, base=s2), s1)

        @inlineCallbacks
        def test_incremental_onto_missing_volume(self):
            """An increment for a volume the receiver lacks creates
            nothing."""
            yield self.pool.create(self.name)
            s1 = yield self.pool.snapshot(self.name, "s1")
            s2 = yield self.pool.snapshot(self.name, "s2")
            target = self.other_pool()
            yield self.assert_unchanged_after(
                target,
                lambda: copy_snapshot(self.pool, s2, target, base=s1), None,
                exists=False)

        @inlineCallbacks
        def test_full_onto_existing(self):
            """A full stream onto a volume that exists is refused."""
            yield self.volume_with_data()
            s1 = yield self.pool.snapshot(self.name, "s1")
            target = self.other_pool()
            yield copy_snapshot(self.pool, s1, target)
            self.write(self.pool, "x", b"1")
            s2 = yield self.pool.snapshot(self.name, "s2")
            yield self.assert_unchanged_after(
                target, lambda: copy_snapshot(self.pool, s2, target), s1)

        @inlineCallbacks
        def test_full_onto_owned_volume(self):
            """A full stream onto the receiver's own volume with data is
            refused and its data stays."""
            yield self.volume_with_data()
            s1 = yield self.pool.snapshot(self.name, "s1")
            target = self.other_pool()
            yield target.create(self.name)
            self.write(target, "precious", b"only copy")
            t1 = yield target.snapshot(self.name, "t1")
            yield self.assert_unchanged_after(
                target, lambda: copy_snapshot(self.pool, s1, target), t1)

        @inlineCallbacks
        def test_discard_replica(self):
            """A read-only replica owned elsewhere can be discarded, and a
            full stream then received in its place."""
            yield self.volume_with_data()
            s1 = yield self.pool.snapshot(self.name)
            target = self.other_pool()
            yield copy_snapshot(self.pool, s1, target)
            yield target.set_owner(self.name, "node-a")
            yield target.discard_replica(self.name)
            yield self.assertFailure(target.get(self.name), VolumeNotFound)
            self.assertEqual(list((yield target.enumerate())), [])
            s2 = yield self.pool.snapshot(self.name)
            received = yield copy_snapshot(self.pool, s2, target)
            self.assertEqual(received.name, s2.name)

        @inlineCallbacks
        def replica_of_another_lineage(self):
            """A replica (owned by node-a) on another pool, and a snapshot
            of a new lineage of the volume here that shares nothing with
            it: what a push with ``replace`` sends."""
            yield self.volume_with_data()
            s1 = yield self.pool.snapshot(self.name, "old-1")
            target = self.other_pool()
            yield copy_snapshot(self.pool, s1, target)
            yield target.set_owner(self.name, "node-a", 3)
            other = self.other_pool("node-c")
            yield other.create(self.name)
            self.write(other, "new.txt", b"the new lineage")
            new = yield other.snapshot(self.name, "new-1")
            return target, other, new

        @inlineCallbacks
        def test_replace_replica(self):
            """A full stream with ``replace`` takes a read-only replica's
            place once received: the new contents, read-only, no old
            snapshot."""
            target, other, new = yield self.replica_of_another_lineage()
            received = yield copy_snapshot(other, new, target, replace=True)
            self.assertEqual(received, new)
            volume = yield target.get(self.name)
            self.assertTrue(volume.read_only)
            self.assertEqual(read_tree(volume.mountpoint),
                             {"new.txt": b"the new lineage"})
            self.assertEqual([s.name for s in (yield target.snapshots(self.name))],
                             ["new-1"])
            self.assertEqual([v.name for v in (yield target.enumerate())],
                             [self.name])

        @inlineCallbacks
        def test_replace_with_junk_keeps_the_replica(self):
            """A replacing receive of five junk bytes fails and the replica
            it was to replace is left exactly as it was."""
            target, other, new = yield self.replica_of_another_lineage()
            before = yield self.contents(target)
            receiver = target.receive(self.name, replace=True)
            receiver.write(b"junk!")
            receiver.finish()
            yield self.assertFailure(receiver.done, ReceiveFailed)
            self.assertEqual((yield self.contents(target)), before)
            volume = yield target.get(self.name)
            self.assertEqual((volume.owner, volume.epoch, volume.read_only),
                             ("node-a", 3, True))
            self.assertEqual([v.name for v in (yield target.enumerate())],
                             [self.name])
            # And the next replacing receive still works.
            received = yield copy_snapshot(other, new, target, replace=True)
            self.assertEqual(received, new)

        @inlineCallbacks
        def test_replace_cut_stream_keeps_the_replica(self):
            """A replacing receive cut half way keeps the replica."""
            target, other, new = yield self.replica_of_another_lineage()
            before = yield self.contents(target)
            data = yield self.stream_bytes_of(other, new)
            receiver = target.receive(self.name, replace=True)
            receiver.write(data[:len(data) // 2])
            receiver.abort("the sender went away")
            yield self.assertFailure(receiver.done, ReceiveFailed)
            self.assertEqual((yield self.contents(target)), before)

        @inlineCallbacks
        def test_replace_never_replaces_a_writable_copy(self):
            """The live copy, or any writable one, is never replaced."""
            target, other, new = yield self.replica_of_another_lineage()
            yield target.set_read_only(self.name, False)
            before = yield self.contents(target)
            yield self.assertFailure(
                copy_snapshot(other, new, target, replace=True), ReceiveFailed)
            self.assertEqual((yield self.contents(target)), before)
            yield target.set_owner(self.name, "node-b")
            yield self.assertFailure(
                copy_snapshot(other, new, target, replace=True), ReceiveFailed)
            self.assertEqual((yield self.contents(target)), before)

        @inlineCallbacks
        def test_discard_live_copy_refused(self):
            """The live copy (owned here, or writable) is never discarded."""
            yield self.volume_with_data()
            yield self.assertFailure(self.pool.discard_replica(self.name),
                                     VolumeError)
            yield self.pool.set_owner(self.name, "node-b")
            yield self.assertFailure(self.pool.discard_replica(self.name),
                                     VolumeError)
            volume = yield self.pool.get(self.name)
            self.assertEqual(volume.owner, "node-b")
            yield self.assertFailure(self.pool.discard_replica(VolumeName("nope")),
                                     VolumeNotFound)

        @inlineCallbacks
        def test_receive_into_owned_volume_refused(self):
            """Even a matching increment is refused by the node that owns
            the volume: its copy is the writable one."""
            yield self.volume_with_data()
            s1 = yield self.pool.snapshot(self.name, "s1")
            target = self.other_pool()
            yield copy_snapshot(self.pool, s1, target)
            yield target.set_owner(self.name, "node-b")
            s2 = yield self.pool.snapshot(self.name, "s2")
            error = yield self.assert_unchanged_after(
                target,
                lambda: copy_snapshot(self.pool, s2, target, base=s1), s1)
            self.assertIn("owns", str(error))

        @inlineCallbacks
        def test_receive_into_modified_replica_refused(self):
            """A replica written to since its newest snapshot is not
            overwritten (no ``-F``): the receive fails and the data stays."""
            yield self.volume_with_data()
            s1 = yield self.pool.snapshot(self.name, "s1")
            target = self.other_pool()
            yield copy_snapshot(self.pool, s1, target)
            yield target.set_read_only(self.name, False)
            self.write(target, "local-only", b"data the sender lacks")
            s2 = yield self.pool.snapshot(self.name, "s2")
            yield self.assert_unchanged_after(
                target,
                lambda: copy_snapshot(self.pool, s2, target, base=s1), s1)
            replica = yield target.get(self.name)
            self.assertEqual(
                read_tree(replica.mountpoint)["local-only"],
                b"data the sender lacks")

        @inlineCallbacks
        def contents(self, target):
            """The replica's files and snapshots, to compare after."""
            volume = yield target.get(self.name)
            snapshots = yield target.snapshots(self.name)
            return read_tree(volume.mountpoint), snapshots

        @inlineCallbacks
        def test_garbage_stream(self):
            """Garbage is refused; the copy stays at its previous snapshot."""
            yield self.volume_with_data()
            s1 = yield self.pool.snapshot(self.name, "s1")
            target = self.other_pool()
            yield copy_snapshot(self.pool, s1, target)
            before = yield self.contents(target)
            receiver = target.receive(self.name)
            receiver.write(b"this is not a stream\n" * 5000)
            receiver.finish()
            yield self.assert_unchanged_after(target, receiver.done, s1, before=before)

        @inlineCallbacks
        def test_garbage_new_volume(self):
            """Garbage for a new volume creates nothing."""
            target = self.other_pool()
            receiver = target.receive(self.name)
            receiver.write(os.urandom(64 * 1024))
            receiver.finish()
            yield self.assert_unchanged_after(
                target, receiver.done, None, exists=False)

        @inlineCallbacks
        def increment_stream(self):
            """A target holding s1 and the bytes of the s1 -> s2 stream."""
            yield self.volume_with_data()
            s1 = yield self.pool.snapshot(self.name, "s1")
            target = self.other_pool()
            yield copy_snapshot(self.pool, s1, target)
            self.write(self.pool, "more.bin", os.urandom(512 * 1024))
            s2 = yield self.pool.snapshot(self.name, "s2")
            data = yield self.stream_bytes(s2, base=s1)
            return target, s1, s2, data

        @inlineCallbacks
        def test_truncated_stream(self):
            """A stream that ends early fails and changes nothing; the whole
            stream is received afterwards."""
            target, s1, s2, data = yield self.increment_stream()
            before = yield self.contents(target)
            receiver = target.receive(self.name)
            receiver.write(data[:len(data) // 2])
            receiver.finish()
            yield self.assert_unchanged_after(target, receiver.done, s1, before=before)
            receiver = target.receive(self.name)
            receiver.write(data)
            receiver.finish()
            received = yield receiver.done
            self.assertEqual(received, s2)
            self.assertEqual(receiver.bytes_received, len(data))

        @inlineCallbacks
        def test_abort(self):
            """``abort()`` cuts the stream: the receive fails saying so and
            changes nothing; the stream can be received again."""
            target, s1, s2, data = yield self.increment_stream()
            before = yield self.contents(target)
            receiver = target.receive(self.name)
            receiver.write(data[:len(data) // 2])
            # Let the receiver take in what it has been given.
            yield deferLater(reactor, 0.2, lambda: None)
            receiver.abort("operator said stop")
            error = yield self.assert_unchanged_after(
                target, receiver.done, s1, before=before)
            self.assertIn("cut", str(error))
            self.assertIn("operator said stop", str(error))
            received = yield copy_snapshot(self.pool, s2, target, base=s1)
            self.assertEqual(received, s2)

        @inlineCallbacks
        def test_sender_dies(self):
            """A send that stops half way cuts the receive, which fails and
            changes nothing."""
            target, s1, s2, data = yield self.increment_stream()
            before = yield self.contents(target)
            receiver = target.receive(self.name)
            dying = DyingSender(receiver)
            stream = self.pool.send(s2, dying, base=s1)
            stream.done.addCallbacks(lambda _: receiver.finish(),
                                     receiver.abort)
            yield self.assert_unchanged_after(target, receiver.done, s1, before=before)
            self.assertTrue(dying.killed)

        @inlineCallbacks
        def test_send_failure_cuts_receive(self):
            """A send of a missing snapshot fails; the receive it feeds
            fails too and creates nothing."""
            yield self.pool.create(self.name)
            target = self.other_pool()
            yield self.assert_unchanged_after(
                target,
                lambda: copy_snapshot(self.pool, Snapshot(self.name, "nope"),
                                      target),
                None, exists=False)

        async def test_send_refused_cuts_receive(self):
            """A send that cannot even be made (its base is of another
            volume) cuts the receive it was to feed: ``copy_snapshot``
            fails with ReceiveFailed saying why, and nothing is left
            waiting."""
            await self.pool.create(self.name)
            s1 = await self.pool.snapshot(self.name, "s1")
            web = VolumeName("web")
            await self.pool.create(web)
            w1 = await self.pool.snapshot(web, "w1")
            target = self.other_pool()
            error = await self.assertFailure(
                copy_snapshot(self.pool, s1, target, base=w1), ReceiveFailed)
            self.assertIn("not a snapshot of", str(error))
            self.assertFalse(error.exists)
            await self.assertFailure(target.get(self.name), VolumeNotFound)

        @inlineCallbacks
        def test_send_missing_snapshot(self):
            """Sending a missing snapshot fails with SendFailed, and the
            stream still unregisters from its consumer."""
            yield self.pool.create(self.name)
            consumer = CollectingConsumer()
            stream = self.pool.send(Snapshot(self.name, "nope"), consumer)
            error = yield self.assertFailure(stream.done, SendFailed)
            self.assertIn("nope", str(error))
            self.assertEqual((consumer.registered, consumer.unregistered),
                             (1, 1))

        @inlineCallbacks
        def test_send_base_not_earlier(self):
            """An increment from a newer snapshot fails with SendFailed."""
            yield self.pool.create(self.name)
            s1 = yield self.pool.snapshot(self.name, "s1")
            s2 = yield self.pool.snapshot(self.name, "s2")
            stream = self.pool.send(s1, CollectingConsumer(), base=s2)
            yield self.assertFailure(stream.done, SendFailed)

        @inlineCallbacks
        def test_send_producer_life_cycle(self):
            """The stream registers as a streaming producer, writes every
            byte it counts, then unregisters and fires ``done``."""
            yield self.volume_with_data()
            s1 = yield self.pool.snapshot(self.name, "s1")
            consumer = CollectingConsumer()
            stream = self.pool.send(s1, consumer)
            self.assertIs(consumer.producer, stream)
            self.assertTrue(consumer.streaming)
            sent = yield stream.done
            self.assertEqual(sent, len(consumer.data))
            self.assertEqual(stream.bytes_sent, len(consumer.data))
            self.assertGreater(sent, 200 * 1024)
            self.assertEqual(consumer.unregistered, 1)
            self.assertIsNone(consumer.producer)

        @inlineCallbacks
        def test_send_honours_pause(self):
            """A paused stream writes nothing until resumed, and what it
            writes is still a complete stream."""
            yield self.pool.create(self.name)
            # Several times any pipe or read size, so it takes many writes.
            self.write(self.pool, "big", os.urandom(6 << 20))
            s1 = yield self.pool.snapshot(self.name, "s1")
            consumer = PausingConsumer()
            stream = self.pool.send(s1, consumer)
            yield stream.done
            self.assertGreater(consumer.pauses, 2)
            self.assertEqual(consumer.writes_while_paused, 0)
            target = self.other_pool()
            receiver = target.receive(self.name)
            receiver.write(consumer.data)
            receiver.finish()
            received = yield receiver.done
            self.assertEqual(received, s1)

        @inlineCallbacks
        def test_send_stopped_by_consumer(self):
            """A consumer that stops the stream gets no more writes, and
            ``done`` fails."""
            target, s1, s2, data = yield self.increment_stream()
            consumer = StoppingConsumer()
            stream = self.pool.send(s2, consumer, base=s1)
            yield self.assertFailure(stream.done, SendFailed)
            self.assertTrue(consumer.stopped)
            self.assertEqual(consumer.writes_after_stop, 0)

        @inlineCallbacks
        def test_move_and_back(self):
            """The handoff: bulk copy, final increment, new owner; then the
            move back is incremental onto the old owner's replica."""
            yield self.volume_with_data()
            b = self.other_pool()
            s1 = yield self.pool.snapshot(self.name, "s1")
            yield copy_snapshot(self.pool, s1, b)
            self.write(self.pool, "late", b"written during the bulk copy")
            yield self.pool.set_read_only(self.name, True)
            s2 = yield self.pool.snapshot(self.name, "s2")
            yield copy_snapshot(self.pool, s2, b, base=s1)
            yield b.set_owner(self.name, "node-b")
            yield b.set_read_only(self.name, False)
            yield self.pool.set_owner(self.name, "node-b")
            self.write(b, "on-b", b"written on the new owner")
            s3 = yield b.snapshot(self.name, "s3")
            received = yield copy_snapshot(b, s3, self.pool, base=s2)
            self.assertEqual(received, s3)
            here = yield self.pool.get(self.name)
            there = yield b.get(self.name)
            self.assertEqual(read_tree(here.mountpoint),
                             read_tree(there.mountpoint))
            self.assertTrue(here.read_only)
            self.assertFalse(there.read_only)
            replicas = yield self.pool.replicas()
            owned = yield b.owned_volumes()
            self.assertEqual(([v.name for v in replicas],
                              [v.name for v in owned]),
                             ([self.name], [self.name]))
            snapshots = yield self.pool.snapshots(self.name)
            self.assertEqual(snapshots, [s1, s2, s3])

        @inlineCallbacks
        def test_bytes_counted(self):
            """Both ends count the same number of bytes."""
            yield self.volume_with_data()
            s1 = yield self.pool.snapshot(self.name, "s1")
            receiver = self.other_pool().receive(self.name)
            stream = self.pool.send(s1, receiver)
            sent = yield stream.done
            receiver.finish()
            yield receiver.done
            self.assertEqual(receiver.bytes_received, sent)

    return IStoragePoolTests
