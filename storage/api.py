"""MailStore: the async facade every protocol, the CLI and the tests call.

The only place with SQL (with models.py and the migrations). Each call owns
its transaction and returns frozen dataclasses (storage/types.py). Invariants
kept here, whatever protocol calls:

- A write is committed durably before the call returns (SMTP 250, APPEND OK).
- UIDs in a mailbox strictly increase and are never reused while its
  UIDVALIDITY stands (RFC 3501 §2.3.1.1): `uidnext` only grows.
- Every change bumps the mailbox's MODSEQ (RFC 7162 §3) and publishes a
  change event after commit; expunges leave tombstones for VANISHED.
- Every call that names a mailbox or message takes the account id and
  checks ownership: one account never reaches another's mail.

Writes go through the group-commit writer (storage/writer.py) on both
backends; it runs deadlock and serialization-failure victims again.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import re
import time
from array import array
from bisect import bisect_left
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Sequence, TypeVar

from sqlalchemy import Integer, String, any_, bindparam, case, delete, exists, func, insert, literal, or_, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import DBAPIError, IntegrityError, NoResultFound
from sqlalchemy.orm import Session

from . import passwords
from . import queries as q
from .changes import (
    Change,
    ChangeBus,
    FlagsChanged,
    MailboxDeleted,
    MessageAdded,
    MessagesExpunged,
    PostgresRelay,
)
from .contentcache import EntryPartsCache
from .engine import Batchable, Database, create_database
from .errors import (
    AlreadyExists,
    Forbidden,
    InvalidName,
    MailboxExists,
    MailboxNotEmpty,
    NoSuchMailbox,
    NotFound,
    OverQuota,
    StoreError,
    WeakPassword,
)
from .mime import parse_message
from .models import (
    AccountRow,
    AliasRow,
    DomainRow,
    ExpungeRow,
    MailboxMessageRow,
    MailboxRow,
    MaildropLockRow,
    MessageRow,
    OutboundRecipientRow,
    OutboundRow,
    SubscriptionRow,
)
from .types import (
    DEFAULT_MAILBOXES,
    Account,
    Alias,
    AppendResult,
    ChangesSince,
    CopyResult,
    Delivery,
    Domain,
    Flag,
    FlagUpdate,
    MailboxIndex,
    MailboxInfo,
    MailboxSnapshot,
    MailboxStatus,
    MessageMeta,
    OutboundItem,
    Pop3DeletePolicy,
    Resolution,
    SpecialUse,
    StoreResult,
)
from .writer import GroupCommitWriter, WriteOp

log = logging.getLogger("casella.store")
T = TypeVar("T")

HIERARCHY_DELIMITER = "/"
MAX_MAILBOX_NAME = 1000
MIN_PASSWORD_LENGTH = 8
# Messages bigger than this are parsed in a thread so a 50 MB upload never stalls the loop
# (and an APPEND of one is not a light write: see LIGHT_ENTRIES).
_PARSE_IN_THREAD_ABOVE = 256 * 1024
#: Operations on at most this many entries (STORE, COPY) or mailboxes at most this large (STATUS,
#: EXPUNGE) are light: on SQLite their statements run on the loop thread (storage/engine.py).
#: A FETCH that decodes parse caches (ENVELOPE, BODYSTRUCTURE) is light up to LIGHT_PARSED.
LIGHT_ENTRIES = 500
LIGHT_PARSED = 50
_ADDRESS = re.compile(r"^[^@\s<>()\[\],;:\"]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                      r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
_DOMAIN = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$")


@dataclass(frozen=True, slots=True)
class FetchedMessage:
    """A mailbox entry with, on request, its parse cache and raw bytes."""

    meta: MessageMeta
    header_size: int
    cache: dict | None
    raw: bytes | None


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    content_id: int
    deliveries: tuple[Delivery, ...]
    over_quota: tuple[int, ...]
    queue_id: int | None


@dataclass(frozen=True, slots=True)
class Pop3Listing:
    uidvalidity: int
    messages: tuple[MessageMeta, ...]


@dataclass(frozen=True, slots=True)
class _DeliveryJob:
    """One deliver() call, waiting for the writer with the others of its batch."""

    raw: bytes
    digest: str
    header_size: int
    cache: dict
    when: datetime
    targets: list[int]  # account ids, sorted
    mailbox: str
    enforce_quota: bool
    outbound_from: str
    outbound_to: tuple[str, ...]


def normalize_address(address: str) -> str:
    address = address.strip()
    if not _ADDRESS.match(address):
        raise InvalidName(f"malformed address: {address!r}")
    local, _, domain = address.rpartition("@")
    return f"{local.lower()}@{domain.lower()}"


def normalize_domain(name: str) -> str:
    name = name.strip().lower().rstrip(".")
    if not _DOMAIN.match(name):
        raise InvalidName(f"malformed domain: {name!r}")
    return name


def normalize_mailbox_name(name: str) -> str:
    """Validate a mailbox name and give it its stored form.

    INBOX is case-insensitive (RFC 3501 §5.1), a trailing delimiter only says the
    client intends children (§6.3.3), and empty, `.` or `..` levels are refused so
    that no name can look like a path out of the account.
    """
    if name.endswith(HIERARCHY_DELIMITER):
        name = name[:-1]
    if not name:
        raise InvalidName("empty mailbox name")
    if len(name) > MAX_MAILBOX_NAME:
        raise InvalidName("mailbox name too long")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in name):
        raise InvalidName("control characters in mailbox name")
    if "*" in name or "%" in name:
        raise InvalidName("wildcards in mailbox name")
    levels = name.split(HIERARCHY_DELIMITER)
    for level in levels:
        if level in ("", ".", ".."):
            raise InvalidName("empty, '.' or '..' level in mailbox name")
    if levels[0].upper() == "INBOX":
        levels[0] = "INBOX"
    return HIERARCHY_DELIMITER.join(levels)


def _keywords_str(keywords: Iterable[str]) -> str:
    return " ".join(sorted(set(keywords)))


def _keywords_tuple(text: str) -> tuple[str, ...]:
    return tuple(text.split()) if text else ()


def _as_utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything we store is UTC.
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def _internaldate_to_store(value: datetime | None) -> datetime:
    """UTC, now if not given: SQLite keeps no offset, so another zone would come back as the wrong instant."""
    return (value or datetime.now(timezone.utc)).astimezone(timezone.utc)


_DUMMY: list[str] = []


def _dummy_hash() -> str:
    if not _DUMMY:
        _DUMMY.append(passwords.hash_password(os.urandom(16).hex()))
    return _DUMMY[0]


def _sqlstate(exc: DBAPIError) -> str | None:
    orig = getattr(exc, "orig", None)
    return getattr(orig, "sqlstate", None) or getattr(getattr(orig, "__cause__", None), "sqlstate", None)


def _account(row: AccountRow, domain: str) -> Account:
    return Account(
        id=row.id, address=row.address, domain=domain, quota_bytes=row.quota_bytes,
        used_bytes=row.used_bytes,
        pop3_delete_policy=Pop3DeletePolicy(row.pop3_delete_policy) if row.pop3_delete_policy else None,
        created_at=_as_utc(row.created_at))


def _mailbox(row: Any, subscribed: bool) -> MailboxInfo:
    return MailboxInfo(
        id=row.id, account_id=row.account_id, name=row.name, uidvalidity=row.uidvalidity,
        uidnext=row.uidnext, highest_modseq=row.highest_modseq,
        special_use=SpecialUse(row.special_use) if row.special_use else None,
        subscribed=subscribed)


_META_COLUMNS = (
    MailboxMessageRow.uid, MailboxMessageRow.flags, MailboxMessageRow.keywords,
    MailboxMessageRow.modseq, MailboxMessageRow.size, MailboxMessageRow.internaldate,
    MailboxMessageRow.message_id,
)


def _meta(row: Any) -> MessageMeta:
    return MessageMeta(uid=row[0], flags=row[1], keywords=_keywords_tuple(row[2]), modseq=row[3],
                       size=row[4], internaldate=_as_utc(row[5]), content_id=row[6])


class MailStore:
    """The one facade over the mailbox database. Create with `await MailStore.open(url)`."""

    def __init__(self, db: Database, bus: ChangeBus | None = None, *,
                 auth_cache_seconds: float = 60.0, group_commit: bool | None = None,
                 content_cache_bytes: int = 64 << 20) -> None:
        self.db = db
        self.bus = bus or ChangeBus()
        # Both backends: on PostgreSQL too one transaction per batch beats one per write (storage/writer.py).
        use_group_commit = True if group_commit is None else group_commit
        self._funnel = GroupCommitWriter(db, self.bus) if use_group_commit else None
        self._relay: PostgresRelay | None = None
        self._auth_cache_seconds = auth_cache_seconds
        self._auth_cache: dict[str, tuple[bytes, float, Account]] = {}
        self._auth_key = os.urandom(32)
        # \Recent claims (RFC 3501 §2.3.2). Every session with a mailbox selected hears of each new
        # message and tries to claim it; only one can win. first_recent_uid only grows, so a value
        # this process saw committed stays a lower bound, and a claim in flight here for higher UIDs
        # settles the question: the losers need no write of their own (10 sessions on one INBOX
        # made 10 writes per APPEND before this). Keyed by (mailbox id, UIDVALIDITY): SQLite hands a
        # deleted mailbox's id to the next one created, whose UIDVALIDITY differs (per account it
        # only grows) and whose account may differ too.
        self._recent_floor: dict[tuple[int, int], int] = {}
        self._recent_inflight: dict[tuple[int, int], tuple[int, asyncio.Future]] = {}
        # Entries each mailbox held at its last STATUS here, by (account id, name): where to count next.
        self._entries_counted: dict[tuple[int, str], int] = {}
        # IMAP FETCH's immutable reads (storage/contentcache.py).
        self.content_cache = EntryPartsCache(content_cache_bytes)

    # ---------------------------------------------------------------- lifecycle

    @classmethod
    async def open(cls, url: str, *, bus: ChangeBus | None = None, cross_process_events: bool = False,
                   pool_size: int = 10, busy_timeout_ms: int = 10000, sqlite_inline: bool = True,
                   **options: Any) -> "MailStore":
        database = create_database(url, pool_size=pool_size, busy_timeout_ms=busy_timeout_ms,
                                   sqlite_inline=sqlite_inline)
        store = cls(database, bus, **options)
        if cross_process_events and store.db.is_postgres:
            from sqlalchemy.engine import make_url

            dsn = make_url(store.db.url).set(drivername="postgresql").render_as_string(hide_password=False)
            store._relay = PostgresRelay(store.bus, dsn)
            await store._relay.start()
        return store

    async def close(self) -> None:
        if self._funnel is not None:
            await self._funnel.close()
        if self._relay is not None:
            await self._relay.close()
        await self.db.dispose()

    @property
    def group_commit_stats(self) -> tuple[int, int]:
        """(batches, operations) committed by the group-commit writer so far."""
        if self._funnel is None:
            return (0, 0)
        return (self._funnel.batches, self._funnel.operations)

    async def _read(self, fn: Callable[[Session], T], *, light: bool = False) -> T:
        """`light`: a few rows through an index, whatever the mailbox's size (storage/engine.py
        runs those on the loop thread with SQLite); anything that scans a mailbox is not."""
        return await self.db.read(fn, inline=light)

    async def _write(self, op: WriteOp, *, light: bool = False) -> Any:
        if self._funnel is not None:
            return await self._funnel.submit(op, light=light)
        for attempt in range(5):
            try:
                (result, changes), _ = (await self.db.write([op], inline=light))[0]
                break
            except DBAPIError as exc:
                # PostgreSQL: a deadlock or serialization failure is retried; anything else is real.
                if _sqlstate(exc) not in ("40P01", "40001") or attempt == 4:
                    raise
                await asyncio.sleep(0.01 * (attempt + 1))
        if changes:
            self.bus.publish(changes)
        return result

    # ---------------------------------------------------------------- domains

    async def add_domain(self, name: str) -> Domain:
        name = normalize_domain(name)

        def op(s: Session):
            if s.scalar(select(DomainRow.id).where(DomainRow.name == name)) is not None:
                raise AlreadyExists(f"domain {name} already exists")
            row = DomainRow(name=name)
            s.add(row)
            s.flush()
            return Domain(row.id, row.name, None), []

        return await self._write(op)

    async def list_domains(self) -> tuple[Domain, ...]:
        def read(s: Session):
            rows = (s.execute(select(DomainRow).order_by(DomainRow.name))).scalars().all()
            return tuple(Domain(r.id, r.name, r.catchall) for r in rows)
        return await self._read(read)

    async def is_local_domain(self, name: str) -> bool:
        def read(s: Session):
            return s.scalar(select(DomainRow.id).where(DomainRow.name == name.lower().rstrip("."))) is not None
        return await self._read(read)

    async def remove_domain(self, name: str) -> None:
        name = normalize_domain(name)

        def op(s: Session):
            domain_id = s.scalar(select(DomainRow.id).where(DomainRow.name == name))
            if domain_id is None:
                raise NotFound(f"no such domain: {name}")
            if s.scalar(select(AccountRow.id).where(AccountRow.domain_id == domain_id).limit(1)):
                raise Forbidden(f"domain {name} still has accounts; remove them first")
            s.execute(delete(AliasRow).where(AliasRow.domain_id == domain_id))
            s.execute(delete(DomainRow).where(DomainRow.id == domain_id))
            return None, []

        await self._write(op)

    async def set_catchall(self, domain: str, target: str | None) -> None:
        domain = normalize_domain(domain)
        target = normalize_address(target) if target else None

        def op(s: Session):
            result = s.execute(update(DomainRow).where(DomainRow.name == domain).values(catchall=target))
            if result.rowcount == 0:
                raise NotFound(f"no such domain: {domain}")
            return None, []

        await self._write(op)

    # ---------------------------------------------------------------- accounts

    async def add_account(self, address: str, password: str | None = None, *,
                          password_hash: str | None = None, quota_bytes: int | None = None) -> Account:
        """Create an account with its default folders (INBOX, Sent, Drafts, Trash, Junk, Archive)."""
        address = normalize_address(address)
        if password_hash is None:
            if password is None or len(password) < MIN_PASSWORD_LENGTH:
                raise WeakPassword(f"password must be at least {MIN_PASSWORD_LENGTH} characters")
            password_hash = await asyncio.to_thread(passwords.hash_password, password)
        else:
            try:
                passwords.check_importable(password_hash)
            except passwords.UnknownHashScheme as exc:
                raise StoreError(str(exc)) from None
        if quota_bytes is not None and quota_bytes < 0:
            raise StoreError("quota must be zero or more bytes")
        domain_name = address.rpartition("@")[2]

        def op(s: Session):
            domain_id = s.scalar(select(DomainRow.id).where(DomainRow.name == domain_name))
            if domain_id is None:
                raise NotFound(f"unknown domain {domain_name}; add it first with 'casella domain add {domain_name}'")
            if s.scalar(select(AccountRow.id).where(AccountRow.address == address)) is not None:
                raise AlreadyExists(f"account {address} already exists")
            row = AccountRow(domain_id=domain_id, address=address, password_hash=password_hash,
                             quota_bytes=quota_bytes, used_bytes=0)
            s.add(row)
            s.flush()
            for name, role in DEFAULT_MAILBOXES:
                self._insert_mailbox(s, row.id, name, role.value if role else None)
            return _account(row, domain_name), []

        return await self._write(op)

    async def get_account(self, address: str) -> Account | None:
        try:
            address = normalize_address(address)
        except InvalidName:
            return None
        def read(s: Session):
            row = (s.execute(
                select(AccountRow, DomainRow.name).join(DomainRow).where(AccountRow.address == address))).first()
            return _account(row[0], row[1]) if row else None
        return await self._read(read)

    async def get_account_by_id(self, account_id: int) -> Account | None:
        def read(s: Session):
            row = (s.execute(
                select(AccountRow, DomainRow.name).join(DomainRow).where(AccountRow.id == account_id))).first()
            return _account(row[0], row[1]) if row else None
        return await self._read(read)

    async def list_accounts(self, domain: str | None = None) -> tuple[Account, ...]:
        def read(s: Session):
            query = select(AccountRow, DomainRow.name).join(DomainRow).order_by(AccountRow.address)
            if domain:
                query = query.where(DomainRow.name == normalize_domain(domain))
            return tuple(_account(r[0], r[1]) for r in (s.execute(query)).all())
        return await self._read(read)

    async def remove_account(self, address: str) -> None:
        address = normalize_address(address)

        def op(s: Session):
            account_id = s.scalar(select(AccountRow.id).where(AccountRow.address == address))
            if account_id is None:
                raise NotFound(f"no such account: {address}")
            mailbox_ids = (s.scalars(select(MailboxRow.id).where(MailboxRow.account_id == account_id))).all()
            content_ids = set((s.scalars(select(MailboxMessageRow.message_id).where(
                MailboxMessageRow.mailbox_id.in_(mailbox_ids)))).all()) if mailbox_ids else set()
            if mailbox_ids:
                s.execute(delete(MailboxMessageRow).where(MailboxMessageRow.mailbox_id.in_(mailbox_ids)))
                s.execute(delete(ExpungeRow).where(ExpungeRow.mailbox_id.in_(mailbox_ids)))
                s.execute(delete(MailboxRow).where(MailboxRow.id.in_(mailbox_ids)))
            s.execute(delete(MaildropLockRow).where(MaildropLockRow.account_id == account_id))
            s.execute(delete(AccountRow).where(AccountRow.id == account_id))
            self._collect_garbage(s, content_ids)
            return None, [MailboxDeleted(mailbox_id) for mailbox_id in mailbox_ids]

        await self._write(op)
        self._forget_credentials(address)

    async def set_password(self, address: str, password: str) -> None:
        if len(password) < MIN_PASSWORD_LENGTH:
            raise WeakPassword(f"password must be at least {MIN_PASSWORD_LENGTH} characters")
        address = normalize_address(address)
        new_hash = await asyncio.to_thread(passwords.hash_password, password)
        await self._update_account(address, password_hash=new_hash)
        self._forget_credentials(address)

    async def set_quota(self, address: str, quota_bytes: int | None) -> None:
        if quota_bytes is not None and quota_bytes < 0:
            raise StoreError("quota must be zero or more bytes")
        await self._update_account(normalize_address(address), quota_bytes=quota_bytes)

    async def set_pop3_delete_policy(self, address: str, policy: Pop3DeletePolicy | None) -> None:
        await self._update_account(normalize_address(address),
                                   pop3_delete_policy=Pop3DeletePolicy(policy).value if policy else None)

    async def _update_account(self, address: str, **values: Any) -> None:
        def op(s: Session):
            result = s.execute(update(AccountRow).where(AccountRow.address == address).values(**values))
            if result.rowcount == 0:
                raise NotFound(f"no such account: {address}")
            return None, []

        await self._write(op)

    # ---------------------------------------------------------------- aliases

    async def add_alias(self, source: str, target: str) -> Alias:
        """`source` is `local@domain` of a local domain; `target` any address (local or remote)."""
        source = normalize_address(source)
        target = normalize_address(target)
        domain_name = source.rpartition("@")[2]

        def op(s: Session):
            domain_id = s.scalar(select(DomainRow.id).where(DomainRow.name == domain_name))
            if domain_id is None:
                raise NotFound(f"unknown domain {domain_name}")
            if s.scalar(select(AliasRow.id).where(AliasRow.source == source, AliasRow.target == target)):
                raise AlreadyExists(f"alias {source} -> {target} already exists")
            row = AliasRow(domain_id=domain_id, source=source, target=target)
            s.add(row)
            s.flush()
            return Alias(row.id, source, target), []

        return await self._write(op)

    async def list_aliases(self, domain: str | None = None) -> tuple[Alias, ...]:
        def read(s: Session):
            query = select(AliasRow).order_by(AliasRow.source, AliasRow.target)
            if domain:
                query = query.join(DomainRow).where(DomainRow.name == normalize_domain(domain))
            return tuple(Alias(r.id, r.source, r.target) for r in (s.scalars(query)).all())
        return await self._read(read)

    async def remove_alias(self, source: str, target: str | None = None) -> int:
        source = normalize_address(source)
        target = normalize_address(target) if target else None

        def op(s: Session):
            query = delete(AliasRow).where(AliasRow.source == source)
            if target:
                query = query.where(AliasRow.target == target)
            result = s.execute(query)
            if result.rowcount == 0:
                raise NotFound(f"no such alias: {source}")
            return result.rowcount, []

        return await self._write(op)

    # ---------------------------------------------------------------- authentication

    def _credential_digest(self, password: str) -> bytes:
        return hmac.new(self._auth_key, password.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()

    def _forget_credentials(self, address: str) -> None:
        self._auth_cache.pop(address, None)

    async def authenticate(self, username: str, password: str) -> Account | None:
        """The account if the password is right, else None. Hashing runs in a thread.

        Verified credentials are cached for a short time (as Dovecot's auth cache
        does) as an HMAC with a per-process key, never as the password itself.
        """
        try:
            address = normalize_address(username)
        except InvalidName:
            return None
        digest = self._credential_digest(password)
        cached = self._auth_cache.get(address)
        if cached and cached[1] > time.monotonic() and hmac.compare_digest(cached[0], digest):
            return cached[2]
        def read(s: Session):
            row = s.execute(
                select(AccountRow, DomainRow.name).join(DomainRow).where(AccountRow.address == address)).first()
            return (row[0].password_hash, _account(row[0], row[1])) if row else None

        found = await self._read(read, light=True)
        if found is None:
            # Spend the same time as a real check so timing does not reveal which users exist.
            await asyncio.to_thread(passwords.verify_password, _dummy_hash(), password)
            return None
        stored, account = found
        if not await asyncio.to_thread(passwords.verify_password, stored, password):
            return None
        if passwords.needs_rehash(stored):
            new_hash = await asyncio.to_thread(passwords.hash_password, password)
            await self._update_account(address, password_hash=new_hash)
        if self._auth_cache_seconds > 0:
            self._auth_cache[address] = (digest, time.monotonic() + self._auth_cache_seconds, account)
        return account

    # ---------------------------------------------------------------- recipients

    async def resolve_recipient(self, address: str, *, _depth: int = 0) -> Resolution | None:
        """Where mail for `address` goes: local accounts and/or remote forward targets.

        Order: exact account, exact alias, plus-addressing (`user+tag@` -> `user@`),
        then the domain's catch-all. None means "local domain, unknown user";
        a non-local domain gives `local=False` and no accounts.
        """
        try:
            address = normalize_address(address)
        except InvalidName:
            return None
        local, _, domain_name = address.rpartition("@")
        def read(s: Session):
            domain = s.execute(select(DomainRow).where(DomainRow.name == domain_name)).scalar_one_or_none()
            if domain is None:
                return None
            candidates = [address]
            if "+" in local:
                candidates.append(local.split("+", 1)[0] + "@" + domain_name)
            for candidate in candidates:
                account_id = s.scalar(select(AccountRow.id).where(AccountRow.address == candidate))
                targets = s.scalars(select(AliasRow.target).where(AliasRow.source == candidate)).all()
                if account_id is not None or targets:
                    return domain.catchall, account_id, targets
            return domain.catchall, None, []

        found = await self._read(read)
        if found is None:
            return Resolution(address, False, ())
        catchall, account_id, targets = found
        if account_id is None and not targets:
            if catchall and _depth == 0:
                resolved = await self.resolve_recipient(catchall, _depth=_depth + 1)
                return Resolution(address, True, resolved.account_ids) if resolved and resolved.local else None
            return None
        account_ids = [account_id] if account_id is not None else []
        if _depth < 5:
            for target in targets:
                resolved = await self.resolve_recipient(target, _depth=_depth + 1)
                if resolved is not None and resolved.local:
                    account_ids.extend(resolved.account_ids)
        unique_ids = tuple(dict.fromkeys(account_ids))
        if not unique_ids:
            return None
        return Resolution(address, True, unique_ids)

    async def owned_addresses(self, account_id: int) -> frozenset[str]:
        """The account's own address and every alias that leads to it (MAIL FROM on submission)."""
        def read(s: Session):
            address = s.scalar(select(AccountRow.address).where(AccountRow.id == account_id))
            if address is None:
                return frozenset()
            sources = (s.scalars(select(AliasRow.source).where(AliasRow.target == address))).all()
            return frozenset([address, *sources])
        return await self._read(read)

    # ---------------------------------------------------------------- mailboxes

    def _next_uidvalidity(self, s: Session, account_id: int) -> int:
        last = s.scalar(select(AccountRow.last_uidvalidity).where(AccountRow.id == account_id)) or 0
        value = max(int(time.time()), last + 1) & 0xFFFFFFFF or 1
        s.execute(update(AccountRow).where(AccountRow.id == account_id).values(last_uidvalidity=value))
        return value

    def _insert_mailbox(self, s: Session, account_id: int, name: str, special_use: str | None,
                              subscribed: bool = True) -> MailboxRow:
        row = MailboxRow(account_id=account_id, name=name,
                         uidvalidity=self._next_uidvalidity(s, account_id),
                         uidnext=1, highest_modseq=1, first_recent_uid=1,
                         special_use=special_use)
        s.add(row)
        s.flush()
        if subscribed:
            self._subscribe(s, account_id, name)
        return row

    # ---- imap (issue 5): subscriptions are names of their own (RFC 3501 §6.3.6)

    def _subscriptions(self, s: Session, account_id: int) -> set[str]:
        return set(s.scalars(select(SubscriptionRow.name).where(SubscriptionRow.account_id == account_id)))

    def _is_subscribed(self, s: Session, account_id: int, name: str) -> bool:
        return q.IS_SUBSCRIBED.first(s.connection(), {"account_id": account_id, "name": name}) is not None

    def _subscribe(self, s: Session, account_id: int, name: str) -> None:
        if not self._is_subscribed(s, account_id, name):
            s.execute(insert(SubscriptionRow).values(account_id=account_id, name=name))

    async def list_subscriptions(self, account_id: int) -> tuple[str, ...]:
        """Every subscribed name, sorted, whether or not its mailbox exists (RFC 5258 \\NonExistent)."""
        def read(s: Session):
            return tuple(sorted(self._subscriptions(s, account_id)))
        return await self._read(read)

    async def list_mailboxes(self, account_id: int) -> tuple[MailboxInfo, ...]:
        return (await self.list_mailboxes_and_subscriptions(account_id))[0]

    async def list_mailboxes_and_subscriptions(self, account_id: int) -> tuple[tuple[MailboxInfo, ...],
                                                                               tuple[str, ...]]:
        """LIST/LSUB's one read: the mailboxes (by name) and every subscribed name, sorted."""
        def read(s: Session):
            conn = s.connection()
            subscribed = {name for name, in q.SUBSCRIBED_NAMES.all(conn, {"account_id": account_id})}
            rows = q.MAILBOXES_OF_ACCOUNT.all(conn, {"account_id": account_id})
            return tuple(_mailbox(r, r.name in subscribed) for r in rows), tuple(sorted(subscribed))
        return await self._read(read, light=True)

    async def get_mailbox(self, account_id: int, name: str) -> MailboxInfo | None:
        name = normalize_mailbox_name(name)
        def read(s: Session):
            row = q.MAILBOX_BY_NAME.first(s.connection(), {"account_id": account_id, "name": name})
            return _mailbox(row, self._is_subscribed(s, account_id, name)) if row else None
        return await self._read(read, light=True)

    async def create_mailbox(self, account_id: int, name: str,
                             special_use: SpecialUse | None = None, *, subscribe: bool = True) -> MailboxInfo:
        """Create a mailbox and any missing parents (RFC 3501 §6.3.3), subscribed unless told not to
        (a subscription the name already had is kept either way)."""
        name = normalize_mailbox_name(name)

        def op(s: Session):
            existing = set((s.scalars(select(MailboxRow.name).where(MailboxRow.account_id == account_id))).all())
            if name in existing:
                raise MailboxExists(f"mailbox {name} already exists")
            levels = name.split(HIERARCHY_DELIMITER)
            for depth in range(1, len(levels)):
                parent = HIERARCHY_DELIMITER.join(levels[:depth])
                if parent not in existing:
                    self._insert_mailbox(s, account_id, parent, None, subscribed=False)
            row = self._insert_mailbox(s, account_id, name, special_use.value if special_use else None,
                                       subscribed=subscribe)
            return _mailbox(row, subscribe or self._is_subscribed(s, account_id, name)), []

        return await self._write(op)

    async def delete_mailbox(self, account_id: int, name: str) -> None:
        name = normalize_mailbox_name(name)
        if name == "INBOX":
            raise Forbidden("INBOX cannot be deleted")

        def op(s: Session):
            row = self._mailbox_row(s, account_id, name)
            has_children = s.scalar(select(MailboxRow.id).where(
                MailboxRow.account_id == account_id,
                MailboxRow.name.startswith(name + HIERARCHY_DELIMITER, autoescape=True)).limit(1))
            if has_children:
                raise MailboxNotEmpty(f"mailbox {name} has children; delete them first")
            entries = (s.execute(select(MailboxMessageRow.message_id, MailboxMessageRow.size)
                                       .where(MailboxMessageRow.mailbox_id == row.id))).all()
            s.execute(delete(MailboxMessageRow).where(MailboxMessageRow.mailbox_id == row.id))
            s.execute(delete(ExpungeRow).where(ExpungeRow.mailbox_id == row.id))
            s.execute(delete(MailboxRow).where(MailboxRow.id == row.id))
            self._add_usage(s, account_id, -sum(size for _, size in entries))
            self._collect_garbage(s, {content_id for content_id, _ in entries})
            return None, [MailboxDeleted(row.id)]

        await self._write(op)

    async def rename_mailbox(self, account_id: int, old: str, new: str) -> MailboxInfo:
        """RENAME with its children (RFC 3501 §6.3.5); renaming INBOX moves its messages
        into the new mailbox and leaves INBOX empty, its children untouched."""
        old = normalize_mailbox_name(old)
        new = normalize_mailbox_name(new)
        if new == "INBOX":
            raise MailboxExists("INBOX already exists")
        if new == old or new.startswith(old + HIERARCHY_DELIMITER):
            raise Forbidden("cannot rename a mailbox into itself or its own child")

        def op(s: Session):
            source = s.get(MailboxRow, self._mailbox_row(s, account_id, old).id)  # changed below, as ORM
            names = set((s.scalars(select(MailboxRow.name).where(MailboxRow.account_id == account_id))).all())
            if new in names:
                raise MailboxExists(f"mailbox {new} already exists")
            levels = new.split(HIERARCHY_DELIMITER)
            for depth in range(1, len(levels)):
                parent = HIERARCHY_DELIMITER.join(levels[:depth])
                if parent not in names and parent != old:
                    self._insert_mailbox(s, account_id, parent, None, subscribed=False)
            changes: list[Change] = []
            if old == "INBOX":
                target = self._insert_mailbox(s, account_id, new, None, subscribed=False)
                uids = (s.scalars(select(MailboxMessageRow.uid).where(
                    MailboxMessageRow.mailbox_id == source.id).order_by(MailboxMessageRow.uid))).all()
                target.uidnext = source.uidnext
                target.highest_modseq = source.highest_modseq
                if uids:
                    modseq = self._bump_modseq(s, source.id)
                    s.execute(update(MailboxMessageRow).where(MailboxMessageRow.mailbox_id == source.id)
                                    .values(mailbox_id=target.id))
                    s.execute(insert(ExpungeRow), [
                        {"mailbox_id": source.id, "uid": uid, "modseq": modseq} for uid in uids])
                    changes.append(MessagesExpunged(source.id, tuple(uids), modseq))
                s.flush()
                return _mailbox(target, self._is_subscribed(s, account_id, new)), changes
            children = (s.execute(select(MailboxRow).where(
                MailboxRow.account_id == account_id,
                MailboxRow.name.startswith(old + HIERARCHY_DELIMITER, autoescape=True)))).scalars().all()
            for child in children:
                child_new = new + child.name[len(old):]
                if child_new in names:
                    raise MailboxExists(f"mailbox {child_new} already exists")
                child.name = child_new
            source.name = new
            s.flush()
            # Subscriptions are names and stay where they were (Dovecot does the same).
            return _mailbox(source, self._is_subscribed(s, account_id, new)), changes

        return await self._write(op)

    async def set_subscribed(self, account_id: int, name: str, subscribed: bool) -> None:
        """SUBSCRIBE any valid name, existing or not (RFC 3501 §6.3.6); UNSUBSCRIBE of a name
        that is neither subscribed nor a mailbox raises NoSuchMailbox."""
        name = normalize_mailbox_name(name)

        def op(s: Session):
            if subscribed:
                self._subscribe(s, account_id, name)
                return None, []
            result = s.execute(delete(SubscriptionRow).where(
                SubscriptionRow.account_id == account_id, SubscriptionRow.name == name))
            if result.rowcount == 0 and s.scalar(select(MailboxRow.id).where(
                    MailboxRow.account_id == account_id, MailboxRow.name == name)) is None:
                raise NoSuchMailbox(f"no mailbox {name}")
            return None, []

        await self._write(op)

    async def set_special_use(self, account_id: int, name: str, special_use: SpecialUse | None) -> None:
        name = normalize_mailbox_name(name)

        def op(s: Session):
            result = s.execute(update(MailboxRow).where(
                MailboxRow.account_id == account_id, MailboxRow.name == name)
                .values(special_use=special_use.value if special_use else None))
            if result.rowcount == 0:
                raise NoSuchMailbox(f"no mailbox {name}")
            return None, []

        await self._write(op)

    async def mailbox_status(self, account_id: int, name: str) -> MailboxStatus:
        name = normalize_mailbox_name(name)
        def read(s: Session, largest: int | None = None) -> MailboxStatus | None:
            row = self._mailbox_row(s, account_id, name)
            if largest is not None and row.uidnext - 1 > largest:
                return None  # it may hold many entries, and counting them is a scan: not light
            return self._status(s, row, self._is_subscribed(s, account_id, name))
        # Counting is a scan of the mailbox's entries: light if it held few at the last count
        # here, or, never counted, if it never had more UIDs than that.
        key = (account_id, name)
        counted = self._entries_counted.get(key)
        status = None
        if counted is None or counted <= LIGHT_ENTRIES:
            status = await self._read(lambda s: read(s, LIGHT_ENTRIES if counted is None else None), light=True)
        if status is None:
            status = await self._read(read)
        self._entries_counted[key] = status.messages
        return status

    def _status(self, s: Session, row: Any, subscribed: bool) -> MailboxStatus:
        counts = q.MAILBOX_COUNTS.one(s.connection(), {
            "mailbox_id": row.id, "seen_flag": int(Flag.SEEN), "first_recent_uid": row.first_recent_uid})
        return MailboxStatus(_mailbox(row, subscribed), int(counts[0]), int(counts[1]), int(counts[2]), int(counts[3]))

    async def list_status(self, account_id: int) -> tuple[MailboxStatus, ...]:
        """STATUS of every mailbox of the account in one read (LIST-STATUS, RFC 5819)."""
        def read(s: Session):
            conn = s.connection()
            rows = q.MAILBOXES_OF_ACCOUNT.all(conn, {"account_id": account_id})
            subscribed = self._subscriptions(s, account_id)
            return tuple([self._status(s, row, row.name in subscribed) for row in rows])
        return await self._read(read)

    def _mailbox_row(self, s: Session, account_id: int, name: str) -> Any:
        """The mailbox's columns (a read-only row, not an ORM object)."""
        row = q.MAILBOX_BY_NAME.first(s.connection(), {"account_id": account_id, "name": name})
        if row is None:
            raise NoSuchMailbox(f"no mailbox {name}")
        return row

    def _owned_mailbox(self, s: Session, account_id: int, mailbox_id: int) -> Any:
        row = q.MAILBOX_OWNED.first(s.connection(), {"mailbox_id": mailbox_id, "account_id": account_id})
        if row is None:
            raise NoSuchMailbox("no such mailbox")
        return row

    # ---------------------------------------------------------------- reading messages

    async def select(self, account_id: int, name: str, *, readonly: bool = False) -> MailboxSnapshot:
        """Load a mailbox for a session. A read-write select claims the \\Recent messages.

        Every entry as a MessageMeta: for tools and tests. IMAP uses the lean `select_index`.
        """
        name = normalize_mailbox_name(name)
        recent_from, recent_to, _ = await self._claim_select_recent(account_id, name, readonly)
        def read(s: Session):
            row = self._mailbox_row(s, account_id, name)
            rows = (s.execute(select(*_META_COLUMNS).where(MailboxMessageRow.mailbox_id == row.id)
                                    .order_by(MailboxMessageRow.uid))).all()
            messages = tuple(_meta(r) for r in rows)
            keywords = sorted({kw for m in messages for kw in m.keywords})
            recent = frozenset(m.uid for m in messages if recent_from is not None and recent_from <= m.uid < recent_to)
            return MailboxSnapshot(_mailbox(row, self._is_subscribed(s, account_id, name)), messages, recent, tuple(keywords))
        return await self._read(read)

    # ---- imap (issue 5): the lean SELECT

    async def select_index(self, account_id: int, name: str, *, readonly: bool = False,
                           located: Callable[[int], None] | None = None) -> MailboxIndex:
        """SELECT/EXAMINE for IMAP: UIDs, flags and modseq as arrays, keywords only where set.

        Same \\Recent claim as `select`; sizes and dates are left to `fetch`. `located(mailbox_id)`
        is called once the mailbox is found and before its index is read, so a session can start
        listening for changes first and miss none.
        """
        name = normalize_mailbox_name(name)
        recent_from, recent_to, mailbox_id = await self._claim_select_recent(account_id, name, readonly)
        if located is not None:
            if mailbox_id is None:
                mailbox_id = await self._read(lambda s: self._mailbox_row(s, account_id, name).id)
            located(mailbox_id)

        def read(s: Session):
            row = self._mailbox_row(s, account_id, name)
            if mailbox_id is not None and row.id != mailbox_id:
                raise NoSuchMailbox(f"no mailbox {name}")  # deleted and made anew meanwhile
            conn = s.connection()
            uids, flags, modseqs = array("q"), array("q"), array("q")
            joined = conn.execute(q.MAILBOX_INDEX, {"mailbox_id": row.id}).one()
            if joined[0]:
                # json's C parser reads a list of integers three times faster than int() per item.
                columns = [json.loads("[" + text + "]") for text in joined]
                if sorted(columns[0]) != columns[0]:
                    columns = [list(column) for column in zip(*sorted(zip(*columns)))]
                uids.extend(columns[0])
                flags.extend(columns[1])
                modseqs.extend(columns[2])
            message_keywords = {uid: _keywords_tuple(text) for uid, text in
                                conn.execute(q.MAILBOX_KEYWORDS, {"mailbox_id": row.id}).all()}
            keywords = sorted({kw for kws in message_keywords.values() for kw in kws})
            recent: frozenset[int] = frozenset()
            if recent_from is not None and recent_to > recent_from:
                start, end = bisect_left(uids, recent_from), bisect_left(uids, recent_to)
                recent = frozenset(uids[start:end])
            return MailboxIndex(_mailbox(row, self._is_subscribed(s, account_id, name)), uids, flags, modseqs,
                                message_keywords, recent, tuple(keywords))
        return await self._read(read)

    async def _claim_select_recent(self, account_id: int, name: str,
                                   readonly: bool) -> tuple[int | None, int, int | None]:
        """([first, end) of the \\Recent UIDs claimed, the mailbox id); nothing when read-only."""
        recent_from: int | None = None
        recent_to = 0
        mailbox_id: int | None = None
        if not readonly:
            def claim(s: Session):
                row = self._mailbox_row(s, account_id, name)
                conn = s.connection()
                # Row lock: a concurrent SELECT or claim_recent must not hand out the same
                # \\Recent UIDs (RFC 3501 §2.3.2); on PostgreSQL the plain read raced.
                first_recent, uidnext = q.RECENT_CLAIM_STATE.one(conn, {"mailbox_id": row.id})[:2]
                if uidnext > first_recent:
                    q.SET_FIRST_RECENT.run(conn, {"mailbox_id": row.id, "first_recent_uid": uidnext})
                return (first_recent, uidnext, row.id, row.uidvalidity), []

            recent_from, recent_to, mailbox_id, uidvalidity = await self._write(claim, light=True)
            self._raise_recent_floor((mailbox_id, uidvalidity), max(recent_from, recent_to))
        return recent_from, recent_to, mailbox_id

    async def fetch(self, account_id: int, mailbox_id: int, uids: Sequence[int], *, cache: bool = False,
                    raw: bool = False, uidvalidity: int | None = None) -> tuple[FetchedMessage, ...]:
        """Entries for `uids` (those that still exist), in UID order, with parse cache and/or bytes.
        With `uidvalidity`, a mailbox that no longer has it raises NoSuchMailbox."""
        if not uids:
            return ()
        def read(s: Session):
            owned = self._owned_mailbox(s, account_id, mailbox_id)
            if uidvalidity is not None and owned.uidvalidity != uidvalidity:
                raise NoSuchMailbox("no such mailbox")
            conn = s.connection()
            results = []
            uid_list = sorted(set(uids))
            for start in range(0, len(uid_list), 5000):
                chunk = uid_list[start:start + 5000]
                contiguous = len(chunk) == uid_list[-1] - uid_list[0] + 1 and len(uid_list) == len(chunk)
                query = q.fetch_entries(cache, raw, contiguous)
                params = ({"mailbox_id": mailbox_id, "lo": chunk[0], "hi": chunk[-1]} if contiguous
                          else {"mailbox_id": mailbox_id, "uids": chunk})
                for row in conn.execute(query, params).all():
                    index = len(_META_COLUMNS) + 1
                    parse_cache = row[index] if cache else None
                    index += 1 if cache else 0
                    results.append(FetchedMessage(_meta(row), row[len(_META_COLUMNS)], parse_cache,
                                                  bytes(row[index]) if raw else None))
            return tuple(results)
        return await self._read(read, light=not raw and len(uids) <= (LIGHT_PARSED if cache else LIGHT_ENTRIES))

    async def fetch_parts(self, account_id: int, mailbox_id: int, uidvalidity: int, uids: Sequence[int], *,
                          cache: bool = False, raw: bool = False) -> tuple[FetchedMessage, ...]:
        """`fetch` for IMAP FETCH, served from memory where it can be (storage/contentcache.py).

        Size, internal date, parse cache and bytes are exact; flags, keywords and modseq in
        `meta` may be old (the session's view has the current ones). An entry expunged a moment
        ago may still be returned, as RFC 2180 §4.1.1 allows until the session is told.
        Kept under (account, mailbox id, UIDVALIDITY): what one account put there is found only
        by that account (it was read through `fetch`, which checked the owner), and a mailbox id
        that SQLite gives again to a new mailbox comes with another UIDVALIDITY.
        """
        if not uids:
            return ()
        found: list[FetchedMessage] = []
        missing: Sequence[int] = uids
        incarnation = (account_id, mailbox_id, uidvalidity)
        if self.content_cache.budget:
            missing = []
            for uid in sorted(set(uids)):
                hit = self.content_cache.get(incarnation, uid, cache=cache, raw=raw)
                if hit is None:
                    missing.append(uid)
                else:
                    found.append(hit)
            if not missing:
                return tuple(found)
        fetched = await self.fetch(account_id, mailbox_id, missing, cache=cache, raw=raw, uidvalidity=uidvalidity)
        for message in fetched:
            self.content_cache.put(incarnation, message)
        if not found:
            return fetched
        return tuple(sorted([*found, *fetched], key=lambda message: message.meta.uid))

    async def read_content(self, account_id: int, content_id: int) -> bytes:
        """Raw bytes of one message content the account holds in any mailbox."""
        def read(s: Session):
            owned = s.scalar(select(MailboxMessageRow.id).join(MailboxRow).where(
                MailboxMessageRow.message_id == content_id, MailboxRow.account_id == account_id).limit(1))
            if owned is None:
                raise NotFound("no such message")
            data = s.scalar(select(MessageRow.raw).where(MessageRow.id == content_id))
            return bytes(data)
        return await self._read(read)

    async def changes_since(self, account_id: int, mailbox_id: int, modseq: int) -> ChangesSince:
        """RFC 7162: entries changed after `modseq` and UIDs expunged after it."""
        def read(s: Session):
            self._owned_mailbox(s, account_id, mailbox_id)
            changed = (s.execute(select(*_META_COLUMNS).where(
                MailboxMessageRow.mailbox_id == mailbox_id, MailboxMessageRow.modseq > modseq)
                .order_by(MailboxMessageRow.uid))).all()
            vanished = (s.scalars(select(ExpungeRow.uid).where(
                ExpungeRow.mailbox_id == mailbox_id, ExpungeRow.modseq > modseq).order_by(ExpungeRow.uid))).all()
            return ChangesSince(tuple(_meta(r) for r in changed), tuple(vanished))
        return await self._read(read)

    # ---- imap (issue 5): \Recent for messages that arrive while a mailbox is selected

    async def claim_recent(self, account_id: int, mailbox_id: int, up_to_uid: int,
                           uidvalidity: int) -> tuple[int, int]:
        """Claim \\Recent (RFC 3501 §2.3.2) for the not yet claimed UIDs up to `up_to_uid`.

        Returns the claimed UID range [first, end); it is empty when another
        session (or a SELECT) claimed them first, so each message is \\Recent in
        at most one session. The row lock orders concurrent claims on PostgreSQL.
        """
        def op(s: Session):
            conn = s.connection()
            row = q.RECENT_CLAIM_STATE.first(conn, {"mailbox_id": mailbox_id})
            if row is None or row.account_id != account_id or row.uidvalidity != uidvalidity:
                raise NoSuchMailbox("no such mailbox")
            first = row.first_recent_uid
            if up_to_uid < first:
                return (first, first), []
            q.SET_FIRST_RECENT.run(conn, {"mailbox_id": mailbox_id, "first_recent_uid": up_to_uid + 1})
            return (first, up_to_uid + 1), []

        key = (mailbox_id, uidvalidity)
        floor = self._recent_floor.get(key, 0)
        if up_to_uid < floor:
            return (floor, floor)
        inflight = self._recent_inflight.get(key)
        if inflight is not None and inflight[0] >= up_to_uid:
            # Another session here is claiming at least these UIDs: whatever it wins, we do not.
            await asyncio.shield(inflight[1])
            floor = self._recent_floor.get(key, 0)
            if up_to_uid < floor:
                return (floor, floor)
        done = asyncio.get_running_loop().create_future()
        self._recent_inflight[key] = (up_to_uid, done)
        try:
            first, end = await self._write(op, light=True)
            self._raise_recent_floor(key, end)
            return first, end
        finally:
            if self._recent_inflight.get(key, (0, None))[1] is done:
                del self._recent_inflight[key]
            done.set_result(None)

    def _raise_recent_floor(self, key: tuple[int, int], first_recent_uid: int) -> None:
        if first_recent_uid > self._recent_floor.get(key, 0):
            self._recent_floor[key] = first_recent_uid

    # ---------------------------------------------------------------- writing messages

    def _bump_modseq(self, s: Session, mailbox_id: int) -> int:
        return q.BUMP_MODSEQ.scalar_one(s.connection(), {"mailbox_id": mailbox_id})

    def _allocate_uids(self, s: Session, mailbox_id: int, count: int) -> tuple[int, int, int]:
        """(first uid, new modseq, uidvalidity): the row lock orders concurrent writers on PostgreSQL."""
        uidnext, modseq, uidvalidity = q.ALLOCATE_UIDS.one(s.connection(), {"mailbox_id": mailbox_id, "count": count})
        return uidnext - count, modseq, uidvalidity

    def _add_usage(self, s: Session, account_id: int, delta: int) -> None:
        if delta:
            q.ADD_USAGE.run(s.connection(), {"account_id": account_id, "delta": delta})

    def _check_quota(self, s: Session, account_id: int, extra: int) -> None:
        used, quota = q.ACCOUNT_USAGE.one(s.connection(), {"account_id": account_id})
        if quota is not None and used + extra > quota:
            raise OverQuota("quota exceeded")

    def _collect_garbage(self, s: Session, content_ids: Iterable[int]) -> None:
        """Delete contents no mailbox entry or queued message refers to any more."""
        ids = list(content_ids)
        conn = s.connection()
        for start in range(0, len(ids), 500):
            q.DELETE_UNREFERENCED_CONTENTS.run(conn, {"ids": ids[start:start + 500]})

    async def _prepare_content(self, raw: bytes) -> tuple[str, int, dict]:
        def work() -> tuple[str, int, dict]:
            header_size, cache = parse_message(raw)
            return hashlib.sha256(raw).hexdigest(), header_size, cache

        if len(raw) > _PARSE_IN_THREAD_ABOVE:
            return await asyncio.to_thread(work)
        return work()

    def _insert_content(self, s: Session, raw: bytes, digest: str, header_size: int,
                              cache: dict) -> int:
        return s.connection().execute(q.INSERT_CONTENT, {
            "sha256": digest, "size": len(raw), "header_size": header_size, "raw": raw, "parse_cache": cache,
            "created_at": datetime.now(timezone.utc)}).scalar_one()

    async def deliver(self, raw: bytes, account_ids: Sequence[int], *, mailbox: str = "INBOX",
                      internaldate: datetime | None = None, enforce_quota: bool = True,
                      outbound_from: str | None = None, outbound_to: Sequence[str] = ()) -> DeliveryReport:
        """Store one message for several local accounts (one shared content row), and queue
        it for remote recipients, all in one transaction committed before this returns.

        An account whose quota the message would exceed is skipped and reported in
        `over_quota`; the others still get it. Deliveries waiting together for the
        group-commit writer are written together (`_deliver_many`).
        """
        digest, header_size, cache = await self._prepare_content(raw)
        job = _DeliveryJob(raw, digest, header_size, cache, _internaldate_to_store(internaldate),
                           sorted(set(account_ids)), mailbox, enforce_quota, outbound_from or "", tuple(outbound_to))
        return await self._write(Batchable(self._deliver_many, job))

    def _deliver_many(self, s: Session, jobs: list["_DeliveryJob"]) -> list[tuple[DeliveryReport, list[Change]]]:
        """Several deliveries in one transaction with a few statements for all of them.

        The result is what running them one after another gives: the same quota decisions
        (usage added by an earlier one counts for a later one), UIDs handed out in job order,
        one content row per job. On PostgreSQL each step is one statement for the whole
        batch; SQLite runs a statement per row in the writer thread, where they cost little.
        Each mailbox's MODSEQ goes up once per batch, shared by its new messages (as COPY does).
        """
        conn = s.connection()
        postgres = conn.dialect.name == "postgresql"
        # The array statements pay off from two deliveries on; one alone (no group commit, a quiet
        # moment) keeps the plain per-row statements: as many round trips, and simpler to execute.
        arrays = postgres and len(jobs) > 1
        # 1. usage, quota and target mailbox of every account: one statement per wanted mailbox name.
        wanted: dict[str, set[int]] = {}
        for job in jobs:
            wanted.setdefault(job.mailbox, set()).update(job.targets)
        targets: dict[tuple[str, int], tuple[int | None, int]] = {}  # (name, account) -> (quota, mailbox)
        used: dict[int, int] = {}
        for name, ids in wanted.items():
            if len(ids) == 1:  # the usual lone delivery: a plain parameter is cheaper than a list
                [account_id] = ids
                row = conn.execute(q.DELIVERY_TARGET, {"account_id": account_id, "name": name}).first()
                rows = [(account_id, *row)] if row is not None else []
            else:
                rows = conn.execute(q.DELIVERY_TARGETS_PG if postgres else q.DELIVERY_TARGETS,
                                    {"account_ids": sorted(ids), "name": name}).all()
            if len(rows) != len(ids):
                raise NoResultFound("no such account")  # removed meanwhile: that delivery fails alone
            for account_id, used_bytes, quota, mailbox_id, inbox_id in rows:
                used[account_id] = used_bytes
                targets[(name, account_id)] = (quota, inbox_id if mailbox_id is None else mailbox_id)
        # 2. decide who gets what, in job order, counting the usage earlier jobs add.
        per_mailbox: dict[int, int] = {}
        accepted: list[list[tuple[int, int]]] = []  # per job: (account, mailbox)
        over: list[list[int]] = []
        for job in jobs:
            size = len(job.raw)
            taken, refused = [], []
            for account_id in job.targets:
                quota, mailbox_id = targets[(job.mailbox, account_id)]
                if job.enforce_quota and quota is not None and used[account_id] + size > quota:
                    refused.append(account_id)
                    continue
                used[account_id] += size
                per_mailbox[mailbox_id] = per_mailbox.get(mailbox_id, 0) + 1
                taken.append((account_id, mailbox_id))
            accepted.append(taken)
            over.append(refused)
        # 3. contents, 4. UIDs (the mailbox row locks, in id order), 5. entries, 6. usage.
        now = datetime.now(timezone.utc)
        if arrays:
            content_ids = sorted(conn.execute(q.INSERT_CONTENTS_PG, {
                "sha256": [job.digest for job in jobs], "size": [len(job.raw) for job in jobs],
                "header_size": [job.header_size for job in jobs], "raw": [job.raw for job in jobs],
                "parse_cache": [job.cache for job in jobs], "created_at": now}).scalars().all())
        else:
            content_ids = [self._insert_content(s, job.raw, job.digest, job.header_size, job.cache) for job in jobs]
        mailbox_ids = sorted(per_mailbox)
        next_uid: dict[int, tuple[int, int]] = {}  # mailbox -> (next uid to hand out, modseq)
        if mailbox_ids and arrays:
            for mailbox_id, uidnext, modseq in conn.execute(q.ALLOCATE_UIDS_PG, {
                    "mailbox_ids": mailbox_ids, "counts": [per_mailbox[m] for m in mailbox_ids]}):
                next_uid[mailbox_id] = (uidnext - per_mailbox[mailbox_id], modseq)
            if len(next_uid) != len(mailbox_ids):
                raise NoSuchMailbox("no such mailbox")
        else:
            for mailbox_id in mailbox_ids:
                first, modseq, _ = self._allocate_uids(s, mailbox_id, per_mailbox[mailbox_id])
                next_uid[mailbox_id] = (first, modseq)
        results: list[tuple[DeliveryReport, list[Change]]] = []
        rows: list[dict[str, Any]] = []
        usage: dict[int, int] = {}
        unused: list[int] = []
        for job, content_id, taken, refused in zip(jobs, content_ids, accepted, over):
            size = len(job.raw)
            deliveries, changes = [], []
            for account_id, mailbox_id in taken:
                uid, modseq = next_uid[mailbox_id]
                next_uid[mailbox_id] = (uid + 1, modseq)
                rows.append({"mailbox_id": mailbox_id, "uid": uid, "message_id": content_id, "flags": 0,
                             "keywords": "", "internaldate": job.when, "modseq": modseq, "size": size})
                usage[account_id] = usage.get(account_id, 0) + size
                deliveries.append(Delivery(account_id, mailbox_id, uid))
                changes.append(MessageAdded(mailbox_id, uid, modseq, 0, ()))
            if not taken and not job.outbound_to:
                unused.append(content_id)
            results.append((DeliveryReport(content_id, tuple(deliveries), tuple(refused), None), changes))
        queued = [i for i, job in enumerate(jobs) if job.outbound_to]
        if queued:
            queue_ids = self._insert_outbound_many(
                s, [(content_ids[i], jobs[i].outbound_from, jobs[i].outbound_to) for i in queued], arrays)
            for i, queue_id in zip(queued, queue_ids):
                results[i] = (replace(results[i][0], queue_id=queue_id), results[i][1])
        if rows and arrays:
            conn.execute(q.INSERT_ENTRIES_PG, {column: [row[column] for row in rows] for column in (
                "mailbox_id", "uid", "message_id", "internaldate", "modseq", "size")})
        elif rows:
            conn.execute(q.INSERT_ENTRY, rows)
        account_ids = sorted(usage)
        if account_ids and arrays:
            conn.execute(q.ADD_USAGES_PG, {"account_ids": account_ids, "deltas": [usage[a] for a in account_ids]})
        else:
            for account_id in account_ids:
                self._add_usage(s, account_id, usage[account_id])
        if unused:
            s.execute(delete(MessageRow).where(MessageRow.id.in_(unused)))
        return results

    async def append(self, account_id: int, mailbox: str, raw: bytes, *, flags: int = 0,
                     keywords: Sequence[str] = (), internaldate: datetime | None = None) -> AppendResult:
        """IMAP APPEND (RFC 3501 §6.3.11); raises OverQuota (RFC 9208) and NoSuchMailbox."""
        mailbox = normalize_mailbox_name(mailbox)
        digest, header_size, cache = await self._prepare_content(raw)
        when = _internaldate_to_store(internaldate)
        keyword_text = _keywords_str(keywords)

        def op(s: Session):
            row = self._mailbox_row(s, account_id, mailbox)
            self._check_quota(s, account_id, len(raw))
            content_id = self._insert_content(s, raw, digest, header_size, cache)
            uid, modseq, uidvalidity = self._allocate_uids(s, row.id, 1)
            s.connection().execute(q.INSERT_ENTRY, {
                "mailbox_id": row.id, "uid": uid, "message_id": content_id, "flags": flags,
                "keywords": keyword_text, "internaldate": when, "modseq": modseq, "size": len(raw)})
            self._add_usage(s, account_id, len(raw))
            added = MessageAdded(row.id, uid, modseq, flags, _keywords_tuple(keyword_text))
            return (AppendResult(uidvalidity, uid), added, content_id), [added]

        result, added, content_id = await self._write(op, light=len(raw) <= _PARSE_IN_THREAD_ABOVE)
        # The client that appends usually fetches the message next (and every session with the
        # mailbox selected hears of it): what FETCH would read back is all here already.
        meta = MessageMeta(uid=result.uid, flags=flags, keywords=added.keywords, modseq=added.modseq,
                           size=len(raw), internaldate=when, content_id=content_id)
        self.content_cache.put((account_id, added.mailbox_id, result.uidvalidity),
                               FetchedMessage(meta, header_size, cache, raw))
        return result

    async def copy(self, account_id: int, mailbox_id: int, uids: Sequence[int], target: str, *,
                   move: bool = False) -> CopyResult:
        """COPY (RFC 3501 §6.4.7) or MOVE (RFC 6851): new entries share the content rows.

        Target UIDs are allocated in source UID order (RFC 4315 COPYUID).
        """
        target = normalize_mailbox_name(target)

        def op(s: Session):
            self._owned_mailbox(s, account_id, mailbox_id)
            target_row = self._mailbox_row(s, account_id, target)
            entries = (s.execute(select(
                MailboxMessageRow.uid, MailboxMessageRow.message_id, MailboxMessageRow.flags,
                MailboxMessageRow.keywords, MailboxMessageRow.internaldate, MailboxMessageRow.size)
                .where(MailboxMessageRow.mailbox_id == mailbox_id, MailboxMessageRow.uid.in_(list(uids)))
                .order_by(MailboxMessageRow.uid))).all() if uids else []
            if not entries:
                return CopyResult(target_row.uidvalidity, (), ()), []
            total = sum(entry.size for entry in entries)
            same_mailbox = target_row.id == mailbox_id
            if not (move and not same_mailbox):
                self._check_quota(s, account_id, total)
            first_uid, modseq, uidvalidity = self._allocate_uids(s, target_row.id, len(entries))
            rows, changes = [], []
            for offset, entry in enumerate(entries):
                # MOVE keeps flags; COPY keeps them too (RFC 3501: "flags SHOULD be preserved").
                rows.append({"mailbox_id": target_row.id, "uid": first_uid + offset, "message_id": entry.message_id,
                             "flags": entry.flags & ~int(Flag.POP3_HIDDEN), "keywords": entry.keywords,
                             "internaldate": entry.internaldate, "modseq": modseq, "size": entry.size})
                changes.append(MessageAdded(target_row.id, first_uid + offset, modseq,
                                            rows[-1]["flags"], _keywords_tuple(entry.keywords)))
            s.execute(insert(MailboxMessageRow), rows)
            if move:
                source_uids = [entry.uid for entry in entries]
                changes.append(self._expunge_uids(s, mailbox_id, source_uids))
            else:
                self._add_usage(s, account_id, total)
            return CopyResult(uidvalidity, tuple(e.uid for e in entries),
                              tuple(first_uid + i for i in range(len(entries)))), changes

        return await self._write(op, light=len(uids) <= LIGHT_ENTRIES)

    def _expunge_uids(self, s: Session, mailbox_id: int, uids: Sequence[int]) -> MessagesExpunged:
        """Remove entries, record tombstones; content and usage handled by the caller."""
        modseq = self._bump_modseq(s, mailbox_id)
        conn = s.connection()
        for start in range(0, len(uids), 500):
            q.DELETE_ENTRIES_BY_UIDS.run(conn, {"mailbox_id": mailbox_id, "uids": list(uids[start:start + 500])})
        conn.execute(q.INSERT_TOMBSTONE, [{"mailbox_id": mailbox_id, "uid": uid, "modseq": modseq} for uid in uids])
        return MessagesExpunged(mailbox_id, tuple(uids), modseq)

    async def expunge(self, account_id: int, mailbox_id: int, uids: Sequence[int] | None = None, *,
                      mailbox_entries: int | None = None) -> tuple[int, ...]:
        """Remove the entries flagged \\Deleted (only those in `uids` when given: RFC 4315 UID EXPUNGE).

        `mailbox_entries`: how many entries the caller's view of the mailbox holds; finding the
        \\Deleted ones is a scan of them, light when they are few (LIGHT_ENTRIES).
        """

        def op(s: Session):
            self._owned_mailbox(s, account_id, mailbox_id)
            entries = q.DELETED_ENTRIES.all(s.connection(), {
                "mailbox_id": mailbox_id, "deleted_flag": int(Flag.DELETED)})
            if uids is not None:
                wanted = set(uids)
                entries = [entry for entry in entries if entry.uid in wanted]
            if not entries:
                return (), []
            change = self._expunge_uids(s, mailbox_id, [e.uid for e in entries])
            self._add_usage(s, account_id, -sum(e.size for e in entries))
            self._collect_garbage(s, {e.message_id for e in entries})
            return change.uids, [change]

        light = mailbox_entries is not None and mailbox_entries <= LIGHT_ENTRIES
        return await self._write(op, light=light)

    async def store_flags(self, account_id: int, mailbox_id: int, uids: Sequence[int], mode: str,
                          flags: int = 0, keywords: Sequence[str] = (), *,
                          unchanged_since: int | None = None) -> StoreResult:
        """STORE (RFC 3501 §6.4.6): mode is 'add', 'remove' or 'replace'.

        Only entries whose flags really change get a new MODSEQ (RFC 7162 §3.2);
        with UNCHANGEDSINCE, entries modified after it are reported as failed.
        """
        if mode not in ("add", "remove", "replace"):
            raise ValueError(f"bad store mode {mode}")
        keyword_set = set(keywords)

        def op(s: Session):
            self._owned_mailbox(s, account_id, mailbox_id)
            rows = []
            uid_list = sorted(set(uids))
            conn = s.connection()
            if uid_list and uid_list[-1] - uid_list[0] + 1 == len(uid_list):
                # A contiguous set (STORE 1:*, the usual big case): one range scan, no IN list.
                rows = q.ENTRY_FLAGS_BETWEEN.all(conn, {
                    "mailbox_id": mailbox_id, "lo": uid_list[0], "hi": uid_list[-1]})
            else:
                for start in range(0, len(uid_list), 5000):
                    rows.extend(q.ENTRY_FLAGS_IN.all(conn, {
                        "mailbox_id": mailbox_id, "uids": uid_list[start:start + 5000]}))
            failed, pending = [], []
            for row in rows:
                if unchanged_since is not None and row.modseq > unchanged_since:
                    failed.append(row.uid)
                    continue
                hidden = row.flags & int(Flag.POP3_HIDDEN)
                current_keywords = set(_keywords_tuple(row.keywords))
                if mode == "add":
                    new_flags, new_keywords = row.flags | flags, current_keywords | keyword_set
                elif mode == "remove":
                    new_flags, new_keywords = row.flags & ~flags, current_keywords - keyword_set
                else:
                    new_flags, new_keywords = flags | hidden, keyword_set
                if new_flags != row.flags or new_keywords != current_keywords:
                    pending.append((row, new_flags, _keywords_str(new_keywords)))
            if not pending:
                return StoreResult((), tuple(sorted(failed))), []
            modseq = self._bump_modseq(s, mailbox_id)
            # One UPDATE per distinct new (flags, keywords), 500 ids at a time, all at the
            # command's one modseq: a STORE on 10,000 messages is a few statements, not 10,000.
            groups: dict[tuple[int, str], list[int]] = {}
            for row, new_flags, keyword_text in pending:
                groups.setdefault((new_flags, keyword_text), []).append(row.id)
            for (new_flags, keyword_text), ids in groups.items():
                for start in range(0, len(ids), 500):
                    q.SET_FLAGS_BY_IDS.run(conn, {"ids": ids[start:start + 500], "new_flags": new_flags,
                                                   "new_keywords": keyword_text, "new_modseq": modseq})
            updates, changes = [], []
            keyword_tuples: dict[str, tuple[str, ...]] = {}
            for row, new_flags, keyword_text in sorted(pending, key=lambda item: item[0].uid):
                kw = keyword_tuples.get(keyword_text)
                if kw is None:
                    kw = keyword_tuples[keyword_text] = _keywords_tuple(keyword_text)
                updates.append(FlagUpdate(row.uid, new_flags, kw, modseq))
                changes.append(FlagsChanged(mailbox_id, row.uid, modseq, new_flags, kw))
            return StoreResult(tuple(updates), tuple(sorted(failed))), changes

        return await self._write(op, light=len(uids) <= LIGHT_ENTRIES)

    # ---------------------------------------------------------------- quota

    async def get_quota(self, account_id: int) -> tuple[int, int | None, int]:
        """(used bytes, limit or None, message count) for RFC 9208 GETQUOTA."""
        def read(s: Session):
            used, quota = (s.execute(select(AccountRow.used_bytes, AccountRow.quota_bytes)
                                           .where(AccountRow.id == account_id))).one()
            count = s.scalar(select(func.count()).select_from(MailboxMessageRow).join(MailboxRow)
                                   .where(MailboxRow.account_id == account_id))
            return int(used), quota, int(count or 0)
        return await self._read(read)

    # ---------------------------------------------------------------- POP3

    async def acquire_maildrop(self, account_id: int, holder: str, ttl_seconds: float) -> bool:
        """Take the POP3 maildrop lock (RFC 1939 §8); False if another live session holds it."""
        if self.db.is_sqlite:
            return self._take_local_maildrop(account_id, holder, ttl_seconds)
        now = datetime.now(timezone.utc)

        def op(s: Session):
            s.execute(delete(MaildropLockRow).where(
                MaildropLockRow.account_id == account_id,
                or_(MaildropLockRow.expires_at < now, MaildropLockRow.holder == holder)))
            try:
                with s.begin_nested():
                    s.execute(insert(MaildropLockRow).values(
                        account_id=account_id, holder=holder, expires_at=now + timedelta(seconds=ttl_seconds)))
            except IntegrityError:
                return False, []
            return True, []

        return await self._write(op)

    async def release_maildrop(self, account_id: int, holder: str) -> None:
        if self.db.is_sqlite:
            locks = self._local_maildrops()
            if account_id in locks and locks[account_id][0] == holder:
                del locks[account_id]
            return

        def op(s: Session):
            s.execute(delete(MaildropLockRow).where(
                MaildropLockRow.account_id == account_id, MaildropLockRow.holder == holder))
            return None, []

        await self._write(op)

    async def pop3_listing(self, account_id: int) -> Pop3Listing:
        """INBOX as POP3 sees it: entries not hidden by the `keep` policy, in UID order."""
        return await self._read(lambda s: self._pop3_inbox(s, account_id))

    async def pop3_apply_deletes(self, account_id: int, uids: Sequence[int], policy: Pop3DeletePolicy) -> int:
        """Apply a POP3 session's DELEs at QUIT, in one transaction (RFC 1939 §6)."""
        if not uids:
            return 0

        def op(s: Session):
            inbox = self._mailbox_row(s, account_id, "INBOX")
            entries = (s.execute(select(
                MailboxMessageRow.id, MailboxMessageRow.uid, MailboxMessageRow.message_id, MailboxMessageRow.size,
                MailboxMessageRow.flags, MailboxMessageRow.keywords, MailboxMessageRow.internaldate)
                .where(MailboxMessageRow.mailbox_id == inbox.id, MailboxMessageRow.uid.in_(list(uids)))
                .order_by(MailboxMessageRow.uid))).all()
            if not entries:
                return 0, []
            changes: list[Change] = []
            if policy == Pop3DeletePolicy.KEEP:
                modseq = self._bump_modseq(s, inbox.id)
                for entry in entries:
                    new_flags = entry.flags | int(Flag.SEEN | Flag.POP3_HIDDEN)
                    s.execute(update(MailboxMessageRow).where(MailboxMessageRow.id == entry.id)
                                    .values(flags=new_flags, modseq=modseq))
                    changes.append(FlagsChanged(inbox.id, entry.uid, modseq, new_flags,
                                                _keywords_tuple(entry.keywords)))
                return len(entries), changes
            if policy == Pop3DeletePolicy.ARCHIVE:
                archive = (s.execute(select(MailboxRow).where(
                    MailboxRow.account_id == account_id, MailboxRow.special_use == SpecialUse.ARCHIVE.value)
                    .order_by(MailboxRow.id).limit(1))).scalar_one_or_none()
                if archive is None:
                    archive = (s.execute(select(MailboxRow).where(
                        MailboxRow.account_id == account_id, MailboxRow.name == "Archive"))).scalar_one_or_none()
                if archive is None:
                    archive = self._insert_mailbox(s, account_id, "Archive", SpecialUse.ARCHIVE.value)
                first_uid, modseq, _ = self._allocate_uids(s, archive.id, len(entries))
                rows = []
                for offset, entry in enumerate(entries):
                    flags = (entry.flags | int(Flag.SEEN)) & ~int(Flag.POP3_HIDDEN)
                    rows.append({"mailbox_id": archive.id, "uid": first_uid + offset, "message_id": entry.message_id,
                                 "flags": flags, "keywords": entry.keywords, "internaldate": entry.internaldate,
                                 "modseq": modseq, "size": entry.size})
                    changes.append(MessageAdded(archive.id, first_uid + offset, modseq, flags,
                                                _keywords_tuple(entry.keywords)))
                s.execute(insert(MailboxMessageRow), rows)
                changes.append(self._expunge_uids(s, inbox.id, [e.uid for e in entries]))
                return len(entries), changes
            changes.append(self._expunge_uids(s, inbox.id, [e.uid for e in entries]))
            self._add_usage(s, account_id, -sum(e.size for e in entries))
            self._collect_garbage(s, {e.message_id for e in entries})
            return len(entries), changes

        return await self._write(op)

    # ---- POP3 sessions (server/pop3): the login in one transaction

    async def pop3_open(self, account_id: int, holder: str, ttl_seconds: float, *,
                        takeover: str | None = None) -> Pop3Listing | None:
        """Take the maildrop lock (RFC 1939 §8) and list INBOX as POP3 sees it, in one transaction:
        one store round trip per login. None if another live session holds the lock.

        On SQLite the lock lives in this process (see `_local_maildrops`): the login is one read.
        `takeover`: a holder whose release is on its way (its session is over): its lock counts as free."""
        if self.db.is_sqlite:
            if not self._take_local_maildrop(account_id, holder, ttl_seconds, takeover):
                return None
            try:
                return await self.pop3_listing(account_id)
            except BaseException:
                await self.release_maildrop(account_id, holder)  # NoSuchMailbox: no lock left behind
                raise
        now = datetime.now(timezone.utc)

        holders = [holder] if takeover is None else [holder, takeover]

        def op(s: Session):
            s.execute(delete(MaildropLockRow).where(
                MaildropLockRow.account_id == account_id,
                or_(MaildropLockRow.expires_at < now, MaildropLockRow.holder.in_(holders))))
            try:
                with s.begin_nested():
                    s.execute(insert(MaildropLockRow).values(
                        account_id=account_id, holder=holder, expires_at=now + timedelta(seconds=ttl_seconds)))
            except IntegrityError:
                return None, []
            return self._pop3_inbox(s, account_id), []  # NoSuchMailbox rolls the lock back too

        return await self._write(op)

    # INBOX and its entries POP3 sees (not hidden by the `keep` policy) in one statement, built once:
    # otherwise a login spends longer building SQL and loading an ORM mailbox object than reading.
    _pop3_inbox_statement: Any = None

    def _pop3_inbox(self, s: Session, account_id: int) -> Pop3Listing:
        statement = MailStore._pop3_inbox_statement
        if statement is None:
            statement = MailStore._pop3_inbox_statement = (
                select(MailboxRow.uidvalidity, *_META_COLUMNS).select_from(MailboxRow)
                .outerjoin(MailboxMessageRow, (MailboxMessageRow.mailbox_id == MailboxRow.id)
                           & (MailboxMessageRow.flags.op("&")(int(Flag.POP3_HIDDEN)) == 0))
                .where(MailboxRow.account_id == bindparam("account_id"), MailboxRow.name == "INBOX")
                .order_by(MailboxMessageRow.uid))
        rows = s.connection().execute(statement, {"account_id": account_id}).all()
        if not rows:
            raise NoSuchMailbox("no mailbox INBOX")
        if rows[0][1] is None:  # the outer join's one empty row: INBOX has nothing for POP3
            return Pop3Listing(rows[0][0], ())
        return Pop3Listing(rows[0][0], tuple([_meta(r[1:]) for r in rows]))

    def _local_maildrops(self) -> dict[int, tuple[str, float]]:
        """SQLite maildrop locks: account id -> (holder, monotonic expiry), in this process.

        SQLite is one node (DESIGN.md: PostgreSQL for more than one), so one
        casella process owns the database and an in-memory lock gives the same
        exclusion without two durable commits per login. Two processes on one
        SQLite file are not a supported deployment; PostgreSQL keeps the
        maildrop_locks table, which holds across nodes.
        """
        locks = self.__dict__.get("_maildrop_locks")
        if locks is None:
            locks = self.__dict__["_maildrop_locks"] = {}
        return locks

    def _take_local_maildrop(self, account_id: int, holder: str, ttl_seconds: float,
                             takeover: str | None = None) -> bool:
        """The table's rule in memory: taken if free, expired or already ours (a renewal)."""
        locks = self._local_maildrops()
        now = time.monotonic()
        current = locks.get(account_id)
        if current is not None and current[0] not in (holder, takeover) and current[1] >= now:
            return False
        locks[account_id] = (holder, now + ttl_seconds)
        return True

    # ---------------------------------------------------------------- outbound queue

    def _insert_outbound_many(self, s: Session, items: list[tuple[int, str, Sequence[str]]],
                              arrays: bool) -> list[int]:
        """Queue items (content id, sender, recipients) for remote delivery; their ids, in order.

        With `arrays` (PostgreSQL, several items) two statements for all of them, else two each.
        """
        conn = s.connection()
        now = datetime.now(timezone.utc)
        if arrays and len(items) > 1:
            # Ids come from the sequence in row order (ORDER BY n), as for contents.
            queue_ids = sorted(conn.execute(_OB_INSERT_MANY_PG, {
                "message_ids": [content_id for content_id, _, _ in items],
                "senders": [sender for _, sender, _ in items], "now": now}).scalars().all())
            rcpts = [(queue_id, rcpt) for queue_id, (_, _, recipients) in zip(queue_ids, items) for rcpt in recipients]
            conn.execute(_OB_INSERT_RCPTS_PG, {"qids": [qid for qid, _ in rcpts], "addresses": [r for _, r in rcpts],
                                               "domains": [r.rpartition("@")[2].lower() for _, r in rcpts]})
            return queue_ids
        queue_ids = []
        for content_id, sender, recipients in items:
            queue_id = conn.execute(_OB_INSERT, {"message_id": content_id, "mail_from": sender, "created_at": now,
                                                 "next_attempt_at": now, "attempts": 0,
                                                 "delayed_notice_sent": False}).scalar_one()
            conn.execute(_OB_INSERT_RCPT, [{"queue_id": queue_id, "address": rcpt, "status": "pending",
                                            "domain": rcpt.rpartition("@")[2].lower()} for rcpt in recipients])
            queue_ids.append(queue_id)
        return queue_ids

    async def list_outbound(self) -> tuple[OutboundItem, ...]:
        def read(s: Session):
            rows = (s.execute(select(OutboundRow).order_by(OutboundRow.id))).scalars().all()
            items = []
            for row in rows:
                rcpts = (s.scalars(select(OutboundRecipientRow.address).where(
                    OutboundRecipientRow.queue_id == row.id, OutboundRecipientRow.status == "pending"))).all()
                items.append(OutboundItem(row.id, row.mail_from, tuple(rcpts), row.message_id,
                                          _as_utc(row.created_at), _as_utc(row.next_attempt_at),
                                          row.attempts, row.last_error))
            return tuple(items)
        return await self._read(read)


    # ---- outbound queue (issue 6): the delivery worker's side
    #
    # A worker claims due items with a lease (locked_by/locked_until); on PostgreSQL
    # the claim is SELECT ... FOR UPDATE SKIP LOCKED, so two casella processes on one
    # database never claim the same item (SQLite has a single writer anyway). A lease
    # that runs out (crashed worker) makes the item claimable again.

    async def claim_outbound(self, worker: str, limit: int, lease_seconds: float, *,
                             now: datetime | None = None,
                             content_below: int = 0) -> tuple["OutboundClaim", ...]:
        """Lease up to `limit` due items (oldest due first) to `worker`, with their pending recipients.

        Contents smaller than `content_below` bytes come along (one read fewer per item).
        """
        now = now or datetime.now(timezone.utc)
        until = now + timedelta(seconds=lease_seconds)
        params = {"now": now, "limit": limit, "worker": worker, "until": until, "below": content_below}

        # Prebuilt statements: two round trips on PostgreSQL (the lease with the contents, the
        # recipients), three on SQLite, whatever the number of items.
        def op(s: Session):
            conn = s.connection()
            postgres = conn.dialect.name == "postgresql"
            rows = sorted(conn.execute(_OB_CLAIM_PG if postgres else _OB_CLAIM, params).all(), key=lambda r: r.id)
            if not rows:
                return (), []
            ids = [row.id for row in rows]
            rcpts: dict[int, list[OutboundRecipient]] = {qid: [] for qid in ids}
            for r in conn.execute(_OB_CLAIM_RCPTS_PG if postgres else _OB_CLAIM_RCPTS, {"qids": ids}):
                rcpts[r.queue_id].append(OutboundRecipient(r.id, r.address, r.domain, r.status, r.last_reply))
            if postgres:
                contents = {row.id: row.content for row in rows}
            elif content_below > 0:
                contents = dict(conn.execute(_OB_CLAIM_CONTENTS, {"qids": ids, "below": content_below}).all())
            else:
                contents = {}
            return tuple(OutboundClaim(
                row.id, row.mail_from, row.message_id, _as_utc(row.created_at), _as_utc(row.next_attempt_at),
                row.attempts, row.last_error, bool(row.delayed_notice_sent), row.locked_by,
                _as_utc(row.locked_until) if row.locked_until else None, tuple(rcpts[row.id]),
                bytes(contents[row.id]) if contents.get(row.id) is not None else None) for row in rows), []

        return await self._write(op)

    def _outbound_claims(self, s: Session, ids: Sequence[int]) -> tuple["OutboundClaim", ...]:
        rows = (s.scalars(select(OutboundRow).where(OutboundRow.id.in_(list(ids))).order_by(OutboundRow.id))).all()
        rcpts: dict[int, list[OutboundRecipient]] = {row.id: [] for row in rows}
        for r in (s.scalars(select(OutboundRecipientRow).where(
                OutboundRecipientRow.queue_id.in_(list(ids))).order_by(OutboundRecipientRow.id))).all():
            rcpts[r.queue_id].append(OutboundRecipient(r.id, r.address, r.domain, r.status, r.last_reply))
        return tuple(OutboundClaim(
            row.id, row.mail_from, row.message_id, _as_utc(row.created_at), _as_utc(row.next_attempt_at),
            row.attempts, row.last_error, bool(row.delayed_notice_sent), row.locked_by,
            _as_utc(row.locked_until) if row.locked_until else None, tuple(rcpts[row.id])) for row in rows)

    async def get_outbound(self, queue_id: int) -> "OutboundClaim | None":
        """One queue item with every recipient and its status (`casella queue show`)."""
        def read(s: Session):
            found = self._outbound_claims(s, [queue_id])
            return found[0] if found else None
        return await self._read(read)

    async def outbound_content(self, queue_id: int) -> bytes:
        def read(s: Session):
            data = s.connection().execute(_OB_CONTENT, {"qid": queue_id}).scalar()
            if data is None:
                raise NotFound(f"no queued message {queue_id}")
            return bytes(data)
        return await self._read(read)

    async def record_outbound_attempt(self, queue_id: int, worker: str,
                                      results: Sequence[tuple[int, str, str]], *,
                                      retry_at: datetime | None, error: str | None) -> int:
        """Record one delivery attempt: `results` is (recipient id, 'sent'|'failed'|'pending', reply).

        Pending recipients wait until `retry_at`; with none left the item and (unless a
        mailbox still holds it) its content are deleted. Returns how many stay pending.
        Only the lease holder may record; a stolen lease (expired, re-claimed) records nothing.
        """
        # Prebuilt Core statements (the queue's hot path, as in storage/queries.py).
        def op(s: Session):
            conn = s.connection()
            found = conn.execute(_OB_HOLDER, {"qid": queue_id}).first()
            if found is None or found[0] != worker:
                return -1, []
            if results:
                conn.execute(_OB_SET_RCPT, [{"rid": rid, "qid": queue_id, "st": status,
                                             "reply": reply[:2000] if reply else None}
                                            for rid, status, reply in results])
            pending = conn.execute(_OB_PENDING, {"qid": queue_id}).scalar() or 0
            if not pending:
                conn.execute(_OB_DELETE_RCPTS, {"qid": queue_id})
                conn.execute(_OB_DELETE_ITEM, {"qid": queue_id})
                conn.execute(_OB_COLLECT, {"cid": found[1]})
                return 0, []
            conn.execute(_OB_RESCHEDULE, {"qid": queue_id, "err": error[:2000] if error else None,
                                          "at": retry_at or datetime.now(timezone.utc)})
            return int(pending), []

        return await self._write(op)

    async def finish_outbound(self, queue_id: int, worker: str) -> bool:
        """Every recipient reached a final state: drop the item (its recipients cascade) and,
        unless a mailbox holds it, its content. The common case, kept short: the items finished
        in one group-commit batch go in one statement on PostgreSQL, two each on SQLite.
        False if `worker` does not hold the lease (nothing is changed then)."""
        return await self._write(Batchable(self._finish_outbound_many, (queue_id, worker)))

    def _finish_outbound_many(self, s: Session, items: list[tuple[int, str]]) -> list[tuple[bool, list[Change]]]:
        conn = s.connection()
        if conn.dialect.name == "postgresql" and len(items) > 1:
            gone = set(conn.execute(_OB_FINISH_MANY_PG, {"qids": [qid for qid, _ in items],
                                                         "workers": [worker for _, worker in items]}).scalars())
            results = []
            for qid, _ in items:  # an item named twice was finished once
                results.append((qid in gone, []))
                gone.discard(qid)
            return results
        results = []
        for qid, worker in items:
            content_id = conn.execute(_OB_FINISH, {"qid": qid, "worker": worker}).scalar()
            if content_id is not None:
                conn.execute(_OB_COLLECT, {"cid": content_id})
            results.append((content_id is not None, []))
        return results

    def _delete_outbound(self, s: Session, queue_id: int) -> bool:
        content_id = s.scalar(select(OutboundRow.message_id).where(OutboundRow.id == queue_id))
        if content_id is None:
            return False
        # Explicit: SQLite enforces ON DELETE CASCADE only with foreign_keys on.
        s.execute(delete(OutboundRecipientRow).where(OutboundRecipientRow.queue_id == queue_id))
        s.execute(delete(OutboundRow).where(OutboundRow.id == queue_id))
        self._collect_garbage(s, [content_id])
        return True

    async def renew_outbound_lease(self, queue_id: int, worker: str, lease_seconds: float) -> bool:
        """Extend `worker`'s lease on an item it is still delivering; False if the lease is not ours."""
        until = datetime.now(timezone.utc) + timedelta(seconds=lease_seconds)

        def op(s: Session):
            result = s.execute(update(OutboundRow).where(OutboundRow.id == queue_id, OutboundRow.locked_by == worker)
                               .values(locked_until=until))
            return result.rowcount == 1, []
        return await self._write(op)

    async def release_outbound(self, worker: str) -> int:
        """Give back every lease `worker` holds (clean shutdown: a restart picks them up at once)."""
        def op(s: Session):
            result = s.execute(update(OutboundRow).where(OutboundRow.locked_by == worker)
                               .values(locked_by=None, locked_until=None))
            return result.rowcount, []
        return await self._write(op)

    async def mark_outbound_delayed(self, queue_id: int) -> None:
        """The "delayed" DSN went out: never send another for this item."""
        def op(s: Session):
            s.execute(update(OutboundRow).where(OutboundRow.id == queue_id).values(delayed_notice_sent=True))
            return None, []
        await self._write(op)

    async def delete_outbound(self, queue_id: int) -> bool:
        """Drop a queued message without a bounce (`casella queue delete`)."""
        def op(s: Session):
            return self._delete_outbound(s, queue_id), []
        return await self._write(op)

    async def retry_outbound(self, queue_id: int | None = None) -> int:
        """Make one item (or every item) due now (`casella queue retry`); returns how many."""
        now = datetime.now(timezone.utc)

        def op(s: Session):
            query = update(OutboundRow).values(next_attempt_at=now)
            if queue_id is not None:
                query = query.where(OutboundRow.id == queue_id)
            return s.execute(query).rowcount, []
        return await self._write(op)

    async def next_outbound_due(self) -> datetime | None:
        """When the earliest unleased item becomes due (the worker sleeps until then)."""
        def read(s: Session):
            value = s.scalar(select(func.min(OutboundRow.next_attempt_at)).where(OutboundRow.locked_by.is_(None)))
            return _as_utc(value) if value is not None else None
        return await self._read(read)


