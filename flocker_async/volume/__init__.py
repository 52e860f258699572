"""
Volumes: one per application, owned by one node, copied between nodes as
send streams with backpressure.  See ``IStoragePool``.
"""

from ._interfaces import (
    EPOCH_PROPERTY,
    IReceiveStream,
    ISendStream,
    IStoragePool,
    IVolume,
    InvalidName,
    OWNER_PROPERTY,
    READ_ONLY_PROPERTY,
    ReceiveFailed,
    SET_ASIDE_PROPERTY,
    SendFailed,
    SetAside,
    Snapshot,
    SnapshotExists,
    Volume,
    VolumeError,
    VolumeExists,
    VolumeName,
    VolumeNotFound,
)
from ._common import snapshot_time, snapshots_to_prune
from ._memory import MemoryStoragePool
from ._transfer import copy_snapshot
from ._zfs import ZFSStoragePool

__all__ = [
    "IStoragePool",
    "IVolume",
    "ISendStream",
    "IReceiveStream",
    "VolumeName",
    "Snapshot",
    "Volume",
    "SetAside",
    "VolumeError",
    "InvalidName",
    "VolumeNotFound",
    "VolumeExists",
    "SnapshotExists",
    "SendFailed",
    "ReceiveFailed",
    "OWNER_PROPERTY",
    "EPOCH_PROPERTY",
    "READ_ONLY_PROPERTY",
    "SET_ASIDE_PROPERTY",
    "snapshot_time",
    "snapshots_to_prune",
    "copy_snapshot",
    "MemoryStoragePool",
    "ZFSStoragePool",
]
