"""Outbound benchmark: messages per second from the queue to a local SMTP sink, with and without DKIM.

One command: `python bench/outbound.py`. It fills the outbound queue of a
fresh store (SQLite in a temporary file by default; `--backends
sqlite,postgres` for both) with N 4 KB messages, each to one recipient of a
domain routed by the transport map to a sink on loopback, then runs the real
OutboundWorker (claims with leases, SMTP through
aiosmtplib with the connection cache, per-recipient outcome recorded, queue row and content deleted)
until the queue is empty, and prints messages/s. The sink is Postfix's
`smtp-sink` when installed, otherwise aiosmtpd in a separate process (so the
sink does not share the worker's CPU time). DKIM runs sign with an RSA-2048
key and with RSA-2048 + Ed25519 (dual signing).

    python bench/outbound.py [--messages 2000] [--concurrency 50] [--backends sqlite]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from config import load_settings  # noqa: E402
from pytest_casella import free_port  # noqa: E402
from server.mailauth.dkim import DkimSigner, generate_key  # noqa: E402
from server.mailauth.dns import Resolver  # noqa: E402
from server.outbound import OutboundWorker  # noqa: E402
from storage import MailStore  # noqa: E402
from storage.migrate import upgrade  # noqa: E402

PG_URL = os.environ.get("CASELLA_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")

SINK = r"""
import asyncio, sys
from aiosmtpd.smtp import SMTP
class H:
    async def handle_DATA(self, server, session, envelope):
        return "250 2.0.0 ok"
async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(H(), loop=loop, hostname="sink"), "127.0.0.1", int(sys.argv[1]))
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def start_sink() -> tuple[subprocess.Popen, int, str]:
    port = free_port()
    smtp_sink = shutil.which("smtp-sink")
    if smtp_sink:
        # As root smtp-sink refuses to start without a user to drop to (it then exits at once).
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        process = subprocess.Popen([smtp_sink, *user, "-c", f"127.0.0.1:{port}", "1000"], stdout=subprocess.DEVNULL)
        time.sleep(0.5)
        return process, port, "postfix smtp-sink"
    process = subprocess.Popen([sys.executable, "-c", SINK, str(port)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    return process, port, "aiosmtpd sink (separate process)"


def message(n: int, size: int = 4096) -> bytes:
    header = (f"From: Sender <sender@bench.test>\r\nTo: <rcpt{n}@sink.test>\r\nSubject: bench {n}\r\n"
              f"Message-ID: <{uuid.uuid4().hex}@bench.test>\r\nDate: Thu, 26 Nov 2026 10:00:00 +0000\r\n"
              "MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n").encode()
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n"
    return header + line * max(1, (size - len(header)) // len(line))


async def run_case(url: str, sink_port: int, key_dir: Path, dkim: bool, args: argparse.Namespace) -> float:
    store = await MailStore.open(url, auth_cache_seconds=0)
    try:
        await upgrade(store.db)
        bodies = [message(i) for i in range(32)]
        for start in range(0, args.messages, 100):
            await asyncio.gather(*(store.deliver(bodies[n % 32], [], outbound_from="sender@bench.test",
                                                 outbound_to=[f"rcpt{n}@sink.test"])
                                   for n in range(start, min(start + 100, args.messages))))
        settings = load_settings(overrides={
            "server": {"hostname": "bench.test"},
            "outbound": {"concurrency": args.concurrency, "transport_map": {"sink.test": f"[127.0.0.1]:{sink_port}"},
                         "starttls": False, "poll_interval": 0.05},
            "dkim": {"enabled": dkim, "key_dir": str(key_dir)}})
        worker = OutboundWorker(store, settings, Resolver(["127.0.0.1"], 53, 1), DkimSigner(key_dir, dkim),
                                worker_id="bench")
        started = time.perf_counter()
        worker.start()  # the daemon's own loop: claims, concurrency, sleeps
        while worker.delivered + worker.bounced < args.messages:
            await asyncio.sleep(0.02)
        await worker.close(5)
        elapsed = time.perf_counter() - started
        assert worker.delivered == args.messages, (worker.delivered, worker.bounced, worker.deferred)
        return args.messages / elapsed
    finally:
        await store.close()


async def fresh_url(backend: str, tmp: str) -> tuple[str, str | None]:
    if backend == "sqlite":
        return f"sqlite:///{tmp}/bench-{uuid.uuid4().hex[:6]}.db", None
    import asyncpg

    name = f"casella_bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(PG_URL)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    return PG_URL.rsplit("/", 1)[0] + "/" + name, name


async def drop(name: str | None) -> None:
    if name:
        import asyncpg

        conn = await asyncpg.connect(PG_URL)
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--backends", default="sqlite")
    args = parser.parse_args()
    sink, port, sink_name = start_sink()
    tmp = tempfile.mkdtemp(prefix="casella-bench-outbound-")
    rsa_dir, dual_dir, none_dir = Path(tmp, "rsa"), Path(tmp, "dual"), Path(tmp, "none")
    generate_key(rsa_dir, "bench.test", "rsa", "rsa-sha256", 2048)
    generate_key(dual_dir, "bench.test", "rsa", "rsa-sha256", 2048)
    generate_key(dual_dir, "bench.test", "ed", "ed25519-sha256")
    print(f"sink: {sink_name}; {args.messages} messages of 4 KB, concurrency {args.concurrency}, "
          f"connections cached for the next message")
    try:
        for backend in args.backends.split(","):
            for label, key_dir, dkim in (("no DKIM", none_dir, False), ("DKIM rsa-sha256", rsa_dir, True),
                                         ("DKIM rsa + ed25519", dual_dir, True)):
                url, name = await fresh_url(backend, tmp)
                try:
                    rate = await run_case(url, port, key_dir, dkim, args)
                finally:
                    await drop(name)
                print(f"{backend:9s} {label:20s} {rate:8.0f} messages/s")
    finally:
        sink.terminate()
        sink.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
