"""POP3 benchmark: logins per second and RETR throughput against a real `casella serve --dev`.

One command: `python bench/pop3.py`. For each backend (SQLite in a temporary
directory; PostgreSQL at CASELLA_TEST_PG_URL or postgresql://postgres@127.0.0.1:5432/test,
in a fresh database) it starts the daemon as a subprocess (POP3 listeners
only), fills mailboxes through MailStore, then measures over raw sockets
(client-side parsing kept to finding the terminating ".", so the figures are
the server's):

- logins/s: 4 parallel clients, each a full session (greeting, USER, PASS,
  QUIT) on its own account, for --seconds seconds. Logins include the maildrop
  lock (PostgreSQL: a store write to take it, one to release it; SQLite, one
  node: in process memory) and the INBOX listing;
  password checks hit the credential cache (as Dovecot's auth cache): the
  first, cold login of an account (argon2 verification) is shown apart;
- RETR of 1,000 messages of 4 KB, and of 20 messages of 1 MB, one command after
  the other in one session (as fetchmail does): messages/s and MB/s, the median
  of --rounds sessions.

Target from the issue (Dovecot on the same machine): about 2,900 messages/s
RETR in one session and 150 logins/s with 4 parallel clients.

    python bench/pop3.py [--seconds 5] [--rounds 3] [--backends sqlite,postgres]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from pytest_casella import CasellaServer  # noqa: E402
from storage import MailStore  # noqa: E402
from storage import passwords  # noqa: E402

PG_URL = os.environ.get("CASELLA_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
DOMAIN = "bench.test"
PASSWORD = "bench-password-1"
CLIENTS = 4


def message(size: int, n: int) -> bytes:
    header = (f"From: sender@example.net\r\nTo: user@{DOMAIN}\r\nSubject: bench {n}\r\n"
              f"Message-ID: <{uuid.uuid4().hex}@bench>\r\nDate: Thu, 26 Nov 2026 10:00:00 +0000\r\n\r\n").encode()
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n"
    return header + line * max(1, (size - len(header)) // len(line))


class Pop3Raw:
    """Just enough POP3 to time the server: single-line replies and dot-terminated bodies."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.line()

    def _until(self, marker: bytes) -> bytes:
        start = 0
        while True:
            index = self.buf.find(marker, start)
            if index >= 0:
                index += len(marker)
                data, self.buf = self.buf[:index], self.buf[index:]
                return data
            start = max(0, len(self.buf) - len(marker))
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("closed by server")
            self.buf += chunk

    def line(self) -> bytes:
        return self._until(b"\r\n")

    def cmd(self, text: str) -> bytes:
        self.sock.sendall(text.encode() + b"\r\n")
        reply = self.line()
        if not reply.startswith(b"+OK"):
            raise RuntimeError(f"{text.split()[0]}: {reply!r}")
        return reply

    def retr(self, number: int) -> int:
        self.cmd(f"RETR {number}")
        return len(self._until(b"\r\n.\r\n"))

    def close(self) -> None:
        self.sock.close()


def bench_logins(host: str, port: int, addresses: list[str], seconds: float) -> float:
    counts = [0] * len(addresses)
    errors: list[BaseException] = []
    deadline = time.perf_counter() + seconds

    def client(index: int) -> None:
        try:
            while counts[index] == 0 or time.perf_counter() < deadline:
                session = Pop3Raw(host, port)
                session.cmd(f"USER {addresses[index]}")
                session.cmd(f"PASS {PASSWORD}")
                session.cmd("QUIT")
                session.close()
                counts[index] += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(addresses))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"login benchmark failed: {errors[0]!r}")
    return sum(counts) / (time.perf_counter() - started)


def bench_retr(host: str, port: int, address: str) -> tuple[int, float, int]:
    """(messages, seconds, octets) for RETR of every message, one after the other."""
    session = Pop3Raw(host, port)
    session.cmd(f"USER {address}")
    count = int(session.cmd(f"PASS {PASSWORD}").split()[3])
    started = time.perf_counter()
    octets = sum(session.retr(n) for n in range(1, count + 1))
    elapsed = time.perf_counter() - started
    session.cmd("QUIT")
    session.close()
    return count, elapsed, octets


async def fill(store: MailStore, account_id: int, size: int, count: int) -> None:
    bodies = [message(size, n) for n in range(count)]
    for start in range(0, count, 50):
        await asyncio.gather(*(store.deliver(body, [account_id]) for body in bodies[start:start + 50]))


