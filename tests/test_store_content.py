"""Message content is shared, not copied, and freed with its last reference."""
from __future__ import annotations

from storage import Flag

from .test_store_uids import RAW, make_account


async def count_contents(store) -> int:
    from sqlalchemy import func, select

    from storage.models import MessageRow

    return await store.db.read(lambda s: s.scalar(select(func.count()).select_from(MessageRow)))


async def test_one_content_row_for_several_recipients_and_copies(store):
    alice = await make_account(store, "alice@example.test")
    bob = await make_account(store, "bob@example.test")
    report = await store.deliver(RAW, [alice.id, bob.id])
    assert len(report.deliveries) == 2
    assert await count_contents(store) == 1

    inbox = await store.get_mailbox(alice.id, "INBOX")
    copied = await store.copy(alice.id, inbox.id, [1], "Archive")
    assert copied.target_uids == (1,)
    assert await count_contents(store) == 1, "COPY must share the content row"
    archive = await store.select(alice.id, "Archive")
    assert archive.messages[0].content_id == report.content_id


async def test_deleting_the_last_reference_frees_the_content(store):
    alice = await make_account(store, "alice@example.test")
    report = await store.deliver(RAW, [alice.id])
    inbox = await store.get_mailbox(alice.id, "INBOX")
    await store.copy(alice.id, inbox.id, [1], "Archive")

    await store.store_flags(alice.id, inbox.id, [1], "add", int(Flag.DELETED))
    await store.expunge(alice.id, inbox.id)
    assert await count_contents(store) == 1, "Archive still refers to it"
    assert await store.read_content(alice.id, report.content_id) == RAW

    archive = await store.get_mailbox(alice.id, "Archive")
    await store.store_flags(alice.id, archive.id, [1], "add", int(Flag.DELETED))
    await store.expunge(alice.id, archive.id)
    assert await count_contents(store) == 0


async def test_quota_accounting_follows_appends_copies_and_expunges(store):
    alice = await make_account(store, "alice@example.test")
    await store.set_quota(alice.address, len(RAW) * 2)
    await store.deliver(RAW, [alice.id])
    inbox = await store.get_mailbox(alice.id, "INBOX")
    await store.copy(alice.id, inbox.id, [1], "Archive")
    used, limit, count = await store.get_quota(alice.id)
    assert (used, limit, count) == (len(RAW) * 2, len(RAW) * 2, 2)
    report = await store.deliver(RAW, [alice.id])
    assert report.over_quota == (alice.id,) and report.deliveries == ()
    await store.store_flags(alice.id, inbox.id, [1], "add", int(Flag.DELETED))
    await store.expunge(alice.id, inbox.id)
    assert (await store.get_quota(alice.id))[0] == len(RAW)
