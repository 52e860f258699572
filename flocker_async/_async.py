"""
One async style for the whole tree: ``async def`` coroutines, turned into
Deferreds at the edges with ``Deferred.fromCoroutine``.

``deferred`` wraps a coroutine function so callers get a Deferred (what
every interface here promises) without a hand-written wrapper per method;
``sleep`` waits on an injected clock, never the wall clock directly.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Coroutine, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

__all__ = ["deferred", "sleep"]

T = TypeVar("T")


def deferred(function: Callable[..., Coroutine[Any, Any, T]]
             ) -> Callable[..., "Deferred[T]"]:
    """
    Make an ``async def`` function (or method) return a Deferred.  Cancelling
    the Deferred cancels whatever the coroutine awaits at that moment.
    """
    @functools.wraps(function)
    def wrapper(*args, **kwargs) -> "Deferred[T]":
        return Deferred.fromCoroutine(function(*args, **kwargs))
    wrapper.coroutine_function = function  # type: ignore[attr-defined]
    return wrapper


def sleep(clock: IReactorTime, seconds: float) -> "Deferred[None]":
    """A Deferred that fires with None after ``seconds`` on ``clock``;
    cancelling it cancels the timer."""
    return deferLater(clock, seconds, lambda: None)

