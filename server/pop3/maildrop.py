"""POP3 backend: the cred checker and realm over MailStore, and the maildrop adapter (the avatar).

The realm takes the maildrop lock (RFC 1939 §8: exclusive access) and a
snapshot of INBOX at login (RFC 1939 §8: message numbers and sizes are fixed
for the session); `Maildrop` answers Twisted's synchronous `IMailbox` getters
from that snapshot, records DELE in memory and applies them at QUIT in one
store transaction (RFC 1939 §6). Also the wire form of a message: CRLF line
ends and dot-stuffing (RFC 1939 §3), TOP's headers + n lines (RFC 1939 §7).
"""
from __future__ import annotations

import asyncio
import io
import logging

from twisted.cred import error as cred_error
from twisted.cred.credentials import IUsernamePassword
from twisted.internet import defer
from twisted.mail.pop3 import IMailbox
from zope.interface import implementer

from storage import Account, MessageMeta, Pop3DeletePolicy, Pop3Listing

from ..auth import AuthResult
from ..bridge import as_deferred

log = logging.getLogger("casella.pop3")

# Maildrop locks this process is releasing, by account id: a new login takes them over.
_RELEASING: dict[int, "Maildrop"] = {}
# A lock held elsewhere is tried this many times, this far apart, before [IN-USE].
_ACQUIRE_ATTEMPTS = 3
_ACQUIRE_RETRY_SECONDS = 0.05

# RETR read-ahead: up to this many bytes / messages fetched in one store query.
_READ_AHEAD_BYTES = 2 * 1024 * 1024
_READ_AHEAD_COUNT = 200


# ---------------------------------------------------------------- cred


class LockedOut(cred_error.UnauthorizedLogin):
    """Too many failed logins from this address (the shared throttle)."""


class MaildropInUse(cred_error.LoginDenied):
    """Another live session holds this account's maildrop lock (RFC 2449 §8.1.1 [IN-USE])."""


@implementer(IUsernamePassword)
class ClientCredentials:
    """A username/password plus where it came from, so the checker can throttle per address."""

    def __init__(self, username: str, password: str, ip: str) -> None:
        self.username = username
        self.password = password
        self.ip = ip

    def checkPassword(self, password: str) -> bool:  # noqa: N802 - IUsernamePassword
        # Our checker never compares plaintext; argon2 verification happens in the store.
        raise NotImplementedError


class StoreChecker:
    """ICredentialsChecker over `app.authenticator` (argon2 in a thread, shared throttling)."""

    credentialInterfaces = (IUsernamePassword,)  # noqa: N815 - Twisted's attribute name

    def __init__(self, app) -> None:  # noqa: ANN001 - server.daemon.App
        self.app = app

    def requestAvatarId(self, credentials: ClientCredentials) -> defer.Deferred:  # noqa: N802
        async def check() -> Account:
            result, account = await self.app.authenticator.check(
                credentials.username, credentials.password, credentials.ip, "pop3")
            if result == AuthResult.LOCKED:
                raise LockedOut()
            if result != AuthResult.OK or account is None:
                raise cred_error.UnauthorizedLogin()
            return account

        return as_deferred(check())


class Realm:
    """IRealm: the avatar is a `Maildrop` opened under the maildrop lock.

    `mind` is the session: it provides `holder` (a lock holder id unique to the
    session, valid across processes) and the idle timeout the lock outlives.
    """

    def __init__(self, app) -> None:  # noqa: ANN001
        self.app = app

    def requestAvatar(self, account: Account, mind, *interfaces):  # noqa: N802, ANN001
        if IMailbox not in interfaces:
            raise NotImplementedError("POP3 avatars provide IMailbox only")
        return as_deferred(self._open(account, mind.holder))

    async def _open(self, account: Account, holder: str):
        """RFC 1939 §8: exclusive access, then INBOX as it stands (one store transaction).

        A lock this process is still releasing (a session that just said QUIT or
        dropped) is taken over once that session's UPDATE has committed, without
        waiting for the release's own commit; one released on another node is
        waited for, briefly, before [IN-USE].
        """
        settings = self.app.settings.pop3
        listing = None
        for attempt in range(_ACQUIRE_ATTEMPTS):
            pending = _RELEASING.get(account.id)
            takeover = None
            if pending is not None:
                await pending.updated()
                takeover = pending.holder
            listing = await self.app.store.pop3_open(account.id, holder, settings.maildrop_lock_seconds,
                                                     takeover=takeover)
            if listing is not None:
                break
            if attempt + 1 < _ACQUIRE_ATTEMPTS and account.id not in _RELEASING:
                await asyncio.sleep(_ACQUIRE_RETRY_SECONDS)
        if listing is None:
            raise MaildropInUse()
        policy = account.pop3_delete_policy or Pop3DeletePolicy(settings.delete_policy)
        maildrop = Maildrop(self.app, account, holder, listing, policy)
        return IMailbox, maildrop, maildrop.logout


