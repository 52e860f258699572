"""
ZFSStoragePool on real zfs-fuse pools: the IStoragePool contract, the
stream plumbing at scale, and the 1 GiB acceptance transfer.  Root only.
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import time

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import LoopingCall
from twisted.protocols.basic import FileSender
from twisted.python import log
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from flocker_async._process import run_process
from flocker_async.volume import (
    EPOCH_PROPERTY,
    OWNER_PROPERTY,
    READ_ONLY_PROPERTY,
    SET_ASIDE_PROPERTY,
    ReceiveFailed,
    VolumeName,
    ZFSStoragePool,
    copy_snapshot,
)

from ..testtools import zfs as zfs_fixture
from ..testtools.netns import require_root
from ..testtools.volume import StoragePoolFixture, make_istoragepool_tests
from ..testtools.zfs import make_zfs_pool


def make_zfs_storage_pool(test_case, node_id, size=512 << 20):
    require_root(test_case)
    zpool = make_zfs_pool(test_case, size)
    pool = ZFSStoragePool(reactor, zpool.name, zpool.mountpoint + "/volumes",
                          node_id)
    test_case.addCleanup(pool.close)
    return pool


def reopen_zfs_storage_pool(pool):
    return ZFSStoragePool(reactor, pool.root_dataset, pool.mount_root,
                          pool.node_id)


def write_zfs_file(pool, name, path, data):
    target = os.path.join(pool.mount_root, name.value, path)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(target, "wb") as f:
        f.write(data)


class ZFSStoragePoolTests(make_istoragepool_tests(StoragePoolFixture(
        make_pool=make_zfs_storage_pool, reopen=reopen_zfs_storage_pool,
        write_file=write_zfs_file))):
    """ZFSStoragePool keeps the contract on real pools."""


def _zfs_output(*argv):
    return subprocess.run(("zfs",) + argv, capture_output=True, check=True,
                          timeout=60).stdout.decode()


class ZFSPropertiesTests(TestCase):
    """What the ZFS pool records, as zfs itself shows it."""

    def setUp(self):
        self.pool = make_zfs_storage_pool(self, "node-a")
        self.name = VolumeName("db")

    async def test_epoch_property(self):
        """The epoch is the user property org.flocker-async:epoch."""
        await self.pool.create(self.name)
        dataset = self.pool._dataset(self.name)
        self.assertEqual(_zfs_output(
            "get", "-H", "-o", "value", EPOCH_PROPERTY, dataset), "1\n")
        await self.pool.set_owner(self.name, "node-b", epoch=12)
        self.assertEqual(_zfs_output(
            "get", "-H", "-o", "value", "%s,%s" % (EPOCH_PROPERTY,
                                                   OWNER_PROPERTY),
            dataset), "12\nnode-b\n")

    async def test_set_aside_dataset(self):
        """A set-aside copy is the dataset <root>/<name>.set-aside.<label>
        with its snapshot set-aside-<label>, read-only and mounted
        read-only at its mountpoint; writes fail with EROFS."""
        volume = await self.pool.create(self.name)
        with open(os.path.join(volume.mountpoint, "kept"), "wb") as f:
            f.write(b"diverged data")
        aside = await self.pool.set_aside(self.name, "t1")
        dataset = "%s/db.set-aside.t1" % (self.pool.root_dataset,)
        self.assertEqual(
            _zfs_output("list", "-H", "-t", "snapshot", "-o", "name", "-r",
                        dataset).split(),
            [dataset + "@set-aside-t1"])
        # zfs-fuse shows readonly as "off (temporary)" once mounted: the
        # pool's mirror of it, and a write, say what it is.
        self.assertEqual(_zfs_output(
            "get", "-H", "-o", "value", "mountpoint,%s,%s" % (
                READ_ONLY_PROPERTY, SET_ASIDE_PROPERTY), dataset).split(),
            [aside.mountpoint, "on", "%.6f" % (aside.created,)])
        self.assertTrue(os.path.ismount(aside.mountpoint))
        error = self.assertRaises(
            OSError, open, os.path.join(aside.mountpoint, "new"), "wb")
        self.assertEqual(error.errno, errno.EROFS)
        with open(os.path.join(aside.mountpoint, "kept"), "rb") as f:
            self.assertEqual(f.read(), b"diverged data")
        await self.pool.discard_set_aside(self.name, "t1")
        self.assertNotIn(dataset, _zfs_output(
            "list", "-H", "-o", "name", "-r", self.pool.root_dataset))


def _rss_kib(field="VmRSS"):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field + " missing from /proc/self/status")


def _reset_peak_rss():
    # Linux >= 4.0: VmHWM restarts from the current RSS.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _fill(path, size):
    """Write ``size`` random bytes to ``path``; return their sha256."""
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(4 << 20, left))
            digest.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(4 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@inlineCallbacks
def _fill_elsewhere(path, mib):
    """Fill a file with random data in another process, so this process's
    memory is not inflated before it is measured."""
    yield run_process(reactor, [
        "dd", "if=/dev/urandom", "of=" + path, "bs=1M", "count=%d" % (mib,),
        "iflag=fullblock", "status=none"])


@inlineCallbacks
def _sha256_elsewhere(path):
    result = yield run_process(reactor, ["sha256sum", path])
    return result.stdout.split()[0].decode()


@implementer(IPushProducer)
class FileProducer:
    """A push producer writing a file in chunks as fast as it is allowed;
    it records how often its consumer paused and resumed it."""

    def __init__(self, path, consumer, chunk=256 * 1024):
        self.file = open(path, "rb")
        self.consumer = consumer
        self.chunk = chunk
        self.paused = False
        self.pauses = 0
        self.resumes = 0
        self.stopped = False
        self.done = Deferred()
        consumer.registerProducer(self, True)
        reactor.callLater(0, self._pump)

    def _pump(self):
        while not self.paused and not self.stopped:
            data = self.file.read(self.chunk)
            if not data:
                self.file.close()
                self.consumer.unregisterProducer()
                self.done.callback(None)
                return
            self.consumer.write(data)

    def pauseProducing(self):
        self.paused = True
        self.pauses += 1

    def resumeProducing(self):
        self.resumes += 1
        if self.paused:
            self.paused = False
            reactor.callLater(0, self._pump)

    def stopProducing(self):
        self.stopped = True
        self.file.close()


class ZFSStreamTests(TestCase):
    """The stream plumbing against real zfs send / zfs recv."""

    def setUp(self):
        # Room for the 1 GiB transfer (sparse files: only data takes space).
        self.source = make_zfs_storage_pool(self, "node-a", 2 << 30)
        self.target = make_zfs_storage_pool(self, "node-b", 2 << 30)
        self.name = VolumeName("data")

    @inlineCallbacks
    def spooled_stream(self, size):
        """A file holding a full send stream of a volume of ``size``
        random bytes, and that volume's file checksum."""
        volume = yield self.source.create(self.name)
        checksum = _fill(os.path.join(volume.mountpoint, "blob"), size)
        snapshot = yield self.source.snapshot(self.name, "s1")
        path = self.mktemp()
        consumer = _FileConsumer(path)
        yield self.source.send(snapshot, consumer).done
        consumer.close()
        return path, snapshot, checksum

    @inlineCallbacks
    def test_receive_over_debris_of_a_cut_receive(self):
        """A dataset with no snapshot and no owner (what zfs-fuse leaves
        when a full receive's zfs recv is killed) is replaced by the next
        full receive, which ends up a proper replica: read-only and mounted
        under the mount root."""
        path, snapshot, checksum = yield self.spooled_stream(1 << 20)
        subprocess.run(["zfs", "create", "-o", "mountpoint=none",
                        "%s/data" % (self.target.root_dataset,)], check=True)
        receiver = self.target.receive(self.name)
        with open(path, "rb") as f:
            receiver.write(f.read())
        receiver.finish()
        received = yield receiver.done
        self.assertEqual(received.name, "s1")
        volume = yield self.target.get(self.name)
        self.assertTrue(volume.read_only)
        self.assertEqual(volume.mountpoint,
                         os.path.join(self.target.mount_root, "data"))
        self.assertEqual(_sha256(os.path.join(volume.mountpoint, "blob")), checksum)

    @inlineCallbacks
    def test_copy_naming_an_owner_is_never_debris(self):
        """A copy with no snapshot that names an owner (a live volume of a
        node since renumbered, which never moved) is not taken for the
        debris of a cut receive: a peer's push is refused and the data
        stays."""
        path, snapshot, checksum = yield self.spooled_stream(1 << 20)
        volume = yield self.target.create(self.name)
        with open(os.path.join(volume.mountpoint, "precious"), "wb") as f:
            f.write(b"the only copy")
        yield self.target.set_owner(self.name, "10.9.9.9")
        receiver = self.target.receive(self.name)
        with open(path, "rb") as f:
            receiver.write(f.read())
        receiver.finish()
        yield self.assertFailure(receiver.done, ReceiveFailed)
        volume = yield self.target.get(self.name)
        self.assertEqual(volume.owner, "10.9.9.9")
        with open(os.path.join(volume.mountpoint, "precious"), "rb") as f:
            self.assertEqual(f.read(), b"the only copy")

    @inlineCallbacks
    def test_receive_pauses_fast_producer(self):
        """A producer faster than zfs recv is paused when the pipe is full
        and resumed when it drains; the volume arrives intact."""
        path, snapshot, checksum = yield self.spooled_stream(24 << 20)
        receiver = self.target.receive(self.name)
        producer = FileProducer(path, receiver)
        yield producer.done
        receiver.finish()
        received = yield receiver.done
        self.assertEqual(received, snapshot)
        # The first pause is the receiver's own while it checks the volume.
        self.assertGreater(producer.pauses, 10)
        self.assertGreater(producer.resumes, 10)
        self.assertEqual(receiver.bytes_received, os.path.getsize(path))
        self.assertEqual(
            _sha256(os.path.join(self.target.mount_root, "data", "blob")),
            checksum)

    @inlineCallbacks
    def test_receive_from_pull_producer(self):
        """A pull producer (``FileSender``) feeds a receive too."""
        path, snapshot, checksum = yield self.spooled_stream(4 << 20)
        receiver = self.target.receive(self.name)
        with open(path, "rb") as f:
            yield FileSender().beginFileTransfer(f, receiver)
        receiver.finish()
        received = yield receiver.done
        self.assertEqual(received, snapshot)
        self.assertEqual(
            _sha256(os.path.join(self.target.mount_root, "data", "blob")),
            checksum)

    @inlineCallbacks
    def test_one_gib_transfer(self):
        """
        The acceptance transfer: 1 GiB through our producer/consumer pair
        between two real pools, checksums equal, this process's peak memory
        growth under 64 MiB.
        """
        size = 1 << 30
        volume = yield self.source.create(self.name)
        source_file = os.path.join(volume.mountpoint, "blob")
        yield _fill_elsewhere(source_file, size >> 20)
        snapshot = yield self.source.snapshot(self.name, "s1")

        baseline = _rss_kib()
        _reset_peak_rss()
        peak = [baseline]

        def sample():
            peak[0] = max(peak[0], _rss_kib())
        sampler = LoopingCall(sample)
        sampler.start(0.02)
        started = time.monotonic()
        try:
            received = yield copy_snapshot(self.source, snapshot, self.target)
        finally:
            sampler.stop()
        seconds = time.monotonic() - started
        sample()
        growth_kib = max(peak[0], _rss_kib("VmHWM")) - baseline
        self.assertEqual(received, snapshot)
        checksums = yield gatherResults([
            _sha256_elsewhere(source_file),
            _sha256_elsewhere(
                os.path.join(self.target.mount_root, "data", "blob"))])
        self.assertEqual(checksums[0], checksums[1])
        self.assertLess(growth_kib, 64 * 1024)
        log.msg("1 GiB transfer: %.1f s, %.1f MB/s, RSS growth %.1f MiB" % (
            seconds, size / seconds / 1e6, growth_kib / 1024))

    test_one_gib_transfer.timeout = 300


