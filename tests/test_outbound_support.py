"""Helpers for the outbound and mailauth tests (no tests and no fixtures here).

`DnsServer`: a small authoritative DNS server on 127.0.0.1 (dnslib, UDP and
TCP on one port) answering from a dict the test fills: MX, A, AAAA, TXT.
Names with no records get NXDOMAIN; names in `servfail` get SERVFAIL.
`Sink`: an aiosmtpd server on the test's own loop that records what it gets
and answers RCPT/DATA from per-address rules, for in-process worker tests.
"""
from __future__ import annotations

import asyncio
import socket
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from dnslib import AAAA, MX, QTYPE, RCODE, RR, TXT, A, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer


class _Resolver(BaseResolver):
    def __init__(self, owner: "DnsServer") -> None:
        self.owner = owner

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        reply = request.reply()
        name = str(request.q.qname).lower().rstrip(".")
        qtype = QTYPE[request.q.qtype]
        with self.owner.lock:
            self.owner.queries.append((name, qtype))
            if name in self.owner.servfail:
                reply.header.rcode = RCODE.SERVFAIL
                return reply
            records = self.owner.records.get(name)
            if not records:
                reply.header.rcode = RCODE.NXDOMAIN
                return reply
            for rtype, value in records:
                if rtype != qtype:
                    continue
                if rtype == "A":
                    rdata = A(value)
                elif rtype == "AAAA":
                    rdata = AAAA(value)
                elif rtype == "MX":
                    preference, host = value
                    rdata = MX(host, preference)
                else:
                    rdata = TXT([value[i:i + 255].encode() for i in range(0, len(value), 255)] or [b""])
                reply.add_answer(RR(request.q.qname, getattr(QTYPE, rtype), rdata=rdata, ttl=0))  # TTL 0: tests change records mid-way
        return reply


class DnsServer:
    def __init__(self) -> None:
        self.records: dict[str, list[tuple[str, Any]]] = defaultdict(list)
        self.servfail: set[str] = set()
        self.queries: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        resolver = _Resolver(self)
        for _ in range(20):
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
            probe.close()
            try:
                quiet = DNSLogger("-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False)
                self.udp = DNSServer(resolver, port=port, address="127.0.0.1", logger=quiet)
                self.tcp = DNSServer(resolver, port=port, address="127.0.0.1", tcp=True, logger=quiet)
                break
            except OSError:
                continue
        self.port = port
        self.udp.start_thread()
        self.tcp.start_thread()

    def add(self, name: str, rtype: str, value: Any) -> None:
        with self.lock:
            self.records[name.lower().rstrip(".")].append((rtype, value))

    def set(self, name: str, rtype: str, *values: Any) -> None:
        with self.lock:
            key = name.lower().rstrip(".")
            self.records[key] = [r for r in self.records[key] if r[0] != rtype] + [(rtype, v) for v in values]

    def env(self) -> dict[str, str]:
        return {"CASELLA_DNS__NAMESERVERS": '["127.0.0.1"]', "CASELLA_DNS__PORT": str(self.port),
                "CASELLA_DNS__TIMEOUT": "2"}

    def stop(self) -> None:
        self.udp.stop()
        self.tcp.stop()


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    peer: str


@dataclass
class SinkHandler:
    """Replies per recipient: rules[address] = list of replies used one per attempt (then 250)."""

    received: list[Received] = field(default_factory=list)
    rcpt_rules: dict[str, list[str]] = field(default_factory=dict)
    data_rules: list[str] = field(default_factory=list)
    mail_rules: list[str] = field(default_factory=list)
    transactions: int = 0
    ehlos: int = 0

    async def handle_EHLO(self, server, session, envelope, hostname, responses):  # noqa: N802
        self.ehlos += 1
        session.host_name = hostname
        return responses

    async def handle_MAIL(self, server, session, envelope, address, options):  # noqa: N802
        if self.mail_rules:
            return self.mail_rules.pop(0)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, options):  # noqa: N802
        rules = self.rcpt_rules.get(address.lower())
        if rules:
            reply = rules.pop(0) if len(rules) > 1 or not rules[0].startswith("5") else rules[0]
            if not reply.startswith("2"):
                return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        self.transactions += 1
        if self.data_rules:
            return self.data_rules.pop(0)
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content,
                                      session.peer[0]))
        return "250 2.0.0 queued"


class Sink:
    """aiosmtpd on the running loop (never the threaded Controller)."""

    def __init__(self, handler: SinkHandler | None = None, **smtp_options: Any) -> None:
        self.handler = handler or SinkHandler()
        self.options = smtp_options
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> "Sink":
        from aiosmtpd.smtp import SMTP

        loop = asyncio.get_running_loop()
        options = dict(self.options)

        def factory():
            return SMTP(self.handler, loop=loop, hostname="sink.test", **options)

        self.server = await loop.create_server(factory, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    @property
    def received(self) -> list[Received]:
        return self.handler.received


def message(sender: str, rcpt: str, subject: str = "hello", body: str = "Hello there.\r\n",
            size: int = 0) -> bytes:
    text = (f"From: Sender <{sender}>\r\nTo: <{rcpt}>\r\nSubject: {subject}\r\n"
            f"Date: Thu, 26 Nov 2026 20:00:00 +0000\r\nMessage-ID: <{abs(hash((sender, rcpt, subject)))}@test>\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}")
    raw = text.encode()
    if size and len(raw) < size:
        line = b"x" * 76 + b"\r\n"
        raw += line * ((size - len(raw)) // len(line) + 1)
    return raw
