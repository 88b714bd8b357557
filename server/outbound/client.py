"""One SMTP transaction to a remote host, with aiosmtplib (RFC 5321, 3207 STARTTLS, 4954 AUTH).

aiosmtplib rather than a client on raw asyncio streams: it already does the
STARTTLS upgrade of a running stream, multi-line replies, dot-stuffing, AUTH
mechanisms and per-command timeouts, all on our loop; writing those again
would add code to review and nothing we need. We drive it command by command
(EHLO, STARTTLS, AUTH, MAIL, each RCPT, DATA) so every recipient gets its own
outcome. Every host of a route is tried in order until one gives a
transaction-level answer (RFC 5321 §5.1: try the next MX on connection
failure or a 4xx before RCPT).
A connection that ended its transaction cleanly is kept for
`outbound.connection_cache_seconds` and reused for the next message to the
same host (as Postfix's connection cache does: the TCP, TLS and EHLO round
trips are the largest cost per message); a reused connection that turns out
dead is replaced by a fresh one once.
Not implemented: PIPELINING, CHUNKING, DSN (RFC 3461) parameters, REQUIRETLS.
"""
from __future__ import annotations

import asyncio
import logging
import re
import ssl
import time
from dataclasses import dataclass, field
from typing import Sequence

import aiosmtplib

from .routing import Hop

log = logging.getLogger("casella.outbound.client")

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")


@dataclass
class Outcome:
    """One recipient's result of an attempt."""

    kind: str  # sent | temp | perm
    reply: str  # "550 5.1.1 no such user" or a local description
    status: str  # RFC 3463 code
    remote: str = ""  # the host that answered


@dataclass
class Transaction:
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    host: str = ""


def status_of(code: int, message: str, default_detail: str = "0.0") -> str:
    """The enhanced status code of a reply (RFC 3463), derived from the basic code if absent."""
    match = _ENHANCED.match(message.strip())
    if match and match.group(1) == str(code)[0]:
        return ".".join(match.groups())
    return f"{str(code)[0]}.{default_detail}"


def _reply(code: int, message: str) -> str:
    return f"{code} {' '.join(message.split())}"[:500]


def _tls_context(verify: bool) -> ssl.SSLContext:
    if verify:
        return ssl.create_default_context()
    # RFC 7435 opportunistic security: encrypt when offered, do not insist on a valid certificate.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class ConnectionCache:
    """Idle, ready-for-MAIL connections per host (address, port, TLS mode, login)."""

    def __init__(self, idle_seconds: float) -> None:
        self.idle_seconds = idle_seconds
        self._idle: dict[tuple, list[tuple[aiosmtplib.SMTP, float]]] = {}
        self._closing: set[asyncio.Task] = set()
        self._last_sweep = 0.0
        self.reused = 0

    @staticmethod
    def key(hop: Hop) -> tuple:
        return (hop.address, hop.port, hop.tls, hop.username)

    def take(self, hop: Hop) -> aiosmtplib.SMTP | None:
        self.sweep()
        idle = self._idle.get(self.key(hop))
        while idle:
            client, _since = idle.pop()
            if client.is_connected:
                self.reused += 1
                return client
        return None

    def give(self, hop: Hop, client: aiosmtplib.SMTP) -> None:
        if self.idle_seconds <= 0:
            self._quit_later(client)
            return
        self._idle.setdefault(self.key(hop), []).append((client, time.monotonic()))
        self.sweep()

    def sweep(self) -> None:
        now = time.monotonic()
        if now - self._last_sweep < min(0.5, self.idle_seconds / 2):
            return  # at most twice a second: checking every connection per message costs more than it saves
        self._last_sweep = now
        limit = now - self.idle_seconds
        for key, idle in list(self._idle.items()):
            keep = []
            for client, since in idle:
                if since < limit or not client.is_connected:
                    self._quit_later(client)
                else:
                    keep.append((client, since))
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]

    def _quit_later(self, client: aiosmtplib.SMTP) -> None:
        task = asyncio.get_running_loop().create_task(_quit(client))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        for idle in self._idle.values():
            for client, _since in idle:
                self._quit_later(client)
        self._idle.clear()
        if self._closing:
            await asyncio.wait(list(self._closing), timeout=5)