# ---------------------------------------------------------------- the avatar


def uidl_for(uidvalidity: int, uid: int) -> str:
    """RFC 1939 §7 unique-id: UID then UIDVALIDITY in hex (Dovecot's %08Xu%08Xv).

    UIDs are never reused while UIDVALIDITY stands, and a new UIDVALIDITY
    changes every value, so an id is never given to two different messages.
    """
    return f"{uid:08X}{uidvalidity:08X}"


@implementer(IMailbox)
class Maildrop:
    """INBOX as it stood at login; indexes are 0-based here, 1-based on the wire."""

    def __init__(self, app, account: Account, holder: str, listing: Pop3Listing,  # noqa: ANN001
                 policy: Pop3DeletePolicy) -> None:
        self.app = app
        self.account = account
        self.holder = holder
        self.policy = policy
        self.uidvalidity = listing.uidvalidity
        self.messages: tuple[MessageMeta, ...] = listing.messages
        self.deleted: set[int] = set()
        self.released = False
        self._release_task: asyncio.Task | None = None
        self._refreshing: asyncio.Future | None = None
        self._applying: asyncio.Future | None = None
        self._mailbox_id: int | None = None
        self._ahead: dict[int, bytes] = {}
        self._ahead_bytes = 0

    # Casella's view -------------------------------------------------------

    def __len__(self) -> int:
        return len(self.messages)

    def meta(self, index: int) -> MessageMeta:
        return self.messages[index]

    def uidl(self, index: int) -> str:
        return uidl_for(self.uidvalidity, self.messages[index].uid)

    def live(self) -> list[int]:
        """Indexes not marked deleted (RFC 1939 §5: STAT/LIST/UIDL skip them)."""
        return [i for i in range(len(self.messages)) if i not in self.deleted]

    def live_octets(self) -> int:
        return sum(m.size for i, m in enumerate(self.messages) if i not in self.deleted)

    def read_ahead(self, index: int) -> bytes | None:
        """The bytes if they were read ahead (taken out of the cache), else None."""
        raw = self._ahead.pop(index, None)
        if raw is not None:
            self._ahead_bytes -= len(raw)
        return raw

    async def read(self, index: int) -> bytes:
        """The stored bytes; small messages are read ahead in batches, as clients RETR in order."""
        raw = self.read_ahead(index)
        if raw is not None:
            return raw
        batch = self._read_ahead_batch(index)
        if len(batch) > 1:
            if self._mailbox_id is None:
                inbox = await self.app.store.get_mailbox(self.account.id, "INBOX")
                self._mailbox_id = inbox.id if inbox else None
            if self._mailbox_id is not None:
                uids = {self.messages[i].uid: i for i in batch}
                fetched = await self.app.store.fetch(self.account.id, self._mailbox_id, list(uids), raw=True)
                found = {uids[f.meta.uid]: f.raw for f in fetched if f.raw is not None}
                raw = found.pop(index, None)
                for i, data in found.items():
                    if i not in self.deleted:
                        self._ahead[i] = data
                        self._ahead_bytes += len(data)
                if raw is not None:
                    return raw
        # Not read ahead, or gone from INBOX since login: read_content says which (NotFound).
        return await self.app.store.read_content(self.account.id, self.messages[index].content_id)

    def _read_ahead_batch(self, index: int) -> list[int]:
        if self.messages[index].size > _READ_AHEAD_BYTES // 8:
            return [index]
        batch, total = [index], self.messages[index].size
        for i in range(index + 1, len(self.messages)):
            size = self.messages[i].size
            if len(batch) >= _READ_AHEAD_COUNT or total + size > _READ_AHEAD_BYTES - self._ahead_bytes:
                break
            if i not in self.deleted and i not in self._ahead:
                batch.append(i)
                total += size
        return batch

    def forget(self, index: int) -> None:
        """Drop read-ahead bytes of a message the client will not read (DELE)."""
        raw = self._ahead.pop(index, None)
        if raw is not None:
            self._ahead_bytes -= len(raw)

    async def apply_deletes(self) -> int:
        """RFC 1939 §6 UPDATE state: every DELE in one transaction."""
        uids = sorted(self.messages[i].uid for i in self.deleted)
        if not uids:
            return 0
        self._applying = asyncio.ensure_future(self.app.store.pop3_apply_deletes(self.account.id, uids, self.policy))
        return await _wait(self._applying)

    async def refresh_lock(self) -> bool:
        """Renew the lock's expiry; False if it was lost (expired and taken by another session)."""
        if self.released:
            return True
        self._refreshing = asyncio.ensure_future(self.app.store.acquire_maildrop(
            self.account.id, self.holder, self.app.settings.pop3.maildrop_lock_seconds))
        try:
            return await _wait(self._refreshing)
        finally:
            self._refreshing = None

    def release(self) -> defer.Deferred:
        """Release the maildrop lock (once, in the background); the Deferred fires when it is gone.

        A new login of the same account in this process waits for a pending
        release (see `Realm`), so QUIT does not have to wait for it.
        """
        if self._release_task is None:
            self.released = True
            task = asyncio.ensure_future(self._release_now())
            self._release_task = task
            _RELEASING[self.account.id] = self
            task.add_done_callback(lambda _: _RELEASING.pop(self.account.id, None)
                                   if _RELEASING.get(self.account.id) is self else None)
        return as_deferred(_wait(self._release_task))

    async def updated(self) -> None:
        """Wait for this session's UPDATE (QUIT's deletions), if one is committing."""
        if self._applying is not None:
            await asyncio.wait([self._applying])

    async def _release_now(self) -> None:
        refreshing = self._refreshing
        if refreshing is not None:
            # A renewal committing after the release would hold the lock until it expires.
            await asyncio.wait([refreshing])
        applying = self._applying
        if applying is not None:
            # A client that drops right after QUIT: its UPDATE is still committing, and the next
            # session must not list INBOX before it has (RFC 1939 §8 exclusive access). On SQLite
            # the release is immediate (an in-process lock), so this wait is the ordering.
            await asyncio.wait([applying])
        try:
            await self.app.store.release_maildrop(self.account.id, self.holder)
        except Exception as exc:  # noqa: BLE001 - the lock expires by itself
            log.warning("maildrop lock of %s not released (it expires by itself): %s", self.account.address, exc)

    def logout(self) -> None:
        self.release()

    # Twisted's IMailbox (sync getters from the snapshot) -------------------

    def _check(self, index: int) -> None:
        if not 0 <= index < len(self.messages):
            raise ValueError(index)

    def listMessages(self, index: int | None = None):  # noqa: N802, ANN201
        if index is None:
            return [0 if i in self.deleted else m.size for i, m in enumerate(self.messages)]
        self._check(index)
        return 0 if index in self.deleted else self.messages[index].size

    def getMessage(self, index: int) -> defer.Deferred:  # noqa: N802
        self._check(index)
        return as_deferred(self.read(index)).addCallback(io.BytesIO)

    def getUidl(self, index: int) -> bytes:  # noqa: N802
        self._check(index)
        return self.uidl(index).encode("ascii")

    def deleteMessage(self, index: int) -> None:  # noqa: N802
        self._check(index)
        self.deleted.add(index)
        self.forget(index)

    def undeleteMessages(self) -> None:  # noqa: N802
        self.deleted.clear()

    def sync(self) -> defer.Deferred:
        return as_deferred(self.apply_deletes())


