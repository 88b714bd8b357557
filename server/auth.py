"""Credential checking shared by SMTP (RFC 4954), POP3 (RFC 1939/5034) and IMAP (RFC 3501).

One policy for all three: plaintext mechanisms only over TLS, or from loopback
when allowed (as Dovecot's `disable_plaintext_auth` does); failed attempts per
client address are throttled (a delay after a few, then a lockout for a while)
and the counters are shared across protocols. Password checks go through
`MailStore.authenticate`, which hashes in a thread.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import logging
import time
from collections import deque
from dataclasses import dataclass

from storage import Account, MailStore

log = logging.getLogger("casella.auth")


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return host == "localhost"


def decode_sasl_plain(data: str | bytes) -> tuple[str, str, str] | None:
    """RFC 4616 PLAIN: base64 of authzid NUL authcid NUL passwd; None if malformed."""
    try:
        raw = base64.b64decode(data.strip() if isinstance(data, (str, bytes)) else data, validate=True)
        authzid, authcid, password = raw.decode("utf-8").split("\0")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return authzid, authcid, password


class AuthResult:
    OK = "ok"
    FAILED = "failed"
    LOCKED = "locked"


@dataclass
class _Record:
    failures: deque
    locked_until: float = 0.0


class AuthThrottle:
    """Failed-login counters per client address, shared by every protocol."""

    def __init__(self, settings) -> None:  # noqa: ANN001 - config.settings.AuthSettings
        self.settings = settings
        self._records: dict[str, _Record] = {}

    def _record(self, ip: str) -> _Record:
        record = self._records.get(ip)
        if record is None:
            record = self._records[ip] = _Record(deque())
        window_start = time.monotonic() - self.settings.failure_window_seconds
        while record.failures and record.failures[0] < window_start:
            record.failures.popleft()
        return record

    def is_locked(self, ip: str) -> bool:
        record = self._records.get(ip)
        return bool(record and record.locked_until > time.monotonic())

    def failure(self, ip: str) -> None:
        record = self._record(ip)
        record.failures.append(time.monotonic())
        if len(record.failures) >= self.settings.failures_before_lockout:
            record.locked_until = time.monotonic() + self.settings.lockout_seconds
            log.warning("auth lockout for %s after %d failures", ip, len(record.failures))

    def success(self, ip: str) -> None:
        self._records.pop(ip, None)

    def delay(self, ip: str) -> float:
        record = self._records.get(ip)
        if record and len(record.failures) >= self.settings.failures_before_delay:
            return self.settings.failure_delay_seconds
        return 0.0

    def plaintext_allowed(self, peer_host: str | None, tls_active: bool) -> bool:
        if tls_active or self.settings.allow_plaintext_anywhere:
            return True
        return self.settings.allow_plaintext_on_loopback and is_loopback(peer_host)


class Authenticator:
    """What a protocol calls: `await check(username, password, ip, protocol)`."""

    def __init__(self, store: MailStore, throttle: AuthThrottle) -> None:
        self.store = store
        self.throttle = throttle

    async def check(self, username: str, password: str, ip: str, protocol: str) -> tuple[str, Account | None]:
        if self.throttle.is_locked(ip):
            log.info("%s auth refused for %s from %s: locked out", protocol, username, ip)
            return AuthResult.LOCKED, None
        account = await self.store.authenticate(username, password)
        if account is None:
            self.throttle.failure(ip)
            log.info("%s auth failed for %s from %s", protocol, username, ip)
            pause = self.throttle.delay(ip)
            if pause:
                await asyncio.sleep(pause)
            return (AuthResult.LOCKED if self.throttle.is_locked(ip) else AuthResult.FAILED), None
        self.throttle.success(ip)
        log.info("%s login %s from %s", protocol, account.address, ip)
        return AuthResult.OK, account
