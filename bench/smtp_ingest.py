"""SMTP ingest benchmark: messages/s accepted over real sockets, each 250 meaning committed.

One command: `python bench/smtp_ingest.py`. For each backend (SQLite in a
temporary directory; PostgreSQL at CASELLA_TEST_PG_URL or
postgresql://postgres@127.0.0.1:5432/test, in a fresh database) it starts a
`casella serve --dev` subprocess (pytest_casella.CasellaServer), creates local
users, and drives the MX listener with 1, 10 and 50 concurrent asyncio
clients, each sending 4 KB messages in one session (MAIL/RCPT/DATA pipelined,
RFC 2920). It prints committed messages/s and the p50/p99 latency from the
final "." to its 250 — the commit latency a sending MTA sees — and the
server's CPU time per message (robust to other load on the machine), and checks that
the store holds exactly as many messages as were acknowledged. Where
Postfix's `smtp-source` is installed it also drives Casella with it (20
sessions, 4 KB) and prints that figure; if Postfix itself runs on port 25 it
measures it the same way and prints the ratio.

    python bench/smtp_ingest.py [--messages 1000] [--clients 1,10,50] [--size 4096] [--backends sqlite,postgres]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from pytest_casella import CasellaServer  # noqa: E402
from storage import MailStore  # noqa: E402

PG_URL = os.environ.get("CASELLA_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
DOMAIN = "bench.test"
USERS = 20


def make_message(size: int, n: int) -> bytes:
    header = (f"From: sender@remote.test\r\nTo: user@{DOMAIN}\r\nSubject: bench {n}\r\n"
              f"Message-ID: <{uuid.uuid4().hex}@bench>\r\nDate: Thu, 26 Nov 2026 10:00:00 +0000\r\n\r\n").encode()
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n"
    return header + line * max(1, (size - len(header)) // len(line))


class Client:
    """A minimal pipelining SMTP client on asyncio streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, host: str, port: int) -> "Client":
        reader, writer = await asyncio.open_connection(host, port)
        client = cls(reader, writer)
        await client.reply()
        client.writer.write(b"EHLO bench.client\r\n")
        await client.reply()
        return client

    async def reply(self) -> bytes:
        while True:
            line = await self.reader.readline()
            if not line:
                raise ConnectionError("server closed the connection")
            if line[3:4] != b"-":
                return line

    async def send(self, rcpt: str, body: bytes) -> float:
        self.writer.write(b"MAIL FROM:<sender@remote.test>\r\nRCPT TO:<" + rcpt.encode() + b">\r\nDATA\r\n")
        for expected in (b"250", b"250", b"354"):
            line = await self.reply()
            if not line.startswith(expected):
                raise RuntimeError(f"unexpected reply {line!r}")
        self.writer.write(body + b".\r\n")
        started = time.perf_counter()
        line = await self.reply()
        if not line.startswith(b"250"):
            raise RuntimeError(f"message refused: {line!r}")
        return time.perf_counter() - started

    async def quit(self) -> None:
        self.writer.write(b"QUIT\r\n")
        try:
            await self.reply()
        except ConnectionError:
            pass
        self.writer.close()


