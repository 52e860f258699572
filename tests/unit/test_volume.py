"""MemoryStoragePool against the IStoragePool contract, and the values."""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

import flocker_async.volume
from flocker_async.volume import (
    InvalidName,
    MemoryStoragePool,
    ReceiveFailed,
    Snapshot,
    VolumeName,
    snapshots_to_prune,
)
from flocker_async.volume import _common, _interfaces, _memory, _transfer, _zfs

from ..testtools.volume import StoragePoolFixture, make_istoragepool_tests


def make_memory_pool(test_case, node_id):
    root = test_case.mktemp()
    return MemoryStoragePool(reactor, root, node_id)


def reopen_memory_pool(pool):
    return MemoryStoragePool(reactor, pool.root, pool.node_id, pool.mount_root)


def write_memory_file(pool, name, path, data):
    pool.write_file(name, path, data)


class MemoryStoragePoolTests(make_istoragepool_tests(StoragePoolFixture(
        make_pool=make_memory_pool, reopen=reopen_memory_pool,
        write_file=write_memory_file))):
    """The in-memory pool keeps the contract."""


class PublicNamesTests(SynchronousTestCase):
    def test_public_names(self):
        """The package re-exports the private modules' objects."""
        v = flocker_async.volume
        self.assertIs(v.IStoragePool, _interfaces.IStoragePool)
        self.assertIs(v.IVolume, _interfaces.IVolume)
        self.assertIs(v.ISendStream, _interfaces.ISendStream)
        self.assertIs(v.IReceiveStream, _interfaces.IReceiveStream)
        self.assertIs(v.VolumeName, _interfaces.VolumeName)
        self.assertIs(v.Snapshot, _interfaces.Snapshot)
        self.assertIs(v.Volume, _interfaces.Volume)
        self.assertIs(v.ReceiveFailed, _interfaces.ReceiveFailed)
        self.assertIs(v.SendFailed, _interfaces.SendFailed)
        self.assertIs(v.ZFSStoragePool, _zfs.ZFSStoragePool)
        self.assertIs(v.MemoryStoragePool, _memory.MemoryStoragePool)
        self.assertIs(v.copy_snapshot, _transfer.copy_snapshot)
        self.assertIs(v.snapshots_to_prune, _common.snapshots_to_prune)
        for name in v.__all__:
            self.assertTrue(hasattr(v, name), name)


class NameTests(SynchronousTestCase):
    def test_volume_names(self):
        """Application names are volume names; nothing else is."""
        for good in ("mysql", "a", "A-b_9", "x" * 63):
            self.assertEqual(str(VolumeName(good)), good)
        for bad in ("", "-x", "_x", "a/b", "a b", "a@b", "a;b", "x" * 64,
                    "../a", "a\n", "é", None, 5):
            self.assertRaises(InvalidName, VolumeName, bad)

    def test_snapshot_names(self):
        """Snapshot names cannot carry a dataset path or a second @."""
        v = VolumeName("mysql")
        self.assertEqual(str(Snapshot(v, "flocker-20250101T000000Z-ab")),
                         "mysql@flocker-20250101T000000Z-ab")
        for bad in ("", "a@b", "a/b", "-a", "a b", "x" * 129, "a\tb"):
            self.assertRaises(InvalidName, Snapshot, v, bad)
        self.assertRaises(TypeError, Snapshot, "mysql", "s1")

    def test_invalid_node_ids(self):
        """A pool's node identity is validated too."""
        for bad in ("", "a b", "a;b", "-a"):
            self.assertRaises(InvalidName, MemoryStoragePool, reactor,
                              self.mktemp(), bad)

    def test_zfs_pool_arguments(self):
        """The ZFS pool refuses a root dataset or mount root that could
        change a command line's meaning."""
        ZFS = flocker_async.volume.ZFSStoragePool
        for dataset in ("-o", "a//b", "a b", "a@s", "/abs", ""):
            self.assertRaises(InvalidName, ZFS, reactor, dataset, "/m", "n")
        for root in ("relative", "/a/../b", "/a b", "/a,b", "/a/", ""):
            self.assertRaises(InvalidName, ZFS, reactor, "pool", root, "n")
        pool = ZFS(reactor, "pool/flocker", "/var/lib/flocker", "10.0.0.1")
        self.assertEqual(pool._dataset(VolumeName("db")), "pool/flocker/db")


