"""MemoryStoragePool against the IStoragePool contract, and the values."""

from __future__ import annotations

import errno
import os
import shutil
import threading

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import (
    CancelledError, Deferred, fail, gatherResults, succeed)
from twisted.internet.error import ProcessTerminated
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

import flocker_async.volume
from flocker_async._process import CommandFailed, ProcessResult
from flocker_async.volume import (
    InvalidName,
    MemoryStoragePool,
    ReceiveFailed,
    SendFailed,
    Snapshot,
    VolumeName,
    snapshot_time,
    snapshots_to_prune,
)
from flocker_async.volume import _common, _interfaces, _memory, _transfer, _zfs

from ..testtools.volume import (
    CollectingConsumer, StoragePoolFixture, make_istoragepool_tests)


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
        self.assertIs(v.snapshot_time, _common.snapshot_time)
        self.assertIs(v.SetAside, _interfaces.SetAside)
        self.assertEqual(
            (v.OWNER_PROPERTY, v.EPOCH_PROPERTY, v.SET_ASIDE_PROPERTY),
            ("org.flocker-async:owner", "org.flocker-async:epoch",
             "org.flocker-async:set-aside"))
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
    """The pure pruning rule (``snapshots_to_prune``); generated snapshot
    names are written ``flocker-<x>`` here."""

    v = VolumeName("db")

    def snaps(self, *names):
        return [Snapshot(self.v, n if "-" in n else "flocker-" + n)
                for n in names]

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
        other = Snapshot(VolumeName("web"), "flocker-b")
        self.assertEqual(snapshots_to_prune(self.snaps("a", "b"), [other]), [])

    def test_never_the_newest(self):
        """Even the newest common snapshot stays."""
        self.assertEqual(
            snapshots_to_prune(self.snaps("a", "b"), self.snaps("a", "b")),
            self.snaps("a"))

    def test_only_generated(self):
        """Snapshots we did not name (a user's) are never pruned, though
        they count as common."""
        local = self.snaps("a", "users-own", "b", "c")
        self.assertEqual(
            snapshots_to_prune(local, self.snaps("users-own", "c")),
            self.snaps("a", "b"))
        self.assertEqual(
            snapshots_to_prune(self.snaps("mine-1", "mine-2"),
                               self.snaps("mine-2")), [])

    def test_several_peers(self):
        """Kept from the oldest of the peers' newest common snapshots."""
        local = self.snaps("a", "b", "c", "d", "e")
        self.assertEqual(
            snapshots_to_prune(local, self.snaps("a", "d"),
                               self.snaps("b", "c"), self.snaps("e")),
            self.snaps("a", "b"))

    def test_peer_with_nothing_in_common(self):
        """A peer sharing nothing needs a full copy: it keeps nothing."""
        local = self.snaps("a", "b", "c")
        self.assertEqual(
            snapshots_to_prune(local, self.snaps("x"), self.snaps("c"), []),
            self.snaps("a", "b"))
        self.assertEqual(
            snapshots_to_prune(local, self.snaps("x"), []), [])


# Snapshot histories: names are unique within a volume, oldest first.
_names = st.one_of(
    st.builds(lambda n: "flocker-%d" % (n,), st.integers(0, 30)),
    st.builds(lambda n: "user-%d" % (n,), st.integers(0, 30)))


@st.composite
def _histories(draw):
    v = VolumeName("db")
    local = [Snapshot(v, n) for n in draw(st.lists(_names, unique=True))]
    peers = draw(st.lists(
        st.lists(st.one_of(st.sampled_from(local) if local else st.nothing(),
                           st.builds(lambda n: Snapshot(v, n), _names))),
        min_size=1, max_size=4))
    return local, peers


