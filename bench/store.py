"""Store benchmark: durable deliveries per second through MailStore.deliver().

One command: `python bench/store.py` (or `make bench`). For each backend
(SQLite in a temporary file; PostgreSQL at CASELLA_TEST_PG_URL or
postgresql://postgres@127.0.0.1:5432/test, in a fresh database) it runs N
concurrent writers delivering 4 KB and 100 KB messages into one mailbox and
spread over 100 mailboxes, and prints messages/s with the median of several
rounds. Every delivery returns only after its transaction committed.

    python bench/store.py [--seconds 3] [--rounds 3] [--writers 20] [--backends sqlite,postgres]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from storage import MailStore  # noqa: E402
from storage.migrate import upgrade  # noqa: E402

PG_URL = os.environ.get("CASELLA_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def message(size: int, n: int) -> bytes:
    header = (f"From: sender@example.net\r\nTo: user@bench.test\r\nSubject: bench {n}\r\n"
              f"Message-ID: <{uuid.uuid4().hex}@bench>\r\nDate: Thu, 26 Nov 2026 10:00:00 +0000\r\n\r\n").encode()
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n"
    return header + line * max(1, (size - len(header)) // len(line))


async def run_case(store: MailStore, account_ids: list[int], size: int, writers: int, seconds: float) -> float:
    bodies = [message(size, i) for i in range(64)]
    count = 0
    deadline = time.perf_counter() + seconds

    async def writer(index: int) -> None:
        nonlocal count
        n = index
        while time.perf_counter() < deadline:
            await store.deliver(bodies[n % len(bodies)], [account_ids[n % len(account_ids)]])
            count += 1
            n += writers

    started = time.perf_counter()
    await asyncio.gather(*(writer(i) for i in range(writers)))
    return count / (time.perf_counter() - started)


async def bench_backend(name: str, url: str, args: argparse.Namespace, **store_options) -> list[tuple]:
    store = await MailStore.open(url, **store_options)
    rows = []
    try:
        await upgrade(store.db)
        await store.add_domain("bench.test")
        accounts = [await store.add_account(f"user{i}@bench.test", "bench-password") for i in range(100)]
        ids = [a.id for a in accounts]
        for size in (4 * 1024, 100 * 1024):
            for label, targets in (("1 mailbox", ids[:1]), ("100 mailboxes", ids)):
                rates = [await run_case(store, targets, size, args.writers, args.seconds) for _ in range(args.rounds)]
                rows.append((name, f"{size // 1024} KB", label, args.writers, statistics.median(rates)))
                print(f"  {name:<22} {size // 1024:>4} KB  {label:<14} {statistics.median(rates):8.0f} msg/s",
                      flush=True)
    finally:
        await store.close()
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--writers", type=int, default=20)
    parser.add_argument("--backends", default="sqlite,postgres")
    args = parser.parse_args()
    rows = []
    backends = args.backends.split(",")
    if "sqlite" in backends:
        with tempfile.TemporaryDirectory() as tmp:
            rows += await bench_backend("sqlite (group commit)", f"sqlite:///{tmp}/bench.db", args)
    if "postgres" in backends:
        import asyncpg

        for label, group in (("postgres", False), ("postgres (group commit)", True)):
            db_name = f"casella_bench_{uuid.uuid4().hex[:8]}"
            try:
                admin = await asyncpg.connect(PG_URL.replace("+asyncpg", ""))
            except Exception as exc:  # noqa: BLE001
                print(f"PostgreSQL not reachable at {PG_URL}: {exc}; skipped")
                break
            await admin.execute(f'CREATE DATABASE "{db_name}"')
            try:
                rows += await bench_backend(label, PG_URL.rsplit("/", 1)[0] + "/" + db_name, args,
                                            group_commit=group)
            finally:
                await admin.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
                await admin.close()

    print()
    print(f"Durable deliveries per second, {args.writers} concurrent writers, median of {args.rounds} x "
          f"{args.seconds:.0f}s (goal: >= 1000 msg/s of 4 KB on SQLite; Postfix->Dovecot here ~320)")
    print(f"{'backend':<24} {'size':>6}  {'target':<14} {'msg/s':>8}  {'vs 320':>7}")
    for name, size, label, _writers, rate in rows:
        print(f"{name:<24} {size:>6}  {label:<14} {rate:8.0f}  {rate / 320:6.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
