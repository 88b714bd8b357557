"""POP3 listeners (Twisted `twisted.mail.pop3` on the daemon's asyncio loop) over the shared store.

RFC 1939 (POP3), RFC 2449 (CAPA, response codes, PIPELINING), RFC 2595 (STLS),
RFC 5034 (SASL AUTH, PLAIN with initial response), RFC 3206 ([SYS/TEMP], [AUTH]),
RFC 8314 (implicit TLS on pop3s).
The maildrop is INBOX as it stood at login, locked against a second POP3
session (also across processes); DELE applies at QUIT by the account's policy
(expunge, archive or keep), which IMAP sessions see through the store's events.

Modules: `protocol` (the session, replies), `maildrop` (cred checker, realm,
the maildrop avatar, wire form of messages).

Not implemented: APOP (needs plaintext passwords on the server; not
advertised), SASL mechanisms other than PLAIN, LAST and RPOP (obsolete),
EXPIRE and LOGIN-DELAY capabilities, RFC 6856 UTF8/LANG.
"""
from __future__ import annotations

from twisted.cred.portal import Portal
from twisted.internet.protocol import ServerFactory

from config import TlsMode

from ..listeners import TwistedListener
from .maildrop import Realm, StoreChecker
from .protocol import Pop3Session


class Pop3Factory(ServerFactory):
    """Builds sessions for one listener; `live_protocols` lets shutdown close them."""

    noisy = False

    def __init__(self, app, name: str, listener) -> None:  # noqa: ANN001 - App, config.Listener
        self.app = app
        self.name = name
        self.implicit_tls = listener.tls == TlsMode.IMPLICIT
        self.starttls = listener.tls == TlsMode.STARTTLS
        self.portal = Portal(Realm(app), [StoreChecker(app)])
        self.live_protocols: set[Pop3Session] = set()

    def buildProtocol(self, addr) -> Pop3Session:  # noqa: N802, ANN001
        return Pop3Session(self)


async def start(app, name, role, listener, sock):  # noqa: ANN001 - the daemon's start() contract
    """Serve POP3 on the already bound `sock` ("pop3": STLS, "pop3s": implicit TLS)."""
    factory = Pop3Factory(app, name, listener)
    tls_factory = app.tls.twisted_factory if factory.implicit_tls else None
    return TwistedListener.adopt(sock, factory, tls_factory)
