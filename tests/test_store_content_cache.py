"""IMAP FETCH's memory of immutable message parts (storage/contentcache.py): served again
without the database, exact bytes, within its byte budget, never to another account."""
from __future__ import annotations

import pytest

from storage import NoSuchMailbox
from storage.contentcache import MAX_ITEM_BYTES

from .test_store_uids import make_account


def _message(n: int, body_lines: int = 5) -> bytes:
    return (f"From: a@example.net\r\nTo: b@example.test\r\nSubject: cached {n}\r\n\r\n"
            + f"line {n}\r\n" * body_lines).encode()


async def test_second_fetch_is_served_from_memory_byte_exact(store):
    bob = await make_account(store)
    raws = [_message(n) for n in range(3)]
    for raw in raws:
        await store.deliver(raw, [bob.id])
    inbox = await store.get_mailbox(bob.id, "INBOX")
    first = await store.fetch_parts(bob.id, inbox.id, inbox.uidvalidity, [1, 2, 3], cache=True, raw=True)
    hits = store.content_cache.hits
    again = await store.fetch_parts(bob.id, inbox.id, inbox.uidvalidity, [3, 1, 2], cache=True, raw=True)
    assert store.content_cache.hits == hits + 3
    assert [m.raw for m in again] == raws == [m.raw for m in first]
    assert [m.cache for m in again] == [m.cache for m in first]
    assert [(m.meta.uid, m.meta.size, m.meta.internaldate) for m in again] == \
        [(m.meta.uid, m.meta.size, m.meta.internaldate) for m in first]
    # Structure read first, bytes later: the bytes are a miss once, then both are kept.
    await store.deliver(_message(4), [bob.id])
    await store.fetch_parts(bob.id, inbox.id, inbox.uidvalidity, [4], cache=True)
    assert (await store.fetch_parts(bob.id, inbox.id, inbox.uidvalidity, [4], raw=True))[0].raw == _message(4)
    hits = store.content_cache.hits
    both = await store.fetch_parts(bob.id, inbox.id, inbox.uidvalidity, [4], cache=True, raw=True)
    assert store.content_cache.hits == hits + 1 and both[0].cache is not None


async def test_cache_stays_within_its_budget(store):
    store.content_cache.budget = 20_000  # the setting database.content_cache_mb, crossed here
    bob = await make_account(store)
    for n in range(40):
        await store.deliver(_message(n, body_lines=100), [bob.id])  # ~1.2 KB each
    huge = _message(99, body_lines=1) + b"x" * (MAX_ITEM_BYTES + 10)
    await store.deliver(huge, [bob.id])
    inbox = await store.get_mailbox(bob.id, "INBOX")
    fetched = await store.fetch_parts(bob.id, inbox.id, inbox.uidvalidity, list(range(1, 42)), raw=True)
    assert len(fetched) == 41 and fetched[-1].raw == huge
    assert store.content_cache.used <= 20_000
    assert 0 < len(store.content_cache) < 41
    # The oldest went first; the newest small ones are still there; the huge one never was.
    assert store.content_cache.get((bob.id, inbox.id, inbox.uidvalidity), 40, cache=False, raw=True) is not None
    assert store.content_cache.get((bob.id, inbox.id, inbox.uidvalidity), 1, cache=False, raw=True) is None
    assert store.content_cache.get((bob.id, inbox.id, inbox.uidvalidity), 41, cache=False, raw=True) is None


async def test_cached_parts_never_reach_another_account(store):
    alice = await make_account(store, "alice@example.test")
    mallory = await make_account(store, "mallory@example.test")
    await store.deliver(_message(1), [alice.id])
    inbox = await store.get_mailbox(alice.id, "INBOX")
    assert (await store.fetch_parts(alice.id, inbox.id, inbox.uidvalidity, [1], raw=True))[0].raw == _message(1)
    with pytest.raises(NoSuchMailbox):
        await store.fetch_parts(mallory.id, inbox.id, inbox.uidvalidity, [1], raw=True)


async def test_a_mailbox_made_anew_never_gets_the_old_ones_contents(store):
    """SQLite gives a deleted mailbox's id to the next mailbox created: UIDs start at 1 again."""
    bob = await make_account(store)
    await store.create_mailbox(bob.id, "Scratch")
    await store.append(bob.id, "Scratch", _message(1))
    old = await store.get_mailbox(bob.id, "Scratch")
    assert (await store.fetch_parts(bob.id, old.id, old.uidvalidity, [1], raw=True))[0].raw == _message(1)
    await store.delete_mailbox(bob.id, "Scratch")
    await store.create_mailbox(bob.id, "Scratch")
    await store.append(bob.id, "Scratch", _message(2))
    new = await store.get_mailbox(bob.id, "Scratch")
    assert new.uidvalidity != old.uidvalidity
    assert (await store.fetch_parts(bob.id, new.id, new.uidvalidity, [1], raw=True))[0].raw == _message(2)
    # A session still holding the old mailbox is refused rather than shown the new one's mail.
    if new.id == old.id:
        store.content_cache.budget = 0
        with pytest.raises(NoSuchMailbox):
            await store.fetch_parts(bob.id, old.id, old.uidvalidity, [1], raw=True)


async def test_append_fills_the_cache_with_what_the_database_would_give(store):
    from datetime import datetime, timedelta, timezone

    bob = await make_account(store)
    raw = _message(7, body_lines=3)
    when = datetime(1994, 2, 7, 21, 52, 25, tzinfo=timezone(timedelta(hours=-8)))
    appended = await store.append(bob.id, "INBOX", raw, flags=1, keywords=["$Label1"], internaldate=when)
    inbox = await store.get_mailbox(bob.id, "INBOX")
    hits = store.content_cache.hits
    cached = (await store.fetch_parts(bob.id, inbox.id, inbox.uidvalidity, [appended.uid], cache=True, raw=True))[0]
    assert store.content_cache.hits == hits + 1  # no database read
    stored = (await store.fetch(bob.id, inbox.id, [appended.uid], cache=True, raw=True))[0]
    assert cached == stored
    assert cached.meta.internaldate == datetime(1994, 2, 8, 5, 52, 25, tzinfo=timezone.utc)