class PruneTests(SynchronousTestCase):
    v = VolumeName("db")

    def snaps(self, *names):
        return [Snapshot(self.v, n) for n in names]

    def test_prune(self):
        """Older than the newest common go; it and newer stay."""
        self.assertEqual(
            snapshots_to_prune(self.snaps("a", "b", "c", "d"),
                               self.snaps("a", "c", "z")),
            self.snaps("a", "b"))

    def test_nothing_common(self):
        self.assertEqual(
            snapshots_to_prune(self.snaps("a", "b"), self.snaps("x")), [])

    def test_other_volume_not_common(self):
        """A snapshot of another volume with the same name is not common."""
        other = Snapshot(VolumeName("web"), "b")
        self.assertEqual(snapshots_to_prune(self.snaps("a", "b"), [other]), [])

    def test_never_the_newest(self):
        """Even the newest common snapshot stays."""
        self.assertEqual(
            snapshots_to_prune(self.snaps("a", "b"), self.snaps("a", "b")),
            self.snaps("a"))


class ReceiveFailedTests(SynchronousTestCase):
    def test_messages(self):
        """The error says where the receiving copy was left."""
        v = VolumeName("db")
        self.assertEqual(
            str(ReceiveFailed(v, "bad", Snapshot(v, "s1"), True)),
            "receiving volume 'db' failed: bad; the volume is left at its "
            "previous snapshot 's1'")
        self.assertEqual(
            str(ReceiveFailed(v, "bad", None, False)),
            "receiving volume 'db' failed: bad; no copy of the volume was "
            "created")


class MemoryStreamSafetyTests(SynchronousTestCase):
    def test_unsafe_paths(self):
        """Stream paths cannot leave the volume."""
        for bad in ("../x", "/etc/passwd", "a/../../x", "", "."):
            self.assertRaises(ValueError, _memory._safe_relative, bad)
        self.assertEqual(_memory._safe_relative("a/b"), "a/b")


class MountLockTests(SynchronousTestCase):
    """The machine-wide lock around zfs commands that mount (zfs-fuse
    wedges when two mounts overlap): taken without blocking, released
    however the work ends."""

    def setUp(self):
        self.path = self.mktemp()
        self.clock = Clock()

    def lock(self):
        return _zfs.MountLock(self.clock, self.path, interval=0.1)

    def test_second_waits_for_first(self):
        first_work, second_work = Deferred(), Deferred()
        order = []
        first = self.lock().run(lambda: order.append("first") or first_work)
        second = self.lock().run(lambda: order.append("second") or second_work)
        self.clock.advance(1)
        self.assertEqual(order, ["first"])
        first_work.callback("one")
        self.assertEqual(self.successResultOf(first), "one")
        self.clock.advance(0.1)
        self.assertEqual(order, ["first", "second"])
        second_work.callback("two")
        self.assertEqual(self.successResultOf(second), "two")

    def test_makes_its_directory(self):
        """A machine without /run/lock (a bare container) still works."""
        self.path = os.path.join(self.mktemp(), "lock", "mount.lock")
        self.assertEqual(self.successResultOf(self.lock().run(lambda: 3)), 3)
        self.assertTrue(os.path.isfile(self.path))

    def test_released_after_failure(self):
        failed = self.lock().run(lambda: fail(RuntimeError("zfs said no")))
        self.failureResultOf(failed, RuntimeError)
        self.assertEqual(self.successResultOf(self.lock().run(lambda: 7)), 7)

    def test_cancel_while_waiting(self):
        held = Deferred()
        self.lock().run(lambda: held)
        calls = []
        waiting = self.lock().run(lambda: calls.append(1))
        waiting.cancel()
        self.failureResultOf(waiting, CancelledError)
        held.callback(None)
        self.clock.advance(1)
        self.assertEqual(calls, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_other_process_holds_it(self):
        """Held by another process (a daemon of another lab node): waits."""
        import subprocess
        import sys
        holder = subprocess.Popen(
            [sys.executable, "-c", "import fcntl, os, sys, time\n"
             "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
             "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\n"
             "sys.stdin.read()\n", self.path],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.addCleanup(holder.wait)
        self.addCleanup(holder.stdin.close)
        self.assertEqual(holder.stdout.readline(), "held\n")
        done = self.lock().run(lambda: "mine")
        self.clock.advance(0.5)
        self.assertNoResult(done)
        holder.stdin.close()
        holder.wait()
        self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(done), "mine")

