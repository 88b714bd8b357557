"""IMAP listeners (RFC 3501 + extensions): `imap` with STARTTLS and `imaps` with implicit TLS.

The session logic lives in protocol.py (commands), mailbox.py (per-session
view and change events), fetch.py (FETCH rendering from the parse cache),
search.py (SEARCH), listing.py (LIST/LSUB) and utf7.py (mailbox names).
"""
from __future__ import annotations

from config.settings import TlsMode
from server.listeners import TwistedListener

from .protocol import ImapFactory, ImapSession

__all__ = ["start", "ImapFactory", "ImapSession"]


class ImapListener:
    """The daemon's handle: closing says BYE to every session, then stops the port."""

    def __init__(self, inner: TwistedListener, factory: ImapFactory) -> None:
        self.inner = inner
        self.factory = factory

    async def close(self, timeout: float) -> None:
        for session in list(self.factory.live_protocols):
            session.close_for_shutdown()
        await self.inner.close(timeout)


async def start(app, name, role, listener, sock):  # noqa: ANN001, ANN201
    implicit = listener.tls == TlsMode.IMPLICIT
    factory = ImapFactory(app, name, implicit_tls=implicit, starttls=listener.tls == TlsMode.STARTTLS)
    inner = TwistedListener.adopt(sock, factory, app.tls.twisted_factory if implicit else None)
    return ImapListener(inner, factory)
