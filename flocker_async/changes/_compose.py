"""
Composing changes: one after the other, all at once, and a step whose
failure runs an explicit compensating change.
"""

from __future__ import annotations

from typing import Iterable, List, Tuple

from attrs import field, frozen
from twisted.internet import defer
from zope.interface import implementer

from .._async import deferred
from ._interfaces import ChangeFailed, IStateChange, NotOwner

__all__ = ["Sequentially", "InParallel", "sequentially", "in_parallel",
           "NO_CHANGE", "UndoOnFailure", "ReportProblem", "leaves"]


@implementer(IStateChange)
@frozen
class Sequentially:
    """Run ``changes`` one after the other; stop at the first failure."""

    changes: Tuple = field(converter=tuple)

    @property
    def summary(self) -> str:
        return "; then ".join(c.summary for c in self.changes)

    @deferred
    async def run(self, deployer, context):
        for change in self.changes:
            await change.run(deployer, context)


@implementer(IStateChange)
@frozen
class InParallel:
    """Run ``changes`` at once; all run to the end, failures are collected."""

    changes: Tuple = field(converter=tuple)

    @property
    def summary(self) -> str:
        return " | ".join(c.summary for c in self.changes)

    def run(self, deployer, context):
        ds = [defer.maybeDeferred(change.run, deployer, context)
              for change in self.changes]

        def collect(results):
            failures = [f for ok, f in results if not ok]
            if len(failures) == 1:
                return failures[0]
            if failures:
                raise ChangeFailed("; ".join(str(f.value) for f in failures))
            return None
        return defer.DeferredList(ds, consumeErrors=True).addCallback(collect)


NO_CHANGE = Sequentially(())


def _flatten(kind, changes: Iterable) -> List:
    flat = []
    for change in changes:
        if isinstance(change, kind):
            flat.extend(change.changes)
        elif isinstance(change, (Sequentially, InParallel)) and not change.changes:
            continue
        else:
            flat.append(change)
    return flat


def sequentially(changes: Iterable) -> IStateChange:
    """Run ``changes`` one after the other; stop at the first failure."""
    flat = _flatten(Sequentially, changes)
    return flat[0] if len(flat) == 1 else Sequentially(flat)


def in_parallel(changes: Iterable) -> IStateChange:
    """Run ``changes`` at once; all run to the end, failures are collected."""
    flat = _flatten(InParallel, changes)
    return flat[0] if len(flat) == 1 else InParallel(flat)


@implementer(IStateChange)
@frozen
class UndoOnFailure:
    """
    Run ``change``; if it fails, run ``undo`` (the compensating change) and
    fail saying the move of ``application`` to ``to`` was undone.  Used for
    the part of a move after the application stopped and before the target
    was asked to take the volume: a failure there leaves this node's copy
    the only live one, so serving here again is safe and better than
    leaving the application down until the target returns.
    """

    change: IStateChange
    undo: IStateChange
    application: str
    to: str

    @property
    def summary(self) -> str:
        return "%s (if that fails, undo: %s)" % (self.change.summary,
                                                 self.undo.summary)

    @deferred
    async def run(self, deployer, context):
        try:
            await self.change.run(deployer, context)
        except (NotOwner, defer.CancelledError):
            raise
        except Exception as e:
            context.emit("rollback", self.application, to=self.to, reason=str(e))
            await self.undo.run(deployer, context)
            raise ChangeFailed("the move of %s to %s was undone, it runs here "
                               "again: %s" % (self.application, self.to, e)) from e


@implementer(IStateChange)
@frozen
class ReportProblem:
    """Something the node must not decide alone; nothing is changed."""

    application: str
    message: str

    @property
    def summary(self) -> str:
        return "cannot converge %s: %s" % (self.application, self.message)

    def run(self, deployer, context):
        context.emit("problem", self.application, message=self.message)
        return defer.fail(ChangeFailed(self.message))


def leaves(change) -> List:
    """The plan as a flat list of steps, in the order they are written
    (the branches of an ``InParallel`` one after the other)."""
    if isinstance(change, (Sequentially, InParallel)):
        out: List = []
        for c in change.changes:
            out.extend(leaves(c))
        return out
    return [change]
