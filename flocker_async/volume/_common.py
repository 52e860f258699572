"""Snapshot naming and pruning, shared by every pool."""

from __future__ import annotations

import time
import uuid
from typing import Iterable, List, Sequence

from ._interfaces import Snapshot

__all__ = ["snapshots_to_prune", "generate_snapshot_name"]


def generate_snapshot_name(now: float) -> str:
    """A unique snapshot name; the time is for people, not for ordering."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    return "flocker-%s-%s" % (stamp, uuid.uuid4().hex[:12])


def snapshots_to_prune(local: Sequence[Snapshot],
                       common: Iterable[Snapshot]) -> List[Snapshot]:
    """
    ``local`` is oldest first.  Keep the newest snapshot that is also in
    ``common`` and everything newer (a later incremental needs that base
    on both sides); the older ones may go.  Nothing in common: keep all.
    """
    common_names = {(s.volume, s.name) for s in common}
    newest_common = None
    for index, snapshot in enumerate(local):
        if (snapshot.volume, snapshot.name) in common_names:
            newest_common = index
    if newest_common is None:
        return []
    return list(local[:newest_common])