class _HostFailed(Exception):
    """Move on to the next host (connection failure, or 4xx/5xx before any recipient)."""

    def __init__(self, reply: str, status: str, permanent: bool = False) -> None:
        super().__init__(reply)
        self.reply = reply
        self.status = status
        self.permanent = permanent
        self.mail_accepted = False


async def deliver(hops: Sequence[Hop], mail_from: str, recipients: Sequence[str], message: bytes, *,
                  helo: str, connect_timeout: float, command_timeout: float,
                  cache: ConnectionCache | None = None) -> Transaction:
    """Try each hop until one takes the transaction; every recipient ends with an Outcome."""
    last: _HostFailed | None = None
    for hop in hops:
        try:
            cached = cache.take(hop) if cache is not None else None
            if cached is not None:
                try:
                    return await _one_host(hop, mail_from, recipients, message, helo=helo,
                                           connect_timeout=connect_timeout, command_timeout=command_timeout,
                                           cache=cache, client=cached)
                except _Stale:
                    pass  # the server closed the idle connection: dial again
            return await _one_host(hop, mail_from, recipients, message, helo=helo,
                                   connect_timeout=connect_timeout, command_timeout=command_timeout, cache=cache)
        except _HostFailed as failed:
            log.info("outbound: %s[%s]:%d failed: %s", hop.host, hop.address, hop.port, failed.reply)
            last = failed
            if failed.permanent:
                # RFC 5321 §5.1 tries other MXs on temporary trouble only; a 5xx to MAIL FROM is an answer.
                break
    assert last is not None or not hops
    if last is None:
        last = _HostFailed("no host to try", "4.4.4")
    kind = "perm" if last.permanent else "temp"
    host = hops[-1].host if hops else ""
    return Transaction({r: Outcome(kind, last.reply, last.status, host) for r in recipients}, host)


class _Stale(Exception):
    """A cached connection failed before MAIL was accepted."""


async def _one_host(hop: Hop, mail_from: str, recipients: Sequence[str], message: bytes, *, helo: str,
                    connect_timeout: float, command_timeout: float, cache: ConnectionCache | None = None,
                    client: aiosmtplib.SMTP | None = None) -> Transaction:
    if client is not None:
        try:
            return await _transaction(client, hop, mail_from, recipients, message, cache)
        except _HostFailed as failed:
            if (failed.status == "4.4.2" or failed.reply.startswith("421")) and not failed.mail_accepted:
                raise _Stale() from None
            raise
    implicit = hop.tls == "implicit"
    # A verified certificate names the host, so dial the name (SNI); otherwise the resolved address.
    client = aiosmtplib.SMTP(hostname=hop.host if hop.verify else hop.address, port=hop.port,
                             local_hostname=helo, timeout=command_timeout, use_tls=implicit, start_tls=False, validate_certs=hop.verify,
                             tls_context=_tls_context(hop.verify) if implicit else None)
    try:
        try:
            await client.connect(timeout=connect_timeout)
        except aiosmtplib.SMTPConnectResponseError as exc:
            raise _HostFailed(_reply(exc.code, exc.message), status_of(exc.code, exc.message, "4.1"),
                              permanent=False) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise _HostFailed(f"connection to {hop.host}[{hop.address}]:{hop.port} failed: {exc}", "4.4.1") \
                from None
        try:
            await client.ehlo()
        except aiosmtplib.SMTPHeloError:
            await client.helo()  # RFC 5321 §4.1.4: fall back to HELO
        if hop.tls in ("opportunistic", "starttls") and not implicit:
            if client.supports_extension("starttls"):
                try:
                    await client.starttls(tls_context=_tls_context(hop.verify), server_hostname=hop.host)
                except (aiosmtplib.SMTPException, ssl.SSLError, OSError) as exc:
                    raise _HostFailed(f"STARTTLS with {hop.host} failed: {exc}", "4.7.0") from None
            elif hop.tls == "starttls":
                raise _HostFailed(f"{hop.host} does not offer STARTTLS", "4.7.0")
        if hop.username:
            try:
                await client.login(hop.username, hop.password)
            except aiosmtplib.SMTPAuthenticationError as exc:
                raise _HostFailed(_reply(exc.code, exc.message), status_of(exc.code, exc.message, "7.8")) \
                    from None
        return await _transaction(client, hop, mail_from, recipients, message, cache)
    except _HostFailed:
        client.close()
        raise
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, aiosmtplib.SMTPException,
            OSError) as exc:
        client.close()
        raise _HostFailed(f"{hop.host}: {exc.__class__.__name__}: {exc}", "4.4.2") from None


