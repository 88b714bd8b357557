"""Engine creation: SQLite pragmas and transaction control, PostgreSQL options.

SQLite allows one writer at a time, so Casella keeps two engines on it: one
writer connection whose transactions start with `BEGIN IMMEDIATE` (no lock
upgrade deadlocks) and a small pool of readers that WAL lets run beside it.
Every connection runs WAL, foreign keys, a busy timeout and `synchronous=FULL`
so that a commit is durable before anything is acknowledged.
PostgreSQL (asyncpg) uses one pool for both.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


@dataclass
class Database:
    url: str
    writer: AsyncEngine
    reader: AsyncEngine

    @property
    def is_sqlite(self) -> bool:
        return self.writer.dialect.name == "sqlite"

    @property
    def is_postgres(self) -> bool:
        return self.writer.dialect.name == "postgresql"

    async def dispose(self) -> None:
        await self.writer.dispose()
        if self.reader is not self.writer:
            await self.reader.dispose()


def normalize_url(url: str) -> str:
    """Accept the URLs people write and pick the async driver for them."""
    if url.startswith("sqlite:///") or url == "sqlite://":
        url = "sqlite+aiosqlite" + url[len("sqlite"):]
    elif url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+asyncpg://" + url.split("://", 1)[1]
    return url


def sync_url(url: str) -> str:
    """The same database for synchronous tools (Alembic's offline checks)."""
    parsed = make_url(normalize_url(url))
    if parsed.get_backend_name() == "sqlite":
        return parsed.set(drivername="sqlite").render_as_string(hide_password=False)
    return parsed.render_as_string(hide_password=False)


def _sqlite_hooks(engine: AsyncEngine, begin: str, busy_timeout_ms: int) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # noqa: ANN001
        # Take BEGIN away from the driver so SAVEPOINTs and reads join real transactions
        # (SQLAlchemy docs, "Enabling Non-Legacy SQLite Transactional Modes").
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        # FULL: a commit is on disk before we acknowledge it (DESIGN.md invariant 1).
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn) -> None:  # noqa: ANN001
        conn.exec_driver_sql(begin)


def create_database(url: str, *, pool_size: int = 10, busy_timeout_ms: int = 10000) -> Database:
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            # Writer and readers must see one database: an in-memory one would be per connection.
            raise ValueError("SQLite needs a database file, not :memory:")
        os.makedirs(os.path.dirname(os.path.abspath(parsed.database)), exist_ok=True)
        writer = create_async_engine(url, pool_size=1, max_overflow=0)
        _sqlite_hooks(writer, "BEGIN IMMEDIATE", busy_timeout_ms)
        reader = create_async_engine(url, pool_size=pool_size, max_overflow=pool_size)
        _sqlite_hooks(reader, "BEGIN", busy_timeout_ms)
        return Database(url, writer, reader)
    engine = create_async_engine(url, pool_size=pool_size, max_overflow=pool_size * 2, pool_pre_ping=True)
    return Database(url, engine, engine)
