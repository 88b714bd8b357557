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
