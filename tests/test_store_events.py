"""Change events: exists / expunge / flags with their modseq, in-process and across processes."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap

import pytest

from storage import Flag
from storage.changes import FlagsChanged, MessageAdded, MessagesExpunged

from .test_store_uids import RAW, make_account


async def test_subscriber_sees_exists_flags_and_expunge_with_modseq(store):
    account = await make_account(store)
    inbox = await store.get_mailbox(account.id, "INBOX")
    seen = []
    unsubscribe = store.bus.subscribe(inbox.id, seen.append)

    await store.deliver(RAW, [account.id])
    await store.store_flags(account.id, inbox.id, [1], "add", int(Flag.DELETED | Flag.SEEN))
    await store.expunge(account.id, inbox.id)
    unsubscribe()
    await store.deliver(RAW, [account.id])  # after unsubscribing: not seen

    assert [type(change) for change in seen] == [MessageAdded, FlagsChanged, MessagesExpunged]
    added, flags, expunged = seen
    assert added.uid == 1 and flags.uid == 1 and expunged.uids == (1,)
    assert added.modseq < flags.modseq < expunged.modseq
    assert flags.flags & Flag.DELETED
    assert expunged.modseq == (await store.get_mailbox(account.id, "INBOX")).highest_modseq - 1


async def test_no_event_for_a_store_that_changes_nothing(store):
    account = await make_account(store)
    inbox = await store.get_mailbox(account.id, "INBOX")
    await store.deliver(RAW, [account.id])
    await store.store_flags(account.id, inbox.id, [1], "add", int(Flag.SEEN))
    seen = []
    store.bus.subscribe(inbox.id, seen.append)
    result = await store.store_flags(account.id, inbox.id, [1], "add", int(Flag.SEEN))
    assert result.updated == () and seen == []


async def test_changes_since_reports_changed_and_vanished(store):
    account = await make_account(store)
    for _ in range(3):
        await store.deliver(RAW, [account.id])
    inbox = await store.get_mailbox(account.id, "INBOX")
    mark = inbox.highest_modseq
    await store.store_flags(account.id, inbox.id, [2], "add", int(Flag.FLAGGED))
    await store.store_flags(account.id, inbox.id, [3], "add", int(Flag.DELETED))
    await store.expunge(account.id, inbox.id)
    changes = await store.changes_since(account.id, inbox.id, mark)
    assert [m.uid for m in changes.changed] == [2]
    assert changes.vanished == (3,)


LISTENER = textwrap.dedent("""
    import asyncio, json, sys
    from storage import MailStore
    async def main():
        store = await MailStore.open(sys.argv[1], cross_process_events=True)
        def show(change):
            print(json.dumps({"type": type(change).__name__, "modseq": change.modseq}), flush=True)
        store.bus.subscribe(int(sys.argv[2]), show)
        print("ready", flush=True)
        await asyncio.sleep(30)
    asyncio.run(main())
""")


async def test_a_second_process_sees_events_on_postgresql(store, database_url):
    if not store.db.is_postgres:
        pytest.skip("cross-process events are a PostgreSQL feature (LISTEN/NOTIFY); SQLite is one node")
    account = await make_account(store)
    inbox = await store.get_mailbox(account.id, "INBOX")
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", LISTENER, database_url, str(inbox.id),
        stdout=subprocess.PIPE, env=env)
    try:
        assert (await asyncio.wait_for(proc.stdout.readline(), 30)).strip() == b"ready"
        await store.deliver(RAW, [account.id])
        await store.store_flags(account.id, inbox.id, [1], "add", int(Flag.DELETED))
        await store.expunge(account.id, inbox.id)
        lines = [json.loads(await asyncio.wait_for(proc.stdout.readline(), 10)) for _ in range(3)]
        assert [line["type"] for line in lines] == ["MessageAdded", "FlagsChanged", "MessagesExpunged"]
        assert lines[0]["modseq"] < lines[1]["modseq"] < lines[2]["modseq"]
    finally:
        proc.kill()
        await proc.wait()
