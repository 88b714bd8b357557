"""Helpers for the IMAP tests (no tests here): logged-in imaplib clients and a raw line client for wire checks."""
from __future__ import annotations

import imaplib
import re
import socket
import ssl
import time
from email.message import EmailMessage

LINE_TIMEOUT = 10.0


def message(subject: str = "hello", body: str = "body text\r\n", sender: str = "Alice <alice@example.test>",
            to: str = "bob@example.test", extra: str = "") -> bytes:
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{subject.replace(' ', '.')}@t>\r\n"
            f"Date: Mon, 7 Feb 1994 21:52:25 -0800\r\n{extra}\r\n{body}").encode("utf-8")


def login(server, user, *, tls: bool = False) -> imaplib.IMAP4:  # noqa: ANN001
    if tls:
        ctx = ssl.create_default_context(cafile=server.cert_file)
        client = imaplib.IMAP4_SSL(server.host, server.port("imaps"), ssl_context=ctx, timeout=LINE_TIMEOUT)
    else:
        client = imaplib.IMAP4(server.host, server.port("imap"), timeout=LINE_TIMEOUT)
    client.login(user.address, user.password)
    return client


def deliver(server, user, raw: bytes | None = None, mailbox: str = "INBOX") -> None:  # noqa: ANN001
    server.admin.run(server.admin.store.deliver(raw or message(), [user.id], mailbox=mailbox))


class Raw:
    """A line-level IMAP client: `cmd()` returns the untagged lines and the tagged line."""

    def __init__(self, server, *, port_name: str = "imap", tls: bool = False) -> None:  # noqa: ANN001
        sock = socket.create_connection((server.host, server.port(port_name)), timeout=LINE_TIMEOUT)
        if tls:
            ctx = ssl.create_default_context(cafile=server.cert_file)
            sock = ctx.wrap_socket(sock, server_hostname="localhost")
        self.sock = sock
        self.buf = b""
        self.counter = 0
        self.greeting = self.line()

    def starttls(self, server) -> None:  # noqa: ANN001
        ctx = ssl.create_default_context(cafile=server.cert_file)
        self.sock = ctx.wrap_socket(self.sock, server_hostname="localhost")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self, timeout: float = LINE_TIMEOUT) -> bytes:
        deadline = time.monotonic() + timeout
        while b"\r\n" not in self.buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no line; buffered {self.buf[:200]!r}")
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; buffered {self.buf[:200]!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def read_exact(self, size: int) -> bytes:
        while len(self.buf) < size:
            self.sock.settimeout(LINE_TIMEOUT)
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        data, self.buf = self.buf[:size], self.buf[size:]
        return data

    def response_line(self) -> bytes:
        """One logical response line with literals inlined."""
        line = self.line()
        while True:
            match = re.search(rb"\{(\d+)\}$", line)
            if not match:
                return line
            line += b"\r\n" + self.read_exact(int(match.group(1))) + self.line()

    def tag(self) -> bytes:
        self.counter += 1
        return b"t%d" % self.counter

    def cmd(self, text: bytes | str, timeout: float = LINE_TIMEOUT) -> tuple[list[bytes], bytes]:
        if isinstance(text, str):
            text = text.encode()
        tag = self.tag()
        self.send(tag + b" " + text + b"\r\n")
        return self.until_tagged(tag)

    def until_tagged(self, tag: bytes) -> tuple[list[bytes], bytes]:
        untagged = []
        while True:
            line = self.response_line()
            if line.startswith(tag + b" "):
                return untagged, line[len(tag) + 1:]
            untagged.append(line)

    def ok(self, text: bytes | str) -> list[bytes]:
        untagged, tagged = self.cmd(text)
        assert tagged.startswith(b"OK"), (text, untagged, tagged)
        return untagged

    def login(self, user) -> None:  # noqa: ANN001
        self.ok(f'LOGIN "{user.address}" "{user.password}"')

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def selected_inbox(server, user, count: int, prefix: str) -> "Raw":  # noqa: ANN001
    """Deliver `count` messages, log in over a raw connection and SELECT INBOX."""
    for i in range(count):
        deliver(server, user, message(f"{prefix}{i}"))
    raw = Raw(server)
    raw.login(user)
    raw.ok("SELECT INBOX")
    return raw


def smtp_deliver(server, user, raw: bytes | None = None) -> None:  # noqa: ANN001
    """Deliver through the daemon's own MX listener (in-process events on every backend)."""
    import smtplib

    with smtplib.SMTP(server.host, server.port("smtp"), timeout=LINE_TIMEOUT) as smtp:
        smtp.sendmail("sender@remote.test", [user.address], raw or message())
