"""The only glue between asyncio Futures and Twisted Deferreds (one loop, asyncioreactor).

`Deferred.fromFuture(ensure_future(coro))`, not `ensureDeferred(coro)`: the
latter breaks on coroutines that await asyncio objects (twisted #11841).
"""
from __future__ import annotations

import asyncio
from typing import Any, Coroutine

from twisted.internet.defer import Deferred


def as_deferred(coro: Coroutine[Any, Any, Any]) -> Deferred:
    """Run an asyncio coroutine from Twisted code; cancelling the Deferred cancels the task."""
    return Deferred.fromFuture(asyncio.ensure_future(coro))


async def as_future(deferred: Deferred) -> Any:
    """Await a Deferred from asyncio code (a bare `await d` fails inside an asyncio Task)."""
    return await deferred.asFuture(asyncio.get_running_loop())