@dataclass(frozen=True, slots=True)
class OutboundRecipient:
    id: int
    address: str
    domain: str
    status: str  # pending | sent | failed
    last_reply: str | None


@dataclass(frozen=True, slots=True)
class OutboundClaim:
    """A queue item as the worker and `casella queue show` see it."""

    id: int
    mail_from: str
    content_id: int
    created_at: datetime
    next_attempt_at: datetime
    attempts: int
    last_error: str | None
    delayed_notice_sent: bool
    locked_by: str | None
    locked_until: datetime | None
    recipients: tuple[OutboundRecipient, ...]
    content: bytes | None = None  # the raw message, when the claim brought it along

    @property
    def pending(self) -> tuple[OutboundRecipient, ...]:
        return tuple(r for r in self.recipients if r.status == "pending")


_ob = OutboundRow.__table__
_rc = OutboundRecipientRow.__table__
_OB_CONTENT = (select(MessageRow.__table__.c.raw).join(_ob, _ob.c.message_id == MessageRow.__table__.c.id)
               .where(_ob.c.id == bindparam("qid")))
_OB_HOLDER = select(_ob.c.locked_by, _ob.c.message_id).where(_ob.c.id == bindparam("qid"))
_OB_SET_RCPT = (update(_rc).where(_rc.c.id == bindparam("rid"), _rc.c.queue_id == bindparam("qid"))
                .values(status=bindparam("st"), last_reply=bindparam("reply")))