async def _transaction(client: aiosmtplib.SMTP, hop: Hop, mail_from: str, recipients: Sequence[str],
                       message: bytes, cache: ConnectionCache | None) -> Transaction:
    """MAIL, RCPT..., DATA on a ready connection; hands it to the cache (or QUITs) afterwards."""
    mail_accepted = False
    try:
        options = []
        if client.supports_extension("8bitmime") and not message.isascii():
            options.append("BODY=8BITMIME")  # RFC 6152
        utf8 = not (mail_from + "".join(recipients)).isascii()
        if utf8:
            if not client.supports_extension("smtputf8"):
                raise _HostFailed(f"{hop.host} does not support SMTPUTF8", "5.6.7", permanent=True)  # RFC 6531
            options.append("SMTPUTF8")
        encoding = "utf-8" if utf8 else "ascii"
        if client.supports_extension("size"):
            options.append(f"SIZE={len(message)}")  # RFC 1870
        try:
            await client.mail(mail_from, options=options, encoding=encoding)
        except aiosmtplib.SMTPServerDisconnected:
            raise
        except aiosmtplib.SMTPResponseException as exc:
            raise _HostFailed(_reply(exc.code, exc.message), status_of(exc.code, exc.message),
                              permanent=exc.code >= 500) from None
        mail_accepted = True
        result = Transaction(host=hop.host)
        accepted = []
        for rcpt in recipients:
            try:
                await client.rcpt(rcpt, encoding=encoding)
                accepted.append(rcpt)
            except aiosmtplib.SMTPResponseException as exc:
                result.outcomes[rcpt] = Outcome("perm" if exc.code >= 500 else "temp",
                                                _reply(exc.code, exc.message), status_of(exc.code, exc.message),
                                                hop.host)
        if not accepted:
            await client.rset()  # RFC 5321 §4.1.1.5: end the transaction, keep the connection
            _release(client, hop, cache)
            return result
        try:
            response = await client.data(message)
            for rcpt in accepted:
                result.outcomes[rcpt] = Outcome("sent", _reply(response.code, response.message),
                                                status_of(response.code, response.message), hop.host)
        except aiosmtplib.SMTPResponseException as exc:
            for rcpt in accepted:
                result.outcomes[rcpt] = Outcome("perm" if exc.code >= 500 else "temp",
                                                _reply(exc.code, exc.message), status_of(exc.code, exc.message),
                                                hop.host)
        _release(client, hop, cache)
        return result
    except _HostFailed:
        client.close()
        raise
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, aiosmtplib.SMTPException,
            OSError) as exc:
        client.close()
        # Lost mid-transaction: we cannot know whether DATA was taken; RFC 5321 §6.1 accepts a duplicate.
        failed = _HostFailed(f"{hop.host}: {exc.__class__.__name__}: {exc}", "4.4.2")
        failed.mail_accepted = mail_accepted
        raise failed from None


def _release(client: aiosmtplib.SMTP, hop: Hop, cache: ConnectionCache | None) -> None:
    if cache is not None:
        cache.give(hop, client)
    else:
        asyncio.get_running_loop().create_task(_quit(client))


async def _quit(client: aiosmtplib.SMTP) -> None:
    try:
        await client.quit()
    except (aiosmtplib.SMTPException, OSError):
        client.close()
