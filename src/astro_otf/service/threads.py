"""Run blocking store and file calls off the event loop."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import anyio

__all__ = ["in_thread"]

P = ParamSpec("P")
T = TypeVar("T")


async def in_thread(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` run in anyio's worker threads and awaited, so that the
    event loop keeps serving while it blocks; its result or its exception."""
    return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))