async def _wait(task: asyncio.Future):  # noqa: ANN202
    """Await a shared task without letting one waiter's cancellation cancel it."""
    return await asyncio.shield(task)


# ---------------------------------------------------------------- wire form


def top_end(data: bytes, body_lines: int) -> int:
    """Offset just past the headers, the blank line and `body_lines` body lines (CRLF data)."""
    if data.startswith(b"\r\n"):
        position = 2  # no header fields at all: the body starts after the blank line
    else:
        blank = data.find(b"\r\n\r\n")
        if blank < 0:
            return len(data)  # all headers: RFC 1939 §7 sends what there is
        position = blank + 4
    for _ in range(body_lines):
        end = data.find(b"\r\n", position)
        if end < 0:
            return len(data)
        position = end + 2
    return position


def to_wire(raw: bytes, body_lines: int | None = None) -> bytes:
    """A multi-line response body: CRLF line ends, dot-stuffed, with the terminating `.` line.

    Stored CRLF messages come out byte for byte; bare LF becomes CRLF (RFC 1939 §3).
    """
    data = raw
    if raw.count(b"\n") != raw.count(b"\r\n"):
        data = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if body_lines is not None:
        data = data[:top_end(data, body_lines)]
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    # RFC 1939 §3: a line starting with the termination octet gets one more.
    if b"\n." in data:
        data = data.replace(b"\r\n.", b"\r\n..")
    if data.startswith(b"."):
        data = b"." + data
    return data + b".\r\n"