_OB_PENDING = (select(func.count()).select_from(_rc)
               .where(_rc.c.queue_id == bindparam("qid"), _rc.c.status == "pending"))
_OB_DELETE_RCPTS = delete(_rc).where(_rc.c.queue_id == bindparam("qid"))
_OB_DELETE_ITEM = delete(_ob).where(_ob.c.id == bindparam("qid"))
# ON DELETE CASCADE removes the recipients (SQLite runs with foreign_keys=ON).
_OB_FINISH = (delete(_ob).where(_ob.c.id == bindparam("qid"), _ob.c.locked_by == bindparam("worker"))
              .returning(_ob.c.message_id))
_OB_RESCHEDULE = (update(_ob).where(_ob.c.id == bindparam("qid"))
                  .values(attempts=_ob.c.attempts + 1, last_error=bindparam("err"), next_attempt_at=bindparam("at"),
                          locked_by=None, locked_until=None))
# Same rule as _collect_garbage: content goes when no mailbox entry and no queue item uses it.
_OB_COLLECT = delete(MessageRow.__table__).where(
    MessageRow.__table__.c.id == bindparam("cid"),
    ~exists().where(MailboxMessageRow.__table__.c.message_id == MessageRow.__table__.c.id),
    ~exists().where(_ob.c.message_id == MessageRow.__table__.c.id))

