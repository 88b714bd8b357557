"""One account can never see or touch another's mailboxes through the facade."""
from __future__ import annotations

import pytest

from storage import Flag, InvalidName, NoSuchMailbox, NotFound

from .test_store_uids import RAW, make_account


async def test_other_accounts_mailboxes_are_unreachable(store):
    alice = await make_account(store, "alice@example.test")
    mallory = await make_account(store, "mallory@example.test")
    report = await store.deliver(RAW, [alice.id])
    alice_inbox = await store.get_mailbox(alice.id, "INBOX")

    # By mailbox id: every call checks the owner.
    with pytest.raises(NoSuchMailbox):
        await store.fetch(mallory.id, alice_inbox.id, [1], raw=True)
    with pytest.raises(NoSuchMailbox):
        await store.store_flags(mallory.id, alice_inbox.id, [1], "add", int(Flag.DELETED))
    with pytest.raises(NoSuchMailbox):
        await store.expunge(mallory.id, alice_inbox.id)
    with pytest.raises(NoSuchMailbox):
        await store.copy(mallory.id, alice_inbox.id, [1], "INBOX")
    with pytest.raises(NoSuchMailbox):
        await store.changes_since(mallory.id, alice_inbox.id, 0)
    # By content id.
    with pytest.raises(NotFound):
        await store.read_content(mallory.id, report.content_id)
    # By name: names are per account, and path tricks are refused.
    with pytest.raises(NoSuchMailbox):
        await store.select(mallory.id, "alice@example.test/INBOX")
    for name in ("../alice@example.test/INBOX", "/INBOX", "INBOX//x", "a/./b", "..", ""):
        with pytest.raises(InvalidName):
            await store.select(mallory.id, name)
    assert [m.name for m in await store.list_mailboxes(mallory.id)] == [
        "Archive", "Drafts", "INBOX", "Junk", "Sent", "Trash"]
    mallory_inbox = await store.select(mallory.id, "INBOX")
    assert mallory_inbox.messages == ()
    # Alice's message is untouched.
    snapshot = await store.select(alice.id, "INBOX")
    assert [(m.uid, m.flags) for m in snapshot.messages] == [(1, 0)]