class _FileConsumer:
    """Writes a stream to a file (a plain IConsumer for spooling)."""

    def __init__(self, path):
        self.file = open(path, "wb")

    def registerProducer(self, producer, streaming):
        pass

    def unregisterProducer(self):
        pass

    def write(self, data):
        self.file.write(data)

    def close(self):
        self.file.close()


class ZFSFixtureTests(SynchronousTestCase):
    """The pool fixture cleans up after crashed runs, and only those."""

    def setUp(self):
        require_root(self)
        zfs_fixture.prepare()

    def dead_pid(self):
        pid = 4000000
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return pid
            pid += 1

    def test_stale_pools_removed(self):
        """A pool left by a dead process, its file and its mount directory
        are removed; a pool of a live process is kept."""
        live = zfs_fixture.ZFSPool(128 << 20)
        self.addCleanup(live.destroy)
        stale_name = "%s-%d-%s" % (zfs_fixture.PREFIX, self.dead_pid(),
                                   "deadbeef")
        stale_file = os.path.join(zfs_fixture.POOL_DIR, stale_name + ".img")
        stale_mount = os.path.join(zfs_fixture.POOL_DIR, stale_name)
        with open(stale_file, "wb") as f:
            f.truncate(128 << 20)
        self.addCleanup(lambda: os.path.exists(stale_file) and os.unlink(
            stale_file))
        subprocess.run(["zpool", "create", "-m", stale_mount, stale_name,
                        stale_file], check=True, capture_output=True)
        self.addCleanup(subprocess.run, ["zpool", "destroy", "-f", stale_name],
                        capture_output=True)
        orphan = os.path.join(zfs_fixture.POOL_DIR, "%s-%d-%s.img" % (
            zfs_fixture.PREFIX, self.dead_pid(), "0rphan00"))
        open(orphan, "wb").close()
        self.addCleanup(lambda: os.path.exists(orphan) and os.unlink(orphan))

        zfs_fixture.remove_stale_pools()

        pools = subprocess.run(["zpool", "list", "-H", "-o", "name"],
                               capture_output=True, check=True
                               ).stdout.decode().split()
        self.assertNotIn(stale_name, pools)
        self.assertIn(live.name, pools)
        self.assertFalse(os.path.exists(stale_file))
        self.assertFalse(os.path.exists(stale_mount))
        self.assertFalse(os.path.exists(orphan))
        self.assertTrue(os.path.exists(live.file))

    def test_pool_destroyed(self):
        """``destroy`` removes the pool, its file and its mount directory."""
        pool = zfs_fixture.ZFSPool(128 << 20)
        pool.destroy()
        pools = subprocess.run(["zpool", "list", "-H", "-o", "name"],
                               capture_output=True, check=True
                               ).stdout.decode().split()
        self.assertNotIn(pool.name, pools)
        self.assertFalse(os.path.exists(pool.file))
        self.assertFalse(os.path.exists(pool.mountpoint))
