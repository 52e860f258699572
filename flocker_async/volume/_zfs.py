"""
``IStoragePool`` on ZFS: one dataset per volume under a root dataset, the
``zfs`` command run through ``spawnProcess`` (never blocking the reactor),
and ``zfs send`` / ``zfs recv`` wired to Twisted producers and consumers.

Coded to the subset zfs-fuse (pool version 23) supports: no ``list -p``
(sizes come from ``zfs get -H -p``), no resumable streams, no ``send -nP``.
"""

from __future__ import annotations

import fcntl
import os
import re
from typing import Iterable, Optional

from twisted.internet import fdesc
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.internet.threads import deferToThreadPool
from twisted.internet.error import (
    ConnectionDone, ProcessDone, ProcessExitedAlready)
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .._process import CommandFailed, _default_env, _which, run_process
from ._interfaces import (
    OWNER_PROPERTY,
    READ_ONLY_PROPERTY,
    VOLUME_NAME,
    IReceiveStream,
    ISendStream,
    IStoragePool,
    InvalidName,
    ReceiveFailed,
    SendFailed,
    Snapshot,
    SnapshotExists,
    Volume,
    VolumeError,
    VolumeExists,
    VolumeName,
    VolumeNotFound,
    validate_node_id,
)
from ._common import generate_snapshot_name, snapshots_to_prune

__all__ = ["ZFSStoragePool", "MountLock", "MOUNT_LOCK"]

_log = Logger()

DATASET_NAME = re.compile(
    r"\A[A-Za-z0-9][A-Za-z0-9_.:-]*(/[A-Za-z0-9][A-Za-z0-9_.:-]*)*\Z")
MOUNT_ROOT = re.compile(r"\A(/[A-Za-z0-9_.+-]+)+\Z")

_PROPERTIES = (
    "type", "mountpoint", "mounted", "refquota", "referenced", "readonly",
    OWNER_PROPERTY, READ_ONLY_PROPERTY,
)

# A zfs command other than a stream (get, list, create, set, snapshot,
# destroy, mount) takes well under a second; one still running after this
# long is stuck (a hung zfs-fuse) and is killed, and the change fails with
# the command named, rather than waiting for ever.
COMMAND_TIMEOUT = 120.0

# zfs-fuse hands each newly mounted file system to its request threads
# through one pipe, in two writes; two mounts at once interleave them, and
# a request thread then waits for ever for bytes that never come, holding
# the lock every other request thread needs: no file system of any pool on
# the machine answers again (zfs commands still do).  Seen when two lab
# nodes created volumes at the same moment.  So every zfs command that
# mounts (create, mount, set mountpoint; receives use -u and never mount)
# takes this lock, machine-wide, for as long as it runs.  With ZFS in the
# kernel the lock costs a few microseconds and guards nothing.
MOUNT_LOCK = "/run/lock/flocker-async-zfs-mount.lock"

# Keep this much of a stream command's stderr: what zfs says fits easily.
_MAX_STDERR = 64 * 1024


def _detail(failure_or_error) -> str:
    error = getattr(failure_or_error, "value", failure_or_error)
    if isinstance(error, CommandFailed):
        return error.stderr_text or str(error)
    return str(error)


def _parse_properties(stdout: bytes) -> dict:
    """``zfs get -H -p -o name,property,value`` -> {name: {prop: value}}."""
    result = {}
    for line in stdout.decode("utf-8", "replace").splitlines():
        parts = line.split("\t")
        if len(parts) != 3:
            continue
        name, prop, value = parts
        result.setdefault(name, {})[prop] = value
    return result


def _size(value: str) -> Optional[int]:
    if value in ("-", "none", "0", ""):
        return None
    return int(value)


