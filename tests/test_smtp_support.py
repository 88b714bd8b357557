"""Helpers for the SMTP tests (no tests and no fixtures here: a fixture imported into
several modules would start one daemon per module).

`server` (conftest) runs in dev mode, where `smtp.catch_all_account` catches
mail for unknown and remote addresses; STRICT_ENV is the production policy
(no catch-all, no plaintext AUTH even on loopback).
"""
from __future__ import annotations

import smtplib
import socket
import ssl
import time

if __package__:  # tests/ may or may not be a package
    from .conftest import User
else:
    from conftest import User

STRICT_ENV = {
    "CASELLA_SMTP__CATCH_ALL_ACCOUNT": "",
    "CASELLA_AUTH__ALLOW_PLAINTEXT_ON_LOOPBACK": "false",
    # These tests inspect what submission put in the queue; a running worker would race them
    # (and bounce remote mail it cannot route here). Delivery itself: tests/test_outbound_*.
    "CASELLA_OUTBOUND__ENABLED": "false",
}


def tls_context(server) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=server.cert_file)
    context.check_hostname = False  # the dev certificate names "localhost", we dial 127.0.0.1
    return context


def mx(server) -> smtplib.SMTP:
    return smtplib.SMTP(server.host, server.port("smtp"), timeout=30)


def submission(server, user: User | None = None, *, tls: bool = True) -> smtplib.SMTP:
    client = smtplib.SMTP(server.host, server.port("submission"), timeout=30)
    client.ehlo("client.test")
    if tls:
        client.starttls(context=tls_context(server))
        client.ehlo("client.test")
    if user is not None:
        client.login(user.address, user.password)
    return client


def submissions(server, user: User | None = None) -> smtplib.SMTP_SSL:
    client = smtplib.SMTP_SSL(server.host, server.port("submissions"), timeout=30, context=tls_context(server))
    client.ehlo("client.test")
    if user is not None:
        client.login(user.address, user.password)
    return client


def mailbox(server, user: User, name: str = "INBOX") -> list[bytes]:
    """Raw bytes of every message in the user's mailbox, in UID order, as the store returns them."""
    store = server.admin.store
    snapshot = server.admin.run(store.select(user.id, name, readonly=True))
    uids = [m.uid for m in snapshot.messages]
    fetched = server.admin.run(store.fetch(user.id, snapshot.mailbox.id, uids, raw=True))
    return [f.raw for f in fetched]


def wait_for_messages(server, user: User, count: int, timeout: float = 20.0) -> list[bytes]:
    deadline = time.monotonic() + timeout
    while True:
        found = mailbox(server, user)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def body_of(raw: bytes) -> bytes:
    """What the client sent: the store's copy minus our trace header fields."""
    lines = raw.split(b"\r\n")
    index = 0
    while lines[index].startswith(b"Return-Path:") or lines[index].startswith(b"Received:") \
            or lines[index].startswith(b"\t"):
        index += 1
    return b"\r\n".join(lines[index:])


def message(sender: str, rcpt: str, subject: str = "test", body: str = "hello") -> bytes:
    return (f"From: {sender}\r\nTo: {rcpt}\r\nSubject: {subject}\r\nMessage-ID: <{time.time_ns()}@client.test>\r\n"
            f"\r\n{body}\r\n").encode()


class Raw:
    """A raw SMTP socket: send exact bytes, read reply lines."""

    def __init__(self, server, listener: str = "smtp") -> None:
        self.sock = socket.create_connection((server.host, server.port(listener)), timeout=15)
        self.buffer = b""
        self.greeting = self.reply()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; pending {self.buffer!r}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def reply(self) -> bytes:
        """One whole (possibly multi-line) reply."""
        lines = [self.line()]
        while len(lines[-1]) > 3 and lines[-1][3:4] == b"-":
            lines.append(self.line())
        return b"\n".join(lines)

    def cmd(self, data: bytes) -> bytes:
        self.send(data + b"\r\n")
        return self.reply()

    def closed(self, timeout: float = 5.0) -> bool:
        """True if the server closes the connection (after any pending replies) within timeout."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buffer += chunk
        except (socket.timeout, TimeoutError):
            return False
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()