class PruneProperties(SynchronousTestCase):
    @given(_histories())
    @settings(max_examples=300, deadline=None)
    def test_every_peer_keeps_its_base(self, history):
        """For every peer that shares a snapshot with us, its newest common
        snapshot survives; nothing we did not generate is ever pruned; what
        goes is older than what stays."""
        local, peers = history
        doomed = snapshots_to_prune(local, *peers)
        kept = [s for s in local if s not in doomed]
        for peer in peers:
            shared = [s for s in local if s in peer]
            if shared:
                self.assertIn(shared[-1], kept)
        for snapshot in doomed:
            self.assertTrue(snapshot.name.startswith("flocker-"))
            self.assertIn(snapshot, local)
        if doomed and kept:
            generated_kept = [local.index(s) for s in kept
                              if s.name.startswith("flocker-")]
            if generated_kept:
                self.assertLess(max(local.index(s) for s in doomed),
                                max(generated_kept))

    @given(_histories())
    @settings(max_examples=100, deadline=None)
    def test_one_peer_is_the_old_rule(self, history):
        """With one peer: everything generated older than the newest
        common snapshot, nothing if nothing is common."""
        local, peers = history
        shared = [i for i, s in enumerate(local) if s in peers[0]]
        expected = ([s for s in local[:shared[-1]]
                     if s.name.startswith("flocker-")] if shared else [])
        self.assertEqual(snapshots_to_prune(local, peers[0]), expected)


class TrimTests(SynchronousTestCase):
    v = VolumeName("db")

    def snaps(self, *names):
        return [Snapshot(self.v, n) for n in names]

    def test_keeps_newest_generated(self):
        local = self.snaps("flocker-1", "user", "flocker-2", "flocker-3")
        self.assertEqual(_common.snapshots_to_trim(local, 2),
                         self.snaps("flocker-1"))
        self.assertEqual(_common.snapshots_to_trim(local, 1),
                         self.snaps("flocker-1", "flocker-2"))
        self.assertEqual(_common.snapshots_to_trim(local, 5), [])

    def test_keep_at_least_one(self):
        for bad in (0, -1, 1.5, True, None, "2"):
            self.assertRaises(ValueError, _common.snapshots_to_trim, [], bad)


class SnapshotTimeTests(SynchronousTestCase):
    def test_generated_names_carry_the_time(self):
        """A generated name gives back its time, rounded to the
        millisecond, and it is a valid snapshot name."""
        for now in (0.0, 1764759727.123, 1764759727.9999, 2000000000.5):
            name = _common.generate_snapshot_name(now)
            Snapshot(VolumeName("db"), name)
            self.assertTrue(name.startswith("flocker-"))
            self.assertLessEqual(abs(snapshot_time(name) - now), 0.0005001)

    def test_format(self):
        self.assertRegex(
            _common.generate_snapshot_name(1796295727.123),
            r"\Aflocker-20261203T110207\.123Z-[0-9a-f]{12}\Z")

    def test_old_form(self):
        """Names made before sub-second precision still parse."""
        self.assertEqual(
            snapshot_time("flocker-20261203T110207Z-abcdef123456"),
            1796295727.0)
        self.assertEqual(
            snapshot_time(Snapshot(VolumeName("db"),
                                   "flocker-20261203T110207.5Z-abcdef123456")),
            1796295727.5)

    def test_other_names(self):
        for name in ("s1", "set-aside-x", "flocker-", "flocker-nonsense",
                     "flocker-20261399T110207Z-ab", "user-20261203T110207Z-a"):
            self.assertIsNone(snapshot_time(name), name)

    @given(st.floats(0, 4102444800, allow_nan=False))
    @settings(max_examples=200, deadline=None)
    def test_round_trip(self, now):
        # Half a millisecond, plus the float error of times near 2100
        # (their ulp is 4.8e-7 s; hypothesis found 0.0005002).
        self.assertLessEqual(
            abs(snapshot_time(_common.generate_snapshot_name(now)) - now),
            0.000501)


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



class _SpawnFails(MemoryReactorClock):
    """A reactor out of file descriptors: no process can be started."""

    def spawnProcess(self, *args, **kwargs):
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))


@implementer(IPushProducer)
class _RecordingProducer:
    def __init__(self):
        self.calls = []

    def pauseProducing(self):
        self.calls.append("pause")

    def resumeProducing(self):
        self.calls.append("resume")

    def stopProducing(self):
        self.calls.append("stop")


