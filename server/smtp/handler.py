"""SMTP policy: who may authenticate, send and receive, and delivery into the store.

The aiosmtpd handler for one listener. Roles: `mx` (port 25: no AUTH, only
local recipients, never a relay) and `submission` (587 STARTTLS, 465 implicit
TLS, RFC 6409: AUTH before MAIL, MAIL FROM must be owned, remote recipients
go to the durable outbound queue in the same transaction as local delivery).
RFCs: 5321 (Received/Return-Path §4.4, relay policy §3.6), 4954 + 4616 (AUTH
PLAIN/LOGIN), 3848 (Received protocol types), 6531 §3.7.4 (UTF8SMTP types).

Over-quota recipients of an accepted message get an RFC 3464 notice to the
sender (server/outbound/dsn.py, shared with the delivery worker). On the MX,
mail from outside goes through SPF/DKIM/DMARC (server/mailauth
`check_incoming`, when mailauth.enabled): an Authentication-Results field on
top, DMARC reject -> 550 5.7.1, quarantine -> Junk.
`RCPT TO:<Postmaster>` means postmaster@server.hostname (RFC 5321 §4.5.1),
which needs an account or alias there. Not implemented: VRFY/EXPN (always 252/502).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import secrets
import time
from datetime import datetime, timezone
from email.utils import format_datetime
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import MISSING, AuthResult, TLSSetupException

from server.auth import AuthResult as Verdict
from storage import InvalidName
from storage.api import normalize_address

from ..outbound.dsn import RecipientReport, build_dsn
from . import replies

if TYPE_CHECKING:
    from ..daemon import App
    from .connection import CasellaEnvelope, CasellaSession, SmtpConnection

log = logging.getLogger("casella.smtp")

MECHANISMS = ("PLAIN", "LOGIN")
# Positive recipient resolutions are reused this long: resolving costs more CPU than storing the
# message (several queries), and a sender's burst repeats the same recipients. Only hits are cached,
# so a new account is reachable at once; a removed one fails delivery with 451 (retried) until expiry.
RESOLUTION_TTL = 5.0
RESOLUTION_CACHE_MAX = 10_000


def _b64(text: str) -> bytes | None:
    """RFC 4954 §4: '=' is an empty initial response."""
    if text == "=":
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _malformed(address: str) -> bool:
    """Control characters, or invalid UTF-8 (surrogate-escaped by aiosmtpd), never form an address."""
    return any(ord(ch) < 0x20 or ord(ch) == 0x7F or 0xD800 <= ord(ch) <= 0xDFFF for ch in address)


def _header_text(value: str | None) -> bytes:
    """A client-supplied token for a header: UTF-8 as received, controls replaced."""
    raw = (value or "").encode("utf-8", "surrogateescape")
    return bytes(b if 0x20 < b != 0x7F else 0x3F for b in raw[:255])


class SmtpHandler:
    def __init__(self, app: "App", listener_name: str, role: str) -> None:
        self.app = app
        self.store = app.store
        self.listener_name = listener_name
        self.role = role
        self.settings = app.settings.smtp
        self._catch_all_id: int | None = None
        self._resolutions: dict[str, tuple[float, Any]] = {}
        self._resolving: dict[str, asyncio.Future] = {}

    # ------------------------------------------------------------ AUTH (RFC 4954)

    def auth_offered(self, conn: "SmtpConnection") -> bool:
        return self.role == "submission" and self.app.throttle.plaintext_allowed(conn.peer_ip, conn.tls_active)

    async def handle_AUTH(self, conn: "SmtpConnection", session: "CasellaSession", envelope: Any,
                          args: list[str]) -> Any:
        if self.role != "submission":
            return replies.AUTH_NOT_AVAILABLE
        if not self.app.throttle.plaintext_allowed(conn.peer_ip, conn.tls_active):
            return replies.ENCRYPTION_REQUIRED  # RFC 4954 §4: plaintext mechanisms only over TLS
        if envelope is not None and envelope.mail_from:
            return "503 5.5.1 AUTH not permitted during a mail transaction"  # RFC 4954 §4
        return MISSING

    async def auth_PLAIN(self, conn: "SmtpConnection", args: list[str]) -> AuthResult:  # noqa: N802
        if len(args) == 1:
            blob = await conn.challenge_auth("")
            if blob is MISSING:
                return AuthResult(success=False, handled=True)
        else:
            blob = _b64(args[1])
        parts = blob.split(b"\0") if blob is not None else []
        if len(parts) != 3:  # RFC 4616 §2: [authzid] NUL authcid NUL passwd
            await conn.push(replies.AUTH_MALFORMED)
            return AuthResult(success=False, handled=True)
        try:
            authzid, username, password = (part.decode("utf-8") for part in parts)
        except UnicodeDecodeError:
            await conn.push(replies.AUTH_MALFORMED)
            return AuthResult(success=False, handled=True)
        if authzid and authzid.lower() != username.lower():
            # RFC 4616 §2: acting for another identity is not something any account may do here.
            return await self._check(conn, username, None)
        return await self._check(conn, username, password)

    async def auth_LOGIN(self, conn: "SmtpConnection", args: list[str]) -> AuthResult:  # noqa: N802
        if len(args) == 1:
            login = await conn.challenge_auth("Username:")
            if login is MISSING:
                return AuthResult(success=False, handled=True)
        else:  # Outlook sends the user name as an initial response
            login = _b64(args[1])
            if login is None:
                await conn.push(replies.AUTH_MALFORMED)
                return AuthResult(success=False, handled=True)
        password = await conn.challenge_auth("Password:")
        if password is MISSING:
            return AuthResult(success=False, handled=True)
        try:
            return await self._check(conn, login.decode("utf-8"), password.decode("utf-8"))
        except UnicodeDecodeError:
            await conn.push(replies.AUTH_MALFORMED)
            return AuthResult(success=False, handled=True)

    async def _check(self, conn: "SmtpConnection", username: str, password: str | None) -> AuthResult:
        conn.busy += 1
        try:
            if password is None:
                self.app.throttle.failure(conn.peer_ip)
                verdict, account = Verdict.FAILED, None
            else:
                verdict, account = await self.app.authenticator.check(username, password, conn.peer_ip, "smtp")
        finally:
            conn.busy -= 1
        if verdict == Verdict.OK:
            assert conn.session is not None
            conn.session.account = account
            conn.auth_user = account.address
            return AuthResult(success=True, auth_data=account, message=replies.AUTH_OK)
        if verdict == Verdict.LOCKED:
            conn.close_reason = "auth lockout"
            await conn.push(replies.AUTH_LOCKED.format(host=self.app.hostname))
            if conn.transport is not None:
                conn.transport.close()
            return AuthResult(success=False, handled=True)
        return AuthResult(success=False, handled=False, message=replies.AUTH_FAILED)

    # ------------------------------------------------------------ envelope

    async def handle_MAIL(self, conn: "SmtpConnection", session: "CasellaSession", envelope: "CasellaEnvelope",
                          address: str, options: list[str]) -> str:
        if address != "<>" and ("@" not in address or _malformed(address)):
            conn.rejected += 1
            return replies.BAD_ADDRESS  # RFC 5321 §4.1.2: a reverse-path is <> or a full mailbox
        if self.role == "submission":
            if session.account is None:
                conn.rejected += 1
                return replies.AUTH_REQUIRED  # RFC 6409 §4.3: submission requires authentication
            if not await self._owns(session, address):
                conn.rejected += 1
                return replies.SENDER_NOT_OWNED  # RFC 6409 §6.1: the server may enforce the sender
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return replies.SENDER_OK

    async def _owns(self, session: "CasellaSession", address: str) -> bool:
        if address == "<>":
            return False
        try:
            wanted = normalize_address(address)
        except InvalidName:
            return False
        if session.owned is None:
            session.owned = await self.store.owned_addresses(session.account.id)
        if wanted in session.owned:
            return True
        local, _, domain = wanted.rpartition("@")
        return "+" in local and f"{local.split('+', 1)[0]}@{domain}" in session.owned

    async def handle_RCPT(self, conn: "SmtpConnection", session: "CasellaSession", envelope: "CasellaEnvelope",
                          address: str, options: list[str]) -> str:
        if address.lower() == "postmaster":  # RFC 5321 §4.5.1: accepted without a domain
            address = f"postmaster@{self.app.hostname}"
        if "@" not in address or _malformed(address):
            conn.rejected += 1
            return replies.BAD_ADDRESS
        if len(envelope.rcpt_tos) >= self.settings.max_recipients:
            conn.rejected += 1
            return replies.TOO_MANY_RECIPIENTS  # RFC 5321 §4.5.3.1.8
        resolution = await self._resolve(address)
        if resolution is not None and resolution.local:
            envelope.local_ids.update(dict.fromkeys(resolution.account_ids))
            envelope.routes[address] = tuple(resolution.account_ids)
        elif self.settings.catch_all_account:
            # Dev mode: mail for any address that is not a local account is caught, never relayed.
            envelope.local_ids[await self._catch_all()] = None
            envelope.routes[address] = (await self._catch_all(),)
        elif resolution is None:
            conn.rejected += 1
            return replies.NO_SUCH_USER
        elif self.role == "submission" and session.account is not None:
            if address.lower() not in (r.lower() for r in envelope.remote):  # one queue entry per recipient
                envelope.remote.append(address)
        else:
            conn.rejected += 1
            return replies.RELAY_DENIED  # RFC 5321 §3.6.2: never an open relay
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return replies.RECIPIENT_OK

    async def _resolve(self, address: str) -> Any:
        key = address.lower()
        now = time.monotonic()
        cached = self._resolutions.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        # One lookup per address at a time: when an entry expires under a burst, the sessions sending
        # to that address wait for the same query instead of each running its own.
        pending = self._resolving.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._lookup(key, address))
            self._resolving[key] = pending
            pending.add_done_callback(lambda done: self._resolved(key, done))
        return await asyncio.shield(pending)  # a client that goes away does not cancel the others' lookup

    def _resolved(self, key: str, done: asyncio.Future) -> None:
        if self._resolving.get(key) is done:
            del self._resolving[key]
        if not done.cancelled():
            done.exception()  # retrieved: every waiter may have gone away

    async def _lookup(self, key: str, address: str) -> Any:
        resolution = await self.store.resolve_recipient(address)
        if resolution is not None and resolution.local:
            if len(self._resolutions) >= RESOLUTION_CACHE_MAX:
                self._resolutions.clear()
            self._resolutions[key] = (time.monotonic() + RESOLUTION_TTL, resolution)
        return resolution

    async def _catch_all(self) -> int:
        if self._catch_all_id is None:
            account = await self.store.get_account(self.settings.catch_all_account)
            if account is None:
                raise RuntimeError(f"smtp.catch_all_account {self.settings.catch_all_account} does not exist")
            self._catch_all_id = account.id
        return self._catch_all_id

    async def handle_VRFY(self, conn: "SmtpConnection", session: Any, envelope: Any, address: str) -> str:
        return replies.VRFY_CANNOT  # RFC 5321 §3.5.3: no user enumeration

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):
            # A client that sent something other than a TLS handshake after STARTTLS: its
            # mistake, not ours; aiosmtpd closes the connection after this.
            log.info("smtp: TLS handshake after STARTTLS failed: %s", error.__cause__ or error)
            return replies.INTERNAL_ERROR
        log.exception("smtp internal error: %s", error)
        return replies.INTERNAL_ERROR

    # ------------------------------------------------------------ DATA

    async def handle_DATA(self, conn: "SmtpConnection", session: "CasellaSession",
                          envelope: "CasellaEnvelope") -> str:
        started = time.monotonic()
        ident = secrets.token_hex(6).upper()
        local_ids = list(envelope.local_ids)
        content = envelope.original_content or b""
        mailbox = "INBOX"
        verdict = await self._check_incoming(conn, session, envelope, content)
        if verdict is not None:
            if verdict.action == "reject":  # RFC 7489 §6.7
                conn.rejected += 1
                log.info("smtp delivery refused id=%s from=%s: %s", ident, envelope.mail_from, verdict.reason)
                return verdict.reply
            content = verdict.message  # forged Authentication-Results removed, ours on top
            if verdict.action == "quarantine":
                mailbox = "Junk"
        trace = self._received(conn, session, envelope, ident)
        if local_ids:  # RFC 5321 §4.4: the delivering server adds Return-Path
            trace = b"Return-Path: <" + _header_text(envelope.mail_from.strip("<>")) + b">\r\n" + trace
        raw = trace + content
        conn.busy += 1
        try:
            report = await self.store.deliver(raw, local_ids, mailbox=mailbox, outbound_to=envelope.remote,
                                              outbound_from=envelope.mail_from if envelope.remote else None)
        except Exception:
            conn.rejected += 1
            log.exception("smtp delivery failed id=%s from=%s rcpts=%d size=%d", ident, envelope.mail_from,
                          len(envelope.rcpt_tos), len(raw))
            return replies.STORE_FAILURE
        finally:
            conn.busy -= 1
        elapsed = time.monotonic() - started
        if not report.deliveries and report.queue_id is None:
            conn.rejected += 1
            log.info("smtp delivery refused id=%s from=%s: every recipient over quota", ident, envelope.mail_from)
            return replies.MAILBOX_FULL
        conn.messages += 1
        fields = {"id": ident, "listener": self.listener_name, "peer": conn.peer_ip, "from": envelope.mail_from,
                  "rcpts": len(envelope.rcpt_tos), "local": len(report.deliveries), "queued": len(envelope.remote),
                  "over_quota": list(report.over_quota), "size": len(raw), "content_id": report.content_id,
                  "queue_id": report.queue_id, "ms": round(elapsed * 1000, 1), "user": conn.auth_user}
        if report.queue_id is not None and getattr(self.app, "outbound", None) is not None:
            self.app.outbound.wake()  # deliver now rather than at the worker's next poll
        if report.over_quota:
            await self._bounce_over_quota(envelope, report.over_quota, ident, content)
        log.info("smtp delivery id=%s from=%s rcpts=%d local=%d queued=%d size=%d content=%s queue=%s ms=%.1f",
                 ident, envelope.mail_from, len(envelope.rcpt_tos), len(report.deliveries), len(envelope.remote),
                 len(raw), report.content_id, report.queue_id or "-", elapsed * 1000, extra={"fields": fields})
        return replies.QUEUED.format(ident=ident)

    async def _bounce_over_quota(self, envelope: "CasellaEnvelope", over_quota: tuple[int, ...], ident: str,
                                 content: bytes) -> None:
        """RFC 5321 §6.1: accepted but not delivered to some recipients, so tell the sender (before the 250)."""
        refused = set(over_quota)
        failed = [rcpt for rcpt, ids in envelope.routes.items() if ids and refused.issuperset(ids)]
        log.warning("smtp delivery id=%s: %s over quota, not stored for them", ident, ", ".join(failed) or "-")
        sender = envelope.mail_from or "<>"
        if not failed or sender == "<>":  # a bounce never bounces
            return
        dsn = build_dsn(hostname=self.app.hostname, sender=sender, original=content,
                        reports=[RecipientReport(rcpt, "failed", "5.2.2", replies.MAILBOX_FULL_FINAL)
                                 for rcpt in failed], arrival=datetime.now(timezone.utc))
        try:
            resolution = await self.store.resolve_recipient(sender)
            if resolution is not None and resolution.local:
                await self.store.deliver(dsn, list(resolution.account_ids), enforce_quota=False)
            elif resolution is not None:
                await self.store.deliver(dsn, [], outbound_from="", outbound_to=[sender])
        except Exception:  # the message itself is committed: a lost notice is logged, not fatal
            log.exception("smtp delivery id=%s: could not store the over-quota notice for %s", ident, sender)

    async def _check_incoming(self, conn: "SmtpConnection", session: "CasellaSession",
                              envelope: "CasellaEnvelope", content: bytes) -> Any:
        """SPF, DKIM and DMARC (server/mailauth) for mail arriving on the MX from outside; None if off."""
        resolver = getattr(self.app, "resolver", None)
        mailauth = getattr(self.app.settings, "mailauth", None)
        if self.role != "mx" or session.account is not None or resolver is None or not (mailauth and mailauth.enabled):
            return None
        from server.mailauth import check_incoming

        conn.busy += 1
        try:
            return await check_incoming(content, conn.peer_ip, session.host_name or "", envelope.mail_from or "",
                                        self.app.settings, resolver)
        except Exception:  # the checks are advisory: a bug there must not lose mail
            log.exception("smtp mail checks failed for <%s> from %s; delivering unchecked", envelope.mail_from,
                          conn.peer_ip)
            return None
        finally:
            conn.busy -= 1

    def _received(self, conn: "SmtpConnection", session: "CasellaSession", envelope: "CasellaEnvelope",
                  ident: str) -> bytes:
        """RFC 5321 §4.4 trace field; protocol names from RFC 3848 and RFC 6531 §3.7.4."""
        tls = conn.tls_description()
        protocol = ("UTF8SMTP" if envelope.smtp_utf8 else "ESMTP" if session.extended_smtp else "SMTP")
        if tls and protocol != "SMTP":
            protocol += "S"
        if session.account is not None and protocol != "SMTP":
            protocol += "A"
        lines = [b"Received: from " + _header_text(session.host_name) + b" ([" + conn.peer_ip.encode() + b"])",
                 b"\tby " + self.app.hostname.encode() + b" (Casella) with " + protocol.encode()
                 + b" id " + ident.encode()]
        if tls:
            lines.append(b"\t(" + tls.encode() + b")")
        when = format_datetime(datetime.now(timezone.utc)).encode()
        if len(envelope.rcpt_tos) == 1:  # naming one recipient of many would leak the Bcc list
            lines.append(b"\tfor <" + _header_text(envelope.rcpt_tos[0]) + b">; " + when)
        else:
            lines[-1] += b";"
            lines.append(b"\t" + when)
        return b"\r\n".join(lines) + b"\r\n"
