"""SmtpConnection sets up aiosmtpd's protocol state itself, without SMTP.__init__ (server/smtp/connection.py).

Not a protocol test: it guards that shortcut against aiosmtpd upgrades. Every attribute
SMTP.__init__ sets must exist on a fresh SmtpConnection, and the command, AUTH and hook
tables must name the same entries, so a new aiosmtpd attribute fails here rather than on
a live connection. The SMTP behaviour itself is tested over sockets in the other
tests/test_smtp_*.py files.
"""
from __future__ import annotations

import asyncio

from aiosmtpd.smtp import SMTP

from config import TlsMode, load_settings
from server.daemon import App
from server.smtp.connection import IDENT, SmtpConnection
from server.smtp.handler import SmtpHandler


class _Listener:
    tls = TlsMode.STARTTLS


def test_connection_sets_what_smtp_init_sets() -> None:
    async def build() -> tuple[SMTP, SmtpConnection]:
        app = App(load_settings(None, dev=True), dev=True)
        handler = SmtpHandler(app, "submission", "submission")
        settings = app.settings.smtp
        reference = SMTP(handler, data_size_limit=settings.max_message_size, enable_SMTPUTF8=True,
                         decode_data=False, hostname=app.hostname, ident=IDENT, tls_context=None,
                         timeout=settings.idle_timeout, auth_required=False, auth_require_tls=False,
                         loop=asyncio.get_running_loop())
        return reference, SmtpConnection(handler, app, "submission", _Listener(), set())

    reference, connection = asyncio.run(build())
    assert set(vars(reference)) - set(vars(connection)) == set()
    assert set(connection._smtp_methods.functions) == set(reference._smtp_methods)
    assert set(reference._auth_methods) <= set(connection._auth_methods)
    assert {name: impl.method for name, impl in reference._auth_methods.items()} == {
        name: connection._auth_methods[name].method for name in reference._auth_methods}
    assert connection._handle_hooks == reference._handle_hooks
    assert connection._ehlo_hook_ver == reference._ehlo_hook_ver
    assert connection._stream_reader._limit == connection.line_length_limit  # type: ignore[attr-defined]
    for name in ("__ident__", "hostname", "data_size_limit", "enable_SMTPUTF8", "_decode_data",
                 "_timeout_duration", "_auth_required", "_auth_require_tls", "_proxy_timeout",
                 "_enforce_call_limit", "_tls_handshake_okay", "_auth_callback", "_authenticator"):
        assert getattr(connection, name) == getattr(reference, name), name
