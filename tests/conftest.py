"""Shared fixtures: both backends (SQLite, PostgreSQL), a daemon per backend, fresh accounts.

PostgreSQL tests read CASELLA_TEST_PG_URL (set by .ci/run); without it they try
postgresql://postgres@127.0.0.1:5432/test and skip, saying why, if nothing answers.
Each PostgreSQL use gets its own freshly created database, dropped afterwards.
"""
from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import tempfile
import threading
import uuid
from dataclasses import dataclass
from typing import Any, Coroutine

import pytest

from pytest_casella import CasellaServer

PG_URL = os.environ.get("CASELLA_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ("sqlite", "postgres")
TEST_DOMAIN = "example.test"
TEST_PASSWORD = "correct-horse-battery"

_pg_checked: dict[str, str | None] = {}


def _pg_unavailable() -> str | None:
    """None if PostgreSQL answers, else why not (cached)."""
    if "reason" not in _pg_checked:
        async def probe() -> None:
            import asyncpg

            conn = await asyncpg.connect(_dsn(PG_URL), timeout=5)
            await conn.close()

        try:
            asyncio.run(probe())
            _pg_checked["reason"] = None
        except Exception as exc:  # noqa: BLE001 - any failure means "not here"
            _pg_checked["reason"] = f"PostgreSQL not reachable at {PG_URL}: {exc}"
    return _pg_checked["reason"]


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


def create_pg_database() -> str:
    """A new empty database on the test server; returns its URL."""
    name = f"casella_t_{uuid.uuid4().hex[:10]}"

    async def create() -> None:
        import asyncpg

        conn = await asyncpg.connect(_dsn(PG_URL))
        await conn.execute(f'CREATE DATABASE "{name}"')
        await conn.close()

    asyncio.run(create())
    return PG_URL.rsplit("/", 1)[0] + "/" + name


def drop_pg_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]

    async def drop() -> None:
        import asyncpg

        conn = await asyncpg.connect(_dsn(PG_URL))
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()

    try:
        asyncio.run(drop())
    except Exception:  # noqa: BLE001 - best effort cleanup
        pass


@pytest.fixture(params=BACKENDS)
def database_url(request, tmp_path):
    """A fresh, empty database URL on each backend (function scope)."""
    if request.param == "postgres":
        reason = _pg_unavailable()
        if reason:
            pytest.skip(reason)
        url = create_pg_database()
        yield url
        drop_pg_database(url)
    else:
        yield f"sqlite:///{tmp_path}/casella.db"


@pytest.fixture
async def store(database_url):
    """A MailStore on a fresh database whose schema was built by `alembic upgrade head`."""
    from storage import MailStore
    from storage.migrate import upgrade

    mail_store = await MailStore.open(database_url, cross_process_events=True, auth_cache_seconds=0)
    await upgrade(mail_store.db)
    yield mail_store
    await mail_store.close()


class AdminStore:
    """A MailStore on its own loop in a thread, so sync tests can prepare data fast."""

    def __init__(self, url: str) -> None:
        from storage import MailStore

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.store = self.run(MailStore.open(url, auth_cache_seconds=0))

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.run(self.store.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@dataclass
class User:
    address: str
    password: str
    id: int


class Server:
    """A running daemon on one backend, with an admin store on the same database."""

    _counter = itertools.count(1)

    def __init__(self, backend: str, daemon: CasellaServer, admin: AdminStore) -> None:
        self.backend = backend
        self.daemon = daemon
        self.admin = admin
        self.host = daemon.host
        self.ports = daemon.ports

    def port(self, name: str) -> int:
        return self.ports[name]

    def new_user(self, password: str = TEST_PASSWORD, *, quota_bytes: int | None = None) -> User:
        address = f"u{next(self._counter)}-{uuid.uuid4().hex[:6]}@{TEST_DOMAIN}"
        account = self.admin.run(self.admin.store.add_account(address, password, quota_bytes=quota_bytes))
        return User(address, password, account.id)

    @property
    def cert_file(self) -> str:
        return self.daemon.cert_file


def _start_server(backend: str, env: dict[str, str] | None = None) -> tuple[Server, str | None, str]:
    workdir = tempfile.mkdtemp(prefix=f"casella-{backend}-")
    pg_url = None
    if backend == "postgres":
        reason = _pg_unavailable()
        if reason:
            pytest.skip(reason)
        pg_url = create_pg_database()
    base_env = {
        # Keep throttling short so failure tests do not slow the suite; tests that
        # cross these limits start their own server with their own values.
        "CASELLA_AUTH__FAILURE_DELAY_SECONDS": "0.2",
        "CASELLA_AUTH__FAILURES_BEFORE_LOCKOUT": "1000",
        "CASELLA_SERVER__SHUTDOWN_TIMEOUT": "3",
    }
    base_env.update(env or {})
    daemon = CasellaServer(workdir, database_url=pg_url, env=base_env)
    admin = AdminStore(daemon.database_url)
    if not admin.run(admin.store.is_local_domain(TEST_DOMAIN)):
        admin.run(admin.store.add_domain(TEST_DOMAIN))
    return Server(backend, daemon, admin), pg_url, workdir


def _stop_server(server: Server, pg_url: str | None, workdir: str) -> None:
    server.admin.close()
    server.daemon.stop()
    if pg_url:
        drop_pg_database(pg_url)
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session", params=BACKENDS)
def server(request):
    """One daemon per backend for the whole session; tests isolate by fresh accounts."""
    srv, pg_url, workdir = _start_server(request.param)
    yield srv
    _stop_server(srv, pg_url, workdir)


@pytest.fixture
def user(server) -> User:
    return server.new_user()


@pytest.fixture
def start_server():
    """Start a dedicated daemon with extra CASELLA_* settings (for limit tests)."""
    started = []

    def start(backend: str = "sqlite", **env: str) -> Server:
        srv, pg_url, workdir = _start_server(backend, env)
        started.append((srv, pg_url, workdir))
        return srv

    yield start
    for srv, pg_url, workdir in started:
        _stop_server(srv, pg_url, workdir)
