"""
``IStoragePool`` on plain directories, for fast tests of everything above
the storage layer.  It mirrors ZFS's semantics: snapshots are frozen copies,
send streams (tar here) are full or incremental from a base, and a receive
refuses what ``zfs recv`` (without ``-F``) refuses.  The contract suite in
tests/testtools/volume.py holds it to the same behaviour as ZFSStoragePool.

Layout under ``root``: ``volumes/<name>/meta.json`` and
``volumes/<name>/snapshots/<snapshot>/``; a volume's files live at
``<mount_root>/<name>``; streams are spooled in ``spool/``.  A set-aside
copy moves to ``set-aside/<name>.set-aside.<label>/`` (its files to
``<mount_root>/<name>.set-aside.<label>``).
"""

from __future__ import annotations

import errno
import filecmp
import io
import json
import os
import shutil
import stat
import tarfile
import tempfile
from typing import Iterable, Optional

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from ._common import (
    SET_ASIDE_SNAPSHOT_PREFIX,
    generate_snapshot_name,
    snapshots_to_prune,
    snapshots_to_trim,
)
from ._interfaces import (
    SET_ASIDE_NAME,
    VolumeError,
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
    VolumeExists,
    VolumeName,
    VolumeNotFound,
    set_aside_name,
    validate_epoch,
    validate_node_id,
)

__all__ = ["MemoryStoragePool"]

_HEADER = "flocker-stream.json"
_TRAILER = "flocker-stream-end.json"
_DATA = "data"
_FORMAT = "flocker-async-memory-stream/1"
_CHUNK = 64 * 1024
# Chunks written per reactor turn before yielding to other work.
_CHUNKS_PER_TURN = 16


def _deferred(function):
    """Run a synchronous operation, returning its result as a Deferred."""
    def wrapper(*args, **kwargs):
        try:
            return succeed(function(*args, **kwargs))
        except Exception:
            return fail(Failure())
    wrapper.__name__ = function.__name__
    wrapper.__doc__ = function.__doc__
    return wrapper


def _tree(root: str) -> dict:
    """Relative path -> kind for everything under ``root``."""
    entries = {}
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, root)
            mode = os.lstat(path).st_mode
            if stat.S_ISDIR(mode):
                entries[relative] = "dir"
            elif stat.S_ISREG(mode):
                entries[relative] = "file"
            else:
                entries[relative] = "other"
    return entries


def _same_tree(a: str, b: str) -> bool:
    tree_a, tree_b = _tree(a), _tree(b)
    if tree_a != tree_b:
        return False
    return all(
        filecmp.cmp(os.path.join(a, p), os.path.join(b, p), shallow=False)
        for p, kind in tree_a.items() if kind == "file")


def _size_of(root: str) -> int:
    return sum(
        os.lstat(os.path.join(root, p)).st_size
        for p, kind in _tree(root).items() if kind == "file")


def _safe_relative(path: str) -> str:
    """A relative path that stays inside the directory it is joined to."""
    normal = os.path.normpath(path)
    if (not path or os.path.isabs(path) or normal == ".."
            or normal.startswith("../") or normal == "."):
        raise ValueError("unsafe path in stream: %r" % (path,))
    return normal


def _replace_contents(directory: str, source: str):
    """Make ``directory`` hold exactly ``source``'s tree (same inode)."""
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    shutil.copytree(source, directory, dirs_exist_ok=True)


class _StreamError(Exception):
    """What a receiver says about a stream it cannot take."""