# ---- outbound queue (issue 6): the finished items of one group-commit batch in one statement
# (PostgreSQL). Its CTEs all see the snapshot from before the statement, so the content check
# leaves out the queue rows this same statement deletes.
_finished = func.unnest(bindparam("qids", type_=ARRAY(Integer)), bindparam("workers", type_=ARRAY(String))
                        ).table_valued("id", "worker").render_derived()
_gone = (delete(_ob).where(_ob.c.id == _finished.c.id, _ob.c.locked_by == _finished.c.worker)
         .returning(_ob.c.id, _ob.c.message_id).cte("gone"))
_ob_others = _ob.alias("others")
_contents = MessageRow.__table__
_collected = delete(_contents).where(
    _contents.c.id.in_(select(_gone.c.message_id)),
    ~exists().where(MailboxMessageRow.__table__.c.message_id == _contents.c.id),
    ~exists().where(_ob_others.c.message_id == _contents.c.id, _ob_others.c.id.not_in(select(_gone.c.id))),
).cte("collected")
_OB_FINISH_MANY_PG = select(_gone.c.id).add_cte(_collected)

# ---- outbound queue (issue 6): a claim in prebuilt statements. The due items are locked once
# (MATERIALIZED: the LIMIT and SKIP LOCKED apply to one scan); PostgreSQL returns each item's
# content with it, SQLite (RETURNING names only the updated table) reads them after.
_due_filter = (_ob.c.next_attempt_at <= bindparam("now"),
               or_(_ob.c.locked_until.is_(None), _ob.c.locked_until < bindparam("now")))
