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
import threading
import time
from typing import Iterable, Optional

from twisted.internet import fdesc
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.threads import deferToThreadPool
from twisted.internet.error import (
    ConnectionDone, ProcessDone, ProcessExitedAlready)
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from .._async import deferred, sleep
from .._process import CommandFailed, _default_env, _which, run_process
from ._interfaces import (
    EPOCH_PROPERTY,
    OWNER_PROPERTY,
    READ_ONLY_PROPERTY,
    SET_ASIDE_NAME,
    SET_ASIDE_PROPERTY,
    VOLUME_NAME,
    IReceiveStream,
    ISendStream,
    IStoragePool,
    InvalidName,
    ReceiveFailed,
    SendFailed,
    SetAside,
    Snapshot,
    SnapshotExists,
    Volume,
    VolumeError,
    VolumeExists,
    VolumeName,
    VolumeNotFound,
    set_aside_name,
    validate_epoch,
    validate_node_id,
)
from ._common import (
    SET_ASIDE_SNAPSHOT_PREFIX,
    generate_snapshot_name,
    snapshots_to_prune,
    snapshots_to_trim,
)

__all__ = ["ZFSStoragePool", "MountLock", "MOUNT_LOCK"]

_log = Logger()

DATASET_NAME = re.compile(
    r"\A[A-Za-z0-9][A-Za-z0-9_.:-]*(/[A-Za-z0-9][A-Za-z0-9_.:-]*)*\Z")
MOUNT_ROOT = re.compile(r"\A(/[A-Za-z0-9_.+-]+)+\Z")

