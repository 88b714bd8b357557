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


async def test_deliveries_of_one_batch_count_each_others_quota_usage(store):
    account = await make_account(store)
    other = await make_account(store, "carol@example.test")
    await store.set_quota(account.address, 3 * len(RAW))
    reports = await asyncio.gather(*(store.deliver(RAW, [account.id, other.id]) for _ in range(6)))
    stored = [r for r in reports if any(d.account_id == account.id for d in r.deliveries)]
    refused = [r for r in reports if r.over_quota == (account.id,)]
    assert len(stored) == 3 and len(refused) == 3  # as if they had run one after another
    assert all(len(r.deliveries) == 2 for r in stored) and all(len(r.deliveries) == 1 for r in refused)
    assert (await store.get_quota(account.id))[0] == 3 * len(RAW)
    assert (await store.get_quota(other.id))[0] == 6 * len(RAW)
    assert [m.uid for m in (await store.select(other.id, "INBOX")).messages] == [1, 2, 3, 4, 5, 6]


async def test_deliveries_of_one_batch_to_several_mailboxes_keep_their_order_and_content(store):
    accounts = [await make_account(store, f"user{i}@example.test") for i in range(3)]
    bodies = [RAW + f"message {i}\r\n".encode() for i in range(30)]
    reports = await asyncio.gather(*(
        store.deliver(bodies[i], [accounts[i % 3].id, accounts[(i + 1) % 3].id],
                      mailbox="Junk" if i % 4 == 0 else "INBOX") for i in range(30)))
    seen: dict[int, list[int]] = {}
    for i, report in enumerate(reports):
        assert len(report.deliveries) == 2
        for delivery in report.deliveries:
            seen.setdefault(delivery.mailbox_id, []).append(delivery.uid)
            assert await store.read_content(delivery.account_id, report.content_id) == bodies[i]
    for mailbox_id, uids in seen.items():
        assert uids == list(range(1, len(uids) + 1)), "UIDs are handed out in delivery order, none skipped"
    for account in accounts:
        inbox = await store.mailbox_status(account.id, "INBOX")
        junk = await store.mailbox_status(account.id, "Junk")
        assert inbox.messages + junk.messages == 20


async def test_a_delivery_to_a_removed_account_fails_alone(store):
    account = await make_account(store)
    results = await asyncio.gather(store.deliver(RAW, [account.id + 1000]),
                                   *(store.deliver(RAW, [account.id]) for _ in range(5)), return_exceptions=True)
    assert isinstance(results[0], Exception)
    assert sorted(d.uid for report in results[1:] for d in report.deliveries) == [1, 2, 3, 4, 5]


async def test_two_processes_delivering_to_overlapping_accounts_lose_nothing(store, database_url):
    accounts = [await make_account(store, f"user{i}@example.test") for i in range(6)]
    other = await MailStore.open(database_url, auth_cache_seconds=0)  # a second daemon's store
    try:
        # Each message goes to three accounts, in different orders from each process: the mailbox and
        # account row locks of the two processes' batches overlap in every way.
        await asyncio.gather(*(target.deliver(RAW, [accounts[(i + k) % 6].id for k in (0, 2, 3)])
                               for i in range(60) for target in (store, other)))
    finally:
        await other.close()
    for account in accounts:
        snapshot = await store.select(account.id, "INBOX")
        assert [m.uid for m in snapshot.messages] == list(range(1, 61))
        assert (await store.get_quota(account.id))[0] == 60 * len(RAW)
