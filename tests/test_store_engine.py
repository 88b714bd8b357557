"""Where SQL runs (storage/engine.py): PostgreSQL connections that died while idle in the pool."""
from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from storage import MailStore
from storage.engine import PostgresDatabase, normalize_url
from storage.migrate import upgrade

from .test_store_uids import RAW, make_account


async def _terminate_backends(url: str) -> int:
    """What a PostgreSQL restart does to our pooled connections: every backend of the database goes."""
    parsed = make_url(url)
    dsn = parsed.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn)
    try:
        return len(await conn.fetch("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                    "WHERE datname = $1 AND pid <> pg_backend_pid()", parsed.database))
    finally:
        await conn.close()


async def test_an_idle_connection_killed_under_the_pool_is_replaced_before_use(database_url):
    if not database_url.startswith("postgresql"):
        pytest.skip("the pool's ping is PostgreSQL's (SQLite has no server to lose)")
    # ping_after_idle=0: every checkout counts as after an idle spell, as any will after a quiet second.
    store = MailStore(PostgresDatabase(normalize_url(database_url), ping_after_idle=0))
    try:
        await upgrade(store.db)
        account = await make_account(store)
        await store.deliver(RAW, [account.id])
        assert await _terminate_backends(database_url) >= 1
        assert (await store.mailbox_status(account.id, "INBOX")).messages == 1  # a read
        assert (await store.deliver(RAW, [account.id])).deliveries[0].uid == 2  # and a write
    finally:
        await store.close()
