"""Engines and where SQL runs: SQLite in threads, PostgreSQL on asyncpg.

Store operations are plain synchronous functions of an ORM `Session`, so each
backend can run them the fastest way it has:

- SQLite (pysqlite): what can wait runs in threads, off the event loop. Writes
  run on one writer thread whose transactions start with `BEGIN IMMEDIATE`
  (SQLite allows one writer; this avoids lock-upgrade deadlocks), reads on a
  small pool of reader threads that WAL lets run beside it. The async aiosqlite
  bridge costs a thread hop per cursor call (about 1 ms a statement measured
  here, against 0.05 ms in a thread), which would cap group commit far below
  its goal. Every connection runs WAL, foreign keys, a busy timeout and
  `synchronous=FULL` so a commit is durable before anything is acknowledged.
- SQLite, light operations (`inline=True`: a few rows found through an index,
  as for IMAP STATUS, LIST, a small STORE): their statements run on the loop
  thread and only what can wait leaves it: the COMMIT (the fsync, and any
  checkpoint) goes to the writer thread, and a connection on the loop never
  waits for a lock (busy timeout 0: if another process holds the database,
  the operation runs in a thread instead). Under load a thread hop cost far
  more than such a statement: GIL hand-overs with the busy loop made a 0.2 ms
  read take 4 ms (imaptest, 10 clients), and IMAP sessions wait on each other's
  replies. WAL readers never wait for the writer. The setting
  `database.sqlite_inline` (on by default) sends everything to threads.
- PostgreSQL (asyncpg): `AsyncSession.run_sync`, so the same functions run
  natively async; MailStore batches writes there too (storage/writer.py), and
  `write` runs a batch without SAVEPOINTs first, as on SQLite.
"""
from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from sqlalchemy import Connection, create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DisconnectionError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session

T = TypeVar("T")
SessionFn = Callable[[Session], T]
#: (result, exception) for each function of a batch.
Outcome = tuple[Any, BaseException | None]


def normalize_url(url: str) -> str:
    """Accept the URLs people write and pick Casella's driver for them."""
    if url.startswith("sqlite+aiosqlite://"):
        url = "sqlite://" + url[len("sqlite+aiosqlite://"):]
    elif url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+asyncpg://" + url.split("://", 1)[1]
    return url


#: PostgreSQL deadlock_detected and serialization_failure: the transaction may simply be run again.
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})


def retryable(exc: BaseException) -> bool:
    """A deadlock or serialization failure (PostgreSQL), which running the operation again resolves."""
    orig = getattr(exc, "orig", None)
    state = getattr(orig, "sqlstate", None) or getattr(getattr(orig, "__cause__", None), "sqlstate", None)
    return state in RETRYABLE_SQLSTATES


class Batchable:
    """A write that runs together with its like (same `run_many`) when they sit side by side in a batch.

    `run_many(session, items)` does the work of several callers in a few statements and
    returns one result per item, in order. Alone, and in a batch's isolated rerun, it
    runs as a batch of one, so a failure still stays its caller's own.
    """

    __slots__ = ("run_many", "item")

    def __init__(self, run_many: Callable[[Session, list[Any]], list[Any]], item: Any) -> None:
        self.run_many = run_many
        self.item = item

    def __call__(self, session: Session) -> Any:
        return self.run_many(session, [self.item])[0]


def _run_batch(session: Session, fns: list[SessionFn], *, isolate: bool) -> list[Outcome]:
    """Run functions in one transaction.

    With `isolate`, each runs in a SAVEPOINT so a failure stays its own. Without it
    (the fast path: two statements fewer per operation) the first failure raises and
    the caller runs the batch again isolated. On the fast path a run of neighbouring
    Batchables with the same `run_many` goes through it in one call.
    """
    if not isolate:
        outcomes: list[Outcome] = []
        start, count = 0, len(fns)
        while start < count:
            fn = fns[start]
            end = start + 1
            if isinstance(fn, Batchable):
                while end < count and isinstance(fns[end], Batchable) and fns[end].run_many == fn.run_many:
                    end += 1
            if end - start > 1:
                results = fn.run_many(session, [other.item for other in fns[start:end]])
                outcomes.extend((result, None) for result in results)
            else:
                outcomes.append((fn(session), None))
            start = end
        return outcomes
    outcomes = []
    for fn in fns:
        try:
            with session.begin_nested():
                outcomes.append((fn(session), None))
        except Exception as exc:  # noqa: BLE001 - handed back to that caller
            outcomes.append((None, exc))
    return outcomes


class Database:
    """Where store functions run; see the module docstring."""

    url: str
    dialect: str

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    async def read(self, fn: SessionFn[T], *, inline: bool = False) -> T:
        """Run `fn` in a read transaction; `inline`: a light read (see the module docstring)."""
        raise NotImplementedError

    async def write(self, fns: list[SessionFn], *, inline: bool = False) -> list[Outcome]:
        """Run `fns` in one committed transaction. If a lone function raises, it propagates.
        `inline`: every function is light (see the module docstring)."""
        raise NotImplementedError

    async def run_connection(self, fn: Callable[[Connection], T]) -> T:
        """A plain connection in a transaction (Alembic)."""
        raise NotImplementedError

    async def dispose(self) -> None:
        raise NotImplementedError