def open_lock_file(path: str) -> int:
    """Open (creating it, and its directory if need be) a lock file."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)


class MountLock:
    """
    ``MOUNT_LOCK``: an exclusive ``flock`` taken without blocking the
    reactor (tried again every ``interval`` seconds until it is free).  The
    kernel drops it when its holder dies, so a killed daemon never leaves
    it taken.  Separate ``MountLock``s conflict even in one process.
    """

    def __init__(self, reactor, path: str = MOUNT_LOCK, interval: float = 0.02):
        self._reactor = reactor
        self.path = path
        self.interval = interval

    def run(self, f, *args) -> Deferred:
        """Fire with ``f(*args)``'s result, called while holding the lock."""
        fd = open_lock_file(self.path)
        state = {"call": None, "fd": fd}

        def close():
            if state["fd"] is not None:
                os.close(state["fd"])  # releases the lock
                state["fd"] = None

        def cancel(_):
            if state["call"] is not None and state["call"].active():
                state["call"].cancel()
            close()

        acquired = Deferred(cancel)

        def attempt():
            state["call"] = None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                state["call"] = self._reactor.callLater(self.interval, attempt)
                return
            except OSError as e:
                close()
                acquired.errback(e)
                return
            acquired.callback(None)
        attempt()

        def release(result):
            close()
            return result
        acquired.addCallback(lambda _: maybeDeferred(f, *args))
        return acquired.addBoth(release)


