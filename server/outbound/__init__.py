"""Outbound delivery: the queue worker, routing, the SMTP client and DSN bounces.

RFCs: 5321 (§4.5.4 retries, §5.1 MX routing, §4.5.5 null reverse-path for
notifications), 7505 (null MX), 3207 (STARTTLS, opportunistic per RFC 7435),
4954 (AUTH to a smart host), 3464 + 6522 (DSN), 3463 (status codes), 6376 /
8463 (DKIM signing through server.mailauth).
Layout: `worker.py` (queue consumer), `routing.py` (smart host, transport
map, MX/A), `client.py` (aiosmtplib, one transaction per domain), `dsn.py`.

`start(app)` is the daemon's hook: it creates the resolver (`app.resolver`,
shared with the MX-side checks) and, if `outbound.enabled`, the worker.
Not implemented: MTA-STS, DANE, REQUIRETLS, DSN request parameters (RFC 3461).
"""
from __future__ import annotations

from typing import Any

from server.mailauth.dkim import DkimSigner, key_dir
from server.mailauth.dns import Resolver

from .worker import OutboundWorker

__all__ = ["OutboundWorker", "start"]


def start(app: Any) -> OutboundWorker | None:
    """Create the shared resolver and start the worker (None when disabled)."""
    settings = app.settings
    app.resolver = Resolver.from_settings(settings.dns)
    app.dkim_signer = DkimSigner(key_dir(settings), settings.dkim.enabled)
    if not settings.outbound.enabled:
        return None
    worker = OutboundWorker(app.store, settings, app.resolver, app.dkim_signer)
    worker.start()
    return worker