_due = (select(_ob.c.id).where(*_due_filter).order_by(_ob.c.next_attempt_at, _ob.c.id)
        .limit(bindparam("limit")))
_due_locked = _due.with_for_update(skip_locked=True).cte("due").prefix_with("MATERIALIZED")
_OB_CLAIM_PG = (update(_ob).where(_ob.c.id == _due_locked.c.id, _contents.c.id == _ob.c.message_id)
                .values(locked_by=bindparam("worker"), locked_until=bindparam("until"))
                .returning(*_ob.c, case((_contents.c.size < bindparam("below"), _contents.c.raw)).label("content")))
_OB_CLAIM = (update(_ob).where(_ob.c.id.in_(_due.scalar_subquery()))
             .values(locked_by=bindparam("worker"), locked_until=bindparam("until")).returning(*_ob.c))
_OB_CLAIM_RCPTS_PG = select(_rc).where(_rc.c.queue_id == any_(bindparam("qids", type_=ARRAY(Integer)))).order_by(_rc.c.id)
_OB_CLAIM_RCPTS = select(_rc).where(_rc.c.queue_id.in_(bindparam("qids", expanding=True))).order_by(_rc.c.id)
_OB_CLAIM_CONTENTS = (select(_ob.c.id, _contents.c.raw).join(_contents, _contents.c.id == _ob.c.message_id)
                      .where(_ob.c.id.in_(bindparam("qids", expanding=True)), _contents.c.size < bindparam("below")))

