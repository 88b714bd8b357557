"""UID and UIDVALIDITY invariants (RFC 3501 §2.3.1.1), on SQLite and PostgreSQL."""
from __future__ import annotations

import asyncio

from storage import Flag, MailStore

RAW = b"From: a@example.net\r\nTo: b@example.test\r\nSubject: t\r\n\r\nhello\r\n"


async def make_account(store: MailStore, address: str = "bob@example.test"):
    if not await store.is_local_domain("example.test"):
        await store.add_domain("example.test")
    return await store.add_account(address, "correct-horse-battery")


async def test_uids_strictly_increase_and_are_never_reused_after_expunge(store):
    account = await make_account(store)
    first = [(await store.deliver(RAW, [account.id])).deliveries[0].uid for _ in range(5)]
    assert first == [1, 2, 3, 4, 5]
    inbox = await store.get_mailbox(account.id, "INBOX")
    await store.store_flags(account.id, inbox.id, [4, 5], "add", int(Flag.DELETED))
    assert await store.expunge(account.id, inbox.id) == (4, 5)
    after = (await store.deliver(RAW, [account.id])).deliveries[0].uid
    assert after == 6, "an expunged UID must never be handed out again"
    snapshot = await store.select(account.id, "INBOX")
    assert [m.uid for m in snapshot.messages] == [1, 2, 3, 6]


async def test_uids_and_uidvalidity_survive_a_restart(store, database_url):
    account = await make_account(store)
    for _ in range(3):
        await store.deliver(RAW, [account.id])
    inbox = await store.get_mailbox(account.id, "INBOX")
    await store.store_flags(account.id, inbox.id, [3], "add", int(Flag.DELETED))
    await store.expunge(account.id, inbox.id)

    reopened = await MailStore.open(database_url)
    try:
        again = await reopened.get_mailbox(account.id, "INBOX")
        assert again.uidvalidity == inbox.uidvalidity
        assert again.uidnext == 4
        assert (await reopened.deliver(RAW, [account.id])).deliveries[0].uid == 4
    finally:
        await reopened.close()


async def test_recreated_mailbox_gets_a_new_uidvalidity(store):
    account = await make_account(store)
    created = await store.create_mailbox(account.id, "Projects")
    await store.delete_mailbox(account.id, "Projects")
    recreated = await store.create_mailbox(account.id, "Projects")
    assert recreated.uidvalidity != created.uidvalidity
    assert recreated.uidvalidity > 0


async def test_twenty_concurrent_deliveries_get_twenty_consecutive_uids(store):
    account = await make_account(store)
    reports = await asyncio.gather(*(store.deliver(RAW + str(i).encode(), [account.id]) for i in range(20)))
    uids = sorted(report.deliveries[0].uid for report in reports)
    assert uids == list(range(1, 21))


async def test_two_hundred_concurrent_deliveries_across_ten_accounts_lose_nothing(store):
    accounts = [await make_account(store, f"user{i}@example.test") for i in range(10)]
    await asyncio.gather(*(store.deliver(RAW + str(i).encode(), [accounts[i % 10].id]) for i in range(200)))
    for account in accounts:
        snapshot = await store.select(account.id, "INBOX")
        assert [m.uid for m in snapshot.messages] == list(range(1, 21))
        assert snapshot.mailbox.uidnext == 21


async def test_recent_claims_start_afresh_in_a_mailbox_made_anew(store):
    """The in-memory \\Recent floor must not outlive its mailbox: SQLite reuses a deleted mailbox's id."""
    bob = await make_account(store)
    await store.create_mailbox(bob.id, "Box")
    for _ in range(3):
        await store.append(bob.id, "Box", RAW)
    old = await store.get_mailbox(bob.id, "Box")
    assert await store.claim_recent(bob.id, old.id, 3, old.uidvalidity) == (1, 4)
    await store.delete_mailbox(bob.id, "Box")
    await store.create_mailbox(bob.id, "Box")
    await store.append(bob.id, "Box", RAW)
    new = await store.get_mailbox(bob.id, "Box")
    assert await store.claim_recent(bob.id, new.id, 1, new.uidvalidity) == (1, 2)
    assert await store.claim_recent(bob.id, new.id, 1, new.uidvalidity) == (2, 2)  # claimed once only
