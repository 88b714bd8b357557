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