class ZFSReceiveStartTests(SynchronousTestCase):
    """A receive whose start fails says so through ``done``: the sender
    must never wait for ever on a receive that will not happen."""

    def setUp(self):
        self.reactor = _SpawnFails()
        self.pool = _zfs.ZFSStoragePool(
            self.reactor, "pool/flocker", "/var/lib/flocker", "node-a")
        self.checks = []

        def receive_check(name, replace=False):
            self.checks.append(name)
            return succeed((False, None))
        self.pool._receive_check = receive_check
        self.pool._state_after_failure = lambda name, replace=False: succeed((False, None))
        self.name = VolumeName("db")

    def test_construction_has_no_side_effects(self):
        """Making the stream object starts nothing; ``receive`` does."""
        _zfs._ZFSReceiveStream(self.pool, self.name)
        self.assertEqual(self.checks, [])

    def test_spawn_failure_fails_done(self):
        """zfs recv cannot be started (EMFILE): ``done`` fails with
        ReceiveFailed naming the cause, and the producer is stopped."""
        receiver = self.pool.receive(self.name)
        self.assertEqual(self.checks, [self.name])
        producer = _RecordingProducer()
        receiver.registerProducer(producer, True)
        receiver.write(b"the start of a stream")
        receiver.finish()
        error = self.failureResultOf(receiver.done, ReceiveFailed).value
        self.assertIn(os.strerror(errno.EMFILE), str(error))
        self.assertIn("no copy of the volume was created", str(error))
        self.assertEqual(producer.calls[-1], "stop")

    def test_spawn_failure_after_check(self):
        """The check finishing later (as it does, after zfs get) and the
        start failing then: ``done`` still fails."""
        later = Deferred()
        self.pool._receive_check = lambda name, replace=False: later
        receiver = self.pool.receive(self.name)
        producer = _RecordingProducer()
        receiver.registerProducer(producer, True)
        self.assertNoResult(receiver.done)
        later.callback((True, Snapshot(self.name, "s1")))
        error = self.failureResultOf(receiver.done, ReceiveFailed).value
        self.assertIn(os.strerror(errno.EMFILE), str(error))
        self.assertEqual(producer.calls, ["pause", "stop"])


class ZFSReceiveEndTests(SynchronousTestCase):
    """How the end of zfs recv is reported: by what is on disk."""

    def setUp(self):
        self.pool = _zfs.ZFSStoragePool(
            MemoryReactorClock(), "pool/flocker", "/var/lib/flocker",
            "node-a")
        self.name = VolumeName("db")
        self.s1 = Snapshot(self.name, "s1")
        self.s2 = Snapshot(self.name, "s2")
        self.set_up = []

        def after_receive(name, existed, replace=False):
            self.set_up.append((name, existed))
            return succeed(self.s2)
        self.pool._after_receive = after_receive

    def ended(self, newest_after):
        """A receive into a replica at s1 whose zfs recv failed saying
        "I/O error"; afterwards the replica's newest snapshot is
        ``newest_after``."""
        self.pool._state_after_failure = lambda name, replace=False: succeed(
            (True, newest_after))
        stream = _zfs._ZFSReceiveStream(self.pool, self.name)
        # As after _start: zfs recv ran, into a replica at s1.
        stream._state = "running"
        stream._existed, stream._newest_before = True, self.s1
        stream.errReceived(b"cannot receive incremental stream: I/O error\n")
        stream.processEnded(Failure(ProcessTerminated(exitCode=1)))
        return stream

    def test_failed_and_unchanged(self):
        """Nothing new on disk: the receive failed, at s1."""
        stream = self.ended(self.s1)
        error = self.failureResultOf(stream.done, ReceiveFailed).value
        self.assertEqual((error.previous, error.exists), (self.s1, True))
        self.assertIn("I/O error", str(error))
        self.assertEqual(self.set_up, [])

    def test_failed_after_committing(self):
        """zfs recv failed, but the stream's snapshot is there (zfs-fuse
        after committing an increment): received, and set up as such."""
        stream = self.ended(self.s2)
        self.assertEqual(self.successResultOf(stream.done), self.s2)
        self.assertEqual(self.set_up, [(self.name, True)])


class MemoryReceiveStartTests(SynchronousTestCase):
    """The memory pool's receive reports every failure through ``done``."""

    def setUp(self):
        self.pool = MemoryStoragePool(Clock(), self.mktemp(), "node-a")
        self.name = VolumeName("db")

    def test_spool_failure_fails_done(self):
        """The stream cannot be spooled: ``receive`` still returns a stream,
        whose ``done`` fails naming the cause."""
        shutil.rmtree(self.pool._spool)
        receiver = self.pool.receive(self.name)
        receiver.write(b"data")
        receiver.finish()
        error = self.failureResultOf(receiver.done, ReceiveFailed).value
        self.assertIn(os.strerror(errno.ENOENT), str(error))

    def test_apply_error_fails_done(self):
        """An unexpected error while applying the stream (a full disk)
        fails ``done`` rather than escaping from ``finish()``."""
        def full(name, spooled, replace=False):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.pool._apply_stream = full
        receiver = self.pool.receive(self.name)
        receiver.write(b"data")
        receiver.finish()
        error = self.failureResultOf(receiver.done, ReceiveFailed).value
        self.assertIn(os.strerror(errno.ENOSPC), str(error))
        self.assertEqual(os.listdir(self.pool._spool), [])