async def run_level(host: str, port: int, users: list[str], clients: int, total: int, size: int) -> dict:
    bodies = [make_message(size, i) for i in range(32)]
    latencies: list[float] = []
    per_client = max(1, total // clients)
    connections = await asyncio.gather(*(Client.connect(host, port) for _ in range(clients)))

    async def worker(index: int, client: Client) -> None:
        for n in range(per_client):
            k = index * per_client + n
            latencies.append(await client.send(users[k % len(users)], bodies[k % len(bodies)]))

    started = time.perf_counter()
    await asyncio.gather(*(worker(i, c) for i, c in enumerate(connections)))
    elapsed = time.perf_counter() - started
    await asyncio.gather(*(c.quit() for c in connections))
    latencies.sort()
    return {"clients": clients, "messages": len(latencies), "rate": len(latencies) / elapsed,
            "p50": statistics.median(latencies) * 1000,
            "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000}


def cpu_seconds(pid: int) -> float:
    """User+system CPU of a process (Linux /proc): the server's cost per message, whatever else runs."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def create_pg_database() -> str | None:
    import asyncpg

    name = f"casella_bench_{uuid.uuid4().hex[:8]}"

    async def create() -> None:
        conn = await asyncpg.connect(PG_URL.replace("postgresql+asyncpg://", "postgresql://"), timeout=5)
        await conn.execute(f'CREATE DATABASE "{name}"')
        await conn.close()

    try:
        asyncio.run(create())
    except Exception as exc:  # noqa: BLE001 - no PostgreSQL here: say so, bench SQLite only
        print(f"postgres: skipped ({exc})")
        return None
    return PG_URL.rsplit("/", 1)[0] + "/" + name


def drop_pg_database(url: str) -> None:
    import asyncpg

    async def drop() -> None:
        conn = await asyncpg.connect(PG_URL.replace("postgresql+asyncpg://", "postgresql://"))
        await conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
        await conn.close()

    asyncio.run(drop())


async def prepare(url: str) -> list[str]:
    store = await MailStore.open(url)
    try:
        if not await store.is_local_domain(DOMAIN):
            await store.add_domain(DOMAIN)
        users = []
        for n in range(USERS):
            address = f"user{n}@{DOMAIN}"
            if await store.get_account(address) is None:
                await store.add_account(address, "bench-password-123")
            users.append(address)
        return users
    finally:
        await store.close()


async def count_messages(url: str, users: list[str]) -> int:
    store = await MailStore.open(url)
    try:
        total = 0
        for address in users:
            account = await store.get_account(address)
            total += (await store.mailbox_status(account.id, "INBOX")).messages
        return total
    finally:
        await store.close()


def smtp_source(port: int, sessions: int = 20, messages: int = 2000, size: int = 4096) -> float | None:
    tool = shutil.which("smtp-source") or ("/usr/sbin/smtp-source" if os.path.exists("/usr/sbin/smtp-source")
                                           else None)
    if tool is None:
        return None
    started = time.perf_counter()
    subprocess.run([tool, "-s", str(sessions), "-m", str(messages), "-l", str(size), "-f", "sender@remote.test",
                    "-t", f"user0@{DOMAIN}", f"127.0.0.1:{port}"], check=True, capture_output=True, timeout=600)
    return messages / (time.perf_counter() - started)


def bench_backend(backend: str, args: argparse.Namespace) -> list[dict]:
    workdir = tempfile.mkdtemp(prefix=f"casella-bench-{backend}-")
    pg_url = create_pg_database() if backend == "postgres" else None
    if backend == "postgres" and pg_url is None:
        return []
    env = {"CASELLA_SMTP__MAX_CONNECTIONS_PER_IP": "1000", "CASELLA_SMTP__CATCH_ALL_ACCOUNT": "",
           "CASELLA_SMTP__MAX_COMMANDS_BEFORE_MAIL": "1000"}
    daemon = CasellaServer(workdir, database_url=pg_url, env=env)
    rows = []
    try:
        users = asyncio.run(prepare(daemon.database_url))
        port = daemon.ports["smtp"]
        asyncio.run(run_level(daemon.host, port, users, 4, 200, args.size))  # warm-up
        sent = 200
        for clients in args.clients:
            cpu_before = cpu_seconds(daemon.process.pid)
            row = asyncio.run(run_level(daemon.host, port, users, clients, args.messages, args.size))
            row["cpu_ms"] = (cpu_seconds(daemon.process.pid) - cpu_before) * 1000 / row["messages"]
            sent += row["messages"]
            row["backend"] = backend
            rows.append(row)
            print(f"  {backend:8} {clients:3} clients: {row['rate']:7.0f} msg/s  p50 {row['p50']:6.1f} ms  "
                  f"p99 {row['p99']:6.1f} ms  server CPU {row['cpu_ms']:.2f} ms/msg", flush=True)
        stored = asyncio.run(count_messages(daemon.database_url, users))
        if stored != sent:
            raise SystemExit(f"{backend}: {sent} messages acknowledged but {stored} in the store")
        print(f"  {backend}: {stored} messages acknowledged, {stored} in the store", flush=True)
        rate = smtp_source(port, size=args.size)
        if rate is not None:
            rows.append({"backend": backend, "clients": 20, "messages": 2000, "rate": rate, "p50": float("nan"),
                         "p99": float("nan"), "cpu_ms": float("nan"), "tool": "smtp-source"})
    finally:
        daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        if pg_url:
            drop_pg_database(pg_url)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1000, help="messages per concurrency level")
    parser.add_argument("--clients", default="1,10,50")
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--backends", default="sqlite,postgres")
    args = parser.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    print(f"SMTP ingest: {args.size} B messages, {args.messages} per level, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} (other processes share the CPUs: see CPU ms/msg)", flush=True)
    rows = []
    for backend in args.backends.split(","):
        rows.extend(bench_backend(backend, args))
    print()
    print(f"{'backend':10}{'tool':14}{'clients':>8}{'messages':>10}{'msg/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'CPU ms/msg':>12}")
    for row in rows:
        print(f"{row['backend']:10}{row.get('tool', 'asyncio'):14}{row['clients']:>8}{row['messages']:>10}"
              f"{row['rate']:>9.0f}{row['p50']:>9.1f}{row['p99']:>9.1f}{row['cpu_ms']:>12.2f}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    postfix = None
    if shutil.which("smtp-source") and shutil.which("postfix"):
        try:
            postfix = smtp_source(25, size=args.size)
        except Exception as exc:  # noqa: BLE001 - Postfix not running on 25
            print(f"postfix on :25 not measured: {exc}")
    if postfix:
        print(f"postfix (smtp-source, 20 sessions): {postfix:.0f} msg/s")
        for row in rows:
            print(f"  ratio casella/postfix {row['backend']} {row['clients']} clients: {row['rate'] / postfix:.2f}")
    elif not shutil.which("smtp-source"):
        print("smtp-source (Postfix) not installed: no side-by-side Postfix figure in this run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
