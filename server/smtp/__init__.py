"""SMTP server: MX (RFC 5321) and message submission (RFC 6409) with aiosmtpd on the daemon's loop.

Listeners: `smtp` (role mx, STARTTLS), `submission` (STARTTLS) and
`submissions` (implicit TLS, RFC 8314). Extensions: SIZE (RFC 1870), 8BITMIME
(RFC 6152), SMTPUTF8 (RFC 6531), PIPELINING (RFC 2920), ENHANCEDSTATUSCODES
(RFC 2034/3463), STARTTLS (RFC 3207), AUTH PLAIN LOGIN (RFC 4954/4616).

Layout: `connection.py` (the aiosmtpd protocol: limits, EHLO, timeouts,
logging), `handler.py` (policy and delivery), `replies.py` (reply strings).
Not implemented: CHUNKING/BDAT, DSN (RFC 3461), REQUIRETLS, PROXY protocol,
outbound delivery (the queue worker is its own component).
"""
from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING, Any

from config import TlsMode

from ..listeners import AsyncioListener
from .connection import SmtpConnection
from .handler import SmtpHandler

if TYPE_CHECKING:
    from ..daemon import App

__all__ = ["start", "SmtpListener"]


class SmtpListener:
    """The handle the daemon closes: stop accepting, close idle sessions, let transactions finish."""

    def __init__(self, listener: AsyncioListener, sessions: set[SmtpConnection]) -> None:
        self.listener = listener
        self.sessions = sessions

    async def close(self, timeout: float) -> None:
        self.listener.server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.sessions and loop.time() < deadline:
            for session in list(self.sessions):
                session.close_if_idle()
            await asyncio.sleep(0.05)
        for session in list(self.sessions):
            session.close()
        await asyncio.sleep(0)


async def start(app: "App", name: str, role: str, listener: Any, sock: socket.socket) -> SmtpListener:
    handler = SmtpHandler(app, name, role)
    sessions: set[SmtpConnection] = set()

    def factory() -> SmtpConnection:
        return SmtpConnection(handler, app, name, listener, sessions)

    implicit = app.tls.ssl_context if (listener.tls is TlsMode.IMPLICIT and app.tls) else None
    started = await AsyncioListener.start(sock, factory, implicit)
    started.sessions = sessions  # type: ignore[assignment]
    return SmtpListener(started, sessions)
