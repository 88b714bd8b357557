"""Schema migrations (Alembic): upgrade, and compare the database with the code's head.

`casella db upgrade` calls `upgrade()`; `casella serve` calls `schema_state()`
and refuses an out-of-date schema unless `database.auto_upgrade` is set.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from .engine import Database

MIGRATIONS_DIR = os.path.join(os.path.dirname(__file__), "migrations")


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", MIGRATIONS_DIR)
    if url:
        cfg.set_main_option("sqlalchemy.url", url)
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


@dataclass(frozen=True)
class SchemaState:
    current: str | None
    head: str

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


async def schema_state(db: Database) -> SchemaState:
    current = await db.run_connection(lambda conn: MigrationContext.configure(conn).get_current_revision())
    return SchemaState(current, head_revision())


async def upgrade(db: Database, revision: str = "head") -> None:
    cfg = alembic_config()

    def run(sync_conn) -> None:  # noqa: ANN001
        cfg.attributes["connection"] = sync_conn
        command.upgrade(cfg, revision)

    await db.run_connection(run)