async def bench_backend(backend: str, args: argparse.Namespace) -> list[tuple[str, str]]:
    workdir = tempfile.mkdtemp(prefix=f"casella-bench-pop3-{backend}-")
    database_url, pg_name = None, None
    if backend == "postgres":
        import asyncpg

        pg_name = f"casella_bench_{uuid.uuid4().hex[:8]}"
        conn = await asyncpg.connect(PG_URL.replace("postgresql+asyncpg://", "postgresql://"))
        await conn.execute(f'CREATE DATABASE "{pg_name}"')
        await conn.close()
        database_url = PG_URL.rsplit("/", 1)[0] + "/" + pg_name
    env = {f"CASELLA_LISTENERS__{name}__ENABLED": "false"
           for name in ("SMTP", "SUBMISSION", "SUBMISSIONS", "IMAP", "IMAPS")}
    env.update({"CASELLA_SERVER__LOG_LEVEL": "WARNING", "CASELLA_POP3__MAX_CONNECTIONS_PER_IP": "1000"})
    daemon = await asyncio.to_thread(CasellaServer, workdir, database_url=database_url, env=env)
    store = await MailStore.open(daemon.database_url, auth_cache_seconds=0)
    rows = []
    try:
        if not await store.is_local_domain(DOMAIN):
            await store.add_domain(DOMAIN)
        hashed = await asyncio.to_thread(passwords.hash_password, PASSWORD)
        login_accounts = [await store.add_account(f"login{i}@{DOMAIN}", password_hash=hashed) for i in range(CLIENTS)]
        small = await store.add_account(f"small@{DOMAIN}", password_hash=hashed)
        large = await store.add_account(f"large@{DOMAIN}", password_hash=hashed)
        print(f"{backend}: filling 1,000 x 4 KB and 20 x 1 MB ...", file=sys.stderr, flush=True)
        await fill(store, small.id, 4096, 1000)
        await fill(store, large.id, 1024 * 1024, 20)
        host, port = daemon.host, daemon.ports["pop3"]
        addresses = [a.address for a in login_accounts]
        # The first login of each account verifies argon2 (slow by design); later ones hit the cache.
        first = await asyncio.to_thread(bench_logins, host, port, addresses[:1], 0)
        rows.append(("first login, argon2 verify (ms)", f"{1000 / first:,.0f}"))
        await asyncio.to_thread(bench_logins, host, port, addresses, 0)
        rate = await asyncio.to_thread(bench_logins, host, port, addresses, args.seconds)
        rows.append((f"logins/s ({CLIENTS} parallel clients)", f"{rate:,.0f}"))
        for label, account in (("RETR 1,000 x 4 KB", small), ("RETR 20 x 1 MB", large)):
            runs = [await asyncio.to_thread(bench_retr, host, port, account.address) for _ in range(args.rounds)]
            count, elapsed, octets = sorted(runs, key=lambda run: run[1])[len(runs) // 2]  # the median run
            rows.append((f"{label}: messages/s", f"{count / elapsed:,.0f}"))
            rows.append((f"{label}: MB/s", f"{octets / elapsed / 1e6:,.1f}"))
    finally:
        await store.close()
        await asyncio.to_thread(daemon.stop)
        shutil.rmtree(workdir, ignore_errors=True)
        if pg_name:
            import asyncpg

            conn = await asyncpg.connect(PG_URL.replace("postgresql+asyncpg://", "postgresql://"))
            await conn.execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
            await conn.close()
    return rows


async def main_async(args: argparse.Namespace) -> None:
    results: dict[str, list[tuple[str, str]]] = {}
    for backend in args.backends.split(","):
        try:
            results[backend] = await bench_backend(backend, args)
        except OSError as exc:
            print(f"{backend}: skipped ({exc})", file=sys.stderr)
    if not results:
        return
    backends = list(results)
    labels = [label for label, _ in results[backends[0]]]
    width = max(len(label) for label in labels)
    print(f"{'POP3':<{width}}  " + "  ".join(f"{b:>10}" for b in backends) + "  target (Dovecot)")
    targets = {labels[1]: "150", labels[2]: "2,900"}
    for index, label in enumerate(labels):
        values = "  ".join(f"{dict(results[b])[label]:>10}" for b in backends)
        print(f"{label:<{width}}  {values}  {targets.get(label, '')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of the login measurement")
    parser.add_argument("--rounds", type=int, default=3, help="RETR sessions per size; the median is shown")
    parser.add_argument("--backends", default="sqlite,postgres")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