@implementer(IStoragePool)
class ZFSStoragePool:
    """
    Volumes are the datasets ``<root_dataset>/<volume name>``, mounted at
    ``<mount_root>/<volume name>``.
    """

    def __init__(self, reactor, root_dataset: str, mount_root: str,
                 node_id: str, command_timeout: float = COMMAND_TIMEOUT,
                 mount_lock: str = MOUNT_LOCK):
        if not DATASET_NAME.match(root_dataset) or len(root_dataset) > 200:
            raise InvalidName("invalid root dataset: %r" % (root_dataset,))
        if not MOUNT_ROOT.match(mount_root) or (
                os.path.normpath(mount_root) != mount_root):
            raise InvalidName("invalid mount root: %r" % (mount_root,))
        self._reactor = reactor
        self.root_dataset = root_dataset
        self.mount_root = mount_root
        self.node_id = validate_node_id(node_id)
        self.command_timeout = command_timeout
        self._mount_lock = MountLock(reactor, mount_lock)

    def __repr__(self):
        return "<ZFSStoragePool %s on %s>" % (self.root_dataset, self.node_id)

    # Naming -----------------------------------------------------------

    def _dataset(self, name: VolumeName) -> str:
        if not isinstance(name, VolumeName):
            raise TypeError("expected a VolumeName, got %r" % (name,))
        return "%s/%s" % (self.root_dataset, name.value)

    def _snapshot(self, snapshot: Snapshot) -> str:
        if not isinstance(snapshot, Snapshot):
            raise TypeError("expected a Snapshot, got %r" % (snapshot,))
        return "%s@%s" % (self._dataset(snapshot.volume), snapshot.name)

    def _mountpoint(self, name: VolumeName) -> str:
        return os.path.join(self.mount_root, name.value)

    def _zfs(self, *args) -> Deferred:
        return run_process(self._reactor, ("zfs",) + args,
                           timeout=self.command_timeout)

    def _is_mounted(self, path: str) -> Deferred:
        """
        Whether a file system is mounted at ``path``, by a stat() of it in
        a thread: never on the reactor thread, where a stuck FUSE daemon
        would block it for good; fails after ``command_timeout``.

        The stat itself matters with zfs-fuse: reading the kernel's mount
        table instead (no stat) made the volume contract tests flaky (a
        replica's files listed but not found, and once a stall of zfs-fuse
        in sync()); 15 runs with the stat passed, as before.
        """
        d = deferToThreadPool(self._reactor, self._reactor.getThreadPool(),
                              os.path.ismount, path)

        def timed_out(result, seconds):
            raise VolumeError("the file system at %s did not answer within "
                              "%g s (is zfs-fuse stuck?)" % (path, seconds))
        return d.addTimeout(self.command_timeout, self._reactor,
                            onTimeoutCancel=timed_out)

    def _zfs_mounting(self, *args) -> Deferred:
        """A zfs command that may mount a file system (see MOUNT_LOCK)."""
        return self._mount_lock.run(self._zfs, *args)

    # Queries ----------------------------------------------------------

    def _volume(self, name: VolumeName, props: dict) -> Volume:
        owner = props.get(OWNER_PROPERTY, "-")
        mirror = props.get(READ_ONLY_PROPERTY, "-")
        if mirror in ("on", "off"):
            read_only = mirror == "on"
        else:
            read_only = props.get("readonly") == "on"
        return Volume(
            name=name,
            owner=None if owner == "-" else owner,
            read_only=read_only,
            mountpoint=props.get("mountpoint", self._mountpoint(name)),
            maximum_size=_size(props.get("refquota", "-")),
            referenced=_size(props.get("referenced", "-")) or 0,
        )

    def _not_found(self, name):
        def translate(failure):
            failure.trap(CommandFailed)
            if "does not exist" in failure.value.stderr_text:
                raise VolumeNotFound(name)
            return failure
        return translate

    def _get_raw(self, name: VolumeName) -> Deferred:
        dataset = self._dataset(name)
        d = self._zfs("get", "-H", "-p", "-o", "name,property,value",
                      ",".join(_PROPERTIES), dataset)
        d.addErrback(self._not_found(name))
        d.addCallback(lambda result: _parse_properties(result.stdout)[dataset])
        return d

    def get(self, name: VolumeName) -> Deferred:
        return self._get_raw(name).addCallback(
            lambda props: self._volume(name, props))

    def enumerate(self) -> Deferred:
        d = self._zfs("get", "-H", "-p", "-r", "-d", "1",
                      "-o", "name,property,value", ",".join(_PROPERTIES),
                      self.root_dataset)

        def parse(result):
            volumes = []
            prefix = self.root_dataset + "/"
            for dataset, props in _parse_properties(result.stdout).items():
                if not dataset.startswith(prefix):
                    continue
                rest = dataset[len(prefix):]
                # Skips snapshots, deeper datasets and anything not ours
                # (a hidden %recv clone during a receive, for one).
                if not VOLUME_NAME.match(rest):
                    continue
                if props.get("type") != "filesystem":
                    continue
                volumes.append(self._volume(VolumeName(rest), props))
            return sorted(volumes, key=lambda v: v.name)
        return d.addCallback(parse)

    def owned_volumes(self) -> Deferred:
        return self.enumerate().addCallback(
            lambda vs: [v for v in vs if v.owned_by(self.node_id)])

    def replicas(self) -> Deferred:
        return self.enumerate().addCallback(
            lambda vs: [v for v in vs if not v.owned_by(self.node_id)])

    def snapshots(self, name: VolumeName) -> Deferred:
        dataset = self._dataset(name)
        d = self._zfs("list", "-H", "-t", "snapshot", "-o", "name",
                      "-s", "createtxg", "-d", "1", dataset)
        d.addErrback(self._not_found(name))

        def parse(result):
            snapshots = []
            for line in result.stdout.decode("utf-8", "replace").splitlines():
                head, sep, snapshot_name = line.strip().partition("@")
                if head != dataset or not sep:
                    continue
                try:
                    snapshots.append(Snapshot(name, snapshot_name))
                except InvalidName:
                    # Someone else's snapshot; never ours to send or prune.
                    continue
            return snapshots
        return d.addCallback(parse)

    # Changes ------------------------------------------------------------

    def create(self, name: VolumeName, maximum_size: Optional[int] = None
               ) -> Deferred:
        dataset = self._dataset(name)
        argv = ["create", "-o", "mountpoint=" + self._mountpoint(name)]
        if maximum_size is not None:
            if not isinstance(maximum_size, int) or maximum_size <= 0:
                raise ValueError("invalid maximum_size: %r" % (maximum_size,))
            argv += ["-o", "refquota=%d" % (maximum_size,)]
        argv += ["-o", "%s=%s" % (OWNER_PROPERTY, self.node_id),
                 "-o", "%s=off" % (READ_ONLY_PROPERTY,), dataset]
        d = self._zfs_mounting(*argv)

        def exists(failure):
            failure.trap(CommandFailed)
            if "already exists" in failure.value.stderr_text:
                raise VolumeExists(name)
            return failure
        d.addErrback(exists)
        d.addCallback(lambda _: self._ensure_mounted(name))
        d.addCallback(lambda _: self.get(name))
        d.addCallback(self._logged, "volume created")
        return d

    def _logged(self, volume, what):
        _log.info("{what}: {volume} on {node}", what=what,
                  volume=str(volume.name), node=self.node_id)
        return volume

    def _ensure_mounted(self, name: VolumeName) -> Deferred:
        d = self._get_raw(name)

        def mount(props):
            if props.get("mounted") == "yes":
                return None
            return self._zfs_mounting("mount", self._dataset(name))
        return d.addCallback(mount)

    def snapshot(self, name: VolumeName, snapshot_name: Optional[str] = None
                 ) -> Deferred:
        if snapshot_name is None:
            snapshot_name = generate_snapshot_name(self._reactor.seconds())
        snapshot = Snapshot(name, snapshot_name)
        mountpoint = self._mountpoint(name)

        def flush(mounted):
            # Dirty pages still in the kernel's FUSE cache are not in the
            # dataset yet: write them back so the snapshot holds every
            # completed write.
            if mounted:
                return run_process(self._reactor, ["sync", "-f", mountpoint],
                                   timeout=self.command_timeout)
            return None
        d = self._is_mounted(mountpoint).addCallback(flush)
        d.addCallback(lambda _: self._zfs("snapshot", self._snapshot(snapshot)))

        def translate(failure):
            failure.trap(CommandFailed)
            stderr = failure.value.stderr_text
            if "already exists" in stderr:
                raise SnapshotExists(snapshot)
            if "does not exist" in stderr:
                raise VolumeNotFound(name)
            return failure
        d.addErrback(translate)
        return d.addCallback(lambda _: snapshot)

    @inlineCallbacks
    def prune_snapshots(self, name: VolumeName, common: Iterable[Snapshot]):
        local = yield self.snapshots(name)
        doomed = snapshots_to_prune(local, common)
        for snapshot in doomed:
            # One snapshot at a time and never -r/-R: nothing else can go.
            yield self._zfs("destroy", self._snapshot(snapshot))
            _log.info("snapshot pruned: {snapshot}", snapshot=str(snapshot))
        return doomed

    @inlineCallbacks
    def set_read_only(self, name: VolumeName, read_only: bool):
        dataset = self._dataset(name)
        value = "on" if read_only else "off"
        # Order so that a crash in between reports a copy as writable
        # rather than a writable copy as read-only.
        if read_only:
            yield self._zfs("set", "readonly=on", dataset).addErrback(
                self._not_found(name))
            yield self._zfs("set", "%s=on" % (READ_ONLY_PROPERTY,), dataset)
        else:
            yield self._zfs("set", "%s=off" % (READ_ONLY_PROPERTY,),
                            dataset).addErrback(self._not_found(name))
            yield self._zfs("set", "readonly=off", dataset)
        volume = yield self.get(name)
        _log.info("volume {volume} read-only={value}", volume=str(name),
                  value=value)
        return volume

    @inlineCallbacks
    def discard_replica(self, name: VolumeName):
        volume = yield self.get(name)
        if volume.owned_by(self.node_id) or not volume.read_only:
            raise VolumeError(
                "refusing to discard volume %s: this node's copy is %s"
                % (name, "its live copy" if volume.owned_by(self.node_id)
                   else "writable"))
        yield self._destroy(name)
        _log.info("discarded replica {volume}", volume=str(name))

    @inlineCallbacks
    def _destroy(self, name: VolumeName):
        """Unmount and destroy a volume's dataset with its snapshots."""
        # zfs-fuse does not unmount on destroy ("dataset is busy").
        try:
            yield self._zfs("unmount", self._dataset(name))
        except CommandFailed as e:
            if "not currently mounted" not in e.stderr_text:
                raise
        yield self._zfs("destroy", "-r", self._dataset(name))

    @inlineCallbacks
    def set_owner(self, name: VolumeName, owner: str):
        validate_node_id(owner)
        yield self._zfs("set", "%s=%s" % (OWNER_PROPERTY, owner),
                        self._dataset(name)).addErrback(self._not_found(name))
        volume = yield self.get(name)
        _log.info("volume {volume} owner={owner}", volume=str(name),
                  owner=owner)
        return volume

    # Streams --------------------------------------------------------------

    def send(self, snapshot: Snapshot, consumer,
             base: Optional[Snapshot] = None):
        argv = ["zfs", "send"]
        if base is not None:
            if base.volume != snapshot.volume:
                raise ValueError("base %s is not a snapshot of %s" % (
                    base, snapshot.volume))
            argv += ["-i", self._snapshot(base)]
        argv.append(self._snapshot(snapshot))
        stream = _ZFSSendStream(snapshot, base, consumer)
        stream.start(self._reactor, argv)
        return stream

    def receive(self, name: VolumeName):
        self._dataset(name)
        return _ZFSReceiveStream(self, name)

    @inlineCallbacks
    def _receive_check(self, name: VolumeName):
        """Fire with whether the volume exists; refuse one owned here."""
        try:
            volume = yield self.get(name)
        except VolumeNotFound:
            return False
        if volume.owned_by(self.node_id):
            raise _Refused(
                "this node owns volume %r (its writable copy); a volume is "
                "only ever received into a replica" % (str(name),))
        if not (yield self.snapshots(name)):
            # Debris of a full receive that was cut (zfs-fuse leaves the new
            # dataset behind when zfs recv is killed): no snapshot, so
            # nothing was ever received into it and nobody's data is in it.
            # Received into as it is, it would keep its default mountpoint
            # and no read-only flag.
            _log.warn("discarding {volume}: a copy with no snapshot, left "
                      "by an interrupted receive", volume=str(name))
            yield self._destroy(name)
            return False
        # Receive into an unmounted replica and mount it again afterwards:
        # a mounted one would go on showing the kernel's cached pages of
        # the old contents, not what was received.
        if (yield self._is_mounted(self._mountpoint(name))):
            yield self._zfs("unmount", self._dataset(name))
        # A replica set up elsewhere or not at all (a receive that finished
        # after it was reported failed) is set up like a new one afterwards.
        return (volume.mountpoint == self._mountpoint(name)
                and volume.read_only)

    @inlineCallbacks
    def _after_receive(self, name: VolumeName, existed: bool):
        dataset = self._dataset(name)
        if not existed:
            # A new replica (or one not set up as one): read-only before it
            # is mounted again.
            yield self._zfs("set", "readonly=on", dataset)
            yield self._zfs("set", "%s=on" % (READ_ONLY_PROPERTY,), dataset)
            yield self._zfs_mounting(
                "set", "mountpoint=" + self._mountpoint(name), dataset)
        yield self._ensure_mounted(name)
        snapshots = yield self.snapshots(name)
        return snapshots[-1]

    @inlineCallbacks
    def _state_after_failure(self, name: VolumeName):
        """Fire with (exists, newest snapshot or None)."""
        try:
            snapshots = yield self.snapshots(name)
        except VolumeNotFound:
            return False, None
        # It was unmounted for the receive: mount it again as it was.
        try:
            yield self._ensure_mounted(name)
        except CommandFailed as e:
            _log.warn("volume {volume} could not be mounted again: {error}",
                      volume=str(name), error=str(e))
        return True, (snapshots[-1] if snapshots else None)


