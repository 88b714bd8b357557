"""Light operations on SQLite (storage/engine.py): statements on the loop thread, COMMIT in the
writer thread, and never a wait for a lock on the loop."""
from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest

from storage import MailStore, NoSuchMailbox
from storage.migrate import upgrade

from .test_store_uids import RAW, make_account


@pytest.fixture
async def sqlite_store(tmp_path):
    store = await MailStore.open(f"sqlite:///{tmp_path}/casella.db", auth_cache_seconds=0)
    await upgrade(store.db)
    yield store, str(tmp_path / "casella.db")
    await store.close()


def _record_reads(store, monkeypatch) -> list[bool]:
    """Whether each store read from now on is asked to run inline (light) or in a thread."""
    reads: list[bool] = []
    real_read = store.db.read

    async def read(fn, *, inline=False):
        reads.append(inline)
        return await real_read(fn, inline=inline)

    monkeypatch.setattr(store.db, "read", read)
    return reads


async def _ticks_while(coro, interval: float = 0.01) -> tuple[object, float]:
    """Run `coro`; return its result and the longest gap between ticks of another task meanwhile."""
    gaps: list[float] = []
    stop = False

    async def ticker() -> None:
        last = time.monotonic()
        while not stop:
            await asyncio.sleep(interval)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    task = asyncio.ensure_future(ticker())
    try:
        result = await coro
    finally:
        stop = True
        await task
    return result, max(gaps, default=0.0)


async def test_light_write_waits_for_another_process_lock_in_a_thread_not_on_the_loop(sqlite_store):
    store, path = sqlite_store
    account = await make_account(store)
    await store.append(account.id, "INBOX", RAW)
    inbox = await store.get_mailbox(account.id, "INBOX")
    # Another process (here: another connection) holds SQLite's write lock for a while.
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    loop = asyncio.get_running_loop()
    loop.call_later(0.5, other.execute, "COMMIT")
    started = time.monotonic()
    result, longest_gap = await _ticks_while(store.store_flags(account.id, inbox.id, [1], "add", 1))
    assert time.monotonic() - started >= 0.4  # it did wait for the lock...
    assert longest_gap < 0.25  # ...in a thread: the loop went on meanwhile
    assert [update.uid for update in result.updated] == [1]
    # A light read does not wait for the writer at all (WAL).
    other.execute("BEGIN IMMEDIATE")
    try:
        status, longest_gap = await _ticks_while(store.mailbox_status(account.id, "INBOX"))
        assert status.messages == 1 and longest_gap < 0.25
    finally:
        other.execute("COMMIT")
        other.close()
    assert store.db.inline


async def test_a_failing_light_operation_fails_alone_in_its_batch(sqlite_store):
    store, _ = sqlite_store
    account = await make_account(store)
    for _ in range(3):
        await store.append(account.id, "INBOX", RAW)
    inbox = await store.get_mailbox(account.id, "INBOX")
    results = await asyncio.gather(
        store.store_flags(account.id, inbox.id, [1], "add", 1),
        store.store_flags(account.id, inbox.id + 999, [1], "add", 1),  # no such mailbox
        store.store_flags(account.id, inbox.id, [2], "add", 4),
        return_exceptions=True)
    assert isinstance(results[1], NoSuchMailbox)
    assert [u.uid for u in results[0].updated] == [1] and [u.uid for u in results[2].updated] == [2]
    flags = {m.uid: m.flags for m in (await store.select(account.id, "INBOX")).messages}
    assert flags[1] & 1 and flags[2] & 4 and not flags[3] & 5


async def test_with_sqlite_inline_off_everything_runs_in_threads(tmp_path):
    store = await MailStore.open(f"sqlite:///{tmp_path}/casella.db", auth_cache_seconds=0, sqlite_inline=False)
    try:
        await upgrade(store.db)
        assert not store.db.inline
        account = await make_account(store)
        appended = await store.append(account.id, "INBOX", RAW)
        inbox = await store.get_mailbox(account.id, "INBOX")
        await store.store_flags(account.id, inbox.id, [appended.uid], "add", 8)
        assert await store.expunge(account.id, inbox.id, mailbox_entries=1) == (appended.uid,)
        assert (await store.mailbox_status(account.id, "INBOX")).messages == 0
    finally:
        await store.close()


async def test_status_of_a_large_mailbox_is_counted_in_a_thread(sqlite_store, monkeypatch):
    store, _ = sqlite_store
    account = await make_account(store)
    for _ in range(3):
        await store.append(account.id, "INBOX", RAW)
    inbox = await store.get_mailbox(account.id, "INBOX")
    reads = _record_reads(store, monkeypatch)
    assert (await store.mailbox_status(account.id, "INBOX")).messages == 3
    assert reads == [True]
    monkeypatch.setattr("storage.api.LIGHT_ENTRIES", 2)
    reads.clear()
    assert (await store.mailbox_status(account.id, "INBOX")).messages == 3  # three at the last count
    assert reads == [False]
    # Never counted, and UIDNEXT 4: three entries may be there.
    await store.create_mailbox(account.id, "Big")
    big = await store.get_mailbox(account.id, "Big")
    await store.copy(account.id, inbox.id, [1, 2, 3], "Big", move=True)
    reads.clear()
    assert (await store.mailbox_status(account.id, "Big")).messages == 3
    assert reads == [True, False]
    # Expunged down to one: counted in a thread once more, then light again.
    await store.store_flags(account.id, big.id, [1, 2], "add", 8)
    await store.expunge(account.id, big.id)
    reads.clear()
    assert (await store.mailbox_status(account.id, "Big")).messages == 1
    assert (await store.mailbox_status(account.id, "Big")).messages == 1
    assert reads == [False, True]


async def test_fetch_is_light_only_for_a_few_entries_and_no_bodies(sqlite_store, monkeypatch):
    from storage.api import LIGHT_ENTRIES, LIGHT_PARSED

    store, _ = sqlite_store
    account = await make_account(store)
    await store.append(account.id, "INBOX", RAW)
    inbox = await store.get_mailbox(account.id, "INBOX")
    reads = _record_reads(store, monkeypatch)
    many = list(range(1, LIGHT_ENTRIES + 2))
    for uids, kwargs, light in (([1], {}, True), (many[:LIGHT_ENTRIES], {}, True), (many, {}, False),
                                (many[:LIGHT_PARSED], {"cache": True}, True),
                                (many[:LIGHT_PARSED + 1], {"cache": True}, False), ([1], {"raw": True}, False)):
        reads.clear()
        fetched = await store.fetch(account.id, inbox.id, uids, **kwargs)
        assert [m.meta.uid for m in fetched] == [1] and reads == [light]
