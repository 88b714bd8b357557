"""Alembic environment: runs migrations on the async engine of the configured URL."""
from __future__ import annotations

import asyncio

from alembic import context
from storage.engine import create_database
from storage.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection) -> None:  # noqa: ANN001
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite", compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


async def _online() -> None:
    db = create_database(config.get_main_option("sqlalchemy.url"))
    try:
        await db.run_connection(_run)
    finally:
        await db.dispose()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif config.attributes.get("connection") is not None:
    # storage/migrate.py hands us a sync connection from inside the running loop.
    _run(config.attributes["connection"])
else:
    asyncio.run(_online())