class _Refused(Exception):
    pass


def _spawn(reactor, protocol, argv):
    reactor.spawnProcess(protocol, _which(argv[0]), list(argv),
                         env=_default_env())


class _Stderr:
    """Keep the first part of what a streaming command says on stderr."""

    def __init__(self):
        self.chunks = []
        self.size = 0

    def add(self, data):
        if self.size < _MAX_STDERR:
            self.chunks.append(data)
            self.size += len(data)

    def text(self) -> str:
        return b"".join(self.chunks).decode("utf-8", "replace").strip()


# How long a stream command may take to exit once its pipe was closed.
_EXIT_GRACE = 30.0


def _kill_later(reactor, transport):
    def kill():
        try:
            transport.signalProcess("KILL")
        except ProcessExitedAlready:
            pass
    return reactor.callLater(_EXIT_GRACE, kill)


def _how_ended(reason) -> str:
    value = reason.value
    if getattr(value, "signal", None) is not None:
        return "killed by signal %s" % (value.signal,)
    return "exit status %s" % (getattr(value, "exitCode", None),)


# Pipes between us and zfs send / zfs recv are grown to this size, and the
# send side is read in chunks of this size: Twisted's process reader reads
# 8 KiB at a time, which costs a third of the throughput.  Memory per
# stream stays bounded by a few of these.
_PIPE_SIZE = 1024 * 1024


