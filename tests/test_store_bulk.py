"""Big mailboxes in the store: the lean SELECT index (select_index) agrees with select()."""
from __future__ import annotations

from storage import Flag

from .test_store_uids import RAW, make_account


async def _fill(store, account, count):  # noqa: ANN001
    for _ in range(count):
        await store.deliver(RAW, [account.id])
    return await store.get_mailbox(account.id, "INBOX")


async def test_select_index_matches_select_and_claims_recent(store):
    account = await make_account(store)
    inbox = await _fill(store, account, 6)
    await store.store_flags(account.id, inbox.id, [2, 4], "add", int(Flag.SEEN), ["$Work"])
    await store.store_flags(account.id, inbox.id, [5], "add", int(Flag.FLAGGED), ["$Later", "$Work"])
    await store.expunge(account.id, inbox.id, None)
    full = await store.select(account.id, "INBOX", readonly=True)
    index = await store.select_index(account.id, "INBOX")
    assert list(index.uids) == [m.uid for m in full.messages] == [1, 2, 3, 4, 5, 6]
    assert list(index.flags) == [m.flags for m in full.messages]
    assert list(index.modseqs) == [m.modseq for m in full.messages]
    assert index.message_keywords == {m.uid: m.keywords for m in full.messages if m.keywords}
    assert index.keywords == ("$Later", "$Work") == full.keywords
    assert index.recent_uids == frozenset(range(1, 7))
    # The claim is made once: the next read-write select sees no \Recent.
    assert (await store.select_index(account.id, "INBOX")).recent_uids == frozenset()
    empty = await store.select_index(account.id, "Trash", readonly=True)
    assert len(empty.uids) == 0 and empty.message_keywords == {}