#: Set while a light operation runs on the loop thread: its connection must not wait for a lock.
_on_loop = threading.local()
#: SQLITE_BUSY and SQLITE_LOCKED (primary codes; extended codes keep them in the low byte).
_SQLITE_BUSY_CODES = (5, 6)


#: What a busy database raises: SQLAlchemy's wrapper, or the driver's own from the BEGIN in our hook.
_BUSY_ERRORS = (OperationalError, sqlite3.OperationalError)


def _is_busy(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", exc)
    code = getattr(orig, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _SQLITE_BUSY_CODES
    return "locked" in str(orig) or "busy" in str(orig)


class SqliteDatabase(Database):
    dialect = "sqlite"

    def __init__(self, url: str, *, readers: int = 4, busy_timeout_ms: int = 10000, inline: bool = True) -> None:
        parsed = make_url(url)
        if not parsed.database or parsed.database == ":memory:":
            # Writer and readers must see one database: an in-memory one would be per connection.
            raise ValueError("SQLite needs a database file, not :memory:")
        os.makedirs(os.path.dirname(os.path.abspath(parsed.database)), exist_ok=True)
        self.url = url
        self.inline = inline
        self.writer_engine = self._engine(url, "BEGIN IMMEDIATE", busy_timeout_ms, 1)
        self.reader_engine = self._engine(url, "BEGIN", busy_timeout_ms, readers)
        # The loop thread's own reader: never one the reader threads hold (a checkout would wait).
        self.loop_reader_engine = self._engine(url, "BEGIN", busy_timeout_ms, 1)
        self._writer_thread = ThreadPoolExecutor(1, thread_name_prefix="casella-sqlite-writer")
        self._reader_threads = ThreadPoolExecutor(readers, thread_name_prefix="casella-sqlite-reader")
        # One write at a time, inline or in the writer thread: an inline write keeps the writer
        # connection while its COMMIT runs in the thread.
        self._write_lock = asyncio.Lock()

    @staticmethod
    def _engine(url: str, begin: str, busy_timeout_ms: int, size: int) -> Engine:
        engine = create_engine(url, pool_size=size, max_overflow=0,
                               connect_args={"check_same_thread": False, "timeout": busy_timeout_ms / 1000})

        @event.listens_for(engine, "connect")
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

        @event.listens_for(engine, "begin")
        def _on_begin(conn) -> None:  # noqa: ANN001
            # Straight on the driver: through exec_driver_sql this cost ~13 µs of every operation.
            driver_connection = conn.connection.driver_connection
            # On the loop thread a lock held elsewhere must fail at once (the caller then uses a thread).
            timeout = 0 if getattr(_on_loop, "active", False) else busy_timeout_ms
            info = conn.connection.info
            if info.get("busy_timeout", busy_timeout_ms) != timeout:
                driver_connection.execute(f"PRAGMA busy_timeout={int(timeout)}")
                info["busy_timeout"] = timeout
            driver_connection.execute(begin)

        return engine

    async def read(self, fn: SessionFn[T], *, inline: bool = False) -> T:
        if inline and self.inline:
            _on_loop.active = True
            try:
                with Session(self.loop_reader_engine, expire_on_commit=False) as session:
                    return fn(session)
            except _BUSY_ERRORS as exc:
                if not _is_busy(exc):
                    raise
            finally:
                _on_loop.active = False

        def work() -> T:
            with Session(self.reader_engine, expire_on_commit=False) as session:
                return fn(session)

        return await asyncio.get_running_loop().run_in_executor(self._reader_threads, work)

    async def write(self, fns: list[SessionFn], *, inline: bool = False) -> list[Outcome]:
        async with self._write_lock:
            if inline and self.inline:
                outcomes = await self._write_inline(fns)
                if outcomes is not None:
                    return outcomes
            return await self._write_in_thread(fns)

    async def _write_inline(self, fns: list[SessionFn]) -> list[Outcome] | None:
        """The statements on the loop thread, the COMMIT in the writer thread; None: run it in the thread.

        A lock held by another process, or an operation that fails, sends the batch to the thread
        (which waits for the lock, and isolates a failure in SAVEPOINTs); a lone operation's error
        is its own and propagates.
        """
        session = Session(self.writer_engine, expire_on_commit=False)
        _on_loop.active = True
        try:
            session.connection()  # BEGIN IMMEDIATE, failing at once if the database is locked
            outcomes = _run_batch(session, fns, isolate=False)
        except Exception as exc:
            session.close()
            if len(fns) > 1 or (isinstance(exc, _BUSY_ERRORS) and _is_busy(exc)):
                return None
            raise
        finally:
            _on_loop.active = False
        commit = asyncio.get_running_loop().run_in_executor(self._writer_thread, session.commit)
        try:
            await asyncio.shield(commit)
        finally:
            if commit.done():
                session.close()
            else:  # cancelled while committing: the session is the thread's until the commit ends
                commit.add_done_callback(lambda _: session.close())
        return outcomes

    async def _write_in_thread(self, fns: list[SessionFn]) -> list[Outcome]:
        def attempt(isolate: bool) -> list[Outcome]:
            with Session(self.writer_engine, expire_on_commit=False) as session:
                with session.begin():
                    return _run_batch(session, fns, isolate=isolate)

        def work() -> list[Outcome]:
            try:
                return attempt(False)
            except Exception:  # noqa: BLE001 - rolled back; a lone operation's error is its own
                if len(fns) == 1:
                    raise
                return attempt(True)

        return await asyncio.get_running_loop().run_in_executor(self._writer_thread, work)

    async def run_connection(self, fn: Callable[[Connection], T]) -> T:
        def work() -> T:
            with self.writer_engine.begin() as conn:
                return fn(conn)

        async with self._write_lock:
            return await asyncio.get_running_loop().run_in_executor(self._writer_thread, work)

    async def dispose(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._writer_thread, self.writer_engine.dispose)
        await loop.run_in_executor(self._reader_threads, self.reader_engine.dispose)
        self.loop_reader_engine.dispose()
        self._writer_thread.shutdown(wait=True)
        self._reader_threads.shutdown(wait=True)


#: A PostgreSQL connection idle longer than this is pinged before use (a busy one is not).
PING_AFTER_IDLE_SECONDS = 1.0


class PostgresDatabase(Database):
    dialect = "postgresql"

    def __init__(self, url: str, *, pool_size: int = 10, ping_after_idle: float = PING_AFTER_IDLE_SECONDS) -> None:
        self.url = url
        # Not pool_pre_ping: on asyncpg it is BEGIN, ";", ROLLBACK, three round trips before every
        # transaction (a group-commit batch is about eight in all, a read three). A connection the
        # server closed (asyncpg noticed) is replaced at checkout at no cost; one that sat idle
        # (it may have died silently) is pinged first; one handed back a moment ago is used as is.
        self.engine: AsyncEngine = create_async_engine(url, pool_size=pool_size, max_overflow=pool_size * 2)
        sync_engine = self.engine.sync_engine

        @event.listens_for(sync_engine, "checkin")
        def _on_checkin(_dbapi_connection, record) -> None:  # noqa: ANN001
            record.info["checked_in"] = time.monotonic()

        @event.listens_for(sync_engine, "checkout")
        def _on_checkout(dbapi_connection, record, _proxy) -> None:  # noqa: ANN001
            if record.driver_connection.is_closed():  # asyncpg saw the server close it (restart, kill)
                raise DisconnectionError("connection closed by the server")
            checked_in = record.info.get("checked_in")
            if checked_in is None or time.monotonic() - checked_in < ping_after_idle:
                return  # just connected, or busy a moment ago
            try:
                sync_engine.dialect.do_ping(dbapi_connection)
            except Exception as exc:  # noqa: BLE001 - the pool connects afresh (SQLAlchemy's own recipe)
                raise DisconnectionError(f"connection found dead after {time.monotonic() - checked_in:.0f}s idle") \
                    from exc

    async def read(self, fn: SessionFn[T], *, inline: bool = False) -> T:
        async with AsyncSession(self.engine, expire_on_commit=False) as session:
            return await session.run_sync(fn)

    async def write(self, fns: list[SessionFn], *, inline: bool = False) -> list[Outcome]:
        async def attempt(isolate: bool) -> list[Outcome]:
            async with AsyncSession(self.engine, expire_on_commit=False) as session:
                async with session.begin():
                    return await session.run_sync(_run_batch, fns, isolate=isolate)

        # As on SQLite: a batch runs without SAVEPOINTs (two round trips fewer per operation), and only
        # when something in it fails does it run again isolated, so the failure stays its own.
        try:
            return await attempt(False)
        except Exception:  # noqa: BLE001 - rolled back; a lone operation's error is its own
            if len(fns) == 1:
                raise
            return await attempt(True)

    async def run_connection(self, fn: Callable[[Connection], T]) -> T:
        async with self.engine.begin() as conn:
            return await conn.run_sync(fn)

    async def dispose(self) -> None:
        await self.engine.dispose()


def create_database(url: str, *, pool_size: int = 10, busy_timeout_ms: int = 10000,
                    sqlite_inline: bool = True) -> Database:
    url = normalize_url(url)
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        return SqliteDatabase(url, readers=min(pool_size, 4), busy_timeout_ms=busy_timeout_ms, inline=sqlite_inline)
    if backend == "postgresql":
        return PostgresDatabase(url, pool_size=pool_size)
    raise ValueError(f"unsupported database {backend!r}: use sqlite:///PATH or postgresql://...")
