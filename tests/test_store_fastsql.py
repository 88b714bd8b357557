"""Statements run on the driver's cursor (storage/fastsql.py) behave as Connection.execute does:
same rows, and errors as SQLAlchemy's DBAPIError with `.orig` (deadlock retries read it)."""
from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from storage import queries as q
from storage.fastsql import FastStatement

from .test_store_uids import make_account


async def test_fast_statement_rows_match_connection_execute(store):
    bob = await make_account(store)

    def both(s):
        conn = s.connection()
        params = {"account_id": bob.id, "name": "INBOX"}
        return q.MAILBOX_BY_NAME.first(conn, params), conn.execute(q.MAILBOX_BY_NAME.statement, params).first()

    fast, slow = await store.db.read(both)
    assert tuple(fast) == tuple(slow) and fast.name == "INBOX" and fast.account_id == bob.id


async def test_fast_statement_errors_are_sqlalchemy_errors(store):
    broken = FastStatement(text("SELECT missing_column FROM mailboxes"))
    with pytest.raises(DBAPIError) as caught:
        await store.db.read(lambda s: broken.all(s.connection(), {}))
    assert caught.value.orig is not None
    # The store still works afterwards (the connection went back to the pool in a usable state).
    bob = await make_account(store)
    assert (await store.get_mailbox(bob.id, "INBOX")).name == "INBOX"


async def test_fast_statement_in_lists_match_connection_execute(store):
    """IN lists: one placeholder per value where the driver takes `?` (sqlite3), else Connection.execute."""
    bob = await make_account(store)
    for n in range(5):
        await store.deliver(b"Subject: %d\r\n\r\nbody\r\n" % n, [bob.id])
    inbox = await store.get_mailbox(bob.id, "INBOX")

    def both(s, uids):
        conn = s.connection()
        params = {"mailbox_id": inbox.id, "uids": uids}
        return q.ENTRY_FLAGS_IN.all(conn, params), conn.execute(q.ENTRY_FLAGS_IN.statement, params).all()

    for uids in ([3], [1, 4, 5], [2, 99], list(range(1, 200)), []):
        fast, slow = await store.db.read(lambda s: both(s, uids))
        assert [tuple(row) for row in fast] == [tuple(row) for row in slow]
        assert [row.uid for row in fast] == [u for u in uids if u <= 5]
    # A list of another length right after one kept (the SQL is per length) and a DML statement.
    await store.db.write([lambda s: q.SET_FLAGS_BY_IDS.run(s.connection(), {
        "ids": [row.id for row in q.ENTRY_FLAGS_IN.all(s.connection(), {"mailbox_id": inbox.id, "uids": [1, 2]})],
        "new_flags": 4, "new_keywords": "", "new_modseq": 9})])
    flags = {m.uid: m.flags for m in (await store.select(bob.id, "INBOX", readonly=True)).messages}
    assert flags == {1: 4, 2: 4, 3: 0, 4: 0, 5: 0}
