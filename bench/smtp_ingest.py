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
the store holds exactly as many messages as were acknowledged.

Where Postfix's `smtp-source` is installed it also drives Casella with it
(20 sessions, 4 KB payload, no pipelining), once with a new connection per
message (smtp-source's default) and once reusing each session (-d), and checks
that the INBOX grew by exactly the number of 250s smtp-source counted. Where
Postfix itself is installed and the bench runs as root, it starts a private
Postfix instance (config, queue and data directories in a temporary
directory, smtpd on a free 127.0.0.1 port, no port 25, no system daemon),
drives it with the same command, alternating Casella and Postfix runs
(--rounds each), and prints both medians, the ratio Casella/Postfix and the
load average. Postfix's 250 means the message is in its queue, fsync'd; it then
hands it to discard(8) (default) or to virtual(8) writing a Maildir
(--postfix-delivery maildir), after the timed window: the bench waits for the
queue to drain, and checks every accepted message was delivered, before the
next run. Casella's 250 means committed to the mailbox.

    python bench/smtp_ingest.py [--messages 1000] [--clients 1,10,50] [--size 4096] [--backends sqlite,postgres]
        [--source-messages 2000] [--source-sessions 20] [--rounds 3] [--postfix-delivery discard|maildir]

`--clients ""` skips the asyncio clients (smtp-source comparison only).
"""
from __future__ import annotations

import argparse
import asyncio
import grp
import os
import pwd
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from proctree import tree_cpu_seconds  # noqa: E402 (bench/, beside this script)
from pytest_casella import CasellaServer, free_port  # noqa: E402
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


async def inbox_count(url: str, address: str) -> int:
    store = await MailStore.open(url)
    try:
        account = await store.get_account(address)
        return (await store.mailbox_status(account.id, "INBOX")).messages
    finally:
        await store.close()


def find_tool(name: str) -> str | None:
    """Postfix puts its tools in /usr/sbin, often not on a non-root PATH."""
    found = shutil.which(name)
    if found:
        return found
    return f"/usr/sbin/{name}" if os.access(f"/usr/sbin/{name}", os.X_OK) else None


SMTP_SOURCE = find_tool("smtp-source")
POSTFIX = find_tool("postfix")
POSTCONF = find_tool("postconf")
SOURCE_RCPT = f"user0@{DOMAIN}"
# smtp-source's default is a new connection (HELO ... QUIT) per message; -d keeps each session open.
SOURCE_MODES = (("new connection per message", []), ("session reused (-d)", ["-d"]))


def source_command(port: int | str, args: argparse.Namespace, extra: list[str]) -> list[str]:
    return [SMTP_SOURCE or "smtp-source", *extra, "-c", "-l", str(args.size), "-m", str(args.source_messages),
            "-s", str(args.source_sessions), "-f", "sender@remote.test", "-t", SOURCE_RCPT, f"127.0.0.1:{port}"]


def run_smtp_source(port: int, args: argparse.Namespace, extra: list[str], messages: int | None = None) -> tuple[float, int]:
    """Messages/s for one smtp-source run, and how many DATA it saw completed (its -c counter)."""
    command = source_command(port, args, extra)
    if messages is not None:
        command[command.index("-m") + 1] = str(messages)
    total = int(command[command.index("-m") + 1])
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        # smtp-source gives up on the first unexpected reply (no -A): a 4xx/5xx fails the run loudly.
        raise RuntimeError(f"smtp-source exited {done.returncode}: {done.stderr.strip()[-400:]}")
    numbers = re.findall(r"\d+", done.stdout)
    completed = int(numbers[-1]) if numbers else 0
    if completed != total:
        raise RuntimeError(f"smtp-source completed {completed} of {total} messages")
    return total / elapsed, completed


class PostfixInstance:
    """A private Postfix (not the system's): everything in a temporary directory, smtpd on 127.0.0.1:free port.

    Postfix's daemons run as the `postfix` user, so the bench must run as root; the queue is on
    the same filesystem as Casella's SQLite file, and Postfix fsyncs each queue file before its 250.
    """

    def __init__(self, delivery: str) -> None:
        self.delivery = delivery
        self.root = tempfile.mkdtemp(prefix="casella-bench-postfix-")
        os.chmod(self.root, 0o755)  # the postfix user must reach its queue and data directories
        self.etc = os.path.join(self.root, "etc")
        self.spool = os.path.join(self.root, "spool")
        self.maillog = os.path.join(self.root, "maillog")
        self.port = free_port()
        self.master_pid: int | None = None
        self.delivered_before = 0
        for name in ("etc", "spool", "data", "vmail"):
            os.makedirs(os.path.join(self.root, name))
        shutil.chown(os.path.join(self.root, "data"), "postfix", "postfix")
        shutil.chown(os.path.join(self.root, "vmail"), "nobody", "nogroup")
        shutil.copy("/usr/share/postfix/master.cf.dist", os.path.join(self.etc, "master.cf"))
        locals_ = ", ".join(f"user{n}=ok" for n in range(USERS))
        mailboxes = ", ".join(f"user{n}@{DOMAIN}={DOMAIN}/user{n}/" for n in range(USERS))
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": self.spool,
            "data_directory": os.path.join(self.root, "data"),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "postfix-bench.localdomain",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "alias_maps": "",
            "alias_database": "",
            "biff": "no",
            "maillog_file": self.maillog,
            "maillog_file_prefixes": self.root,
        }
        if delivery == "maildir":
            # virtual(8) writes Maildir files (fsync'd) as uid nobody, without needing system users.
            settings.update({
                "mydestination": "", "virtual_mailbox_domains": DOMAIN,
                "virtual_mailbox_base": os.path.join(self.root, "vmail"),
                "virtual_mailbox_maps": f"inline:{{{mailboxes}}}",
                "virtual_uid_maps": f"static:{pwd.getpwnam('nobody').pw_uid}",
                "virtual_gid_maps": f"static:{grp.getgrnam('nogroup').gr_gid}",
            })
        else:
            # Recipients checked against a table as Casella checks its accounts; then thrown away.
            settings.update({"mydestination": DOMAIN, "local_recipient_maps": f"inline:{{{locals_}}}",
                             "local_transport": "discard:"})
        with open(os.path.join(self.etc, "main.cf"), "w") as handle:
            handle.writelines(f"{key} = {value}\n" for key, value in settings.items())
        self.postconf("-F", "*/*/chroot = n")  # a chroot would need copies of /etc files in the queue dir
        self.postconf("-MX", "smtp/inet")
        self.postconf("-M", f"127.0.0.1:{self.port}/inet = 127.0.0.1:{self.port} inet n - n - - smtpd")

    def postconf(self, *argv: str) -> None:
        subprocess.run([POSTCONF or "postconf", "-c", self.etc, *argv], check=True, capture_output=True, text=True)

    def start(self) -> None:
        done = subprocess.run([POSTFIX or "postfix", "-c", self.etc, "start"], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"postfix start failed: {done.stderr.strip()} {self.log_tail()}")
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postfix smtpd not listening on {self.port}: {self.log_tail()}")
                time.sleep(0.1)
        with open(os.path.join(self.spool, "pid", "master.pid")) as handle:
            self.master_pid = int(handle.read().strip())

    def log_tail(self) -> str:
        try:
            with open(self.maillog) as handle:
                return " | ".join(line.strip() for line in handle.readlines()[-5:])
        except OSError:
            return ""

    def delivered(self) -> int:
        try:
            with open(self.maillog) as handle:
                text = handle.read()
        except OSError:
            return 0
        if "status=bounced" in text or "status=deferred" in text:
            raise RuntimeError(f"postfix did not deliver everything: {self.log_tail()}")
        return text.count(" status=sent ")

    def queued(self) -> int:
        return sum(len(files) for queue in ("maildrop", "incoming", "active", "deferred", "hold")
                   for _, _, files in os.walk(os.path.join(self.spool, queue)))

    def drain(self, accepted: int, timeout: float = 120.0) -> None:
        """Wait (untimed) until every message accepted since the last drain was delivered."""
        deadline = time.monotonic() + timeout
        while self.delivered() - self.delivered_before < accepted or self.queued():
            if time.monotonic() > deadline:
                raise RuntimeError(f"postfix: {accepted} accepted, {self.delivered() - self.delivered_before} "
                                   f"delivered, {self.queued()} still queued after {timeout:.0f} s")
            time.sleep(0.2)
        self.delivered_before = self.delivered()

    def cpu(self) -> float:
        return tree_cpu_seconds(self.master_pid) if self.master_pid else float("nan")

    def stop(self) -> None:
        subprocess.run([POSTFIX or "postfix", "-c", self.etc, "stop"], capture_output=True, timeout=60)
        if self.master_pid:
            deadline = time.monotonic() + 15
            while os.path.exists(f"/proc/{self.master_pid}") and time.monotonic() < deadline:
                time.sleep(0.1)
            if os.path.exists(f"/proc/{self.master_pid}"):
                subprocess.run([POSTFIX or "postfix", "-c", self.etc, "abort"], capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


def start_postfix(args: argparse.Namespace) -> PostfixInstance | None:
    if SMTP_SOURCE is None:
        return None
    if POSTFIX is None or POSTCONF is None or not os.path.exists("/usr/share/postfix/master.cf.dist"):
        print("postfix: not installed (Debian package `postfix`): no side-by-side Postfix figure in this run")
        return None
    if os.geteuid() != 0:
        print("postfix: installed, but a private instance needs root (its daemons run as `postfix`): skipped")
        return None
    instance = PostfixInstance(args.postfix_delivery)
    try:
        instance.start()
        run_smtp_source(instance.port, args, [], messages=200)  # warm-up: first forks, first queue files
        instance.drain(200)
    except Exception:
        instance.stop()
        raise
    what = ("discard(8) throws it away" if args.postfix_delivery == "discard"
            else "virtual(8) writes it to a Maildir")
    print(f"postfix {subprocess.run([POSTCONF, '-d', '-h', 'mail_version'], capture_output=True, text=True).stdout.strip()}: "
          f"private instance in {instance.root}, smtpd on 127.0.0.1:{instance.port}; its 250 = queued and "
          f"fsync'd, then {what} after the timed window (waited for, untimed)", flush=True)
    return instance


def source_comparison(backend: str, daemon: CasellaServer, postfix: PostfixInstance | None,
                      args: argparse.Namespace) -> list[dict]:
    """Alternate Casella and Postfix runs of the same smtp-source command; one row per mode."""
    rows = []
    port = daemon.ports["smtp"]
    for mode, extra in SOURCE_MODES:
        runs: dict[str, list[float]] = {"casella": [], "postfix": []}
        cpu: dict[str, list[float]] = {"casella": [], "postfix": []}
        loads = []
        for _ in range(args.rounds):
            before = asyncio.run(inbox_count(daemon.database_url, SOURCE_RCPT))
            cpu_before = cpu_seconds(daemon.process.pid)
            rate, completed = run_smtp_source(port, args, extra)
            cpu["casella"].append((cpu_seconds(daemon.process.pid) - cpu_before) * 1000 / completed)
            committed = asyncio.run(inbox_count(daemon.database_url, SOURCE_RCPT)) - before
            if committed != completed:
                raise SystemExit(f"{backend}: smtp-source got {completed} 250s but the INBOX grew by {committed}")
            runs["casella"].append(rate)
            if postfix is not None:
                cpu_before = postfix.cpu()
                rate, completed = run_smtp_source(postfix.port, args, extra)
                postfix.drain(completed)  # delivery CPU is counted below, not its time
                cpu["postfix"].append((postfix.cpu() - cpu_before) * 1000 / completed)
                runs["postfix"].append(rate)
            loads.append(os.getloadavg()[0])
        line = (f"  {backend:8} smtp-source {mode:27}: casella {'/'.join(f'{r:.0f}' for r in runs['casella'])} msg/s")
        if postfix is not None:
            line += f", postfix {'/'.join(f'{r:.0f}' for r in runs['postfix'])} msg/s"
        print(line + f"  (load {'/'.join(f'{load:.1f}' for load in loads)})", flush=True)
        row = {"backend": backend, "mode": mode, "casella": statistics.median(runs["casella"]),
               "casella_cpu": statistics.median(cpu["casella"]), "load": loads, "casella_runs": runs["casella"]}
        if postfix is not None:
            row.update({"postfix": statistics.median(runs["postfix"]), "postfix_cpu": statistics.median(cpu["postfix"]),
                        "postfix_runs": runs["postfix"]})
        rows.append(row)
    return rows


def bench_backend(backend: str, args: argparse.Namespace, postfix: PostfixInstance | None) -> tuple[list[dict], list[dict]]:
    workdir = tempfile.mkdtemp(prefix=f"casella-bench-{backend}-")
    pg_url = create_pg_database() if backend == "postgres" else None
    if backend == "postgres" and pg_url is None:
        return [], []
    env = {"CASELLA_SMTP__MAX_CONNECTIONS_PER_IP": "1000", "CASELLA_SMTP__CATCH_ALL_ACCOUNT": "",
           "CASELLA_SMTP__MAX_COMMANDS_BEFORE_MAIL": "1000"}
    daemon = CasellaServer(workdir, database_url=pg_url, env=env)
    rows, source_rows = [], []
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
        if SMTP_SOURCE is not None:
            source_rows = source_comparison(backend, daemon, postfix, args)
    finally:
        daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        if pg_url:
            drop_pg_database(pg_url)
    return rows, source_rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1000, help="messages per concurrency level")
    parser.add_argument("--clients", default="1,10,50", help='asyncio client levels; "" for none')
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--source-messages", type=int, default=2000, help="messages per smtp-source run")
    parser.add_argument("--source-sessions", type=int, default=20, help="smtp-source -s")
    parser.add_argument("--rounds", type=int, default=3, help="smtp-source runs per server, alternating")
    parser.add_argument("--postfix-delivery", choices=("discard", "maildir"), default="discard",
                        help="what the private Postfix does with a queued message, after its 250")
    args = parser.parse_args()
    args.clients = [int(c) for c in args.clients.split(",") if c.strip()]
    print(f"SMTP ingest: {args.size} B messages, {args.messages} per level, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} (other processes share the CPUs: see CPU ms/msg)", flush=True)
    if SMTP_SOURCE is None:
        print("smtp-source (Debian package `postfix`) not installed: no smtp-source or Postfix figures in this run")
    else:
        print(f"smtp-source command: {' '.join(source_command('PORT', args, []))} "
              f"(and the same with -d)", flush=True)
    postfix = start_postfix(args)
    rows, source_rows = [], []
    try:
        for backend in args.backends.split(","):
            got, source = bench_backend(backend, args, postfix)
            rows.extend(got)
            source_rows.extend(source)
    finally:
        if postfix is not None:
            postfix.stop()
    if rows:
        print(f"\n{'backend':10}{'clients':>8}{'messages':>10}{'msg/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'CPU ms/msg':>12}")
        for row in rows:
            print(f"{row['backend']:10}{row['clients']:>8}{row['messages']:>10}"
                  f"{row['rate']:>9.0f}{row['p50']:>9.1f}{row['p99']:>9.1f}{row['cpu_ms']:>12.2f}")
    if source_rows:
        print(f"\nsmtp-source, {args.source_sessions} sessions, {args.size} B payload, {args.source_messages} messages "
              f"per run, median of {args.rounds} runs per server"
              + (", Casella and Postfix alternating" if postfix else "") + "; CPU = server process(es) only"
              + " (PostgreSQL's own CPU not included)")
        print(f"{'backend':10}{'mode':29}{'casella':>9}{'postfix':>9}{'ratio':>7}{'CPU ms/msg c/p':>16}  load")
        for row in source_rows:
            postfix_rate = row.get("postfix")
            print(f"{row['backend']:10}{row['mode']:29}{row['casella']:>9.0f}"
                  f"{postfix_rate if postfix_rate else float('nan'):>9.0f}"
                  f"{row['casella'] / postfix_rate if postfix_rate else float('nan'):>7.2f}"
                  f"{row['casella_cpu']:>8.2f}/{row.get('postfix_cpu', float('nan')):<7.2f}"
                  f"  {min(row['load']):.1f}-{max(row['load']):.1f}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
