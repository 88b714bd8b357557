"""Big mailboxes in the store: the lean SELECT index (select_index) agrees with select(), and a
STORE on many messages (grouped UPDATEs of 500) keeps per-message results, one modseq, events
and UNCHANGEDSINCE."""
from __future__ import annotations

from storage import Flag
from storage.changes import FlagsChanged

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


async def test_store_on_many_messages_groups_updates(store):
    account = await make_account(store)
    inbox = await _fill(store, account, 1200)
    # Mixed starting flags: the add below produces three distinct new (flags, keywords) groups.
    await store.store_flags(account.id, inbox.id, list(range(1, 401)), "add", int(Flag.FLAGGED))
    await store.store_flags(account.id, inbox.id, list(range(401, 601)), "add", int(Flag.DRAFT), ["$X"])
    mark = (await store.get_mailbox(account.id, "INBOX")).highest_modseq
    await store.store_flags(account.id, inbox.id, [7], "add", int(Flag.ANSWERED))
    seen = []
    store.bus.subscribe(inbox.id, seen.append)
    result = await store.store_flags(account.id, inbox.id, list(range(1, 1201)), "add", int(Flag.SEEN),
                                     unchanged_since=mark)
    assert result.failed_uids == (7,)
    assert [u.uid for u in result.updated] == [u for u in range(1, 1201) if u != 7]
    modseqs = {u.modseq for u in result.updated}
    assert len(modseqs) == 1 and modseqs.pop() > mark
    assert len(seen) == 1199 and all(isinstance(c, FlagsChanged) for c in seen)
    full = await store.select(account.id, "INBOX", readonly=True)
    by_uid = {m.uid: m for m in full.messages}
    assert by_uid[1].flags == Flag.FLAGGED | Flag.SEEN and by_uid[1].keywords == ()
    assert by_uid[500].flags == Flag.DRAFT | Flag.SEEN and by_uid[500].keywords == ("$X",)
    assert by_uid[1200].flags == Flag.SEEN
    assert by_uid[7].flags == Flag.FLAGGED | Flag.ANSWERED
    # A non-contiguous set with replace: one group for all, only real changes get the new modseq.
    uids = list(range(1, 1201, 3))
    result = await store.store_flags(account.id, inbox.id, uids, "replace", int(Flag.SEEN))
    changed = {u.uid for u in result.updated}
    assert changed == {u for u in uids if by_uid[u].flags != Flag.SEEN or by_uid[u].keywords}
    full = await store.select(account.id, "INBOX", readonly=True)
    assert all(m.flags == Flag.SEEN and m.keywords == () for m in full.messages if m.uid in set(uids))