# Everything we read about a dataset, in one ``zfs get``.
_PROPERTIES = (
    "type", "mountpoint", "mounted", "refquota", "referenced", "readonly",
    "creation", OWNER_PROPERTY, EPOCH_PROPERTY, READ_ONLY_PROPERTY,
    SET_ASIDE_PROPERTY,
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

# Mount checks (a stat() each) run on this many threads of the pool's own:
# a stat() of a wedged FUSE mount never returns, and the reactor's
# threadpool, which name resolution needs, must never fill up with them.
MOUNT_CHECK_THREADS = 4

# How long closing the pool waits, in all, for its mount-check threads.
_JOIN_GRACE = 1.0

# zfs-fuse releases a file system some time after ``zfs unmount`` returned
# (it unmounts through FUSE), and until then calls it busy: a mount, rename
# or destroy right after an unmount is tried again, this often, this far
# apart.  (Seen: a replica unmounted for a receive that failed at once
# could not be mounted again, "mountpoint or dataset is busy".)
_BUSY_ATTEMPTS = 20
_BUSY_INTERVAL = 0.25


def _detail(failure_or_error) -> str:
    error = getattr(failure_or_error, "value", failure_or_error)
    if isinstance(error, CommandFailed):
        return error.stderr_text or str(error)
    return str(error)


def _parse_properties(stdout: bytes) -> dict:
    """``zfs get -H -p -o name,property,value`` -> {name: {prop: value}}."""
    result: dict = {}
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


def _epoch(value: str) -> int:
    """An epoch property; unset (``-``) or not a positive int: 0."""
    try:
        epoch = int(value)
    except ValueError:
        return 0
    return epoch if epoch > 0 else 0


def _time(value: str) -> Optional[float]:
    try:
        return float(value)
    except ValueError:
        return None


class _MountCheckThreads(ThreadPool):
    """
    The threads that stat() mount points.  A thread stuck in a stat() of a
    wedged FUSE mount must not keep the process alive nor hang its
    shutdown (``ThreadPool.stop`` joins every thread for ever), so they are
    daemon threads and ``stop`` waits for them only briefly.
    """

    def threadFactory(self, *args, **kwargs):
        return threading.Thread(*args, daemon=True, **kwargs)

    def stop(self):
        self.joined = True
        self.started = False
        self._team.quit()
        deadline = time.monotonic() + _JOIN_GRACE
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))


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

        acquired: Deferred[None] = Deferred(cancel)

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
    ``<mount_root>/<volume name>``; set-aside copies are the datasets
    ``<root_dataset>/<volume name>.set-aside.<label>``, mounted read-only
    at ``<mount_root>/<volume name>.set-aside.<label>``.
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
        # Started on first use (see _mount_check_threads).
        self._mount_threads: Optional[_MountCheckThreads] = None
        self._shutdown_trigger = None

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

    def _set_aside_dataset(self, name: VolumeName, label: str) -> str:
        if not isinstance(name, VolumeName):
            raise TypeError("expected a VolumeName, got %r" % (name,))
        return "%s/%s" % (self.root_dataset, set_aside_name(name, label))

    def _set_aside_mountpoint(self, name: VolumeName, label: str) -> str:
        return os.path.join(self.mount_root, set_aside_name(name, label))

    def _zfs(self, *args) -> Deferred:
        return run_process(self._reactor, ("zfs",) + args,
                           timeout=self.command_timeout)

    def _zfs_mounting(self, *args) -> Deferred:
        """A zfs command that may mount a file system (see MOUNT_LOCK)."""
        return self._mount_lock.run(self._zfs, *args)

    async def _zfs_after_unmount(self, run, *args):
        """``run(*args)``, tried again while zfs says the dataset is busy
        (see _BUSY_ATTEMPTS)."""
        for attempt in range(1, _BUSY_ATTEMPTS + 1):
            try:
                return await run(*args)
            except CommandFailed as e:
                if ("is busy" not in e.stderr_text
                        or attempt == _BUSY_ATTEMPTS):
                    raise
                _log.info("zfs {command}: dataset busy, trying again",
                          command=" ".join(args))
            await sleep(self._reactor, _BUSY_INTERVAL)

    # Mount checks, on threads of their own -------------------------------

    def _mount_check_threads(self) -> "_MountCheckThreads":
        if self._mount_threads is None:
            threads = _MountCheckThreads(
                0, MOUNT_CHECK_THREADS,
                name="flocker-mount-check-%s" % (self.root_dataset,))
            threads.start()
            self._mount_threads = threads
            self._shutdown_trigger = self._reactor.addSystemEventTrigger(
                "during", "shutdown", self._at_shutdown)
        return self._mount_threads

    def _at_shutdown(self):
        # The trigger is being run: it cannot be removed any more.
        self._shutdown_trigger = None
        self.close()

    def close(self):
        """Stop the mount-check threads (they start again if needed)."""
        threads, self._mount_threads = self._mount_threads, None
        trigger, self._shutdown_trigger = self._shutdown_trigger, None
        if trigger is not None:
            self._reactor.removeSystemEventTrigger(trigger)
        if threads is not None:
            threads.stop()

    def _is_mounted(self, path: str) -> Deferred:
        """
        Whether a file system is mounted at ``path``, by a stat() of it in
        a thread of the pool's own: never on the reactor thread, where a
        stuck FUSE daemon would block it for good, nor on the reactor's
        threadpool, which name resolution needs; fails after
        ``command_timeout``.

        The stat itself matters with zfs-fuse: reading the kernel's mount
        table instead (no stat) made the volume contract tests flaky (a
        replica's files listed but not found, and once a stall of zfs-fuse
        in sync()); 15 runs with the stat passed, as before.
        """
        d = deferToThreadPool(self._reactor, self._mount_check_threads(),
                              os.path.ismount, path)

        def timed_out(result, seconds):
            raise VolumeError("the file system at %s did not answer within "
                              "%g s (is zfs-fuse stuck?)" % (path, seconds))
        return d.addTimeout(self.command_timeout, self._reactor,
                            onTimeoutCancel=timed_out)

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
            epoch=_epoch(props.get(EPOCH_PROPERTY, "-")),
        )

    def _set_aside(self, name: VolumeName, label: str, props: dict
                   ) -> SetAside:
        owner = props.get(OWNER_PROPERTY, "-")
        created = _time(props.get(SET_ASIDE_PROPERTY, "-"))
        if created is None:
            # Set aside by hand, not by us: when the dataset was made.
            created = _time(props.get("creation", "-")) or 0.0
        return SetAside(
            volume=name, label=label, created=created,
            referenced=_size(props.get("referenced", "-")) or 0,
            owner=None if owner == "-" else owner,
            epoch=_epoch(props.get(EPOCH_PROPERTY, "-")),
            mountpoint=props.get("mountpoint",
                                 self._set_aside_mountpoint(name, label)))

    def _not_found(self, name):
        def translate(failure):
            failure.trap(CommandFailed)
            if "does not exist" in failure.value.stderr_text:
                raise VolumeNotFound(name)
            return failure
        return translate

    async def _get_dataset(self, dataset: str) -> Optional[dict]:
        """The dataset's properties, or None if it does not exist."""
        try:
            result = await self._zfs(
                "get", "-H", "-p", "-o", "name,property,value",
                ",".join(_PROPERTIES), dataset)
        except CommandFailed as e:
            if "does not exist" in e.stderr_text:
                return None
            raise
        return _parse_properties(result.stdout).get(dataset)

    async def _get_raw(self, name: VolumeName) -> dict:
        props = await self._get_dataset(self._dataset(name))
        if props is None:
            raise VolumeNotFound(name)
        return props

    @deferred
    async def get(self, name: VolumeName):
        return self._volume(name, await self._get_raw(name))

    async def _children(self) -> dict:
        """{leaf name: properties} of the root dataset's file systems."""
        result = await self._zfs(
            "get", "-H", "-p", "-r", "-d", "1", "-o", "name,property,value",
            ",".join(_PROPERTIES), self.root_dataset)
        prefix = self.root_dataset + "/"
        return {
            dataset[len(prefix):]: props
            for dataset, props in _parse_properties(result.stdout).items()
            # Skips the root itself and snapshots ('@' in the leaf).
            if dataset.startswith(prefix) and props.get("type") == "filesystem"
        }

    @deferred
    async def enumerate(self):
        volumes = []
        for leaf, props in (await self._children()).items():
            # Skips set-aside copies, deeper datasets and anything not ours
            # (a hidden %recv clone during a receive, for one).
            if VOLUME_NAME.match(leaf):
                volumes.append(self._volume(VolumeName(leaf), props))
        return sorted(volumes, key=lambda v: v.name)

    def owned_volumes(self) -> Deferred:
        return self.enumerate().addCallback(
            lambda vs: [v for v in vs if v.owned_by(self.node_id)])

    def replicas(self) -> Deferred:
        return self.enumerate().addCallback(
            lambda vs: [v for v in vs if not v.owned_by(self.node_id)])

    @deferred
    async def snapshots(self, name: VolumeName):
        dataset = self._dataset(name)
        result = await self._zfs(
            "list", "-H", "-t", "snapshot", "-o", "name", "-s", "createtxg",
            "-d", "1", dataset).addErrback(self._not_found(name))
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

    @deferred
    async def set_asides(self):
        found = []
        for leaf, props in (await self._children()).items():
            match = SET_ASIDE_NAME.match(leaf)
            if match is not None:
                found.append(self._set_aside(
                    VolumeName(match.group("volume")), match.group("label"),
                    props))
        return sorted(found, key=lambda s: (s.created, s.volume, s.label))

    # Changes ------------------------------------------------------------

    @deferred
    async def create(self, name: VolumeName,
                     maximum_size: Optional[int] = None):
        dataset = self._dataset(name)
        argv = ["create", "-o", "mountpoint=" + self._mountpoint(name)]
        if maximum_size is not None:
            if not isinstance(maximum_size, int) or maximum_size <= 0:
                raise ValueError("invalid maximum_size: %r" % (maximum_size,))
            argv += ["-o", "refquota=%d" % (maximum_size,)]
        argv += ["-o", "%s=%s" % (OWNER_PROPERTY, self.node_id),
                 "-o", "%s=1" % (EPOCH_PROPERTY,),
                 "-o", "%s=off" % (READ_ONLY_PROPERTY,), dataset]
        try:
            await self._zfs_mounting(*argv)
        except CommandFailed as e:
            if "already exists" in e.stderr_text:
                raise VolumeExists(name)
            raise
        await self._ensure_mounted(dataset)
        volume = await self.get(name)
        self._logged(volume, "volume created")
        return volume

    def _logged(self, volume, what):
        _log.info("{what}: {volume} on {node}", what=what,
                  volume=str(volume.name), node=self.node_id)
        return volume

    async def _ensure_mounted(self, dataset: str):
        props = await self._get_dataset(dataset)
        if props is not None and props.get("mounted") != "yes":
            await self._zfs_after_unmount(self._zfs_mounting, "mount",
                                          dataset)

    async def _unmount(self, dataset: str):
        try:
            await self._zfs("unmount", dataset)
        except CommandFailed as e:
            if "not currently mounted" not in e.stderr_text:
                raise

    async def _flush(self, mountpoint: str):
        # Dirty pages still in the kernel's FUSE cache are not in the
        # dataset yet: write them back so a snapshot holds every completed
        # write.
        if await self._is_mounted(mountpoint):
            await run_process(self._reactor, ["sync", "-f", mountpoint],
                              timeout=self.command_timeout)

    @deferred
    async def snapshot(self, name: VolumeName,
                       snapshot_name: Optional[str] = None):
        if snapshot_name is None:
            snapshot_name = generate_snapshot_name(self._reactor.seconds())
        snapshot = Snapshot(name, snapshot_name)
        await self._flush(self._mountpoint(name))
        try:
            await self._zfs("snapshot", self._snapshot(snapshot))
        except CommandFailed as e:
            if "already exists" in e.stderr_text:
                raise SnapshotExists(snapshot)
            if "does not exist" in e.stderr_text:
                raise VolumeNotFound(name)
            raise
        return snapshot

    async def _destroy_snapshots(self, doomed, what):
        for snapshot in doomed:
            # One snapshot at a time and never -r/-R: nothing else can go.
            await self._zfs("destroy", self._snapshot(snapshot))
            _log.info("snapshot {what}: {snapshot}", what=what,
                      snapshot=str(snapshot))
        return doomed

    @deferred
    async def prune_snapshots(self, name: VolumeName,
                              common: Iterable[Snapshot],
                              *more_common: Iterable[Snapshot]):
        local = await self.snapshots(name)
        doomed = snapshots_to_prune(local, common, *more_common)
        return await self._destroy_snapshots(doomed, "pruned")

    @deferred
    async def trim_snapshots(self, name: VolumeName, keep: int):
        snapshots_to_trim([], keep)  # validates keep before anything else
        local = await self.snapshots(name)
        return await self._destroy_snapshots(
            snapshots_to_trim(local, keep), "trimmed")

    @deferred
    async def set_read_only(self, name: VolumeName, read_only: bool):
        dataset = self._dataset(name)
        value = "on" if read_only else "off"
        # Order so that a crash in between reports a copy as writable
        # rather than a writable copy as read-only.
        if read_only:
            await self._zfs("set", "readonly=on", dataset).addErrback(
                self._not_found(name))
            await self._zfs("set", "%s=on" % (READ_ONLY_PROPERTY,), dataset)
        else:
            await self._zfs("set", "%s=off" % (READ_ONLY_PROPERTY,),
                            dataset).addErrback(self._not_found(name))
            await self._zfs("set", "readonly=off", dataset)
        volume = await self.get(name)
        _log.info("volume {volume} read-only={value}", volume=str(name),
                  value=value)
        return volume

    @deferred
    async def discard_replica(self, name: VolumeName):
        volume = await self.get(name)
        if volume.owned_by(self.node_id) or not volume.read_only:
            raise VolumeError(
                "refusing to discard volume %s: this node's copy is %s"
                % (name, "its live copy" if volume.owned_by(self.node_id)
                   else "writable"))
        await self._destroy(self._dataset(name))
        _log.info("discarded replica {volume}", volume=str(name))

    async def _destroy(self, dataset: str):
        """Unmount and destroy a dataset with its snapshots (-r: its
        children; a set-aside copy is a sibling, never a child)."""
        # zfs-fuse does not unmount on destroy ("dataset is busy").
        await self._unmount(dataset)
        await self._zfs_after_unmount(self._zfs, "destroy", "-r", dataset)

    @deferred
    async def set_owner(self, name: VolumeName, owner: str,
                        epoch: Optional[int] = None):
        validate_node_id(owner)
        if epoch is not None:
            validate_epoch(epoch)
        dataset = self._dataset(name)
        # The epoch first: a crash in between leaves the old owner with a
        # new epoch, never a new owner with an old one.
        if epoch is not None:
            await self._zfs("set", "%s=%d" % (EPOCH_PROPERTY, epoch),
                            dataset).addErrback(self._not_found(name))
        await self._zfs("set", "%s=%s" % (OWNER_PROPERTY, owner),
                        dataset).addErrback(self._not_found(name))
        volume = await self.get(name)
        _log.info("volume {volume} owner={owner} epoch={epoch}",
                  volume=str(name), owner=owner, epoch=volume.epoch)
        return volume

    # Set-aside copies -----------------------------------------------------

    @deferred
    async def set_aside(self, name: VolumeName, label: str):
        target = self._set_aside_dataset(name, label)  # validates label
        mountpoint = self._set_aside_mountpoint(name, label)
        dataset = self._dataset(name)
        await self._get_raw(name)  # VolumeNotFound
        if await self._get_dataset(target) is not None:
            raise VolumeError(
                "volume %s already has a set-aside copy labelled %r: "
                "choose another label" % (name, label))
        try:
            # Pin the exact data first.
            await self.snapshot(name, SET_ASIDE_SNAPSHOT_PREFIX + label)
        except SnapshotExists:
            pass  # pinned by an attempt that stopped half way
        try:
            await self._zfs("set", "%s=%.6f" % (
                SET_ASIDE_PROPERTY, self._reactor.seconds()), dataset)
            await self._zfs("set", "readonly=on", dataset)
            await self._zfs("set", "%s=on" % (READ_ONLY_PROPERTY,), dataset)
            # Unmounted and given its new mountpoint before the rename: a
            # crash at any point never leaves two datasets claiming one
            # mountpoint, and the renamed dataset is never mounted at the
            # volume's path.
            await self._unmount(dataset)
            await self._zfs_mounting("set", "mountpoint=" + mountpoint,
                                     dataset)
            await self._zfs_after_unmount(
                self._zfs_mounting, "rename", dataset, target)
            await self._ensure_mounted(target)
            props = await self._get_dataset(target) or {}
        except CommandFailed as e:
            raise VolumeError("setting volume %s aside as %r failed: %s"
                              % (name, label, _detail(e)))
        result = self._set_aside(name, label, props)
        _log.info("volume {volume} set aside as {label} on {node} "
                  "({size} bytes, owner {owner}, epoch {epoch})",
                  volume=str(name), label=label, node=self.node_id,
                  size=result.referenced, owner=result.owner,
                  epoch=result.epoch)
        return result

    @deferred
    async def discard_set_aside(self, name: VolumeName, label: str):
        target = self._set_aside_dataset(name, label)
        if await self._get_dataset(target) is None:
            raise VolumeError(
                "there is no set-aside copy %r of volume %s on %s"
                % (label, name, self.node_id))
        await self._destroy(target)
        _log.info("discarded set-aside copy {label} of volume {volume} on "
                  "{node}", label=label, volume=str(name), node=self.node_id)

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

    def receive(self, name: VolumeName, replace: bool = False):
        self._dataset(name)
        stream = _ZFSReceiveStream(self, name, replace)
        stream.start()
        return stream

    def _replacing_dataset(self, name: VolumeName) -> str:
        """Where a full stream replacing ``name``'s replica is received:
        a sibling outside the volume namespace ('.' is no volume name)."""
        return "%s/%s.replacing" % (self.root_dataset, name.value)

    def _refuse_live_copy(self, name: VolumeName, volume) -> None:
        if volume.owned_by(self.node_id):
            raise _Refused(
                "this node owns volume %r (its writable copy); a volume is "
                "only ever received into a replica" % (str(name),))

    @deferred
    async def _receive_check(self, name: VolumeName, replace: bool = False):
        """
        Refuse a volume owned here; fire with (whether a replica set up as
        one exists, its newest snapshot or None).  ``replace``: the stream
        goes to the replacing dataset (any leftover of a cut replace is
        destroyed first); the replica stays untouched until it arrived.
        """
        try:
            volume = await self.get(name)
        except VolumeNotFound:
            volume = None
        if replace:
            if volume is not None:
                self._refuse_live_copy(name, volume)
                if not volume.read_only:
                    raise _Refused(
                        "this node's copy of volume %r is writable; only a "
                        "read-only replica is ever replaced" % (str(name),))
            leftover = self._replacing_dataset(name)
            if await self._get_dataset(leftover) is not None:
                _log.warn("discarding {dataset}: left by an interrupted "
                          "replacing receive", dataset=leftover)
                await self._destroy(leftover)
            return False, None
        if volume is None:
            return False, None
        self._refuse_live_copy(name, volume)
        snapshots = await self.snapshots(name)
        if not snapshots and volume.owner is None:
            # Debris of a full receive that was cut (zfs-fuse leaves the new
            # dataset behind when zfs recv is killed): no snapshot and no
            # owner recorded, so nothing was ever received into it and
            # nobody's data is in it.  A copy naming an owner is never
            # debris (a live volume of a renumbered node, say): zfs recv
            # refuses the stream and the copy stays.
            _log.warn("discarding {volume}: a copy with no snapshot and no "
                      "owner, left by an interrupted receive",
                      volume=str(name))
            await self._destroy(self._dataset(name))
            return False, None
        if not snapshots:
            return True, None
        # Receive into an unmounted replica and mount it again afterwards:
        # a mounted one would go on showing the kernel's cached pages of
        # the old contents, not what was received.
        if await self._is_mounted(self._mountpoint(name)):
            await self._zfs("unmount", self._dataset(name))
        # A replica set up elsewhere or not at all (a receive that finished
        # after it was reported failed) is set up like a new one afterwards.
        return (volume.mountpoint == self._mountpoint(name)
                and volume.read_only), snapshots[-1]

    @deferred
    async def _after_receive(self, name: VolumeName, existed: bool,
                             replace: bool = False):
        dataset = self._dataset(name)
        if replace:
            # The whole stream is here: only now does the old replica go.
            try:
                volume = await self.get(name)
            except VolumeNotFound:
                volume = None
            if volume is not None:
                if volume.owned_by(self.node_id) or not volume.read_only:
                    raise VolumeError(
                        "volume %r became this node's live copy during the "
                        "receive; the received copy is left in %s" % (
                            str(name), self._replacing_dataset(name)))
                await self._destroy(dataset)
                _log.info("replaced replica {volume} by a received copy",
                          volume=str(name))
            await self._zfs("rename", self._replacing_dataset(name), dataset)
        if not existed:
            # A new replica (or one not set up as one): read-only before it
            # is mounted again.
            await self._zfs("set", "readonly=on", dataset)
            await self._zfs("set", "%s=on" % (READ_ONLY_PROPERTY,), dataset)
            await self._zfs_mounting(
                "set", "mountpoint=" + self._mountpoint(name), dataset)
        await self._ensure_mounted(dataset)
        snapshots = await self.snapshots(name)
        return snapshots[-1]

    @deferred
    async def _state_after_failure(self, name: VolumeName,
                                   replace: bool = False):
        """Fire with (exists, newest snapshot or None)."""
        if replace:
            # What a cut replacing receive left goes; the replica it was
            # to replace is untouched.
            leftover = self._replacing_dataset(name)
            try:
                if await self._get_dataset(leftover) is not None:
                    await self._destroy(leftover)
            except CommandFailed as e:
                _log.warn("{dataset} could not be destroyed: {error}",
                          dataset=leftover, error=str(e))
        try:
            snapshots = await self.snapshots(name)
        except VolumeNotFound:
            return False, None
        # It was unmounted for the receive: mount it again as it was.
        try:
            await self._ensure_mounted(self._dataset(name))
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

    def __init__(self, snapshot, base, consumer) -> None:
        self.snapshot = snapshot
        self.base = base
        self.done: Deferred[int] = Deferred()
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
        """Start ``zfs send``; a failure to start fails ``done``."""
        self._reactor = reactor
        try:
            read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        except OSError as e:
            return self._not_started(e)
        try:
            _grow_pipe(read_fd)
            reactor.spawnProcess(self, _which(argv[0]), list(argv),
                                 env=_default_env(),
                                 childFDs={0: "w", 1: write_fd, 2: "r"})
        except Exception as e:
            os.close(read_fd)
            return self._not_started(e)
        finally:
            os.close(write_fd)
        self._reader = _PipeReader(reactor, read_fd, self._data,
                                   self._pipe_ended)
        self._reader.startReading()
        self._consumer.registerProducer(self, True)

    def _not_started(self, error):
        # Ended before it began, yet registered and unregistered like any
        # stream, so the consumer's life cycle is the same.
        self._ended = True
        self._eof = True
        self._consumer.registerProducer(self, True)
        self._consumer.unregisterProducer()
        self.done.errback(SendFailed(
            self.snapshot, self.base,
            "zfs send could not be started: %s" % (error,)))

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
        if not self._eof and self._reader is not None:
            self._reader.stopReading()

    def resumeProducing(self):
        if not self._eof and not self._stopped and self._reader is not None:
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
    held.  Making one starts nothing: ``start()`` (called by the pool's
    ``receive``) does, and every failure from then on fails ``done``.
    """

    def __init__(self, pool: ZFSStoragePool, name: VolumeName,
                 replace: bool = False):
        self.done: Deferred[Snapshot] = Deferred()
        self.bytes_received = 0
        self._pool = pool
        self._name = name
        self._replace = replace
        self._state = "checking"  # -> "running" -> "ended"
        self._pending: list = []
        self._producer = None
        self._streaming = True
        self._paused_by_us = False
        self._finishing = False
        self._aborted = None
        self._existed = None
        self._newest_before = None
        self._killer = None
        self._cut = False
        self._failing = False
        self._stderr = _Stderr()

    def start(self):
        """Check the volume, then start ``zfs recv``."""
        d = maybeDeferred(self._pool._receive_check, self._name, self._replace)
        d.addCallbacks(self._start, self._refused)
        d.addErrback(self._start_failed)

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

    def _start(self, checked):
        self._existed, self._newest_before = checked
        if self._aborted is not None:
            self._state = "ended"
            return self._fail(self._aborted)
        _spawn(self._pool._reactor, self,
               ["zfs", "recv", "-u",
                self._pool._replacing_dataset(self._name) if self._replace
                else self._pool._dataset(self._name)])
        self._state = "running"
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

    def _start_failed(self, failure):
        """Starting the receive (or refusing it) raised."""
        detail = "zfs recv could not be started: %s" % (_detail(failure),)
        if self._state == "running":
            # zfs recv runs but was not fed properly: cut it; its end
            # reports the failure.
            if self._aborted is None:
                self._aborted = detail
            self._cut_stdin()
            if self._killer is None:
                self._killer = _kill_later(self._pool._reactor,
                                           self.transport)
            return
        self._state = "ended"
        self._pending = []
        if self._producer is not None:
            producer, self._producer = self._producer, None
            producer.stopProducing()
        self._fail(detail)

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
            return self._set_up()
        said = self._stderr.text()
        if self._aborted is not None:
            detail = self._aborted + (" (zfs recv: %s)" % (said,) if said
                                      else "")
        else:
            detail = said or "zfs recv " + _how_ended(reason)
        self._fail(detail, ran=True)

    def _set_up(self):
        d = self._pool._after_receive(self._name, self._existed, self._replace)
        d.addCallbacks(self._received, self._post_receive_failed)

    def _received(self, snapshot):
        _log.info("received {snapshot} ({size} bytes) on {node}",
                  snapshot=str(snapshot), size=self.bytes_received,
                  node=self._pool.node_id)
        self.done.callback(snapshot)

    def _post_receive_failed(self, failure):
        self.done.errback(VolumeError(
            "volume %r was received but setting it up failed: %s" % (
                str(self._name), _detail(failure))))

    def _fail(self, detail, ran=False):
        """Report the failure; ``ran``: zfs recv ran and failed."""
        if self._failing or self.done.called:
            return
        self._failing = True
        # Report what is really there now, not what we expected.
        d = maybeDeferred(self._pool._state_after_failure, self._name,
                          self._replace)

        def report(state):
            exists, previous = state
            if ran and not self._replace and previous is not None and (
                    previous != self._newest_before):
                # The stream's snapshot is there: zfs recv failed after it
                # committed the stream.  Seen with zfs-fuse, "I/O error"
                # on an incremental receive into a replica it was still
                # releasing after the unmount for this receive.
                _log.warn("zfs recv said {detail}, but {snapshot} was "
                          "received on {node}", detail=detail,
                          snapshot=str(previous), node=self._pool.node_id)
                return self._set_up()
            error = ReceiveFailed(self._name, detail, previous, exists)
            _log.warn("{error}", error=str(error))
            self.done.errback(error)

        def unknown(failure):
            self.done.errback(VolumeError(
                "receiving volume %r failed: %s; its state could not be "
                "read: %s" % (str(self._name), detail, _detail(failure))))
        d.addCallbacks(report, unknown)
        d.addErrback(lambda failure: _log.failure(
            "reporting a failed receive of {volume}", failure,
            volume=str(self._name)))