def _grow_pipe(fd):
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
    except (OSError, AttributeError):
        pass  # a smaller pipe is slower, not wrong


class _PipeReader(FileDescriptor):
    """The read end of a pipe, read in large chunks; pausing stops reading."""

    def __init__(self, reactor, fd, received, ended):
        FileDescriptor.__init__(self, reactor)
        fdesc.setNonBlocking(fd)
        self.fd = fd
        self.connected = 1
        self._received = received
        self._ended = ended

    def fileno(self):
        return self.fd

    def doRead(self):
        try:
            data = os.read(self.fd, _PIPE_SIZE)
        except BlockingIOError:
            return None
        except OSError:
            return CONNECTION_LOST
        if not data:
            return CONNECTION_DONE
        self._received(data)
        return None

    def connectionLost(self, reason):
        FileDescriptor.connectionLost(self, reason)
        self.close()
        self._ended()

    def close(self):
        """Close our end now, without reading what is left."""
        if self.fd >= 0:
            self.stopReading()
            os.close(self.fd)
            self.fd = -1
        self.connected = 0
        self.disconnected = 1


@implementer(ISendStream)
class _ZFSSendStream(ProcessProtocol):
    """
    ``zfs send`` as a push producer.  Its stdout is a pipe we read
    ourselves (see ``_PipeReader``); pausing stops reading it, so zfs send
    blocks once the pipe is full.  The stream has ended when both the
    process has exited and the pipe reached end of file.
    """

    def __init__(self, snapshot, base, consumer):
        self.snapshot = snapshot
        self.base = base
        self.done = Deferred()
        self.bytes_sent = 0
        self._consumer = consumer
        self._stderr = _Stderr()
        self._stopped = False
        self._ended = False
        self._eof = False
        self._exit = None
        self._killer = None
        self._reactor = None
        self._reader = None

    def start(self, reactor, argv):
        self._reactor = reactor
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        _grow_pipe(read_fd)
        try:
            reactor.spawnProcess(self, _which(argv[0]), list(argv),
                                 env=_default_env(),
                                 childFDs={0: "w", 1: write_fd, 2: "r"})
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        self._reader = _PipeReader(reactor, read_fd, self._data,
                                   self._pipe_ended)
        self._reader.startReading()
        self._consumer.registerProducer(self, True)

    def connectionMade(self):
        self.transport.closeStdin()

    def _data(self, data):
        if self._stopped:
            return
        self.bytes_sent += len(data)
        self._consumer.write(data)

    def _pipe_ended(self):
        self._eof = True
        self._maybe_ended()

    def errReceived(self, data):
        self._stderr.add(data)

    def pauseProducing(self):
        if not self._eof:
            self._reader.stopReading()

    def resumeProducing(self):
        if not self._eof and not self._stopped:
            self._reader.startReading()

    def stopProducing(self):
        if self._ended or self._stopped:
            return
        self._stopped = True
        # Closing the pipe ends the send wherever it runs (with zfs-fuse the
        # daemon writes into it, not the zfs process).
        self._reader.close()
        self._eof = True
        if self._exit is None:
            self._killer = _kill_later(self._reactor, self.transport)
        self._maybe_ended()

    def processEnded(self, reason):
        self._exit = reason
        if self._killer is not None and self._killer.active():
            self._killer.cancel()
        self._maybe_ended()

    def _maybe_ended(self):
        if self._ended or self._exit is None or not self._eof:
            return
        self._ended = True
        reason = self._exit
        self._consumer.unregisterProducer()
        if self._stopped:
            detail = "stopped by the receiving side before the end"
        elif reason.check(ProcessDone):
            self.done.callback(self.bytes_sent)
            return
        else:
            detail = self._stderr.text() or "zfs send " + _how_ended(reason)
        self.done.errback(SendFailed(self.snapshot, self.base, detail))


