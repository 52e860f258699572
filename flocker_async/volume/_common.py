"""Snapshot naming, pruning and trimming, shared by every pool (pure)."""

from __future__ import annotations

import calendar
import re
import time
import uuid
from typing import Iterable, List, Optional, Sequence, Union

from ._interfaces import Snapshot

__all__ = [
    "GENERATED_PREFIX",
    "SET_ASIDE_SNAPSHOT_PREFIX",
    "generate_snapshot_name",
    "is_generated",
    "snapshot_time",
    "snapshots_to_prune",
    "snapshots_to_trim",
]

# Snapshots we name start with this; only those are ever pruned or trimmed.
GENERATED_PREFIX = "flocker-"
# The snapshot pinning a set-aside copy's data: ``set-aside-<label>``.
SET_ASIDE_SNAPSHOT_PREFIX = "set-aside-"

# flocker-20261203T110207Z-abcdef123456 (before) and
# flocker-20261203T110207.123Z-abcdef123456 (sub-second, now).
_GENERATED = re.compile(
    r"\Aflocker-(?P<stamp>\d{8}T\d{6})(?:\.(?P<fraction>\d{1,9}))?Z-")


def generate_snapshot_name(now: float) -> str:
    """
    A unique snapshot name carrying ``now`` rounded to the millisecond
    (see ``snapshot_time``); snapshots are ordered by the pool, not by
    name.
    """
    seconds, millis = divmod(round(now * 1000), 1000)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(seconds))
    return "%s%s.%03dZ-%s" % (GENERATED_PREFIX, stamp, millis,
                              uuid.uuid4().hex[:12])


def _name(snapshot: Union[Snapshot, str]) -> str:
    return snapshot.name if isinstance(snapshot, Snapshot) else snapshot


def is_generated(snapshot: Union[Snapshot, str]) -> bool:
    """Whether we named this snapshot (so we may prune it)."""
    return _name(snapshot).startswith(GENERATED_PREFIX)


def snapshot_time(snapshot: Union[Snapshot, str]) -> Optional[float]:
    """
    The unix time encoded in a generated snapshot's name (a name or a
    ``Snapshot``), or None for any other name.
    """
    match = _GENERATED.match(_name(snapshot))
    if match is None:
        return None
    try:
        parsed = time.strptime(match.group("stamp"), "%Y%m%dT%H%M%S")
    except ValueError:
        return None
    fraction = match.group("fraction")
    return calendar.timegm(parsed) + (
        int(fraction) / 10 ** len(fraction) if fraction else 0.0)


def _newest_common(local: Sequence[Snapshot], common: Iterable[Snapshot]
                   ) -> Optional[int]:
    names = {(s.volume, s.name) for s in common}
    newest = None
    for index, snapshot in enumerate(local):
        if (snapshot.volume, snapshot.name) in names:
            newest = index
    return newest


def snapshots_to_prune(local: Sequence[Snapshot], common: Iterable[Snapshot],
                       *more_common: Iterable[Snapshot]) -> List[Snapshot]:
    """
    ``local`` is oldest first; ``common`` and each of ``more_common`` is one
    peer's snapshots.  For each peer, the newest snapshot it shares with
    ``local`` is the base of its next increment; everything from the
    oldest of those bases on is kept.  A peer sharing nothing does not
    constrain (it needs a full copy anyway); nobody sharing anything:
    keep all.  Of what is older, only generated snapshots go.
    """
    bases = [index for index in (
        _newest_common(local, peer) for peer in (common,) + more_common)
        if index is not None]
    if not bases:
        return []
    return [s for s in local[:min(bases)] if is_generated(s)]


def snapshots_to_trim(local: Sequence[Snapshot], keep: int
                      ) -> List[Snapshot]:
    """
    ``local`` is oldest first: all but the newest ``keep`` (>= 1) generated
    snapshots, oldest first.  Other snapshots neither go nor count.
    """
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError("invalid keep (an integer >= 1): %r" % (keep,))
    generated = [s for s in local if is_generated(s)]
    return generated[:-keep]
