"""Group commit: one writer task that commits whatever writes are waiting as one transaction.

SQLite allows a single writer and a durable commit costs an fsync, so
throughput collapses into lock waits when every caller commits alone. Here
callers queue an operation; while one batch runs on the writer thread the
next one gathers, then runs in one transaction (if an operation fails, the batch
runs again with a SAVEPOINT per operation, so it fails alone). Only after the commit does
each caller's future resolve and the batch's change events go out: an
acknowledgement always means "committed". On PostgreSQL it saves the
BEGIN/COMMIT round trips and a WAL flush per operation; UID allocation still
takes a row lock, so several processes writing one mailbox stay correct, and
an operation that loses a deadlock or a serialization check (SQLSTATE 40P01,
40001) is queued again, up to MAX_ATTEMPTS times.

Operations of one kind that know how to run together (`engine.Batchable`:
deliveries, finished queue items) are placed side by side and run as one, so a
batch costs a few statements per kind rather than a few per operation: on
PostgreSQL every statement is a round trip, and the batches run one at a time.

A batch of light operations only (`submit(..., light=True)`: a few rows through an
index) runs its statements on the loop thread on SQLite, its COMMIT still in the writer
thread (storage/engine.py).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from sqlalchemy.orm import Session

from .changes import Change, ChangeBus
from .engine import Batchable, Database, retryable

log = logging.getLogger("casella.store.writer")

#: A write operation: runs inside a transaction, returns (result, change events).
WriteOp = Callable[[Session], tuple[Any, list[Change]]]
#: Runs of one operation that lost a deadlock or serialization check before its caller gets the error.
MAX_ATTEMPTS = 5


class GroupCommitWriter:
    def __init__(self, db: Database, bus: ChangeBus, max_batch: int = 512) -> None:
        self._db = db
        self._bus = bus
        self._max_batch = max_batch
        # (operation, caller's future, attempt, light)
        self._queue: list[tuple[WriteOp, asyncio.Future, int, bool]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False
        self.batches = 0
        self.operations = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="casella-group-commit")

    async def submit(self, op: WriteOp, *, light: bool = False) -> Any:
        if self._closing:
            raise RuntimeError("store is closing")
        self.start()
        future = asyncio.get_running_loop().create_future()
        self._queue.append((op, future, 1, light))
        self._wakeup.set()
        # Shielded: a caller that goes away (client disconnect) must not cancel a batch.
        return await asyncio.shield(future)

    async def close(self) -> None:
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                await self._commit(batch)
            if self._closing:
                return

    def _retry(self, op: WriteOp, future: asyncio.Future, attempt: int, light: bool, exc: BaseException) -> bool:
        """Queue an operation again after a deadlock or serialization failure; False if it may not be."""
        if attempt >= MAX_ATTEMPTS or not retryable(exc):  # _run drains the queue, even when closing
            return False
        self._queue.append((op, future, attempt + 1, light))
        self._wakeup.set()
        return True

    @staticmethod
    def _arrange(batch: list[tuple[WriteOp, asyncio.Future, int, bool]]) -> list[tuple[WriteOp, asyncio.Future, int, bool]]:
        """Bring Batchables of one kind together (at the place of the first), the rest in arrival order.

        The writes of one batch were all pending at once (a caller that needs an order awaits
        its first write before it submits the next), so any order is a valid one; the batch
        runs, and its events go out, in this order.
        """
        runs: list[list[tuple[WriteOp, asyncio.Future, int, bool]]] = []
        kinds: dict[Any, list[tuple[WriteOp, asyncio.Future, int, bool]]] = {}
        for entry in batch:
            op = entry[0]
            if isinstance(op, Batchable):
                run = kinds.get(op.run_many)
                if run is not None:
                    run.append(entry)
                    continue
                run = kinds[op.run_many] = []
                run.append(entry)
                runs.append(run)
            else:
                runs.append([entry])
        return batch if len(runs) == len(batch) else [entry for run in runs for entry in run]

    async def _commit(self, batch: list[tuple[WriteOp, asyncio.Future, int, bool]]) -> None:
        batch = self._arrange(batch)
        try:
            outcomes = await self._db.write([op for op, _, _, _ in batch],
                                            inline=all(light for _, _, _, light in batch))
        except Exception as exc:  # the transaction failed: nobody's write is durable
            if len(batch) > 1 and not retryable(exc):
                log.exception("group commit of %d operations failed", len(batch))
            for op, future, attempt, light in batch:
                if not future.done() and not self._retry(op, future, attempt, light, exc):
                    future.set_exception(exc)
            return
        self.batches += 1
        self.operations += len(batch)
        published: list[Change] = []
        for (op, future, attempt, light), (result, exc) in zip(batch, outcomes):
            if future.done():
                continue
            if exc is not None:
                if not self._retry(op, future, attempt, light, exc):
                    future.set_exception(exc)
            else:
                value, changes = result
                future.set_result(value)
                published.extend(changes or ())
        if published:
            self._bus.publish(published)