# ---- outbound queue (issue 6): queueing remote recipients at delivery, prebuilt; on PostgreSQL the
# items of a delivery batch in two statements (unnest arrays, as storage/queries.py does for contents).
_OB_INSERT = insert(_ob).returning(_ob.c.id)
_OB_INSERT_RCPT = insert(_rc)
_new_items = func.unnest(bindparam("message_ids", type_=ARRAY(Integer)), bindparam("senders", type_=ARRAY(String))
                         ).table_valued("message_id", "mail_from", with_ordinality="n").render_derived()
_OB_INSERT_MANY_PG = insert(_ob).from_select(
    ["message_id", "mail_from", "created_at", "next_attempt_at", "attempts", "delayed_notice_sent"],
    select(_new_items.c.message_id, _new_items.c.mail_from, bindparam("now", type_=_ob.c.created_at.type),
           bindparam("now", type_=_ob.c.created_at.type), literal(0), literal(False)).order_by(_new_items.c.n),
).returning(_ob.c.id)
_new_rcpts = func.unnest(bindparam("qids", type_=ARRAY(Integer)), bindparam("addresses", type_=ARRAY(String)),
                         bindparam("domains", type_=ARRAY(String))).table_valued("queue_id", "address", "domain"
                                                                                 ).render_derived()
_OB_INSERT_RCPTS_PG = insert(_rc).from_select(
    ["queue_id", "address", "domain", "status"],
    select(_new_rcpts.c.queue_id, _new_rcpts.c.address, _new_rcpts.c.domain, literal("pending")))
