"""Holds :class:`AsyncOTFClient` to its promise of "the same calls, same arguments" as
:class:`OTFClient`.

The async client is a thin ``asyncio.to_thread`` wrapper, written by hand one method at a
time, so it drifts whenever the synchronous client gains a call or a parameter and nobody
remembers the twin (it once lacked ``datasets``, ``accounting``, ``copy_result``,
``job(wait=)`` and ``model(version=)``). These tests compare the two classes' public
methods by introspection, so such a change fails here instead of in a user's dashboard.
The differences asyncio requires are listed below with their reasons.
"""

from __future__ import annotations

import inspect
from types import FunctionType

import pytest

from astro_otf.client import AsyncOTFClient, OTFClient

#: Calls of OTFClient that AsyncOTFClient spells differently, and why.
SYNC_ONLY = {
    "close": "the async client closes with the awaitable `aclose`, as httpx.AsyncClient does",
}
#: Calls whose async twin returns another type, and why (parameters must still match).
OTHER_RETURN = {
    "events": "an async iterator of Event: the blocking EventStream would stall the loop",
}
#: Calls only AsyncOTFClient has, and why.
ASYNC_ONLY = {
    "aclose": "stands for OTFClient.close (see SYNC_ONLY)",
    "from_sync": "wraps an existing OTFClient, which needs no counterpart in that class",
}


def _public(cls: type) -> set[str]:
    """The public methods (plain, class and static) defined by ``cls``."""
    kinds = (FunctionType, classmethod, staticmethod)
    return {n for n, v in vars(cls).items() if not n.startswith("_") and isinstance(v, kinds)}


SYNC_CALLS = sorted(_public(OTFClient) - SYNC_ONLY.keys())


def test_the_exception_lists_are_true() -> None:
    """A listed exception that no longer applies is a stale excuse: remove it."""
    assert SYNC_ONLY.keys() <= _public(OTFClient)
    assert not SYNC_ONLY.keys() & _public(AsyncOTFClient)
    assert ASYNC_ONLY.keys() <= _public(AsyncOTFClient)
    assert not ASYNC_ONLY.keys() & _public(OTFClient)
    assert OTHER_RETURN.keys() <= set(SYNC_CALLS)


@pytest.mark.parametrize("name", SYNC_CALLS)
def test_every_sync_call_has_an_async_twin_with_the_same_parameters(name: str) -> None:
    """Each OTFClient call is awaitable on AsyncOTFClient with identical parameters."""
    assert name in _public(AsyncOTFClient), f"AsyncOTFClient lacks {name}"
    twin = getattr(AsyncOTFClient, name)
    assert inspect.iscoroutinefunction(twin) or inspect.isasyncgenfunction(twin), (
        f"AsyncOTFClient.{name} is not async"
    )
    sync_sig = inspect.signature(getattr(OTFClient, name))
    async_sig = inspect.signature(twin)
    # name, kind (positional or keyword-only), default and annotation of every parameter
    assert list(async_sig.parameters.values()) == list(sync_sig.parameters.values()), (
        f"AsyncOTFClient.{name}{async_sig} != OTFClient.{name}{sync_sig}"
    )
    if name not in OTHER_RETURN:
        assert async_sig.return_annotation == sync_sig.return_annotation


def test_every_async_call_is_a_sync_one_or_listed() -> None:
    """AsyncOTFClient grows no call of its own without a reason listed here."""
    assert _public(AsyncOTFClient) - ASYNC_ONLY.keys() == set(SYNC_CALLS)