@implementer(IReceiveStream)
class _ZFSReceiveStream(ProcessProtocol):
    """
    A consumer feeding ``zfs recv -u``.  The registered producer is handed
    to the process's stdin writer, which pauses it while the pipe is full
    and resumes it when it drains.  Until the pre-check (does the volume
    exist, is it ours) is done the producer is paused and early writes are
    held.
    """

    def __init__(self, pool: ZFSStoragePool, name: VolumeName):
        self.done = Deferred()
        self.bytes_received = 0
        self._pool = pool
        self._name = name
        self._state = "checking"  # -> "running" -> "ended"
        self._pending = []
        self._producer = None
        self._streaming = True
        self._paused_by_us = False
        self._finishing = False
        self._aborted = None
        self._existed = None
        self._killer = None
        self._cut = False
        self._stderr = _Stderr()
        pool._receive_check(name).addCallbacks(self._start, self._refused)

    # IConsumer ----------------------------------------------------------

    def write(self, data):
        if self._state == "ended" or self._aborted is not None or self._cut:
            return
        self.bytes_received += len(data)
        if self._state == "checking":
            self._pending.append(data)
        else:
            self.transport.write(data)

    def registerProducer(self, producer, streaming):
        if self._producer is not None:
            raise RuntimeError("a producer is already registered")
        if self._state == "ended" or self._aborted is not None:
            producer.stopProducing()
            return
        self._producer = producer
        self._streaming = streaming
        if self._state == "running":
            self.transport.registerProducer(producer, streaming)
        elif streaming:
            producer.pauseProducing()
            self._paused_by_us = True

    def unregisterProducer(self):
        self._producer = None
        self._paused_by_us = False
        if self._state == "running":
            self.transport.unregisterProducer()

    # IReceiveStream -----------------------------------------------------

    def finish(self):
        self._finishing = True
        if self._state == "running":
            self.transport.closeStdin()

    def abort(self, reason=None):
        if self._state == "ended" or self._aborted is not None:
            return
        if isinstance(reason, Failure):
            reason = reason.getErrorMessage()
        self._aborted = "the stream was cut" + (": %s" % (reason,) if reason
                                                else "")
        self._pending = []
        if self._state == "running":
            # Close stdin at once, dropping what is buffered: zfs recv (or,
            # with zfs-fuse, the daemon reading the pipe) sees a truncated
            # stream, discards it and exits.  Killing only the zfs process
            # would leave the daemon waiting on the pipe.
            self._cut_stdin()
            self._killer = _kill_later(self._pool._reactor, self.transport)
        elif self._producer is not None:
            producer, self._producer = self._producer, None
            producer.stopProducing()

    # Life cycle -----------------------------------------------------------

    def _refused(self, failure):
        self._state = "ended"
        detail = (str(failure.value) if failure.check(_Refused)
                  else _detail(failure))
        if self._producer is not None:
            producer, self._producer = self._producer, None
            producer.stopProducing()
        self._fail(detail)

    def _start(self, existed):
        self._existed = existed
        if self._aborted is not None:
            self._state = "ended"
            return self._fail(self._aborted)
        self._state = "running"
        _spawn(self._pool._reactor, self,
               ["zfs", "recv", "-u", self._pool._dataset(self._name)])
        stdin = self.transport.pipes[0]
        _grow_pipe(stdin.fileno())
        # Pause the producer only when a pipe's worth is waiting, not after
        # every chunk: fewer pause/resume round trips, same bound.
        stdin.bufferSize = _PIPE_SIZE
        pending, self._pending = self._pending, []
        for data in pending:
            self.transport.write(data)
        if self._producer is not None:
            self.transport.registerProducer(self._producer, self._streaming)
            if self._paused_by_us:
                self._paused_by_us = False
                self._producer.resumeProducing()
        if self._finishing:
            self.transport.closeStdin()

    def _cut_stdin(self):
        self._cut = True
        stdin = self.transport.pipes.get(0)
        if stdin is not None:
            stdin.connectionLost(Failure(ConnectionDone("receive aborted")))

    def connectionMade(self):
        self.transport.closeStdout()

    def errReceived(self, data):
        self._stderr.add(data)

    def processExited(self, reason):
        # zfs recv died (killed, say) with its input still open: with
        # zfs-fuse the daemon holding the pipe would go on receiving what
        # we write and complete a receive we report as failed, leaving a
        # replica without its mountpoint and read-only flag.  Cut it.
        if not reason.check(ProcessDone) and self._state == "running":
            self._cut_stdin()

    def processEnded(self, reason):
        self._state = "ended"
        self._producer = None
        if self._killer is not None and self._killer.active():
            self._killer.cancel()
        if reason.check(ProcessDone):
            # zfs recv accepted a whole stream, even if it was cut after.
            d = self._pool._after_receive(self._name, self._existed)
            d.addCallbacks(self._received, self._post_receive_failed)
            return
        said = self._stderr.text()
        if self._aborted is not None:
            detail = self._aborted + (" (zfs recv: %s)" % (said,) if said
                                      else "")
        else:
            detail = said or "zfs recv " + _how_ended(reason)
        self._fail(detail)

    def _received(self, snapshot):
        _log.info("received {snapshot} ({size} bytes) on {node}",
                  snapshot=str(snapshot), size=self.bytes_received,
                  node=self._pool.node_id)
        self.done.callback(snapshot)

    def _post_receive_failed(self, failure):
        self.done.errback(VolumeError(
            "volume %r was received but setting it up failed: %s" % (
                str(self._name), _detail(failure))))

    def _fail(self, detail):
        # Report what is really there now, not what we expected.
        d = self._pool._state_after_failure(self._name)

        def report(state):
            exists, previous = state
            error = ReceiveFailed(self._name, detail, previous, exists)
            _log.warn("{error}", error=str(error))
            self.done.errback(error)

        def unknown(failure):
            self.done.errback(VolumeError(
                "receiving volume %r failed: %s; its state could not be "
                "read: %s" % (str(self._name), detail, _detail(failure))))
        d.addCallbacks(report, unknown)
