"""Group commit (storage/writer.py) on both backends: retries, failures kept apart, two processes."""
from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.exc import DBAPIError

from storage import MailStore
from storage.writer import MAX_ATTEMPTS

from .test_store_uids import RAW, make_account


class _DriverError(Exception):
    """What asyncpg raises, reduced to the SQLSTATE the writer looks at."""

    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"sqlstate {sqlstate}")
        self.sqlstate = sqlstate


def _failing(sqlstate: str, times: int, runs: list[int]):
    def op(s):
        runs.append(1)
        if len(runs) <= times:
            raise DBAPIError("UPDATE mailboxes ...", {}, _DriverError(sqlstate))
        return "done", []
    return op


async def test_group_commit_is_on_for_both_backends(store):
    account = await make_account(store)
    await store.deliver(RAW, [account.id])
    batches, operations = store.group_commit_stats
    assert batches >= 1 and operations >= 1


async def test_a_deadlock_victim_in_a_batch_runs_again_and_the_others_commit_once(store):
    account = await make_account(store)
    runs: list[int] = []
    # Fails in the batch and in its isolated rerun, then succeeds when queued again.
    results = await asyncio.gather(store._write(_failing("40P01", 2, runs)),
                                   *(store.deliver(RAW, [account.id]) for _ in range(5)))
    assert results[0] == "done"
    assert len(runs) == 3
    status = await store.mailbox_status(account.id, "INBOX")
    assert status.messages == 5  # nobody's delivery ran twice
    assert sorted(d.uid for report in results[1:] for d in report.deliveries) == [1, 2, 3, 4, 5]


async def test_a_serialization_failure_gives_up_after_the_attempt_limit(store):
    runs: list[int] = []
    with pytest.raises(DBAPIError):
        await store._write(_failing("40001", 1000, runs))
    assert MAX_ATTEMPTS <= len(runs) <= 2 * MAX_ATTEMPTS  # each attempt may run once more isolated


async def test_other_errors_are_not_retried(store):
    runs: list[int] = []
    with pytest.raises(DBAPIError):
        await store._write(_failing("23505", 1000, runs))  # unique_violation: running again will not help
    assert len(runs) == 1


async def test_two_processes_delivering_into_one_mailbox_get_distinct_uids(store, database_url):
    account = await make_account(store)
    other = await MailStore.open(database_url, auth_cache_seconds=0)  # a second daemon's store
    try:
        reports = await asyncio.gather(*(target.deliver(RAW, [account.id])
                                         for _ in range(40) for target in (store, other)))
    finally:
        await other.close()
    uids = sorted(d.uid for report in reports for d in report.deliveries)
    assert uids == list(range(1, 81))
    assert (await store.mailbox_status(account.id, "INBOX")).messages == 80