class ZFSSendStartTests(SynchronousTestCase):
    def test_spawn_failure_fails_done(self):
        """zfs send cannot be started: ``send`` still returns a stream,
        which registers, unregisters and fails ``done`` naming the cause;
        no pipe is left open."""
        pool = _zfs.ZFSStoragePool(
            _SpawnFails(), "pool/flocker", "/var/lib/flocker", "node-a")
        consumer = CollectingConsumer()
        before = len(os.listdir("/proc/self/fd"))
        stream = pool.send(Snapshot(VolumeName("db"), "s1"), consumer)
        error = self.failureResultOf(stream.done, SendFailed).value
        self.assertIn(os.strerror(errno.EMFILE), str(error))
        self.assertEqual((consumer.registered, consumer.unregistered), (1, 1))
        self.assertEqual(len(os.listdir("/proc/self/fd")), before)


class _ThreadedMemoryReactor(MemoryReactorClock):
    """Records what threads hand back to the reactor thread."""

    def __init__(self):
        super().__init__()
        self.from_threads = []

    def callFromThread(self, f, *args, **kwargs):
        self.from_threads.append((f, args, kwargs))


class MountCheckThreadsTests(TestCase):
    """Whether a volume is mounted is asked by a stat() on threads of the
    pool's own: a wedged FUSE mount blocks those, never the reactor's
    threadpool, which name resolution needs."""

    def test_stuck_checks_leave_reactor_threads_free(self):
        pool = _zfs.ZFSStoragePool(
            reactor, "pool/flocker", "/var/lib/flocker", "node-a")
        release = threading.Event()
        self.addCleanup(pool.close)
        self.addCleanup(release.set)  # runs first: cleanups are LIFO
        stuck = []

        def wedged_ismount(path):
            stuck.append(path)
            release.wait()
            return True
        self.patch(os.path, "ismount", wedged_ismount)
        # More stuck checks than the reactor's threadpool has threads.
        count = reactor.getThreadPool().max + 2
        checks = [pool._is_mounted("/m/%d" % (i,)) for i in range(count)]
        answered = deferToThread(lambda: "resolver still served")
        # Only reached when this fails: the reactor's threads are stuck.
        answered.addTimeout(10, reactor)
        d = answered.addCallback(self.assertEqual, "resolver still served")

        def release_checks(_):
            self.assertLessEqual(len(stuck), 4)
            for check in checks:
                self.assertNoResult(check)
            release.set()
            return gatherResults(checks)
        d.addCallback(release_checks)
        d.addCallback(self.assertEqual, [True] * count)
        return d

    def test_started_on_first_use_and_stopped(self):
        """The threads start with the first check, are named, at most 4,
        and stop with ``close()`` and at reactor shutdown."""
        fake = _ThreadedMemoryReactor()
        pool = _zfs.ZFSStoragePool(
            fake, "pool/flocker", "/var/lib/flocker", "node-a")
        self.assertIsNone(pool._mount_threads)
        self.assertEqual(fake.triggers, {})
        self.patch(os.path, "ismount", lambda path: False)
        pool._is_mounted("/m")
        threads = pool._mount_threads
        self.assertTrue(threads.started)
        self.assertEqual((threads.min, threads.max), (0, 4))
        self.assertIn("mount", threads.name)
        [(shutdown, args, kwargs)] = fake.triggers["during"]["shutdown"]
        shutdown(*args, **kwargs)
        self.assertFalse(threads.started)
        self.assertIsNone(pool._mount_threads)
        pool.close()  # again: nothing to do
        pool._is_mounted("/m")
        self.assertIsNot(pool._mount_threads, threads)
        pool.close()
        self.assertFalse(threads.started)
        self.assertEqual(len(fake.from_threads), 2)


