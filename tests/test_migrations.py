"""The schema comes from Alembic, and the models and the migrations agree (no autogenerate diff)."""
from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from storage.migrate import head_revision, schema_state
from storage.models import Base


async def test_upgrade_reaches_head_and_autogenerate_finds_no_diff(store):
    state = await schema_state(store.db)
    assert state.up_to_date and state.current == head_revision()

    def diff(conn):
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)

    assert await store.db.run_connection(diff) == []


async def test_0002_carries_subscribed_flags_over(tmp_path):
    """A 0001 database keeps its subscriptions through the move to the subscriptions table."""
    from sqlalchemy import text

    from storage.engine import create_database
    from storage.migrate import upgrade

    db = create_database(f"sqlite+aiosqlite:///{tmp_path / 'old.db'}")
    try:
        await upgrade(db, "0001")

        def seed(conn):
            conn.execute(text("INSERT INTO domains (id, name, created_at) VALUES (1, 'x.test', '2026-01-01')"))
            conn.execute(text("INSERT INTO accounts (id, domain_id, address, password_hash, used_bytes, "
                              "last_uidvalidity, created_at) VALUES (1, 1, 'a@x.test', '', 0, 0, '2026-01-01')"))
            for name, subscribed in (("INBOX", 1), ("Old", 0), ("Kept", 1)):
                conn.execute(text(
                    "INSERT INTO mailboxes (account_id, name, uidvalidity, uidnext, highest_modseq, "
                    "first_recent_uid, subscribed, created_at) VALUES (1, :n, 1, 1, 1, 1, :s, '2026-01-01')"),
                    {"n": name, "s": subscribed})

        await db.run_connection(seed)
        await upgrade(db)
        rows = await db.run_connection(
            lambda conn: conn.execute(text("SELECT name FROM subscriptions ORDER BY name")).scalars().all())
        assert rows == ["INBOX", "Kept"]
    finally:
        await db.dispose()
