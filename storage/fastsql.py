"""Prebuilt statements run straight on the driver's cursor: the store's hottest lookups.

Connection.execute() builds an execution context and a Result for every call, about
20 µs on this machine, where the cursor itself takes 3; a small IMAP command pays that
three to five times. For statements whose parameters and columns are plain integers and
strings, SQLAlchemy's type processing has nothing to do, so a FastStatement runs the SQL
SQLAlchemy compiled for the dialect (once) on the DBAPI cursor of the same connection,
inside the same transaction, and returns named tuples. Expanding IN lists (`uid IN :uids`)
get one placeholder per value on drivers with `?` placeholders (sqlite3; the SQL per list
length is kept); elsewhere, and for an empty list, such a statement goes through
Connection.execute. Dates, JSON and bytes stay on Connection.execute.

Works with the stdlib sqlite3 driver and with SQLAlchemy's asyncpg adapter (its cursor
runs on the greenlet of `AsyncSession.run_sync`).
"""
from __future__ import annotations

import re
from collections import namedtuple
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import Executable


#: How SQLAlchemy marks an expanding parameter in compiled SQL.
_EXPANDING = re.compile(r"__\[POSTCOMPILE_(\w+)\]")
#: SQL is kept for IN lists up to this long (one string per length and statement).
_KEEP_EXPANDED_UP_TO = 64


class FastStatement:
    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        # dialect name -> (SQL, (parameter name, default) in order, row type, expanding names or None)
        self._compiled: dict[str, tuple[str, tuple[tuple[str, Any], ...], Any, frozenset[str] | None]] = {}
        self._expanded: dict[tuple[int, ...], str] = {}  # SQL by the lengths of the expanding lists

    def _prepare(self, conn: Connection) -> tuple[str, tuple[tuple[str, Any], ...], Any, frozenset[str] | None]:
        compiled = self.statement.compile(dialect=conn.dialect)
        defaults = compiled.params  # literals SQLAlchemy turned into parameters (`x + 1`)
        names = tuple((name, defaults.get(name)) for name in compiled.positiontup or ())
        columns = [column.key for column in getattr(self.statement, "exported_columns", ())]
        row_type = namedtuple("Row", columns, rename=True) if columns else None  # type: ignore[misc]
        expanding = frozenset(_EXPANDING.findall(compiled.string)) or None
        prepared = self._compiled[conn.dialect.name] = (compiled.string, names, row_type, expanding)
        return prepared

    def _expand(self, sql: str, names: tuple[tuple[str, Any], ...], expanding: frozenset[str],
                params: dict[str, Any]) -> tuple[str, tuple[Any, ...]]:
        lengths = tuple(len(params[name]) for name, _ in names if name in expanding)
        expanded = self._expanded.get(lengths)
        if expanded is None:
            expanded = _EXPANDING.sub(lambda match: ", ".join("?" * len(params[match.group(1)])), sql)
            if max(lengths) <= _KEEP_EXPANDED_UP_TO:  # the usual few; long lists are cheap to build next to their query
                self._expanded[lengths] = expanded
        values: list[Any] = []
        for name, default in names:
            if name in expanding:
                values.extend(params[name])
            else:
                values.append(params.get(name, default))
        return expanded, tuple(values)

    def all(self, conn: Connection, params: dict[str, Any]) -> list[Any]:
        sql, names, row_type, expanding = self._compiled.get(conn.dialect.name) or self._prepare(conn)
        if expanding is None:
            values = tuple([params.get(name, default) for name, default in names])
        elif conn.dialect.paramstyle == "qmark" and all(params[name] for name in expanding):
            sql, values = self._expand(sql, names, expanding, params)
        else:
            result = conn.execute(self.statement, params)
            return result.all() if result.returns_rows else []
        dbapi_connection = conn.connection.dbapi_connection
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(sql, values)
            if row_type is None:
                return []
            return [row_type(*row) for row in cursor.fetchall()]
        except conn.dialect.loaded_dbapi.Error as exc:
            # What Connection.execute would do: a lost connection is invalidated (the pool drops
            # it), and the error is SQLAlchemy's, with `.orig`, so deadlock retries still see it.
            disconnect = conn.dialect.is_disconnect(exc, dbapi_connection, cursor)
            if disconnect:
                conn.invalidate(exc)
            raise DBAPIError.instance(sql, values, exc, conn.dialect.loaded_dbapi.Error,
                                      connection_invalidated=disconnect, dialect=conn.dialect) from exc
        finally:
            cursor.close()

    def first(self, conn: Connection, params: dict[str, Any]) -> Any:
        rows = self.all(conn, params)
        return rows[0] if rows else None

    def one(self, conn: Connection, params: dict[str, Any]) -> Any:
        rows = self.all(conn, params)
        if len(rows) != 1:
            raise LookupError(f"expected one row, got {len(rows)}")
        return rows[0]

    def scalar_one(self, conn: Connection, params: dict[str, Any]) -> Any:
        return self.one(conn, params)[0]

    def run(self, conn: Connection, params: dict[str, Any]) -> None:
        self.all(conn, params)