class ZFSCommandOrderTests(SynchronousTestCase):
    """What the ZFS pool asks of zfs, in order, where order is what keeps
    a crash in between safe."""

    def setUp(self):
        self.pool = _zfs.ZFSStoragePool(
            MemoryReactorClock(), "pool/flocker", "/var/lib/flocker",
            "node-a")
        self.commands = []

        def zfs(*args):
            self.commands.append(args)
            stdout = b""
            if args[0] == "get":
                stdout = (b"pool/flocker/db\ttype\tfilesystem\n"
                          b"pool/flocker/db\torg.flocker-async:owner\tnode-b\n"
                          b"pool/flocker/db\torg.flocker-async:epoch\t4\n")
            return succeed(ProcessResult(("zfs",) + args, 0, None, stdout,
                                         b""))
        self.pool._zfs = zfs

    def test_epoch_before_owner(self):
        """The epoch is recorded before the owner: a crash in between
        never shows a new owner with an old epoch."""
        volume = self.successResultOf(
            self.pool.set_owner(VolumeName("db"), "node-b", epoch=4))
        self.assertEqual(self.commands[:2], [
            ("set", "org.flocker-async:epoch=4", "pool/flocker/db"),
            ("set", "org.flocker-async:owner=node-b", "pool/flocker/db")])
        self.assertEqual((volume.owner, volume.epoch), ("node-b", 4))

    def test_owner_alone(self):
        self.successResultOf(self.pool.set_owner(VolumeName("db"), "node-b"))
        self.assertEqual(
            [c for c in self.commands if c[0] == "set"],
            [("set", "org.flocker-async:owner=node-b", "pool/flocker/db")])

    def test_invalid_epoch_runs_nothing(self):
        self.failureResultOf(
            self.pool.set_owner(VolumeName("db"), "node-b", epoch=0),
            ValueError)
        self.assertEqual(self.commands, [])

    def test_epoch_values(self):
        """An epoch property that is unset or not a positive int is 0."""
        for value, epoch in (("-", 0), ("", 0), ("3", 3), ("0", 0),
                             ("-2", 0), ("x", 0), ("12", 12)):
            self.assertEqual(_zfs._epoch(value), epoch, value)


class ZFSBusyTests(SynchronousTestCase):
    """zfs-fuse calls a file system busy for a moment after unmounting it:
    a destroy (or rename) then is tried again on the pool's clock."""

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.pool = _zfs.ZFSStoragePool(
            self.reactor, "pool/flocker", "/var/lib/flocker", "node-a",
            mount_lock=self.mktemp())
        self.commands = []
        self.busy = 2
        self.busy_command = "destroy"

        def zfs(*args):
            self.commands.append(args[0])
            if args[0] == self.busy_command and self.busy:
                self.busy -= 1
                return fail(CommandFailed(ProcessResult(
                    ("zfs",) + args, 1, None, b"",
                    b"cannot %s 'x': mountpoint or dataset is busy\n"
                    % (args[0].encode(),))))
            stdout = b""
            if args[0] == "get":
                stdout = (b"%s\ttype\tfilesystem\n%s\tmounted\tno\n"
                          % (args[-1].encode(), args[-1].encode()))
            return succeed(ProcessResult(("zfs",) + args, 0, None, stdout,
                                         b""))
        self.pool._zfs = zfs

    def test_tried_again_while_busy(self):
        d = self.pool.discard_set_aside(VolumeName("db"), "t1")
        self.assertNoResult(d)
        self.reactor.advance(_zfs._BUSY_INTERVAL)
        self.assertNoResult(d)
        self.reactor.advance(_zfs._BUSY_INTERVAL)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.commands,
                         ["get", "unmount", "destroy", "destroy", "destroy"])

    def test_mount_tried_again(self):
        """A replica unmounted for a receive that failed at once is
        mounted again, though zfs-fuse calls it busy at first."""
        self.busy_command = "mount"
        d = Deferred.fromCoroutine(
            self.pool._ensure_mounted("pool/flocker/db"))
        self.reactor.advance(_zfs._BUSY_INTERVAL)
        self.assertNoResult(d)
        self.reactor.advance(_zfs._BUSY_INTERVAL)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.commands, ["get", "mount", "mount", "mount"])

    def test_gives_up(self):
        self.busy = _zfs._BUSY_ATTEMPTS
        d = self.pool.discard_set_aside(VolumeName("db"), "t1")
        for _ in range(_zfs._BUSY_ATTEMPTS):
            self.reactor.advance(_zfs._BUSY_INTERVAL)
        error = self.failureResultOf(d, CommandFailed).value
        self.assertIn("busy", str(error))
        self.assertEqual(self.commands.count("destroy"), _zfs._BUSY_ATTEMPTS)