@implementer(IStoragePool)
class MemoryStoragePool:
    def __init__(self, reactor, root: str, node_id: str,
                 mount_root: Optional[str] = None):
        self._reactor = reactor
        self.root = os.path.abspath(root)
        self.node_id = validate_node_id(node_id)
        self.mount_root = os.path.abspath(
            mount_root or os.path.join(self.root, "mounts"))
        for directory in (self._volumes_dir, self._set_aside_dir,
                          self._spool, self.mount_root):
            os.makedirs(directory, exist_ok=True)

    def __repr__(self):
        return "<MemoryStoragePool %s on %s>" % (self.root, self.node_id)

    # Storage layout -------------------------------------------------------

    @property
    def _volumes_dir(self):
        return os.path.join(self.root, "volumes")

    @property
    def _spool(self):
        return os.path.join(self.root, "spool")

    @property
    def _set_aside_dir(self):
        return os.path.join(self.root, "set-aside")

    def _meta_dir(self, name: VolumeName) -> str:
        if not isinstance(name, VolumeName):
            raise TypeError("expected a VolumeName, got %r" % (name,))
        return os.path.join(self._volumes_dir, name.value)

    def _snapshot_dir(self, snapshot: Snapshot) -> str:
        return os.path.join(self._meta_dir(snapshot.volume), "snapshots",
                            snapshot.name)

    def _mountpoint(self, name: VolumeName) -> str:
        return os.path.join(self.mount_root, name.value)

    def _exists(self, name: VolumeName) -> bool:
        return os.path.exists(os.path.join(self._meta_dir(name), "meta.json"))

    def _read_meta(self, name: VolumeName) -> dict:
        try:
            with open(os.path.join(self._meta_dir(name), "meta.json")) as f:
                return json.load(f)
        except FileNotFoundError:
            raise VolumeNotFound(name)

    def _write_meta(self, name: VolumeName, meta: dict):
        directory = self._meta_dir(name)
        os.makedirs(directory, exist_ok=True)
        temporary = os.path.join(directory, "meta.json.tmp")
        with open(temporary, "w") as f:
            json.dump(meta, f)
            f.flush()
            os.fsync(f.fileno())
        os.rename(temporary, os.path.join(directory, "meta.json"))

    def _volume(self, name: VolumeName, meta: dict) -> Volume:
        mountpoint = self._mountpoint(name)
        return Volume(
            name=name, owner=meta["owner"], read_only=meta["read_only"],
            mountpoint=mountpoint, maximum_size=meta["maximum_size"],
            referenced=_size_of(mountpoint), epoch=meta.get("epoch", 0))

    def close(self):
        """Nothing runs in the background here."""

    # Queries -------------------------------------------------------------

    @_deferred
    def get(self, name: VolumeName):
        return self._volume(name, self._read_meta(name))

    @_deferred
    def enumerate(self):
        volumes = []
        for entry in sorted(os.listdir(self._volumes_dir)):
            try:
                name = VolumeName(entry)
            except InvalidName:
                continue
            if self._exists(name):
                volumes.append(self._volume(name, self._read_meta(name)))
        return volumes

    def owned_volumes(self):
        return self.enumerate().addCallback(
            lambda vs: [v for v in vs if v.owned_by(self.node_id)])

    def replicas(self):
        return self.enumerate().addCallback(
            lambda vs: [v for v in vs if not v.owned_by(self.node_id)])

    @_deferred
    def snapshots(self, name: VolumeName):
        return [Snapshot(name, s) for s in self._read_meta(name)["snapshots"]]

    # Changes ---------------------------------------------------------------

    @_deferred
    def create(self, name: VolumeName, maximum_size: Optional[int] = None):
        if maximum_size is not None and (
                not isinstance(maximum_size, int) or maximum_size <= 0):
            raise ValueError("invalid maximum_size: %r" % (maximum_size,))
        if self._exists(name):
            raise VolumeExists(name)
        mountpoint = self._mountpoint(name)
        if os.path.exists(mountpoint):
            shutil.rmtree(mountpoint)
        os.makedirs(mountpoint)
        os.makedirs(os.path.join(self._meta_dir(name), "snapshots"),
                    exist_ok=True)
        meta = {"owner": self.node_id, "epoch": 1, "read_only": False,
                "maximum_size": maximum_size, "snapshots": []}
        self._write_meta(name, meta)
        return self._volume(name, meta)

    @_deferred
    def snapshot(self, name: VolumeName, snapshot_name: Optional[str] = None):
        if snapshot_name is None:
            snapshot_name = generate_snapshot_name(self._reactor.seconds())
        snapshot = Snapshot(name, snapshot_name)
        meta = self._read_meta(name)
        if snapshot_name in meta["snapshots"]:
            raise SnapshotExists(snapshot)
        shutil.copytree(self._mountpoint(name), self._snapshot_dir(snapshot),
                        symlinks=True)
        meta["snapshots"].append(snapshot_name)
        self._write_meta(name, meta)
        return snapshot

    @_deferred
    def prune_snapshots(self, name: VolumeName, common: Iterable[Snapshot],
                        *more_common: Iterable[Snapshot]):
        meta = self._read_meta(name)
        local = [Snapshot(name, s) for s in meta["snapshots"]]
        return self._destroy_snapshots(
            name, meta, snapshots_to_prune(local, common, *more_common))

    @_deferred
    def trim_snapshots(self, name: VolumeName, keep: int):
        snapshots_to_trim([], keep)  # validates keep before anything else
        meta = self._read_meta(name)
        local = [Snapshot(name, s) for s in meta["snapshots"]]
        return self._destroy_snapshots(
            name, meta, snapshots_to_trim(local, keep))

    def _destroy_snapshots(self, name, meta, doomed):
        for snapshot in doomed:
            meta["snapshots"].remove(snapshot.name)
            self._write_meta(name, meta)
            shutil.rmtree(self._snapshot_dir(snapshot))
        return doomed

    @_deferred
    def set_read_only(self, name: VolumeName, read_only: bool):
        meta = self._read_meta(name)
        meta["read_only"] = bool(read_only)
        self._write_meta(name, meta)
        return self._volume(name, meta)

    @_deferred
    def discard_replica(self, name: VolumeName):
        meta = self._read_meta(name)
        if meta["owner"] == self.node_id or not meta["read_only"]:
            raise VolumeError(
                "refusing to discard volume %s: this node's copy is %s"
                % (name, "its live copy" if meta["owner"] == self.node_id
                   else "writable"))
        shutil.rmtree(self._meta_dir(name))
        shutil.rmtree(self._mountpoint(name), ignore_errors=True)

    @_deferred
    def set_owner(self, name: VolumeName, owner: str,
                  epoch: Optional[int] = None):
        validate_node_id(owner)
        if epoch is not None:
            validate_epoch(epoch)
        meta = self._read_meta(name)
        if epoch is not None:
            meta["epoch"] = epoch
        meta["owner"] = owner
        # One atomic write: owner and epoch change together.
        self._write_meta(name, meta)
        return self._volume(name, meta)

    # Set-aside copies ------------------------------------------------------

    def _set_aside_value(self, name: VolumeName, label: str) -> SetAside:
        leaf = set_aside_name(name, label)
        with open(os.path.join(self._set_aside_dir, leaf, "meta.json")) as f:
            meta = json.load(f)
        mountpoint = os.path.join(self.mount_root, leaf)
        return SetAside(
            volume=name, label=label, created=meta["set_aside"],
            referenced=_size_of(mountpoint), owner=meta["owner"],
            epoch=meta.get("epoch", 0), mountpoint=mountpoint)

    @_deferred
    def set_aside(self, name: VolumeName, label: str):
        leaf = set_aside_name(name, label)  # validates label
        meta = self._read_meta(name)
        target = os.path.join(self._set_aside_dir, leaf)
        if os.path.exists(target):
            raise VolumeError(
                "volume %s already has a set-aside copy labelled %r: "
                "choose another label" % (name, label))
        snapshot_name = SET_ASIDE_SNAPSHOT_PREFIX + label
        if snapshot_name not in meta["snapshots"]:
            # Pin the exact data, as the ZFS pool does.
            shutil.copytree(self._mountpoint(name),
                            self._snapshot_dir(Snapshot(name, snapshot_name)),
                            symlinks=True)
            meta["snapshots"].append(snapshot_name)
        meta["read_only"] = True
        meta["set_aside"] = self._reactor.seconds()
        self._write_meta(name, meta)
        mountpoint = os.path.join(self.mount_root, leaf)
        if os.path.exists(mountpoint):
            os.rmdir(mountpoint)  # left by a discarded one: empty
        # The files first: a stop in between never leaves a volume whose
        # create() would clear a set-aside copy's files.
        os.rename(self._mountpoint(name), mountpoint)
        os.rename(self._meta_dir(name), target)
        return self._set_aside_value(name, label)

    @_deferred
    def set_asides(self):
        found = []
        for leaf in os.listdir(self._set_aside_dir):
            match = SET_ASIDE_NAME.match(leaf)
            if match is not None and os.path.exists(
                    os.path.join(self._set_aside_dir, leaf, "meta.json")):
                found.append(self._set_aside_value(
                    VolumeName(match.group("volume")), match.group("label")))
        return sorted(found, key=lambda s: (s.created, s.volume, s.label))

    @_deferred
    def discard_set_aside(self, name: VolumeName, label: str):
        leaf = set_aside_name(name, label)
        target = os.path.join(self._set_aside_dir, leaf)
        if not os.path.exists(os.path.join(target, "meta.json")):
            raise VolumeError(
                "there is no set-aside copy %r of volume %s on %s"
                % (label, name, self.node_id))
        shutil.rmtree(os.path.join(self.mount_root, leaf), ignore_errors=True)
        shutil.rmtree(target)

    def write_file(self, name: VolumeName, path: str, data: bytes):
        """
        Write a file into a volume the way the kernel would on ZFS: refused
        with EROFS when read-only, EDQUOT beyond ``maximum_size``.
        """
        meta = self._read_meta(name)
        target = os.path.join(self._mountpoint(name), _safe_relative(path))
        if meta["read_only"]:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), target)
        if meta["maximum_size"] is not None:
            current = os.path.getsize(target) if os.path.exists(target) else 0
            used = _size_of(self._mountpoint(name)) - current
            if used + len(data) > meta["maximum_size"]:
                raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), target)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
            f.write(data)

    # Streams ---------------------------------------------------------------

    def send(self, snapshot: Snapshot, consumer,
             base: Optional[Snapshot] = None):
        if base is not None and base.volume != snapshot.volume:
            raise ValueError("base %s is not a snapshot of %s" % (
                base, snapshot.volume))
        try:
            spooled = self._write_stream(snapshot, base)
        except (_StreamError, OSError) as e:
            return _MemorySendStream(self._reactor, snapshot, base, consumer,
                                     None, SendFailed(snapshot, base, str(e)))
        return _MemorySendStream(self._reactor, snapshot, base, consumer,
                                 spooled, None)

    def _write_stream(self, snapshot: Snapshot, base: Optional[Snapshot]):
        try:
            names = self._read_meta(snapshot.volume)["snapshots"]
        except VolumeNotFound:
            raise _StreamError("volume %s does not exist" % (snapshot.volume,))
        if snapshot.name not in names:
            raise _StreamError("snapshot %s does not exist" % (snapshot,))
        if base is not None:
            if base.name not in names:
                raise _StreamError(
                    "incremental source %s does not exist" % (base,))
            if names.index(base.name) >= names.index(snapshot.name):
                raise _StreamError(
                    "%s is not an earlier snapshot than %s" % (base, snapshot))
        source = self._snapshot_dir(snapshot)
        tree = _tree(source)
        if any(kind == "other" for kind in tree.values()):
            raise _StreamError(
                "the memory pool streams only regular files and directories")
        deleted, changed = [], sorted(tree)
        if base is not None:
            base_dir = self._snapshot_dir(base)
            base_tree = _tree(base_dir)
            deleted = sorted(
                (p for p, kind in base_tree.items()
                 if tree.get(p) != kind),
                key=lambda p: -p.count(os.sep))
            changed = sorted(
                p for p, kind in tree.items()
                if kind == "dir" or base_tree.get(p) != kind or
                not filecmp.cmp(os.path.join(source, p),
                                os.path.join(base_dir, p), shallow=False))
        header = {"format": _FORMAT, "snapshot": snapshot.name,
                  "base": base.name if base is not None else None,
                  "deleted": deleted}
        fd, spooled = tempfile.mkstemp(prefix="send-", dir=self._spool)
        with os.fdopen(fd, "wb") as raw, \
                tarfile.open(fileobj=raw, mode="w|",
                             format=tarfile.PAX_FORMAT) as tar:
            _add_bytes(tar, _HEADER, json.dumps(header).encode())
            for path in changed:
                tar.add(os.path.join(source, path),
                        arcname=_DATA + "/" + path, recursive=False)
            _add_bytes(tar, _TRAILER, json.dumps(
                {"snapshot": snapshot.name, "entries": len(changed)}).encode())
        return spooled

    def receive(self, name: VolumeName, replace: bool = False):
        self._meta_dir(name)
        stream = _MemoryReceiveStream(self, name, replace)
        stream.start()
        return stream

    def _receive_refusal(self, name: VolumeName,
                         replace: bool = False) -> Optional[str]:
        if self._exists(name):
            meta = self._read_meta(name)
            if meta["owner"] == self.node_id:
                return ("this node owns volume %r (its writable copy); a "
                        "volume is only ever received into a replica"
                        % (str(name),))
            if replace and not meta["read_only"]:
                return ("this node's copy of volume %r is writable; only a "
                        "read-only replica is ever replaced" % (str(name),))
        return None

    def _state(self, name: VolumeName):
        if not self._exists(name):
            return False, None
        names = self._read_meta(name)["snapshots"]
        return True, (Snapshot(name, names[-1]) if names else None)

    def _apply_stream(self, name: VolumeName, spooled: str,
                      replace: bool = False) -> Snapshot:
        """Check a spooled stream against the volume and apply it, or raise
        _StreamError leaving everything as it was.  ``replace``: a full
        stream replaces a read-only replica, once it was checked whole."""
        staging = tempfile.mkdtemp(prefix="recv-", dir=self._spool)
        try:
            return self._apply_into(name, spooled, staging, replace)
        except (tarfile.TarError, EOFError, ValueError, KeyError,
                UnicodeDecodeError) as e:
            raise _StreamError("invalid stream (%s)" % (e,))
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _apply_into(self, name, spooled, staging, replace=False):
        tree = os.path.join(staging, "tree")
        with tarfile.open(spooled, mode="r|") as tar:
            members = iter(tar)
            first = next(members, None)
            if first is None or first.name != _HEADER:
                raise _StreamError("invalid stream (bad header)")
            header = json.loads(tar.extractfile(first).read())
            if header.get("format") != _FORMAT:
                raise _StreamError("invalid stream (unknown format)")
            snapshot = Snapshot(name, header["snapshot"])
            base = header["base"]
            exists = self._exists(name)
            if base is None:
                if exists and not replace:
                    raise _StreamError(
                        "destination %r exists; a full stream only creates "
                        "a new volume" % (str(name),))
                os.makedirs(tree)
            else:
                if not exists:
                    raise _StreamError(
                        "destination %r does not exist for an incremental "
                        "stream" % (str(name),))
                names = self._read_meta(name)["snapshots"]
                if not names or names[-1] != base:
                    raise _StreamError(
                        "most recent snapshot of %r does not match "
                        "incremental source %r" % (str(name), base))
                newest = self._snapshot_dir(Snapshot(name, names[-1]))
                if not _same_tree(self._mountpoint(name), newest):
                    raise _StreamError(
                        "destination %r has been modified since most recent "
                        "snapshot" % (str(name),))
                if snapshot.name in names:
                    raise _StreamError(
                        "destination snapshot %s exists" % (snapshot,))
                shutil.copytree(newest, tree, symlinks=True)
            for path in header["deleted"]:
                target = os.path.join(tree, _safe_relative(path))
                if os.path.isdir(target) and not os.path.islink(target):
                    shutil.rmtree(target)
                elif os.path.lexists(target):
                    os.unlink(target)
            trailer = None
            for member in members:
                if trailer is not None:
                    raise _StreamError("invalid stream (data after the end)")
                if member.name == _TRAILER:
                    trailer = json.loads(tar.extractfile(member).read())
                    continue
                if not member.name.startswith(_DATA + "/"):
                    raise _StreamError("invalid stream (%r)" % (member.name,))
                relative = _safe_relative(member.name[len(_DATA) + 1:])
                target = os.path.join(tree, relative)
                if os.path.islink(os.path.dirname(target)):
                    raise _StreamError("invalid stream (path through a link)")
                if member.isdir():
                    os.makedirs(target, exist_ok=True)
                elif member.isfile():
                    with open(target, "wb") as out:
                        shutil.copyfileobj(tar.extractfile(member), out)
                else:
                    raise _StreamError("invalid stream (unsupported entry)")
            if trailer is None or trailer.get("snapshot") != snapshot.name:
                raise _StreamError("invalid stream (it ends too early)")
        # Checked and built: commit.
        if base is None and exists:
            refusal = self._receive_refusal(name, replace=True)
            if refusal is not None:
                raise _StreamError(refusal)
            shutil.rmtree(self._meta_dir(name))
            exists = False
        os.makedirs(os.path.dirname(self._snapshot_dir(snapshot)),
                    exist_ok=True)
        os.rename(tree, self._snapshot_dir(snapshot))
        if exists:
            meta = self._read_meta(name)
        else:
            meta = {"owner": None, "epoch": 0, "read_only": True,
                    "maximum_size": None, "snapshots": []}
        meta["snapshots"].append(snapshot.name)
        self._write_meta(name, meta)
        mountpoint = self._mountpoint(name)
        os.makedirs(mountpoint, exist_ok=True)
        _replace_contents(mountpoint, self._snapshot_dir(snapshot))
        return snapshot


def _add_bytes(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@implementer(ISendStream)
class _MemorySendStream:
    """Writes a spooled tar file into the consumer, honouring pauses."""

    def __init__(self, reactor, snapshot, base, consumer, spooled, error) -> None:
        self.snapshot = snapshot
        self.base = base
        self.done: Deferred[int] = Deferred()
        self.bytes_sent = 0
        self._reactor = reactor
        self._consumer = consumer
        self._spooled = spooled
        self._file = open(spooled, "rb") if spooled else None
        self._error = error
        self._paused = False
        self._ended = False
        self._call = None
        consumer.registerProducer(self, True)
        self._schedule()

    def _schedule(self):
        if self._call is None and not self._ended:
            self._call = self._reactor.callLater(0, self._pump)

    def _pump(self):
        self._call = None
        if self._error is not None:
            return self._end(self._error)
        for _ in range(_CHUNKS_PER_TURN):
            if self._paused or self._ended:
                return
            chunk = self._file.read(_CHUNK)
            if not chunk:
                return self._end(None)
            self.bytes_sent += len(chunk)
            self._consumer.write(chunk)
        if not self._paused:
            self._schedule()

    def _end(self, error):
        if self._ended:
            return
        self._ended = True
        if self._call is not None:
            self._call.cancel()
            self._call = None
        if self._file is not None:
            self._file.close()
            os.unlink(self._spooled)
        self._consumer.unregisterProducer()
        if error is None:
            self.done.callback(self.bytes_sent)
        else:
            self.done.errback(error)

    def pauseProducing(self):
        self._paused = True
        if self._call is not None:
            self._call.cancel()
            self._call = None

    def resumeProducing(self):
        self._paused = False
        self._schedule()

    def stopProducing(self):
        self._end(SendFailed(self.snapshot, self.base,
                             "stopped by the receiving side before the end"))


@implementer(IReceiveStream)
class _MemoryReceiveStream:
    """
    Spools the stream to disk; checks and applies it on ``finish()``.
    Making one starts nothing: ``start()`` (called by the pool's
    ``receive``) does, and every failure from then on fails ``done``.
    """

    def __init__(self, pool: MemoryStoragePool, name: VolumeName,
                 replace: bool = False):
        self.done: Deferred[Snapshot] = Deferred()
        self.bytes_received = 0
        self._pool = pool
        self._name = name
        self._replace = replace
        self._producer = None
        self._ended = False
        self._file = None
        self._spooled = None

    def start(self):
        try:
            fd, self._spooled = tempfile.mkstemp(
                prefix="recv-", dir=self._pool._spool)
            self._file = os.fdopen(fd, "wb")
            refusal = self._pool._receive_refusal(self._name, self._replace)
        except Exception as e:
            return self._fail("the receive could not be started: %s" % (e,))
        if refusal is not None:
            self._fail(refusal)

    def write(self, data):
        if self._ended:
            return
        self.bytes_received += len(data)
        try:
            self._file.write(data)
        except OSError as e:
            self._fail("the stream could not be spooled: %s" % (e,))

    def registerProducer(self, producer, streaming):
        if self._producer is not None:
            raise RuntimeError("a producer is already registered")
        if self._ended:
            producer.stopProducing()
            return
        self._producer = producer
        if not streaming:
            producer.resumeProducing()

    def unregisterProducer(self):
        self._producer = None

    def finish(self):
        if self._ended:
            return
        try:
            self._file.close()
            snapshot = self._pool._apply_stream(self._name, self._spooled,
                                                self._replace)
        except _StreamError as e:
            return self._fail(str(e))
        except Exception as e:
            return self._fail("applying the stream failed: %s" % (e,))
        self._cleanup(stop_producer=False)
        self.done.callback(snapshot)

    def abort(self, reason=None):
        if self._ended:
            return
        if isinstance(reason, Failure):
            reason = reason.getErrorMessage()
        self._fail("the stream was cut" + (": %s" % (reason,) if reason
                                           else ""))

    def _cleanup(self, stop_producer=True):
        self._ended = True
        try:
            if self._file is not None and not self._file.closed:
                self._file.close()
        except OSError:
            pass  # the spool goes anyway
        if self._spooled is not None and os.path.exists(self._spooled):
            os.unlink(self._spooled)
        if stop_producer and self._producer is not None:
            producer, self._producer = self._producer, None
            producer.stopProducing()

    def _fail(self, detail):
        if self.done.called:
            return
        self._cleanup()
        try:
            exists, previous = self._pool._state(self._name)
        except Exception as e:
            return self.done.errback(VolumeError(
                "receiving volume %r failed: %s; its state could not be "
                "read: %s" % (str(self._name), detail, e)))
        self.done.errback(ReceiveFailed(self._name, detail, previous, exists))
